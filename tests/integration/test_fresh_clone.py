"""A fresh clone on a stock Debian 12: `make setup` with Debian's own interpreter first on PATH.

Debian's /usr/bin/python3 is externally managed (PEP 668): `pip install` into it is refused. The
set-up must make .venv with it and install there, and every make target must use that venv.
The clone holds the tracked files as they are in this work tree (what a commit would hold).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lab.spec import PROJECT_DIR

pytestmark = pytest.mark.slow

SYSTEM_PYTHON = Path("/usr/bin/python3")
# Debian's directories first, so `python3` is /usr/bin/python3 (docker may live in /usr/local/bin).
DEBIAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/sbin:/usr/local/bin"


def fresh_clone(destination: Path) -> Path:
    """The tracked files of this work tree, nothing else (no .venv, no egg-info, no caches)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=PROJECT_DIR, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = PROJECT_DIR / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def debian_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = DEBIAN_PATH
    return env


def run(command: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=debian_env(), capture_output=True, text=True, timeout=timeout)


def test_make_setup_on_a_fresh_clone_uses_a_venv_of_the_system_python(tmp_path: Path) -> None:
    if not SYSTEM_PYTHON.exists() or shutil.which("make") is None:
        pytest.skip("no Debian /usr/bin/python3 or no make here")
    assert shutil.which("python3", path=DEBIAN_PATH) == str(SYSTEM_PYTHON)
    clone = fresh_clone(tmp_path / "lab")
    assert not (clone / ".venv").exists()

    setup = run(["make", "setup"], clone)
    assert setup.returncode == 0, setup.stdout[-2000:] + setup.stderr[-3000:]
    assert f"making .venv with {SYSTEM_PYTHON}" in setup.stderr

    venv_python = clone / ".venv" / "bin" / "python"
    where = run(
        [str(venv_python), "-c", "import sys, lab; print(sys.base_prefix, sys.prefix, lab.__file__)"],
        Path("/"),
    )
    base_prefix, prefix, module = where.stdout.split()
    assert base_prefix == "/usr" and Path(prefix) == clone / ".venv"
    assert Path(module).is_relative_to(clone)  # editable: the clone's own code
    assert run([str(clone / ".venv/bin/lab"), "--version"], Path("/")).returncode == 0
    assert run([str(clone / ".venv/bin/docker-compose"), "version"], Path("/")).returncode == 0
    untouched = run([str(SYSTEM_PYTHON), "-c", "import lab"], Path("/"))
    assert "No module named 'lab'" in untouched.stderr  # nothing went into the system's Python

    again = run(["make", "setup"], clone)
    assert again.returncode == 0 and "installing" not in again.stderr  # a working venv is kept

    planned = run(["make", "-n", "test", "unit", "lint", "demo"], clone).stdout
    runs = [line for line in planned.splitlines() if " -m " in line]  # python -m pytest / lab / ruff ...
    assert runs and all(f"{clone}/.venv/bin/python" in line for line in runs), planned
    # The venv holds everything the tests import (collected, not run: timing tests are for quiet machines).
    collected = subprocess.run(
        ["make", "unit"], cwd=clone, env={**debian_env(), "PYTEST_ADDOPTS": "--collect-only -q"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert collected.returncode == 0 and " tests collected" in collected.stdout, collected.stdout[-3000:]
