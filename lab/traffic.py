"""Load through the load balancer: C keep-alive HTTP/1.1 connections, tallied as replies arrive.

Engine: one thread of non-blocking sockets on a `selectors` (epoll) loop and a minimal response
parser, standard library only. The server shares this 2-core machine, so the client that spends
the least CPU per request wins: against a loopback nginx this loop matched wrk -t2 (~27k req/s,
ratio 0.9-1.2) where asyncio streams reached 20k; more processes would only starve the server.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import math
import re
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lab.stats import LatencyHistogram

ERROR_CAUSES = ("refused", "reset", "closed", "timeout", "http_5xx", "other")
RETRY_CAUSES = ("reset", "closed")  # how a stale keep-alive connection fails
UNNAMED_REPLICA = "(unnamed)"  # an answer without an X-Served-By header
MAX_ADDRS_PER_REPLICA = 16  # X-Upstream-Addr values kept per replica, so memory stays flat

_MAX_HEAD = 64 * 1024
_TICK = 0.02  # seconds between checks of timeouts, back-offs, progress and the stop event
_PROGRESS_EVERY = 0.1
_PACE_GRACE = 0.02  # how late past `duration` a paced request that was due before it may still go
_BACKOFF_FIRST, _BACKOFF_MAX = 0.001, 0.1  # after connection errors, so a dead server is not spun on
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP field name (RFC 9110 §5.1)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # CR, LF, NUL and friends; HTAB is allowed
_ENGINE_HEADERS = frozenset({"host", "connection", "content-length", "transfer-encoding"})
_IDENTITY_HEADERS = frozenset({"x-client-id", "cookie"})


@dataclass
class Second:
    """What was settled during second `t` of a run: answers and errors that arrived then.

    sent == ok + errors here too (a request belongs to the second its outcome arrived in);
    `retried` counts stale keep-alive retries started in that second. `tried` counts every
    upstream address nginx attempted for the answers of that second, 5xx answers included.
    """

    t: int
    sent: int = 0
    ok: int = 0
    errors: int = 0
    errors_by_cause: dict[str, int] = field(default_factory=dict)
    by_replica: dict[str, int] = field(default_factory=dict)
    retried: int = 0
    tried: dict[str, int] = field(default_factory=dict)  # upstream address -> attempts (X-Upstream-Addr)

    def merge(self, other: Second) -> None:
        """Add `other` (the same second of another run) into this one."""
        self.sent += other.sent
        self.ok += other.ok
        self.errors += other.errors
        self.retried += other.retried
        _add(self.errors_by_cause, other.errors_by_cause)
        _add(self.by_replica, other.by_replica)
        _add(self.tried, other.tried)


@dataclass
class Tally:
    """What a run saw. Invariants: sent == ok + errors and sum(by_replica) == ok.

    sent counts requests whose outcome is known; `cancelled` ones (open when a stop event
    ended the run) are not in it. ok counts complete answers below 500; a 5xx answer is an
    error (cause "http_5xx") but still appears in by_status and the latency histograms.
    Per replica (UNNAMED_REPLICA for answers without X-Served-By): `status_by_replica` and
    `latency_by_replica` hold every answer, 5xx included, so they add up to `by_status` and
    `latency`; `by_replica` holds the ok answers only. `retried` counts requests sent again
    after a stale keep-alive connection failed (they are not errors); `upstream_retries`
    are nginx's own extra upstream attempts. `timeline[t]` is second t of the run.
    """

    sent: int = 0
    ok: int = 0
    errors: int = 0
    by_replica: dict[str, int] = field(default_factory=dict)
    by_status: dict[int, int] = field(default_factory=dict)
    errors_by_cause: dict[str, int] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    latency_by_replica: dict[str, LatencyHistogram] = field(default_factory=dict)
    status_by_replica: dict[str, dict[int, int]] = field(default_factory=dict)
    per_client: dict[str, dict[str, int]] = field(default_factory=dict)
    upstream_addrs: dict[str, set[str]] = field(default_factory=dict)
    upstream_retries: int = 0  # extra upstream attempts seen in X-Upstream-Addr ("a, b" is 1)
    retried: int = 0
    retried_by_cause: dict[str, int] = field(default_factory=dict)
    cancelled: int = 0
    timeline: list[Second] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def throughput_rps(self) -> float:
        """Successful answers per second."""
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def merge(self, other: Tally) -> None:
        """Add `other` into this tally (exact); elapsed becomes the longer of the two.

        Timelines are added second by second, as if both runs had started together.
        """
        self.sent += other.sent
        self.ok += other.ok
        self.errors += other.errors
        self.upstream_retries += other.upstream_retries
        self.retried += other.retried
        self.cancelled += other.cancelled
        _add(self.by_replica, other.by_replica)
        _add(self.by_status, other.by_status)
        _add(self.errors_by_cause, other.errors_by_cause)
        _add(self.retried_by_cause, other.retried_by_cause)
        self.latency.merge(other.latency)
        for replica, histogram in other.latency_by_replica.items():
            self.latency_by_replica.setdefault(replica, LatencyHistogram()).merge(histogram)
        for replica, statuses in other.status_by_replica.items():
            _add(self.status_by_replica.setdefault(replica, {}), statuses)
        for client, counts in other.per_client.items():
            _add(self.per_client.setdefault(client, {}), counts)
        for replica, addrs in other.upstream_addrs.items():
            self.upstream_addrs.setdefault(replica, set()).update(addrs)
        for second in other.timeline:
            while len(self.timeline) <= second.t:
                self.timeline.append(Second(len(self.timeline)))
            self.timeline[second.t].merge(second)
        self.elapsed = max(self.elapsed, other.elapsed)


def _add(into: dict, counts: dict) -> None:
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n


def client_name(index: int) -> str:
    """The identity that client number `index` sends."""
    return f"c{index}"


def loopback_address(host: str) -> tuple[socket.AddressFamily, str]:
    """The address to connect to for `host`; ValueError unless it is a loopback address."""
    name = host.strip("[]")
    if name == "localhost":
        return socket.AF_INET, "127.0.0.1"
    refusal = f"load goes to loopback only (127.0.0.0/8, ::1, localhost), not {host!r}"
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        raise ValueError(refusal) from None
    if not address.is_loopback:
        raise ValueError(refusal)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    return family, str(address)


def header_lines(headers: Mapping[str, str] | None, *, clients: int = 0) -> str:
    """Extra request headers as "Name: value\\r\\n" lines; ValueError for a name or value that
    could break the request (not a token, a control character such as CR or LF, not latin-1)
    or for a header the engine sets itself."""
    reserved = _ENGINE_HEADERS | (_IDENTITY_HEADERS if clients else frozenset())
    lines = []
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ValueError(f"not a valid header name: {name!r}")
        if name.lower() in reserved:
            raise ValueError(f"header {name!r} is set by the load engine itself")
        if not isinstance(value, str) or _CONTROL.search(value):
            raise ValueError(f"header {name!r} has a line break or control character: {value!r}")
        if not _latin1(value):
            raise ValueError(f"header {name!r} has a value that is not latin-1: {value!r}")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines)


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def build_requests(
    host: str, port: int, path: str, clients: int, headers: Mapping[str, str] | None = None
) -> list[bytes]:
    """The request bytes, one per client identity (one in all when clients == 0)."""
    if not path.startswith("/") or any(ch in path for ch in " \r\n\t"):
        raise ValueError(f"path must start with / and hold no spaces or line breaks: {path!r}")
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = (
        f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: lab-traffic\r\nAccept: */*\r\n"
        + header_lines(headers, clients=clients)
    )
    if clients == 0:
        return [(head + "\r\n").encode("latin-1")]
    identities = (
        f"X-Client-Id: {client_name(i)}\r\nCookie: lab_client={client_name(i)}\r\n" for i in range(clients)
    )
    return [f"{head}{identity}\r\n".encode("latin-1") for identity in identities]


def run_load(
    host: str,
    port: int,
    *,
    path: str = "/",
    requests: int | None,
    duration: float | None,
    concurrency: int,
    clients: int = 0,
    timeout: float = 5.0,
    headers: Mapping[str, str] | None = None,
    rate: float | None = None,
    retry_stale: bool = True,
    stop: threading.Event | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Tally:
    """Send GET `path` over `concurrency` keep-alive connections until `requests` are done or
    `duration` seconds have passed (never past duration + timeout), and tally the answers.

    With `clients` = K > 0, request i speaks for client c{i % K}: headers X-Client-Id and
    Cookie lab_client= (ip_hash still sees one address: this machine's). `headers` are added
    to every request (e.g. X-Lab-Run, to find this run in the access log).
    Each request has `timeout` seconds, connection set-up included; a request still open at
    the end counts as a timeout. `rate` paces the load: request i is due at start + i/rate
    (late ones go at once, never more than `concurrency` open); it needs `duration`.
    `retry_stale` sends a request again, once, on a fresh connection when a reused keep-alive
    connection failed before any byte of its answer arrived. `stop`, when set by another
    thread, ends the run within ~0.02 s; requests still open are counted as `cancelled`.
    `on_progress` gets the number of finished requests about every 0.1 s. Latency runs from
    the start of a request (not its due time), so it includes a new connection's set-up and
    a retry when there was one.
    """
    if requests is None and duration is None:
        raise ValueError("give requests, duration or both: a load must be bounded")
    if requests is not None and requests < 1:
        raise ValueError(f"requests must be >= 1, got {requests}")
    if duration is not None and not (duration > 0 and math.isfinite(duration)):
        raise ValueError(f"duration must be > 0 seconds, got {duration}")
    if rate is not None:
        if duration is None:
            raise ValueError("a paced load (rate) needs a duration, so that it is bounded in time")
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be > 0 requests per second, got {rate}")
    if concurrency < 1 or clients < 0 or not timeout > 0:
        raise ValueError("concurrency must be >= 1, clients >= 0 and timeout > 0")
    family, address = loopback_address(host)
    engine = _Engine(
        family=family,
        address=(address, port),
        requests=build_requests(address, port, path, clients, headers),
        clients=clients,
        budget=requests,
        duration=duration,
        concurrency=concurrency,
        timeout=timeout,
        rate=rate,
        retry_stale=retry_stale,
        stop=stop,
        on_progress=on_progress,
    )
    return engine.run()


# ---------------------------------------------------------------------------------------------
# The engine

# Connection slot states
_IDLE, _BACKOFF, _CONNECTING, _SENDING, _WAITING = range(5)
_OPEN = (_CONNECTING, _SENDING, _WAITING)  # a request is in flight
# Where a reply's parse stands
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER, _UNTIL_CLOSE = range(6)

_CAUSE_BY_ERRNO = {
    errno.ECONNREFUSED: "refused",
    errno.ECONNRESET: "reset",
    errno.EPIPE: "reset",
    errno.ECONNABORTED: "reset",
    errno.ETIMEDOUT: "timeout",
}


class _ProtocolError(Exception):
    """The server's bytes are not an HTTP/1.x reply."""


class _Slot:
    """One of the C connections and the request it carries."""

    __slots__ = (
        "sock",
        "state",
        "buf",
        "out",
        "started",
        "deadline",
        "client",
        "parse",
        "remaining",
        "status",
        "replica",
        "upstream",
        "close_after",
        "failures",
        "retry_at",
        "reused",
        "received",
    )

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.state = _IDLE
        self.buf = bytearray()
        self.out = b""
        self.started = 0.0
        self.deadline = 0.0
        self.client = -1
        self.parse = _HEAD
        self.remaining = 0
        self.status = 0
        self.replica = b""
        self.upstream = b""
        self.close_after = False
        self.failures = 0
        self.retry_at = 0.0
        self.reused = False  # the open request went out on a connection that had answered before
        self.received = False  # some byte of its answer has arrived


class _Replica:
    """Every answer of one replica: latencies and status codes."""

    __slots__ = ("latency", "status")

    def __init__(self) -> None:
        self.latency = LatencyHistogram()
        self.status: dict[int, int] = {}


class _Second:
    """The counters of one second of the timeline, keyed by raw bytes like the engine's."""

    __slots__ = ("ok", "errors", "causes", "by_replica", "retried", "tried")

    def __init__(self) -> None:
        self.ok = self.errors = self.retried = 0
        self.causes: dict[str, int] = {}
        self.by_replica: dict[bytes, int] = {}
        self.tried: dict[bytes, int] = {}


class _Engine:
    """Runs one load; counters are kept keyed by raw bytes and turned into a Tally at the end.

    Totals are not counted twice: ok, errors and causes are sums over the timeline, and
    by_status, by_replica and the overall latency come from the per-replica counters.
    """

    def __init__(
        self,
        *,
        family: socket.AddressFamily,
        address: tuple[str, int],
        requests: list[bytes],
        clients: int,
        budget: int | None,
        duration: float | None,
        concurrency: int,
        timeout: float,
        rate: float | None,
        retry_stale: bool,
        stop: threading.Event | None,
        on_progress: Callable[[int], None] | None,
    ) -> None:
        self.family = family
        self.address = address
        self.requests = requests
        self.clients = clients
        self.budget = budget
        self.duration = duration
        self.timeout = timeout
        self.interval = 1.0 / rate if rate is not None else 0.0  # 0.0: not paced
        if rate is not None and duration is not None:
            # Request i is due at start + i/rate, and only those due before the end are sent.
            paced = math.ceil(duration * rate)
            self.budget = paced if budget is None else min(budget, paced)
        self.retry_stale = retry_stale
        self.stop = stop
        self.on_progress = on_progress
        self.slots = [_Slot() for _ in range(concurrency)]
        self.selector = selectors.DefaultSelector()
        self.issued = self.done = self.cancelled = self.upstream_retries = 0
        self.retried_by_cause: dict[str, int] = {}
        self.replicas: dict[bytes, _Replica] = {}
        self.per_client: dict[int, dict[bytes, int]] = {}
        self.addrs: dict[bytes, set[bytes]] = {}
        self.seconds: list[_Second] = []
        self.second = _Second()
        self.second_index = -1  # the index of self.second; -1 until the first outcome
        # The timeline ends with the run; a bound in time also bounds its length.
        self.last_second = int(duration + timeout) if duration is not None else sys.maxsize
        self.t0 = 0.0
        self.next_due = -math.inf  # when the next paced request is due
        self.starved = False  # a paced request is due but every connection is busy
        self.stop_sending_at = math.inf
        self.hard_stop_at = math.inf

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> Tally:
        self.t0 = now = time.monotonic()
        if self.duration is not None:
            end = self.t0 + self.duration
            self.hard_stop_at = end + self.timeout
            # Paced, the budget holds just the requests due before the end; the grace lets the
            # last of them go when the timer wakes the loop a millisecond or two late.
            self.stop_sending_at = end + (_PACE_GRACE if self.interval else 0.0)
        next_tick = next_progress = now
        stop = self.stop
        try:
            if stop is None or not stop.is_set():
                if self.interval:
                    self.next_due = now
                    self._send_due(now)
                else:
                    for slot in self.slots:
                        if self._may_send(now):
                            self._start_request(slot, now)
            while True:
                for key, _ in self.selector.select(self._wait()):
                    self._on_event(key.data)
                now = time.monotonic()
                if stop is not None and stop.is_set():
                    self._cancel_open()
                    break
                if self.interval:
                    self._send_due(now)
                if not self._may_send(now) and self._finished(now):
                    break  # at once, so that `elapsed` ends with the last reply
                if now >= next_tick:
                    next_tick = now + _TICK
                    self._housekeeping(now)
                    if self.on_progress is not None and now >= next_progress:
                        next_progress = now + _PROGRESS_EVERY
                        self.on_progress(self.done)
                    if now >= self.hard_stop_at:
                        for slot in self.slots:
                            if slot.state in _OPEN:
                                self._fail(slot, "timeout", now, retry=False)
                    if self._finished(now):
                        break
        finally:
            for slot in self.slots:
                self._close(slot)
            self.selector.close()
        elapsed = time.monotonic() - self.t0
        self._second_of(self.t0 + elapsed)  # the timeline covers the whole run
        if self.on_progress is not None:
            self.on_progress(self.done)
        return self._tally(elapsed)

    def _wait(self) -> float:
        """How long the loop may wait for events: a tick, or until the next paced request."""
        if not self.interval or self.starved:
            return _TICK
        return min(_TICK, max(0.0, self.next_due - time.monotonic()))

    def _may_send(self, now: float) -> bool:
        return (self.budget is None or self.issued < self.budget) and now < self.stop_sending_at

    def _finished(self, now: float) -> bool:
        busy = any(s.state in _OPEN for s in self.slots)
        return not busy and (not self._may_send(now) or now >= self.hard_stop_at)

    def _housekeeping(self, now: float) -> None:
        """Time out late requests and (unpaced) restart slots that are idle or done backing off."""
        paced = bool(self.interval)
        for slot in self.slots:
            state = slot.state
            if state in _OPEN:
                if now >= slot.deadline:
                    self._fail(slot, "timeout", now)
            elif (
                not paced
                and (state == _IDLE or (state == _BACKOFF and now >= slot.retry_at))
                and self._may_send(now)
            ):
                self._start_request(slot, now)

    def _send_due(self, now: float) -> None:
        """Paced load: start every request that is due, as long as a connection is free."""
        self.starved = False
        while now >= self.next_due and self._may_send(now):
            for slot in self.slots:  # the first free one, so that few connections stay warm
                if slot.state == _IDLE or (slot.state == _BACKOFF and now >= slot.retry_at):
                    self._start_request(slot, now)
                    break
            else:
                self.starved = True  # the next answer or back-off frees a connection
                return

    def _cancel_open(self) -> None:
        for slot in self.slots:
            if slot.state in _OPEN:
                self.cancelled += 1
                self._close(slot)

    # -- one request -----------------------------------------------------------------------

    def _start_request(self, slot: _Slot, now: float) -> None:
        index = self.issued
        self.issued += 1
        if self.interval:
            self.next_due = self.t0 + self.issued * self.interval
        slot.client = index % self.clients if self.clients else -1
        slot.out = self.requests[slot.client if self.clients else 0]
        slot.started = now
        slot.deadline = now + self.timeout
        slot.parse = _HEAD
        slot.buf.clear()
        slot.received = False
        if slot.sock is None:
            slot.reused = False
            self._connect(slot, now)
        else:
            slot.reused = True
            self._send(slot, now)

    def _connect(self, slot: _Slot, now: float) -> None:
        try:
            sock = socket.socket(self.family, socket.SOCK_STREAM)
        except OSError as e:
            self._fail(slot, _cause(e), now)
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        slot.sock = sock
        code = sock.connect_ex(self.address)
        if code in (0, errno.EINPROGRESS):
            slot.state = _CONNECTING
            self.selector.register(sock, selectors.EVENT_WRITE, slot)
        else:
            self._fail(slot, _CAUSE_BY_ERRNO.get(code, "other"), now)

    def _send(self, slot: _Slot, now: float) -> None:
        sock = slot.sock
        assert sock is not None
        try:
            n = sock.send(slot.out)
        except BlockingIOError:
            n = 0
        except OSError as e:
            self._broken(slot, _cause(e), now)
            return
        slot.out = slot.out[n:]
        if slot.out:
            if slot.state != _SENDING:
                self.selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, slot)
            slot.state = _SENDING
        else:
            if slot.state == _SENDING:
                self.selector.modify(sock, selectors.EVENT_READ, slot)
            slot.state = _WAITING

    def _on_event(self, slot: _Slot) -> None:
        state = slot.state
        sock = slot.sock
        if sock is None:
            return
        now = time.monotonic()
        if state == _CONNECTING:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._fail(slot, _CAUSE_BY_ERRNO.get(code, "other"), now)
                return
            self.selector.modify(sock, selectors.EVENT_READ, slot)
            slot.state = _WAITING
            self._send(slot, now)
            return
        if state not in (_SENDING, _WAITING):
            self._close(slot)  # bytes or a close while no request is open: drop the connection
            return
        if state == _SENDING:
            self._send(slot, now)
            if slot.state != _WAITING:
                return
        try:
            data = sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._broken(slot, _cause(e), now)
            return
        if not data:
            if slot.parse == _UNTIL_CLOSE:
                slot.close_after = True
                self._finish(slot, now)
            else:
                self._broken(slot, "closed", now)  # an orderly close (FIN) before the answer ended
            return
        slot.received = True
        slot.buf += data
        try:
            done = self._parse(slot)
        except _ProtocolError:
            self._fail(slot, "other", now)
            return
        if done:
            self._finish(slot, now)

    def _parse(self, slot: _Slot) -> bool:
        """Consume what has arrived of the reply; True once it is complete."""
        buf = slot.buf
        while True:
            parse = slot.parse
            if parse == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > _MAX_HEAD:
                        raise _ProtocolError("header too long")
                    return False
                head = bytes(buf[:end])
                del buf[: end + 4]
                if self._read_head(slot, head):
                    return True
            elif parse in (_LENGTH, _CHUNK_DATA):
                n = min(len(buf), slot.remaining)
                del buf[:n]
                slot.remaining -= n
                if slot.remaining:
                    return False
                if parse == _LENGTH:
                    return True
                slot.parse = _CHUNK_SIZE
            elif parse == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        raise _ProtocolError("chunk size line too long")
                    return False
                try:
                    size = int(bytes(buf[:end]).split(b";", 1)[0], 16)
                except ValueError:
                    raise _ProtocolError("bad chunk size") from None
                del buf[: end + 2]
                if size == 0:
                    slot.parse = _TRAILER
                else:
                    slot.parse = _CHUNK_DATA
                    slot.remaining = size + 2  # the data and its CRLF
            elif parse == _TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    return False
                del buf[: end + 2]
                if end == 0:
                    return True
            else:  # _UNTIL_CLOSE: the body ends when the server closes
                buf.clear()
                return False

    def _read_head(self, slot: _Slot, head: bytes) -> bool:
        """Take what we need from a reply's head; True if the reply has no body."""
        if not head.startswith(b"HTTP/1.") or len(head) < 12:
            raise _ProtocolError("not an HTTP/1.x status line")
        try:
            status = int(head[9:12])
        except ValueError:
            raise _ProtocolError("bad status code") from None
        if 100 <= status < 200:
            return False  # an interim reply (100 Continue): the real one follows
        low = head.lower()
        slot.status = status
        slot.replica = _header(head, low, b"\r\nx-served-by:")
        slot.upstream = _header(head, low, b"\r\nx-upstream-addr:")
        connection = _header(head, low, b"\r\nconnection:").lower()
        if head[7:8] == b"0":
            slot.close_after = b"keep-alive" not in connection
        else:
            slot.close_after = b"close" in connection
        if status in (204, 304):
            return True
        if b"chunked" in _header(head, low, b"\r\ntransfer-encoding:").lower():
            slot.parse = _CHUNK_SIZE
            return False
        length = _header(head, low, b"\r\ncontent-length:")
        if length:
            try:
                slot.remaining = int(length)
            except ValueError:
                raise _ProtocolError("bad Content-Length") from None
            slot.parse = _LENGTH
            return slot.remaining == 0
        slot.parse = _UNTIL_CLOSE
        return False

    def _finish(self, slot: _Slot, now: float) -> None:
        """Count a complete reply, then reuse the connection for the next request."""
        status = slot.status
        replica = slot.replica
        stats = self.replicas.get(replica)
        if stats is None:
            stats = self.replicas[replica] = _Replica()
        stats.latency.record(now - slot.started)
        stats.status[status] = stats.status.get(status, 0) + 1
        t = int(now - self.t0)
        second = self.second if t == self.second_index else self._second_of(now)
        self.done += 1
        if slot.upstream:
            for address in upstream_addresses(slot.upstream):
                second.tried[address] = second.tried.get(address, 0) + 1
        if status >= 500:
            second.errors += 1
            second.causes["http_5xx"] = second.causes.get("http_5xx", 0) + 1
        else:
            second.ok += 1
            second.by_replica[replica] = second.by_replica.get(replica, 0) + 1
            if slot.client >= 0:
                counts = self.per_client.get(slot.client)
                if counts is None:
                    counts = self.per_client[slot.client] = {}
                counts[replica] = counts.get(replica, 0) + 1
            if slot.upstream:
                self._note_upstream(replica, slot.upstream)
        slot.failures = 0
        slot.state = _IDLE
        if slot.close_after:
            self._close(slot)
        if self._may_send(now):
            if now >= self.next_due:  # always when unpaced; a paced idle slot keeps its connection
                self._start_request(slot, now)
        elif slot.sock is not None:
            self._close(slot)

    def _note_upstream(self, replica: bytes, upstream: bytes) -> None:
        # nginx lists every upstream it tried: "a:80, b:80" (and "a : b" across internal redirects).
        self.upstream_retries += upstream.count(b",")
        addrs = self.addrs.get(replica)
        if addrs is None:
            addrs = self.addrs[replica] = set()
        if len(addrs) < MAX_ADDRS_PER_REPLICA:
            addrs.add(upstream)

    def _broken(self, slot: _Slot, cause: str, now: float) -> None:
        """The connection broke under an open request: send it again if that is safe, else fail it.

        A keep-alive connection can be closed by the server while it is idle (its keepalive
        timeout, or nginx closing idle connections on a graceful reload) just as we write the
        next request on it: we then see a reset, an EOF or a broken pipe before any answer.
        Sending the request again on a fresh connection is safe: it is a GET, which is
        idempotent (RFC 9110 §9.2.2: repeating it has the same intended effect as sending it
        once), and not a byte of an answer arrived, so nothing can be counted twice; RFC 9112
        §9.3.1 allows this automatic retry, and browsers, curl and urllib3 do it. Only once:
        the retry runs on a new connection, which is never stale, so a second failure is an
        error. A failure on a fresh connection, or after part of an answer, always is.
        """
        if self.retry_stale and slot.reused and not slot.received and cause in RETRY_CAUSES:
            self.retried_by_cause[cause] = self.retried_by_cause.get(cause, 0) + 1
            self._second_of(now).retried += 1
            self._close(slot)
            slot.out = self.requests[slot.client if self.clients else 0]
            slot.reused = False
            slot.parse = _HEAD
            self._connect(slot, now)  # same start and deadline: the retry is part of the request
        else:
            self._fail(slot, cause, now)

    def _fail(self, slot: _Slot, cause: str, now: float, *, retry: bool = True) -> None:
        """Count the slot's open request as an error, drop its connection and back off."""
        second = self._second_of(now)
        second.errors += 1
        second.causes[cause] = second.causes.get(cause, 0) + 1
        self.done += 1
        self._close(slot)
        slot.failures += 1
        slot.state = _BACKOFF
        slot.retry_at = now + min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (slot.failures - 1))
        if not retry:
            slot.state = _IDLE

    def _close(self, slot: _Slot) -> None:
        sock = slot.sock
        if sock is None:
            return
        slot.sock = None
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(sock)
        sock.close()
        slot.buf.clear()
        slot.out = b""
        slot.close_after = False
        if slot.state != _BACKOFF:
            slot.state = _IDLE

    def _second_of(self, now: float) -> _Second:
        """The timeline's counters for the second `now` falls in (the last one, past the bound)."""
        t = min(int(now - self.t0), self.last_second)
        while len(self.seconds) <= t:
            self.seconds.append(_Second())
        self.second_index = t
        self.second = self.seconds[t]
        return self.second

    def _tally(self, elapsed: float) -> Tally:
        def name(raw: bytes) -> str:
            return raw.decode("latin-1") if raw else UNNAMED_REPLICA

        timeline = [
            Second(
                t=t,
                sent=s.ok + s.errors,
                ok=s.ok,
                errors=s.errors,
                errors_by_cause=dict(s.causes),
                by_replica={name(r): n for r, n in s.by_replica.items()},
                retried=s.retried,
                tried={a.decode("latin-1"): n for a, n in s.tried.items()},
            )
            for t, s in enumerate(self.seconds)
        ]
        tally = Tally(
            per_client={
                client_name(c): {name(r): n for r, n in counts.items()}
                for c, counts in sorted(self.per_client.items())
            },
            upstream_addrs={name(r): {a.decode("latin-1") for a in addrs} for r, addrs in self.addrs.items()},
            upstream_retries=self.upstream_retries,
            retried_by_cause=dict(self.retried_by_cause),
            cancelled=self.cancelled,
            elapsed=elapsed,
        )
        for second in timeline:
            tally.ok += second.ok
            tally.errors += second.errors
            tally.retried += second.retried
            _add(tally.errors_by_cause, second.errors_by_cause)
        tally.sent = tally.ok + tally.errors
        for raw, stats in self.replicas.items():
            replica = name(raw)
            tally.latency_by_replica[replica] = stats.latency
            tally.status_by_replica[replica] = dict(stats.status)
            tally.latency.merge(stats.latency)
            _add(tally.by_status, stats.status)
            ok = sum(n for status, n in stats.status.items() if status < 500)
            if ok:
                tally.by_replica[replica] = ok
        tally.timeline = timeline
        return tally


def upstream_addresses(value: bytes) -> list[bytes]:
    """Every address in an X-Upstream-Addr value: nginx lists the attempts of one request as
    "a:80, b:80", and those of an internal redirect after " : "."""
    return [a.strip() for group in value.split(b" : ") for a in group.split(b",") if a.strip()]


def _header(head: bytes, low: bytes, prefix: bytes) -> bytes:
    """The value of the first header named by `prefix` ("\\r\\nname:"), b"" when absent."""
    start = low.find(prefix)
    if start < 0:
        return b""
    start += len(prefix)
    end = head.find(b"\r\n", start)
    return head[start : end if end >= 0 else len(head)].strip()


def _cause(error: OSError) -> str:
    if isinstance(error, TimeoutError):
        return "timeout"
    return _CAUSE_BY_ERRNO.get(error.errno or 0, "other")
