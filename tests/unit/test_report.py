"""The HTML report: synthetic VerifyResults in, a self-contained, escaped page with sane charts out."""

from __future__ import annotations

import math
import random
import re
from dataclasses import replace
from pathlib import Path

import pytest
from markupsafe import escape

from lab.report import (
    Chart,
    compare_view,
    latency_histogram_chart,
    render_compare_report,
    render_verify_report,
    short_names,
    verify_view,
    write_report,
)
from lab.results import AccessLogCheck, ContentVersion, HistogramBar, Latency, ReplicaResult, VerifyResult


def latency_bars(seed: int = 1, count: int = 3000) -> list[HistogramBar]:
    """Log-normal latencies around 2 ms in the stats module's fine buckets (64 per doubling)."""
    rng = random.Random(seed)
    counts: dict[int, int] = {}
    for _ in range(count):
        ms = math.exp(rng.gauss(math.log(2.0), 0.45)) + (40.0 if rng.random() < 0.01 else 0.0)
        k = math.floor(math.log2(ms) * 64)
        counts[k] = counts.get(k, 0) + 1
    return [HistogramBar(2 ** (k / 64), 2 ** ((k + 1) / 64), c) for k, c in sorted(counts.items())]


def make_result(
    counts: list[int],
    *,
    lab: str = "lab",
    method: str = "random",
    weights: list[int] | None = None,
    verdict: str = "balanced",
    reason: str = "chi-square 1.20 on 2 dof, p = 0.549 >= alpha 0.001",
    errors: dict[str, int] | None = None,
    log_differences: dict[str, int] | None = None,
    notes: list[str] | None = None,
) -> VerifyResult:
    """A VerifyResult as `lab verify` would build it, for `counts` per replica."""
    weights = weights or []
    shares = [w / sum(weights) for w in weights] if weights else [1 / len(counts)] * len(counts)
    ok = sum(counts)
    errors = errors or {}
    log_differences = log_differences or {}
    latency = Latency(p50=2.0, p95=4.1, p99=9.5, max=48.0, mean=2.3)
    replicas = {}
    for i, (count, share) in enumerate(zip(counts, shares, strict=True), start=1):
        name = f"{lab}-web-{i}"
        fives = errors.get("http_5xx", 0) if i == 1 else 0
        statuses = {200: count} | ({502: fives} if fives else {})
        replicas[name] = ReplicaResult(
            name=name,
            count=count,
            share=count / ok if ok else 0.0,
            expected_share=share,
            statuses=statuses,
            errors=fives,
            latency_ms=latency if count else None,
            access_log_count=count + log_differences.get(name, 0),
        )
    n_errors = sum(errors.values())
    test: dict[str, object] = {"method": method, "ok": ok, "errors": sum(errors.values())}
    if verdict != "failed":  # as lab.stats.judge: a failed run is not tested
        test |= {"test": "chi_square", "statistic": 1.2, "dof": len(counts) - 1}
        test |= {"p_value": 0.549, "alpha": 0.001, "passed": verdict == "balanced"}
    return VerifyResult(
        lab=lab,
        url="http://127.0.0.1:8080/",
        method=method,
        weights=weights,
        requests=ok + n_errors,
        ok=ok,
        errors=n_errors,
        errors_by_cause=errors,
        replicas=replicas,
        test=test,
        max_deviation=max(abs(r.share - r.expected_share) / r.expected_share for r in replicas.values()),
        latency_ms=latency,
        latency_histogram=latency_bars(),
        throughput_rps=2513.7,
        duration_s=1.2,
        concurrency=8,
        clients=4,
        verdict=verdict,
        reason=reason,
        access_log=AccessLogCheck(
            checked=True,
            matches=not log_differences,
            verifier_total=ok,
            log_total=ok + sum(log_differences.values()),
            differences=log_differences,
        ),
        retried=2,
        notes=notes or [],
    )


def balanced_three() -> VerifyResult:
    return make_result([1003, 998, 999], notes=["3 requests were retried on a fresh connection"])


def sixty_four() -> VerifyResult:
    rng = random.Random(64)
    return make_result([rng.randint(140, 170) for _ in range(64)], method="least_conn")


def failed_run() -> VerifyResult:
    return make_result(
        [300, 0, 310],
        method="round_robin",
        verdict="failed",
        reason="41 of 651 requests failed",
        errors={"http_5xx": 29, "refused": 12},
        log_differences={"lab-web-2": 5, "lab-web-3": -2},
    )


ALL_CASES = [balanced_three, sixty_four, failed_run]


def _svg_numbers(html: str, element: str) -> list[dict[str, float]]:
    found = []
    for attrs in re.findall(rf"<{element} ([^>]*?)/?>", html):
        pairs = dict(re.findall(r'([\w-]+)="([^"]*)"', attrs))
        found.append({k: float(v) for k, v in pairs.items() if re.fullmatch(r"-?[\d.]+", v)})
    return found


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda f: f.__name__)
def test_report_shows_verdict_every_replica_and_charts(case) -> None:
    result = case()
    html = render_verify_report(result)
    assert html.startswith("<!DOCTYPE html>")
    assert '<html lang="en">' in html
    assert "<title>" in html and result.verdict.capitalize() in html
    assert str(escape(result.reason)) in html
    for name in result.replicas:
        assert f">{name}</th>" in html
    assert html.count("<svg ") == 2
    assert html.count("<title id=") == 2  # every SVG has a title
    assert "<rect " in html and "<line " in html


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda f: f.__name__)
def test_report_loads_nothing_from_the_network(case) -> None:
    html = render_verify_report(case())
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html, re.I)
    assert "@import" not in html and "<script" not in html.lower() and "<link" not in html.lower()
    # the only http:// on the page is the lab's own URL, shown as text
    assert re.findall(r"https?://[^\s<\"]+", html) == ["http://127.0.0.1:8080/"]


def test_names_and_notes_are_escaped() -> None:
    result = make_result(
        [10, 12], lab="<script>alert(1)</script>", notes=["<img src=x onerror=alert(2)>"], reason="a < b & c"
    )
    html = render_verify_report(result)
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "a &lt; b &amp; c" in html
    compare = render_compare_report([result])
    assert "<script>" not in compare and "&lt;script&gt;" in compare


def _assert_inside(chart: Chart) -> None:
    plot = chart.plot
    for bar in chart.bars:
        assert bar.width > 0 and bar.height >= 0
        assert plot.x - 0.1 <= bar.x and bar.x + bar.width <= plot.x + plot.width + 0.1
        assert plot.y - 0.1 <= bar.y and bar.y + bar.height <= plot.y + plot.height + 0.1
    for item in [*chart.grid, *chart.marks]:
        assert 0 <= item.x1 <= chart.width and 0 <= item.x2 <= chart.width
        assert 0 <= item.y1 <= chart.height and 0 <= item.y2 <= chart.height
    for text in chart.texts:
        assert 0 <= text.x <= chart.width and 0 <= text.y <= chart.height


def test_three_replicas_stand_as_columns_proportional_to_their_shares() -> None:
    result = make_result([500, 250, 250], weights=[2, 1, 1])
    chart = verify_view(result).share_chart
    _assert_inside(chart)
    assert chart.orientation == "vertical" and len(chart.bars) == 3
    heights = [bar.height for bar in chart.bars]
    assert heights[0] == pytest.approx(2 * heights[1], rel=0.01)
    assert heights[1] == pytest.approx(heights[2], abs=0.1)
    base = {round(bar.y + bar.height, 1) for bar in chart.bars}
    assert len(base) == 1  # all bars stand on one baseline
    # the expected-share marker of a replica that got exactly its share sits on top of its bar
    assert chart.marks[0].y1 == pytest.approx(chart.bars[0].y, abs=0.2)
    texts = {t.text for t in chart.texts}
    assert {"1", "2", "3", "500 · 50.0%", "250 · 25.0%"} <= texts  # short names; counts and shares


def test_sixty_four_replicas_get_one_row_each_with_widths_proportional_to_shares() -> None:
    result = sixty_four()
    chart = verify_view(result).share_chart
    _assert_inside(chart)
    assert chart.orientation == "horizontal" and len(chart.bars) == 64
    replicas = list(result.replicas.values())
    ratio = chart.bars[0].width / replicas[0].share
    for bar, replica in zip(chart.bars, replicas, strict=True):
        assert bar.width == pytest.approx(replica.share * ratio, rel=0.01, abs=0.1)
    rows = [bar.y for bar in chart.bars]
    assert rows == sorted(rows) and min(b - a for a, b in zip(rows, rows[1:], strict=False)) >= 16
    svg_rects = _svg_numbers(render_verify_report(result), "rect")
    assert all(r["x"] + r["width"] <= 1100 for r in svg_rects)


def test_latency_histogram_is_log_spaced_with_percentile_lines() -> None:
    result = balanced_three()
    chart = latency_histogram_chart(result.latency_histogram, result.latency_ms)
    assert chart is not None
    _assert_inside(chart)
    assert 10 <= len(chart.bars) <= 80  # the 64-per-doubling buckets are merged into readable bins
    assert sum(int(t.text.startswith(("p50", "p95", "p99"))) for t in chart.texts) == 3
    x = {t.text.split()[0]: t.x for t in chart.texts if t.text.startswith("p")}
    assert x["p50"] < x["p95"] < x["p99"]
    ticks = {t.text: t.x for t in chart.texts if t.text.endswith(" ms")}
    assert {"1 ms", "2 ms", "10 ms"} <= set(ticks)
    # log scale: the step from 1 to 2 ms is log10(2) of the step from 1 to 10 ms
    decade = ticks["10 ms"] - ticks["1 ms"]
    assert (ticks["2 ms"] - ticks["1 ms"]) / decade == pytest.approx(math.log10(2), abs=0.01)
    total = sum(b.count for b in result.latency_histogram)
    assert total == 3000


def test_no_latencies_means_no_histogram() -> None:
    assert latency_histogram_chart([], None) is None
    html = render_verify_report(replace(make_result([5, 5]), latency_histogram=[], latency_ms=None))
    assert "No latencies were recorded." in html


def test_failed_run_highlights_errors_and_access_log_differences() -> None:
    result = failed_run()
    view = verify_view(result)
    assert view.badge.label == "Failed" and view.badge.background == "#c62828"
    errors = next(n for n in view.numbers if n.label == "Errors")
    assert errors.alert and "http_5xx 29" in errors.detail and "refused 12" in errors.detail
    assert view.access_log.status == "Differs"
    assert view.access_log.differences == [("lab-web-2", "+5"), ("lab-web-3", "−2")]
    flagged = {row.name for row in view.rows if row.flagged}
    assert flagged == {"lab-web-1", "lab-web-2", "lab-web-3"}  # 5xx; got nothing + log; log
    html = render_verify_report(result)
    assert 'class="bad"' in html and "Differs" in html


def test_test_sentence_explains_the_p_value_plainly() -> None:
    sentence = verify_view(balanced_three()).test.sentence
    assert "54.9%" in sentence and "0.1%" in sentence and "fair" in sentence
    facts = dict(verify_view(balanced_three()).test.facts)
    assert facts["p-value"] == "0.549" and facts["Degrees of freedom"] == "2"
    assert facts["Alpha (significance level)"] == "0.001" and facts["Statistic (χ²)"] == "1.20"


def test_short_names_drop_a_common_prefix_only_at_a_dash() -> None:
    assert short_names(["lab-web-1", "lab-web-2"]) == (["1", "2"], "lab-web-")
    assert short_names(["lab-web-10", "lab-web-11"]) == (["10", "11"], "lab-web-")
    assert short_names(["alpha", "alps"]) == (["alpha", "alps"], "")
    assert short_names(["lab-web-1"]) == (["lab-web-1"], "")


def test_compare_report_has_one_column_per_run() -> None:
    results = [balanced_three(), sixty_four(), failed_run()]
    view = compare_view(results)
    assert [c.heading for c in view.columns] == ["random", "least connections", "round robin"]
    for column in view.columns:
        _assert_inside(column.chart)
        assert column.chart.orientation == "vertical"
    html = render_compare_report(results)
    assert html.count("<svg ") == 3 and "Balanced" in html and "Failed" in html
    assert "p95 latency" in html and "Max deviation" in html and "req/s" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)


def test_write_report_creates_parent_directories(tmp_path: Path) -> None:
    target = tmp_path / "reports" / "today" / "verify.html"
    write_report(target, "<p>ü</p>")
    assert target.read_text(encoding="utf-8") == "<p>ü</p>"


def split_by_content() -> VerifyResult:
    """balanced_three, where lab-web-1 served other content than the two others."""
    base = balanced_three()
    split = [
        ContentVersion("v1+bbbbbbbb", "v1", "bbbbbbbb", 2001, 0.667, {"lab-web-2": 998, "lab-web-3": 1003}),
        ContentVersion("v1+aaaaaaaa", "v1", "aaaaaaaa", 999, 0.333, {"lab-web-1": 999}),
    ]
    replicas = {
        name: replace(r, contents={g.version: g.replicas[name] for g in split if name in g.replicas})
        for name, r in base.replicas.items()
    }
    return replace(base, contents=split, replicas=replicas)


def test_contents_get_a_column_and_a_section_only_when_the_run_kept_them() -> None:
    plain = render_verify_report(balanced_three())
    assert "content versions" not in plain and '<th scope="col">Content</th>' not in plain
    html = render_verify_report(split_by_content())
    assert "What was served: content versions" in html
    assert '<th scope="col">Content</th>' in html
    assert "<code>v1+aaaaaaaa</code>" in html and "lab-web-2 (998), lab-web-3 (1,003)" in html
    assert "the replica&#39;s own name, so it is taken out" in html or "own name, so it is taken out" in html


def test_the_terminal_shows_contents_by_replica_and_by_version() -> None:
    from rich.console import Console

    from lab import ui

    base = balanced_three()
    result = split_by_content()
    split = result.contents
    console = Console(width=200, record=True)
    console.print(ui.verify_table(result))
    console.print(ui.content_table(result))
    text = console.export_text()
    rows = {
        line.split("│")[1].strip(): line for line in text.splitlines() if "lab-web-" in line and "│" in line
    }
    assert rows["lab-web-1"].rstrip("│ ").endswith("v1+aaaaaaaa")
    assert rows["lab-web-2"].rstrip("│ ").endswith("v1+bbbbbbbb")
    assert "v1+bbbbbbbb  " in text and "lab-web-2 (998), lab-web-3 (1,003)" in text
    one = replace(base, contents=split[:1])
    assert "every answer carried the same content (v1+bbbbbbbb)" in ui.verify_summary(one)


def test_one_content_version_is_a_line_not_a_column_so_80_columns_keep_every_number() -> None:
    from rich.console import Console

    from lab import ui

    base = balanced_three()
    one = ContentVersion("v1+bbbbbbbb", "v1", "bbbbbbbb", 3000, 1.0, dict.fromkeys(base.replicas, 1000))
    replicas = {name: replace(r, contents={one.version: 1000}) for name, r in base.replicas.items()}
    result = replace(base, contents=[one], replicas=replicas)
    console = Console(width=80, record=True)
    console.print(ui.verify_table(result))
    text = console.export_text()
    assert "content" not in text and "v1+bbbbbbbb" not in text
    rows = [line for line in text.splitlines() if "lab-web-" in line]
    assert len(rows) == 3 and not any("…" in row for row in rows), text  # every number whole
    assert all(row.rstrip("│ ").endswith(f"{base.replicas[row.split()[1]].count:,}") for row in rows), text


def test_the_json_carries_contents_and_each_replica_its_own() -> None:
    import json

    data = json.loads(json.dumps(split_by_content().as_json()))
    assert [(c["version"], c["count"], c["replicas"]) for c in data["contents"]] == [
        ("v1+bbbbbbbb", 2001, {"lab-web-2": 998, "lab-web-3": 1003}),
        ("v1+aaaaaaaa", 999, {"lab-web-1": 999}),
    ]
    assert data["replicas"]["lab-web-1"]["contents"] == {"v1+aaaaaaaa": 999}
    assert sum(c["count"] for c in data["contents"]) == sum(r["count"] for r in data["replicas"].values())
