"""Base-image choice and build-progress parsing, without Docker."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import images
from lab.docker_ops import build_fraction
from lab.errors import EngineRefused
from lab.images import HTTPD, NGINX, choose, parse_stage


def test_official_images_win_when_present() -> None:
    httpd, nginx = choose(["httpd:2.4", "nginx:latest", HTTPD.tag, NGINX.tag])
    assert (httpd.ref, httpd.offline, httpd.build) == ("httpd:2.4", False, None)
    assert (nginx.ref, nginx.offline, nginx.build) == ("nginx:latest", False, None)


def test_any_official_nginx_tag_will_do() -> None:
    _, nginx = choose(["nginx:1.27-alpine", "docker.io/library/nginx:1.25"])
    assert nginx.ref == "nginx:1.25"
    assert not nginx.offline


def test_lookalike_repositories_are_not_official() -> None:
    httpd, nginx = choose(["httpd:2.2", "bitnami/nginx:latest", "lab/nginx:1.22-debian"])
    assert httpd.build == HTTPD
    assert (nginx.ref, nginx.offline, nginx.build) == (NGINX.tag, True, None)


def test_existing_stand_ins_need_no_build() -> None:
    httpd, nginx = choose([HTTPD.tag, NGINX.tag, "unrelated:tag"])
    assert (httpd.ref, nginx.ref) == (HTTPD.tag, NGINX.tag)
    assert httpd.offline and nginx.offline
    assert httpd.build is None and nginx.build is None


def test_nothing_local_builds_both() -> None:
    httpd, nginx = choose([])
    assert (httpd.build, nginx.build) == (HTTPD, NGINX)


@pytest.mark.parametrize(
    ("line", "description"),
    [
        ("I: running apt-get update...", "updating package lists"),
        ("I: downloading packages with apt...", "downloading packages"),
        ("I: extracting archives...", "extracting packages"),
        ("I: installing essential packages...", "installing essential packages"),
        ("I: installing remaining packages inside the chroot...", "installing packages"),
        ("I: cleaning package lists and apt cache...", "cleaning up"),
        ("I: creating tarball...", "writing the root file system"),
        ("I: success in 27.3237 seconds", "bootstrapped"),
    ],
)
def test_stage_lines_are_recognised(line: str, description: str) -> None:
    parsed = parse_stage(line)
    assert parsed is not None and parsed[0] == description


@pytest.mark.parametrize(
    "line",
    [
        "I: automatically chosen mode: root",
        "Setting up usr-is-merged (1) ...",
        "E: extracting archives failed",  # an error line is no stage, even when it names one
        "",
    ],
)
def test_other_lines_are_no_stage(line: str) -> None:
    assert parse_stage(line) is None


def test_stage_fractions_grow_to_one() -> None:
    fractions = [fraction for _, _, fraction in images.STAGES]
    assert fractions == sorted(fractions)
    assert fractions[0] > 0 and fractions[-1] == 1.0


def test_build_steps_become_fractions() -> None:
    """One parser for every build (base images, the site, the reaper): the adapter's."""
    assert build_fraction("Step 1/4 : ARG ROOTFS") == 0.0
    assert build_fraction("Step 3/4 : RUN nginx -t") == 0.5
    assert build_fraction(" ---> Running in 1234") is None
    assert build_fraction("Step 2/0 : nothing") is None


def test_tracker_averages_parallel_builds() -> None:
    seen: list[tuple[str, float | None]] = []
    tracker = images._Tracker(["httpd", "nginx"], lambda step, done: seen.append((step, done)))
    tracker.update("httpd", "extracting packages", 0.5)
    tracker.update("nginx", "building the image", 1.0)
    tracker.update("httpd", "late line", 0.2)  # never moves backwards
    assert seen == [
        ("httpd: extracting packages", 0.25),
        ("nginx: building the image", 0.75),
        ("httpd: late line", 0.75),
    ]


def test_mmdebstrap_command_builds_the_packages_into_a_tarball(tmp_path: Path) -> None:
    command = images.mmdebstrap_command(HTTPD, tmp_path / "httpd.tar", tmp_path / "httpd.version")
    assert command[0] == "mmdebstrap"
    assert "--include=apache2-bin,media-types" in command
    assert command[-2:] == ["bookworm", str(tmp_path / "httpd.tar")]
    hook = next(arg for arg in command if arg.startswith("--customize-hook="))
    assert "dpkg-query" in hook and "apache2-bin" in hook and str(tmp_path / "httpd.version") in hook


def test_stand_in_labels() -> None:
    found = images.image_labels(NGINX, "1.22.1-9")
    assert found["lab.role"] == "base-image"
    assert found["org.opencontainers.image.version"] == "1.22.1-9"
    assert found["org.opencontainers.image.base.name"] == NGINX.rootfs
    assert "org.opencontainers.image.version" not in images.image_labels(NGINX, "")


def test_build_contexts_exist() -> None:
    for standin in (HTTPD, NGINX):
        assert (standin.context / "Dockerfile").is_file()


def test_missing_mmdebstrap_is_a_build_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images.shutil, "which", lambda _name: None)
    with pytest.raises(images.BuildFailed, match="mmdebstrap is not installed"):
        images._build_all(None, [HTTPD], set(), lambda _s, _f: None)


class _FakeImages:
    """Just enough of the engine's image verbs (lab.engine.ImageEngine) for ensure_base_images."""

    def __init__(self, tags: list[str], *, pullable: bool = False) -> None:
        self.tags = set(tags)
        self.pullable = pullable
        self.pulled: list[str] = []

    def image_tags(self) -> set[str]:
        return set(self.tags)

    def pull_image(self, repository: str, tag: str, on_progress: object = None) -> str:
        if not self.pullable:
            raise EngineRefused("the Docker engine refused: no registry")
        self.pulled.append(f"{repository}:{tag}")
        return "sha256:0"


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    built: list[str] = []
    monkeypatch.setattr(
        images, "_build_all", lambda _client, wanted, _tags, _report: built.extend(s.tag for s in wanted)
    )
    return built


def test_ensure_is_a_no_op_when_the_stand_ins_exist(builds: list[str]) -> None:
    steps: list[str] = []
    base = images.ensure_base_images(
        _FakeImages([HTTPD.tag, NGINX.tag]),
        progress=lambda step, _done: steps.append(step),
    )
    assert base == images.BaseImages(httpd=HTTPD.tag, nginx=NGINX.tag, offline=True)
    assert builds == []
    assert steps == ["base images ready"]


def test_ensure_builds_only_what_is_missing(builds: list[str]) -> None:
    base = images.ensure_base_images(_FakeImages(["httpd:2.4"]))
    assert base == images.BaseImages(httpd="httpd:2.4", nginx=NGINX.tag, offline=True)
    assert builds == [NGINX.tag]


def test_failed_pulls_fall_back_to_stand_ins(builds: list[str]) -> None:
    client = _FakeImages([])
    base = images.ensure_base_images(client, pull=True)
    assert base.offline
    assert builds == [HTTPD.tag, NGINX.tag]


def test_pulled_images_are_used(builds: list[str]) -> None:
    client = _FakeImages([], pullable=True)
    base = images.ensure_base_images(client, pull=True)
    assert base == images.BaseImages(httpd="httpd:2.4", nginx="nginx:latest", offline=False)
    assert client.pulled == ["httpd:2.4", "nginx:latest"]
    assert builds == []
