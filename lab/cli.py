"""The `lab` command: parses arguments, calls the orchestrator, prints results, maps errors to exits.

Each command imports what it uses when it runs: `lab --help` loads click and the pure spec only,
and `lab up` neither the load engine nor the statistics.
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()  # `lab up --timings` counts the imports from here

import contextlib  # noqa: E402
import importlib  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from types import FrameType, ModuleType  # noqa: E402
from typing import TYPE_CHECKING, Any, TypeVar  # noqa: E402

import click  # noqa: E402

from lab.errors import ExitCode, InvalidInput, LabError  # noqa: E402
from lab.spec import (  # noqa: E402
    ALGORITHMS,
    DEFAULT_BIND,
    DEFAULT_ENGINE,
    DEFAULT_NAME,
    DEFAULT_PORT,
    DEFAULT_REPLICAS,
    DEFAULT_SITE,
    MAX_REPLICAS,
    LabSpec,
    format_duration,
    parse_algorithm,
    parse_bind,
    parse_port,
    parse_replicas,
    parse_site,
    parse_ttl,
    parse_version_tag,
)

if TYPE_CHECKING:
    from lab.docker_ops import Engine
    from lab.orchestrator import FromRegistry
    from lab.results import LabStatus

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_REGISTRY, DEFAULT_REGISTRY_PORT = "lab-registry", 5000  # lab.registry checks they agree


def _connect(*, ping: bool = True) -> Engine:
    from lab.docker_ops import Engine

    return Engine.connect(ping=ping)


# Values are taken as text and validated by LabSpec, so every bad value gets the same one-line error.
name_option = click.option("--name", default=DEFAULT_NAME, show_default=True, help="Name of the lab.")


def _options(*options: Callable[[F], F]) -> Callable[[F], F]:
    def apply(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return apply


spec_options = _options(
    name_option,
    click.option("--replicas", default=str(DEFAULT_REPLICAS), show_default=True,
                 help=f"Number of httpd replicas (1-{MAX_REPLICAS})."),
    click.option("--port", default=str(DEFAULT_PORT), show_default=True, help="Port the load balancer publishes."),
    click.option("--bind", default=DEFAULT_BIND, show_default=True, help="Address the published port is bound to."),
    click.option("--site", default=str(DEFAULT_SITE), show_default="the bundled site/",
                 help="Directory with the static site (must hold index.html)."),
)  # fmt: skip

# Unset options keep what the lab has (configure) or the defaults (up, render).
balance_options = _options(
    click.option("--algorithm", default=None, help=f"Balancing method: {', '.join(ALGORITHMS)}."),
    click.option("--weights", default=None, help="One weight per replica, e.g. 3,1,1."),
    click.option("--hash-key", default=None, help="Key for --algorithm hash, e.g. $request_uri or $http_x_client_id."),
    click.option("--consistent/--no-consistent", default=None, help="Consistent (ketama) hashing for hash."),
    click.option("--backup", default=None, help="Replica number used only when all others are down."),
    click.option("--max-fails", default=None, help="Failed attempts before a replica is taken out (0: never)."),
    click.option("--fail-timeout", default=None, help="Seconds a failed replica stays out."),
)  # fmt: skip


# Where `up` takes the site from, besides the default (copied into an image built here).
site_source_options = _options(
    click.option("--mount-site", is_flag=True, help="Bind-mount the site folder read-only (edits are served at once)."),
    click.option("--from-registry", is_flag=True, help="Pull the site image from the lab's registry, no local build."),
    click.option("--tag", default=None, help="With --from-registry: the tag to pull (default: the site's version)."),
    click.option("--registry", "registry_name", default=DEFAULT_REGISTRY, show_default=True,
                 help="With --from-registry: the registry's name."),
)  # fmt: skip


def _balance(**values: object) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lab")
def cli() -> None:
    """N Apache httpd replicas behind an nginx load balancer, on one Docker engine."""


@cli.command()
@spec_options
@balance_options
@click.option(
    "--ttl", default=None, help="Remove the lab by itself after this long: 30m, 2h, 1h30m (10s to 7d)."
)
@click.option(
    "--engine",
    default=DEFAULT_ENGINE,
    show_default=True,
    help="docker: a container per replica on this engine; swarm: a replicated service on this engine's swarm.",
)
@click.option(
    "--init",
    is_flag=True,
    help="--engine swarm: make this engine a swarm manager if it is in no swarm (the last `lab down` leaves it).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@click.option("--timings", is_flag=True, help="Print how long each phase took.")
@site_source_options
def up(
    name: str, replicas: str, port: str, bind: str, site: str, ttl: str | None, engine: str, init: bool,
    quiet: bool, timings: bool, mount_site: bool, from_registry: bool, tag: str | None, registry_name: str,
    **balance: object,
) -> None:  # fmt: skip
    """Build the site image and start the replicas and the load balancer."""
    spec = LabSpec.create(
        name=name, replicas=replicas, port=port, bind=bind, site=site, engine=engine, mount_site=mount_site,
        **_balance(**balance),
    )  # fmt: skip
    if init and spec.engine != "swarm":
        raise InvalidInput("--init is for --engine swarm (it makes this engine a swarm manager)")
    seconds = parse_ttl(ttl) if ttl is not None else None
    _check_site_source(from_registry, tag)
    from lab.progress import Timings
    from lab.progress import quiet as no_progress

    record = Timings()
    record.add("imports (the command line)", record.clock() - _STARTED)
    with record.phase("imports (the engine's client, the orchestrator), engine connect"):
        docker_engine = _connect(ping=False)  # its first question (is the lab up already?) asks anyway
        # The table at the end (rich) and the nginx config (jinja2) are needed later: they load in
        # the background while `up` waits for the engine. A progress bar needs rich at once.
        shown = not quiet and sys.stderr.isatty()
        if not shown:
            threading.Thread(target=_preload, args=("lab.ui", "jinja2"), daemon=True).start()
        from lab import orchestrator
    source = _registry_source(docker_engine, registry_name, tag) if from_registry else None
    with contextlib.ExitStack() as stack:
        progress = stack.enter_context(_ui().progress_bar(f"lab up {spec.name}")) if shown else no_progress
        lab_status = orchestrator.up(
            docker_engine, spec, progress, ttl=seconds, timings=record, init=init, from_registry=source
        )
    ui = _ui()
    ui.out.print(ui.status_table(lab_status))
    ui.out.print(f"[bold green]lab {spec.name} is up:[/] {spec.url}  ({spec.replicas} replicas answered)")
    if lab_status.stuck_networks:
        ui.note(orchestrator.stuck_note(spec.name, lab_status.stuck_networks))
    _print_expiry(lab_status)
    if timings:
        ui.out.print(ui.timings_table(record.phases, time.perf_counter() - _STARTED))


def _check_site_source(from_registry: bool, tag: str | None) -> None:
    if tag is not None and not from_registry:
        raise InvalidInput("--tag is for --from-registry (the tag to pull)")
    if tag is not None:
        parse_version_tag(tag)


def _registry_source(engine: Engine, registry_name: str, tag: str | None) -> FromRegistry:
    """Where `up --from-registry` pulls from: refused at once when the registry is not serving."""
    from lab import orchestrator
    from lab import registry as registries

    repository = registries.serving_repository(engine, registry_name, nothing="nothing was started")
    return orchestrator.FromRegistry(repository, tag)


def _preload(*modules: str) -> None:
    for module in modules:
        importlib.import_module(module)


def _ui() -> ModuleType:
    from lab import ui

    return ui


def _print_expiry(lab_status: LabStatus) -> None:
    from lab import ui

    if lab_status.expires_at is not None:
        left = format_duration(lab_status.expires_at - time.time())
        at = time.strftime("%H:%M:%S", time.localtime(lab_status.expires_at))
        ui.out.print(f"lab {lab_status.name} removes itself in {left} (at {at}; `lab down` removes it now)")


@cli.command()
@name_option
def down(name: str) -> None:
    """Remove every container, network and volume of the lab (found by label).

    What the engine keeps is named with the reason; the exit status is non-zero only if
    something of the lab still runs.
    """
    from lab import orchestrator, ui

    removed = orchestrator.down(_connect(), name)
    if removed.nothing:
        ui.out.print(f"nothing to remove: there is no lab named {name!r}")
        return
    service = {0: "", 1: "1 service, "}.get(removed.services, f"{removed.services} services, ")
    ui.out.print(
        f"removed lab {name}: {service}{removed.containers} containers, {removed.networks} networks, "
        f"{removed.volumes} volumes"
    )
    for line in orchestrator.leftover_lines(removed.left):
        ui.note(line)
    if removed.swarm:
        ui.out.print(removed.swarm)
    if removed.running:
        raise LabError(f"lab {name!r} still runs: {', '.join(removed.running)} could not be removed")


@cli.command()
@name_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(name: str, as_json: bool) -> None:
    """Show the lab's load balancer and replicas: state, health, image, URL."""
    from lab import orchestrator, ui

    lab_status = orchestrator.status(_connect(), name)
    if as_json:
        ui.print_json(lab_status.as_dict())
    else:
        ui.out.print(ui.status_table(lab_status))
        _print_expiry(lab_status)


@cli.command()
@spec_options
@balance_options
def render(name: str, replicas: str, port: str, bind: str, site: str, **balance: object) -> None:
    """Print the nginx config that `lab up` would use."""
    spec = LabSpec.create(
        name=name, replicas=replicas, port=port, bind=bind, site=site, check_site=False, **_balance(**balance)
    )
    from lab.render import nginx_view, render_nginx_conf

    sys.stdout.write(render_nginx_conf(nginx_view(spec)))


@cli.command()
@name_option
@balance_options
def configure(name: str, **balance: object) -> None:
    """Change the balancing of a running lab: render, `nginx -t`, then a graceful reload."""
    changes = _balance(**balance)
    if not changes:
        raise InvalidInput("nothing to change: give --algorithm, --weights, --hash-key, ...")
    from lab import live, ui

    spec = live.configure(_connect(), name, **changes)
    weights = f" weights {','.join(map(str, spec.weights))}" if spec.weights else ""
    ui.out.print(f"lab {name} now balances with {spec.algorithm}{weights} (reloaded gracefully)")


@cli.command(context_settings={"ignore_unknown_options": True})  # so `scale -1` reaches validation
@name_option
@click.argument("replicas")
def scale(name: str, replicas: str) -> None:
    """Change the number of replicas of a running lab without dropping a request."""
    parse_replicas(replicas)  # bad input is refused before any engine is asked
    from lab import orchestrator, ui

    with ui.progress_bar(f"scale {name} to {replicas}") as progress:
        scaled = orchestrator.scale(_connect(), name, replicas, on_event=lambda step: progress(step, None))
    ui.out.print(f"lab {name} now has {scaled.spec.replicas} replicas")
    for note in scaled.notes:
        ui.out.print(note)


@cli.command()
@name_option
@click.option(
    "--site", default=None, help="Directory of the new site version (default: the current site, rebuilt)."
)
@click.option("--batch", default="1", show_default=True, help="Replicas replaced at a time.")
@click.option("--tag", default=None, help="Version name for the new site image (default: a content hash).")
@click.option(
    "--image", default=None, help="Roll out this existing image instead (a snapshot's TAG, or name:tag)."
)
def deploy(name: str, site: str | None, batch: str, tag: str | None, image: str | None) -> None:
    """Rolling update to a new site version; rolls back if a new replica is unhealthy."""
    if tag is not None:
        parse_version_tag(tag)  # bad input is refused before any engine is asked
    if site is not None:
        parse_site(site)
    if image is not None and (site is not None or tag is not None):
        raise InvalidInput("--image rolls out an existing image: give it without --site and --tag")
    from lab import orchestrator, ui

    with ui.progress_bar(f"deploy to {name}") as progress:
        version = orchestrator.deploy(
            _connect(),
            name,
            site=site,
            batch=batch,
            tag=tag,
            image=image,
            on_event=lambda step: progress(step, None),
        )
    ui.out.print(f"lab {name} serves version {version} on every replica")


@cli.command()
@name_option
def reload(name: str) -> None:
    """Test the current nginx config and reload it gracefully."""
    from lab import live, ui

    live.reload(_connect(), name)
    ui.out.print(f"lab {name}: nginx reloaded")


# lab cp, lab snapshot: the Docker workflow on a running lab -------------------------------------
@cli.command()
@click.argument("src")
@name_option
@click.option("--replica", default=None, help="The replica to copy into, by name or number.")
@click.option("--all", "everyone", is_flag=True, help="Copy into every replica.")
@click.option("--dest", default=None, help="Path inside the replicas (default: the document root).")
def cp(src: str, name: str, replica: str | None, everyone: bool, dest: str | None) -> None:
    """Copy a file or folder into running replicas (like `docker container cp`)."""
    from lab import workflow

    workflow.pick_replicas(replica, everyone)  # bad input touches nothing
    workflow.parse_source(src)
    if dest is not None:
        workflow.parse_dest(dest)
    copied = workflow.copy(
        _connect(), name, src, replica=replica, everyone=everyone, dest=dest or workflow.DOCROOT
    )
    _ui().out.print(f"copied {copied.source} to {copied.path} in {', '.join(copied.replicas)}")


@cli.command()
@click.argument("replica")
@name_option
@click.option("--tag", required=True, help="Version name of the new image (lab/site:TAG).")
def snapshot(replica: str, name: str, tag: str) -> None:
    """Commit a replica, with what was copied into it, into a new site image (`docker commit`)."""
    from lab import workflow

    parse_version_tag(tag)  # bad input touches nothing
    made = workflow.snapshot(_connect(), name, replica, tag)
    _ui().out.print(
        f"{made.image} ({made.image_id[:19]}) from {made.replica}; roll it out with "
        f"`lab deploy --name {name} --image {tag}`"
    )


@cli.group()
def chaos() -> None:
    """Break replicas the way real ones break (and restore them)."""


def _chaos_command(how: str, help_text: str) -> None:
    @chaos.command(name=how, help=help_text)
    @name_option
    @click.argument("replica")
    def command(name: str, replica: str) -> None:
        from lab import chaos as breaker
        from lab import ui

        events: list[str] = []
        breaker.break_replica(_connect(), name, replica, how, on_event=events.append)
        ui.out.print("\n".join(events))


_chaos_command("kill", "SIGKILL a replica (a crash).")
_chaos_command("stop", "Stop a replica gracefully.")
_chaos_command("pause", "Freeze a replica: it accepts connections but never answers.")
_chaos_command("disconnect", "Cut a replica from the backend network.")


@chaos.command(name="restore")
@name_option
def chaos_restore(name: str) -> None:
    """Bring every broken replica back and put it in the upstream again (a swarm lab: killed nodes too)."""
    from lab import chaos as breaker
    from lab import ui

    fixed = breaker.restore(_connect(), name)
    ui.out.print(f"restored: {', '.join(fixed)}" if fixed else "nothing to restore")


@chaos.command(name="kill-node")
@name_option
@click.argument("node", required=False)
def chaos_kill_node(name: str, node: str | None) -> None:
    """SIGKILL a worker node of this desk (default: the one running most of the lab's tasks); Swarm
    starts its tasks elsewhere. `lab chaos restore` starts it again."""
    from lab import chaos as breaker
    from lab import ui

    events: list[str] = []
    breaker.kill_node(_connect(), name, node, on_event=events.append)
    ui.out.print("\n".join(events))


@chaos.command(name="kill-lb")
@name_option
def chaos_kill_lb(name: str) -> None:
    """SIGKILL the load balancer; its restart policy brings it back."""
    from lab import chaos as breaker
    from lab import ui

    events: list[str] = []
    breaker.kill_lb(_connect(), name, on_event=events.append)
    ui.out.print("\n".join(events))


load_options = _options(
    click.option("--requests", "-n", "requests_", default=None, help="Number of requests (default 1000)."),
    click.option("--duration", "-d", default=None, help="Send for this many seconds instead (bounded)."),
    click.option("--concurrency", "-c", default="8", show_default=True, help="Concurrent keep-alive connections."),
    click.option("--clients", "-k", default="0", show_default=True,
                 help="Synthetic client identities (X-Client-Id and a cookie), for hash methods."),
    click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table."),
    click.option("--report", default=None, type=click.Path(dir_okay=False), help="Write an HTML report here."),
)  # fmt: skip


@cli.command()
@click.option("--name", default=None, help=f"Lab to verify (default {DEFAULT_NAME}).")
@click.option(
    "--url", default=None, help="Verify any load balancer on 127.0.0.1 whose replicas send X-Served-By."
)
@click.option("--algorithm", default="round_robin", show_default=True, help="With --url: the method it uses.")
@click.option("--weights", default=None, help="With --url: expected weights, one per replica.")
@click.option(
    "--replicas",
    default=None,
    help="With --url: how many replicas there are (one that never answers counts).",
)
@load_options
def verify(
    name: str | None,
    url: str | None,
    algorithm: str,
    weights: str | None,
    replicas: str | None,
    requests_: str | None,
    duration: str | None,
    concurrency: str,
    clients: str,
    as_json: bool,
    report: str | None,
) -> None:
    """Send bounded load through the load balancer and judge how it spreads over the replicas.

    Exit 0 balanced, 4 skewed, 5 inconclusive (too little evidence: the output says what would
    decide), 1 failed (errors, or the access log disagrees).
    """
    from lab import report as reports
    from lab import ui
    from lab import verify as verifier

    plan = verifier.LoadPlan.create(
        requests=requests_, duration=duration, concurrency=concurrency, clients=clients
    )
    if url and name:
        raise InvalidInput("give --name or --url, not both")
    if replicas is not None and not url:
        raise InvalidInput("--replicas is for --url; a lab knows its replicas")
    engine: Engine | None = None
    if url:
        target = verifier.url_target(url, algorithm, weights or (), replicas)
    else:
        engine = _connect()
        target = verifier.lab_target(engine, name or DEFAULT_NAME)
    with ui.progress_bar("verify", enabled=not as_json) as progress:
        result = verifier.verify(target, plan, engine=engine, progress=progress)
    if report:
        reports.write_report(Path(report), reports.render_verify_report(result))
    if as_json:
        ui.print_json(result.as_json())
    else:
        ui.out.print(ui.verify_table(result))
        if result.by_node:
            ui.out.print(ui.node_spread_table(result))
        if len(result.contents) > 1:
            ui.out.print(ui.content_table(result))
        ui.out.print(ui.verify_summary(result))
        if report:
            ui.out.print(f"report: {report}")
    raise click.exceptions.Exit(ui.verdict_exit_code(result.verdict))


@cli.command()
@name_option
@click.option(
    "--algorithms",
    default="round_robin,least_conn,random,hash",
    show_default=True,
    help="Methods to compare, comma-separated.",
)
@load_options
def compare(
    name: str,
    algorithms: str,
    requests_: str | None,
    duration: str | None,
    concurrency: str,
    clients: str,
    as_json: bool,
    report: str | None,
) -> None:  # fmt: skip
    """Verify several balancing methods on the same lab, reconfiguring it live in between."""
    from lab import live, orchestrator, ui
    from lab import report as reports
    from lab import verify as verifier

    methods = [parse_algorithm(a) for a in algorithms.split(",") if a.strip()]
    if not methods:
        raise InvalidInput("give at least one method with --algorithms")
    plan = verifier.LoadPlan.create(
        requests=requests_, duration=duration, concurrency=concurrency, clients=clients
    )
    engine = _connect()
    original = orchestrator.find_running(engine, name).spec
    results = []
    try:
        with ui.progress_bar("compare", enabled=not as_json) as progress:
            for method in methods:
                progress(f"switching to {method}", None)
                live.configure(engine, name, algorithm=method)
                results.append(
                    verifier.verify(verifier.lab_target(engine, name), plan, engine=engine, progress=progress)
                )
    finally:
        live.configure(engine, name, algorithm=original.algorithm)
    if report:
        reports.write_report(Path(report), reports.render_compare_report(results))
    if as_json:
        ui.print_json([r.as_json() for r in results])
    else:
        ui.out.print(ui.compare_table(results))
        if report:
            ui.out.print(f"report: {report}")
    raise click.exceptions.Exit(ui.verdict_exit_code(ui.worst_verdict([r.verdict for r in results])))


@cli.command()
@spec_options
@balance_options
@click.option("--output", "-o", default="compose.yaml", show_default=True, type=click.Path(dir_okay=False),
              help="The Compose file to write; the nginx config is written beside it.")  # fmt: skip
def compose(
    name: str, replicas: str, port: str, bind: str, site: str, output: str, **balance: object
) -> None:
    """Write a Compose file (and its nginx.conf) that builds the same lab as `lab up`."""
    from lab import ui
    from lab.compose import write_compose

    spec = LabSpec.create(
        name=name, replicas=replicas, port=port, bind=bind, site=site, **_balance(**balance)
    )
    engine = _connect()
    with ui.progress_bar(f"lab compose {spec.name}") as progress:
        written = write_compose(engine, spec, Path(output), progress)
    ui.out.print(
        f"wrote {written.compose_file} and {written.nginx_conf}\n"
        f"start it:  docker compose -f {written.compose_file} up -d --wait\n"
        f"check it:  lab verify --url {spec.url}\n"
        f"remove it: docker compose -f {written.compose_file} down"
    )


@cli.command(context_settings={"ignore_unknown_options": True})  # so `--rate -5` reaches validation
@click.argument("kind")
@name_option
@click.option("--rate", default="150", show_default=True, help="Requests per second, paced (1-2000).")
@click.option(
    "--duration", default="20", show_default=True, help="Seconds of load (2-600); the operation runs in it."
)
@click.option("--steps", default=None, help="scale: replica counts to scale to in turn (default 8,2).")
@click.option("--batch", default=None, help="deploy: replicas replaced at a time (default 1).")
@click.option(
    "--site",
    default=None,
    help="deploy: directory of the new site version (default: the current one, rebuilt).",
)
@click.option("--how", default=None, help="failover: kill, stop, pause or disconnect (default kill).")
@click.option(
    "--replica", default=None, help="failover: the replica to break, by name or number (default the first)."
)
@click.option(
    "--restore",
    default=None,
    help="failover, node-failure: restore it after the measured window (after, the default), during it (failover), or no.",
)
@click.option(
    "--tag", default=None, help="deploy: version name for the new site image (default: a content hash)."
)
@click.option("--image", default=None, help="deploy: roll out this existing image (a snapshot's tag).")
@click.option("--times", default=None, help="reload: how many reloads (default 3).")
@click.option(
    "--node",
    default=None,
    help="node-failure: the worker node to kill (default: the one running most tasks).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--report", default=None, type=click.Path(dir_okay=False), help="Write an HTML report here.")
def experiment(
    kind: str, name: str, rate: str, duration: str, steps: str | None, batch: str | None, site: str | None,
    how: str | None, replica: str | None, restore: str | None, tag: str | None, image: str | None,
    times: str | None, node: str | None, as_json: bool, report: str | None,
) -> None:  # fmt: skip
    """Steady load through the load balancer while scale, deploy, failover, reload, kill-lb or node-failure runs; every request counted.

    KIND is scale, deploy, failover, reload, kill-lb or node-failure (a swarm lab: a worker node is
    killed). Exit 0 when nothing failed (kill-lb: the load balancer came back and errors stopped)
    and every check passed, else 1.
    """
    from lab.experiment.plan import ExperimentPlan

    options = {"steps": steps, "batch": batch, "site": site, "how": how, "replica": replica,
               "restore": restore, "tag": tag, "image": image, "times": times, "node": node}  # fmt: skip
    # Validated before any Docker call: bad input touches nothing.
    ExperimentPlan.create(kind, rate=rate, duration=duration, options=options)
    from lab import report as reports
    from lab import ui
    from lab.experiment.run import run_experiment
    from lab.experiment_report import render_experiment_report

    engine = _connect()
    with ui.progress_bar(f"experiment {kind}", enabled=not as_json) as progress:
        result = run_experiment(
            engine, name, kind, rate=rate, duration=duration, options=options, progress=progress
        )
    if report:
        reports.write_report(Path(report), render_experiment_report(result))
    if as_json:
        ui.print_json(result.as_json())
    else:
        ui.out.print(ui.experiment_timeline_table(result))
        ui.out.print(ui.experiment_events_table(result))
        ui.out.print(ui.experiment_summary(result))
        if report:
            ui.out.print(f"report: {report}")
    raise click.exceptions.Exit(ExitCode.OK if result.passed else ExitCode.FAILED)


@cli.command()
@name_option
def watch(name: str) -> None:
    """Full screen, live: each replica's share against the expected, req/s, p95 and state, and the lab's events."""
    from lab import orchestrator, ui
    from lab import watch as watcher
    from lab.livefeed import following

    engine = _connect()
    orchestrator.find_running(engine, name)
    # Ctrl-C is how one leaves: the screen is restored and the exit is clean.
    with following(engine, name) as feed, contextlib.suppress(KeyboardInterrupt):
        watcher.run(feed.state, ui.out)
    ui.out.print(f"stopped watching lab {name}")


@cli.command()
@name_option
@click.option("--port", default="8090", show_default=True, help="Port the page is served on.")
@click.option(
    "--bind",
    default=DEFAULT_BIND,
    show_default=True,
    help="Address to listen on; the page has controls, so keep it on loopback.",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a browser.")
def dashboard(name: str, port: str, bind: str, open_browser: bool) -> None:  # fmt: skip
    """A live web page of the lab: tiles per replica, share chart, events, and demo controls."""
    from lab import ui
    from lab.dashboard.server import run_dashboard

    port_number, address = parse_port(port), parse_bind(bind)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it stops
        run_dashboard(_connect(), name, bind=address, port=port_number, open_browser=open_browser,
                      say=lambda line: ui.out.print(line, highlight=False, soft_wrap=True))  # fmt: skip
    ui.out.print("dashboard stopped")


@cli.command()
@click.option("--pull", is_flag=True, help="Try to pull the official images first (needs a registry).")
def images(pull: bool) -> None:
    """Make sure the httpd and nginx base images (official ones, or built offline) and the reaper image exist."""
    from lab import reaper as reapers
    from lab import ui
    from lab.images import ensure_base_images

    engine = _connect()
    with ui.progress_bar("base images") as progress:
        base = ensure_base_images(engine, pull=pull, progress=progress)
        reaper_image = reapers.ensure_image(engine, progress)
    kind = "offline stand-ins built from Debian packages" if base.offline else "official images"
    ui.out.print(f"httpd: {base.httpd}\nnginx: {base.nginx}\n({kind})\nreaper: {reaper_image}")


# lab registry, lab push, lab nodes: the desk-wide registry and swarm nodes ---------------------------
registry_option = click.option(
    "--registry", "registry_name", default=DEFAULT_REGISTRY, show_default=True, help="Name of the registry."
)


@cli.group(name="registry")
def registry_group() -> None:
    """A local image registry on 127.0.0.1 (Debian's docker-registry, built offline)."""


@registry_group.command(name="up", context_settings={"ignore_unknown_options": True})
@click.option("--port", default=str(DEFAULT_REGISTRY_PORT), show_default=True, help="Port on 127.0.0.1.")
@registry_option
def registry_up(port: str, registry_name: str) -> None:
    """Start the registry (its images survive `down` and `up` on a named volume)."""
    from lab import nodes as desk_nodes
    from lab import registry as registries
    from lab import ui

    registries.RegistryNames.of(registry_name)  # bad input touches nothing
    parse_port(port)
    engine = _connect()
    with ui.progress_bar(f"registry {registry_name}") as progress:
        found = registries.up(engine, registry_name, port, progress)
        wired = desk_nodes.wire_registries(engine)
    ui.out.print(f"registry {found.name} is up: {found.url}  (images on volume {found.volume})")
    if wired:
        ui.out.print(f"{wired} nodes pull from it at the same address")


@registry_group.command(name="down")
@click.option("--purge", is_flag=True, help="Also delete the volume holding the pushed images.")
@registry_option
def registry_down(purge: bool, registry_name: str) -> None:
    """Remove the registry; its volume (the images) stays unless --purge."""
    from lab import registry as registries
    from lab import ui

    registries.RegistryNames.of(registry_name)
    removed = registries.down(_connect(), registry_name, purge=purge)
    if removed.nothing:
        ui.out.print(f"nothing to remove: there is no registry named {registry_name!r}")
        return
    kept = "volume deleted" if removed.volume else "volume kept: `lab registry up` serves the same images"
    ui.out.print(f"removed registry {registry_name} ({kept})")


@registry_group.command(name="status")
@registry_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def registry_status(registry_name: str, as_json: bool) -> None:
    """Show whether the registry runs, where, and the repositories and tags it holds."""
    from lab import registry as registries
    from lab import ui

    registries.RegistryNames.of(registry_name)
    found = registries.status(_connect(), registry_name)
    if as_json:
        ui.print_json(found.as_dict())
    elif found.repositories:
        ui.out.print(ui.registry_table(found))
    else:
        ui.out.print(ui.registry_summary(found))


@cli.command()
@name_option
@click.option("--tag", default=None, help="Tag in the registry (default: the lab's site version).")
@registry_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def push(name: str, tag: str | None, registry_name: str, as_json: bool) -> None:
    """Push the lab's site image to the local registry."""
    from lab import registry as registries
    from lab import ui

    if tag is not None:
        registries.parse_tag(tag)  # bad input touches nothing
    registries.RegistryNames.of(registry_name)
    engine = _connect()
    with ui.progress_bar(f"push {name}", enabled=not as_json) as progress:
        pushed = registries.push_site(engine, name, tag=tag, registry=registry_name, progress=progress)
    if as_json:
        ui.print_json(pushed.as_dict())
    else:
        ui.out.print(
            f"pushed {pushed.source} as {pushed.reference} in {pushed.seconds:.1f} s\n{pushed.pinned}"
        )


@cli.group(name="nodes")
def nodes_group() -> None:
    """Swarm workers on this desk: Docker-in-Docker containers joined to this engine's swarm."""


# ignore_unknown_options: so `add -1` reaches validation
@nodes_group.command(name="add", context_settings={"ignore_unknown_options": True})
@click.argument("count")
@click.option("--init", is_flag=True, help="Initialise a swarm here if there is none (left by `rm --all`).")
def nodes_add(count: str, init: bool) -> None:
    """Start COUNT nodes and join them to this engine's swarm as workers."""
    from lab import nodes as desk_nodes
    from lab import ui

    desk_nodes.parse_count(count)  # bad input touches nothing
    engine = _connect()
    with ui.progress_bar("nodes add") as progress:
        added = desk_nodes.add(engine, count, init=init, progress=progress)
        from lab.swarm_images import place_lab_images

        placed = place_lab_images(engine, progress)  # swarm labs' tasks may land on the new nodes
    if added.manager.initialised:
        ui.out.print(f"initialised a swarm on this engine (manager {added.manager.address})")
    ui.out.print(ui.nodes_table(desk_nodes.ls(engine)))
    ui.out.print(f"{len(added.nodes)} nodes joined as workers in {added.seconds:.1f} s")
    if placed:
        ui.out.print(f"the images of {len(placed)} swarm labs are on the new nodes too")


@nodes_group.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def nodes_ls(as_json: bool) -> None:
    """List the nodes: container state, address, and the manager's view."""
    from lab import nodes as desk_nodes
    from lab import ui

    found = desk_nodes.ls(_connect())
    if as_json:
        ui.print_json([n.as_dict() for n in found])
    else:
        ui.out.print(ui.nodes_table(found))


@nodes_group.command(name="rm")
@click.argument("node", required=False)
@click.option("--all", "everything", is_flag=True, help="Remove every node (and leave a swarm the lab made).")
def nodes_rm(node: str | None, everything: bool) -> None:
    """Remove NODE, or every node with --all; the last removal leaves the engine as the lab found it."""
    from lab import nodes as desk_nodes
    from lab import ui

    if bool(node) == everything:
        raise InvalidInput("give one NODE or --all")
    engine = _connect()
    removed = desk_nodes.rm_all(engine) if everything else desk_nodes.rm(engine, str(node))
    if removed.nodes or removed.stale_entries:
        stale = f" and {removed.stale_entries} stale swarm entries" if removed.stale_entries else ""
        ui.out.print(f"removed {', '.join(removed.nodes) or 'no nodes'}{stale}")
    else:
        ui.out.print("nothing to remove: there are no nodes")
    if removed.released is not None:
        ui.out.print(removed.released.reason)


def _terminate(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM rolls back like Ctrl-C does


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status instead of raising SystemExit."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="lab", standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.Abort:
        _error("interrupted")
        return ExitCode.INTERRUPTED
    except click.UsageError as exc:
        _error(exc.format_message().replace("\n", " "))
        return ExitCode.USAGE
    except KeyboardInterrupt:
        _error("interrupted; what had been started was removed again")
        return ExitCode.INTERRUPTED
    except LabError as exc:
        _error(exc.message, exc.detail)
        return exc.exit_code
    return code if isinstance(code, int) else ExitCode.OK


def _error(message: str, detail: str = "") -> None:
    from lab import ui

    ui.error(message, detail)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
