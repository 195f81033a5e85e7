"""The host engine's swarm: can the lab use it, initialise it when asked, and leave it as found.

When the lab initialises the swarm it says so on the swarm itself (labels on the swarm spec), so
any later `lab` process knows, and the record disappears with the swarm. A swarm the user made is
never left by the lab.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lab import labels
from lab.errors import SwarmError
from lab.progress import ProgressFn, quiet

if TYPE_CHECKING:
    from lab.docker_ops import Engine

SWARM_PORT = 2377
DEFAULT_BRIDGE = "bridge"  # the engine's docker0: its gateway is the address the manager advertises
GWBRIDGE = "docker_gwbridge"  # made by `swarm init`, left behind by `swarm leave`
INGRESS = "ingress"


# Pure ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SwarmView:
    """The engine's place in a swarm, from the `Swarm` part of `docker info`."""

    state: str  # inactive, pending, active, error, locked
    manager: bool
    node_id: str
    address: str  # the address this engine advertises
    managers: tuple[str, ...]  # addresses of the managers this engine knows
    error: str = ""

    @classmethod
    def from_info(cls, swarm: dict[str, Any]) -> SwarmView:
        return cls(
            state=str(swarm.get("LocalNodeState") or "inactive"),
            manager=bool(swarm.get("ControlAvailable")),
            node_id=str(swarm.get("NodeID") or ""),
            address=str(swarm.get("NodeAddr") or ""),
            managers=tuple(str(m.get("Addr", "")) for m in swarm.get("RemoteManagers") or ()),
            error=str(swarm.get("Error") or ""),
        )


def refusal(view: SwarmView, *, init: bool) -> str | None:
    """Why the lab cannot use this engine as the swarm's manager (None: it can, or may init)."""
    if view.state == "inactive":
        if init:
            return None
        return (
            "this engine is not in swarm mode: add --init and the lab makes it a single-manager swarm "
            "(and leaves it again when the last node is removed), or run `docker swarm init "
            "--advertise-addr <docker0 address>` yourself"
        )
    if view.state == "locked":
        return "this engine's swarm is locked: unlock it with `docker swarm unlock` first"
    if view.state in ("pending", "error"):
        detail = f" ({view.error})" if view.error else ""
        return f"this engine's swarm membership is {view.state}{detail}; fix or leave it first"
    if not view.manager:
        where = ", ".join(view.managers) or "another engine"
        return (
            f"this engine is a worker; the swarm's managers are at {where}. "
            "Run lab against a manager (DOCKER_HOST=ssh://user@manager) instead"
        )
    return None


def manager_network(gateways: dict[str, str], address: str) -> str | None:
    """The bridge network whose gateway is the manager's advertised address, where nodes must sit.

    A node elsewhere reaches the manager through routing, but the VXLAN packets the host sends
    it then leave with another source address; the node's kernel drops them (it knows the
    manager's containers at the advertised address only), and the overlay stays silent.
    """
    matches = sorted(name for name, gateway in gateways.items() if gateway == address)
    if DEFAULT_BRIDGE in matches:
        return DEFAULT_BRIDGE
    return matches[0] if matches else None


def init_labels(gwbridge_existed: bool, *, now: float | None = None) -> dict[str, str]:
    """The record the lab keeps on a swarm it initialised."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    return {
        labels.SWARM_INIT: f"{stamp} {labels.session_id()}",
        labels.SWARM_GWBRIDGE: "existed" if gwbridge_existed else "created",
    }


# On the engine -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Manager:
    """The host engine as the swarm's manager."""

    node_id: str
    address: str  # advertised: what nodes join and what their VXLAN peers are
    network: str  # the bridge network nodes sit on (its gateway is `address`)
    initialised: bool  # True when this call initialised the swarm


def view(engine: Engine) -> SwarmView:
    return SwarmView.from_info(engine.swarm_state())


def ensure_manager(engine: Engine, *, init: bool = False, progress: ProgressFn = quiet) -> Manager:
    """The host engine as a usable manager: initialised here when asked and needed, else refused clearly."""
    current = view(engine)
    reason = refusal(current, init=init)
    if reason is not None:
        raise SwarmError(reason)
    initialised = False
    if current.state == "inactive":
        progress("initialising a swarm on this engine", None)
        current = initialise(engine)
        initialised = True
    network = manager_network(engine.bridge_gateways(), current.address)
    if network is None:
        raise SwarmError(
            f"the swarm advertises {current.address}, which is no bridge gateway of this engine: nodes on "
            "this desk could join, but the overlay between them and this engine would stay silent. "
            "Re-create the swarm with `--advertise-addr` set to docker0's address"
        )
    return Manager(current.node_id, current.address, network, initialised)


def initialise(engine: Engine) -> SwarmView:
    """`swarm init` advertising docker0's gateway (read from the engine) and listening only there."""
    gateway = engine.bridge_gateways().get(DEFAULT_BRIDGE)
    if not gateway:
        raise SwarmError("this engine has no default bridge (docker0) to advertise the swarm on")
    record = init_labels(engine.network(GWBRIDGE) is not None)
    # listen_addr on the gateway too: the control plane (2377, 7946) is not opened on every interface.
    engine.swarm_init(advertise_addr=gateway, listen_addr=f"{gateway}:{SWARM_PORT}", labels=record)
    return view(engine)


@dataclass(frozen=True)
class Released:
    left: bool
    removed_gwbridge: bool
    reason: str  # why the swarm stays, or what was done


def lab_initialised(engine: Engine) -> bool:
    """Whether this engine manages a swarm the lab initialised (its record is on the swarm)."""
    current = view(engine)
    return current.state == "active" and current.manager and labels.SWARM_INIT in engine.swarm_labels()


def release_if_unused(engine: Engine, *, lab_nodes_left: int = 0) -> Released:
    """Leave the swarm if the lab initialised it and nothing uses it any more; else say why it stays."""
    current = view(engine)
    if current.state != "active" or not current.manager:
        return Released(False, False, "this engine is not a swarm manager")
    record = engine.swarm_labels()
    if labels.SWARM_INIT not in record:
        return Released(False, False, "the swarm was not initialised by the lab: it stays")
    in_use = _still_in_use(engine, current, lab_nodes_left)
    if in_use:
        return Released(False, False, f"the swarm stays: {in_use}")
    engine.swarm_leave()
    removed = False
    if record.get(labels.SWARM_GWBRIDGE) == "created":
        network = engine.network(GWBRIDGE)
        removed = network is not None and engine.remove_networks([network]) > 0
    return Released(True, removed, "left the swarm the lab had initialised")


def _still_in_use(engine: Engine, current: SwarmView, lab_nodes_left: int) -> str:
    if lab_nodes_left:
        return f"{lab_nodes_left} lab nodes still belong to it"
    services = engine.services()
    if services:
        names = ", ".join(sorted(s.name or "?" for s in services))
        return f"{len(services)} services still run ({names})"
    others = [n for n in engine.swarm_nodes() if n.id != current.node_id and n.state != "down"]
    if others:
        names = ", ".join(sorted(n.hostname or "?" for n in others))
        return f"other engines still belong to it ({names})"
    overlays = [
        n.name for n in engine.networks({"driver": ["overlay"], "scope": ["swarm"]}) if n.name != INGRESS
    ]
    if overlays:
        return f"overlay networks still exist ({', '.join(sorted(overlays))})"
    return ""
