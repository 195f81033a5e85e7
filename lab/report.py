"""The HTML report of `lab verify` and `lab compare`: results in, finished view models out (pure).

Every decision lives here: geometry of the charts (bars, ticks, labels, in SVG user units),
colours per verdict, number formats and the sentences that explain the test. The templates in
lab/templates/ only loop and place; `lab.render.render_html` turns view models into HTML.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.charts import (
    BAR,
    BAR_FLAGGED,
    EXPECTED,
    GRID,
    INK,
    MAX_LABEL_CHARS,
    MUTED,
    Badge,
    Chart,
    KeyNumber,
    Line,
    Rect,
    Text,
    ceil_125,
    clip_label,
    floor_125,
    nice_step,
    px,
    ticks,
    ticks_125,
    verdict_badge,
)
from lab.describe import describe
from lab.render import render_html
from lab.results import AccessLogCheck, HistogramBar, Latency, ReplicaResult, VerifyResult

HISTOGRAM = "#4a78b8"
PERCENTILE_COLOURS = {"p50": "#1a7f37", "p95": "#9a5b00", "p99": "#b3261e"}

# verdict -> (label, background, text colour); every pair has a contrast ratio of at least 4.5
VERDICT_STYLES = {
    "balanced": ("Balanced", "#1a7f37", "#ffffff"),
    "skewed": ("Skewed", "#f0b429", INK),
    "inconclusive": ("Inconclusive", "#57606a", "#ffffff"),
    "failed": ("Failed", "#c62828", "#ffffff"),
}
BAND = "#6f42c1"  # the range of shares the test accepted

METHOD_LABELS = {
    "round_robin": "round robin",
    "least_conn": "least connections",
    "ip_hash": "IP hash",
    "hash": "hash",
    "random": "random",
    "random_two": "random two (power of two choices)",
}

MAX_VERTICAL_BARS = 16  # more replicas than this get one horizontal bar per row
_CHAR_WIDTH = 0.6  # average glyph width of a sans-serif font, in font sizes


# ---------------------------------------------------------------------------------------------
# Page view models


@dataclass(frozen=True)
class Cell:
    text: str
    flag: str = ""  # "" | "bad" (a mismatch) | "warn" (worth a look) | "worst" (largest deviation)
    hint: str = ""


@dataclass(frozen=True)
class ReplicaRow:
    name: str
    cells: list[Cell]
    flagged: bool


@dataclass(frozen=True)
class TestView:
    facts: list[tuple[str, str]]
    sentence: str


@dataclass(frozen=True)
class AccessLogView:
    status: str
    flag: str  # "good" | "bad" | "off"
    sentence: str
    differences: list[tuple[str, str]]
    note: str


@dataclass(frozen=True)
class ContentRow:
    """One content version: what a group of answers carried, and which replicas sent it."""

    version: str
    digest: str
    count: str
    share: str
    replicas: str


@dataclass(frozen=True)
class VerifyView:
    title: str
    lab: str
    url: str
    method: str
    weights: str
    badge: Badge
    numbers: list[KeyNumber]
    share_chart: Chart
    share_caption: str
    latency_chart: Chart | None
    latency_caption: str
    columns: list[str]
    rows: list[ReplicaRow]
    test: TestView
    access_log: AccessLogView
    notes: list[str]
    advice: str = ""  # inconclusive: what would make the test decisive
    contents: list[ContentRow] | None = None  # None: the run did not look at contents
    content_caption: str = ""


@dataclass(frozen=True)
class CompareColumn:
    heading: str
    lab: str
    weights: str
    badge: Badge
    facts: list[tuple[str, str]]
    chart: Chart


@dataclass(frozen=True)
class LegendItem:
    label: str
    colour: str
    kind: str  # "swatch" (a bar) | "line" (a marker)


@dataclass(frozen=True)
class CompareView:
    title: str
    columns: list[CompareColumn]
    legend: list[LegendItem]


# ---------------------------------------------------------------------------------------------
# Entry points


def render_verify_report(result: VerifyResult) -> str:
    """The self-contained HTML page for one `lab verify` run."""
    return render_html("verify.html.j2", view=verify_view(result))


def render_compare_report(results: list[VerifyResult]) -> str:
    """One page with several runs (usually one per balancing method) side by side."""
    return render_html("compare.html.j2", view=compare_view(results))


def write_report(path: Path, html: str) -> None:
    """Write `html` to `path`, creating its parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")


def verify_view(result: VerifyResult) -> VerifyView:
    """Everything the verify page shows, decided."""
    replicas = list(result.replicas.values())
    short, prefix = short_names([r.name for r in replicas])
    caption = f"Bars are labelled without the common prefix “{prefix}”. " if prefix else ""
    caption += "Hover a bar for its exact numbers."
    latency_chart = latency_histogram_chart(result.latency_histogram, result.latency_ms)
    return VerifyView(
        title=f"lab verify: {result.lab} ({method_label(result.method)}) — {badge(result).label}",
        lab=result.lab,
        url=result.url,
        method=method_label(result.method),
        weights=weights_label(result.weights),
        badge=badge(result),
        numbers=key_numbers(result),
        share_chart=share_chart(replicas, short, chart_id="shares"),
        share_caption=caption,
        latency_chart=latency_chart,
        latency_caption=latency_caption(result.latency_ms, sum(b.count for b in result.latency_histogram)),
        columns=list(_TABLE_COLUMNS) + (["Content"] if result.contents else []),
        rows=replica_rows(result),
        test=test_view(result),
        access_log=access_log_view(result.access_log),
        notes=list(result.notes),
        advice=result.advice,
        contents=content_rows(result) if result.contents else None,
        content_caption=CONTENT_CAPTION,
    )


CONTENT_CAPTION = (
    "Answers grouped by what they carried, whichever replica sent them. The site's pages print "
    "the replica's own name, so it is taken out of each body before it is hashed (CRC-32): "
    "replicas serving the same pages share a version. A version is named by the X-Site-Version "
    "header when that version had one content in this run, else by the header and the hash "
    "(one replica changed by `lab cp` stands apart)."
)


def content_rows(result: VerifyResult) -> list[ContentRow]:
    return [
        ContentRow(
            version=group.version,
            digest=group.digest,
            count=f"{group.count:,}",
            share=_percent(group.share),
            replicas=", ".join(f"{name} ({n:,})" for name, n in group.replicas.items()),
        )
        for group in result.contents
    ]


def compare_view(results: list[VerifyResult]) -> CompareView:
    """One column per run: verdict, throughput, p95, max deviation and a small share chart."""
    columns = []
    for i, result in enumerate(results):
        replicas = list(result.replicas.values())
        short, _ = short_names([r.name for r in replicas])
        facts = [
            ("Test", describe(result).name),
            ("Throughput", f"{_rate(result.throughput_rps)} req/s"),
            ("p95 latency", _ms(result.latency_ms.p95) if result.latency_ms else "—"),
            ("Max deviation", _percent(result.max_deviation)),
            ("Requests", f"{result.requests:,}"),
            ("Errors", f"{result.errors:,}"),
            ("Replicas", str(len(replicas))),
        ]
        chart = share_chart(replicas, short, chart_id=f"shares-{i}", width=360, height=200, detailed=False)
        columns.append(
            CompareColumn(
                heading=method_label(result.method),
                lab=result.lab,
                weights=weights_label(result.weights),
                badge=badge(result),
                facts=facts,
                chart=chart,
            )
        )
    labs = sorted({r.lab for r in results})
    legend = [LegendItem("observed share per replica", BAR, "swatch")]
    if any(bar.fill == BAR_FLAGGED for column in columns for bar in column.chart.bars):
        legend.append(LegendItem("errors, or share not as due", BAR_FLAGGED, "swatch"))
    legend.append(LegendItem("expected share", EXPECTED, "line"))
    if any(_band(r) for result in results for r in result.replicas.values()):
        legend.append(LegendItem("accepted range", BAND, "line"))
    return CompareView(title=f"lab compare: {', '.join(labs) or 'no runs'}", columns=columns, legend=legend)


# ---------------------------------------------------------------------------------------------
# Header, key numbers, table


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method.replace("_", " "))


def weights_label(weights: Sequence[int]) -> str:
    if not weights or len(set(weights)) == 1:
        return "equal weights"
    return "weights " + ":".join(str(w) for w in weights)


def badge(result: VerifyResult) -> Badge:
    return verdict_badge(VERDICT_STYLES, result.verdict, result.reason)


def key_numbers(result: VerifyResult) -> list[KeyNumber]:
    causes = sorted(result.errors_by_cause.items(), key=lambda kv: (-kv[1], kv[0]))
    error_detail = " · ".join(f"{cause} {count:,}" for cause, count in causes if count)
    ok_detail = f"{result.ok / result.requests:.1%} of sent" if result.requests else ""
    return [
        KeyNumber("Requests sent", f"{result.requests:,}"),
        KeyNumber("Answered OK", f"{result.ok:,}", detail=ok_detail),
        KeyNumber("Errors", f"{result.errors:,}", detail=error_detail, alert=result.errors > 0),
        KeyNumber("Throughput", _rate(result.throughput_rps), "req/s"),
        KeyNumber("Duration", f"{result.duration_s:.1f}", "s"),
        KeyNumber("Concurrency", f"{result.concurrency:,}", detail="connections at once"),
        KeyNumber("Clients", f"{result.clients:,}", detail="client identities"),
        KeyNumber("Retried", f"{result.retried:,}", detail="after a stale keep-alive"),
        KeyNumber("Max deviation", _percent(result.max_deviation), detail="from an expected share"),
    ]


_TABLE_COLUMNS = (
    "Replica",
    "Requests",
    "Share",
    "Expected",
    "Accepted",
    "Deviation",
    "Status codes",
    "5xx",
    "p50",
    "p95",
    "p99",
    "Access log",
)


def deviation(replica: ReplicaResult) -> float | None:
    """(observed - expected) / expected; None for a replica due nothing that got nothing."""
    if replica.expected_share == 0:
        return math.inf if replica.count else None
    return (replica.share - replica.expected_share) / replica.expected_share


def replica_rows(result: VerifyResult) -> list[ReplicaRow]:
    replicas = list(result.replicas.values())
    deviations = {r.name: deviation(r) for r in replicas}
    known = {name: abs(d) for name, d in deviations.items() if d is not None}
    worst = max(known, key=lambda name: known[name]) if known and max(known.values()) > 0 else None
    rows = []
    for r in replicas:
        d = deviations[r.name]
        dev_flag = ""
        if r.name == worst:
            dev_flag = "warn" if result.verdict == "skewed" else "worst"
        misplaced = _misplaced(r)
        log_cell = _access_log_cell(r, result.access_log)
        cells = [
            Cell(f"{r.count:,}", "bad" if misplaced else ""),
            Cell(_percent(r.share)),
            Cell(_percent(r.expected_share)),
            _accepted_cell(r),
            Cell(_signed_percent(d), dev_flag, "largest deviation" if r.name == worst else ""),
            Cell(statuses_label(r.statuses)),
            Cell(f"{r.errors:,}", "bad" if r.errors else ""),
            *_latency_cells(r.latency_ms),
            log_cell,
            *([Cell(_contents_label(r.contents))] if result.contents else []),
        ]
        flagged = misplaced or r.errors > 0 or log_cell.flag == "bad"
        rows.append(ReplicaRow(name=r.name, cells=cells, flagged=flagged))
    return rows


def _contents_label(contents: dict[str, int]) -> str:
    if len(contents) <= 1:
        return next(iter(contents), "—")
    return ", ".join(f"{name} ({n:,})" for name, n in sorted(contents.items(), key=lambda kv: -kv[1]))


def _accepted_cell(r: ReplicaResult) -> Cell:
    band = _band(r)
    if band is None:
        return Cell("—", hint="this test has no per-replica range")
    outside = not band[0] - 1e-12 <= r.share <= band[1] + 1e-12
    return Cell(
        f"{_percent(band[0])}–{_percent(band[1])}", "bad" if outside else "", "shares the test accepted"
    )


def _misplaced(r: ReplicaResult) -> bool:
    """Traffic to a replica due none (a backup), or none to a replica due some."""
    return (r.count > 0) != (r.expected_share > 0)


def statuses_label(statuses: dict[int, int]) -> str:
    return ", ".join(f"{code}×{count:,}" for code, count in sorted(statuses.items())) or "—"


def _latency_cells(latency: Latency | None) -> list[Cell]:
    if latency is None:
        return [Cell("—"), Cell("—"), Cell("—")]
    return [Cell(_ms(latency.p50)), Cell(_ms(latency.p95)), Cell(_ms(latency.p99))]


def _access_log_cell(replica: ReplicaResult, check: AccessLogCheck) -> Cell:
    if replica.access_log_count is None:
        return Cell("—", hint="not checked")
    if replica.name not in check.differences:
        return Cell(f"{replica.access_log_count:,}")
    difference = _signed_int(check.differences[replica.name])
    return Cell(f"{replica.access_log_count:,} ({difference})", "bad", "log count minus verifier count")


# ---------------------------------------------------------------------------------------------
# The statistical test and the access-log cross-check, explained


def test_view(result: VerifyResult) -> TestView:
    """The test's facts and plain sentence: the same words the terminal prints (`describe`)."""
    described = describe(result)
    return TestView(facts=described.facts, sentence=described.sentence)


def access_log_view(check: AccessLogCheck) -> AccessLogView:
    differences = [(name, _signed_int(diff)) for name, diff in sorted(check.differences.items())]
    if not check.checked:
        return AccessLogView(
            "Not checked", "off", "The load balancer's access log was not read.", [], check.note
        )
    if check.matches:
        sentence = (
            f"The load balancer's access log agrees with the verifier: {check.log_total:,} requests "
            f"in the log, {check.verifier_total:,} counted by the verifier, replica by replica."
        )
        return AccessLogView("Matches", "good", sentence, differences, check.note)
    sentence = (
        f"The access log and the verifier disagree: {check.log_total:,} requests in the log, "
        f"{check.verifier_total:,} counted by the verifier."
    )
    return AccessLogView("Differs", "bad", sentence, differences, check.note)


# ---------------------------------------------------------------------------------------------
# Share chart


def short_names(names: Sequence[str]) -> tuple[list[str], str]:
    """Names without their common prefix (cut after a '-'), and that prefix ("" if none)."""
    if len(names) < 2:
        return list(names), ""
    common = os.path.commonprefix(list(names))
    prefix = common[: common.rfind("-") + 1]
    if not prefix or any(name == prefix for name in names):
        return list(names), ""
    return [name[len(prefix) :] for name in names], prefix


def share_chart(
    replicas: Sequence[ReplicaResult],
    labels: Sequence[str],
    *,
    chart_id: str,
    width: float = 1100,
    height: float = 380,
    detailed: bool = True,
) -> Chart:
    """Observed share per replica as a bar, expected share as a dark marker across it.

    Up to MAX_VERTICAL_BARS replicas stand as columns; a detailed chart of more gets one row
    per replica, so 64 names and counts stay legible. A small (not detailed) chart keeps
    columns and drops names and counts.
    """
    title = "Share of requests per replica"
    desc = "; ".join(
        f"{r.name}: {_percent(r.share)} observed ({r.count:,} requests), {_percent(r.expected_share)} expected"
        for r in replicas
    )
    if detailed and len(replicas) > MAX_VERTICAL_BARS:
        return _horizontal_shares(replicas, labels, chart_id, title, desc, width)
    return _vertical_shares(replicas, labels, chart_id, title, desc, width, height, detailed)


def _share_top(replicas: Sequence[ReplicaResult]) -> tuple[float, float]:
    """The share axis: (top, step) with a little headroom above the tallest bar or marker."""
    peak = max(
        [r.share for r in replicas]
        + [r.expected_share for r in replicas]
        + [r.expected_high for r in replicas if r.expected_high is not None]
        + [0.0]
    )
    step = nice_step(peak * 1.08 if peak > 0 else 1.0, max_ticks=5)
    return max(step, math.ceil(peak * 1.08 / step - 1e-9) * step), step


def _bar_colour(r: ReplicaResult) -> str:
    return BAR_FLAGGED if r.errors or _misplaced(r) else BAR


def _bar_title(r: ReplicaResult) -> str:
    title = f"{r.name}: {r.count:,} requests, {_percent(r.share)} (expected {_percent(r.expected_share)}"
    if r.expected_low is not None and r.expected_high is not None:
        title += f"; accepted {_percent(r.expected_low)}–{_percent(r.expected_high)}"
    return title + ")"


def _band(r: ReplicaResult) -> tuple[float, float] | None:
    if r.expected_low is None or r.expected_high is None:
        return None
    return r.expected_low, r.expected_high


def _vertical_shares(
    replicas: Sequence[ReplicaResult],
    labels: Sequence[str],
    chart_id: str,
    title: str,
    desc: str,
    width: float,
    height: float,
    detailed: bool,
) -> Chart:
    n = max(1, len(replicas))
    font = 15.0 if detailed else 14.0
    label_chars = min(MAX_LABEL_CHARS, max([len(s) for s in labels] + [1]))
    left, right = (70.0, 16.0) if detailed else (46.0, 8.0)
    top = 64.0 if detailed else 14.0
    slot = (width - left - right) / n
    label_px = label_chars * _CHAR_WIDTH * font
    show_labels = detailed or slot >= label_px + 4
    rotate = show_labels and label_px > slot * 0.9
    plot_height = height - top - 12.0 - (font + 14 if show_labels else 0)
    bottom = 12.0 + (font + 14 if show_labels else 0)
    if rotate:  # names at -45 degrees: the chart grows downwards and the first name needs room on the left
        left = max(left, label_px * 0.72 - slot / 2 + 8)
        slot = (width - left - right) / n
        bottom = 12.0 + label_px * 0.72 + font
        height = top + plot_height + bottom
    plot = Rect(left, top, width - left - right, plot_height, "none")
    axis_top, step = _share_top(replicas)
    base = plot.y + plot.height

    def y_of(share: float) -> float:
        return base - share / axis_top * plot.height

    chart = Chart(chart_id, title, desc, width, height, plot)
    _share_ticks(chart, axis_top, step, detailed, lambda v: (plot.x, y_of(v), plot.x + plot.width, y_of(v)))
    bar_w = slot * (0.62 if n > 1 else 0.4)
    for i, (r, label) in enumerate(zip(replicas, labels, strict=True)):
        centre = plot.x + slot * (i + 0.5)
        top_y = y_of(r.share)
        chart.bars.append(
            Rect(
                px(centre - bar_w / 2), px(top_y), px(bar_w), px(base - top_y), _bar_colour(r), _bar_title(r)
            )
        )
        marker_w = bar_w + min(slot * 0.3, 24) if n <= MAX_VERTICAL_BARS else slot  # many: one step line
        ey = px(y_of(r.expected_share))
        chart.marks.append(
            Line(
                px(centre - marker_w / 2),
                ey,
                px(centre + marker_w / 2),
                ey,
                EXPECTED,
                3.0 if detailed else 2.0,
            )
        )
        band = _band(r)
        if band is not None:  # an I-beam at the bar's right edge: the shares the test accepted
            bx, cap = px(centre + bar_w / 2 + 4), min(6.0, slot * 0.08)
            y_low, y_high = px(y_of(band[0])), px(y_of(band[1]))
            chart.marks.append(Line(bx, y_low, bx, y_high, BAND, 2.5 if detailed else 2.0))
            for y in (y_low, y_high):
                chart.marks.append(Line(px(bx - cap), y, px(bx + cap), y, BAND, 2.0))
        if show_labels:
            chart.texts.append(_category_label(clip_label(label), centre, base, font, rotate))
        if detailed:
            above = min(top_y, ey - 1.5) - 8
            value = f"{r.count:,} · {_percent(r.share)}" if slot >= 130 else f"{r.count:,}"
            chart.texts.append(Text(px(centre), px(above), value, size=font - 1, bold=True))
    chart.grid.append(Line(plot.x, base, plot.x + plot.width, base, INK, 1.5))
    if detailed:
        flagged = any(b.fill == BAR_FLAGGED for b in chart.bars)
        _legend(chart, plot.x + plot.width, 22.0, flagged=flagged, band=any(_band(r) for r in replicas))
    return chart


def _category_label(label: str, centre: float, base: float, font: float, rotate: bool) -> Text:
    if not rotate:
        return Text(px(centre), px(base + font + 6), label, size=font)
    x, y = px(centre + font * 0.35), px(base + 10)
    return Text(x, y, label, anchor="end", size=font, transform=f"rotate(-45 {x} {y})")


def _horizontal_shares(
    replicas: Sequence[ReplicaResult],
    labels: Sequence[str],
    chart_id: str,
    title: str,
    desc: str,
    width: float,
) -> Chart:
    n = len(replicas)
    row = max(17.0, min(30.0, 640.0 / n))
    font = min(15.0, row * 0.78)
    label_chars = min(MAX_LABEL_CHARS, max(len(s) for s in labels))
    left = 24.0 + label_chars * _CHAR_WIDTH * font
    right = 150.0  # room for "12,345 · 33.3%" after the longest bar
    top, bottom = 64.0, 44.0
    plot = Rect(left, top, width - left - right, n * row, "none")
    height = top + plot.height + bottom
    axis_top, step = _share_top(replicas)

    def x_of(share: float) -> float:
        return plot.x + share / axis_top * plot.width

    chart = Chart(chart_id, title, desc, width, height, plot, orientation="horizontal")
    for v in ticks(axis_top, step):
        x = px(x_of(v))
        chart.grid.append(Line(x, plot.y, x, plot.y + plot.height, GRID))
        chart.texts.append(
            Text(x, px(plot.y + plot.height + 22), _tick_percent(v, step), size=14, fill=MUTED)
        )
    chart.texts.append(
        Text(px(plot.x + plot.width / 2), px(height - 4), "share of successful requests", size=14, fill=MUTED)
    )
    bar_h = row * 0.72
    for i, (r, label) in enumerate(zip(replicas, labels, strict=True)):
        middle = plot.y + row * (i + 0.5)
        end = x_of(r.share)
        chart.bars.append(
            Rect(plot.x, px(middle - bar_h / 2), px(end - plot.x), px(bar_h), _bar_colour(r), _bar_title(r))
        )
        ex = px(x_of(r.expected_share))
        chart.marks.append(Line(ex, px(middle - row / 2 + 1), ex, px(middle + row / 2 - 1), EXPECTED, 2.5))
        band = _band(r)
        if band is not None:
            by, cap = px(middle + bar_h / 2 + 2), 3.0
            x_low, x_high = px(x_of(band[0])), px(x_of(band[1]))
            chart.marks.append(Line(x_low, by, x_high, by, BAND, 2.0))
            for x in (x_low, x_high):
                chart.marks.append(Line(x, px(by - cap), x, px(by + cap), BAND, 2.0))
        baseline = px(middle + font * 0.35)
        chart.texts.append(Text(px(plot.x - 8), baseline, clip_label(label), anchor="end", size=font))
        value = f"{r.count:,} · {_percent(r.share)}"
        chart.texts.append(Text(px(max(end, ex) + 8), baseline, value, anchor="start", size=font - 1))
    chart.grid.append(Line(plot.x, plot.y, plot.x, plot.y + plot.height, INK, 1.5))
    flagged = any(b.fill == BAR_FLAGGED for b in chart.bars)
    _legend(
        chart, plot.x + plot.width + right - 8, 22.0, flagged=flagged, band=any(_band(r) for r in replicas)
    )
    return chart


def _share_ticks(
    chart: Chart,
    axis_top: float,
    step: float,
    detailed: bool,
    line_at: Callable[[float], tuple[float, float, float, float]],
) -> None:
    values = ticks(axis_top, step)
    if not detailed:
        values = [values[-1]]
    for v in values:
        x1, y, x2, _ = line_at(v)
        chart.grid.append(Line(px(x1), px(y), px(x2), px(y), GRID))
        size = 14.0 if detailed else 13.0
        chart.texts.append(
            Text(px(x1 - 8), px(y + size * 0.35), _tick_percent(v, step), anchor="end", size=size, fill=MUTED)
        )


def _legend(chart: Chart, right_edge: float, y: float, flagged: bool, band: bool = False) -> None:
    """Legend in the top right corner: swatches for observed (and flagged) bars, a line for expected,
    an I-beam for the accepted range when the test has one."""
    x = right_edge - (640 if flagged else 330) - (190 if band else 0)
    chart.shapes.append(Rect(px(x), px(y - 11), 22, 14, BAR))
    chart.texts.append(Text(px(x + 30), px(y + 1), "observed share", anchor="start", size=15))
    if flagged:
        x += 170
        chart.shapes.append(Rect(px(x), px(y - 11), 22, 14, BAR_FLAGGED))
        chart.texts.append(
            Text(px(x + 30), px(y + 1), "errors, or share not as due", anchor="start", size=15)
        )
        x += 120
    lx = x + 180
    chart.marks.append(Line(px(lx), px(y - 4), px(lx + 24), px(y - 4), EXPECTED, 3.0))
    chart.texts.append(Text(px(lx + 32), px(y + 1), "expected share", anchor="start", size=15))
    if band:
        bx = lx + 170
        chart.marks.append(Line(px(bx), px(y - 12), px(bx), px(y + 4), BAND, 2.5))
        for yy in (y - 12, y + 4):
            chart.marks.append(Line(px(bx - 5), px(yy), px(bx + 5), px(yy), BAND, 2.0))
        chart.texts.append(Text(px(bx + 14), px(y + 1), "accepted range", anchor="start", size=15))


# ---------------------------------------------------------------------------------------------
# Latency histogram


def latency_caption(latency: Latency | None, count: int) -> str:
    if latency is None or count == 0:
        return "No latencies were recorded."
    return (
        f"{count:,} answers: median {_ms(latency.p50)}, p95 {_ms(latency.p95)}, "
        f"p99 {_ms(latency.p99)}, mean {_ms(latency.mean)}, slowest {_ms(latency.max)}."
    )


def latency_histogram_chart(
    histogram: Sequence[HistogramBar],
    latency: Latency | None,
    *,
    chart_id: str = "latency",
    width: float = 1100,
    height: float = 360,
) -> Chart | None:
    """Requests per latency bin on a log-spaced axis (ms), with p50/p95/p99 lines; None if empty."""
    bars = [b for b in histogram if b.count > 0 and b.high_ms > 0]
    if not bars:
        return None
    low = min(b.low_ms if b.low_ms > 0 else b.high_ms / 2 for b in bars)
    high = max(b.high_ms for b in bars)
    if latency is not None:
        high = max(high, latency.p99)
    axis_low, axis_high = floor_125(low), ceil_125(high)
    if axis_high <= axis_low:
        axis_high = ceil_125(axis_low * 1.01)
    decades = math.log10(axis_high / axis_low)
    per_decade = max(6, min(40, round(48 / decades)))
    edges = [axis_low * 10 ** (k / per_decade) for k in range(math.ceil(decades * per_decade - 1e-9) + 1)]
    counts = rebin_log(bars, edges)

    left, right, top, bottom = 76.0, 24.0, 76.0, 52.0
    plot = Rect(left, top, width - left - right, height - top - bottom, "none")
    base = plot.y + plot.height
    peak = max(counts)
    step = nice_step(peak * 1.05, max_ticks=5)
    count_top = max(step, math.ceil(peak * 1.05 / step) * step)

    def x_of(ms: float) -> float:
        return plot.x + math.log10(ms / axis_low) / decades * plot.width

    desc = latency_caption(latency, sum(b.count for b in bars))
    chart = Chart(chart_id, "Latency histogram (log scale)", desc, width, height, plot)
    for v in ticks(count_top, step):
        y = px(base - v / count_top * plot.height)
        chart.grid.append(Line(plot.x, y, plot.x + plot.width, y, GRID))
        chart.texts.append(Text(px(plot.x - 8), px(y + 5), f"{v:,.0f}", anchor="end", size=14, fill=MUTED))
    for tick in ticks_125(axis_low, axis_high):
        x = px(x_of(tick))
        chart.grid.append(Line(x, plot.y, x, base + 5, GRID))
        chart.texts.append(Text(x, px(base + 22), _ms(tick, tick=True), size=14, fill=MUTED))
    chart.texts.append(
        Text(px(plot.x + plot.width / 2), px(height - 6), "latency (ms, log scale)", size=14, fill=MUTED)
    )
    chart.texts.append(
        Text(
            16,
            px(plot.y + plot.height / 2),
            "requests",
            size=14,
            fill=MUTED,
            transform=f"rotate(-90 16 {px(plot.y + plot.height / 2)})",
        )
    )
    for lo, hi, count in zip(edges, edges[1:], counts, strict=False):
        if count <= 0:
            continue
        x1, x2 = x_of(lo), x_of(hi)
        h = count / count_top * plot.height
        title = f"{_ms(lo)} – {_ms(hi)}: {round(count):,} requests"
        chart.bars.append(
            Rect(px(x1 + 0.5), px(base - h), px(max(1.0, x2 - x1 - 1)), px(h), HISTOGRAM, title)
        )
    chart.grid.append(Line(plot.x, base, plot.x + plot.width, base, INK, 1.5))
    if latency is not None:
        _percentile_lines(chart, latency, x_of)
    return chart


def _percentile_lines(chart: Chart, latency: Latency, x_of: Callable[[float], float]) -> None:
    plot = chart.plot
    for row, (name, value) in enumerate((("p50", latency.p50), ("p95", latency.p95), ("p99", latency.p99))):
        x = px(min(max(x_of(value), plot.x), plot.x + plot.width)) if value > 0 else plot.x
        colour = PERCENTILE_COLOURS[name]
        label_y = 22.0 + row * 19
        chart.marks.append(Line(x, px(label_y + 5), x, plot.y + plot.height, colour, 2.5, "7 4"))
        near_right = x > plot.x + plot.width - 160
        tx = x - 6 if near_right else x + 6
        text = f"{name} {_ms(value)}"
        chart.texts.append(Text(px(tx), label_y, text, "end" if near_right else "start", 15, colour, True))


def rebin_log(bars: Sequence[HistogramBar], edges: Sequence[float]) -> list[float]:
    """Counts of `bars` over the bins between `edges`, each bar split by its overlap in log space."""
    counts = [0.0] * (len(edges) - 1)
    logs = [math.log(e) for e in edges]
    for bar in bars:
        lo = math.log(bar.low_ms if bar.low_ms > 0 else bar.high_ms / 2)
        hi = math.log(bar.high_ms)
        if hi - lo < 1e-12:
            hi = lo + 1e-12
        for k in range(len(counts)):
            overlap = min(hi, logs[k + 1]) - max(lo, logs[k])
            if overlap > 0:
                counts[k] += bar.count * overlap / (hi - lo)
    return counts


def _percent(value: float) -> str:
    if math.isinf(value):
        return "∞"
    return f"{value:.1%}" if abs(value) >= 0.1 or value == 0 else f"{value:.2%}"


def _signed_percent(value: float | None) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "+∞"
    text = _percent(abs(value))
    return text if abs(value) < 0.00005 else ("+" if value > 0 else "−") + text


def _signed_int(value: int) -> str:
    return f"+{value:,}" if value > 0 else f"−{-value:,}" if value < 0 else "0"


def _tick_percent(value: float, step: float) -> str:
    """A tick in percent with just the decimals its step needs (5%, 2.5%, 0.25%)."""
    if value == 0:
        return "0%"
    decimals = next(d for d in range(4) if abs(round(step * 100, d) - step * 100) < 1e-9 or d == 3)
    return f"{value * 100:.{decimals}f}%"


def _rate(rps: float) -> str:
    return f"{rps:,.0f}" if rps >= 100 else f"{rps:.1f}"


def _ms(value: float, tick: bool = False) -> str:
    """Milliseconds as a person reads them: 850 µs, 1.25 ms, 12.5 ms, 1.5 s."""
    if value >= 1000:
        return f"{value / 1000:g} s" if tick else f"{value / 1000:.2f} s"
    if value < 1:
        return f"{value * 1000:g} µs" if tick else f"{value * 1000:.0f} µs"
    if tick:
        return f"{value:g} ms"
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
