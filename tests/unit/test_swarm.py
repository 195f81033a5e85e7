"""Whether the lab may use the engine's swarm, and leaving it as found, against a small fake engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from lab import labels, swarm
from lab.engine import ServiceInfo, SwarmNode
from lab.errors import SwarmError
from lab.swarm import SwarmView, manager_network, refusal

MANAGER_INFO = {
    "LocalNodeState": "active",
    "ControlAvailable": True,
    "NodeID": "m1",
    "NodeAddr": "172.17.0.1",
    "RemoteManagers": [{"NodeID": "m1", "Addr": "172.17.0.1:2377"}],
}


def test_view_reads_the_swarm_part_of_docker_info() -> None:
    view = SwarmView.from_info(MANAGER_INFO)
    assert (view.state, view.manager, view.node_id, view.address) == ("active", True, "m1", "172.17.0.1")
    assert view.managers == ("172.17.0.1:2377",)
    assert SwarmView.from_info({}).state == "inactive"


def test_a_manager_is_usable_with_or_without_init() -> None:
    view = SwarmView.from_info(MANAGER_INFO)
    assert refusal(view, init=False) is None
    assert refusal(view, init=True) is None


def test_no_swarm_says_how_to_enable_it_unless_init() -> None:
    view = SwarmView.from_info({"LocalNodeState": "inactive"})
    message = refusal(view, init=False)
    assert message is not None and "--init" in message and "docker swarm init" in message
    assert refusal(view, init=True) is None


def test_a_worker_is_refused_and_told_where_the_managers_are() -> None:
    view = SwarmView.from_info(
        {
            "LocalNodeState": "active",
            "ControlAvailable": False,
            "RemoteManagers": [{"Addr": "10.1.2.3:2377"}, {"Addr": "10.1.2.4:2377"}],
        }
    )
    for init in (False, True):  # --init cannot make a worker a manager
        message = refusal(view, init=init)
        assert message is not None
        assert "worker" in message and "10.1.2.3:2377, 10.1.2.4:2377" in message


@pytest.mark.parametrize(
    ("state", "words"), [("locked", "docker swarm unlock"), ("pending", "pending"), ("error", "boom")]
)
def test_other_states_are_refused(state: str, words: str) -> None:
    view = SwarmView.from_info({"LocalNodeState": state, "Error": "boom" if state == "error" else ""})
    message = refusal(view, init=True)
    assert message is not None and words in message


def test_nodes_sit_on_the_bridge_whose_gateway_is_advertised() -> None:
    gateways = {"bridge": "172.17.0.1", "lab-net": "172.18.0.1", "other": "172.17.0.1"}
    assert manager_network(gateways, "172.17.0.1") == "bridge"
    assert manager_network(gateways, "172.18.0.1") == "lab-net"
    assert manager_network(gateways, "10.0.0.5") is None  # e.g. the host's own LAN address


def test_the_init_record_says_when_and_whether_gwbridge_came_with_it() -> None:
    record = swarm.init_labels(False, now=0)
    assert record[labels.SWARM_INIT].startswith("1970-01-01T00:00:00Z ")
    assert record[labels.SWARM_GWBRIDGE] == "created"
    assert swarm.init_labels(True)[labels.SWARM_GWBRIDGE] == "existed"


# A fake engine for init / release -------------------------------------------------------------------
@dataclass
class FakeNetwork:
    name: str


@dataclass
class FakeEngine:
    state: dict[str, Any] = field(default_factory=lambda: {"LocalNodeState": "inactive"})
    spec_labels: dict[str, str] = field(default_factory=dict)
    service_list: list[ServiceInfo] = field(default_factory=list)
    nodes: list[SwarmNode] = field(default_factory=list)
    overlays: list[str] = field(default_factory=list)
    local_networks: set[str] = field(default_factory=set)
    gateways: dict[str, str] = field(default_factory=lambda: {"bridge": "172.17.0.1"})
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def swarm_state(self) -> dict[str, Any]:
        return self.state

    def swarm_labels(self) -> dict[str, str]:
        return self.spec_labels

    def bridge_gateways(self) -> dict[str, str]:
        return self.gateways

    def network(self, name: str) -> FakeNetwork | None:
        return FakeNetwork(name) if name in self.local_networks else None

    def networks(self, filters: dict[str, list[str]]) -> list[FakeNetwork]:
        return [FakeNetwork(n) for n in ["ingress", *self.overlays]]

    def remove_networks(self, networks: list[FakeNetwork]) -> int:
        for n in networks:
            self.calls.append(("remove network", n.name))
            self.local_networks.discard(n.name)
        return len(networks)

    def swarm_init(self, advertise_addr: str, listen_addr: str, labels: dict[str, str]) -> str:
        self.calls.append(("init", advertise_addr, listen_addr))
        self.state = {**MANAGER_INFO, "NodeAddr": advertise_addr}
        self.spec_labels = dict(labels)
        self.local_networks.add("docker_gwbridge")
        return "m1"

    def swarm_leave(self) -> None:
        self.calls.append(("leave",))
        self.state = {"LocalNodeState": "inactive"}

    def services(self) -> list[ServiceInfo]:
        return self.service_list

    def swarm_nodes(self) -> list[SwarmNode]:
        return [node("m1", "ready"), *self.nodes]


def node(node_id: str, state: str, hostname: str = "") -> SwarmNode:
    return SwarmNode(node_id, hostname, state, "active", "", {}, "")


def test_init_advertises_and_listens_on_docker0_and_is_undone_completely() -> None:
    engine = FakeEngine()
    manager = swarm.ensure_manager(engine, init=True)  # type: ignore[arg-type]
    assert engine.calls == [("init", "172.17.0.1", "172.17.0.1:2377")]
    assert (manager.address, manager.network, manager.initialised) == ("172.17.0.1", "bridge", True)
    released = swarm.release_if_unused(engine)  # type: ignore[arg-type]
    assert released.left and released.removed_gwbridge
    assert engine.calls[1:] == [("leave",), ("remove network", "docker_gwbridge")]


def test_a_docker_gwbridge_that_existed_before_init_stays() -> None:
    engine = FakeEngine(local_networks={"docker_gwbridge"})
    swarm.ensure_manager(engine, init=True)  # type: ignore[arg-type]
    released = swarm.release_if_unused(engine)  # type: ignore[arg-type]
    assert released.left and not released.removed_gwbridge
    assert "docker_gwbridge" in engine.local_networks


def test_without_init_an_inactive_engine_is_refused_and_untouched() -> None:
    engine = FakeEngine()
    with pytest.raises(SwarmError, match="not in swarm mode"):
        swarm.ensure_manager(engine)  # type: ignore[arg-type]
    assert engine.calls == []


def test_a_swarm_advertised_off_every_bridge_is_refused() -> None:
    engine = FakeEngine(state={**MANAGER_INFO, "NodeAddr": "192.0.2.10"})
    with pytest.raises(SwarmError, match="overlay .* would stay silent"):
        swarm.ensure_manager(engine)  # type: ignore[arg-type]


def test_a_swarm_the_user_made_is_never_left() -> None:
    engine = FakeEngine(state=dict(MANAGER_INFO))
    released = swarm.release_if_unused(engine)  # type: ignore[arg-type]
    assert not released.left and "not initialised by the lab" in released.reason
    assert engine.calls == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"service_list": [ServiceInfo("s1", "web", {})]}, "1 services still run (web)"),
        ({"nodes": [node("w9", "ready", "pi")]}, "(pi)"),
        ({"overlays": ["someones-net"]}, "overlay networks still exist (someones-net)"),
    ],
)
def test_a_lab_swarm_still_in_use_stays(change: dict[str, Any], reason: str) -> None:
    engine = FakeEngine()
    swarm.ensure_manager(engine, init=True)  # type: ignore[arg-type]
    for key, value in change.items():
        setattr(engine, key, value)
    released = swarm.release_if_unused(engine)  # type: ignore[arg-type]
    assert not released.left and reason in released.reason
    assert ("leave",) not in engine.calls


def test_nodes_left_keep_the_swarm_and_down_entries_do_not() -> None:
    engine = FakeEngine()
    swarm.ensure_manager(engine, init=True)  # type: ignore[arg-type]
    assert not swarm.release_if_unused(engine, lab_nodes_left=2).left  # type: ignore[arg-type]
    engine.nodes = [node("w1", "down")]  # a stale entry goes with the swarm
    assert swarm.release_if_unused(engine).left  # type: ignore[arg-type]
