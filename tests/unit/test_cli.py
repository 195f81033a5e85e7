"""Bad input on the command line: one line on stderr, a non-zero exit, no traceback, no Docker needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab.cli import main
from lab.errors import ExitCode


def lab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "lab", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["up", "--replicas", "0"], "replicas must be between 1 and 64, not 0"),
        (["up", "--replicas", "-2"], "replicas must be between 1 and 64, not -2"),
        (["up", "--replicas", "abc"], "replicas must be a whole number"),
        (["up", "--replicas", "65"], "replicas must be between 1 and 64, not 65"),
        (["up", "--replicas", "100"], "not 100: 64 is the most one lab is sized and tested for"),
        (["scale", "65"], "not 65: 64 is the most one lab is sized and tested for"),
        (["up", "--port", "http"], "port must be a whole number"),
        (["up", "--port", "0"], "port must be between 1 and 65535"),
        (["up", "--port", "70000"], "port must be between 1 and 65535"),
        (["up", "--bind", "localhost:80"], "bind address must be an IP address"),
        (["up", "--site", "/no/such/dir"], "site directory '/no/such/dir' does not exist"),
        (["up", "--name", "Bad_Name"], "lab name must be"),
        (["up", "--no-such-flag"], "No such option"),
        (["up", "--ttl", "0"], "ttl must be between 10s and 7d (a week), not 0"),
        (["up", "--ttl", "abc"], "ttl must be a duration such as 30m, 2h or 1h30m, not 'abc'"),
        (["up", "--ttl", "8d"], "ttl must be between 10s and 7d (a week), not 8d"),
        (["render", "--replicas", "0"], "replicas must be between"),
        # Refused before any engine is asked (there is none here): no load starts.
        (["experiment", "deploy", "--tag", "../x"], "tag must be 1-64 letters, digits or _.-"),
        (["experiment", "scale", "--tag", "v2"], "a scale experiment does not take tag"),
        (["deploy", "--tag", "a b"], "tag must be 1-64 letters, digits or _.-"),
        # The Docker workflow (issue 11): all refused before any engine is asked.
        (["cp", "/no/such/page.html", "--all"], "copy source '/no/such/page.html' does not exist"),
        (["cp", "README.md", "--replica", "1", "--all"], "give --replica REPLICA or --all (one of them)"),
        (["cp", "README.md"], "give --replica REPLICA or --all (one of them)"),
        (["cp", "README.md", "--all", "--dest", "htdocs"], "--dest must be an absolute path"),
        (["snapshot", "1", "--tag", "v2!"], "tag must be 1-64 letters, digits or _.-"),
        (["snapshot", "1", "--tag", "-v2"], "tag must be 1-64 letters, digits or _.-"),
        (["snapshot", "1"], "Missing option '--tag'"),
        (["deploy", "--image", "v2", "--tag", "v3"], "--image rolls out an existing image"),
        (["experiment", "deploy", "--image", "v2", "--tag", "v3"], "--image rolls out an existing image"),
        (["experiment", "deploy", "--image", "a b"], "tag must be 1-64 letters"),
        (["up", "--mount-site", "--site", "/no/such/dir"], "site directory '/no/such/dir' does not exist"),
        (["up", "--tag", "v1"], "--tag is for --from-registry"),
        (["up", "--from-registry", "--tag", "v 1"], "tag must be 1-64 letters"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = lab(*args, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.returncode == ExitCode.USAGE
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_a_site_without_index_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "--site", str(tmp_path)]) == ExitCode.USAGE
    assert "has no index.html" in capsys.readouterr().err


def test_no_engine_is_a_one_line_error_with_its_own_exit_code() -> None:
    result = lab("status", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.returncode == ExitCode.NO_ENGINE
    assert "no Docker engine answers" in result.stderr
    assert "Traceback" not in result.stderr
    down = lab("down", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert down.returncode == ExitCode.NO_ENGINE


def test_render_prints_the_config_up_would_use(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "--replicas", "2", "--name", "demo"]) == 0
    out = capsys.readouterr().out
    assert "server demo-web-1:80" in out and "server demo-web-2:80" in out
    assert "demo-web-3" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nodes", "add", "0"], "node count must be between 1 and 4, not 0"),
        (["nodes", "add", "5"], "node count must be between 1 and 4, not 5"),
        (["nodes", "add", "-1"], "node count must be between 1 and 4, not -1"),
        (["nodes", "add", "many"], "node count must be a whole number"),
        (["nodes", "rm"], "give one NODE or --all"),
        (["nodes", "rm", "lab-node-1", "--all"], "give one NODE or --all"),
        (["push", "--tag", "v 1"], "tag 'v 1' is not valid"),
        (["push", "--tag", "-x"], "tag '-x' is not valid"),
        (["registry", "up", "--port", "0"], "port must be between 1 and 65535"),
        (["registry", "up", "--port", "web"], "port must be a whole number"),
        (["registry", "up", "--registry", "Bad_Name"], "registry name must be"),
        (["registry", "down", "--registry", "a/b"], "registry name must be"),
        (["registry", "status", "--registry", "A"], "registry name must be"),
        (["push", "--registry", "A"], "registry name must be"),
    ],
)
def test_registry_and_node_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    # No engine is reachable here: validation must come before any Docker call.
    result = lab(*args, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["up", "--engine", "kubernetes"], "unknown engine 'kubernetes'; choose docker"),
        (["up", "--engine", ""], "unknown engine ''"),
        (["up", "--init"], "--init is for --engine swarm"),
        (
            ["experiment", "node-failure", "--restore", "during"],
            "restore must be one of after, no for a node failure",
        ),
        (["experiment", "node-failure", "--node", "Bad Node"], "node must be a node name such as lab-node-1"),
        (["experiment", "node-failure", "--how", "kill"], "a node-failure experiment does not take how"),
        (["experiment", "scale", "--node", "lab-node-1"], "a scale experiment does not take node"),
    ],
)
def test_swarm_bad_input_is_one_line_and_exit_2_before_any_engine_is_asked(
    args: list[str], message: str
) -> None:
    result = lab(*args, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
