"""The pytest plugin as its users meet it: their test files, run by a separate pytest (pytester).

`runpytest_subprocess` starts a fresh interpreter, so the plugin loads from its `pytest11` entry
point, as it would in any project with `lab` installed. Each run gets its own session id, so what
it leaves behind can be counted by the `lab.session` label. (The reaper's own tests, kill -9 and
PID namespaces included, are in test_reaper.py.)
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import labels, orchestrator, reaper
from lab.docker_ops import Engine
from lab.loadbalancer import LoadBalancer
from lab.pytest_plugin import LabHandle, running_lab, unique_name
from tests.integration.conftest import left_by, new_session_id, remove_session, wait_until_reaper_gone

pytest_plugins = ["pytester"]

RUN_TIMEOUT = 240  # seconds for one inner pytest run (each lab comes up in a few seconds)
# A site whose replicas exit at once: `up` fails after creating networks and containers.
BROKEN_DOCKERFILE = "ARG HTTPD_IMAGE\nFROM ${HTTPD_IMAGE}\nRUN echo 'NoSuchDirective on' >> conf/httpd.conf\nCOPY ./ htdocs/\n"


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch, lab_engine: Engine) -> Iterator[str]:
    """A session id of its own for the inner run. Whatever the inner run leaves (its reaper
    included) is removed afterwards, after the test has counted it."""
    session_id = new_session_id()
    monkeypatch.setenv("LAB_SESSION", session_id)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # when this suite itself runs under xdist
    yield session_id
    remove_session(lab_engine, session_id)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--timeout=200", *args, timeout=RUN_TIMEOUT
    )


def test_a_users_test_file_using_the_fixtures_passes(
    pytester: pytest.Pytester, lab_engine: Engine, session: str
) -> None:
    pytester.makepyfile(
        test_user="""
        import requests

        def test_function_lab(lab_cluster):
            lab = lab_cluster()  # --lab-replicas=2 below sets the default
            assert len(lab.replicas) == 2 and lab.url.startswith("http://127.0.0.1:")
            with requests.Session() as http:
                seen = {http.get(lab.url, timeout=5).headers["X-Served-By"] for _ in range(6)}
            assert seen == set(lab.replicas)
            assert f"server {lab.replicas[0]}:80" in lab.nginx_conf
            assert set(lab.logs()) == {lab.name + "-lb", *lab.replicas}
            assert [m.health for m in lab.status().replicas] == ["ok", "ok"]
            result = lab.verify(requests=200)
            assert result.verdict == "balanced", result.reason
            lab.scale(3)
            assert len(lab.replicas) == 3 and lab.spec.replicas == 3
            with requests.Session() as http:
                seen = {http.get(lab.url, timeout=5).headers["X-Served-By"] for _ in range(9)}
            assert seen == set(lab.replicas)

        NAMES = []

        def test_session_lab_is_shared(lab_cluster_session):
            NAMES.append(lab_cluster_session(replicas=1).name)

        def test_session_lab_is_shared_again(lab_cluster_session):
            NAMES.append(lab_cluster_session(replicas=1).name)
            assert NAMES[0] == NAMES[1]
        """
    )
    result = run(pytester, "--lab-replicas=2")
    result.assert_outcomes(passed=3)
    assert left_by(lab_engine, session) == (0, 0)


def test_a_failing_test_still_tears_down_and_reports_the_lab(
    pytester: pytest.Pytester, lab_engine: Engine, session: str
) -> None:
    session_lab = unique_name("s")
    pytester.makepyfile(
        test_user=f"""
        def test_fails(lab_cluster):
            lab_cluster(replicas=1)
            assert False, "failing on purpose"

        def test_fails_with_a_session_lab(lab_cluster_session):
            lab_cluster_session(replicas=1, name={session_lab!r})
            assert False, "failing on purpose"
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert f"lab {session_lab}: nginx.conf" in out and f"lab {session_lab}: status" in out
    assert re.search(r"lab t-\w+: nginx\.conf", out)
    assert re.search(r"server t-\w+-web-1:80 max_fails", out)  # the rendered config itself
    assert re.search(r"lab t-\w+: status", out)
    assert re.search(r"t-\w+-lb +load balancer +running +ok", out)  # the status table
    assert re.search(r"lab t-\w+: logs of t-\w+-web-1", out)
    assert left_by(lab_engine, session) == (0, 0)


def test_a_lab_that_fails_during_setup_is_removed(
    pytester: pytest.Pytester, lab_engine: Engine, session: str
) -> None:
    pytester.makepyfile(
        test_user=f"""
        import pytest

        @pytest.fixture
        def broken_lab(lab_cluster, tmp_path):
            (tmp_path / "index.html").write_text("<h1>test site</h1>")
            (tmp_path / "Dockerfile").write_text({BROKEN_DOCKERFILE!r})
            return lab_cluster(replicas=2, site=tmp_path)

        def test_never_runs(broken_lab):
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*lab_cluster: lab t-* did not come up: replica t-*-web-* exited while starting*"]
    )
    assert "NoSuchDirective" in result.stdout.str()  # the replica's log comes along
    assert left_by(lab_engine, session) == (0, 0)


def test_bad_fixture_parameters_fail_with_one_line(
    pytester: pytest.Pytester, lab_engine: Engine, session: str
) -> None:
    pytester.makepyfile(
        test_user="""
        def test_unknown(lab_cluster):
            lab_cluster(replicaz=3)

        def test_out_of_range(lab_cluster):
            lab_cluster(replicas=0)

        def test_unknown_method(lab_cluster_session):
            lab_cluster_session(algorithm="fastest")
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(
        [
            "*lab_cluster: unknown parameter 'replicaz' (known: name, replicas, port, bind, site, algorithm, *)",
            "*lab_cluster: replicas must be between 1 and 64, not 0",
            "*lab_cluster_session: unknown balancing method 'fastest'; choose one of *",
        ]
    )
    assert "Traceback" not in result.stdout.str() and "def test_unknown" not in result.stdout.str()
    assert left_by(lab_engine, session) == (0, 0)


def test_bad_lab_replicas_option_is_a_usage_error(pytester: pytest.Pytester, session: str) -> None:
    pytester.makepyfile(test_user="def test_nothing():\n    pass\n")
    result = run(pytester, "--lab-replicas=100")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--lab-replicas: replicas must be between 1 and 64, not 100: 64 is the most*"]
    )


def test_lab_keep_leaves_the_lab_and_says_how_to_remove_it(
    pytester: pytest.Pytester, lab_engine: Engine, session: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique_name("kept")  # given, so that this test removes the lab whatever happens
    leftover = unique_name("left")
    monkeypatch.setenv(reaper.GRACE_ENV, "1")
    pytester.makepyfile(
        test_user=f"""
        from lab import labels

        def test_kept(lab_cluster, lab_engine):
            lab_cluster(replicas=1, name={name!r})
            # What a failed teardown would leave: not kept, so the reaper removes it.
            lab_engine.create_network({leftover!r}, labels.for_lab({leftover!r}, "backend"), internal=True)
        """
    )
    try:
        result = run(pytester, "--lab-keep")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(
            [
                "*labs left running (--lab-keep)*",
                f"lab {name}: http://127.0.0.1:*remove: lab down --name {name}",
            ]
        )
        wait_until_reaper_gone(lab_engine, session)  # the session is over and its reaper has reaped
        assert not lab_engine.networks(labels.lab_filter(leftover))
        running = lab_engine.containers(labels.lab_filter(name))
        assert sorted(c.status for c in running) == ["running", "running"]
        assert running[0].labels[labels.SESSION] == session  # honest labels: kept, not disowned
    finally:
        orchestrator.remove_lab(lab_engine, name)
        orchestrator.remove_lab(lab_engine, leftover)


def test_two_xdist_workers_get_two_distinct_labs(
    pytester: pytest.Pytester, lab_engine: Engine, session: str, tmp_path: Path
) -> None:
    names = tmp_path / "names"
    names.mkdir()
    pytester.makepyfile(
        test_user=f"""
        import os, pathlib
        import pytest

        @pytest.mark.parametrize("n", [1, 2])
        def test_records_its_lab(lab_cluster, n):
            lab = lab_cluster(replicas=1)
            worker = os.environ["PYTEST_XDIST_WORKER"]
            (pathlib.Path({str(names)!r}) / f"{{n}}-{{worker}}").write_text(lab.name)
        """
    )
    result = run(pytester, "-n", "2")
    result.assert_outcomes(passed=2)
    recorded = {path.name: path.read_text() for path in names.iterdir()}
    assert len(recorded) == 2 and len(set(recorded.values())) == 2
    for file_name, lab_name in recorded.items():
        worker = file_name.split("-", 1)[1]
        assert f"-{worker}-" in lab_name  # the worker id is part of the lab name
    assert left_by(lab_engine, session) == (0, 0)


def test_ctrl_c_in_a_test_removes_its_lab(
    pytester: pytest.Pytester, lab_engine: Engine, session: str
) -> None:
    marker = pytester.path / "lab-is-up"
    pytester.makepyfile(
        test_user=f"""
        import pathlib, time

        def test_waits(lab_cluster):
            lab = lab_cluster(replicas=1)
            pathlib.Path({str(marker)!r}).write_text(lab.name)
            time.sleep(120)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--timeout=200", "test_user.py"],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the inner test never brought its lab up"
        assert left_by(lab_engine, session)[0] == 2
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)
    assert "KeyboardInterrupt" in output
    assert left_by(lab_engine, session) == (0, 0)


def test_running_lab_works_without_pytest_and_rolls_back_an_interrupted_up(
    lab_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_lab(lab_engine, replicas=1) as lab:
        assert isinstance(lab, LabHandle) and lab.status().replicas[0].health == "ok"
    assert orchestrator.remove_lab(lab_engine, lab.name).nothing

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(LoadBalancer, "wait_serving", interrupted)  # after everything was created
    name = unique_name()
    with pytest.raises(KeyboardInterrupt), running_lab(lab_engine, name=name, replicas=1):
        pass
    assert orchestrator.remove_lab(lab_engine, name).nothing


@pytest.mark.parametrize("ci", ["", "true"])
def test_without_an_engine_labs_skip_locally_and_fail_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{pytester.path}/no-docker.sock")
    monkeypatch.setenv("CI", ci)
    pytester.makepyfile(test_user="def test_needs_a_lab(lab_cluster):\n    lab_cluster()\n")
    result = run(pytester, "-rs")
    if ci:
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*CI=true and no Docker engine answers*"])
    else:
        result.assert_outcomes(skipped=1)
        result.stdout.fnmatch_lines(["SKIPPED*no Docker engine answers; start one*"])
