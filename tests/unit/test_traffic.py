"""The load engine against a tiny keep-alive HTTP/1.1 server running in a thread of the test."""

from __future__ import annotations

import itertools
import math
import random
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lab.tally import content_digest
from lab.traffic import (
    UNNAMED_REPLICA,
    Pacer,
    Tally,
    _Poller,
    build_requests,
    loopback_address,
    run_load,
)
from tests.unit.test_tally import assert_adds_up

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


@contextmanager
def raw_serve(answer: Callable[[int], tuple[bytes, bool]]) -> Iterator[int]:
    """A server that writes whatever bytes `answer(n)` gives for the n-th request (and closes
    the connection when it says so): for answers http.server would never send. Yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    counter = itertools.count()
    lock = threading.Lock()

    def handle(conn: socket.socket) -> None:
        conn.settimeout(5)
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                buf = buf[buf.index(b"\r\n\r\n") + 4 :]
                with lock:
                    n = next(counter)
                reply, close = answer(n)
                try:
                    conn.sendall(reply)
                except OSError:
                    return
                if close:
                    return

    done = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)  # closing a socket does not wake an accept() blocked on it
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join(timeout=5)
        listener.close()


def reply(body: bytes = b"hi", *head: bytes, name: bytes = b"r1") -> bytes:
    fields = b"".join(h + b"\r\n" for h in head)
    return b"HTTP/1.1 200 OK\r\nX-Served-By: " + name + b"\r\n" + fields + b"\r\n" + body


GOOD = reply(b"hi", b"Content-Length: 2")


@pytest.mark.parametrize(
    "bad",
    [
        reply(b"hi", b"Content-Length: 2", b"Content-Length: 3"),  # conflicting lengths
        reply(b"hi", b"Content-Length: +2"),
        reply(b"hi!", b"Content-Length: 2"),  # a byte after the end
        reply(b"2\r\nhiXX0\r\n\r\n", b"Transfer-Encoding: chunked"),  # no CRLF after the chunk
        reply(b"0x2\r\nhi\r\n0\r\n\r\n", b"Transfer-Encoding: chunked"),
        b"HTTP/1.1 200 OK\r\nX-Served-By: r1\r\nBad Field: 1\r\nContent-Length: 2\r\n\r\nhi",
        b"ICY 200 OK\r\n\r\n",
    ],
    ids=["conflicting", "signed", "leftover", "chunk-crlf", "chunk-0x", "field", "not-http"],
)
def test_malformed_answers_are_errors_and_the_load_goes_on(bad: bytes) -> None:
    with raw_serve(lambda n: (bad if n % 2 else GOOD, False)) as port:
        t = run_load("127.0.0.1", port, requests=40, duration=10, concurrency=2)
    assert_adds_up(t)
    assert t.sent == 40
    assert t.errors_by_cause == {"other": 20} and t.by_replica == {"r1": 20}
    assert t.retried == 0  # bytes of the answer had arrived: not a stale connection


def test_an_answer_cut_short_is_closed_not_retried() -> None:
    with raw_serve(lambda n: (GOOD[:-1] if n % 2 else GOOD, n % 2 == 1)) as port:
        t = run_load("127.0.0.1", port, requests=20, duration=10, concurrency=1)
    assert_adds_up(t)
    assert (t.ok, t.errors_by_cause, t.retried) == (10, {"closed": 10}, 0)


def test_answers_framed_every_way_count_alike() -> None:
    answers = [
        GOOD,
        reply(b"2\r\nhi\r\n0\r\nX-Trailer: 1\r\n\r\n", b"Transfer-Encoding: chunked", name=b"r2"),
        b"HTTP/1.1 100 Continue\r\n\r\n" + reply(b"", b"Content-Length: 0", name=b"r3"),
        reply(b"", b"Content-Length: 0", b"Connection: close", name=b"r4"),
    ]
    with raw_serve(lambda n: (answers[n % 4], n % 4 == 3)) as port:
        t = run_load("127.0.0.1", port, requests=40, duration=10, concurrency=1)
    assert_adds_up(t)
    assert t.by_replica == {"r1": 10, "r2": 10, "r3": 10, "r4": 10} and t.errors == 0


def test_contents_are_counted_only_when_asked_whatever_the_framing() -> None:
    def length(body: bytes) -> bytes:
        return b"Content-Length: %d" % len(body)

    page, new_page, version = b"<h1>served by %s</h1>", b"<h1>a new page</h1>", b"X-Site-Version: v1"
    chunks = b"%x\r\n%s\r\n0\r\n\r\n" % (len(page % b"r2"), page % b"r2")
    answers = [
        reply(page % b"r1", length(page % b"r1"), version),
        reply(chunks, b"Transfer-Encoding: chunked", version, name=b"r2"),
        reply(new_page, length(new_page), version, name=b"r3"),
        reply(page % b"r4", version, b"Connection: close", name=b"r4"),
    ]
    with raw_serve(lambda n: (answers[n % 4], n % 4 == 3)) as port:
        plain = run_load("127.0.0.1", port, requests=8, duration=10, concurrency=1)
        t = run_load("127.0.0.1", port, requests=40, duration=10, concurrency=1, content=True)
    assert plain.contents == {}
    assert_adds_up(t)
    assert t.errors == 0
    same = content_digest(page % b"", b"", 0)
    new = content_digest(new_page, b"", 0)
    assert t.contents == {
        ("r1", "v1", same): 10,
        ("r2", "v1", same): 10,
        ("r3", "v1", new): 10,
        ("r4", "v1", same): 10,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    assert 0.5 <= took < 0.5 + 5.0  # never past duration + timeout
    assert 0 < t.ok <= 110  # two connections at 10 ms or more a request for half a second


def test_requests_still_open_at_the_end_are_timeouts() -> None:
    with serve("hang") as port:
        start = time.monotonic()
        t = run_load("127.0.0.1", port, requests=None, duration=0.2, concurrency=2, timeout=0.3)
        took = time.monotonic() - start
    assert_adds_up(t)
    assert took < 1.0  # the server hangs for a second: the hard stop at duration + timeout came first
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


def test_paced_load_sanity() -> None:
    """End to end, loosely: the pacing itself is tested on Pacer with a simulated clock."""
    seen: list[tuple[float, dict[str, str]]] = []
    with serve(seen=seen) as port:
        start = time.monotonic()
        t = run_load("127.0.0.1", port, requests=None, duration=1.0, concurrency=4, rate=200)
    assert_adds_up(t)
    assert 100 <= t.sent <= 200 and t.errors == 0  # never more than were due; most of them on a busy machine
    # Never ahead of schedule (request i is due at its start + i/200), however busy the machine.
    arrivals = sorted(at for at, _ in seen)
    assert all(at >= start + i / 200 for i, at in enumerate(arrivals))


# -- Pacer, driven by a simulated clock ---------------------------------------------------------


def drive(pacer: Pacer, wakeups: Iterator[float], until: float) -> list[tuple[float, int]]:
    """Run `pacer` like the engine's loop with a free connection for every request: at each
    wake-up start every request that is due. (time, number) of each start."""
    starts = []
    for now in wakeups:
        if now > until:
            break
        while pacer.due(now):
            starts.append((now, pacer.take()))
    return starts


def jittered_loop(
    pacer: Pacer, seed: int, late: float = 0.002, pause: tuple[float, float] = (0.0, 0.0)
) -> Iterator[float]:
    """The wake-up times of a loop that waits min(tick, pacer.wait) and wakes up to `late`
    seconds late; pause = (at, for) is one long stall (a busy machine)."""
    rng = random.Random(seed)
    now = pacer.start
    while True:
        yield now
        now += min(0.02, pacer.wait(now)) + rng.uniform(0.0, late)
        if pause[0] <= now < pause[0] + pause[1]:
            now = pause[0] + pause[1]


@pytest.mark.parametrize("seed", range(5))
def test_pacer_sends_each_request_at_its_time(seed: int) -> None:
    pacer = Pacer(100.0, requests=None, duration=1.5, rate=200)
    starts = drive(pacer, jittered_loop(pacer, seed), until=103.0)
    assert [n for _, n in starts] == list(range(300))  # ceil(1.5 x 200), each once, in order
    for at, n in starts:
        due = 100.0 + n / 200
        assert due - 1e-9 <= at <= due + 0.002 + 1e-9  # never early; late only by the loop's wake-up
    assert sum(1 for at, _ in starts if at < 101.0) == 200
    assert pacer.wait(103.0) == math.inf and not pacer.may_send(103.0)


def test_pacer_catches_up_after_a_stall_without_sending_more() -> None:
    pacer = Pacer(0.0, requests=None, duration=1.0, rate=200)
    stall_end = 0.5 + 0.0525
    starts = drive(pacer, jittered_loop(pacer, 7, pause=(0.5, 0.0525)), until=2.0)
    assert [n for _, n in starts] == list(range(200))
    assert [n for at, n in starts if at == stall_end] == list(
        range(100, 111)
    )  # due in [0.5, 0.5525]: at once ...
    after = [(at, n) for at, n in starts if at > stall_end]
    assert all(n / 200 - 1e-9 <= at <= n / 200 + 0.002 + 1e-9 for at, n in after)  # ... then on schedule


def test_a_starved_pacer_loses_no_request() -> None:
    pacer = Pacer(0.0, requests=None, duration=1.0, rate=100)
    assert pacer.due(0.0) and pacer.take() == 0
    # Every connection is busy from 0.01 to 0.035: nothing is taken, and nothing is skipped.
    assert pacer.due(0.035) and pacer.wait(0.035) == 0.0
    assert [pacer.take() for _ in range(3) if pacer.due(0.035)] == [1, 2, 3]
    assert not pacer.due(0.035) and pacer.wait(0.035) == pytest.approx(0.005)


def test_the_last_paced_requests_may_go_a_little_late() -> None:
    # rate 10 for 0.95 s: 10 requests, the last due at 0.9; the loop wakes at `late` after the end.
    for late, sent in [(0.0, 10), (0.01, 10), (0.019, 10), (0.021, 9), (0.5, 9)]:
        pacer = Pacer(0.0, requests=None, duration=0.95, rate=10, grace=0.02)
        drive(pacer, iter([n / 10 + 1e-9 for n in range(9)] + [0.95 + late]), until=5.0)
        assert pacer.issued == sent, late


def test_pacer_budget_is_the_smaller_bound() -> None:
    assert Pacer(0.0, requests=50, duration=1.0, rate=200).budget == 50
    assert Pacer(0.0, requests=500, duration=1.0, rate=200).budget == 200
    assert Pacer(0.0, requests=None, duration=0.333, rate=3).budget == 1
    assert Pacer(0.0, requests=7, duration=None).budget == 7


def test_unpaced_requests_are_always_due_within_the_bounds() -> None:
    pacer = Pacer(10.0, requests=3, duration=1.0)
    assert not pacer.paced and pacer.wait(10.0) == 0.0
    assert [pacer.take() for _ in range(5) if pacer.due(10.5)] == [0, 1, 2]
    assert not pacer.may_send(10.5) and pacer.wait(10.5) == math.inf
    timed = Pacer(10.0, requests=None, duration=1.0)
    assert timed.due(10.999) and not timed.due(11.0)  # no grace without a rate
    assert Pacer(0.0, requests=None, duration=None).due(1e9)


def test_paced_load_never_exceeds_its_connections() -> None:
    with serve("slow") as port:  # ~10 ms an answer: one connection manages < 100/s
        t = run_load("127.0.0.1", port, requests=None, duration=0.3, concurrency=1, rate=1000)
    assert_adds_up(t)
    assert 1 <= t.sent <= 33 and t.errors == 0  # one connection, 10 ms or more an answer, 0.32 s at most


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
    stopped_at: list[float] = []

    def set_stop() -> None:
        stopped_at.append(time.monotonic())
        stop.set()

    timer = threading.Timer(0.2, set_stop)
    with serve(mode) as port:
        timer.start()
        t = run_load("127.0.0.1", port, requests=None, duration=5, concurrency=2, stop=stop)
        ended_at = time.monotonic()
    assert_adds_up(t)
    assert stopped_at and 0 <= ended_at - stopped_at[0] < 1.0  # ~0.02 s; 5 s if the stop were missed
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


@pytest.mark.parametrize("epoll", [True, False], ids=["epoll", "selectors"])
def test_poller_reports_readiness_by_file_descriptor(epoll: bool) -> None:
    poller = _Poller(epoll=epoll)
    a, b = socket.socketpair()
    try:
        poller.register(a.fileno(), write=True)
        assert poller.poll(1.0) == [a.fileno()]  # room to write
        poller.modify(a.fileno(), write=False)
        assert poller.poll(0.01) == []  # nothing to read yet
        b.send(b"x")
        assert poller.poll(1.0) == [a.fileno()]
        poller.unregister(a.fileno())
        assert poller.poll(0.01) == []
    finally:
        poller.close()
        a.close()
        b.close()
