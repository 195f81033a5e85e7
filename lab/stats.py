"""What a fair spread looks like, and whether observed traffic matches it (pure; the only scipy user).

Three parts: `expected_shares` (what nginx should do), `LatencyHistogram` (a constant-memory
latency recorder), and the tests (`chi_square`, `within_bound`, `stickiness`, ...) that
`judge` picks from for each balancing method.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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

    __slots__ = ("_counts", "_count", "_sum", "_min", "_max")

    def __init__(self) -> None:
        self._counts = [0] * _NBUCKETS
        self._count = 0
        self._sum = 0.0
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
# Judging a run

Verdict = Literal["balanced", "skewed", "failed"]


@dataclass(frozen=True)
class Judgement:
    """The verdict on a run, one line saying why, and the numbers of the test behind it."""

    verdict: Verdict
    reason: str
    test: dict[str, Any] = field(default_factory=dict)


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


def _tolerance(share: float, total: int) -> float:
    # 10% for the load-dependent methods, plus four standard errors of a share so small runs pass.
    return 0.10 + 4 * math.sqrt((1 - share) / (total * share))


def judge(
    method: str,
    replicas: Sequence[str],
    by_replica: Mapping[str, int],
    *,
    errors: int = 0,
    weights: Sequence[int] | None = None,
    backup: int | None = None,
    per_client: Mapping[str, Mapping[str, int]] | None = None,
    concurrency: int = 1,
    workers: int = 1,
    shared_state: bool = True,
    retries: int = 0,
    alpha: float = DEFAULT_ALPHA,
) -> Judgement:
    """Pick the right test for `method` and say whether the spread over `replicas` is as expected.

    - round_robin is deterministic: each count must be within `round_robin_bound` of its share.
    - random, and least_conn / random_two on equal weights: Pearson chi-square at `alpha`
      (default 0.001). Weighted least_conn / random_two only approximate their weights, so
      each share must be within 10% (plus four standard errors) of its weight's share.
    - hash, ip_hash: every client (`per_client`) must stay on one replica, and clients must
      spread over replicas by weight (chi-square at `alpha` when there are enough of them).
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
    equal = not weights or len(set(weights)) == 1
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
    if method == "random" or equal:
        return _judge_chi_square(observed, shares, base, alpha)
    return _judge_tolerance(observed, shares, replicas, base)


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
    test = base | {
        "test": "within_bound",
        "bound": bound,
        "worst_replica": replicas[check.worst_replica],
        "worst_abs_error": check.worst_abs_error,
        "passed": check.passed,
    }
    where = f"{replicas[check.worst_replica]} is off by {check.worst_abs_error:.1f}"
    if check.passed:
        return Judgement("balanced", f"every replica within {bound} of its exact share ({where})", test)
    return Judgement("skewed", f"{where} requests, more than the bound of {bound}", test)


def _judge_chi_square(
    observed: list[int], shares: list[float], base: dict[str, Any], alpha: float
) -> Judgement:
    fit = chi_square(observed, shares)
    test = base | {
        "test": "chi_square",
        "alpha": alpha,
        "statistic": fit.statistic,
        "dof": fit.dof,
        "p_value": fit.p_value,
        "passed": fit.p_value >= alpha,
    }
    summary = f"chi-square {fit.statistic:.2f} on {fit.dof} dof, p = {fit.p_value:.3g}"
    if fit.p_value >= alpha:
        return Judgement("balanced", f"{summary} >= alpha {alpha}", test)
    return Judgement("skewed", f"{summary} < alpha {alpha}", test)


def _judge_tolerance(
    observed: list[int], shares: list[float], replicas: Sequence[str], base: dict[str, Any]
) -> Judgement:
    total = sum(observed)
    misses = []
    for name, count, share in zip(replicas, observed, shares, strict=True):
        if share == 0:
            if count:
                misses.append(f"{name} (backup) got {count}")
        elif abs(count / total - share) / share > _tolerance(share, total):
            misses.append(f"{name} got {count / total:.1%} instead of {share:.1%}")
    deviation = max_relative_deviation(observed, shares)
    test = base | {"test": "relative_deviation", "max_relative_deviation": deviation, "passed": not misses}
    if misses:
        return Judgement("skewed", "; ".join(misses), test)
    return Judgement("balanced", f"every share within tolerance (worst {deviation:.1%} off)", test)


def _judge_sticky(
    per_client: Mapping[str, Mapping[str, int]],
    shares: list[float],
    replicas: Sequence[str],
    base: dict[str, Any],
    alpha: float,
) -> Judgement:
    stick = stickiness(per_client)
    spread = [stick.spread.get(r, 0) for r in replicas]
    test = base | {
        "test": "stickiness",
        "clients": stick.clients,
        "sticky_clients": stick.sticky_clients,
        "fraction": stick.fraction,
        "spread": dict(zip(replicas, spread, strict=True)),
    }
    if stick.clients == 0:
        return Judgement("failed", "no per-client tallies: send traffic with client identities", test)
    if stick.sticky_clients < stick.clients:
        moved = stick.clients - stick.sticky_clients
        return Judgement("skewed", f"{moved} of {stick.clients} clients moved between replicas", test)
    used = sum(1 for c in spread if c)
    sticky = f"all {stick.clients} clients stuck to one replica; they spread over {used}"
    # Chi-square needs about 5 expected per replica; with fewer clients only stickiness is judged.
    if stick.clients * min(s for s in shares if s > 0) < 5:
        test["passed"] = True
        return Judgement("balanced", f"{sticky} (too few clients to test the spread)", test)
    fit = chi_square(spread, shares)
    test |= {
        "alpha": alpha,
        "statistic": fit.statistic,
        "dof": fit.dof,
        "p_value": fit.p_value,
        "passed": fit.p_value >= alpha,
    }
    if fit.p_value >= alpha:
        return Judgement("balanced", f"{sticky} (p = {fit.p_value:.3g})", test)
    reason = f"{sticky}, unevenly (p = {fit.p_value:.3g} < {alpha})"
    if base["method"] == "ip_hash" and used == 1:
        # ip_hash keys on the address nginx sees; the realip module must be fed X-Forwarded-For.
        reason += "; ip_hash saw one client address for all clients"
    return Judgement("skewed", reason, test)


# ---------------------------------------------------------------------------------------------
# least_conn under uneven load


def slow_gets_less(
    replicas: Sequence[str], observed: Sequence[int], mean_latency: Sequence[float]
) -> Judgement | None:
    """least_conn sends fewer requests where they take longer: an uneven spread is right when the
    slowest replica got the smallest share and shares fall as latency rises (Spearman rho < 0).

    Returns a "balanced" Judgement when that holds, None when it does not (or cannot be told).
    """
    if len(replicas) < 2 or len(set(mean_latency)) < 2 or sum(observed) == 0:
        return None
    from scipy.stats import spearmanr

    rho = float(spearmanr(mean_latency, observed).statistic)
    slowest = max(range(len(replicas)), key=lambda i: mean_latency[i])
    smallest = min(range(len(replicas)), key=lambda i: observed[i])
    test = {
        "test": "slow_gets_less",
        "spearman_rho": rho,
        "slowest": replicas[slowest],
        "mean_latency_ms": [round(x * 1000, 3) for x in mean_latency],
        "observed": list(observed),
        "passed": rho < 0 and slowest == smallest,
    }
    if not test["passed"]:
        return None
    share = observed[slowest] / sum(observed)
    reason = (
        f"least_conn sent less to slower replicas: the slowest, {replicas[slowest]} "
        f"({mean_latency[slowest] * 1000:.1f} ms on average), got {share:.1%} (Spearman rho {rho:.2f})"
    )
    return Judgement("balanced", reason, test)
