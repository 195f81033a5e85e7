"""Swarm nodes on one desk: Docker-in-Docker containers joined to the host engine's swarm as workers.

Nodes are engine-wide (no lab name). Each sits on the bridge whose gateway the manager advertises
(docker0), keeps its images on a volume of its own, and reaches the lab registry through a
forwarder on its own 127.0.0.1, so the same image reference works on the host and on every node.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lab import labels, registry, swarm
from lab.engine import ContainerInfo, NestedEngineRequest, SwarmNode
from lab.errors import InvalidInput, SwarmError
from lab.images import SUITE, StandIn, ensure_standins
from lab.progress import ProgressFn, quiet
from lab.results import NodeInfo
from lab.spec import parse_int_in_range
from lab.undo import Undo, undo_on_failure

if TYPE_CHECKING:
    from lab.docker_ops import Engine

NODE_IMAGE = StandIn(
    name="node",  # build context base/node: daemon.json and the registry forwarder
    tag="lab/node:20.10-debian.2",  # .2: starts again after a kill (lab-dockerd clears stale pid files)
    rootfs=f"lab/debian-node-rootfs:{SUITE}",
    packages=("docker.io", "iptables", "ca-certificates", "procps", "iproute2", "socat"),
    versioned_by="docker.io",
    official="docker:dind",
)
DEFAULT_PREFIX = "lab-node"
# An idle node (dockerd + containerd) holds about 60 MB; each node pulls its own copy of every
# image (the site image is ~175 MB on its volume) and starts its own engine, swarm agent and
# gossip. On 2 cores, 4 nodes plus the manager leave room for the replicas, the load balancer
# and the load generator; more nodes add nothing on one desk but contention.
MAX_NODES = 4
ENGINE_TIMEOUT = 60.0  # seconds for an inner dockerd to answer
JOIN_TIMEOUT = 60.0  # seconds for the manager to see a joined node Ready
STOP_TIMEOUT = 20  # a graceful stop lets the inner engine stop its containers and clean cgroups

_PREFIX = re.compile(r"[a-z0-9][a-z0-9-]{0,29}")


# Pure --------------------------------------------------------------------------------------------
def parse_count(value: object) -> int:
    return parse_int_in_range(value, "node count", 1, MAX_NODES)


def parse_prefix(value: object) -> str:
    text = str(value)
    if not _PREFIX.fullmatch(text):
        raise InvalidInput(f"node prefix must be 1-30 lowercase letters, digits or dashes, not {text!r}")
    return text


def node_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index}"


def volume_name(node: str) -> str:
    return f"{node}-docker"


def free_indices(existing: Iterable[str], prefix: str, count: int) -> list[int]:
    """The `count` smallest node numbers not taken by `existing` names of this prefix."""
    taken = set()
    for name in existing:
        head, _, number = name.rpartition("-")
        if head == prefix and number.isdigit():
            taken.add(int(number))
    found: list[int] = []
    candidate = 1
    while len(found) < count:
        if candidate not in taken:
            found.append(candidate)
        candidate += 1
    return found


def join_command(token: str, manager_address: str, advertise: str) -> list[str]:
    """What a node runs to join as a worker. The advertise address is explicit: a node on a
    registry network too has two addresses, and swarm refuses to pick one itself."""
    return [
        "docker", "swarm", "join",
        "--token", token,
        "--advertise-addr", advertise,
        f"{manager_address}:{swarm.SWARM_PORT}",
    ]  # fmt: skip


def forward_command(port: int, target: str) -> list[str]:
    """Start (or re-point) the forwarder from a node's 127.0.0.1:`port` to the registry."""
    return ["lab-forward", str(port), target]


# Results -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Added:
    nodes: tuple[NodeInfo, ...]
    manager: swarm.Manager
    seconds: float  # from the first container created to every node Ready


@dataclass(frozen=True)
class NodesRemoved:
    nodes: tuple[str, ...]
    stale_entries: int
    released: swarm.Released | None  # what happened to the swarm, once no node was left


# Listing -----------------------------------------------------------------------------------------
def node_containers(engine: Engine, prefix: str | None = None) -> list[ContainerInfo]:
    extra = {"node_set": prefix} if prefix else {}
    return sorted(engine.containers(labels.role_filter(labels.ROLE_NODE, **extra)), key=lambda c: c.name)


def _lab_swarm_nodes(engine: Engine) -> list[SwarmNode]:
    """The manager's entries of lab nodes (labelled at join), or none when this is no manager."""
    current = swarm.view(engine)
    if current.state != "active" or not current.manager:
        return []
    return [n for n in engine.swarm_nodes() if labels.NODE_SET in n.labels]


def ls(engine: Engine) -> list[NodeInfo]:
    """Every lab node, and every swarm entry of a lab node whose container is gone (stale)."""
    entries = {n.hostname: n for n in _lab_swarm_nodes(engine)}
    found = []
    for container in node_containers(engine):
        entry = entries.pop(container.name, None)
        address = container.address(swarm.DEFAULT_BRIDGE)
        found.append(_info(container.name, container.status, address, entry))
    found += [_info(name, "absent", "", entry) for name, entry in sorted(entries.items())]
    return found


def _info(name: str, state: str, address: str, entry: SwarmNode | None) -> NodeInfo:
    if entry is None:
        return NodeInfo(name, state, address, "absent", "", "", "")
    return NodeInfo(
        name=name,
        container=state,
        address=address or entry.address,
        swarm=entry.state,
        availability=entry.availability,
        node_id=entry.id,
        engine=entry.engine_version,
    )


# Adding ------------------------------------------------------------------------------------------
def add(
    engine: Engine,
    count: object,
    *,
    init: bool = False,
    prefix: object = DEFAULT_PREFIX,
    progress: ProgressFn = quiet,
) -> Added:
    """Start `count` nodes and join them to this engine's swarm as workers.

    On failure or Ctrl-C every node this call started is removed again, and a swarm this call
    initialised is left again.
    """
    wanted = parse_count(count)
    set_name = parse_prefix(prefix)
    existing = node_containers(engine)
    if len(existing) + wanted > MAX_NODES:
        raise InvalidInput(
            f"{len(existing)} nodes exist already; at most {MAX_NODES} fit on one desk "
            f"(asked for {wanted} more)"
        )
    manager = swarm.ensure_manager(engine, init=init, progress=progress)
    with undo_on_failure() as undo:
        if manager.initialised:
            undo.push("leave the swarm", lambda: swarm.release_if_unused(engine))
        ensure_standins(engine, [NODE_IMAGE], progress=progress)
        began = time.monotonic()
        names = [node_name(set_name, i) for i in free_indices((c.name for c in existing), set_name, wanted)]
        started = []
        for index, name in enumerate(names):
            progress(f"starting node {name}", index / (len(names) * 3))
            container = _create_node(engine, name, set_name, manager.network, undo)
            engine.start(container)
            started.append(container)
        progress("waiting for the nodes' engines", 1 / 3)
        _wait_engines(engine, started)
        progress("joining the swarm", 2 / 3)
        _join(engine, manager, started, set_name)
        wire_registries(engine, started)
    nodes = tuple(n for n in ls(engine) if n.name in names)
    progress(f"{len(names)} nodes joined", 1.0)
    return Added(nodes, manager, time.monotonic() - began)


def _create_node(engine: Engine, name: str, set_name: str, network: str, undo: Undo) -> ContainerInfo:
    volume = volume_name(name)
    engine.create_volume(volume, labels.for_component(labels.ROLE_NODE_STORAGE, node_set=set_name))
    undo.push(f"remove volume {volume}", lambda: engine.remove_volume(volume))
    container = engine.create_nested_engine(
        NestedEngineRequest(
            name=name,
            image=NODE_IMAGE.tag,
            hostname=name,  # the node's name in `docker node ls`
            labels=labels.for_component(labels.ROLE_NODE, node_set=set_name),
            network=network,
            volume=volume,
        )
    )
    undo.push(f"remove node {name}", lambda: _remove_node(engine, container, graceful=False))
    return container


def _wait_engines(engine: Engine, containers: list[ContainerInfo]) -> None:
    def wait(container: ContainerInfo) -> None:
        deadline = time.monotonic() + ENGINE_TIMEOUT
        while True:
            code, output = engine.exec(container, ["docker", "version", "--format", "{{.Server.Version}}"])
            if code == 0:
                return
            status = engine.state(container).status
            if status != "running" or time.monotonic() > deadline:
                raise SwarmError(
                    f"the engine in node {container.name} did not start ({status})",
                    detail=engine.logs(container),
                )
            time.sleep(0.2)

    with ThreadPoolExecutor(max_workers=len(containers) or 1) as pool:
        list(pool.map(wait, containers))


def _join(engine: Engine, manager: swarm.Manager, containers: list[ContainerInfo], set_name: str) -> None:
    token = engine.worker_join_token()
    for container in containers:
        endpoint = _fresh(engine, container).networks.get(manager.network)
        advertise = endpoint.address if endpoint else ""
        gateway = endpoint.gateway if endpoint else ""
        if gateway and gateway != manager.address:
            raise SwarmError(
                f"node {container.name} sees the host at {gateway}, but the swarm advertises "
                f"{manager.address}: the overlay between them would stay silent"
            )
        code, output = engine.exec(container, join_command(token, manager.address, advertise))
        if code != 0:
            raise SwarmError(f"node {container.name} could not join the swarm: {output.strip()}")
    deadline = time.monotonic() + JOIN_TIMEOUT
    waiting = {c.name for c in containers}
    while waiting:
        for entry in engine.swarm_nodes():
            if entry.hostname in waiting and entry.state == "ready":
                engine.label_swarm_node(entry.id, {labels.NODE_SET: set_name})
                waiting.discard(entry.hostname)
        if waiting and time.monotonic() > deadline:
            raise SwarmError(f"the manager never saw {', '.join(sorted(waiting))} ready")
        if waiting:
            time.sleep(0.2)


# The registry, as seen from the nodes --------------------------------------------------------
def wire_registries(engine: Engine, containers: list[ContainerInfo] | None = None) -> int:
    """Let nodes pull from every running lab registry at the same 127.0.0.1:PORT the host pushes to.

    Each node joins the registry's network and runs a forwarder from its own 127.0.0.1:PORT to the
    registry there. Engines trust 127.0.0.0/8 registries without TLS, and the host engine's
    configuration stays untouched. Returns how many forwarders were (re)started.
    """
    nodes = containers if containers is not None else node_containers(engine)
    started = 0
    for names, port in registry.running_registries(engine):
        for container in (_fresh(engine, c) for c in nodes):
            if container.status != "running":
                continue
            if not container.on(names.network):
                engine.attach(names.network, container)
            code, output = engine.exec(container, forward_command(port, names.inner_address))
            if code != 0:
                raise SwarmError(f"node {container.name} cannot forward to the registry: {output.strip()}")
            started += 1
    return started


def forget_gone_networks(engine: Engine, container: ContainerInfo) -> list[str]:
    """Take a stopped node off the networks removed while it was down; return their names.

    A running node is detached when a registry goes, a stopped one is not (the engine lists only
    active endpoints), and the engine then refuses to start it ("Could not attach to network ...
    not found"): another session's registry, removed while a chaos test had killed this node.
    """
    gone = [name for name in container.networks if engine.network(name) is None]
    for name in gone:
        engine.detach(name, container)  # by name: the engine forgets a stopped container's endpoint
    return gone


# Removing ----------------------------------------------------------------------------------------
def rm(engine: Engine, name: str) -> NodesRemoved:
    """Remove one node: it leaves the swarm, stops gracefully, goes with its volume and swarm entry."""
    matches = [c for c in node_containers(engine) if c.name == name]
    if not matches:
        stale = [n for n in _lab_swarm_nodes(engine) if n.hostname == name]
        if not stale:
            raise InvalidInput(f"there is no node named {name!r}; `lab nodes ls` lists them")
        for entry in stale:
            engine.remove_swarm_node(entry.id)
        return NodesRemoved((), len(stale), _release_if_last(engine))
    _remove_node(engine, matches[0])
    return NodesRemoved((name,), 0, _release_if_last(engine))


def rm_all(engine: Engine, prefix: str | None = None) -> NodesRemoved:
    """Remove every lab node (of `prefix`, if given) and their stale swarm entries; then, if the
    lab initialised the swarm and nothing else uses it, leave it as it was found."""
    targets = node_containers(engine, prefix)
    if targets:
        with ThreadPoolExecutor(max_workers=len(targets)) as pool:
            list(pool.map(lambda c: _remove_node(engine, c), targets))
    stale = 0
    for entry in _lab_swarm_nodes(engine):
        if prefix is None or entry.labels.get(labels.NODE_SET) == prefix:
            stale += engine.remove_swarm_node(entry.id)
    return NodesRemoved(tuple(c.name for c in targets), stale, _release_if_last(engine))


def _release_if_last(engine: Engine) -> swarm.Released | None:
    left = len(node_containers(engine))
    if left:
        return None
    return swarm.release_if_unused(engine, lab_nodes_left=0)


def _remove_node(engine: Engine, container: ContainerInfo, *, graceful: bool = True) -> None:
    name = container.name
    if engine.state(container).status == "running":
        engine.exec(container, ["docker", "swarm", "leave", "--force"])  # fails harmlessly if never joined
        if graceful:
            engine.stop(container, STOP_TIMEOUT)
    engine.remove_containers([container])
    engine.remove_volume(volume_name(name))
    for entry in _entries_named(engine, name):
        engine.remove_swarm_node(entry.id)


def _fresh(engine: Engine, container: ContainerInfo) -> ContainerInfo:
    """A new look at a node container (its addresses once it runs); as it was if it is gone."""
    return engine.inspect(container) or container


def _entries_named(engine: Engine, name: str) -> list[SwarmNode]:
    """The manager's entries for node `name`, labelled or not (a join may have failed half-way)."""
    current = swarm.view(engine)
    if current.state != "active" or not current.manager:
        return []
    return [n for n in engine.swarm_nodes() if n.hostname == name and n.id != current.node_id]
