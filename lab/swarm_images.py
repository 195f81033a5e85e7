"""How a swarm lab's site image reaches every node that may run one of its tasks.

A swarm of this engine alone needs nothing. Nodes on this desk get it through the lab registry
when one runs (the service then names it by digest, so every node runs the same build; the nodes
pull it at once, in parallel, so the tasks start without waiting for a pull), else streamed in
with `docker save` / `docker load`. Nodes elsewhere (a real multi-host swarm) need a registry
they can reach: the README says how.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from lab import nodes, registry
from lab.distribution import deliver
from lab.progress import ProgressFn
from lab.replicas import SiteImage

if TYPE_CHECKING:
    from lab.docker_ops import Engine
    from lab.engine import SwarmEngine


def place_image(engine: SwarmEngine, image: SiteImage, progress: ProgressFn) -> SiteImage:
    """`image` as the service should name it, present (or pullable) on every node of this desk."""
    desk = cast("Engine", engine)  # the desk's nodes are containers of this engine
    ready = {n.hostname for n in engine.swarm_nodes() if n.state == "ready"}
    # Only nodes of this swarm that are ready can run a task: one still joining (or failing to, in
    # someone else's test) is not waited for.
    running = [c for c in nodes.node_containers(desk) if c.status == "running" and c.name in ready]
    if not running:
        return image
    targets = {c.name for c in running}
    found = registry.running_registries(desk)
    if image.ref.startswith(f"{registry.HOST}:"):  # in a lab registry already: the nodes pull it
        deliver(desk, image.ref, method="registry", skip_present=True, only=targets)
        return image
    if found:
        names, _port = found[0]
        progress(f"pushing {image.ref} to the lab registry {names.name}", None)
        pushed = registry.push_image(desk, image.ref, image.version, registry=names.name)
        progress(f"{len(running)} nodes pull {pushed.reference}", None)
        deliver(desk, pushed.pinned, method="registry", skip_present=True, only=targets)
        return SiteImage(pushed.pinned, image.version)
    progress(
        f"loading {image.ref} into {len(running)} nodes (no registry runs: docker save | docker load)", None
    )
    deliver(desk, image.ref, method="save-load", progress=progress, skip_present=True, only=targets)
    return image


def place_lab_images(engine: SwarmEngine, progress: ProgressFn) -> list[str]:
    """Put the image of every swarm lab's service on the desk's nodes (after `lab nodes add`)."""
    from lab import labels

    placed = []
    for service in engine.services({"label": [f"{labels.ROLE}={labels.ROLE_SERVICE}"]}):
        version = service.container_labels.get(labels.SITE_VERSION, "")
        place_image(engine, SiteImage(service.image, version), progress)
        placed.append(service.image)
    return placed
