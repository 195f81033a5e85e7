"""Under CI nothing skips silently: one helper says what a true `CI` is, and a skip fails the run."""

from __future__ import annotations

import pytest

from lab.pytest_plugin import in_ci

pytest_plugins = ["pytester"]

USER_TESTS = """
import pytest

def test_passes():
    pass

def test_skips():
    pytest.skip("no frobnicator here")

@pytest.mark.skipif(True, reason="marked away")
def test_skipped_by_mark():
    pass

@pytest.mark.xfail(reason="known bug", strict=True)
def test_expected_failure():
    assert False
"""


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "True", " yes ", "on"])
def test_true_ci_values(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci()


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off", "sometimes"])
def test_other_ci_values_are_not_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert not in_ci()


def test_not_ci_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert not in_ci()


def _run(pytester: pytest.Pytester, forbid: bool) -> pytest.RunResult:
    pytester.makeini(f"[pytest]\nlab_no_skips_in_ci = {'true' if forbid else 'false'}\n")
    pytester.makepyfile(test_user=USER_TESTS)
    return pytester.runpytest("-p", "no:cacheprovider", "-rA")


def test_under_ci_a_skip_fails_and_says_why(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "yes")
    result = _run(pytester, forbid=True)
    result.assert_outcomes(passed=1, failed=1, errors=1, xfailed=1)  # the mark skips in setup: an error
    result.stdout.fnmatch_lines(["*CI=yes, where nothing may skip, and this skipped: no frobnicator here*"])
    result.stdout.fnmatch_lines(["*CI=yes, where nothing may skip, and this skipped: marked away*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_a_module_that_skips_at_collection_fails_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    pytester.makeini("[pytest]\nlab_no_skips_in_ci = true\n")
    pytester.makepyfile(test_gone="import pytest\npytest.importorskip('no_such_module_here')\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*CI=true, where nothing may skip, and this skipped:*no_such_module_here*"])
    assert result.ret != pytest.ExitCode.OK


def test_outside_ci_skips_stay_skips(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    _run(pytester, forbid=True).assert_outcomes(passed=1, skipped=2, xfailed=1)


def test_suites_that_did_not_ask_keep_their_skips_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    _run(pytester, forbid=False).assert_outcomes(passed=1, skipped=2, xfailed=1)


def test_this_suite_asks_for_it(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.getini("lab_no_skips_in_ci") is True
