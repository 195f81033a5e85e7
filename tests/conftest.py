"""Suite-wide setup: integration tests are `docker` tests and start from a clean engine."""

from __future__ import annotations

from pathlib import Path

import pytest

INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.docker)
    # Entering and leaving swarm mode disturbs the engine's container DNS for a moment (nginx then
    # meets "host not found in upstream"): the tests that do it run after all others, in their order.
    items.sort(key=lambda item: item.get_closest_marker("swarm") is not None)
