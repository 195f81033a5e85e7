"""The only jinja2 user: finished view models in, text out (nginx.conf today)."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from lab.spec import MAX_REPLICAS, PROJECT_DIR, LabSpec

if TYPE_CHECKING:
    import jinja2

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
    # What the server is, for the comment above it ("container lab-web-1", a swarm task): not part
    # of the generation, which names what nginx does.
    what: str = field(default="", repr=False)


Server = tuple[str, int] | tuple[str, int, str]  # (host, slot) or (host, slot, what it is)


# What nginx 1.22 (64-bit, 4 KiB pages) puts in an upstream's shared `zone`, read from
# ngx_http_upstream_zone_module.c (zone_copy_peers / zone_copy_peer) and ngx_slab.c. Per server:
# its state (ngx_http_upstream_rr_peer_t, 440 bytes with --with-compat's spare slots), its address
# (ngx_sockaddr_t, 112), the address as text (NGX_SOCKADDR_STRLEN, 113) and its "host:port" text.
# Per upstream: one peers struct for the servers and one for backups, the upstream's name and a
# log string. The slab allocator rounds each piece up to a power of two (at least 8 bytes) and
# gives each such size whole pages; its own bookkeeping (under 1 KiB, plus 24 bytes per page)
# takes the first page(s). Checked against nginx -t: 64k holds 63 servers, 96k 104, 32k 16.
SLAB_PAGE = 4096
_PEER_STATE = 440
_PEER_ADDRESS = 112
_PEER_ADDRESS_TEXT = 113
_PEERS = 80
_POOL_HEADER = 1024
_PAGE_DESCRIPTOR = 24
_MIN_ZONE_PAGES = 8  # nginx refuses a smaller zone
_LONGEST_INDEX = 999_999  # replica numbers grow with each deploy: leave room for long ones
ZONE_MARGIN = 2  # room for nginx builds that keep more per server than 1.22 does


def _slab_chunk(size: int) -> int:
    """The slab chunk a request of `size` bytes takes: the next power of two, at least 8."""
    return max(8, 1 << (size - 1).bit_length())


def _slab_pages(chunk: int, count: int) -> int:
    """Pages `count` chunks of one size take; chunks under 64 bytes keep their bitmap in the page."""
    if chunk > SLAB_PAGE // 2:
        return count * math.ceil(chunk / SLAB_PAGE)
    per_page = SLAB_PAGE // chunk
    if chunk < 64:
        per_page -= math.ceil(per_page / 8 / chunk)
    return math.ceil(count / per_page)


def _per_server_chunks(server_text: int) -> list[int]:
    return [_slab_chunk(size) for size in (_PEER_STATE, _PEER_ADDRESS, _PEER_ADDRESS_TEXT, server_text)]


def upstream_zone_bytes(servers: int, server_text: int, upstream: str = "replicas") -> int:
    """The smallest zone (whole pages) nginx 1.22 can copy `servers` servers into, the longest
    written as `server_text` characters of "host:port"."""
    chunks: Counter[int] = Counter()
    for chunk in _per_server_chunks(server_text):
        chunks[chunk] += servers
    chunks[_slab_chunk(_PEERS)] += 2  # servers and backups
    chunks[_slab_chunk(16)] += 1  # the upstream's name (ngx_str_t) ...
    chunks[_slab_chunk(len(upstream))] += 1  # ... and its text
    chunks[_slab_chunk(len(' in upstream zone ""') + 1 + len(upstream))] += 1
    data = sum(_slab_pages(chunk, count) for chunk, count in chunks.items())
    header = math.ceil((_POOL_HEADER + data * _PAGE_DESCRIPTOR) / SLAB_PAGE)
    return max(data + header, _MIN_ZONE_PAGES) * SLAB_PAGE


@dataclass(frozen=True)
class ZoneSize:
    """The upstream's shared memory, and why it has that size (the config says it)."""

    size: str  # as nginx reads it, e.g. "136k"
    servers: int  # servers it has room for
    per_server: int  # bytes nginx 1.22 keeps per server
    needed: int  # bytes nginx 1.22 needs for `servers` servers

    @property
    def why(self) -> tuple[str, ...]:
        """Comment lines for the config."""
        return (
            f"{self.size}: nginx 1.22 keeps {self.per_server} bytes per server here (its state, address and name),",
            f"{self.needed // 1024}k for {self.servers} servers, the most a lab can have, so `lab scale` never needs",
            f"a bigger zone; times {ZONE_MARGIN} for nginx builds that keep more. (A fixed 64k held only 63.)",
        )


def zone_size(servers: int, longest_server: int, upstream: str = UPSTREAM_NAME) -> ZoneSize:
    """The zone for an upstream of `servers` servers now: sized for the most a lab can ever have.

    `longest_server` is the longest "host:port" it may ever name (replica numbers grow with deploys).
    """
    room = max(servers, MAX_REPLICAS)
    needed = upstream_zone_bytes(room, longest_server, upstream)
    return ZoneSize(
        size=f"{ZONE_MARGIN * needed // 1024}k",
        servers=room,
        per_server=sum(_per_server_chunks(longest_server)),
        needed=needed,
    )


@dataclass(frozen=True)
class NginxView:
    """Everything the nginx template shows, already decided."""

    lab: str
    upstream: str
    method: str  # nginx's directive for the method, "" for round robin (its default)
    method_comment: str
    backends: tuple[Backend, ...]
    zone: ZoneSize
    keepalive: int = 32
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


def nginx_view(spec: LabSpec, servers: Sequence[Server] | None = None) -> NginxView:
    """Decide what the config for `spec` says about `servers`: (host, slot) pairs in upstream
    order, by default every slot of the spec under its first replica's name. Each server's weight
    and backup flag are its slot's, so they follow a replica through scale and deploy. A third
    element says what the server is (a swarm task and its node); else it is a container."""
    chosen: Sequence[Server] = (
        servers if servers is not None else [(spec.replica_name(i), i) for i in spec.indices()]
    )
    comment = _METHOD_COMMENTS[spec.algorithm]
    if spec.algorithm == "hash":
        comment += f" (key {spec.hash_key}{', consistent hashing' if spec.consistent else ''})"
    backends = tuple(
        Backend(
            index=server[1],
            host=server[0],
            port=BACKEND_PORT,
            weight=spec.weight_of(server[1]),
            backup=spec.backup == server[1],
            what=server[2] if len(server) > 2 else f"container {server[0]}",
        )
        for server in chosen
    )
    if backends and all(b.backup for b in backends):  # nginx wants a server besides the backup
        backends = tuple(replace(b, backup=False) for b in backends)
    longest = Backend(index=0, host=spec.replica_name(_LONGEST_INDEX), port=BACKEND_PORT)
    view = NginxView(
        lab=spec.name,
        upstream=UPSTREAM_NAME,
        method=method_directive(spec),
        method_comment=comment,
        backends=backends,
        zone=zone_size(len(backends), max(len(f"{b.host}:{b.port}") for b in (*backends, longest))),
        max_fails=spec.max_fails,
        fail_timeout=f"{spec.fail_timeout}s",
    )
    return replace(view, generation=hashlib.sha256(repr(view).encode()).hexdigest()[:12])


def _environment(template_dir: Path) -> jinja2.Environment:
    import jinja2  # on first use: `lab up` renders in a thread beside the replicas' start

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
    import jinja2

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
