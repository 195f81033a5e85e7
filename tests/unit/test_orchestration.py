"""The orchestrator's transactions against a small fake engine: no Docker needed."""

from __future__ import annotations

import http.server
import itertools
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from lab import labels, live, orchestrator
from lab.docker_ops import ContainerRequest
from lab.errors import InvalidInput, LabError, NameInUse, NotReady
from lab.spec import LabSpec


@dataclass
class FakeContainer:
    name: str
    labels: dict[str, str]
    status: str = "created"
    networks: list[str] = field(default_factory=list)
    image: Any = None

    @property
    def id(self) -> str:
        return f"id-{self.name}"

    @property
    def attrs(self) -> dict[str, Any]:
        return {"NetworkSettings": {"Networks": {n: {} for n in self.networks}}}


@dataclass
class FakeNetwork:
    name: str
    labels: dict[str, str]
    phantom: bool = False  # the engine counts an endpoint on it that nothing is behind


class FakeEngine:
    """Just enough of lab.docker_ops.Engine: containers and networks in dicts, label filters.

    It also keeps an eye on the rule the orchestrator must follow: no network is removed while a
    container is being created or started (`races` counts the times it was).
    """

    def __init__(self, *, fail_start: str = "", log_ready: bool = True, slow_create: float = 0.0) -> None:
        self.containers_by_name: dict[str, FakeContainer] = {}
        self.networks_by_name: dict[str, FakeNetwork] = {}
        self.fail_start = fail_start
        self.log_ready = log_ready
        self.slow_create = slow_create
        self.hang_logs = False  # wait_for_log blocks until the container is killed
        self.unremovable: set[str] = set()  # container names the engine refuses to remove
        self.config_ok = True  # what `nginx -t` says
        self.client = None  # what image helpers would use; `_fake_up` replaces them
        self.lock = threading.Lock()
        self.in_flight = 0
        self.races = 0
        self.killed: list[str] = []
        self.started: set[str] = set()
        self.log_waits_timed_out = 0
        self.events: list[str] = []  # "remove container X", "remove network Y", in order

    @staticmethod
    def _matches(found: dict[str, str], filters: dict[str, list[str]]) -> bool:
        for wanted in filters.get("label", []):
            key, _, value = wanted.partition("=")
            if key not in found or (value and found[key] != value):
                return False
        return True

    def container_exists(self, container_id: str) -> bool:
        with self.lock:
            return any(c.id == container_id for c in self.containers_by_name.values())

    def containers(self, filters: dict[str, list[str]]) -> list[FakeContainer]:
        with self.lock:
            return [c for c in self.containers_by_name.values() if self._matches(c.labels, filters)]

    def networks(self, filters: dict[str, list[str]]) -> list[FakeNetwork]:
        return [n for n in self.networks_by_name.values() if self._matches(n.labels, filters)]

    def create_network(self, name: str, labels: dict[str, str], *, internal: bool) -> FakeNetwork:
        if name in self.networks_by_name:
            raise NameInUse(f"a network named {name} exists already")
        self.networks_by_name[name] = FakeNetwork(name, labels)
        return self.networks_by_name[name]

    def network_containers(self, network: FakeNetwork) -> dict[str, str]:
        with self.lock:
            return {c.id: c.name for c in self.containers_by_name.values() if network.name in c.networks}

    def remove_network(self, network: FakeNetwork, *, patience: float = 0.0) -> str:
        with self.lock:
            self.races += self.in_flight > 0
            self.events.append(f"remove network {network.name}")
        if network.phantom or self.network_containers(network):
            return f"error while removing network: network {network.name} id 0123 has active endpoints"
        self.networks_by_name.pop(network.name, None)
        return ""

    def attach(self, network: str, container: FakeContainer, aliases: list[str] | None = None) -> None:
        container.networks.append(network)

    def detach(self, network: str, container: FakeContainer) -> None:
        container.networks.remove(network)

    def release_endpoints(self, container: FakeContainer) -> None:
        with self.lock:
            self.events.append(f"release {container.name}")
            container.networks = []

    def create_container(self, req: ContainerRequest) -> FakeContainer:
        with self.lock:
            self.in_flight += 1
        time.sleep(self.slow_create)
        with self.lock:
            self.in_flight -= 1
            networks = [] if req.network_disabled else [req.network]
            container = FakeContainer(req.name, dict(req.labels), networks=networks)
            self.containers_by_name[req.name] = container
            return container

    def start(self, container: FakeContainer) -> None:
        container.status = "running"
        self.started.add(container.name)

    def kill(self, containers: Iterable[FakeContainer]) -> None:
        for container in containers:
            with self.lock:
                self.killed.append(container.name)
                self.events.append(f"kill {container.name}")
            container.status = "exited"

    def wait_for_log(self, container: FakeContainer, marker: str) -> bool:
        if container.name == self.fail_start:
            container.status = "exited"
            return False
        deadline = (
            time.monotonic() + 5
        )  # bounded, so a broken orchestrator fails the test instead of hanging it
        while self.hang_logs and container.status == "running":
            if time.monotonic() > deadline:
                self.log_waits_timed_out += 1
                break
            time.sleep(0.01)
        return self.log_ready and container.status == "running"

    def put_file(self, container: FakeContainer, path: str, content: str) -> None:
        pass

    def wait_exit(self, container: FakeContainer, timeout: float) -> int:
        return 0 if self.config_ok else 1

    def exec(self, container: FakeContainer, command: list[str]) -> tuple[int, str]:
        return (1, "") if container.status != "running" else (0, "HTTP/1.1 200 OK")

    def logs(self, container: FakeContainer, tail: int = 40) -> str:
        return f"log of {container.name}"

    def remove_containers(self, containers: Iterable[FakeContainer]) -> int:
        with self.lock:
            names = [
                c.name
                for c in containers
                if c.name in self.containers_by_name and c.name not in self.unremovable
            ]
            for name in names:
                del self.containers_by_name[name]
                self.events.append(f"remove container {name}")
            return len(names)

    def wait_gone(self, filters: dict[str, list[str]], *, timeout: float = 30.0) -> list[FakeContainer]:
        return self.containers(filters)

    def remove_volumes(self, filters: dict[str, list[str]]) -> int:
        return 0


SPEC = LabSpec.create(name="fake", replicas=4)


def replica_requests(spec: LabSpec = SPEC, network: str = "fake-backend") -> list[ContainerRequest]:
    return [orchestrator.replica_request(spec, i, "lab/site:v1", "v1", network) for i in spec.indices()]


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
    orchestrator.start_containers(engine, replica_requests(other, "other-backend"), quiet)  # type: ignore[arg-type]
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
    members = live.serving_members(engine, "fake", "fake-backend")  # type: ignore[arg-type]
    assert [c.name for c in members] == ["fake-web-2", "fake-web-4"]


# Teardown never races the engine -----------------------------------------------------------------
def test_a_failed_start_returns_only_after_every_create_in_flight_has_ended() -> None:
    engine = FakeEngine(fail_start="fake-web-1", slow_create=0.05)
    spec = LabSpec.create(name="fake", replicas=24)
    with pytest.raises(NotReady), orchestrator.rollback_on_failure(engine, "fake"):  # type: ignore[arg-type]
        engine.create_network("fake-backend", labels.for_lab("fake", labels.ROLE_BACKEND_NET), internal=True)
        orchestrator.start_containers(engine, replica_requests(spec), quiet)  # type: ignore[arg-type]
    assert engine.in_flight == 0
    assert engine.races == 0  # no network was removed while a container was being created
    assert not engine.containers(labels.lab_filter("fake")) and not engine.networks(labels.lab_filter("fake"))


def test_containers_go_before_networks_are_removed() -> None:
    engine = FakeEngine()
    engine.create_network("fake-backend", labels.for_lab("fake", labels.ROLE_BACKEND_NET), internal=True)
    orchestrator.start_containers(engine, replica_requests(), quiet)  # type: ignore[arg-type]
    removed = orchestrator.remove_lab(engine, "fake")  # type: ignore[arg-type]
    assert (removed.containers, removed.networks, removed.left) == (4, 1, ())
    names = sorted(c for c in engine.started)
    assert sorted(engine.events[:4]) == [f"release {n}" for n in names]  # one at a time, before any removal
    assert sorted(engine.events[4:8]) == [f"remove container {n}" for n in names]
    assert engine.events[8:] == ["remove network fake-backend"]


def test_replicas_waiting_for_their_log_are_killed_so_a_rollback_does_not_wait_for_them() -> None:
    engine = FakeEngine(fail_start="fake-web-4")
    engine.hang_logs = True  # httpd never says it listens: only a kill ends the wait
    with pytest.raises(NotReady, match="fake-web-4"):
        orchestrator.start_containers(engine, replica_requests(), quiet)  # type: ignore[arg-type]
    assert engine.started - {"fake-web-4"} <= set(engine.killed)
    for name in engine.killed:  # taken off the network before the kill, so no two endpoints go at once
        assert engine.events.index(f"release {name}") < engine.events.index(f"kill {name}")
    assert not engine.log_waits_timed_out  # each wait ended because its container was killed


def test_a_config_that_fails_its_test_stops_the_replica_start() -> None:
    engine = FakeEngine(slow_create=0.2)
    spec = LabSpec.create(name="fake", replicas=40)
    with ThreadPoolExecutor(max_workers=1) as side:
        beside = side.submit(_fail_soon)
        with pytest.raises(LabError, match="nginx -t"):
            orchestrator.start_containers(engine, replica_requests(spec), quiet, beside=beside)  # type: ignore[arg-type]
    assert engine.in_flight == 0
    assert len(engine.containers(labels.lab_filter("fake"))) < 40


def _fail_soon() -> None:
    raise LabError("the rendered nginx config failed `nginx -t`")


# Networks the engine will not release ----------------------------------------------------------
def _stuck_backend(engine: FakeEngine, lab: str = "fake") -> None:
    """What a dead lab may leave: a network the engine still counts an endpoint on."""
    network = engine.create_network(
        f"{lab}-backend", labels.for_lab(lab, labels.ROLE_BACKEND_NET), internal=True
    )
    network.phantom = True


def test_down_removes_what_it_can_and_names_a_stuck_network_with_the_cure() -> None:
    engine = FakeEngine()
    _stuck_backend(engine)
    engine.create_network("fake-frontend", labels.for_lab("fake", labels.ROLE_FRONTEND_NET), internal=False)
    removed = orchestrator.down(engine, "fake")  # type: ignore[arg-type]
    assert removed.networks == 1 and not removed.running
    assert [(left.kind, left.name) for left in removed.left] == [("network", "fake-backend")]
    assert "restart the Docker engine" in removed.left[0].reason
    assert not removed.nothing
    line = orchestrator.leftover_lines(removed.left)[0]
    assert line.startswith("left behind: network fake-backend: the engine still counts an endpoint")


def test_a_container_that_is_not_the_labs_is_never_touched_whatever_network_it_is_on() -> None:
    engine = FakeEngine()
    engine.create_network("fake-backend", labels.for_lab("fake", labels.ROLE_BACKEND_NET), internal=True)
    orchestrator.start_containers(engine, replica_requests(), quiet)  # type: ignore[arg-type]
    stranger = engine.create_container(
        ContainerRequest(name="stranger", image="x", labels={}, network="fake-backend")
    )
    engine.start(stranger)
    removed = orchestrator.down(engine, "fake")  # type: ignore[arg-type]
    assert removed.containers == 4 and removed.networks == 0 and not removed.running
    assert "stranger" in engine.containers_by_name and stranger.status == "running"
    assert stranger.networks == ["fake-backend"] and "stranger" not in engine.killed
    assert "container stranger, not of this lab, is on it and is left alone" in removed.left[0].reason


def test_down_reports_a_lab_container_that_still_runs() -> None:
    engine = FakeEngine()
    engine.create_network("fake-backend", labels.for_lab("fake", labels.ROLE_BACKEND_NET), internal=True)
    orchestrator.start_containers(engine, replica_requests(), quiet)  # type: ignore[arg-type]
    engine.unremovable = {"fake-web-2"}
    removed = orchestrator.down(engine, "fake")  # type: ignore[arg-type]
    assert removed.running == ("fake-web-2",)
    assert [left.name for left in removed.left] == ["fake-web-2"]


def test_up_does_not_depend_on_a_stuck_network(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = FakeEngine()
    _stuck_backend(engine)
    spec = _fake_up(monkeypatch, engine)
    backend = engine.containers_by_name["fake-web-1"].networks[0]
    assert (
        backend.startswith("fake-backend-") and engine.networks_by_name[backend].labels[labels.NAME] == "fake"
    )
    assert engine.containers_by_name["fake-lb"].networks == ["fake-frontend", backend]
    assert engine.networks_by_name["fake-backend"].phantom  # left alone
    assert orchestrator.lab_network(engine, "fake", labels.ROLE_BACKEND_NET) == backend  # type: ignore[arg-type]
    assert [c.name for c in live.serving_members(engine, "fake")] == spec.replica_names()  # type: ignore[arg-type]
    lab_status = orchestrator.status(engine, "fake", known={})  # type: ignore[arg-type]
    assert [(n.name, n.reason) for n in lab_status.stuck_networks] == [("fake-backend", orchestrator.STUCK)]
    note = orchestrator.stuck_note("fake", lab_status.stuck_networks)
    assert note.startswith("lab fake runs on new networks: fake-backend is stuck (the engine still counts")
    assert "restart the Docker engine to clear it" in note
    assert len(note.splitlines()) == 1
    removed = orchestrator.down(engine, "fake")  # type: ignore[arg-type]
    assert removed.containers == 4 and removed.networks == 2 and not removed.running
    assert [left.name for left in removed.left] == ["fake-backend"]


def test_a_rollback_names_the_network_it_had_to_leave(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = FakeEngine(fail_start="fake-web-2")

    def attach_and_stick(network: str, container: FakeContainer, aliases: list[str] | None = None) -> None:
        container.networks.append(network)
        engine.networks_by_name[network].phantom = True  # the engine loses count of this endpoint

    monkeypatch.setattr(engine, "attach", attach_and_stick)
    with pytest.raises(NotReady) as failure:
        _fake_up(monkeypatch, engine)
    assert "left behind: network fake-backend: the engine still counts an endpoint" in failure.value.detail
    assert not engine.containers(labels.lab_filter("fake"))
    assert engine.races == 0


def _fake_up(monkeypatch: pytest.MonkeyPatch, engine: FakeEngine) -> LabSpec:
    """`up` against the fake engine: no images to build, no HTTP to send."""
    monkeypatch.setattr(
        orchestrator, "ensure_base_images", lambda *_, **__: SimpleNamespace(httpd="h", nginx="n")
    )
    monkeypatch.setattr(orchestrator, "ensure_site_image", lambda *_: ("lab/site:v1", "v1"))
    monkeypatch.setattr(orchestrator, "wait_served_by_all", lambda *_, **__: None)
    monkeypatch.setattr(orchestrator, "_refuse_if_port_taken", lambda *_: None)
    spec = LabSpec.create(name="fake", replicas=3, check_site=False)
    orchestrator.up(engine, spec)  # type: ignore[arg-type]
    return spec


# Waiting for every replica -----------------------------------------------------------------------
class _FlakyBalancer:
    """A load balancer whose nginx exits at start for a while; its restart policy brings it back."""

    def __init__(self, down_for: float) -> None:
        self.back_at = time.monotonic() + down_for
        self.status = "restarting"

    def reload(self) -> None:
        self.status = "restarting" if time.monotonic() < self.back_at else "running"


@pytest.fixture
def balancer_on_loopback() -> Iterator[tuple[int, list[bool], list[int]]]:
    """An HTTP server on 127.0.0.1 answering as lab `fake` would once `up[0]` is True; `refused[0]`
    counts the requests it got before."""
    up, refused = [False], [0]
    names = iter(itertools.cycle(SPEC.replica_names()))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            if not up[0]:
                refused[0] += 1
                self.send_response(502)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("X-Served-By", next(names))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], up, refused
    server.shutdown()
    server.server_close()


def test_a_load_balancer_its_restart_policy_brings_back_is_waited_for_without_load(
    balancer_on_loopback: tuple[int, list[bool], list[int]],
) -> None:
    port, up, refused = balancer_on_loopback
    spec = LabSpec.create(name="fake", replicas=4, port=port)
    lb = _FlakyBalancer(down_for=1.5)  # longer than the request budget lasts against quick 502s
    original = lb.reload

    def reload() -> None:
        original()
        up[0] = lb.status == "running"

    lb.reload = reload  # type: ignore[method-assign]
    orchestrator.wait_served_by_all(
        FakeEngine(),  # type: ignore[arg-type]
        spec,
        lb,  # type: ignore[arg-type]
        quiet,
        deadline=time.monotonic() + 30,
    )
    assert lb.status == "running"
    assert refused[0] == 1  # the first request found it down; then it waited, sending nothing


def test_a_load_balancer_that_stays_down_fails_with_its_log(
    balancer_on_loopback: tuple[int, list[bool], list[int]],
) -> None:
    port, _, _ = balancer_on_loopback
    spec = LabSpec.create(name="fake", replicas=4, port=port)
    lb = FakeContainer("fake-lb", {}, status="exited")
    lb.reload = lambda: None  # type: ignore[attr-defined]
    with pytest.raises(NotReady, match="4 replica\\(s\\) never answered") as failure:
        orchestrator.wait_served_by_all(
            FakeEngine(),  # type: ignore[arg-type]
            spec,
            lb,  # type: ignore[arg-type]
            quiet,
            deadline=time.monotonic() + 30,
        )
    assert failure.value.detail == "log of fake-lb"
