"""scale, deploy, reload and chaos on real containers (the experiments add load around them)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from lab import chaos, orchestrator
from lab.docker_ops import Engine
from lab.errors import BuildFailed, DeployFailed
from lab.livestate import upstream_weights
from lab.pytest_plugin import LabHandle

from .conftest import run_lab, served_by, write_site


def versions(url: str, n: int) -> set[str]:
    with requests.Session() as session:
        return {session.get(url, timeout=5).headers["X-Site-Version"] for _ in range(n)}


def test_scale_up_and_down_changes_who_serves(
    lab_cluster: Callable[..., LabHandle], lab_engine: Engine
) -> None:
    lab = lab_cluster(replicas=2)
    orchestrator.scale(lab_engine, lab.name, 4)
    assert set(served_by(lab.url, 16)) == {f"{lab.name}-web-{i}" for i in range(1, 5)}
    assert orchestrator.find_running(lab_engine, lab.name).spec.replicas == 4
    orchestrator.scale(lab_engine, lab.name, 1)
    assert set(served_by(lab.url, 8)) == {f"{lab.name}-web-1"}
    assert [c.name for c in orchestrator.find_running(lab_engine, lab.name).backend.members()] == [
        f"{lab.name}-web-1"
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [("0", "between 1 and 64, not 0"), ("-1", "not -1"), ("65", "not 65"), ("many", "whole number")],
)
def test_scale_bad_input_is_one_line_and_leaves_the_lab(
    lab_cluster: Callable[..., LabHandle], value: str, message: str
) -> None:
    lab = lab_cluster(replicas=2)
    result = run_lab("scale", value, "--name", lab.name)
    assert result.code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert set(served_by(lab.url, 4)) == set(lab.replicas)


def test_deploy_rolls_out_a_new_version_to_every_replica(
    lab_cluster: Callable[..., LabHandle], lab_engine: Engine, tmp_path: Path
) -> None:
    lab = lab_cluster(replicas=3)
    before = versions(lab.url, 6)
    site = write_site(tmp_path / "v2", body="<h1>version two on <!--#echo var='HOSTNAME' --></h1>")
    result = run_lab("deploy", "--name", lab.name, "--site", str(site), "--tag", "v2", "--batch", "2")
    assert result.code == 0, result.stderr
    assert versions(lab.url, 9) == {"v2"} != before
    assert "version two" in requests.get(lab.url, timeout=5).text
    status = run_lab("status", "--name", lab.name, "--json")
    assert status.code == 0 and status.stdout.count('"site_version": "v2"') == 3


def test_deploy_of_a_site_that_does_not_build_touches_nothing(
    lab_cluster: Callable[..., LabHandle], lab_engine: Engine, tmp_path: Path
) -> None:
    lab = lab_cluster(replicas=2)
    before = {c.name for c in orchestrator.find_running(lab_engine, lab.name).backend.members()}
    site = write_site(tmp_path / "broken", dockerfile="ARG HTTPD_IMAGE\nFROM ${HTTPD_IMAGE}\nRUN exit 3\n")
    with pytest.raises(BuildFailed):
        orchestrator.deploy(lab_engine, lab.name, site=site)
    assert {c.name for c in orchestrator.find_running(lab_engine, lab.name).backend.members()} == before
    result = run_lab("deploy", "--name", lab.name, "--site", str(site))
    assert result.code == 1 and "building" in result.stderr and "Traceback" not in result.stderr


def test_a_deploy_whose_replicas_fail_rolls_back(
    lab_cluster: Callable[..., LabHandle], lab_engine: Engine, tmp_path: Path
) -> None:
    lab = lab_cluster(replicas=2)
    before = versions(lab.url, 4)
    bad = "ARG HTTPD_IMAGE\nFROM ${HTTPD_IMAGE}\nRUN echo 'NoSuchDirective on' >> conf/httpd.conf\nCOPY ./ htdocs/\n"
    site = write_site(tmp_path / "bad", dockerfile=bad)
    with pytest.raises(DeployFailed, match="serves again"):
        orchestrator.deploy(lab_engine, lab.name, site=site, tag="bad")
    assert versions(lab.url, 6) == before
    assert len(orchestrator.find_running(lab_engine, lab.name).backend.members()) == 2


def test_a_weighted_lab_keeps_its_weights_through_deploy_and_scale_and_verify_says_balanced(
    lab_cluster: Callable[..., LabHandle], lab_engine: Engine
) -> None:
    """Before: a rolling deploy of --weights 3,1,1 left nginx with equal weights while the stored spec
    still said 3,1,1, and verify judged a 33/33/33 spread against 60/20/20 and said skewed."""
    lab = lab_cluster(replicas=3, weights="3,1,1")
    assert orchestrator.deploy(lab_engine, lab.name, tag="weighted2", batch=1) == "weighted2"
    running = orchestrator.find_running(lab_engine, lab.name)
    assert running.replicas == [f"{lab.name}-web-{i}" for i in (4, 5, 6)]
    assert running.spec.weights == (3, 1, 1)
    assert upstream_weights(lab.nginx_conf) == ((3, 1, 1), None)
    result = lab.verify(requests=3000)
    assert result.verdict == "balanced", result.reason
    assert result.weights == [3, 1, 1]
    assert result.replicas[f"{lab.name}-web-4"].expected_share == pytest.approx(0.6)
    cli = run_lab("verify", "--name", lab.name, "--requests", "3000", "--json")
    assert cli.code == 0, cli.stdout[-2000:] + cli.stderr
    scaled = run_lab("scale", "--name", lab.name, "4")
    assert scaled.code == 0 and "new replica 4 gets weight 1 (weights now 3,1,1,1)" in scaled.stdout
    assert upstream_weights(lab.nginx_conf) == ((3, 1, 1, 1), None)
    assert lab.verify(requests=3000).verdict == "balanced"


def test_chaos_kill_then_restore(lab_cluster: Callable[..., LabHandle], lab_engine: Engine) -> None:
    lab = lab_cluster(replicas=3, fail_timeout=1)
    victim = lab.replicas[0]
    chaos.break_replica(lab_engine, lab.name, "1", "kill")
    assert set(served_by(lab.url, 12)) == set(lab.replicas[1:])  # retried elsewhere, never an error
    assert chaos.restore(lab_engine, lab.name) == [victim]
    assert set(served_by(lab.url, 12)) == set(lab.replicas)


@pytest.mark.parametrize("how", ["stop", "pause", "disconnect"])
def test_chaos_breaks_replicas_in_other_ways_without_failed_gets(
    lab_cluster: Callable[..., LabHandle], lab_engine: Engine, how: str
) -> None:
    lab = lab_cluster(replicas=2, fail_timeout=1)
    chaos.break_replica(lab_engine, lab.name, lab.replicas[1], how)
    assert set(served_by(lab.url, 6)) == {lab.replicas[0]}
    chaos.restore(lab_engine, lab.name)
    assert set(served_by(lab.url, 8)) == set(lab.replicas)


def test_chaos_on_an_unknown_replica_is_one_line(lab_cluster: Callable[..., LabHandle]) -> None:
    lab = lab_cluster(replicas=2)
    result = run_lab("chaos", "kill", "nope", "--name", lab.name)
    assert result.code == 2 and "has no replica 'nope'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_killed_load_balancer_comes_back_by_itself(
    lab_cluster: Callable[..., LabHandle], lab_engine: Engine
) -> None:
    lab = lab_cluster(replicas=2)
    chaos.kill_lb(lab_engine, lab.name)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(lab.url, timeout=1).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.1)
    else:
        pytest.fail("the load balancer did not come back within 30 s")
    lb = orchestrator.find_running(lab_engine, lab.name).lb
    assert lb.restart_count >= 1
    assert set(served_by(lab.url, 6)) == set(lab.replicas)
