"""Base images: the official httpd and nginx when present, else stand-ins built offline from Debian."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lab import labels
from lab.errors import BuildFailed, LabError
from lab.progress import ProgressFn

if TYPE_CHECKING:
    from lab.engine import ImageEngine as Engine

OFFICIAL_HTTPD = "httpd:2.4"
OFFICIAL_NGINX = "nginx:latest"
SUITE = "bookworm"
ROLE_BASE_IMAGE = "base-image"
ROLE_BASE_ROOTFS = "base-rootfs"
BASE_DIR = Path(__file__).resolve().parent.parent / "base"  # base/<name>/Dockerfile
TAIL_LINES = 40

# Where each phase of one stand-in's build ends, as a fraction of that build.
BOOTSTRAP_END = 0.80
IMPORT_END = 0.90


@dataclass(frozen=True)
class BaseImages:
    """The image references a lab builds on."""

    httpd: str  # FROM of the site image
    nginx: str  # the load balancer's image
    offline: bool  # True when a Debian-built stand-in is used


@dataclass(frozen=True)
class StandIn:
    """How to build one offline stand-in for an official image."""

    name: str  # "httpd" or "nginx"; also the build context base/<name>
    tag: str
    rootfs: str  # the imported mmdebstrap tarball the Dockerfile starts FROM
    packages: tuple[str, ...]
    versioned_by: str  # the Debian package whose version labels the image
    official: str  # the image it stands in for

    @property
    def context(self) -> Path:
        return BASE_DIR / self.name


HTTPD = StandIn(
    name="httpd",
    tag="lab/httpd:2.4-debian",
    rootfs=f"lab/debian-httpd-rootfs:{SUITE}",
    packages=("apache2-bin", "media-types"),
    versioned_by="apache2-bin",
    official=OFFICIAL_HTTPD,
)
NGINX = StandIn(
    name="nginx",
    tag="lab/nginx:1.22-debian",
    rootfs=f"lab/debian-nginx-rootfs:{SUITE}",
    packages=("nginx",),
    versioned_by="nginx",
    official=OFFICIAL_NGINX,
)
# The Python of the reaper and of a swarm lab's watcher (lab/reaper.py, lab/watcher.py build
# their images on top): Debian's python3; the watcher runs lab's own code, hence docker, jinja2
# and requests from Debian too (the reaper's agent uses the standard library only).
PYTHON_ROOTFS = StandIn(
    name="python",
    tag="",  # no image of its own: only the root file system is used
    rootfs=f"lab/debian-python-rootfs:{SUITE}-docker-jinja2",
    packages=("python3", "python3-docker", "python3-jinja2", "python3-requests"),
    versioned_by="python3",
    official="",
)


@dataclass(frozen=True)
class Choice:
    """What to use for one role, and whether it must be built first."""

    ref: str
    offline: bool
    build: StandIn | None = None


# mmdebstrap's "I: ..." stage lines, in order, and how far the bootstrap is when one appears
# (measured here: extracting and installing the essential set take most of the time).
STAGES: tuple[tuple[str, str, float], ...] = (
    ("running apt-get update", "updating package lists", 0.02),
    ("downloading packages", "downloading packages", 0.08),
    ("extracting archives", "extracting packages", 0.15),
    ("installing essential packages", "installing essential packages", 0.60),
    ("installing remaining packages", "installing packages", 0.82),
    ("cleaning package lists", "cleaning up", 0.93),
    ("creating tarball", "writing the root file system", 0.95),
    ("success in", "bootstrapped", 1.0),
)


def parse_stage(line: str) -> tuple[str, float] | None:
    """The (description, fraction) an mmdebstrap stderr line announces, or None."""
    if not line.startswith("I: "):
        return None
    text = line[3:].lower()
    for marker, description, fraction in STAGES:
        if marker in text:
            return description, fraction
    return None


def _normalize(tag: str) -> str:
    for prefix in ("docker.io/library/", "library/", "docker.io/"):
        if tag.startswith(prefix):
            return tag[len(prefix) :]
    return tag


def official_nginx(tags: Iterable[str]) -> str | None:
    """`nginx:latest` if present, else any other local tag of the official nginx image."""
    found = sorted(t for t in map(_normalize, tags) if t.startswith("nginx:"))
    if OFFICIAL_NGINX in found:
        return OFFICIAL_NGINX
    return found[0] if found else None


def choose(tags: Iterable[str]) -> tuple[Choice, Choice]:
    """Pick the (httpd, nginx) images given the local tags: official, else stand-in (built if missing)."""
    local = {_normalize(t) for t in tags}
    httpd = OFFICIAL_HTTPD if OFFICIAL_HTTPD in local else None
    return _pick(httpd, HTTPD, local), _pick(official_nginx(local), NGINX, local)


def _pick(official: str | None, standin: StandIn, local: set[str]) -> Choice:
    if official is not None:
        return Choice(official, offline=False)
    return Choice(standin.tag, offline=True, build=None if standin.tag in local else standin)


def ensure_base_images(
    engine: Engine, *, pull: bool = False, progress: ProgressFn | None = None
) -> BaseImages:
    """Make sure an httpd and an nginx base image exist locally, and say which ones to use."""
    report = progress or (lambda _step, _fraction: None)
    tags = _local_tags(engine)
    if pull:
        tags |= _try_pulls(engine, tags, report)
    httpd, nginx = choose(tags)
    wanted = [c.build for c in (httpd, nginx) if c.build is not None]
    if wanted:
        _build_all(engine, wanted, tags, report)
    report("base images ready", 1.0)
    return BaseImages(httpd=httpd.ref, nginx=nginx.ref, offline=httpd.offline or nginx.offline)


def ensure_standins(
    engine: Engine, standins: Iterable[StandIn], *, progress: ProgressFn | None = None
) -> list[str]:
    """Build whichever of `standins` (other images built the same way: registry, node) are missing.

    Returns the tags it built (none when all existed).
    """
    report = progress or (lambda _step, _fraction: None)
    tags = _local_tags(engine)
    wanted = [s for s in standins if s.tag not in tags]
    if wanted:
        _build_all(engine, wanted, tags, report)
    report("images ready", 1.0)
    return [s.tag for s in wanted]


def _local_tags(engine: Engine) -> set[str]:
    try:
        listed = engine.image_tags()
    except LabError as e:
        raise BuildFailed(f"cannot list the engine's images: {e.message}") from e
    return {_normalize(tag) for tag in listed}


def _try_pulls(engine: Engine, tags: set[str], report: ProgressFn) -> set[str]:
    """Pull the official images that are missing; a registry that does not answer is no error."""
    pulled: set[str] = set()
    for ref, present in ((OFFICIAL_HTTPD, OFFICIAL_HTTPD in tags), (OFFICIAL_NGINX, official_nginx(tags))):
        if present:
            continue
        report(f"pulling {ref}", None)
        repository, tag = ref.split(":")
        try:
            engine.pull_image(repository, tag)
        except LabError:
            continue  # offline: the stand-in is built instead
        pulled.add(ref)
    return pulled


class _Tracker:
    """Folds the progress of parallel builds into one description and one fraction."""

    def __init__(self, names: Iterable[str], report: ProgressFn) -> None:
        self._done = dict.fromkeys(names, 0.0)
        self._report = report
        self._lock = threading.Lock()

    def update(self, name: str, step: str, fraction: float) -> None:
        with self._lock:
            self._done[name] = max(self._done[name], min(fraction, 1.0))
            overall = sum(self._done.values()) / len(self._done)
            self._report(f"{name}: {step}", overall)


def _build_all(engine: Engine, wanted: list[StandIn], tags: set[str], report: ProgressFn) -> None:
    if shutil.which("mmdebstrap") is None and any(s.rootfs not in tags for s in wanted):
        raise BuildFailed(
            "cannot build the offline base images: mmdebstrap is not installed "
            "(run scripts/ensure-docker.sh, or apt-get install mmdebstrap)"
        )
    for standin in wanted:
        if not (standin.context / "Dockerfile").is_file():
            raise BuildFailed(f"missing build context for the {standin.name} stand-in: {standin.context}")
    tracker = _Tracker((s.name for s in wanted), report)
    with tempfile.TemporaryDirectory(prefix="lab-base-", dir=_scratch_root()) as scratch:
        with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
            futures = [
                pool.submit(_build_standin, engine, s, s.rootfs in tags, Path(scratch), tracker)
                for s in wanted
            ]
        # Both builds run to the end: a finished one is kept even when the other failed.
        for future in futures:
            future.result()


def ensure_rootfs(engine: Engine, standin: StandIn, progress: ProgressFn | None = None) -> str:
    """Bootstrap and import `standin`'s Debian root file system unless present; return its reference."""
    report = progress or (lambda _step, _fraction: None)
    if standin.rootfs in _local_tags(engine):
        return standin.rootfs
    if shutil.which("mmdebstrap") is None:
        raise BuildFailed(
            f"cannot build {standin.rootfs}: mmdebstrap is not installed "
            "(run scripts/ensure-docker.sh, or apt-get install mmdebstrap)"
        )
    tracker = _Tracker([standin.name], report)
    with tempfile.TemporaryDirectory(prefix="lab-base-", dir=_scratch_root()) as scratch:
        tarball = Path(scratch) / f"{standin.name}.tar"
        version = _bootstrap(standin, tarball, tracker)
        tracker.update(standin.name, "importing the root file system", BOOTSTRAP_END)
        _import(engine, standin, tarball, version)
    tracker.update(standin.name, "done", 1.0)
    return standin.rootfs


def ensure_program_image(
    engine: Engine,
    tag: str,
    dockerfile: str,
    files: Iterable[tuple[str, bytes]],
    image_labels: dict[str, str],
    progress: ProgressFn | None = None,
) -> str:
    """Build `tag`, a program of lab's on Debian's python3 root file system (offline), unless it
    exists. The Dockerfile gets that root file system as build argument ROOTFS; `files` go into the
    build context by their relative paths. Tags are named by content by the callers."""
    if engine.image_exists(tag):
        return tag
    report = progress or (lambda _step, _fraction: None)
    rootfs = ensure_rootfs(engine, PYTHON_ROOTFS, progress)
    report(f"building {tag}", None)
    with tempfile.TemporaryDirectory(prefix="lab-program-") as scratch:
        context = Path(scratch)
        (context / "Dockerfile").write_text(dockerfile)
        for path, content in files:
            target = context / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        engine.build_image(
            context,
            tag,
            buildargs={"ROOTFS": rootfs},
            labels={**image_labels, "org.opencontainers.image.base.name": rootfs},
        )
    report(f"built {tag}", 1.0)
    return tag


def _scratch_root() -> str | None:
    """tmpfs when it has room: unpacking a root file system is disk-bound here."""
    try:
        stats = os.statvfs("/dev/shm")
    except OSError:
        return None
    return "/dev/shm" if stats.f_bavail * stats.f_frsize >= 2 << 30 else None


def _build_standin(
    engine: Engine, standin: StandIn, have_rootfs: bool, scratch: Path, tracker: _Tracker
) -> None:
    def phase(step: str, start: float, end: float) -> Callable[[float], None]:
        return lambda done: tracker.update(standin.name, step, start + (end - start) * done)

    if not have_rootfs:
        tarball = scratch / f"{standin.name}.tar"
        version = _bootstrap(standin, tarball, tracker)
        phase("importing the root file system", BOOTSTRAP_END, IMPORT_END)(0.0)
        _import(engine, standin, tarball, version)
        tarball.unlink()
    _build(engine, standin, phase("building the image", IMPORT_END, 1.0))
    tracker.update(standin.name, "done", 1.0)


def mmdebstrap_command(standin: StandIn, tarball: Path, version_file: Path) -> list[str]:
    """The mmdebstrap command line that bootstraps `standin`'s root file system into `tarball`."""
    query = f"chroot \"$1\" dpkg-query -W -f='${{Version}}' {standin.versioned_by}"
    return [
        "mmdebstrap",
        "--variant=apt",
        f"--include={','.join(standin.packages)}",
        # Merge /usr with a hook instead of the usrmerge package, which drags perl in.
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        "--dpkgopt=force-unsafe-io",
        *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "info", "locale", "lintian")),
        f"--customize-hook={query} > {shlex.quote(str(version_file))}",
        SUITE,
        str(tarball),
    ]


def _bootstrap(standin: StandIn, tarball: Path, tracker: _Tracker) -> str:
    """Run mmdebstrap; return the version of the package that names the image."""
    version_file = tarball.with_suffix(".version")
    command = mmdebstrap_command(standin, tarball, version_file)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    tracker.update(standin.name, "bootstrapping Debian", 0.0)
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except OSError as e:
        raise BuildFailed(f"cannot run mmdebstrap: {e}") from e
    with process:
        assert process.stdout is not None
        for line in _lines(process.stdout):
            tail.append(line)
            stage = parse_stage(line)
            if stage is not None:
                tracker.update(standin.name, stage[0], stage[1] * BOOTSTRAP_END)
    if process.returncode != 0:
        raise BuildFailed(
            f"mmdebstrap failed for the {standin.name} stand-in (exit {process.returncode})",
            detail="\n".join(tail),
        )
    try:
        return version_file.read_text().strip()
    except OSError:
        return ""


def _lines(stream: Iterable[str]) -> Iterator[str]:
    for line in stream:
        yield line.rstrip("\n")


def _import(engine: Engine, standin: StandIn, tarball: Path, version: str) -> None:
    repository, tag = standin.rootfs.rsplit(":", 1)
    image_labels = {
        labels.ROLE: ROLE_BASE_ROOTFS,
        "org.opencontainers.image.title": f"{standin.name} root file system",
        "org.opencontainers.image.version": version,
    }
    changes = [f"LABEL {key}={shlex.quote(value)}" for key, value in image_labels.items() if value]
    try:
        engine.import_image(tarball, repository, tag, changes)
    except LabError as e:
        raise BuildFailed(f"cannot import the {standin.name} root file system: {e.message}") from e


def image_labels(standin: StandIn, version: str) -> dict[str, str]:
    """The labels of a built stand-in image."""
    found = {
        labels.ROLE: ROLE_BASE_IMAGE,
        "org.opencontainers.image.title": f"lab {standin.name} stand-in",
        "org.opencontainers.image.description": (
            f"Debian {SUITE}'s {standin.versioned_by} shaped like the official {standin.official} "
            "image, built offline by lab"
        ),
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.base.name": standin.rootfs,
    }
    return {key: value for key, value in found.items() if value}


def _build(engine: Engine, standin: StandIn, advance: Callable[[float], None]) -> None:
    version = engine.image_labels(standin.rootfs).get("org.opencontainers.image.version", "")
    engine.build_image(
        standin.context,
        standin.tag,
        buildargs={"ROOTFS": standin.rootfs},
        labels=image_labels(standin, version),
        on_step=lambda fraction, _step: advance(fraction),
    )
