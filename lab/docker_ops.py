"""The only docker-SDK user: a thin adapter with lab-sized verbs (containers, networks, volumes, images, swarm).

It speaks the engine's API (the SDK's low-level client: one request per verb, no model objects)
and hands back the plain values of `lab.engine`, so nothing outside this module reads the
engine's raw data. Every failure the engine reports leaves here as a `lab.errors.LabError`
(`EngineRefused` unless a verb says more). Everything it creates is labelled by the caller;
everything it removes is found by label.
"""

from __future__ import annotations

import contextlib
import functools
import io
import ipaddress
import re
import socket
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, TypeVar

import docker
import docker.errors
import docker.types
import docker.utils
import requests
from docker.utils.socket import frames_iter

from lab.engine import (
    ACTIVE_ENDPOINTS,
    ContainerInfo,
    ContainerRequest,
    ContainerState,
    Endpoint,
    Filters,
    HealthCheck,
    NestedEngineRequest,
    NetworkInfo,
    PathStat,
    ServiceInfo,
    ServiceRequest,
    StepFn,
    SwarmNode,
    TaskInfo,
    UpdatePolicy,
)
from lab.errors import BuildFailed, EngineRefused, EngineUnavailable, LabError, NameInUse, RegistryError
from lab.progress import ProgressFn

__all__ = [
    "ACTIVE_ENDPOINTS",
    "ContainerInfo",
    "ContainerRequest",
    "ContainerState",
    "Endpoint",
    "Engine",
    "Follow",
    "NestedEngineRequest",
    "NetworkInfo",
    "ServiceInfo",
    "ServiceRequest",
    "SwarmNode",
    "TaskInfo",
    "UpdatePolicy",
    "build_fraction",
    "transfer_digest",
]

PARALLEL = 16  # concurrent engine calls; the engine queues the rest anyway
NO_ENGINE = "no Docker engine answers; start one (`make setup` does) and try again"
IN_USE_BY_TASK = "in use by task"  # how the engine refuses to remove an overlay whose tasks still stop
NANO = 1_000_000_000
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class Follow(Generic[T]):
    """A stream the engine keeps open (a followed log, events); `close()` ends it from any thread."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[T]:
        return iter(self._stream)

    def close(self) -> None:
        # Already closed, or the connection is gone: either way the stream ends.
        with contextlib.suppress(Exception):
            self._stream.close()


def _refusals_as_lab_errors(method: F) -> F:
    """The one place engine failures become LabErrors: a verb that says nothing more raises EngineRefused."""

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except docker.errors.DockerException as exc:
            raise EngineRefused(refusal_message(exc)) from exc
        except requests.exceptions.ConnectionError as exc:  # the SDK's transport: nobody listens
            raise EngineUnavailable(NO_ENGINE) from exc

    return call  # type: ignore[return-value]


def _translated(cls: type[T]) -> type[T]:
    for name, member in list(vars(cls).items()):
        if (
            callable(member)
            and not name.startswith("_")
            and not isinstance(member, classmethod | staticmethod)
        ):
            setattr(cls, name, _refusals_as_lab_errors(member))
    return cls


# From the engine's data to lab's values ------------------------------------------------------------
def _endpoints(settings: Mapping[str, Any] | None) -> dict[str, Endpoint]:
    networks = (settings or {}).get("Networks") or {}
    return {
        name: Endpoint(str((ep or {}).get("IPAddress") or ""), str((ep or {}).get("Gateway") or ""))
        for name, ep in networks.items()
    }


def _from_summary(entry: Mapping[str, Any]) -> ContainerInfo:
    """A container from the engine's list (one request answers for every container)."""
    names = entry.get("Names") or [""]
    return ContainerInfo(
        id=str(entry["Id"]),
        name=str(names[0]).lstrip("/"),
        labels=dict(entry.get("Labels") or {}),
        status=str(entry.get("State") or ""),
        image=str(entry.get("Image") or ""),
        networks=_endpoints(entry.get("NetworkSettings")),
    )


def _from_inspect(data: Mapping[str, Any]) -> ContainerInfo:
    config = data.get("Config") or {}
    return ContainerInfo(
        id=str(data["Id"]),
        name=str(data.get("Name") or "").lstrip("/"),
        labels=dict(config.get("Labels") or {}),
        status=str((data.get("State") or {}).get("Status") or ""),
        image=str(config.get("Image") or ""),
        networks=_endpoints(data.get("NetworkSettings")),
    )


def _network(entry: Mapping[str, Any]) -> NetworkInfo:
    return NetworkInfo(
        id=str(entry["Id"]),
        name=str(entry.get("Name") or ""),
        labels=dict(entry.get("Labels") or {}),
        internal=bool(entry.get("Internal")),
    )


def _swarm_node(entry: Mapping[str, Any]) -> SwarmNode:
    status, spec = entry.get("Status") or {}, entry.get("Spec") or {}
    description = entry.get("Description") or {}
    return SwarmNode(
        id=str(entry.get("ID") or ""),
        hostname=str(description.get("Hostname") or ""),
        state=str(status.get("State") or "unknown"),
        availability=str(spec.get("Availability") or ""),
        address=str(status.get("Addr") or ""),
        labels=dict(spec.get("Labels") or {}),
        engine_version=str((description.get("Engine") or {}).get("EngineVersion") or ""),
    )


@_translated
class Engine:
    """A connected Docker engine."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client  # for tests and benches that look at the engine themselves
        self.api = client.api

    @classmethod
    def connect(cls, timeout: int = 60, *, ping: bool = True) -> Engine:
        """Connect to the engine from the environment (DOCKER_HOST or the default socket). Without
        `ping`, an engine that does not answer is found out (as EngineUnavailable) by the first verb."""
        try:
            client = docker.from_env(timeout=timeout)
            if ping:
                client.ping()
        except Exception as exc:  # the SDK raises several unrelated types for "nobody answers"
            raise EngineUnavailable(NO_ENGINE) from exc
        return cls(client)

    # Images -----------------------------------------------------------------------------
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
        """Build `context` into `tag` (never pulling); tell `on_step` each step; raise BuildFailed."""
        log: list[str] = []
        try:
            stream = self.api.build(
                path=str(context),
                dockerfile=str(dockerfile) if dockerfile else None,
                tag=tag,
                buildargs=buildargs or {},
                labels=labels or {},
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
            )
            image_id = ""
            for chunk in stream:
                if "error" in chunk:
                    log.append(str(chunk["error"]).rstrip())
                    raise BuildFailed(
                        f"building {tag} failed: {_last_line(chunk['error'])}", detail=_tail(log)
                    )
                for line in str(chunk.get("stream", "")).splitlines():
                    if not line.strip():
                        continue
                    log.append(line)
                    fraction = build_fraction(line)
                    if fraction is not None and on_step is not None:
                        on_step(fraction, line.split(" : ", 1)[0].strip())
                if "aux" in chunk and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
        except docker.errors.DockerException as exc:
            reason = getattr(exc, "explanation", None) or exc
            raise BuildFailed(f"building {tag} failed: {reason}", detail=_tail(log)) from exc
        return image_id or self.image_id(tag)

    def import_image(self, tarball: Path, repository: str, tag: str, changes: list[str]) -> None:
        """`docker import` a root file system tarball as repository:tag (Dockerfile `changes` applied)."""
        self.api.import_image(src=str(tarball), repository=repository, tag=tag, changes=changes)

    def image_id(self, ref: str) -> str:
        try:
            return str(self.api.inspect_image(ref)["Id"])
        except docker.errors.ImageNotFound:
            raise LabError(f"image {ref} is missing; `lab images` builds the base images") from None

    def image_exists(self, ref: str) -> bool:
        return self._image_id_or_none(ref) is not None

    def image_labels(self, ref: str) -> dict[str, str]:
        return dict((self.api.inspect_image(ref).get("Config") or {}).get("Labels") or {})

    def image_tags(self) -> set[str]:
        """Every tag of every local image, as the engine writes it."""
        return {str(tag) for image in self.api.images() for tag in image.get("RepoTags") or ()}

    def pull(self, repository: str, tag: str) -> None:
        """Pull repository:tag; EngineRefused when no registry serves it."""
        self.api.pull(repository, tag=tag)

    # Networks ---------------------------------------------------------------------------
    def create_network(self, name: str, labels: dict[str, str], *, internal: bool) -> NetworkInfo:
        """Create a bridge network; NameInUse if a network already has that name."""
        try:
            created = self.api.create_network(
                name, driver="bridge", internal=internal, labels=labels, check_duplicate=True
            )
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise NameInUse(f"a network named {name} exists already") from exc
            raise
        return NetworkInfo(str(created["Id"]), name, dict(labels), internal)

    def create_overlay_network(
        self, name: str, labels: dict[str, str], *, internal: bool = False
    ) -> NetworkInfo:
        """An attachable overlay network: services and plain containers of this engine can join.
        Internal: no route out for what is on it (tasks then get no docker_gwbridge endpoint)."""
        try:
            created = self.api.create_network(
                name,
                driver="overlay",
                attachable=True,
                internal=internal,
                labels=labels,
                check_duplicate=True,
            )
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise NameInUse(f"a network named {name} exists already") from exc
            raise
        return NetworkInfo(str(created["Id"]), name, dict(labels), internal)

    def networks(self, filters: Filters) -> list[NetworkInfo]:
        return [_network(entry) for entry in self.api.networks(filters=dict(filters))]

    def network(self, name: str) -> NetworkInfo | None:
        try:
            return _network(self.api.inspect_network(name))
        except docker.errors.NotFound:
            return None

    def network_containers(self, network: NetworkInfo) -> dict[str, str]:
        """The containers the engine has on `network` now: id -> name (empty if it is gone)."""
        try:
            found = self.api.inspect_network(network.id).get("Containers") or {}
        except docker.errors.NotFound:
            return {}
        return {cid: str(info.get("Name", cid[:12])) for cid, info in found.items()}

    def remove_network(self, network: NetworkInfo, *, patience: float = 0.0) -> str:
        """Remove a network; "" once it is gone, else the engine's reason for keeping it.

        The engine may release a just-removed container's endpoint a moment after the removal
        returned ("has active endpoints"): that is retried for `patience` seconds.
        """
        deadline = time.monotonic() + patience
        while True:
            try:
                self.api.remove_network(network.id)
                return ""
            except docker.errors.NotFound:
                return ""
            except docker.errors.APIError as exc:
                reason = _one_line(exc)
                busy = ACTIVE_ENDPOINTS in reason or IN_USE_BY_TASK in reason  # swarm: tasks stopping
                if not busy or time.monotonic() >= deadline:
                    return reason
                time.sleep(0.1)

    def remove_networks(self, networks: Iterable[NetworkInfo], *, patience: float = 10.0) -> int:
        """Remove networks, each retried for `patience` seconds while endpoints (or swarm tasks)
        are still being released; raise EngineRefused for any other refusal."""
        removed = 0
        for network in networks:
            deadline = time.monotonic() + patience
            while True:
                try:
                    self.api.remove_network(network.id)
                    removed += 1
                    break
                except docker.errors.NotFound:
                    break
                except docker.errors.APIError as exc:
                    busy = ACTIVE_ENDPOINTS in str(exc) or IN_USE_BY_TASK in str(exc)  # swarm: tasks stopping
                    if not busy or time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        return removed

    def attach(self, network: str, container: ContainerInfo, aliases: list[str] | None = None) -> None:
        self.api.connect_container_to_network(container.id, network, aliases=aliases)

    def detach(self, network: str, container: ContainerInfo | str) -> None:
        """Take a container (or a container id) off `network`; one not on it is fine."""
        target = container if isinstance(container, str) else container.id
        with contextlib.suppress(docker.errors.NotFound):
            self.api.disconnect_container_from_network(target, network, force=True)

    def release_endpoints(self, container: ContainerInfo) -> None:
        """Take a container (running or not) off every network it is on; one gone already is fine."""
        for network in container.networks:
            with contextlib.suppress(docker.errors.APIError):  # not connected, or gone meanwhile
                self.api.disconnect_container_from_network(container.id, network, force=True)

    def detach_everyone(self, network: NetworkInfo) -> None:
        """Disconnect every container from `network`, so that it can be removed."""
        for container_id in self.network_containers(network):
            self.detach(network.id, container_id)

    def bridge_gateways(self) -> dict[str, str]:
        """The host's address on each local bridge network, by network name (bridge: docker0's).

        The default bridge often lists only its subnet; then a container on it tells its gateway,
        and failing that the engine's own rule applies (docker0 takes the subnet's first address).
        """
        found: dict[str, str] = {}
        for entry in self.api.networks(filters={"driver": "bridge"}):
            configs = [
                c for c in (entry.get("IPAM") or {}).get("Config") or () if ":" not in c.get("Subnet", "")
            ]
            if not configs:
                continue
            gateway = configs[0].get("Gateway") or self._gateway_seen_by_a_container(entry["Name"])
            if not gateway and configs[0].get("Subnet"):
                gateway = str(next(ipaddress.ip_network(configs[0]["Subnet"], strict=False).hosts()))
            if gateway:
                found[entry["Name"]] = str(gateway).split("/")[0]
        return found

    def _gateway_seen_by_a_container(self, network: str) -> str:
        attached = self.api.inspect_network(network).get("Containers") or {}
        for container_id in attached:
            try:
                settings = self.api.inspect_container(container_id)["NetworkSettings"]
            except docker.errors.NotFound:
                continue
            gateway = ((settings.get("Networks") or {}).get(network) or {}).get("Gateway")
            if gateway:
                return str(gateway)
        return ""

    # Containers -------------------------------------------------------------------------
    def containers(self, filters: Filters) -> list[ContainerInfo]:
        """Every container matching `filters`, running or not: one request, whatever the count."""
        return [_from_summary(entry) for entry in self.api.containers(all=True, filters=dict(filters))]

    def container_named(self, name: str) -> ContainerInfo | None:
        try:
            return _from_inspect(self.api.inspect_container(name))
        except docker.errors.NotFound:
            return None

    def inspect(self, container: ContainerInfo) -> ContainerInfo | None:
        return self.container_named(container.id)

    def container_exists(self, container_id: str) -> bool:
        return self.container_named(container_id) is not None

    def state(self, container: ContainerInfo) -> ContainerState:
        try:
            data = self.api.inspect_container(container.id)
        except docker.errors.NotFound:
            return ContainerState("gone")
        state = data.get("State") or {}
        return ContainerState(
            status=str(state.get("Status") or ""),
            pid=int(state.get("Pid") or 0),
            started_at=str(state.get("StartedAt") or ""),
            restart_count=int(data.get("RestartCount") or 0),
            exit_code=int(state["ExitCode"]) if state.get("ExitCode") is not None else None,
        )

    def create_container(self, req: ContainerRequest) -> ContainerInfo:
        """Create (not start) a container that keeps only the privileges it needs: one request."""
        api = self.api
        host_config = api.create_host_config(
            cap_drop=["ALL"],
            cap_add=list(req.cap_add),
            security_opt=["no-new-privileges:true"],
            mem_limit=req.mem_limit,
            pids_limit=req.pids_limit,
            extra_hosts=req.extra_hosts or None,
            network_mode="none" if req.network_disabled else req.network,
            port_bindings=dict(req.ports) or None,
            restart_policy={"Name": req.restart} if req.restart else None,
            # A mount, not a -v bind: a missing host path is an error, not a new directory.
            mounts=[docker.types.Mount(target, source, type="bind") for source, target in req.binds.items()]
            + [
                docker.types.Mount(target, source, type="bind", read_only=True)
                for source, target in req.read_only_binds.items()
            ]
            or None,
            binds={name: {"bind": target, "mode": "rw"} for name, target in req.volumes.items()} or None,
            read_only=req.read_only or None,
        )
        networking = None
        if not req.network_disabled and req.network:
            networking = api.create_networking_config({req.network: api.create_endpoint_config()})
        created = api.create_container(
            req.image,
            command=req.command,
            name=req.name,
            hostname=req.hostname,
            labels=req.labels,
            environment=req.environment or None,
            detach=True,
            ports=[tuple(port.split("/", 1)) for port in sorted(req.ports)] or None,
            volumes=list(req.volumes.values()) or None,
            host_config=host_config,
            networking_config=networking,
        )
        networks = {} if req.network_disabled or not req.network else {req.network: Endpoint()}
        return ContainerInfo(str(created["Id"]), req.name, dict(req.labels), "created", req.image, networks)

    def create_unless_named(self, req: ContainerRequest) -> ContainerInfo | None:
        """Create a container unless one named `req.name` exists (then None): the name is a lock the
        engine holds, so two processes racing to create the same container get one."""
        try:
            return self.create_container(req)
        except EngineRefused as exc:
            cause = exc.__cause__
            if isinstance(cause, docker.errors.APIError) and cause.status_code == 409:
                return None
            raise

    def published_port(self, container: ContainerInfo, port: str) -> int | None:
        """The host port `port` ("8080/tcp") is published on (as asked, else as the engine chose)."""
        try:
            data = self.api.inspect_container(container.id)
        except docker.errors.NotFound:
            return None
        for bindings in (
            ((data.get("HostConfig") or {}).get("PortBindings") or {}).get(port),
            ((data.get("NetworkSettings") or {}).get("Ports") or {}).get(port),
        ):
            chosen = next((b.get("HostPort") for b in bindings or () if b.get("HostPort")), None)
            if chosen:
                return int(chosen)
        return None

    def start(self, container: ContainerInfo) -> None:
        try:
            self.api.start(container.id)
        except docker.errors.APIError as exc:
            raise LabError(f"could not start {container.name}: {_one_line(exc)}") from exc

    def stop(self, container: ContainerInfo, timeout: int) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.stop(container.id, timeout=timeout)

    def kill(self, containers: Iterable[ContainerInfo]) -> None:
        """SIGKILL containers that run; one that is not running (or gone) is left as it is."""
        for container in containers:
            with contextlib.suppress(docker.errors.APIError):  # not running, or removed meanwhile
                self.api.kill(container.id, signal="SIGKILL")

    def pause(self, container: ContainerInfo) -> None:
        self.api.pause(container.id)

    def unpause(self, container: ContainerInfo) -> None:
        self.api.unpause(container.id)

    def put_files(self, container: ContainerInfo, files: Mapping[str, str], mode: int = 0o644) -> None:
        """Write text files into a container (created or running), one request per directory."""
        by_directory: dict[str, dict[str, str]] = {}
        for path, content in files.items():
            directory, _, filename = path.rpartition("/")
            by_directory.setdefault(directory or "/", {})[filename] = content
        for directory, named in by_directory.items():
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as tar:
                for filename, content in named.items():
                    data = content.encode()
                    info = tarfile.TarInfo(filename)
                    info.size = len(data)
                    info.mode = mode
                    info.mtime = int(time.time())
                    tar.addfile(info, io.BytesIO(data))
            self.api.put_archive(container.id, directory, buffer.getvalue())

    def put_file(self, container: ContainerInfo, path: str, content: str) -> None:
        self.put_files(container, {path: content})

    def stat_path(self, container: ContainerInfo, path: str) -> PathStat | None:
        """What `path` is inside a container (running or not); None when there is nothing there.

        One HEAD request on the archive endpoint: the engine answers with the path's stat and sends
        no archive.
        """
        url = self.api._url("/containers/{0}/archive", container.id)
        response = self.api.head(url, params={"path": path})
        if response.status_code == 404:  # (a HEAD answer has no body to tell a missing container apart)
            return None
        self.api._raise_for_status(response)
        found = docker.utils.decode_json_header(response.headers["X-Docker-Container-Path-Stat"])
        mode = int(found.get("mode") or 0)
        return PathStat(
            name=str(found.get("name") or ""),
            size=int(found.get("size") or 0),
            directory=bool(mode & (1 << 31)),  # Go's os.ModeDir
            link_target=str(found.get("linkTarget") or ""),
        )

    def put_archive(self, container: ContainerInfo, directory: str, data: bytes) -> None:
        """Unpack a tar archive into `directory` of a container (running or not), as `docker cp` does:
        files arrive owned by the container's root. The directory must exist."""
        try:
            self.api.put_archive(container.id, directory, data)
        except docker.errors.NotFound as exc:
            raise LabError(f"{directory} does not exist in {container.name}: {_one_line(exc)}") from exc
        except docker.errors.APIError as exc:
            raise LabError(f"could not copy into {directory} of {container.name}: {_one_line(exc)}") from exc

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
        """`docker container commit`: a new image from the container's file system (paused while it
        is read), with `labels` set over those it inherits and Dockerfile `changes` (ENV, ...)
        applied; return its id."""
        created = self.api.commit(
            container.id,
            repository=repository,
            tag=tag,
            message=message,
            author="lab",
            pause=True,
            changes=changes or None,
            conf={"Labels": dict(labels)},
        )
        return str(created["Id"])

    def read_file(self, container: ContainerInfo, path: str) -> str:
        stream, _ = self.api.get_archive(container.id, path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.next()
            extracted = tar.extractfile(member) if member else None
            return extracted.read().decode() if extracted else ""

    def exec(self, container: ContainerInfo, command: list[str]) -> tuple[int, str]:
        """Run `command` in a running container; return its exit code and combined output."""
        exec_id = self.api.exec_create(container.id, command, stdout=True, stderr=True)["Id"]
        output = self.api.exec_start(exec_id, demux=False)
        code = self.api.exec_inspect(exec_id).get("ExitCode")
        text = output.decode(errors="replace") if output else ""
        return (int(code) if code is not None else -1), text

    def exec_with_input(
        self, container: ContainerInfo, command: list[str], chunks: Iterable[bytes]
    ) -> tuple[int, str]:
        """Run `command` in `container` with `chunks` as its stdin; return (exit code, output)."""
        api = self.api
        exec_id = api.exec_create(container.id, command, stdin=True, stdout=True, stderr=True)["Id"]
        connection = api.exec_start(exec_id, socket=True)
        raw = getattr(connection, "_sock", connection)
        output = b""
        try:
            try:
                for chunk in chunks:
                    raw.sendall(chunk)
                raw.shutdown(socket.SHUT_WR)  # end of stdin: the engine closes the process's input
            except OSError:
                pass  # the process stopped reading (it failed): its output says why
            for _stream, data in frames_iter(connection, tty=False):
                output += data
        finally:
            connection.close()
        deadline = time.monotonic() + 30
        while True:
            state = api.exec_inspect(exec_id)
            if not state.get("Running") or time.monotonic() > deadline:
                code = state.get("ExitCode")
                return (int(code) if code is not None else -1), output.decode(errors="replace")
            time.sleep(0.05)

    def wait_for_log(self, container: ContainerInfo, marker: str) -> bool:
        """Follow the container's output until `marker` appears (True) or the container ends (False).

        Following a stream costs the engine nothing while waiting, unlike polling `logs`.
        """
        seen = ""
        try:
            stream = self.api.logs(container.id, stream=True, follow=True, stdout=True, stderr=True)
            for chunk in stream:
                seen = (seen + chunk.decode(errors="replace"))[-4096:]
                if marker in seen:
                    return True
        except Exception:  # noqa: BLE001 - removed mid-stream or timed out: either way it did not get ready
            return False
        return marker in seen

    def log_lines(self, container: ContainerInfo, since: float) -> Iterator[str]:
        """The container's output lines since a UNIX time, streamed (a long log is never held whole)."""
        pending = b""
        stream = self.api.logs(container.id, stream=True, follow=False, since=since, stdout=True, stderr=True)
        for chunk in stream:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode(errors="replace")
        if pending:
            yield pending.decode(errors="replace")

    def follow_log(self, container: ContainerInfo, since: float) -> Follow[bytes]:
        """Follow the container's stdout from UNIX time `since` (inclusive), each line prefixed
        with the engine's nanosecond timestamp. It ends when the container stops."""
        stream = self.api.logs(
            container.id, stream=True, follow=True, stdout=True, stderr=False, timestamps=True, since=since
        )
        return Follow(stream)

    def events(self, filters: Filters) -> Follow[dict[str, Any]]:
        """The engine's events matching `filters` (decoded), as they happen."""
        return Follow(self.api.events(decode=True, filters=dict(filters)))

    def logs(self, container: ContainerInfo, tail: int = 40) -> str:
        try:
            output = self.api.logs(container.id, tail=tail, stdout=True, stderr=True)
        except docker.errors.APIError:
            return ""
        return bytes(output).decode(errors="replace")

    def wait_exit(self, container: ContainerInfo, timeout: float) -> int:
        return int(self.api.wait(container.id, timeout=timeout)["StatusCode"])

    # Cleanup ----------------------------------------------------------------------------
    def remove_containers(self, containers: Iterable[ContainerInfo]) -> int:
        """Force-remove containers, several at a time (the engine works on them in parallel)."""

        def remove(container: ContainerInfo) -> int:
            try:
                self.api.remove_container(container.id, force=True, v=True)
            except docker.errors.NotFound:
                return 0
            except docker.errors.APIError as exc:
                if exc.status_code == 409:  # removal already in progress
                    return 0
                raise
            return 1

        targets = list(containers)
        if not targets:
            return 0
        if len(targets) == 1:
            return remove(targets[0])
        with ThreadPoolExecutor(max_workers=min(PARALLEL, len(targets))) as pool:
            return sum(pool.map(remove, targets))

    def wait_gone(self, filters: Filters, *, timeout: float = 30.0) -> list[ContainerInfo]:
        """Wait until the engine lists no container matching `filters`; return what is left then."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.containers(filters)
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.1)

    # Volumes ----------------------------------------------------------------------------
    def create_volume(self, name: str, labels: dict[str, str]) -> None:
        self.api.create_volume(name=name, driver="local", labels=labels)

    def volume_exists(self, name: str) -> bool:
        try:
            self.api.inspect_volume(name)
        except docker.errors.NotFound:
            return False
        return True

    def remove_volume(self, name: str) -> bool:
        """Remove one volume by name; False when it was not there."""
        try:
            self.api.remove_volume(name, force=True)
        except docker.errors.NotFound:
            return False
        return True

    def remove_volumes(self, filters: Filters) -> int:
        found = self.api.volumes(filters=dict(filters)).get("Volumes") or []
        return sum(self.remove_volume(str(volume["Name"])) for volume in found)

    # Registry: push and pull, each checked chunk by chunk ------------------------------
    def push_image(
        self, source: str, repository: str, tag: str, on_progress: ProgressFn | None = None
    ) -> str:
        """Tag `source` as repository:tag and push it; return the manifest digest.

        The engine reports a failed push inside the stream, not as an exception: every chunk is
        checked, and on failure the tag this call made is taken back (nothing half-written here;
        the registry only lists a tag once its manifest arrived, which is the last step).
        """
        target = f"{repository}:{tag}"
        before = self._image_id_or_none(target)
        try:
            self.api.tag(source, repository, tag, force=True)
        except docker.errors.APIError as exc:
            raise RegistryError(f"cannot tag {source} as {target}: {_one_line(exc)}") from exc
        try:
            chunks = self.api.push(repository, tag=tag, stream=True, decode=True)
            return transfer_digest(chunks, on_progress, what=f"push of {target}")
        except BaseException as exc:
            self._restore_tag(target, before)
            if isinstance(exc, docker.errors.APIError):
                raise RegistryError(f"push of {target} failed: {_one_line(exc)}") from exc
            raise

    def pull_image(self, repository: str, tag: str, on_progress: ProgressFn | None = None) -> str:
        """Pull repository:tag, checking every chunk; return the digest the registry served."""
        try:
            chunks = self.api.pull(repository, tag=tag, stream=True, decode=True)
            return transfer_digest(chunks, on_progress, what=f"pull of {repository}:{tag}")
        except docker.errors.APIError as exc:
            raise RegistryError(f"pull of {repository}:{tag} failed: {_one_line(exc)}") from exc

    def remove_image(self, ref: str) -> bool:
        """Remove one tag (the image itself goes only when no other tag holds it)."""
        try:
            self.api.remove_image(ref)
        except docker.errors.ImageNotFound:
            return False
        return True

    def _image_id_or_none(self, ref: str) -> str | None:
        try:
            return str(self.api.inspect_image(ref)["Id"])
        except docker.errors.ImageNotFound:
            return None

    def _restore_tag(self, target: str, previous_id: str | None) -> None:
        repository, _, tag = target.rpartition(":")
        try:
            if previous_id is None:
                self.api.remove_image(target)
            else:
                self.api.tag(previous_id, repository, tag, force=True)
        except docker.errors.APIError:
            pass  # the push error is what the user needs to see

    def save_image_into(self, container: ContainerInfo, ref: str, command: list[str]) -> tuple[int, str]:
        """Stream `docker save ref` into `command` (e.g. `docker load`) run in `container`.

        Nothing is written to disk on the way: the engine's export is sent as the exec's stdin.
        """
        try:
            chunks = self.api.get_image(ref)
        except docker.errors.ImageNotFound:
            raise LabError(f"image {ref} is missing") from None
        return self.exec_with_input(container, command, chunks)

    # Containers that run an engine (swarm nodes on this desk) -----------------------------
    def create_nested_engine(self, req: NestedEngineRequest) -> ContainerInfo:
        """Create (not start) a container able to run its own dockerd, without --privileged."""
        api = self.api
        host_config = api.create_host_config(
            binds={
                req.volume: {"bind": "/var/lib/docker", "mode": "rw"},
                "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
            },
            cap_add=["ALL"],
            cap_drop=["SYS_RESOURCE"],
            security_opt=["seccomp=unconfined", "apparmor=unconfined"],
            network_mode=req.network,
            pids_limit=req.pids_limit,
        )
        # What the CLI's `--security-opt systempaths=unconfined` sends: nothing masked, nothing
        # read-only under /proc and /sys (the inner engine writes sysctls for its networks).
        host_config["MaskedPaths"] = []
        host_config["ReadonlyPaths"] = []
        created = api.create_container(
            req.image,
            name=req.name,
            hostname=req.hostname,
            labels=req.labels,
            detach=True,
            host_config=host_config,
            networking_config=api.create_networking_config({req.network: api.create_endpoint_config()}),
        )
        return ContainerInfo(
            str(created["Id"]), req.name, dict(req.labels), "created", req.image, {req.network: Endpoint()}
        )

    # Swarm ------------------------------------------------------------------------------
    def swarm_state(self) -> dict[str, Any]:
        """The `Swarm` part of `docker info`: LocalNodeState, ControlAvailable, NodeAddr, ...
        (lab.swarm.SwarmView.from_info reads it)."""
        return dict(self.api.info().get("Swarm") or {})

    def swarm_labels(self) -> dict[str, str]:
        """Labels on the swarm's spec (managers only)."""
        return dict(self.api.inspect_swarm().get("Spec", {}).get("Labels") or {})

    def swarm_init(self, advertise_addr: str, listen_addr: str, labels: dict[str, str]) -> str:
        """Make this engine the manager of a new swarm; return its node id."""
        spec = self.api.create_swarm_spec(labels=labels)
        return str(
            self.api.init_swarm(advertise_addr=advertise_addr, listen_addr=listen_addr, swarm_spec=spec)
        )

    def swarm_leave(self) -> None:
        self.api.leave_swarm(force=True)  # force: the last manager leaving ends the swarm

    def worker_join_token(self) -> str:
        return str(self.api.inspect_swarm()["JoinTokens"]["Worker"])

    def swarm_nodes(self) -> list[SwarmNode]:
        return [_swarm_node(entry) for entry in self.api.nodes()]

    def label_swarm_node(self, node_id: str, labels: dict[str, str]) -> None:
        """Add labels to a node's spec on the manager (they show in `docker node inspect`)."""
        node = self.api.inspect_node(node_id)
        spec = dict(node["Spec"])
        spec["Labels"] = {**(spec.get("Labels") or {}), **labels}
        self.api.update_node(node_id, node["Version"]["Index"], spec)

    def remove_swarm_node(self, node_id: str) -> bool:
        try:
            self.api.remove_node(node_id, force=True)
        except docker.errors.NotFound:
            return False
        return True

    def services(self, filters: Filters | None = None) -> list[ServiceInfo]:
        """Services matching `filters`; none when this engine is no swarm manager (or in no swarm)."""
        try:
            found = self.api.services(filters=dict(filters) if filters else None)
        except docker.errors.APIError as exc:
            if exc.status_code == 503:  # "This node is not a swarm manager"
                return []
            raise
        return [_service(entry) for entry in found]

    def service(self, name: str) -> ServiceInfo | None:
        try:
            return _service(self.api.inspect_service(name))
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            if exc.status_code == 503:
                return None
            raise

    def create_service(self, req: ServiceRequest) -> str:
        """Create a replicated service; return its id. NameInUse when a service has that name."""
        spec = docker.types.ContainerSpec(
            req.image,
            hostname=req.hostname,
            labels=req.container_labels or None,
            cap_add=list(req.cap_add) or None,
            cap_drop=["ALL"],
            healthcheck=_healthcheck(req.health) if req.health else None,
            stop_grace_period=int(req.stop_grace * NANO),
        )
        template = docker.types.TaskTemplate(
            spec,
            resources=(
                docker.types.Resources(mem_limit=docker.utils.parse_bytes(req.mem_limit))
                if req.mem_limit
                else None
            ),
            restart_policy=docker.types.RestartPolicy(condition="any"),
            placement=docker.types.Placement(
                constraints=list(req.constraints) or None, maxreplicas=req.max_per_node
            ),
            networks=[{"Target": req.network}],
        )
        try:
            created = self.api.create_service(
                template,
                name=req.name,
                labels=req.labels,
                mode=docker.types.ServiceMode("replicated", replicas=req.replicas),
                update_config=_update_config(req.update, docker.types.UpdateConfig),
                rollback_config=_update_config(req.update, docker.types.RollbackConfig, rollback=True),
                endpoint_spec=docker.types.EndpointSpec(mode=req.endpoint_mode),
            )
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise NameInUse(f"a service named {req.name} exists already") from exc
            raise
        return str(created["ID"])

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
        """Change what is given and keep the rest of the service's spec as it is (one update of its
        version). The spec is the one stored, without the engine's defaults filled in: a spec with
        them differs from the stored one, and Swarm would then replace every task (a rolling update
        where only the replica count was to change)."""
        current = self.api.inspect_service(name)
        spec = current["Spec"]
        template = dict(spec.get("TaskTemplate") or {})
        container_spec = dict(template.get("ContainerSpec") or {})
        if image is not None:
            container_spec["Image"] = image
        if container_labels is not None:
            container_spec["Labels"] = container_labels
        template["ContainerSpec"] = container_spec
        mode = spec.get("Mode") or {}
        if replicas is not None:
            mode = {"Replicated": {"Replicas": replicas}}
        self.api.update_service(
            name,
            current["Version"]["Index"],
            task_template=template,
            name=spec.get("Name"),
            labels=labels if labels is not None else spec.get("Labels"),
            mode=mode,
            update_config=_update_config(update, docker.types.UpdateConfig)
            if update
            else spec.get("UpdateConfig"),
            rollback_config=(
                _update_config(update, docker.types.RollbackConfig, rollback=True)
                if update
                else spec.get("RollbackConfig")
            ),
            endpoint_spec=spec.get("EndpointSpec"),
        )

    def service_tasks(self, service: str, *, desired: str | None = "running") -> list[TaskInfo]:
        """The tasks of `service` the orchestrator wants in state `desired` (None: every task it
        still keeps), with their overlay addresses."""
        filters: dict[str, Any] = {"service": service}
        if desired is not None:
            filters["desired-state"] = desired
        try:
            found = self.api.tasks(filters=filters)
        except docker.errors.APIError as exc:
            if exc.status_code in (404, 503):  # no such service (any more), or no manager
                return []
            raise
        return sorted((_task(entry) for entry in found), key=lambda t: (t.slot, t.timestamp))

    def remove_service(self, service: str) -> bool:
        try:
            self.api.remove_service(service)
        except docker.errors.NotFound:
            return False
        return True


def _service(entry: Mapping[str, Any]) -> ServiceInfo:
    spec = entry.get("Spec") or {}
    replicated = (spec.get("Mode") or {}).get("Replicated")
    container = (spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}
    status = entry.get("UpdateStatus") or {}
    return ServiceInfo(
        id=str(entry.get("ID") or ""),
        name=str(spec.get("Name") or ""),
        labels=dict(spec.get("Labels") or {}),
        replicas=int(replicated.get("Replicas") or 0) if replicated is not None else None,
        image=str(container.get("Image") or ""),
        container_labels=dict(container.get("Labels") or {}),
        update_state=str(status.get("State") or ""),
        update_message=str(status.get("Message") or ""),
        update_started=str(status.get("StartedAt") or ""),
        version=int((entry.get("Version") or {}).get("Index") or 0),
    )


def _task(entry: Mapping[str, Any]) -> TaskInfo:
    status = entry.get("Status") or {}
    networks = {}
    for attachment in entry.get("NetworksAttachments") or ():
        name = str(((attachment.get("Network") or {}).get("Spec") or {}).get("Name") or "")
        addresses = [str(a).split("/")[0] for a in attachment.get("Addresses") or ()]
        if name and addresses:
            networks[name] = addresses[0]
    container = ((entry.get("Spec") or {}).get("ContainerSpec")) or {}
    return TaskInfo(
        slot=int(entry.get("Slot") or 0),
        node_id=str(entry.get("NodeID") or ""),
        state=str(status.get("State") or ""),
        error=str(status.get("Err") or ""),
        addresses=tuple(networks.values()),
        id=str(entry.get("ID") or ""),
        desired_state=str(entry.get("DesiredState") or ""),
        container_id=str((status.get("ContainerStatus") or {}).get("ContainerID") or ""),
        timestamp=str(status.get("Timestamp") or ""),
        updated_at=str(entry.get("UpdatedAt") or ""),
        image=str(container.get("Image") or ""),
        container_labels=dict(container.get("Labels") or {}),
        networks=networks,
    )


def _healthcheck(health: HealthCheck) -> docker.types.Healthcheck:
    return docker.types.Healthcheck(
        test=list(health.command),
        interval=int(health.interval * NANO),
        timeout=int(health.timeout * NANO),
        retries=health.retries,
        start_period=int(health.start_period * NANO),
    )


def _update_config(policy: UpdatePolicy, kind: Callable[..., Any], *, rollback: bool = False) -> Any:
    """`update_config` (or, with `rollback`, `rollback_config`: it cannot roll back itself: pause)."""
    return kind(
        parallelism=policy.parallelism,
        delay=int(policy.delay * NANO),
        failure_action="pause" if rollback else policy.failure_action,
        monitor=int(policy.monitor * NANO),
        order=policy.order,
    )


# Pure helpers ----------------------------------------------------------------------------------
def transfer_digest(chunks: Iterable[dict[str, Any]], on_progress: ProgressFn | None, *, what: str) -> str:
    """Follow a push or pull stream; return the digest it ends with, or raise RegistryError.

    Failures arrive as a chunk with `error` / `errorDetail`, never as an exception: each chunk
    is checked, and the message is the registry's (or the engine's) own, unchanged.
    """
    digest = ""
    layers: dict[str, tuple[int, int]] = {}
    for chunk in chunks:
        if "error" in chunk or "errorDetail" in chunk:
            detail = chunk.get("errorDetail") or {}
            message = detail.get("message") or chunk.get("error") or "unknown error"
            raise RegistryError(f"{what} failed: {_last_line(message)}")
        aux = chunk.get("aux") or {}
        if aux.get("Digest"):
            digest = str(aux["Digest"])
        status = str(chunk.get("status") or "")
        if status.startswith("Digest: "):  # a pull reports its digest as a status line
            digest = status.split(" ", 1)[1].strip()
        if on_progress is None:
            continue
        layer, progress = str(chunk.get("id") or ""), chunk.get("progressDetail") or {}
        if layer and progress.get("total"):
            layers[layer] = (int(progress.get("current") or 0), int(progress["total"]))
        done = sum(c for c, _ in layers.values())
        total = sum(t for _, t in layers.values())
        on_progress(f"{what}: {status.lower() or 'working'}", done / total if total else None)
    if not digest:
        raise RegistryError(f"{what} failed: the engine never reported a digest")
    return digest


def refusal_message(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None) or str(exc)
    return f"the Docker engine refused: {_last_line(explanation)}"


def _tail(lines: list[str], n: int = 15) -> str:
    return "\n".join(lines[-n:])


def _last_line(text: object) -> str:
    lines = [line for line in str(text).splitlines() if line.strip()]
    return lines[-1].strip() if lines else str(text).strip()


def _one_line(exc: docker.errors.APIError) -> str:
    return _last_line(exc.explanation or exc)


_STEP = re.compile(r"^Step (\d+)/(\d+) :")


def build_fraction(line: str) -> float | None:
    """The classic builder prints `Step 3/5 : ...`; the fraction of the build done when it does."""
    match = _STEP.match(line)
    if not match:
        return None
    step, total = int(match.group(1)), int(match.group(2))
    return (step - 1) / total if total else None
