"""How a lab's replicas run: the `ReplicaBackend` interface, and containers on one engine behind it.

The orchestrator (up, scale, deploy, status, down) and the load balancer work against
`ReplicaBackend`; a backend runs the replicas and hands the load balancer its upstream
`members`. `ContainerReplicas` is today's backend: one container per replica on one engine, on
an internal bridge network. A Swarm backend fits the same seam: members are a service's running
tasks (their addresses or names on an attachable overlay network), `scale` changes its replica
count, `roll_out` is a service update, and `status` names each task's node.

Each replica has a slot (1..replicas, its place in the lab) besides its number (in its name; a
new replica takes the next one): a deploy's replacement takes over its predecessor's slot, so weights and the
backup, which the spec gives per slot, follow it.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from lab import labels
from lab.engine import ContainerEngine, ContainerInfo, ContainerRequest
from lab.errors import DeployFailed, LabError, NameInUse, NotReady
from lab.progress import EventFn, ProgressFn, as_progress
from lab.results import MemberStatus
from lab.spec import LabSpec
from lab.undo import sigint_ignored

if TYPE_CHECKING:
    from lab.loadbalancer import LoadBalancer

HTTPD_READY = "resuming normal operations"  # httpd logs this once it listens
# What httpd needs once every capability is dropped: bind port 80 (engines that keep ports below
# 1024 privileged) and switch to an unprivileged user.
HTTPD_CAPS = ("NET_BIND_SERVICE", "SETUID", "SETGID")
START_WORKERS = 16
SERVING_STATES = ("running", "paused")  # a frozen replica still resolves; nginx's passive health handles it
STOP_TIMEOUT = 10  # seconds a retired replica has to finish its requests
DOCROOT = "/usr/local/apache2/htdocs"  # where the site image puts the site (site/Dockerfile)


@dataclass(frozen=True)
class Member:
    """One replica, as a backend runs it and the load balancer reaches it."""

    name: str  # the container (or task) name; its site reports it as X-Served-By
    host: str  # what the load balancer's `server` line names
    slot: int  # its place in the lab (1..replicas): its weight and backup flag are the slot's
    index: int  # its number (in its name): a new replica takes the next one
    version: str  # the site version it serves
    image: str
    status: str  # running, paused, exited, ...
    connected: bool = True  # on the network the load balancer reaches it on
    address: str = ""  # its address there
    node: str = ""  # the engine it runs on ("" on one engine)

    @property
    def serving(self) -> bool:
        """Whether the load balancer can be pointed at it (its name resolves there)."""
        return self.status in SERVING_STATES and self.connected


@dataclass(frozen=True)
class SiteImage:
    ref: str  # the image reference replicas are created from
    version: str  # the site version it holds


def by_slot(members: Sequence[Member]) -> list[Member]:
    return sorted(members, key=lambda m: (m.slot, m.index))


class ReplicaBackend(Protocol):
    """A way to run a lab's replicas (see the module's docstring)."""

    lab: str
    network: str  # where the load balancer reaches the members

    def replicas(self) -> list[Member]:
        """Every replica of the lab, serving or not, by slot."""
        ...

    def members(self) -> list[Member]:
        """The replicas the load balancer can be pointed at, by slot."""
        ...

    def start(
        self,
        spec: LabSpec,
        image: SiteImage,
        progress: ProgressFn,
        *,
        beside: Future[Any] | None = None,
        started: threading.Event | None = None,
    ) -> list[Member]:
        """Run every slot of `spec` and return once each listens (`up`); `started` is set once every
        one runs (their names resolve). If anything fails (or the task `beside`), return only once
        nothing is being created any more, and raise."""
        ...

    def scale(self, spec: LabSpec, lb: LoadBalancer, on_event: EventFn | None) -> list[Member]:
        """Serve `spec.replicas` replicas without dropping a request; the upstream follows."""
        ...

    def roll_out(
        self,
        old: LabSpec,
        new: LabSpec,
        lb: LoadBalancer,
        image: SiteImage,
        batch: int,
        on_event: EventFn | None,
    ) -> list[Member]:
        """Replace every serving replica with one of `image`, `batch` at a time, each new one
        answering before it joins the upstream; on failure put back the version that served and
        raise DeployFailed."""
        ...

    def current_image(self) -> SiteImage:
        """The image the newest serving replica runs."""
        ...

    def status(self, known: dict[str, str] | None = None) -> list[MemberStatus]:
        """Each replica: its state, health (asked, unless `known`), image, slot and node."""
        ...


# Containers on one engine ----------------------------------------------------------------------
def create_network(engine: ContainerEngine, lab: str, role: str, name: str, *, internal: bool) -> str:
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


def replica_request(spec: LabSpec, index: int, slot: int, image: SiteImage, network: str) -> ContainerRequest:
    """Replica number `index`, in `slot`, of `spec` on `network` (the lab's backend network)."""
    name = spec.replica_name(index)
    mounted = {"site_mount": str(spec.site)} if spec.mount_site else {}
    return ContainerRequest(
        name=name,
        hostname=name,  # the site reports its hostname as X-Served-By
        image=image.ref,
        labels=labels.for_lab(
            spec.name,
            labels.ROLE_WEB,
            replica=str(index),
            slot=str(slot),
            site_version=image.version,
            **mounted,
        ),
        network=network,
        cap_add=HTTPD_CAPS,
        # Development mode: the host folder is the document root, so an edit there is served at once.
        read_only_binds={str(spec.site): DOCROOT} if spec.mount_site else {},
    )


class _Cancelled(Exception):
    """A worker noticed that the start is being rolled back."""


def start_containers(
    engine: ContainerEngine,
    requests_: list[ContainerRequest],
    progress: ProgressFn,
    *,
    beside: Future[Any] | None = None,
    started: threading.Event | None = None,
) -> list[ContainerInfo]:
    """Create and start containers in parallel; return once each has logged that it listens.
    `started` is set once every container has been started (before they listen).

    If anything fails (a start here, or the task `beside` that runs next to them), or the user
    interrupts, workers stop creating, those already started are killed, and this returns (by
    raising) only once every engine call in flight has ended: the caller's rollback then finds,
    by label, everything that was made, and never removes a network while a container is being
    created on it.
    """
    cancelled = threading.Event()
    waiting: dict[str, ContainerInfo] = {}  # started, and followed until they say they listen
    done = running = 0
    lock = threading.Lock()

    def create_start_wait(req: ContainerRequest) -> ContainerInfo:
        nonlocal done, running
        if cancelled.is_set():
            raise _Cancelled
        container = engine.create_container(req)
        if cancelled.is_set():
            raise _Cancelled  # the rollback removes it, by label
        engine.start(container)
        with lock:
            waiting[container.name] = container
            running += 1
            if running == len(requests_) and started is not None:
                started.set()
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
        return replace(container, status="running")

    progress(f"starting {len(requests_)} replicas", 0.0)
    pool = ThreadPoolExecutor(max_workers=min(START_WORKERS, len(requests_)))
    futures = [pool.submit(create_start_wait, req) for req in requests_]
    watched: list[Future[Any]] = [*futures, *([beside] if beside is not None else [])]
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
    engine: ContainerEngine,
    futures: list[Future[ContainerInfo]],
    waiting: dict[str, ContainerInfo],
    lock: threading.Lock,
) -> None:
    """Cancel what has not begun and wait for the rest. A worker following the log of a container
    that is starting ends once that container is stopped: it is taken off its network first, one
    at a time (see orchestrator.remove_lab), then killed."""
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


# Health probes run inside the container, so no traffic goes from the host to a container address.
_PROBE = (
    "exec 3<>/dev/tcp/127.0.0.1/80 && "
    "printf 'GET {path} HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && "
    'IFS= read -r line <&3 && echo "$line"'
)


def probe_http(engine: ContainerEngine, container: ContainerInfo, path: str = "/") -> str:
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


def probe_all(engine: ContainerEngine, containers: Sequence[ContainerInfo]) -> dict[str, str]:
    """Each running container's answer to `probe_http` (the load balancer's on /lab/health), by name."""
    running = [c for c in containers if c.status == "running"]
    if not running:
        return {}

    def check(c: ContainerInfo) -> tuple[str, str]:
        path = "/lab/health" if c.labels.get(labels.ROLE) == labels.ROLE_LB else "/"
        return c.name, probe_http(engine, c, path)

    with ThreadPoolExecutor(max_workers=min(START_WORKERS, len(running))) as pool:
        return dict(pool.map(check, running))


def _announce(on_event: EventFn | None, message: str) -> None:
    if on_event is not None:
        on_event(message)


class ContainerReplicas:
    """Replicas as containers on one engine, on the lab's internal backend network."""

    kind = "containers"

    def __init__(self, engine: ContainerEngine, lab: str, network: str) -> None:
        self.engine = engine
        self.lab = lab
        self.network = network
        self._containers: dict[str, ContainerInfo] = {}

    @classmethod
    def prepare(cls, engine: ContainerEngine, spec: LabSpec) -> ContainerReplicas:
        """A backend for a new lab: its internal network made (no route out, nothing published)."""
        network = create_network(
            engine, spec.name, labels.ROLE_BACKEND_NET, spec.backend_network, internal=True
        )
        return cls(engine, spec.name, network)

    @classmethod
    def find(cls, engine: ContainerEngine, lab: str, lb: ContainerInfo) -> ContainerReplicas:
        """The backend of a running lab: its network is the labelled one its load balancer is on (a
        network the engine would not release may carry the same labels, and nothing is on that one)."""
        labelled = {n.name for n in engine.networks(labels.lab_filter(lab, labels.ROLE_BACKEND_NET))}
        for network in lb.networks:
            if network in labelled:
                return cls(engine, lab, network)
        raise LabError(
            f"lab {lab!r} has no backend network its load balancer is on; `lab down` and `lab up` again"
        )

    # Reading ----------------------------------------------------------------------------------
    def _member(self, container: ContainerInfo) -> Member:
        self._containers[container.name] = container
        return Member(
            name=container.name,
            host=container.name,  # Docker's DNS on the backend network resolves it
            slot=labels.replica_slot(container.labels),
            index=labels.replica_index(container.labels),
            version=container.labels.get(labels.SITE_VERSION, ""),
            image=container.image,
            status=container.status,
            connected=container.on(self.network),
            address=container.address(self.network),
        )

    def _web(self) -> list[ContainerInfo]:
        return self.engine.containers(labels.lab_filter(self.lab, labels.ROLE_WEB))

    def replicas(self) -> list[Member]:
        return by_slot([self._member(c) for c in self._web()])

    def members(self) -> list[Member]:
        """Replicas nginx can be pointed at: running or frozen, and reachable by name on the
        backend network. Docker's DNS forgets stopped and disconnected containers, and nginx
        refuses a config naming a host it cannot resolve, so those are left out."""
        return [m for m in self.replicas() if m.serving]

    def container(self, member: Member) -> ContainerInfo:
        return self._containers[member.name]

    def current_image(self) -> SiteImage:
        members = self.members()
        if not members:
            raise LabError(f"lab {self.lab!r} has no serving replica; `lab chaos restore` first")
        newest = max(members, key=lambda m: m.index)
        return SiteImage(newest.image, newest.version)

    def status(self, known: dict[str, str] | None = None) -> list[MemberStatus]:
        web = self._web()
        checks = known if known is not None else probe_all(self.engine, web)
        found = [
            MemberStatus(
                name=c.name,
                role=labels.ROLE_WEB,
                index=labels.replica_index(c.labels),
                state=c.status,
                health=checks.get(c.name, "-"),
                image=c.image,
                site_version=c.labels.get(labels.SITE_VERSION, ""),
                slot=labels.replica_slot(c.labels),
            )
            for c in web
        ]
        return sorted(found, key=lambda m: m.index)

    # Changing ---------------------------------------------------------------------------------
    def _next_index(self) -> int:
        return max((labels.replica_index(c.labels) for c in self._web()), default=0) + 1

    def start(
        self,
        spec: LabSpec,
        image: SiteImage,
        progress: ProgressFn,
        *,
        beside: Future[Any] | None = None,
        started: threading.Event | None = None,
    ) -> list[Member]:
        requests_ = [replica_request(spec, i, i, image, self.network) for i in spec.indices()]
        running = start_containers(self.engine, requests_, progress, beside=beside, started=started)
        return by_slot([self._member(c) for c in running])

    def add(
        self, spec: LabSpec, slots: Sequence[int], image: SiteImage, on_event: EventFn | None
    ) -> list[Member]:
        """Start a replica of `image` in each of `slots`; each answers HTTP inside its container
        before this returns. On failure none of them is left."""
        first = self._next_index()
        requests_ = [
            replica_request(spec, first + i, slot, image, self.network) for i, slot in enumerate(slots)
        ]
        try:
            started = start_containers(self.engine, requests_, as_progress(on_event))
            for container in started:
                health = probe_http(self.engine, container)
                if health != "ok":
                    raise NotReady(
                        f"new replica {container.name} does not answer: {health}",
                        detail=self.engine.logs(container),
                    )
                _announce(on_event, f"replica {container.name} answers")
            return by_slot([self._member(c) for c in started])
        except BaseException:
            names = {r.name for r in requests_}
            with sigint_ignored():
                self.engine.remove_containers(c for c in self._web() if c.name in names)
            raise

    def discard(self, members: Sequence[Member]) -> None:
        """Remove replicas at once (they never served)."""
        self.engine.remove_containers([self.container(m) for m in members])

    def retire(self, members: Sequence[Member], on_event: EventFn | None) -> None:
        """Stop replicas with their graceful stop signal (in-flight requests finish), then remove
        them. They are out of the upstream already."""

        def retire(member: Member) -> None:
            container = self.container(member)
            self.engine.stop(container, STOP_TIMEOUT)
            self.engine.remove_containers([container])
            _announce(on_event, f"replica {member.name} stopped and removed")

        with ThreadPoolExecutor(max_workers=max(1, min(8, len(members)))) as pool:
            list(pool.map(retire, members))

    def scale(self, spec: LabSpec, lb: LoadBalancer, on_event: EventFn | None) -> list[Member]:
        """Add replicas (started, checked, then put in the upstream) in the lowest free slots, or
        take those of the highest slots out of the upstream, let their requests finish, then stop them."""
        members = self.members()
        if not members:
            raise LabError(
                f"lab {self.lab!r} has no serving replica to scale from; `lab chaos restore` first"
            )
        wanted = spec.replicas
        if wanted > len(members):
            taken = {m.slot for m in members}
            slots = list(
                itertools.islice((s for s in itertools.count(1) if s not in taken), wanted - len(members))
            )
            added = self.add(spec, slots, self.current_image(), on_event)
            upstream = by_slot(members + added)
            try:
                lb.apply(spec, upstream)
            except BaseException:
                self.discard(added)
                raise
            _announce(on_event, f"reloaded: {wanted} replicas in the upstream")
            return upstream
        keep, remove = members[:wanted], members[wanted:]
        lb.apply(spec, keep)
        _announce(on_event, f"reloaded: {wanted} replicas in the upstream, {len(remove)} taken out")
        lb.drain()
        self.retire(remove, on_event)
        return keep

    def _swap(
        self,
        spec: LabSpec,
        lb: LoadBalancer,
        serving: list[Member],
        old: list[Member],
        image: SiteImage,
        on_event: EventFn | None,
    ) -> tuple[list[Member], list[Member]]:
        """Start replicas of `image` in the slots of `old`, put them in the upstream in their place,
        then drain and retire `old`. Returns the new upstream and the new replicas."""
        new = self.add(spec, [m.slot for m in old], image, on_event)
        going = {m.name for m in old}
        upstream = by_slot([m for m in serving if m.name not in going] + new)
        try:
            lb.apply(spec, upstream)
        except BaseException:
            self.discard(new)
            raise
        _announce(
            on_event, f"reloaded: {', '.join(m.name for m in new)} in, {', '.join(m.name for m in old)} out"
        )
        lb.drain()
        self.retire(old, on_event)
        return upstream, new

    def roll_out(
        self,
        old: LabSpec,
        new: LabSpec,
        lb: LoadBalancer,
        image: SiteImage,
        batch: int,
        on_event: EventFn | None,
    ) -> list[Member]:
        members = self.members()
        if not members:
            raise LabError(
                f"lab {self.lab!r} has no serving replica to deploy over; `lab chaos restore` first"
            )
        previous = self.current_image()
        replaced: list[Member] = []
        serving = list(members)
        for start in range(0, len(members), batch):
            batch_old = members[start : start + batch]
            try:
                serving, added = self._swap(new, lb, serving, batch_old, image, on_event)
            except (LabError, OSError) as exc:
                _announce(on_event, f"deploy stopped: {exc}; rolling back to {previous.version}")
                if replaced:
                    now = self.members()
                    back = {m.name for m in replaced}
                    self._swap(old, lb, now, [m for m in now if m.name in back], previous, on_event)
                detail = exc.detail if isinstance(exc, LabError) else ""
                raise DeployFailed(
                    f"deploy of version {image.version} stopped ({exc}); version {previous.version} serves again",
                    detail=detail,
                ) from exc
            replaced += added
        return serving
