"""`lab experiment` without Docker: validation, the schedule, recovery time, step checks, the verdict,
and the report's geometry, all on synthetic timelines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from markupsafe import escape

from lab.errors import InvalidInput
from lab.experiment import (
    Check,
    Event,
    ExperimentPlan,
    ExperimentResult,
    checks_clause,
    explain,
    host_of,
    judge,
    parse_steps,
    probes_allowed,
    recovery_time,
    removed_addresses,
    replicas_in_order,
    schedule,
    traffic_check,
    version_check,
    whole_seconds,
)
from lab.experiment_report import experiment_view, render_experiment_report, timeline_chart
from lab.traffic import ERROR_CAUSES, Second

# ---------------------------------------------------------------------------------------------
# Synthetic timelines


def second(t: int, served: dict[str, int], errors: dict[str, int] | None = None, retried: int = 0) -> Second:
    errors = errors or {}
    ok = sum(served.values())
    bad = sum(errors.values())
    return Second(t, ok + bad, ok, bad, dict(errors), dict(served), retried)


def spread(t: int, replicas: list[str], per_replica: int = 20) -> Second:
    return second(t, {r: per_replica for r in replicas})


def names(*indices: int, lab: str = "lab") -> list[str]:
    return [f"{lab}-web-{i}" for i in indices]


def scale_timeline() -> list[Second]:
    """3 replicas for 4 s, 8 from second 4 to 9, 2 from second 10 on, 15 s in all."""
    return (
        [spread(t, names(1, 2, 3)) for t in range(4)]
        + [spread(t, names(*range(1, 9))) for t in range(4, 10)]
        + [spread(t, names(1, 2)) for t in range(10, 15)]
    )


def make_result(
    timeline: list[Second] | None = None,
    *,
    kind: str = "scale",
    events: list[Event] | None = None,
    checks: list[Check] | None = None,
    lab: str = "lab",
    notes: list[str] | None = None,
) -> ExperimentResult:
    timeline = timeline if timeline is not None else scale_timeline()
    failed_by_cause = {cause: 0 for cause in ERROR_CAUSES}
    for s in timeline:
        for cause, n in s.errors_by_cause.items():
            failed_by_cause[cause] += n
    sent = sum(s.sent for s in timeline)
    failed = sum(s.errors for s in timeline)
    first, recovery = recovery_time(timeline)
    verdict, reason = judge(kind, timeline, failed, sent, failed_by_cause, 3.0)
    return ExperimentResult(
        lab=lab,
        kind=kind,
        url="http://127.0.0.1:8080/",
        rate=150.0,
        duration=float(len(timeline)),
        concurrency=75,
        options={"steps": [8, 2]},
        sent=sent,
        ok=sent - failed,
        failed=failed,
        failed_by_cause=failed_by_cause,
        retried=sum(s.retried for s in timeline),
        retried_by_cause={"closed": sum(s.retried for s in timeline)},
        upstream_retries=0,
        timeline=timeline,
        events=events
        if events is not None
        else [
            Event(3.0, "step 1: scale to 8 begins", "step"),
            Event(3.4, "replica lab-web-4 answers"),
            Event(3.45, "replica lab-web-5 answers"),
            Event(3.9, "reloaded: 8 replicas in the upstream"),
            Event(3.95, "step 1: scale to 8 ends (8 replicas running)", "step"),
            Event(9.0, "step 2: scale to 2 begins", "step"),
            Event(9.6, "step 2: scale to 2 ends (2 replicas running)", "step"),
        ],
        recovery_s=recovery,
        first_error_s=first,
        checks=checks or [],
        verdict=verdict,
        reason=reason,
        notes=notes or [],
        replicas=replicas_in_order(timeline),
        elapsed=float(len(timeline)),
    )


# ---------------------------------------------------------------------------------------------
# Validation: one-line InvalidInput before anything runs


@pytest.mark.parametrize(
    ("rate", "duration", "message"),
    [
        (0, 10, "rate must be between 1 and 2000 requests per second, not 0"),
        (-5, 10, "rate must be between 1 and 2000"),
        (2001, 10, "not 2001"),
        ("fast", 10, "rate must be a number of requests per second, not 'fast'"),
        ("nan", 10, "rate must be between"),
        ("inf", 10, "rate must be between"),
        (True, 10, "rate must be a number"),
        (100, 0, "duration must be between 2 and 600 seconds, not 0"),
        (100, -1, "duration must be between 2 and 600 seconds"),
        (100, 601, "not 601"),
        (100, 1.5, "not 1.5"),
        (100, "", "duration must be a number of seconds"),
    ],
)
def test_rate_and_duration_are_bounded(rate: object, duration: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)) as caught:
        ExperimentPlan.create("scale", rate=rate, duration=duration)
    assert "\n" not in caught.value.message


def test_limits_are_inclusive_and_floats_are_fine() -> None:
    assert ExperimentPlan.create("reload", rate=1, duration=2).rate == 1.0
    plan = ExperimentPlan.create("reload", rate="2000", duration="600")
    assert (plan.rate, plan.duration) == (2000.0, 600.0)
    assert ExperimentPlan.create("reload", rate=2.5, duration=2.5).rate == 2.5


@pytest.mark.parametrize("kind", ["", "scal", "rollback", "kill", None])
def test_unknown_kind_is_refused(kind: object) -> None:
    with pytest.raises(InvalidInput, match="unknown experiment .*choose one of scale, deploy, failover"):
        ExperimentPlan.create(kind, rate=10, duration=10)


def test_kind_spellings() -> None:
    assert ExperimentPlan.create("kill_lb", rate=10, duration=10).kind == "kill-lb"
    assert ExperimentPlan.create(" Failover ", rate=10, duration=10).kind == "failover"


def test_defaults_per_kind() -> None:
    assert ExperimentPlan.create("scale", rate=10, duration=10).steps == (8, 2)
    assert ExperimentPlan.create("reload", rate=10, duration=10).times == 3
    failover = ExperimentPlan.create("failover", rate=10, duration=10)
    assert (failover.how, failover.replica, failover.restore) == ("kill", None, "after")
    assert ExperimentPlan.create("deploy", rate=10, duration=10).batch == 1


def test_options_that_do_not_apply_are_refused_and_none_means_not_given() -> None:
    with pytest.raises(InvalidInput, match="a deploy experiment does not take steps"):
        ExperimentPlan.create("deploy", rate=10, duration=10, options={"steps": "8,2"})
    with pytest.raises(InvalidInput, match=r"kill-lb experiment does not take how \(it takes no options\)"):
        ExperimentPlan.create("kill-lb", rate=10, duration=10, options={"how": "kill"})
    plan = ExperimentPlan.create("deploy", rate=10, duration=10, options={"steps": None, "batch": "2"})
    assert plan.batch == 2
    assert plan.options() == {"batch": 2, "site": None, "tag": None, "image": None}


@pytest.mark.parametrize("tag", ["../x", "-v2", "v 2", "x" * 65, ""])
def test_a_bad_deploy_tag_is_refused_by_the_plan_before_any_load(tag: str) -> None:
    with pytest.raises(InvalidInput, match="tag must be 1-64 letters, digits or _.-"):
        ExperimentPlan.create("deploy", rate=10, duration=10, options={"tag": tag})
    assert ExperimentPlan.create("deploy", rate=10, duration=10, options={"tag": "v2.1_b"}).tag == "v2.1_b"


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ("0", "each scale step (replicas) must be between 1 and 64, not 0"),
        ("8,65", "not 65"),
        ("8,x", "must be a whole number, not 'x'"),
        ("", "give at least one scale step"),
        (",", "give at least one scale step"),
        (",".join(["2"] * 11), "at most 10 scale steps"),
        (7, "steps must be replica counts"),
    ],
)
def test_bad_steps(steps: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        parse_steps(steps)


def test_steps_from_text_or_numbers() -> None:
    assert parse_steps("8, 2") == (8, 2)
    assert parse_steps([8, "3", 1]) == (8, 3, 1)


def test_failover_options(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="unknown way to break a replica 'melt'; choose one of kill, stop"):
        ExperimentPlan.create("failover", rate=10, duration=10, options={"how": "melt"})
    with pytest.raises(InvalidInput, match="restore must be one of after, during, no"):
        ExperimentPlan.create("failover", rate=10, duration=10, options={"restore": "later"})
    with pytest.raises(InvalidInput, match="replica must be a container name"):
        ExperimentPlan.create("failover", rate=10, duration=10, options={"replica": "../x; rm"})
    plan = ExperimentPlan.create("failover", rate=10, duration=10, options={"how": "pause", "replica": "2"})
    assert (plan.how, plan.replica) == ("pause", "2")


def test_deploy_site_and_batch_are_checked(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        ExperimentPlan.create("deploy", rate=10, duration=10, options={"site": str(tmp_path / "nope")})
    with pytest.raises(InvalidInput, match="has no index.html"):
        ExperimentPlan.create("deploy", rate=10, duration=10, options={"site": str(tmp_path)})
    with pytest.raises(InvalidInput, match="batch must be between 1 and 64, not 0"):
        ExperimentPlan.create("deploy", rate=10, duration=10, options={"batch": 0})
    (tmp_path / "index.html").write_text("<h1>v2</h1>")
    assert ExperimentPlan.create("deploy", rate=10, duration=10, options={"site": tmp_path}).site == tmp_path


def test_reload_times_bounded() -> None:
    with pytest.raises(InvalidInput, match="times must be between 1 and 20, not 0"):
        ExperimentPlan.create("reload", rate=10, duration=10, options={"times": 0})
    assert ExperimentPlan.create("reload", rate=10, duration=10, options={"times": "5"}).times == 5


def test_concurrency_grows_with_the_rate_within_bounds() -> None:
    assert ExperimentPlan.create("reload", rate=1, duration=10).concurrency == 16
    assert ExperimentPlan.create("reload", rate=150, duration=10).concurrency == 75
    assert ExperimentPlan.create("reload", rate=2000, duration=10).concurrency == 256


# ---------------------------------------------------------------------------------------------
# Schedule, recovery, checks, verdict


def test_schedule_starts_after_the_warm_up_and_spreads_steps() -> None:
    assert schedule(20, 1) == [4.0]
    assert schedule(20, 2) == pytest.approx([4.0, 10.0])
    assert schedule(10, 3) == pytest.approx([2.0, 4.0, 6.0])
    assert all(t < 20 * 0.8 for t in schedule(20, 10))


def test_recovery_time_without_errors_is_zero() -> None:
    assert recovery_time(scale_timeline()) == (None, 0.0)
    assert recovery_time([]) == (None, 0.0)


def test_recovery_time_runs_from_first_error_to_the_last_followed_by_a_clean_second() -> None:
    timeline = [spread(t, names(1, 2)) for t in range(10)]
    timeline[4] = second(4, {"lab-web-1": 10}, {"refused": 30})
    timeline[5] = second(5, {}, {"refused": 40})
    timeline[6] = second(6, {"lab-web-1": 30}, {"reset": 2})
    assert recovery_time(timeline) == (4.0, 3.0)


def test_recovery_time_is_none_when_errors_last_to_the_end() -> None:
    timeline = [spread(t, names(1, 2)) for t in range(5)] + [
        second(t, {}, {"refused": 40}) for t in range(5, 8)
    ]
    assert recovery_time(timeline) == (5.0, None)
    # A second with neither answers nor errors is not "clean": nobody showed the service is back.
    assert recovery_time([*timeline, second(8, {})]) == (5.0, None)


def test_whole_seconds_inside_a_window() -> None:
    assert whole_seconds(4.95, 9.0) == (5, 9)
    assert whole_seconds(5.0, 9.99) == (5, 9)
    assert whole_seconds(5.2, 5.9) is None
    assert whole_seconds(5.2, 6.0) is None


def test_step_check_passes_when_live_replicas_serve_and_removed_ones_do_not() -> None:
    timeline = scale_timeline()
    up = traffic_check("after scale to 8", timeline, 3.95 + 1, 9.0, names(*range(1, 9)))
    assert up.judged and up.passed, up.detail
    assert up.window == (5.0, 9.0)
    assert up.detail.startswith("seconds 5-8: 8/8 live replicas got traffic")
    down = traffic_check("after scale to 2", timeline, 9.6 + 1, 15.0, names(1, 2), names(*range(3, 9)))
    assert down.judged and down.passed, down.detail
    assert "removed replicas got none" in down.detail
    assert down.served == names(1, 2)


def test_step_check_names_a_removed_replica_that_still_answered_and_a_live_one_that_did_not() -> None:
    timeline = scale_timeline()
    timeline[12] = second(12, {"lab-web-1": 30, "lab-web-7": 3})
    check = traffic_check("after scale to 2", timeline, 10.6, 15.0, names(1, 2), names(*range(3, 9)))
    assert check.judged and not check.passed
    assert check.stray == ["lab-web-7"]
    assert check.missing == []
    assert "removed replicas still answered: lab-web-7" in check.detail
    missing = traffic_check("after scale to 8", scale_timeline(), 5.0, 9.0, names(*range(1, 10)))
    assert missing.missing == ["lab-web-9"] and not missing.passed
    assert "none reached lab-web-9" in missing.detail


def test_step_check_without_a_whole_second_is_not_judged() -> None:
    check = traffic_check("after scale to 2", scale_timeline(), 14.2, 14.9, names(1, 2), names(3))
    assert not check.judged and not check.passed
    assert "not judged" in check.detail and "--duration" in check.detail


def test_version_check() -> None:
    assert version_check({"lab-web-5": "v2", "lab-web-6": "v2"}, "v2", "the new version").passed
    bad = version_check({"lab-web-5": "v2", "lab-web-2": "v1"}, "v2", "the new version")
    assert bad.judged and not bad.passed and "lab-web-2 serves v1" in bad.detail
    assert not version_check({}, "v2", "the new version").judged


def test_verdict_zero_loss_and_lossy() -> None:
    causes = {"refused": 0, "reset": 3}
    assert judge("scale", scale_timeline(), 0, 3000, {}, 3.0)[0] == "zero-loss"
    verdict, reason = judge("deploy", scale_timeline(), 3, 3000, causes, 3.0)
    assert verdict == "lossy"
    assert reason == "3 of 3,000 requests failed (reset 3)"


def test_verdict_kill_lb_recovered_or_failed() -> None:
    timeline = [spread(t, names(1, 2, 3)) for t in range(10)]
    timeline[3] = second(3, {"lab-web-1": 20}, {"reset": 2, "refused": 10})
    timeline[4] = second(4, {"lab-web-2": 60}, {"refused": 5})
    verdict, reason = judge("kill-lb", timeline, 17, 1500, {"reset": 2, "refused": 15}, 3.2)
    assert verdict == "recovered"
    assert "17 of 1,500 requests failed in 2 s" in reason and "then none" in reason
    dead = timeline[:3] + [second(t, {}, {"refused": 50}) for t in range(3, 10)]
    assert judge("kill-lb", dead, 350, 800, {"refused": 350}, 3.2)[0] == "failed"
    assert judge("kill-lb", scale_timeline(), 0, 3000, {}, 3.2)[0] == "recovered"
    assert judge("kill-lb", scale_timeline(), 0, 3000, {}, None)[0] == "failed"


def test_notes_explain_retries_and_never_hide_them() -> None:
    notes = explain(
        "reload",
        retried=4,
        retried_by_cause={"closed": 3, "reset": 1},
        upstream_retries=0,
        failed=0,
        overrun=0,
    )
    assert len(notes) == 1
    assert notes[0].startswith("4 GETs met a keep-alive connection") and "closed 3, reset 1" in notes[0]
    assert explain("reload", retried=0, retried_by_cause={}, upstream_retries=0, failed=0, overrun=0) == []
    lb = explain("kill-lb", retried=0, retried_by_cause={}, upstream_retries=2, failed=9, overrun=1.5)
    assert any("nothing listens" in n for n in lb)
    assert any("tried another replica 2 times" in n for n in lb)
    assert any("1.5 s after the load ended" in n for n in lb)


def test_replicas_in_order_of_first_answer_with_natural_numbers() -> None:
    timeline = [second(0, {"lab-web-10": 1, "lab-web-2": 1}), second(1, {"lab-web-1": 1, "lab-web-2": 1})]
    assert replicas_in_order(timeline) == ["lab-web-2", "lab-web-10", "lab-web-1"]


def test_result_json_has_the_promised_keys() -> None:
    data = make_result().as_json()
    for key in (
        "sent",
        "ok",
        "failed",
        "failed_by_cause",
        "timeline",
        "events",
        "verdict",
        "retried",
        "checks",
    ):
        assert key in data
    assert data["verdict"] == "zero-loss" and data["passed"] is True
    first = data["timeline"][0]  # type: ignore[index]
    assert set(first) >= {"t", "sent", "ok", "errors", "errors_by_cause", "by_replica", "retried"}
    assert set(data["failed_by_cause"]) == set(ERROR_CAUSES)  # type: ignore[arg-type]


def test_a_failed_check_or_operation_fails_the_experiment() -> None:
    bad = Check("after scale to 2", True, False, "removed replicas still answered: lab-web-7")
    assert not make_result(checks=[bad]).passed
    unjudged = Check("after scale to 2", False, False, "not judged")
    assert not make_result(checks=[unjudged]).passed  # no evidence is not a pass
    assert make_result(checks=[unjudged]).unjudged == [unjudged]
    from dataclasses import replace

    assert not replace(make_result(), operation_error="deploy rolled back").passed


# ---------------------------------------------------------------------------------------------
# The report


def _inside(rect: object, plot: object, slack: float = 0.2) -> bool:
    x, y, w, h = (getattr(rect, k) for k in ("x", "y", "width", "height"))
    px, py, pw, ph = (getattr(plot, k) for k in ("x", "y", "width", "height"))
    return px - slack <= x and x + w <= px + pw + slack and py - slack <= y and y + h <= py + ph + slack


def test_timeline_chart_stacks_answers_and_errors_per_second() -> None:
    timeline = scale_timeline()
    timeline[6] = second(6, {r: 15 for r in names(*range(1, 9))}, {"reset": 30})
    chart, _ = timeline_chart(make_result(timeline))
    assert all(_inside(b, chart.plot) for b in chart.bars)
    ok_bars = [b for b in chart.bars if b.title.endswith("answered")]
    error_bars = [b for b in chart.bars if "failed" in b.title]
    assert len(ok_bars) == 15 and len(error_bars) == 1
    ok6 = next(b for b in ok_bars if b.title.startswith("second 6:"))
    err = error_bars[0]
    assert err.title == "second 6: 30 failed (reset 30)"
    assert err.y + err.height == pytest.approx(ok6.y, abs=0.2)  # the error bar sits on the answers
    assert err.height / ok6.height == pytest.approx(30 / 120, rel=0.02)
    ok0 = next(b for b in ok_bars if b.title.startswith("second 0:"))
    assert ok6.x > ok0.x and ok0.height == pytest.approx(ok6.height * 60 / 120, rel=0.02)


def test_timeline_chart_has_a_lane_per_replica_with_cells_only_where_it_answered() -> None:
    result = make_result()
    chart, _ = timeline_chart(result)
    lanes = [b for b in chart.bars if "answers (" in b.title]
    assert {b.title.split(",")[0] for b in lanes} == set(names(*range(1, 9)))
    web7 = [b for b in lanes if b.title.startswith("lab-web-7,")]
    assert [int(re.search(r"second (\d+)", b.title).group(1)) for b in web7] == list(range(4, 10))  # type: ignore[union-attr]
    labels = {t.text for t in chart.texts}
    assert {"web-1", "web-8"} <= labels  # without the common prefix
    backgrounds = [b for b in chart.bars if b.fill == "#f3f5f7"]
    assert [b.title for b in backgrounds] == result.replicas  # one pale lane per replica, under its cells
    assert chart.bars.index(backgrounds[6]) < chart.bars.index(web7[0])


def test_event_markers_sit_at_their_time_and_crowded_labels_move_up_a_row_or_drop() -> None:
    result = make_result()
    chart, on_chart = timeline_chart(result)
    plot = chart.plot
    per_second = plot.width / len(result.timeline)
    assert len(chart.marks) == len(result.events)
    for mark, event in zip(chart.marks, result.events, strict=True):
        assert mark.x1 == mark.x2 == pytest.approx(plot.x + event.t * per_second, abs=0.1)
        assert (mark.width == 2.0) == (event.source == "step")
    numbers = [t for t in chart.texts if t.text.isdigit() and t.y < plot.y]
    assert {int(t.text) for t in numbers} == on_chart
    assert 1 in on_chart and 6 in on_chart  # the first of a crowd, and a lone step
    rows: dict[float, list[float]] = {}
    for t in numbers:
        rows.setdefault(t.y, []).append(t.x)
    for xs in rows.values():  # labels in one row never touch
        xs.sort()
        assert all(b - a >= 10 for a, b in zip(xs, xs[1:], strict=False))


def test_retries_get_their_own_lane() -> None:
    timeline = scale_timeline()
    timeline[5] = second(5, {r: 20 for r in names(*range(1, 9))}, retried=3)
    chart, _ = timeline_chart(make_result(timeline, kind="reload"))
    retry = [b for b in chart.bars if "retried on a fresh connection" in b.title]
    assert len(retry) == 1 and retry[0].title == "second 5: 3 retried on a fresh connection"
    assert "retried" in {t.text for t in chart.texts}


def test_report_page_escapes_and_shows_verdict_events_checks_and_causes() -> None:
    timeline = scale_timeline()
    timeline[6] = second(6, {r: 15 for r in names(*range(1, 9))}, {"refused": 7})
    check = Check(
        "after scale to 2", True, True, "seconds 11-15: 2/2 live replicas got traffic", (11.0, 15.0)
    )
    hostile = "<script>alert(1)</script>"
    result = make_result(timeline, events=[Event(3.0, hostile, "step")], checks=[check], notes=[hostile])
    html = render_experiment_report(result)
    assert "<script>" not in html and str(escape(hostile)) in html
    assert "Lossy" in html and f"7 of {result.sent:,} requests failed (refused 7)" in html
    assert "after scale to 2" in html and "Passed" in html
    assert "<svg" in html and 'id="timeline-title"' in html
    assert not re.search(r"(src|href)=\"https?:", html)  # self-contained: no network resources
    view = experiment_view(result)
    assert dict((c, n) for c, n, _ in view.causes)["refused"] == "7"
    assert next(n for n in view.numbers if n.label == "Failed").alert
    assert len(view.timeline_rows) == 15


def test_report_for_a_recovered_kill_lb() -> None:
    timeline = [spread(t, names(1, 2, 3)) for t in range(10)]
    timeline[3] = second(3, {"lab-web-1": 20}, {"refused": 10})
    view = experiment_view(make_result(timeline, kind="kill-lb"))
    assert view.badge.label == "Recovered"
    recovery = next(n for n in view.numbers if n.label == "Recovery")
    assert (recovery.value, recovery.detail) == ("1", "from second 3")


# -- removed replicas judged by what nginx tried ---------------------------------------------------


def failover_timeline(dead_tries_per_second: int) -> list[Second]:
    """3 replicas for 4 s, then lab-web-1 is dead: the others answer, nginx may still try it."""
    timeline = [spread(t, names(1, 2, 3)) for t in range(4)] + [spread(t, names(2, 3)) for t in range(4, 20)]
    for s in timeline:
        s.tried = {f"10.0.0.{i}:80": n for i, n in ((2, 20), (3, 20))}
    for t in range(4, 20):
        if dead_tries_per_second:
            timeline[t].tried["10.0.0.1:80"] = dead_tries_per_second
    return timeline


ADDRESSES = {"lab-web-1": "10.0.0.1"}


def test_a_dead_replica_nginx_keeps_trying_fails_the_check_though_nobody_saw_it_answer() -> None:
    check = traffic_check("after kill lab-web-1", failover_timeline(7), 14.0, 20.0, names(2, 3),
                          names(1), ADDRESSES, probe_every=10.0)  # fmt: skip
    assert check.judged and not check.passed
    assert check.served == names(2, 3)  # by who answered it would pass
    assert check.attempts == {"lab-web-1": 42} and check.allowed == 2
    assert "nginx still tried lab-web-1 42 times (at most 2 probes allowed" in check.detail


def test_a_broken_replica_may_be_probed_once_per_fail_timeout() -> None:
    timeline = failover_timeline(0)
    timeline[15].tried["10.0.0.1:80"] = 1  # one probe (nginx then retried it on another replica)
    check = traffic_check("after kill lab-web-1", timeline, 14.0, 20.0, names(2, 3), names(1), ADDRESSES,
                          probe_every=10.0)  # fmt: skip
    assert check.judged and check.passed, check.detail
    assert check.attempts == {"lab-web-1": 1}
    assert "probed them 1 times (2 allowed)" in check.detail
    assert probes_allowed(6, 10) == 2 and probes_allowed(20, 2) == 11


def test_a_scaled_away_replica_gets_no_attempt_at_all() -> None:
    timeline = scale_timeline()
    for s in timeline[10:]:
        s.tried = {"10.0.0.1:80": 20, "10.0.0.2:80": 20}
    addresses = {r: f"10.0.0.{i}" for i, r in enumerate(names(*range(1, 9)), start=1)}
    removed = names(*range(3, 9))
    clean = traffic_check("after scale to 2", timeline, 10.6, 15.0, names(1, 2), removed, addresses)
    assert clean.passed and "nginx tried none of them" in clean.detail, clean.detail
    timeline[13].tried["10.0.0.7:80"] = 1
    once = traffic_check("after scale to 2", timeline, 10.6, 15.0, names(1, 2), removed, addresses)
    assert not once.passed and "nginx still tried lab-web-7 1 times (none allowed)" in once.detail


def test_an_unknown_address_leaves_the_check_unjudged_and_a_reused_one_falls_back_to_answers() -> None:
    timeline = failover_timeline(0)
    unknown = traffic_check("after kill lab-web-1", timeline, 14.0, 20.0, names(2, 3), names(1), {})
    assert not unknown.judged and not unknown.passed and "address of lab-web-1 is unknown" in unknown.detail
    reused = traffic_check("after deploy", timeline, 14.0, 20.0, names(2, 3), names(1), {"lab-web-1": ""})
    assert reused.judged and reused.passed and "taken over by a new replica" in reused.detail


def test_removed_addresses_leave_out_those_a_serving_replica_took_over() -> None:
    before = {"lab-web-1": "10.0.0.2", "lab-web-2": "10.0.0.3"}
    after = {"lab-web-3": "10.0.0.2"}
    assert removed_addresses(["lab-web-1", "lab-web-2"], before, after) == {
        "lab-web-1": "",
        "lab-web-2": "10.0.0.3",
    }
    assert host_of("10.0.0.2:80") == "10.0.0.2" and host_of("[fd00::2]:80") == "fd00::2"


def test_the_reason_says_when_a_check_failed_or_could_not_be_judged() -> None:
    ok = Check("a", True, True, "")
    bad = Check("b", True, False, "")
    unjudged = Check("c", False, False, "")
    assert checks_clause([ok]) == ""
    assert checks_clause([ok, bad]) == "; but 1 check failed"
    assert checks_clause([unjudged, unjudged]) == "; but 2 checks could not be judged"
    assert checks_clause([bad, unjudged]) == "; but 1 check failed and 1 could not be judged"
