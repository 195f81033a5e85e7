"""Breaking a swarm lab the way real clusters break: a task's container, or a whole node.

A task runs on some node's engine. On the manager (this engine) its container is at hand; on a
node of this desk (lab.nodes) it is reached through that node's own engine (`docker exec NODE
docker kill ...`); on a machine elsewhere it cannot be reached from here, and the error says so.
Swarm then does what it does in production: a task that died, stopped or stopped answering its
health check is replaced, and the tasks of a node that went down are started elsewhere. The
watcher (lab.taskwatch) moves the upstream along. `restore` starts killed nodes again, thaws
frozen tasks, and waits until the service serves all its replicas again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from lab import labels, nodes, swarm
from lab.engine import ContainerEngine, ContainerInfo
from lab.errors import InvalidInput, LabError
from lab.progress import EventFn
from lab.replicas import Member
from lab.swarm_replicas import SwarmReplicas, as_swarm

if TYPE_CHECKING:
    from lab.docker_ops import Engine
    from lab.orchestrator import RunningLab

TASK_HOW = ("kill", "stop", "pause")  # disconnect: a task's attachments are Swarm's, not ours
NODE_READY_TIMEOUT = 90.0  # seconds for a restarted node's engine to start and the manager to see it ready


def _say(on_event: EventFn | None, text: str) -> None:
    if on_event is not None:
        on_event(text)


def _desk(engine: ContainerEngine) -> Engine:
    return cast("Engine", engine)  # the desk's nodes are containers of this engine


# A task ----------------------------------------------------------------------------------------
def find_task(lab: RunningLab, replica: str) -> Member:
    """A serving task of the lab by name (`lab-web-2`) or slot (`2`)."""
    members = lab.backend.members()
    for member in members:
        if replica in (member.name, str(member.slot)):
            return member
    known = ", ".join(sorted({m.name for m in members})) or "none"
    raise InvalidInput(f"lab {lab.spec.name!r} has no running task {replica!r} (tasks: {known})")


def break_task(
    engine: ContainerEngine, lab: RunningLab, replica: str, how: str, on_event: EventFn | None = None
) -> Member:
    """kill (SIGKILL), stop (the stop signal, then SIGKILL) or pause (frozen: it fails its health
    check and Swarm replaces it) the container of one task, on whichever node it runs."""
    if how not in TASK_HOW:
        raise InvalidInput(
            f"{how} is not available on a swarm lab (a task's networks belong to Swarm); "
            f"use {', '.join(TASK_HOW)}"
        )
    member = find_task(lab, replica)
    backend = cast(SwarmReplicas, lab.backend)
    task = next((t for t in backend.tasks() if t.networks.get(backend.network) == member.address), None)
    if task is None or not task.container_id:
        raise LabError(f"task {member.name} has no container yet; try again in a moment")
    _on_its_node(engine, member, task.node_id, [how, task.container_id])
    _say(
        on_event, f"chaos: {how} {member.name} (task at {member.address} on {member.node}); Swarm replaces it"
    )
    return member


def _on_its_node(engine: ContainerEngine, member: Member, node_id: str, command: list[str]) -> None:
    """Run `docker COMMAND` against the engine the task runs on."""
    action, container_id = command
    if node_id == swarm.view(as_swarm(engine)).node_id:
        target = ContainerInfo(container_id, member.name, {}, "running", member.image)
        if action == "kill":
            engine.kill([target])
        elif action == "stop":
            engine.stop(target, 10)
        else:
            engine.pause(target)
        return
    node = next((c for c in nodes.node_containers(_desk(engine)) if c.name == member.node), None)
    if node is None:
        raise LabError(
            f"task {member.name} runs on node {member.node}, whose engine cannot be reached from here "
            "(only this engine and the nodes of this desk can)"
        )
    code, output = engine.exec(node, ["docker", action, container_id])
    if code != 0:
        raise LabError(f"could not {action} {member.name} on {member.node}: {output.strip()}")


# A node -----------------------------------------------------------------------------------------
def workers(engine: ContainerEngine) -> list[ContainerInfo]:
    """The nodes of this desk that run (workers of this engine's swarm)."""
    return [c for c in nodes.node_containers(_desk(engine)) if c.status == "running"]


def pick_node(engine: ContainerEngine, members: Sequence[Member], wanted: str | None) -> ContainerInfo:
    """The node to kill: `wanted`, else the worker running most of `members` (the first by name on a tie)."""
    running = workers(engine)
    if not running:
        raise InvalidInput("there is no worker node to kill: `lab nodes add 2` starts two on this desk")
    if wanted is not None:
        found = next((c for c in running if c.name == wanted), None)
        if found is None:
            names = ", ".join(c.name for c in running)
            raise InvalidInput(f"there is no running worker node {wanted!r} (running: {names})")
        return found
    by_name = sorted(running, key=lambda c: c.name)
    return max(by_name, key=lambda c: sum(1 for m in members if m.node == c.name))  # the first of equals


def kill_node(
    engine: ContainerEngine, lab: RunningLab | None, wanted: str | None, on_event: EventFn | None = None
) -> str:
    """SIGKILL a worker node's container, as a machine that loses power: its engine and every task
    on it die at once, and the manager learns of it only when its heartbeats stop."""
    members = lab.backend.members() if lab is not None else []
    node = pick_node(engine, members, wanted)
    on_it = sorted(m.name for m in members if m.node == node.name)
    engine.kill([node])
    tasks = f"{len(on_it)} tasks of lab {lab.spec.name} on it ({', '.join(on_it)})" if lab else "no lab asked"
    _say(on_event, f"chaos: killed node {node.name}: {tasks}")
    return node.name


def restart_nodes(engine: ContainerEngine, on_event: EventFn | None = None) -> list[str]:
    """Start the desk's nodes that were killed, and wait until the manager sees each ready again."""
    desk = _desk(engine)
    stopped = [c for c in nodes.node_containers(desk) if c.status in ("exited", "dead", "created")]
    for container in stopped:
        nodes.forget_gone_networks(desk, container)
        engine.start(container)
    if not stopped:
        return []
    nodes.wire_registries(
        desk, [c for c in nodes.node_containers(desk) if c.name in {s.name for s in stopped}]
    )
    waiting = {c.name for c in stopped}
    deadline = time.monotonic() + NODE_READY_TIMEOUT
    while waiting:
        for entry in desk.swarm_nodes():
            if entry.hostname in waiting and entry.state == "ready":
                waiting.discard(entry.hostname)
                _say(on_event, f"chaos: node {entry.hostname} is back and ready")
        if waiting and time.monotonic() > deadline:
            raise LabError(
                f"node(s) {', '.join(sorted(waiting))} did not come back within {NODE_READY_TIMEOUT:.0f} s"
            )
        if waiting:
            time.sleep(0.5)
    return sorted(c.name for c in stopped)


# Restore ---------------------------------------------------------------------------------------
def restore(engine: ContainerEngine, lab: RunningLab, on_event: EventFn | None = None) -> list[str]:
    """Start killed nodes, thaw frozen tasks, and return once the service serves its replicas again
    with the upstream on them (Swarm has replaced what died by then, or does so now)."""
    fixed = [f"node {n}" for n in restart_nodes(engine, on_event)]
    fixed += _thaw(engine, lab)
    backend = cast(SwarmReplicas, lab.backend)
    service = as_swarm(engine).service(backend.service)
    replicas = service.replicas if service and service.replicas is not None else lab.spec.replicas
    backend.follow(lab.spec, replicas, lab.lb, None)
    if fixed:
        _say(on_event, f"chaos: restored {', '.join(fixed)}")
    return fixed


def _thaw(engine: ContainerEngine, lab: RunningLab) -> list[str]:
    """Unpause the lab's frozen task containers, here and on the desk's nodes."""
    thawed = []
    selector = labels.lab_filter(lab.spec.name, labels.ROLE_TASK)
    for container in engine.containers(selector):
        if container.status == "paused":
            engine.unpause(container)
            thawed.append(container.name)
    for node in workers(engine):
        listing = [
            "docker",
            "ps",
            "-q",
            "--filter",
            f"label={labels.NAME}={lab.spec.name}",
            "--filter",
            "status=paused",
        ]
        code, output = engine.exec(node, listing)
        for container_id in output.split() if code == 0 else []:
            engine.exec(node, ["docker", "unpause", container_id])
            thawed.append(f"{container_id[:12]} on {node.name}")
    return thawed
