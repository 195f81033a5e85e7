"""The callbacks long work reports through, defined once (pure)."""

from __future__ import annotations

from collections.abc import Callable

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
