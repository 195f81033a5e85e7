"""`lab dashboard` and `lab watch` on real labs: counts against the load's own, a kill from the page,
refusals on the real server, a load balancer restart mid-stream, the terminal view, and the page in
headless Chromium (which also makes the README's screenshot when LAB_UPDATE_SCREENSHOT=1)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from lab import chaos, live, orchestrator, traffic
from lab.docker_ops import Engine
from lab.errors import ExitCode
from lab.pytest_plugin import LabHandle, free_port, in_ci

from .conftest import run_lab

DOCS = Path(__file__).resolve().parents[2] / "docs"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]


@dataclass
class Dashboard:
    """A `lab dashboard` process of the test's own."""

    process: subprocess.Popen[str]
    url: str
    port: int
    token: str = ""
    streams: list[requests.Response] = field(default_factory=list)

    def state(self) -> dict[str, Any]:
        response = requests.get(self.url + "api/state", timeout=5)
        response.raise_for_status()
        return dict(response.json())

    def wait_for(self, check: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        state = self.state()
        while not check(state):
            assert time.monotonic() < deadline, f"waited {timeout} s; last state: {state}"
            time.sleep(0.05)
            state = self.state()
        return state

    def post(self, kind: str, body: object, *, token: str | None = None) -> requests.Response:
        headers = {"X-Lab-Token": self.token if token is None else token}
        return requests.post(f"{self.url}api/actions/{kind}", json=body, headers=headers, timeout=120)

    def first_streamed_state(self) -> dict[str, Any]:
        """Open the event stream as the page does; return its first state and leave it open."""
        response = requests.get(self.url + "api/stream", stream=True, timeout=10)
        assert response.headers["content-type"].startswith("text/event-stream")
        self.streams.append(response)
        for text in response.iter_lines(decode_unicode=True):
            if text.startswith("data: "):
                return dict(json.loads(text[len("data: ") :]))
        raise AssertionError("the event stream ended without a state")

    def stop(self) -> tuple[int, str, str]:
        """Ctrl-C, as a user stops it (open event streams included); its exit status and output."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        out, err = self.process.communicate(timeout=20)
        for stream in self.streams:
            stream.close()
        return int(self.process.returncode), out, err


def replica(state: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in state["replicas"] if r["name"] == name)


@pytest.fixture
def dashboard_for() -> Iterator[Callable[[str], Dashboard]]:
    started: list[Dashboard] = []

    def start(name: str) -> Dashboard:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "lab", "dashboard", "--name", name, "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        dash = Dashboard(process, f"http://127.0.0.1:{port}/", port)
        started.append(dash)
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"lab dashboard exited: {process.communicate()}"
            try:
                page = requests.get(dash.url, timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "lab dashboard did not answer within 30 s"
                time.sleep(0.1)
        token = re.search(r'<meta name="lab-token" content="([^"]+)">', page.text)
        assert token, page.text
        dash.token = token.group(1)
        return dash

    yield start
    for dash in started:
        code, out, err = dash.stop()
        assert code == 0 and "dashboard stopped" in out, (code, out, err)
        assert "Traceback" not in err, err


def background_load(port: int, *, rate: float, duration: float) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        result["tally"] = traffic.run_load(
            "127.0.0.1", port, requests=None, duration=duration, rate=rate, concurrency=8
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def assert_counts_agree(state: dict[str, Any], tally: traffic.Tally, tolerance: float = 0.01) -> None:
    for name, count in tally.by_replica.items():
        seen = replica(state, name)["requests"]
        assert abs(seen - count) <= tolerance * count, (name, seen, count, state["replicas"])


# Counts ---------------------------------------------------------------------------------------
def test_per_replica_counts_agree_with_the_loads_own_counts(
    lab_cluster: Callable[..., LabHandle], dashboard_for: Callable[[str], Dashboard]
) -> None:
    lab = lab_cluster(replicas=3)
    dash = dashboard_for(lab.name)
    tally = traffic.run_load("127.0.0.1", lab.spec.port, requests=20_000, duration=None, concurrency=16)
    assert tally.ok == 20_000 and set(tally.by_replica) == set(lab.replicas)
    state = dash.wait_for(lambda s: s["total_requests"] >= tally.sent, timeout=10)
    assert_counts_agree(state, tally)
    assert state["total_requests"] == tally.sent  # nothing twice, nothing of our own
    assert [r["state"] for r in state["replicas"]] == ["serving"] * 3
    assert sum(r["expected_share"] for r in state["replicas"]) == pytest.approx(1.0, abs=1e-3)
    # The page's verify and method switch are the commands' own functions.
    verified = dash.post("verify", {"requests": 900})
    assert verified.status_code == 200, verified.text
    result = verified.json()["result"]
    assert result["verdict"] == "balanced" and sum(result["replicas"].values()) == 900
    state = dash.wait_for(lambda s: s["total_requests"] >= tally.sent + 900, timeout=10)
    assert any(e["kind"] == "verify" and "balanced" in e["text"] for e in state["events"])
    switched = dash.post("method", {"method": "least_conn"})
    assert switched.status_code == 200 and switched.json()["result"] == {"method": "least_conn"}
    state = dash.wait_for(lambda s: s["method"] == "least_conn", timeout=5)
    assert any(e["kind"] == "configure" for e in state["events"])


def test_a_load_balancer_restart_and_a_reload_mid_stream_count_nothing_twice(
    lab_cluster: Callable[..., LabHandle], lab_engine: Engine, dashboard_for: Callable[[str], Dashboard]
) -> None:
    lab = lab_cluster(replicas=3)
    dash = dashboard_for(lab.name)
    thread, result = background_load(lab.spec.port, rate=300, duration=10)
    time.sleep(2.5)
    chaos.kill_lb(lab_engine, lab.name)  # the followed stream ends; the restarted log repeats itself
    time.sleep(3)
    live.configure(lab_engine, lab.name, algorithm="least_conn")  # a graceful reload
    thread.join(30)
    tally: traffic.Tally = result["tally"]
    state = dash.wait_for(lambda s: s["total_requests"] >= tally.ok, timeout=10)
    time.sleep(1)  # anything late (or double) would show now
    state = dash.state()
    assert_counts_agree(state, tally)
    assert state["method"] == "least_conn"
    kinds = [e["kind"] for e in state["events"]]
    assert "lb" in kinds and "configure" in kinds and "reload" in kinds, state["events"]


# Actions from the page ----------------------------------------------------------------------------
def test_a_replica_killed_from_the_page_is_down_within_2_s_and_the_others_take_its_traffic(
    lab_cluster: Callable[..., LabHandle], dashboard_for: Callable[[str], Dashboard]
) -> None:
    lab = lab_cluster(replicas=3)
    dash = dashboard_for(lab.name)
    thread, _ = background_load(lab.spec.port, rate=300, duration=12)
    dash.wait_for(lambda s: s["total_requests"] > 300, timeout=10)
    victim, others = lab.replicas[1], [lab.replicas[0], lab.replicas[2]]
    asked = time.monotonic()
    response = dash.post("kill", {"replica": victim})
    assert response.status_code == 200, response.text
    dash.wait_for(lambda s: replica(s, victim)["state"] == "down", timeout=2.0)
    assert time.monotonic() - asked < 2.0
    time.sleep(1.5)  # nginx notices on the next request it sends there, and retries it elsewhere
    before = dash.state()
    time.sleep(3)
    after = dash.state()
    thread.join(30)
    assert replica(after, victim)["requests"] == replica(before, victim)["requests"]
    gained = [replica(after, n)["requests"] - replica(before, n)["requests"] for n in others]
    assert all(g > 300 for g in gained), gained  # ~450 each at 300 req/s over 3 s
    assert replica(after, victim)["expected_share"] == 0.0
    assert any(e["kind"] == "chaos" and victim in e["text"] for e in after["events"])


def test_refusals_and_bad_values_on_the_real_server_change_nothing(
    lab_cluster: Callable[..., LabHandle], lab_engine: Engine, dashboard_for: Callable[[str], Dashboard]
) -> None:
    lab = lab_cluster(replicas=2)
    dash = dashboard_for(lab.name)
    streamed = dash.first_streamed_state()  # left open: stopping must end it cleanly
    assert [r["name"] for r in streamed["replicas"]] == lab.replicas
    rebinding = requests.get(
        dash.url + "api/state", headers={"Host": f"rebind.example:{dash.port}"}, timeout=5
    )
    assert rebinding.status_code == 403 and "not this dashboard's address" in rebinding.json()["error"]
    tokenless = requests.post(dash.url + "api/actions/scale", json={"replicas": 3}, timeout=5)
    assert tokenless.status_code == 403 and "token" in tokenless.json()["error"]
    for kind, body, message in (
        ("scale", {"replicas": "lots"}, "replicas must be a whole number"),
        ("scale", {"replicas": 0}, "between 1 and 64"),
        ("kill", {"replica": "99"}, "has no replica '99'"),
        ("method", {"method": "fastest"}, "unknown balancing method"),
    ):
        response = dash.post(kind, body)
        assert response.status_code == 400, response.text
        assert message in response.json()["error"]
    running = orchestrator.find_running(lab_engine, lab.name)
    assert running.replicas == lab.replicas and running.spec.algorithm == "round_robin"


# Bad input ----------------------------------------------------------------------------------------
def test_a_lab_that_does_not_exist_is_one_line_and_exit_1(lab_name: str) -> None:
    for command in ("dashboard", "watch"):
        result = run_lab(command, "--name", lab_name, "--port", str(free_port())) if command == "dashboard" \
            else run_lab(command, "--name", lab_name)  # fmt: skip
        assert result.code == ExitCode.FAILED
        assert f"there is no lab named {lab_name!r}" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_taken_port_is_one_line_and_exit_2(lab_cluster: Callable[..., LabHandle]) -> None:
    lab = lab_cluster(replicas=1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_lab("dashboard", "--name", lab.name, "--port", str(port))
    assert result.code == ExitCode.USAGE
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# The terminal view --------------------------------------------------------------------------------
def test_lab_watch_draws_full_screen_and_leaves_cleanly_on_ctrl_c(
    lab_cluster: Callable[..., LabHandle],
) -> None:
    lab = lab_cluster(replicas=2)
    thread, _ = background_load(lab.spec.port, rate=100, duration=6)
    pid, fd = pty.fork()
    if pid == 0:  # the child: `lab watch` in a 140x40 terminal
        env = {**os.environ, "TERM": "xterm-256color"}
        env.pop("COLUMNS", None)
        os.execvpe(sys.executable, [sys.executable, "-m", "lab", "watch", "--name", lab.name], env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    output = b""

    def read_for(seconds: float) -> None:
        nonlocal output
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    output += os.read(fd, 65536)
                except OSError:
                    return

    read_for(4)
    os.kill(pid, signal.SIGINT)
    read_for(3)
    _, status = os.waitpid(pid, 0)
    thread.join(30)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text[-2000:]
    assert "\x1b[?1049h" in text and "\x1b[?1049l" in text  # entered and left the alternate screen
    assert all(name in text for name in lab.replicas) and "serving" in text
    assert "stopped watching" in text and "Traceback" not in text


def test_lab_watch_in_a_pipe_prints_the_view_now_and_then(lab_cluster: Callable[..., LabHandle]) -> None:
    lab = lab_cluster(replicas=2)
    process = subprocess.Popen(
        [sys.executable, "-m", "lab", "watch", "--name", lab.name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(5)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert all(name in out for name in lab.replicas) and "\x1b[?1049h" not in out
    assert out.rstrip().endswith(f"stopped watching lab {lab.name}") and "Traceback" not in err


# A real browser ------------------------------------------------------------------------------------
def _chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path:
        return path
    if in_ci():
        pytest.fail("chromium is not installed; CI must install it (scripts/ensure-tools.sh does)")
    pytest.skip("chromium is not installed")


def _tile_requests(page: Any, name: str) -> int:
    value = page.locator(f'.tile[data-replica="{name}"]').get_attribute("data-requests")
    return int(value or 0)


@pytest.mark.browser
def test_the_page_in_chromium_shows_every_replica_counts_live_and_scales_to_4(
    lab_cluster: Callable[..., LabHandle], dashboard_for: Callable[[str], Dashboard], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    lab = lab_cluster(replicas=3)
    dash = dashboard_for(lab.name)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(dash.url)
            tiles = page.locator(".tile")
            expect(tiles).to_have_count(3)
            assert {tiles.nth(i).get_attribute("data-replica") for i in range(3)} == set(lab.replicas)
            expect(page.locator("#connection")).to_have_text("live")
            thread, _ = background_load(lab.spec.port, rate=200, duration=25)
            first = lab.replicas[0]
            seen = [_tile_requests(page, first)]
            deadline = time.monotonic() + 10
            while len(set(seen)) < 3 and time.monotonic() < deadline:  # moved at least twice
                time.sleep(0.5)
                seen.append(_tile_requests(page, first))
            assert len(set(seen)) >= 3 and seen == sorted(seen), seen
            page.fill("#scale-n", "4")
            page.get_by_role("button", name="Scale to 4").click()
            expect(tiles).to_have_count(4, timeout=60_000)
            fourth = page.locator(f'.tile[data-replica="{lab.name}-web-4"]')
            expect(fourth).to_be_visible()
            expect(page.locator("#action-status")).to_have_text("scale to 4: done", timeout=60_000)
            expect(fourth).to_have_attribute("data-state", "serving", timeout=10_000)
            start = _tile_requests(page, f"{lab.name}-web-4")
            deadline = time.monotonic() + 10
            while _tile_requests(page, f"{lab.name}-web-4") <= start and time.monotonic() < deadline:
                time.sleep(0.3)
            assert _tile_requests(page, f"{lab.name}-web-4") > start, "the new tile does not count"
            page.get_by_role("button", name="Kill").nth(1).click()
            expect(page.locator(f'.tile[data-replica="{lab.replicas[1]}"]')).to_have_attribute(
                "data-state", "down", timeout=5_000
            )
            time.sleep(3)  # let the share chart and sparklines show it
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            thread.join(40)
        finally:
            browser.close()
    if os.environ.get("LAB_UPDATE_SCREENSHOT") == "1":
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "dashboard.png", DOCS / "dashboard.png")
