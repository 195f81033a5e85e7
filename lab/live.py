"""Changes to a running lab's balancing: `configure` and `reload`, each a tested, graceful reload.

Both go through the lab's LoadBalancer (lab.loadbalancer), which renders the config and the
stored spec from the same spec, tests the config with `nginx -t` beside the one that serves, and
only then reloads; the upstream is whatever the lab's replica backend serves.
"""

from __future__ import annotations

from lab.engine import ContainerEngine
from lab.orchestrator import find_running
from lab.progress import EventFn
from lab.spec import LabSpec


def configure(engine: ContainerEngine, name: str, **changes: object) -> LabSpec:
    """Change a running lab's balancing (method, weights, ...) with a tested, graceful reload.

    Weights are one per replica slot (`lab status` shows each replica's slot).
    """
    lab = find_running(engine, name)
    spec = lab.spec.with_changes(**changes)
    if spec == lab.spec:
        return spec
    lab.lb.apply(spec, lab.backend.members())
    return spec


def reload(engine: ContainerEngine, name: str, *, on_event: EventFn | None = None) -> None:
    """Test and gracefully reload the current config (what a config change costs, without a change)."""
    lab = find_running(engine, name)
    members = lab.backend.members()
    lab.lb.apply(lab.spec, members)
    if on_event is not None:
        on_event(f"nginx reloaded ({len(members)} replicas in the upstream)")
