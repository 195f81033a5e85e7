"""The only jinja2 user: finished view models in, text out (nginx.conf today)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2

from lab.spec import PROJECT_DIR, LabSpec

NGINX_TEMPLATE_DIR = PROJECT_DIR / "nginx"
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


_METHOD_DIRECTIVES = {
    "round_robin": ("", "round robin, nginx's default: no directive needed"),
    "least_conn": ("least_conn;", "least connections: the replica with the fewest active requests"),
    "ip_hash": ("ip_hash;", "client IP hash: one client address always lands on one replica"),
    "random": ("random;", "random: each request goes to a replica drawn at random"),
    "random_two": ("random two least_conn;", "power of two choices: of two random replicas, the less busy"),
}


def nginx_view(spec: LabSpec, replica_hosts: list[str] | None = None) -> NginxView:
    """Decide what the config for `spec` says; `replica_hosts` defaults to all of the spec's replicas."""
    hosts = replica_hosts if replica_hosts is not None else spec.replica_names()
    weights = spec.weights or (1,) * len(hosts)
    directive, comment = _METHOD_DIRECTIVES.get(spec.algorithm, ("", ""))
    backends = tuple(
        Backend(index=i, host=host, port=BACKEND_PORT, weight=weight)
        for i, (host, weight) in enumerate(zip(hosts, weights, strict=True), start=1)
    )
    return NginxView(
        lab=spec.name, upstream=UPSTREAM_NAME, method=directive, method_comment=comment, backends=backends
    )


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
