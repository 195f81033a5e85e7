"""lab cp, lab snapshot, deploy --image, up --mount-site and up --from-registry, against the fake engine."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from lab import labels, orchestrator, workflow
from lab.errors import InvalidInput, LabError
from lab.pytest_plugin import free_port
from lab.replicas import DOCROOT
from lab.spec import LabSpec
from tests.unit.fake_engine import FakeEngine
from tests.unit.test_orchestration import served_at_once

__all__ = ["served_at_once"]  # the fixture, used by name


def _site(tmp_path: Path, text: str = "hello") -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(text)
    return site


def _up(engine: FakeEngine, **options: object) -> LabSpec:
    spec = LabSpec.create(name="fake", port=free_port(), **options)  # type: ignore[arg-type]
    orchestrator.up(engine, spec)
    return spec


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


# Pure ------------------------------------------------------------------------------------------
def test_the_archive_holds_a_folder_under_its_new_name_owned_by_root_and_readable(tmp_path: Path) -> None:
    folder = tmp_path / "pages"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.html").write_text("a")
    (folder / "sub" / "a.html").chmod(0o600)
    found = _members(workflow.archive(folder, "docs"))
    assert set(found) == {"docs", "docs/sub", "docs/sub/a.html"}
    page = found["docs/sub/a.html"]
    assert (page.uid, page.gid, page.uname) == (0, 0, "root")
    assert page.mode & 0o444 == 0o444 and found["docs/sub"].mode & 0o555 == 0o555


def test_placement_follows_docker_cp(tmp_path: Path) -> None:
    page = tmp_path / "new.html"
    page.write_text("x")
    assert workflow.place(page, DOCROOT, dest_is_dir=True).path == f"{DOCROOT}/new.html"
    assert workflow.place(page, f"{DOCROOT}/index.html", dest_is_dir=False).path == f"{DOCROOT}/index.html"
    missing = workflow.place(page, f"{DOCROOT}/other.html", dest_is_dir=None)
    assert (missing.directory, missing.name) == (DOCROOT, "other.html")
    with pytest.raises(InvalidInput, match="cannot copy folder"):
        workflow.place(tmp_path, f"{DOCROOT}/index.html", dest_is_dir=False)


@pytest.mark.parametrize(
    ("dest", "why"), [("htdocs", "absolute"), ("/usr/../etc", "'..'")]
)  # fmt: skip
def test_a_bad_destination_is_refused(dest: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        workflow.parse_dest(dest)


@pytest.mark.parametrize(("replica", "everyone"), [(None, False), ("1", True)])
def test_exactly_one_of_replica_and_all(replica: str | None, everyone: bool) -> None:
    with pytest.raises(InvalidInput, match="--replica REPLICA or --all"):
        workflow.pick_replicas(replica, everyone)


def test_snapshot_labels_say_where_it_came_from() -> None:
    from lab.engine import ContainerInfo

    replica = ContainerInfo("id", "fake-web-2", labels.for_lab("fake", labels.ROLE_WEB, replica="2"), "running",
                            "lab/site:abc", {})  # fmt: skip
    found = workflow.snapshot_labels("fake", replica, "v2", 0.0)
    assert found[labels.NAME] == found[labels.REPLICA] == found[labels.SESSION] == ""  # not the replica's
    assert found[labels.ROLE] == labels.ROLE_SITE_IMAGE
    assert found[workflow.SNAPSHOT_OF_LAB] == "fake" and found[workflow.SNAPSHOT_OF_REPLICA] == "fake-web-2"
    assert (
        found[workflow.SNAPSHOT_BASE] == "lab/site:abc"
        and found[workflow.SNAPSHOT_TIME] == "1970-01-01T00:00:00Z"
    )
    assert found[labels.SITE_VERSION] == "v2"


def test_image_ref_takes_a_bare_tag_as_a_site_image() -> None:
    assert workflow.image_ref("v2") == "lab/site:v2"
    assert workflow.image_ref("127.0.0.1:5000/lab/site:v2") == "127.0.0.1:5000/lab/site:v2"
    with pytest.raises(InvalidInput):
        workflow.image_ref("bad tag!")


# cp and snapshot on the fake engine -------------------------------------------------------------
@pytest.mark.usefixtures("served_at_once")
def test_cp_to_one_replica_reaches_only_that_one(tmp_path: Path) -> None:
    engine = FakeEngine()
    _up(engine, replicas=3)
    page = tmp_path / "index.html"
    page.write_text("version two")
    copied = workflow.copy(engine, "fake", page, replica="2")
    assert copied.replicas == ("fake-web-2",) and copied.path == f"{DOCROOT}/index.html"
    assert engine.container("fake-web-2").files[f"{DOCROOT}/index.html"] == "version two"
    assert f"{DOCROOT}/index.html" not in engine.container("fake-web-1").files
    everywhere = workflow.copy(engine, "fake", page, everyone=True, dest="/tmp/copy.html")
    assert everywhere.replicas == ("fake-web-1", "fake-web-2", "fake-web-3")
    assert all(engine.container(n).files["/tmp/copy.html"] == "version two" for n in everywhere.replicas)


@pytest.mark.usefixtures("served_at_once")
def test_cp_checks_everything_before_the_first_upload(tmp_path: Path) -> None:
    engine = FakeEngine()
    _up(engine, replicas=2)
    page = tmp_path / "a.html"
    page.write_text("a")
    with pytest.raises(InvalidInput, match="has no replica '9'"):
        workflow.copy(engine, "fake", page, replica="9")
    with pytest.raises(InvalidInput, match="/nowhere does not exist"):
        workflow.copy(engine, "fake", page, everyone=True, dest="/nowhere/a.html")
    with pytest.raises(InvalidInput, match="does not exist"):
        workflow.copy(engine, "fake", tmp_path / "missing", everyone=True)
    with pytest.raises(LabError, match="no lab named 'other'"):
        workflow.copy(engine, "other", page, everyone=True)
    assert engine.uploads == []


@pytest.mark.usefixtures("served_at_once")
def test_snapshot_commits_the_replica_with_its_origin_and_deploy_image_rolls_it_out(tmp_path: Path) -> None:
    engine = FakeEngine()
    _up(engine, replicas=3)
    engine.image_exists_always = False
    made = workflow.snapshot(engine, "fake", "fake-web-1", "v2", now=0.0)
    with pytest.raises(InvalidInput, match="lab/site:v2 exists already"):
        workflow.snapshot(engine, "fake", "fake-web-2", "v2")
    assert len(engine.commits) == 1
    assert made.image == "lab/site:v2" and engine.commits[0]["container"] == "fake-web-1"
    assert engine.commits[0]["changes"] == ["ENV LAB_SITE_VERSION=v2"]
    assert made.labels[workflow.SNAPSHOT_BASE] == engine.container("fake-web-1").image
    version = orchestrator.deploy(engine, "fake", image="v2")
    assert version == "v2"
    web = engine.containers(labels.lab_filter("fake", labels.ROLE_WEB))
    assert len(web) == 3 and {c.image for c in web} == {"lab/site:v2"}
    assert {c.labels[labels.SITE_VERSION] for c in web} == {"v2"}
    assert engine.built.count("lab/site:v2") == 0  # rolled out as it is, never built


@pytest.mark.usefixtures("served_at_once")
def test_deploy_image_refuses_a_missing_image_and_site_or_tag_beside_it() -> None:
    engine = FakeEngine()
    _up(engine, replicas=2)
    engine.image_exists_always = False
    before = {c.name for c in engine.containers(labels.lab_filter("fake"))}
    with pytest.raises(InvalidInput, match="there is no image lab/site:nope"):
        orchestrator.deploy(engine, "fake", image="nope")
    with pytest.raises(InvalidInput, match="without --site and --tag"):
        orchestrator.deploy(engine, "fake", image="v2", tag="v3")
    assert {c.name for c in engine.containers(labels.lab_filter("fake"))} == before


# --mount-site ---------------------------------------------------------------------------------
@pytest.mark.usefixtures("served_at_once")
def test_mount_site_binds_the_folder_read_only_into_every_replica_and_status_says_so(tmp_path: Path) -> None:
    site = _site(tmp_path)
    for path in (tmp_path, site):
        path.chmod(0o755)
    (site / "index.html").chmod(0o644)
    engine = FakeEngine()
    _up(engine, replicas=2, site=site, mount_site=True)
    for name in ("fake-web-1", "fake-web-2"):
        request = engine.container(name).request
        assert request is not None and request.read_only_binds == {str(site): DOCROOT} and not request.binds
        assert engine.container(name).labels[labels.SITE_MOUNT] == str(site)
    assert orchestrator.status(engine, "fake", known={}).site_mount == str(site)
    orchestrator.scale(engine, "fake", 3)  # a new replica mounts it too (the stored spec says so)
    request = engine.container("fake-web-3").request
    assert request is not None and request.read_only_binds == {str(site): DOCROOT}
    with pytest.raises(InvalidInput, match="host folder"):
        workflow.snapshot(engine, "fake", "1", "v2")


@pytest.mark.usefixtures("served_at_once")
def test_a_lab_without_mount_site_has_no_bind_and_status_shows_no_mount() -> None:
    engine = FakeEngine()
    _up(engine, replicas=1)
    request = engine.container("fake-web-1").request
    assert request is not None and not request.read_only_binds
    assert orchestrator.status(engine, "fake", known={}).site_mount == ""


def test_mount_site_refuses_a_missing_folder_and_one_httpd_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        LabSpec.create(site=tmp_path / "missing", mount_site=True)
    site = _site(tmp_path)
    site.chmod(0o700)
    with pytest.raises(InvalidInput, match="not readable by everyone"):
        LabSpec.create(site=site, mount_site=True)
    assert LabSpec.create(site=site).mount_site is False  # a built-in site is copied by the build


def test_mount_site_is_refused_for_a_swarm_lab(tmp_path: Path) -> None:
    site = _site(tmp_path)
    site.chmod(0o755)
    with pytest.raises(InvalidInput, match="--mount-site is for --engine docker"):
        LabSpec.create(site=site, mount_site=True, engine="swarm")
    assert LabSpec.create(site=site, mount_site=True, engine="docker").mount_site


# --from-registry --------------------------------------------------------------------------------
@pytest.mark.usefixtures("served_at_once")
def test_up_from_registry_runs_the_pulled_image() -> None:
    engine = FakeEngine()
    engine.registry["127.0.0.1:5999/lab/site:v7"] = {labels.SITE_VERSION: "v7"}
    spec = LabSpec.create(name="fake", port=free_port(), replicas=2)
    found = orchestrator.up(
        engine, spec, from_registry=orchestrator.FromRegistry("127.0.0.1:5999/lab/site", "v7")
    )
    assert engine.pulled == ["127.0.0.1:5999/lab/site:v7"] and engine.built == []
    assert {r.image for r in found.replicas} == {"127.0.0.1:5999/lab/site:v7"}
    assert {r.site_version for r in found.replicas} == {"v7"}


@pytest.mark.usefixtures("served_at_once")
def test_up_from_registry_without_the_image_fails_with_the_registry_message_and_leaves_nothing() -> None:
    engine = FakeEngine()
    spec = LabSpec.create(name="fake", port=free_port(), replicas=2)
    with pytest.raises(LabError, match="manifest unknown"):
        orchestrator.up(
            engine, spec, from_registry=orchestrator.FromRegistry("127.0.0.1:5999/lab/site", "v9")
        )
    assert not engine.containers(labels.lab_filter("fake")) and not engine.networks(labels.lab_filter("fake"))


@pytest.mark.usefixtures("served_at_once")
def test_a_folder_copied_onto_a_directory_lands_inside_it(tmp_path: Path) -> None:
    engine = FakeEngine()
    _up(engine, replicas=2)
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.html").write_text("a")
    copied = workflow.copy(engine, "fake", folder, everyone=True)
    assert copied.path == f"{DOCROOT}/docs"
    assert all(engine.container(n).files[f"{DOCROOT}/docs/a.html"] == "a" for n in copied.replicas)
    assert [u[1] for u in engine.uploads] == [DOCROOT, DOCROOT]
