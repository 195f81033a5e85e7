"""`lab experiment`: steady paced load through 127.0.0.1 while a live operation runs on the lab.

The load starts first and runs for the whole `duration`; after a warm-up (a fifth of the run)
the operation happens (scale steps, a rolling deploy, a broken replica, reloads, a killed load
balancer), each step stamped in seconds since the start, and the load goes on to the end. Every
request is counted: sent, ok, failed by cause, and GETs retried once after a stale keep-alive
close (counted, never hidden). The pure parts (validation, the schedule, recovery time, the
per-step traffic checks, the verdict) take plain values, so they are tested without Docker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

from lab import chaos, live, orchestrator, traffic
from lab.docker_ops import Engine
from lab.errors import InvalidInput, LabError
from lab.progress import ProgressFn
from lab.spec import MAX_REPLICAS, parse_int_in_range, parse_site, probe_host
from lab.traffic import ERROR_CAUSES, Second

KINDS = ("scale", "deploy", "failover", "reload", "kill-lb")
MIN_RATE, MAX_RATE = 1.0, 2000.0  # requests per second
MIN_DURATION, MAX_DURATION = 2.0, 600.0  # seconds
DEFAULT_STEPS = (8, 2)
DEFAULT_RELOADS = 3
MAX_STEPS = 10
MAX_RELOADS = 20
HOWS = chaos.HOW
RESTORE = ("after", "during", "no")  # failover: restore after the measured window, inside it, or not at all
WARM_UP = 0.2  # the operations start after this share of the run...
OPS_END = 0.8  # ...and several steps are spread evenly up to this share
RESTORE_AT = 0.7  # failover with restore "during": when the restore begins
SETTLE = 1.0  # seconds after a step ends before its traffic check starts
OBSERVE = 2.0  # a step that ran late still leaves this many seconds to judge it before the next
# A client waits longer than nginx may spend on one request (proxy_next_upstream_timeout 10 s), so
# what is measured is nginx's answer, not a client giving up first; a browser waits longer still.
CLIENT_TIMEOUT = 11.0
RUN_HEADER = "X-Lab-Run"

VERDICT_ZERO_LOSS = "zero-loss"
VERDICT_LOSSY = "lossy"
VERDICT_RECOVERED = "recovered"
VERDICT_FAILED = "failed"
PASSING_VERDICTS = (VERDICT_ZERO_LOSS, VERDICT_RECOVERED)

# Which options each kind takes; anything else given for it is refused.
_OPTIONS = {
    "scale": {"steps"},
    "deploy": {"batch", "site", "tag"},
    "failover": {"how", "replica", "restore"},
    "reload": {"times"},
    "kill-lb": set(),
}


# ---------------------------------------------------------------------------------------------
# The plan: validated before anything is touched


@dataclass(frozen=True)
class ExperimentPlan:
    """What to run, validated: the kind, the load, and the kind's options."""

    kind: str
    rate: float
    duration: float
    steps: tuple[int, ...] = ()
    batch: int = 1
    site: Path | None = None
    tag: str | None = None
    how: str = "kill"
    replica: str | None = None
    restore: str = "after"
    times: int = DEFAULT_RELOADS

    @classmethod
    def create(
        cls, kind: object, *, rate: object, duration: object, options: Mapping[str, object] | None = None
    ) -> ExperimentPlan:
        """Validate raw values (a command line, a test) into a plan, or raise InvalidInput.

        Options set to None count as not given; an option the kind does not take is refused.
        """
        what = parse_kind(kind)
        given = {k: v for k, v in (options or {}).items() if v is not None}
        unknown = sorted(set(given) - _OPTIONS[what])
        if unknown:
            takes = ", ".join(sorted(_OPTIONS[what])) or "no options"
            raise InvalidInput(f"a {what} experiment does not take {', '.join(unknown)} (it takes {takes})")
        plan = cls(
            kind=what,
            rate=parse_number(rate, "rate", MIN_RATE, MAX_RATE, "requests per second"),
            duration=parse_number(duration, "duration", MIN_DURATION, MAX_DURATION, "seconds"),
        )
        if what == "scale":
            return _replace(plan, steps=parse_steps(given.get("steps", DEFAULT_STEPS)))
        if what == "deploy":
            site = given.get("site")
            tag = given.get("tag")
            return _replace(
                plan,
                batch=parse_int_in_range(given.get("batch", 1), "batch", 1, MAX_REPLICAS),
                site=parse_site(site) if site is not None else None,
                tag=str(tag) if tag is not None else None,
            )
        if what == "failover":
            how = str(given.get("how", "kill"))
            if how not in HOWS:
                raise InvalidInput(f"unknown way to break a replica {how!r}; choose one of {', '.join(HOWS)}")
            restore = str(given.get("restore", "after"))
            if restore not in RESTORE:
                raise InvalidInput(f"restore must be one of {', '.join(RESTORE)}, not {restore!r}")
            replica = given.get("replica")
            if replica is not None and not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,60}", str(replica)):
                raise InvalidInput(
                    f"replica must be a container name such as lab-web-2 or a number, not {replica!r}"
                )
            return _replace(
                plan, how=how, restore=restore, replica=str(replica) if replica is not None else None
            )
        if what == "reload":
            return _replace(
                plan, times=parse_int_in_range(given.get("times", DEFAULT_RELOADS), "times", 1, MAX_RELOADS)
            )
        return plan

    @property
    def concurrency(self) -> int:
        """Connections the load may open: enough that a request stalled for seconds (a frozen
        replica) does not hold back the pace. The engine opens only as many as it needs."""
        return max(16, min(256, math.ceil(self.rate / 2)))

    def options(self) -> dict[str, object]:
        """The kind's options, as plain values (for JSON and the report)."""
        values: dict[str, object] = {
            "steps": list(self.steps),
            "batch": self.batch,
            "site": str(self.site) if self.site else None,
            "tag": self.tag,
            "how": self.how,
            "replica": self.replica,
            "restore": self.restore,
            "times": self.times,
        }
        return {k: values[k] for k in sorted(_OPTIONS[self.kind])}


def _replace(plan: ExperimentPlan, **changes: object) -> ExperimentPlan:
    return dataclasses.replace(plan, **changes)  # type: ignore[arg-type]


def parse_kind(value: object) -> str:
    text = str(value).strip().lower().replace("_", "-")
    if text == "killlb":
        text = "kill-lb"
    if text not in KINDS:
        raise InvalidInput(f"unknown experiment {str(value)!r}; choose one of {', '.join(KINDS)}")
    return text


def parse_number(value: object, what: str, low: float, high: float, unit: str) -> float:
    """A finite number between `low` and `high`, or a one-line InvalidInput."""
    if isinstance(value, bool):
        raise InvalidInput(f"{what} must be a number of {unit}, not {value!r}")
    try:
        x = float(str(value).strip())
    except ValueError:
        raise InvalidInput(f"{what} must be a number of {unit}, not {str(value)!r}") from None
    if not math.isfinite(x) or not low <= x <= high:
        shown = f"{x:g}" if math.isfinite(x) else str(value)
        raise InvalidInput(f"{what} must be between {low:g} and {high:g} {unit}, not {shown}")
    return x


def parse_steps(value: object) -> tuple[int, ...]:
    """Scale steps: '8,2' or a sequence of replica counts, each 1..MAX_REPLICAS."""
    if isinstance(value, str):
        items: list[object] = list(value.split(","))
    elif isinstance(value, Iterable):
        items = list(value)
    else:
        raise InvalidInput(f"steps must be replica counts such as 8,2, not {value!r}")
    raw = [item for item in items if str(item).strip()]
    if not raw:
        raise InvalidInput("give at least one scale step, e.g. --steps 8,2")
    if len(raw) > MAX_STEPS:
        raise InvalidInput(f"at most {MAX_STEPS} scale steps, not {len(raw)}")
    return tuple(parse_int_in_range(item, "each scale step (replicas)", 1, MAX_REPLICAS) for item in raw)


def schedule(duration: float, count: int) -> list[float]:
    """When each of `count` steps is due, in seconds since the start: the first once the warm-up
    (a fifth of the run) is over, the others spread evenly up to four fifths of it."""
    start, end = duration * WARM_UP, duration * OPS_END
    return [start + i * (end - start) / count for i in range(count)]


# ---------------------------------------------------------------------------------------------
# What an experiment found


@dataclass(frozen=True)
class Event:
    """Something that happened, `t` seconds after the load started."""

    t: float
    text: str
    source: str = "operation"  # "step" (begins/ends, from the experiment) | "operation" | "note"


@dataclass(frozen=True)
class Check:
    """A judgement after a step: who got traffic in a window, and whether that is as it should be.

    For a traffic check, `live` replicas should each have answered in `window`, and nginx
    should not have tried the `removed` ones at all (X-Upstream-Addr lists every address it
    tried), or, for a broken replica still in its config, at most `allowed` probes (passive
    health tries it again once per fail_timeout). Other checks (a deploy's versions) leave
    those empty. A check that was not `judged` is not passed either.
    """

    name: str
    judged: bool
    passed: bool
    detail: str
    window: tuple[float, float] | None = None  # whole seconds [start, end) of the run judged
    live: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    served: list[str] = field(default_factory=list)  # replicas that answered in the window
    missing: list[str] = field(default_factory=list)  # live replicas that got nothing
    stray: list[str] = field(default_factory=list)  # replicas not live that still answered
    attempts: dict[str, int] = field(default_factory=dict)  # removed replica -> times nginx tried it
    allowed: int = 0  # attempts allowed per removed replica in the window (probes of a broken one)


@dataclass(frozen=True)
class ExperimentResult:
    lab: str
    kind: str
    url: str
    rate: float
    duration: float
    concurrency: int
    options: dict[str, object]
    sent: int
    ok: int
    failed: int
    failed_by_cause: dict[str, int]
    retried: int  # GETs sent again once after a stale keep-alive close (not failures, counted)
    retried_by_cause: dict[str, int]
    upstream_retries: int  # extra upstream attempts nginx made (X-Upstream-Addr lists them)
    timeline: list[Second]
    events: list[Event]
    recovery_s: float | None  # None: errors went on to the end of the run
    first_error_s: float | None
    checks: list[Check]
    verdict: str  # zero-loss | lossy | recovered | failed
    reason: str
    notes: list[str]
    replicas: list[str]  # every replica that answered, in order of first answer
    operation_error: str = ""  # the operation itself failed (e.g. a deploy rolled back)
    elapsed: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p99, max of every answer
    extra: dict[str, object] = field(default_factory=dict)  # kind-specific findings

    @property
    def passed(self) -> bool:
        """Zero loss (or recovered, for kill-lb), every check judged and passed, the operation done.

        A check that could not be judged is no evidence, so it does not pass either.
        """
        return (
            self.verdict in PASSING_VERDICTS
            and not self.operation_error
            and all(c.judged and c.passed for c in self.checks)
        )

    @property
    def unjudged(self) -> list[Check]:
        return [c for c in self.checks if not c.judged]

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        data["passed"] = self.passed
        data["unjudged"] = [c.name for c in self.unjudged]
        return data


# ---------------------------------------------------------------------------------------------
# Pure judgements on a timeline


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
    if overrun > 0:
        notes.append(
            f"The operation went on {overrun:.1f} s after the load ended: give a longer --duration to see "
            "its end under load."
        )
    if failed and kind != "kill-lb":
        notes.append("Every failed request is in the timeline, in the second its failure arrived.")
    return notes


# ---------------------------------------------------------------------------------------------
# Running one


class _Recorder:
    """Timestamps events (from any thread) in seconds since the load started."""

    def __init__(self, progress: ProgressFn | None, duration: float) -> None:
        self.t0 = time.monotonic()
        self.events: list[Event] = []
        self.lock = threading.Lock()
        self.progress = progress
        self.duration = duration
        self.last = "load starting"
        self.done = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def add(self, text: str, source: str = "operation") -> float:
        t = self.now()
        with self.lock:
            self.events.append(Event(round(t, 3), text, source))
            self.last = text
        self._show()
        return t

    def on_event(self, text: str) -> None:
        self.add(text, "operation")

    def on_progress(self, done: int) -> None:
        self.done = done
        self._show()

    def _show(self) -> None:
        if self.progress is not None:
            fraction = min(1.0, self.now() / self.duration)
            self.progress(f"{self.last} · {self.done:,} requests", fraction)

    def sorted_events(self) -> list[Event]:
        with self.lock:
            return sorted(self.events, key=lambda e: e.t)


class _Load:
    """The background load: one thread running `traffic.run_load` for the plan's duration."""

    def __init__(self, plan: ExperimentPlan, host: str, port: int, recorder: _Recorder) -> None:
        self.stop = threading.Event()
        self.tally: traffic.Tally | None = None
        self.error: BaseException | None = None
        self.run_id = uuid.uuid4().hex[:12]

        def run() -> None:
            try:
                self.tally = traffic.run_load(
                    host,
                    port,
                    requests=None,
                    duration=plan.duration,
                    concurrency=plan.concurrency,
                    rate=plan.rate,
                    timeout=CLIENT_TIMEOUT,
                    retry_stale=True,
                    stop=self.stop,
                    headers={RUN_HEADER: self.run_id},
                    on_progress=recorder.on_progress,
                )
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self.error = exc

        self.thread = threading.Thread(target=run, name="lab-experiment-load", daemon=True)
        self.bound = plan.duration + CLIENT_TIMEOUT + 5.0

    def start(self) -> None:
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def finish(self) -> traffic.Tally:
        self.thread.join(timeout=self.bound)
        if self.thread.is_alive():  # never expected: run_load is bounded in time itself
            self.stop.set()
            self.thread.join(timeout=5.0)
        if self.error is not None:
            raise self.error
        if self.tally is None:
            raise LabError("the load did not finish")
        return self.tally

    def abort(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5.0)


@dataclass
class _Step:
    """One step of the operation as it happened (for the checks once the load is over)."""

    label: str
    begin: float
    end: float
    live: list[str]
    removed: list[str]
    settle: float = SETTLE
    addresses: dict[str, str] = field(default_factory=dict)  # removed replica -> address ("" if reused)
    probe_every: float | None = None  # failover: the broken replica stays in the config


def backend_addresses(engine: Engine, name: str) -> dict[str, str]:
    """Each serving replica's address on the lab's backend network: what nginx connects to."""
    backend = f"{name}-backend"
    found = {}
    for container in live.serving_members(engine, name):
        address = container.attrs["NetworkSettings"]["Networks"].get(backend, {}).get("IPAddress", "")
        if address:
            found[container.name] = address
    return found


def removed_addresses(
    removed: Iterable[str], before: Mapping[str, str], after: Mapping[str, str]
) -> dict[str, str]:
    """The addresses the removed replicas had; "" where a replica still serving now holds it."""
    taken = set(after.values())
    return {r: ("" if before[r] in taken else before[r]) for r in removed if r in before}


def run_experiment(
    engine: Engine,
    name: str,
    kind: str,
    *,
    rate: object,
    duration: object,
    options: Mapping[str, object] | None = None,
    progress: ProgressFn | None = None,
) -> ExperimentResult:
    """Run steady load through the lab's load balancer on loopback, perform the operation in the
    middle of it, and count every request. Bad input raises InvalidInput before anything runs."""
    plan = ExperimentPlan.create(kind, rate=rate, duration=duration, options=options)
    lab = live.find_running(engine, name)
    if not lab.replicas:
        raise LabError(f"lab {name!r} has no running replica; `lab chaos restore --name {name}` first")
    target = _failover_target(plan, lab) if plan.kind == "failover" else ""
    before_versions = _label_versions(engine, name) if plan.kind == "deploy" else {}
    host = probe_host(lab.spec.bind).strip("[]")
    recorder = _Recorder(progress, plan.duration)
    load = _Load(plan, host, lab.spec.port, recorder)
    load.start()
    extra: dict[str, object] = {}
    try:
        steps, operation_error = _operate(engine, name, plan, lab, target, recorder, load, extra)
        operation_end = recorder.now()
        tally = load.finish()
    except BaseException:
        load.abort()
        if plan.kind == "failover" and plan.restore != "no":  # interrupted: leave no replica broken
            with contextlib.suppress(Exception):
                chaos.restore(engine, name)
        raise
    if plan.kind == "failover" and plan.restore == "after":
        restored = chaos.restore(engine, name, on_event=recorder.on_event)
        extra["restored_after_window"] = restored
    return _result(
        engine,
        name,
        plan,
        lab,
        tally,
        recorder,
        steps,
        operation_error,
        operation_end,
        before_versions,
        extra,
    )


def _failover_target(plan: ExperimentPlan, lab: live.RunningLab) -> str:
    if plan.replica is None:
        return lab.replicas[0]
    wanted = plan.replica
    if wanted.isdigit():
        wanted = lab.spec.replica_name(int(wanted))
    if wanted not in lab.replicas:
        raise InvalidInput(
            f"lab {lab.spec.name!r} has no running replica {plan.replica!r} (running: {', '.join(lab.replicas)})"
        )
    return wanted


def _wait_until(t: float, recorder: _Recorder, load: _Load) -> None:
    while (left := t - recorder.now()) > 0 and load.alive():
        time.sleep(min(left, 0.05))


def _not_before(due: float, done: Sequence[_Step]) -> float:
    """A step is due on schedule, but not before the previous one can be judged."""
    return max(due, done[-1].end + done[-1].settle + OBSERVE) if done else due


def _running(engine: Engine, name: str) -> list[str]:
    return live.find_running(engine, name).replicas


def _operate(
    engine: Engine,
    name: str,
    plan: ExperimentPlan,
    lab: live.RunningLab,
    target: str,
    rec: _Recorder,
    load: _Load,
    extra: dict[str, object],
) -> tuple[list[_Step], str]:
    """Perform the plan's steps on schedule while the load runs; return them and any failure."""
    steps: list[_Step] = []
    before = list(lab.replicas)
    if plan.kind == "scale":
        for i, (due, n) in enumerate(zip(schedule(plan.duration, len(plan.steps)), plan.steps, strict=True)):
            _wait_until(_not_before(due, steps), rec, load)
            label = f"scale to {n}"
            addresses = backend_addresses(engine, name)
            begin = rec.add(f"step {i + 1}: {label} begins", "step")
            live.scale(engine, name, n, on_event=rec.on_event)
            after = _running(engine, name)
            end = rec.add(f"step {i + 1}: {label} ends ({len(after)} replicas running)", "step")
            gone = sorted(set(before) - set(after))
            where = removed_addresses(gone, addresses, backend_addresses(engine, name))
            steps.append(_Step(label, begin, end, after, gone, addresses=where))
            before = after
        return steps, ""
    if plan.kind == "reload":
        for i, due in enumerate(schedule(plan.duration, plan.times)):
            _wait_until(_not_before(due, steps), rec, load)
            begin = rec.add(f"reload {i + 1} begins", "step")
            live.reload(engine, name, on_event=rec.on_event)
            end = rec.add(f"reload {i + 1} ends", "step")
            steps.append(_Step(f"reload {i + 1}", begin, end, list(before), []))
        return steps, ""
    (due,) = schedule(plan.duration, 1)
    _wait_until(due, rec, load)
    addresses = backend_addresses(engine, name)
    if plan.kind == "deploy":
        label = f"deploy, {plan.batch} at a time"
        begin = rec.add(f"{label} begins", "step")
        error = ""
        try:
            version = live.deploy(
                engine, name, site=plan.site, batch=plan.batch, tag=plan.tag, on_event=rec.on_event
            )
            extra["new_version"] = version
        except LabError as exc:  # a failed deploy rolls back; the load goes on and shows what it cost
            error = exc.message
            extra["operation_error_type"] = type(exc).__name__
            rec.add(f"deploy failed: {exc.message}", "note")
        after = _running(engine, name)
        end = rec.add(f"{label} ends ({len(after)} replicas running)", "step")
        gone = sorted(set(before) - set(after))
        where = removed_addresses(gone, addresses, backend_addresses(engine, name))
        steps.append(_Step(label, begin, end, after, gone, addresses=where))
        extra["versions_after"] = probe_versions(lab.spec.url, len(after))
        return steps, error
    if plan.kind == "failover":
        label = f"{plan.how} {target}"
        begin = rec.add(f"{label} begins", "step")
        chaos.break_replica(engine, name, target, plan.how, on_event=rec.on_event)
        end = rec.add(f"{label} ends", "step")
        others = [r for r in before if r != target]
        # nginx learns of a dead replica from a failed attempt and keeps it out for fail_timeout.
        where = {target: addresses.get(target, "")} if target in addresses else {}
        steps.append(
            _Step(label, begin, end, others, [target], settle=float(lab.spec.fail_timeout),
                  addresses=where, probe_every=float(lab.spec.fail_timeout))
        )  # fmt: skip
        extra["fail_timeout"] = lab.spec.fail_timeout
        extra["broken"] = target
        if plan.restore == "during":
            _wait_until(plan.duration * RESTORE_AT, rec, load)
            begin = rec.add("restore begins", "step")
            restored = chaos.restore(engine, name, on_event=rec.on_event)
            end = rec.add(f"restore ends ({', '.join(restored) or 'nothing to restore'})", "step")
            steps.append(_Step("restore", begin, end, _running(engine, name), []))
        return steps, ""
    # kill-lb
    lab.lb.reload()
    restarts = int(lab.lb.attrs.get("RestartCount", 0))
    started = str(lab.lb.attrs.get("State", {}).get("StartedAt", ""))
    begin = rec.add("kill the load balancer begins", "step")
    chaos.kill_lb(engine, name, on_event=rec.on_event)
    end = rec.add("kill the load balancer ends", "step")
    steps.append(_Step("kill the load balancer", begin, end, list(before), []))
    extra["restarts"] = _wait_restarted(lab, restarts, started, rec, load)
    return steps, ""


def _wait_restarted(lab: live.RunningLab, restarts: int, started: str, rec: _Recorder, load: _Load) -> int:
    """Note when the engine runs the load balancer again; return how often it restarted it.

    Bounded by the load: once the load has ended, whatever the engine did by then is the answer.
    """
    lb = lab.lb
    while True:
        lb.reload()
        state = lb.attrs.get("State", {})
        count = int(lb.attrs.get("RestartCount", 0)) - restarts
        if state.get("Running") and (count > 0 or state.get("StartedAt", "") != started):
            rec.add("the engine runs the load balancer again (restart policy)", "operation")
            return max(count, 1)
        if not load.alive():
            rec.add(f"the load balancer is {state.get('Status', 'unknown')} at the end of the load", "note")
            return count
        time.sleep(0.05)


def probe_versions(url: str, replicas: int, *, attempts: int | None = None) -> dict[str, str]:
    """Which site version each replica serves, asked through the load balancer on loopback.

    Bounded: 3 GETs per replica (round robin reaches every one), each on a new connection.
    """
    versions: dict[str, str] = {}
    for _ in range(attempts if attempts is not None else 3 * max(1, replicas)):
        try:
            response = requests.get(url, timeout=3, headers={"Connection": "close"})
        except requests.RequestException:
            continue
        served = response.headers.get("X-Served-By", "")
        if served:
            versions[served] = response.headers.get("X-Site-Version", "")
    return versions


def _label_versions(engine: Engine, name: str) -> dict[str, str]:
    status = orchestrator.status(engine, name, known={})
    return {m.name: m.site_version for m in status.replicas if m.state == "running"}


def _result(
    engine: Engine,
    name: str,
    plan: ExperimentPlan,
    lab: live.RunningLab,
    tally: traffic.Tally,
    rec: _Recorder,
    steps: list[_Step],
    operation_error: str,
    operation_end: float,
    before_versions: dict[str, str],
    extra: dict[str, object],
) -> ExperimentResult:
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
        restore=plan.restore if plan.kind == "failover" else "",
    )
    if tally.cancelled:
        notes.append(f"{tally.cancelled:,} requests were still open when the load was stopped (not counted).")
    return ExperimentResult(
        lab=name,
        kind=plan.kind,
        url=lab.spec.url,
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
        events=rec.sorted_events(),
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


def latency_summary(tally: traffic.Tally) -> dict[str, float]:
    """p50, p99 and the slowest answer in milliseconds (a stall shows here even when nothing fails)."""
    histogram = tally.latency
    if histogram.count == 0:
        return {}
    return {
        "p50": round(histogram.percentile(50) * 1000, 2),
        "p99": round(histogram.percentile(99) * 1000, 2),
        "max": round(histogram.max * 1000, 2),
    }


def step_checks(
    kind: str, steps: Sequence[_Step], timeline: Sequence[Second], load_end: float
) -> list[Check]:
    """A traffic check after each step: from its end plus a settle time to the next step's begin."""
    checks = []
    for i, step in enumerate(steps):
        until = steps[i + 1].begin if i + 1 < len(steps) else load_end
        if kind == "reload":
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
