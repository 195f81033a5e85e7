"""The words for a verify run's test, decided once for both the terminal and the HTML report (pure).

`describe(result)` names the test, sums up its numbers on one line, lists its facts and says in
one plain paragraph what it asked and what it found, for every test `stats.judge` runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from lab.results import VerifyResult

TEST_NAMES = {
    "chi_square": "Pearson's chi-square goodness of fit",
    "within_bound": "Round-robin bound (every count near its exact share)",
    "stickiness": "Client stickiness, then chi-square of how clients spread",
    "share_band": "Load-aware band (between the weighted and the inverse-latency share)",
}


@dataclass(frozen=True)
class Description:
    name: str  # which test
    summary: str  # its numbers on one line
    facts: list[tuple[str, str]]  # label, value
    sentence: str  # what it asked and what it found, for a student


def describe(result: VerifyResult) -> Description:
    test = result.test
    name = str(test.get("test") or "")
    title = TEST_NAMES.get(name, "No test could be run")
    sentence = _sentence(name, test, result)
    if result.advice:
        sentence += f" To decide: {result.advice}."
    return Description(title, _summary(name, test, result), _facts(name, test, result), sentence)


def _number(test: dict[str, object], key: str) -> float | None:
    value = test.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _percent(value: float) -> str:
    if math.isinf(value):
        return "∞"
    return f"{value:.1%}" if abs(value) >= 0.1 or value == 0 else f"{value:.2%}"


def _chance(p: float) -> str:
    if p == 0:
        return "0%"
    if p < 1e-4:
        return f"{p:.1e}"
    return f"{p * 100:.3g}%"


def _latency_words(test: dict[str, object]) -> str:
    """Which replicas' latencies differ, group by group, with their mean latency."""
    groups, replicas, model = test.get("latency_groups"), test.get("replicas"), test.get("model_latency_ms")
    if not isinstance(groups, list) or len(groups) < 2 or not isinstance(replicas, list):
        return "none did, so every replica counted as equally fast"
    means = dict(zip(replicas, model, strict=True)) if isinstance(model, list) else {}
    parts = [f"{', '.join(group)} ({means.get(group[0], 0.0):.2f} ms)" for group in groups]
    return f"the replicas fell into {len(groups)} groups of equal latency: " + "; ".join(parts)


def _summary(name: str, test: dict[str, object], result: VerifyResult) -> str:
    p, alpha = _number(test, "p_value"), _number(test, "alpha")
    if name == "chi_square":
        if p is None:
            return f"not run: smallest expected count {_number(test, 'min_expected') or 0:.1f}, under 5"
        return f"statistic {test['statistic']:.2f}, {test['dof']} dof, p = {p:.3g} (alpha {alpha:g})"
    if name == "within_bound":
        return (
            f"every count within ±{test['bound']} of its exact share; "
            f"worst {test['worst_replica']} off by {test['worst_abs_error']:.1f}"
        )
    if name == "stickiness":
        line = f"{test['sticky_clients']}/{test['clients']} clients always on one replica"
        if p is not None:
            return line + f"; spread over replicas p = {p:.3g} (alpha {alpha:g})"
        return line + "; spread not tested"
    if name == "share_band":
        groups = test.get("latency_groups")
        count = len(groups) if isinstance(groups, list) and len(groups) > 1 else 1
        return (
            f"{test['concurrency']} connections; {count} latency group{'s' if count > 1 else ''} "
            f"(Mann-Whitney U); exact binomial margin, alpha {alpha:g}"
        )
    return result.reason


# key in VerifyResult.test -> label and format; shown in this order when present
_FACTS: tuple[tuple[str, str, Callable[[float], str]], ...] = (
    ("statistic", "Statistic (χ²)", lambda v: "∞" if math.isinf(v) else f"{v:,.2f}"),
    ("dof", "Degrees of freedom", lambda v: f"{v:.0f}"),
    ("p_value", "p-value", lambda v: f"{v:.3g}"),
    ("min_expected", "Smallest expected count", lambda v: f"{v:,.1f}"),
    ("bound", "Bound", lambda v: f"± {v:.0f} requests"),
    ("worst_abs_error", "Worst error", lambda v: f"{v:.1f} requests"),
    ("clients", "Clients", lambda v: f"{v:,.0f}"),
    ("sticky_clients", "Stayed on one replica", lambda v: f"{v:,.0f}"),
    ("concurrency", "Connections", lambda v: f"{v:,.0f}"),
    ("latency_level", "Latency test", lambda v: f"Mann-Whitney U, significant below p = {v:.2g}"),
    ("alpha", "Alpha (significance level)", lambda v: f"{v:g}"),
)


def _facts(name: str, test: dict[str, object], result: VerifyResult) -> list[tuple[str, str]]:
    facts = [("Test", TEST_NAMES.get(name, "none was run"))]
    facts += [(label, fmt(v)) for key, label, fmt in _FACTS if (v := _number(test, key)) is not None]
    if name == "share_band":
        facts.append(("Latency differences that count", _latency_words(test)))
    if isinstance(test.get("worst_replica"), str):
        facts.insert(1, ("Worst replica", str(test["worst_replica"])))
    passed = test.get("passed")
    if name:
        facts.append(("Passed", "yes" if passed is True else "no" if passed is False else "could not judge"))
    if result.advice:
        facts.append(("To decide", result.advice))
    return facts


def _sentence(name: str, test: dict[str, object], result: VerifyResult) -> str:
    """One plain paragraph, for a student, on what the test asked and what it found."""
    p, alpha = _number(test, "p_value"), _number(test, "alpha")
    reason = result.reason
    if name == "chi_square":
        if p is None or alpha is None:
            return (
                "The chi-square test compares counts with what a fair balancer gives on average, and it "
                "can only be trusted when every replica is expected to get at least 5 requests: "
                f"{reason}."
            )
        verdict = (
            "so the spread is what a fair balancer plausibly gives"
            if p >= alpha
            else "so chance alone is an unlikely explanation and the spread is skewed"
        )
        return (
            "The chi-square test asks how often a perfectly fair balancer would, by pure chance, "
            f"give counts at least this uneven: here {_chance(p)} of the time, "
            f"{'at or above' if p >= alpha else 'below'} the {_chance(alpha)} threshold (alpha), {verdict}."
        )
    bound, error = _number(test, "bound"), _number(test, "worst_abs_error")
    if name == "within_bound" and bound is not None and error is not None:
        worst = test.get("worst_replica", "the worst replica")
        within = "within" if error <= bound else "more than"
        return (
            "Round robin deals requests out in a fixed order, like cards, so every replica must be "
            f"within {bound:.0f} request{'s' if bound != 1 else ''} of its exact share; "
            f"{worst} was off by {error:.1f}, {within} that bound."
        )
    if name == "share_band":
        return _band_sentence(test, result)
    clients, sticky = _number(test, "clients"), _number(test, "sticky_clients")
    if name == "stickiness" and clients is not None and sticky is not None:
        spread = (
            f", and a chi-square test of how clients spread over replicas gave p = {p:.3g} "
            f"against alpha {alpha:g}"
            if p is not None and alpha is not None
            else f"; the spread over replicas was not tested: {reason}"
        )
        return (
            "Hashing must send each client to the same replica every time: "
            f"{sticky:,.0f} of {clients:,.0f} clients stayed on one replica{spread}."
        )
    return f"No statistical test could judge this run: {reason}."


def _band_sentence(test: dict[str, object], result: VerifyResult) -> str:
    method = test.get("method")
    concurrency = int(_number(test, "concurrency") or 1)
    alpha = _number(test, "alpha") or 0.0
    how = (
        "least_conn sends each request to the replica with the fewest requests in flight (per unit "
        "of weight). With one connection every pick is a tie and it falls back to weighted round robin"
        if method == "least_conn"
        else "random two picks two replicas at random (by weight) and sends to the one with fewer "
        "requests in flight. With one connection that is a weighted random choice"
    )
    outcome = {
        "balanced": "every replica was inside its band",
        "skewed": f"it was not: {result.reason}",
    }.get(result.verdict, f"it could not judge: {result.reason}")
    connections = "one connection" if concurrency == 1 else f"{concurrency} connections"
    return (
        f"{how}, so each replica gets its weighted share; with many requests in flight faster replicas "
        "get more, in proportion to weight ÷ latency (Little's law). A latency difference counts only "
        "when the Mann-Whitney U test (a rank test, so a few stalled requests neither hide nor fake "
        f"one) finds it significant: {_latency_words(test)}. With {connections}, each "
        "replica's share had to lie between those two models (allowing for whole numbers of requests "
        f"in flight), widened by an exact binomial margin (alpha {alpha:g} split over the replicas); "
        f"{outcome}."
    )
