"""The reaper without Docker: when it reaps, what it removes, how its container is locked down."""

from __future__ import annotations

import json
import urllib.parse

import pytest

from lab import labels, reaper, reaper_agent
from lab.errors import InvalidInput
from lab.reaper_agent import Watch, parse_keep, parse_response, reap, release_swarm


# When --------------------------------------------------------------------------------------
def test_a_session_reaper_waits_while_any_connection_is_open() -> None:
    watch = Watch(started=0.0, grace=10, first=60)
    watch.connected()
    watch.connected()
    assert watch.wait(1000.0) is None  # only a connection closing can end it
    watch.disconnected(1000.0)
    assert watch.wait(1005.0) is None  # one xdist worker left, another still runs
    watch.disconnected(1010.0)
    assert watch.wait(1015.0) == pytest.approx(5.0)  # the grace period runs
    assert watch.wait(1020.0) == pytest.approx(0.0)


def test_a_connection_within_the_grace_period_saves_the_labs() -> None:
    watch = Watch(started=0.0, grace=10, first=60)
    watch.connected()
    watch.disconnected(100.0)
    watch.connected()  # 5 s later: a new worker of the same session
    assert watch.wait(200.0) is None


def test_nobody_ever_connecting_reaps_after_the_first_connection_timeout() -> None:
    watch = Watch(started=50.0, grace=10, first=60)
    assert watch.wait(50.0) == pytest.approx(60.0)
    assert watch.wait(111.0) < 0


def test_a_deadline_reaps_even_with_connections_open() -> None:
    watch = Watch(started=0.0, grace=10, first=60, deadline=30.0)
    watch.connected()
    assert watch.wait(10.0) == pytest.approx(20.0)
    assert watch.wait(31.0) < 0


def test_a_deadline_reaper_listens_to_nobody() -> None:
    watch = Watch(started=0.0, grace=10, first=60, deadline=1800.0, listening=False)
    assert watch.wait(0.0) == pytest.approx(1800.0)  # the first-connection timeout does not apply


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ("keep t-abc123\n", "t-abc123"),
        ("keep kept-gw0-1a2b", "kept-gw0-1a2b"),
        ("keep Bad_Name", None),
        ("keep ", None),
        ("keep a b", None),
        ("reap everything", None),
        ("", None),
    ],
)
def test_only_a_well_formed_keep_line_keeps_a_lab(line: str, name: str | None) -> None:
    assert parse_keep(line) == name


# What ----------------------------------------------------------------------------------------
class FakeEngine:
    """The engine's answers to the reaper's few calls; deletes are recorded."""

    def __init__(self, containers: list[dict], networks: list[dict], volumes: list[dict]) -> None:
        self.listed = {
            "/containers/json": containers,
            "/networks": networks,
            "/volumes": {"Volumes": volumes},
        }
        self.deleted: list[str] = []
        self.filters: list[object] = []

    def json(self, path: str, query: dict[str, str] | None = None) -> object:
        self.filters.append(json.loads((query or {})["filters"]))
        return self.listed[path]

    def delete(self, path: str, query: dict[str, str] | None = None) -> tuple[int, bytes]:
        self.deleted.append(path)
        return (204, b"")


def container(cid: str, name: str, lab: str) -> dict:
    return {"Id": cid, "Names": [f"/{name}"], "Labels": {labels.NAME: lab}}


def test_reaping_removes_what_the_filters_select_except_kept_labs_and_itself() -> None:
    engine = FakeEngine(
        containers=[
            container("c1", "a-web-1", "a"),
            container("c2", "a-lb", "a"),
            container("c3", "k-lb", "k"),
            container("c4", "a-reaper", "a"),
        ],
        networks=[{"Id": "n1", "Labels": {labels.NAME: "a"}}, {"Id": "n2", "Labels": {labels.NAME: "k"}}],
        volumes=[{"Name": "v1", "Labels": {labels.NAME: "a"}}],
    )
    counts = reap(engine, ["lab.session=s1", "lab.name"], keep={"k"}, self_name="a-reaper")  # type: ignore[arg-type]
    assert counts == (2, 1, 1)
    assert engine.deleted == ["/containers/c1", "/containers/c2", "/networks/n1", "/volumes/v1"]
    assert engine.filters == [{"label": ["lab.session=s1", "lab.name"]}] * 3  # asked for nothing else


def test_http_answers_are_read_whole_and_chunked() -> None:
    plain = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]"
    assert parse_response(plain) == (200, b"[]")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n[{}]\r\n3\r\n   \r\n0\r\n\r\n"
    assert parse_response(chunked) == (200, b"[{}]   ")
    assert parse_response(b"HTTP/1.1 204 No Content\r\n\r\n") == (204, b"")


# How --------------------------------------------------------------------------------------
def test_a_session_reaper_has_the_socket_one_loopback_port_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(reaper.SOCKET_ENV, raising=False)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    req = reaper.reaper_request(
        name="lab-reaper-x",
        image="lab/reaper:1",
        labels_=labels.for_session_reaper("s1"),
        environment={},
        publish=True,
    )
    assert req.cap_add == () and req.read_only
    assert req.binds == {"/var/run/docker.sock": "/var/run/docker.sock"}
    assert req.ports == {"8080/tcp": ("127.0.0.1", None)} and req.network == "bridge"
    assert req.labels == {labels.ROLE: labels.ROLE_REAPER, labels.SESSION: "s1"}  # no lab.name: it is no lab
    assert req.environment["LAB_REAPER_NAME"] == "lab-reaper-x"


def test_a_deadline_reaper_has_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/other/docker.sock")
    req = reaper.reaper_request(name="x-reaper", image="i", labels_={}, environment={}, publish=False)
    assert req.network_disabled and not req.ports
    assert req.binds == {"/run/other/docker.sock": "/var/run/docker.sock"}  # the engine's own socket


def test_the_socket_can_be_named_for_a_remote_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.5:2375")
    monkeypatch.setenv(reaper.SOCKET_ENV, "/srv/docker.sock")
    assert reaper.socket_path() == "/srv/docker.sock"


def test_a_session_reaper_selects_its_sessions_labs_only() -> None:
    assert labels.session_labs("pytest-1") == ["lab.session=pytest-1", "lab.name"]
    query = urllib.parse.urlencode({"filters": json.dumps({"label": labels.session_labs("pytest-1")})})
    assert "lab.session%3Dpytest-1" in query


def test_workers_of_one_session_share_one_reaper_name() -> None:
    a = reaper.session_reaper_name("pytest-abc")
    assert a == reaper.session_reaper_name("pytest-abc") != reaper.session_reaper_name("pytest-abd")
    assert a.startswith("lab-reaper-")


@pytest.mark.parametrize("value", ["0", "abc", "3601", "-1"])
def test_a_bad_grace_period_is_one_line(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(reaper.GRACE_ENV, value)
    with pytest.raises(InvalidInput, match="LAB_REAPER_GRACE"):
        reaper.grace_seconds()


def test_grace_defaults_to_ten_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(reaper.GRACE_ENV, raising=False)
    assert reaper.grace_seconds() == 10
    monkeypatch.setenv(reaper.GRACE_ENV, "3")
    assert reaper.grace_seconds() == 3


def test_the_expiry_is_read_from_the_reapers_label() -> None:
    assert reaper.expires_at(labels.for_lab("x", labels.ROLE_REAPER, expires="1700000000")) == 1700000000.0
    assert reaper.expires_at({labels.EXPIRES: "soon"}) is None
    assert reaper.expires_at({}) is None


def test_the_image_is_named_by_its_content() -> None:
    tag = reaper.image_tag()
    assert tag.startswith("lab/reaper:") and len(tag.split(":")[1]) == 12
    assert tag == reaper.image_tag()


# The swarm a session initialised -----------------------------------------------------------------
class FakeSwarmEngine:
    """A manager's answers: the swarm's record, its services, nodes and overlays; calls are recorded."""

    def __init__(
        self,
        *,
        record: dict[str, str],
        services: list[dict] | None = None,
        nodes: list[dict] | None = None,
        overlays: list[dict] | None = None,
        manager: bool = True,
    ) -> None:
        self.answers: dict[str, object] = {
            "/info": {"Swarm": {"LocalNodeState": "active", "ControlAvailable": manager, "NodeID": "me"}},
            "/swarm": {"Spec": {"Labels": record}},
            "/services": services or [],
            "/nodes": [{"ID": "me", "Status": {"State": "ready"}}, *(nodes or [])],
            "/networks": [{"Name": "ingress"}, *(overlays or [])],
        }
        self.calls: list[str] = []

    def json(self, path: str, query: dict[str, str] | None = None) -> object:
        return self.answers[path]

    def call(self, method: str, path: str, query: dict[str, str] | None = None) -> tuple[int, bytes]:
        self.calls.append(f"{method} {path}")
        return (200, b"")

    def delete(self, path: str, query: dict[str, str] | None = None) -> tuple[int, bytes]:
        self.calls.append(f"DELETE {path}")
        return (204, b"")


MINE = {labels.SWARM_INIT: "2026-11-28T23:23:07Z pytest.s1", labels.SWARM_GWBRIDGE: "created"}


def test_the_swarm_a_gone_session_initialised_is_left_with_the_gwbridge_it_brought() -> None:
    engine = FakeSwarmEngine(record=MINE, nodes=[{"ID": "n1", "Status": {"State": "down"}}])
    assert release_swarm(engine, "pytest.s1") == "left the swarm this session had initialised"  # type: ignore[arg-type]
    assert engine.calls == ["POST /swarm/leave", "DELETE /networks/docker_gwbridge"]


@pytest.mark.parametrize(
    ("record", "session", "manager"),
    [
        ({}, "pytest.s1", True),  # not initialised by the lab
        ({labels.SWARM_INIT: "2026-11-28T23:23:07Z pytest.s2"}, "pytest.s1", True),  # another session's
        ({labels.SWARM_INIT: "2026-11-28T23:23:07Z pytest.s1x"}, "pytest.s1", True),  # a longer name
        (MINE, "", True),  # a reaper with no session
        (MINE, "pytest.s1", False),  # a worker cannot leave for the swarm
    ],
)
def test_a_swarm_someone_else_initialised_is_never_touched(
    record: dict[str, str], session: str, manager: bool
) -> None:
    engine = FakeSwarmEngine(record=record, manager=manager)
    assert release_swarm(engine, session) == ""  # type: ignore[arg-type]
    assert engine.calls == []


@pytest.mark.parametrize(
    ("what", "said"),
    [
        ({"services": [{"ID": "s"}]}, "1 services"),
        ({"overlays": [{"Name": "other-overlay"}]}, "1 overlay networks"),
    ],
)
def test_a_swarm_still_in_use_stays(what: dict, said: str) -> None:
    engine = FakeSwarmEngine(record=MINE, **what)
    assert (
        release_swarm(engine, "pytest.s1") == f"the swarm this session initialised stays: {said} still use it"
    )  # type: ignore[arg-type]
    assert engine.calls == []


def test_a_node_still_ready_is_waited_for_then_the_swarm_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(reaper_agent.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(reaper_agent.time, "sleep", lambda _s: None)
    engine = FakeSwarmEngine(record=MINE, nodes=[{"ID": "n1", "Status": {"State": "ready"}}])
    said = release_swarm(engine, "pytest.s1")  # type: ignore[arg-type]
    assert said == "the swarm this session initialised stays: 1 other engines still use it"
    assert engine.calls == []
