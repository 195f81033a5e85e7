"""The HTML report of `lab experiment`: an ExperimentResult in, a finished view model out (pure).

The timeline chart is one SVG in two panels sharing the time axis: requests per second as
stacked bars (answered, failed) above, and one lane per replica below whose shade is that
replica's share of the second's answers, with a vertical marker for every event. All geometry
is decided here in SVG user units; the template only places it (see lab/report.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lab.charts import (
    BAR,
    GRID,
    INK,
    MUTED,
    Badge,
    Chart,
    KeyNumber,
    Line,
    Rect,
    Text,
    clip_label,
    nice_step,
    px,
    ticks,
    verdict_badge,
)
from lab.render import render_html
from lab.results import Check, ExperimentResult

if TYPE_CHECKING:
    from lab.traffic import Second

OK_COLOUR = BAR
ERROR_COLOUR = "#c62828"
RETRY_COLOUR = "#b26a00"
STEP_COLOUR = INK
EVENT_COLOUR = "#6e7781"
LANE_EMPTY = "#f3f5f7"

# verdict -> (label, background, text colour); each pair has a contrast ratio of at least 4.5
VERDICT_STYLES = {
    "zero-loss": ("Zero loss", "#1a7f37", "#ffffff"),
    "recovered": ("Recovered", "#1a7f37", "#ffffff"),
    "lossy": ("Lossy", "#c62828", "#ffffff"),
    "failed": ("Failed", "#c62828", "#ffffff"),
}

KIND_LABELS = {
    "scale": "scale under load",
    "deploy": "rolling deploy under load",
    "failover": "failover under load",
    "reload": "nginx reload under load",
    "kill-lb": "load balancer killed under load",
}

CAUSE_EXPLANATIONS = {
    "refused": "nothing listened on the port (connection refused)",
    "reset": "the connection was reset, or broke, before the answer",
    "closed": "the server closed the connection before the answer ended",
    "timeout": "no complete answer within the client's timeout",
    "http_5xx": "the load balancer answered with a 5xx status",
    "other": "anything else (a malformed answer, a local socket error)",
}

_LABEL_ROW = 18.0  # height of one row of event numbers above the plot
_MAX_LABEL_ROWS = 3
_FONT = 14.0
_CHAR_WIDTH = 0.6


@dataclass(frozen=True)
class EventRow:
    number: int
    t: str
    text: str
    source: str  # step | operation | note
    on_chart: bool  # its number is printed above the chart (else only its marker line)


@dataclass(frozen=True)
class CheckRow:
    name: str
    status: str  # Passed | Failed | Not judged
    flag: str  # good | bad | off
    detail: str
    window: str


@dataclass(frozen=True)
class LegendItem:
    label: str
    colour: str
    kind: str  # swatch | line | dashed


@dataclass(frozen=True)
class ExperimentView:
    title: str
    lab: str
    kind: str
    url: str
    load: str
    options: list[tuple[str, str]]
    badge: Badge
    operation_error: str
    numbers: list[KeyNumber]
    chart: Chart
    legend: list[LegendItem]
    chart_caption: str
    causes: list[tuple[str, str, str]]  # cause, count, what it means
    events: list[EventRow]
    checks: list[CheckRow]
    timeline_columns: list[str]
    timeline_rows: list[list[str]]
    notes: list[str]


def render_experiment_report(result: ExperimentResult) -> str:
    """The self-contained HTML page for one experiment."""
    return render_html("experiment.html.j2", view=experiment_view(result))


def experiment_view(result: ExperimentResult) -> ExperimentView:
    badge = verdict_badge(VERDICT_STYLES, result.verdict, result.reason)
    chart, on_chart = timeline_chart(result)
    short, prefix = lane_names(result)
    caption = (
        "Top: requests whose outcome arrived in each second, answered (blue) and failed (red). "
        "Bottom: one lane per replica, darker for a larger share of that second's answers; an empty "
        "lane means the replica answered nothing then. Vertical lines are the events listed below "
        "(solid: a step begins or ends; dashed: what the operation reported)."
    )
    if prefix:
        caption += f" Lanes are labelled without the lab's prefix “{prefix}”."
    return ExperimentView(
        title=f"lab experiment {result.kind}: {result.lab} — {badge.label}",
        lab=result.lab,
        kind=KIND_LABELS.get(result.kind, result.kind),
        url=result.url,
        load=f"{_num(result.rate)} req/s for {_num(result.duration)} s, up to {result.concurrency} connections",
        options=[(k, _option(v)) for k, v in result.options.items()],
        badge=badge,
        operation_error=result.operation_error,
        numbers=key_numbers(result),
        chart=chart,
        legend=legend(result),
        chart_caption=caption,
        causes=[
            (cause, f"{count:,}", CAUSE_EXPLANATIONS.get(cause, ""))
            for cause, count in result.failed_by_cause.items()
        ],
        events=[
            EventRow(i, f"{e.t:.2f}", e.text, e.source, i in on_chart)
            for i, e in enumerate(result.events, start=1)
        ],
        checks=[check_row(c) for c in result.checks],
        timeline_columns=[
            "Second",
            "Sent",
            "Answered",
            "Failed",
            "Causes",
            "Retried",
            "Replicas that answered",
        ],
        timeline_rows=[_timeline_row(s, result.replicas, short) for s in result.timeline],
        notes=list(result.notes),
    )


def key_numbers(result: ExperimentResult) -> list[KeyNumber]:
    causes = " · ".join(f"{k} {v:,}" for k, v in result.failed_by_cause.items() if v)
    if result.recovery_s is None:
        recovery = KeyNumber("Recovery", "none", detail="errors lasted to the end", alert=True)
    elif result.first_error_s is None:
        recovery = KeyNumber("Recovery", "0", "s", detail="no errors at all")
    else:
        recovery = KeyNumber(
            "Recovery", f"{result.recovery_s:.0f}", "s", detail=f"from second {result.first_error_s:.0f}"
        )
    ok_detail = f"{result.ok / result.sent:.2%} of sent" if result.sent else ""
    return [
        KeyNumber("Requests sent", f"{result.sent:,}"),
        KeyNumber("Answered", f"{result.ok:,}", detail=ok_detail),
        KeyNumber("Failed", f"{result.failed:,}", detail=causes or "none", alert=result.failed > 0),
        KeyNumber("Retried", f"{result.retried:,}", detail="after a stale keep-alive close"),
        recovery,
        KeyNumber("nginx retries", f"{result.upstream_retries:,}", detail="another replica tried"),
        _latency_number(result.latency_ms),
        KeyNumber("Rate", _num(result.rate), "req/s"),
        KeyNumber("Load ran", f"{result.elapsed:.1f}", "s"),
    ]


def _latency_number(latency: dict[str, float]) -> KeyNumber:
    if not latency:
        return KeyNumber("Slowest answer", "—")
    detail = f"p50 {latency['p50']:.1f} ms · p99 {latency['p99']:.1f} ms"
    return KeyNumber("Slowest answer", f"{latency['max']:,.0f}", "ms", detail=detail)


def check_row(check: Check) -> CheckRow:
    if not check.judged:
        status, flag = "Not judged", "off"
    elif check.passed:
        status, flag = "Passed", "good"
    else:
        status, flag = "Failed", "bad"
    window = f"{check.window[0]:.0f}–{check.window[1]:.0f} s" if check.window else "—"
    return CheckRow(check.name, status, flag, check.detail, window)


def legend(result: ExperimentResult) -> list[LegendItem]:
    items = [LegendItem("answered", OK_COLOUR, "swatch"), LegendItem("failed", ERROR_COLOUR, "swatch")]
    if result.retried:
        items.append(LegendItem("retried after a stale keep-alive close", RETRY_COLOUR, "swatch"))
    items += [
        LegendItem("a step begins or ends", STEP_COLOUR, "line"),
        LegendItem("the operation reported", EVENT_COLOUR, "dashed"),
    ]
    return items


# ---------------------------------------------------------------------------------------------
# The timeline chart


def timeline_chart(
    result: ExperimentResult, *, width: float = 1100.0, bars_height: float = 240.0
) -> tuple[Chart, set[int]]:
    """The chart, and the numbers (from 1) of the events whose label fits above it."""
    timeline = result.timeline
    seconds = max(1, len(timeline), math.ceil(max([e.t for e in result.events] + [0.0]) + 1e-9))
    short, _ = lane_names(result)
    lanes = list(zip(result.replicas, short, strict=True))
    retried_lane = any(s.retried for s in timeline)
    lane_count = len(lanes) + (1 if retried_lane else 0)
    lane_h = max(9.0, min(22.0, 260.0 / max(1, lane_count)))
    lane_font = min(_FONT, lane_h * 0.8)
    label_chars = max([len(s) for s in short] + [len("retried")])
    left = max(72.0, 16.0 + min(label_chars, 28) * _CHAR_WIDTH * lane_font)
    right = 24.0
    top = 14.0 + _LABEL_ROW * _MAX_LABEL_ROWS
    gap = 16.0
    lanes_top = top + bars_height + gap
    lanes_height = lane_count * lane_h
    height = lanes_top + lanes_height + 52.0
    plot = Rect(left, top, width - left - right, bars_height + gap + lanes_height, "none")
    slot = plot.width / seconds

    def x_of(t: float) -> float:
        return plot.x + t * slot

    peak = max([s.ok + s.errors for s in timeline] + [1])
    step = nice_step(peak * 1.1, max_ticks=5)
    y_top = max(step, math.ceil(peak * 1.1 / step - 1e-9) * step)
    base = top + bars_height

    def y_of(v: float) -> float:
        return base - v / y_top * bars_height

    desc = (
        f"{result.sent:,} requests over {len(timeline)} seconds: {result.ok:,} answered, "
        f"{result.failed:,} failed, {result.retried:,} retried; {len(result.events)} events."
    )
    chart = Chart("timeline", "Requests per second and who answered them", desc, width, height, plot)
    # Panel 1: y grid and labels, stacked bars
    for v in ticks(y_top, step):
        y = px(y_of(v))
        chart.grid.append(Line(plot.x, y, px(plot.x + plot.width), y, GRID))
        chart.texts.append(Text(px(plot.x - 8), px(y + 5), f"{v:,.0f}", "end", _FONT, MUTED))
    mid = px(top + bars_height / 2)
    chart.texts.append(
        Text(16, mid, "requests / s", size=_FONT, fill=MUTED, transform=f"rotate(-90 16 {mid})")
    )
    bar_w = max(1.0, slot * 0.8)
    for s in timeline:
        x = px(x_of(s.t) + (slot - bar_w) / 2)
        ok_top = y_of(s.ok)
        if s.ok:
            chart.bars.append(
                Rect(
                    x, px(ok_top), px(bar_w), px(base - ok_top), OK_COLOUR, f"second {s.t}: {s.ok:,} answered"
                )
            )
        if s.errors:
            err_top = y_of(s.ok + s.errors)
            causes = ", ".join(f"{k} {v:,}" for k, v in s.errors_by_cause.items() if v)
            chart.bars.append(
                Rect(x, px(err_top), px(bar_w), px(ok_top - err_top), ERROR_COLOUR,
                     f"second {s.t}: {s.errors:,} failed ({causes})")
            )  # fmt: skip
    chart.grid.append(Line(plot.x, px(base), px(plot.x + plot.width), px(base), INK, 1.5))
    # Panel 2: one lane per replica (and one for retries)
    row = 0
    if retried_lane:
        most = max(s.retried for s in timeline)
        _lane_label(chart, "retried", lanes_top, lane_h, lane_font)
        for s in timeline:
            if s.retried:
                fill = _shade(RETRY_COLOUR, s.retried / most)
                chart.bars.append(
                    Rect(px(x_of(s.t)), px(lanes_top + 1), px(slot), px(lane_h - 2), fill,
                         f"second {s.t}: {s.retried:,} retried on a fresh connection")
                )  # fmt: skip
        row = 1
    top_share = max([n / s.ok for s in timeline if s.ok for n in s.by_replica.values()] + [1e-9])
    for i, (name, label) in enumerate(lanes, start=row):
        y = lanes_top + i * lane_h
        # The lane's pale background goes first among the bars, so its cells are drawn over it.
        chart.bars.append(Rect(plot.x, px(y + 1), px(plot.width), px(lane_h - 2), LANE_EMPTY, name))
        _lane_label(chart, label, y, lane_h, lane_font)
        for s in timeline:
            n = s.by_replica.get(name, 0)
            if n:
                share = n / s.ok
                chart.bars.append(
                    Rect(px(x_of(s.t)), px(y + 1), px(slot), px(lane_h - 2), _shade(OK_COLOUR, share / top_share),
                         f"{name}, second {s.t}: {n:,} answers ({share:.1%} of that second)")
                )  # fmt: skip
    # The time axis
    axis_y = px(lanes_top + lanes_height + 4)
    t_step = nice_step(seconds, max_ticks=12)
    for v in ticks(seconds if seconds % t_step == 0 else seconds - seconds % t_step, t_step):
        x = px(x_of(v))
        chart.grid.append(Line(x, px(base), x, axis_y, GRID))
        chart.texts.append(Text(x, px(axis_y + 18), f"{v:g}", size=_FONT, fill=MUTED))
    chart.texts.append(
        Text(
            px(plot.x + plot.width / 2),
            px(height - 6),
            "seconds since the load started",
            size=_FONT,
            fill=MUTED,
        )
    )
    on_chart = _event_markers(chart, result, x_of, axis_y)
    return chart, on_chart


def lane_names(result: ExperimentResult) -> tuple[list[str], str]:
    """Replica names without the lab's own prefix ("web-3" for "lab-web-3"), and that prefix."""
    prefix = f"{result.lab}-"
    if result.replicas and all(r.startswith(prefix) and len(r) > len(prefix) for r in result.replicas):
        return [r[len(prefix) :] for r in result.replicas], prefix
    return list(result.replicas), ""


def _lane_label(chart: Chart, label: str, y: float, lane_h: float, font: float) -> None:
    chart.texts.append(
        Text(px(chart.plot.x - 8), px(y + lane_h / 2 + font * 0.35), clip_label(label), "end", font, INK)
    )


def _event_markers(
    chart: Chart, result: ExperimentResult, x_of: Callable[[float], float], bottom: float
) -> set[int]:
    """A vertical line per event; its number above the plot, in the first of three rows where it
    does not touch its neighbour (events too close together for any row are only in the table)."""
    last_end = [-math.inf] * _MAX_LABEL_ROWS
    shown: set[int] = set()
    for number, event in enumerate(result.events, start=1):
        x = px(min(max(x_of(event.t), chart.plot.x), chart.plot.x + chart.plot.width))
        is_step = event.source == "step"
        colour = STEP_COLOUR if is_step else EVENT_COLOUR
        text = str(number)
        half = len(text) * _CHAR_WIDTH * 13 / 2 + 2
        for row in range(_MAX_LABEL_ROWS):
            if x - half > last_end[row]:
                last_end[row] = x + half
                y = 14.0 + _LABEL_ROW * row + 12
                chart.texts.append(Text(x, px(y), text, size=13, fill=colour, bold=is_step))
                top = y + 4
                shown.add(number)
                break
        else:
            top = chart.plot.y
        chart.marks.append(
            Line(x, px(top), x, bottom, colour, 2.0 if is_step else 1.2, "" if is_step else "4 3")
        )
    return shown


def _shade(colour: str, strength: float) -> str:
    """`colour` mixed with white: strength 1 is the colour, 0 a pale tint that still shows."""
    strength = 0.25 + 0.75 * max(0.0, min(1.0, strength))
    rgb = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    mixed = [round(255 - (255 - c) * strength) for c in rgb]
    return "#" + "".join(f"{c:02x}" for c in mixed)


def _timeline_row(s: Second, replicas: Sequence[str], short: Sequence[str]) -> list[str]:
    causes = ", ".join(f"{k} {v:,}" for k, v in s.errors_by_cause.items() if v) or "—"
    names = dict(zip(replicas, short, strict=True))
    served = " ".join(f"{names.get(r, r)}:{n}" for r, n in s.by_replica.items() if n) or "—"
    return [str(s.t), f"{s.sent:,}", f"{s.ok:,}", f"{s.errors:,}", causes, f"{s.retried:,}", served]


def _num(value: float) -> str:
    return f"{value:g}"


def _option(value: object) -> str:
    if value is None:
        return "default"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)
