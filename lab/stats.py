"""What a fair spread looks like, and whether observed traffic matches it (pure; the only scipy user).

Three parts: `expected_shares` (what nginx should do), `LatencyHistogram` (a constant-memory
latency recorder), and the tests (`chi_square`, `within_bound`, `stickiness`, ...) that
`judge` picks from for each balancing method.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

METHODS = ("round_robin", "least_conn", "ip_hash", "hash", "random", "random_two")
DEFAULT_ALPHA = 0.001  # chance of calling a truly fair lab "skewed"; a verify run should rarely cry wolf

# nginx refuses `backup` with these methods ("backup parameter cannot be used along with ...").
_NO_BACKUP = frozenset({"ip_hash", "hash", "random", "random_two"})


# ---------------------------------------------------------------------------------------------
# Expected shares


def expected_shares(
    method: str,
    n: int,
    weights: Sequence[int] | None = None,
    backup: int | None = None,
) -> list[float]:
    """Long-run fraction of requests (hash methods: of client identities) each replica should get.

    nginx honours weights in every method, ip_hash included, so shares are proportional to
    weight. For least_conn and random_two this is the idle-lab limit: both also react to load,
    so a slow replica legitimately gets less. The `backup` replica (0-based) gets 0 while the
    others are up. No weights (None or empty) means equal weights.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if n < 1:
        raise ValueError(f"need at least one replica, got {n}")
    if not weights:  # None or () both mean equal weights, as in LabSpec
        weights = [1] * n
    if len(weights) != n:
        raise ValueError(f"got {len(weights)} weights for {n} replicas")
    if any(not isinstance(w, int) or w < 1 for w in weights):
        raise ValueError(f"weights must be positive integers, got {list(weights)}")
    active = [float(w) for w in weights]
    if backup is not None:
        if method in _NO_BACKUP:
            raise ValueError(f"nginx does not allow a backup replica with {method}")
        if not 0 <= backup < n:
            raise ValueError(f"backup replica {backup} is not one of 0..{n - 1}")
        if n == 1:
            raise ValueError("a backup replica needs at least one other replica")
        active[backup] = 0.0
    total = sum(active)
    return [w / total for w in active]


# ---------------------------------------------------------------------------------------------
# Latency histogram

_UNIT = 1e-7  # seconds per histogram unit (100 ns)
_SUB_BITS = 6
_SUB = 1 << _SUB_BITS  # linear sub-buckets per doubling: bucket width <= 1/64 of its value
_LOWEST = 10e-6  # values from here up are kept within 1/128 (0.8%) of the truth
_HIGHEST = 60.0  # larger values are counted in the top bucket; `max` stays exact
_TOP_UNITS = int(_HIGHEST / _UNIT)


def _index(units: int) -> int:
    if units < 2 * _SUB:
        return units
    shift = units.bit_length() - _SUB_BITS - 1
    return (shift + 1) * _SUB + (units >> shift) - _SUB


def _bounds(index: int) -> tuple[int, int]:
    """Units covered by bucket `index`: [low, high)."""
    if index < 2 * _SUB:
        return index, index + 1
    shift = index // _SUB - 1
    mantissa = index % _SUB + _SUB
    return mantissa << shift, (mantissa + 1) << shift


_NBUCKETS = _index(_TOP_UNITS) + 1


@dataclass(frozen=True)
class Bucket:
    """One histogram bar: `count` latencies in [low, high) seconds."""

    low: float
    high: float
    count: int


class LatencyHistogram:
    """Latencies in log-linear buckets: fixed memory, ~1% precision from 10 µs to 60 s.

    Each doubling of time is cut into 64 equal buckets (as in HdrHistogram), so a bucket is at
    most 1/64 of its value wide and its midpoint is within 0.8% of anything recorded in it.
    """

    __slots__ = ("_counts", "_count", "_sum", "_sumsq", "_min", "_max")

    def __init__(self) -> None:
        self._counts = [0] * _NBUCKETS
        self._count = 0
        self._sum = 0.0
        self._sumsq = 0.0
        self._min = math.inf
        self._max = 0.0

    def record(self, seconds: float) -> None:
        """Add one latency."""
        if not seconds >= 0.0:  # also rejects NaN
            raise ValueError(f"a latency must be >= 0 seconds, got {seconds}")
        units = int(seconds / _UNIT)
        self._counts[_index(units) if units < _TOP_UNITS else _NBUCKETS - 1] += 1
        self._count += 1
        self._sum += seconds
        self._sumsq += seconds * seconds
        if seconds > self._max:
            self._max = seconds
        if seconds < self._min:
            self._min = seconds

    def merge(self, other: LatencyHistogram) -> None:
        """Add all of `other`'s latencies to this one (exact: same buckets)."""
        counts = self._counts
        for i, c in enumerate(other._counts):
            if c:
                counts[i] += c
        self._count += other._count
        self._sum += other._sum
        self._sumsq += other._sumsq
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    @property
    def count(self) -> int:
        return self._count

    @property
    def max(self) -> float:
        """The largest latency recorded (exact), 0.0 when empty."""
        return self._max

    @property
    def min(self) -> float:
        """The smallest latency recorded (exact), 0.0 when empty."""
        return self._min if self._count else 0.0

    @property
    def mean(self) -> float:
        """The exact mean, NaN when empty."""
        return self._sum / self._count if self._count else math.nan

    @property
    def variance(self) -> float:
        """The sample variance (n - 1) of the exact values, NaN below two samples."""
        if self._count < 2:
            return math.nan
        mean = self._sum / self._count
        return max(0.0, (self._sumsq - self._count * mean * mean) / (self._count - 1))

    def percentile(self, q: float) -> float:
        """The nearest-rank q-th percentile (0 <= q <= 100) in seconds, NaN when empty."""
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"a percentile is between 0 and 100, got {q}")
        if not self._count:
            return math.nan
        rank = max(1, math.ceil(q / 100.0 * self._count))
        if rank >= self._count:
            return self._max
        seen = 0
        for i, c in enumerate(self._counts):
            seen += c
            if seen >= rank:
                low, high = _bounds(i)
                middle = (low + high) / 2 * _UNIT
                return min(max(middle, self._min), self._max)
        return self._max  # unreachable: the counts add up to _count

    def buckets(self) -> list[Bucket]:
        """The non-empty buckets, fastest first, to draw a histogram from."""
        out = []
        for i, c in enumerate(self._counts):
            if c:
                low, high = _bounds(i)
                out.append(Bucket(low * _UNIT, high * _UNIT, c))
        return out

    @property
    def bucket_count(self) -> int:
        """How many buckets exist (fixed: memory does not grow with samples)."""
        return len(self._counts)

    def __repr__(self) -> str:
        return f"LatencyHistogram(count={self._count}, mean={self.mean:.6f}, max={self._max:.6f})"


# ---------------------------------------------------------------------------------------------
# Tests of a spread


@dataclass(frozen=True)
class GoodnessOfFit:
    """Pearson's chi-square: a small p_value says the counts are unlikely under the shares."""

    statistic: float
    dof: int
    p_value: float


@dataclass(frozen=True)
class BoundCheck:
    """Whether every replica got its exact expectation give or take `bound` requests."""

    bound: int
    worst_replica: int
    worst_abs_error: float
    passed: bool


@dataclass(frozen=True)
class Stickiness:
    """How many clients were always served by one replica, and where clients went.

    `spread` maps each replica to the number of clients whose main replica (the one that served
    them most, ties by name) it is.
    """

    clients: int
    sticky_clients: int
    fraction: float
    spread: dict[str, int]


def _check_lengths(observed: Sequence[int], shares: Sequence[float]) -> int:
    if len(observed) != len(shares):
        raise ValueError(f"{len(observed)} counts for {len(shares)} expected shares")
    if any(c < 0 for c in observed):
        raise ValueError(f"counts must be >= 0, got {list(observed)}")
    if any(s < 0 for s in shares) or not math.isclose(sum(shares), 1.0, rel_tol=1e-9):
        raise ValueError(f"shares must be >= 0 and add up to 1, got {list(shares)}")
    total = sum(observed)
    if total == 0:
        raise ValueError("no requests to judge")
    return total


def chi_square(observed: Sequence[int], expected_shares: Sequence[float]) -> GoodnessOfFit:
    """Pearson's chi-square of counts against shares.

    A replica expected to get nothing (a backup) is left out of the degrees of freedom; any
    request it served is an automatic failure (statistic inf, p-value 0).
    """
    total = _check_lengths(observed, expected_shares)
    active = [i for i, s in enumerate(expected_shares) if s > 0]
    dof = len(active) - 1
    if any(observed[i] for i, s in enumerate(expected_shares) if s == 0):
        return GoodnessOfFit(statistic=math.inf, dof=dof, p_value=0.0)
    if dof == 0:
        return GoodnessOfFit(statistic=0.0, dof=0, p_value=1.0)
    # Imported here so that lab.traffic, which uses the histogram, skips scipy's 1-2 s import.
    from scipy.stats import chisquare

    f_obs = [observed[i] for i in active]
    f_exp = [expected_shares[i] * total for i in active]
    result = chisquare(f_obs, f_exp)
    return GoodnessOfFit(statistic=float(result.statistic), dof=dof, p_value=float(result.pvalue))


def within_bound(observed: Sequence[int], expected_shares: Sequence[float], bound: int) -> BoundCheck:
    """Every count within `bound` of share x total; any request to a zero-share replica fails."""
    total = _check_lengths(observed, expected_shares)
    errors = [abs(c - s * total) for c, s in zip(observed, expected_shares, strict=True)]
    forbidden = [s == 0 and c > 0 for c, s in zip(observed, expected_shares, strict=True)]
    worst = max(range(len(errors)), key=lambda i: (forbidden[i], errors[i]))
    passed = not any(forbidden) and errors[worst] <= bound
    return BoundCheck(bound=bound, worst_replica=worst, worst_abs_error=errors[worst], passed=passed)


def max_relative_deviation(observed: Sequence[int], expected_shares: Sequence[float]) -> float:
    """The largest |observed share - expected share| / expected share; inf if a zero-share got any."""
    total = _check_lengths(observed, expected_shares)
    worst = 0.0
    for c, s in zip(observed, expected_shares, strict=True):
        if s == 0:
            if c:
                return math.inf
            continue
        worst = max(worst, abs(c / total - s) / s)
    return worst


def stickiness(client_to_replica_counts: Mapping[str, Mapping[str, int]]) -> Stickiness:
    """How many clients saw exactly one replica, and how clients spread over replicas."""
    clients = sticky = 0
    spread: dict[str, int] = {}
    for per_replica in client_to_replica_counts.values():
        served = {r: c for r, c in per_replica.items() if c > 0}
        if not served:
            continue
        clients += 1
        sticky += len(served) == 1
        main = min(served, key=lambda r: (-served[r], r))
        spread[main] = spread.get(main, 0) + 1
    fraction = sticky / clients if clients else 0.0
    return Stickiness(clients=clients, sticky_clients=sticky, fraction=fraction, spread=spread)


def swrr_window_bound(weights: Sequence[int]) -> int:
    """Largest gap, over any run of consecutive picks, between a replica's count and its share.

    nginx's smooth weighted round robin is periodic (period = sum of weights), so simulating
    one period finds the exact worst case; it is 1 for equal weights.
    """
    total = sum(weights)
    current = [0] * len(weights)
    low = [0] * len(weights)
    high = [0] * len(weights)
    for _ in range(total):
        current = [c + w for c, w in zip(current, weights, strict=True)]
        best = current.index(max(current))  # nginx keeps the first of equal maxima
        # Between picks a replica's current weight only rises, so its extremes sit around its picks.
        high[best] = max(high[best], current[best] - weights[best])
        current[best] -= total
        low[best] = min(low[best], current[best])
    # count_i - t * w_i / total == -current_i / total, so a window's error is a difference of two.
    return max(math.ceil((h - lo) / total - 1e-9) for h, lo in zip(high, low, strict=True))


# ---------------------------------------------------------------------------------------------
# Latency differences (for the load-aware methods)


@dataclass(frozen=True)
class LatencySample:
    """One replica's latencies (seconds): how many, their mean, and the histogram behind them."""

    count: int
    mean: float
    histogram: LatencyHistogram | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, histogram: LatencyHistogram | None) -> LatencySample:
        if histogram is None or histogram.count == 0:
            return cls(0, math.nan)
        return cls(histogram.count, histogram.mean, histogram)

    @classmethod
    def pooled(cls, samples: Iterable[LatencySample]) -> LatencySample:
        """All of `samples` as one (their histograms merged; without histograms, the mean only)."""
        parts = [s for s in samples if s.count]
        if not parts:
            return cls(0, math.nan)
        if any(s.histogram is None for s in parts):
            n = sum(s.count for s in parts)
            return cls(n, sum(s.count * s.mean for s in parts) / n)
        merged = LatencyHistogram()
        for s in parts:
            merged.merge(s.histogram)  # type: ignore[arg-type]
        return cls.of(merged)


def rank_sum_p_value(a: LatencySample, b: LatencySample) -> float | None:
    """Two-sided p-value of the Mann-Whitney U (Wilcoxon rank-sum) test that neither replica's
    latencies tend to be larger, from the histograms (latencies in one bucket are ties), with the
    normal approximation and tie correction. A rank test: a few stalled connections neither hide
    nor fake a difference. None when either has fewer than two latencies or no histogram."""
    if a.count < 2 or b.count < 2 or a.histogram is None or b.histogram is None:
        return None
    na, nb = a.count, b.count
    total = na + nb
    u = 0.0
    below = 0  # b's latencies in lower buckets
    ties = 0.0
    for ca, cb in zip(a.histogram._counts, b.histogram._counts, strict=True):
        if ca or cb:
            u += ca * (below + cb / 2)
            below += cb
            t = ca + cb
            ties += t**3 - t
    variance = na * nb / 12 * ((total + 1) - ties / (total * (total - 1)))
    if variance <= 0:  # every latency in one bucket: no difference to see
        return 1.0
    from scipy.stats import norm

    z = (u - na * nb / 2) / math.sqrt(variance)
    return float(2 * norm.sf(abs(z)))


@dataclass(frozen=True)
class LatencyModel:
    """The latency of each replica as the least_conn model uses it.

    Replicas are taken in order of mean latency, and each joins the group before it unless the
    Mann-Whitney U test finds its latencies significantly different from that group's (at alpha
    / the number of tests). A group shares one mean (Little's law needs means), so noise never
    moves the model; a replica with fewer than two answers is not tested and takes the mean of
    all, so it never counts as slow.
    """

    means: list[float]  # seconds; NaN for replicas outside the model (a backup)
    measured: list[float]  # each replica's own mean (NaN without answers)
    p_values: list[float | None]  # the test that joined it to, or split it from, the group before
    significant: list[bool]  # its latency differs significantly from some other replica's
    level: float  # the significance level each test used
    groups: list[list[int]] = field(default_factory=list)  # replicas of equal latency, fastest first


def latency_model(samples: Sequence[LatencySample], active: Sequence[bool], alpha: float) -> LatencyModel:
    n = len(samples)
    tested = sorted(
        (i for i in range(n) if active[i] and samples[i].count >= 2), key=lambda i: samples[i].mean
    )
    level = alpha / max(1, len(tested) - 1)
    p_values: list[float | None] = [None] * n
    groups: list[list[int]] = []
    for i in tested:
        if groups:
            p_values[i] = p = rank_sum_p_value(
                samples[i], LatencySample.pooled(samples[j] for j in groups[-1])
            )
            if p is None or p >= level:
                groups[-1].append(i)
                continue
        groups.append([i])
    overall = LatencySample.pooled(samples[j] for j in range(n) if active[j])
    shared = overall.mean if overall.count else 1.0  # no latency at all: every replica the same
    means = [shared if active[i] else math.nan for i in range(n)]
    for group in groups:
        mean = LatencySample.pooled(samples[j] for j in group).mean
        for j in group:
            means[j] = mean
    significant = [len(groups) > 1 and i in tested for i in range(n)]
    return LatencyModel(means, [s.mean for s in samples], p_values, significant, level, groups)


def inverse_latency_shares(weights: Sequence[float], means: Sequence[float]) -> list[float]:
    """Shares in proportion to weight / latency (0 for a weight of 0): least_conn's high-concurrency limit."""
    rates = [w / m if w > 0 else 0.0 for w, m in zip(weights, means, strict=True)]
    total = sum(rates)
    return [r / total for r in rates]


def in_flight_share_range(
    weights: Sequence[float], means: Sequence[float], most: int, least: int = 1
) -> list[tuple[float, float]] | None:
    """Each replica's lowest and highest share over the in-flight counts least_conn can hold
    with `least` to `most` requests in flight in all.

    nginx sends each request to the replica with the fewest requests in flight per unit of
    weight, so taking one away from any replica never leaves it below another: every count
    c_i lies in [m * w_i, m * w_i + 1] for the common level m. Little's law turns in-flight
    counts into throughput (c_i / latency_i). Replicas with the same weight and latency are
    interchangeable, so they hold the same number on average: they are taken together.
    Returns None when no in-flight split fits.
    """
    groups: dict[tuple[float, float], list[int]] = {}
    for i, (w, m) in enumerate(zip(weights, means, strict=True)):
        if w > 0:
            groups.setdefault((w, m), []).append(i)
    keys = list(groups)
    size = [len(groups[k]) for k in keys]
    weight = [k[0] for k in keys]
    rate = [1.0 / k[1] for k in keys]  # requests per second per request in flight
    total_weight = sum(s * w for s, w in zip(size, weight, strict=True))
    lowest = [math.inf] * len(keys)
    highest = [-math.inf] * len(keys)
    levels = {q / w for w in weight for q in range(math.ceil(w * most / total_weight) + 2)}
    for level in levels:  # the boxes change only where m * w crosses a whole number
        low = [s * math.ceil(level * w - 1e-9) for s, w in zip(size, weight, strict=True)]
        high = [s * math.floor(level * w + 1 + 1e-9) for s, w in zip(size, weight, strict=True)]
        if sum(low) > most or sum(high) < least:
            continue
        for k in range(len(keys)):
            for largest in (True, False):
                share = _extreme_share(k, largest, low, high, rate, least, most)
                if share is not None:
                    lowest[k] = min(lowest[k], share / size[k])
                    highest[k] = max(highest[k], share / size[k])
    if any(math.isinf(x) for x in lowest):
        return None
    out = [(0.0, 0.0)] * len(weights)
    for k, key in enumerate(keys):
        for i in groups[key]:
            out[i] = (lowest[k], highest[k])
    return out


def _extreme_share(
    k: int, largest: bool, low: list[int], high: list[int], rate: list[float], least: int, most: int
) -> float | None:
    """Group k's largest or smallest share of throughput with each group's in-flight total within
    its box and all of them together between `least` and `most`."""
    others = [j for j in range(len(low)) if j != k]
    counts = {j: low[j] for j in others}
    if largest:  # as many as it may hold, the others as few as they may, extras to the slowest
        mine = min(high[k], most - sum(counts.values()))
        missing = least - mine - sum(counts.values())
        order = sorted(others, key=lambda j: rate[j])
    else:  # as few as it may hold, the others as many as fit, extras to the fastest
        mine = max(low[k], least - sum(high[j] for j in others))
        missing = most - mine - sum(counts.values())
        order = sorted(others, key=lambda j: -rate[j])
    if not low[k] <= mine <= high[k]:
        return None
    for j in order:
        extra = max(0, min(missing, high[j] - low[j]))
        counts[j] += extra
        missing -= extra
    if largest and missing > 0:
        return None
    mine_rate = mine * rate[k]
    total = mine_rate + sum(counts[j] * rate[j] for j in others)
    return mine_rate / total if total > 0 else None


# ---------------------------------------------------------------------------------------------
# Judging a run

Verdict = Literal["balanced", "skewed", "inconclusive", "failed"]
MIN_EXPECTED = 5  # Cochran's rule: chi-square (and any count test) wants at least 5 expected per cell


@dataclass(frozen=True)
class Judgement:
    """The verdict on a run, one line saying why, and the numbers of the test behind it.

    `advice` says what would make an inconclusive test decisive ("send at least 15 requests").
    """

    verdict: Verdict
    reason: str
    test: dict[str, Any] = field(default_factory=dict)
    advice: str = ""


def round_robin_bound(
    weights: Sequence[int],
    *,
    concurrency: int = 1,
    workers: int = 1,
    shared_state: bool = True,
    retries: int = 0,
) -> int:
    """How far an exact round robin's counts may stray from share x total.

    With an upstream `zone` all nginx workers share one smooth-weighted-round-robin state, and
    every request takes the next pick of one periodic sequence; any run of picks is within
    B = `swrr_window_bound(weights)` of its exact share (1 for equal weights). Without a zone
    each worker keeps its own sequence and our connections land on up to min(concurrency,
    workers) of them, each off by up to B. Every upstream retry (proxy_next_upstream) spends a
    pick that no counted response shows, adding 1 more.
    """
    sequences = 1 if shared_state else max(1, min(concurrency, workers))
    return sequences * swrr_window_bound(weights) + retries


def needed(share: float) -> int:
    """How many trials give `share` an expectation of at least MIN_EXPECTED."""
    return math.ceil(MIN_EXPECTED / share - 1e-9)


def _too_few(total: int, smallest: float, test: dict[str, Any], why: str) -> Judgement:
    """Inconclusive: the smallest expected count (`total` x `smallest` share) is below MIN_EXPECTED."""
    test["passed"] = None
    reason = f"too few requests to judge: {total:,} give the smallest expectation {total * smallest:.1f}{why}"
    return Judgement("inconclusive", reason, test, f"send at least {needed(smallest):,} requests")


def judge(
    method: str,
    replicas: Sequence[str],
    by_replica: Mapping[str, int],
    *,
    errors: int = 0,
    weights: Sequence[int] | None = None,
    backup: int | None = None,
    per_client: Mapping[str, Mapping[str, int]] | None = None,
    latencies: Sequence[LatencySample] | None = None,
    concurrency: int = 1,
    workers: int = 1,
    shared_state: bool = True,
    retries: int = 0,
    alpha: float = DEFAULT_ALPHA,
) -> Judgement:
    """Pick the right test for `method` and say whether the spread over `replicas` is as expected.

    - round_robin is deterministic: each count must be within `round_robin_bound` of its share.
    - random: Pearson chi-square at `alpha`; inconclusive while any expected count is below 5.
    - least_conn and random_two: each count must lie in the band the load-aware model allows
      (`share_band`), widened by an exact binomial margin (alpha split over the replicas).
    - hash, ip_hash: every client (`per_client`) must stay on one replica, and clients must
      spread over replicas by weight (chi-square at `alpha`; inconclusive with too few clients).
    A backup replica that served while the others were up is skewed whatever the latencies.
    Any error, no successful request or a reply from a replica outside `replicas` is "failed".
    """
    ok = sum(by_replica.values())
    base: dict[str, Any] = {"method": method, "ok": ok, "errors": errors}
    if errors:
        return Judgement("failed", f"{errors} of {ok + errors} requests failed", base)
    if ok == 0:
        return Judgement("failed", "no request succeeded", base)
    strangers = sorted(r for r, c in by_replica.items() if c and r not in replicas)
    if strangers:
        reason = f"answers came from replicas not in the lab: {', '.join(strangers)}"
        return Judgement("failed", reason, base)
    shares = expected_shares(method, len(replicas), weights, backup)
    observed = [by_replica.get(r, 0) for r in replicas]
    base |= {"replicas": list(replicas), "expected_shares": shares, "observed": observed}
    if method == "round_robin":
        return _judge_bound(
            observed,
            shares,
            replicas,
            base,
            weights or [1] * len(replicas),
            concurrency=concurrency,
            workers=workers,
            shared_state=shared_state,
            retries=retries,
        )
    if method in ("hash", "ip_hash"):
        return _judge_sticky(per_client or {}, shares, replicas, base, alpha)
    if method == "random":
        return _judge_chi_square(observed, shares, replicas, base, alpha)
    samples = list(latencies) if latencies is not None else [LatencySample(0, math.nan)] * len(replicas)
    if len(samples) != len(replicas):
        raise ValueError(f"{len(samples)} latency samples for {len(replicas)} replicas")
    band = share_band(method, shares, samples, concurrency, alpha)
    return _judge_band(observed, replicas, band, base, alpha)


def _judge_bound(
    observed: list[int],
    shares: list[float],
    replicas: Sequence[str],
    base: dict[str, Any],
    weights: Sequence[int],
    **bound_args: Any,
) -> Judgement:
    active_weights = [w for w, s in zip(weights, shares, strict=True) if s > 0]
    bound = round_robin_bound(active_weights, **bound_args)
    check = within_bound(observed, shares, bound)
    total = sum(observed)
    test = base | {
        "test": "within_bound",
        "bound": bound,
        "worst_replica": replicas[check.worst_replica],
        "worst_abs_error": check.worst_abs_error,
        "low_counts": [max(0, math.ceil(s * total - bound - 1e-9)) if s else 0 for s in shares],
        "high_counts": [math.floor(s * total + bound + 1e-9) if s else 0 for s in shares],
        "passed": check.passed,
    }
    where = f"{replicas[check.worst_replica]} is off by {check.worst_abs_error:.1f}"
    if check.passed:
        return Judgement("balanced", f"every replica within {bound} of its exact share ({where})", test)
    if shares[check.worst_replica] == 0:
        name = replicas[check.worst_replica]
        return Judgement("skewed", f"{name} is the backup and served {observed[check.worst_replica]:,} "
                         "requests while the others were up", test)  # fmt: skip
    return Judgement("skewed", f"{where} requests, more than the bound of {bound}", test)


def _judge_chi_square(
    observed: list[int], shares: list[float], replicas: Sequence[str], base: dict[str, Any], alpha: float
) -> Judgement:
    total = sum(observed)
    smallest = min(s for s in shares if s > 0)
    test = base | {"test": "chi_square", "alpha": alpha, "min_expected": total * smallest}
    if total * smallest < MIN_EXPECTED:
        return _too_few(
            total,
            smallest,
            test,
            f" requests, and chi-square needs at least {MIN_EXPECTED} for every replica",
        )
    fit = chi_square(observed, shares)
    test |= {
        "statistic": fit.statistic,
        "dof": fit.dof,
        "p_value": fit.p_value,
        "passed": fit.p_value >= alpha,
    }
    summary = f"chi-square {fit.statistic:.2f} on {fit.dof} dof, p = {fit.p_value:.3g}"
    if fit.p_value >= alpha:
        return Judgement("balanced", f"{summary} >= alpha {alpha}", test)
    return Judgement("skewed", f"{summary} < alpha {alpha}", test)


# -- least_conn and random_two: a band between two models --------------------------------------


@dataclass(frozen=True)
class ShareBand:
    """The shares a load-aware method may give each replica, and why.

    `low`/`high` span the equal (weighted) share, the inverse-latency share and, for
    least_conn, the shares of every in-flight split it can hold. `undecidable` says why no
    band can be given (the verdict is then inconclusive).
    """

    method: str
    concurrency: int
    equal: list[float]
    latency: list[float]
    low: list[float]
    high: list[float]
    model: LatencyModel
    undecidable: str = ""


def share_band(
    method: str,
    shares: Sequence[float],
    latencies: Sequence[LatencySample],
    concurrency: int,
    alpha: float = DEFAULT_ALPHA,
) -> ShareBand:
    """Where least_conn's (or random_two's) shares may lie with `concurrency` client connections.

    At one connection every pick is a tie (nothing is in flight), so nginx falls back to its
    weighted round robin (least_conn) or weighted random choice (random_two): the weighted
    share. With many requests in flight least_conn keeps about as many on each replica per
    unit of weight, and by Little's law a replica's share tends to (w_i / latency_i) /
    sum(w_j / latency_j). A share lies between those two models, widened for least_conn by
    the rounding of in-flight counts (weights 3,1,1 with 8 in flight hold 4,2,2) over every
    total from 1 to `concurrency`: when the machine is saturated, requests queue in the
    client and nginx, and fewer than C are at the replicas. With fewer requests in flight
    than replicas each replica holds at most one and weights only break ties between idle
    ones, so the unweighted shares are included too. Latencies count only where the
    Mann-Whitney U test finds a difference (`latency_model`). Weights and the backup are never overridden:
    latency scales the weights, and a backup keeps a share of 0.
    """
    active = [s > 0 for s in shares]
    model = latency_model(latencies, active, alpha)
    means = [m if a else 1.0 for m, a in zip(model.means, active, strict=True)]
    equal = list(shares)
    latency = inverse_latency_shares(shares, means)
    n_active = sum(active)
    weighted = len({round(s, 12) for s in shares if s > 0}) > 1
    if concurrency <= 1:  # nothing in flight at any pick: the weighted share, whatever the latencies
        return ShareBand(method, concurrency, equal, latency, list(equal), list(equal), model)
    low = [min(e, x) for e, x in zip(equal, latency, strict=True)]
    high = [max(e, x) for e, x in zip(equal, latency, strict=True)]

    def widen(extra: Sequence[tuple[float, float]]) -> None:
        for i, (lo, hi) in enumerate(extra):
            if active[i]:
                low[i], high[i] = min(low[i], lo), max(high[i], hi)

    if weighted and method == "random_two":
        why = "random two with weights has no simple expectation above one connection"
        return ShareBand(method, concurrency, equal, latency, low, high, model, why)
    if method == "least_conn":
        if weighted and n_active > 2:
            unweighted = [1.0 if a else 0.0 for a in active]
            plain = [x / n_active for x in unweighted]
            widen(list(zip(plain, plain, strict=True)))
            fast = inverse_latency_shares(unweighted, means)
            widen(list(zip(fast, fast, strict=True)))
        if concurrency >= n_active:
            split = in_flight_share_range(shares, means, concurrency, n_active)
            if split is not None:
                widen(split)
    return ShareBand(method, concurrency, equal, latency, low, high, model)


def binomial_bounds(total: int, low: float, high: float, level: float) -> tuple[int, int]:
    """Counts out of `total` a replica may get when its share lies in [low, high]: below the first
    or above the second has probability under `level` each (exact binomial tails)."""
    from scipy.stats import binom

    lowest = int(binom.ppf(level, total, low)) if low > 0 else 0
    highest = int(binom.isf(level, total, high)) if high < 1 else total
    return lowest, (highest if high > 0 else 0)


def _judge_band(
    observed: list[int], replicas: Sequence[str], band: ShareBand, base: dict[str, Any], alpha: float
) -> Judgement:
    total = sum(observed)
    active = [s > 0 for s in band.equal]
    level = alpha / (2 * sum(active))  # two tails per replica, Bonferroni over the replicas
    bounds = [binomial_bounds(total, lo, hi, level) for lo, hi in zip(band.low, band.high, strict=True)]
    model = band.model
    test = base | {
        "test": "share_band",
        "alpha": alpha,
        "concurrency": band.concurrency,
        "equal_shares": band.equal,
        "latency_shares": band.latency,
        "low_shares": band.low,
        "high_shares": band.high,
        "low_counts": [lo for lo, _ in bounds],
        "high_counts": [hi for _, hi in bounds],
        "latency_test": "mann_whitney_u",
        "latency_level": model.level,
        "latency_ms": [round(m * 1000, 4) if not math.isnan(m) else None for m in model.measured],
        "model_latency_ms": [round(m * 1000, 4) if not math.isnan(m) else None for m in model.means],
        "latency_p_values": model.p_values,
        "latency_significant": [r for r, sig in zip(replicas, model.significant, strict=True) if sig],
        "latency_groups": [[replicas[i] for i in group] for group in model.groups],
    }
    backup = [i for i, a in enumerate(active) if not a and observed[i]]
    if backup:
        i = backup[0]
        test |= {"passed": False, "worst_replica": replicas[i]}
        reason = f"{replicas[i]} is the backup and served {observed[i]:,} requests while the others were up"
        return Judgement("skewed", reason, test)
    misses = [i for i, (c, (lo, hi)) in enumerate(zip(observed, bounds, strict=True)) if not lo <= c <= hi]
    if misses:
        worst = max(misses, key=lambda i: max(bounds[i][0] - observed[i], observed[i] - bounds[i][1]))
        lo, hi = bounds[worst]
        test |= {"passed": False, "worst_replica": replicas[worst]}
        reason = (
            f"{replicas[worst]} got {observed[worst]:,} of {total:,} ({observed[worst] / total:.1%}); "
            f"the {band.method} model allows {lo:,}-{hi:,} ({band.low[worst]:.1%}-{band.high[worst]:.1%} "
            f"at {band.concurrency} connections, alpha {alpha})"
        )
        return Judgement("skewed", reason, test)
    if band.undecidable:
        test["passed"] = None
        return Judgement(
            "inconclusive", band.undecidable, test, "run with --concurrency 1, where the weighted share holds"
        )
    smallest = min(lo for lo, a in zip(band.low, active, strict=True) if a)
    if total * smallest < MIN_EXPECTED:
        return _too_few(total, smallest, test, f", under {MIN_EXPECTED}")
    test["passed"] = True
    widest = max(range(len(replicas)), key=lambda i: band.high[i] - band.low[i])
    reason = (
        f"every replica within its band at {band.concurrency} connections "
        f"(widest: {replicas[widest]} {band.low[widest]:.1%}-{band.high[widest]:.1%}, alpha {alpha})"
    )
    return Judgement("balanced", reason, test)


# -- hash methods: stickiness, then the spread of clients --------------------------------------


def _judge_sticky(
    per_client: Mapping[str, Mapping[str, int]],
    shares: list[float],
    replicas: Sequence[str],
    base: dict[str, Any],
    alpha: float,
) -> Judgement:
    stick = stickiness(per_client)
    repeated = sum(1 for counts in per_client.values() if sum(counts.values()) >= 2)
    spread = [stick.spread.get(r, 0) for r in replicas]
    test = base | {
        "test": "stickiness",
        "clients": stick.clients,
        "sticky_clients": stick.sticky_clients,
        "repeated_clients": repeated,
        "fraction": stick.fraction,
        "spread": dict(zip(replicas, spread, strict=True)),
        "alpha": alpha,
    }
    ip_hash = base["method"] == "ip_hash"
    who = "client addresses" if ip_hash else "client identities"
    if stick.clients == 0:
        return Judgement("failed", "no per-client tallies: send traffic with client identities", test)
    if stick.sticky_clients < stick.clients:
        moved = stick.clients - stick.sticky_clients
        test["passed"] = False
        return Judgement("skewed", f"{moved} of {stick.clients} clients moved between replicas", test)
    if repeated == 0:
        test["passed"] = None
        reason = "no client sent two requests, so none could show whether it stays on one replica"
        return Judgement("inconclusive", reason, test, "send at least 2 requests per client")
    used = sum(1 for c in spread if c)
    smallest = min(s for s in shares if s > 0)
    if ip_hash and stick.clients == 1:
        test["passed"] = None
        (main,) = [r for r, c in zip(replicas, spread, strict=True) if c]
        reason = (
            f"ip_hash saw one client address (every request from this host arrives from one address): "
            f"all its requests stayed on {main}, so stickiness holds, but one client cannot show a spread"
        )
        advice = (
            f"requests from at least {needed(smallest):,} different client networks would test the spread "
            "(ip_hash keys on the first three octets of an IPv4 address); one host cannot send them"
        )
        return Judgement("inconclusive", reason, test, advice)
    sticky = f"all {stick.clients} clients stuck to one replica; they spread over {used}"
    if stick.clients * smallest < MIN_EXPECTED:
        test["passed"] = None
        reason = (
            f"{sticky}, but {stick.clients} {who} give the smallest expectation "
            f"{stick.clients * smallest:.1f} clients, under the {MIN_EXPECTED} a spread test needs"
        )
        flag = "" if ip_hash else " (--clients)"
        return Judgement("inconclusive", reason, test, f"send at least {needed(smallest):,} {who}{flag}")
    fit = chi_square(spread, shares)
    test |= {
        "statistic": fit.statistic,
        "dof": fit.dof,
        "p_value": fit.p_value,
        "passed": fit.p_value >= alpha,
    }
    if fit.p_value >= alpha:
        return Judgement("balanced", f"{sticky} (p = {fit.p_value:.3g})", test)
    reason = f"{sticky}, unevenly (p = {fit.p_value:.3g} < {alpha})"
    if ip_hash and used == 1:
        # ip_hash keys on the address nginx sees; the realip module must be fed X-Forwarded-For.
        reason += "; ip_hash saw one client address for all clients"
    return Judgement("skewed", reason, test)
