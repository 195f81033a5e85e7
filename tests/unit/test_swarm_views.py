"""A swarm lab in words and numbers: the spec's engine, the spread per node, the node to kill, the
status table, the experiment's plan and summary (pure: no Docker)."""

from __future__ import annotations

import pytest
from rich.console import Console

from lab import ui
from lab.engine import ContainerInfo
from lab.errors import InvalidInput
from lab.experiment.plan import ExperimentPlan
from lab.replicas import Member
from lab.results import LabStatus, MemberStatus
from lab.spec import LabSpec
from lab.swarm_chaos import pick_node
from lab.verify import node_spread


def test_the_engine_is_part_of_the_spec_and_survives_its_round_trip() -> None:
    spec = LabSpec.create(name="sw", engine="SWARM")
    assert spec.engine == "swarm" and spec.service_name == "sw-web"
    assert LabSpec.from_dict(spec.as_dict()) == spec
    assert spec.with_changes(algorithm="random").engine == "swarm" and spec.resized(5).engine == "swarm"
    assert LabSpec.create().engine == "docker"
    old = spec.as_dict()
    del old["engine"]  # a lab stored before swarm labs existed runs on one engine
    assert LabSpec.from_dict(old).engine == "docker"
    with pytest.raises(InvalidInput, match="unknown engine 'k8s'; choose docker .* or swarm"):
        LabSpec.create(engine="k8s")


def test_the_spread_per_node_adds_up_its_replicas_answers_and_expected_shares() -> None:
    nodes = {"sw-web-1": "a", "sw-web-2": "b", "sw-web-3": "b"}
    spread = node_spread(nodes, ["sw-web-1", "sw-web-2", "sw-web-3"], {"sw-web-1": 30, "sw-web-2": 35, "sw-web-3": 35},
                         [0.6, 0.2, 0.2])  # fmt: skip
    assert [(n.node, n.replicas, n.count) for n in spread] == [
        ("a", ["sw-web-1"], 30),
        ("b", ["sw-web-2", "sw-web-3"], 70),
    ]
    assert [round(n.share, 2) for n in spread] == [0.3, 0.7]
    assert [round(n.expected_share, 2) for n in spread] == [0.6, 0.4]  # weights 3,1,1: node a is short
    assert node_spread({}, ["x"], {"x": 1}, [1.0]) == []  # a lab of one engine has no nodes


def node(name: str, status: str = "running") -> ContainerInfo:
    return ContainerInfo(name, name, {"lab.role": "node"}, status, "lab/node")


class Desk:
    """Just enough engine for `pick_node`: the node containers of this desk."""

    def __init__(self, *containers: ContainerInfo) -> None:
        self.found = list(containers)

    def containers(self, filters: object) -> list[ContainerInfo]:
        return self.found


def member(name: str, node_name: str) -> Member:
    return Member(name, "10.0.0.2", 1, 1, "v1", "img", "running", address="10.0.0.2", node=node_name)


def test_the_node_to_kill_is_the_busiest_worker_or_the_one_named() -> None:
    desk = Desk(node("lab-node-1"), node("lab-node-2"), node("lab-node-3", "exited"))
    members = [
        member("w-1", "lab-node-2"),
        member("w-2", "lab-node-2"),
        member("w-3", "lab-node-1"),
        member("w-4", "vm"),
    ]
    assert pick_node(desk, members, None).name == "lab-node-2"  # type: ignore[arg-type]
    assert pick_node(desk, [], None).name == "lab-node-1"  # type: ignore[arg-type]
    assert pick_node(desk, members, "lab-node-1").name == "lab-node-1"  # type: ignore[arg-type]
    with pytest.raises(
        InvalidInput, match=r"no running worker node 'lab-node-3' \(running: lab-node-1, lab-node-2\)"
    ):
        pick_node(desk, members, "lab-node-3")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="there is no worker node to kill: `lab nodes add 2`"):
        pick_node(Desk(), members, None)  # type: ignore[arg-type]


def test_a_node_failure_plan_takes_a_node_and_restore_after_or_no() -> None:
    plan = ExperimentPlan.create("node_failure", rate=50, duration=30, options={"node": "lab-node-2"})
    assert (plan.kind, plan.node, plan.restore) == ("node-failure", "lab-node-2", "after")
    assert plan.options() == {"node": "lab-node-2", "restore": "after"}
    assert (
        ExperimentPlan.create("node-failure", rate=50, duration=30, options={"restore": "no"}).restore == "no"
    )
    with pytest.raises(InvalidInput, match="restore must be one of after, no for a node failure"):
        ExperimentPlan.create("node-failure", rate=50, duration=30, options={"restore": "during"})


def render(table: object) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def test_the_status_of_a_swarm_lab_shows_each_tasks_node_the_watcher_and_the_last_change() -> None:
    replica = MemberStatus(
        "sw-web-1", "web", 1, "running", "ok (health check)", "lab/site:v1", "v1", 1, "lab-node-1"
    )
    status = LabStatus(
        name="sw", url="http://127.0.0.1:8080/", algorithm="round_robin",
        load_balancer=MemberStatus("sw-lb", "lb", 0, "running", "ok", "lab/nginx", ""),
        replicas=(replica, MemberStatus("sw-web-2", "web", 2, "running", "ok (health check)", "lab/site:v1", "v1", 2, "vm")),
        networks=(), engine="swarm",
        watcher=MemberStatus("sw-watcher", "watcher", 0, "running", "-", "lab/watcher:x", ""),
        upstream_change={"added": ["sw-web-2 10.0.0.4 on vm"], "removed": ["10.0.0.3"], "members": 2, "latency_s": 0.42},
    )  # fmt: skip
    text = render(ui.status_table(status))
    assert "on swarm" in text and "node" in text and "lab-node-1" in text
    assert "watcher (upstream)" in text
    assert "replicas per node: lab-node-1 1, vm 1" in text
    assert (
        "upstream last changed 0.42 s after the tasks changed (2 tasks): +sw-web-2 10.0.0.4 on vm; -10.0.0.3"
        in text
    )
    one_engine = render(ui.status_table(LabStatus("d", "u", "round_robin", None, (replica,), ())))
    assert "node" not in one_engine.split("\n")[1] and "per node" not in one_engine


def test_an_experiments_summary_says_how_long_swarm_took_to_repair() -> None:
    extra = {"time_to_recover_s": 15.8, "node_down_after_s": 12.3, "killed_node": "lab-node-2",
             "rescheduled": ["sw-web-4: lab-node-2 -> vm"]}  # fmt: skip
    lines = ui.swarm_lines(extra)
    assert lines[0] == "time to recover: 15.8 s after node lab-node-2 was killed (marked down after 12.3 s)"
    assert lines[1] == "rescheduled: sw-web-4: lab-node-2 -> vm"
    assert ui.swarm_lines({"time_to_recover_s": None, "killed_node": "n"})[0].startswith(
        "time to recover: not recovered"
    )
    assert ui.swarm_lines({"replaced_after_s": 3.0, "broken": "sw-web-1"}) == [
        "Swarm replaced sw-web-1 in 3.0 s (new task in the upstream)"
    ]
    assert ui.swarm_lines({}) == []
