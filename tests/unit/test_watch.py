"""`lab watch`'s screen, drawn from a LiveState without a terminal or Docker."""

from __future__ import annotations

from dataclasses import replace

from rich.console import Console

from lab.livestate import LiveModel
from lab.watch import render, share_bar, sparkline
from tests.unit.test_accesslog import T0, line, ns
from tests.unit.test_livestate import lab, replica


def screen(width: int = 160) -> str:
    model = LiveModel("demo", since=T0)
    model.update(lab(3), T0)
    addresses = [r.address for r in lab(3).replicas]
    model.reader.feed(
        "".join(line(ns(i / 100), upstream=addresses[i % 3]) + "\n" for i in range(300)).encode()
    )
    model.update(
        replace(lab(3), replicas=(*lab(3).replicas[:2], replica(3, "exited", exit_code=137))), T0 + 3
    )
    console = Console(record=True, width=width, height=40, color_system=None)
    console.print(render(model.state(T0 + 3.5), 40, width))
    return console.export_text()


def test_every_replica_has_a_row_with_its_state_and_counts() -> None:
    text = screen()
    for name, state in (("demo-web-1", "serving"), ("demo-web-2", "serving"), ("demo-web-3", "down")):
        row = next(r for r in text.splitlines() if name in r)
        assert state in row and "100" in row
    assert "method round_robin" in text and "300 requests" in text


def test_events_are_listed_with_their_kind() -> None:
    text = screen()
    assert "chaos" in text and "demo-web-3 exited (exit 137, SIGKILL)" in text
    assert "Ctrl-C leaves" in text


def test_a_narrow_terminal_still_names_every_replica() -> None:
    text = screen(width=80)
    assert all(f"demo-web-{i}" in text for i in (1, 2, 3))
    assert "requests" in text and "…" not in text


def test_share_bar_marks_the_expected_share() -> None:
    bar = share_bar(0.5, 0.25, 1.0, width=8).plain
    assert bar == "██▌█    " + " "
    assert share_bar(0.0, 0.5, 1.0, width=8).plain.index("|") == 4
    assert "|" not in share_bar(0.5, None, 1.0, width=8).plain


def test_sparkline_heights() -> None:
    assert sparkline([0, 4, 8], 8) == " ▄█"
    assert sparkline([0, 0], 0) == "  "
