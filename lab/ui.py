"""Terminal output: progress bars, tables and one-line errors (the only rich user)."""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from lab.describe import describe
from lab.errors import ExitCode
from lab.progress import ProgressFn
from lab.results import ExperimentResult, LabStatus, MemberStatus, NodeInfo, RegistryStatus, VerifyResult
from lab.spec import format_duration

out = Console()
err = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(title: str, *, enabled: bool = True) -> Iterator[ProgressFn]:
    """A single-line progress bar on stderr; yields the callback long-running work reports to.

    Only on a terminal: in pipes and CI logs a redrawn bar is noise.
    """
    if not enabled or not err.is_terminal:
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
    """One line on stderr, never wrapped (a script may grep it)."""
    err.print(message, highlight=False, soft_wrap=True)


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
    on_swarm = lab.engine == "swarm"
    table = Table(
        title=f"lab {lab.name}  {lab.url}  ({lab.algorithm or 'unknown method'}{', on swarm' if on_swarm else ''})",
        title_justify="left",
    )
    columns = ("task" if on_swarm else "container", "role", "state", "health")
    for column in (*columns, *(("node",) if on_swarm else ()), "image", "site version"):
        table.add_column(column)
    members: list[MemberStatus] = [
        *([lab.load_balancer] if lab.load_balancer else []),
        *([lab.watcher] if lab.watcher else []),
        *lab.replicas,
    ]
    for m in members:
        style = _STATE_STYLE.get(m.state, "")
        health_style = (
            "green" if m.health.startswith("ok") else ("red" if m.health.startswith("failing") else "dim")
        )
        role = {"lb": "load balancer", "watcher": "watcher (upstream)"}.get(m.role) or _replica_role(m)
        node = (m.node or ("(manager)" if m.role in ("lb", "watcher") else "-"),) if on_swarm else ()
        table.add_row(
            m.name,
            role,
            f"[{style}]{m.state}[/]" if style else m.state,
            f"[{health_style}]{m.health}[/]",
            *node,
            m.image,
            m.site_version or "-",
        )
    notes = [f"[red]stuck network[/] {n.name}: {n.reason}" for n in lab.stuck_networks]
    if on_swarm:
        notes.append(nodes_line(lab.replicas))
        if lab.upstream_change:
            notes.append(upstream_change_line(lab.upstream_change))
    if lab.site_mount:
        notes.append(f"[yellow]site mounted[/] read-only from {escape(lab.site_mount)} (development mode)")
    if notes:
        table.caption = "\n".join(notes)
        table.caption_justify = "left"
    return table


def nodes_line(replicas: Sequence[MemberStatus]) -> str:
    """ "replicas per node: lab-node-1 2, lab-node-2 1" (running tasks)."""
    counts = Counter(m.node for m in replicas if m.state == "running")
    spread = ", ".join(f"{node} {n}" for node, n in sorted(counts.items())) or "none running"
    return f"replicas per node: {spread}"


def upstream_change_line(change: Mapping[str, object]) -> str:
    """The watcher's last change of the upstream, in words."""
    added, removed = change.get("added"), change.get("removed")
    parts = [f"+{a}" for a in (added if isinstance(added, list) else [])]
    parts += [f"-{r}" for r in (removed if isinstance(removed, list) else [])]
    at = change.get("at")
    ago = f", {format_duration(time.time() - float(at))} ago" if isinstance(at, int | float) else ""
    latency = change.get("latency_s")
    after = f" {float(latency):.2f} s after the tasks changed" if isinstance(latency, int | float) else ""
    what = "; ".join(parts) or "config re-rendered"
    return f"upstream last changed{after}{ago} ({change.get('members', '?')} tasks): {what}"


def _replica_role(m: MemberStatus) -> str:
    """ "replica 4", and its slot when a deploy put it in another one's place (weights follow slots)."""
    return f"replica {m.index}" + (f" (slot {m.slot})" if m.slot and m.slot != m.index else "")


def timings_table(phases: Sequence[tuple[str, float]], total: float) -> Table:
    """`lab up --timings`: each phase in the order it ended; phases "beside" others overlap them."""
    table = Table(title="lab up: where the time went", title_justify="left")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    for name, seconds in phases:
        table.add_row(name, f"{seconds:.3f}")
    table.add_row("[bold]total (since the command's imports began)[/]", f"[bold]{total:.3f}[/]")
    return table


# lab verify / compare ------------------------------------------------------------------------
_VERDICT_STYLE = {
    "balanced": "bold green",
    "skewed": "bold yellow",
    "inconclusive": "bold blue",
    "failed": "bold red",
}
_EXIT_CODES = {
    "balanced": ExitCode.OK,
    "skewed": ExitCode.SKEWED,
    "inconclusive": ExitCode.INCONCLUSIVE,
}
_SEVERITY = ("balanced", "inconclusive", "skewed", "failed")  # for the worst of several runs
_BAR_WIDTH = 30
_TABLE_WITHOUT_BAR = 84  # columns the verify table needs besides the bar and the names


def verdict_exit_code(verdict: str) -> int:
    return _EXIT_CODES.get(verdict, ExitCode.FAILED)


def worst_verdict(verdicts: list[str]) -> str:
    """failed over skewed over inconclusive over balanced (unknown verdicts count as failed)."""
    return max(verdicts, key=lambda v: _SEVERITY.index(v) if v in _SEVERITY else len(_SEVERITY))


def _bar(share: float, expected: float, scale: float, width: int = _BAR_WIDTH) -> str:
    """A text bar of the observed share with a `|` where the expected share ends."""
    filled = round(share / scale * width) if scale else 0
    mark = round(expected / scale * width) if scale else 0
    cells = ["█" if i < filled else " " for i in range(width + 1)]
    if 0 <= mark <= width:
        cells[mark] = "[bold magenta]|[/]" if cells[mark] == " " else "[magenta]▌[/]"
    return "".join(cells)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def verify_table(result: VerifyResult) -> Table:
    weights = f" weights {','.join(map(str, result.weights))}" if result.weights else ""
    title = f"{result.lab or result.url}: {result.method}{weights}, {result.requests:,} requests"
    table = Table(title=title, title_justify="left")
    # Names are never cut; on a narrow terminal (or a pipe, 80 columns) the bar gives way first.
    names = max((len(name) for name in result.replicas), default=8)
    # One content version is said in a line below the table; a column only when there are several.
    split = len(result.contents) > 1
    served = {name: _contents_cell(r.contents) for name, r in result.replicas.items()}
    content_width = max((len(text) for text in served.values()), default=0) + 3 if split else 0
    bar_width = min(_BAR_WIDTH, out.width - _TABLE_WITHOUT_BAR - names - content_width)
    table.add_column("replica", no_wrap=True)
    for column in ("count", "share", "expected"):
        table.add_column(column, justify="right", no_wrap=True)
    if bar_width >= 8:
        table.add_column("", no_wrap=True)
    for column in ("p50 ms", "p95 ms", "p99 ms", "5xx", "access log"):
        table.add_column(column, justify="right")
    if split:
        table.add_column("content", no_wrap=True)
    scale = max(
        [r.share for r in result.replicas.values()] + [r.expected_share for r in result.replicas.values()]
    )
    for r in result.replicas.values():
        logged = "-" if r.access_log_count is None else f"{r.access_log_count:,}"
        if r.access_log_count is not None and r.access_log_count != r.count:
            logged = f"[red]{logged}[/]"
        lat = r.latency_ms
        bar = [_bar(r.share, r.expected_share, scale, bar_width)] if bar_width >= 8 else []
        expected = f"{r.expected_share:.1%}"
        if r.expected_low is not None and r.expected_high is not None:
            expected = f"{r.expected_low:.1%}-{r.expected_high:.1%}"
        table.add_row(
            r.name, f"{r.count:,}", f"{r.share:.1%}", expected, *bar,
            _ms(lat.p50 if lat else None), _ms(lat.p95 if lat else None), _ms(lat.p99 if lat else None),
            str(r.errors), logged, *([escape(served[r.name])] if split else []),
        )  # fmt: skip
    return table


def node_spread_table(result: VerifyResult) -> Table:
    """A swarm lab's traffic per node (its replicas' answers together)."""
    table = Table(title="spread per node", title_justify="left")
    for column, justify in (("node", "left"), ("replicas", "right"), ("ok", "right"), ("share", "right"),
                            ("expected", "right"), ("", "left")):  # fmt: skip
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    scale = max([n.share for n in result.by_node] + [n.expected_share for n in result.by_node] + [1e-9])
    for n in result.by_node:
        table.add_row(
            n.node,
            str(len(n.replicas)),
            f"{n.count:,}",
            f"{n.share:.1%}",
            f"{n.expected_share:.1%}",
            _bar(n.share, n.expected_share, scale),
        )
    return table


def _contents_cell(contents: dict[str, int]) -> str:
    """The content version(s) a replica served: one name, or each with its count."""
    if len(contents) <= 1:
        return next(iter(contents), "-")
    return ", ".join(f"{name} ({n:,})" for name, n in sorted(contents.items(), key=lambda kv: -kv[1]))


def content_table(result: VerifyResult) -> Table:
    """The answers grouped by content version (what was served), beside the grouping by replica."""
    table = Table(
        title="content versions (the same page on any replica is one version)", title_justify="left"
    )
    for column, justify in (("content version", "left"), ("answers", "right"), ("share", "right"),
                            ("replicas", "left")):  # fmt: skip
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for group in result.contents:
        replicas = ", ".join(f"{name} ({n:,})" for name, n in group.replicas.items())
        table.add_row(escape(group.version), f"{group.count:,}", f"{group.share:.1%}", escape(replicas))
    return table


def verify_summary(result: VerifyResult) -> str:
    style = _VERDICT_STYLE.get(result.verdict, "bold")
    lat = result.latency_ms
    causes = ", ".join(f"{k} {v}" for k, v in result.errors_by_cause.items()) or "none"
    described = describe(result)
    lines = [f"[{style}]{result.verdict.upper()}[/]: {escape(result.reason)}"]
    if result.advice:
        lines.append(f"[bold]to decide:[/] {escape(result.advice)}")
    lines += [
        f"test: {escape(described.name)}: {escape(described.summary)}",
        escape(described.sentence),
        f"largest deviation from the equal (weighted) share: {result.max_deviation:.1%}",
        f"{result.ok:,} ok, {result.errors:,} errors ({causes}), {result.retried:,} retried on a fresh connection; "
        f"{result.throughput_rps:,.0f} req/s over {result.duration_s:.1f} s with {result.concurrency} connections",
    ]
    if lat:
        lines.append(
            f"latency: p50 {lat.p50:.1f} ms, p95 {lat.p95:.1f} ms, p99 {lat.p99:.1f} ms, max {lat.max:.1f} ms"
        )
    if len(result.contents) == 1:
        lines.append(f"content: every answer carried the same content ({escape(result.contents[0].version)})")
    check = result.access_log
    if check.checked:
        lines.append(
            f"access log: {check.log_total:,} requests logged, "
            + ("the same per replica as counted here" if check.matches else f"[red]differs: {check.note}[/]")
        )
    lines += [f"note: {escape(n)}" for n in result.notes]
    return "\n".join(lines)


def compare_table(results: list[VerifyResult]) -> Table:
    table = Table(title="balancing methods compared on the same lab", title_justify="left")
    for column in ("method", "verdict", "test", "largest deviation", "req/s", "p95 ms", "errors", "shares"):
        table.add_column(column)
    for r in results:
        style = _VERDICT_STYLE.get(r.verdict, "")
        shares = " ".join(f"{x.share:.0%}" for x in r.replicas.values())
        table.add_row(
            r.method, f"[{style}]{r.verdict}[/]", escape(describe(r).name), f"{r.max_deviation:.1%}",
            f"{r.throughput_rps:,.0f}", _ms(r.latency_ms.p95 if r.latency_ms else None), str(r.errors), shares,
        )  # fmt: skip
    return table


# lab experiment ------------------------------------------------------------------------------
# Imported here so that this section stays one addition at the end of the module.


_EXPERIMENT_STYLE = {
    "zero-loss": "bold green",
    "recovered": "bold green",
    "lossy": "bold red",
    "failed": "bold red",
}
_TIMELINE_ROWS = 30  # longer runs are shown in groups of seconds


def _replica_label(lab: str, replica: str) -> str:
    return replica.removeprefix(f"{lab}-")


def experiment_timeline_table(result: ExperimentResult) -> Table:
    """The timeline, condensed to at most ~30 rows, with the events that fell in each row."""
    timeline = result.timeline
    group = max(1, -(-len(timeline) // _TIMELINE_ROWS))
    unit = "second" if group == 1 else f"{group} seconds"
    table = Table(
        title=f"{result.lab}: {result.kind} under {result.rate:g} req/s for {result.duration:g} s (one row per {unit})",
        title_justify="left",
    )
    for column, justify in [("s", "right"), ("sent", "right"), ("ok", "right"), ("failed", "right"),
                            ("retried", "right"), ("replicas answering (share)", "left"), ("events", "left")]:  # fmt: skip
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    numbered = list(enumerate(result.events, start=1))
    for start in range(0, len(timeline), group):
        seconds = timeline[start : start + group]
        sent = sum(s.sent for s in seconds)
        ok = sum(s.ok for s in seconds)
        failed = sum(s.errors for s in seconds)
        retried = sum(s.retried for s in seconds)
        served: dict[str, int] = {}
        causes: dict[str, int] = {}
        for s in seconds:
            for replica, n in s.by_replica.items():
                served[replica] = served.get(replica, 0) + n
            for cause, n in s.errors_by_cause.items():
                causes[cause] = causes.get(cause, 0) + n
        counts = [n for n in served.values() if n]
        if len(counts) <= 4:
            shares = " ".join(f"{_replica_label(result.lab, r)} {n / ok:.0%}" for r, n in served.items() if n)
        else:
            shares = f"{min(counts) / ok:.0%}-{max(counts) / ok:.0%} each"
        end = seconds[-1].t + 1
        events = ", ".join(str(i) for i, e in numbered if seconds[0].t <= e.t < end)
        failed_text = (
            f"[red]{failed:,}[/] ({', '.join(f'{k} {v}' for k, v in causes.items() if v)})" if failed else "0"
        )
        label = str(seconds[0].t) if group == 1 else f"{seconds[0].t}-{seconds[-1].t}"
        table.add_row(
            label, f"{sent:,}", f"{ok:,}", failed_text, f"[yellow]{retried:,}[/]" if retried else "0",
            f"{len(served)}: {shares}" if served else "[red]none[/]", events,
        )  # fmt: skip
    return table


def experiment_events_table(result: ExperimentResult) -> Table:
    table = Table(title="events (seconds since the load started)", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("s", justify="right")
    table.add_column("what happened")
    for i, event in enumerate(result.events, start=1):
        style = "bold" if event.source == "step" else ("red" if event.source == "note" else "")
        text = f"[{style}]{escape(event.text)}[/]" if style else escape(event.text)
        table.add_row(str(i), f"{event.t:.2f}", text)
    return table


def experiment_summary(result: ExperimentResult) -> str:
    style = _EXPERIMENT_STYLE.get(result.verdict, "bold")
    causes = ", ".join(f"{k} {v:,}" for k, v in result.failed_by_cause.items() if v) or "none"
    if result.first_error_s is None:
        recovery = "no errors"
    elif result.recovery_s is None:
        recovery = f"errors from second {result.first_error_s:.0f} to the end: not recovered"
    else:
        recovery = f"{result.recovery_s:.0f} s (errors from second {result.first_error_s:.0f})"
    lines = [
        f"[{style}]{result.verdict.upper()}[/]: {escape(result.reason)}",
        f"{result.sent:,} sent, {result.ok:,} ok, {result.failed:,} failed ({causes}), "
        f"{result.retried:,} retried on a fresh connection; nginx tried another replica "
        f"{result.upstream_retries:,} times",
        f"recovery: {recovery}",
    ]
    if result.latency_ms:
        lat = result.latency_ms
        lines.append(f"latency: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms")
    lines += swarm_lines(result.extra)
    if result.operation_error:
        lines.append(f"[bold red]the operation failed:[/] {escape(result.operation_error)}")
    for check in result.checks:
        mark = "[green]✓[/]" if check.passed else ("[red]✗[/]" if check.judged else "[yellow]?[/]")
        lines.append(f"{mark} {escape(check.name)}: {escape(check.detail)}")
    lines += [f"note: {escape(n)}" for n in result.notes]
    return "\n".join(lines)


def swarm_lines(extra: Mapping[str, object]) -> list[str]:
    """What a swarm experiment found: how long Swarm took to repair it."""
    lines = []
    if "time_to_recover_s" in extra:
        took = extra["time_to_recover_s"]
        down = extra.get("node_down_after_s")
        moved = extra.get("rescheduled") or []
        lines.append(
            f"time to recover: {f'{took:.1f} s' if isinstance(took, int | float) else 'not recovered'} "
            f"after node {extra.get('killed_node')} was killed"
            + (f" (marked down after {down:.1f} s)" if isinstance(down, int | float) else "")
        )
        if isinstance(moved, list) and moved:
            lines.append(f"rescheduled: {', '.join(escape(str(m)) for m in moved)}")
    if isinstance(extra.get("replaced_after_s"), int | float):
        lines.append(
            f"Swarm replaced {extra.get('broken')} in {extra['replaced_after_s']:.1f} s (new task in the upstream)"
        )
    return lines


# lab registry / lab nodes --------------------------------------------------------------------
def registry_summary(found: RegistryStatus) -> str:
    volume = f"images on volume {found.volume}" if found.volume_exists else "no image volume"
    if found.state == "absent":
        return f"registry {found.name} is not running ({volume}); start it with `lab registry up`"
    where = found.url or "not published"
    count = sum(len(tags) for tags in found.repositories.values())
    return f"registry {found.name}: {found.state}, {where}, {count} tags ({volume})"


def registry_table(found: RegistryStatus) -> Table:
    table = Table(title=registry_summary(found), title_justify="left")
    table.add_column("repository", no_wrap=True)
    table.add_column("tags")
    for repository, tags in sorted(found.repositories.items()):
        table.add_row(repository, ", ".join(tags) or "-")
    return table


def nodes_table(nodes: Sequence[NodeInfo]) -> Table:
    table = Table(title=f"{len(nodes)} swarm nodes on this desk", title_justify="left")
    for column in ("node", "container", "address", "swarm", "availability", "engine"):
        table.add_column(column, no_wrap=True)
    for n in nodes:
        style = _STATE_STYLE.get(n.container, "")
        swarm_style = "green" if n.swarm == "ready" else "red"
        table.add_row(
            n.name,
            f"[{style}]{n.container}[/]" if style else n.container,
            n.address or "-",
            f"[{swarm_style}]{n.swarm}[/]",
            n.availability or "-",
            n.engine or "-",
        )
    return table
