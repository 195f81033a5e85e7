"""The transaction used by the registry and the nodes: undone on failure and Ctrl-C, kept on success."""

from __future__ import annotations

import pytest

from lab.undo import Undo, undo_on_failure


def test_steps_run_newest_first_and_a_failing_step_does_not_stop_the_rest() -> None:
    done: list[str] = []
    undo = Undo()
    undo.push("a", lambda: done.append("a"))
    undo.push("b", lambda: 1 / 0)
    undo.push("c", lambda: done.append("c"))
    failed = undo.run()
    assert done == ["c", "a"]
    assert failed and failed[0].startswith("b: ")
    assert undo.run() == []  # each step runs once


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_block_is_undone(error: BaseException) -> None:
    done: list[str] = []
    with pytest.raises(type(error)), undo_on_failure() as undo:
        undo.push("made", lambda: done.append("removed"))
        raise error
    assert done == ["removed"]


def test_a_successful_block_keeps_what_it_made() -> None:
    done: list[str] = []
    with undo_on_failure() as undo:
        undo.push("made", lambda: done.append("removed"))
    assert done == []
