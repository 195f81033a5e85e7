import pytest

from lab import verify as verifier
from lab.errors import InvalidInput
from lab.traffic import Tally


def test_load_plans_are_bounded_and_default_to_1000_requests() -> None:
    plan = verifier.LoadPlan.create(requests=None, duration=None, concurrency="4", clients="0")
    assert (plan.requests, plan.duration, plan.concurrency, plan.clients) == (1000, None, 4, 0)
    timed = verifier.LoadPlan.create(requests=None, duration="2.5", concurrency=1, clients=10)
    assert timed.requests is None and timed.duration == 2.5


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("requests", 0, "requests must be between 1"),
        ("requests", "many", "whole number"),
        ("concurrency", 0, "concurrency must be between 1"),
        ("concurrency", 5000, "concurrency must be between 1"),
        ("duration", 0, "more than 0"),
        ("duration", -1, "more than 0"),
        ("duration", 7200, "at most 3600"),
        ("clients", -1, "clients must be between 0"),
    ],
)
def test_bad_load_plans_are_refused(field: str, value: object, message: str) -> None:
    values: dict[str, object] = {"requests": None, "duration": None, "concurrency": 1, "clients": 0}
    with pytest.raises(InvalidInput, match=message):
        verifier.LoadPlan.create(**(values | {field: value}))


@pytest.mark.parametrize(
    "url", ["http://10.1.2.3:80/", "https://127.0.0.1/", "http://example.com/", "ftp://127.0.0.1/"]
)
def test_url_targets_must_be_plain_http_on_loopback(url: str) -> None:
    with pytest.raises(InvalidInput, match="loopback only"):
        verifier.url_target(url)


def test_url_target_takes_method_and_weights() -> None:
    target = verifier.url_target("http://127.0.0.1:8080/", "random", "2,1")
    assert (target.method, target.weights, target.replicas) == ("random", (2, 1), None)


LOG = [
    '172.20.0.1 [28/Nov/2026:05:00:00 +0000] "GET / HTTP/1.1" 200 612 upstream=172.21.0.2:80 upstream_status=200 '
    'request_time=0.001 upstream_time=0.001 client="c1" run="run1"',
    '172.20.0.1 [28/Nov/2026:05:00:00 +0000] "GET / HTTP/1.1" 200 612 upstream=172.21.0.3:80 upstream_status=200 '
    'request_time=0.001 upstream_time=0.001 client="" run="run1"',
    # retried on another replica: the last address served it
    '172.20.0.1 [28/Nov/2026:05:00:00 +0000] "GET / HTTP/1.1" 200 612 upstream=172.21.0.4:80, 172.21.0.2:80 '
    'upstream_status=502, 200 request_time=0.001 upstream_time=0.001 client="" run="run1"',
    # another run, a 502 and an error-log line are not counted
    '172.20.0.1 [28/Nov/2026:05:00:00 +0000] "GET / HTTP/1.1" 200 612 upstream=172.21.0.2:80 upstream_status=200 '
    'request_time=0.001 upstream_time=0.001 client="" run="run2"',
    '172.20.0.1 [28/Nov/2026:05:00:00 +0000] "GET / HTTP/1.1" 502 150 upstream=172.21.0.4:80 upstream_status=502 '
    'request_time=0.001 upstream_time=0.001 client="" run="run1"',
    "2026/11/28 05:00:00 [error] 29#29: *1 connect() failed (111: Connection refused) run1",
]


def test_access_log_lines_are_counted_per_final_upstream_for_one_run() -> None:
    assert verifier.parse_access_log(LOG, "run1") == {"172.21.0.2:80": 2, "172.21.0.3:80": 1}


def test_access_log_addresses_map_to_replicas_by_what_the_answers_named() -> None:
    tally = Tally()
    tally.upstream_addrs = {"lab-web-1": {"172.21.0.2:80"}, "lab-web-2": {"172.21.0.3:80"}}
    by_replica = verifier.access_log_by_replica(
        {"172.21.0.2:80": 2, "172.21.0.3:80": 1, "10.0.0.9:80": 1}, tally
    )
    assert by_replica == {"lab-web-1": 2, "lab-web-2": 1, "unknown address 10.0.0.9:80": 1}


# Content versions -------------------------------------------------------------------------------
def test_answers_are_grouped_by_content_as_well_as_by_replica() -> None:
    tally = Tally(ok=10, sent=10)
    tally.contents = {
        ("lab-web-1", "v1", "aaaaaaaa"): 3,  # lab cp gave replica 1 a new page
        ("lab-web-2", "v1", "bbbbbbbb"): 4,
        ("lab-web-3", "v1", "bbbbbbbb"): 3,
    }
    groups = verifier.content_groups(tally)
    assert [(g.version, g.count, g.replicas) for g in groups] == [
        ("v1+bbbbbbbb", 7, {"lab-web-2": 4, "lab-web-3": 3}),
        ("v1+aaaaaaaa", 3, {"lab-web-1": 3}),
    ]
    assert groups[0].share == 0.7 and groups[0].site_version == "v1" and groups[0].digest == "bbbbbbbb"
    (note,) = verifier.content_notes(groups)
    assert note == (
        "the replicas serve 2 different contents: v1+bbbbbbbb from lab-web-2, lab-web-3; "
        "v1+aaaaaaaa from lab-web-1"
    )


def test_one_content_everywhere_is_named_by_its_site_version_and_needs_no_note() -> None:
    tally = Tally(ok=4, sent=4)
    tally.contents = {("lab-web-1", "v1", "aaaaaaaa"): 2, ("lab-web-2", "v1", "aaaaaaaa"): 2}
    groups = verifier.content_groups(tally)
    assert [(g.version, g.count) for g in groups] == [("v1", 4)]
    assert verifier.content_notes(groups) == []
    assert verifier.content_groups(Tally()) == []  # a run that kept no contents
