"""Counts, the load engine's bookkeeping, fed by hand: no sockets, no clock."""

from __future__ import annotations

from lab import tally
from lab.tally import (
    MAX_ADDRS_PER_REPLICA,
    UNNAMED_REPLICA,
    Counts,
    Second,
    Tally,
    content_digest,
    content_versions,
    upstream_addresses,
)

T0 = 1000.0  # a monotonic start time


def assert_adds_up(t: Tally) -> None:
    """Every invariant a Tally promises."""
    assert t.sent == t.ok + t.errors
    assert sum(t.by_replica.values()) == t.ok
    assert sum(t.errors_by_cause.values()) == t.errors
    assert sum(t.by_status.values()) == t.latency.count
    assert sum(t.retried_by_cause.values()) == t.retried
    # Per replica: every answer, 5xx included; the ok ones are by_replica.
    assert sum(h.count for h in t.latency_by_replica.values()) == t.latency.count
    assert t.latency_by_replica.keys() == t.status_by_replica.keys()
    for replica, statuses in t.status_by_replica.items():
        assert sum(statuses.values()) == t.latency_by_replica[replica].count
        assert sum(n for status, n in statuses.items() if status < 500) == t.by_replica.get(replica, 0)
    by_status: dict[int, int] = {}
    for statuses in t.status_by_replica.values():
        for status, n in statuses.items():
            by_status[status] = by_status.get(status, 0) + n
    assert by_status == t.by_status
    # The timeline: one entry per second, adding up to the totals.
    assert [s.t for s in t.timeline] == list(range(len(t.timeline)))
    assert all(s.sent == s.ok + s.errors for s in t.timeline)
    assert sum(s.sent for s in t.timeline) == t.sent
    assert sum(s.ok for s in t.timeline) == t.ok
    assert sum(s.retried for s in t.timeline) == t.retried
    by_replica: dict[str, int] = {}
    causes: dict[str, int] = {}
    for second in t.timeline:
        for replica, n in second.by_replica.items():
            by_replica[replica] = by_replica.get(replica, 0) + n
        for cause, n in second.errors_by_cause.items():
            causes[cause] = causes.get(cause, 0) + n
    assert by_replica == t.by_replica
    assert causes == t.errors_by_cause
    # Contents (when the run kept them): every ok answer once, under the replica that sent it.
    if t.contents:
        per_replica: dict[str, int] = {}
        for (replica, _version, _digest), n in t.contents.items():
            per_replica[replica] = per_replica.get(replica, 0) + n
        assert per_replica == t.by_replica


def test_outcomes_land_in_the_second_they_arrived() -> None:
    counts = Counts(T0)
    counts.answer(T0 + 0.1, 0.002, 200, b"r1", b"10.0.0.1:80", client=0)
    counts.answer(T0 + 0.5, 0.004, 200, b"r2", b"10.0.0.2:80", client=1)
    counts.answer(T0 + 0.9, 0.003, 503, b"r3", b"10.0.0.3:80", client=2)
    counts.retry(T0 + 1.2, "reset")
    counts.error(T0 + 1.3, "timeout")
    counts.answer(T0 + 2.7, 0.001, 200, b"r1", b"10.0.0.3:80, 10.0.0.1:80", client=0)
    counts.cancel()
    assert counts.done == 5
    t = counts.tally(3.0)
    assert_adds_up(t)
    assert (t.sent, t.ok, t.errors, t.retried, t.cancelled) == (5, 3, 2, 1, 1)
    assert t.errors_by_cause == {"http_5xx": 1, "timeout": 1} and t.retried_by_cause == {"reset": 1}
    assert t.by_replica == {"r1": 2, "r2": 1}
    assert t.by_status == {200: 3, 503: 1}
    assert t.status_by_replica == {"r1": {200: 2}, "r2": {200: 1}, "r3": {503: 1}}
    assert t.per_client == {"c0": {"r1": 2}, "c1": {"r2": 1}}  # 5xx answers are not a client's
    assert t.upstream_addrs == {"r1": {"10.0.0.1:80", "10.0.0.3:80, 10.0.0.1:80"}, "r2": {"10.0.0.2:80"}}
    assert t.upstream_retries == 1
    assert t.elapsed == 3.0 and t.latency.max == 0.004
    assert [(s.sent, s.ok, s.errors, s.retried) for s in t.timeline] == [
        (3, 2, 1, 0),
        (1, 0, 1, 1),
        (1, 1, 0, 0),
        (0, 0, 0, 0),
    ]
    assert t.timeline[0].by_replica == {"r1": 1, "r2": 1}
    # Every address nginx tried, 5xx answers included, in the second of the answer.
    assert [s.tried for s in t.timeline] == [
        {"10.0.0.1:80": 1, "10.0.0.2:80": 1, "10.0.0.3:80": 1},
        {},
        {"10.0.0.3:80": 1, "10.0.0.1:80": 1},
        {},
    ]


def test_answers_without_a_name_or_address() -> None:
    counts = Counts(T0)
    counts.answer(T0, 0.001, 200, b"", b"")
    t = counts.tally(0.5)
    assert_adds_up(t)
    assert t.by_replica == {UNNAMED_REPLICA: 1} and t.upstream_addrs == {} and t.timeline[0].tried == {}
    assert t.per_client == {}  # client -1: the load spoke for no client


def test_the_timeline_is_bounded() -> None:
    counts = Counts(T0, last_second=2)
    for second in range(10):
        counts.error(T0 + second + 0.5, "refused")
    counts.answer(T0 - 1.0, 0.001, 200, b"r1", b"")  # a clock that went back lands in second 0
    t = counts.tally(10.0)
    assert_adds_up(t)
    assert [s.sent for s in t.timeline] == [2, 1, 8]


def test_addresses_kept_per_replica_are_bounded_but_every_attempt_is_counted() -> None:
    counts = Counts(T0)
    for i in range(3000):
        counts.answer(T0 + 0.5, 0.001, 200, b"r1", b"10.0.%d.%d:80" % (i // 256, i % 256))
    t = counts.tally(1.0)
    assert_adds_up(t)
    assert len(t.upstream_addrs["r1"]) == MAX_ADDRS_PER_REPLICA
    assert len(t.timeline[0].tried) == 3000 and set(t.timeline[0].tried.values()) == {1}


def test_a_tally_shares_nothing_with_the_counters() -> None:
    counts = Counts(T0)
    counts.answer(T0, 0.001, 200, b"r1", b"10.0.0.1:80")
    first = counts.tally(1.0)
    first.merge(counts.tally(1.0))  # merging into the first tally must not change the counters
    again = counts.tally(1.0)
    assert first.latency_by_replica["r1"].count == 2
    assert again.latency_by_replica["r1"].count == again.latency.count == 1


def test_merge_adds_retries_cancellations_and_timelines() -> None:
    a = Tally(retried=2, retried_by_cause={"reset": 2}, cancelled=1, timeline=[Second(0, sent=1, ok=1)])
    b = Tally(retried=1, retried_by_cause={"closed": 1}, timeline=[Second(0), Second(1, sent=2, errors=2)])
    a.merge(b)
    assert (a.retried, a.retried_by_cause, a.cancelled) == (3, {"reset": 2, "closed": 1}, 1)
    assert [(s.t, s.sent, s.ok, s.errors) for s in a.timeline] == [(0, 1, 1, 0), (1, 2, 0, 2)]


def test_upstream_addresses_lists_retries_and_internal_redirects() -> None:
    assert upstream_addresses(b"10.0.0.1:80, 10.0.0.2:80 : 10.0.0.3:80") == [
        b"10.0.0.1:80",
        b"10.0.0.2:80",
        b"10.0.0.3:80",
    ]
    assert upstream_addresses(b"10.0.0.1:80") == [b"10.0.0.1:80"]


# Contents: what each answer carried ------------------------------------------------------------
PAGE = b"<title>served by %s</title><h1>%s</h1><p>site version v1</p>"


def test_the_replicas_own_name_is_taken_out_of_the_content() -> None:
    one = content_digest(PAGE % (b"lab-web-1", b"lab-web-1"), b"lab-web-1", 60)
    ten = content_digest(PAGE % (b"lab-web-10", b"lab-web-10"), b"lab-web-10", 62)
    assert one == ten and len(one) == 8
    assert content_digest(PAGE % (b"lab-web-1", b"lab-web-2"), b"lab-web-1", 60) != one  # not its own name
    assert content_digest(b"<h1>new page</h1>", b"lab-web-1", 17) != one
    assert content_digest(b"same", b"", 4) == content_digest(b"same", b"", 4)


def test_a_body_longer_than_what_is_kept_is_known_by_its_start_and_length() -> None:
    start = b"x" * tally.KEEP_BODY
    longer, longest = (content_digest(start, b"", tally.KEEP_BODY + n) for n in (1, 2))
    assert longer != longest != content_digest(start, b"", tally.KEEP_BODY)


def test_a_version_with_one_content_is_named_by_its_version_else_by_both() -> None:
    contents = {
        ("w1", "v1", "aaaaaaaa"): 5,
        ("w2", "v1", "bbbbbbbb"): 5,  # a `lab cp` made w2 differ
        ("w3", "v2", "cccccccc"): 5,
        ("w4", "v2", "cccccccc"): 5,
        ("x", "", "dddddddd"): 1,  # no X-Site-Version
    }
    assert content_versions(contents) == {
        ("v1", "aaaaaaaa"): "v1+aaaaaaaa",
        ("v1", "bbbbbbbb"): "v1+bbbbbbbb",
        ("v2", "cccccccc"): "v2",
        ("", "dddddddd"): "#dddddddd",
    }


def test_contents_are_counted_per_replica_and_version() -> None:
    counts = Counts(T0)
    for replica, body in [(b"w1", PAGE % (b"w1", b"w1"))] * 3 + [(b"w2", PAGE % (b"w2", b"w2"))] * 2:
        counts.answer(T0, 0.001, 200, replica, b"")
        counts.content(replica, b"v1", body, len(body))
    counts.answer(T0, 0.001, 200, b"w2", b"")
    counts.content(b"w2", b"v1", b"<h1>copied</h1>", 15)
    t = counts.tally(1.0)
    assert_adds_up(t)
    same = content_digest(PAGE % (b"w1", b"w1"), b"w1", 0)
    copied = content_digest(b"<h1>copied</h1>", b"w2", 15)
    assert t.contents == {("w1", "v1", same): 3, ("w2", "v1", same): 2, ("w2", "v1", copied): 1}


def test_a_server_whose_every_answer_differs_keeps_memory_flat() -> None:
    counts = Counts(T0)
    for i in range(tally.MAX_CONTENTS + 500):
        body = b"now: %d" % i
        counts.answer(T0, 0.001, 200, b"w1", b"")
        counts.content(b"w1", b"v1", body, len(body))
    t = counts.tally(1.0)
    assert_adds_up(t)
    assert len(t.contents) == tally.MAX_CONTENTS + 1
    assert t.contents[("w1", "v1", tally.OTHER_CONTENT)] == 500
    assert all(len(memo) <= 16 for memo in counts._digests.values())


def test_merge_adds_contents() -> None:
    a, b = Tally(ok=1, sent=1), Tally(ok=2, sent=2)
    a.contents = {("w1", "v1", "aa"): 1}
    b.contents = {("w1", "v1", "aa"): 1, ("w2", "v1", "aa"): 1}
    a.merge(b)
    assert a.contents == {("w1", "v1", "aa"): 2, ("w2", "v1", "aa"): 1}
