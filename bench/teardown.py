#!/usr/bin/env python3
"""Does teardown leave anything behind? Networks, and endpoints the engine still counts.

Two measurements, each on labs of this run only (unique names; nothing else is touched):

- cycles: `lab up --replicas N` immediately followed by `lab down`, as a user types them;
- rollbacks forced in the middle of the replica start, alternating two ways:
  `config`    - the load balancer's config fails `nginx -t` (a broken config is rendered
                in-process) while the replicas start: `up` must stop and roll back;
  `interrupt` - `lab up` gets Ctrl-C (SIGINT) once some replicas exist.

After each one it counts the lab's containers and networks still there, and for every network
still there whether the engine refuses to remove it because it still counts an endpoint on it
("has active endpoints"). Prints one line per run and a summary. Run it as
`python bench/teardown.py` (after `make setup`); `--cycles 20 --rollbacks 20 --replicas 40` are
the defaults.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import labels, loadbalancer, orchestrator  # noqa: E402
from lab.docker_ops import ACTIVE_ENDPOINTS, Engine  # noqa: E402
from lab.errors import LabError  # noqa: E402
from lab.images import ensure_base_images  # noqa: E402
from lab.pytest_plugin import free_port  # noqa: E402
from lab.site import ensure_site_image  # noqa: E402
from lab.spec import DEFAULT_SITE, LabSpec  # noqa: E402

PREFIX = f"tdn-{uuid.uuid4().hex[:6]}"


@dataclass
class Run:
    kind: str  # cycle, config, interrupt
    name: str
    ok: bool  # the command did what it should (up+down exit 0, or up failed and rolled back)
    replicas_at_failure: int  # rollbacks: replicas created (interrupt) or listening (config) when it failed
    seconds: float
    containers_left: int
    networks_left: int
    endpoints_counted: int  # networks left that the engine refuses to remove: "has active endpoints"
    note: str = ""
    down_seconds: float = 0.0  # cycles: the part `lab down` took


def lab_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def count_leftovers(engine: Engine, name: str) -> tuple[int, int, int]:
    """(containers, networks, networks the engine still counts an endpoint on) of lab `name`.

    A network still there is removed here (it is this run's own): if the engine refuses because
    of active endpoints, that is an endpoint left counted.
    """
    selector = labels.lab_filter(name)
    containers = len(engine.containers(selector))
    networks = engine.networks(selector)
    counted = 0
    for network in networks:
        reason = engine.remove_network(network, patience=2.0)
        counted += ACTIVE_ENDPOINTS in reason
    return containers, len(networks), counted


def cycle(engine: Engine, name: str, replicas: int) -> Run:
    started = time.monotonic()
    up = lab_cli("up", "--name", name, "--replicas", str(replicas), "--port", str(free_port()), "-q")
    down_started = time.monotonic()
    down = lab_cli("down", "--name", name)
    seconds = time.monotonic() - started
    down_seconds = time.monotonic() - down_started
    containers, networks, counted = count_leftovers(engine, name)
    note = "" if up.returncode == 0 else f"up failed: {up.stderr.strip()[-200:]}"
    if down.returncode != 0:
        note += f" down failed: {down.stderr.strip()[-200:]}"
    ok = up.returncode == 0 and down.returncode == 0
    return Run("cycle", name, ok, 0, seconds, containers, networks, counted, note.strip(), down_seconds)


def rollback_on_broken_config(engine: Engine, name: str, replicas: int) -> Run:
    """`up` in-process with a config that fails `nginx -t`; it is tested while the replicas start."""
    listening = [0]

    def progress(description: str, _fraction: float | None) -> None:
        if description.endswith("replicas listening"):
            listening[0] = int(description.split("/")[0])

    render = loadbalancer.render_nginx_conf
    spec = LabSpec.create(name=name, replicas=replicas, port=free_port())
    started = time.monotonic()
    note, ok = "", False
    with mock.patch.object(
        loadbalancer, "render_nginx_conf", lambda view: render(view).replace("keepalive 32;", "keepalive;")
    ):
        try:
            orchestrator.up(engine, spec, progress)
            note = "up succeeded with a broken config"
        except LabError as exc:
            ok = "nginx -t" in exc.message
            note = "" if ok else exc.message
    seconds = time.monotonic() - started
    containers, networks, counted = count_leftovers(engine, name)
    return Run("config", name, ok, listening[0], seconds, containers, networks, counted, note)


def rollback_on_interrupt(engine: Engine, name: str, replicas: int, after: int) -> Run:
    """`lab up` gets SIGINT once `after` replicas exist."""
    process = subprocess.Popen(
        [sys.executable, "-m", "lab", "up", "--name", name, "--replicas", str(replicas)]
        + ["--port", str(free_port()), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 120
    created = 0
    while time.monotonic() < deadline and process.poll() is None:
        created = len(engine.containers(labels.lab_filter(name, labels.ROLE_WEB)))
        if created >= after:
            break
        time.sleep(0.02)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    seconds = time.monotonic() - started
    containers, networks, counted = count_leftovers(engine, name)
    ok = process.returncode == 130
    note = "" if ok else f"exit {process.returncode}: {stderr.strip()[-200:]}"
    return Run("interrupt", name, ok, created, seconds, containers, networks, counted, note)


def show(run: Run) -> None:
    flag = "ok " if run.ok and not (run.containers_left or run.networks_left) else "BAD"
    at = f" at {run.replicas_at_failure:2d}" if run.kind != "cycle" else "      "
    down = f" (down {run.down_seconds:4.1f} s)" if run.kind == "cycle" else ""
    print(
        f"{flag} {run.kind:9s} {run.name}{at}  {run.seconds:6.1f} s{down}  containers left {run.containers_left}  "
        f"networks left {run.networks_left}  endpoints counted {run.endpoints_counted}  {run.note}",
        flush=True,
    )


def summary(kind: str, runs: list[Run]) -> dict[str, object]:
    return {
        "runs": len(runs),
        "ok": sum(r.ok for r in runs),
        "containers_left": sum(r.containers_left for r in runs),
        "networks_left": sum(r.networks_left for r in runs),
        "endpoints_counted": sum(r.endpoints_counted for r in runs),
        "median_seconds": round(statistics.median(r.seconds for r in runs), 1) if runs else None,
        "median_down_seconds": round(statistics.median(r.down_seconds for r in runs), 1)
        if kind == "cycle" and runs
        else None,
        "replicas_at_failure": sorted(r.replicas_at_failure for r in runs) if kind != "cycle" else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20, help="up+down cycles")
    parser.add_argument("--rollbacks", type=int, default=20, help="rollbacks forced mid-start")
    parser.add_argument("--replicas", type=int, default=40)
    parser.add_argument("--interrupt-after", type=int, default=10, help="replicas created before Ctrl-C")
    parser.add_argument("--json", dest="json_file", default=None, help="also write the runs as JSON here")
    options = parser.parse_args()

    engine = Engine.connect()
    base = ensure_base_images(engine)
    ensure_site_image(engine, DEFAULT_SITE, base.httpd, lambda *_: None)  # built once, not in a timing
    print(f"labs of this run: {PREFIX}-*  ({options.replicas} replicas each)", flush=True)
    runs: list[Run] = []
    names: list[str] = []
    try:
        for i in range(options.cycles):
            names.append(f"{PREFIX}-c{i}")
            runs.append(cycle(engine, names[-1], options.replicas))
            show(runs[-1])
        for i in range(options.rollbacks):
            names.append(f"{PREFIX}-r{i}")
            if i % 2 == 0:
                runs.append(rollback_on_broken_config(engine, names[-1], options.replicas))
            else:
                runs.append(
                    rollback_on_interrupt(engine, names[-1], options.replicas, options.interrupt_after)
                )
            show(runs[-1])
    finally:
        for name in names:  # this run's labs only; whatever stays is counted above
            orchestrator.remove_lab(engine, name, patience=2.0)
    left = [n.name for n in engine.networks(labels.any_lab_filter()) if n.name.startswith(PREFIX)]
    report = {
        "replicas": options.replicas,
        "cycles": summary("cycle", [r for r in runs if r.kind == "cycle"]),
        "rollbacks": summary("rollback", [r for r in runs if r.kind != "cycle"]),
        "rollbacks_by_way": {
            kind: summary(kind, [r for r in runs if r.kind == kind]) for kind in ("config", "interrupt")
        },
        "networks_of_this_run_still_there": left,
    }
    print(json.dumps(report, indent=2))
    if options.json_file:
        Path(options.json_file).write_text(
            json.dumps({"report": report, "runs": [asdict(r) for r in runs]}, indent=2)
        )
    bad = [r for r in runs if not r.ok or r.containers_left or r.networks_left or r.endpoints_counted]
    return 1 if bad or left else 0


if __name__ == "__main__":
    sys.exit(main())
