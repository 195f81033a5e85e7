"""The local registry: Debian's docker-registry in a container on 127.0.0.1, images on a named volume.

One registry serves the whole desk (every lab, every node), so it carries no lab name: `lab down`
never removes it. `down` keeps the volume, so pushed images survive a restart, unless `purge`.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import requests

from lab import labels
from lab.engine import ContainerInfo, ContainerRequest
from lab.errors import InvalidInput, LabError, RegistryError
from lab.images import SUITE, StandIn, ensure_standins
from lab.progress import ProgressFn, quiet
from lab.results import REGISTRY_HOST, RegistryStatus
from lab.site import SITE_REPOSITORY
from lab.spec import parse_port
from lab.undo import undo_on_failure

if TYPE_CHECKING:
    from lab.docker_ops import Engine

REGISTRY_IMAGE = StandIn(
    name="registry",  # build context base/registry: the lab's config.yml
    tag="lab/registry:2.8-debian",
    rootfs=f"lab/debian-registry-rootfs:{SUITE}",
    packages=("docker-registry", "ca-certificates"),
    versioned_by="docker-registry",
    official="registry:2",
)
DEFAULT_REGISTRY = "lab-registry"
DEFAULT_REGISTRY_PORT = 5000
LISTEN_PORT = 5000  # inside the container (config.yml: http.addr :5000)
STORAGE = "/var/lib/docker-registry"  # config.yml: storage.filesystem.rootdirectory
HOST = REGISTRY_HOST
READY_TIMEOUT = 20.0

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
# Docker's grammar for a tag: word characters, dots and dashes, at most 128, not starting with . or -.
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_PORT_TAKEN = ("address already in use", "port is already allocated")


# Pure: names, validation, references ------------------------------------------------------
@dataclass(frozen=True)
class RegistryNames:
    """What a registry called `name` is made of: a container, a volume, a network."""

    name: str

    @classmethod
    def of(cls, value: object) -> RegistryNames:
        text = str(value)
        if not _NAME.fullmatch(text):
            raise InvalidInput(
                f"registry name must be 1-40 lowercase letters, digits or dashes, not {text!r}"
            )
        return cls(text)

    @property
    def container(self) -> str:
        return self.name

    @property
    def volume(self) -> str:
        return f"{self.name}-data"

    @property
    def network(self) -> str:
        return f"{self.name}-net"

    @property
    def inner_address(self) -> str:
        """How containers on the registry's network reach it (nodes forward to this)."""
        return f"{self.name}:{LISTEN_PORT}"


def parse_tag(value: object) -> str:
    """An image tag as Docker accepts it, or a one-line InvalidInput."""
    text = str(value)
    if not _TAG.fullmatch(text):
        raise InvalidInput(
            f"tag {text!r} is not valid: use up to 128 letters, digits, '_', '.' or '-', "
            "not starting with '.' or '-'"
        )
    return text


def repository_at(port: int, repository: str = SITE_REPOSITORY) -> str:
    """The name an image has in the registry on 127.0.0.1:`port`; valid on the host and on every node."""
    return f"{HOST}:{port}/{repository}"


def port_taken(message: str) -> bool:
    """Whether an engine error says the published port is in use."""
    return any(marker in message.lower() for marker in _PORT_TAKEN)


# Results --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegistryRemoved:
    container: bool
    network: bool
    volume: bool

    @property
    def nothing(self) -> bool:
        return not (self.container or self.network or self.volume)


@dataclass(frozen=True)
class Pushed:
    source: str  # the local image that was pushed
    reference: str  # 127.0.0.1:PORT/lab/site:TAG
    digest: str
    seconds: float

    @property
    def pinned(self) -> str:
        """The reference with its digest: every node runs exactly this build."""
        return f"{self.reference}@{self.digest}"

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "pinned": self.pinned}


# Up / down / status -----------------------------------------------------------------------------
def find(engine: Engine, names: RegistryNames) -> ContainerInfo | None:
    found = engine.containers(labels.role_filter(labels.ROLE_REGISTRY, registry=names.name))
    return found[0] if found else None


def published_port(engine: Engine, container: ContainerInfo) -> int | None:
    """The host port the registry was asked to publish on (running or not)."""
    return engine.published_port(container, f"{LISTEN_PORT}/tcp")


def up(
    engine: Engine,
    name: object = DEFAULT_REGISTRY,
    port: object = DEFAULT_REGISTRY_PORT,
    progress: ProgressFn = quiet,
) -> RegistryStatus:
    """Start the registry on 127.0.0.1:`port` (building its image first if needed).

    Already running on that port: nothing to do. A stopped one is replaced; its volume, with the
    images in it, is kept. On failure everything this call created is removed again.
    """
    names = RegistryNames.of(name)
    wanted_port = parse_port(port)
    existing = find(engine, names)
    if existing is not None and existing.status == "running":
        running_port = published_port(engine, existing)
        if running_port != wanted_port:
            raise InvalidInput(
                f"registry {names.name} already runs on {HOST}:{running_port}; "
                f"`lab registry down` first to move it to port {wanted_port}"
            )
        progress(f"registry {names.name} already runs", 1.0)
        return status(engine, names.name)
    ensure_standins(engine, [REGISTRY_IMAGE], progress=progress)
    with undo_on_failure() as undo:
        if existing is not None:
            engine.remove_containers([existing])  # stopped or dead; the volume stays
        if engine.network(names.network) is None:
            engine.create_network(
                names.network,
                labels.for_component(labels.ROLE_REGISTRY_NET, registry=names.name),
                internal=False,  # publishing a port needs a bridge with a gateway
            )
            undo.push("remove the registry network", lambda: _remove_network(engine, names.network))
        if not engine.volume_exists(names.volume):
            engine.create_volume(
                names.volume, labels.for_component(labels.ROLE_REGISTRY_STORAGE, registry=names.name)
            )
            undo.push("remove the new registry volume", lambda: engine.remove_volume(names.volume))
        progress(f"starting registry {names.name} on {HOST}:{wanted_port}", None)
        container = engine.create_container(_request(names, wanted_port))
        undo.push("remove the registry container", lambda: engine.remove_containers([container]))
        try:
            engine.start(container)
        except LabError as exc:
            if port_taken(exc.message):
                raise InvalidInput(
                    f"port {wanted_port} on {HOST} is already in use; choose another with --port"
                ) from None
            raise
        _wait_ready(engine, container, wanted_port)
    progress(f"registry {names.name} is up", 1.0)
    return status(engine, names.name)


def _request(names: RegistryNames, port: int) -> ContainerRequest:
    return ContainerRequest(
        name=names.container,
        image=REGISTRY_IMAGE.tag,
        hostname=names.name,
        labels=labels.for_component(labels.ROLE_REGISTRY, registry=names.name),
        network=names.network,
        ports={f"{LISTEN_PORT}/tcp": (HOST, port)},
        volumes={names.volume: STORAGE},
        mem_limit="256m",
        restart="unless-stopped",  # the desk's registry comes back with the engine
    )


def _wait_ready(engine: Engine, container: ContainerInfo, port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if answers(port):
            return
        state = engine.state(container).status
        if state not in ("running", "created", "restarting") or time.monotonic() > deadline:
            raise RegistryError(
                f"the registry did not answer on {HOST}:{port} (state {state})",
                detail=engine.logs(container),
            )
        time.sleep(0.1)


def answers(port: int, timeout: float = 2.0) -> bool:
    """Whether a registry answers the v2 API on 127.0.0.1:`port`."""
    try:
        response = requests.get(f"http://{HOST}:{port}/v2/", timeout=timeout)
    except requests.RequestException:
        return False
    return response.status_code == 200


def down(engine: Engine, name: object = DEFAULT_REGISTRY, *, purge: bool = False) -> RegistryRemoved:
    """Remove the registry container and its network; the volume (the images) only with `purge`."""
    names = RegistryNames.of(name)
    container = find(engine, names)
    removed_container = container is not None and engine.remove_containers([container]) > 0
    removed_network = _remove_network(engine, names.network)
    removed_volume = purge and engine.remove_volume(names.volume)
    return RegistryRemoved(removed_container, removed_network, removed_volume)


def _remove_network(engine: Engine, name: str) -> bool:
    network = engine.network(name)
    if network is None:
        return False
    engine.detach_everyone(network)  # nodes joined it to reach the registry
    return engine.remove_networks([network]) > 0


def status(engine: Engine, name: object = DEFAULT_REGISTRY) -> RegistryStatus:
    names = RegistryNames.of(name)
    container = find(engine, names)
    port = published_port(engine, container) if container is not None else None
    state = container.status if container is not None else "absent"
    repositories = catalog(port) if port is not None and state == "running" else {}
    return RegistryStatus(
        name=names.name,
        state=state,
        port=port,
        volume=names.volume,
        volume_exists=engine.volume_exists(names.volume),
        repositories=repositories,
    )


def catalog(port: int) -> dict[str, list[str]]:
    """Every repository in the registry with its tags (empty when it does not answer)."""
    base = f"http://{HOST}:{port}/v2"
    try:
        found: dict[str, list[str]] = {}
        for repository in requests.get(f"{base}/_catalog", timeout=5).json().get("repositories") or ():
            tags = requests.get(f"{base}/{repository}/tags/list", timeout=5).json().get("tags") or []
            found[repository] = sorted(tags)
        return found
    except (requests.RequestException, ValueError):
        return {}


def running_registries(engine: Engine) -> list[tuple[RegistryNames, int]]:
    """Every running lab registry with its published port (the nodes are wired to each)."""
    found = []
    for container in engine.containers(labels.role_filter(labels.ROLE_REGISTRY)):
        port = published_port(engine, container)
        name = container.labels.get(labels.REGISTRY, "")
        if container.status == "running" and port is not None and name:
            found.append((RegistryNames(name), port))
    return found


# Push ------------------------------------------------------------------------------------------
def lab_site_image(engine: Engine, lab: str) -> tuple[str, str]:
    """The (image, site version) lab `lab` serves, read from its replicas."""
    replicas = engine.containers(labels.lab_filter(lab, labels.ROLE_WEB))
    services = engine.services(labels.lab_filter(lab, labels.ROLE_SERVICE)) if not replicas else []
    if services:  # a swarm lab: the image its service runs
        return services[0].image, services[0].container_labels.get(labels.SITE_VERSION, "")
    if not replicas:
        raise LabError(f"there is no lab named {lab!r} to push from; start one with `lab up --name {lab}`")
    newest = max(replicas, key=lambda c: labels.replica_index(c.labels))
    image = newest.image
    return image, newest.labels.get(labels.SITE_VERSION, "")


def push_site(
    engine: Engine,
    lab: str,
    *,
    tag: object = None,
    registry: object = DEFAULT_REGISTRY,
    progress: ProgressFn = quiet,
) -> Pushed:
    """Push the site image of lab `lab` to the registry, as lab/site:TAG (default: its site version)."""
    wanted_tag = parse_tag(tag) if tag is not None else None
    names = RegistryNames.of(registry)
    image, version = lab_site_image(engine, lab)
    return push_image(engine, image, parse_tag(wanted_tag or version), registry=names.name, progress=progress)


def push_image(
    engine: Engine,
    image: str,
    tag: str,
    *,
    registry: object = DEFAULT_REGISTRY,
    repository: str = SITE_REPOSITORY,
    progress: ProgressFn = quiet,
) -> Pushed:
    """Push a local image to the running registry; refuse clearly, before touching anything, when it is down."""
    target = serving_repository(
        engine, registry, repository, doing="push again", nothing="nothing was pushed"
    )
    began = time.monotonic()
    digest = engine.push_image(image, target, tag, on_progress=progress)
    return Pushed(source=image, reference=f"{target}:{tag}", digest=digest, seconds=time.monotonic() - began)


def serving_repository(
    engine: Engine,
    registry: object = DEFAULT_REGISTRY,
    repository: str = SITE_REPOSITORY,
    *,
    doing: str = "try again",
    nothing: str = "nothing was done",
) -> str:
    """`repository` in the running registry (127.0.0.1:PORT/...), or a RegistryError saying it is
    not running or does not answer."""
    names = RegistryNames.of(registry)
    container = find(engine, names)
    port = published_port(engine, container) if container is not None else None
    if container is None or container.status != "running" or port is None:
        raise RegistryError(
            f"the registry {names.name} is not running; start it with `lab registry up` and {doing}"
        )
    if not answers(port):
        raise RegistryError(f"the registry {names.name} does not answer on {HOST}:{port}; {nothing}")
    return repository_at(port, repository)
