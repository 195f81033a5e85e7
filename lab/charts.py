"""SVG chart primitives, colours and axis arithmetic shared by the HTML reports (pure).

A chart is a list of rectangles, lines and texts with coordinates already worked out; the
templates' SVG macro only places them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

INK = "#1f2328"  # text
MUTED = "#57606a"
GRID = "#d8dee4"
AXIS = "#8c959f"
BAR = "#2f6db5"
BAR_FLAGGED = "#c2410c"  # a replica with errors, or traffic where none (or none where some) was due
EXPECTED = INK
MAX_LABEL_CHARS = 28


# ---------------------------------------------------------------------------------------------
# Chart primitives: what the template's SVG macro draws, in user units of the chart's viewBox


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    width: float
    height: float
    fill: str
    title: str = ""  # a tooltip, and what a screen reader says for the bar


@dataclass(frozen=True)
class Line:
    x1: float
    y1: float
    x2: float
    y2: float
    stroke: str = AXIS
    width: float = 1.0
    dash: str = ""


@dataclass(frozen=True)
class Text:
    x: float
    y: float
    text: str
    anchor: str = "middle"  # start | middle | end
    size: float = 14.0
    fill: str = INK
    bold: bool = False
    transform: str = ""


@dataclass(frozen=True)
class Chart:
    """One SVG: grid lines under bars, marks over them, then legend shapes and text."""

    id: str
    title: str
    desc: str
    width: float
    height: float
    plot: Rect  # the area the data lives in; every bar stays inside it
    grid: list[Line] = field(default_factory=list)
    bars: list[Rect] = field(default_factory=list)
    marks: list[Line] = field(default_factory=list)
    shapes: list[Rect] = field(default_factory=list)
    texts: list[Text] = field(default_factory=list)
    orientation: str = "vertical"


# ---------------------------------------------------------------------------------------------
# Page pieces both reports show


@dataclass(frozen=True)
class Badge:
    label: str
    background: str
    colour: str
    reason: str


@dataclass(frozen=True)
class KeyNumber:
    label: str
    value: str
    unit: str = ""
    detail: str = ""
    alert: bool = False


# ---------------------------------------------------------------------------------------------
# Axis arithmetic and formats


def nice_step(span: float, max_ticks: int = 5) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^k with at most `max_ticks` steps covering `span`."""
    if span <= 0:
        return 1.0
    raw = span / max_ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * magnitude >= raw * (1 - 1e-9):
            return m * magnitude
    return 10 * magnitude


def ticks(top: float, step: float) -> list[float]:
    """0, step, 2 x step, ... up to `top`."""
    return [k * step for k in range(round(top / step) + 1)]


def floor_125(value: float) -> float:
    """The largest 1, 2 or 5 x 10^k at or below `value` (> 0)."""
    magnitude = 10 ** math.floor(math.log10(value))
    return next(m * magnitude for m in (5, 2, 1, 0.5) if m * magnitude <= value * (1 + 1e-9))


def ceil_125(value: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at or above `value` (> 0)."""
    magnitude = 10 ** math.floor(math.log10(value))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= value * (1 - 1e-9))


def ticks_125(low: float, high: float) -> list[float]:
    """1-2-5 ticks from `low` to `high`; only powers of ten when that would be more than 10."""
    ticks: list[float] = []
    magnitude = 10 ** math.floor(math.log10(low))
    while magnitude <= high * (1 + 1e-9):
        ticks += [m * magnitude for m in (1, 2, 5) if low * (1 - 1e-9) <= m * magnitude <= high * (1 + 1e-9)]
        magnitude *= 10
    if len(ticks) > 10:
        ticks = [t for t in ticks if math.isclose(10 ** round(math.log10(t)), t)] or ticks
    return ticks


def px(value: float) -> float:
    """SVG coordinates to a tenth of a unit: enough on screen, short in the file."""
    return round(value, 1)


def clip_label(label: str) -> str:
    """Labels longer than MAX_LABEL_CHARS end in an ellipsis."""
    return label if len(label) <= MAX_LABEL_CHARS else label[: MAX_LABEL_CHARS - 1] + "…"


UNKNOWN_VERDICT = ("Unknown", MUTED, "#ffffff")


def verdict_badge(styles: dict[str, tuple[str, str, str]], verdict: str, reason: str) -> Badge:
    """The coloured verdict badge; `styles` maps a verdict to (label, background, text colour)."""
    label, background, colour = styles.get(verdict, UNKNOWN_VERDICT)
    return Badge(label=label, background=background, colour=colour, reason=reason)
