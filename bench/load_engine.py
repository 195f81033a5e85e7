"""How fast is lab.traffic next to wrk? Both against the same nginx on 127.0.0.1.

A throwaway nginx (Debian's, config in a temp dir) balances over three loopback `server`
blocks that answer like the lab's replicas (X-Served-By, X-Upstream-Addr). wrk runs for S
seconds; run_load then sends the same number of requests over the same C connections, with
an X-Lab-Run header as the lab sends it. Other work on a shared 2-core machine makes single
runs swing by +-30%, so the two alternate for R rounds and the median ratio is the verdict.
CPU seconds per request (user + system, from getrusage) are steadier than rates on a busy
machine: the engine's aim is the least CPU per request, since the server shares the cores.
A last paced run (1000 req/s for 2 s) shows how well `rate` holds.
Everything is bounded: wrk by -d, run_load by that count and 3xS seconds, nginx is stopped.

    python bench/load_engine.py [--concurrency 16] [--seconds 5] [--rounds 3] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab.traffic import Tally, run_load  # noqa: E402 (after the path fix, to run from a checkout)

PACED_RATE, PACED_SECONDS = 1000, 2

CONFIG = """\
# Throwaway nginx for bench/load_engine.py: one balancer and three fake replicas, loopback only.
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp; fastcgi_temp_path {dir}/tmp;
  uwsgi_temp_path {dir}/tmp; scgi_temp_path {dir}/tmp;
  upstream replicas {{
    zone replicas 64k;
{servers}
    keepalive 16;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://replicas;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      add_header X-Upstream-Addr $upstream_addr always;
    }}
  }}
{replicas}
}}
"""
REPLICA = """\
  server {{
    listen 127.0.0.1:{port};
    location / {{ add_header X-Served-By r{n} always; return 200 "hello from r{n}\\n"; }}
  }}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(tool: str, package: str) -> str:
    """The path of `tool`, installing its Debian package first if it is missing."""
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin")
    if path:
        return path
    print(f"{tool} not found: apt-get install -y {package}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", package], check=True, env=env, timeout=600)
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin")
    if not path:
        raise SystemExit(f"{tool} still missing after installing {package}")
    return path


def wait_for_port(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nginx did not listen on 127.0.0.1:{port} within {timeout} s")


def children_cpu() -> float:
    """CPU seconds (user + system) used so far by the child processes that ended."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu() -> float:
    """CPU seconds (user + system) used so far by this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_wrk(wrk: str, port: int, concurrency: int, seconds: int) -> tuple[int, float, float]:
    """(requests done, requests per second) as wrk reports them, and wrk's CPU seconds."""
    cmd = [wrk, "-t2", f"-c{concurrency}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"]
    cpu = children_cpu()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    cpu = children_cpu() - cpu
    done = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    if not done or not rate:
        raise SystemExit(f"could not read wrk's output:\n{out}")
    if errors:
        print(f"wrk saw errors: {errors.group(0)}")
    return int(done.group(1)), float(rate.group(1)), cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="wrk / run_load pairs, alternated")
    parser.add_argument("--workers", type=int, default=1, help="nginx worker processes")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 20 or not 1 <= args.seconds <= 60:
        raise SystemExit("--rounds must be 1..20 and --seconds 1..60, so the bench stays bounded")
    nginx, wrk = need("nginx", "nginx-light"), need("wrk", "wrk")

    with tempfile.TemporaryDirectory(prefix="lab-bench-") as tmp:
        os.chmod(tmp, 0o755)  # nginx's workers drop root and must still reach their temp dirs
        (Path(tmp) / "tmp").mkdir()
        port, backends = free_port(), [free_port() for _ in range(3)]
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(
            CONFIG.format(
                workers=args.workers,
                dir=tmp,
                port=port,
                servers="\n".join(f"    server 127.0.0.1:{p};" for p in backends),
                replicas="".join(REPLICA.format(port=p, n=n) for n, p in enumerate(backends, 1)),
            )
        )
        server = subprocess.Popen([nginx, "-c", str(conf), "-p", tmp], stderr=subprocess.PIPE)
        try:
            wait_for_port(port)
            run_load("127.0.0.1", port, requests=2000, duration=10, concurrency=args.concurrency)
            print(f"nginx workers {args.workers}, {args.concurrency} connections, {os.cpu_count()} cores")
            ratios, cpu_ratios = [], []
            for round_ in range(1, args.rounds + 1):
                done, wrk_rps, wrk_cpu = run_wrk(wrk, port, args.concurrency, args.seconds)
                cpu = own_cpu()
                tally = run_load(
                    "127.0.0.1",
                    port,
                    requests=done,
                    duration=3 * args.seconds,
                    concurrency=args.concurrency,
                    headers={"X-Lab-Run": "bench"},
                )
                cpu = own_cpu() - cpu
                ratios.append(tally.throughput_rps / wrk_rps)
                cpu_ratios.append(cpu / wrk_cpu)
                report(round_, done, wrk_rps, tally)
                print(
                    f"         CPU per request: wrk {wrk_cpu / done * 1e6:.1f} us, "
                    f"run_load {cpu / tally.sent * 1e6:.1f} us (ratio {cpu / wrk_cpu:.2f})"
                )
            paced = run_load(
                "127.0.0.1",
                port,
                requests=None,
                duration=PACED_SECONDS,
                concurrency=args.concurrency,
                rate=PACED_RATE,
            )
        finally:
            server.terminate()
            server.wait(timeout=10)

    per_second = [s.sent for s in paced.timeline]
    print(
        f"paced {PACED_RATE} req/s for {PACED_SECONDS} s: {paced.sent} answers ({paced.errors} errors), per second {per_second}"
    )
    print(
        f"ratio run_load / wrk: {statistics.median(ratios):.2f} (median of {', '.join(f'{r:.2f}' for r in ratios)})"
    )
    print(
        f"CPU ratio run_load / wrk for the same requests: {statistics.median(cpu_ratios):.2f} "
        f"(median of {', '.join(f'{r:.2f}' for r in cpu_ratios)}; lower is better)"
    )
    return 0


def report(round_: int, done: int, wrk_rps: float, tally: Tally) -> None:
    """One round: both rates, run_load's errors, spread and latency."""
    lat = tally.latency
    print(f"round {round_}: wrk -t2   {done} requests, {wrk_rps:10.0f} req/s")
    print(f"         run_load {tally.sent} requests, {tally.throughput_rps:10.0f} req/s", end=" ")
    print(
        f"({tally.errors} errors, {tally.retried} retried, by replica {dict(sorted(tally.by_replica.items()))})"
    )
    print(
        f"         latency p50 {lat.percentile(50) * 1e3:.3f} ms, "
        f"p99 {lat.percentile(99) * 1e3:.3f} ms, max {lat.max * 1e3:.3f} ms; "
        f"ratio {tally.throughput_rps / wrk_rps:.2f}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
