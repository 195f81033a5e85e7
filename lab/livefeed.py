"""Feeds a `LiveModel` from the engine: the load balancer's followed log and the lab's events.

Three threads, none of which polls the log:
- the follower streams the load balancer's stdout (`docker logs --follow --timestamps --since`);
  the stream ends when the container stops, and is followed again from a moment before the
  last counted line once it runs again (the model skips what it has already counted);
- two event listeners (the lab's containers by label, its backend network by name) mark the
  membership as stale, and note reloads as they happen;
- the refresher takes a new membership snapshot when marked (and every few seconds anyway).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from lab import labels
from lab.engine import ContainerInfo
from lab.errors import LabError
from lab.livestate import (
    LabEvent,
    LiveModel,
    LiveState,
    Membership,
    ReplicaInfo,
    config_generation,
    engine_event,
    upstream_hosts,
    upstream_weights,
)
from lab.loadbalancer import LoadBalancer
from lab.render import BACKEND_PORT
from lab.replicas import ContainerReplicas, Member
from lab.spec import LabSpec
from lab.swarm_replicas import SwarmReplicas

if TYPE_CHECKING:
    from lab.docker_ops import Engine, Follow

REFRESH_EVERY_S = 5.0  # a snapshot at least this often, events or not
SETTLE_S = 0.03  # a burst of events (a reload, a scale) becomes one snapshot
RETRY_S = 0.25  # wait before following again a log that ended without a line
STATE_CACHE_S = 0.2  # several viewers share one computed state
_REFRESHING_ACTIONS = frozenset(
    {"create", "start", "restart", "die", "stop", "kill", "pause", "unpause", "destroy", "rename", "oom",
     "extract-to-dir", "connect", "disconnect"}
)  # fmt: skip


def backend_network(engine: Engine, name: str) -> str:
    """The network lab `name`'s load balancer reaches its replicas on (found by label; the usual
    name when there is no load balancer to ask)."""
    lb = LoadBalancer.find(engine, name)
    if lb is not None:
        with contextlib.suppress(LabError):
            return ContainerReplicas.find(engine, name, lb.container).network
    return LabSpec(name=name).backend_network


def snapshot(engine: Engine, name: str, backend: str | None = None) -> Membership:
    """What the lab is made of now, and what its load balancer's config says."""
    containers = engine.containers(labels.lab_filter(name))
    lb = next((c for c in containers if c.labels.get(labels.ROLE) == labels.ROLE_LB), None)
    network = backend or backend_network(engine, name)
    replicas = tuple(
        _replica(engine, c, network) for c in containers if c.labels.get(labels.ROLE) == labels.ROLE_WEB
    )
    services = engine.services(labels.lab_filter(name, labels.ROLE_SERVICE))
    if services:  # a swarm lab: its replicas are the service's tasks, on whichever node
        tasks = SwarmReplicas(engine, name, network, services[0].name).replicas()
        replicas = tuple(_task(m) for m in tasks)
    if lb is None:
        return Membership(lab=name, lb_status="missing", replicas=replicas)
    balancer = LoadBalancer(engine, lb)
    spec: LabSpec | None
    try:
        spec = balancer.spec()
    except Exception:  # noqa: BLE001 - removed meanwhile, or no label: the next snapshot tells
        spec = None
    try:
        config = balancer.config()
    except Exception:  # noqa: BLE001 - same
        config = ""
    weights, backup = upstream_weights(config)
    return Membership(
        lab=name,
        lb_status=lb.status,
        method=spec.algorithm if spec else "",
        weights=weights,
        backup=backup,
        generation=config_generation(config),
        upstream=upstream_hosts(config),
        replicas=replicas,
    )


def _replica(engine: Engine, container: ContainerInfo, backend: str) -> ReplicaInfo:
    ip = container.address(backend)
    stopped = container.status in ("exited", "dead")
    return ReplicaInfo(
        name=container.name,
        index=labels.replica_index(container.labels),
        status=container.status,
        connected=container.on(backend),
        address=f"{ip}:{BACKEND_PORT}" if ip else None,
        version=container.labels.get(labels.SITE_VERSION, ""),
        exit_code=engine.state(container).exit_code if stopped else None,
    )


def _task(member: Member) -> ReplicaInfo:
    return ReplicaInfo(
        name=member.name,
        index=member.slot,
        status=member.status,
        connected=bool(member.address),
        address=f"{member.address}:{BACKEND_PORT}" if member.address else None,
        version=member.version,
        exit_code=None,
    )


class LiveFeed:
    """Live counters and events of lab `name`; `state()` from any thread, `close()` to stop."""

    def __init__(self, engine: Engine, name: str, *, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.name = name
        self._clock = clock
        self.model = LiveModel(name, since=clock())
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._dirty = threading.Event()
        self._streams: set[Follow[Any]] = set()
        self._threads: list[threading.Thread] = []
        self._reload_execs: set[str] = set()
        self._cached: tuple[float, LiveState] | None = None
        self.errors = 0  # engine errors met while following (each one is retried)
        self.backend = ""  # the network the replicas serve on (found at start)

    # Life cycle ---------------------------------------------------------------------------
    def start(self) -> LiveFeed:
        """Take the first snapshot (raises LabError if there is no such lab) and start following."""
        self.backend = backend_network(self.engine, self.name)
        first = snapshot(self.engine, self.name, self.backend)
        if first.lb_status == "missing" and not first.replicas:
            raise LabError(f"there is no lab named {self.name!r}; start one with `lab up --name {self.name}`")
        with self._lock:
            self.model.update(first, self._clock())
        backend = self.backend
        targets: list[tuple[str, Callable[[], None]]] = [
            ("log", self._follow_loop),
            ("containers", lambda: self._events_loop(labels.lab_filter(self.name) | {"type": ["container"]})),
            ("network", lambda: self._events_loop({"type": ["network"], "network": [backend]})),
            ("refresh", self._refresh_loop),
        ]
        for what, target in targets:
            thread = threading.Thread(target=target, name=f"lab-feed-{what}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def close(self, timeout: float = 2.0) -> None:
        """Stop every thread and close the engine streams."""
        self._stop.set()
        self._dirty.set()
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> LiveFeed:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    # What the views use ---------------------------------------------------------------------
    def state(self) -> LiveState:
        now = self._clock()
        with self._lock:
            if self._cached is not None and now - self._cached[0] < STATE_CACHE_S:
                return self._cached[1]
            state = self.model.state(now)
            self._cached = (now, state)
            return state

    def note(self, kind: str, text: str) -> LabEvent:
        """Add an event of our own (an action taken from a view)."""
        with self._lock:
            self._cached = None
            return self.model.note(kind, text, self._clock())

    # Threads ----------------------------------------------------------------------------------
    def _track(self, stream: Follow[Any]) -> bool:
        with self._lock:
            if self._stop.is_set():
                stream.close()
                return False
            self._streams.add(stream)
            return True

    def _untrack(self, stream: Follow[Any]) -> None:
        with self._lock:
            self._streams.discard(stream)
        stream.close()

    def _load_balancer(self) -> ContainerInfo | None:
        found = self.engine.containers(labels.lab_filter(self.name, labels.ROLE_LB))
        return found[0] if found else None

    def _follow_loop(self) -> None:
        while not self._stop.is_set():
            counted = 0
            try:
                lb = self._load_balancer()
                if lb is not None and lb.status == "running":
                    stream = self.engine.follow_log(lb, self.model.reader.since(self.model.since))
                    if self._track(stream):
                        with self._lock:
                            self.model.reader.begin()
                        try:
                            for chunk in stream:
                                with self._lock:
                                    counted += self.model.reader.feed(chunk)
                        finally:
                            self._untrack(stream)
            except Exception:  # noqa: BLE001 - the engine hiccupped or the container went: follow again
                self.errors += 1
            if not counted:
                self._stop.wait(RETRY_S)  # stopped or restarting: look again in a moment
            self._dirty.set()  # the stream ended: the load balancer stopped, perhaps

    def _events_loop(self, filters: dict[str, list[str]]) -> None:
        while not self._stop.is_set():
            try:
                stream = self.engine.events(filters)
                if self._track(stream):
                    try:
                        self._dirty.set()  # anything that happened while not listening
                        for event in stream:
                            self._on_event(event)
                    finally:
                        self._untrack(stream)
            except Exception:  # noqa: BLE001 - reconnect
                self.errors += 1
            self._stop.wait(RETRY_S)

    def _on_event(self, event: dict[str, Any]) -> None:
        action = str(event.get("Action") or event.get("status") or "")
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        told = engine_event(action, attributes)
        if told is not None:
            self.note(*told)
        if action.startswith("exec_start:"):
            if told is not None and told[0] == "reload":
                self._reload_execs.add(str(attributes.get("execID", "")))
            return
        if action == "exec_die":
            if attributes.get("execID") in self._reload_execs:
                self._reload_execs.discard(str(attributes.get("execID")))
                self._dirty.set()
            return
        if action in _REFRESHING_ACTIONS:
            self._dirty.set()

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait(REFRESH_EVERY_S)
            if self._stop.wait(SETTLE_S):
                return
            self._dirty.clear()
            try:
                membership = snapshot(self.engine, self.name, self.backend)
            except Exception:  # noqa: BLE001 - try again at the next event or tick
                self.errors += 1
                continue
            with self._lock:
                self.model.update(membership, self._clock())
                self._cached = None


@contextlib.contextmanager
def following(engine: Engine, name: str) -> Iterator[LiveFeed]:
    """`with following(engine, name) as feed:` a started LiveFeed, closed on the way out."""
    feed = LiveFeed(engine, name).start()
    try:
        yield feed
    finally:
        feed.close()
