"""The load engine against a tiny keep-alive HTTP/1.1 server running in a thread of the test."""

from __future__ import annotations

import bisect
import itertools
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lab.traffic import (
    UNNAMED_REPLICA,
    Second,
    Tally,
    build_requests,
    loopback_address,
    run_load,
    upstream_addresses,
)

NAMES = ("r1", "r2", "r3")


class _Handler(BaseHTTPRequestHandler):
    """Answers as replica r1, r2, r3 in turn; `server.mode` picks how it misbehaves."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else head and body writes meet delayed ACKs: 40 ms a request

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        server = self.server
        mode = server.mode  # type: ignore[attr-defined]
        with server.lock:  # type: ignore[attr-defined]
            n = next(server.counter)  # type: ignore[attr-defined]
            if server.seen is not None:  # type: ignore[attr-defined]
                server.seen.append((time.monotonic(), dict(self.headers)))  # type: ignore[attr-defined]
        if mode == "sticky":
            client = self.headers.get("X-Client-Id", "")
            name = NAMES[int(client[1:]) % len(NAMES)]
        else:
            name = NAMES[n % len(NAMES)]
        body = f"hello from {name}\n".encode()
        if mode == "drop":
            self.close_connection = True  # say nothing, just hang up
            return
        if mode == "reset":
            # Linger 0 turns the close into a TCP RST.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()  # now: socketserver would shut down writing (a FIN) first
            self.close_connection = True
            return
        if mode == "slow":
            time.sleep(0.01)
        if mode == "hang":
            time.sleep(1.0)
        status = 503 if mode == "503" or (mode == "r3_fails" and name == "r3") else 200
        self.send_response(status)
        if mode != "anonymous":
            self.send_header("X-Served-By", name)
        self.send_header("X-Upstream-Addr", f"10.0.0.{NAMES.index(name) + 1}:80")
        if mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (body[:5], body[5:], b""):
                self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"")
            return
        if mode == "until_close":
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return
        if mode == "close_every_3" and n % 3 == 2:
            self.send_header("Connection", "close")
            self.close_connection = True
        if mode == "stale_every_3":
            # Like a keep-alive timeout or a graceful reload: after the third answer on this
            # connection, hang up without announcing it, while the client may already write.
            self.answered = getattr(self, "answered", 0) + 1
            self.close_connection = self.answered % 3 == 0
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve(mode: str = "ok", seen: list[tuple[float, dict[str, str]]] | None = None) -> Iterator[int]:
    """A server on 127.0.0.1 (random port) in a daemon thread; yields its port.

    With `seen`, it appends (arrival time, headers) for every request it answers.
    """
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.mode = mode  # type: ignore[attr-defined]
    server.seen = seen  # type: ignore[attr-defined]
    server.counter = itertools.count()  # type: ignore[attr-defined]
    server.lock = threading.Lock()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_adds_up(t: Tally) -> None:
    assert t.sent == t.ok + t.errors
    assert sum(t.by_replica.values()) == t.ok
    assert sum(t.errors_by_cause.values()) == t.errors
    assert sum(t.by_status.values()) == t.latency.count
    assert sum(t.retried_by_cause.values()) == t.retried
    # Per replica: every answer, 5xx included; the ok ones are by_replica.
    assert sum(h.count for h in t.latency_by_replica.values()) == t.latency.count
    assert t.latency_by_replica.keys() == t.status_by_replica.keys()
    for replica, statuses in t.status_by_replica.items():
        assert sum(statuses.values()) == t.latency_by_replica[replica].count
        assert sum(n for status, n in statuses.items() if status < 500) == t.by_replica.get(replica, 0)
    by_status: dict[int, int] = {}
    for statuses in t.status_by_replica.values():
        for status, n in statuses.items():
            by_status[status] = by_status.get(status, 0) + n
    assert by_status == t.by_status
    # The timeline: one entry per second, adding up to the totals.
    assert [s.t for s in t.timeline] == list(range(len(t.timeline)))
    assert all(s.sent == s.ok + s.errors for s in t.timeline)
    assert sum(s.sent for s in t.timeline) == t.sent
    assert sum(s.ok for s in t.timeline) == t.ok
    assert sum(s.retried for s in t.timeline) == t.retried
    by_replica: dict[str, int] = {}
    causes: dict[str, int] = {}
    for second in t.timeline:
        for replica, n in second.by_replica.items():
            by_replica[replica] = by_replica.get(replica, 0) + n
        for cause, n in second.errors_by_cause.items():
            causes[cause] = causes.get(cause, 0) + n
    assert by_replica == t.by_replica
    assert causes == t.errors_by_cause


def test_counts_add_up_exactly() -> None:
    with serve() as port:
        t = run_load("127.0.0.1", port, requests=300, duration=None, concurrency=4)
    assert_adds_up(t)
    assert (t.sent, t.ok, t.errors) == (300, 300, 0)
    assert t.by_replica == {"r1": 100, "r2": 100, "r3": 100}
    assert t.by_status == {200: 300}
    assert t.upstream_addrs == {f"r{i}": {f"10.0.0.{i}:80"} for i in (1, 2, 3)}
    assert t.latency.count == 300 and t.throughput_rps > 0


@pytest.mark.parametrize("mode", ["chunked", "until_close", "close_every_3"])
def test_bodies_and_connection_close(mode: str) -> None:
    with serve(mode) as port:
        t = run_load("127.0.0.1", port, requests=60, duration=None, concurrency=3)
    assert_adds_up(t)
    assert t.ok == 60 and t.errors == 0
    assert t.by_replica == {"r1": 20, "r2": 20, "r3": 20}


def test_bounded_by_duration() -> None:
    with serve("slow") as port:
        start = time.monotonic()
        t = run_load("127.0.0.1", port, requests=None, duration=0.5, concurrency=2)
        took = time.monotonic() - start
    assert_adds_up(t)
    assert 0.5 <= took < 1.5
    assert 10 < t.ok < 200  # two connections at ~10 ms a request for half a second


def test_requests_still_open_at_the_end_are_timeouts() -> None:
    with serve("hang") as port:
        start = time.monotonic()
        t = run_load("127.0.0.1", port, requests=None, duration=0.2, concurrency=2, timeout=0.3)
        took = time.monotonic() - start
    assert_adds_up(t)
    assert took < 0.2 + 0.3 + 0.3
    assert t.ok == 0 and t.errors_by_cause == {"timeout": 2}


def test_per_client_tallies() -> None:
    with serve("sticky") as port:
        t = run_load("127.0.0.1", port, requests=50, duration=None, concurrency=4, clients=5)
    assert_adds_up(t)
    assert t.per_client == {f"c{i}": {NAMES[i % 3]: 10} for i in range(5)}


def test_client_identity_headers() -> None:
    requests = build_requests("127.0.0.1", 8080, "/x", clients=2)
    assert len(requests) == 2
    assert b"X-Client-Id: c1\r\n" in requests[1] and b"Cookie: lab_client=c1\r\n" in requests[1]
    assert requests[0].startswith(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n")
    assert requests[0].endswith(b"\r\n\r\n")
    assert b"X-Client-Id" not in build_requests("127.0.0.1", 80, "/", clients=0)[0]
    assert not any(b"X-Forwarded-For" in r for r in requests)  # nginx does not trust it anyway


def test_5xx_are_errors() -> None:
    with serve("503") as port:
        t = run_load("127.0.0.1", port, requests=30, duration=None, concurrency=2)
    assert_adds_up(t)
    assert t.errors_by_cause == {"http_5xx": 30} and t.by_status == {503: 30}
    assert t.by_replica == {}


@pytest.mark.parametrize(("mode", "cause"), [("drop", "closed"), ("reset", "reset")])
def test_abrupt_close_is_an_error_and_load_goes_on(mode: str, cause: str) -> None:
    with serve(mode) as port:
        t = run_load("127.0.0.1", port, requests=20, duration=5, concurrency=2)
    assert_adds_up(t)
    assert t.errors_by_cause == {cause: 20}
    assert t.retried == 0  # every request went out on a fresh connection: nothing to retry


def test_refused() -> None:
    t = run_load("127.0.0.1", free_port(), requests=10, duration=5, concurrency=2)
    assert_adds_up(t)
    assert t.errors_by_cause == {"refused": 10}


def test_progress_is_reported() -> None:
    seen: list[int] = []
    with serve() as port:
        t = run_load("127.0.0.1", port, requests=50, duration=None, concurrency=2, on_progress=seen.append)
    assert seen and seen[-1] == t.sent == 50
    assert seen == sorted(seen)


@pytest.mark.parametrize("host", ["10.0.0.1", "192.168.1.1", "example.com", "0.0.0.0", "::2"])
def test_refuses_hosts_other_than_loopback(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        run_load(host, 80, requests=1, duration=None, concurrency=1)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]"])
def test_accepts_loopback(host: str) -> None:
    assert loopback_address(host)[1] in {"127.0.0.1", "127.1.2.3", "::1"}


def test_needs_a_bound() -> None:
    with pytest.raises(ValueError, match="bounded"):
        run_load("127.0.0.1", 80, requests=None, duration=None, concurrency=1)


def test_memory_stays_flat_in_the_number_of_requests() -> None:
    def peak(requests: int) -> int:
        tracemalloc.start()
        try:
            run_load("127.0.0.1", port, requests=requests, duration=30, concurrency=4, clients=10)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    with serve() as port:
        small, large = peak(300), peak(3000)
    assert large - small < 100_000  # ten times the requests, no more than ~100 kB extra


def test_merge_is_exact() -> None:
    with serve("sticky") as port:
        a = run_load("127.0.0.1", port, requests=30, duration=None, concurrency=2, clients=3)
        b = run_load("127.0.0.1", port, requests=60, duration=None, concurrency=3, clients=3)
    total = Tally()
    total.merge(a)
    total.merge(b)
    assert_adds_up(total)
    assert total.sent == 90 and total.latency.count == 90
    assert total.per_client == {f"c{i}": {NAMES[i]: 30} for i in range(3)}
    assert total.by_replica == {name: 30 for name in NAMES}
    assert total.status_by_replica == {name: {200: 30} for name in NAMES}
    assert {name: h.count for name, h in total.latency_by_replica.items()} == {name: 30 for name in NAMES}
    assert a.latency_by_replica["r1"].count == 10  # merging copied, it did not alias a's histograms


def test_merge_adds_retries_cancellations_and_timelines() -> None:
    a = Tally(retried=2, retried_by_cause={"reset": 2}, cancelled=1, timeline=[Second(0, sent=1, ok=1)])
    b = Tally(retried=1, retried_by_cause={"closed": 1}, timeline=[Second(0), Second(1, sent=2, errors=2)])
    a.merge(b)
    assert (a.retried, a.retried_by_cause, a.cancelled) == (3, {"reset": 2, "closed": 1}, 1)
    assert [(s.t, s.sent, s.ok, s.errors) for s in a.timeline] == [(0, 1, 1, 0), (1, 2, 0, 2)]


def test_extra_headers_arrive_and_no_forwarded_for() -> None:
    seen: list[tuple[float, dict[str, str]]] = []
    with serve(seen=seen) as port:
        t = run_load(
            "127.0.0.1",
            port,
            requests=20,
            duration=None,
            concurrency=2,
            clients=2,
            headers={"X-Lab-Run": "r-42"},
        )
    assert_adds_up(t)
    assert len(seen) == 20
    assert all(h["X-Lab-Run"] == "r-42" and h["X-Client-Id"] in {"c0", "c1"} for _, h in seen)
    assert not any("X-Forwarded-For" in h for _, h in seen)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Lab-Run": "a\r\nX-Evil: 1"},
        {"X-Lab-Run": "a\nb"},
        {"X-Lab-Run": "a\x00"},
        {"X-Lab-Run": "snow \u2603"},
        {"X Lab": "a"},
        {"X-Lab:": "a"},
        {"": "a"},
        {"Host": "elsewhere"},
        {"connection": "close"},
    ],
)
def test_bad_headers_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="header"):
        run_load("127.0.0.1", 80, requests=1, duration=None, concurrency=1, headers=headers)


def test_identity_headers_are_reserved_only_with_clients() -> None:
    assert b"Cookie: x=1\r\n" in build_requests("127.0.0.1", 80, "/", 0, {"Cookie": "x=1"})[0]
    with pytest.raises(ValueError, match="Cookie"):
        build_requests("127.0.0.1", 80, "/", 2, {"Cookie": "x=1"})


def test_per_replica_latency_and_status() -> None:
    with serve("r3_fails") as port:
        t = run_load("127.0.0.1", port, requests=60, duration=None, concurrency=3)
    assert_adds_up(t)
    assert t.status_by_replica == {"r1": {200: 20}, "r2": {200: 20}, "r3": {503: 20}}
    assert {name: h.count for name, h in t.latency_by_replica.items()} == {"r1": 20, "r2": 20, "r3": 20}
    assert t.by_replica == {"r1": 20, "r2": 20} and t.errors_by_cause == {"http_5xx": 20}


def test_answers_without_a_replica_name() -> None:
    with serve("anonymous") as port:
        t = run_load("127.0.0.1", port, requests=10, duration=None, concurrency=2)
    assert_adds_up(t)
    assert t.status_by_replica == {UNNAMED_REPLICA: {200: 10}} and t.by_replica == {UNNAMED_REPLICA: 10}


def test_stale_keep_alive_is_retried_not_an_error() -> None:
    with serve("stale_every_3") as port:
        t = run_load("127.0.0.1", port, requests=60, duration=5, concurrency=3)
    assert_adds_up(t)
    assert (t.sent, t.ok, t.errors) == (60, 60, 0)
    assert t.by_replica == {"r1": 20, "r2": 20, "r3": 20}
    assert t.retried >= 5 and set(t.retried_by_cause) <= {"reset", "closed"}


def test_stale_keep_alive_without_retry_is_an_error() -> None:
    with serve("stale_every_3") as port:
        t = run_load("127.0.0.1", port, requests=60, duration=5, concurrency=3, retry_stale=False)
    assert_adds_up(t)
    assert t.sent == 60 and t.retried == 0
    assert t.errors >= 5 and set(t.errors_by_cause) <= {"reset", "closed"}


def test_paced_load_holds_its_rate() -> None:
    seen: list[tuple[float, dict[str, str]]] = []
    with serve(seen=seen) as port:
        start = time.monotonic()
        t = run_load("127.0.0.1", port, requests=None, duration=1.5, concurrency=4, rate=200)
        took = time.monotonic() - start
    assert_adds_up(t)
    assert 285 <= t.sent <= 315 and t.errors == 0
    assert 1.4 <= took < 1.8
    assert len(t.timeline) == 2 and 190 <= t.timeline[0].sent <= 210
    # No bursts: 200/s is 10 per 50 ms; allow for a late wake-up catching up.
    arrivals = sorted(at for at, _ in seen)
    assert max(bisect.bisect_left(arrivals, a + 0.05) - i for i, a in enumerate(arrivals)) <= 16


def test_paced_load_never_exceeds_its_connections() -> None:
    with serve("slow") as port:  # ~10 ms an answer: one connection manages < 100/s
        t = run_load("127.0.0.1", port, requests=None, duration=0.3, concurrency=1, rate=1000)
    assert_adds_up(t)
    assert 5 <= t.sent <= 40 and t.errors == 0


def test_paced_load_needs_a_duration() -> None:
    with pytest.raises(ValueError, match="duration"):
        run_load("127.0.0.1", 80, requests=10, duration=None, concurrency=1, rate=10)


def test_timeline_is_bounded_by_duration_and_timeout() -> None:
    with serve("hang") as port:
        t = run_load("127.0.0.1", port, requests=None, duration=0.2, concurrency=1, timeout=0.3, rate=50)
    assert_adds_up(t)
    assert len(t.timeline) == 1 and t.errors_by_cause == {"timeout": 1}


@pytest.mark.parametrize("mode", ["ok", "hang"])
def test_stop_event_ends_the_run_promptly(mode: str) -> None:
    stop = threading.Event()
    timer = threading.Timer(0.2, stop.set)
    with serve(mode) as port:
        start = time.monotonic()
        timer.start()
        t = run_load("127.0.0.1", port, requests=None, duration=5, concurrency=2, stop=stop)
        took = time.monotonic() - start
    assert_adds_up(t)
    assert 0.2 <= took < 0.35
    if mode == "hang":
        assert (t.sent, t.cancelled) == (0, 2)
    else:
        assert t.ok > 0 and t.errors == 0 and t.cancelled <= 2


def test_every_address_nginx_tried_is_counted_per_second_5xx_included() -> None:
    with serve("r3_fails") as port:
        t = run_load("127.0.0.1", port, requests=30, duration=None, concurrency=2)
    tried: dict[str, int] = {}
    for second in t.timeline:
        for address, n in second.tried.items():
            tried[address] = tried.get(address, 0) + n
    assert tried == {"10.0.0.1:80": 10, "10.0.0.2:80": 10, "10.0.0.3:80": 10}  # r3's 503s too
    assert sum(sum(s.tried.values()) for s in t.timeline) == t.sent


def test_upstream_addresses_lists_retries_and_internal_redirects() -> None:
    assert upstream_addresses(b"10.0.0.1:80, 10.0.0.2:80 : 10.0.0.3:80") == [
        b"10.0.0.1:80",
        b"10.0.0.2:80",
        b"10.0.0.3:80",
    ]
    assert upstream_addresses(b"10.0.0.1:80") == [b"10.0.0.1:80"]
