"""`lab up --engine swarm` on a single-node swarm (this engine, the session's swarm): the site as a
replicated service, nginx in front from our template, a watcher keeping the upstream on the running
tasks, and every command a user runs on one engine: status, verify, configure, scale, chaos, deploy,
experiments with no failed request, down. Driven through the real `lab` command.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from lab import labels, nodes, swarm
from lab.docker_ops import Engine
from lab.loadbalancer import upstream_hosts
from lab.pytest_plugin import free_port, unique_name
from lab.swarm_replicas import STACK_NAMESPACE
from lab.taskwatch import last_change

from .conftest import raw, run_lab, served_by, write_site

pytestmark = pytest.mark.swarm

WAIT = 60.0


@dataclass(frozen=True)
class SwarmLab:
    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def service(self) -> str:
        return f"{self.name}-web"


@pytest.fixture(scope="module")
def swarm_lab(lab_engine: Engine, swarm_manager: swarm.Manager) -> Iterator[SwarmLab]:
    lab = SwarmLab(unique_name("sw"), free_port())
    began = time.monotonic()
    result = run_lab(
        "up", "--engine", "swarm", "--name", lab.name, "--port", str(lab.port), "--replicas", "3"
    )
    assert result.code == 0, result.stderr
    print(f"\nlab up --engine swarm --replicas 3: {time.monotonic() - began:.1f} s")
    try:
        yield lab
    finally:
        run_lab("down", "--name", lab.name)


def status(lab: SwarmLab) -> dict[str, Any]:
    result = run_lab("status", "--name", lab.name, "--json")
    assert result.code == 0, result.stderr
    return dict(json.loads(result.stdout))


def running_addresses(engine: Engine, lab: SwarmLab) -> list[str]:
    network = f"{lab.name}-backend"
    return sorted(t.networks[network] for t in engine.service_tasks(lab.service) if t.state == "running")


def served_hosts(engine: Engine, lab: SwarmLab) -> list[str]:
    lb = engine.container_named(f"{lab.name}-lb")
    assert lb is not None
    return sorted(upstream_hosts(engine.read_file(lb, "/etc/nginx/nginx.conf")))


def wait_for(what: str, check: Any, timeout: float = WAIT) -> float:
    """Seconds until `check()` is true; a failure naming `what` after `timeout`."""
    began = time.monotonic()
    while not check():
        assert time.monotonic() - began < timeout, f"{what} not within {timeout:.0f} s"
        time.sleep(0.2)
    return time.monotonic() - began


def watcher_changes(engine: Engine, lab: SwarmLab) -> list[dict[str, Any]]:
    container = engine.container_named(f"{lab.name}-watcher")
    assert container is not None
    lines = engine.logs(container, tail=500).splitlines()
    return [change for line in lines if (change := last_change(line)) is not None]


# What the lab is made of -----------------------------------------------------------------------
def test_the_site_is_a_labelled_health_checked_service_updated_start_first_with_rollback(
    lab_engine: Engine, swarm_lab: SwarmLab
) -> None:
    spec = lab_engine.client.api.inspect_service(swarm_lab.service)["Spec"]
    assert spec["Labels"][labels.NAME] == swarm_lab.name and spec["Labels"][labels.ROLE] == "web-service"
    assert spec["Mode"]["Replicated"]["Replicas"] == 3
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert container["Hostname"] == "{{.Service.Name}}-{{.Task.Slot}}"
    assert container["Healthcheck"]["Test"][:2] == ["CMD", "bash"]
    assert container["CapabilityDrop"] == ["ALL"]
    assert container["Labels"][labels.NAME] == swarm_lab.name
    update = spec["UpdateConfig"]
    assert (update["Order"], update["FailureAction"], update["Parallelism"]) == ("start-first", "rollback", 1)
    assert update["Monitor"] > 0
    assert spec["EndpointSpec"]["Mode"] == "dnsrr" and not spec["EndpointSpec"].get("Ports")  # no ingress
    overlay = lab_engine.client.api.inspect_network(f"{swarm_lab.name}-backend")
    assert (overlay["Driver"], overlay["Attachable"], overlay["Internal"]) == ("overlay", True, True)
    assert overlay["Labels"][labels.NAME] == swarm_lab.name


def test_only_the_load_balancer_publishes_and_only_on_loopback(
    lab_engine: Engine, swarm_lab: SwarmLab
) -> None:
    lb = lab_engine.container_named(f"{swarm_lab.name}-lb")
    assert lb is not None
    bindings = raw(lab_engine, lb)["HostConfig"]["PortBindings"]
    assert bindings == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(swarm_lab.port)}]}
    assert set(lb.networks) == {f"{swarm_lab.name}-backend", f"{swarm_lab.name}-frontend"}
    watcher = lab_engine.container_named(f"{swarm_lab.name}-watcher")
    assert watcher is not None
    settings = raw(lab_engine, watcher)
    host = settings["HostConfig"]
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
    assert not host.get("PortBindings")
    assert [m["Destination"] for m in settings["Mounts"]] == ["/var/run/docker.sock"]


def test_nginx_balances_over_the_running_tasks_addresses_with_our_template(
    lab_engine: Engine, swarm_lab: SwarmLab
) -> None:
    assert served_hosts(lab_engine, swarm_lab) == running_addresses(lab_engine, swarm_lab)
    lb = lab_engine.container_named(f"{swarm_lab.name}-lb")
    assert lb is not None
    config = lab_engine.read_file(lb, "/etc/nginx/nginx.conf")
    assert "resolver" not in config and f"# replica 1: task {swarm_lab.name}-web-1 on node " in config
    assert set(served_by(swarm_lab.url, 30)) == {f"{swarm_lab.name}-web-{i}" for i in (1, 2, 3)}


def test_status_names_each_tasks_node_and_the_watcher(lab_engine: Engine, swarm_lab: SwarmLab) -> None:
    found = status(swarm_lab)
    assert found["engine"] == "swarm"
    hostnames = {n.id: n.hostname for n in lab_engine.swarm_nodes()}
    where = {
        t.slot: hostnames[t.node_id]
        for t in lab_engine.service_tasks(swarm_lab.service)
        if t.state == "running"
    }
    assert [(r["name"], r["state"], r["node"]) for r in found["replicas"]] == [
        (f"{swarm_lab.name}-web-{i}", "running", where[i]) for i in (1, 2, 3)
    ]  # on a single-node swarm (as under CI) all on this engine; on this desk, wherever Swarm put them
    assert found["watcher"]["state"] == "running"
    table = run_lab("status", "--name", swarm_lab.name)
    spread = ", ".join(f"{node} {n}" for node, n in sorted(Counter(where.values()).items()))
    assert "on swarm" in table.stdout and f"replicas per node: {spread}" in table.stdout


def test_verify_says_balanced_and_gives_the_spread_per_node(swarm_lab: SwarmLab) -> None:
    result = run_lab("verify", "--name", swarm_lab.name, "--requests", "600", "--json")
    assert result.code == 0, result.stdout + result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["verdict"] == "balanced" and verdict["errors"] == 0
    assert verdict["access_log"]["matches"]
    by_node = verdict["by_node"]
    assert sum(n["count"] for n in by_node) == 600 and sum(len(n["replicas"]) for n in by_node) == 3


# Changing it -------------------------------------------------------------------------------------
def test_configure_survives_the_watchers_next_change(lab_engine: Engine, swarm_lab: SwarmLab) -> None:
    result = run_lab("configure", "--name", swarm_lab.name, "--algorithm", "least_conn")
    assert result.code == 0, result.stderr
    result = run_lab("scale", "--name", swarm_lab.name, "4")
    assert result.code == 0, result.stderr
    lb = lab_engine.container_named(f"{swarm_lab.name}-lb")
    assert lb is not None
    assert "least_conn;" in lab_engine.read_file(lb, "/etc/nginx/nginx.conf")  # the watcher did not undo it
    run_lab("configure", "--name", swarm_lab.name, "--algorithm", "round_robin")


def test_scale_changes_the_task_count_and_the_upstream_follows_fast(
    lab_engine: Engine, swarm_lab: SwarmLab
) -> None:
    for count in (5, 2, 3):
        began = time.monotonic()
        result = run_lab("scale", "--name", swarm_lab.name, str(count))
        assert result.code == 0, result.stderr
        assert f"now has {count} replicas" in result.stdout
        print(f"\nlab scale {count}: {time.monotonic() - began:.1f} s")
        assert len(running_addresses(lab_engine, swarm_lab)) == count
        assert served_hosts(lab_engine, swarm_lab) == running_addresses(lab_engine, swarm_lab)
    latencies = [c["latency_s"] for c in watcher_changes(lab_engine, swarm_lab) if c["latency_s"] is not None]
    print(f"task change to upstream (watcher): {sorted(latencies)} s")
    assert latencies and len(served_by(swarm_lab.url, 12)) == 3


def test_a_killed_task_is_replaced_and_its_replacement_serves(
    lab_engine: Engine, swarm_lab: SwarmLab
) -> None:
    before = set(running_addresses(lab_engine, swarm_lab))
    result = run_lab("chaos", "kill", "--name", swarm_lab.name, "2")
    assert result.code == 0, result.stderr
    assert "Swarm replaces it" in result.stdout

    def replaced() -> bool:
        now = set(running_addresses(lab_engine, swarm_lab))
        return len(now) == 3 and now != before and set(served_hosts(lab_engine, swarm_lab)) == now

    took = wait_for("the killed task's replacement in the upstream", replaced)
    took += wait_for("every replica answering", lambda: len(served_by(swarm_lab.url, 9)) == 3, timeout=10)
    print(f"\nkilled task replaced and answering through the load balancer after {took:.1f} s")
    refused = run_lab("chaos", "disconnect", "--name", swarm_lab.name, "1")
    assert refused.code == 2 and "disconnect is not available on a swarm lab" in refused.stderr


def test_deploy_updates_the_service_and_a_failing_version_is_rolled_back(
    lab_engine: Engine, swarm_lab: SwarmLab, tmp_path: Path
) -> None:
    result = run_lab("deploy", "--name", swarm_lab.name, "--tag", "sw2")
    assert result.code == 0, result.stderr
    assert {r["site_version"] for r in status(swarm_lab)["replicas"]} == {"sw2"}
    with requests.Session() as session:
        assert {session.get(swarm_lab.url, timeout=5).headers["X-Site-Version"] for _ in range(9)} == {"sw2"}
    bad = "ARG HTTPD_IMAGE\nFROM ${HTTPD_IMAGE}\nRUN echo 'NoSuchDirective on' >> conf/httpd.conf\nCOPY ./ htdocs/\n"
    site = write_site(tmp_path / "bad", dockerfile=bad)
    result = run_lab("deploy", "--name", swarm_lab.name, "--site", str(site), "--tag", "swbad")
    assert result.code == 1
    assert "Swarm rolled the service back and version sw2 serves again" in result.stderr
    assert "Traceback" not in result.stderr
    found = status(swarm_lab)
    assert {r["site_version"] for r in found["replicas"]} == {"sw2"} and len(found["replicas"]) == 3
    assert served_hosts(lab_engine, swarm_lab) == running_addresses(lab_engine, swarm_lab)


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("scale", ["--steps", "5,2", "--duration", "20"]),
        ("deploy", ["--duration", "24", "--tag", "sw3"]),
        ("failover", ["--how", "kill", "--duration", "14"]),
    ],
)
def test_experiments_on_a_swarm_lab_lose_no_request(
    swarm_lab: SwarmLab, kind: str, options: list[str]
) -> None:
    result = run_lab("experiment", kind, "--name", swarm_lab.name, "--rate", "60", *options, "--json")
    assert result.stdout, result.stderr
    found = json.loads(result.stdout)
    print(
        f"\nexperiment {kind}: {found['sent']} sent, {found['failed']} failed, {found['verdict']}; {found['extra']}"
    )
    assert (found["failed"], found["verdict"]) == (0, "zero-loss"), found["reason"]
    assert result.code == 0 and all(c["passed"] for c in found["checks"]), found["checks"]


# Bad input and down -----------------------------------------------------------------------------------
def test_a_name_taken_by_a_service_or_a_stack_is_refused_and_nothing_is_left(
    lab_engine: Engine, swarm_manager: swarm.Manager
) -> None:
    name, stack = unique_name("taken"), unique_name("stack")
    # Someone else's service with the name the lab's would have, and a stack named like the lab:
    # no replicas, so nothing runs. Only the session's label: its reaper removes them if this test dies.
    mine = {labels.SESSION: labels.session_id()}
    made = [
        lab_engine.client.api.create_service(
            {"ContainerSpec": {"Image": "lab/httpd:2.4-debian"}}, name=service, labels=found,
            mode={"Replicated": {"Replicas": 0}},
        )["ID"]
        for service, found in (
            (f"{name}-web", {"test": "not a lab", **mine}), (f"{stack}_web", {STACK_NAMESPACE: stack, **mine})
        )
    ]  # fmt: skip
    try:
        for lab, message in (
            (name, f"a swarm service named '{name}-web' exists"),
            (stack, f"a stack named '{stack}'"),
        ):
            result = run_lab("up", "--engine", "swarm", "--name", lab, "--port", str(free_port()))
            assert result.code == 2 and message in result.stderr, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
            assert not lab_engine.containers(labels.lab_filter(lab))
            assert not lab_engine.networks(labels.lab_filter(lab))
        assert {s.id for s in lab_engine.services()} >= set(made)  # theirs: untouched
    finally:
        for service in made:
            lab_engine.remove_service(service)


def test_kill_node_with_no_worker_is_one_line(lab_engine: Engine, swarm_lab: SwarmLab) -> None:
    if nodes.node_containers(lab_engine):
        pytest.skip("nodes of someone else run on this engine")  # never under CI: no one else there
    result = run_lab("chaos", "kill-node", "--name", swarm_lab.name)
    assert result.code == 2 and "there is no worker node to kill" in result.stderr
    result = run_lab("experiment", "node-failure", "--name", swarm_lab.name)
    assert result.code == 2 and "there is no worker node to kill" in result.stderr


def test_cp_and_snapshot_refuse_a_swarm_lab_whose_tasks_come_and_go(
    lab_engine: Engine, swarm_lab: SwarmLab, tmp_path: Path
) -> None:
    page = tmp_path / "extra.html"
    page.write_text("<p>extra</p>")
    for args in (
        ("cp", str(page), "--name", swarm_lab.name, "--all"),
        ("snapshot", "1", "--name", swarm_lab.name, "--tag", "never"),
    ):
        result = run_lab(*args)
        assert result.code == 2, result.stderr
        assert "runs on Docker Swarm, whose tasks are replaced at will" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not lab_engine.image_exists("lab/site:never")


def test_down_removes_the_service_and_everything_else_and_the_swarm_stays(
    lab_engine: Engine, swarm_lab: SwarmLab
) -> None:
    result = run_lab("down", "--name", swarm_lab.name)
    assert result.code == 0, result.stderr
    assert "1 service" in result.stdout
    selector = labels.lab_filter(swarm_lab.name)
    assert not lab_engine.services(selector)
    assert not lab_engine.containers(selector) and not lab_engine.networks(selector)
    assert swarm.view(lab_engine).state == "active"  # the session's swarm: pinned, so it stays
    again = run_lab("status", "--name", swarm_lab.name)
    assert again.code == 1 and "there is no lab named" in again.stderr
