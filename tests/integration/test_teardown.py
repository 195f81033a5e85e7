"""Teardown on the real engine: rollbacks leave nothing, and a network that cannot be removed
never blocks a lab. A network is made unremovable the way the shared engine allows without a
restart: a container that is not the lab's sits on it (the engine answers "has active
endpoints", as for an endpoint it lost count of), and that container must be left alone."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from lab import chaos, loadbalancer, orchestrator
from lab.docker_ops import Engine
from lab.errors import LabError
from lab.images import ensure_base_images
from lab.pytest_plugin import free_port, unique_name
from lab.spec import LabSpec

from .conftest import leftovers, run_lab, served_by

STRANGER_LABEL = "lab-tests.stranger"  # not `lab.name`: no lab owns it, so no lab may touch it


@pytest.fixture
def stranger(lab_engine: Engine) -> Iterator[list[str]]:
    """Names of containers a test starts that belong to no lab; removed by the test at the end."""
    names: list[str] = []
    yield names
    for name in names:
        lab_engine.client.containers.get(name).remove(force=True)


def start_stranger(engine: Engine, network: str, names: list[str]) -> str:
    name = unique_name("stranger")
    image = ensure_base_images(engine).nginx
    engine.client.containers.run(
        image, ["sleep", "600"], name=name, detach=True, network=network, labels={STRANGER_LABEL: "1"}
    )
    names.append(name)
    return name


def networks_of(engine: Engine, container: str) -> list[str]:
    return sorted(engine.client.containers.get(container).attrs["NetworkSettings"]["Networks"])


def test_a_network_held_by_someone_elses_container_never_blocks_the_lab(
    lab_name: str, lab_engine: Engine, stranger: list[str]
) -> None:
    port = str(free_port())
    assert run_lab("up", "--name", lab_name, "--replicas", "2", "--port", port, "-q").code == 0
    held = f"{lab_name}-backend"
    other = start_stranger(lab_engine, held, stranger)

    # down removes all it can, says what stays and why, and exits 0: nothing of the lab runs.
    down = run_lab("down", "--name", lab_name)
    assert down.code == 0, down.stderr
    assert "3 containers, 1 networks" in down.stdout
    assert f"left behind: network {held}: container {other}, not of this lab, is on it" in down.stderr
    assert lab_engine.client.containers.get(other).status == "running"
    assert networks_of(lab_engine, other) == [held]

    status = run_lab("status", "--name", lab_name, "--json")
    assert status.code == 0, status.stderr
    assert [n["name"] for n in json.loads(status.stdout)["stuck_networks"]] == [held]

    # up works beside it, on networks of its own, and says so in one line.
    again = run_lab("up", "--name", lab_name, "--replicas", "2", "--port", port, "-q")
    assert again.code == 0, again.stderr
    note = [line for line in again.stderr.splitlines() if "runs on new networks" in line]
    assert len(note) == 1 and held in note[0]
    backend = orchestrator.find_running(lab_engine, lab_name).backend.network
    assert backend != held and backend.startswith(held)
    lab = orchestrator.find_running(lab_engine, lab_name)
    assert set(served_by(lab.spec.url, 8)) == set(lab.spec.replica_names())

    # Everything that names the backend network finds the new one.
    orchestrator.scale(lab_engine, lab_name, 3)
    assert networks_of(lab_engine, f"{lab_name}-web-3") == [backend]
    chaos.break_replica(lab_engine, lab_name, "1", "disconnect")
    assert networks_of(lab_engine, f"{lab_name}-web-1") == []
    assert chaos.restore(lab_engine, lab_name) == [f"{lab_name}-web-1"]
    assert set(served_by(lab.spec.url, 12)) == {f"{lab_name}-web-{i}" for i in (1, 2, 3)}

    second = run_lab("down", "--name", lab_name)
    assert second.code == 0 and "4 containers, 2 networks" in second.stdout
    assert lab_engine.client.containers.get(other).status == "running"  # still untouched

    lab_engine.client.containers.get(other).remove(force=True)
    stranger.clear()
    last = run_lab("down", "--name", lab_name)
    assert last.code == 0 and "0 containers, 1 networks" in last.stdout and not last.stderr
    assert leftovers(lab_engine, lab_name) == (0, 0)


def test_a_config_that_fails_its_test_rolls_back_and_leaves_nothing(
    lab_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = LabSpec.create(name=unique_name(), replicas=24, port=free_port())
    broken = loadbalancer.render_nginx_conf
    monkeypatch.setattr(
        loadbalancer, "render_nginx_conf", lambda view: broken(view).replace("keepalive 32;", "keepalive;")
    )
    try:
        with pytest.raises(LabError, match="nginx -t"):
            orchestrator.up(lab_engine, spec)
        assert leftovers(lab_engine, spec.name) == (0, 0)
    finally:
        orchestrator.remove_lab(lab_engine, spec.name)
