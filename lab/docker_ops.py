"""The only docker-SDK user for containers and networks: a thin adapter with lab-sized verbs.

Everything it creates is labelled by the caller; everything it removes is found by label.
"""

from __future__ import annotations

import contextlib
import io
import re
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container
from docker.models.networks import Network

from lab.errors import BuildFailed, EngineUnavailable, LabError, NameInUse

LineFn = Callable[[str], None]
# What the engine raises when it refuses a request; the CLI shows it as one line.
ENGINE_REFUSALS: tuple[type[Exception], ...] = (docker.errors.APIError,)
PARALLEL = 16  # concurrent engine calls; the engine queues the rest anyway
ACTIVE_ENDPOINTS = "active endpoints"  # how the engine refuses to remove a network something is on


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
    ports: dict[str, tuple[str, int]] = field(default_factory=dict)  # "80/tcp" -> (bind, port)
    cap_add: tuple[str, ...] = ()
    mem_limit: str = "128m"
    pids_limit: int = 256
    restart: str | None = None  # e.g. "unless-stopped"
    extra_hosts: dict[str, str] = field(default_factory=dict)
    network_disabled: bool = False


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

    def detach(self, network: str, container: Container) -> None:
        self.client.networks.get(network).disconnect(container, force=True)

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
        return self.client.containers.create(req.image, **kwargs)

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
