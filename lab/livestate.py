"""What `lab watch` and `lab dashboard` show, computed from plain data (pure, no Docker).

Two inputs: the load balancer's access log (bytes, counted by `accesslog`) and snapshots of the
lab's membership (which replicas exist, run, sit on the backend network, and which of them the
load balancer's config names). `LiveModel` keeps both; each new snapshot is compared with the
previous one to tell what happened (scale, deploy, chaos, configure, reload), and `state(now)`
joins counters and membership into one `LiveState`, the shape of `GET /api/state`.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from lab import labels
from lab.accesslog import HORIZON_S, AccessLogReader, TrafficStats
from lab.stats import expected_shares as method_shares

SERVING, DRAINING, DOWN, STARTING = "serving", "draining", "down", "starting"
# Kinds of events; the page and the terminal colour them by kind.
KINDS = ("scale", "deploy", "chaos", "configure", "reload", "lb", "action", "verify", "watch")
SETTLE_S = 0.3  # rate windows end this long before "now": the engine delivers lines a moment late
EVENTS_KEPT = 200

_SERVER_LINE = re.compile(r"^\s*server\s+([A-Za-z0-9_.-]+):(\d+)\b([^;\n]*);", re.MULTILINE)
_WEIGHT = re.compile(r"\bweight=(\d+)")
_GENERATION = re.compile(r"add_header\s+X-Lab-Config\s+(\S+)")


def upstream_hosts(config: str) -> tuple[str, ...]:
    """The replica host names a rendered nginx.conf sends traffic to, in its order."""
    return tuple(match.group(1) for match in _SERVER_LINE.finditer(config))


def upstream_weights(config: str) -> tuple[tuple[int, ...], int | None]:
    """Each upstream server's weight, in order (() when all are 1), and the backup's position (from 1)."""
    weights: list[int] = []
    backup = None
    for position, match in enumerate(_SERVER_LINE.finditer(config), start=1):
        found = _WEIGHT.search(match.group(3))
        weights.append(int(found.group(1)) if found else 1)
        if re.search(r"\bbackup\b", match.group(3)):
            backup = position
    return (tuple(weights) if any(w != 1 for w in weights) else ()), backup


def config_generation(config: str) -> str:
    """The generation a rendered nginx.conf answers with (X-Lab-Config), "" if none."""
    match = _GENERATION.search(config)
    return match.group(1) if match else ""


@dataclass(frozen=True)
class ReplicaInfo:
    """One replica container as the engine reports it."""

    name: str
    index: int
    status: str  # the engine's: running, paused, exited, restarting, ...
    connected: bool  # attached to the lab's backend network
    address: str | None  # "ip:port" nginx logs for it, while it has one
    version: str = ""
    exit_code: int | None = None


@dataclass(frozen=True)
class Membership:
    """A snapshot of the lab: its replicas and what the load balancer's config says."""

    lab: str
    lb_status: str  # running, restarting, exited, ... or "missing"
    method: str = ""
    weights: tuple[int, ...] = ()  # per upstream position, as the config says (() when equal)
    backup: int | None = None  # position (from 1) in the upstream
    generation: str = ""
    upstream: tuple[str, ...] = ()  # replica names in nginx.conf, in order
    replicas: tuple[ReplicaInfo, ...] = ()

    def replica(self, name: str) -> ReplicaInfo | None:
        return next((r for r in self.replicas if r.name == name), None)


@dataclass(frozen=True)
class LabEvent:
    at: float  # UNIX time
    kind: str  # one of KINDS
    text: str


def replica_state(replica: ReplicaInfo, upstream: tuple[str, ...], ever_upstream: set[str]) -> str:
    """serving: running and in the upstream. down: not running, frozen or cut from the network.
    draining: running but taken out of the upstream. starting: running, not yet added."""
    if replica.status != "running" or not replica.connected:
        return DOWN
    if replica.name in upstream:
        return SERVING
    return DRAINING if replica.name in ever_upstream else STARTING


def expected(membership: Membership, states: dict[str, str]) -> dict[str, float | None]:
    """The share each replica should get from the method and weights, among those serving.

    None for ip_hash: every request from this host comes from one address, so one replica
    gets all of it, whichever that is.
    """
    names = [r.name for r in membership.replicas]
    if membership.method == "ip_hash":
        return dict.fromkeys(names, None)
    order = list(membership.upstream)
    weights = list(membership.weights) if len(membership.weights) == len(order) else [1] * len(order)
    serving = [(pos, host, w) for pos, (host, w) in enumerate(zip(order, weights, strict=True))
               if states.get(host) == SERVING]  # fmt: skip
    shares: dict[str, float | None] = dict.fromkeys(names, 0.0)
    if not serving or membership.method not in (
        "round_robin", "least_conn", "hash", "random", "random_two"
    ):  # fmt: skip
        return shares
    backup_pos = membership.backup - 1 if membership.backup else None
    backup = next((i for i, (pos, _, _) in enumerate(serving) if pos == backup_pos), None)
    if len(serving) < 2:
        backup = None
    values = method_shares(membership.method, len(serving), [w for _, _, w in serving], backup)
    for (_, host, _), share in zip(serving, values, strict=True):
        shares[host] = share
    return shares


# What happened -------------------------------------------------------------------------------
RELOAD_COMMAND = "nginx -s reload"


def engine_event(action: str, attributes: Mapping[str, str]) -> tuple[str, str] | None:
    """The (kind, text) of an engine event worth telling as it comes: the load balancer's own life
    (too quick for snapshots to catch: a killed one is back within a second) and its reloads."""
    if attributes.get(labels.ROLE) != labels.ROLE_LB:
        return None
    if action.startswith("exec_start:"):
        return ("reload", "nginx reloads its config gracefully") if RELOAD_COMMAND in action else None
    if action == "die":
        return "lb", f"load balancer exited (exit {attributes.get('exitCode', '?')})"
    if action == "start":
        return "lb", "load balancer started"
    return None


def _describe_stop(replica: ReplicaInfo) -> str:
    if replica.status == "paused":
        return "frozen (paused)"
    if replica.exit_code is not None and replica.status in ("exited", "dead"):
        signal = ", SIGKILL" if replica.exit_code == 137 else ""
        return f"{replica.status} (exit {replica.exit_code}{signal})"
    return replica.status


def _broken(replica: ReplicaInfo | None) -> bool:
    return replica is not None and (replica.status != "running" or not replica.connected)


def _upstream_change_kind(old: Membership, new: Membership, added: list[str], removed: list[str]) -> str:
    """chaos: broken replicas left out, or restored ones back in; deploy: versions changed; else scale."""
    if not added and all(_broken(new.replica(h)) for h in removed):
        return "chaos"
    if not removed and all(_broken(old.replica(h)) for h in added):
        return "chaos"
    versions_in = {r.version for h in added if (r := new.replica(h))}
    versions_out = {r.version for h in removed if (r := old.replica(h))}
    if versions_in and versions_out and versions_in != versions_out:
        return "deploy"
    return "scale"


def diff(old: Membership | None, new: Membership, at: float) -> list[LabEvent]:
    """What happened between two snapshots, as events (nothing for the first one)."""
    if old is None:
        return []
    events: list[LabEvent] = []

    def say(kind: str, text: str) -> None:
        events.append(LabEvent(at, kind, text))

    before = {r.name: r for r in old.replicas}
    after = {r.name: r for r in new.replicas}
    old_versions = {r.version for r in old.replicas}
    for name in sorted(set(after) - set(before), key=lambda n: after[n].index):
        r = after[name]
        kind = "deploy" if old.replicas and r.version not in old_versions else "scale"
        say(kind, f"{name} started (version {r.version or '?'})")
    new_versions = {r.version for r in new.replicas}
    for name in sorted(set(before) - set(after), key=lambda n: before[n].index):
        r = before[name]
        kind = "deploy" if new_versions - {r.version} else "scale"
        say(kind, f"{name} removed")
    for name in sorted(set(before) & set(after), key=lambda n: after[n].index):
        was, now = before[name], after[name]
        if was.status == "running" and now.status != "running":
            if name in old.upstream and name in new.upstream:
                say("chaos", f"{name} {_describe_stop(now)}")
            else:
                kind = "deploy" if new_versions - {now.version} else "scale"
                say(kind, f"{name} stopped after draining")
        elif was.status != "running" and now.status == "running":
            say("chaos", f"{name} {'unpaused' if was.status == 'paused' else 'started again'}")
        elif now.status == "running" and was.connected != now.connected:
            say("chaos", f"{name} {'back on' if now.connected else 'cut from'} the backend network")
    if old.upstream != new.upstream:
        added = [h for h in new.upstream if h not in old.upstream]
        removed = [h for h in old.upstream if h not in new.upstream]
        if added or removed:
            change = ", ".join([f"+{h}" for h in added] + [f"-{h}" for h in removed])
            say(_upstream_change_kind(old, new, added, removed),
                f"upstream now {len(new.upstream)} replicas ({change})")  # fmt: skip
    if (old.method, old.weights, old.backup) != (new.method, new.weights, new.backup) and new.method:
        parts = []
        if old.method != new.method:
            parts.append(f"method {old.method or '?'} -> {new.method}")
        if old.weights != new.weights:
            parts.append(f"weights {','.join(map(str, new.weights)) or 'equal'}")
        if old.backup != new.backup:
            parts.append(f"backup {new.backup or 'none'}")
        if parts:
            say("configure", "; ".join(parts))
    return events


# The joined view ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplicaView:
    name: str
    index: int
    state: str
    status: str
    version: str
    requests: int
    rps: float  # last second
    rps_10s: float
    rps_60s: float
    share: float  # of the last 10 s (of everything counted, when the last 10 s were quiet)
    expected_share: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    errors: int
    sparkline: tuple[int, ...]  # requests per second, the last 60 s, oldest first


@dataclass(frozen=True)
class LiveState:
    """Everything both views show; `as_json` is the body of GET /api/state."""

    lab: str
    method: str
    generation: str
    lb: str
    replicas: tuple[ReplicaView, ...]
    total_requests: int
    rps: float
    rps_10s: float
    rps_60s: float
    errors: int
    since: float  # UNIX time counting started
    now: float
    unattributed: int  # requests no current replica answered (none reached, or one since removed)
    unknown_lines: int  # log lines that were not requests (ignored)
    sparkline: tuple[int, ...]
    events: tuple[LabEvent, ...] = field(default=())

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        data["since_iso"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))
        return data

    def replica(self, name: str) -> ReplicaView | None:
        return next((r for r in self.replicas if r.name == name), None)


_EMPTY = TrafficStats(0, 0, 0, 0, 0.0, 0.0, 0.0, None, None, None, (0,) * HORIZON_S)


class LiveModel:
    """Counters, membership and the event log of one lab; not thread-safe (the feed locks)."""

    def __init__(self, lab: str, since: float) -> None:
        self.lab = lab
        self.since = since
        self.reader = AccessLogReader()
        self.membership: Membership | None = None
        self.ever_upstream: set[str] = set()
        self.events: deque[LabEvent] = deque(maxlen=EVENTS_KEPT)

    def note(self, kind: str, text: str, at: float) -> LabEvent:
        event = LabEvent(at, kind, text)
        self.events.append(event)
        return event

    def update(self, membership: Membership, at: float) -> list[LabEvent]:
        """Take a new snapshot: log what changed, learn which address is which replica."""
        events = diff(self.membership, membership, at)
        self.events.extend(events)
        if self.membership is None:
            self.note(
                "watch",
                f"watching lab {membership.lab}: {len(membership.upstream)} replicas in the upstream, "
                f"method {membership.method or '?'}",
                at,
            )
        self.membership = membership
        self.ever_upstream.update(membership.upstream)
        for replica in membership.replicas:
            if replica.address:
                self.reader.counters.assign(replica.address, replica.name)
        return events

    def state(self, now: float, events: int = 50) -> LiveState:
        counters = self.reader.counters
        at = now - SETTLE_S
        per_owner = counters.by_owner(at)
        overall = counters.overall(at)
        membership = self.membership or Membership(self.lab, "missing")
        states = {
            r.name: replica_state(r, membership.upstream, self.ever_upstream) for r in membership.replicas
        }
        shares = expected(membership, states)
        replicas = sorted(membership.replicas, key=lambda r: (r.index, r.name))
        stats = {r.name: per_owner.get(r.name, _EMPTY) for r in replicas}
        recent_total = sum(s.rps_10s for s in stats.values())
        all_total = sum(s.requests for s in stats.values())
        views = []
        for r in replicas:
            s = stats[r.name]
            # The last 10 s when there was traffic, else everything counted.
            share = s.rps_10s / recent_total if recent_total else s.requests / all_total if all_total else 0.0
            views.append(
                ReplicaView(
                    name=r.name,
                    index=r.index,
                    state=states[r.name],
                    status=r.status,
                    version=r.version,
                    requests=s.requests,
                    rps=s.rps_1s,
                    rps_10s=s.rps_10s,
                    rps_60s=s.rps_60s,
                    share=round(share, 4),
                    expected_share=None if shares[r.name] is None else round(shares[r.name] or 0.0, 4),
                    p50_ms=s.p50_ms,
                    p95_ms=s.p95_ms,
                    p99_ms=s.p99_ms,
                    errors=s.errors,
                    sparkline=s.per_second,
                )
            )
        return LiveState(
            lab=self.lab,
            method=membership.method,
            generation=membership.generation,
            lb=membership.lb_status,
            replicas=tuple(views),
            total_requests=counters.total_requests,
            rps=overall.rps_1s,
            rps_10s=overall.rps_10s,
            rps_60s=overall.rps_60s,
            errors=overall.answered_5xx,
            since=self.since,
            now=now,
            unattributed=counters.total_requests - all_total,
            unknown_lines=self.reader.unknown_lines,
            sparkline=overall.per_second,
            events=tuple(list(self.events)[-events:]),
        )
