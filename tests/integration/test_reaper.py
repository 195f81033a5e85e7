"""Ownership on a shared engine: reapers, as sessions meet them (killed, in other PID namespaces, --ttl).

Inner pytest sessions run as subprocesses with session ids of their own; each test removes what
those sessions own afterwards (`remove_session`), after it has counted what the reapers left.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from lab import labels, reaper
from lab.docker_ops import Engine
from lab.pytest_plugin import LabHandle, free_port
from tests.integration.conftest import (
    left_by,
    leftovers,
    new_session_id,
    raw,
    remove_session,
    run_lab,
    wait_until_reaper_gone,
)

pytest_plugins = ["pytester"]

GRACE = 3  # seconds: the inner sessions' grace period
SLACK = 30  # seconds on top, for a busy shared machine: what is asserted is "gone by itself"

# A test that brings a lab up, says so in a file, and holds it until told to go on.
HOLDING_TEST = """
import os, pathlib, time
import requests

def test_holds_a_lab(lab_cluster):
    lab = lab_cluster(replicas=1)
    pathlib.Path({marker!r}).write_text(f"{{os.getpid()}} {{lab.name}}")
    go = pathlib.Path({go!r})
    deadline = time.monotonic() + 240
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert go.exists(), "nobody said go"
    with requests.Session() as http:
        assert [http.get(lab.url, timeout=5).status_code for _ in range(5)] == [200] * 5
    assert [m.health for m in lab.status().replicas] == ["ok"]
"""


@pytest.fixture
def sessions(lab_engine: Engine) -> Iterator[list[str]]:
    """Session ids for inner runs; everything they own is removed after the test."""
    made: list[str] = []
    yield made
    for session in made:
        remove_session(lab_engine, session)


def inner_env(session: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "LAB_SESSION": session, reaper.GRACE_ENV: str(GRACE), **extra}
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


def pytest_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--timeout=280", *args]


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if not path.exists():
        output = process.communicate(timeout=30)[0] if process.poll() is not None else "(still running)"
        pytest.fail(f"the inner session never brought its lab up:\n{output[-3000:]}")
    return path.read_text()


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.communicate(timeout=30)


def serves(url: str) -> bool:
    with requests.Session() as http:
        return all(http.get(url, timeout=5).status_code == 200 for _ in range(3))


def test_a_killed_session_loses_its_labs_and_only_its_labs(
    pytester: pytest.Pytester, lab_engine: Engine, lab_cluster: object, sessions: list[str]
) -> None:
    other: LabHandle = lab_cluster(replicas=1)  # type: ignore[operator]  # this session's lab
    killed = new_session_id()
    sessions.append(killed)
    marker, go = pytester.path / "up", pytester.path / "go"
    pytester.makepyfile(test_user=HOLDING_TEST.format(marker=str(marker), go=str(go)))
    process = subprocess.Popen(
        pytest_command("test_user.py"),
        cwd=pytester.path,
        env=inner_env(killed),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(marker, process)
        assert left_by(lab_engine, killed) == (2, 2)
        process.send_signal(signal.SIGKILL)  # no teardown, no atexit, nothing of pytest runs
        process.wait(timeout=30)
        began = time.monotonic()
        while left_by(lab_engine, killed) != (0, 0):
            assert time.monotonic() - began < GRACE + SLACK, "the killed session's lab is still there"
            time.sleep(0.2)
        reaped_after = time.monotonic() - began
        wait_until_reaper_gone(lab_engine, killed)
    finally:
        stop(process)
    print(f"\nlab of a kill -9'd session reaped {reaped_after:.1f} s after the kill (grace {GRACE} s)")
    assert reaped_after >= GRACE - 0.5  # the reaper waited for the grace period, as it must
    assert serves(other.url) and leftovers(lab_engine, other.name) == (2, 2)  # the other session's lab


def _pid_namespace_command(command: list[str]) -> list[str]:
    """`command` in a new PID namespace, with a pid that names no live process out here: a pid
    check made from this namespace would call its session dead."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    last = next(n for n in range(pid_max - 2, pid_max - 2000, -1) if not Path(f"/proc/{n + 1}").exists())
    script = f"echo {last} > /proc/sys/kernel/ns_last_pid 2>/dev/null; {shlex.join(command)}"
    return ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script]


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


def test_a_session_in_another_pid_namespace_keeps_its_lab_beside_a_second_session(
    pytester: pytest.Pytester, lab_engine: Engine, sessions: list[str]
) -> None:
    if not _unshare_works():
        pytest.skip("unshare --pid --fork is not available here (needs root or user namespaces)")
    first, second = new_session_id(), new_session_id()
    sessions.extend([first, second])
    marker, go = pytester.path / "up", pytester.path / "go"
    pytester.makepyfile(test_first=HOLDING_TEST.format(marker=str(marker), go=str(go)))
    pytester.makepyfile(
        test_second="""
        def test_its_own_lab(lab_cluster):
            assert lab_cluster(replicas=1).status().replicas[0].health == "ok"
        """
    )
    process = subprocess.Popen(
        _pid_namespace_command(pytest_command("test_first.py")),
        cwd=pytester.path,
        env=inner_env(first),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        inner_pid, name = wait_for(marker, process).split()
        assert not Path(f"/proc/{inner_pid}").exists() or inner_pid == "1"  # another namespace's pid
        beside = subprocess.run(
            pytest_command("test_second.py"),
            cwd=pytester.path,
            env=inner_env(second),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert beside.returncode == 0, beside.stdout[-3000:]
        assert leftovers(lab_engine, name) == (2, 2)  # the second session left the first one's lab alone
        go.write_text("go")
        output, _ = process.communicate(timeout=120)
    finally:
        stop(process)
    assert process.returncode == 0 and "1 passed" in output, output[-3000:]


def test_a_reaper_that_cannot_start_fails_the_session_with_the_reason(
    pytester: pytest.Pytester, lab_engine: Engine, sessions: list[str], tmp_path: Path
) -> None:
    session = new_session_id()
    sessions.append(session)
    not_a_socket = tmp_path / "docker.sock"
    not_a_socket.write_text("")
    pytester.makepyfile(test_user="def test_needs_a_lab(lab_cluster):\n    lab_cluster(replicas=1)\n")
    result = subprocess.run(
        pytest_command("test_user.py"),
        cwd=pytester.path,
        env=inner_env(session, **{reaper.SOCKET_ENV: str(not_a_socket)}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout[-3000:]
    assert "1 error" in result.stdout
    assert (
        "the session's reaper did not start, so no lab may run: the reaper lab-reaper-" in result.stdout
        and f"cannot reach the Docker engine through {not_a_socket}" in result.stdout
    ), result.stdout[-3000:]
    assert left_by(lab_engine, session) == (0, 0)  # no lab was started unguarded
    assert lab_engine.container_named(reaper.session_reaper_name(session)) is None  # nor the reaper left


def test_a_session_reaper_is_locked_down(lab_engine: Engine) -> None:
    found = lab_engine.container_named(reaper.session_reaper_name(labels.session_id()))
    assert found is not None, "this session has a reaper"
    settings = raw(lab_engine, found)
    host = settings["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["ReadonlyRootfs"] and "no-new-privileges:true" in host["SecurityOpt"]
    assert [(m["Type"], m["Destination"]) for m in settings["Mounts"]] == [("bind", reaper.SOCKET_INSIDE)]
    bindings = settings["NetworkSettings"]["Ports"][f"{reaper.PORT}/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
    assert found.labels[labels.ROLE] == labels.ROLE_REAPER
    assert found.labels[labels.SESSION] == labels.session_id() and labels.NAME not in found.labels


def test_a_lab_with_a_ttl_removes_itself_and_status_says_when(lab_name: str, lab_engine: Engine) -> None:
    ttl = 12
    up = run_lab(
        "up", "--name", lab_name, "--port", str(free_port()), "--replicas", "1", "--ttl", f"{ttl}s", "-q"
    )
    began = time.time()
    assert up.code == 0, up.stderr
    assert f"lab {lab_name} removes itself in" in up.stdout
    status = run_lab("status", "--name", lab_name, "--json")
    expires = json.loads(status.stdout)["expires_at"]
    assert began - 2 < expires <= began + ttl + 1
    assert "removes itself in" in run_lab("status", "--name", lab_name).stdout
    own = lab_engine.container_named(f"{lab_name}-reaper")
    assert own is not None
    own_host = raw(lab_engine, own)["HostConfig"]
    assert own_host["NetworkMode"] == "none" and own_host["CapDrop"] == ["ALL"]
    while leftovers(lab_engine, lab_name) != (0, 0):
        assert time.time() < expires + SLACK, f"lab {lab_name} outlived its ttl"
        time.sleep(0.5)
    assert time.time() >= expires - 1  # not before its time
    gone = run_lab("status", "--name", lab_name)
    assert gone.code == 1 and "there is no lab named" in gone.stderr


def test_lab_down_removes_the_ttl_reaper_with_the_lab(lab_name: str, lab_engine: Engine) -> None:
    up = run_lab(
        "up", "--name", lab_name, "--port", str(free_port()), "--replicas", "1", "--ttl", "10m", "-q"
    )
    assert up.code == 0, up.stderr
    assert "removes itself in 10m" in up.stdout or "removes itself in 9m" in up.stdout
    down = run_lab("down", "--name", lab_name)
    assert down.code == 0 and "3 containers" in down.stdout  # load balancer, replica, reaper
    assert leftovers(lab_engine, lab_name) == (0, 0)
