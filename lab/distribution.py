"""How an image reaches the nodes: pulled from the lab registry, or streamed with save/load without one."""

from __future__ import annotations

import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lab import nodes, registry
from lab.engine import ContainerInfo
from lab.errors import RegistryError
from lab.progress import ProgressFn, quiet

if TYPE_CHECKING:
    from lab.docker_ops import Engine


@dataclass(frozen=True)
class Delivered:
    image: str
    method: str  # "registry" or "save-load"
    seconds: dict[str, float]  # per node
    total: float  # wall time for all nodes


def method_for(engine: Engine) -> str:
    """The registry when one runs (every node pulls the same digest), else save/load."""
    return "registry" if registry.running_registries(engine) else "save-load"


def deliver(
    engine: Engine,
    image: str,
    *,
    method: str | None = None,
    progress: ProgressFn = quiet,
    skip_present: bool = False,
    only: Collection[str] | None = None,
) -> Delivered:
    """Make `image` present on every running node.

    With "registry", `image` must be a reference into the lab registry (127.0.0.1:PORT/...);
    nodes pull it in parallel through their forwarders. With "save-load", the host engine's
    export is streamed into each node's `docker load`, one node at a time (the host's disk is
    the bottleneck either way). With `skip_present`, nodes that hold `image` already are left out;
    with `only`, every node not named in it.
    """
    chosen = method or method_for(engine)
    targets = [c for c in nodes.node_containers(engine) if c.status == "running"]
    if only is not None:
        targets = [c for c in targets if c.name in only]
    if skip_present:
        targets = [c for c in targets if not has_image(engine, c, image)]
    began = time.monotonic()
    if chosen == "registry":
        nodes.wire_registries(engine, targets)
        with ThreadPoolExecutor(max_workers=len(targets) or 1) as pool:
            timings = dict(pool.map(lambda c: _pull(engine, c, image), targets))
    elif chosen == "save-load":
        timings = {}
        for index, container in enumerate(targets):
            progress(f"loading {image} into {container.name}", index / max(len(targets), 1))
            timings[container.name] = _load(engine, container, image)
    else:
        raise ValueError(f"unknown delivery method {chosen!r}")
    progress(f"{image} is on {len(targets)} nodes", 1.0)
    return Delivered(image, chosen, timings, time.monotonic() - began)


def has_image(engine: Engine, container: ContainerInfo, image: str) -> bool:
    """Whether the engine inside node `container` holds `image`."""
    code, _ = engine.exec(container, ["docker", "image", "inspect", "--format", "{{.Id}}", image])
    return code == 0


def _pull(engine: Engine, container: ContainerInfo, image: str) -> tuple[str, float]:
    began = time.monotonic()
    code, output = engine.exec(container, ["docker", "pull", "--quiet", image])
    if code != 0:
        raise RegistryError(f"node {container.name} could not pull {image}: {output.strip()}")
    return container.name, time.monotonic() - began


def _load(engine: Engine, container: ContainerInfo, image: str) -> float:
    began = time.monotonic()
    code, output = engine.save_image_into(container, image, ["docker", "load", "--quiet"])
    if code != 0:
        raise RegistryError(f"node {container.name} could not load {image}: {output.strip()}")
    return time.monotonic() - began
