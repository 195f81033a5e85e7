"""Replicas as one swarm service: the second `ReplicaBackend` (lab.replicas has the first).

The site runs as a replicated service on an attachable overlay network: one task per replica,
each named by its slot (`{{.Service.Name}}-{{.Task.Slot}}`, the same `lab-web-N` as on one
engine), with a health check, so Swarm reports a task running only once it answers HTTP.
Nothing is published through Swarm's ingress (it listens on every interface): the load balancer
stays a plain container on the manager, attached to the overlay, publishing on 127.0.0.1.

The members are the tasks Swarm wants running that run, by their overlay address: nginx never
resolves a name, so it never keeps a stale address (the classic Swarm + nginx trap), and its
balancing methods stay. A watcher container (lab.watcher, running lab.taskwatch) keeps the
upstream on those tasks whatever happens (a scale, a deploy, a task or a node that dies). `scale`
and `roll_out` here change the service and wait until the watcher's upstream has followed.

`scale` maps to the replica count, `roll_out` to a service update (`update_config`: batch
parallelism, start-first, monitor, rollback on failure). Which tasks a scale-down removes is
Swarm's choice (it evens out the nodes), so slots may have gaps; weights still follow slots.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from lab import labels, swarm
from lab.engine import (
    ContainerEngine,
    ContainerInfo,
    HealthCheck,
    NetworkInfo,
    ServiceInfo,
    ServiceRequest,
    SwarmEngine,
    TaskInfo,
    UpdatePolicy,
)
from lab.errors import DeployFailed, InvalidInput, LabError, NameInUse, NotReady
from lab.loadbalancer import config_generation, upstream_hosts
from lab.progress import EventFn, ProgressFn, quiet
from lab.replicas import HTTPD_CAPS, STOP_TIMEOUT, Member, SiteImage, by_slot
from lab.results import MemberStatus
from lab.spec import LabSpec
from lab.undo import Undo

if TYPE_CHECKING:
    from lab.loadbalancer import LoadBalancer

HOSTNAME = "{{.Service.Name}}-{{.Task.Slot}}"  # Swarm expands it: lab-web-3 for slot 3
# The same GET the Compose file's health check makes, from inside the task (bash's /dev/tcp).
HEALTH_PROBE = (
    "exec 3<>/dev/tcp/127.0.0.1/80 && "
    "printf 'GET / HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && "
    "read -r _ code _ <&3 && case $code in [23]??) exit 0;; *) exit 1;; esac"
)
# Every 2 s per task: Docker 20.10 runs the first check one interval after the start, so this is
# what a new task waits at most before it counts as running. A task failing 2 checks in a row
# after its first 10 s is replaced by Swarm.
HEALTH = HealthCheck(
    ("CMD", "bash", "-c", HEALTH_PROBE), interval=2.0, timeout=2.0, retries=2, start_period=10.0
)
MONITOR = 5.0  # seconds Swarm watches a new task before it counts the update of its batch done
START_TIMEOUT = 180.0  # seconds for every task to run (first pulls on fresh nodes included)
FOLLOW_TIMEOUT = 120.0  # seconds for a scale or deploy, and for the upstream to follow it
POLL = 0.25
GIVE_UP_FAILURES = 3  # failed tasks per replica after which a start stops waiting
STACK_NAMESPACE = "com.docker.stack.namespace"  # what `docker stack deploy` labels its services with
SWARM_ENGINE = "swarm"
FAILED_STATES = ("failed", "rejected")
ROLLED_BACK = ("rollback_completed", "rollback_paused", "rollback_started", "paused")

PlaceFn = Callable[[SiteImage, ProgressFn], SiteImage]  # make an image reachable from every node


# Pure ------------------------------------------------------------------------------------------
def task_name(spec_name: str, slot: int) -> str:
    """What a task's host name expands to (`X-Served-By`): `{service}-{slot}` = replica_name(slot)."""
    return f"{spec_name}-web-{slot}"


def serving(task: TaskInfo, network: str) -> bool:
    """A task the load balancer may be pointed at: Swarm wants it running, it runs (so its health
    check has passed), and it has an address on the lab's overlay."""
    return task.desired_state == "running" and task.state == "running" and bool(task.networks.get(network))


def members_of(lab: str, tasks: Sequence[TaskInfo], network: str, node_names: dict[str, str]) -> list[Member]:
    """The members for the upstream: every serving task, by slot (during a start-first update a
    slot has two: the new task and the old one until Swarm stops it)."""
    found = [_member(lab, t, network, node_names) for t in tasks if serving(t, network)]
    return sorted(found, key=lambda m: (m.slot, m.address))


def _member(lab: str, task: TaskInfo, network: str, node_names: dict[str, str]) -> Member:
    return Member(
        name=task_name(lab, task.slot),
        host=task.networks.get(network, ""),
        slot=task.slot,
        index=task.slot,
        version=task.container_labels.get(labels.SITE_VERSION, ""),
        image=task.image,
        status=task.state,
        address=task.networks.get(network, ""),
        node=node_names.get(task.node_id, task.node_id[:12]),
    )


def service_request(spec: LabSpec, image: SiteImage, network: str, batch: int = 1) -> ServiceRequest:
    """The service of `spec`: its replicas on `network`, hardened like the containers of one engine."""
    return ServiceRequest(
        name=spec.service_name,
        image=image.ref,
        labels=labels.for_lab(
            spec.name, labels.ROLE_SERVICE, site_version=image.version, engine=SWARM_ENGINE
        ),
        network=network,
        replicas=spec.replicas,
        hostname=HOSTNAME,
        cap_add=HTTPD_CAPS,
        container_labels=labels.for_lab(spec.name, labels.ROLE_TASK, site_version=image.version),
        health=HEALTH,
        update=update_policy(batch),
        mem_limit="128m",
        endpoint_mode="dnsrr",  # no virtual IP: the load balancer names each task
        stop_grace=float(STOP_TIMEOUT),
    )


def update_policy(batch: int) -> UpdatePolicy:
    """`batch` tasks at a time, each new one healthy before its old one stops, back on failure."""
    return UpdatePolicy(parallelism=batch, order="start-first", monitor=MONITOR, failure_action="rollback")


def collision(spec: LabSpec, services: Sequence[ServiceInfo]) -> str | None:
    """Why lab `spec.name` cannot have its service on this swarm (None: it can)."""
    for service in services:
        if service.labels.get(STACK_NAMESPACE) == spec.name:
            return (
                f"a stack named {spec.name!r} runs on this swarm (service {service.name}); "
                "choose another --name or remove the stack"
            )
    for service in services:
        if service.name == spec.service_name and service.labels.get(labels.NAME) != spec.name:
            return f"a swarm service named {service.name!r} exists and is not lab {spec.name!r}'s; choose another --name"
    return None


def task_errors(tasks: Sequence[TaskInfo]) -> Counter[str]:
    """How often each error ended a task (failed or rejected)."""
    return Counter(t.error or t.state for t in tasks if t.state in FAILED_STATES)


@dataclass(frozen=True)
class Settled:
    """Where a scale or deploy got to: the tasks that serve and whether the upstream holds them."""

    members: list[Member]
    in_upstream: bool


# The backend -----------------------------------------------------------------------------------
class SwarmReplicas:
    """Replicas as the tasks of one swarm service (see the module's docstring)."""

    kind = SWARM_ENGINE

    def __init__(
        self,
        engine: SwarmEngine,
        lab: str,
        network: str,
        service: str,
        *,
        place: PlaceFn | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.engine = engine
        self.lab = lab
        self.network = network
        self.service = service
        self.place = place or _placer(engine)
        self.clock = clock
        self.sleep = sleep

    # Finding and making one -------------------------------------------------------------------
    @classmethod
    def prepare(
        cls, engine: ContainerEngine, spec: LabSpec, *, init: bool, undo: Undo, progress: ProgressFn = quiet
    ) -> SwarmReplicas:
        """A backend for a new lab: this engine a usable manager (initialised if asked, left again on
        failure), no service or stack in the way, and the lab's attachable overlay network made."""
        swarm_engine = as_swarm(engine)
        manager = swarm.ensure_manager(swarm_engine, init=init, progress=progress)
        if manager.initialised:
            undo.push("leave the swarm the lab initialised", lambda: swarm.release_if_unused(swarm_engine))
        reason = collision(spec, swarm_engine.services())
        if reason:
            raise InvalidInput(reason)
        network = create_overlay(swarm_engine, spec)
        return cls(swarm_engine, spec.name, network.name, spec.service_name)

    @classmethod
    def find(cls, engine: ContainerEngine, lab: str, lb: ContainerInfo) -> SwarmReplicas:
        """The backend of a running swarm lab: its service, and the overlay its load balancer is on."""
        swarm_engine = as_swarm(engine)
        services = swarm_engine.services(labels.lab_filter(lab, labels.ROLE_SERVICE))
        if not services:
            raise LabError(f"lab {lab!r} has no swarm service; `lab down --name {lab}` and `lab up` again")
        overlays = {n.name for n in swarm_engine.networks(labels.lab_filter(lab, labels.ROLE_BACKEND_NET))}
        network = next((n for n in lb.networks if n in overlays), "")
        return cls(swarm_engine, lab, network, services[0].name)

    # Reading ----------------------------------------------------------------------------------
    def node_names(self) -> dict[str, str]:
        return {n.id: n.hostname for n in self.engine.swarm_nodes()}

    def tasks(self) -> list[TaskInfo]:
        """The tasks Swarm wants running (some still starting)."""
        return self.engine.service_tasks(self.service)

    def replicas(self) -> list[Member]:
        names = self.node_names()
        return by_slot([_member(self.lab, t, self.network, names) for t in self.tasks()])

    def members(self) -> list[Member]:
        return members_of(self.lab, self.tasks(), self.network, self.node_names())

    def current_image(self) -> SiteImage:
        found = self.engine.service(self.service)
        if found is None:
            raise LabError(f"lab {self.lab!r} has no swarm service {self.service!r}")
        return SiteImage(found.image, found.container_labels.get(labels.SITE_VERSION, ""))

    def status(self, known: dict[str, str] | None = None) -> list[MemberStatus]:
        """Each task Swarm wants running: its state, node, image and version. A running task has
        passed its health check (Swarm replaces one that fails it), so that is its health."""
        names = self.node_names()
        return [
            MemberStatus(
                name=task_name(self.lab, t.slot),
                role=labels.ROLE_WEB,
                index=t.slot,
                state=t.state,
                health="ok (health check)" if t.state == "running" else "-",
                image=t.image,
                site_version=t.container_labels.get(labels.SITE_VERSION, ""),
                slot=t.slot,
                node=names.get(t.node_id, t.node_id[:12]),
            )
            for t in self.tasks()
        ]

    # Changing ---------------------------------------------------------------------------------
    def start(
        self,
        spec: LabSpec,
        image: SiteImage,
        progress: ProgressFn,
        *,
        beside: Future[Any] | None = None,
        started: threading.Event | None = None,
    ) -> list[Member]:
        """Create the service and return once each of its tasks runs (and so answers its health
        check: `started` is set then too). The rollback (by label) removes the service if anything fails."""
        placed = self.place(image, progress)
        progress(f"creating service {self.service} ({spec.replicas} tasks)", 0.0)
        self.engine.create_service(service_request(spec, placed, self.network))
        members = self.wait_tasks(spec.replicas, progress, beside=beside)
        if started is not None:
            started.set()
        return members

    def wait_tasks(
        self,
        replicas: int,
        progress: ProgressFn,
        *,
        beside: Future[Any] | None = None,
        timeout: float = START_TIMEOUT,
    ) -> list[Member]:
        """Wait until exactly `replicas` tasks serve. NotReady, with the tasks' errors, if they do not
        in time, or sooner once tasks keep failing (Swarm would retry them forever)."""
        began = self.clock()
        names = self.node_names()
        while True:
            if beside is not None and beside.done() and beside.exception() is not None:
                raise cast(BaseException, beside.exception())
            every = self.engine.service_tasks(self.service, desired=None)
            members = members_of(self.lab, every, self.network, names)
            progress(f"{len(members)}/{replicas} tasks running", min(1.0, len(members) / replicas))
            if len(members) == replicas and len({m.slot for m in members}) == replicas:
                return members
            errors = task_errors(every)
            failing = sum(errors.values()) >= GIVE_UP_FAILURES * replicas
            if failing or self.clock() - began > timeout:
                why = (
                    "; ".join(f"{error} ({n}x)" for error, n in errors.most_common(3)) or "no error reported"
                )
                waited = f"{self.clock() - began:.0f} s"
                raise NotReady(
                    f"{len(members)} of {replicas} tasks of {self.service} ran after {waited}: {why}"
                )
            self.sleep(POLL)

    def scale(self, spec: LabSpec, lb: LoadBalancer, on_event: EventFn | None) -> list[Member]:
        """The service's replica count becomes `spec.replicas`; return once that many tasks serve and
        the load balancer's upstream holds exactly them (the watcher reloads it as tasks come and go).
        The spec (weights by slot) is stored first, as new tasks join under it."""
        members = self.members()
        if spec.replicas > len(members):  # new tasks may land on nodes without the image
            self.place(self.current_image(), lambda text, _f: _announce(on_event, text))
        lb.apply(spec, members, based_on=lb.spec())
        self.engine.update_service(self.service, replicas=spec.replicas)
        _announce(on_event, f"service {self.service}: {spec.replicas} replicas asked of Swarm")
        return self.follow(spec, spec.replicas, lb, on_event, known=members).members

    def roll_out(
        self,
        old: LabSpec,
        new: LabSpec,
        lb: LoadBalancer,
        image: SiteImage,
        batch: int,
        on_event: EventFn | None,
    ) -> list[Member]:
        """A service update to `image`, `batch` tasks at a time, each new task healthy before its old
        one stops (start-first); Swarm rolls back by itself when a new task fails, and then this
        raises DeployFailed. Returns once the upstream holds exactly the new tasks."""
        previous = self.current_image()
        placed = self.place(image, lambda text, _f: _announce(on_event, text))
        members = self.members()
        lb.apply(new, members, based_on=lb.spec())
        found = self.engine.service(self.service)
        before = found.update_started if found else ""
        self.engine.update_service(
            self.service,
            image=placed.ref,
            container_labels=labels.for_lab(self.lab, labels.ROLE_TASK, site_version=placed.version),
            labels=labels.for_lab(
                self.lab, labels.ROLE_SERVICE, site_version=placed.version, engine=SWARM_ENGINE
            ),
            update=update_policy(batch),
        )
        _announce(
            on_event, f"service {self.service}: update to {placed.version}, {batch} at a time, start-first"
        )
        replicas = len({m.slot for m in members}) or new.replicas
        try:
            settled = self.follow(
                new,
                replicas,
                lb,
                on_event,
                version=placed.version,
                previous=previous,
                before=before,
                known=members,
            )
        except DeployFailed:
            with contextlib.suppress(LabError):  # the stored spec names the site that serves again
                lb.apply(old, self.members(), based_on=new)
            raise
        return settled.members

    def follow(
        self,
        spec: LabSpec,
        replicas: int,
        lb: LoadBalancer,
        on_event: EventFn | None,
        *,
        version: str | None = None,
        previous: SiteImage | None = None,
        before: str | None = None,
        known: Sequence[Member] = (),
        timeout: float = FOLLOW_TIMEOUT,
    ) -> Settled:
        """Report tasks as they come and go until `replicas` tasks serve and the upstream holds
        exactly them (its config names them, and new connections to `spec`'s URL meet it). For a deploy (`version`, `previous`, and `before`: when the service's last update
        had begun before this one was asked): until the new update is complete and every task runs
        `version`; DeployFailed once Swarm has rolled it back. Tasks `known` before are not news."""
        began = self.clock()
        seen: dict[str, Member] = {m.address: m for m in known}
        while True:
            members = self.members()
            current = {m.address: m for m in members}
            for address in sorted(current.keys() - seen.keys()):
                m = current[address]
                _announce(on_event, f"task {m.name} ({m.version or '?'}) runs on {m.node} at {m.address}")
            for address in sorted(seen.keys() - current.keys()):
                m = seen[address]
                _announce(on_event, f"task {m.name} at {m.address} is out")
            seen = current
            state, message = self._update_state(before) if version is not None else ("", "")
            if state in ROLLED_BACK and previous is not None:
                _announce(on_event, f"Swarm rolls back: {message or state}")
                tasks = self.engine.service_tasks(self.service, desired=None)
                new_tasks = [t for t in tasks if t.container_labels.get(labels.SITE_VERSION) == version]
                failed = task_errors(new_tasks).most_common(1)
                self._wait_rolled_back(lb, previous, on_event, timeout)
                why = f"{message or state}; a new task failed: {failed[0][0]}" if failed else message or state
                raise DeployFailed(
                    f"deploy of version {version} stopped ({why}); Swarm rolled the service back "
                    f"and version {previous.version} serves again"
                )
            target = [m for m in members if version is None or m.version == version]
            done = len(target) == replicas == len(members) and (version is None or state == "completed")
            config = lb.config() if done else ""
            if (
                done
                and set(upstream_hosts(config)) == set(current)
                and lb.answers_with(spec, config_generation(config))
            ):
                _announce(on_event, f"upstream: {len(members)} tasks (the watcher reloaded nginx)")
                return Settled(members, True)
            if self.clock() - began > timeout:
                raise NotReady(
                    f"service {self.service} did not settle on {replicas} tasks with the upstream on them "
                    f"within {timeout:.0f} s ({len(target)} serve; update {state or 'none'})",
                    detail=lb.logs(),
                )
            self.sleep(POLL)

    def _update_state(self, before: str | None) -> tuple[str, str]:
        """The state of the service's rolling update and its message, once an update other than that
        begun at `before` shows (("", "") until then: the engine keeps the last one's state)."""
        found = self.engine.service(self.service)
        if found is None or not found.update_started or found.update_started == before:
            return "", ""
        return found.update_state, found.update_message

    def _wait_rolled_back(
        self, lb: LoadBalancer, previous: SiteImage, on_event: EventFn | None, timeout: float
    ) -> None:
        began = self.clock()
        while self.clock() - began < timeout:
            found = self.engine.service(self.service)
            if found is not None and found.update_state not in ("rollback_started", "updating"):
                members = self.members()
                back = bool(members) and all(m.version == previous.version for m in members)
                if back and set(lb.upstream()) == {m.address for m in members}:
                    _announce(on_event, f"rolled back: {len(members)} tasks of {previous.version} serve")
                    return
            self.sleep(POLL)


# Helpers --------------------------------------------------------------------------------------
def as_swarm(engine: ContainerEngine) -> SwarmEngine:
    """The engine as a swarm manager: docker_ops.Engine (and the unit tests' swarm fake) are."""
    return cast(SwarmEngine, engine)


def create_overlay(engine: SwarmEngine, spec: LabSpec) -> NetworkInfo:
    """The lab's overlay: attachable (the load balancer joins it) and internal (no route out, as the
    backend network of one engine). Named afresh when the name is taken."""
    wanted = labels.for_lab(spec.name, labels.ROLE_BACKEND_NET, engine=SWARM_ENGINE)
    for candidate in (spec.backend_network, *(f"{spec.backend_network}-{i}" for i in range(2, 5))):
        try:
            return engine.create_overlay_network(candidate, wanted, internal=True)
        except NameInUse:
            continue
    raise LabError(f"could not find a free name for the overlay network of lab {spec.name!r}")


def _announce(on_event: EventFn | None, message: str) -> None:
    if on_event is not None:
        on_event(message)


def _placer(engine: SwarmEngine) -> PlaceFn:
    def place(image: SiteImage, progress: ProgressFn) -> SiteImage:
        from lab.swarm_images import place_image

        return place_image(engine, image, progress)

    return place
