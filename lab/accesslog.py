"""The load balancer's access log as live per-address counters (pure: bytes in, numbers out).

nginx writes one `lab`-format line per request to the container's stdout; the engine stamps
each line with the nanosecond it arrived (`docker logs --timestamps`). `AccessLogReader` takes
those bytes as they come (a line may be cut between two reads), drops lines it has already
counted when the stream is followed again after a load balancer restart (`--since` is
inclusive and a restarted container's log still holds its earlier lines), and feeds
`TrafficCounters`: requests, 5xx, rates over 1/10/60 s and recent latency per upstream
address. Which replica an address belongs to is told by `assign`; an address that changes
hands starts fresh, so counts never move from one replica to another.
"""

from __future__ import annotations

import calendar
import re
import time
from collections import deque
from dataclasses import dataclass

BUCKET_NS = 100_000_000  # rates are kept in 0.1 s buckets
_BUCKETS_PER_S = 10
HORIZON_S = 60  # the longest window (and the sparkline's length)
_RING = (HORIZON_S + 2) * _BUCKETS_PER_S  # a little more than the horizon, so it is always covered
RECENT = 1024  # latencies kept per address for the percentiles (the newest ones)
REPLAY_MARGIN_S = 1.0  # how far before the last counted line a new follow starts

# The engine's timestamp (RFC 3339, UTC, trailing zeros of the fraction dropped), then the `lab`
# log format of nginx/nginx.conf.j2. nginx escapes '"' inside "$request" as \x22.
_ENTRY = re.compile(
    r"(?P<second>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<fraction>\d{1,9}))?Z "
    r'\S+ \[[^\]]*\] "[^"]*" (?P<status>\d{3}) \S+ '
    r"upstream=(?P<upstream>.*?) upstream_status=(?P<upstream_status>.*?) "
    r"request_time=(?P<request_time>[\d.]+) upstream_time=(?P<upstream_time>.*?) client="
)
_TIMESTAMP = re.compile(r"(?P<second>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<fraction>\d{1,9}))?Z")
_SEPARATORS = re.compile(r"\s*(?:,| : )\s*")  # nginx joins tries with ", " and redirects with " : "


@dataclass(frozen=True, slots=True)
class AccessEntry:
    """One request as the load balancer logged it."""

    ts_ns: int  # when the engine received the line (UNIX time, nanoseconds)
    status: int  # what the client got
    attempts: tuple[str, ...]  # upstream addresses tried, in order; the last one answered
    attempt_statuses: tuple[int, ...]  # their statuses (0: none, e.g. a timeout)
    request_time: float  # seconds, as nginx saw the whole request
    upstream_time: float | None  # seconds the answering replica took

    @property
    def replica_address(self) -> str | None:
        """The address that answered, or None when no replica was reached ("-", or the
        upstream group's name when every replica was down)."""
        if self.attempts and ":" in self.attempts[-1]:
            return self.attempts[-1]
        return None

    @property
    def latency(self) -> float:
        return self.upstream_time if self.upstream_time is not None else self.request_time


_second_cache: dict[str, int] = {}


def _seconds(text: str) -> int:
    value = _second_cache.get(text)
    if value is None:
        if len(_second_cache) > 4096:
            _second_cache.clear()
        value = calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
        _second_cache[text] = value
    return value


def _ns(second: str, fraction: str | None) -> int:
    return _seconds(second) * 1_000_000_000 + (int(fraction.ljust(9, "0")) if fraction else 0)


def parse_timestamp(text: str) -> int | None:
    """An engine timestamp (`2026-11-28T20:21:36.7366Z`) as UNIX nanoseconds, None if it is not one."""
    match = _TIMESTAMP.match(text)
    return _ns(match["second"], match["fraction"]) if match else None


def _numbers(text: str) -> list[str]:
    return [] if text in ("", "-") else _SEPARATORS.split(text)


def _status(text: str) -> int:
    return int(text) if text.isdigit() else 0


def parse_line(line: str) -> AccessEntry | None:
    """A timestamped `lab` log line as an AccessEntry; None for anything else."""
    match = _ENTRY.match(line)
    if match is None:
        return None
    attempts = tuple(_numbers(match["upstream"]))
    times = _numbers(match["upstream_time"])
    last_time = times[-1] if times else "-"
    return AccessEntry(
        ts_ns=_ns(match["second"], match["fraction"]),
        status=int(match["status"]),
        attempts=attempts,
        attempt_statuses=tuple(_status(s) for s in _numbers(match["upstream_status"])),
        request_time=float(match["request_time"]),
        upstream_time=float(last_time) if last_time.replace(".", "", 1).isdigit() else None,
    )


class LineSplitter:
    """Bytes as they arrive, out as whole lines; an unfinished line waits for the next read."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[str]:
        data = self._pending + chunk
        *lines, self._pending = data.split(b"\n")
        return [line.decode(errors="replace").rstrip("\r") for line in lines]

    def reset(self) -> bytes:
        """Forget the unfinished line (the stream ended mid-line) and return it."""
        pending, self._pending = self._pending, b""
        return pending


class StreamCursor:
    """Where a followed log stands, so following it again from a little earlier counts nothing twice.

    Each new follow starts in a replay phase: lines older than the last counted one are
    skipped, and of the lines stamped exactly like it, as many as were counted. The first
    newer line ends the replay; from then on every line counts (the engine's stamps could,
    rarely, step back with the wall clock, and a live line must never be dropped).
    """

    def __init__(self) -> None:
        self.last_ns = 0
        self._at_last = 0  # lines counted with ts == last_ns
        self._replaying = False
        self._seen_at_last = 0  # lines with ts == last_ns in the current follow
        self.skipped = 0

    def begin(self) -> None:
        """A new follow of the stream starts (it may repeat lines already counted)."""
        self._replaying = self.last_ns > 0
        self._seen_at_last = 0

    def since(self, default: float) -> float:
        """The UNIX time a new follow should start from."""
        return self.last_ns / 1e9 - REPLAY_MARGIN_S if self.last_ns else default

    def accept(self, ts_ns: int) -> bool:
        """Count the line stamped `ts_ns`? (False: it was counted before.)"""
        if self._replaying:
            if ts_ns < self.last_ns:
                self.skipped += 1
                return False
            if ts_ns == self.last_ns:
                self._seen_at_last += 1
                if self._seen_at_last <= self._at_last:
                    self.skipped += 1
                    return False
                self._at_last = self._seen_at_last
                return True
            self._replaying = False
        if ts_ns > self.last_ns:
            self.last_ns, self._at_last = ts_ns, 1
        elif ts_ns == self.last_ns:
            self._at_last += 1
        return True


@dataclass(frozen=True)
class TrafficStats:
    """What one replica (or the whole load balancer) served, as of a moment."""

    requests: int
    errors: int  # 5xx answers it gave plus tries at it that failed over to another replica
    answered_5xx: int
    failed_tries: int
    rps_1s: float
    rps_10s: float
    rps_60s: float
    p50_ms: float | None  # over its newest answers (at most RECENT, none older than 60 s)
    p95_ms: float | None
    p99_ms: float | None
    per_second: tuple[int, ...]  # requests in each of the last HORIZON_S seconds, oldest first


class _Ring:
    """Request counts in 0.1 s buckets over a little more than the horizon."""

    __slots__ = ("ids", "counts")

    def __init__(self) -> None:
        self.ids = [-1] * _RING
        self.counts = [0] * _RING

    def hit(self, bucket: int) -> None:
        i = bucket % _RING
        if self.ids[i] != bucket:
            self.ids[i] = bucket
            self.counts[i] = 0
        self.counts[i] += 1

    def add_into(self, end_bucket: int, out: list[int]) -> None:
        """Add this ring's counts for buckets (end - horizon, end] into `out` (oldest first)."""
        first = end_bucket - HORIZON_S * _BUCKETS_PER_S + 1
        for bucket, count in zip(self.ids, self.counts, strict=True):
            if first <= bucket <= end_bucket:
                out[bucket - first] += count


class _Slot:
    """The counts of one upstream address while it belongs to one owner (or to nobody yet)."""

    __slots__ = ("owner", "requests", "answered_5xx", "failed_tries", "ring", "recent")

    def __init__(self, owner: str | None) -> None:
        self.owner = owner
        self.requests = 0
        self.answered_5xx = 0
        self.failed_tries = 0
        self.ring = _Ring()
        self.recent: deque[tuple[int, float]] = deque(maxlen=RECENT)


def _percentile(ordered: list[float], q: float) -> float:
    rank = max(1, -(-len(ordered) * q // 100))  # nearest rank, as stats.LatencyHistogram
    return ordered[int(rank) - 1]


def _summarise(slots: list[_Slot], ring_buckets: list[int], now_ns: int, end_bucket: int) -> TrafficStats:
    horizon = HORIZON_S * _BUCKETS_PER_S
    per_second = [sum(ring_buckets[i : i + _BUCKETS_PER_S]) for i in range(0, horizon, _BUCKETS_PER_S)]
    oldest = now_ns - HORIZON_S * 1_000_000_000
    latencies = sorted(v for s in slots for ts, v in s.recent if ts >= oldest)
    answered = sum(s.answered_5xx for s in slots)
    failed = sum(s.failed_tries for s in slots)

    def ms(q: float) -> float | None:
        return round(_percentile(latencies, q) * 1000, 3) if latencies else None

    return TrafficStats(
        requests=sum(s.requests for s in slots),
        errors=answered + failed,
        answered_5xx=answered,
        failed_tries=failed,
        rps_1s=float(sum(ring_buckets[-_BUCKETS_PER_S:])),
        rps_10s=sum(ring_buckets[-10 * _BUCKETS_PER_S :]) / 10,
        rps_60s=sum(ring_buckets) / HORIZON_S,
        p50_ms=ms(50),
        p95_ms=ms(95),
        p99_ms=ms(99),
        per_second=tuple(per_second),
    )


class TrafficCounters:
    """Per-address request counters fed from access log entries."""

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}  # address -> its current slot
        self._retired: list[_Slot] = []  # slots of addresses that changed hands since
        self._total = _Slot(None)
        self.unattributed = 0  # requests no replica answered ("-", or no live upstream)
        self.unattributed_5xx = 0

    @property
    def total_requests(self) -> int:
        return self._total.requests

    def assign(self, address: str, owner: str) -> None:
        """From now on (and for its counts so far, if it had no owner) `address` is `owner`'s."""
        slot = self._slots.get(address)
        if slot is None:
            self._slots[address] = _Slot(owner)
        elif slot.owner is None:
            slot.owner = owner
        elif slot.owner != owner:
            self._retired.append(slot)
            self._slots[address] = _Slot(owner)

    def owner(self, address: str) -> str | None:
        slot = self._slots.get(address)
        return slot.owner if slot else None

    def _slot(self, address: str) -> _Slot:
        slot = self._slots.get(address)
        if slot is None:
            slot = self._slots[address] = _Slot(None)
        return slot

    def add(self, entry: AccessEntry) -> None:
        bucket = entry.ts_ns // BUCKET_NS
        total = self._total
        total.requests += 1
        total.ring.hit(bucket)
        if entry.status >= 500:
            total.answered_5xx += 1
        address = entry.replica_address
        if address is None:
            self.unattributed += 1
            if entry.status >= 500:
                self.unattributed_5xx += 1
            return
        if len(entry.attempts) > 1:
            total.failed_tries += len(entry.attempts) - 1
            for tried in entry.attempts[:-1]:
                if ":" in tried:
                    self._slot(tried).failed_tries += 1
        slot = self._slot(address)
        slot.requests += 1
        slot.ring.hit(bucket)
        if entry.status >= 500:
            slot.answered_5xx += 1
        latency = entry.latency
        slot.recent.append((entry.ts_ns, latency))
        total.recent.append((entry.ts_ns, latency))

    def by_owner(self, now: float) -> dict[str, TrafficStats]:
        """Stats per owner as of UNIX time `now` (windows end there); unowned addresses appear
        under their address in brackets, e.g. "[172.18.0.9:80]"."""
        now_ns = int(now * 1e9)
        end = now_ns // BUCKET_NS
        groups: dict[str, list[_Slot]] = {}
        for address, slot in self._slots.items():
            groups.setdefault(slot.owner or f"[{address}]", []).append(slot)
        for slot in self._retired:
            groups.setdefault(slot.owner or "[retired]", []).append(slot)
        result = {}
        for owner, slots in groups.items():
            buckets = [0] * (HORIZON_S * _BUCKETS_PER_S)
            for slot in slots:
                slot.ring.add_into(end, buckets)
            result[owner] = _summarise(slots, buckets, now_ns, end)
        return result

    def overall(self, now: float) -> TrafficStats:
        """The whole load balancer's stats as of `now` (every request, answered or not)."""
        now_ns = int(now * 1e9)
        end = now_ns // BUCKET_NS
        buckets = [0] * (HORIZON_S * _BUCKETS_PER_S)
        self._total.ring.add_into(end, buckets)
        return _summarise([self._total], buckets, now_ns, end)


class AccessLogReader:
    """The followed log stream in, counters out: split, de-duplicate, parse, count."""

    def __init__(self, counters: TrafficCounters | None = None) -> None:
        self.counters = counters or TrafficCounters()
        self.cursor = StreamCursor()
        self._splitter = LineSplitter()
        self.lines = 0  # lines counted (requests and unknown lines)
        self.unknown_lines = 0  # lines that are not `lab` entries (nginx's start-up notes, ...)
        self.follows = 0

    def begin(self) -> None:
        """A new follow starts; an unfinished line of the previous one is dropped (the new follow,
        starting a little earlier, brings it again whole)."""
        self._splitter.reset()
        self.cursor.begin()
        self.follows += 1

    def since(self, default: float) -> float:
        return self.cursor.since(default)

    def feed(self, chunk: bytes) -> int:
        """Count the whole lines in `chunk` (and before it); return how many were new."""
        new = 0
        for line in self._splitter.feed(chunk):
            if not line:
                continue
            entry = parse_line(line)
            if entry is None:
                ts = parse_timestamp(line)
                if ts is not None and not self.cursor.accept(ts):
                    continue
                self.unknown_lines += 1
                self.lines += 1
                new += 1
                continue
            if not self.cursor.accept(entry.ts_ns):
                continue
            self.counters.add(entry)
            self.lines += 1
            new += 1
        return new
