"""The callbacks long work reports through, defined once (pure)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

ProgressFn = Callable[[str, float | None], None]  # (what is happening, fraction done or None)
EventFn = Callable[[str], None]  # one line about something that happened


def quiet(_description: str, _fraction: float | None) -> None:
    """A ProgressFn that shows nothing."""


def as_progress(on_event: EventFn | None) -> ProgressFn:
    """A ProgressFn that tells each description to `on_event` (nothing when it is None)."""

    def report(description: str, _fraction: float | None) -> None:
        if on_event is not None:
            on_event(description)

    return report


class Timings:
    """How long each phase of some work took (`lab up --timings`); phases may overlap (threads)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.phases: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        began = self.clock()
        try:
            yield
        finally:
            self.phases.append((name, self.clock() - began))

    def add(self, name: str, seconds: float) -> None:
        self.phases.append((name, seconds))
