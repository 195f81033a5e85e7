"""The task watcher (lab.taskwatch): the upstream follows the running tasks, never undoes a change, and
says how fast it followed. Against the fake swarm manager, with a swarm lab up on it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest

from lab import live, orchestrator
from lab.engine import TaskInfo
from lab.errors import Conflict
from lab.loadbalancer import (
    NGINX_CONF,
    SPEC_FILE,
    LoadBalancer,
    spec_json,
    swap_script,
    upstream_hosts,
)
from lab.pytest_plugin import free_port
from lab.spec import LabSpec
from lab.taskwatch import (
    READY,
    Applied,
    Watcher,
    change_latency,
    event_time,
    last_change,
    parse_time,
    relevant,
    task_by_address,
)
from tests.unit.fake_swarm import FakeSwarm, serve_without_http_or_watcher

SERVICE = "sw-web"


# Pure -----------------------------------------------------------------------------------------
def test_docker_timestamps_become_unix_times_to_the_microsecond() -> None:
    assert parse_time("1970-01-01T00:00:01.5Z") == 1.5
    assert parse_time("2030-01-01T00:00:00.123456789Z") == pytest.approx(1893456000.123456)
    assert parse_time("2030-01-01T00:00:00Z") == 1893456000.0
    assert (
        parse_time("0001-01-01T00:00:00Z") is None and parse_time("") is None and parse_time("soon") is None
    )


def test_latency_runs_from_the_newest_task_change_to_the_reload() -> None:
    started = TaskInfo(1, "n", "running", "", ("10.0.0.2",), timestamp="1970-01-01T00:00:10Z")
    stopped = TaskInfo(2, "n", "failed", "", ("10.0.0.3",), updated_at="1970-01-01T00:00:11Z")
    tasks = {"10.0.0.2": started, "10.0.0.3": stopped}
    assert change_latency(["10.0.0.2"], [], tasks, 10.4) == 0.4  # a new task: from when it ran
    assert change_latency(["10.0.0.2"], ["10.0.0.3"], tasks, 11.25) == 0.25  # the newest change counts
    assert change_latency([], ["10.0.0.9"], tasks, 12.0) is None  # a task the manager has deleted


def test_an_address_belongs_to_the_task_that_had_it_last() -> None:
    old = TaskInfo(1, "n", "failed", "", ("a",), updated_at="1", networks={"net": "10.0.0.2"})
    new = TaskInfo(2, "n", "running", "", ("a",), updated_at="2", networks={"net": "10.0.0.2"})
    assert task_by_address([new, old], "net") == {"10.0.0.2": new}


def test_only_events_about_the_service_its_tasks_or_nodes_wake_it() -> None:
    assert relevant(
        {"Type": "service", "Action": "update", "Actor": {"Attributes": {"name": SERVICE}}}, SERVICE
    )
    assert not relevant(
        {"Type": "service", "Action": "update", "Actor": {"Attributes": {"name": "x"}}}, SERVICE
    )
    assert relevant({"Type": "node", "Action": "update", "Actor": {"Attributes": {"name": "n1"}}}, SERVICE)
    task = {
        "Type": "container",
        "Action": "die",
        "Actor": {"Attributes": {"com.docker.swarm.service.name": SERVICE}},
    }
    assert relevant(task, SERVICE) == "task container die"
    other = {"Type": "container", "Action": "die", "Actor": {"Attributes": {"name": "someone-else"}}}
    assert not relevant(other, SERVICE)
    assert event_time({"timeNano": 1_500_000_000}) == 1.5
    assert event_time({}, lambda: 7.0) == 7.0


def test_a_watchers_log_gives_its_last_change() -> None:
    applied = Applied(5.0, ("sw-web-2 10.0.0.4 on n1",), ("10.0.0.3",), 3, 0.42, "task", "event: x", "abc")
    log = "\n".join([READY, applied.line(), json.dumps({"kind": "waiting", "text": "…"}), "noise"])
    change = last_change(log)
    assert change is not None and change["latency_s"] == 0.42 and change["removed"] == ["10.0.0.3"]
    assert last_change(READY) is None


def test_the_swap_compares_the_stored_spec_under_a_lock() -> None:
    script = swap_script([("/a.next-1", "/a")], "f" * 64)
    assert "flock /run/lab-apply.lock" in script and f'= "{"f" * 64}" ] || exit 3' in script
    assert "mv /a.next-1 /a && nginx -s reload" in script
    assert "exit 3" not in swap_script([("/a.next-1", "/a")], None)


# A swarm lab on the fake ------------------------------------------------------------------------
@pytest.fixture
def lab(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSwarm]:
    serve_without_http_or_watcher(monkeypatch)
    engine = FakeSwarm()
    orchestrator.up(engine, LabSpec.create(name="sw", replicas=3, port=free_port(), engine="swarm"))
    yield engine


def served(engine: FakeSwarm) -> list[str]:
    return sorted(upstream_hosts(engine.container("sw-lb").files[NGINX_CONF]))


def running(engine: FakeSwarm) -> list[str]:
    return sorted(t.networks["sw-backend"] for t in engine.running(SERVICE))


def watcher_of(engine: FakeSwarm, lines: list[str] | None = None) -> Watcher:
    return Watcher(engine, "sw", say=(lines if lines is not None else []).append, clock=lambda: 1893456100.0)


def test_nothing_changes_while_the_upstream_is_on_the_running_tasks(lab: FakeSwarm) -> None:
    reloads = [e for e in lab.history if e.startswith("reload")]
    assert watcher_of(lab).look("test") is None
    assert [e for e in lab.history if e.startswith("reload")] == reloads


def test_a_replaced_task_leaves_the_upstream_and_its_replacement_joins(lab: FakeSwarm) -> None:
    look = watcher_of(lab)
    dead = next(t for t in lab.running(SERVICE) if t.slot == 2)
    new = lab.kill_task(SERVICE, 2)
    applied = look.look("event: task container die", woke_at=None)
    assert applied is not None
    assert applied.removed == (dead.networks["sw-backend"],)
    assert applied.added == (f"sw-web-2 {new.networks['sw-backend']} on host-1",)  # slot 2: node-1
    assert served(lab) == running(lab)
    assert applied.latency_s is not None and applied.measured_from == "task"
    assert json.loads(applied.line())["kind"] == "applied"
    assert look.look("poll", fresh=False) is None  # done: nothing more to do


def test_tasks_of_a_node_that_went_down_are_followed_to_their_new_nodes(lab: FakeSwarm) -> None:
    moved = lab.node_down(SERVICE, "node-1")
    applied = watcher_of(lab).look("event: node host-1 update")
    assert applied is not None and served(lab) == running(lab)
    assert all("on host-1" not in a for a in applied.added) and len(moved) == 1


def test_with_no_task_serving_the_last_upstream_stays(lab: FakeSwarm) -> None:
    before = served(lab)
    for t in lab.running(SERVICE):
        lab._set(t, state="failed", desired_state="shutdown")
    lines: list[str] = []
    assert watcher_of(lab, lines).look("reconcile") is None
    assert served(lab) == before  # nginx refuses an empty upstream; the old one may still have a chance
    assert "no task serves" in lines[-1]


def test_a_change_someone_made_meanwhile_is_never_undone(lab: FakeSwarm) -> None:
    look = watcher_of(lab)
    assert look.look("start") is None  # it has read the spec and the config
    live.configure(lab, "sw", algorithm="least_conn")  # `lab configure` from another process
    lab.kill_task(SERVICE, 1)
    assert look.look("poll", fresh=False) is None  # based on the spec it read: refused, nothing changed
    config = lab.container("sw-lb").files[NGINX_CONF]
    assert "least_conn;" in config
    applied = look.look("poll", fresh=False)  # it read them again: now it applies, on the new spec
    assert applied is not None and served(lab) == running(lab)
    assert "least_conn;" in lab.container("sw-lb").files[NGINX_CONF]


def test_apply_based_on_an_old_spec_is_refused_and_leaves_no_file_behind(lab: FakeSwarm) -> None:
    lb = LoadBalancer.find(lab, "sw")
    assert lb is not None
    old = lb.spec()
    new = old.with_changes(algorithm="random")
    lb.apply(new, lb_members(lab))
    with pytest.raises(Conflict):
        lb.apply(old.with_changes(algorithm="least_conn"), lb_members(lab), based_on=old)
    files = lab.container("sw-lb").files
    assert files[SPEC_FILE] == spec_json(new) and "random;" in files[NGINX_CONF]
    assert not [path for path in files if ".next" in path]


def lb_members(engine: FakeSwarm) -> list:  # type: ignore[type-arg]
    from lab.swarm_replicas import SwarmReplicas

    lb = LoadBalancer.find(engine, "sw")
    assert lb is not None
    return SwarmReplicas.find(engine, "sw", lb.container).members()


def test_the_watcher_follows_events_and_stops_when_told(lab: FakeSwarm) -> None:
    lines: list[str] = []
    look = watcher_of(lab, lines)
    stop = threading.Event()
    thread = threading.Thread(target=look.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not lab.streams and time.monotonic() < deadline:
        time.sleep(0.01)
    lab.kill_task(SERVICE, 3)
    lab.streams[0].queue.put(
        {"Type": "container", "Action": "die", "timeNano": 1893456099_500_000_000,
         "Actor": {"Attributes": {"com.docker.swarm.service.name": SERVICE}}}
    )  # fmt: skip
    while served(lab) != running(lab) and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive() and served(lab) == running(lab)
    assert lines[0] == READY
    change = last_change("\n".join(lines))
    assert change is not None and change["trigger"] in ("event: task container die", "poll", "start")
