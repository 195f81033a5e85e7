#!/usr/bin/env python3
"""What the swarm groundwork costs on this desk: node start+join, and getting an image onto nodes.

In one invocation: starts a registry and K nodes (timing `lab nodes add`, initialising a swarm if
the engine has none), pushes the site image, then for several rounds, alternating the order, puts
the site image on every node through the registry (nodes pull in parallel) and by save/load (one
node at a time), removing it from the nodes between methods. Prints medians and the ratio
registry / save-load. With --builds it also times building the registry and node images from
scratch under throw-away tags (about 1.5 min). Everything it made is removed; a swarm it
initialised is left. Run it as `python bench/swarm_desk.py` (after `make setup`).
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import nodes, registry, swarm  # noqa: E402
from lab.distribution import deliver  # noqa: E402
from lab.docker_ops import Engine  # noqa: E402
from lab.images import ensure_base_images, ensure_standins  # noqa: E402
from lab.site import ensure_site_image  # noqa: E402
from lab.spec import DEFAULT_SITE  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def time_builds(engine: Engine) -> None:
    """Build both images from nothing under throw-away tags, one after the other, then remove them."""
    suffix = uuid.uuid4().hex[:6]
    for standin in (registry.REGISTRY_IMAGE, nodes.NODE_IMAGE):
        scratch = dataclasses.replace(
            standin,
            tag=f"lab-bench/{standin.name}:{suffix}",
            rootfs=f"lab-bench/{standin.name}-rootfs:{suffix}",
        )
        began = time.monotonic()
        try:
            ensure_standins(engine, [scratch])
            print(f"build {standin.name} image from scratch: {time.monotonic() - began:.1f} s")
        finally:
            for tag in (scratch.tag, scratch.rootfs):
                engine.remove_image(tag)


def clear(engine: Engine, image: str) -> None:
    for container in nodes.node_containers(engine):
        engine.exec(container, ["docker", "rmi", image])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2, help="nodes to start (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per delivery method (default 3)")
    parser.add_argument("--builds", action="store_true", help="also time the image builds from scratch")
    args = parser.parse_args()
    engine = Engine.connect()
    if args.builds:
        time_builds(engine)
    base = ensure_base_images(engine)
    site, _ = ensure_site_image(engine, DEFAULT_SITE, base.httpd, lambda _s, _f: None)
    ensure_standins(engine, [registry.REGISTRY_IMAGE, nodes.NODE_IMAGE])
    name, port, prefix = f"bench-reg-{uuid.uuid4().hex[:6]}", free_port(), f"bench-{uuid.uuid4().hex[:6]}"
    init = swarm.view(engine).state == "inactive"
    try:
        began = time.monotonic()
        registry.up(engine, name, port)
        print(f"registry up (image present): {time.monotonic() - began:.1f} s")
        began = time.monotonic()
        added = nodes.add(engine, args.nodes, init=init, prefix=prefix)
        print(
            f"lab nodes add {args.nodes}: {time.monotonic() - began:.1f} s in all "
            f"({added.seconds:.1f} s from the first container to every node Ready; swarm initialised: {init})"
        )
        pushed = registry.push_image(engine, site, "bench", registry=name)
        print(f"push of the site image to an empty registry: {pushed.seconds:.1f} s")
        times: dict[str, list[float]] = {"registry": [], "save-load": []}
        order = [("registry", pushed.reference), ("save-load", site)]
        for round_ in range(args.rounds):
            for method, image in order if round_ % 2 == 0 else order[::-1]:
                done = deliver(engine, image, method=method)
                times[method].append(done.total)
                clear(engine, image)
        for method, values in times.items():
            print(f"{method:9s}: median {statistics.median(values):.1f} s for {args.nodes} nodes  {values}")
        ratio = statistics.median(times["registry"]) / statistics.median(times["save-load"])
        print(f"registry / save-load = {ratio:.2f}")
    finally:
        began = time.monotonic()
        removed = nodes.rm_all(engine, prefix)
        print(f"lab nodes rm --all: {time.monotonic() - began:.1f} s ({removed.released})")
        registry.down(engine, name, purge=True)
        engine.remove_image(f"{registry.repository_at(port)}:bench")
        if init and not nodes.node_containers(engine):
            swarm.release_if_unused(engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
