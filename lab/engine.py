"""What lab asks of a container engine: plain values in and out, and the verbs, as a Protocol (pure).

`docker_ops.Engine` implements `ContainerEngine` with the Docker SDK; the unit tests implement it
with a small fake (tests/unit/fake_engine.py). The orchestrator, the load balancer, the replica
backends and the live operations are written against this interface and receive the engine as a
parameter, so none of them imports Docker, and their logic is tested without a daemon.

Containers and networks come back as snapshots (`ContainerInfo`, `NetworkInfo`): what the engine
said when asked. `inspect` and `state` ask again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lab.progress import ProgressFn


@dataclass(frozen=True)
class ContainerRequest:
    """What to start: the adapter turns it into one `create` call."""

    name: str
    image: str
    labels: dict[str, str]
    network: str
    hostname: str | None = None
    command: list[str] | None = None
    environment: dict[str, str] = field(default_factory=dict)
    ports: dict[str, tuple[str, int | None]] = field(default_factory=dict)  # "80/tcp" -> (bind, port or any)
    cap_add: tuple[str, ...] = ()
    mem_limit: str = "128m"
    pids_limit: int = 256
    restart: str | None = None  # e.g. "unless-stopped"
    extra_hosts: dict[str, str] = field(default_factory=dict)
    network_disabled: bool = False
    binds: dict[str, str] = field(default_factory=dict)  # host path -> path inside; the host path must exist
    read_only: bool = False  # a read-only root file system
    volumes: dict[str, str] = field(default_factory=dict)  # named volume -> mount point
    read_only_binds: dict[str, str] = field(default_factory=dict)  # like binds, mounted read-only


@dataclass(frozen=True)
class Endpoint:
    """A container's place on one network."""

    address: str = ""  # its IPv4 address there ("" until it runs)
    gateway: str = ""  # the host's address on that network


@dataclass(frozen=True)
class ContainerInfo:
    """One container, as the engine listed it."""

    id: str
    name: str
    labels: Mapping[str, str]
    status: str  # created, running, paused, restarting, exited, dead
    image: str  # the image reference it was created from
    networks: Mapping[str, Endpoint] = field(default_factory=dict)

    def on(self, network: str) -> bool:
        return network in self.networks

    def address(self, network: str) -> str:
        endpoint = self.networks.get(network)
        return endpoint.address if endpoint else ""


@dataclass(frozen=True)
class ContainerState:
    """What a container is doing now."""

    status: str  # created, running, paused, restarting, exited, dead, or "gone"
    pid: int = 0  # its main process on the engine's host (0 when it has none)
    started_at: str = ""  # when it last started (the engine's timestamp)
    restart_count: int = 0  # how often its restart policy brought it back
    exit_code: int | None = None

    @property
    def running(self) -> bool:
        return self.status in ("running", "paused")


@dataclass(frozen=True)
class PathStat:
    """What a path inside a container is (the engine's stat of it)."""

    name: str
    size: int
    directory: bool
    link_target: str = ""


@dataclass(frozen=True)
class NetworkInfo:
    """One network, as the engine listed it."""

    id: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    internal: bool = False


# Swarm and nodes (values the adapter's swarm verbs take and return) --------------------------------
@dataclass(frozen=True)
class NestedEngineRequest:
    """A container that runs its own Docker engine (a swarm node on this desk).

    `--privileged` is refused on this kind of machine. What an inner dockerd needs instead: every
    capability but SYS_RESOURCE, no seccomp or AppArmor profile, unmasked /proc and /sys paths,
    the cgroup tree writable, and a volume on /var/lib/docker (overlay2 cannot stack on the
    container's own overlay file system; without the volume it falls back to vfs).
    """

    name: str
    image: str
    hostname: str
    labels: dict[str, str]
    network: str
    volume: str
    pids_limit: int = 4096


@dataclass(frozen=True)
class UpdatePolicy:
    """How a service replaces its tasks (`update_config`, and `rollback_config` on the way back)."""

    parallelism: int = 1  # tasks replaced at a time
    order: str = "start-first"  # the new task runs (and is healthy) before the old one stops
    monitor: float = 5.0  # seconds a new task is watched for failure before the next batch
    failure_action: str = "rollback"  # on a failed task: put the previous spec back
    delay: float = 0.0  # seconds between batches


@dataclass(frozen=True)
class HealthCheck:
    """A command run inside each task; Swarm reports a task running only once it passes."""

    command: tuple[str, ...]  # e.g. ("CMD", "bash", "-c", script)
    interval: float = 2.0  # seconds
    timeout: float = 2.0
    retries: int = 2
    start_period: float = 30.0  # failures in the first seconds do not count


@dataclass(frozen=True)
class ServiceRequest:
    """A replicated swarm service: what `create_service` turns into one call."""

    name: str
    image: str
    labels: dict[str, str]
    network: str
    replicas: int
    constraints: tuple[str, ...] = ()
    hostname: str | None = None  # a Go template Swarm expands, e.g. {{.Service.Name}}-{{.Task.Slot}}
    max_per_node: int | None = None
    cap_add: tuple[str, ...] = ()
    container_labels: dict[str, str] = field(default_factory=dict)
    health: HealthCheck | None = None
    update: UpdatePolicy = field(default_factory=UpdatePolicy)
    mem_limit: str = ""  # e.g. "128m"; "" for none
    endpoint_mode: str = "vip"  # "dnsrr": no virtual IP (the lab's load balancer names each task)
    stop_grace: float = 10.0  # seconds between the stop signal and SIGKILL


@dataclass(frozen=True)
class ServiceInfo:
    id: str
    name: str
    labels: dict[str, str]
    replicas: int | None = None  # None for a global service
    image: str = ""
    container_labels: dict[str, str] = field(default_factory=dict)
    update_state: str = ""  # updating, completed, paused, rollback_started, rollback_completed, ...
    update_message: str = ""
    update_started: str = ""  # when the last rolling update began (RFC 3339)
    version: int = 0


@dataclass(frozen=True)
class TaskInfo:
    """One task of a service, as the manager reports it."""

    slot: int
    node_id: str
    state: str  # new, pending, assigned, preparing, starting, running, failed, ...
    error: str
    addresses: tuple[str, ...]  # on the service's networks, without the prefix length
    id: str = ""
    desired_state: str = "running"  # "shutdown" once the orchestrator wants it gone
    container_id: str = ""
    timestamp: str = ""  # when it entered `state` (the node's clock), RFC 3339
    updated_at: str = ""  # the manager's last change to the task (a new desired state, say)
    image: str = ""
    container_labels: dict[str, str] = field(default_factory=dict)
    networks: dict[str, str] = field(default_factory=dict)  # network name -> its address there


@dataclass(frozen=True)
class SwarmNode:
    """One node of the swarm, as the manager sees it."""

    id: str
    hostname: str
    state: str  # ready, down, unknown, disconnected
    availability: str  # active, pause, drain
    address: str
    labels: dict[str, str]
    engine_version: str


ACTIVE_ENDPOINTS = "active endpoints"  # how the engine refuses to remove a network something is on
Filters = Mapping[str, Sequence[str]]  # the engine's label filters, e.g. {"label": ["lab.name=x"]}


StepFn = Callable[[float, str], None]  # (fraction of a build done, the step it is at)


class ImageEngine(Protocol):
    """The image verbs: what lab.images and lab.site build and check through."""

    def image_exists(self, ref: str) -> bool: ...

    def image_id(self, ref: str) -> str:
        """The image's id; a LabError when it is missing."""
        ...

    def image_tags(self) -> set[str]:
        """Every tag of every local image."""
        ...

    def image_labels(self, ref: str) -> dict[str, str]: ...

    def build_image(
        self,
        context: Path,
        tag: str,
        *,
        dockerfile: Path | None = None,
        buildargs: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        on_step: StepFn | None = None,
    ) -> str:
        """Build `context` into `tag` (never pulling); raise BuildFailed with the log's tail."""
        ...

    def import_image(self, tarball: Path, repository: str, tag: str, changes: list[str]) -> None: ...

    def pull_image(self, repository: str, tag: str, on_progress: ProgressFn | None = None) -> str:
        """Pull repository:tag (a LabError when no registry serves it); its digest."""
        ...

    def remove_image(self, ref: str) -> bool:
        """Remove one tag (the image goes once no tag holds it); False when there was none."""
        ...


class ContainerEngine(ImageEngine, Protocol):
    """The verbs the orchestrator, the load balancer, the replica backends and the live operations use.

    Every container argument is a `ContainerInfo` the same engine returned. Failures the engine
    reports come back as `lab.errors.LabError` (EngineRefused, NameInUse, ...), never as SDK types.
    """

    # Finding things
    def containers(self, filters: Filters) -> list[ContainerInfo]:
        """Every container (running or not) matching `filters`."""
        ...

    def inspect(self, container: ContainerInfo) -> ContainerInfo | None:
        """A fresh snapshot of `container` (None once it is gone)."""
        ...

    def state(self, container: ContainerInfo) -> ContainerState: ...

    def container_exists(self, container_id: str) -> bool: ...

    def networks(self, filters: Filters) -> list[NetworkInfo]: ...

    def network_containers(self, network: NetworkInfo) -> dict[str, str]:
        """The containers on `network` now: id -> name (empty once it is gone)."""
        ...

    # Making and changing things
    def create_network(self, name: str, labels: dict[str, str], *, internal: bool) -> NetworkInfo:
        """A bridge network; raises NameInUse when the name is taken."""
        ...

    def create_container(self, req: ContainerRequest) -> ContainerInfo:
        """Create (not start) the container `req` describes."""
        ...

    def start(self, container: ContainerInfo) -> None: ...

    def stop(self, container: ContainerInfo, timeout: int) -> None:
        """Its stop signal, then SIGKILL after `timeout` seconds; one that is gone is fine."""
        ...

    def kill(self, containers: Iterable[ContainerInfo]) -> None:
        """SIGKILL those that run; others are left as they are."""
        ...

    def pause(self, container: ContainerInfo) -> None: ...

    def unpause(self, container: ContainerInfo) -> None: ...

    def attach(self, network: str, container: ContainerInfo, aliases: list[str] | None = None) -> None: ...

    def detach(self, network: str, container: ContainerInfo) -> None: ...

    def release_endpoints(self, container: ContainerInfo) -> None:
        """Take a container off every network it is on (one already off is fine)."""
        ...

    def put_files(self, container: ContainerInfo, files: Mapping[str, str]) -> None:
        """Write text files (absolute path -> content) into a created or running container."""
        ...

    def read_file(self, container: ContainerInfo, path: str) -> str: ...

    def stat_path(self, container: ContainerInfo, path: str) -> PathStat | None:
        """What `path` is inside the container (running or not); None when nothing is there."""
        ...

    def put_archive(self, container: ContainerInfo, directory: str, data: bytes) -> None:
        """Unpack a tar archive into an existing `directory` of the container (`docker cp`)."""
        ...

    def commit(
        self,
        container: ContainerInfo,
        repository: str,
        tag: str,
        *,
        labels: Mapping[str, str],
        changes: list[str],
        message: str,
    ) -> str:
        """`docker container commit` into repository:tag, `labels` set over the inherited ones; its id."""
        ...

    def exec(self, container: ContainerInfo, command: list[str]) -> tuple[int, str]:
        """Run `command` in a running container; its exit code and combined output."""
        ...

    # Waiting and reading
    def wait_for_log(self, container: ContainerInfo, marker: str) -> bool:
        """Follow the output until `marker` appears (True) or the container ends (False)."""
        ...

    def wait_exit(self, container: ContainerInfo, timeout: float) -> int: ...

    def logs(self, container: ContainerInfo, tail: int = 40) -> str: ...

    def log_lines(self, container: ContainerInfo, since: float) -> Iterator[str]: ...

    # Removing
    def remove_containers(self, containers: Iterable[ContainerInfo]) -> int: ...

    def wait_gone(self, filters: Filters, *, timeout: float = 30.0) -> list[ContainerInfo]: ...

    def remove_network(self, network: NetworkInfo, *, patience: float = 0.0) -> str:
        """ "" once it is gone, else the engine's reason for keeping it."""
        ...

    def remove_volumes(self, filters: Filters) -> int: ...

    # Services (a lab on the swarm is one); `down` removes them like containers
    def services(self, filters: Filters | None = None) -> list[ServiceInfo]:
        """Swarm services matching `filters`; none when this engine is no swarm manager."""
        ...

    def service_tasks(self, service: str, *, desired: str | None = "running") -> list[TaskInfo]:
        """The tasks of `service` (those the orchestrator wants in state `desired`; None: all)."""
        ...

    def remove_service(self, service: str) -> bool: ...


class EventStream(Protocol):
    """Events as the engine sends them (decoded), until `close()` (from any thread) ends the stream."""

    def __iter__(self) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


class SwarmEngine(ContainerEngine, Protocol):
    """What a lab on a swarm needs besides containers: the manager's view, services, overlays, events.

    `docker_ops.Engine` implements it; the unit tests use a fake (tests/unit/fake_swarm.py).
    """

    def swarm_state(self) -> dict[str, Any]:
        """The `Swarm` part of `docker info` (lab.swarm.SwarmView reads it)."""
        ...

    def swarm_labels(self) -> dict[str, str]: ...

    def swarm_init(self, advertise_addr: str, listen_addr: str, labels: dict[str, str]) -> str: ...

    def swarm_leave(self) -> None: ...

    def swarm_nodes(self) -> list[SwarmNode]: ...

    def bridge_gateways(self) -> dict[str, str]: ...

    def network(self, name: str) -> NetworkInfo | None: ...

    def remove_networks(self, networks: Iterable[NetworkInfo], *, patience: float = 10.0) -> int: ...

    def create_overlay_network(
        self, name: str, labels: dict[str, str], *, internal: bool = False
    ) -> NetworkInfo:
        """An attachable overlay: the service's tasks and plain containers of the manager join it."""
        ...

    def service(self, name: str) -> ServiceInfo | None: ...

    def create_service(self, req: ServiceRequest) -> str: ...

    def update_service(
        self,
        name: str,
        *,
        replicas: int | None = None,
        image: str | None = None,
        container_labels: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        update: UpdatePolicy | None = None,
    ) -> None:
        """Change what is given and leave the rest of the service's spec as it is."""
        ...

    def events(self, filters: Filters) -> EventStream: ...
