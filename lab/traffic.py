"""Load through the load balancer: C keep-alive HTTP/1.1 connections, tallied as replies arrive.

Engine: one thread of non-blocking sockets on an epoll loop, standard library only. The server
shares this 2-core machine, so the client that spends the least CPU per request wins: against a
loopback nginx this loop keeps pace with wrk -t2 (bench/load_engine.py) where asyncio streams
managed three quarters of it; more processes would only starve the server. The loop only moves
bytes: responses are parsed by `http_parser.ResponseParser`, outcomes counted by `tally.Counts`,
and when a request may start is decided by `Pacer`; all three are pure and tested without sockets.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import math
import re
import select
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping

from lab.http_parser import ProtocolError, Response, ResponseParser
from lab.tally import (
    ERROR_CAUSES,
    KEEP_BODY,
    MAX_ADDRS_PER_REPLICA,
    RETRY_CAUSES,
    UNNAMED_REPLICA,
    Counts,
    Second,
    Tally,
    client_name,
    upstream_addresses,
)

__all__ = [
    "ERROR_CAUSES",
    "MAX_ADDRS_PER_REPLICA",
    "RETRY_CAUSES",
    "UNNAMED_REPLICA",
    "Pacer",
    "Second",
    "Tally",
    "build_requests",
    "client_name",
    "header_lines",
    "loopback_address",
    "run_load",
    "upstream_addresses",
]

_TICK = 0.02  # seconds between checks of timeouts, back-offs, progress and the stop event
_PROGRESS_EVERY = 0.1
_PACE_GRACE = 0.02  # how late past `duration` a paced request that was due before it may still go
_BACKOFF_FIRST, _BACKOFF_MAX = 0.001, 0.1  # after connection errors, so a dead server is not spun on
_RECV_SIZE = 262144  # one read takes a whole answer of a typical page
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP field name (RFC 9110 §5.1)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # CR, LF, NUL and friends; HTAB is allowed
_ENGINE_HEADERS = frozenset({"host", "connection", "content-length", "transfer-encoding"})
_IDENTITY_HEADERS = frozenset({"x-client-id", "cookie"})
_SERVED_BY, _UPSTREAM_ADDR = b"x-served-by", b"x-upstream-addr"  # what the parser keeps of a response
_SITE_VERSION = b"x-site-version"  # kept too when the run records what content each answer carried


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
    content: bool = False,
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
    a retry when there was one. With `content`, each ok answer's X-Site-Version and a digest of
    its body (`tally.content_digest`) are counted too (`Tally.contents`); it costs a copy of the
    body and, for a body not seen before, a hash.
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
        content=content,
    )
    return engine.run()


# ---------------------------------------------------------------------------------------------
# When a request may start


class Pacer:
    """Which request may start when: the engine's scheduling decision, as a pure object.

    Requests are numbered from 0 in the order they start. Unpaced, the next one may start
    as soon as a connection is free; paced at `rate`, request i is due at start + i/rate and
    only those due before the end are sent. None starts once `requests` have (None: no bound
    but time) nor at or after start + duration; paced, a `grace` past the end lets the last
    request due before it go when the loop wakes a little late. Time comes in as arguments,
    so a test drives it with a simulated clock.
    """

    __slots__ = ("start", "interval", "budget", "stop_at", "issued", "next_due")

    def __init__(
        self,
        start: float,
        *,
        requests: int | None,
        duration: float | None,
        rate: float | None = None,
        grace: float = _PACE_GRACE,
    ) -> None:
        self.start = start
        self.interval = 1.0 / rate if rate is not None else 0.0  # 0.0: not paced
        budget = sys.maxsize if requests is None else requests
        if rate is not None and duration is not None:
            budget = min(budget, math.ceil(duration * rate))
        self.budget = budget
        if duration is None:
            self.stop_at = math.inf
        else:
            self.stop_at = start + duration + (grace if rate is not None else 0.0)
        self.issued = 0
        self.next_due = start if rate is not None else -math.inf  # when the next request is due

    @property
    def paced(self) -> bool:
        return self.interval > 0.0

    def may_send(self, now: float) -> bool:
        """Requests are left to send, and there is time to send them."""
        return self.issued < self.budget and now < self.stop_at

    def due(self, now: float) -> bool:
        """The next request should start now (if a connection is free)."""
        return now >= self.next_due and self.issued < self.budget and now < self.stop_at

    def take(self) -> int:
        """Record that the next request starts; its number."""
        index = self.issued
        self.issued = index + 1
        if self.interval:
            self.next_due = self.start + self.issued * self.interval
        return index

    def wait(self, now: float) -> float:
        """Seconds until the next request is due: 0 when one is, inf when none will be."""
        if not self.may_send(now):
            return math.inf
        return max(0.0, self.next_due - now)


# ---------------------------------------------------------------------------------------------
# The engine

# Connection slot states
_IDLE, _BACKOFF, _CONNECTING, _SENDING, _WAITING = range(5)
_OPEN = (_CONNECTING, _SENDING, _WAITING)  # a request is in flight

_CAUSE_BY_ERRNO = {
    errno.ECONNREFUSED: "refused",
    errno.ECONNRESET: "reset",
    errno.EPIPE: "reset",
    errno.ECONNABORTED: "reset",
    errno.ETIMEDOUT: "timeout",
}


class _Slot:
    """One of the C connections and the request it carries."""

    __slots__ = (
        "sock",
        "fd",
        "state",
        "parser",
        "out",
        "started",
        "deadline",
        "client",
        "failures",
        "retry_at",
        "reused",
    )

    def __init__(self, *, content: bool = False) -> None:
        self.sock: socket.socket | None = None
        self.fd = -1
        self.state = _IDLE
        if content:
            fields = ("X-Served-By", "X-Upstream-Addr", "X-Site-Version")
            self.parser = ResponseParser(fields, keep_body=KEEP_BODY)
        else:
            self.parser = ResponseParser(("X-Served-By", "X-Upstream-Addr"))
        self.out = b""
        self.started = 0.0
        self.deadline = 0.0
        self.client = -1
        self.failures = 0
        self.retry_at = 0.0
        self.reused = False  # the open request went out on a connection that had answered before


class _Engine:
    """Runs one load: moves bytes between the sockets and the slots' parsers, reports each
    outcome to `Counts` and asks a `Pacer` when a request may start."""

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
        content: bool = False,
    ) -> None:
        self.family = family
        self.address = address
        self.requests = requests
        self.clients = clients
        self.budget = budget
        self.duration = duration
        self.timeout = timeout
        self.rate = rate
        self.retry_stale = retry_stale
        self.stop = stop
        self.on_progress = on_progress
        self.content = content
        self.slots = [_Slot(content=content) for _ in range(concurrency)]
        self.poller = _Poller()
        self.by_fd: dict[int, _Slot] = {}
        self.pacer = Pacer(0.0, requests=budget, duration=duration, rate=rate)  # both made anew
        self.counts = Counts(0.0)  # when the run starts
        self.starved = False  # a paced request is due but every connection is busy
        self.hard_stop_at = math.inf

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> Tally:
        t0 = now = time.monotonic()
        pacer = self.pacer = Pacer(t0, requests=self.budget, duration=self.duration, rate=self.rate)
        # The timeline ends with the run; a bound in time also bounds its length.
        last_second = int(self.duration + self.timeout) if self.duration is not None else sys.maxsize
        counts = self.counts = Counts(t0, last_second=last_second)
        if self.duration is not None:
            self.hard_stop_at = t0 + self.duration + self.timeout
        next_tick = next_progress = now
        stop = self.stop
        paced = pacer.paced
        try:
            if stop is None or not stop.is_set():
                if paced:
                    self._send_due(now)
                else:
                    for slot in self.slots:
                        if pacer.may_send(now):
                            self._start_request(slot, now)
            poll = self.poller.poll
            by_fd = self.by_fd
            on_event = self._on_event
            while True:
                wait = _TICK if not paced or self.starved else min(_TICK, pacer.wait(time.monotonic()))
                for fd in poll(wait):
                    ready = by_fd.get(fd)
                    if ready is not None:
                        on_event(ready)
                now = time.monotonic()
                if stop is not None and stop.is_set():
                    self._cancel_open()
                    break
                if paced:
                    self._send_due(now)
                if not pacer.may_send(now) and self._finished(now):
                    break  # at once, so that `elapsed` ends with the last reply
                if now >= next_tick:
                    next_tick = now + _TICK
                    self._housekeeping(now)
                    if self.on_progress is not None and now >= next_progress:
                        next_progress = now + _PROGRESS_EVERY
                        self.on_progress(counts.done)
                    if now >= self.hard_stop_at:
                        for slot in self.slots:
                            if slot.state in _OPEN:
                                self._fail(slot, "timeout", now, retry=False)
                    if self._finished(now):
                        break
        finally:
            for slot in self.slots:
                self._close(slot)
            self.poller.close()
        elapsed = time.monotonic() - t0
        if self.on_progress is not None:
            self.on_progress(counts.done)
        return counts.tally(elapsed)

    def _finished(self, now: float) -> bool:
        busy = any(s.state in _OPEN for s in self.slots)
        return not busy and (not self.pacer.may_send(now) or now >= self.hard_stop_at)

    def _housekeeping(self, now: float) -> None:
        """Time out late requests and (unpaced) restart slots that are idle or done backing off."""
        paced = self.pacer.paced
        for slot in self.slots:
            state = slot.state
            if state in _OPEN:
                if now >= slot.deadline:
                    self._fail(slot, "timeout", now)
            elif (
                not paced
                and (state == _IDLE or (state == _BACKOFF and now >= slot.retry_at))
                and self.pacer.may_send(now)
            ):
                self._start_request(slot, now)

    def _send_due(self, now: float) -> None:
        """Paced load: start every request that is due, as long as a connection is free."""
        self.starved = False
        while self.pacer.due(now):
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
                self.counts.cancel()
                self._close(slot)

    # -- one request -----------------------------------------------------------------------

    def _start_request(self, slot: _Slot, now: float) -> None:
        index = self.pacer.take()
        slot.client = client = index % self.clients if self.clients else -1
        slot.out = self.requests[client if client >= 0 else 0]
        slot.started = now
        slot.deadline = now + self.timeout
        slot.parser.reset()
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
        slot.fd = sock.fileno()
        code = sock.connect_ex(self.address)
        if code in (0, errno.EINPROGRESS):
            slot.state = _CONNECTING
            self.by_fd[slot.fd] = slot
            self.poller.register(slot.fd, write=True)
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
                self.poller.modify(slot.fd, write=True)
            slot.state = _SENDING
        else:
            if slot.state == _SENDING:
                self.poller.modify(slot.fd, write=False)
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
            self.poller.modify(slot.fd, write=False)
            slot.state = _WAITING
            self._send(slot, now)
            return
        if state == _SENDING:
            self._send(slot, now)
            if slot.state != _WAITING:
                return
        elif state != _WAITING:
            self._close(slot)  # bytes or a close while no request is open: drop the connection
            return
        try:
            data = sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._broken(slot, _cause(e), now)
            return
        try:
            response = slot.parser.feed(data) if data else slot.parser.feed_eof()
        except ProtocolError:
            # A close that cut an answer short is "closed"; anything else is not HTTP as we know it.
            self._fail(slot, "closed" if not data else "other", now)
            return
        if response is not None:
            self._finish(slot, response, now)
        elif not data:
            self._broken(slot, "closed", now)  # an orderly close (FIN) before any byte of the answer

    def _finish(self, slot: _Slot, response: Response, now: float) -> None:
        """Count a complete answer, then reuse the connection for the next request."""
        fields = response.fields
        self.counts.answer(
            now, now - slot.started, response.status, fields[_SERVED_BY], fields[_UPSTREAM_ADDR], slot.client
        )
        if self.content and response.status < 500:
            self.counts.content(
                fields[_SERVED_BY], fields[_SITE_VERSION], response.body, response.body_length
            )
        slot.failures = 0
        slot.state = _IDLE
        if not response.keep_alive:
            self._close(slot)
        pacer = self.pacer
        if pacer.may_send(now):
            if now >= pacer.next_due:  # always when unpaced; a paced idle slot keeps its connection
                self._start_request(slot, now)
        elif slot.sock is not None:
            self._close(slot)

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
        if self.retry_stale and slot.reused and not slot.parser.started and cause in RETRY_CAUSES:
            self.counts.retry(now, cause)
            self._close(slot)
            slot.out = self.requests[slot.client if slot.client >= 0 else 0]
            slot.reused = False
            slot.parser.reset()
            self._connect(slot, now)  # same start and deadline: the retry is part of the request
        else:
            self._fail(slot, cause, now)

    def _fail(self, slot: _Slot, cause: str, now: float, *, retry: bool = True) -> None:
        """Count the slot's open request as an error, drop its connection and back off."""
        self.counts.error(now, cause)
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
        if self.by_fd.pop(slot.fd, None) is not None:
            with contextlib.suppress(OSError):
                self.poller.unregister(slot.fd)
        slot.fd = -1
        sock.close()
        slot.out = b""
        if slot.state != _BACKOFF:
            slot.state = _IDLE


class _Poller:
    """Readiness of the slots' sockets by file descriptor: epoll where there is one (Linux),
    else what `selectors` offers. epoll is used bare because the selectors wrapper costs
    about a microsecond per event, a tenth of what a whole request costs the loop."""

    def __init__(self, *, epoll: bool = hasattr(select, "epoll")) -> None:
        self._epoll = select.epoll() if epoll else None
        self._selector = None if epoll else selectors.DefaultSelector()

    def register(self, fd: int, *, write: bool) -> None:
        if self._epoll is not None:
            self._epoll.register(fd, select.EPOLLOUT if write else select.EPOLLIN)
        else:
            assert self._selector is not None
            self._selector.register(fd, selectors.EVENT_WRITE if write else selectors.EVENT_READ)

    def modify(self, fd: int, *, write: bool) -> None:
        """Wait for the socket to take more bytes (write) as well as to have some, or only for the latter."""
        if self._epoll is not None:
            self._epoll.modify(fd, select.EPOLLIN | select.EPOLLOUT if write else select.EPOLLIN)
        else:
            assert self._selector is not None
            events = selectors.EVENT_READ | selectors.EVENT_WRITE if write else selectors.EVENT_READ
            self._selector.modify(fd, events)

    def unregister(self, fd: int) -> None:
        if self._epoll is not None:
            self._epoll.unregister(fd)
        else:
            assert self._selector is not None
            with contextlib.suppress(KeyError):
                self._selector.unregister(fd)

    def poll(self, timeout: float) -> list[int]:
        """The file descriptors with something to do, waiting at most `timeout` seconds."""
        if self._epoll is not None:
            return [fd for fd, _ in self._epoll.poll(timeout)]
        assert self._selector is not None
        return [key.fd for key, _ in self._selector.select(timeout)]

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
        else:
            assert self._selector is not None
            self._selector.close()


def _cause(error: OSError) -> str:
    if isinstance(error, TimeoutError):
        return "timeout"
    return _CAUSE_BY_ERRNO.get(error.errno or 0, "other")
