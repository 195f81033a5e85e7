"""Running an experiment: steady paced load through 127.0.0.1 while the plan's operation runs.

The load starts first and runs for the whole duration; after the warm-up the operation happens,
each step stamped in seconds since the start. Each kind of experiment is one entry of
`OPERATIONS`: a function that performs the steps on schedule and says what happened in each.
Judging what the load saw is `verdict`'s job.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import requests

from lab import chaos, live, orchestrator, swarm_chaos, traffic
from lab.engine import ContainerEngine
from lab.errors import InvalidInput, LabError
from lab.experiment import swarm_ops
from lab.experiment.plan import RESTORE_AT, ExperimentPlan, schedule
from lab.experiment.verdict import OBSERVE, Step, removed_addresses, result_of
from lab.orchestrator import RunningLab
from lab.progress import ProgressFn
from lab.results import Event, ExperimentResult
from lab.spec import probe_host

# A client waits longer than nginx may spend on one request (proxy_next_upstream_timeout 10 s), so
# what is measured is nginx's answer, not a client giving up first; a browser waits longer still.
CLIENT_TIMEOUT = 11.0
RUN_HEADER = "X-Lab-Run"


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
class _Run:
    """One experiment as it runs: what the operations need and where they note what they found."""

    engine: ContainerEngine
    name: str
    plan: ExperimentPlan
    lab: RunningLab
    rec: _Recorder
    load: _Load
    target: str = ""  # failover: the replica to break
    extra: dict[str, object] = field(default_factory=dict)  # kind-specific findings

    def wait_until(self, t: float) -> None:
        while (left := t - self.rec.now()) > 0 and self.load.alive():
            time.sleep(min(left, 0.05))

    def running(self) -> list[str]:
        return orchestrator.find_running(self.engine, self.name).replicas

    def addresses(self) -> dict[str, str]:
        """Each serving replica's address on the network nginx reaches it on."""
        backend = orchestrator.find_running(self.engine, self.name).backend
        return {m.name: m.address for m in backend.members() if m.address}


def _not_before(due: float, done: Sequence[Step]) -> float:
    """A step is due on schedule, but not before the previous one can be judged."""
    return max(due, done[-1].end + done[-1].settle + OBSERVE) if done else due


# The operations, one per kind ------------------------------------------------------------------
Operation = Callable[[_Run], tuple[list[Step], str]]  # -> the steps as they happened, and any failure


def _scale(run: _Run) -> tuple[list[Step], str]:
    steps: list[Step] = []
    before = list(run.lab.replicas)
    for i, (due, n) in enumerate(
        zip(schedule(run.plan.duration, len(run.plan.steps)), run.plan.steps, strict=True)
    ):
        run.wait_until(_not_before(due, steps))
        label = f"scale to {n}"
        addresses = run.addresses()
        begin = run.rec.add(f"step {i + 1}: {label} begins", "step")
        orchestrator.scale(run.engine, run.name, n, on_event=run.rec.on_event)
        after = run.running()
        end = run.rec.add(f"step {i + 1}: {label} ends ({len(after)} replicas running)", "step")
        gone = sorted(set(before) - set(after))
        where = removed_addresses(gone, addresses, run.addresses())
        steps.append(Step(label, begin, end, after, gone, addresses=where))
        before = after
    return steps, ""


def _reload(run: _Run) -> tuple[list[Step], str]:
    steps: list[Step] = []
    for i, due in enumerate(schedule(run.plan.duration, run.plan.times)):
        run.wait_until(_not_before(due, steps))
        begin = run.rec.add(f"reload {i + 1} begins", "step")
        live.reload(run.engine, run.name, on_event=run.rec.on_event)
        end = run.rec.add(f"reload {i + 1} ends", "step")
        steps.append(Step(f"reload {i + 1}", begin, end, list(run.lab.replicas), []))
    return steps, ""


def _deploy(run: _Run) -> tuple[list[Step], str]:
    plan, rec = run.plan, run.rec
    (due,) = schedule(plan.duration, 1)
    run.wait_until(due)
    before = list(run.lab.replicas)
    addresses = run.addresses()
    label = f"deploy, {plan.batch} at a time"
    begin = rec.add(f"{label} begins", "step")
    error = ""
    try:
        version = orchestrator.deploy(
            run.engine,
            run.name,
            site=plan.site,
            batch=plan.batch,
            tag=plan.tag,
            image=plan.image,
            on_event=rec.on_event,
        )
        run.extra["new_version"] = version
    except LabError as exc:  # a failed deploy rolls back; the load goes on and shows what it cost
        error = exc.message
        run.extra["operation_error_type"] = type(exc).__name__
        rec.add(f"deploy failed: {exc.message}", "note")
    after = run.running()
    end = rec.add(f"{label} ends ({len(after)} replicas running)", "step")
    gone = sorted(set(before) - set(after))
    where = removed_addresses(gone, addresses, run.addresses())
    run.extra["versions_after"] = probe_versions(run.lab.spec.url, len(after))
    return [Step(label, begin, end, after, gone, addresses=where)], error


def _failover(run: _Run) -> tuple[list[Step], str]:
    if run.lab.spec.engine == "swarm":
        return swarm_ops.failover(run)  # Swarm replaces the broken task by itself
    plan, rec, lab, target = run.plan, run.rec, run.lab, run.target
    (due,) = schedule(plan.duration, 1)
    run.wait_until(due)
    addresses = run.addresses()
    label = f"{plan.how} {target}"
    begin = rec.add(f"{label} begins", "step")
    chaos.break_replica(run.engine, run.name, target, plan.how, on_event=rec.on_event)
    end = rec.add(f"{label} ends", "step")
    others = [r for r in lab.replicas if r != target]
    # nginx learns of a dead replica from a failed attempt and keeps it out for fail_timeout.
    where = {target: addresses.get(target, "")} if target in addresses else {}
    fail_timeout = float(lab.spec.fail_timeout)
    steps = [
        Step(
            label,
            begin,
            end,
            others,
            [target],
            settle=fail_timeout,
            addresses=where,
            probe_every=fail_timeout,
        )
    ]
    run.extra["fail_timeout"] = lab.spec.fail_timeout
    run.extra["broken"] = target
    if plan.restore == "during":
        run.wait_until(plan.duration * RESTORE_AT)
        begin = rec.add("restore begins", "step")
        restored = chaos.restore(run.engine, run.name, on_event=rec.on_event)
        end = rec.add(f"restore ends ({', '.join(restored) or 'nothing to restore'})", "step")
        steps.append(Step("restore", begin, end, run.running(), []))
    return steps, ""


def _kill_lb(run: _Run) -> tuple[list[Step], str]:
    (due,) = schedule(run.plan.duration, 1)
    run.wait_until(due)
    before = run.lab.lb.state()
    begin = run.rec.add("kill the load balancer begins", "step")
    chaos.kill_lb(run.engine, run.name, on_event=run.rec.on_event)
    end = run.rec.add("kill the load balancer ends", "step")
    run.extra["restarts"] = _wait_restarted(run, before.restart_count, before.started_at)
    return [Step("kill the load balancer", begin, end, list(run.lab.replicas), [])], ""


OPERATIONS: dict[str, Operation] = {
    "scale": _scale,
    "deploy": _deploy,
    "failover": _failover,
    "reload": _reload,
    "kill-lb": _kill_lb,
    "node-failure": swarm_ops.node_failure,
}


def run_experiment(
    engine: ContainerEngine,
    name: str,
    kind: str,
    *,
    rate: object,
    duration: object,
    options: Mapping[str, object] | None = None,
    progress: ProgressFn | None = None,
) -> ExperimentResult:
    """Run steady load through the lab's load balancer on loopback, perform the operation in the
    middle of it, and count every request. Bad input raises InvalidInput before any load is sent."""
    plan = ExperimentPlan.create(kind, rate=rate, duration=duration, options=options)
    lab = orchestrator.find_running(engine, name)
    if not lab.replicas:
        raise LabError(f"lab {name!r} has no running replica; `lab chaos restore --name {name}` first")
    if plan.kind == "deploy" and plan.batch > len(lab.replicas):
        raise InvalidInput(
            f"batch must be between 1 and {len(lab.replicas)} (the running replicas), not {plan.batch}"
        )
    _refuse_on_this_engine(engine, plan, lab)
    target = _failover_target(plan, lab) if plan.kind == "failover" else ""
    before_versions = _label_versions(engine, name) if plan.kind == "deploy" else {}
    recorder = _Recorder(progress, plan.duration)
    load = _Load(plan, probe_host(lab.spec.bind).strip("[]"), lab.spec.port, recorder)
    run = _Run(engine, name, plan, lab, recorder, load, target)
    load.start()
    try:
        steps, operation_error = OPERATIONS[plan.kind](run)
        operation_end = recorder.now()
        tally = load.finish()
    except BaseException:
        load.abort()
        if (
            plan.kind in ("failover", "node-failure") and plan.restore != "no"
        ):  # interrupted: leave nothing broken
            with contextlib.suppress(Exception):
                chaos.restore(engine, name)
        raise
    if plan.kind == "failover" and plan.restore == "after":
        run.extra["restored_after_window"] = chaos.restore(engine, name, on_event=recorder.on_event)
    if plan.kind == "node-failure" and plan.restore == "after":
        run.extra["restored_after_window"] = swarm_chaos.restart_nodes(engine, on_event=recorder.on_event)
    return result_of(
        name, lab.spec.url, plan, tally, recorder.sorted_events(), steps, operation_error, operation_end,
        before_versions, run.extra,
    )  # fmt: skip


def _refuse_on_this_engine(engine: ContainerEngine, plan: ExperimentPlan, lab: RunningLab) -> None:
    """What a kind cannot do on this lab's engine, refused before any load is sent."""
    on_swarm = lab.spec.engine == "swarm"
    if plan.kind == "node-failure":
        if not on_swarm:
            raise InvalidInput(
                f"a node-failure experiment needs a swarm lab (`lab up --engine swarm`); lab {lab.spec.name!r} "
                "runs on one engine"
            )
        swarm_chaos.pick_node(engine, lab.backend.members(), plan.node)  # no worker, or no such node
    if plan.kind == "failover" and on_swarm and plan.how not in swarm_chaos.TASK_HOW:
        raise InvalidInput(
            f"{plan.how} is not available on a swarm lab (a task's networks belong to Swarm); "
            f"use {', '.join(swarm_chaos.TASK_HOW)}"
        )


def _failover_target(plan: ExperimentPlan, lab: RunningLab) -> str:
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


def _wait_restarted(run: _Run, restarts: int, started: str) -> int:
    """Note when the engine runs the load balancer again; return how often it restarted it.

    Bounded by the load: once the load has ended, whatever the engine did by then is the answer.
    """
    while True:
        state = run.lab.lb.state()
        count = state.restart_count - restarts
        if state.status == "running" and (count > 0 or state.started_at != started):
            run.rec.add("the engine runs the load balancer again (restart policy)", "operation")
            return max(count, 1)
        if not run.load.alive():
            run.rec.add(f"the load balancer is {state.status} at the end of the load", "note")
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


def _label_versions(engine: ContainerEngine, name: str) -> dict[str, str]:
    status = orchestrator.status(engine, name, known={})
    return {m.name: m.site_version for m in status.replicas if m.state == "running"}
