"""`lab watch`: the live state of a lab, full screen in the terminal (rich Live).

`render` is a pure view (a LiveState in, rich renderables out); `run` redraws it a few times a
second until Ctrl-C, which leaves the alternate screen as it found it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from lab.livestate import DOWN, DRAINING, SERVING, STARTING, LiveState

REFRESH_S = 0.25
PIPE_EVERY_S = 2.0  # not on a terminal: the whole view this often
BAR = 24  # cells of the share bar
SPARK = 30  # seconds of history in the sparkline column
_TICKS = " ▁▂▃▄▅▆▇█"
_STATE_STYLE = {SERVING: "green", DRAINING: "yellow", DOWN: "bold red", STARTING: "cyan"}
_KIND_STYLE = {"chaos": "red", "scale": "cyan", "deploy": "magenta", "configure": "yellow", "lb": "red"}


def sparkline(values: tuple[int, ...] | list[int], top: int) -> str:
    """One character per value, its height relative to `top`."""
    if top <= 0:
        return " " * len(values)
    steps = len(_TICKS) - 1
    return "".join(_TICKS[min(steps, -(-v * steps // top))] for v in values)


def share_bar(share: float, expected: float | None, scale: float, width: int = BAR) -> Text:
    """The observed share as a bar, with a magenta `|` where the expected share ends."""
    filled = round(share / scale * width) if scale else 0
    mark = min(width, round(expected / scale * width)) if expected is not None and scale else -1
    text = Text()
    for i in range(width + 1):
        if i == mark:
            text.append("▌" if i < filled else "|", style="bold magenta")
        else:
            text.append("█" if i < filled else " ", style="blue")
    return text


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def render(state: LiveState, height: int = 40, width: int = 160) -> RenderableType:
    """The whole screen for `state`: a header, one row per replica, the latest events."""
    header = Text.assemble(
        ("lab ", "bold"),
        (state.lab, "bold cyan"),
        "  method ",
        (state.method or "?", "bold"),
        "  config ",
        (state.generation or "?", "dim"),
        "  load balancer ",
        (state.lb, "green" if state.lb == "running" else "bold red"),
        f"\n{state.rps:,.0f} req/s now, {state.rps_10s:,.0f} over 10 s, {state.rps_60s:,.0f} over 60 s   "
        f"{state.total_requests:,} requests since {_clock(state.since)}   5xx {state.errors:,}",
    )
    # Names and numbers first: on a narrow terminal the sparkline, then the bar, give way.
    name_width = max([7] + [len(r.name) for r in state.replicas])
    with_bar = width >= name_width + 70 + BAR
    with_spark = width >= name_width + 72 + BAR + SPARK
    with_10s = width >= name_width + 80
    table = Table(expand=True, pad_edge=False, header_style="bold")
    table.add_column("replica", no_wrap=True, min_width=name_width)
    table.add_column("state", no_wrap=True, min_width=8)
    if with_bar:
        table.add_column("share  (| expected)", no_wrap=True)
    table.add_column("share", justify="right", no_wrap=True)
    table.add_column("expect", justify="right", no_wrap=True)
    table.add_column("req/s", justify="right", no_wrap=True)
    if with_10s:
        table.add_column("10 s", justify="right", no_wrap=True)
    table.add_column("p95 ms", justify="right", no_wrap=True)
    table.add_column("5xx", justify="right", no_wrap=True)
    table.add_column("requests", justify="right", no_wrap=True)
    if with_spark:
        table.add_column(f"last {SPARK} s", no_wrap=True)
    scale = max(
        [0.01] + [r.share for r in state.replicas] + [r.expected_share or 0.0 for r in state.replicas]
    )
    top = max([0] + [v for r in state.replicas for v in r.sparkline[-SPARK:]])
    for r in state.replicas:
        cells: list[RenderableType] = [escape(r.name), Text(r.state, style=_STATE_STYLE.get(r.state, ""))]
        if with_bar:
            cells.append(share_bar(r.share, r.expected_share, scale))
        cells += [
            f"{r.share:.1%}",
            "-" if r.expected_share is None else f"{r.expected_share:.1%}",
            f"{r.rps:,.0f}",
            *([f"{r.rps_10s:,.1f}"] if with_10s else []),
            _ms(r.p95_ms),
            Text(f"{r.errors:,}", style="red" if r.errors else ""),
            f"{r.requests:,}",
        ]
        if with_spark:
            cells.append(Text(sparkline(r.sparkline[-SPARK:], top), style="blue"))
        table.add_row(*cells)
    if not state.replicas:
        table.add_row("(none)")
    room = max(3, height - len(state.replicas) - 9)
    events = Table.grid(padding=(0, 1))
    events.add_column(style="dim", no_wrap=True)
    events.add_column(no_wrap=True)
    events.add_column()
    for event in list(state.events)[-room:]:
        events.add_row(
            _clock(event.at), Text(event.kind, style=_KIND_STYLE.get(event.kind, "")), escape(event.text)
        )
    footer = Text(
        f"{state.unattributed:,} requests no current replica answered, {state.unknown_lines:,} other log lines"
        "   Ctrl-C leaves",
        style="dim",
    )
    return Group(header, table, Text("events", style="bold"), events, footer)


def run(state: Callable[[], LiveState], console: Console, *, refresh: float = REFRESH_S) -> None:
    """Redraw until Ctrl-C (KeyboardInterrupt reaches the caller after the screen is restored).

    Not on a terminal (a pipe, a CI log), it prints the whole view every PIPE_EVERY_S instead.
    """
    if not console.is_terminal:
        while True:
            time.sleep(PIPE_EVERY_S)
            console.print(render(state(), *_size(console)))
    with Live(render(state(), *_size(console)), console=console, screen=True, auto_refresh=False) as live:
        while True:
            time.sleep(refresh)
            live.update(render(state(), *_size(console)), refresh=True)


def _size(console: Console) -> tuple[int, int]:
    return console.size.height, console.size.width
