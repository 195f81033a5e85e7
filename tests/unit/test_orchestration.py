"""The orchestrator's transactions (up, scale, deploy, down) against the fake engine: no Docker needed."""

from __future__ import annotations

import http.server
import itertools
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from lab import labels, live, orchestrator
from lab.engine import ContainerRequest
from lab.errors import DeployFailed, InvalidInput, LabError, NotReady
from lab.livestate import upstream_hosts, upstream_weights
from lab.loadbalancer import NGINX_CONF, SPEC_FILE, LoadBalancer
from lab.pytest_plugin import free_port
from lab.replicas import ContainerReplicas, SiteImage, replica_request, start_containers
from lab.spec import LabSpec
from tests.unit.fake_engine import FakeEngine

SPEC = LabSpec.create(name="fake", replicas=4)
IMAGE = SiteImage("lab/site:v1", "v1")


def replica_requests(spec: LabSpec = SPEC, network: str = "fake-backend") -> list[ContainerRequest]:
    return [replica_request(spec, i, i, IMAGE, network) for i in spec.indices()]


def quiet(_description: str, _fraction: float | None) -> None:
    pass


def names(engine: FakeEngine, role: str = labels.ROLE_WEB) -> list[str]:
    return sorted(c.name for c in engine.containers(labels.lab_filter("fake", role)))


def test_replicas_start_in_parallel_and_all_listen() -> None:
    engine = FakeEngine()
    started = start_containers(engine, replica_requests(), quiet)
    assert sorted(c.name for c in started) == SPEC.replica_names()
    assert all(c.status == "running" for c in started)
    assert all(c.labels[labels.NAME] == "fake" and c.labels[labels.ROLE] == "web" for c in started)
    assert [c.labels[labels.SLOT] for c in started] == ["1", "2", "3", "4"]


def test_a_replica_that_exits_while_starting_fails_with_its_log() -> None:
    engine = FakeEngine(fail_start={"fake-web-3"})
    with pytest.raises(NotReady, match="fake-web-3 exited while starting") as failure:
        start_containers(engine, replica_requests(), quiet)
    assert failure.value.detail == "log of fake-web-3"


@pytest.mark.parametrize("error", [NotReady("boom"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_transaction_removes_everything_of_the_lab(error: BaseException) -> None:
    engine = FakeEngine()
    other = LabSpec.create(name="other", replicas=1)
    start_containers(engine, replica_requests(other, "other-backend"), quiet)
    with pytest.raises(type(error)), orchestrator.rollback_on_failure(engine, "fake"):
        engine.create_network("fake-backend", labels.for_lab("fake", labels.ROLE_BACKEND_NET), internal=True)
        start_containers(engine, replica_requests(), quiet)
        raise error
    assert not engine.containers(labels.lab_filter("fake")) and not engine.networks(labels.lab_filter("fake"))
    assert [c.name for c in engine.containers(labels.lab_filter("other"))] == ["other-web-1"]  # untouched


def test_up_refuses_a_running_lab_and_sweeps_a_dead_one() -> None:
    engine = FakeEngine()
    start_containers(engine, replica_requests(), quiet)
    with pytest.raises(InvalidInput, match="already up"):
        orchestrator._refuse_if_present(engine, SPEC)
    for name in SPEC.replica_names():
        engine.container(name).status = "exited"  # what an engine restart leaves behind
    orchestrator._refuse_if_present(engine, SPEC)
    assert engine.containers(labels.lab_filter("fake")) == []


def test_only_running_or_frozen_replicas_on_the_backend_are_upstream_members() -> None:
    engine = FakeEngine()
    start_containers(engine, replica_requests(), quiet)
    engine.container("fake-web-1").status = "exited"  # killed: its name no longer resolves
    engine.container(
        "fake-web-2"
    ).status = "paused"  # frozen: still resolves, nginx's passive health handles it
    engine.container("fake-web-3").networks = []  # disconnected
    members = ContainerReplicas(engine, "fake", "fake-backend").members()
    assert [m.name for m in members] == ["fake-web-2", "fake-web-4"]


# Teardown never races the engine -----------------------------------------------------------------
def test_a_failed_start_returns_only_after_every_create_in_flight_has_ended() -> None:
    engine = FakeEngine(fail_start={"fake-web-1"}, slow_create=0.05)
    spec = LabSpec.create(name="fake", replicas=24)
    with pytest.raises(NotReady), orchestrator.rollback_on_failure(engine, "fake"):
        engine.create_network("fake-backend", labels.for_lab("fake", labels.ROLE_BACKEND_NET), internal=True)
        start_containers(engine, replica_requests(spec), quiet)
    assert engine.in_flight == 0
    assert engine.races == 0  # no network was removed while a container was being created
    assert not engine.containers(labels.lab_filter("fake")) and not engine.networks(labels.lab_filter("fake"))


def test_containers_go_before_networks_are_removed() -> None:
    engine = FakeEngine()
    engine.create_network("fake-backend", labels.for_lab("fake", labels.ROLE_BACKEND_NET), internal=True)
    start_containers(engine, replica_requests(), quiet)
    removed = orchestrator.remove_lab(engine, "fake")
    assert (removed.containers, removed.networks, removed.left) == (4, 1, ())
    started = sorted(engine.started)
    assert sorted(engine.history[:4]) == [
        f"release {n}" for n in started
    ]  # one at a time, before any removal
    assert sorted(engine.history[4:8]) == [f"remove container {n}" for n in started]
    assert engine.history[8:] == ["remove network fake-backend"]


def test_replicas_waiting_for_their_log_are_killed_so_a_rollback_does_not_wait_for_them() -> None:
    engine = FakeEngine(fail_start={"fake-web-4"})
    engine.hang_logs = True  # httpd never says it listens: only a kill ends the wait
    with pytest.raises(NotReady, match="fake-web-4"):
        start_containers(engine, replica_requests(), quiet)
    assert engine.started - {"fake-web-4"} <= set(engine.killed)
    for name in engine.killed:  # taken off the network before the kill, so no two endpoints go at once
        assert engine.history.index(f"release {name}") < engine.history.index(f"kill {name}")
    assert not engine.log_waits_timed_out  # each wait ended because its container was killed


def test_a_config_that_fails_its_test_stops_the_replica_start() -> None:
    engine = FakeEngine(slow_create=0.2)
    spec = LabSpec.create(name="fake", replicas=40)
    with ThreadPoolExecutor(max_workers=1) as side:
        beside = side.submit(_fail_soon)
        with pytest.raises(LabError, match="nginx -t"):
            start_containers(engine, replica_requests(spec), quiet, beside=beside)
    assert engine.in_flight == 0
    assert len(engine.containers(labels.lab_filter("fake"))) < 40


def _fail_soon() -> None:
    raise LabError("the rendered nginx config failed `nginx -t`")


# Up, against the fake engine ---------------------------------------------------------------------
@pytest.fixture
def served_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """No HTTP: the fake's load balancer counts as serving as soon as it runs."""

    def wait_serving(self: LoadBalancer, *_: object, **__: object) -> None:
        self.raise_if_config_refused()
        assert self.state().status == "running"

    monkeypatch.setattr(LoadBalancer, "wait_serving", wait_serving)


def _up(engine: FakeEngine, **options: object) -> LabSpec:
    spec = LabSpec.create(name="fake", port=free_port(), **options)  # type: ignore[arg-type]
    orchestrator.up(engine, spec)
    return spec


def lb_files(engine: FakeEngine) -> tuple[str, LabSpec]:
    """What the load balancer balances with, and the spec it stores, as written into it."""
    files = engine.container("fake-lb").files
    return files[NGINX_CONF], LabSpec.from_dict(json.loads(files[SPEC_FILE]))


@pytest.mark.usefixtures("served_at_once")
def test_up_starts_every_slot_and_the_load_balancer_with_config_and_spec_from_one_spec() -> None:
    engine = FakeEngine()
    spec = _up(engine, replicas=3, weights="3,1,1")
    assert names(engine) == ["fake-web-1", "fake-web-2", "fake-web-3"]
    config, stored = lb_files(engine)
    assert stored == spec
    assert upstream_hosts(config) == ("fake-web-1", "fake-web-2", "fake-web-3")
    assert upstream_weights(config) == ((3, 1, 1), None)
    lb = engine.container("fake-lb")
    assert lb.status == "running" and sorted(lb.networks) == ["fake-backend", "fake-frontend"]
    assert not names(engine, labels.ROLE_CHECK)  # nginx tests its config as it starts: no throwaway container


@pytest.mark.usefixtures("served_at_once")
def test_up_with_a_config_that_fails_nginx_t_leaves_nothing() -> None:
    engine = FakeEngine()
    engine.config_ok = False
    with pytest.raises(LabError, match="nginx -t"):
        _up(engine, replicas=3)
    assert not engine.containers(labels.lab_filter("fake")) and not engine.networks(labels.lab_filter("fake"))
    assert engine.races == 0


# Scale: weights and the backup follow the slots ----------------------------------------------------
@pytest.mark.usefixtures("served_at_once")
def test_scaling_up_keeps_each_weight_and_gives_new_replicas_weight_1() -> None:
    engine = FakeEngine()
    _up(engine, replicas=3, weights="3,1,2", backup=2)
    events: list[str] = []
    scaled = orchestrator.scale(engine, "fake", 5, on_event=events.append)
    assert scaled.spec.weights == (3, 1, 2, 1, 1) and scaled.spec.backup == 2
    assert scaled.notes == ("new replicas 4-5 get weight 1 (weights now 3,1,2,1,1)",)
    assert scaled.notes[0] in events
    config, stored = lb_files(engine)
    assert stored == scaled.spec
    assert upstream_hosts(config) == tuple(f"fake-web-{i}" for i in range(1, 6))
    assert upstream_weights(config) == ((3, 1, 2, 1, 1), 2)


@pytest.mark.usefixtures("served_at_once")
def test_scaling_down_removes_the_highest_slots_after_taking_them_out_of_the_upstream() -> None:
    engine = FakeEngine()
    _up(engine, replicas=4, weights="3,1,2,5", backup=4)
    scaled = orchestrator.scale(engine, "fake", 2)
    assert scaled.spec.weights == (3, 1) and scaled.spec.backup is None
    assert scaled.notes == ("weights now 3,1", "replica 4 is no longer a backup: its slot is gone")
    assert names(engine) == ["fake-web-1", "fake-web-2"]
    config, stored = lb_files(engine)
    assert stored == scaled.spec and upstream_weights(config) == ((3, 1), None)
    # The upstream changed (a reload) before the retired replicas stopped.
    assert engine.history.index("reload fake-lb") < engine.history.index("stop fake-web-3")


@pytest.mark.usefixtures("served_at_once")
def test_scaling_to_the_same_count_changes_nothing() -> None:
    engine = FakeEngine()
    spec = _up(engine, replicas=2)
    before = engine.container("fake-lb").workers
    assert orchestrator.scale(engine, "fake", 2).spec == spec
    assert engine.container("fake-lb").workers == before


# Deploy: replacements take their predecessors' slots -------------------------------------------------
@pytest.mark.usefixtures("served_at_once")
def test_a_rolling_deploy_of_a_weighted_lab_keeps_the_weights_in_nginx_and_in_the_spec() -> None:
    """The bug this guards against: after a deploy nginx balanced 3,1,1 as equal weights while the
    stored spec still said 3,1,1, so `lab verify` judged the right spread against the wrong config."""
    engine = FakeEngine()
    spec = _up(engine, replicas=3, weights="3,1,1")
    version = orchestrator.deploy(engine, "fake", tag="v2")
    assert version == "v2"
    assert names(engine) == ["fake-web-4", "fake-web-5", "fake-web-6"]
    config, stored = lb_files(engine)
    assert stored == spec  # the same spec: nothing but the version changed
    assert upstream_hosts(config) == ("fake-web-4", "fake-web-5", "fake-web-6")
    assert upstream_weights(config) == ((3, 1, 1), None)
    slots = {
        c.name: c.labels[labels.SLOT] for c in engine.containers(labels.lab_filter("fake", labels.ROLE_WEB))
    }
    assert slots == {"fake-web-4": "1", "fake-web-5": "2", "fake-web-6": "3"}
    lab = orchestrator.find_running(engine, "fake")
    assert lab.weights(lab.replicas) == [3, 1, 1]


@pytest.mark.usefixtures("served_at_once")
def test_a_deploy_whose_second_batch_fails_rolls_back_the_replicas_already_replaced() -> None:
    engine = FakeEngine(fail_start={"fake-web-5"})  # the second batch's new replica never listens
    spec = _up(engine, replicas=3, weights="3,1,1")
    old_version = engine.container("fake-web-1").labels[labels.SITE_VERSION]
    events: list[str] = []
    with pytest.raises(DeployFailed, match=f"version {old_version} serves again"):
        orchestrator.deploy(engine, "fake", tag="v2", batch=1, on_event=events.append)
    # fake-web-4 (v2, slot 1) replaced fake-web-1; fake-web-5 (v2, slot 2) never listened and went;
    # then a new fake-web-5 of the old version took slot 1 back from fake-web-4.
    assert names(engine) == ["fake-web-2", "fake-web-3", "fake-web-5"]
    versions = {
        c.name: c.labels[labels.SITE_VERSION]
        for c in engine.containers(labels.lab_filter("fake", labels.ROLE_WEB))
    }
    assert set(versions.values()) == {old_version}
    assert engine.container("fake-web-5").labels[labels.SLOT] == "1"
    config, stored = lb_files(engine)
    assert stored == spec
    assert upstream_hosts(config) == ("fake-web-5", "fake-web-2", "fake-web-3")
    assert upstream_weights(config) == ((3, 1, 1), None)
    assert any("rolling back" in e for e in events)


@pytest.mark.usefixtures("served_at_once")
def test_a_deploy_failing_in_its_first_batch_leaves_the_lab_as_it_was() -> None:
    engine = FakeEngine(fail_start={"fake-web-3"})
    _up(engine, replicas=2)
    config_before, _ = lb_files(engine)
    with pytest.raises(DeployFailed):
        orchestrator.deploy(engine, "fake", tag="v2", batch=2)
    assert names(engine) == ["fake-web-1", "fake-web-2"]
    assert lb_files(engine)[0] == config_before


@pytest.mark.parametrize(("options", "message"), [({"tag": "../x"}, "tag must be"), ({"batch": 9}, "batch")])
@pytest.mark.usefixtures("served_at_once")
def test_a_bad_deploy_is_refused_before_anything_changes(options: dict[str, object], message: str) -> None:
    engine = FakeEngine()
    _up(engine, replicas=2)
    with pytest.raises(InvalidInput, match=message):
        orchestrator.deploy(engine, "fake", **options)  # type: ignore[arg-type]
    assert names(engine) == ["fake-web-1", "fake-web-2"] and not engine.built


# Configure: a config that fails nginx -t never replaces the one that serves ---------------------------
@pytest.mark.usefixtures("served_at_once")
def test_configure_changes_config_and_spec_together_and_a_failing_config_changes_neither() -> None:
    engine = FakeEngine()
    _up(engine, replicas=3)
    spec = live.configure(engine, "fake", weights="1,2,3")
    config, stored = lb_files(engine)
    assert stored == spec and upstream_weights(config) == ((1, 2, 3), None)
    engine.config_ok = False
    with pytest.raises(InvalidInput, match="old one keeps serving"):
        live.configure(engine, "fake", algorithm="least_conn")
    assert lb_files(engine) == (config, stored)
    assert not any(path.endswith(".next") for path in engine.container("fake-lb").files)


@pytest.mark.usefixtures("served_at_once")
def test_a_name_dns_answers_late_is_waited_out_and_one_that_never_resolves_fails_the_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = FakeEngine()
    _up(engine, replicas=3)
    engine.unresolved_tests = 3  # Docker's DNS answers on the fourth try
    spec = live.configure(engine, "fake", weights="1,2,3")
    assert lb_files(engine)[1] == spec and engine.unresolved_tests == 0
    before = lb_files(engine)
    monkeypatch.setattr("lab.loadbalancer.DNS_PATIENCE", 0.3)
    engine.unresolved_tests = 1000
    with pytest.raises(InvalidInput, match="old one keeps serving"):
        live.configure(engine, "fake", weights="3,2,1")
    assert lb_files(engine) == before and engine.unresolved_tests > 990  # a bounded wait, then the error


# Networks the engine will not release ----------------------------------------------------------
def _stuck_backend(engine: FakeEngine, lab: str = "fake") -> None:
    """What a dead lab may leave: a network the engine still counts an endpoint on."""
    engine.create_network(f"{lab}-backend", labels.for_lab(lab, labels.ROLE_BACKEND_NET), internal=True)
    engine.networks_by_name[f"{lab}-backend"].phantom = True


def test_down_removes_what_it_can_and_names_a_stuck_network_with_the_cure() -> None:
    engine = FakeEngine()
    _stuck_backend(engine)
    engine.create_network("fake-frontend", labels.for_lab("fake", labels.ROLE_FRONTEND_NET), internal=False)
    removed = orchestrator.down(engine, "fake")
    assert removed.networks == 1 and not removed.running
    assert [(left.kind, left.name) for left in removed.left] == [("network", "fake-backend")]
    assert "restart the Docker engine" in removed.left[0].reason
    assert not removed.nothing
    line = orchestrator.leftover_lines(removed.left)[0]
    assert line.startswith("left behind: network fake-backend: the engine still counts an endpoint")


def test_a_container_that_is_not_the_labs_is_never_touched_whatever_network_it_is_on() -> None:
    engine = FakeEngine()
    engine.create_network("fake-backend", labels.for_lab("fake", labels.ROLE_BACKEND_NET), internal=True)
    start_containers(engine, replica_requests(), quiet)
    stranger = engine.create_container(
        ContainerRequest(name="stranger", image="x", labels={}, network="fake-backend")
    )
    engine.start(stranger)
    removed = orchestrator.down(engine, "fake")
    assert removed.containers == 4 and removed.networks == 0 and not removed.running
    assert "stranger" in engine.by_name and engine.container("stranger").status == "running"
    assert engine.container("stranger").networks == ["fake-backend"] and "stranger" not in engine.killed
    assert "container stranger, not of this lab, is on it and is left alone" in removed.left[0].reason


def test_down_reports_a_lab_container_that_still_runs() -> None:
    engine = FakeEngine()
    engine.create_network("fake-backend", labels.for_lab("fake", labels.ROLE_BACKEND_NET), internal=True)
    start_containers(engine, replica_requests(), quiet)
    engine.unremovable = {"fake-web-2"}
    removed = orchestrator.down(engine, "fake")
    assert removed.running == ("fake-web-2",)
    assert [left.name for left in removed.left] == ["fake-web-2"]


@pytest.mark.usefixtures("served_at_once")
def test_up_does_not_depend_on_a_stuck_network() -> None:
    engine = FakeEngine()
    _stuck_backend(engine)
    spec = _up(engine, replicas=3)
    backend = engine.container("fake-web-1").networks[0]
    assert (
        backend.startswith("fake-backend-") and engine.networks_by_name[backend].labels[labels.NAME] == "fake"
    )
    assert engine.container("fake-lb").networks == ["fake-frontend", backend]
    assert engine.networks_by_name["fake-backend"].phantom  # left alone
    lab = orchestrator.find_running(engine, "fake")
    assert lab.backend.network == backend
    assert [m.name for m in lab.backend.members()] == spec.replica_names()
    lab_status = orchestrator.status(engine, "fake", known={})
    assert [(n.name, n.reason) for n in lab_status.stuck_networks] == [("fake-backend", orchestrator.STUCK)]
    note = orchestrator.stuck_note("fake", lab_status.stuck_networks)
    assert note.startswith("lab fake runs on new networks: fake-backend is stuck (the engine still counts")
    assert "restart the Docker engine to clear it" in note
    assert len(note.splitlines()) == 1
    removed = orchestrator.down(engine, "fake")
    assert removed.containers == 4 and removed.networks == 2 and not removed.running
    assert [left.name for left in removed.left] == ["fake-backend"]


@pytest.mark.usefixtures("served_at_once")
def test_a_rollback_names_the_network_it_had_to_leave(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = FakeEngine(fail_start={"fake-web-2"})
    attach = engine.attach

    def attach_and_stick(network: str, container: object, aliases: list[str] | None = None) -> None:
        attach(network, container, aliases)  # type: ignore[arg-type]
        engine.networks_by_name[network].phantom = True  # the engine loses count of this endpoint

    monkeypatch.setattr(engine, "attach", attach_and_stick)
    with pytest.raises(NotReady) as failure:
        _up(engine, replicas=3)
    assert "left behind: network fake-backend: the engine still counts an endpoint" in failure.value.detail
    assert not engine.containers(labels.lab_filter("fake"))
    assert engine.races == 0


# Waiting for every replica -----------------------------------------------------------------------
class _FlakyEngine(FakeEngine):
    """The load balancer's nginx exits at start for a while; its restart policy brings it back."""

    def __init__(self, down_for: float, up: list[bool]) -> None:
        super().__init__()
        self.back_at = time.monotonic() + down_for
        self.up = up

    def state(self, container: object) -> object:  # type: ignore[override]
        from lab.engine import ContainerState

        self.up[0] = time.monotonic() >= self.back_at
        return ContainerState("running" if self.up[0] else "restarting")


@pytest.fixture
def balancer_on_loopback() -> Iterator[tuple[int, list[bool], list[int]]]:
    """An HTTP server on 127.0.0.1 answering as lab `fake` would once `up[0]` is True; `refused[0]`
    counts the requests it got before."""
    up, refused = [False], [0]
    replica_names = iter(itertools.cycle(SPEC.replica_names()))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            if not up[0]:
                refused[0] += 1
                self.send_response(502)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("X-Served-By", next(replica_names))
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


def _balancer(engine: FakeEngine, status: str, lb_labels: dict[str, str] | None = None) -> LoadBalancer:
    container = engine.create_container(
        ContainerRequest(name="fake-lb", image="n", labels=lb_labels or {}, network="x")
    )
    engine.container("fake-lb").status = status
    return LoadBalancer(engine, container)


def test_a_load_balancer_its_restart_policy_brings_back_is_waited_for_without_load(
    balancer_on_loopback: tuple[int, list[bool], list[int]],
) -> None:
    port, up, refused = balancer_on_loopback
    spec = LabSpec.create(name="fake", replicas=4, port=port)
    engine = _FlakyEngine(down_for=1.5, up=up)  # longer than the request budget lasts against quick 502s
    lb = _balancer(engine, "restarting")
    lb.wait_serving(spec, spec.replica_names(), quiet, deadline=time.monotonic() + 30)
    assert up[0]
    assert refused[0] == 1  # the first request found it down; then it waited, sending nothing


def test_a_load_balancer_that_stays_down_fails_with_its_log(
    balancer_on_loopback: tuple[int, list[bool], list[int]],
) -> None:
    port, _, _ = balancer_on_loopback
    spec = LabSpec.create(name="fake", replicas=4, port=port)
    engine = FakeEngine()
    lb = _balancer(engine, "exited")
    with pytest.raises(NotReady, match="4 replica\\(s\\) never answered") as failure:
        lb.wait_serving(spec, spec.replica_names(), quiet, deadline=time.monotonic() + 30)
    assert failure.value.detail == "log of fake-lb"


def test_a_config_nginx_refused_as_it_started_is_told_at_once_with_its_log() -> None:
    engine = FakeEngine()
    engine.config_ok = False  # nginx exits at start with [emerg]; its restart policy tries again
    spec = LabSpec.create(name="fake", replicas=2, port=free_port())  # nothing listens there
    lb = _balancer(engine, "restarting", labels.for_lab("fake", labels.ROLE_LB))
    began = time.monotonic()
    with pytest.raises(LabError, match="failed `nginx -t`") as failure:
        lb.wait_serving(spec, spec.replica_names(), quiet, deadline=time.monotonic() + 30)
    assert time.monotonic() - began < 5  # not the whole deadline
    assert "[emerg]" in failure.value.detail


def test_names_that_do_not_resolve_yet_are_waited_out_not_called_a_bad_config() -> None:
    engine = FakeEngine()
    lb = _balancer(engine, "restarting", labels.for_lab("fake", labels.ROLE_LB))
    engine.logs = lambda *_, **__: 'nginx: [emerg] host not found in upstream "fake-web-1:80"'  # type: ignore[method-assign]
    lb.raise_if_config_refused()  # Docker's DNS answering late is no error of the config
