"""`lab experiment` on real containers: steady paced load through 127.0.0.1 while the lab scales,
deploys, loses a replica, reloads or loses its load balancer; every request is counted.

Modest rates (150 req/s) and short runs keep the whole module under three minutes. Each test
prints its numbers (run with -s to see them).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import requests

from lab import orchestrator
from lab.docker_ops import Engine
from lab.experiment import ExperimentResult
from lab.experiment.run import run_experiment
from lab.pytest_plugin import LabHandle

from .conftest import run_lab, write_site

RATE = 150
RELOAD_RUN = 24  # seconds: on a busy machine the last reload ends late, and its check needs time left


def numbers(result: ExperimentResult) -> str:
    line = (
        f"{result.kind}: sent {result.sent}, ok {result.ok}, failed {result.failed} "
        f"{ {k: v for k, v in result.failed_by_cause.items() if v} }, retried {result.retried}, "
        f"nginx retries {result.upstream_retries}, recovery {result.recovery_s} s, verdict {result.verdict}"
    )
    print("\n" + line)
    for i, event in enumerate(result.events, start=1):
        print(f"  {i:>2} {event.t:6.2f} {event.text}")
    for check in result.checks:
        print(
            f"  {'ok' if check.passed else 'NOT OK' if check.judged else 'not judged'}: {check.name}: {check.detail}"
        )
    return line


def served_versions(url: str, n: int) -> dict[str, str]:
    seen: dict[str, str] = {}
    for _ in range(n):
        response = requests.get(url, timeout=5, headers={"Connection": "close"})
        assert response.status_code == 200
        seen[response.headers["X-Served-By"]] = response.headers["X-Site-Version"]
    return seen


def assert_paced(result: ExperimentResult) -> None:
    """The load really ran at the asked rate for the whole run, and every request is accounted for."""
    assert result.sent == result.ok + result.failed
    assert result.sent >= 0.95 * RATE * result.duration, result.sent
    assert sum(s.sent for s in result.timeline) == result.sent
    assert sum(s.retried for s in result.timeline) == result.retried


def test_scale_3_to_8_to_2_drops_nothing_and_moves_traffic_at_each_step(
    lab_cluster: Callable[..., LabHandle], lab_engine: Engine
) -> None:
    lab = lab_cluster(replicas=3)
    result = run_experiment(lab_engine, lab.name, "scale", rate=RATE, duration=20, options={"steps": "8,2"})
    numbers(result)
    assert_paced(result)
    assert result.failed == 0 and result.verdict == "zero-loss", result.reason
    up, down = result.checks
    assert up.judged and up.passed, up.detail
    assert up.live == sorted(f"{lab.name}-web-{i}" for i in range(1, 9))
    assert up.served == up.live  # every new replica got traffic
    assert down.judged and down.passed, down.detail
    assert len(down.live) == 2 and len(down.removed) == 6
    assert not set(down.served) & set(down.removed)  # removed ones got none
    assert result.passed
    assert orchestrator.find_running(lab_engine, lab.name).replicas == down.live


def test_rolling_deploy_over_4_replicas_drops_nothing_and_ends_on_the_new_version(
    lab_cluster: Callable[..., LabHandle], lab_engine: Engine, tmp_path: Path
) -> None:
    lab = lab_cluster(replicas=4)
    site = write_site(tmp_path / "v2", body="<h1>version 2</h1>")
    # Long enough that the step check after the deploy (about 13 s on a busy 2-core machine) is judged.
    result = run_experiment(
        lab_engine, lab.name, "deploy", rate=RATE, duration=25, options={"site": site, "batch": 2}
    )
    numbers(result)
    assert_paced(result)
    assert result.failed == 0 and result.verdict == "zero-loss", result.reason
    assert not result.operation_error
    version = result.extra["new_version"]
    assert isinstance(version, str) and version
    assert all(c.judged and c.passed for c in result.checks), [c.detail for c in result.checks]
    assert result.passed
    # Through the load balancer on 127.0.0.1: four replicas, every one on the new version.
    seen = served_versions(lab.url, 12)
    assert len(seen) == 4 and set(seen.values()) == {version}
    status = run_lab("status", "--name", lab.name, "--json")
    assert status.code == 0, status.stderr
    replicas = json.loads(status.stdout)["replicas"]
    assert len(replicas) == 4 and {r["site_version"] for r in replicas} == {version}
    assert {r["name"] for r in replicas} == set(seen)


def test_a_deploy_whose_new_replicas_fail_keeps_the_old_version_serving_without_loss(
    lab_cluster: Callable[..., LabHandle], lab_engine: Engine, tmp_path: Path
) -> None:
    lab = lab_cluster(replicas=2)
    before = served_versions(lab.url, 4)
    # The image builds, but httpd refuses its config and exits: the new replica never answers.
    bad = "ARG HTTPD_IMAGE\nFROM ${HTTPD_IMAGE}\nRUN echo 'NoSuchDirective on' >> conf/httpd.conf\nCOPY ./ htdocs/\n"
    site = write_site(tmp_path / "bad", dockerfile=bad)
    result = run_experiment(lab_engine, lab.name, "deploy", rate=RATE, duration=10, options={"site": site})
    numbers(result)
    assert_paced(result)
    assert result.extra.get("operation_error_type") == "DeployFailed"
    assert "serves again" in result.operation_error
    assert result.failed == 0 and result.verdict == "zero-loss", result.reason
    assert not result.passed  # the deploy did not happen: the command exits 1
    assert any(e.source == "note" and "deploy failed" in e.text for e in result.events)
    assert served_versions(lab.url, 6) == before


def test_failover_kill_9_of_one_of_3_fails_no_get_and_the_dead_one_gets_nothing_after_fail_timeout(
    lab_cluster: Callable[..., LabHandle], lab_engine: Engine
) -> None:
    lab = lab_cluster(replicas=3, fail_timeout=2)
    victim = f"{lab.name}-web-2"
    result = run_experiment(
        lab_engine, lab.name, "failover", rate=RATE, duration=12, options={"how": "kill", "replica": "2"}
    )
    numbers(result)
    assert_paced(result)
    assert result.failed == 0 and result.verdict == "zero-loss", result.reason
    (check,) = result.checks
    assert check.judged and check.passed, check.detail
    assert check.removed == [victim] and victim not in check.served
    assert check.attempts[victim] <= check.allowed  # at most nginx's probes, one per fail_timeout
    assert check.window is not None and check.window[0] >= result.events[0].t + 2  # after fail_timeout
    # Restored after the measured window: all three serve again.
    assert result.extra["restored_after_window"] == [victim]
    assert len(set(served_versions(lab.url, 9))) == 3


def test_failover_fails_its_check_when_nginx_keeps_trying_the_dead_replica(
    lab_cluster: Callable[..., LabHandle],
) -> None:
    """With max_fails=0 nginx never takes a dead replica out: every request it sends there times
    out and is retried on another, so nothing fails and nobody sees the dead one answer, but
    X-Upstream-Addr shows the attempts: the check fails and the command exits 1."""
    lab = lab_cluster(replicas=3, max_fails=0, fail_timeout=2)
    run = run_lab(
        "experiment", "failover", "--name", lab.name, "--rate", "60", "--duration", "10",
        "--replica", "2", "--restore", "no", "--json",
    )  # fmt: skip
    assert run.code == 1, run.stderr
    data = json.loads(run.stdout)
    print(f"\nfailover with max_fails=0: {data['reason']}; {data['checks'][0]['detail']}")
    (check,) = data["checks"]
    assert check["judged"] and not check["passed"]
    victim = f"{lab.name}-web-2"
    assert victim not in check["served"]  # judged by who answered, it would have passed
    assert check["attempts"][victim] > check["allowed"]
    assert "nginx still tried" in check["detail"] and data["passed"] is False


def test_reload_3_times_under_keep_alive_load_through_the_cli(
    lab_cluster: Callable[..., LabHandle], lab_engine: Engine, tmp_path: Path
) -> None:
    lab = lab_cluster(replicas=3)
    lb_before = orchestrator.find_running(lab_engine, lab.name).lb.state().started_at
    # Bad input first: one line, exit 2, no traceback, and the running lab is not disturbed.
    for args, message in [
        (["--rate", "0"], "rate must be between 1 and 2000"),
        (["--rate", "5000"], "not 5000"),
        (["--duration", "0"], "duration must be between 2 and 600"),
        (["--duration", "601"], "not 601"),
        (["--duration", "-3"], "not -3"),
        (["--steps", "8"], "a reload experiment does not take steps"),
    ]:
        bad = run_lab("experiment", "reload", "--name", lab.name, *args)
        assert bad.code == 2 and message in bad.stderr, (args, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    assert orchestrator.find_running(lab_engine, lab.name).lb.state().started_at == lb_before
    assert orchestrator.find_running(lab_engine, lab.name).replicas == lab.replicas

    report = tmp_path / "reload.html"
    run = run_lab(
        "experiment", "reload", "--name", lab.name, "--rate", str(RATE), "--duration", str(RELOAD_RUN),
        "--times", "3", "--json", "--report", str(report),
    )  # fmt: skip
    assert run.stdout, (run.code, run.stderr)
    data = json.loads(run.stdout)
    assert run.code == 0, (run.stderr, data["reason"], [c["detail"] for c in data["checks"]])
    print(
        f"\nreload x3: sent {data['sent']}, ok {data['ok']}, failed {data['failed']}, "
        f"retried {data['retried']} {data['retried_by_cause']}"
    )
    for key in ("sent", "ok", "failed", "failed_by_cause", "timeline", "events", "verdict"):
        assert key in data
    assert data["failed"] == 0 and data["verdict"] == "zero-loss"
    assert data["sent"] >= 0.95 * RATE * RELOAD_RUN
    assert sum(1 for e in data["events"] if e["text"].startswith("nginx reloaded")) == 3
    # Retries after a stale keep-alive close are counted, second by second, and explained.
    assert data["retried"] == sum(s["retried"] for s in data["timeline"])
    if data["retried"]:
        assert any("keep-alive" in n for n in data["notes"])
    html = report.read_text()
    assert "<svg" in html and "Zero loss" in html and "reload 3 ends" in html


def test_a_killed_load_balancer_comes_back_by_itself_and_the_gap_is_counted(
    lab_cluster: Callable[..., LabHandle], lab_engine: Engine
) -> None:
    lab = lab_cluster(replicas=3)
    result = run_experiment(lab_engine, lab.name, "kill-lb", rate=RATE, duration=10)
    numbers(result)
    assert_paced(result)
    assert result.verdict == "recovered", result.reason
    assert result.extra["restarts"] >= 1
    assert any("runs the load balancer again" in e.text for e in result.events)
    # The gap is counted, not hidden: failures by cause, and the seconds they fell in.
    assert result.failed > 0 or result.retried > 0
    assert result.failed == sum(result.failed_by_cause.values())
    if result.failed:
        assert result.recovery_s is not None and result.first_error_s is not None
        assert result.first_error_s >= int(result.events[0].t)
    assert requests.get(lab.url, timeout=5).status_code == 200
