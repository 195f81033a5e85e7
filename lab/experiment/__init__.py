"""`lab experiment`: steady paced load through 127.0.0.1 while a live operation runs on the lab.

The load starts first and runs for the whole `duration`; after a warm-up (a fifth of the run)
the operation happens (scale steps, a rolling deploy, a broken replica, reloads, a killed load
balancer), each step stamped in seconds since the start, and the load goes on to the end. Every
request is counted: sent, ok, failed by cause, and GETs retried once after a stale keep-alive
close (counted, never hidden).

Three parts: `plan` (validation, complete before anything touches the engine, and the
schedule), `verdict` (pure: recovery time, per-step traffic checks, the verdict) and `run`
(the load, and the operations as a table, one function per kind: `from lab.experiment.run
import run_experiment`; importing this package loads only the pure parts).
"""

from lab.experiment.plan import (
    DEFAULT_RELOADS,
    DEFAULT_STEPS,
    HOWS,
    KINDS,
    MAX_DURATION,
    MAX_RATE,
    MAX_RELOADS,
    MAX_STEPS,
    MIN_DURATION,
    MIN_RATE,
    RESTORE,
    ExperimentPlan,
    parse_kind,
    parse_number,
    parse_steps,
    schedule,
)
from lab.experiment.verdict import (
    OBSERVE,
    SETTLE,
    Step,
    checks_clause,
    explain,
    host_of,
    judge,
    latency_summary,
    probes_allowed,
    recovery_time,
    removed_addresses,
    replicas_in_order,
    result_of,
    step_checks,
    traffic_check,
    version_check,
    whole_seconds,
)
from lab.results import Check, Event, ExperimentResult

__all__ = [
    "DEFAULT_RELOADS", "DEFAULT_STEPS", "HOWS", "KINDS", "MAX_DURATION", "MAX_RATE", "MAX_RELOADS",
    "MAX_STEPS", "MIN_DURATION", "MIN_RATE", "OBSERVE", "RESTORE", "SETTLE", "Check", "Event",
    "ExperimentPlan", "ExperimentResult", "Step", "checks_clause", "explain", "host_of", "judge",
    "latency_summary", "parse_kind", "parse_number", "parse_steps", "probes_allowed", "recovery_time",
    "removed_addresses", "replicas_in_order", "result_of", "schedule", "step_checks", "traffic_check",
    "version_check", "whole_seconds",
]  # fmt: skip
