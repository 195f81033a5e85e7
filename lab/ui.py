"""Terminal output: progress bars, tables and one-line errors (the only rich user)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from lab.lab import LabStatus, MemberStatus, ProgressFn

out = Console()
err = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(title: str, *, enabled: bool = True) -> Iterator[ProgressFn]:
    """A single-line progress bar on stderr; yields the callback long-running work reports to."""
    if not enabled:
        yield lambda _description, _fraction: None
        return
    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(title, total=1.0)

        def report(description: str, fraction: float | None) -> None:
            if fraction is None:
                bar.update(task, description=description)
            else:
                bar.update(task, description=description, completed=max(0.0, min(1.0, fraction)))

        yield report


def error(message: str, detail: str = "") -> None:
    err.print(f"[bold red]lab: error:[/] {message}", highlight=False, soft_wrap=True)
    if detail.strip():
        err.print(detail.rstrip(), style="dim", highlight=False, markup=False)


def note(message: str) -> None:
    err.print(message, highlight=False)


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


_STATE_STYLE = {
    "running": "green",
    "exited": "red",
    "dead": "red",
    "paused": "yellow",
    "restarting": "yellow",
}


def status_table(lab: LabStatus) -> Table:
    table = Table(
        title=f"lab {lab.name}  {lab.url}  ({lab.algorithm or 'unknown method'})", title_justify="left"
    )
    for column in ("container", "role", "state", "health", "image", "site version"):
        table.add_column(column)
    members: list[MemberStatus] = ([lab.load_balancer] if lab.load_balancer else []) + list(lab.replicas)
    for m in members:
        style = _STATE_STYLE.get(m.state, "")
        health_style = (
            "green" if m.health.startswith("ok") else ("red" if m.health.startswith("failing") else "dim")
        )
        table.add_row(
            m.name,
            "load balancer" if m.role == "lb" else f"replica {m.index}",
            f"[{style}]{m.state}[/]" if style else m.state,
            f"[{health_style}]{m.health}[/]",
            m.image,
            m.site_version or "-",
        )
    return table
