"""`lab verify`: send bounded load through the load balancer, tally who answered, and judge it.

Pure judging lives in `stats`; the load engine in `traffic`; this module connects them to a
lab (its spec, its replicas and its load balancer's access log) and builds a `VerifyResult`.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from lab import stats, traffic
from lab.engine import ContainerEngine as Engine
from lab.errors import InvalidInput
from lab.orchestrator import find_running
from lab.progress import ProgressFn
from lab.results import (
    AccessLogCheck,
    ContentVersion,
    HistogramBar,
    Latency,
    NodeSpread,
    ReplicaResult,
    VerifyResult,
)
from lab.spec import MAX_REPLICAS, parse_algorithm, parse_int_in_range, parse_weight_list
from lab.tally import content_versions

LogReader = Callable[[float], Iterable[str]]  # the load balancer's log lines since a time (epoch seconds)
MAX_REQUESTS = 10_000_000
MAX_DURATION = 3600.0
MAX_CONCURRENCY = 1024
MAX_CLIENTS = 100_000
DEFAULT_REQUESTS = 1000
DEFAULT_HASH_CLIENTS = 60
RUN_HEADER = "X-Lab-Run"

_LOG_LINE = re.compile(
    r'" (?P<status>\d{3}) .*? upstream=(?P<upstream>.*?) upstream_status=.*run="(?P<run>[^"]*)"'
)


@dataclass(frozen=True)
class LoadPlan:
    """How much load to send: validated, always bounded."""

    requests: int | None
    duration: float | None
    concurrency: int
    clients: int

    @classmethod
    def create(cls, *, requests: object, duration: object, concurrency: object, clients: object) -> LoadPlan:
        n = parse_int_in_range(requests, "requests", 1, MAX_REQUESTS) if requests is not None else None
        seconds = _bounded_float(duration, "duration", MAX_DURATION) if duration is not None else None
        if n is None and seconds is None:
            n = DEFAULT_REQUESTS
        return cls(
            requests=n,
            duration=seconds,
            concurrency=parse_int_in_range(concurrency, "concurrency", 1, MAX_CONCURRENCY),
            clients=parse_int_in_range(clients, "clients", 0, MAX_CLIENTS),
        )


def _bounded_float(value: object, what: str, high: float) -> float:
    try:
        x = float(str(value))
    except ValueError:
        raise InvalidInput(f"{what} must be a number of seconds, not {value!r}") from None
    if not 0 < x <= high:
        raise InvalidInput(f"{what} must be more than 0 and at most {high:.0f} seconds, not {x:g}")
    return x


@dataclass(frozen=True)
class Target:
    """What is verified: where to send traffic and what to expect there."""

    lab: str
    url: str
    method: str
    weights: tuple[int, ...]
    backup: int | None  # 1-based replica index
    replicas: list[str] | None  # None: discovered from the answers (--url)
    hash_key: str = ""
    expected_replicas: int | None = None  # --url: how many replicas there are (None: those that answer)
    nodes: dict[str, str] = field(default_factory=dict)  # a swarm lab: replica -> the node it runs on


def lab_target(engine: Engine, name: str) -> Target:
    lab = find_running(engine, name)
    spec = lab.spec
    if not lab.replicas:
        raise InvalidInput(f"lab {name!r} has no running replica")
    return Target(
        lab=name,
        url=spec.url,
        method=spec.algorithm,
        weights=tuple(lab.weights(lab.replicas)) if spec.weights else (),
        backup=lab.backup_position(lab.replicas),
        replicas=lab.replicas,
        hash_key=spec.hash_key,
        nodes={m.name: m.node for m in lab.backend.members() if m.node} if spec.engine == "swarm" else {},
    )


def url_target(
    url: str, method: object = "round_robin", weights: object = (), replicas: object = None
) -> Target:
    """Any load balancer whose replicas send X-Served-By; it must listen on loopback.

    `replicas` says how many there are, so one that never answers counts (with a share of 0);
    without it, `weights` give the count, and else only replicas that answer are seen.
    """
    parts = urlsplit(url)
    if (
        parts.scheme != "http"
        or not parts.hostname
        or parts.hostname not in ("127.0.0.1", "localhost", "::1")
    ):
        raise InvalidInput(f"--url must be http://127.0.0.1:PORT/... (loopback only), not {url!r}")
    weight_list = parse_weight_list(weights)
    count = parse_int_in_range(replicas, "replicas", 1, MAX_REPLICAS) if replicas is not None else None
    if count is not None and weight_list and len(weight_list) != count:
        raise InvalidInput(f"got {len(weight_list)} weights for {count} replicas (--replicas)")
    return Target(
        lab="",
        url=url,
        method=parse_algorithm(method),
        weights=weight_list,
        backup=None,
        replicas=None,
        expected_replicas=count if count is not None else (len(weight_list) or None),
    )


def silent_name(number: int) -> str:
    """The name of a declared replica that never answered (--replicas N with fewer answering)."""
    return f"(no answer #{number})"


def replica_list(target: Target, answered: Iterable[str]) -> list[str]:
    """The replicas judged: the lab's own list, or (--url) those that answered in name order,
    then one entry per declared replica that never answered. Too many answering is bad input."""
    if target.replicas is not None:
        return list(target.replicas)
    names = sorted(answered)
    declared = target.expected_replicas
    if declared is None:
        return names or ["(none answered)"]
    if len(names) > declared:
        given = f"--replicas {declared}" if not target.weights else f"{len(target.weights)} weights"
        raise InvalidInput(f"{given} but {len(names)} replicas answered: {', '.join(names)}")
    return names + [silent_name(i) for i in range(1, declared - len(names) + 1)]


def verify(
    target: Target,
    plan: LoadPlan,
    *,
    engine: Engine | None = None,
    progress: ProgressFn | None = None,
    alpha: float = stats.DEFAULT_ALPHA,
    access_log: LogReader | None = None,
) -> VerifyResult:
    """Run the load, tally it, cross-check the access log and judge the spread.

    The access log is read through `engine` for a lab, or from `access_log` when given (any
    source of lines in the lab's log format); without either it is not checked.
    """
    notes: list[str] = []
    clients = plan.clients
    if target.method == "hash" and clients == 0:
        clients = DEFAULT_HASH_CLIENTS
        notes.append(f"hash balancing is judged per client: sent {clients} client identities (use --clients)")
    if target.method == "ip_hash":
        notes.append(
            "ip_hash keys on the client address, and every request from this host reaches nginx from one "
            "address (the Docker gateway): one client, so all traffic lands on one replica by design; "
            "stickiness is checked, the spread cannot be"
        )
    if target.replicas is None and target.expected_replicas is None:
        notes.append(
            "only replicas that answered are known: give --replicas N so one that never answers counts"
        )
    parts = urlsplit(target.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    run_id = uuid.uuid4().hex[:16]
    started = time.time()
    total = plan.requests

    def on_progress(done: int) -> None:
        if progress is None:
            return
        if total:
            progress(f"verify: {done:,}/{total:,} requests", done / total)
        elif plan.duration:
            progress(f"verify: {done:,} requests", min(1.0, (time.time() - started) / plan.duration))

    tally = traffic.run_load(
        host,
        port,
        path=parts.path or "/",
        requests=plan.requests,
        duration=plan.duration,
        concurrency=plan.concurrency,
        clients=clients,
        headers={RUN_HEADER: run_id},
        on_progress=on_progress,
        content=True,
    )
    answered = {r for r, statuses in tally.status_by_replica.items() if statuses} | set(tally.by_replica)
    replicas = replica_list(target, answered)
    weights = list(target.weights) or [1] * len(replicas)
    if len(weights) != len(replicas):
        raise InvalidInput(f"got {len(weights)} weights for {len(replicas)} replicas")
    backup = target.backup - 1 if target.backup else None
    per_client = tally.per_client
    if target.method == "ip_hash":
        per_client = {"this host": dict(tally.by_replica)}
    judgement = stats.judge(
        target.method,
        replicas,
        tally.by_replica,
        errors=tally.errors,
        weights=weights,
        backup=backup,
        per_client=per_client,
        latencies=[stats.LatencySample.of(tally.latency_by_replica.get(r)) for r in replicas],
        concurrency=plan.concurrency,
        retries=tally.upstream_retries,
        alpha=alpha,
    )
    one_seen = target.replicas is None and target.expected_replicas is None and len(replicas) == 1
    if one_seen and judgement.verdict == "balanced":
        judgement = stats.Judgement(
            "inconclusive",
            f"only {replicas[0]} answered, and no other replica is known: one replica shows no spread",
            judgement.test | {"passed": None},
            "give --replicas N (how many replicas the load balancer has)",
        )
    shares = _expected(target.method, replicas, weights, backup, per_client)
    bands = _bands(judgement.test, len(replicas), tally.ok)
    reader = access_log
    if reader is None and engine is not None and target.lab:
        lab_engine, lab_name = engine, target.lab
        reader = lambda since: find_running(lab_engine, lab_name).lb.log_lines(since)  # noqa: E731
    log_check = (
        cross_check_access_log(reader, run_id, started, tally)
        if reader is not None
        else AccessLogCheck(False, True, tally.ok, 0, {}, "not checked: no access to the load balancer's log")
    )
    if not log_check.matches:
        notes.append(f"the access log disagrees with the verifier: {log_check.note}")
    observed = [tally.by_replica.get(r, 0) for r in replicas]
    contents = content_groups(tally)
    notes += content_notes(contents)
    by_replica_content: dict[str, dict[str, int]] = {}
    for group in contents:
        for replica, n in group.replicas.items():
            by_replica_content.setdefault(replica, {})[group.version] = n
    return VerifyResult(
        lab=target.lab,
        url=target.url,
        method=target.method,
        weights=list(target.weights),
        requests=tally.sent,
        ok=tally.ok,
        errors=tally.errors,
        errors_by_cause={k: v for k, v in tally.errors_by_cause.items() if v},
        replicas={
            name: ReplicaResult(
                name=name,
                count=tally.by_replica.get(name, 0),
                share=tally.by_replica.get(name, 0) / tally.ok if tally.ok else 0.0,
                expected_share=share,
                statuses=dict(tally.status_by_replica.get(name, {})),
                errors=sum(n for code, n in tally.status_by_replica.get(name, {}).items() if code >= 500),
                latency_ms=_latency(tally.latency_by_replica.get(name)),
                access_log_count=log_check_count(log_check, name, tally),
                latency_share=band[0],
                expected_low=band[1],
                expected_high=band[2],
                contents=by_replica_content.get(name, {}),
            )
            for name, share, band in zip(replicas, shares, bands, strict=True)
        },
        test=dict(judgement.test),
        max_deviation=stats.max_relative_deviation(observed, shares) if tally.ok else 0.0,
        latency_ms=_latency(tally.latency),
        latency_histogram=[
            HistogramBar(b.low * 1000, b.high * 1000, b.count) for b in tally.latency.buckets()
        ],
        throughput_rps=tally.throughput_rps,
        duration_s=tally.elapsed,
        concurrency=plan.concurrency,
        clients=clients,
        verdict=judgement.verdict if log_check.matches or judgement.verdict == "failed" else "failed",
        reason=judgement.reason if log_check.matches else f"{judgement.reason}; {log_check.note}",
        access_log=log_check,
        retried=tally.retried,
        notes=notes,
        advice=judgement.advice if log_check.matches else "",
        by_node=node_spread(target.nodes, replicas, tally.by_replica, shares),
        contents=contents,
    )


def node_spread(
    nodes: dict[str, str], replicas: list[str], counts: dict[str, int], shares: list[float]
) -> list[NodeSpread]:
    """The spread over nodes: each node's replicas, their answers, and the share they should get."""
    if not nodes:
        return []
    total = sum(counts.get(r, 0) for r in replicas)
    by_node: dict[str, list[tuple[str, float]]] = {}
    for replica, share in zip(replicas, shares, strict=True):
        by_node.setdefault(nodes.get(replica, "?"), []).append((replica, share))
    spread = []
    for node, members in sorted(by_node.items()):
        count = sum(counts.get(r, 0) for r, _ in members)
        spread.append(
            NodeSpread(
                node=node,
                replicas=[r for r, _ in members],
                count=count,
                share=count / total if total else 0.0,
                expected_share=sum(share for _, share in members),
            )
        )
    return spread


def content_groups(tally: traffic.Tally) -> list[ContentVersion]:
    """The run's ok answers grouped by content version (lab.tally.content_versions names them),
    most answers first."""
    names = content_versions(tally.contents)
    groups: dict[str, dict[str, int]] = {}
    keys: dict[str, tuple[str, str]] = {}
    for (replica, version, digest), n in tally.contents.items():
        name = names[version, digest]
        keys[name] = (version, digest)
        per_replica = groups.setdefault(name, {})
        per_replica[replica] = per_replica.get(replica, 0) + n
    found = [
        ContentVersion(
            version=name,
            site_version=keys[name][0],
            digest=keys[name][1],
            count=sum(per_replica.values()),
            share=sum(per_replica.values()) / tally.ok if tally.ok else 0.0,
            replicas=dict(sorted(per_replica.items())),
        )
        for name, per_replica in groups.items()
    ]
    return sorted(found, key=lambda g: (-g.count, g.version))


def content_notes(contents: list[ContentVersion]) -> list[str]:
    """One line when the replicas do not all serve the same content, saying who serves what."""
    if len(contents) < 2:
        return []
    parts = [f"{g.version} from {', '.join(g.replicas)}" for g in contents]
    return [f"the replicas serve {len(contents)} different contents: {'; '.join(parts)}"]


def _bands(
    test: dict[str, object], n: int, total: int
) -> list[tuple[float | None, float | None, float | None]]:
    """Per replica: the inverse-latency share and the accepted share range, where the test has them."""
    latency = test.get("latency_shares")
    low, high = test.get("low_counts"), test.get("high_counts")
    out: list[tuple[float | None, float | None, float | None]] = []
    for i in range(n):
        lat = float(latency[i]) if isinstance(latency, list) else None
        if isinstance(low, list) and isinstance(high, list) and total:
            out.append((lat, low[i] / total, high[i] / total))
        else:
            out.append((lat, None, None))
    return out


def _expected(
    method: str,
    replicas: list[str],
    weights: list[int],
    backup: int | None,
    per_client: dict[str, dict[str, int]],
) -> list[float]:
    if method == "ip_hash":
        # One client address: whichever replica it hashes to gets everything.
        busiest = max(replicas, key=lambda r: sum(c.get(r, 0) for c in per_client.values()))
        return [1.0 if r == busiest else 0.0 for r in replicas]
    return stats.expected_shares(method, len(replicas), weights, backup)


def _latency(histogram: stats.LatencyHistogram | None) -> Latency | None:
    if histogram is None or histogram.count == 0:
        return None
    return Latency(
        p50=histogram.percentile(50) * 1000,
        p95=histogram.percentile(95) * 1000,
        p99=histogram.percentile(99) * 1000,
        max=histogram.max * 1000,
        mean=histogram.mean * 1000,
    )


# Access log cross-check ----------------------------------------------------------------------
def parse_access_log(lines: Iterable[str], run_id: str) -> dict[str, int]:
    """Count this run's successful requests per final upstream address (the last one tried)."""
    counts: dict[str, int] = {}
    for line in lines:
        if run_id not in line:
            continue
        match = _LOG_LINE.search(line)
        if not match or match.group("run") != run_id or int(match.group("status")) >= 500:
            continue
        final = match.group("upstream").split(",")[-1].strip()
        counts[final] = counts.get(final, 0) + 1
    return counts


def access_log_by_replica(by_address: dict[str, int], tally: traffic.Tally) -> dict[str, int]:
    """Turn per-address counts into per-replica counts with the addresses the answers named."""
    owner = {
        addr.split(",")[-1].strip(): replica
        for replica, addrs in tally.upstream_addrs.items()
        for addr in addrs
    }
    by_replica: dict[str, int] = {}
    for address, n in by_address.items():
        name = owner.get(address, f"unknown address {address}")
        by_replica[name] = by_replica.get(name, 0) + n
    return by_replica


def cross_check_access_log(
    read_lines: LogReader, run_id: str, started: float, tally: traffic.Tally, *, wait: float = 3.0
) -> AccessLogCheck:
    """Compare the verifier's per-replica counts with what nginx logged for the same run."""
    deadline = time.monotonic() + wait
    while True:
        # The engine copies container output to its log asynchronously: give it a moment.
        by_replica = access_log_by_replica(parse_access_log(read_lines(started - 1), run_id), tally)
        if sum(by_replica.values()) >= tally.ok or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    names = set(by_replica) | {r for r, n in tally.by_replica.items() if n}
    differences = {n: by_replica.get(n, 0) - tally.by_replica.get(n, 0) for n in sorted(names)}
    differences = {n: d for n, d in differences.items() if d}
    log_total = sum(by_replica.values())
    note = "" if not differences else ", ".join(f"{n}: log {d:+d}" for n, d in differences.items())
    return AccessLogCheck(True, not differences, tally.ok, log_total, differences, note)


def log_check_count(check: AccessLogCheck, replica: str, tally: traffic.Tally) -> int | None:
    if not check.checked:
        return None
    return tally.by_replica.get(replica, 0) + check.differences.get(replica, 0)
