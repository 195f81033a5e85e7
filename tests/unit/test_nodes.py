"""Node naming, counts and the commands a node runs (no Docker)."""

from __future__ import annotations

import pytest

from lab import nodes
from lab.engine import ContainerInfo, Endpoint
from lab.errors import InvalidInput


@pytest.mark.parametrize("value", ["1", 2, "4"])
def test_counts_within_the_desk_maximum_are_accepted(value: object) -> None:
    assert 1 <= nodes.parse_count(value) <= nodes.MAX_NODES


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "between 1 and 4, not 0"),
        ("-1", "between 1 and 4, not -1"),
        (str(nodes.MAX_NODES + 1), f"not {nodes.MAX_NODES + 1}"),
        ("two", "whole number"),
    ],
)
def test_bad_counts_are_refused(value: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        nodes.parse_count(value)


@pytest.mark.parametrize("value", ["", "Lab", "-x", "a" * 31, "a_b"])
def test_bad_prefixes_are_refused(value: str) -> None:
    with pytest.raises(InvalidInput):
        nodes.parse_prefix(value)


def test_new_nodes_take_the_smallest_free_numbers_of_their_prefix() -> None:
    existing = ["lab-node-1", "lab-node-3", "other-2", "lab-node-x"]
    assert nodes.free_indices(existing, "lab-node", 3) == [2, 4, 5]
    assert nodes.free_indices([], "lab-node", 2) == [1, 2]
    assert nodes.node_name("lab-node", 2) == "lab-node-2"
    assert nodes.volume_name("lab-node-2") == "lab-node-2-docker"


def test_join_names_the_address_to_advertise_and_the_manager_port() -> None:
    command = nodes.join_command("SWMTKN-1-abc", "172.17.0.1", "172.17.0.5")
    assert command[:3] == ["docker", "swarm", "join"]
    assert command[command.index("--token") + 1] == "SWMTKN-1-abc"
    assert command[command.index("--advertise-addr") + 1] == "172.17.0.5"
    assert command[-1] == "172.17.0.1:2377"


def test_the_forwarder_points_a_node_port_at_the_registry() -> None:
    assert nodes.forward_command(5000, "lab-registry:5000") == ["lab-forward", "5000", "lab-registry:5000"]


class NetworksOnly:
    """An engine that knows which networks exist and records what is detached."""

    def __init__(self, existing: set[str]) -> None:
        self.existing = existing
        self.detached: list[tuple[str, str]] = []

    def network(self, name: str) -> object | None:
        return name if name in self.existing else None

    def detach(self, network: str, container: ContainerInfo) -> None:
        self.detached.append((network, container.name))


def test_a_stopped_node_is_taken_off_the_networks_removed_while_it_was_down() -> None:
    # Another session's registry went while a chaos test had killed the node: start then failed.
    node = ContainerInfo(
        "id1", "n-1", {}, "exited", "lab/node", {"lab-swarm": Endpoint(), "reg-gone-net": Endpoint()}
    )
    engine = NetworksOnly({"lab-swarm"})
    assert nodes.forget_gone_networks(engine, node) == ["reg-gone-net"]  # type: ignore[arg-type]
    assert engine.detached == [("reg-gone-net", "n-1")]
    engine = NetworksOnly({"lab-swarm", "reg-gone-net"})
    assert nodes.forget_gone_networks(engine, node) == [] and engine.detached == []  # type: ignore[arg-type]
