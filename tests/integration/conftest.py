"""Fixtures for tests on the real engine."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from lab import lab as orchestrator
from lab import labels
from lab.docker_ops import Engine
from lab.pytest_plugin import unique_name


@pytest.fixture(scope="session", autouse=True)
def engine_required(lab_engine: Engine) -> None:
    """Every integration test needs the engine: without one it skips (and fails under CI=true).
    Asking for it first also sweeps labs left by crashed sessions (the lab pytest plugin does)."""


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
        for _ in range(n):
            response = session.get(url, timeout=5)
            assert response.status_code == 200
            counts[response.headers["X-Served-By"]] += 1
    return counts
