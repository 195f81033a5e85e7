"""Expected shares, the latency histogram, and the tests `judge` picks for each method."""

from __future__ import annotations

import math
import random

import pytest

from lab.stats import (
    METHODS,
    LatencyHistogram,
    chi_square,
    expected_shares,
    judge,
    max_relative_deviation,
    round_robin_bound,
    stickiness,
    swrr_window_bound,
    within_bound,
)

REPLICAS = ["web-1", "web-2", "web-3"]


# -- expected shares ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_equal_weights_share_equally(method: str) -> None:
    assert expected_shares(method, 4) == [0.25] * 4
    assert expected_shares(method, 4, ()) == [0.25] * 4


@pytest.mark.parametrize("method", METHODS)
def test_weights_are_proportional(method: str) -> None:
    assert expected_shares(method, 3, [3, 1, 1]) == pytest.approx([0.6, 0.2, 0.2])


@pytest.mark.parametrize("method", ["round_robin", "least_conn"])
def test_backup_gets_nothing_while_the_others_are_up(method: str) -> None:
    assert expected_shares(method, 3, [2, 1, 5], backup=2) == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert expected_shares(method, 3, backup=0) == [0.0, 0.5, 0.5]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("round_robin", 3, [1, 1]), "2 weights for 3"),
        (("round_robin", 2, [1, 0]), "positive"),
        (("hash", 3, None, 1), "backup"),
        (("round_robin", 3, None, 3), "not one of"),
        (("fastest", 3), "unknown method"),
        (("round_robin", 0), "at least one"),
    ],
)
def test_bad_shares_requests_are_refused(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        expected_shares(*args)


# -- goodness of fit ---------------------------------------------------------------------------


def test_a_fair_random_sample_passes_chi_square() -> None:
    rng = random.Random(7)
    counts = [0, 0, 0]
    for _ in range(30_000):
        counts[rng.randrange(3)] += 1
    fit = chi_square(counts, [1 / 3] * 3)
    assert fit.dof == 2 and fit.p_value > 0.001


def test_a_skewed_sample_fails_chi_square() -> None:
    fit = chi_square([10_500, 10_000, 9_500], [1 / 3] * 3)
    assert fit.p_value < 1e-6


def test_chi_square_leaves_out_a_zero_share_replica() -> None:
    assert chi_square([500, 500, 0], [0.5, 0.5, 0.0]).dof == 1
    failed = chi_square([500, 499, 1], [0.5, 0.5, 0.0])
    assert failed.p_value == 0.0 and math.isinf(failed.statistic)


def test_within_bound() -> None:
    assert within_bound([334, 333, 333], [1 / 3] * 3, 1).passed
    check = within_bound([340, 330, 330], [1 / 3] * 3, 1)
    assert not check.passed and check.worst_replica == 0
    assert check.worst_abs_error == pytest.approx(6.667, abs=0.01)
    backup = within_bound([500, 499, 1], [0.5, 0.5, 0.0], 5)
    assert not backup.passed and backup.worst_replica == 2


def test_max_relative_deviation() -> None:
    assert max_relative_deviation([600, 200, 200], [0.6, 0.2, 0.2]) == 0.0
    assert max_relative_deviation([500, 250, 250], [0.6, 0.2, 0.2]) == pytest.approx(0.25)
    assert math.isinf(max_relative_deviation([1, 1], [1.0, 0.0]))


def test_stickiness() -> None:
    s = stickiness(
        {
            "c0": {"web-1": 10},
            "c1": {"web-2": 10},
            "c2": {"web-1": 7, "web-3": 3},
            "c3": {},
        }
    )
    assert (s.clients, s.sticky_clients) == (3, 2)
    assert s.fraction == pytest.approx(2 / 3)
    assert s.spread == {"web-1": 2, "web-2": 1}


# -- the round robin bound -----------------------------------------------------------------------


def _swrr(weights: list[int], picks: int) -> list[int]:
    """nginx's smooth weighted round robin, written out plainly."""
    current = [0] * len(weights)
    out = []
    for _ in range(picks):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=lambda i: (current[i], -i))
        current[best] -= sum(weights)
        out.append(best)
    return out


@pytest.mark.parametrize("weights", [[1, 1, 1], [5, 1, 1], [3, 2], [7, 3, 1, 1], [10, 1]])
def test_swrr_window_bound_covers_every_window(weights: list[int]) -> None:
    total = sum(weights)
    picks = _swrr(weights, 3 * total)
    bound = swrr_window_bound(weights)
    for start in range(total):
        counts = [0] * len(weights)
        for length, replica in enumerate(picks[start : start + 2 * total], start=1):
            counts[replica] += 1
            for i, w in enumerate(weights):
                assert abs(counts[i] - length * w / total) <= bound
    assert swrr_window_bound([1, 1, 1]) == 1


def test_round_robin_bound_grows_without_a_shared_zone_and_with_retries() -> None:
    assert round_robin_bound([1, 1, 1]) == 1
    assert round_robin_bound([1, 1, 1], concurrency=8, workers=2, shared_state=False) == 2
    assert round_robin_bound([1, 1, 1], concurrency=1, workers=2, shared_state=False) == 1
    assert round_robin_bound([1, 1, 1], retries=3) == 4


# -- judging -----------------------------------------------------------------------------------


def test_exact_round_robin_is_balanced() -> None:
    picks = _swrr([3, 1, 1], 1001)
    counts = {r: picks.count(i) for i, r in enumerate(REPLICAS)}
    j = judge("round_robin", REPLICAS, counts, weights=[3, 1, 1])
    assert j.verdict == "balanced" and j.test["test"] == "within_bound"


def test_round_robin_out_of_bound_is_skewed() -> None:
    j = judge("round_robin", REPLICAS, {"web-1": 340, "web-2": 330, "web-3": 330})
    assert j.verdict == "skewed" and "web-1" in j.reason


def test_round_robin_backup_must_stay_idle() -> None:
    ok = judge("round_robin", REPLICAS, {"web-1": 50, "web-2": 50}, backup=2)
    bad = judge("round_robin", REPLICAS, {"web-1": 50, "web-2": 49, "web-3": 1}, backup=2)
    assert (ok.verdict, bad.verdict) == ("balanced", "skewed")


@pytest.mark.parametrize(("method", "test"), [("random", "chi_square"), ("random_two", "share_band"),
                                               ("least_conn", "share_band")])  # fmt: skip
def test_random_and_load_aware_methods(method: str, test: str) -> None:
    rng = random.Random(3)
    counts = {r: 0 for r in REPLICAS}
    for _ in range(3_000):
        counts[rng.choice(REPLICAS)] += 1
    fair = judge(method, REPLICAS, counts)
    assert fair.verdict == "balanced" and fair.test["test"] == test
    skewed = judge(method, REPLICAS, {"web-1": 1_200, "web-2": 900, "web-3": 900})
    assert skewed.verdict == "skewed"


def _clients(n: int, assign: object) -> dict[str, dict[str, int]]:
    return {f"c{i}": assign(i) for i in range(n)}  # type: ignore[operator]


@pytest.mark.parametrize("method", ["hash", "ip_hash"])
def test_hash_methods_need_sticky_clients_spread_over_replicas(method: str) -> None:
    per_client = _clients(60, lambda i: {REPLICAS[i % 3]: 10})
    counts = {r: 200 for r in REPLICAS}
    good = judge(method, REPLICAS, counts, per_client=per_client)
    assert good.verdict == "balanced" and good.test["test"] == "stickiness"

    moved = dict(per_client, c0={"web-1": 5, "web-2": 5})
    assert judge(method, REPLICAS, counts, per_client=moved).verdict == "skewed"

    one_replica = _clients(60, lambda i: {"web-2": 10})
    lumped = judge(method, REPLICAS, {"web-2": 600}, per_client=one_replica)
    assert lumped.verdict == "skewed" and "60 clients" in lumped.reason


def test_hash_without_client_tallies_fails() -> None:
    assert judge("hash", REPLICAS, {"web-1": 10}).verdict == "failed"


@pytest.mark.parametrize(
    ("counts", "errors", "words"),
    [
        ({"web-1": 10, "web-2": 10, "web-3": 10}, 1, "failed"),
        ({}, 0, "no request"),
        ({"web-1": 10, "web-9": 1}, 0, "web-9"),
    ],
)
def test_failed_runs(counts: dict[str, int], errors: int, words: str) -> None:
    j = judge("round_robin", REPLICAS, counts, errors=errors)
    assert j.verdict == "failed" and words in j.reason


# -- latency histogram -------------------------------------------------------------------------


def _exact_percentile(sorted_values: list[float], q: float) -> float:
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def test_percentiles_within_one_percent() -> None:
    rng = random.Random(11)
    values = [rng.lognormvariate(math.log(0.002), 1.5) for _ in range(20_000)]
    values += [1e-5, 59.0, 0.5]
    h = LatencyHistogram()
    for v in values:
        h.record(v)
    values.sort()
    for q in (0, 1, 10, 50, 90, 99, 99.9, 100):
        exact = _exact_percentile(values, q)
        assert h.percentile(q) == pytest.approx(exact, rel=0.01), q
    assert h.count == len(values)
    assert h.max == max(values) and h.min == min(values)
    assert h.mean == pytest.approx(sum(values) / len(values))


def test_memory_is_flat_in_the_number_of_samples() -> None:
    h = LatencyHistogram()
    before = h.bucket_count
    for i in range(100_000):
        h.record((i % 5000) * 1e-5 + 1e-5)
    assert h.bucket_count == before
    h.record(3600.0)  # beyond 60 s: counted in the top bucket, max stays exact
    assert h.bucket_count == before and h.max == 3600.0


def test_merge_is_exact() -> None:
    a, b, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for i in range(1, 1000):
        (a if i % 2 else b).record(i * 1e-4)
        both.record(i * 1e-4)
    a.merge(b)
    assert a.buckets() == both.buckets()
    assert (a.count, a.max, a.min) == (both.count, both.max, both.min)
    assert a.percentile(50) == both.percentile(50)


def test_buckets_cover_the_samples() -> None:
    h = LatencyHistogram()
    for v in (0.001, 0.001, 0.002, 0.5):
        h.record(v)
    bars = h.buckets()
    assert sum(b.count for b in bars) == 4
    assert all(b.low <= b.high for b in bars) and bars == sorted(bars, key=lambda b: b.low)
    assert any(b.low <= 0.5 < b.high and b.count == 1 for b in bars)


def test_empty_histogram_and_bad_input() -> None:
    h = LatencyHistogram()
    assert math.isnan(h.percentile(50)) and math.isnan(h.mean) and h.count == 0
    with pytest.raises(ValueError):
        h.record(-1.0)
    with pytest.raises(ValueError):
        h.percentile(101)
