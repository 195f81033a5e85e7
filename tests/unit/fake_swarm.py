"""A small in-memory swarm manager for the unit tests: `FakeEngine` plus `lab.engine.SwarmEngine`.

Services and their tasks live in lists; `create_service` and `update_service` act as Swarm does,
in miniature: tasks of a new service run at once (each with an address on the service's
network), a scale adds or removes tasks, an image change replaces every task (or, with
`fail_updates`, starts one that fails and rolls the service back). Tests move tasks themselves
with `kill_task` and `move_tasks`. Every call that changes something is in `calls`.
"""

from __future__ import annotations

import itertools
import queue
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from lab.engine import (
    Filters,
    NetworkInfo,
    ServiceInfo,
    ServiceRequest,
    SwarmEngine,
    SwarmNode,
    TaskInfo,
    UpdatePolicy,
)
from lab.errors import NameInUse

from .fake_engine import FakeEngine, _matches

if TYPE_CHECKING:
    import pytest

MANAGER = "node-m"


@dataclass
class FakeService:
    id: str
    name: str
    labels: dict[str, str]
    network: str
    replicas: int
    image: str
    container_labels: dict[str, str]
    request: ServiceRequest
    update_state: str = ""
    update_started: str = ""
    update_message: str = ""

    def info(self) -> ServiceInfo:
        return ServiceInfo(
            self.id, self.name, dict(self.labels), self.replicas, self.image, dict(self.container_labels),
            self.update_state, self.update_message, self.update_started,
        )  # fmt: skip


class FakeStream:
    """Events a test puts in; iterating blocks until one comes or the stream is closed."""

    def __init__(self) -> None:
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while (event := self.queue.get()) is not None:
            yield event

    def close(self) -> None:
        self.queue.put(None)


class FakeSwarm(FakeEngine):
    """See the module's docstring."""

    def __init__(self, *, fail_updates: bool = False, auto_run: bool = True, **options: Any) -> None:
        super().__init__(**options)
        self.node_ids = [MANAGER, "node-1", "node-2"]
        self.fail_updates = fail_updates
        self.auto_run = auto_run  # new tasks run at once (else they stay "starting" until `run_tasks`)
        self.services_by_name: dict[str, FakeService] = {}
        self.tasks: list[TaskInfo] = []
        self.calls: list[str] = []
        self.streams: list[FakeStream] = []
        self.swarm_record: dict[str, str] = {}
        self.swarm_info: dict[str, Any] = {"LocalNodeState": "active", "ControlAvailable": True, "NodeID": MANAGER,
                      "NodeAddr": "172.17.0.1"}  # fmt: skip
        self._counter = itertools.count(1)
        self._address = itertools.count(2)

    # The manager -------------------------------------------------------------------------------
    def swarm_state(self) -> dict[str, Any]:
        return dict(self.swarm_info)

    def swarm_labels(self) -> dict[str, str]:
        return dict(self.swarm_record)

    def swarm_init(self, advertise_addr: str, listen_addr: str, labels: dict[str, str]) -> str:
        self.calls.append("swarm init")
        self.swarm_info.update(
            LocalNodeState="active", ControlAvailable=True, NodeID=MANAGER, NodeAddr=advertise_addr
        )
        self.swarm_record = dict(labels)
        return MANAGER

    def swarm_leave(self) -> None:
        self.calls.append("swarm leave")
        self.swarm_info = {"LocalNodeState": "inactive"}
        self.swarm_record = {}

    def swarm_nodes(self) -> list[SwarmNode]:
        return [SwarmNode(n, n.replace("node-", "host-"), "ready", "active", "172.17.0.9", {}, "20.10")
                for n in self.node_ids]  # fmt: skip

    def bridge_gateways(self) -> dict[str, str]:
        return {"bridge": "172.17.0.1"}

    def network(self, name: str) -> NetworkInfo | None:
        found = self.networks_by_name.get(name)
        return found.info() if found else None

    def remove_networks(self, networks: Iterable[NetworkInfo], *, patience: float = 10.0) -> int:
        return sum(1 for n in networks if not self.remove_network(n))

    def create_overlay_network(
        self, name: str, labels: dict[str, str], *, internal: bool = False
    ) -> NetworkInfo:
        self.calls.append(f"create overlay {name}")
        return self.create_network(name, labels, internal=internal)

    def events(self, filters: Filters) -> FakeStream:
        stream = FakeStream()
        self.streams.append(stream)
        return stream

    # Services ----------------------------------------------------------------------------------
    def services(self, filters: Filters | None = None) -> list[ServiceInfo]:
        if self.swarm_info.get("LocalNodeState") != "active":
            return []
        return [s.info() for s in self.services_by_name.values() if _matches(s.labels, filters or {})]

    def service(self, name: str) -> ServiceInfo | None:
        found = self.services_by_name.get(name)
        return found.info() if found else None

    def create_service(self, req: ServiceRequest) -> str:
        if req.name in self.services_by_name:
            raise NameInUse(f"a service named {req.name} exists already")
        self.calls.append(f"create service {req.name} x{req.replicas}")
        service = FakeService(f"svc-{req.name}", req.name, dict(req.labels), req.network, req.replicas,
                              req.image, dict(req.container_labels), req)  # fmt: skip
        self.services_by_name[req.name] = service
        for slot in range(1, req.replicas + 1):
            self._new_task(service, slot)
        return service.id

    def update_service(
        self,
        name: str,
        *,
        replicas: int | None = None,
        image: str | None = None,
        container_labels: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        update: UpdatePolicy | None = None,
    ) -> None:
        service = self.services_by_name[name]
        self.calls.append(f"update service {name}" + (f" replicas={replicas}" if replicas is not None else "")
                          + (f" image={image}" if image is not None else ""))  # fmt: skip
        if labels is not None:
            service.labels = dict(labels)
        if replicas is not None:
            self._scale(service, replicas)
        if image is not None:
            service.update_started = f"update-{next(self._counter)}"
            if self.fail_updates:
                failed = self._new_task(service, 1, image=image, labels_=container_labels or {})
                self._set(failed, state="failed", desired_state="shutdown", error="task: non-zero exit (1)")
                service.update_state, service.update_message = "rollback_completed", "rollback completed"
                return
            service.image = image
            service.container_labels = dict(container_labels or {})
            for task in self.running(name):
                self._set(task, desired_state="shutdown", state="shutdown")
                self._new_task(service, task.slot)
            service.update_state, service.update_message = "completed", "update completed"

    def _scale(self, service: FakeService, replicas: int) -> None:
        running = sorted(self.running(service.name), key=lambda t: t.slot)
        for task in running[replicas:]:
            self.tasks.remove(task)  # Swarm deletes the tasks a scale-down removes
        taken = {t.slot for t in running[:replicas]}
        free = (s for s in itertools.count(1) if s not in taken)
        for _ in range(replicas - len(running)):
            self._new_task(service, next(free))
        service.replicas = replicas

    def service_tasks(self, service: str, *, desired: str | None = "running") -> list[TaskInfo]:
        found = [t for t in self.tasks if t.id.startswith(f"{service}.")]
        return [t for t in found if desired is None or t.desired_state == desired]

    def remove_service(self, service: str) -> bool:
        self.calls.append(f"remove service {service}")
        self.history.append(f"remove service {service}")
        self.tasks = [t for t in self.tasks if not t.id.startswith(f"{service}.")]
        return self.services_by_name.pop(service, None) is not None

    # What tests do to tasks ----------------------------------------------------------------------
    def running(self, service: str) -> list[TaskInfo]:
        return [t for t in self.service_tasks(service) if t.state == "running"]

    def _new_task(
        self,
        service: FakeService,
        slot: int,
        *,
        image: str | None = None,
        labels_: dict[str, str] | None = None,
    ) -> TaskInfo:
        n = next(self._counter)
        node = self.node_ids[(slot - 1) % len(self.node_ids)]
        address = f"10.0.9.{next(self._address)}"
        task = TaskInfo(
            slot=slot, node_id=node, state="running" if self.auto_run else "starting", error="",
            addresses=(address,), id=f"{service.name}.{slot}.{n}", desired_state="running",
            container_id=f"c{n}", timestamp=f"2030-01-01T00:00:{n % 60:02d}.5Z",
            updated_at=f"2030-01-01T00:00:{n % 60:02d}.6Z", image=image or service.image,
            container_labels=dict(labels_ if labels_ is not None else service.container_labels),
            networks={service.network: address},
        )  # fmt: skip
        self.tasks.append(task)
        return task

    def _set(self, task: TaskInfo, **changes: Any) -> TaskInfo:
        changed = replace(task, **changes)
        self.tasks[self.tasks.index(task)] = changed
        return changed

    def run_tasks(self, service: str) -> None:
        for task in self.service_tasks(service):
            if task.state == "starting":
                self._set(task, state="running")

    def fail_starting(self, service: str, error: str) -> None:
        """Every starting task fails with `error`; Swarm starts another in its slot."""
        for task in [t for t in self.service_tasks(service) if t.state == "starting"]:
            self._set(task, state="rejected", desired_state="shutdown", error=error)
            self._new_task(self.services_by_name[service], task.slot)

    def kill_task(self, service: str, slot: int) -> TaskInfo:
        """The task in `slot` dies; Swarm starts a replacement in the same slot."""
        task = next(t for t in self.running(service) if t.slot == slot)
        self._set(task, state="failed", desired_state="shutdown", error="task: non-zero exit (137)")
        return self._new_task(self.services_by_name[service], slot)

    def node_down(self, service: str, node: str) -> list[TaskInfo]:
        """Node `node` goes down: its tasks are started on the other nodes."""
        self.node_ids.remove(node)
        moved = []
        for task in [t for t in self.running(service) if t.node_id == node]:
            self._set(task, desired_state="shutdown")
            moved.append(self._new_task(self.services_by_name[service], task.slot))
        return moved


def _conforms(engine: FakeSwarm) -> SwarmEngine:
    return engine  # mypy checks that the fake implements the interface


def serve_without_http_or_watcher(monkeypatch: pytest.MonkeyPatch, started: list[str] | None = None) -> None:
    """A swarm lab on the fake: nginx "answers" with the config its file holds, no watcher container
    runs (the tests run its looks); the labs a watcher would have been started for go to `started`."""
    from lab import watcher
    from lab.loadbalancer import LoadBalancer, config_generation

    def wait_serving(self: LoadBalancer, *_: object, **__: object) -> None:
        assert self.state().status == "running"

    monkeypatch.setattr(LoadBalancer, "wait_serving", wait_serving)
    monkeypatch.setattr(
        LoadBalancer, "answers_with", lambda self, _spec, gen: config_generation(self.config()) == gen
    )
    monkeypatch.setattr(watcher, "ensure_image", lambda *_a, **_k: "lab/watcher:test")
    monkeypatch.setattr(
        watcher,
        "start",
        lambda _engine, lab, _image, _progress: (started if started is not None else []).append(lab),
    )
