"""The `lab` command: parses arguments, calls the orchestrator, prints results, maps errors to exits."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, TypeVar

import click

from lab import lab as orchestrator
from lab import ui
from lab.docker_ops import Engine
from lab.errors import ExitCode, Interrupted, LabError
from lab.images import ensure_base_images
from lab.render import nginx_view, render_nginx_conf
from lab.spec import (
    DEFAULT_BIND,
    DEFAULT_NAME,
    DEFAULT_PORT,
    DEFAULT_REPLICAS,
    DEFAULT_SITE,
    MAX_REPLICAS,
    LabSpec,
)

F = TypeVar("F", bound=Callable[..., Any])

# Values are taken as text and validated by LabSpec, so every bad value gets the same one-line error.
name_option = click.option("--name", default=DEFAULT_NAME, show_default=True, help="Name of the lab.")


def spec_options(func: F) -> F:
    """The options that describe a lab's shape, shared by `up` and `render`."""
    options = [
        name_option,
        click.option(
            "--replicas",
            default=str(DEFAULT_REPLICAS),
            show_default=True,
            help=f"Number of httpd replicas (1-{MAX_REPLICAS}).",
        ),
        click.option(
            "--port", default=str(DEFAULT_PORT), show_default=True, help="Port the load balancer publishes."
        ),
        click.option(
            "--bind", default=DEFAULT_BIND, show_default=True, help="Address the published port is bound to."
        ),
        click.option(
            "--site",
            default=str(DEFAULT_SITE),
            show_default="the bundled site/",
            help="Directory with the static site (must hold index.html).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lab")
def cli() -> None:
    """N Apache httpd replicas behind an nginx load balancer, on one Docker engine."""


@cli.command()
@spec_options
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
def up(name: str, replicas: str, port: str, bind: str, site: str, quiet: bool) -> None:
    """Build the site image and start the replicas and the load balancer."""
    spec = LabSpec.create(name=name, replicas=replicas, port=port, bind=bind, site=site)
    engine = Engine.connect()
    with ui.progress_bar(f"lab up {spec.name}", enabled=not quiet) as progress:
        lab_status = orchestrator.up(engine, spec, progress)
    ui.out.print(ui.status_table(lab_status))
    ui.out.print(f"[bold green]lab {spec.name} is up:[/] {spec.url}  ({spec.replicas} replicas answered)")


@cli.command()
@name_option
def down(name: str) -> None:
    """Remove every container, network and volume of the lab (found by label)."""
    engine = Engine.connect()
    removed = orchestrator.down(engine, name)
    if removed.nothing:
        ui.out.print(f"nothing to remove: there is no lab named {name!r}")
    else:
        ui.out.print(
            f"removed lab {name}: {removed.containers} containers, {removed.networks} networks, "
            f"{removed.volumes} volumes"
        )


@cli.command()
@name_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(name: str, as_json: bool) -> None:
    """Show the lab's load balancer and replicas: state, health, image, URL."""
    engine = Engine.connect()
    lab_status = orchestrator.status(engine, name)
    if as_json:
        ui.print_json(lab_status.as_dict())
    else:
        ui.out.print(ui.status_table(lab_status))


@cli.command()
@spec_options
def render(name: str, replicas: str, port: str, bind: str, site: str) -> None:
    """Print the nginx config that `lab up` would use."""
    spec = LabSpec.create(name=name, replicas=replicas, port=port, bind=bind, site=site, check_site=False)
    sys.stdout.write(render_nginx_conf(nginx_view(spec)))


@cli.command()
@click.option("--pull", is_flag=True, help="Try to pull the official images first (needs a registry).")
def images(pull: bool) -> None:
    """Make sure the httpd and nginx base images exist (official ones, or built offline)."""
    engine = Engine.connect()
    with ui.progress_bar("base images") as progress:
        base = ensure_base_images(engine.client, pull=pull, progress=progress)
    kind = "offline stand-ins built from Debian packages" if base.offline else "official images"
    ui.out.print(f"httpd: {base.httpd}\nnginx: {base.nginx}\n({kind})")


def _terminate(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM rolls back like Ctrl-C does


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status instead of raising SystemExit."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="lab", standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.Abort:
        ui.error("interrupted")
        return ExitCode.INTERRUPTED
    except click.UsageError as exc:
        ui.error(exc.format_message().replace("\n", " "))
        return ExitCode.USAGE
    except KeyboardInterrupt:
        ui.error("interrupted; what had been started was removed again")
        return ExitCode.INTERRUPTED
    except Interrupted as exc:
        ui.error(exc.message, exc.detail)
        return exc.exit_code
    except LabError as exc:
        ui.error(exc.message, exc.detail)
        return exc.exit_code
    return ExitCode.OK


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
