"""The only jinja2 user: finished view models in, text out (nginx.conf today)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import jinja2

from lab.spec import PROJECT_DIR, LabSpec

NGINX_TEMPLATE_DIR = PROJECT_DIR / "nginx"
# Package data next to this module, so the report templates are found in editable installs too.
HTML_TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
UPSTREAM_NAME = "replicas"
BACKEND_PORT = 80


@dataclass(frozen=True)
class Backend:
    """One `server` line of the upstream."""

    index: int
    host: str
    port: int
    weight: int = 1
    backup: bool = False


@dataclass(frozen=True)
class NginxView:
    """Everything the nginx template shows, already decided."""

    lab: str
    upstream: str
    method: str  # nginx's directive for the method, "" for round robin (its default)
    method_comment: str
    backends: tuple[Backend, ...]
    keepalive: int = 32
    zone_size: str = "64k"
    max_fails: int = 1
    fail_timeout: str = "10s"
    generation: str = ""  # a hash of everything above; the load balancer sends it as X-Lab-Config


_METHOD_COMMENTS = {
    "round_robin": "round robin, nginx's default: no directive needed",
    "least_conn": "least connections: the replica with the fewest active requests",
    "ip_hash": "client IP hash: one client address always lands on one replica",
    "hash": "hash of a key: one key always lands on one replica",
    "random": "random: each request goes to a replica drawn at random",
    "random_two": "power of two choices: of two random replicas, the less busy",
}


def method_directive(spec: LabSpec) -> str:
    """The upstream directive that selects `spec.algorithm` ("" for round robin)."""
    if spec.algorithm == "round_robin":
        return ""
    if spec.algorithm == "hash":
        return f"hash {spec.hash_key}{' consistent' if spec.consistent else ''};"
    if spec.algorithm == "random_two":
        return "random two least_conn;"
    return f"{spec.algorithm};"


def nginx_view(spec: LabSpec, replica_hosts: list[str] | None = None) -> NginxView:
    """Decide what the config for `spec` says; `replica_hosts` defaults to all of the spec's replicas."""
    hosts = replica_hosts if replica_hosts is not None else spec.replica_names()
    weights = spec.weights or (1,) * len(hosts)
    comment = _METHOD_COMMENTS[spec.algorithm]
    if spec.algorithm == "hash":
        comment += f" (key {spec.hash_key}{', consistent hashing' if spec.consistent else ''})"
    backends = tuple(
        Backend(index=i, host=host, port=BACKEND_PORT, weight=weight, backup=spec.backup == i)
        for i, (host, weight) in enumerate(zip(hosts, weights, strict=True), start=1)
    )
    view = NginxView(
        lab=spec.name,
        upstream=UPSTREAM_NAME,
        method=method_directive(spec),
        method_comment=comment,
        backends=backends,
        max_fails=spec.max_fails,
        fail_timeout=f"{spec.fail_timeout}s",
    )
    return replace(view, generation=hashlib.sha256(repr(view).encode()).hexdigest()[:12])


def _environment(template_dir: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,  # a missing variable is an error, not an empty string
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_nginx_conf(view: NginxView, template_dir: Path = NGINX_TEMPLATE_DIR) -> str:
    """The full /etc/nginx/nginx.conf for `view`."""
    return _environment(template_dir).get_template("nginx.conf.j2").render(view=view)


def render_html(template_name: str, **context: object) -> str:
    """Render an HTML template from lab/templates/, escaping every value (lab names, notes)."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HTML_TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=True,
    )
    return environment.get_template(template_name).render(**context)


@dataclass(frozen=True)
class ComposeService:
    """One service of the Compose file: a replica or the load balancer, as `lab up` creates it."""

    service: str  # the Compose service name
    container: str  # container name and host name, the same as `lab up` gives
    comment: str
    image: str
    labels: dict[str, str]
    networks: tuple[str, ...]  # keys of ComposeView.networks
    cap_add: tuple[str, ...]
    mem_limit: str
    pids_limit: int
    healthcheck: str  # a bash script; healthy when it exits 0
    depends_on: tuple[str, ...] = ()  # services that must be healthy first
    ports: tuple[tuple[str, int, int], ...] = ()  # (host address, host port, container port)
    volumes: tuple[str, ...] = ()
    restart: str | None = None


@dataclass(frozen=True)
class ComposeNetwork:
    key: str  # how services refer to it
    name: str  # the Docker network's name, the same as `lab up` gives
    internal: bool
    labels: dict[str, str]


@dataclass(frozen=True)
class ComposeView:
    """Everything the Compose template shows, already decided."""

    lab: str
    command: str  # the `lab compose` command line that wrote it
    build_context: str
    dockerfile: str
    build_args: dict[str, str]
    build_labels: dict[str, str]
    replicas: tuple[ComposeService, ...]  # alike but for name and labels: the file shares the rest
    lb: ComposeService
    networks: tuple[ComposeNetwork, ...]


def _compose_quote(value: object) -> str:
    """A YAML double-quoted scalar (JSON is valid YAML) with Compose's `$` interpolation escaped."""
    return json.dumps(str(value)).replace("$", "$$")


def render_compose(view: ComposeView) -> str:
    """A Compose file (compose.yaml) that builds and runs the lab `view` describes."""
    environment = _environment(HTML_TEMPLATE_DIR)
    environment.filters["q"] = _compose_quote
    return environment.get_template("compose.yaml.j2").render(view=view)
