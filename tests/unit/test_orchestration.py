"""The orchestrator's transactions against a small fake engine: no Docker needed."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from lab import lab as orchestrator
from lab import labels, live
from lab.docker_ops import ContainerRequest
from lab.errors import InvalidInput, NotReady
from lab.spec import LabSpec


@dataclass
class FakeContainer:
    name: str
    labels: dict[str, str]
    status: str = "created"
    networks: list[str] = field(default_factory=list)

    @property
    def attrs(self) -> dict[str, Any]:
        return {"NetworkSettings": {"Networks": {n: {} for n in self.networks}}}


@dataclass
class FakeNetwork:
    name: str
    labels: dict[str, str]


class FakeEngine:
    """Just enough of lab.docker_ops.Engine: containers and networks in dicts, label filters."""

    def __init__(self, *, fail_start: str = "", log_ready: bool = True) -> None:
        self.containers_by_name: dict[str, FakeContainer] = {}
        self.networks_by_name: dict[str, FakeNetwork] = {}
        self.fail_start = fail_start
        self.log_ready = log_ready
        self.lock = threading.Lock()

    @staticmethod
    def _matches(found: dict[str, str], filters: dict[str, list[str]]) -> bool:
        for wanted in filters.get("label", []):
            key, _, value = wanted.partition("=")
            if key not in found or (value and found[key] != value):
                return False
        return True

    def containers(self, filters: dict[str, list[str]]) -> list[FakeContainer]:
        with self.lock:
            return [c for c in self.containers_by_name.values() if self._matches(c.labels, filters)]

    def networks(self, filters: dict[str, list[str]]) -> list[FakeNetwork]:
        return [n for n in self.networks_by_name.values() if self._matches(n.labels, filters)]

    def create_network(self, name: str, labels: dict[str, str], *, internal: bool) -> FakeNetwork:
        self.networks_by_name[name] = FakeNetwork(name, labels)
        return self.networks_by_name[name]

    def create_container(self, req: ContainerRequest) -> FakeContainer:
        with self.lock:
            container = FakeContainer(req.name, dict(req.labels), networks=[req.network])
            self.containers_by_name[req.name] = container
            return container

    def start(self, container: FakeContainer) -> None:
        container.status = "running"

    def wait_for_log(self, container: FakeContainer, marker: str) -> bool:
        if container.name == self.fail_start:
            container.status = "exited"
            return False
        return self.log_ready

    def exec(self, container: FakeContainer, command: list[str]) -> tuple[int, str]:
        return (1, "") if container.status != "running" else (0, "HTTP/1.1 200 OK")

    def logs(self, container: FakeContainer, tail: int = 40) -> str:
        return f"log of {container.name}"

    def remove_containers(self, containers: Iterable[FakeContainer]) -> int:
        with self.lock:
            names = [c.name for c in containers if c.name in self.containers_by_name]
            for name in names:
                del self.containers_by_name[name]
            return len(names)

    def remove_networks(self, networks: Iterable[FakeNetwork]) -> int:
        names = [n.name for n in networks if n.name in self.networks_by_name]
        for name in names:
            del self.networks_by_name[name]
        return len(names)

    def remove_volumes(self, filters: dict[str, list[str]]) -> int:
        return 0


SPEC = LabSpec.create(name="fake", replicas=4)


def replica_requests(spec: LabSpec = SPEC) -> list[ContainerRequest]:
    return [orchestrator.replica_request(spec, i, "lab/site:v1", "v1") for i in spec.indices()]


def quiet(_description: str, _fraction: float | None) -> None:
    pass


def test_replicas_start_in_parallel_and_all_listen() -> None:
    engine = FakeEngine()
    started = orchestrator.start_containers(engine, replica_requests(), quiet)  # type: ignore[arg-type]
    assert sorted(c.name for c in started) == SPEC.replica_names()
    assert all(c.status == "running" for c in started)
    assert all(c.labels[labels.NAME] == "fake" and c.labels[labels.ROLE] == "web" for c in started)


def test_a_replica_that_exits_while_starting_fails_with_its_log() -> None:
    engine = FakeEngine(fail_start="fake-web-3")
    with pytest.raises(NotReady, match="fake-web-3 exited while starting") as failure:
        orchestrator.start_containers(engine, replica_requests(), quiet)  # type: ignore[arg-type]
    assert failure.value.detail == "log of fake-web-3"


@pytest.mark.parametrize("error", [NotReady("boom"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_transaction_removes_everything_of_the_lab(error: BaseException) -> None:
    engine = FakeEngine()
    other = LabSpec.create(name="other", replicas=1)
    orchestrator.start_containers(engine, replica_requests(other), quiet)  # type: ignore[arg-type]
    with pytest.raises(type(error)), orchestrator.rollback_on_failure(engine, "fake"):  # type: ignore[arg-type]
        engine.create_network("fake-backend", labels.for_lab("fake", labels.ROLE_BACKEND_NET), internal=True)
        orchestrator.start_containers(engine, replica_requests(), quiet)  # type: ignore[arg-type]
        raise error
    assert not engine.containers(labels.lab_filter("fake")) and not engine.networks(labels.lab_filter("fake"))
    assert [c.name for c in engine.containers(labels.lab_filter("other"))] == ["other-web-1"]  # untouched


def test_up_refuses_a_running_lab_and_sweeps_a_dead_one() -> None:
    engine = FakeEngine()
    orchestrator.start_containers(engine, replica_requests(), quiet)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="already up"):
        orchestrator._refuse_if_present(engine, SPEC)  # type: ignore[arg-type]
    for container in engine.containers(labels.lab_filter("fake")):
        container.status = "exited"  # what an engine restart leaves behind
    orchestrator._refuse_if_present(engine, SPEC)  # type: ignore[arg-type]
    assert engine.containers(labels.lab_filter("fake")) == []


def test_only_running_or_frozen_replicas_on_the_backend_are_upstream_members() -> None:
    engine = FakeEngine()
    started = orchestrator.start_containers(engine, replica_requests(), quiet)  # type: ignore[arg-type]
    started[0].status = "exited"  # killed: its name no longer resolves
    started[1].status = "paused"  # frozen: still resolves, nginx's passive health handles it
    started[2].networks = []  # disconnected
    members = live.serving_members(engine, "fake")  # type: ignore[arg-type]
    assert [c.name for c in members] == ["fake-web-2", "fake-web-4"]
