"""The orchestrator: `up`, `down` and `status` of one lab, each a transaction on the engine."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass

import requests
from docker.models.containers import Container

from lab import labels
from lab import reaper as reapers
from lab.docker_ops import ACTIVE_ENDPOINTS, ContainerRequest, Engine, Network
from lab.errors import InvalidInput, LabError, NameInUse, NotReady
from lab.images import ensure_base_images
from lab.progress import ProgressFn, quiet
from lab.render import nginx_view, render_nginx_conf
from lab.site import ensure_site_image
from lab.spec import LabSpec, probe_host
from lab.undo import sigint_ignored

NGINX_CONF = "/etc/nginx/nginx.conf"
SPEC_FILE = "/etc/nginx/lab-spec.json"
HTTPD_READY = "resuming normal operations"  # httpd logs this once it listens
# What each process needs once every capability is dropped: bind port 80 (engines that keep
# ports below 1024 privileged), switch to an unprivileged user, and for nginx, hand its temp
# directories to that user (the official image creates them at start).
HTTPD_CAPS = ("NET_BIND_SERVICE", "SETUID", "SETGID")
NGINX_CAPS = ("NET_BIND_SERVICE", "SETUID", "SETGID", "CHOWN")
START_WORKERS = 16
RUNNING_STATES = ("running", "restarting", "paused")
# Why a network of a lab stays behind when nothing of the lab is on it any more.
STUCK = "the engine still counts an endpoint on it; restart the Docker engine to clear it"


@dataclass(frozen=True)
class MemberStatus:
    """One container of a lab, as `lab status` shows it."""

    name: str
    role: str
    index: int
    state: str
    health: str
    image: str
    site_version: str


@dataclass(frozen=True)
class Leftover:
    """Something of a lab that is still there, and why."""

    kind: str  # "network" or "container"
    name: str
    reason: str


@dataclass(frozen=True)
class LabStatus:
    name: str
    url: str
    algorithm: str
    load_balancer: MemberStatus | None
    replicas: tuple[MemberStatus, ...]
    networks: tuple[str, ...]  # every network labelled for the lab
    stuck_networks: tuple[Leftover, ...] = ()  # those nothing of the lab is on, and why they stay
    expires_at: float | None = None  # UNIX time a `--ttl` lab removes itself

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Removed:
    containers: int
    networks: int
    volumes: int
    left: tuple[Leftover, ...] = ()  # what could not be removed, and why
    running: tuple[str, ...] = ()  # containers of the lab that still run

    @property
    def nothing(self) -> bool:
        return not (self.containers or self.networks or self.volumes or self.left)


@dataclass(frozen=True)
class LabNetworks:
    """The names of the networks one `up` created (fresh ones if the usual names were taken)."""

    backend: str
    frontend: str


# Up -------------------------------------------------------------------------------------
def up(
    engine: Engine,
    spec: LabSpec,
    progress: ProgressFn = quiet,
    *,
    timeout: float = 60.0,
    ttl: int | None = None,
) -> LabStatus:
    """Build and start the lab; return once every replica has answered through the load balancer.

    With `ttl` (seconds), a reaper removes the lab that long after it came up. On any failure,
    and on Ctrl-C, everything this call created is removed again.
    """
    _refuse_if_present(engine, spec)
    _refuse_if_port_taken(spec.bind, spec.port)
    if ttl is not None:
        reapers.ensure_image(engine, progress)  # a build failure stops `up` before anything runs
    base = ensure_base_images(engine.client, progress=progress)
    image, version = ensure_site_image(engine, spec.site, base.httpd, progress)
    config = render_nginx_conf(nginx_view(spec))
    with rollback_on_failure(engine, spec.name):
        networks = _create_networks(engine, spec)
        with ThreadPoolExecutor(max_workers=1) as side:
            # Testing the config and creating the load balancer need no replica, so they
            # happen while the replicas start; if the config fails its test, the start stops.
            # Leaving this block waits for the side task, so a rollback never races it.
            prepared = side.submit(_prepare_load_balancer, engine, spec, networks, base.nginx, config)
            requests_ = [replica_request(spec, i, image, version, networks.backend) for i in spec.indices()]
            start_containers(engine, requests_, progress, beside=prepared)
            lb = prepared.result()
        _start_load_balancer(engine, spec, lb, progress)
        wait_served_by_all(engine, spec, lb, progress, deadline=time.monotonic() + timeout)
        if ttl is not None:
            progress("starting the reaper that removes the lab when its time is up", None)
            reapers.start_deadline_reaper(engine, spec.name, ttl)
    answered = "ok"  # each one has just answered through the load balancer
    return status(engine, spec.name, known={name: answered for name in [spec.lb_name, *spec.replica_names()]})


def _refuse_if_present(engine: Engine, spec: LabSpec) -> None:
    """Refuse a lab that runs; remove what a dead one left (an engine restart, a killed `lab`).

    A network the engine will not release is left alone: `up` names its own networks afresh.
    """
    existing = engine.containers(labels.lab_filter(spec.name))
    running = [c for c in existing if c.status in ("running", "restarting", "created")]
    if running:
        raise InvalidInput(
            f"lab {spec.name!r} is already up ({len(running)} containers); "
            f"use it, or remove it first with `lab down --name {spec.name}`"
        )
    if existing or engine.networks(labels.lab_filter(spec.name)):
        removed = remove_lab(engine, spec.name)
        kept = [left for left in removed.left if left.kind == "container"]
        if kept:
            raise LabError(
                f"lab {spec.name!r} left container {kept[0].name} behind and the engine did not remove it: "
                f"{kept[0].reason}"
            )


def _refuse_if_port_taken(bind: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As servers do (docker-proxy included): connections in TIME_WAIT don't make a port busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bind, port))
        except PermissionError:
            raise InvalidInput(f"port {port} on {bind} needs privileges this user lacks") from None
        except OSError as exc:
            reason = "is already in use" if exc.errno == 98 else f"cannot be used ({exc.strerror})"
            raise InvalidInput(f"port {port} on {bind} {reason}; choose another with --port") from None


def _create_networks(engine: Engine, spec: LabSpec) -> LabNetworks:
    # Replicas live on an internal network: no route out, nothing published.
    backend = _create_network(engine, spec.name, labels.ROLE_BACKEND_NET, spec.backend_network, internal=True)
    frontend = _create_network(
        engine, spec.name, labels.ROLE_FRONTEND_NET, spec.frontend_network, internal=False
    )
    return LabNetworks(backend=backend, frontend=frontend)


def _create_network(engine: Engine, lab: str, role: str, name: str, *, internal: bool) -> str:
    """Create the network under `name`, or under a fresh name if `name` is taken (by a network the
    engine will not release, or by anyone else's); everything finds it by its labels."""
    candidates = [name, *(f"{name}-{secrets.token_hex(3)}" for _ in range(3))]
    for candidate in candidates:
        try:
            engine.create_network(candidate, labels.for_lab(lab, role), internal=internal)
        except NameInUse:
            continue
        return candidate
    raise LabError(
        f"could not find a free name for the {role} network of lab {lab!r} (tried {name} and 3 more)"
    )


def lab_network(engine: Engine, name: str, role: str, lb: Container | None = None) -> str:
    """The network of `role` (labels.ROLE_BACKEND_NET or ROLE_FRONTEND_NET) lab `name` serves on.

    It is the labelled one its load balancer is on: a network the engine would not release may
    carry the same labels, and nothing of the lab is on that one.
    """
    labelled = {n.name for n in engine.networks(labels.lab_filter(name, role))}
    balancers = [lb] if lb is not None else engine.containers(labels.lab_filter(name, labels.ROLE_LB))
    for container in balancers:
        for network in container.attrs["NetworkSettings"]["Networks"]:
            if network in labelled:
                return str(network)
    raise LabError(
        f"lab {name!r} has no {role} network its load balancer is on; `lab down` and `lab up` again"
    )


def replica_request(spec: LabSpec, index: int, image: str, version: str, network: str) -> ContainerRequest:
    """Replica `index` of `spec` on `network` (the lab's backend network)."""
    name = spec.replica_name(index)
    return ContainerRequest(
        name=name,
        hostname=name,  # the site reports its hostname as X-Served-By
        image=image,
        labels=labels.for_lab(spec.name, labels.ROLE_WEB, replica=str(index), site_version=version),
        network=network,
        cap_add=HTTPD_CAPS,
    )


class _Cancelled(Exception):
    """A worker noticed that `up` is being rolled back."""


def start_containers(
    engine: Engine,
    requests_: list[ContainerRequest],
    progress: ProgressFn,
    *,
    beside: Future[object] | None = None,
) -> list[Container]:
    """Create and start containers in parallel; return once each has logged that it listens.

    If anything fails (a start here, or the task `beside` that runs next to them), or the user
    interrupts, workers stop creating, those already started are killed, and this returns (by
    raising) only once every engine call in flight has ended: the caller's rollback then finds,
    by label, everything that was made, and never removes a network while a container is being
    created on it.
    """
    cancelled = threading.Event()
    waiting: dict[str, Container] = {}  # started, and followed until they say they listen
    done = 0
    lock = threading.Lock()

    def create_start_wait(req: ContainerRequest) -> Container:
        nonlocal done
        if cancelled.is_set():
            raise _Cancelled
        container = engine.create_container(req)
        if cancelled.is_set():
            raise _Cancelled  # the rollback removes it, by label
        engine.start(container)
        with lock:
            waiting[container.name] = container
        try:
            if cancelled.is_set():
                raise _Cancelled
            listening = engine.wait_for_log(container, HTTPD_READY)
        finally:
            with lock:
                waiting.pop(container.name, None)
        if not listening and probe_http(engine, container) != "ok":
            if cancelled.is_set():
                raise _Cancelled
            raise NotReady(f"replica {req.name} exited while starting", detail=engine.logs(container))
        with lock:
            done += 1
            progress(f"{done}/{len(requests_)} replicas listening", done / len(requests_))
        return container

    progress(f"starting {len(requests_)} replicas", 0.0)
    pool = ThreadPoolExecutor(max_workers=min(START_WORKERS, len(requests_)))
    futures = [pool.submit(create_start_wait, req) for req in requests_]
    watched: list[Future[object]] = [*futures, *([beside] if beside is not None else [])]
    try:
        finished, _ = wait(watched, return_when=FIRST_EXCEPTION)
        errors = [f.exception() for f in watched if f in finished]
        first = next((error for error in errors if error is not None), None)
        if first is not None:
            raise first
        return [future.result() for future in futures]
    except BaseException:
        cancelled.set()
        with sigint_ignored():  # a second Ctrl-C must not leave calls running under the rollback
            _drain(engine, futures, waiting, lock)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _drain(
    engine: Engine, futures: list[Future[Container]], waiting: dict[str, Container], lock: threading.Lock
) -> None:
    """Cancel what has not begun and wait for the rest. A worker following the log of a container
    that is starting ends once that container is stopped: it is taken off its network first, one
    at a time (see remove_lab), then killed."""
    for future in futures:
        future.cancel()
    stopped: set[str] = set()
    pending = {f for f in futures if not f.done()}
    while pending:
        with lock:
            to_stop = [c for name, c in waiting.items() if name not in stopped]
        for container in to_stop:
            engine.release_endpoints(container)
            engine.kill([container])
            stopped.add(container.name)
        _, pending = wait(pending, timeout=0.2)


def check_nginx_config(engine: Engine, spec: LabSpec, nginx_image: str, config: str) -> None:
    """`nginx -t` the config in a throwaway container of the load balancer's image.

    nginx resolves upstream host names while testing, so the replica names are mapped to a
    placeholder address: the test then needs neither the network nor running replicas.
    """
    hosts = {name: "127.0.0.1" for name in spec.replica_names()}
    req = ContainerRequest(
        name=f"{spec.name}-config-check-{int(time.time() * 1000) % 100000}",
        image=nginx_image,
        labels=labels.for_lab(spec.name, labels.ROLE_CHECK),
        network="",
        network_disabled=True,
        command=["nginx", "-t"],
        extra_hosts=hosts,
        cap_add=NGINX_CAPS,
    )
    container = engine.create_container(req)
    try:
        engine.put_file(container, NGINX_CONF, config)
        engine.start(container)
        code = engine.wait_exit(container, timeout=30)
        if code != 0:
            raise LabError(
                "the rendered nginx config failed `nginx -t`", detail=engine.logs(container, tail=20)
            )
    finally:
        engine.remove_containers([container])


def _prepare_load_balancer(
    engine: Engine, spec: LabSpec, networks: LabNetworks, image: str, config: str
) -> Container:
    """Test the config, then create (not start) the load balancer on both networks with it."""
    check_nginx_config(engine, spec, image, config)
    req = ContainerRequest(
        name=spec.lb_name,
        hostname=spec.lb_name,
        image=image,
        labels=labels.for_lab(spec.name, labels.ROLE_LB, spec=spec_label(spec)),
        network=networks.frontend,
        ports={"80/tcp": (spec.bind, spec.port)},
        cap_add=NGINX_CAPS,
        restart="unless-stopped",
    )
    container = engine.create_container(req)
    engine.attach(networks.backend, container)
    engine.put_file(container, NGINX_CONF, config)
    engine.put_file(container, SPEC_FILE, spec_label(spec))
    return container


def _start_load_balancer(engine: Engine, spec: LabSpec, container: Container, progress: ProgressFn) -> None:
    progress("starting the load balancer", None)
    try:
        engine.start(container)
    except LabError as exc:
        if "already allocated" in exc.message or "address already in use" in exc.message:
            raise InvalidInput(
                f"port {spec.port} on {spec.bind} is already in use; choose another with --port"
            ) from exc
        raise


def spec_label(spec: LabSpec) -> str:
    """The spec as JSON: a label on the load balancer (as created) and a file in it (as now)."""
    return json.dumps(spec.as_dict(), sort_keys=True)


def current_spec(engine: Engine, lb: Container) -> LabSpec:
    """The spec the load balancer serves now: its spec file, else the label it was created with."""
    try:
        return LabSpec.from_dict(json.loads(engine.read_file(lb, SPEC_FILE)))
    except Exception:  # noqa: BLE001 - no file (or a stopped container): the creation label still tells
        return LabSpec.from_dict(json.loads(lb.labels[labels.SPEC]))


def wait_served_by_all(
    engine: Engine, spec: LabSpec, lb: Container, progress: ProgressFn, *, deadline: float
) -> None:
    """Poll the load balancer on loopback until every replica has answered through it."""
    wanted = set(spec.replica_names())
    seen: set[str] = set()
    last_problem = "no answer yet"
    url = f"http://{probe_host(spec.bind)}:{spec.port}/"
    max_requests = 50 + 20 * spec.replicas
    with requests.Session() as session:
        for _ in range(max_requests):
            try:
                response = session.get(url, timeout=2)
                served_by = response.headers.get("X-Served-By", "")
                if response.status_code == 200 and served_by in wanted:
                    seen.add(served_by)
                else:
                    last_problem = f"HTTP {response.status_code} from {served_by or 'the load balancer'}"
            except requests.RequestException as exc:
                last_problem = type(exc).__name__
                time.sleep(0.05)
            progress(f"{len(seen)}/{len(wanted)} replicas answered through {url}", len(seen) / len(wanted))
            if seen == wanted:
                return
            if time.monotonic() > deadline:
                break
            lb.reload()
            # nginx exited at start and its restart policy tries again: seen when Docker's DNS did
            # not resolve the replicas' names for a few seconds (a busy engine, or one entering or
            # leaving swarm mode). Wait for it until the deadline, sending nothing meanwhile.
            while lb.status == "restarting" and time.monotonic() < deadline:
                last_problem = "the load balancer keeps restarting"
                time.sleep(0.25)
                lb.reload()
            if lb.status not in ("running", "created"):
                break
    missing = sorted(wanted - seen)
    raise NotReady(
        f"{len(missing)} replica(s) never answered through {url} ({last_problem}): {', '.join(missing[:5])}",
        detail=engine.logs(lb),
    )


# Rollback and down -------------------------------------------------------------------------
@contextlib.contextmanager
def rollback_on_failure(engine: Engine, name: str) -> Iterator[None]:
    """Remove every resource of lab `name` if the block fails or is interrupted."""
    try:
        yield
    except BaseException as exc:
        with sigint_ignored():  # a second Ctrl-C must not leave the rollback half done
            removed = remove_lab(engine, name)
        if removed.left and isinstance(exc, LabError):
            exc.detail = "\n".join([exc.detail, *leftover_lines(removed.left)]).strip()
        raise


def remove_lab(engine: Engine, name: str, *, patience: float = 10.0) -> Removed:
    """Remove every container, network and volume labelled with lab `name`, as far as the engine lets.

    Containers go first, and networks only once the engine lists none of them any more. A network
    a container that is not the lab's is on stays (that container is never touched), and so does
    one the engine still counts an endpoint on: `Removed.left` says which and why.
    """
    selector = labels.lab_filter(name)
    found = engine.containers(selector)
    # Docker 20.10 keeps a count of each network's endpoints, and releases of several endpoints
    # of one network at once can leave it one too high: the network then stays "in use" until the
    # engine restarts. So endpoints are released one at a time, and only the removal is parallel.
    for container in found:
        engine.release_endpoints(container)
    containers = engine.remove_containers(found)
    kept = engine.wait_gone(selector, timeout=30.0 if found else 0.0)
    ours = {c.id for c in found} | {c.id for c in kept}
    left = [Leftover("container", c.name, f"the engine did not remove it (it is {c.status})") for c in kept]
    networks = 0
    for network in engine.networks(selector):
        on_it = engine.network_containers(network)
        reason = _held_by(engine, on_it, ours, {c.id for c in kept})
        if not reason:
            # Just after its containers went, the engine may need a moment to release their endpoints.
            reason = engine.remove_network(network, patience=patience if found else 0.5)
            if ACTIVE_ENDPOINTS in reason:
                reason = STUCK
        if reason:
            left.append(Leftover("network", network.name, reason))
        else:
            networks += 1
    volumes = engine.remove_volumes(selector)
    running = tuple(c.name for c in kept if c.status in RUNNING_STATES)
    return Removed(containers, networks, volumes, tuple(left), running)


def _held_by(engine: Engine, on_it: dict[str, str], ours: set[str], kept: set[str]) -> str:
    """Why a network cannot go yet because of what is on it ("" if nothing is). An endpoint of a
    container that no longer exists holds nothing: the removal then tells whether it is stuck."""
    others = sorted(name for cid, name in on_it.items() if cid not in ours and engine.container_exists(cid))
    if others:
        return (
            f"container {', '.join(others)}, not of this lab, is on it and is left alone; "
            "disconnect or remove it to free the network"
        )
    still = sorted(name for cid, name in on_it.items() if cid in kept)
    if still:
        return f"the lab's container {', '.join(still)} is still on it"
    return ""


def down(engine: Engine, name: str) -> Removed:
    return remove_lab(engine, name)


def leftover_lines(left: tuple[Leftover, ...]) -> list[str]:
    """One line per thing that stays, naming it and why."""
    return [f"left behind: {item.kind} {item.name}: {item.reason}" for item in left]


def stuck_note(lab: str, stuck: tuple[Leftover, ...]) -> str:
    """One line for `up`: the lab runs without its stuck networks; which they are and how to free them."""
    names = " and ".join(item.name for item in stuck)
    reasons = "; ".join(dict.fromkeys(item.reason for item in stuck))
    verb = "is" if len(stuck) == 1 else "are"
    return f"lab {lab} runs on new networks: {names} {verb} stuck ({reasons})"


# Status ---------------------------------------------------------------------------------
def status(engine: Engine, name: str, *, known: dict[str, str] | None = None) -> LabStatus:
    """What runs for lab `name`; each running container is asked whether it answers HTTP,
    unless its health is already `known`."""
    containers = engine.containers(labels.lab_filter(name))
    found_networks = engine.networks(labels.lab_filter(name))
    networks = tuple(sorted(n.name for n in found_networks))
    if not containers and not networks:
        raise LabError(f"there is no lab named {name!r}; start one with `lab up --name {name}`")
    stuck = _stuck_networks(engine, found_networks, {c.id for c in containers})
    lb_container = next((c for c in containers if c.labels.get(labels.ROLE) == labels.ROLE_LB), None)
    web = sorted(
        (c for c in containers if c.labels.get(labels.ROLE) == labels.ROLE_WEB),
        key=lambda c: labels.replica_index(c.labels),
    )
    spec = current_spec(engine, lb_container) if lb_container else None
    reaper = next((c for c in containers if c.labels.get(labels.ROLE) == labels.ROLE_REAPER), None)
    members = ([lb_container] if lb_container else []) + web
    checks = known if known is not None else _probe_all(engine, members)
    return LabStatus(
        name=name,
        url=spec.url if spec else "",
        algorithm=spec.algorithm if spec else "",
        load_balancer=_member(lb_container, checks) if lb_container else None,
        replicas=tuple(_member(c, checks) for c in web),
        networks=networks,
        stuck_networks=stuck,
        expires_at=reapers.expires_at(reaper.labels) if reaper else None,
    )


def _stuck_networks(engine: Engine, networks: list[Network], ours: set[str]) -> tuple[Leftover, ...]:
    """Networks of the lab that nothing of the lab is on: `up` and `down` remove those, so one that
    stays is held by someone else's container, or the engine still counts an endpoint on it."""
    stuck = []
    for network in networks:
        on_it = engine.network_containers(network)
        if any(cid in ours for cid in on_it):
            continue
        stuck.append(Leftover("network", network.name, _held_by(engine, on_it, ours, set()) or STUCK))
    return tuple(sorted(stuck, key=lambda item: item.name))


def _member(container: Container, checks: dict[str, str]) -> MemberStatus:
    tags = container.image.tags if container.image else []
    return MemberStatus(
        name=container.name,
        role=container.labels.get(labels.ROLE, ""),
        index=labels.replica_index(container.labels),
        state=container.status,
        health=checks.get(container.name, "-"),
        image=tags[0] if tags else container.attrs.get("Config", {}).get("Image", ""),
        site_version=container.labels.get(labels.SITE_VERSION, ""),
    )


# Health probes run inside the container, so no traffic goes from the host to a container address.
_PROBE = (
    "exec 3<>/dev/tcp/127.0.0.1/80 && "
    "printf 'GET {path} HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && "
    'IFS= read -r line <&3 && echo "$line"'
)


def probe_http(engine: Engine, container: Container, path: str = "/") -> str:
    """`ok` if the container answers an HTTP GET on its own port 80 with 2xx/3xx, else why not."""
    try:
        code, output = engine.exec(container, ["bash", "-c", _PROBE.format(path=path)])
    except Exception as exc:  # an exec into a dying container fails in several ways
        return f"failing ({type(exc).__name__})"
    status_line = output.strip().splitlines()[-1] if output.strip() else ""
    parts = status_line.split()
    if code == 0 and len(parts) >= 2 and parts[1][:1] in "23":
        return "ok"
    return f"failing ({status_line or 'no answer'})"


def _probe_all(engine: Engine, containers: list[Container]) -> dict[str, str]:
    running = [c for c in containers if c.status == "running"]
    if not running:
        return {}

    def check(c: Container) -> tuple[str, str]:
        path = "/lab/health" if c.labels.get(labels.ROLE) == labels.ROLE_LB else "/"
        return c.name, probe_http(engine, c, path)

    with ThreadPoolExecutor(max_workers=min(START_WORKERS, len(running))) as pool:
        return dict(pool.map(check, running))
