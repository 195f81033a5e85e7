"""`lab up` / `status` / `down` on the real engine, with real HTTP through 127.0.0.1."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from lab import labels, orchestrator
from lab.docker_ops import Engine
from lab.errors import LabError
from lab.images import ensure_base_images
from lab.loadbalancer import LoadBalancer
from lab.pytest_plugin import LabHandle, free_port, unique_name
from lab.render import nginx_view, render_nginx_conf
from lab.spec import LabSpec

from .conftest import leftovers, raw, run_lab, served_by, write_site


def test_thirty_requests_reach_all_three_replicas(lab_cluster: Callable[..., LabHandle]) -> None:
    lab = lab_cluster(replicas=3)
    counts = served_by(lab.url, 30)
    assert set(counts) == set(lab.replicas)
    assert sum(counts.values()) == 30
    response = requests.get(lab.url, timeout=5)
    replica = response.headers["X-Served-By"]
    assert replica in response.text  # the page a person opens names its replica too
    assert response.headers["X-Upstream-Addr"].endswith(":80")
    assert response.headers["Server"] == "nginx"  # server_tokens off: no version
    assert requests.get(lab.url + "lab/health", timeout=5).text == "ok\n"


def test_resources_are_labelled_and_locked_down(
    lab_cluster: Callable[..., LabHandle], lab_engine: Engine
) -> None:
    lab = lab_cluster(replicas=2)
    containers = lab_engine.containers(labels.lab_filter(lab.name))
    assert len(containers) == 3
    for container in containers:
        host = raw(lab_engine, container)["HostConfig"]
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges:true" in host["SecurityOpt"]
        assert host["Memory"] > 0 and host["PidsLimit"] > 0
        assert container.labels[labels.NAME] == lab.name
        assert container.labels[labels.SESSION]
    web = [c for c in containers if c.labels[labels.ROLE] == "web"]
    lb = next(c for c in containers if c.labels[labels.ROLE] == "lb")
    for container in web:
        assert not raw(lab_engine, container)["HostConfig"]["PortBindings"]
        assert list(container.networks) == [f"{lab.name}-backend"]
    lb_settings = raw(lab_engine, lb)
    assert lb_settings["HostConfig"]["PortBindings"]["80/tcp"] == [
        {"HostIp": "127.0.0.1", "HostPort": str(lab.spec.port)}
    ]
    assert lb_settings["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert sorted(lb.networks) == sorted([f"{lab.name}-backend", f"{lab.name}-frontend"])
    backend = lab_engine.client.networks.get(f"{lab.name}-backend")
    assert backend.attrs["Internal"] is True


def test_status_reports_every_member_healthy(lab_cluster: Callable[..., LabHandle]) -> None:
    lab = lab_cluster(replicas=2)
    result = run_lab("status", "--name", lab.name, "--json")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["url"] == lab.url
    assert data["load_balancer"]["state"] == "running"
    assert data["load_balancer"]["health"] == "ok"
    assert [r["name"] for r in data["replicas"]] == lab.replicas
    assert all(r["state"] == "running" and r["health"] == "ok" for r in data["replicas"])
    assert all(r["site_version"] for r in data["replicas"])
    table = run_lab("status", "--name", lab.name)
    assert table.code == 0 and f"{lab.name}-web-2" in table.stdout


def test_rendered_config_passes_nginx_t_and_a_broken_one_does_not(lab_engine: Engine) -> None:
    base = ensure_base_images(lab_engine)
    spec = LabSpec.create(name=unique_name(), replicas=3)
    config = render_nginx_conf(nginx_view(spec))
    LoadBalancer.test_config(lab_engine, spec, base.nginx, config)
    with pytest.raises(LabError, match="nginx -t") as failure:
        LoadBalancer.test_config(lab_engine, spec, base.nginx, config.replace("keepalive 32;", "keepalive;"))
    assert "keepalive" in failure.value.detail
    assert leftovers(lab_engine, spec.name) == (0, 0)


def test_down_removes_everything_and_is_idempotent(lab_name: str, lab_engine: Engine) -> None:
    port = free_port()
    assert run_lab("up", "--name", lab_name, "--replicas", "2", "--port", str(port), "-q").code == 0
    assert leftovers(lab_engine, lab_name) == (3, 2)
    first = run_lab("down", "--name", lab_name)
    assert first.code == 0 and "3 containers, 2 networks" in first.stdout
    assert leftovers(lab_engine, lab_name) == (0, 0)
    again = run_lab("down", "--name", lab_name)
    assert again.code == 0 and "nothing to remove" in again.stdout
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_two_labs_run_side_by_side(lab_cluster: Callable[..., LabHandle], lab_engine: Engine) -> None:
    one = lab_cluster(replicas=2)
    two = lab_cluster(replicas=3)
    assert set(served_by(one.url, 10)) == set(one.replicas)
    assert set(served_by(two.url, 12)) == set(two.replicas)
    orchestrator.down(lab_engine, one.name)
    assert leftovers(lab_engine, one.name) == (0, 0)
    assert set(served_by(two.url, 12)) == set(two.replicas)


def test_port_in_use_is_refused_and_nothing_is_left(lab_name: str, lab_engine: Engine) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = run_lab("up", "--name", lab_name, "--port", str(port), "-q")
    assert result.code == 2
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert leftovers(lab_engine, lab_name) == (0, 0)


def test_a_second_up_with_the_same_name_is_refused_and_the_lab_keeps_serving(
    lab_cluster: Callable[..., LabHandle], lab_engine: Engine
) -> None:
    lab = lab_cluster(replicas=2)
    result = run_lab("up", "--name", lab.name, "--port", str(free_port()), "-q")
    assert result.code == 2 and "already up" in result.stderr
    assert leftovers(lab_engine, lab.name) == (3, 2)
    assert set(served_by(lab.url, 6)) == set(lab.replicas)


def test_a_failing_build_shows_its_error_and_rolls_back(
    lab_name: str, lab_engine: Engine, tmp_path: Path
) -> None:
    site = write_site(
        tmp_path / "site", dockerfile="ARG HTTPD_IMAGE\nFROM ${HTTPD_IMAGE}\nRUN echo no-such-step && false\n"
    )
    result = run_lab("up", "--name", lab_name, "--site", str(site), "--port", str(free_port()), "-q")
    assert result.code == 1
    assert "building" in result.stderr and "returned a non-zero code" in result.stderr
    assert "no-such-step" in result.stderr  # the tail of the build log
    assert "Traceback" not in result.stderr
    assert leftovers(lab_engine, lab_name) == (0, 0)


def test_a_replica_that_cannot_start_fails_up_with_its_log_and_rolls_back(
    lab_name: str, lab_engine: Engine, tmp_path: Path
) -> None:
    broken = "ARG HTTPD_IMAGE\nFROM ${HTTPD_IMAGE}\nRUN echo 'NoSuchDirective on' >> conf/httpd.conf\nCOPY ./ htdocs/\n"
    site = write_site(tmp_path / "site", dockerfile=broken)
    result = run_lab("up", "--name", lab_name, "--site", str(site), "--port", str(free_port()), "-q")
    assert result.code == 1
    assert "exited while starting" in result.stderr
    assert "NoSuchDirective" in result.stderr
    assert leftovers(lab_engine, lab_name) == (0, 0)


def test_ctrl_c_during_up_rolls_back(lab_name: str, lab_engine: Engine) -> None:
    ensure_base_images(lab_engine)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lab",
            "up",
            "--name",
            lab_name,
            "--replicas",
            "8",
            "--port",
            str(free_port()),
            "-q",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not lab_engine.containers(labels.lab_filter(lab_name, "web")):
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert leftovers(lab_engine, lab_name) == (0, 0)


def test_status_of_an_unknown_lab_is_one_line_error(lab_engine: Engine) -> None:
    result = run_lab("status", "--name", unique_name())
    assert result.code == 1
    assert "there is no lab named" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
