"""The live model: membership snapshots become states, expected shares and events; counters and
membership join into the /api/state shape (no Docker)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from lab.livestate import (
    DOWN,
    DRAINING,
    SERVING,
    STARTING,
    LiveModel,
    Membership,
    ReplicaInfo,
    config_generation,
    diff,
    engine_event,
    expected,
    replica_state,
    upstream_hosts,
    upstream_weights,
)
from lab.render import nginx_view, render_nginx_conf
from lab.spec import LabSpec
from tests.unit.test_accesslog import T0, line, ns


def replica(
    i: int, status: str = "running", *, connected: bool = True, version: str = "v1", **kw: object
) -> ReplicaInfo:
    return ReplicaInfo(
        name=f"demo-web-{i}", index=i, status=status, connected=connected,
        address=f"172.28.0.{i + 1}:80" if connected else None, version=version, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def lab(n: int = 3, method: str = "round_robin", **kw: object) -> Membership:
    values: dict[str, object] = {
        "lab": "demo",
        "lb_status": "running",
        "method": method,
        "generation": "g1",
        "upstream": tuple(f"demo-web-{i}" for i in range(1, n + 1)),
        "replicas": tuple(replica(i) for i in range(1, n + 1)),
    }
    values.update(kw)
    return Membership(**values)  # type: ignore[arg-type]


def texts(events: list) -> list[tuple[str, str]]:
    return [(e.kind, e.text) for e in events]


# The config the load balancer serves ----------------------------------------------------------
def test_upstream_and_generation_come_from_the_rendered_config() -> None:
    spec = LabSpec.create(name="demo", replicas=3, algorithm="least_conn", check_site=False)
    view = nginx_view(spec, [("demo-web-1", 1), ("demo-web-4", 2), ("demo-web-3", 3)])
    config = render_nginx_conf(view)
    assert upstream_hosts(config) == ("demo-web-1", "demo-web-4", "demo-web-3")
    assert config_generation(config) == view.generation != ""
    assert upstream_hosts("") == () and config_generation("") == ""
    assert upstream_weights(config) == ((), None)


def test_weights_and_the_backup_are_read_per_upstream_position() -> None:
    """After a deploy, demo-web-4 holds slot 1: the config gives it slot 1's weight, and so does the view."""
    spec = LabSpec.create(name="demo", replicas=3, weights="3,1,1", backup=3, check_site=False)
    config = render_nginx_conf(nginx_view(spec, [("demo-web-2", 2), ("demo-web-4", 1), ("demo-web-3", 3)]))
    assert upstream_hosts(config) == ("demo-web-2", "demo-web-4", "demo-web-3")
    assert upstream_weights(config) == ((1, 3, 1), 3)


# States and expected shares ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("info", "in_upstream", "was_in_upstream", "state"),
    [
        (replica(1), True, True, SERVING),
        (replica(1), False, True, DRAINING),
        (replica(1), False, False, STARTING),
        (replica(1, "exited", exit_code=137), True, True, DOWN),
        (replica(1, "paused"), True, True, DOWN),
        (replica(1, connected=False), True, True, DOWN),
    ],
)
def test_replica_states(info: ReplicaInfo, in_upstream: bool, was_in_upstream: bool, state: str) -> None:
    upstream = (info.name,) if in_upstream else ()
    assert replica_state(info, upstream, {info.name} if was_in_upstream else set()) == state


def test_expected_shares_follow_weights_among_the_serving() -> None:
    m = lab(3, weights=(3, 1, 1))
    states = dict.fromkeys(m.upstream, SERVING)
    assert expected(m, states) == pytest.approx({"demo-web-1": 0.6, "demo-web-2": 0.2, "demo-web-3": 0.2})
    states["demo-web-1"] = DOWN
    assert expected(m, states) == pytest.approx({"demo-web-1": 0.0, "demo-web-2": 0.5, "demo-web-3": 0.5})


def test_a_backup_gets_nothing_while_others_serve_and_everything_when_alone() -> None:
    m = lab(2, backup=2)
    states = dict.fromkeys(m.upstream, SERVING)
    assert expected(m, states) == pytest.approx({"demo-web-1": 1.0, "demo-web-2": 0.0})
    states["demo-web-1"] = DOWN
    assert expected(m, states) == pytest.approx({"demo-web-1": 0.0, "demo-web-2": 1.0})


def test_ip_hash_has_no_expected_share_from_one_host() -> None:
    m = lab(3, method="ip_hash")
    assert set(expected(m, dict.fromkeys(m.upstream, SERVING)).values()) == {None}


# What happened between two snapshots ----------------------------------------------------------
def test_scale_up_then_down() -> None:
    three, four = lab(3), lab(4)
    starting = replace(four, upstream=three.upstream, generation="g1")
    assert texts(diff(three, starting, 1.0)) == [("scale", "demo-web-4 started (version v1)")]
    assert texts(diff(starting, four, 2.0)) == [("scale", "upstream now 4 replicas (+demo-web-4)")]
    drained = replace(four, upstream=three.upstream)
    assert texts(diff(four, drained, 3.0)) == [("scale", "upstream now 3 replicas (-demo-web-4)")]
    stopped = replace(drained, replicas=(*three.replicas, replica(4, "exited", exit_code=0)))
    assert texts(diff(drained, stopped, 4.0)) == [("scale", "demo-web-4 stopped after draining")]
    assert texts(diff(stopped, three, 5.0)) == [("scale", "demo-web-4 removed")]


def test_a_deploy_is_told_apart_from_a_scale_by_the_new_version() -> None:
    old = lab(2)
    new_replica = replica(3, version="v2")
    started = replace(old, replicas=(*old.replicas, new_replica))
    assert texts(diff(old, started, 1.0)) == [("deploy", "demo-web-3 started (version v2)")]
    swapped = replace(started, upstream=("demo-web-2", "demo-web-3"))
    assert texts(diff(started, swapped, 2.0)) == [
        ("deploy", "upstream now 2 replicas (+demo-web-3, -demo-web-1)")
    ]


def test_chaos_kill_pause_disconnect_and_restore() -> None:
    m = lab(3)
    killed = replace(m, replicas=(replica(1, "exited", exit_code=137), *m.replicas[1:]))
    assert texts(diff(m, killed, 1.0)) == [("chaos", "demo-web-1 exited (exit 137, SIGKILL)")]
    assert texts(diff(killed, m, 2.0)) == [("chaos", "demo-web-1 started again")]
    paused = replace(m, replicas=(m.replicas[0], replica(2, "paused"), m.replicas[2]))
    assert texts(diff(m, paused, 3.0)) == [("chaos", "demo-web-2 frozen (paused)")]
    assert texts(diff(paused, m, 4.0)) == [("chaos", "demo-web-2 unpaused")]
    cut = replace(m, replicas=(*m.replicas[:2], replica(3, connected=False)))
    assert texts(diff(m, cut, 5.0)) == [("chaos", "demo-web-3 cut from the backend network")]
    left_out = replace(cut, upstream=m.upstream[:2])
    assert texts(diff(cut, left_out, 6.0)) == [("chaos", "upstream now 2 replicas (-demo-web-3)")]


def test_configure_tells_the_method_and_weights() -> None:
    m = lab(3)
    changed = replace(m, method="least_conn", weights=(2, 1, 1), generation="g2")
    assert texts(diff(m, changed, 1.0)) == [("configure", "method round_robin -> least_conn; weights 2,1,1")]
    assert diff(None, m, 0.0) == [] and diff(m, m, 1.0) == []


def test_engine_events_tell_the_load_balancers_life_and_reloads() -> None:
    lb = {"lab.role": "lb", "exitCode": "137"}
    assert engine_event("die", lb) == ("lb", "load balancer exited (exit 137)")
    assert engine_event("start", lb) == ("lb", "load balancer started")
    reload = (
        "exec_start: sh -c mv /etc/nginx/nginx.conf.next /etc/nginx/nginx.conf && "
        "mv /etc/nginx/lab-spec.json.next /etc/nginx/lab-spec.json && nginx -s reload"
    )
    assert engine_event(reload, lb) == ("reload", "nginx reloads its config gracefully")
    assert engine_event("exec_start: nginx -t -q -c /etc/nginx/nginx.conf.next", lb) is None
    assert engine_event("die", {"lab.role": "web"}) is None


# The joined state ---------------------------------------------------------------------------------
def test_state_joins_counters_and_membership_into_the_api_shape() -> None:
    model = LiveModel("demo", since=T0)
    model.update(lab(3), T0)
    addresses = [r.address for r in lab(3).replicas]
    text = "".join(line(ns(i / 100), upstream=addresses[i % 3]) + "\n" for i in range(300))
    text += line(ns(3.5), upstream="-", status=502, upstream_status="-", upstream_time="-") + "\n"
    model.reader.feed(text.encode())
    killed = replace(lab(3), replicas=(replica(1, "exited", exit_code=137), *lab(3).replicas[1:]))
    model.update(killed, T0 + 4)
    state = model.state(T0 + 4.5)
    assert [r.name for r in state.replicas] == ["demo-web-1", "demo-web-2", "demo-web-3"]
    assert [r.state for r in state.replicas] == [DOWN, SERVING, SERVING]
    assert [r.requests for r in state.replicas] == [100, 100, 100]
    assert [r.expected_share for r in state.replicas] == [0.0, 0.5, 0.5]
    assert sum(r.share for r in state.replicas) == pytest.approx(1.0, abs=1e-3)  # rounded to 4 places
    assert state.total_requests == 301 and state.unattributed == 1 and state.errors == 1
    assert [e.kind for e in state.events] == ["watch", "chaos"]
    data = json.loads(json.dumps(state.as_json()))
    assert {"lab", "method", "replicas", "total_requests", "since"} <= set(data)
    assert set(data["replicas"][0]) >= {
        "name",
        "state",
        "requests",
        "rps",
        "share",
        "expected_share",
        "p95_ms",
        "errors",
    }
    assert data["replicas"][1]["p95_ms"] == 2.0


def test_a_removed_replicas_requests_stay_in_the_total_as_unattributed() -> None:
    model = LiveModel("demo", since=T0)
    model.update(lab(2), T0)
    addresses = [r.address for r in lab(2).replicas]
    model.reader.feed("".join(line(ns(i / 10), upstream=addresses[i % 2]) + "\n" for i in range(10)).encode())
    model.update(replace(lab(1)), T0 + 2)
    state = model.state(T0 + 2)
    assert [(r.name, r.requests) for r in state.replicas] == [("demo-web-1", 5)]
    assert state.total_requests == 10 and state.unattributed == 5
    assert state.replicas[0].share == 1.0
