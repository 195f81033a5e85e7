"""The orchestrator: `up`, `down`, `status`, `scale` and `deploy` of one lab, each a transaction on the engine.

It works against the engine interface (lab.engine) it is handed, a replica backend
(lab.replicas: where and how the replicas run) and the lab's load balancer (lab.loadbalancer:
the only writer of its config and stored spec).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from lab import labels, swarm, workflow
from lab import reaper as reapers
from lab import watcher as watchers
from lab.engine import ACTIVE_ENDPOINTS, ContainerEngine, ContainerInfo, NetworkInfo
from lab.errors import InvalidInput, LabError, SwarmError
from lab.images import ensure_base_images
from lab.loadbalancer import LoadBalancer
from lab.progress import EventFn, ProgressFn, Timings, as_progress, quiet
from lab.replicas import ContainerReplicas, ReplicaBackend, SiteImage, create_network, probe_all
from lab.results import LabStatus, Leftover, MemberStatus, Removed
from lab.site import ensure_site_image, site_version
from lab.spec import LabSpec, parse_int_in_range, parse_replicas, parse_site, parse_version_tag, resize_notes
from lab.swarm_replicas import SwarmReplicas, as_swarm
from lab.taskwatch import last_change
from lab.undo import Undo, sigint_ignored, undo_on_failure

RUNNING_STATES = ("running", "restarting", "paused")
# Why a network of a lab stays behind when nothing of the lab is on it any more.
SERVICE_PATIENCE = 40.0  # seconds a swarm lab's overlay may stay in use while its tasks stop (10 s grace)
STUCK = "the engine still counts an endpoint on it; restart the Docker engine to clear it"


# Up -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FromRegistry:
    """Where `up --from-registry` pulls the site image: a repository in the lab's registry
    (127.0.0.1:PORT/lab/site) and a tag (None: the site version of the spec's folder)."""

    repository: str
    tag: str | None = None


def pull_site_image(
    engine: ContainerEngine, source: FromRegistry, default_tag: str, progress: ProgressFn
) -> SiteImage:
    """Pull the site image from the registry (every chunk checked: a RegistryError with the
    registry's message when it fails); its version is its label, else the tag."""
    tag = source.tag or default_tag
    ref = f"{source.repository}:{tag}"
    progress(f"pulling {ref}", None)
    engine.pull_image(source.repository, tag, on_progress=progress)
    return SiteImage(ref, engine.image_labels(ref).get(labels.SITE_VERSION) or tag)


def up(
    engine: ContainerEngine,
    spec: LabSpec,
    progress: ProgressFn = quiet,
    *,
    timeout: float = 60.0,
    ttl: int | None = None,
    timings: Timings | None = None,
    init: bool = False,
    from_registry: FromRegistry | None = None,
) -> LabStatus:
    """Build and start the lab; return once every replica has answered through the load balancer.

    With `ttl` (seconds), a reaper removes the lab that long after it came up. On any failure,
    and on Ctrl-C, everything this call created is removed again. `timings` records each phase.
    A swarm lab (`spec.engine`) needs this engine to be a swarm manager; with `init` it is made
    one if it is in no swarm (and left again if this call fails).
    With `from_registry` the replicas run the image pulled from there, not a local build; a
    failed pull stops `up` before anything is created.
    """
    phase = (timings or Timings()).phase
    on_swarm = spec.engine == "swarm"
    with phase("checks"):
        stuck = _refuse_if_present(engine, spec)
        _refuse_if_port_taken(spec.bind, spec.port)
        if on_swarm:
            swarm_check(engine, init=init)  # refused before anything is built or made
    if ttl is not None:
        with phase("reaper image"):
            reapers.ensure_image(engine, progress)  # a build failure stops `up` before anything runs
    with phase("image check"):
        base = ensure_base_images(engine, progress=progress)
        if from_registry is not None:
            default_tag = "" if from_registry.tag else site_version(spec.site, engine.image_id(base.httpd))
            image = pull_site_image(engine, from_registry, default_tag, progress)
        else:
            image = SiteImage(*ensure_site_image(engine, spec.site, base.httpd, progress))
        watcher_image = watchers.ensure_image(engine, progress) if on_swarm else ""
    expires_at = None
    with undo_on_failure() as undo, rollback_on_failure(engine, spec.name):
        backend_ready, all_started, abandoned = threading.Event(), threading.Event(), threading.Event()
        made: list[ReplicaBackend] = []

        def wait_for(event: threading.Event) -> bool:
            while not event.wait(0.01):
                if abandoned.is_set():
                    return False
            return True

        def load_balancer() -> tuple[LoadBalancer, str]:
            """Made and started beside the replicas: it needs none of them until nginx starts in it,
            which `release` allows once every replica runs (their names resolve then); nginx tests
            its config as it starts. No request reaches it before every replica listens."""
            with phase("frontend network, load balancer create and start (beside the replicas)"):
                frontend = create_network(
                    engine, spec.name, labels.ROLE_FRONTEND_NET, spec.frontend_network, internal=False
                )
                lb = LoadBalancer.create(engine, spec, image=base.nginx, network=frontend)
                lb.start(spec, progress)
            if wait_for(backend_ready):
                with phase("load balancer joins the backend network (beside the replicas)"):
                    lb.join(made[0].network)
            with phase("until every replica runs (beside them)"):
                ran = wait_for(all_started)
            if ran:
                if on_swarm:  # its tasks are named by address, known only once they run
                    lb.prime(spec, made[0].members())
                lb.release()
            return lb, frontend

        with ThreadPoolExecutor(max_workers=2) as side:
            # Leaving this block waits for the side tasks, so a rollback never races them.
            backend_made = side.submit(  # beside the frontend's
                _prepare_backend, engine, spec, init=init, undo=undo, progress=progress
            )
            prepared = side.submit(load_balancer)
            try:
                with phase("backend network"):
                    backend = backend_made.result()
                made.append(backend)
                backend_ready.set()
                with phase("replica start"):
                    members = backend.start(spec, image, progress, beside=prepared, started=all_started)
            except BaseException:
                abandoned.set()
                raise
            lb, frontend = prepared.result()
        watcher = None
        if on_swarm:
            with phase("watcher start"):
                watcher = watchers.start(engine, spec.name, watcher_image, progress)
        with phase("readiness"):
            names = list(dict.fromkeys(m.name for m in members))
            lb.wait_serving(spec, names, progress, deadline=time.monotonic() + timeout)
        if ttl is not None:
            progress("starting the reaper that removes the lab when its time is up", None)
            with phase("reaper start"):
                expires_at = reapers.start_deadline_reaper(engine, spec.name, ttl)
    # Everything is known: each one has just answered through the load balancer.
    return LabStatus(
        name=spec.name,
        url=spec.url,
        algorithm=spec.algorithm,
        load_balancer=MemberStatus(lb.name, labels.ROLE_LB, 0, "running", "ok", base.nginx, ""),
        replicas=tuple(
            MemberStatus(
                m.name,
                labels.ROLE_WEB,
                m.index,
                "running",
                "ok",
                m.image,
                m.version,
                slot=m.slot,
                node=m.node,
            )
            for m in members
        ),
        networks=tuple(sorted([backend.network, frontend, *(n.name for n in stuck)])),
        stuck_networks=stuck,
        expires_at=expires_at,
        engine=spec.engine,
        watcher=_watcher_status(watcher) if watcher else None,
        site_mount=str(spec.site) if spec.mount_site else "",
    )


def swarm_check(engine: ContainerEngine, *, init: bool) -> None:
    """Refuse (one line) an engine a swarm lab cannot use: a worker, a locked swarm, no swarm without `init`."""
    reason = swarm.refusal(swarm.view(as_swarm(engine)), init=init)
    if reason is not None:
        raise SwarmError(reason)


def _prepare_backend(
    engine: ContainerEngine, spec: LabSpec, *, init: bool, undo: Undo, progress: ProgressFn
) -> ReplicaBackend:
    if spec.engine == "swarm":
        return SwarmReplicas.prepare(engine, spec, init=init, undo=undo, progress=progress)
    return ContainerReplicas.prepare(engine, spec)


def _refuse_if_present(engine: ContainerEngine, spec: LabSpec) -> tuple[Leftover, ...]:
    """Refuse a lab that runs; remove what a dead one left (an engine restart, a killed `lab`).

    A network the engine will not release is left alone (returned, with the reason): `up` names
    its own networks afresh.
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
        return tuple(sorted((left for left in removed.left if left.kind == "network"), key=lambda n: n.name))
    return ()


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


# A running lab -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunningLab:
    """A lab whose load balancer is running: what it serves, and how its replicas run."""

    spec: LabSpec
    lb: LoadBalancer
    backend: ReplicaBackend
    replicas: list[str]  # names of the running replicas, by slot
    slots: dict[str, int]  # replica name -> its slot

    def weights(self, names: list[str]) -> list[int]:
        """The weight each of `names` has now (its slot's)."""
        return [self.spec.weight_of(self.slots.get(name, 0)) for name in names]

    def backup_position(self, names: list[str]) -> int | None:
        """Where (from 1) in `names` the backup replica is, if it is among them."""
        if self.spec.backup is None:
            return None
        return next((i for i, n in enumerate(names, start=1) if self.slots.get(n) == self.spec.backup), None)


def backend_of(engine: ContainerEngine, name: str, lb: LoadBalancer, spec: LabSpec) -> ReplicaBackend:
    """How lab `name`'s replicas run: containers on this engine, or a swarm service's tasks."""
    if spec.engine == "swarm":
        return SwarmReplicas.find(engine, name, lb.container)
    return ContainerReplicas.find(engine, name, lb.container)


def find_running(engine: ContainerEngine, name: str) -> RunningLab:
    """The running lab `name`, or a one-line error saying why there is none."""
    lb = LoadBalancer.find(engine, name)
    if lb is None:
        raise LabError(f"there is no lab named {name!r}; start one with `lab up --name {name}`")
    if lb.container.status != "running":
        raise LabError(f"the load balancer of lab {name!r} is {lb.container.status}, not running")
    spec = lb.spec()
    backend = backend_of(engine, name, lb, spec)
    replicas = backend.replicas()
    running = list(dict.fromkeys(m.name for m in replicas if m.status == "running"))
    return RunningLab(spec, lb, backend, running, {m.name: m.slot for m in replicas})


# Scale and deploy ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Scaled:
    spec: LabSpec  # what the lab serves now
    notes: tuple[str, ...] = ()  # what became of the weights and the backup


def scale(engine: ContainerEngine, name: str, replicas: object, *, on_event: EventFn | None = None) -> Scaled:
    """Add replicas (start, check, then add to the upstream) or remove them (take them out of the
    upstream, let in-flight requests finish, then stop them gracefully). Never drops a request.
    Weights and the backup follow the replicas' slots; new replicas get weight 1."""
    n = parse_replicas(replicas)
    lab = find_running(engine, name)
    serving = lab.backend.members()
    if not serving:
        raise LabError(f"lab {name!r} has no serving replica to scale from; `lab chaos restore` first")
    if n == len(serving):
        _announce(on_event, f"already {n} replicas")
        return Scaled(lab.spec)
    spec = lab.spec.resized(n)
    notes = tuple(resize_notes(lab.spec, spec))
    for note in notes:
        _announce(on_event, note)
    lab.backend.scale(spec, lab.lb, on_event)
    return Scaled(spec, notes)


def deploy(
    engine: ContainerEngine,
    name: str,
    *,
    site: Path | str | None = None,
    batch: object = 1,
    tag: str | None = None,
    image: str | None = None,
    on_event: EventFn | None = None,
) -> str:
    """Rolling update: replace `batch` replicas at a time with the new site version, each new one
    answering before it joins the upstream and each old one drained before it stops. Every
    replacement takes its predecessor's slot, so weights and the backup stay where they were.

    If a new replica does not become healthy, the replicas already replaced go back to the
    previous version and DeployFailed says so. Returns the new version.

    With `image` (a snapshot's tag, or any local image reference) that image is rolled out as it
    is, no site is built; its version is its `lab.site-version` label, else its tag.
    """
    if image is not None and (site is not None or tag is not None):
        raise InvalidInput("--image rolls out an existing image: give it without --site and --tag")
    ref = workflow.image_ref(image) if image is not None else None
    site_dir = parse_site(site) if site is not None else None
    version_name = parse_version_tag(tag) if tag is not None else None
    lab = find_running(engine, name)
    serving = lab.backend.members()
    if not serving:
        raise LabError(f"lab {name!r} has no serving replica to deploy over; `lab chaos restore` first")
    size = parse_int_in_range(batch, "batch (replicas replaced at a time)", 1, len(serving))
    spec = lab.spec.with_changes(site=site_dir or lab.spec.site)
    if ref is not None:
        if not engine.image_exists(ref):
            raise InvalidInput(f"there is no image {ref} on this engine (`lab snapshot` makes one)")
        found = engine.image_labels(ref).get(labels.SITE_VERSION) or ref.rpartition(":")[2]
        new_image = SiteImage(ref, found)
        _announce(
            on_event, f"rolling out {ref} (version {found}) to {len(serving)} replicas, {size} at a time"
        )
        lab.backend.roll_out(lab.spec, spec, lab.lb, new_image, size, on_event)
        _announce(on_event, f"deployed version {found} to {len(serving)} replicas")
        return found
    previous = lab.backend.current_image()
    base = ensure_base_images(engine)
    if version_name is None:
        content = site_version(spec.site, engine.image_id(base.httpd))
        # With nothing changed, deploy still rolls out a new version (a rebuild), as asked.
        version_name = (
            content if content != previous.version else f"{content}.{time.strftime('%Y%m%d%H%M%S')}"
        )
    ref, version = ensure_site_image(
        engine, spec.site, base.httpd, as_progress(on_event), version_name=version_name
    )
    _announce(on_event, f"built version {version}; replacing {len(serving)} replicas, {size} at a time")
    lab.backend.roll_out(lab.spec, spec, lab.lb, SiteImage(ref, version), size, on_event)
    _announce(on_event, f"deployed version {version} to {len(serving)} replicas")
    return version


def _announce(on_event: EventFn | None, message: str) -> None:
    if on_event is not None:
        on_event(message)


# Rollback and down -------------------------------------------------------------------------
@contextlib.contextmanager
def rollback_on_failure(engine: ContainerEngine, name: str) -> Iterator[None]:
    """Remove every resource of lab `name` if the block fails or is interrupted."""
    try:
        yield
    except BaseException as exc:
        with sigint_ignored():  # a second Ctrl-C must not leave the rollback half done
            removed = remove_lab(engine, name)
        if removed.left and isinstance(exc, LabError):
            exc.detail = "\n".join([exc.detail, *leftover_lines(removed.left)]).strip()
        raise


def remove_lab(engine: ContainerEngine, name: str, *, patience: float = 10.0) -> Removed:
    """Remove every container, network and volume labelled with lab `name`, as far as the engine lets.

    Containers go first, and networks only once the engine lists none of them any more. A network
    a container that is not the lab's is on stays (that container is never touched), and so does
    one the engine still counts an endpoint on: `Removed.left` says which and why.
    """
    selector = labels.lab_filter(name)
    # A swarm lab's service goes first: its tasks' containers are Swarm's to stop (a task container
    # removed while its service exists comes back as a new task), and its overlay is free only
    # once they are gone, on every node.
    services = engine.services(selector)
    for service in services:
        engine.remove_service(service.name)
    if services:
        patience = max(patience, SERVICE_PATIENCE)
    found = [c for c in engine.containers(selector) if c.labels.get(labels.ROLE) != labels.ROLE_TASK]
    # Docker 20.10 keeps a count of each network's endpoints, and releases of several endpoints
    # of one network at once can leave it one too high: the network then stays "in use" until the
    # engine restarts. So endpoints are released one at a time, and only the removal is parallel.
    for container in found:
        engine.release_endpoints(container)
    containers = engine.remove_containers(found)
    kept = engine.wait_gone(selector, timeout=30.0 if found or services else 0.0)
    ours = {c.id for c in found} | {c.id for c in kept}
    left = [Leftover("container", c.name, f"the engine did not remove it (it is {c.status})") for c in kept]
    networks = 0
    for network in engine.networks(selector):
        on_it = engine.network_containers(network)
        reason = _held_by(engine, on_it, ours, {c.id for c in kept})
        if not reason:
            # Just after its containers went, the engine may need a moment to release their endpoints.
            reason = engine.remove_network(network, patience=patience if found or services else 0.5)
            if ACTIVE_ENDPOINTS in reason:
                reason = STUCK
        if reason:
            left.append(Leftover("network", network.name, reason))
        else:
            networks += 1
    volumes = engine.remove_volumes(selector)
    running = tuple(c.name for c in kept if c.status in RUNNING_STATES)
    return Removed(containers, networks, volumes, tuple(left), running, services=len(services))


def _held_by(engine: ContainerEngine, on_it: dict[str, str], ours: set[str], kept: set[str]) -> str:
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


def down(engine: ContainerEngine, name: str) -> Removed:
    """Remove lab `name`. The last swarm lab on a swarm the lab initialised leaves it again, unless
    something else uses it (nodes, services, overlays: `Removed.swarm` says which)."""
    removed = remove_lab(engine, name)
    if removed.services and swarm.lab_initialised(as_swarm(engine)):
        released = swarm.release_if_unused(as_swarm(engine))
        return replace(removed, swarm=released.reason)
    return removed


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
# Status ---------------------------------------------------------------------------------
def status(engine: ContainerEngine, name: str, *, known: dict[str, str] | None = None) -> LabStatus:
    """What runs for lab `name`; each running container is asked whether it answers HTTP,
    unless its health is already `known`. A swarm lab's replicas are its service's tasks, each
    with the node it runs on (a running task has passed its health check)."""
    containers = engine.containers(labels.lab_filter(name))
    found_networks = engine.networks(labels.lab_filter(name))
    services = engine.services(labels.lab_filter(name, labels.ROLE_SERVICE))
    networks = tuple(sorted(n.name for n in found_networks))
    if not containers and not networks and not services:
        raise LabError(f"there is no lab named {name!r}; start one with `lab up --name {name}`")
    stuck = _stuck_networks(engine, found_networks, {c.id for c in containers})
    lb_container = next((c for c in containers if c.labels.get(labels.ROLE) == labels.ROLE_LB), None)
    lb = LoadBalancer(engine, lb_container) if lb_container else None
    spec = lb.spec() if lb else None
    reaper = next((c for c in containers if c.labels.get(labels.ROLE) == labels.ROLE_REAPER), None)
    watcher = next((c for c in containers if c.labels.get(labels.ROLE) == labels.ROLE_WATCHER), None)
    checks = known if known is not None else probe_all(engine, [lb_container] if lb_container else [])
    backend: ReplicaBackend
    if services:
        backend = SwarmReplicas(as_swarm(engine), name, "", services[0].name)
    else:
        backend = ContainerReplicas(engine, name, "")  # status lists replicas whatever network they are on
    return LabStatus(
        name=name,
        url=spec.url if spec else "",
        algorithm=spec.algorithm if spec else "",
        load_balancer=_lb_status(lb, checks) if lb else None,
        replicas=tuple(backend.status(known)),
        networks=networks,
        stuck_networks=stuck,
        expires_at=reapers.expires_at(reaper.labels) if reaper else None,
        engine="swarm" if services or (spec is not None and spec.engine == "swarm") else "docker",
        watcher=_watcher_status(watcher) if watcher else None,
        upstream_change=last_change(engine.logs(watcher, tail=200)) if watcher else None,
        site_mount=str(spec.site) if spec and spec.mount_site else "",
    )


def _watcher_status(container: ContainerInfo) -> MemberStatus:
    return MemberStatus(
        name=container.name,
        role=labels.ROLE_WATCHER,
        index=0,
        state=container.status,
        health="-",
        image=container.image,
        site_version="",
    )


def _lb_status(lb: LoadBalancer, checks: dict[str, str]) -> MemberStatus:
    container = lb.container
    return MemberStatus(
        name=container.name,
        role=labels.ROLE_LB,
        index=0,
        state=container.status,
        health=checks.get(container.name, "-"),
        image=container.image,
        site_version="",
    )


def _stuck_networks(
    engine: ContainerEngine, networks: list[NetworkInfo], ours: set[str]
) -> tuple[Leftover, ...]:
    """Networks of the lab that nothing of the lab is on: `up` and `down` remove those, so one that
    stays is held by someone else's container, or the engine still counts an endpoint on it."""
    stuck = []
    for network in networks:
        on_it = engine.network_containers(network)
        if any(cid in ours for cid in on_it):
            continue
        stuck.append(Leftover("network", network.name, _held_by(engine, on_it, ours, set()) or STUCK))
    return tuple(sorted(stuck, key=lambda item: item.name))
