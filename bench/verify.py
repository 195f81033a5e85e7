#!/usr/bin/env python3
"""How fast is `lab verify`'s load engine next to wrk, on the same 3-replica lab?

In one invocation, alternating for a few rounds: `wrk` (Debian's package) for about M requests,
then `lab verify --requests M` (the real command, --json, its own throughput figure), both with C
keep-alive connections through 127.0.0.1. Prints medians and the ratio lab/wrk. Then the cost of
the content versions verify records: the load engine alone (`run_load`, in this process) with and
without `content`, alternating, as CPU per request (getrusage, steadier than rates on a busy machine)
and rate. Then the memory check: peak memory of the verifier for M and 10 x M requests (it must
stay flat).
Run it as `python bench/verify.py` (after `make setup`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import orchestrator, traffic  # noqa: E402
from lab import verify as verifier  # noqa: E402
from lab.docker_ops import Engine  # noqa: E402
from lab.pytest_plugin import free_port  # noqa: E402
from lab.spec import LabSpec  # noqa: E402

NAME = f"bench-verify-{os.getpid()}"  # the engine is shared: never another run's lab


def wrk_rate(url: str, requests: int, concurrency: int, expected_rate: float) -> float:
    seconds = max(2, round(requests / expected_rate))
    out = subprocess.run(
        ["wrk", "-t2", f"-c{concurrency}", f"-d{seconds}s", url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise SystemExit(f"could not read wrk's output:\n{out}")
    return float(match.group(1))


def lab_rate(requests: int, concurrency: int) -> float:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lab",
            "verify",
            "--name",
            NAME,
            "-n",
            str(requests),
            "-c",
            str(concurrency),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    data = json.loads(result.stdout)
    if data["errors"]:
        raise SystemExit(f"lab verify saw errors: {data['errors_by_cause']}")
    return float(data["throughput_rps"])


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def engine_run(url_port: int, requests: int, concurrency: int, content: bool) -> tuple[float, float]:
    """(CPU microseconds per request, requests per second) of one run_load as verify runs it."""
    cpu = own_cpu()
    tally = traffic.run_load(
        "127.0.0.1",
        url_port,
        requests=requests,
        duration=120,
        concurrency=concurrency,
        headers={verifier.RUN_HEADER: "bench"},
        content=content,
    )
    cpu = own_cpu() - cpu
    if tally.errors:
        raise SystemExit(f"run_load saw errors: {tally.errors_by_cause}")
    if content and sum(tally.contents.values()) != tally.ok:
        raise SystemExit("content versions do not add up to the answers")
    return cpu / tally.sent * 1e6, tally.throughput_rps


def peak_memory_mb(engine: Engine, requests: int, concurrency: int) -> float:
    target = verifier.lab_target(engine, NAME)
    plan = verifier.LoadPlan.create(requests=requests, duration=None, concurrency=concurrency, clients=100)
    tracemalloc.start()
    verifier.verify(target, plan, engine=None)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install -y wrk")
    engine = Engine.connect()
    orchestrator.down(engine, NAME)
    spec = LabSpec.create(name=NAME, replicas=3, port=free_port())
    orchestrator.up(engine, spec)
    try:
        wrk_rates, lab_rates = [], []
        for round_ in range(args.rounds):
            order = ("wrk", "lab") if round_ % 2 == 0 else ("lab", "wrk")
            for tool in order:
                if tool == "wrk":
                    wrk_rates.append(wrk_rate(spec.url, args.requests, args.concurrency, 3000))
                else:
                    lab_rates.append(lab_rate(args.requests, args.concurrency))
        wrk_median, lab_median = statistics.median(wrk_rates), statistics.median(lab_rates)
        print(
            f"{args.requests:,} requests, {args.concurrency} connections, 3 replicas, {args.rounds} rounds (medians)"
        )
        print(f"  wrk -t2        {wrk_median:8,.0f} req/s   ({', '.join(f'{r:,.0f}' for r in wrk_rates)})")
        print(f"  lab verify     {lab_median:8,.0f} req/s   ({', '.join(f'{r:,.0f}' for r in lab_rates)})")
        print(f"  ratio lab/wrk  {lab_median / wrk_median:8.2f}x")
        runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for round_ in range(2 * args.rounds):
            for content in (False, True) if round_ % 2 == 0 else (True, False):
                runs[content].append(engine_run(spec.port, args.requests, args.concurrency, content))
        cpu = {c: statistics.median(r[0] for r in found) for c, found in runs.items()}
        rate = {c: statistics.median(r[1] for r in found) for c, found in runs.items()}
        print(f"load engine alone, {2 * args.rounds} runs each (medians):")
        print(f"  without content  {cpu[False]:6.1f} us CPU per request  {rate[False]:8,.0f} req/s")
        print(f"  with content     {cpu[True]:6.1f} us CPU per request  {rate[True]:8,.0f} req/s")
        print(
            f"  content costs    {cpu[True] / cpu[False] - 1:+6.1%} CPU per request, "
            f"{rate[True] / rate[False] - 1:+.1%} rate"
        )
        small, large = args.requests, args.requests * 10
        print(
            f"peak traced memory of the verifier: {peak_memory_mb(engine, small, args.concurrency):.1f} MB "
            f"for {small:,} requests, {peak_memory_mb(engine, large, args.concurrency):.1f} MB for {large:,}"
        )
    finally:
        orchestrator.down(engine, NAME)


if __name__ == "__main__":
    main()
