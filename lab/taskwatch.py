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


def describe(members: Sequence[Member], hosts: Iterable[str]) -> tuple[str, ...]:
    by_host = {m.host: m for m in members}
    return tuple(f"{by_host[h].name} {h} on {by_host[h].node}" if h in by_host else h for h in sorted(hosts))


# The watcher -----------------------------------------------------------------------------------
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

    def _note(self, kind: str, text: str) -> None:
        self.say(json.dumps({"kind": kind, "at": round(self.clock(), 3), "text": text}))

    def _node_names(self, tasks: Sequence[TaskInfo]) -> dict[str, str]:
        if any(t.node_id not in self._nodes for t in tasks):
            self._nodes = {n.id: n.hostname for n in self.engine.swarm_nodes()}
        return self._nodes

    def _quiet(self, reason: str) -> None:
        """Say why nothing is applied, once per reason."""
        if reason != self._quiet_reason:
            self._note("waiting", reason)
        self._quiet_reason = reason

    def look(self, trigger: str) -> Applied | None:
        """One look: apply an upstream on the serving tasks if the one that serves is not."""
        lb = LoadBalancer.find(self.engine, self.lab)
        if lb is None or lb.container.status != "running":
            self._quiet("the load balancer does not run")
            return None
        spec = lb.spec()
        backend = SwarmReplicas.find(self.engine, self.lab, lb.container)
        tasks = self.engine.service_tasks(backend.service, desired=None)
        members = members_of(self.lab, tasks, backend.network, self._node_names(tasks))
        if not members:
            self._quiet("no task serves: the upstream stays as it is (nginx refuses an empty one)")
            return None
        current = lb.config()
        if render(spec, members)[0] == current:
            self._quiet("")
            return None
        before = set(upstream_hosts(current))
        try:
            generation = lb.apply(spec, members, based_on=spec)
        except Conflict:
            self._note("retry", "the spec changed meanwhile (lab configure?): looking again")
            return None
        except InvalidInput as exc:
            self._note("refused", f"{exc.message}: {exc.detail.strip()[-300:]}")
            return None
        at = self.clock()
        now = {m.host for m in members}
        added, removed = sorted(now - before), sorted(before - now)
        self._quiet_reason = ""
        return Applied(
            at=round(at, 3),
            added=describe(members, added),
            removed=tuple(removed),
            members=len(members),
            latency_s=change_latency(added, removed, task_by_address(tasks, backend.network), at),
            trigger=trigger,
            generation=generation,
        )

    def run(self, stop: threading.Event) -> None:
        """Look on every event and every RECONCILE seconds (HOT_POLL for a while after anything)."""
        wake = threading.Event()
        triggers: list[str] = []
        lock = threading.Lock()

        def woken(reason: str) -> None:
            with lock:
                triggers.append(reason)
            wake.set()

        service = LabSpec(name=self.lab).service_name
        follower = threading.Thread(
            target=self._follow_events, args=(service, woken, stop), name="lab-watch-events", daemon=True
        )
        follower.start()
        self.say(READY)
        hot_until = 0.0
        trigger = "start"
        while not stop.is_set():
            try:
                applied = self.look(trigger)
            except LabError as exc:
                self._note("error", exc.message)
                applied = None
            if applied is not None:
                self.say(applied.line())
                hot_until = time.monotonic() + HOT_WINDOW
            pause = HOT_POLL if time.monotonic() < hot_until else RECONCILE
            if wake.wait(pause):
                wake.clear()
                with lock:
                    trigger = "event: " + (triggers[-1] if triggers else "?")
                    triggers.clear()
                hot_until = time.monotonic() + HOT_WINDOW
            else:
                trigger = "poll" if time.monotonic() < hot_until else "reconcile"
        self._close()

    _stream: EventStream | None = None

    def _follow_events(self, service: str, woken: Callable[[str], None], stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self._stream = self.engine.events(EVENTS)
                for event in self._stream:
                    reason = relevant(event, service)
                    if reason:
                        woken(reason)
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
