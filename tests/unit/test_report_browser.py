"""The report as a browser draws it: headless Chromium screenshots a rendered page.

Skips when `chromium` is not installed, except under CI (`in_ci`), where a missing browser fails.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from lab.pytest_plugin import in_ci
from lab.report import render_compare_report, render_verify_report, write_report
from tests.unit.test_report import balanced_three, failed_run, sixty_four

BROWSER_TIMEOUT_S = 60
MIN_PNG_BYTES = 10_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WINDOW = (1200, 1600)


def _chromium() -> str:
    path = shutil.which("chromium")
    if path:
        return path
    if in_ci():
        pytest.fail("chromium is not on PATH; CI must install it (apt-get install -y chromium)")
    pytest.skip("chromium is not on PATH (apt-get install -y chromium)")


def screenshot(html: str, tmp_path: Path) -> Path:
    """Render `html` in headless Chromium and return the path of its PNG screenshot."""
    page, shot = tmp_path / "report.html", tmp_path / "shot.png"
    write_report(page, html)
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, check=False)
    assert done.returncode == 0 and shot.exists(), (
        f"chromium failed ({done.returncode}):\n{done.stderr[-3000:]}"
    )
    return shot


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


@pytest.mark.browser
@pytest.mark.parametrize("case", [balanced_three, sixty_four, failed_run], ids=lambda f: f.__name__)
def test_verify_report_renders_in_a_browser(case, tmp_path: Path) -> None:
    shot = screenshot(render_verify_report(case()), tmp_path)
    assert png_size(shot) == WINDOW
    assert shot.stat().st_size > MIN_PNG_BYTES, "the screenshot is (almost) blank"


@pytest.mark.browser
def test_compare_report_renders_in_a_browser(tmp_path: Path) -> None:
    shot = screenshot(render_compare_report([balanced_three(), sixty_four(), failed_run()]), tmp_path)
    assert png_size(shot) == WINDOW
    assert shot.stat().st_size > MIN_PNG_BYTES, "the screenshot is (almost) blank"
