"""The task watcher: keeps a swarm lab's load balancer on the service's running, healthy tasks.

It runs in the lab's watcher container (lab.watcher starts it) as `python3 -m lab.taskwatch`,
with the engine's socket and no network, and it goes with the lab. Swarm moves tasks whenever it
likes (a scale, a deploy, a task that fails its health check, a node that dies), and nginx only
knows the addresses its config names, so something must rewrite the upstream each time: this.

Docker events wake it (the service changed, a node changed, or one of the service's containers
on this engine started, died or changed health); a look every RECONCILE seconds catches what no
event announces here (a task failing on another node). After anything it looks every HOT_POLL
seconds for HOT_WINDOW seconds, as Swarm takes seconds to replace a task. Each look: the tasks
Swarm wants running that run, rendered with the stored spec from our template; if that is not
the config that serves, it is tested and reloaded (LoadBalancer.apply, based on the spec it
read, so a change `lab configure` made meanwhile is never undone). Each change is one JSON line
on stdout, with how long after the tasks changed the new upstream served (`latency_s`).
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import FrameType
from typing import Any

from lab.engine import EventStream, SwarmEngine, TaskInfo
from lab.errors import Conflict, InvalidInput, LabError
from lab.loadbalancer import LoadBalancer, render, upstream_hosts
from lab.replicas import Member
from lab.spec import LabSpec
from lab.swarm_replicas import SwarmReplicas, members_of

RECONCILE = 2.0  # seconds between looks when nothing happens: the safety net
HOT_POLL = 0.2  # seconds between looks after an event ...
HOT_WINDOW = 30.0  # ... for this long
READY = "lab-watch: watching"
SERVICE_LABEL = "com.docker.swarm.service.name"  # on every task container
EVENTS = {
    "type": ["service", "node", "container"],
    "event": ["create", "update", "remove", "start", "die", "kill", "stop", "health_status", "destroy"],
}


# Pure ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Applied:
    """One change of the upstream, as the watcher reports it."""

    at: float  # UNIX time the reload was done
    added: tuple[str, ...]  # "lab-web-4 10.0.1.9 on lab-node-1"
    removed: tuple[str, ...]
    members: int
    latency_s: float | None  # from the newest task change it followed to the reload done
    measured_from: str  # "task": the tasks' own timestamps; "event": the first event that woke it
    trigger: str  # what woke it: an event, or the periodic reconcile
    generation: str

    def line(self) -> str:
        return json.dumps({"kind": "applied", **asdict(self)}, sort_keys=True)


def parse_time(text: str) -> float | None:
    """A Docker timestamp (RFC 3339, nanoseconds) as UNIX time; None if there is none."""
    if not text or text.startswith("0001-"):
        return None
    head, _, rest = text.rstrip("Z").partition(".")
    digits = "".join(c for c in rest if c.isdigit())[:6]
    try:
        moment = datetime.datetime.fromisoformat(head).replace(tzinfo=datetime.UTC)
    except ValueError:
        return None
    return moment.timestamp() + (int(digits.ljust(6, "0")) / 1e6 if digits else 0.0)


def task_by_address(tasks: Iterable[TaskInfo], network: str) -> dict[str, TaskInfo]:
    """Each address on `network` and the task that had it last (addresses are reused)."""
    found: dict[str, TaskInfo] = {}
    for task in sorted(tasks, key=lambda t: t.updated_at):
        address = task.networks.get(network)
        if address:
            found[address] = task
    return found


def change_latency(
    added: Sequence[str], removed: Sequence[str], tasks: Mapping[str, TaskInfo], applied_at: float
) -> float | None:
    """Seconds from the newest change among the tasks behind `added` (when each began to run) and
    `removed` (when the manager last changed it: its new desired state) to `applied_at`."""
    stamps = [parse_time(tasks[a].timestamp) for a in added if a in tasks]
    stamps += [parse_time(tasks[r].updated_at) for r in removed if r in tasks]
    known = [s for s in stamps if s is not None]
    return round(applied_at - max(known), 3) if known else None


def relevant(event: Mapping[str, Any], service: str) -> str:
    """What an engine event says about the service's tasks ("" when nothing)."""
    kind, action = str(event.get("Type") or ""), str(event.get("Action") or "")
    attributes = (event.get("Actor") or {}).get("Attributes") or {}
    if kind == "service" and attributes.get("name") == service:
        return f"service {action}"
    if kind == "node":
        return f"node {attributes.get('name', '?')} {action}"
    if kind == "container" and attributes.get(SERVICE_LABEL) == service:
        return f"task container {action}"
    return ""


def event_time(event: Mapping[str, Any], clock: Callable[[], float] = time.time) -> float:
    """When the engine says an event happened (UNIX time); now if it does not say."""
    nanos = event.get("timeNano")
    if isinstance(nanos, int) and nanos > 0:
        return nanos / 1e9
    return clock()


def describe(members: Sequence[Member], hosts: Iterable[str]) -> tuple[str, ...]:
    by_host = {m.host: m for m in members}
    return tuple(f"{by_host[h].name} {h} on {by_host[h].node}" if h in by_host else h for h in sorted(hosts))


# The watcher -----------------------------------------------------------------------------------
@dataclass
class _Seen:
    """What the watcher last read or wrote: read again on every reconcile and after a conflict, so
    a hot look costs one request (the tasks). Trusting it between reads is safe: a change is based
    on `spec` (a compare-and-swap), so a stale one fails and is read again, never undoes anything."""

    lb: LoadBalancer
    backend: SwarmReplicas
    spec: LabSpec
    config: str


class Watcher:
    """Looks at the service's tasks and, when the upstream is not on them, applies one that is."""

    def __init__(
        self,
        engine: SwarmEngine,
        lab: str,
        *,
        say: Callable[[str], None] = print,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.lab = lab
        self.say = say
        self.clock = clock
        self._nodes: dict[str, str] = {}
        self._quiet_reason = ""
        self._seen: _Seen | None = None

    def _note(self, kind: str, text: str) -> None:
        self.say(json.dumps({"kind": kind, "at": round(self.clock(), 3), "text": text}))

    def _node_names(self, tasks: Sequence[TaskInfo]) -> dict[str, str]:
        if any(t.node_id not in self._nodes for t in tasks):
            self._nodes = {n.id: n.hostname for n in self.engine.swarm_nodes()}
        return self._nodes

    def _quiet(self, reason: str) -> None:
        """Say why nothing is applied, once per reason."""
        if reason != self._quiet_reason and reason:
            self._note("waiting", reason)
        self._quiet_reason = reason

    def _read(self) -> _Seen | None:
        lb = LoadBalancer.find(self.engine, self.lab)
        if lb is None or lb.container.status != "running":
            return None
        backend = SwarmReplicas.find(self.engine, self.lab, lb.container)
        return _Seen(lb, backend, lb.spec(), lb.config())

    def look(self, trigger: str, woke_at: float | None = None, *, fresh: bool = True) -> Applied | None:
        """One look: apply an upstream on the serving tasks if the one that serves is not. With
        `fresh`, the load balancer's spec and config are read first; else what was seen last is used.

        The latency reported runs from the newest change of the tasks it follows (a task's start,
        or the manager's change of a task it drops); for tasks the manager has deleted already
        (a scale-down), from `woke_at`, the first event since the last look."""
        seen = self._read() if fresh or self._seen is None else self._seen
        self._seen = seen
        if seen is None:
            self._quiet("the load balancer does not run")
            return None
        tasks = self.engine.service_tasks(seen.backend.service, desired=None)
        members = members_of(self.lab, tasks, seen.backend.network, self._node_names(tasks))
        if not members:
            self._quiet("no task serves: the upstream stays as it is (nginx refuses an empty one)")
            return None
        config = render(seen.spec, members)[0]
        if config == seen.config:
            self._quiet("")
            return None
        before = set(upstream_hosts(seen.config))
        try:
            generation = seen.lb.apply(seen.spec, members, based_on=seen.spec)
        except Conflict:
            self._seen = None  # read again at the next look
            self._note("retry", "the spec changed meanwhile (lab configure?): looking again")
            return None
        except InvalidInput as exc:
            self._note("refused", f"{exc.message}: {exc.detail.strip()[-300:]}")
            return None
        seen.config = config
        at = self.clock()
        now = {m.host for m in members}
        added, removed = sorted(now - before), sorted(before - now)
        self._quiet_reason = ""
        known = task_by_address(tasks, seen.backend.network)
        latency = change_latency(added, removed, known, at)
        from_tasks = latency is not None and all(h in known for h in (*added, *removed))
        if not from_tasks and woke_at is not None:
            latency = round(at - woke_at, 3) if latency is None else max(latency, round(at - woke_at, 3))
        return Applied(
            at=round(at, 3),
            added=describe(members, added),
            removed=tuple(removed),
            members=len(members),
            latency_s=latency,
            measured_from="task" if from_tasks else ("event" if woke_at is not None else "task"),
            trigger=trigger,
            generation=generation,
        )

    def run(self, stop: threading.Event) -> None:
        """Look on every event and every RECONCILE seconds (HOT_POLL for a while after anything)."""
        wake = threading.Event()
        woken_by: list[tuple[str, float]] = []  # (what, when) since the last look
        lock = threading.Lock()

        def woken(reason: str, at: float) -> None:
            with lock:
                woken_by.append((reason, at))
            wake.set()

        service = LabSpec(name=self.lab).service_name
        follower = threading.Thread(
            target=self._follow_events, args=(service, woken, stop), name="lab-watch-events", daemon=True
        )
        follower.start()
        self.say(READY)
        hot_until = 0.0
        trigger, woke_at = "start", None
        while not stop.is_set():
            try:
                applied = self.look(trigger, woke_at, fresh=trigger in ("start", "reconcile"))
            except LabError as exc:
                self._note("error", exc.message)
                self._seen = None
                applied = None
            if applied is not None:
                self.say(applied.line())
                hot_until = time.monotonic() + HOT_WINDOW
                woke_at = None
            pause = HOT_POLL if time.monotonic() < hot_until else RECONCILE
            if wake.wait(pause):
                wake.clear()
                with lock:
                    trigger = "event: " + (woken_by[-1][0] if woken_by else "?")
                    first = min((at for _, at in woken_by), default=None)
                    woken_by.clear()
                woke_at = first if woke_at is None else woke_at
                hot_until = time.monotonic() + HOT_WINDOW
            else:
                trigger = "poll" if time.monotonic() < hot_until else "reconcile"
        self._close()

    _stream: EventStream | None = None

    def _follow_events(
        self, service: str, woken: Callable[[str, float], None], stop: threading.Event
    ) -> None:
        while not stop.is_set():
            try:
                self._stream = self.engine.events(EVENTS)
                for event in self._stream:
                    reason = relevant(event, service)
                    if reason:
                        woken(reason, event_time(event, self.clock))
                    if stop.is_set():
                        break
            except Exception as exc:  # noqa: BLE001 - the engine restarted, say: follow it again
                if not stop.is_set():
                    self._note("error", f"events stopped ({type(exc).__name__}); following them again")
            stop.wait(1.0)

    def _close(self) -> None:
        if self._stream is not None:
            self._stream.close()


def main() -> int:
    """The watcher container's program: LAB_NAME names the lab; SIGTERM ends it."""
    from lab.docker_ops import Engine

    lab = os.environ.get("LAB_NAME", "")
    if not lab:
        print("lab-watch: LAB_NAME is not set", flush=True)
        return 2
    stop = threading.Event()
    watcher = Watcher(Engine.connect(), lab, say=lambda line: print(line, flush=True))

    def terminate(_signum: int, _frame: FrameType | None) -> None:
        stop.set()
        watcher._close()

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    watcher.run(stop)
    return 0


def last_change(log: str) -> dict[str, Any] | None:
    """The last upstream change a watcher's log reports (lab status shows it)."""
    for line in reversed(log.splitlines()):
        text = line.strip()
        if text.startswith("{") and '"applied"' in text:
            try:
                found = json.loads(text)
            except ValueError:
                continue
            if isinstance(found, dict) and found.get("kind") == "applied":
                return found
    return None


if __name__ == "__main__":  # pragma: no cover - the container's entry point
    raise SystemExit(main())
