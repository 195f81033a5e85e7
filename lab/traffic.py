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
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lab.stats import LatencyHistogram

ERROR_CAUSES = ("refused", "reset", "timeout", "http_5xx", "other")
UNNAMED_REPLICA = "(unnamed)"  # an answer without an X-Served-By header
MAX_ADDRS_PER_REPLICA = 16  # X-Upstream-Addr values kept per replica, so memory stays flat

_MAX_HEAD = 64 * 1024
_TICK = 0.02  # seconds between checks of timeouts, back-offs and progress
_PROGRESS_EVERY = 0.1
_BACKOFF_FIRST, _BACKOFF_MAX = 0.001, 0.1  # after connection errors, so a dead server is not spun on


@dataclass
class Tally:
    """What a run saw. Invariants: sent == ok + errors and sum(by_replica) == ok.

    ok counts complete answers below 500; a 5xx answer is an error (cause "http_5xx") but
    still appears in by_status and in the latency histogram.
    """

    sent: int = 0
    ok: int = 0
    errors: int = 0
    by_replica: dict[str, int] = field(default_factory=dict)
    by_status: dict[int, int] = field(default_factory=dict)
    errors_by_cause: dict[str, int] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    per_client: dict[str, dict[str, int]] = field(default_factory=dict)
    upstream_addrs: dict[str, set[str]] = field(default_factory=dict)
    upstream_retries: int = 0  # extra upstream attempts seen in X-Upstream-Addr ("a, b" is 1)
    elapsed: float = 0.0

    @property
    def throughput_rps(self) -> float:
        """Successful answers per second."""
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def merge(self, other: Tally) -> None:
        """Add `other` into this tally (exact); elapsed becomes the longer of the two."""
        self.sent += other.sent
        self.ok += other.ok
        self.errors += other.errors
        self.upstream_retries += other.upstream_retries
        _add(self.by_replica, other.by_replica)
        _add(self.by_status, other.by_status)
        _add(self.errors_by_cause, other.errors_by_cause)
        self.latency.merge(other.latency)
        for client, counts in other.per_client.items():
            _add(self.per_client.setdefault(client, {}), counts)
        for replica, addrs in other.upstream_addrs.items():
            self.upstream_addrs.setdefault(replica, set()).update(addrs)
        self.elapsed = max(self.elapsed, other.elapsed)


def _add(into: dict, counts: dict) -> None:
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n


def client_name(index: int) -> str:
    """The identity that client number `index` sends."""
    return f"c{index}"


def client_address(index: int) -> str:
    """A made-up address per client; ip_hash keys on the first three octets, so each gets a /24."""
    return f"10.{(index >> 8) & 255}.{index & 255}.1"


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


def build_requests(host: str, port: int, path: str, clients: int) -> list[bytes]:
    """The request bytes, one per client identity (one in all when clients == 0)."""
    if not path.startswith("/") or any(ch in path for ch in " \r\n\t"):
        raise ValueError(f"path must start with / and hold no spaces or line breaks: {path!r}")
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: lab-traffic\r\nAccept: */*\r\n"
    if clients == 0:
        return [(head + "\r\n").encode("latin-1")]
    return [
        (
            f"{head}X-Client-Id: {client_name(i)}\r\nCookie: lab_client={client_name(i)}\r\n"
            f"X-Forwarded-For: {client_address(i)}\r\n\r\n"
        ).encode("latin-1")
        for i in range(clients)
    ]


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
    on_progress: Callable[[int], None] | None = None,
) -> Tally:
    """Send GET `path` over `concurrency` keep-alive connections until `requests` are done or
    `duration` seconds have passed (never past duration + timeout), and tally the answers.

    With `clients` = K > 0, request i speaks for client c{i % K}: headers X-Client-Id, Cookie
    lab_client= and X-Forwarded-For (a /24 per client, for ip_hash behind nginx's realip).
    Each request has `timeout` seconds, connection set-up included; a request still open at
    the end counts as a timeout. `on_progress` gets the number of finished requests about
    every 0.1 s. Latency runs from the start of a request, so it includes a new connection's
    set-up when one was needed.
    """
    if requests is None and duration is None:
        raise ValueError("give requests, duration or both: a load must be bounded")
    if requests is not None and requests < 1:
        raise ValueError(f"requests must be >= 1, got {requests}")
    if duration is not None and not duration > 0:
        raise ValueError(f"duration must be > 0 seconds, got {duration}")
    if concurrency < 1 or clients < 0 or not timeout > 0:
        raise ValueError("concurrency must be >= 1, clients >= 0 and timeout > 0")
    family, address = loopback_address(host)
    engine = _Engine(
        family=family,
        address=(address, port),
        requests=build_requests(address, port, path, clients),
        clients=clients,
        budget=requests,
        duration=duration,
        concurrency=concurrency,
        timeout=timeout,
        on_progress=on_progress,
    )
    return engine.run()


# ---------------------------------------------------------------------------------------------
# The engine

# Connection slot states
_IDLE, _BACKOFF, _CONNECTING, _SENDING, _WAITING = range(5)
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


class _Engine:
    """Runs one load; counters are kept keyed by raw bytes and turned into a Tally at the end."""

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
        on_progress: Callable[[int], None] | None,
    ) -> None:
        self.family = family
        self.address = address
        self.requests = requests
        self.clients = clients
        self.budget = budget
        self.duration = duration
        self.timeout = timeout
        self.on_progress = on_progress
        self.slots = [_Slot() for _ in range(concurrency)]
        self.selector = selectors.DefaultSelector()
        self.sent = self.ok = self.errors = self.retries = 0
        self.by_replica: dict[bytes, int] = {}
        self.by_status: dict[int, int] = {}
        self.causes: dict[str, int] = {}
        self.latency = LatencyHistogram()
        self.per_client: dict[int, dict[bytes, int]] = {}
        self.addrs: dict[bytes, set[bytes]] = {}
        self.t0 = 0.0
        self.stop_sending_at = float("inf")
        self.hard_stop_at = float("inf")

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> Tally:
        self.t0 = now = time.monotonic()
        if self.duration is not None:
            self.stop_sending_at = self.t0 + self.duration
            self.hard_stop_at = self.stop_sending_at + self.timeout
        next_tick = next_progress = now
        try:
            for slot in self.slots:
                if self._may_send(now):
                    self._start_request(slot, now)
            while True:
                for key, _ in self.selector.select(_TICK):
                    self._on_event(key.data)
                now = time.monotonic()
                if not self._may_send(now) and self._finished(now):
                    break  # at once, so that `elapsed` ends with the last reply
                if now >= next_tick:
                    next_tick = now + _TICK
                    self._housekeeping(now)
                    if self.on_progress is not None and now >= next_progress:
                        next_progress = now + _PROGRESS_EVERY
                        self.on_progress(self.ok + self.errors)
                    if now >= self.hard_stop_at:
                        for slot in self.slots:
                            if slot.state in (_CONNECTING, _SENDING, _WAITING):
                                self._fail(slot, "timeout", now, retry=False)
                    if self._finished(now):
                        break
        finally:
            for slot in self.slots:
                self._close(slot)
            self.selector.close()
        elapsed = time.monotonic() - self.t0
        if self.on_progress is not None:
            self.on_progress(self.ok + self.errors)
        return self._tally(elapsed)

    def _may_send(self, now: float) -> bool:
        return (self.budget is None or self.sent < self.budget) and now < self.stop_sending_at

    def _finished(self, now: float) -> bool:
        busy = any(s.state in (_CONNECTING, _SENDING, _WAITING) for s in self.slots)
        return not busy and (not self._may_send(now) or now >= self.hard_stop_at)

    def _housekeeping(self, now: float) -> None:
        """Time out late requests and restart slots that are idle or done backing off."""
        for slot in self.slots:
            state = slot.state
            if state in (_CONNECTING, _SENDING, _WAITING):
                if now >= slot.deadline:
                    self._fail(slot, "timeout", now)
            elif (state == _IDLE or (state == _BACKOFF and now >= slot.retry_at)) and self._may_send(now):
                self._start_request(slot, now)

    # -- one request -----------------------------------------------------------------------

    def _start_request(self, slot: _Slot, now: float) -> None:
        index = self.sent
        self.sent += 1
        slot.client = index % self.clients if self.clients else -1
        slot.out = self.requests[slot.client if self.clients else 0]
        slot.started = now
        slot.deadline = now + self.timeout
        slot.parse = _HEAD
        slot.buf.clear()
        if slot.sock is None:
            self._connect(slot, now)
        else:
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
            self._fail(slot, _cause(e), now)
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
            self._fail(slot, _cause(e), now)
            return
        if not data:
            if slot.parse == _UNTIL_CLOSE:
                slot.close_after = True
                self._finish(slot, now)
            else:
                self._fail(slot, "reset", now)
            return
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
        self.latency.record(now - slot.started)
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if status >= 500:
            self.errors += 1
            self.causes["http_5xx"] = self.causes.get("http_5xx", 0) + 1
        else:
            self.ok += 1
            replica = slot.replica
            self.by_replica[replica] = self.by_replica.get(replica, 0) + 1
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
            self._start_request(slot, now)
        elif slot.sock is not None:
            self._close(slot)

    def _note_upstream(self, replica: bytes, upstream: bytes) -> None:
        # nginx lists every upstream it tried: "a:80, b:80" (and "a : b" across internal redirects).
        self.retries += upstream.count(b",")
        addrs = self.addrs.get(replica)
        if addrs is None:
            addrs = self.addrs[replica] = set()
        if len(addrs) < MAX_ADDRS_PER_REPLICA:
            addrs.add(upstream)

    def _fail(self, slot: _Slot, cause: str, now: float, *, retry: bool = True) -> None:
        """Count the slot's open request as an error, drop its connection and back off."""
        self.errors += 1
        self.causes[cause] = self.causes.get(cause, 0) + 1
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

    def _tally(self, elapsed: float) -> Tally:
        def name(raw: bytes) -> str:
            return raw.decode("latin-1") if raw else UNNAMED_REPLICA

        return Tally(
            sent=self.sent,
            ok=self.ok,
            errors=self.errors,
            by_replica={name(r): n for r, n in self.by_replica.items()},
            by_status=dict(self.by_status),
            errors_by_cause=dict(self.causes),
            latency=self.latency,
            per_client={
                client_name(c): {name(r): n for r, n in counts.items()}
                for c, counts in sorted(self.per_client.items())
            },
            upstream_addrs={name(r): {a.decode("latin-1") for a in addrs} for r, addrs in self.addrs.items()},
            upstream_retries=self.retries,
            elapsed=elapsed,
        )


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
