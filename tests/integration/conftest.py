"""Fixtures for tests on the real engine."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from lab import labels, nodes, orchestrator, reaper, swarm
from lab.docker_ops import Engine
from lab.engine import ContainerInfo
from lab.pytest_plugin import unique_name


@pytest.fixture(scope="session", autouse=True)
def engine_required(lab_engine: Engine) -> None:
    """Every integration test needs the engine: without one it skips (and fails under CI).
    Asking for it first also starts this session's reaper (the lab pytest plugin does)."""


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def run_lab(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> Run:
    """Run the real `lab` command in a subprocess, as a user would."""
    result = subprocess.run(
        [sys.executable, "-m", "lab", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    return Run(result.returncode, result.stdout, result.stderr)


@pytest.fixture
def lab_name(lab_engine: Engine) -> Iterator[str]:
    """A unique lab name for a test that drives `lab` itself; whatever it left is removed."""
    name = unique_name()
    yield name
    orchestrator.remove_lab(lab_engine, name)


def raw(engine: Engine, container: ContainerInfo) -> dict[str, Any]:
    """What the engine says about a container, as the API has it (tests check settings lab never reads)."""
    return dict(engine.client.api.inspect_container(container.id))


def leftovers(engine: Engine, name: str) -> tuple[int, int]:
    selector = labels.lab_filter(name)
    return len(engine.containers(selector)), len(engine.networks(selector))


def write_site(directory: Path, *, dockerfile: str | None = None, body: str = "<h1>test site</h1>") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "index.html").write_text(body)
    if dockerfile is not None:
        (directory / "Dockerfile").write_text(dockerfile)
    return directory


def served_by(url: str, n: int) -> collections.Counter[str]:
    """Which replicas answered n GETs through the load balancer (each must be a 200)."""
    counts: collections.Counter[str] = collections.Counter()
    with requests.Session() as session:
        for i in range(n):
            try:
                response = session.get(url, timeout=5)
            except requests.ConnectionError:
                if i == 0:
                    raise  # a fresh connection: nothing stale to blame
                # A kept-alive connection an old nginx worker closed as a reload retired it: a GET
                # is retried once on a fresh connection, as HTTP clients (and lab's load) do.
                session.close()
                response = session.get(url, timeout=5)
            assert response.status_code == 200
            counts[response.headers["X-Served-By"]] += 1
    return counts


# Inner pytest sessions (the plugin's and the reaper's tests) -----------------------------------
def new_session_id() -> str:
    return labels.new_session_id()


def remove_session(engine: Engine, session_id: str) -> None:
    """Remove a session's labs and its reaper (a test's own clean-up: it owns that session)."""
    for name in _lab_names(engine, {"label": labels.session_labs(session_id)}):
        orchestrator.remove_lab(engine, name)
    engine.remove_containers(engine.containers({"label": [f"{labels.SESSION}={session_id}"]}))


def _lab_names(engine: Engine, selector: dict[str, list[str]]) -> set[str]:
    found = [c.labels for c in engine.containers(selector)] + [n.labels for n in engine.networks(selector)]
    return {f[labels.NAME] for f in found if labels.NAME in f}


def left_by(engine: Engine, session: str) -> tuple[int, int]:
    """Lab containers and networks still carrying this session's label (its reaper is no lab)."""
    selector = {"label": labels.session_labs(session)}
    return len(engine.containers(selector)), len(engine.networks(selector))


def wait_until_reaper_gone(engine: Engine, session: str, timeout: float = 60) -> float:
    """Seconds until the session's reaper has removed itself (it does once it has reaped)."""
    began = time.monotonic()
    while engine.container_named(reaper.session_reaper_name(session)) is not None:
        assert time.monotonic() - began < timeout, f"the reaper of {session} is still there"
        time.sleep(0.2)
    return time.monotonic() - began


# One swarm for the whole session -------------------------------------------------------------------
@dataclass(frozen=True)
class SwarmFound:
    """What must be the same once the session's swarm tests are done as before them."""

    state: str
    cluster: str
    gwbridge: bool


def swarm_found(engine: Engine) -> SwarmFound:
    info = engine.swarm_state()
    cluster = str((info.get("Cluster") or {}).get("ID") or "")
    return SwarmFound(str(info.get("LocalNodeState")), cluster, engine.network(swarm.GWBRIDGE) is not None)


@pytest.fixture(scope="session")
def swarm_manager(lab_engine: Engine) -> Iterator[swarm.Manager]:
    """This engine as a swarm manager, once for the whole session: entering and leaving swarm mode
    disturbs container DNS on the engine for a moment (others' tests run on it too), so it happens
    here only. If the engine is in no swarm, the lab's own code initialises one (with the lab's
    record) and leaves it at the end as it found it (unless another session on a shared engine
    uses it then: its last user leaves it); a swarm that exists is used and left alone.
    Meanwhile an overlay network of the session pins it, so no test's `lab down` leaves it; it carries
    the session's label, so the session's reaper removes it (and then leaves the swarm) if the session
    is killed. Tests that enter swarm mode are marked `swarm` and run last (tests/conftest.py)."""
    engine = lab_engine
    before = swarm_found(engine)
    if before.state == "active" and not swarm.view(engine).manager:
        pytest.fail("this engine is a swarm worker; the swarm tests need a manager (or no swarm)")
    manager = swarm.ensure_manager(engine, init=True)
    pin = engine.create_overlay_network(unique_name("swarm-pin"), labels.for_component("swarm-pin"))
    try:
        yield manager
    finally:
        engine.remove_networks([pin], patience=60)
        if manager.initialised:
            released = swarm.release_if_unused(engine)
            if released.left:
                assert swarm_found(engine) == before
            else:
                ours = made_by_this_session(engine)
                assert not ours, f"the session's swarm stays, held by what it made: {', '.join(ours)}"
                # Another session on this shared engine joined the swarm meanwhile (its own tests of
                # nodes): its last `lab nodes rm`, this session's reaper or the next session's start
                # leaves it once nothing uses it (lab/reaper.py).
                print(f"\nthe session's swarm stays for another session: {released.reason}")


def made_by_this_session(engine: Engine) -> list[str]:
    """The services, nodes and overlay networks carrying this session's label (what keeps a swarm)."""
    session = labels.session_id()
    mine = {"label": [f"{labels.SESSION}={session}"]}
    found = [f"service {s.name}" for s in engine.services(mine)]
    found += [
        f"node {c.name}" for c in nodes.node_containers(engine) if c.labels.get(labels.SESSION) == session
    ]
    found += [f"network {n.name}" for n in engine.networks({**mine, "driver": ["overlay"]})]
    return found
