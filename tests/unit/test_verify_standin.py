"""`lab verify` end to end against a scripted stand-in load balancer in this process (no Docker):
real HTTP through the load engine, the judge, the access-log cross-check, the CLI and its exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping

import pytest

from lab import verify as verifier
from lab.errors import ExitCode, InvalidInput
from lab.report import render_verify_report
from tests.standin import Answer, StandIn, by_client, cycle, mislogged, spread

W3 = ["web-1", "web-2", "web-3"]


def plan(requests: int = 600, concurrency: int = 4, clients: int = 0) -> verifier.LoadPlan:
    return verifier.LoadPlan.create(
        requests=requests, duration=None, concurrency=concurrency, clients=clients
    )


def test_ip_hash_from_one_address_is_inconclusive_for_spread_but_stickiness_is_checked() -> None:
    with StandIn(cycle(["web-2"])) as lb:
        result = verifier.verify(verifier.url_target(lb.url, "ip_hash", replicas=3), plan())
    assert result.verdict == "inconclusive"
    assert "one client address" in result.reason and "web-2" in result.reason
    assert "client networks" in result.advice
    assert any("one client" in note for note in result.notes)
    with StandIn(cycle(["web-1", "web-2"])) as lb:  # the one client moves: stickiness fails
        moved = verifier.verify(verifier.url_target(lb.url, "ip_hash", replicas=3), plan())
    assert moved.verdict == "skewed" and "moved between replicas" in moved.reason


def test_an_access_log_that_disagrees_turns_the_verdict_to_failed() -> None:
    with StandIn(cycle(W3)) as lb:
        agreed = verifier.verify(verifier.url_target(lb.url, replicas=3), plan(), access_log=lb.log_lines)
    assert agreed.verdict == "balanced", agreed.reason
    assert agreed.access_log.checked and agreed.access_log.matches and agreed.access_log.log_total == 600
    with StandIn(mislogged(cycle(W3), every=50, as_replica="web-1")) as lb:
        result = verifier.verify(verifier.url_target(lb.url, replicas=3), plan(), access_log=lb.log_lines)
    assert result.verdict == "failed"
    assert not result.access_log.matches and result.access_log.differences["web-1"] > 0
    assert "log" in result.reason


def test_a_replica_that_never_answers_counts_with_a_share_of_zero() -> None:
    with StandIn(cycle(["web-1", "web-2"])) as lb:
        result = verifier.verify(verifier.url_target(lb.url, replicas=3), plan())
    assert result.verdict == "skewed"
    silent = result.replicas[verifier.silent_name(1)]
    assert silent.count == 0 and silent.expected_share == pytest.approx(1 / 3)
    with StandIn(cycle(["web-1", "web-2"])) as lb:  # weights give the count too
        weighted = verifier.verify(verifier.url_target(lb.url, weights="1,1,1"), plan())
    assert weighted.verdict == "skewed" and len(weighted.replicas) == 3


def test_without_replicas_a_single_answering_replica_is_inconclusive() -> None:
    with StandIn(cycle(["web-1"])) as lb:
        result = verifier.verify(verifier.url_target(lb.url, "random"), plan(requests=6, concurrency=1))
    assert result.verdict == "inconclusive" and "--replicas" in result.advice


def test_least_conn_lets_a_slower_replica_get_less() -> None:
    rule = spread({"web-1": 450, "web-2": 450, "web-3": 100}, delays={"web-3": 0.003})
    with StandIn(rule) as lb:
        result = verifier.verify(verifier.url_target(lb.url, "least_conn", replicas=3), plan(1000, 8))
    assert result.test["latency_significant"] == ["web-3"] or "web-3" in result.test["latency_significant"]
    assert result.verdict == "balanced", result.reason
    with StandIn(rule) as lb:  # the same spread at one connection: every pick is a tie, so it is skewed
        single = verifier.verify(verifier.url_target(lb.url, "least_conn", replicas=3), plan(1000, 1))
    assert single.verdict == "skewed"


def test_least_conn_records_both_models_and_the_accepted_range() -> None:
    with StandIn(spread({"web-1": 200, "web-2": 200, "web-3": 200})) as lb:
        result = verifier.verify(verifier.url_target(lb.url, "least_conn", replicas=3), plan(concurrency=1))
    assert result.verdict == "balanced", result.reason
    data = result.as_json()
    for replica in data["replicas"].values():  # type: ignore[union-attr]
        assert {"expected_share", "latency_share", "expected_low", "expected_high"} <= set(replica)
        assert replica["expected_low"] <= replica["share"] <= replica["expected_high"]
    html = render_verify_report(result)
    assert "accepted range" in html and "Mann-Whitney" in html


def test_too_many_answering_replicas_or_a_count_mismatch_is_bad_input() -> None:
    with StandIn(cycle(W3)) as lb:
        with pytest.raises(InvalidInput, match="--replicas 2 but 3 replicas answered"):
            verifier.verify(verifier.url_target(lb.url, replicas=2), plan())
        with pytest.raises(InvalidInput, match="got 2 weights for 3 replicas"):
            verifier.url_target(lb.url, weights="1,1", replicas=3)
        assert lb.count == 600  # only the first sent load: the mismatch is refused before any


# -- the command line -------------------------------------------------------------------------------


def lab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def always_503(_i: int, _headers: Mapping[str, str]) -> Answer:
    return Answer("web-1", status=503)


@pytest.mark.parametrize(
    ("rule", "args", "code", "verdict"),
    [
        (cycle(W3), ["--replicas", "3"], ExitCode.OK, "balanced"),
        (cycle(["web-1", "web-2"]), ["--replicas", "3"], ExitCode.SKEWED, "skewed"),
        (cycle(["web-1"]), ["--algorithm", "random", "-n", "6", "--replicas", "3"], ExitCode.INCONCLUSIVE, "inconclusive"),
        (always_503, ["-n", "20"], ExitCode.FAILED, "failed"),
    ],
)  # fmt: skip
def test_verify_exits_by_verdict(rule: object, args: list[str], code: int, verdict: str) -> None:
    with StandIn(rule) as lb:  # type: ignore[arg-type]
        result = lab("verify", "--url", lb.url, "-n", "300", "--json", *args)
    assert result.returncode == code, result.stderr
    assert json.loads(result.stdout)["verdict"] == verdict


def test_verify_prints_what_would_decide_an_inconclusive_run() -> None:
    with StandIn(cycle(["web-1"])) as lb:
        result = lab("verify", "--url", lb.url, "--algorithm", "random", "-n", "6", "--replicas", "3")
    assert result.returncode == ExitCode.INCONCLUSIVE
    assert "INCONCLUSIVE" in result.stdout and "send at least 15 requests" in result.stdout
    assert "chi-square" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replicas", "0"], "replicas must be between 1 and"),
        (["--replicas", "2"], "--replicas 2 but 3 replicas answered"),
        (["--replicas", "3", "--weights", "1,1"], "got 2 weights for 3 replicas"),
        (["--weights", "1,1"], "2 weights but 3 replicas answered"),
    ],
)
def test_verify_bad_replica_counts_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    with StandIn(cycle(W3)) as lb:
        result = lab("verify", "--url", lb.url, "-n", "30", *args)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_hash_spread_over_clients_end_to_end() -> None:
    with StandIn(by_client(W3)) as lb:
        result = verifier.verify(
            verifier.url_target(lb.url, "hash", replicas=3), plan(requests=900, clients=30)
        )
    assert result.verdict == "balanced", result.reason
    assert result.test["sticky_clients"] == result.test["clients"] == 30


def test_terminal_and_report_describe_the_test_in_the_same_words() -> None:
    import html

    from lab import ui
    from lab.describe import describe

    with StandIn(spread({"web-1": 200, "web-2": 200, "web-3": 200})) as lb:
        result = verifier.verify(verifier.url_target(lb.url, "least_conn", replicas=3), plan(concurrency=1))
    words = describe(result)
    assert "Little's law" in words.sentence and "one connection" in words.sentence
    assert words.sentence in html.unescape(render_verify_report(result))
    assert words.sentence in ui.verify_summary(result) and words.name in ui.verify_summary(result)
    assert "No statistical test could judge" not in words.sentence
