#!/usr/bin/env python3
"""Does `lab dashboard` keep up with a load balancer driven at its maximum, and what does it cost?

On one 3-replica lab, for a few rounds: `lab verify --requests M -c C` (the real command) alone,
then again while `lab dashboard` follows the lab, its /api/state read 4 times a second as a
page would. For each dashboard round it prints
- the load balancer's rate (verify's own throughput) and the rate the dashboard counted at,
  from its state samples, with how far behind it was when verify ended and how long it took
  to catch up;
- the dashboard process's CPU (user + system, from /proc) over that time, as a share of one core
  and of the machine;
- verify's throughput with the dashboard against without (the dashboard competes for the same
  cores);
and, as a ceiling, how many lines per second the counting core alone (split, parse, count) takes
in this process. Run it as `python bench/dashboard.py` (after `make setup`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import lab as orchestrator  # noqa: E402
from lab.accesslog import AccessLogReader  # noqa: E402
from lab.docker_ops import Engine  # noqa: E402
from lab.pytest_plugin import free_port  # noqa: E402
from lab.spec import LabSpec  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
SAMPLE_EVERY = 0.25


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def engine_pid() -> int | None:
    """dockerd's pid, when it runs on this machine (its CPU is shared with whatever else uses it)."""
    found = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True, check=False).stdout.split()
    return int(found[0]) if found else None


def verify(name: str, requests_: int, concurrency: int) -> dict[str, object]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lab",
            "verify",
            "--name",
            name,
            "-n",
            str(requests_),
            "-c",
            str(concurrency),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if not result.stdout.strip():
        raise SystemExit(f"lab verify failed: {result.stderr}")
    return dict(json.loads(result.stdout))


def start_dashboard(name: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "lab", "dashboard", "--name", name, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/api/state"
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise SystemExit(f"lab dashboard exited: {process.communicate()[1]}")
        try:
            requests.get(url, timeout=2).raise_for_status()
            return process, url
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise SystemExit("lab dashboard did not answer within 30 s") from None
            time.sleep(0.1)


def dashboard_round(name: str, requests_: int, concurrency: int) -> dict[str, float]:
    process, url = start_dashboard(name)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                total = session.get(url, timeout=5).json()["total_requests"]
                samples.append((time.monotonic(), int(total)))
                stop.wait(SAMPLE_EVERY)

    try:
        sampler = threading.Thread(target=sample, daemon=True)
        cpu_before, started = cpu_seconds(process.pid), time.monotonic()
        sampler.start()
        result = verify(name, requests_, concurrency)
        ended = time.monotonic()
        behind = requests_ - (samples[-1][1] if samples else 0)
        while (not samples or samples[-1][1] < requests_) and time.monotonic() - ended < 30:
            time.sleep(0.05)
        caught_up = next((t for t, n in samples if n >= requests_), float("nan"))
        cpu_after, finished = cpu_seconds(process.pid), time.monotonic()
        stop.set()
        sampler.join(5)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(20)
    counting = [(t, n) for t, n in samples if 0 < n < requests_]
    counted_rate = (
        (counting[-1][1] - counting[0][1]) / (counting[-1][0] - counting[0][0])
        if len(counting) > 2
        else float("nan")
    )
    cpu = cpu_after - cpu_before
    return {
        "lb_rps": float(result["throughput_rps"]),  # type: ignore[arg-type]
        "counted_rps": counted_rate,
        "behind_at_end": float(max(0, behind)),
        "catch_up_s": max(0.0, caught_up - ended),
        "cpu_s": cpu,
        "wall_s": finished - started,
        "cpu_share_one_core": cpu / (finished - started),
        "counted": float(samples[-1][1]),
    }


def counting_ceiling(lines: int = 200_000) -> float:
    """Lines per second the counting core takes here, one engine frame (one line) per read."""
    frames = [
        (
            f"2026-11-28T20:21:{(i // 10_000) % 60:02d}.{i % 10_000:04d}Z 172.29.0.1 [28/Nov/2026:20:21:36 +0000] "
            f'"GET / HTTP/1.1" 200 808 upstream=172.28.0.{2 + i % 3}:80 upstream_status=200 '
            f'request_time=0.001 upstream_time=0.001 client="-" run="bench"\n'
        ).encode()
        for i in range(lines)
    ]
    reader = AccessLogReader()
    started = time.perf_counter()
    for frame in frames:
        reader.feed(frame)
    return lines / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000, help="requests per verify run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    engine = Engine.connect()
    spec = LabSpec.create(name=f"bench-dash-{os.getpid()}", replicas=3, port=free_port())
    print(
        f"lab {spec.name}: 3 replicas, {args.requests:,} requests per run, {args.concurrency} connections, {CORES} cores"
    )
    orchestrator.up(engine, spec)
    try:
        alone: list[float] = []
        rounds: list[dict[str, float]] = []
        dockerd = engine_pid()
        engine_alone: list[float] = []
        engine_with: list[float] = []
        for i in range(args.rounds):
            before, started = (cpu_seconds(dockerd) if dockerd else 0.0), time.monotonic()
            alone.append(float(verify(spec.name, args.requests, args.concurrency)["throughput_rps"]))  # type: ignore[arg-type]
            if dockerd:
                engine_alone.append((cpu_seconds(dockerd) - before) / (time.monotonic() - started))
            print(f"round {i + 1}: verify alone {alone[-1]:,.0f} req/s")
            before, started = (cpu_seconds(dockerd) if dockerd else 0.0), time.monotonic()
            r = dashboard_round(spec.name, args.requests, args.concurrency)
            if dockerd:
                engine_with.append((cpu_seconds(dockerd) - before) / (time.monotonic() - started))
            rounds.append(r)
            print(
                f"round {i + 1}: with the dashboard: load balancer {r['lb_rps']:,.0f} req/s, "
                f"dashboard counted {r['counted_rps']:,.0f} lines/s, {r['behind_at_end']:,.0f} behind when verify "
                f"ended, caught up {r['catch_up_s']:.2f} s later ({r['counted']:,.0f} counted); "
                f"dashboard CPU {r['cpu_s']:.2f} s over {r['wall_s']:.1f} s = {r['cpu_share_one_core']:.1%} of one core"
            )
        ceiling = counting_ceiling()
        lb = statistics.median(r["lb_rps"] for r in rounds)
        counted = statistics.median(r["counted_rps"] for r in rounds)
        share = statistics.median(r["cpu_share_one_core"] for r in rounds)
        print()
        print(f"load balancer at its maximum (verify, with the dashboard): {lb:,.0f} req/s (median)")
        print(f"dashboard counted while it ran:                        {counted:,.0f} lines/s (median)")
        print(f"verify with / without the dashboard:                   {lb / statistics.median(alone):.2f}")
        print(
            f"dashboard CPU while it did:                           {share:.1%} of one core, {share / CORES:.1%} of the machine"
        )
        print(
            f"counting core alone, in-process ceiling:              {ceiling:,.0f} lines/s ({ceiling / lb:.1f}x the load balancer)"
        )
    finally:
        orchestrator.remove_lab(engine, spec.name)


if __name__ == "__main__":
    main()
