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

from lab import orchestrator  # noqa: E402
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
    for pid in found:  # the host's engine, not one nested in a container (its parent is init)
        status = Path(f"/proc/{pid}/status").read_text()
        if "\nPPid:\t1\n" in status:
            return int(pid)
    return None


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
        f"lab {spec.name}: {args.requests:,} requests per run, {args.concurrency} connections, {CORES} cores"
    )
    orchestrator.up(engine, spec)
    dockerd = engine_pid()
    alone: list[float] = []
    rounds: list[dict[str, float]] = []
    engine_cpu: dict[str, list[float]] = {"alone": [], "with": []}

    def engine_mark() -> tuple[float, float]:
        return (cpu_seconds(dockerd) if dockerd else 0.0), time.monotonic()

    def engine_record(kind: str, mark: tuple[float, float]) -> None:
        if dockerd:
            engine_cpu[kind].append((cpu_seconds(dockerd) - mark[0]) / (time.monotonic() - mark[1]))

    def run_alone(i: int) -> None:
        mark = engine_mark()
        alone.append(float(verify(spec.name, args.requests, args.concurrency)["throughput_rps"]))  # type: ignore[arg-type]
        engine_record("alone", mark)
        print(f"round {i}: verify alone: {alone[-1]:,.0f} req/s")

    def run_with(i: int) -> None:
        mark = engine_mark()
        r = dashboard_round(spec.name, args.requests, args.concurrency)
        engine_record("with", mark)
        rounds.append(r)
        print(
            f"round {i}: with the dashboard: load balancer {r['lb_rps']:,.0f} req/s, dashboard counted "
            f"{r['counted_rps']:,.0f} lines/s, {r['behind_at_end']:,.0f} behind when verify ended, caught up "
            f"{r['catch_up_s']:.2f} s later ({r['counted']:,.0f} counted); dashboard CPU {r['cpu_s']:.2f} s over "
            f"{r['wall_s']:.1f} s = {r['cpu_share_one_core']:.1%} of one core"
        )

    try:
        for i in range(1, args.rounds + 1):  # alternating which goes first, so a drift hits both
            first, second = (run_alone, run_with) if i % 2 else (run_with, run_alone)
            first(i)
            second(i)
        ceiling = counting_ceiling()
    finally:
        orchestrator.remove_lab(engine, spec.name)
    lb = statistics.median(r["lb_rps"] for r in rounds)
    counted = statistics.median(r["counted_rps"] for r in rounds)
    share = statistics.median(r["cpu_share_one_core"] for r in rounds)
    per_line_us = statistics.median(r["cpu_s"] / r["counted"] * 1e6 for r in rounds)
    print()
    print(f"load balancer at its maximum (verify, with the dashboard): {lb:,.0f} req/s (median)")
    print(f"dashboard counted meanwhile: {counted:,.0f} lines/s (median); never behind when verify ended")
    print(f"verify with / without the dashboard: {lb / statistics.median(alone):.2f}")
    print(
        f"dashboard CPU meanwhile: {share:.1%} of one core ({share / CORES:.1%} of the machine), {per_line_us:.0f} us per line"
    )
    if engine_cpu["alone"] and engine_cpu["with"]:
        print(
            f"the engine (dockerd; shared, so noisy): {statistics.median(engine_cpu['with']):.1%} of one core with "
            f"the dashboard, {statistics.median(engine_cpu['alone']):.1%} without"
        )
    print(
        f"counting core alone, in-process ceiling: {ceiling:,.0f} lines/s ({ceiling / lb:.1f}x the load balancer)"
    )


if __name__ == "__main__":
    main()
