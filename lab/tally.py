"""What a load saw: the `Tally` and `Second` results, and `Counts`, which fills them in.

`Counts` is the load engine's bookkeeping, kept out of its event loop: the loop reports each
outcome (an answer, an error, a stale-connection retry, a cancellation) with the time it
arrived, and `Counts.tally` turns the counters into a Tally at the end. It touches no socket
and no clock, so it is tested on its own. Counters are keyed by the raw header bytes, so the
hot path decodes nothing.
"""

from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass, field

from lab.stats import LatencyHistogram

ERROR_CAUSES = ("refused", "reset", "closed", "timeout", "http_5xx", "other")
RETRY_CAUSES = ("reset", "closed")  # how a stale keep-alive connection fails
UNNAMED_REPLICA = "(unnamed)"  # an answer without an X-Served-By header
MAX_ADDRS_PER_REPLICA = 16  # X-Upstream-Addr values kept per replica, so memory stays flat
_MAX_CACHED = 1024  # X-Upstream-Addr values whose addresses are remembered (a few per replica)
KEEP_BODY = 65536  # bytes of an answer's content its content version is taken from
MAX_CONTENTS = 512  # (replica, site version, content) counters; more contents are lumped together
_MAX_BODIES = 16  # bodies per replica whose digest is remembered (a replica serves one or two)
OTHER_CONTENT = "other"  # the digest of the lump: a server whose every answer differs (a clock, ...)


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
    # Ok answers by (replica, X-Site-Version, content digest), when the run kept content (see
    # `content_digest`): sums to ok then, else empty.
    contents: dict[tuple[str, str, str], int] = field(default_factory=dict)
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
        _add(self.contents, other.contents)
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


def content_digest(body: bytes, served_by: bytes, length: int) -> str:
    """What an answer's content is, the same on every replica that serves the same pages.

    The bundled site's pages print the replica's own name (a server-side include), so bodies
    differ per replica even when their content is the same: the name (X-Served-By) is taken out
    of the body before it is hashed (CRC-32, 8 hex digits). A body longer than what is kept
    (KEEP_BODY) is known by its kept start and its whole length.
    """
    if served_by:
        body = body.replace(served_by, b"")
    digest = zlib.crc32(body)
    if length > KEEP_BODY:
        digest = zlib.crc32(b"%d" % length, digest)
    return f"{digest:08x}"


def content_versions(contents: dict[tuple[str, str, str], int]) -> dict[tuple[str, str], str]:
    """The name of each (X-Site-Version, digest) pair: its site version where that version has one
    content only, else the site version and the digest ("v1+1f2e3d4c"): a version whose replicas
    serve different pages (one got a `lab cp`) shows each content apart. Without the header, the
    digest alone ("#1f2e3d4c")."""
    digests: dict[str, set[str]] = {}
    for _replica, version, digest in contents:
        digests.setdefault(version, set()).add(digest)
    names: dict[tuple[str, str], str] = {}
    for version, found in digests.items():
        for digest in found:
            if not version:
                names[version, digest] = f"#{digest}"
            elif len(found) == 1:
                names[version, digest] = version
            else:
                names[version, digest] = f"{version}+{digest}"
    return names


def upstream_addresses(value: bytes) -> list[bytes]:
    """Every address in an X-Upstream-Addr value: nginx lists the attempts of one request as
    "a:80, b:80", and those of an internal redirect after " : "."""
    return [a.strip() for group in value.split(b" : ") for a in group.split(b",") if a.strip()]


class _Replica:
    """Every answer of one replica: latencies and status codes."""

    __slots__ = ("latency", "status")

    def __init__(self) -> None:
        self.latency = LatencyHistogram()
        self.status: dict[int, int] = {}


class _Second:
    """The counters of one second of the timeline, keyed by raw bytes."""

    __slots__ = ("ok", "errors", "causes", "by_replica", "retried", "tried")

    def __init__(self) -> None:
        self.ok = self.errors = self.retried = 0
        self.causes: dict[str, int] = {}
        self.by_replica: dict[bytes, int] = {}
        self.tried: dict[bytes, int] = {}


class Counts:
    """The counters of one run that started at `start` (a monotonic time).

    Every outcome is reported with `now`, the time it arrived, and lands in that second of the
    timeline; past `last_second` (the run's bound in time) it lands in the last one, so the
    timeline's length is bounded too. Totals are not counted twice: ok, errors and causes are
    sums over the timeline, and by_status, by_replica and the overall latency come from the
    per-replica counters. Memory does not grow with the number of requests.
    """

    def __init__(self, start: float, *, last_second: int = sys.maxsize) -> None:
        self.start = start
        self.last_second = last_second
        self.done = 0  # requests whose outcome is known: answers and errors
        self.cancelled = 0
        self.upstream_retries = 0
        self.retried_by_cause: dict[str, int] = {}
        self.replicas: dict[bytes, _Replica] = {}
        self.per_client: dict[int, dict[bytes, int]] = {}
        self.addrs: dict[bytes, set[bytes]] = {}
        self.seconds: list[_Second] = []
        self._addresses: dict[bytes, list[bytes]] = {}  # X-Upstream-Addr value -> its addresses
        self.contents: dict[tuple[bytes, bytes, str], int] = {}  # (replica, X-Site-Version, digest)
        self._digests: dict[bytes, dict[bytes, str]] = {}  # replica -> body -> its content digest
        self._second = _Second()
        self._second_index = -1  # the index of _second; -1 until the first outcome

    def answer(
        self, now: float, latency: float, status: int, replica: bytes, upstream: bytes, client: int = -1
    ) -> None:
        """A complete answer: its status, X-Served-By (b"" when absent), X-Upstream-Addr and
        the client it spoke for (-1 for none). Below 500 it is ok; a 5xx answer is an error."""
        stats = self.replicas.get(replica)
        if stats is None:
            stats = self.replicas[replica] = _Replica()
        stats.latency.record(latency)
        stats.status[status] = stats.status.get(status, 0) + 1
        second = self._second if int(now - self.start) == self._second_index else self.second_of(now)
        self.done += 1
        if upstream:
            addresses = self._addresses.get(upstream)
            if addresses is None:
                addresses = upstream_addresses(upstream)
                if len(self._addresses) < _MAX_CACHED:
                    self._addresses[upstream] = addresses
            tried = second.tried
            for address in addresses:
                tried[address] = tried.get(address, 0) + 1
        if status >= 500:
            second.errors += 1
            second.causes["http_5xx"] = second.causes.get("http_5xx", 0) + 1
            return
        second.ok += 1
        second.by_replica[replica] = second.by_replica.get(replica, 0) + 1
        if client >= 0:
            counts = self.per_client.get(client)
            if counts is None:
                counts = self.per_client[client] = {}
            counts[replica] = counts.get(replica, 0) + 1
        if upstream:
            # nginx lists every upstream it tried: "a:80, b:80" (and "a : b" across internal redirects).
            self.upstream_retries += upstream.count(b",")
            addrs = self.addrs.get(replica)
            if addrs is None:
                addrs = self.addrs[replica] = set()
            if len(addrs) < MAX_ADDRS_PER_REPLICA:
                addrs.add(upstream)

    def content(self, replica: bytes, version: bytes, body: bytes, length: int) -> None:
        """The content of an ok answer (after `answer`): its X-Site-Version, its kept body and the
        body's whole length. Bodies seen before are not hashed again (a load meets the same few)."""
        digests = self._digests.get(replica)
        if digests is None:
            digests = self._digests[replica] = {}
        digest = digests.get(body)
        if digest is None:
            digest = content_digest(body, replica, length)
            if len(digests) < _MAX_BODIES:
                digests[body] = digest
        key = (replica, version, digest)
        count = self.contents.get(key)
        if count is None:
            if len(self.contents) >= MAX_CONTENTS:  # memory stays flat whatever the server sends
                key = (replica, version, OTHER_CONTENT)
                count = self.contents.get(key, 0)
            else:
                count = 0
        self.contents[key] = count + 1

    def error(self, now: float, cause: str) -> None:
        """A request failed without an answer (`cause` is one of ERROR_CAUSES)."""
        second = self.second_of(now)
        second.errors += 1
        second.causes[cause] = second.causes.get(cause, 0) + 1
        self.done += 1

    def retry(self, now: float, cause: str) -> None:
        """A request is sent again after its stale keep-alive connection failed (not an error)."""
        self.retried_by_cause[cause] = self.retried_by_cause.get(cause, 0) + 1
        self.second_of(now).retried += 1

    def cancel(self) -> None:
        """A request was still open when a stop event ended the run (its outcome is unknown)."""
        self.cancelled += 1

    def second_of(self, now: float) -> _Second:
        """The counters of the second `now` falls in (the last one, past the bound)."""
        t = min(max(int(now - self.start), 0), self.last_second)
        while len(self.seconds) <= t:
            self.seconds.append(_Second())
        self._second_index = t
        self._second = self.seconds[t]
        return self._second

    def tally(self, elapsed: float) -> Tally:
        """The results of a run that lasted `elapsed` seconds; its timeline covers all of them."""
        self.second_of(self.start + elapsed)

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
            contents={(name(r), v.decode("latin-1"), d): n for (r, v, d), n in self.contents.items()},
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
            latency = tally.latency_by_replica[replica] = LatencyHistogram()
            latency.merge(stats.latency)  # a copy: merging tallies must not change these counters
            tally.status_by_replica[replica] = dict(stats.status)
            tally.latency.merge(stats.latency)
            _add(tally.by_status, stats.status)
            ok = sum(n for status, n in stats.status.items() if status < 500)
            if ok:
                tally.by_replica[replica] = ok
        tally.timeline = timeline
        return tally
