"""The layers hold: views load no Docker code, `lab --help` loads only what it needs, and only the
adapter speaks the SDK (its failures leave it as LabErrors)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import docker.errors
import pytest

from lab.docker_ops import Engine
from lab.errors import EngineRefused, LabError

LAB = Path(__file__).resolve().parents[2] / "lab"
DOCKER_CODE = (
    "docker",
    "lab.docker_ops",
    "lab.orchestrator",
    "lab.loadbalancer",
    "lab.replicas",
    "lab.engine",
)


def loaded_after(statement: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running `statement`."""
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    "view", ["lab.ui", "lab.report", "lab.experiment_report", "lab.describe", "lab.watch", "lab.results"]
)
def test_a_view_loads_no_docker_code(view: str) -> None:
    loaded = loaded_after(f"import {view}")
    assert view in loaded
    assert not loaded & set(DOCKER_CODE), sorted(loaded & set(DOCKER_CODE))


def test_the_dashboards_page_code_loads_no_docker_sdk() -> None:
    loaded = loaded_after("import lab.dashboard.app")
    assert not loaded & {"docker", "lab.docker_ops"}


def test_help_loads_neither_docker_nor_the_heavy_libraries() -> None:
    loaded = loaded_after(
        "from lab.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    )
    heavy = {"docker", "requests", "jinja2", "rich", "scipy", "starlette", "uvicorn", "lab.orchestrator"}
    assert not loaded & heavy, sorted(loaded & heavy)


def test_up_loads_no_load_engine_statistics_or_web_server() -> None:
    loaded = loaded_after("import lab.cli, lab.orchestrator, lab.docker_ops, lab.ui")
    assert not loaded & {"scipy", "starlette", "uvicorn", "lab.traffic", "lab.stats", "lab.verify"}


def test_only_the_adapter_imports_the_sdk() -> None:
    offenders = []
    for path in LAB.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "docker" or n.startswith("docker.") for n in names) and path.name != "docker_ops.py":
                offenders.append(str(path.relative_to(LAB)))
    assert offenders == []


class _RefusingApi:
    def containers(self, **_: object) -> list[object]:
        raise docker.errors.APIError("500 Server Error", explanation="the engine is shutting down\nfor good")


def test_an_engine_refusal_leaves_the_adapter_as_one_lab_error() -> None:
    engine = Engine(type("Client", (), {"api": _RefusingApi()})())  # type: ignore[arg-type]
    with pytest.raises(EngineRefused) as refused:
        engine.containers({"label": ["lab.name=x"]})
    assert isinstance(refused.value, LabError)
    assert refused.value.message == "the Docker engine refused: for good"
    assert isinstance(refused.value.__cause__, docker.errors.APIError)
