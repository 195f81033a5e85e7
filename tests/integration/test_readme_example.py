"""The README's example test file runs, as a user's own pytest would run it, and passes."""

from __future__ import annotations

import pytest

from lab import labels, orchestrator
from lab.docker_ops import Engine
from lab.spec import PROJECT_DIR

pytest_plugins = ["pytester"]

EXAMPLE = PROJECT_DIR / "docs" / "testing-example" / "test_my_app.py"
HEADING = "Testing your multi-container app with lab"


def test_the_readme_example_passes_and_leaves_nothing(
    pytester: pytest.Pytester, lab_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = labels.new_session_id()
    monkeypatch.setenv("LAB_SESSION", session)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    pytester.makepyfile(test_my_app=EXAMPLE.read_text())
    selector = {"label": labels.session_labs(session)}  # its labs; its reaper goes by itself
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--timeout=200", timeout=300)
        result.assert_outcomes(passed=3)
        assert not lab_engine.containers(selector) and not lab_engine.networks(selector)
    finally:  # should the run have left anything, it goes
        for container in lab_engine.containers(selector):
            orchestrator.remove_lab(lab_engine, container.labels[labels.NAME])
        lab_engine.remove_containers(lab_engine.containers({"label": [f"{labels.SESSION}={session}"]}))


def test_the_documented_example_is_the_file_that_runs() -> None:
    docs = [PROJECT_DIR / "README.md", PROJECT_DIR / "docs" / "testing.md"]
    with_section = [doc for doc in docs if doc.is_file() and HEADING in doc.read_text()]
    assert with_section, f"no document has the section {HEADING!r}"
    for doc in with_section:
        assert EXAMPLE.read_text() in doc.read_text(), f"{doc.name} shows another example than {EXAMPLE.name}"
