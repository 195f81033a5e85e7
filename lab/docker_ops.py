"""The only docker-SDK user (containers, networks, volumes, images, swarm): a thin adapter with lab-sized verbs.

Everything it creates is labelled by the caller; everything it removes is found by label.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import re
import socket
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import docker
import docker.errors
import docker.types
from docker.models.containers import Container
from docker.models.networks import Network
from docker.utils.socket import frames_iter

from lab.errors import BuildFailed, EngineUnavailable, LabError, NameInUse, RegistryError

LineFn = Callable[[str], None]
# What the engine raises when it refuses a request; the CLI shows it as one line.
ENGINE_REFUSALS: tuple[type[Exception], ...] = (docker.errors.APIError,)
PARALLEL = 16  # concurrent engine calls; the engine queues the rest anyway
ACTIVE_ENDPOINTS = "active endpoints"  # how the engine refuses to remove a network something is on
T = TypeVar("T")


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
    user: str | None = None


class Engine:
    """A connected Docker engine."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client

    @classmethod
    def connect(cls, timeout: int = 60) -> Engine:
        """Connect to the engine from the environment (DOCKER_HOST or the default socket)."""
        try:
            client = docker.from_env(timeout=timeout)
            client.ping()
        except Exception as exc:  # the SDK raises several unrelated types for "nobody answers"
            raise EngineUnavailable(
                "no Docker engine answers; start one (`make setup` does) and try again"
            ) from exc
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
        on_line: LineFn | None = None,
    ) -> str:
        """Build `context` into `tag`; stream output lines to `on_line`; raise BuildFailed."""
        log: list[str] = []
        try:
            stream = self.client.api.build(
                path=str(context),
                dockerfile=str(dockerfile) if dockerfile else None,
                tag=tag,
                buildargs=buildargs or {},
                labels=labels or {},
                rm=True,
                forcerm=True,
                decode=True,
            )
            image_id = ""
            for chunk in stream:
                if "error" in chunk:
                    log.append(str(chunk["error"]).rstrip())
                    raise BuildFailed(
                        f"building {tag} failed: {_last_line(chunk['error'])}", detail=_tail(log)
                    )
                text = str(chunk.get("stream", "")).rstrip()
                if text:
                    log.append(text)
                    if on_line:
                        on_line(text)
                if "aux" in chunk and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
        except docker.errors.APIError as exc:
            raise BuildFailed(f"building {tag} failed: {exc.explanation or exc}", detail=_tail(log)) from exc
        return image_id or self.client.images.get(tag).id

    def image_id(self, ref: str) -> str:
        try:
            return str(self.client.images.get(ref).id)
        except docker.errors.ImageNotFound:
            raise LabError(f"image {ref} is missing; `lab images` builds the base images") from None

    def image_exists(self, ref: str) -> bool:
        try:
            self.client.images.get(ref)
        except docker.errors.ImageNotFound:
            return False
        return True

    # Networks ---------------------------------------------------------------------------
    def create_network(self, name: str, labels: dict[str, str], *, internal: bool) -> Network:
        """Create a bridge network; NameInUse if a network already has that name."""
        try:
            return self.client.networks.create(
                name, driver="bridge", internal=internal, labels=labels, check_duplicate=True
            )
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise NameInUse(f"a network named {name} exists already") from exc
            raise

    def networks(self, filters: dict[str, list[str]]) -> list[Network]:
        return self.client.networks.list(filters=filters)

    def network_containers(self, network: Network) -> dict[str, str]:
        """The containers the engine has on `network` now: id -> name (empty if it is gone)."""
        try:
            network.reload()
        except docker.errors.NotFound:
            return {}
        found = network.attrs.get("Containers") or {}
        return {cid: str(info.get("Name", cid[:12])) for cid, info in found.items()}

    def remove_network(self, network: Network, *, patience: float = 0.0) -> str:
        """Remove a network; "" once it is gone, else the engine's reason for keeping it.

        The engine may release a just-removed container's endpoint a moment after the removal
        returned ("has active endpoints"): that is retried for `patience` seconds.
        """
        deadline = time.monotonic() + patience
        while True:
            try:
                network.remove()
                return ""
            except docker.errors.NotFound:
                return ""
            except docker.errors.APIError as exc:
                reason = _one_line(exc)
                if ACTIVE_ENDPOINTS not in reason or time.monotonic() >= deadline:
                    return reason
                time.sleep(0.1)

    def release_endpoints(self, container: Container) -> None:
        """Take a container (running or not) off every network it is on; one gone already is fine."""
        for network in container.attrs.get("NetworkSettings", {}).get("Networks") or {}:
            with contextlib.suppress(docker.errors.APIError):  # not connected, or gone meanwhile
                self.client.api.disconnect_container_from_network(container.id, network, force=True)

    # Containers -------------------------------------------------------------------------
    def create_container(self, req: ContainerRequest) -> Container:
        """Create (not start) a container that keeps only the privileges it needs."""
        kwargs: dict[str, Any] = {
            "name": req.name,
            "hostname": req.hostname,
            "labels": req.labels,
            "command": req.command,
            "environment": req.environment,
            "detach": True,
            "cap_drop": ["ALL"],
            "cap_add": list(req.cap_add),
            "security_opt": ["no-new-privileges:true"],
            "mem_limit": req.mem_limit,
            "pids_limit": req.pids_limit,
            "extra_hosts": req.extra_hosts or None,
        }
        if req.network_disabled:
            kwargs["network_mode"] = "none"
        else:
            kwargs["network"] = req.network
        if req.ports:
            kwargs["ports"] = dict(req.ports)
        if req.restart:
            kwargs["restart_policy"] = {"Name": req.restart}
        if req.binds:  # a mount, not a -v bind: a missing host path is an error, not a new directory
            kwargs["mounts"] = [
                docker.types.Mount(target, source, type="bind") for source, target in req.binds.items()
            ]
        if req.read_only:
            kwargs["read_only"] = True
        if req.volumes:
            kwargs["volumes"] = {name: {"bind": target, "mode": "rw"} for name, target in req.volumes.items()}
        if req.user:
            kwargs["user"] = req.user
        return self.client.containers.create(req.image, **kwargs)

    def create_unless_named(self, req: ContainerRequest) -> Container | None:
        """Create a container unless one named `req.name` exists (then None): the name is a lock the
        engine holds, so two processes racing to create the same container get one."""
        try:
            return self.create_container(req)
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                return None
            raise

    def container_named(self, name: str) -> Container | None:
        try:
            return self.client.containers.get(name)
        except docker.errors.NotFound:
            return None

    def published_port(self, container: Container, port: str) -> int | None:
        """The host port the engine chose for `port` ("8080/tcp"), or None if it is not published."""
        container.reload()
        bindings = (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).get(port) or []
        return int(bindings[0]["HostPort"]) if bindings else None

    def start(self, container: Container) -> None:
        try:
            container.start()
        except docker.errors.APIError as exc:
            raise LabError(f"could not start {container.name}: {_one_line(exc)}") from exc

    def attach(self, network: str, container: Container, aliases: list[str] | None = None) -> None:
        self.client.networks.get(network).connect(container, aliases=aliases)

    def container_exists(self, container_id: str) -> bool:
        try:
            self.client.containers.get(container_id)
        except docker.errors.NotFound:
            return False
        return True

    def containers(self, filters: dict[str, list[str]]) -> list[Container]:
        # ignore_removed: a container removed between listing and inspecting is simply gone.
        return self.client.containers.list(all=True, filters=filters, ignore_removed=True)

    def put_file(self, container: Container, path: str, content: str, mode: int = 0o644) -> None:
        """Write one text file into a container (created or running), without a bind mount."""
        directory, _, filename = path.rpartition("/")
        data = content.encode()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(filename)
            info.size = len(data)
            info.mode = mode
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
        container.put_archive(directory or "/", buffer.getvalue())

    def read_file(self, container: Container, path: str) -> str:
        stream, _ = container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.next()
            extracted = tar.extractfile(member) if member else None
            return extracted.read().decode() if extracted else ""

    def exec(self, container: Container, command: list[str]) -> tuple[int, str]:
        """Run `command` in a running container; return its exit code and combined output."""
        result = container.exec_run(command, stdout=True, stderr=True, demux=False)
        output = result.output.decode(errors="replace") if result.output else ""
        return int(result.exit_code), output

    def wait_for_log(self, container: Container, marker: str) -> bool:
        """Follow the container's output until `marker` appears (True) or the container ends (False).

        Following a stream costs the engine nothing while waiting, unlike polling `logs`.
        """
        seen = ""
        try:
            for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
                seen = (seen + chunk.decode(errors="replace"))[-4096:]
                if marker in seen:
                    return True
        except Exception:  # noqa: BLE001 - removed mid-stream or timed out: either way it did not get ready
            return False
        return marker in seen

    def log_lines(self, container: Container, since: float) -> Iterator[str]:
        """The container's output lines since a UNIX time, streamed (a long log is never held whole)."""
        pending = b""
        for chunk in container.logs(stream=True, follow=False, since=since, stdout=True, stderr=True):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode(errors="replace")
        if pending:
            yield pending.decode(errors="replace")

    def follow_log(self, container: Container, since: float) -> Follow[bytes]:
        """Follow the container's stdout from UNIX time `since` (inclusive), each line prefixed
        with the engine's nanosecond timestamp. It ends when the container stops."""
        stream = self.client.api.logs(
            container.id, stream=True, follow=True, stdout=True, stderr=False, timestamps=True, since=since
        )
        return Follow(stream)

    def events(self, filters: dict[str, list[str]]) -> Follow[dict[str, Any]]:
        """The engine's events matching `filters` (decoded), as they happen."""
        return Follow(self.client.events(decode=True, filters=filters))

    def logs(self, container: Container, tail: int = 40) -> str:
        try:
            return container.logs(tail=tail, stdout=True, stderr=True).decode(errors="replace")
        except docker.errors.APIError:
            return ""

    def wait_exit(self, container: Container, timeout: float) -> int:
        return int(container.wait(timeout=timeout)["StatusCode"])

    def kill(self, containers: Iterable[Container]) -> None:
        """SIGKILL containers that run; one that is not running (or gone) is left as it is."""
        for container in containers:
            with contextlib.suppress(docker.errors.APIError):  # not running, or removed meanwhile
                container.kill()

    # Cleanup ----------------------------------------------------------------------------
    def remove_containers(self, containers: Iterable[Container]) -> int:
        """Force-remove containers, several at a time (the engine works on them in parallel)."""

        def remove(container: Container) -> int:
            try:
                container.remove(force=True, v=True)
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
        with ThreadPoolExecutor(max_workers=min(PARALLEL, len(targets))) as pool:
            return sum(pool.map(remove, targets))

    def remove_networks(self, networks: Iterable[Network], *, patience: float = 10.0) -> int:
        """Remove networks; the engine may release a just-removed container's endpoint a moment
        after the removal returned ("has active endpoints"), so that is retried for a while."""
        removed = 0
        for network in networks:
            deadline = time.monotonic() + patience
            while True:
                try:
                    network.remove()
                    removed += 1
                    break
                except docker.errors.NotFound:
                    break
                except docker.errors.APIError as exc:
                    busy = "active endpoints" in str(exc) or "in use by task" in str(
                        exc
                    )  # swarm: tasks stopping
                    if not busy or time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        return removed

    def wait_gone(self, filters: dict[str, list[str]], *, timeout: float = 30.0) -> list[Container]:
        """Wait until the engine lists no container matching `filters`; return what is left then."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.containers(filters)
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.1)

    def remove_volumes(self, filters: dict[str, list[str]]) -> int:
        removed = 0
        for volume in self.client.volumes.list(filters=filters):
            try:
                volume.remove(force=True)
                removed += 1
            except docker.errors.NotFound:
                pass
        return removed

    # Volumes ----------------------------------------------------------------------------
    def create_volume(self, name: str, labels: dict[str, str]) -> None:
        self.client.volumes.create(name=name, driver="local", labels=labels)

    def volume_exists(self, name: str) -> bool:
        try:
            self.client.volumes.get(name)
        except docker.errors.NotFound:
            return False
        return True

    def remove_volume(self, name: str) -> bool:
        """Remove one volume by name; False when it was not there."""
        try:
            self.client.volumes.get(name).remove(force=True)
        except docker.errors.NotFound:
            return False
        return True

    # Registry: push and pull, each checked chunk by chunk ------------------------------
    def push_image(
        self, source: str, repository: str, tag: str, on_progress: TransferFn | None = None
    ) -> str:
        """Tag `source` as repository:tag and push it; return the manifest digest.

        The engine reports a failed push inside the stream, not as an exception: every chunk is
        checked, and on failure the tag this call made is taken back (nothing half-written here;
        the registry only lists a tag once its manifest arrived, which is the last step).
        """
        target = f"{repository}:{tag}"
        before = self._image_id_or_none(target)
        try:
            self.client.api.tag(source, repository, tag, force=True)
        except docker.errors.APIError as exc:
            raise RegistryError(f"cannot tag {source} as {target}: {_one_line(exc)}") from exc
        try:
            chunks = self.client.api.push(repository, tag=tag, stream=True, decode=True)
            return transfer_digest(chunks, on_progress, what=f"push of {target}")
        except BaseException as exc:
            self._restore_tag(target, before)
            if isinstance(exc, docker.errors.APIError):
                raise RegistryError(f"push of {target} failed: {_one_line(exc)}") from exc
            raise

    def pull_image(self, repository: str, tag: str, on_progress: TransferFn | None = None) -> str:
        """Pull repository:tag, checking every chunk; return the digest the registry served."""
        try:
            chunks = self.client.api.pull(repository, tag=tag, stream=True, decode=True)
            return transfer_digest(chunks, on_progress, what=f"pull of {repository}:{tag}")
        except docker.errors.APIError as exc:
            raise RegistryError(f"pull of {repository}:{tag} failed: {_one_line(exc)}") from exc

    def remove_image(self, ref: str) -> bool:
        """Remove one tag (the image itself goes only when no other tag holds it)."""
        try:
            self.client.api.remove_image(ref)
        except docker.errors.ImageNotFound:
            return False
        return True

    def _image_id_or_none(self, ref: str) -> str | None:
        try:
            return str(self.client.api.inspect_image(ref)["Id"])
        except docker.errors.ImageNotFound:
            return None

    def _restore_tag(self, target: str, previous_id: str | None) -> None:
        repository, _, tag = target.rpartition(":")
        try:
            if previous_id is None:
                self.client.api.remove_image(target)
            else:
                self.client.api.tag(previous_id, repository, tag, force=True)
        except docker.errors.APIError:
            pass  # the push error is what the user needs to see

    def save_image_into(self, container: Container, ref: str, command: list[str]) -> tuple[int, str]:
        """Stream `docker save ref` into `command` (e.g. `docker load`) run in `container`.

        Nothing is written to disk on the way: the engine's export is sent as the exec's stdin.
        """
        try:
            chunks = self.client.api.get_image(ref)
        except docker.errors.ImageNotFound:
            raise LabError(f"image {ref} is missing") from None
        return self.exec_with_input(container, command, chunks)

    def exec_with_input(
        self, container: Container, command: list[str], chunks: Iterable[bytes]
    ) -> tuple[int, str]:
        """Run `command` in `container` with `chunks` as its stdin; return (exit code, output)."""
        api = self.client.api
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

    # Networks and addresses for nodes ------------------------------------------------------
    def network(self, name: str) -> Network | None:
        try:
            return self.client.networks.get(name)
        except docker.errors.NotFound:
            return None

    def bridge_gateways(self) -> dict[str, str]:
        """The host's address on each local bridge network, by network name (bridge: docker0's).

        The default bridge often lists only its subnet; then a container on it tells its gateway,
        and failing that the engine's own rule applies (docker0 takes the subnet's first address).
        """
        found: dict[str, str] = {}
        for entry in self.client.api.networks(filters={"driver": "bridge"}):
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
        attached = self.client.api.inspect_network(network).get("Containers") or {}
        for container_id in attached:
            try:
                settings = self.client.api.inspect_container(container_id)["NetworkSettings"]
            except docker.errors.NotFound:
                continue
            gateway = ((settings.get("Networks") or {}).get(network) or {}).get("Gateway")
            if gateway:
                return str(gateway)
        return ""

    def container_address(self, container: Container, network: str) -> str:
        container.reload()
        networks = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
        return str((networks.get(network) or {}).get("IPAddress") or "")

    def detach(self, network: str, container: Container | str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.client.networks.get(network).disconnect(container, force=True)

    def detach_everyone(self, network: Network) -> None:
        """Disconnect every container from `network`, so that it can be removed."""
        network.reload()
        for container_id in network.attrs.get("Containers") or {}:
            with contextlib.suppress(docker.errors.NotFound):
                network.disconnect(container_id, force=True)

    def create_overlay_network(self, name: str, labels: dict[str, str]) -> Network:
        """An attachable overlay network: services and plain containers of this engine can join."""
        return self.client.networks.create(
            name, driver="overlay", attachable=True, labels=labels, check_duplicate=True
        )

    # Containers that run an engine (swarm nodes on this desk) -----------------------------
    def create_nested_engine(self, req: NestedEngineRequest) -> Container:
        """Create (not start) a container able to run its own dockerd, without --privileged."""
        api = self.client.api
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
        return self.client.containers.get(created["Id"])

    def stop(self, container: Container, timeout: int) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            container.stop(timeout=timeout)

    # Swarm ------------------------------------------------------------------------------
    def swarm_state(self) -> dict[str, Any]:
        """The `Swarm` part of `docker info`: LocalNodeState, ControlAvailable, NodeAddr, ..."""
        return dict(self.client.info().get("Swarm") or {})

    def swarm_labels(self) -> dict[str, str]:
        """Labels on the swarm's spec (managers only)."""
        return dict(self.client.api.inspect_swarm().get("Spec", {}).get("Labels") or {})

    def swarm_init(self, advertise_addr: str, listen_addr: str, labels: dict[str, str]) -> str:
        """Make this engine the manager of a new swarm; return its node id."""
        return str(
            self.client.swarm.init(advertise_addr=advertise_addr, listen_addr=listen_addr, labels=labels)
        )

    def swarm_leave(self) -> None:
        self.client.swarm.leave(force=True)  # force: the last manager leaving ends the swarm

    def worker_join_token(self) -> str:
        return str(self.client.api.inspect_swarm()["JoinTokens"]["Worker"])

    def swarm_nodes(self) -> list[dict[str, Any]]:
        return list(self.client.api.nodes())

    def label_swarm_node(self, node_id: str, labels: dict[str, str]) -> None:
        """Add labels to a node's spec on the manager (they show in `docker node inspect`)."""
        node = self.client.api.inspect_node(node_id)
        spec = dict(node["Spec"])
        spec["Labels"] = {**(spec.get("Labels") or {}), **labels}
        self.client.api.update_node(node_id, node["Version"]["Index"], spec)

    def remove_swarm_node(self, node_id: str) -> bool:
        try:
            self.client.api.remove_node(node_id, force=True)
        except docker.errors.NotFound:
            return False
        return True

    def services(self, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return list(self.client.api.services(filters=filters))

    def create_service(self, req: ServiceRequest) -> str:
        """Create a replicated service; return its id."""
        spec = docker.types.ContainerSpec(
            req.image,
            hostname=req.hostname,
            labels=req.container_labels or None,
            cap_add=list(req.cap_add) or None,
            cap_drop=["ALL"],
        )
        template = docker.types.TaskTemplate(
            spec,
            placement=docker.types.Placement(
                constraints=list(req.constraints) or None, maxreplicas=req.max_per_node
            ),
            networks=[{"Target": req.network}],
        )
        created = self.client.api.create_service(
            template,
            name=req.name,
            labels=req.labels,
            mode=docker.types.ServiceMode("replicated", replicas=req.replicas),
        )
        return str(created["ID"])

    def service_tasks(self, service: str) -> list[TaskInfo]:
        """The tasks of `service` the orchestrator wants running, with their overlay addresses."""
        found = []
        for task in self.client.api.tasks(filters={"service": service, "desired-state": "running"}):
            addresses = tuple(
                address.split("/")[0]
                for attachment in task.get("NetworksAttachments") or ()
                for address in attachment.get("Addresses") or ()
            )
            status = task.get("Status") or {}
            found.append(
                TaskInfo(
                    slot=int(task.get("Slot") or 0),
                    node_id=str(task.get("NodeID") or ""),
                    state=str(status.get("State") or ""),
                    error=str(status.get("Err") or ""),
                    addresses=addresses,
                )
            )
        return sorted(found, key=lambda t: t.slot)

    def remove_service(self, service: str) -> bool:
        try:
            self.client.api.remove_service(service)
        except docker.errors.NotFound:
            return False
        return True


# Registry, nodes and swarm: values and pure helpers -------------------------------------------
TransferFn = Callable[[str, float | None], None]  # (what is happening, fraction done or None)


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


@dataclass(frozen=True)
class TaskInfo:
    """One task of a service, as the manager reports it."""

    slot: int
    node_id: str
    state: str  # new, pending, assigned, preparing, starting, running, failed, ...
    error: str
    addresses: tuple[str, ...]  # on the service's networks, without the prefix length


def transfer_digest(chunks: Iterable[dict[str, Any]], on_progress: TransferFn | None, *, what: str) -> str:
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


_STEP = re.compile(r"^Step (\d+)/(\d+)")


def build_fraction(line: str) -> float | None:
    """The classic builder prints `Step 3/5 : ...`; turn that into a fraction done."""
    match = _STEP.match(line)
    if not match:
        return None
    step, total = int(match.group(1)), int(match.group(2))
    return (step - 1) / total if total else None
