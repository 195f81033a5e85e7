"""A swarm lab's replicas (lab.swarm_replicas) and its orchestration, against a fake swarm manager."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from lab import labels, orchestrator, watcher
from lab.engine import TaskInfo
from lab.errors import DeployFailed, InvalidInput, NotReady, SwarmError
from lab.loadbalancer import NGINX_CONF, SPEC_FILE, upstream_hosts
from lab.pytest_plugin import free_port
from lab.replicas import HTTPD_CAPS, SiteImage
from lab.spec import LabSpec
from lab.swarm_replicas import (
    HOSTNAME,
    STACK_NAMESPACE,
    SwarmReplicas,
    collision,
    members_of,
    service_request,
    task_errors,
)
from lab.taskwatch import Watcher
from lab.undo import Undo
from tests.unit.fake_swarm import MANAGER, FakeSwarm, serve_without_http_or_watcher

IMAGE = SiteImage("lab/site:v1", "v1")


def task(slot: int, *, state: str = "running", desired: str = "running", address: str = "10.0.0.9",
         network: str = "net", node: str = MANAGER, error: str = "") -> TaskInfo:  # fmt: skip
    return TaskInfo(slot, node, state, error, (address,), id=f"t{slot}{address}", desired_state=desired,
                    networks={network: address} if address else {})  # fmt: skip


# Pure -----------------------------------------------------------------------------------------
def test_the_service_is_hardened_health_checked_and_updated_start_first_with_rollback() -> None:
    spec = LabSpec.create(name="sw", replicas=4, engine="swarm")
    req = service_request(spec, IMAGE, "sw-backend", batch=2)
    assert (req.name, req.replicas, req.network, req.image) == ("sw-web", 4, "sw-backend", "lab/site:v1")
    assert req.hostname == HOSTNAME == "{{.Service.Name}}-{{.Task.Slot}}"  # X-Served-By: sw-web-3
    assert req.cap_add == HTTPD_CAPS and req.mem_limit == "128m"
    assert req.endpoint_mode == "dnsrr"  # no virtual IP: nginx names each task
    assert req.health is not None and "/dev/tcp/127.0.0.1/80" in req.health.command[-1]
    update = req.update
    assert (update.parallelism, update.order, update.failure_action) == (2, "start-first", "rollback")
    assert update.monitor > 0
    assert req.labels[labels.NAME] == "sw" and req.labels[labels.ROLE] == labels.ROLE_SERVICE
    assert req.labels[labels.ENGINE] == "swarm" and req.labels[labels.SITE_VERSION] == "v1"
    assert req.container_labels[labels.ROLE] == labels.ROLE_TASK  # not "web": no engine here manages it


def test_members_are_the_tasks_swarm_wants_running_that_run_with_an_address_on_the_overlay() -> None:
    tasks = [
        task(2, address="10.0.0.3"),
        task(1, address="10.0.0.2", node="node-1"),
        task(3, state="starting", address="10.0.0.4"),  # its health check has not passed yet
        task(4, desired="shutdown", address="10.0.0.5"),  # Swarm is stopping it
        task(5, address="10.0.0.6", network="other"),
        task(6, state="failed", desired="shutdown", address="10.0.0.7"),
    ]
    members = members_of("sw", tasks, "net", {"node-1": "host-1", MANAGER: "manager"})
    assert [(m.name, m.host, m.slot, m.node) for m in members] == [
        ("sw-web-1", "10.0.0.2", 1, "host-1"),
        ("sw-web-2", "10.0.0.3", 2, "manager"),
    ]


def test_a_name_taken_by_a_stack_or_someone_elses_service_is_refused() -> None:
    from lab.engine import ServiceInfo

    spec = LabSpec.create(name="shop", engine="swarm")
    stack = ServiceInfo("1", "shop_web", {STACK_NAMESPACE: "shop"})
    message = collision(spec, [stack])
    assert message is not None and "a stack named 'shop'" in message
    foreign = ServiceInfo("2", "shop-web", {})
    message = collision(spec, [foreign])
    assert message is not None and "'shop-web' exists and is not lab 'shop'" in message
    assert collision(spec, [ServiceInfo("3", "shop-web", {labels.NAME: "shop"})]) is None  # its own leftover
    assert collision(spec, [ServiceInfo("4", "other-web", {})]) is None


def test_task_errors_count_why_tasks_ended() -> None:
    tasks = [task(1, state="failed", error="No such image"), task(2, state="rejected", error="No such image"),
             task(3), task(4, state="failed")]  # fmt: skip
    assert task_errors(tasks) == {"No such image": 2, "failed": 1}


# The backend on a fake swarm --------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def backend(engine: FakeSwarm, lab: str = "sw", **options: object) -> SwarmReplicas:
    return SwarmReplicas(engine, lab, "sw-backend", "sw-web", place=lambda image, _p: image, **options)  # type: ignore[arg-type]


def quiet(_description: str, _fraction: float | None) -> None:
    pass


def test_prepare_refuses_an_engine_in_no_swarm_without_init_and_initialises_with_it() -> None:
    engine = FakeSwarm()
    engine.swarm_info = {"LocalNodeState": "inactive"}
    spec = LabSpec.create(name="sw", engine="swarm")
    with pytest.raises(SwarmError, match="add --init"):
        SwarmReplicas.prepare(engine, spec, init=False, undo=Undo())
    assert not engine.calls
    undo = Undo()
    made = SwarmReplicas.prepare(engine, spec, init=True, undo=undo)
    assert engine.calls == ["swarm init", "create overlay sw-backend"]
    assert labels.SWARM_INIT in engine.swarm_labels()
    overlay = engine.networks_by_name["sw-backend"]
    assert overlay.internal and overlay.labels[labels.ROLE] == labels.ROLE_BACKEND_NET
    assert (made.network, made.service) == ("sw-backend", "sw-web")
    engine.remove_network(overlay.info())
    engine.node_ids = [MANAGER]
    assert undo.run() == [] and engine.calls[-1] == "swarm leave"  # a failed up leaves it again


def test_prepare_refuses_a_worker_and_a_colliding_stack_before_making_anything() -> None:
    engine = FakeSwarm()
    engine.swarm_info = {
        "LocalNodeState": "active",
        "ControlAvailable": False,
        "RemoteManagers": [{"Addr": "10.1.1.1:2377"}],
    }
    with pytest.raises(
        SwarmError, match="this engine is a worker; the swarm's managers are at 10.1.1.1:2377"
    ):
        SwarmReplicas.prepare(engine, LabSpec.create(name="sw", engine="swarm"), init=True, undo=Undo())
    engine = FakeSwarm()
    engine.create_service(service_request(LabSpec.create(name="other"), IMAGE, "x"))
    engine.services_by_name["other-web"].labels = {STACK_NAMESPACE: "sw"}
    with pytest.raises(InvalidInput, match="a stack named 'sw' runs on this swarm"):
        SwarmReplicas.prepare(engine, LabSpec.create(name="sw", engine="swarm"), init=False, undo=Undo())
    assert not engine.networks_by_name


def test_start_returns_once_every_task_runs_and_gives_up_on_tasks_that_keep_failing() -> None:
    engine = FakeSwarm()
    spec = LabSpec.create(name="sw", replicas=3, engine="swarm")
    started = threading.Event()
    members = backend(engine).start(spec, IMAGE, quiet, started=started)
    assert [m.name for m in members] == ["sw-web-1", "sw-web-2", "sw-web-3"] and started.is_set()
    assert all(m.address.startswith("10.0.9.") for m in members)

    clock = Clock()
    stuck = FakeSwarm(auto_run=False)  # tasks that never pass their health check
    with pytest.raises(NotReady, match="0 of 3 tasks of sw-web ran after 18"):
        backend(stuck, clock=clock, sleep=clock.sleep).start(spec, IMAGE, quiet)

    failing = FakeSwarm(auto_run=False)  # tasks that fail as they start: Swarm would retry forever
    doomed = backend(failing, sleep=lambda _s: failing.fail_starting("sw-web", "No such image: lab/site:v1"))
    with pytest.raises(NotReady, match=r"0 of 3 tasks .* No such image: lab/site:v1 \(9x\)"):
        doomed.start(spec, IMAGE, quiet)


# Up, scale, deploy and down through the orchestrator ---------------------------------------------
@pytest.fixture
def swarm_lab(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeSwarm, LabSpec]]:
    """A swarm lab up on the fake: no HTTP, no watcher container (the tests run its looks)."""
    started: list[str] = []
    serve_without_http_or_watcher(monkeypatch, started)
    engine = FakeSwarm()
    spec = LabSpec.create(name="sw", replicas=3, port=free_port(), engine="swarm", weights="3,1,1")
    status = orchestrator.up(engine, spec)
    assert started == ["sw"]
    assert status.engine == "swarm" and {r.node for r in status.replicas} == {"host-m", "host-1", "host-2"}
    yield engine, spec


def lb_files(engine: FakeSwarm) -> tuple[str, LabSpec]:
    files = engine.container("sw-lb").files
    return files[NGINX_CONF], LabSpec.from_dict(json.loads(files[SPEC_FILE]))


def test_up_points_nginx_at_the_tasks_addresses_with_our_template_and_weights(
    swarm_lab: tuple[FakeSwarm, LabSpec],
) -> None:
    engine, spec = swarm_lab
    config, stored = lb_files(engine)
    assert stored == spec and stored.engine == "swarm"
    addresses = sorted(t.networks["sw-backend"] for t in engine.running("sw-web"))
    assert sorted(upstream_hosts(config)) == addresses
    assert "weight=3" in config and "resolver" not in config  # our balancing, no DNS at request time
    assert "# replica 1: task sw-web-1 on node host-m" in config
    lb = engine.container("sw-lb")
    assert sorted(lb.networks) == ["sw-backend", "sw-frontend"]  # on the overlay, published from a bridge
    assert engine.calls[:2] == ["create overlay sw-backend", "create service sw-web x3"]


def _sleeping_watcher(engine: FakeSwarm, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every wait of the backend runs one look of the watcher, as its container would meanwhile."""
    look = Watcher(engine, "sw", say=lambda _line: None)
    monkeypatch.setattr(
        SwarmReplicas, "__init__", _init_with(SwarmReplicas.__init__, lambda _s: look.look("test"))
    )


def _init_with(original, sleep):  # type: ignore[no-untyped-def]
    def init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("sleep", sleep)
        kwargs.setdefault("place", lambda image, _p: image)
        original(self, *args, **kwargs)

    return init


def test_scale_changes_the_replica_count_and_returns_once_the_upstream_holds_the_tasks(
    swarm_lab: tuple[FakeSwarm, LabSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _spec = swarm_lab
    _sleeping_watcher(engine, monkeypatch)
    events: list[str] = []
    scaled = orchestrator.scale(engine, "sw", 5, on_event=events.append)
    assert scaled.spec.replicas == 5 and scaled.spec.weights == (3, 1, 1, 1, 1)
    assert "update service sw-web replicas=5" in engine.calls
    config, stored = lb_files(engine)
    assert sorted(upstream_hosts(config)) == sorted(
        t.networks["sw-backend"] for t in engine.running("sw-web")
    )
    assert stored.replicas == 5
    assert any(e.startswith("task sw-web-5 (") for e in events)  # new tasks reported, the old ones not
    assert not any(e.startswith("task sw-web-1 ") for e in events)
    orchestrator.scale(engine, "sw", 2)
    assert len(upstream_hosts(lb_files(engine)[0])) == 2


def test_deploy_is_a_service_update_and_the_upstream_ends_on_the_new_tasks(
    swarm_lab: tuple[FakeSwarm, LabSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _spec = swarm_lab
    _sleeping_watcher(engine, monkeypatch)
    version = orchestrator.deploy(engine, "sw", tag="v2", batch=2)
    assert version == "v2"
    assert any(c.startswith("update service sw-web image=lab/site:v2") for c in engine.calls)
    running = engine.running("sw-web")
    assert {t.container_labels[labels.SITE_VERSION] for t in running} == {"v2"}
    assert sorted(upstream_hosts(lb_files(engine)[0])) == sorted(t.networks["sw-backend"] for t in running)


def test_a_deploy_swarm_rolls_back_fails_with_the_tasks_error_and_the_old_spec_stays(
    swarm_lab: tuple[FakeSwarm, LabSpec], monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    engine, spec = swarm_lab
    _sleeping_watcher(engine, monkeypatch)
    engine.fail_updates = True
    before = sorted(upstream_hosts(lb_files(engine)[0]))
    with pytest.raises(
        DeployFailed, match=r"task: non-zero exit \(1\).*Swarm rolled the service back and version"
    ):
        orchestrator.deploy(engine, "sw", tag="bad")
    config, stored = lb_files(engine)
    assert sorted(upstream_hosts(config)) == before
    assert stored == spec  # the spec names the site that serves


def test_status_names_each_tasks_node_and_down_removes_the_service_first(
    swarm_lab: tuple[FakeSwarm, LabSpec],
) -> None:
    engine, _spec = swarm_lab
    status = orchestrator.status(engine, "sw")
    assert status.engine == "swarm"
    assert [(r.name, r.node, r.health) for r in status.replicas] == [
        ("sw-web-1", "host-m", "ok (health check)"),
        ("sw-web-2", "host-1", "ok (health check)"),
        ("sw-web-3", "host-2", "ok (health check)"),
    ]
    removed = orchestrator.down(engine, "sw")
    assert removed.services == 1
    assert engine.history.index("remove service sw-web") < engine.history.index("release sw-lb")
    assert not engine.services() and not engine.containers(labels.lab_filter("sw"))
    assert not engine.networks(labels.lab_filter("sw"))
    assert removed.swarm == ""  # the fake's swarm was not the lab's: it stays, nothing said


def test_the_last_swarm_lab_down_leaves_a_swarm_the_lab_initialised(
    swarm_lab: tuple[FakeSwarm, LabSpec],
) -> None:
    engine, _spec = swarm_lab
    engine.swarm_record = {labels.SWARM_INIT: "2030-01-01T00:00:00Z test"}
    engine.node_ids = [MANAGER]
    removed = orchestrator.down(engine, "sw")
    assert removed.swarm == "left the swarm the lab had initialised" and engine.calls[-1] == "swarm leave"


def test_up_on_an_engine_in_no_swarm_is_refused_before_anything_is_built_or_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = FakeSwarm()
    engine.swarm_info = {"LocalNodeState": "inactive"}
    monkeypatch.setattr(watcher, "ensure_image", lambda *_a, **_k: pytest.fail("nothing is built first"))
    with pytest.raises(SwarmError, match="this engine is not in swarm mode: add --init"):
        orchestrator.up(engine, LabSpec.create(name="sw", port=free_port(), engine="swarm"))
    assert not engine.calls and not engine.by_name and not engine.networks_by_name
