"""Transactions: what was made is taken back on failure, and Ctrl-C cannot cut the taking back short."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C in the block (a rollback must not be left half done); a no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Undo:
    """Steps that take back what a transaction made; run newest first, each one best effort."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, step: Callable[[], object]) -> None:
        self._steps.append((what, step))

    def run(self) -> list[str]:
        """Run every step, newest first; a failing step does not stop the others. Return what failed."""
        failed = []
        while self._steps:
            what, step = self._steps.pop()
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - the rest of the rollback must still happen
                failed.append(f"{what}: {exc}")
        return failed


@contextlib.contextmanager
def undo_on_failure() -> Iterator[Undo]:
    """Yield an Undo; if the block fails or is interrupted, run it (a second Ctrl-C cannot cut it short)."""
    undo = Undo()
    try:
        yield undo
    except BaseException:
        with sigint_ignored():
            undo.run()
        raise
