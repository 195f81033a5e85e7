"""pytest plugin: real labs as fixtures, guaranteed teardown, and lab context on failing tests.

Registered through the `pytest11` entry point, so any test suite with `lab` installed can use
`lab_cluster(...)`. Tests that use it are marked `docker`; without an engine they skip, and
under CI=true they fail instead.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field

import pytest

from lab import lab as orchestrator
from lab import labels
from lab.docker_ops import Engine
from lab.errors import EngineUnavailable
from lab.spec import LabSpec

_ENGINE_KEY = pytest.StashKey[Engine | None]()
_LABS_KEY = pytest.StashKey[list[str]]()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    """A port nobody listens on right now on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def unique_name(prefix: str = "t") -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return f"{prefix}-{worker + '-' if worker else ''}{uuid.uuid4().hex[:8]}"


@dataclass
class LabHandle:
    """A running lab inside a test."""

    engine: Engine
    spec: LabSpec
    replicas: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def url(self) -> str:
        return self.spec.url

    @property
    def nginx_conf(self) -> str:
        return nginx_conf(self.engine, self.name)

    def logs(self, tail: int = 40) -> dict[str, str]:
        return container_logs(self.engine, self.name, tail)


def nginx_conf(engine: Engine, name: str) -> str:
    for container in engine.containers(labels.lab_filter(name, labels.ROLE_LB)):
        try:
            return engine.read_file(container, orchestrator.NGINX_CONF)
        except Exception as exc:  # a dead container has no readable file; say so in the report
            return f"(could not read: {exc})"
    return "(no load balancer)"


def container_logs(engine: Engine, name: str, tail: int = 40) -> dict[str, str]:
    containers = sorted(engine.containers(labels.lab_filter(name)), key=lambda c: c.name)
    return {c.name: engine.logs(c, tail=tail) for c in containers}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "docker: needs a real Docker engine (fails instead of skipping when CI=true)"
    )
    os.environ.setdefault("LAB_SESSION", f"pytest-{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="session")
def lab_engine(request: pytest.FixtureRequest) -> Engine:
    """The Docker engine; skips the test without one, fails it under CI=true."""
    try:
        engine = Engine.connect(timeout=120)
    except EngineUnavailable as exc:
        if in_ci():
            pytest.fail(f"CI=true and {exc.message}", pytrace=False)
        pytest.skip(exc.message)
    request.config.stash[_ENGINE_KEY] = engine
    return engine


@pytest.fixture
def lab_cluster(lab_engine: Engine, request: pytest.FixtureRequest) -> Iterator[Callable[..., LabHandle]]:
    """A factory: `lab_cluster(replicas=3)` starts a lab unique to this test; it is removed afterwards."""
    started: list[str] = []
    request.node.stash[_LABS_KEY] = started

    def start(**options: object) -> LabHandle:
        options.setdefault("name", unique_name())
        options.setdefault("port", free_port())
        spec = LabSpec.create(**options)  # type: ignore[arg-type]
        started.append(spec.name)  # before `up`: a half-created lab is removed too
        orchestrator.up(lab_engine, spec)
        return LabHandle(lab_engine, spec, spec.replica_names())

    try:
        yield start
    finally:
        for name in started:
            orchestrator.down(lab_engine, name)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    names = item.stash.get(_LABS_KEY, [])
    engine = item.config.stash.get(_ENGINE_KEY, None)
    if report.failed and names and engine is not None and call.when in ("setup", "call"):
        for name in names:
            report.sections.append((f"lab {name}: nginx.conf", nginx_conf(engine, name)))
            for container, text in container_logs(engine, name).items():
                report.sections.append((f"lab {name}: logs of {container}", text))
    return report
