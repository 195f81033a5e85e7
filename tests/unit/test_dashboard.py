"""The dashboard's rules without Docker: Host check, token, validation of actions (400, nothing run),
the page and the state API, served in-process by Starlette's TestClient."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from typing import Any

import pytest
from starlette.testclient import TestClient

from lab.dashboard.actions import Action, Busy, Runner, parse_action
from lab.dashboard.app import create_app
from lab.dashboard.security import host_allowed, origin_allowed, split_host, token_ok
from lab.errors import ExitCode, InvalidInput, LabError
from lab.livestate import LiveModel
from tests.unit.test_accesslog import T0, line, ns
from tests.unit.test_livestate import lab

TOKEN = "t0ken-for-tests"
PORT = 8090
ORIGIN = f"http://127.0.0.1:{PORT}"


class FakeRunner:
    """Validates like the real one (parse_action), records instead of touching a lab."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.done: list[Action] = []
        self.fail = fail

    def __call__(self, kind: str, body: object) -> dict[str, Any]:
        action = parse_action(kind, body)
        if self.fail is not None:
            raise self.fail
        self.done.append(action)
        return {"kind": action.kind}


def state_fn() -> Any:
    model = LiveModel("demo", since=T0)
    model.update(lab(3), T0)
    addresses = [r.address for r in lab(3).replicas]
    model.reader.feed(
        "".join(line(ns(i / 100), upstream=addresses[i % 3]) + "\n" for i in range(30)).encode()
    )
    return lambda: model.state(T0 + 1)


def client(runner: FakeRunner | None = None, bind: str = "127.0.0.1") -> TestClient:
    app = create_app(
        lab="demo", state=state_fn(), run_action=runner or FakeRunner(), token=TOKEN, bind=bind, port=PORT
    )
    host = f"[{bind}]" if ":" in bind else bind
    return TestClient(app, base_url=f"http://{host}:{PORT}")


def post(c: TestClient, kind: str, body: object, *, token: str | None = TOKEN, **headers: str) -> Any:
    sent = {"Content-Type": "application/json", **headers}
    if token is not None:
        sent["X-Lab-Token"] = token
    return c.post(f"/api/actions/{kind}", json=body, headers=sent)


# The page and the state -------------------------------------------------------------------------
def test_the_page_holds_the_token_and_forbids_framing_and_inline_script() -> None:
    response = client().get("/")
    assert response.status_code == 200
    assert f'<meta name="lab-token" content="{TOKEN}">' in response.text
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    assert client().get("/static/dashboard.js").status_code == 200


def test_api_state_has_the_documented_shape() -> None:
    data = client().get("/api/state").json()
    assert data["lab"] == "demo" and data["method"] == "round_robin"
    assert data["total_requests"] == 30 and isinstance(data["since"], int | float)
    replica = data["replicas"][0]
    for key in ("name", "state", "requests", "rps", "share", "expected_share", "p95_ms", "errors"):
        assert key in replica
    assert [r["requests"] for r in data["replicas"]] == [10, 10, 10]


# Host check (DNS rebinding) ------------------------------------------------------------------
@pytest.mark.parametrize(
    "host", ["evil.example:8090", "attacker.test", "127.0.0.1:9999", "127.0.0.2:8090", ""]
)
def test_a_foreign_host_is_refused_for_pages_state_and_actions(host: str) -> None:
    runner = FakeRunner()
    c = client(runner)
    for response in (
        c.get("/", headers={"Host": host}),
        c.get("/api/state", headers={"Host": host}),
        post(c, "scale", {"replicas": 4}, Host=host),
    ):
        assert response.status_code == 403
        assert "not this dashboard's address" in response.json()["error"]
    assert runner.done == []


def test_localhost_names_a_loopback_dashboard() -> None:
    assert client().get("/api/state", headers={"Host": f"localhost:{PORT}"}).status_code == 200


@pytest.mark.parametrize(
    ("header", "bind", "allowed"),
    [
        ("127.0.0.1:8090", "127.0.0.1", True),
        ("LOCALHOST:8090", "127.0.0.1", True),
        ("localhost:8090", "192.168.1.5", False),
        ("[::1]:8090", "::1", True),
        ("[::1]:8090", "127.0.0.1", False),
        ("10.0.0.7:8090", "0.0.0.0", True),  # listening everywhere: any address, still no names
        ("evil.example:8090", "0.0.0.0", False),
        ("127.0.0.1", "127.0.0.1", False),  # port 80 implied, we serve 8090
        ("127.0.0.1:8090:1", "127.0.0.1", False),
        ("[::1", "::1", False),
        (None, "127.0.0.1", False),
    ],
)
def test_host_rules(header: str | None, bind: str, allowed: bool) -> None:
    assert host_allowed(header, bind, PORT) is allowed


def test_host_parsing_and_origin_rules() -> None:
    assert split_host("[::1]:80") == ("::1", 80)
    assert split_host("example") == ("example", None)
    assert split_host(":80") is None
    assert origin_allowed(None, "127.0.0.1:8090")
    assert origin_allowed("http://127.0.0.1:8090", "127.0.0.1:8090")
    assert not origin_allowed("http://evil.example", "127.0.0.1:8090")
    assert token_ok(TOKEN, TOKEN) and not token_ok("", TOKEN) and not token_ok(None, TOKEN)


# Token ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("token", [None, "", "wrong"])
def test_an_action_without_the_token_is_refused_and_nothing_runs(token: str | None) -> None:
    runner = FakeRunner()
    response = post(client(runner), "scale", {"replicas": 4}, token=token)
    assert response.status_code == 403
    assert "token" in response.json()["error"]
    assert runner.done == []


def test_an_action_from_another_sites_page_is_refused_even_with_the_token() -> None:
    runner = FakeRunner()
    response = post(client(runner), "kill", {"replica": "1"}, Origin="http://evil.example")
    assert response.status_code == 403 and runner.done == []


def test_a_form_post_is_not_an_action() -> None:
    runner = FakeRunner()
    response = client(runner).post(
        "/api/actions/restore", content=b"a=1", headers={"X-Lab-Token": TOKEN, "Content-Type": "text/plain"}
    )
    assert response.status_code == 415 and runner.done == []


# Validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "body", "message"),
    [
        ("scale", {"replicas": "many"}, "replicas must be a whole number"),
        ("scale", {"replicas": 0}, "replicas must be between 1 and 64, not 0"),
        ("scale", {"replicas": 65}, "not 65"),
        ("scale", {"replicas": True}, "whole number"),
        ("scale", {}, "scale needs 'replicas'"),
        ("scale", {"replicas": 4, "force": True}, "scale takes no field 'force'"),
        ("method", {"method": "fastest"}, "unknown balancing method 'fastest'"),
        ("kill", {"replica": "../etc"}, "replica must be a replica's name or number"),
        ("kill", {"replica": ["a"]}, "replica must be"),
        ("verify", {"requests": 10_000_000}, "requests must be between 1 and 100000"),
        ("verify", {"concurrency": 0}, "concurrency must be between 1"),
        ("restore", [1, 2], "must be a JSON object"),
    ],
)
def test_a_bad_value_is_a_400_with_a_json_error_and_nothing_runs(
    kind: str, body: object, message: str
) -> None:
    runner = FakeRunner()
    response = post(client(runner), kind, body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert runner.done == []


def test_a_body_that_is_not_json_is_a_400() -> None:
    runner = FakeRunner()
    response = client(runner).post(
        "/api/actions/scale",
        content=b"{replicas: 4",
        headers={"X-Lab-Token": TOKEN, "Content-Type": "application/json"},
    )
    assert response.status_code == 400 and response.json()["error"] == "the request body is not JSON"


def test_an_unknown_action_is_a_404() -> None:
    assert post(client(), "reboot", {}).status_code == 404


def test_good_actions_reach_the_runner_validated() -> None:
    runner = FakeRunner()
    c = client(runner)
    for kind, body in (
        ("scale", {"replicas": "4"}),
        ("kill", {"replica": 2}),
        ("restore", {}),
        ("method", {"method": "least-conn"}),
        ("verify", {"requests": 500}),
    ):
        response = post(c, kind, body, Origin=ORIGIN)
        assert response.status_code == 200 and response.json()["ok"] is True
    assert [a.kind for a in runner.done] == ["scale", "kill", "restore", "method", "verify"]
    assert (
        runner.done[0].replicas == 4
        and runner.done[1].replica == "2"
        and runner.done[3].method == "least_conn"
    )
    plan = runner.done[4].plan
    assert plan is not None and plan.requests == 500


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidInput("lab 'demo' has no replica '9'"), 400),
        (Busy("another action is still running"), 409),
        (LabError("there is no lab named 'demo'"), 409),
    ],
)
def test_failures_of_a_valid_action_map_to_statuses(error: Exception, status: int) -> None:
    response = post(client(FakeRunner(fail=error)), "kill", {"replica": "9"})
    assert response.status_code == status and response.json()["error"] == str(error)


def test_one_action_at_a_time() -> None:
    started, release = threading.Event(), threading.Event()

    class SlowRunner(Runner):
        def run(self, action: Action) -> dict[str, object]:
            started.set()
            release.wait(5)
            return {}

    runner = SlowRunner(engine=None, name="demo", note=lambda kind, text: None)  # type: ignore[arg-type]
    first = threading.Thread(target=runner, args=("restore", {}))
    first.start()
    assert started.wait(5)
    with pytest.raises(Busy):
        runner("restore", {})
    with pytest.raises(InvalidInput):  # bad input is refused as such even while busy
        runner("scale", {"replicas": 0})
    release.set()
    first.join(5)
    assert runner("restore", {}) == {}


# The command line, before any Docker call ------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bind", "localhost"], "bind address must be an IP address"),
        (["--bind", "300.1.1.1"], "bind address must be an IP address"),
        (["--port", "0"], "port must be between 1 and 65535"),
        (["--port", "web"], "port must be a whole number"),
    ],
)
def test_dashboard_bad_options_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lab", "dashboard", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == ExitCode.USAGE
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_binding_a_taken_port_or_a_foreign_address_is_one_line() -> None:
    from lab.dashboard.server import bind_socket, url_of

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InvalidInput, match=f"port {port} on 127.0.0.1 is already in use"):
            bind_socket("127.0.0.1", port)
    with pytest.raises(InvalidInput, match="192.0.2.1 is not an address of this machine"):
        bind_socket("192.0.2.1", 8090)  # TEST-NET-1: never local
    free = bind_socket("127.0.0.1", 0)
    free.close()
    assert url_of("0.0.0.0", 8090) == "http://127.0.0.1:8090/" and url_of("::1", 8090) == "http://[::1]:8090/"
