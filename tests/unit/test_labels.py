import os

import pytest

from lab import labels


def test_every_resource_names_its_lab_role_and_owner() -> None:
    got = labels.for_lab("demo", labels.ROLE_WEB, replica="2", site_version="abc")
    assert got[labels.NAME] == "demo"
    assert got[labels.ROLE] == "web"
    assert got[labels.REPLICA] == "2"
    assert got[labels.SITE_VERSION] == "abc"
    assert got[labels.PID] == str(os.getpid())
    assert got[labels.SESSION]
    assert all(key.startswith("lab.") for key in got)


def test_session_id_can_be_set_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_SESSION", "pytest-abc")
    assert labels.for_lab("x", "web")[labels.SESSION] == "pytest-abc"


def test_filters_select_one_lab_and_optionally_one_role() -> None:
    assert labels.lab_filter("demo") == {"label": ["lab.name=demo"]}
    assert labels.lab_filter("demo", "lb") == {"label": ["lab.name=demo", "lab.role=lb"]}
    assert labels.any_lab_filter() == {"label": ["lab.name"]}


def test_new_session_ids_are_unique_and_not_what_old_sweeps_remove() -> None:
    first, second = labels.new_session_id(), labels.new_session_id()
    assert first != second and first.startswith("pytest.")
    assert not first.startswith("pytest-")  # older lab versions swept `pytest-<pid>-...` sessions


def test_a_sessions_labs_are_selected_without_its_reaper() -> None:
    assert labels.session_labs("s") == ["lab.session=s", "lab.name"]
    assert labels.NAME not in labels.for_session_reaper("s")
