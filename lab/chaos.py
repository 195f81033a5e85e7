"""Break replicas the way real ones break, and put them right again (`lab chaos`).

A swarm lab's replicas are tasks, broken where they run (lab.swarm_chaos), which also kills nodes.
"""

from __future__ import annotations

import os
import signal
import time

from lab import labels, swarm_chaos
from lab.engine import ContainerEngine as Engine
from lab.engine import ContainerInfo
from lab.errors import InvalidInput, LabError
from lab.loadbalancer import LoadBalancer
from lab.orchestrator import find_running
from lab.progress import EventFn
from lab.replicas import probe_http

HOW = ("kill", "stop", "pause", "disconnect")


def find_replica(engine: Engine, name: str, replica: str) -> ContainerInfo:
    """A replica of lab `name` by container name (`lab-web-2`) or number (`2`)."""
    web = engine.containers(labels.lab_filter(name, labels.ROLE_WEB))
    for container in web:
        if replica in (container.name, container.labels.get(labels.REPLICA)):
            return container
    known = ", ".join(sorted(c.name for c in web)) or "none"
    raise InvalidInput(f"lab {name!r} has no replica {replica!r} (replicas: {known})")


def break_replica(
    engine: Engine, name: str, replica: str, how: str = "kill", *, on_event: EventFn | None = None
) -> None:
    """kill: SIGKILL, as a crash. stop: a graceful stop. pause: frozen (accepts, never answers).
    disconnect: cut from the backend network, so packets to it go nowhere."""
    if how not in HOW:
        raise InvalidInput(f"unknown way to break a replica {how!r}; choose one of {', '.join(HOW)}")
    lab = find_running(engine, name)  # the lab must be up
    if lab.spec.engine == "swarm":
        swarm_chaos.break_task(engine, lab, replica, how, on_event)
        return
    container = find_replica(engine, name, replica)
    if container.status != "running":
        raise InvalidInput(
            f"replica {container.name} is {container.status} already; `lab chaos restore` first"
        )
    if how == "kill":
        engine.kill([container])
    elif how == "stop":
        engine.stop(container, 10)
    elif how == "pause":
        engine.pause(container)
    else:
        engine.detach(lab.backend.network, container)
    if on_event:
        on_event(f"chaos: {how} {container.name}")


def restore(engine: Engine, name: str, *, on_event: EventFn | None = None) -> list[str]:
    """Bring every broken replica back and reload nginx so it resolves their (new) addresses."""
    lab = find_running(engine, name)
    if lab.spec.engine == "swarm":
        return swarm_chaos.restore(engine, lab, on_event)
    backend = lab.backend.network
    fixed = []
    for container in engine.containers(labels.lab_filter(name, labels.ROLE_WEB)):
        if container.status == "paused":
            engine.unpause(container)
        elif container.status in ("exited", "created", "dead"):
            engine.start(container)
        elif not container.on(backend):
            engine.attach(backend, container)
        else:
            continue
        fixed.append(container.name)
    if fixed:
        _wait_listening(engine, name, fixed)
        lab.lb.apply(lab.spec, lab.backend.members())
        if on_event:
            on_event(f"chaos: restored {', '.join(sorted(fixed))}")
    return sorted(fixed)


def _wait_listening(engine: Engine, name: str, names: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for container in engine.containers(labels.lab_filter(name, labels.ROLE_WEB)):
            if container.name in pending and probe_http(engine, container) == "ok":
                pending.discard(container.name)
        if pending:
            time.sleep(0.1)
    if pending:
        raise LabError(f"restored replica(s) did not answer in time: {', '.join(sorted(pending))}")


def kill_lb(engine: Engine, name: str, *, on_event: EventFn | None = None) -> None:
    """SIGKILL nginx's master from outside, as a crash would: the engine sees the container die on
    its own, and the restart policy brings it back (an API kill would count as a manual stop)."""
    lab = find_running(engine, name)
    pid = lab.lb.pid
    if pid <= 0:
        raise LabError(f"the load balancer of lab {name!r} has no process to kill")
    try:
        os.kill(pid, signal.SIGKILL)
    except PermissionError:
        raise LabError("killing the load balancer's process needs root on the Docker host") from None
    except ProcessLookupError:
        raise LabError("the load balancer's process is not visible here (a remote Docker engine?)") from None
    if on_event:
        on_event(f"chaos: killed the load balancer {lab.lb.name} (pid {pid})")


def kill_node(engine: Engine, name: str, node: str | None = None, *, on_event: EventFn | None = None) -> str:
    """SIGKILL a worker node of this desk: `node`, else the one running most of lab `name`'s tasks
    (the first worker when no such swarm lab runs). Returns the node killed."""
    lab = find_running(engine, name) if LoadBalancer.find(engine, name) is not None else None
    if lab is not None and lab.spec.engine != "swarm":
        lab = None  # a lab of one engine has no task on any node
    return swarm_chaos.kill_node(engine, lab, node, on_event)
