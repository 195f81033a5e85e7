"""The operations of experiments on a swarm lab: a broken task, and a node that dies.

Swarm repairs what breaks by itself: a dead task is replaced in its slot (the same name, a new
address), the tasks of a dead node start on the others. So what is measured is how long that
takes until the upstream (kept by the watcher) holds the replacements, and what the load saw
meanwhile; the check after the step is that every replica answers again and nginx no longer
tries the dead tasks' addresses.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from lab import chaos, swarm_chaos
from lab.experiment.verdict import SETTLE, Step
from lab.replicas import Member
from lab.swarm_replicas import SwarmReplicas

if TYPE_CHECKING:
    from lab.experiment.run import _Run

POLL = 0.2


def dead_name(member: Member) -> str:
    """How a dead task is named in the checks: its replica's name is its replacement's now."""
    return f"{member.name} (dead task {member.address})"


def _backend(run: _Run) -> SwarmReplicas:
    return cast(SwarmReplicas, run.lab.backend)


def _recovered(run: _Run, replicas: int, dead: Sequence[Member], node: str = "") -> list[Member] | None:
    """The serving tasks once `replicas` serve, none of them `dead` (nor on `node`), and the upstream
    holds exactly them; None before."""
    members = _backend(run).members()
    gone = {m.address for m in dead}
    if len({m.slot for m in members}) != replicas or len(members) != replicas:
        return None
    if any(m.address in gone or (node and m.node == node) for m in members):
        return None
    if set(run.lab.lb.upstream()) != {m.address for m in members}:
        return None
    return members


def failover(run: _Run) -> tuple[list[Step], str]:
    """Break one task (kill, stop or pause); Swarm replaces it in its slot, the watcher swaps its
    address in the upstream. The step ends once the replacement serves from the upstream."""
    from lab.experiment.plan import schedule

    plan, rec, lab, target = run.plan, run.rec, run.lab, run.target
    (due,) = schedule(plan.duration, 1)
    run.wait_until(due)
    replicas = len({m.slot for m in _backend(run).members()})
    label = f"{plan.how} {target}"
    begin = rec.add(f"{label} begins", "step")
    broken = swarm_chaos.break_task(run.engine, lab, target, plan.how, rec.on_event)
    rec.add(f"{label} ends: Swarm replaces it", "step")
    end = _wait(run, replicas, [broken])
    if end is not None:
        rec.add(f"{target} serves again from a new task, {end - begin:.1f} s after the {plan.how}", "step")
        run.extra["replaced_after_s"] = round(end - begin, 2)
    else:
        rec.add(f"{target} was not replaced before the load ended", "note")
    dead = dead_name(broken)
    check = f"after {label}: every replica answers again, nginx no longer tries the dead task"
    step = Step(label, begin, end if end is not None else rec.now(), list(lab.replicas), [dead],
                settle=SETTLE, addresses={dead: broken.address}, check=check)  # fmt: skip
    run.extra["broken"] = target
    return [step], ""


def node_failure(run: _Run) -> tuple[list[Step], str]:
    """Kill a worker node; the manager marks it down when its heartbeats stop, Swarm starts its
    tasks on the other nodes, and the watcher moves the upstream. The step ends once every
    replica serves again, none on the dead node: that is the time to recover."""
    from lab.experiment.plan import schedule

    plan, rec, lab = run.plan, run.rec, run.lab
    backend = _backend(run)
    before = backend.members()
    replicas = len({m.slot for m in before})
    node = swarm_chaos.pick_node(run.engine, before, plan.node).name
    (due,) = schedule(plan.duration, 1)
    run.wait_until(due)
    before = backend.members()
    dead = [m for m in before if m.node == node]
    label = f"kill node {node}"
    begin = rec.add(f"{label} begins ({len(dead)} of {replicas} tasks on it)", "step")
    chaos.kill_node(run.engine, run.name, node, on_event=rec.on_event)
    rec.add(f"{label} ends", "step")
    marked, moved = None, {}
    end = None
    while run.load.alive():
        if marked is None and _state(run, node) == "down":
            marked = rec.add(
                f"the manager marks {node} down, {rec.now() - begin:.1f} s after the kill", "operation"
            )
        members = backend.members()
        for m in members:
            if m.slot in {d.slot for d in dead} and m.node != node and m.slot not in moved:
                moved[m.slot] = f"{m.name}: {node} -> {m.node}"
                rec.add(
                    f"task {m.name} rescheduled from {node} to {m.node}, {rec.now() - begin:.1f} s after the kill",
                    "operation",
                )
        if _recovered(run, replicas, dead, node) is not None:
            end = rec.add(f"recovered: {replicas} tasks serve from the upstream, none on {node}, "
                          f"{rec.now() - begin:.1f} s after the kill", "step")  # fmt: skip
            break
        time.sleep(POLL)
    if end is None:
        rec.add(f"not recovered before the load ended ({len(moved)} of {len(dead)} tasks moved)", "note")
    run.extra.update(
        killed_node=node,
        tasks_on_node=[m.name for m in dead],
        rescheduled=sorted(moved.values()),
        node_down_after_s=round(marked - begin, 2) if marked is not None else None,
        time_to_recover_s=round(end - begin, 2) if end is not None else None,
    )
    names = {dead_name(m): m.address for m in dead}
    check = f"after {label}: every replica answers again, nginx no longer tries the dead node's tasks"
    step = Step(label, begin, end if end is not None else rec.now(), list(lab.replicas), sorted(names),
                settle=SETTLE, addresses=names, check=check)  # fmt: skip
    return [step], ""


def _state(run: _Run, node: str) -> str:
    return next((n.state for n in _backend(run).engine.swarm_nodes() if n.hostname == node), "")


def _wait(run: _Run, replicas: int, dead: Sequence[Member]) -> float | None:
    """When the service serves `replicas` again without the `dead` tasks (None: not before the load ended)."""
    while run.load.alive():
        if _recovered(run, replicas, dead) is not None:
            return run.rec.now()
        time.sleep(POLL)
    return None
