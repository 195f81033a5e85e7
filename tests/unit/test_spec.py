import re
from pathlib import Path

import pytest

from lab.errors import InvalidInput
from lab.spec import DEFAULT_SITE, MAX_REPLICAS, LabSpec, parse_weights, probe_host, resize_notes


def test_defaults_describe_the_documented_lab() -> None:
    spec = LabSpec.create()
    assert (spec.name, spec.replicas, spec.port, spec.bind) == ("lab", 3, 8080, "127.0.0.1")
    assert spec.site == DEFAULT_SITE
    assert spec.replica_names() == ["lab-web-1", "lab-web-2", "lab-web-3"]
    assert spec.lb_name == "lab-lb"
    assert spec.url == "http://127.0.0.1:8080/"


@pytest.mark.parametrize(
    ("replicas", "message"),
    [
        (0, "between 1 and 64"),
        (-1, "between 1 and 64"),
        ("-3", "between 1 and 64"),
        (MAX_REPLICAS + 1, "between 1 and 64"),
        ("abc", "whole number"),
        ("2.5", "whole number"),
        ("", "whole number"),
        (True, "whole number"),
    ],
)
def test_bad_replica_counts_are_refused(replicas: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        LabSpec.create(replicas=replicas)


def test_replica_bounds_are_inclusive() -> None:
    assert LabSpec.create(replicas="1").replicas == 1
    assert LabSpec.create(replicas=MAX_REPLICAS).replicas == MAX_REPLICAS


@pytest.mark.parametrize(
    ("port", "message"),
    [
        (0, "between 1 and 65535"),
        (65536, "between 1 and 65535"),
        ("http", "whole number"),
        ("-80", "between"),
    ],
)
def test_bad_ports_are_refused(port: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        LabSpec.create(port=port)


@pytest.mark.parametrize("bind", ["localhost", "256.1.1.1", "127.0.0.1:80", "", "1.2.3"])
def test_bad_bind_addresses_are_refused(bind: str) -> None:
    with pytest.raises(InvalidInput, match="bind address"):
        LabSpec.create(bind=bind)


def test_bind_addresses_are_normalised_and_probed_on_loopback() -> None:
    assert LabSpec.create(bind="0.0.0.0").url == "http://127.0.0.1:8080/"
    assert LabSpec.create(bind="127.0.0.2").url == "http://127.0.0.2:8080/"
    assert probe_host("::1") == "[::1]"
    assert probe_host("192.168.1.10") == "127.0.0.1"


@pytest.mark.parametrize("name", ["", "Lab", "-lab", "lab_1", "a" * 41, "lab web", "lab/1"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match="lab name"):
        LabSpec.create(name=name)


def test_site_must_exist_and_hold_an_index(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        LabSpec.create(site=tmp_path / "missing")
    with pytest.raises(InvalidInput, match="no index.html"):
        LabSpec.create(site=tmp_path)
    (tmp_path / "index.html").write_text("<h1>hi</h1>")
    assert LabSpec.create(site=tmp_path).site == tmp_path.resolve()


def test_weights_need_one_positive_whole_number_per_replica() -> None:
    assert parse_weights("3,1,1", 3) == (3, 1, 1)
    assert parse_weights("", 3) == ()
    with pytest.raises(InvalidInput, match="2 weights for 3 replicas"):
        parse_weights("3,1", 3)
    with pytest.raises(InvalidInput, match="between 1 and 1000"):
        parse_weights("0,1,1", 3)
    with pytest.raises(InvalidInput, match="whole number"):
        parse_weights("a,1,1", 3)


def test_unknown_algorithm_lists_the_known_ones() -> None:
    with pytest.raises(InvalidInput, match="round_robin, least_conn"):
        LabSpec.create(algorithm="fastest")
    assert LabSpec.create(algorithm="least-conn").algorithm == "least_conn"


@pytest.mark.parametrize(
    "key", ["$uri; return 500", "$uri}", "$uri{", '"$uri"', "$uri #", "$uri\nreturn", "", "a" * 129, "${uri}"]
)
def test_hash_keys_that_could_break_out_of_the_directive_are_refused(key: str) -> None:
    with pytest.raises(InvalidInput, match="hash key"):
        LabSpec.create(algorithm="hash", hash_key=key)


@pytest.mark.parametrize(
    "key", ["$request_uri", "$http_x_client_id", "$cookie_lab_client", "$remote_addr:$uri"]
)
def test_ordinary_hash_keys_are_accepted(key: str) -> None:
    assert LabSpec.create(algorithm="hash", hash_key=key).hash_key == key


def test_backup_must_be_a_replica_and_allowed_by_the_method() -> None:
    assert LabSpec.create(replicas=3, backup="2").backup == 2
    with pytest.raises(InvalidInput, match="one of 1..3"):
        LabSpec.create(replicas=3, backup=4)
    with pytest.raises(InvalidInput, match="no backup replica with hash"):
        LabSpec.create(replicas=3, backup=1, algorithm="hash")
    with pytest.raises(InvalidInput, match="at least one other"):
        LabSpec.create(replicas=1, backup=1)


def test_specs_round_trip_through_plain_values_and_changes_are_validated() -> None:
    spec = LabSpec.create(replicas=3, weights="3,1,1", algorithm="least_conn")
    assert LabSpec.from_dict(spec.as_dict()) == spec
    assert spec.with_changes(algorithm="random").algorithm == "random"
    with pytest.raises(InvalidInput, match="2 weights for 3"):
        spec.with_changes(weights="1,1")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("90s", 90), ("45", 45), ("7d", 604800), ("2H", 7200)],
)
def test_a_ttl_is_a_duration(text: str, seconds: int) -> None:
    from lab.spec import parse_ttl

    assert parse_ttl(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "ttl must be between 10s and 7d (a week), not 0"),
        ("5s", "ttl must be between 10s and 7d (a week), not 5s"),
        ("8d", "ttl must be between 10s and 7d (a week), not 8d"),
        ("169h", "not 7d 1h"),
        ("abc", "ttl must be a duration such as 30m, 2h or 1h30m, not 'abc'"),
        ("-5m", "not '-5m'"),
        ("1.5h", "not '1.5h'"),
        ("", "not ''"),
    ],
)
def test_a_bad_ttl_is_one_line(text: str, message: str) -> None:
    from lab.spec import parse_ttl

    with pytest.raises(InvalidInput, match=re.escape(message)):
        parse_ttl(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.6, "1m"), (61, "1m 1s"), (1800, "30m"), (5400, "1h 30m"), (93661, "1d 2h"), (-3, "0s")],
)
def test_durations_read_shortly(seconds: float, text: str) -> None:
    from lab.spec import format_duration

    assert format_duration(seconds) == text


# Resizing: weights and the backup follow replica slots ------------------------------------------------
def test_growing_keeps_each_slots_weight_and_new_slots_get_weight_1() -> None:
    spec = LabSpec.create(replicas=3, weights="3,1,2", backup=2, check_site=False)
    grown = spec.resized(5)
    assert (grown.weights, grown.backup) == ((3, 1, 2, 1, 1), 2)
    assert resize_notes(spec, grown) == ["new replicas 4-5 get weight 1 (weights now 3,1,2,1,1)"]
    assert resize_notes(spec, spec.resized(4)) == ["new replica 4 gets weight 1 (weights now 3,1,2,1)"]
    assert [grown.weight_of(s) for s in range(0, 7)] == [1, 3, 1, 2, 1, 1, 1]


def test_shrinking_drops_the_weights_and_the_backup_of_slots_that_go() -> None:
    spec = LabSpec.create(replicas=4, weights="3,1,2,5", backup=4, check_site=False)
    shrunk = spec.resized(2)
    assert (shrunk.weights, shrunk.backup) == ((3, 1), None)
    assert resize_notes(spec, shrunk) == [
        "weights now 3,1",
        "replica 4 is no longer a backup: its slot is gone",
    ]
    alone = LabSpec.create(replicas=2, backup=1, check_site=False).resized(1)
    assert alone.backup is None
    assert resize_notes(LabSpec.create(replicas=2, backup=1, check_site=False), alone) == [
        "replica 1 is no longer a backup: a backup needs another replica beside it"
    ]


def test_an_unweighted_lab_stays_unweighted_and_says_nothing() -> None:
    spec = LabSpec.create(replicas=3, check_site=False)
    assert spec.resized(6).weights == () and resize_notes(spec, spec.resized(6)) == []
