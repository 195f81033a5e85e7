"""A swarm lab on several nodes of one desk: two Docker-in-Docker workers joined to the session's
swarm, the site image through the lab registry (pinned by digest), the replicas spread over the
nodes, and a node killed: every replica answers again within a minute. Everything made here goes
again; the nodes are the module's only two.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from lab import nodes, registry, swarm
from lab.docker_ops import Engine
from lab.pytest_plugin import free_port, unique_name

from .conftest import run_lab, served_by

pytestmark = pytest.mark.swarm

RECOVERY = 60.0  # seconds: every replica answers again within a minute of a node's death


@dataclass(frozen=True)
class Desk:
    prefix: str
    registry: str
    lab: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@pytest.fixture(scope="module")
def desk(lab_engine: Engine, swarm_manager: swarm.Manager) -> Iterator[Desk]:
    engine = lab_engine
    found = Desk(unique_name("sn"), unique_name("reg"), unique_name("swn"), free_port())
    registry_port = free_port()
    registry.up(engine, found.registry, registry_port)
    try:
        began = time.monotonic()
        nodes.add(engine, 2, prefix=found.prefix)
        print(f"\n2 nodes joined in {time.monotonic() - began:.1f} s")
        began = time.monotonic()
        result = run_lab(
            "up", "--engine", "swarm", "--name", found.lab, "--port", str(found.port), "--replicas", "4"
        )  # fmt: skip
        assert result.code == 0, result.stderr
        print(
            f"lab up --engine swarm --replicas 4 on 3 nodes (image through the registry): {time.monotonic() - began:.1f} s"
        )
        yield found
    finally:
        run_lab("down", "--name", found.lab)
        nodes.rm_all(engine, found.prefix)
        registry.down(engine, found.registry, purge=True)
        for image in engine.client.images.list(name=registry.repository_at(registry_port)):
            for tag in image.tags:
                if tag.startswith(registry.repository_at(registry_port) + ":"):  # only the tags pushed here
                    engine.remove_image(tag)


def replicas(desk: Desk) -> list[dict[str, Any]]:
    result = run_lab("status", "--name", desk.lab, "--json")
    assert result.code == 0, result.stderr
    return list(json.loads(result.stdout)["replicas"])


def ours(engine: Engine, desk: Desk) -> list[str]:
    return [c.name for c in nodes.node_containers(engine, desk.prefix)]


def test_the_replicas_spread_over_the_nodes_from_the_registrys_pinned_image(
    lab_engine: Engine, desk: Desk
) -> None:
    found = replicas(desk)
    assert len(found) == 4 and all(r["state"] == "running" for r in found)
    spread = Counter(r["node"] for r in found)
    assert len(spread) >= 2, spread
    assert set(spread) & set(ours(lab_engine, desk)), spread  # some on the nodes of this desk
    image = found[0]["image"]
    assert image.startswith("127.0.0.1:") and "@sha256:" in image  # every node runs the same build
    assert set(served_by(desk.url, 16)) == {f"{desk.lab}-web-{i}" for i in range(1, 5)}


def test_verify_gives_the_spread_per_node(desk: Desk) -> None:
    result = run_lab("verify", "--name", desk.lab, "--requests", "800", "--json")
    assert result.code == 0, result.stdout + result.stderr
    found = json.loads(result.stdout)
    assert found["verdict"] == "balanced" and found["errors"] == 0
    by_node = {n["node"]: n for n in found["by_node"]}
    assert len(by_node) >= 2 and sum(n["count"] for n in by_node.values()) == 800
    for node in by_node.values():  # round robin: each node gets its replicas' share
        assert abs(node["share"] - node["expected_share"]) < 0.01


def test_a_killed_node_takes_its_replicas_down_and_every_replica_answers_again_within_a_minute(
    lab_engine: Engine, desk: Desk
) -> None:
    before = replicas(desk)
    refused = run_lab("chaos", "kill-node", "--name", desk.lab, f"{desk.prefix}-9")
    assert refused.code == 2 and f"no running worker node '{desk.prefix}-9'" in refused.stderr
    busiest = max(ours(lab_engine, desk), key=lambda n: sum(1 for r in before if r["node"] == n))
    lost = sorted(r["name"] for r in before if r["node"] == busiest)
    began = time.monotonic()
    result = run_lab("chaos", "kill-node", "--name", desk.lab, busiest)
    assert result.code == 0, result.stderr
    assert f"killed node {busiest}" in result.stdout
    names = {f"{desk.lab}-web-{i}" for i in range(1, 5)}
    answered: set[str] = set()
    while not (answered >= names and all(r["node"] != busiest for r in replicas(desk))):
        assert time.monotonic() - began < RECOVERY, f"after {RECOVERY:.0f} s only {sorted(answered)} answered"
        answered = set(served_by(desk.url, 12))
        time.sleep(0.5)
    took = time.monotonic() - began
    print(
        f"\nnode {busiest} killed ({', '.join(lost)} on it): every replica answered again after {took:.1f} s"
    )
    after = replicas(desk)
    assert len(after) == 4 and {r["node"] for r in after}.isdisjoint({busiest})
    restored = run_lab("chaos", "restore", "--name", desk.lab)
    assert restored.code == 0, restored.stderr
    assert f"node {busiest}" in restored.stdout
    entry = next(n for n in lab_engine.swarm_nodes() if n.hostname == busiest)
    assert entry.state == "ready"


def test_node_failure_experiment_loses_no_request_and_says_how_long_recovery_took(desk: Desk) -> None:
    result = run_lab("scale", "--name", desk.lab, "2")  # then back to 4: the new tasks land on the emptiest
    assert result.code == 0, result.stderr
    result = run_lab("scale", "--name", desk.lab, "4")
    assert result.code == 0, result.stderr
    result = run_lab(
        "experiment", "node-failure", "--name", desk.lab, "--rate", "50", "--duration", "40", "--json"
    )
    assert result.stdout, result.stderr
    found = json.loads(result.stdout)
    extra = found["extra"]
    print(
        f"\nnode-failure: {found['sent']} sent, {found['failed']} failed; node {extra['killed_node']} down after "
        f"{extra['node_down_after_s']} s, recovered after {extra['time_to_recover_s']} s; {extra['rescheduled']}"
    )
    assert found["failed"] == 0 and found["verdict"] == "zero-loss", found["reason"]
    assert extra["time_to_recover_s"] is not None and extra["time_to_recover_s"] < RECOVERY
    assert all(c["passed"] for c in found["checks"]), found["checks"]
    assert extra["restored_after_window"] == [extra["killed_node"]]
    assert result.code == 0
