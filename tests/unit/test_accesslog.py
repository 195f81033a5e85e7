"""The access-log parser and counters: lines as the engine streams them, cut anywhere, followed again
after a restart, with replicas coming and going (no Docker)."""

from __future__ import annotations

import random

import pytest

from lab.accesslog import (
    AccessLogReader,
    LineSplitter,
    StreamCursor,
    TrafficCounters,
    parse_line,
    parse_timestamp,
)

T0 = 1_795_900_000  # a whole UNIX second
A, B, C = "172.28.0.2:80", "172.28.0.3:80", "172.28.0.4:80"


def stamp(ns: int) -> str:
    """The engine's RFC 3339 timestamp: UTC, nanoseconds with trailing zeros dropped."""
    import time

    seconds, fraction = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{fraction:09d}".rstrip("0")
    return f"{text}{'.' + digits if digits else ''}Z"


def line(
    ns: int,
    upstream: str = A,
    status: int = 200,
    upstream_status: str | None = None,
    upstream_time: str = "0.002",
    request_time: str = "0.003",
) -> str:
    ustatus = upstream_status if upstream_status is not None else str(status)
    return (
        f'{stamp(ns)} 172.29.0.1 [28/Nov/2026:20:21:36 +0000] "GET /?a=\\x22b HTTP/1.1" {status} 808 '
        f"upstream={upstream} upstream_status={ustatus} request_time={request_time} "
        f'upstream_time={upstream_time} client="-" run="r1"'
    )


def ns(seconds: float) -> int:
    return T0 * 1_000_000_000 + round(seconds * 1e9)


def feed_text(reader: AccessLogReader, text: str) -> int:
    return reader.feed(text.encode())


# Parsing -------------------------------------------------------------------------------------
def test_a_line_parses_into_its_fields() -> None:
    entry = parse_line(line(ns(1.25), upstream=B, status=200, upstream_time="0.004"))
    assert entry is not None
    assert entry.ts_ns == ns(1.25)
    assert entry.status == 200
    assert entry.attempts == (B,)
    assert entry.attempt_statuses == (200,)
    assert entry.replica_address == B
    assert entry.latency == pytest.approx(0.004)


def test_a_retried_request_names_every_try_and_is_answered_by_the_last() -> None:
    entry = parse_line(
        line(ns(0), upstream=f"{A}, {B}", upstream_status="502, 200", upstream_time="0.001, 0.003")
    )
    assert entry is not None
    assert entry.attempts == (A, B)
    assert entry.attempt_statuses == (502, 200)
    assert entry.replica_address == B
    assert entry.upstream_time == pytest.approx(0.003)


@pytest.mark.parametrize("upstream", ["-", "replicas"])
def test_a_request_no_replica_answered_has_no_replica_address(upstream: str) -> None:
    entry = parse_line(line(ns(0), upstream=upstream, status=502, upstream_status="-", upstream_time="-"))
    assert entry is not None and entry.replica_address is None
    assert entry.upstream_time is None and entry.latency == pytest.approx(0.003)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2026-11-28T20:21:36.1Z /docker-entrypoint.sh: Configuration complete; ready for start up",
        '172.29.0.1 [28/Nov/2026:20:21:36 +0000] "GET / HTTP/1.1" 200 808 upstream=a',  # no timestamp
        "2026-11-28T20:21:36Z nginx: [notice] signal process started",
        "garbage",
    ],
)
def test_anything_else_is_not_an_entry(text: str) -> None:
    assert parse_line(text) is None


def test_engine_timestamps_keep_every_nanosecond() -> None:
    assert parse_timestamp("2026-11-28T20:21:36.736631774Z") == 1_795_897_296_736_631_774
    assert parse_timestamp("2026-11-28T20:21:36.7366Z") == 1_795_897_296_736_600_000
    assert parse_timestamp("2026-11-28T20:21:36Z") == 1_795_897_296_000_000_000
    assert parse_timestamp("yesterday") is None


# Lines split across reads ----------------------------------------------------------------------
def test_lines_cut_anywhere_between_reads_come_out_whole() -> None:
    text = "".join(line(ns(i / 100), upstream=[A, B, C][i % 3]) + "\n" for i in range(200)).encode()
    rng = random.Random(7)
    for _ in range(20):
        reader = AccessLogReader()
        cuts = sorted(rng.sample(range(1, len(text)), 60))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert sum(reader.feed(piece) for piece in pieces) == 200
        counts = {k: v.requests for k, v in reader.counters.by_owner(T0 + 5).items()}
        assert counts == {f"[{A}]": 67, f"[{B}]": 67, f"[{C}]": 66}


def test_a_line_without_its_newline_waits_for_the_next_read() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"first\nsec") == ["first"]
    assert splitter.feed(b"ond\r\n") == ["second"]
    assert splitter.feed(b"tail") == []
    assert splitter.reset() == b"tail"


def test_a_multibyte_character_cut_in_two_is_decoded_whole() -> None:
    splitter = LineSplitter()
    encoded = "café\n".encode()
    assert splitter.feed(encoded[:4]) == []
    assert splitter.feed(encoded[4:]) == ["café"]


# Unknown lines ----------------------------------------------------------------------------------
def test_unknown_lines_are_ignored_and_counted() -> None:
    reader = AccessLogReader()
    text = "\n".join(
        [
            line(ns(0)),
            f"{stamp(ns(0.1))} /docker-entrypoint.sh: Configuration complete; ready for start up",
            "no timestamp at all",
            line(ns(0.2), upstream=B),
        ]
    )
    assert feed_text(reader, text + "\n") == 4
    assert reader.unknown_lines == 2
    assert reader.counters.total_requests == 2


# Restart and reload in the middle of a stream ---------------------------------------------------
def test_a_restart_followed_again_from_earlier_counts_nothing_twice() -> None:
    """The stream ends when the load balancer dies (mid-line here); the new follow starts a second
    before the last counted line, so it repeats lines, some with the very same timestamp."""
    first = [line(ns(1.0 + i / 1000), upstream=A) for i in range(50)]
    same = ns(1.05)  # two requests logged within one nanosecond stamp
    first += [line(same, upstream=B), line(same, upstream=C)]
    reader = AccessLogReader()
    reader.begin()
    text = "\n".join(first) + "\n" + line(ns(1.06), upstream=A)[:40]  # cut mid-line
    assert feed_text(reader, text) == 52
    assert reader.since(T0) == pytest.approx(T0 + 1.05 - 1.0)
    # Followed again: the log still holds the previous run's lines from `since` on.
    replay = first[-10:] + [line(ns(1.06), upstream=A)]
    after_restart = [line(ns(3.0 + i / 1000), upstream=[A, B, C][i % 3]) for i in range(30)]
    reader.begin()
    assert feed_text(reader, "\n".join(replay + after_restart) + "\n") == 31
    assert reader.cursor.skipped == 10
    counts = {k: v.requests for k, v in reader.counters.by_owner(T0 + 4).items()}
    assert counts == {f"[{A}]": 50 + 1 + 10, f"[{B}]": 1 + 10, f"[{C}]": 1 + 10}
    assert reader.counters.total_requests == 52 + 31


def test_a_third_line_with_the_same_stamp_after_the_restart_still_counts() -> None:
    cursor = StreamCursor()
    cursor.begin()
    assert [cursor.accept(t) for t in (5, 7, 7)] == [True, True, True]
    cursor.begin()  # replay: 5, 7, 7 again, then a new 7 and an 8
    assert [cursor.accept(t) for t in (5, 7, 7, 7, 8)] == [False, False, False, True, True]


def test_after_the_replay_a_stamp_that_steps_back_is_still_counted() -> None:
    cursor = StreamCursor()
    cursor.begin()
    assert all(cursor.accept(t) for t in (10, 11, 12))
    cursor.begin()
    assert [cursor.accept(t) for t in (11, 12, 13, 12, 14)] == [False, False, True, True, True]


def test_a_reload_that_brings_a_new_replica_and_gives_a_freed_address_to_another() -> None:
    """scale 2 -> 3 (a new address) then a deploy: web-1 is removed and its address goes to web-4.
    Counts never move between replicas, and nothing is counted twice."""
    reader = AccessLogReader()
    counters = reader.counters
    counters.assign(A, "web-1")
    counters.assign(B, "web-2")
    feed_text(reader, "".join(line(ns(i / 10), upstream=[A, B][i % 2]) + "\n" for i in range(10)))
    # Reload: web-3 appears; its first lines arrive before the snapshot that names it.
    feed_text(reader, "".join(line(ns(1 + i / 10), upstream=[A, B, C][i % 3]) + "\n" for i in range(9)))
    assert counters.by_owner(T0 + 2)[f"[{C}]"].requests == 3
    counters.assign(C, "web-3")
    # Deploy: web-1 goes, web-4 gets its address.
    counters.assign(A, "web-4")
    feed_text(reader, "".join(line(ns(2 + i / 10), upstream=[A, B, C][i % 3]) + "\n" for i in range(6)))
    counts = {k: v.requests for k, v in counters.by_owner(T0 + 3).items()}
    assert counts == {"web-1": 5 + 3, "web-2": 5 + 3 + 2, "web-3": 3 + 2, "web-4": 2}
    assert sum(counts.values()) == counters.total_requests == 25


# Counters ---------------------------------------------------------------------------------------
def test_rates_over_1_10_and_60_seconds_and_the_per_second_series() -> None:
    counters = TrafficCounters()
    counters.assign(A, "web-1")
    for second in range(60):  # 10 req/s for a minute, then 50 in the last second
        for i in range(10):
            entry = parse_line(line(ns(second + i / 10)))
            assert entry is not None
            counters.add(entry)
    for i in range(50):
        entry = parse_line(line(ns(60 + i / 50)))
        assert entry is not None
        counters.add(entry)
    stats = counters.by_owner(T0 + 60.999)["web-1"]
    assert stats.requests == 650
    assert stats.rps_1s == 50
    assert stats.rps_10s == pytest.approx((9 * 10 + 50) / 10)
    assert stats.rps_60s == pytest.approx((59 * 10 + 50) / 60)
    assert len(stats.per_second) == 60 and stats.per_second[-1] == 50 and stats.per_second[0] == 10
    later = counters.by_owner(T0 + 200)["web-1"]
    assert later.requests == 650 and later.rps_60s == 0 and later.p95_ms is None


def test_errors_count_5xx_answers_and_failed_tries_on_the_replica_tried() -> None:
    counters = TrafficCounters()
    for address, name in ((A, "web-1"), (B, "web-2")):
        counters.assign(address, name)
    for text in (
        line(ns(0), upstream=f"{A}, {B}", upstream_status="502, 200"),  # A failed, B answered
        line(ns(0.1), upstream=B, status=500),
        line(ns(0.2), upstream="replicas", status=502, upstream_status="-", upstream_time="-"),
        line(ns(0.3), upstream=A),
    ):
        entry = parse_line(text)
        assert entry is not None
        counters.add(entry)
    stats = counters.by_owner(T0 + 1)
    assert (stats["web-1"].requests, stats["web-1"].errors, stats["web-1"].failed_tries) == (1, 1, 1)
    assert (stats["web-2"].requests, stats["web-2"].errors, stats["web-2"].answered_5xx) == (2, 1, 1)
    assert counters.unattributed == 1 and counters.unattributed_5xx == 1
    assert counters.total_requests == 4
    assert counters.overall(T0 + 1).answered_5xx == 2


def test_latency_percentiles_come_from_the_answering_replica() -> None:
    counters = TrafficCounters()
    counters.assign(A, "web-1")
    for i in range(100):
        entry = parse_line(line(ns(i / 100), upstream_time=f"{(i + 1) / 1000:.3f}"))
        assert entry is not None
        counters.add(entry)
    stats = counters.by_owner(T0 + 1)["web-1"]
    assert (stats.p50_ms, stats.p95_ms, stats.p99_ms) == (50.0, 95.0, 99.0)
