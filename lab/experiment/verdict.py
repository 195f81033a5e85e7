"""Judging an experiment (pure): recovery time, the traffic check after each step, the verdict,
and the result they make, all from plain values (a timeline, the steps as they happened)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lab.experiment.plan import ExperimentPlan
from lab.results import (
    VERDICT_FAILED,
    VERDICT_LOSSY,
    VERDICT_RECOVERED,
    VERDICT_ZERO_LOSS,
    Check,
    Event,
    ExperimentResult,
)
from lab.traffic import ERROR_CAUSES

if TYPE_CHECKING:
    from lab.traffic import Second, Tally

SETTLE = 1.0  # seconds after a step ends before its traffic check starts
OBSERVE = 2.0  # a step that ran late still leaves this many seconds to judge it before the next


@dataclass
class Step:
    """One step of the operation as it happened (for the checks once the load is over)."""

    label: str
    begin: float
    end: float
    live: list[str]
    removed: list[str]
    settle: float = SETTLE
    addresses: dict[str, str] = field(default_factory=dict)  # removed replica -> address ("" if reused)
    probe_every: float | None = None  # failover: the broken replica stays in the config
    check: str = ""  # the name of the traffic check after it, when the kind's usual one does not fit


def recovery_time(timeline: Sequence[Second]) -> tuple[float | None, float | None]:
    """(first error second, recovery in seconds) at one-second resolution.

    Recovery runs from the first second with errors to the end of the last one with errors,
    provided a clean second (answers, no errors) follows it; (None, 0.0) without errors and
    (first, None) when errors lasted to the end of the run.
    """
    with_errors = [s.t for s in timeline if s.errors]
    if not with_errors:
        return None, 0.0
    first, last = with_errors[0], with_errors[-1]
    if any(s.t > last and s.ok and not s.errors for s in timeline):
        return float(first), float(last + 1 - first)
    return float(first), None


def whole_seconds(start: float, end: float) -> tuple[int, int] | None:
    """The whole seconds [a, b) of the timeline that lie inside [start, end); None if none do."""
    a, b = math.ceil(start - 1e-9), math.floor(end + 1e-9)
    return (a, b) if b > a else None


def host_of(address: str) -> str:
    """The host part of an upstream address ("172.18.0.3:80" -> "172.18.0.3", "[::1]:80" -> "::1")."""
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 or address.startswith("[") else address
    return host.strip("[]")


def probes_allowed(seconds: float, fail_timeout: float) -> int:
    """How often nginx may try a failed replica still in its config within `seconds`: passive
    health lets one request through each time fail_timeout has passed (and marks it failed
    again), so attempts are at least fail_timeout apart."""
    return math.ceil(seconds / fail_timeout) + 1


def traffic_check(
    name: str,
    timeline: Sequence[Second],
    start: float,
    end: float,
    live: Iterable[str],
    removed: Iterable[str] = (),
    addresses: Mapping[str, str] | None = None,
    probe_every: float | None = None,
) -> Check:
    """Did every live replica answer in [start, end), and did nginx leave the removed ones alone?

    `addresses` maps each removed replica to the address nginx knew it by ("" when a new
    replica took that address over: it is then judged by who answered); the attempts nginx
    made are counted from each second's X-Upstream-Addr. `probe_every` (fail_timeout) allows a
    broken replica still in the config its probes. Without `addresses`, only answers count.
    """
    live_set, removed_set = sorted(set(live)), sorted(set(removed))
    window = whole_seconds(start, end)
    if window is None:
        return Check(
            name, False, False,
            f"not judged: no whole second between {start:.1f} s and {end:.1f} s (run longer with --duration)",
            None, live_set, removed_set,
        )  # fmt: skip
    a, b = window
    served: dict[str, int] = {}
    tried: dict[str, int] = {}
    for second in timeline:
        if a <= second.t < b:
            for replica, n in second.by_replica.items():
                if n:
                    served[replica] = served.get(replica, 0) + n
            for address, n in second.tried.items():
                tried[host_of(address)] = tried.get(host_of(address), 0) + n
    span = f"second {a}" if b == a + 1 else f"seconds {a}-{b - 1}"
    unknown = [r for r in removed_set if addresses is not None and r not in addresses]
    if unknown:
        return Check(
            name, False, False,
            f"not judged: the address of {', '.join(unknown)} is unknown, so whether nginx still tried it "
            "cannot be told", (float(a), float(b)), live_set, removed_set, sorted(served),
        )  # fmt: skip
    allowed = probes_allowed(b - a, probe_every) if probe_every else 0
    attempts = {
        r: tried.get(host_of(addresses[r]), 0) for r in removed_set if addresses is not None and addresses[r]
    }
    missing = [r for r in live_set if r not in served]
    stray = sorted(r for r in served if r not in live_set)
    too_often = {r: n for r, n in attempts.items() if n > allowed}
    passed = not missing and not stray and not too_often
    parts = [f"{span}: {len(live_set) - len(missing)}/{len(live_set)} live replicas got traffic"]
    if missing:
        parts.append(f"none reached {', '.join(missing)}")
    if removed_set:
        got = [r for r in removed_set if r in served]
        if got:
            parts.append(f"removed replicas still answered: {', '.join(got)}")
        if too_often:
            limit = f"at most {allowed} probes allowed, one per fail_timeout" if allowed else "none allowed"
            tries = ", ".join(f"{r} {n:,} times" for r, n in too_often.items())
            parts.append(f"nginx still tried {tries} ({limit})")
        if not got and not too_often:
            probes = sum(attempts.values())
            if addresses is None:
                parts.append("removed replicas got none")
            elif probes:
                parts.append(
                    f"removed replicas got none; nginx probed them {probes} times ({allowed} allowed)"
                )
            else:
                parts.append("removed replicas got none and nginx tried none of them")
        taken = [r for r in removed_set if addresses is not None and not addresses[r]]
        if taken:
            parts.append(f"{', '.join(taken)}: address taken over by a new replica, judged by who answered")
    others = [r for r in stray if r not in removed_set]
    if others:
        parts.append(f"answers from replicas that are not live: {', '.join(others)}")
    return Check(name, True, passed, "; ".join(parts), (float(a), float(b)), live_set, removed_set,
                 sorted(served), missing, stray, attempts, allowed)  # fmt: skip


def version_check(versions: Mapping[str, str], expected: str, what: str) -> Check:
    """Did every replica that answered the probe serve version `expected`?"""
    name = f"every replica serves {what} {expected}"
    if not versions:
        return Check(name, False, False, "not judged: no replica answered the version probe")
    wrong = {r: v for r, v in sorted(versions.items()) if v != expected}
    if wrong:
        detail = "; ".join(f"{r} serves {v or 'no version'}" for r, v in wrong.items())
        return Check(name, True, False, detail, served=sorted(versions))
    return Check(
        name, True, True, f"{len(versions)} replicas answered with {expected}", served=sorted(versions)
    )


def judge(
    kind: str,
    timeline: Sequence[Second],
    failed: int,
    sent: int,
    causes: Mapping[str, int],
    broke_at: float | None,
) -> tuple[str, str]:
    """The verdict and its one-line reason.

    zero-loss when nothing failed, else lossy. For kill-lb errors while nginx is down are
    expected: recovered when the load balancer answered again and the errors stopped, else failed.
    """
    cause_text = ", ".join(f"{k} {v:,}" for k, v in causes.items() if v) or "none"
    if kind == "kill-lb":
        first, recovery = recovery_time(timeline)
        after = [s for s in timeline if broke_at is not None and s.t >= math.floor(broke_at)]
        answered = any(s.ok for s in after) and (first is None or recovery is not None)
        if failed == 0 and answered:
            return VERDICT_RECOVERED, "the load balancer came back with no failed request"
        if answered and first is not None and recovery is not None:
            return (
                VERDICT_RECOVERED,
                f"the load balancer came back by itself: {failed:,} of {sent:,} requests failed in "
                f"{recovery:.0f} s ({cause_text}), then none",
            )
        if broke_at is None:
            return VERDICT_FAILED, "the load balancer was never killed"
        return (
            VERDICT_FAILED,
            f"the load balancer did not answer again before the end ({failed:,} failed: {cause_text})",
        )
    if failed == 0:
        return VERDICT_ZERO_LOSS, f"all {sent:,} requests answered, none failed"
    return VERDICT_LOSSY, f"{failed:,} of {sent:,} requests failed ({cause_text})"


def explain(
    kind: str,
    *,
    retried: int,
    retried_by_cause: Mapping[str, int],
    upstream_retries: int,
    failed: int,
    overrun: float,
    restore: str = "",
) -> list[str]:
    """Plain sentences on what the numbers mean, so nothing hides behind them."""
    notes = []
    if retried:
        causes = ", ".join(f"{k} {v:,}" for k, v in retried_by_cause.items() if v)
        notes.append(
            f"{retried:,} GETs met a keep-alive connection the server had just closed ({causes}) before any "
            "byte of an answer, and were sent again once on a fresh connection, as browsers and curl do "
            "(a GET is idempotent, RFC 9110 §9.2.2). They are not failures, and they are counted here: "
            "nginx closes idle keep-alive connections when it reloads, and a request can cross that close."
        )
    if upstream_retries:
        notes.append(
            f"nginx itself tried another replica {upstream_retries:,} times after an attempt failed "
            "(proxy_next_upstream): those requests were answered, and X-Upstream-Addr lists every "
            "replica nginx tried."
        )
    if kind == "kill-lb":
        notes.append(
            "While nginx is down nothing listens on the published port: the requests sent in that gap "
            "fail (refused or reset) and are counted, not hidden. Docker's restart policy starts it again."
        )
    if kind == "failover" and restore == "after":
        notes.append("The broken replica was restored after the measured window (not part of these numbers).")
    if kind == "node-failure":
        notes.append(
            "A killed node sends nothing, not even a reset: a request in flight to one of its tasks waits "
            "for nginx's read timeout (2 s) and a new one for its connect timeout (1 s), and nginx then "
            "tries another task (proxy_next_upstream): slow answers, not failed ones, until the watcher "
            "takes the dead tasks out. The manager notices the node only when its heartbeats stop."
        )
        if restore == "after":
            notes.append(
                "The killed node was started again after the measured window (not part of these numbers)."
            )
    if overrun > 0:
        notes.append(
            f"The operation went on {overrun:.1f} s after the load ended: give a longer --duration to see "
            "its end under load."
        )
    if failed and kind != "kill-lb":
        notes.append("Every failed request is in the timeline, in the second its failure arrived.")
    return notes


def removed_addresses(
    removed: Iterable[str], before: Mapping[str, str], after: Mapping[str, str]
) -> dict[str, str]:
    """The addresses the removed replicas had; "" where a replica still serving now holds it."""
    taken = set(after.values())
    return {r: ("" if before[r] in taken else before[r]) for r in removed if r in before}


def result_of(
    name: str,
    url: str,
    plan: ExperimentPlan,
    tally: Tally,
    events: list[Event],
    steps: list[Step],
    operation_error: str,
    operation_end: float,
    before_versions: dict[str, str],
    extra: dict[str, object],
) -> ExperimentResult:
    """The experiment's result: the load's tally judged step by step, with the events and findings."""
    timeline = tally.timeline
    load_end = tally.elapsed
    checks = step_checks(plan.kind, steps, timeline, load_end)
    if plan.kind == "deploy":
        versions = extra.get("versions_after")
        if isinstance(versions, dict):
            if operation_error:
                old = sorted(set(before_versions.values()))
                expected = old[0] if len(old) == 1 else ""
                checks.append(version_check(versions, expected, "the old version"))
            else:
                checks.append(version_check(versions, str(extra.get("new_version", "")), "the new version"))
        extra["versions_before"] = before_versions
    failed_by_cause = {cause: tally.errors_by_cause.get(cause, 0) for cause in ERROR_CAUSES}
    failed_by_cause.update({k: v for k, v in tally.errors_by_cause.items() if k not in failed_by_cause})
    first_error, recovery = recovery_time(timeline)
    broke_at = steps[0].begin if steps else None
    verdict, reason = judge(plan.kind, timeline, tally.errors, tally.sent, failed_by_cause, broke_at)
    if operation_error:
        reason += f"; but the operation failed: {operation_error}"
    reason += checks_clause(checks)
    notes = explain(
        plan.kind,
        retried=tally.retried,
        retried_by_cause=tally.retried_by_cause,
        upstream_retries=tally.upstream_retries,
        failed=tally.errors,
        overrun=max(0.0, operation_end - load_end),
        # A swarm lab's broken task is replaced by Swarm itself: nothing is restored afterwards.
        restore=""
        if "replaced_after_s" in extra
        else plan.restore
        if plan.kind in ("failover", "node-failure")
        else "",
    )
    if tally.cancelled:
        notes.append(f"{tally.cancelled:,} requests were still open when the load was stopped (not counted).")
    return ExperimentResult(
        lab=name,
        kind=plan.kind,
        url=url,
        rate=plan.rate,
        duration=plan.duration,
        concurrency=plan.concurrency,
        options=plan.options(),
        sent=tally.sent,
        ok=tally.ok,
        failed=tally.errors,
        failed_by_cause=failed_by_cause,
        retried=tally.retried,
        retried_by_cause=dict(tally.retried_by_cause),
        upstream_retries=tally.upstream_retries,
        timeline=timeline,
        events=events,
        recovery_s=recovery,
        first_error_s=first_error,
        checks=checks,
        verdict=verdict,
        reason=reason,
        notes=notes,
        replicas=replicas_in_order(timeline),
        operation_error=operation_error,
        elapsed=round(load_end, 3),
        latency_ms=latency_summary(tally),
        extra=extra,
    )


def checks_clause(checks: Sequence[Check]) -> str:
    """ "; but 1 check failed and 1 could not be judged", or "" when every check passed."""
    failed = sum(1 for c in checks if c.judged and not c.passed)
    unjudged = sum(1 for c in checks if not c.judged)

    def checks_word(n: int) -> str:
        return f"{n} check{'s' if n > 1 else ''}"

    if failed and unjudged:
        return f"; but {checks_word(failed)} failed and {unjudged} could not be judged"
    if failed:
        return f"; but {checks_word(failed)} failed"
    if unjudged:
        return f"; but {checks_word(unjudged)} could not be judged"
    return ""


def latency_summary(tally: Tally) -> dict[str, float]:
    """p50, p99 and the slowest answer in milliseconds (a stall shows here even when nothing fails)."""
    histogram = tally.latency
    if histogram.count == 0:
        return {}
    return {
        "p50": round(histogram.percentile(50) * 1000, 2),
        "p99": round(histogram.percentile(99) * 1000, 2),
        "max": round(histogram.max * 1000, 2),
    }


def step_checks(kind: str, steps: Sequence[Step], timeline: Sequence[Second], load_end: float) -> list[Check]:
    """A traffic check after each step: from its end plus a settle time to the next step's begin."""
    checks = []
    for i, step in enumerate(steps):
        until = steps[i + 1].begin if i + 1 < len(steps) else load_end
        if step.check:
            name = step.check
        elif kind == "reload":
            name = f"after {step.label}: every replica got traffic"
        elif kind == "failover" and step.removed:
            name = f"after {step.label}: no traffic to it after fail_timeout ({step.settle:.0f} s)"
        else:
            name = f"after {step.label}: every live replica got traffic, removed ones none"
        checks.append(
            traffic_check(
                name, timeline, step.end + step.settle, until, step.live, step.removed,
                step.addresses, step.probe_every,
            )
        )  # fmt: skip
    return checks


def replicas_in_order(timeline: Sequence[Second]) -> list[str]:
    """Every replica that answered, in order of its first answer (then by name within a second)."""
    seen: dict[str, None] = {}
    for second in timeline:
        for replica in sorted(second.by_replica, key=_natural):
            seen.setdefault(replica, None)
    return list(seen)


def _natural(name: str) -> tuple[str, int]:
    match = re.search(r"(\d+)$", name)
    return (name[: match.start()], int(match.group(1))) if match else (name, -1)
