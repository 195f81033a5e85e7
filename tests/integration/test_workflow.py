"""The Docker workflow on real containers: cp (and the content split verify shows), snapshot and
deploy --image under paced load, up --mount-site, push then up --from-registry."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from lab import labels, orchestrator, registry
from lab.docker_ops import Engine
from lab.experiment.run import run_experiment
from lab.pytest_plugin import LabHandle, free_port
from lab.replicas import DOCROOT
from lab.workflow import SNAPSHOT_BASE, SNAPSHOT_OF_LAB, SNAPSHOT_OF_REPLICA, SNAPSHOT_TIME

from .conftest import leftovers, run_lab, served_by, write_site
from .test_experiments import RATE, assert_paced
from .test_registry import names

__all__ = ["names"]  # the registry fixture, used by name


def one_line_error(stderr: str) -> None:
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "Traceback" not in stderr


def pages_by_replica(url: str, n: int) -> dict[str, set[str]]:
    """Which bodies each replica answered with, over n fresh connections."""
    seen: dict[str, set[str]] = {}
    for _ in range(n):
        response = requests.get(url, timeout=5, headers={"Connection": "close"})
        assert response.status_code == 200
        seen.setdefault(response.headers["X-Served-By"], set()).add(response.text.strip())
    return seen


def readable_site(tmp_path: Path, body: str) -> Path:
    site = write_site(tmp_path / "site", body=body)
    site.chmod(0o755)
    (site / "index.html").chmod(0o644)
    return site


# cp -------------------------------------------------------------------------------------------
def test_cp_to_one_replica_and_verify_shows_the_content_split(
    lab_cluster: Callable[..., LabHandle], tmp_path: Path
) -> None:
    lab = lab_cluster(replicas=3)
    page = tmp_path / "index.html"
    page.write_text("<h1>changed by lab cp</h1>\n")
    copied = run_lab("cp", str(page), "--name", lab.name, "--replica", "2")
    assert copied.code == 0, copied.stderr
    assert f"{DOCROOT}/index.html in {lab.name}-web-2" in copied.stdout
    seen = pages_by_replica(lab.url, 12)
    assert seen[f"{lab.name}-web-2"] == {"<h1>changed by lab cp</h1>"}
    assert all("changed by lab cp" not in body for name, bodies in seen.items() if name != f"{lab.name}-web-2"
               for body in bodies)  # fmt: skip
    result = run_lab("verify", "--name", lab.name, "--requests", "300", "--json")
    data = json.loads(result.stdout)
    contents = data["contents"]
    assert len(contents) == 2, contents
    by_replicas = {tuple(sorted(group["replicas"])): group for group in contents}
    assert set(by_replicas) == {(f"{lab.name}-web-2",), (f"{lab.name}-web-1", f"{lab.name}-web-3")}
    assert sum(group["count"] for group in contents) == 300 - data["errors"]
    assert any("different contents" in note for note in data["notes"])
    table = run_lab("verify", "--name", lab.name, "--requests", "300")
    assert "content" in table.stdout and "different contents" in table.stdout
    # --all puts it everywhere: one content again.
    assert run_lab("cp", str(page), "--name", lab.name, "--all").code == 0
    again = json.loads(run_lab("verify", "--name", lab.name, "--requests", "150", "--json").stdout)
    assert len(again["contents"]) == 1


def test_cp_bad_input_is_one_line_and_touches_nothing(
    lab_cluster: Callable[..., LabHandle], lab_engine: Engine, tmp_path: Path
) -> None:
    lab = lab_cluster(replicas=2)
    page = tmp_path / "a.html"
    page.write_text("a")
    for args, code, message in [
        (["cp", str(page), "--name", lab.name, "--replica", "7"], 2, "has no replica '7'"),
        (["cp", str(tmp_path / "gone.html"), "--name", lab.name, "--all"], 2, "does not exist"),
        (["cp", str(page), "--name", lab.name, "--replica", "1", "--all"], 2, "--replica REPLICA or --all"),
        (["cp", str(page), "--name", lab.name, "--all", "--dest", "/no/such/dir/a.html"], 2, "/no/such/dir does not exist"),
        (["snapshot", "9", "--name", lab.name, "--tag", "v2"], 2, "has no replica '9'"),
        (["deploy", "--name", lab.name, "--image", f"missing-{secrets.token_hex(3)}"], 2, "there is no image"),
    ]:  # fmt: skip
        result = run_lab(*args)
        assert result.code == code and message in result.stderr, (args, result.stderr)
        one_line_error(result.stderr)
    assert set(served_by(lab.url, 4)) == set(lab.replicas)
    assert requests.get(lab.url + "a.html", timeout=5).status_code == 404  # nothing was copied


# snapshot and deploy --image ------------------------------------------------------------------
def test_a_snapshot_carries_the_cp_change_and_deploy_image_rolls_it_out_without_a_failed_request(
    lab_cluster: Callable[..., LabHandle], lab_engine: Engine, tmp_path: Path
) -> None:
    lab = lab_cluster(replicas=3)
    tag = f"snap-{secrets.token_hex(4)}"
    page = tmp_path / "snap.html"
    page.write_text("<p>kept by the snapshot</p>\n")
    try:
        assert run_lab("cp", str(page), "--name", lab.name, "--replica", "1").code == 0
        made = run_lab("snapshot", "1", "--name", lab.name, "--tag", tag)
        assert made.code == 0, made.stderr
        ref = f"lab/site:{tag}"
        again = run_lab("snapshot", "2", "--name", lab.name, "--tag", tag)
        assert again.code == 2 and "exists already" in again.stderr  # a tag is never moved
        found = lab_engine.image_labels(ref)
        assert found[SNAPSHOT_OF_LAB] == lab.name and found[SNAPSHOT_OF_REPLICA] == f"{lab.name}-web-1"
        assert found[SNAPSHOT_BASE].startswith("lab/site:") and found[SNAPSHOT_TIME].endswith("Z")
        assert found[labels.NAME] == "" and found[labels.SITE_VERSION] == tag  # the replica's own are blanked
        result = run_experiment(
            lab_engine, lab.name, "deploy", rate=RATE, duration=20, options={"image": tag, "batch": 1}
        )
        print(f"deploy --image under load: sent {result.sent}, ok {result.ok}, failed {result.failed}, "
              f"retried {result.retried}")  # fmt: skip
        assert_paced(result)
        assert result.failed == 0 and result.verdict == "zero-loss", result.reason
        assert result.passed, (
            [c.detail for c in result.checks],
            result.operation_error,
            [e.text for e in result.events],
        )
        # Every replica is new, runs the snapshot, and serves the copied page with the new version.
        running = orchestrator.find_running(lab_engine, lab.name).replicas
        assert len(running) == 3 and not set(running) & set(lab.replicas)
        seen = pages_by_replica(lab.url + "snap.html", 12)
        assert set(seen) == set(running) and all(b == {"<p>kept by the snapshot</p>"} for b in seen.values())
        assert {requests.get(lab.url, timeout=5).headers["X-Site-Version"] for _ in range(6)} == {tag}
    finally:
        orchestrator.remove_lab(lab_engine, lab.name)
        lab_engine.remove_image(f"lab/site:{tag}")


# --mount-site -----------------------------------------------------------------------------------
def test_mount_site_serves_a_host_edit_from_every_replica_and_status_says_so(
    lab_cluster: Callable[..., LabHandle], tmp_path: Path
) -> None:
    site = readable_site(tmp_path, "<p>first edit</p>")
    lab = lab_cluster(replicas=3, site=site, mount_site=True)
    seen = pages_by_replica(lab.url, 12)
    assert set(seen) == set(lab.replicas) and all(b == {"<p>first edit</p>"} for b in seen.values())
    (site / "index.html").write_text("<p>second edit</p>")
    (site / "new.html").write_text("<p>a new page</p>")
    (site / "new.html").chmod(0o644)
    seen = pages_by_replica(lab.url, 12)
    assert set(seen) == set(lab.replicas) and all(b == {"<p>second edit</p>"} for b in seen.values())
    assert all(b == {"<p>a new page</p>"} for b in pages_by_replica(lab.url + "new.html", 6).values())
    status = run_lab("status", "--name", lab.name, "--json")
    assert json.loads(status.stdout)["site_mount"] == str(site)
    table = run_lab("status", "--name", lab.name)
    assert "site mounted" in table.stdout and "read-only" in table.stdout
    # Read-only: a copy into the mounted folder fails with the engine's reason, in one line.
    refused = run_lab("cp", str(site / "new.html"), "--name", lab.name, "--all")
    assert refused.code != 0
    one_line_error(refused.stderr)


def test_mount_site_with_a_missing_folder_is_one_line_and_leaves_nothing(
    lab_engine: Engine, lab_name: str, tmp_path: Path
) -> None:
    result = run_lab(
        "up", "--name", lab_name, "--port", str(free_port()), "--mount-site", "--site", str(tmp_path / "gone")
    )
    assert result.code == 2 and "does not exist" in result.stderr
    one_line_error(result.stderr)
    assert leftovers(lab_engine, lab_name) == (0, 0)


# push, then up --from-registry ------------------------------------------------------------------
def test_push_then_up_from_registry_after_the_local_image_is_removed(
    lab_engine: Engine, names: registry.RegistryNames, tmp_path: Path
) -> None:
    body = f"<p>from the registry {secrets.token_hex(4)}</p>"
    site = write_site(tmp_path / "site", body=body)  # its own content: its own image, removed below
    first, second = f"{names.name}-a", f"{names.name}-b"
    port = free_port()
    local = ""
    try:
        up = run_lab("up", "--name", first, "--port", str(port), "--replicas", "2", "--site", str(site))
        assert up.code == 0, up.stderr
        local = orchestrator.find_running(lab_engine, first).backend.current_image().ref
        assert run_lab("registry", "up", "--port", str(free_port()), "--registry", names.name).code == 0
        pushed = run_lab("push", "--name", first, "--registry", names.name, "--tag", "t1", "--json")
        assert pushed.code == 0, pushed.stderr
        reference = json.loads(pushed.stdout)["reference"]
        assert run_lab("down", "--name", first).code == 0
        assert lab_engine.remove_image(local) and lab_engine.remove_image(reference)
        assert not lab_engine.image_exists(local) and not lab_engine.image_exists(reference)

        missing = run_lab(
            "up", "--name", second, "--port", str(port), "--from-registry", "--tag", "nope",
            "--registry", names.name, "--site", str(site),
        )  # fmt: skip
        print(f"missing tag: {missing.stderr.strip()}")
        assert missing.code == 1 and "nope" in missing.stderr and "manifest unknown" in missing.stderr.lower()
        one_line_error(missing.stderr)
        assert leftovers(lab_engine, second) == (0, 0)

        pulled = run_lab(
            "up", "--name", second, "--port", str(port), "--replicas", "2", "--from-registry", "--tag", "t1",
            "--registry", names.name, "--site", str(site),
        )  # fmt: skip
        assert pulled.code == 0, pulled.stderr
        seen = pages_by_replica(f"http://127.0.0.1:{port}/", 8)
        assert set(seen) == {f"{second}-web-1", f"{second}-web-2"}
        assert all(b == {body} for b in seen.values())
        replicas = json.loads(run_lab("status", "--name", second, "--json").stdout)["replicas"]
        assert {r["image"] for r in replicas} == {reference}
    finally:
        for lab in (first, second):
            orchestrator.remove_lab(lab_engine, lab)
        if local:
            lab_engine.remove_image(local)  # the site's own image (its content is this test's)


def test_up_from_registry_when_the_registry_is_down_is_one_line_and_leaves_nothing(
    lab_engine: Engine, lab_name: str
) -> None:
    result = run_lab(
        "up", "--name", lab_name, "--port", str(free_port()), "--from-registry",
        "--registry", f"gone-{secrets.token_hex(3)}",
    )  # fmt: skip
    assert result.code == 1 and "is not running" in result.stderr
    one_line_error(result.stderr)
    assert leftovers(lab_engine, lab_name) == (0, 0)


@pytest.mark.parametrize("tag", ["bad tag", "-x", "a" * 65])
def test_snapshot_with_a_bad_tag_is_refused_before_the_engine(tag: str) -> None:
    result = run_lab("snapshot", "1", "--tag", tag, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.code == 2 and "tag must be" in result.stderr
    one_line_error(result.stderr)
