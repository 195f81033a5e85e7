"""The Docker workflow on a running lab: copy files into replicas (`lab cp`), commit one into an
image (`lab snapshot`).

Pure parts (paths, the tar archive, the snapshot's labels) are separate from the engine calls,
which go through the engine interface (lab.engine) like the rest of the lab.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from lab import labels
from lab.engine import ContainerEngine, ContainerInfo
from lab.errors import InvalidInput, LabError
from lab.loadbalancer import LoadBalancer
from lab.replicas import DOCROOT
from lab.site import SITE_REPOSITORY
from lab.spec import parse_version_tag

# Labels a snapshot carries: where it came from.
SNAPSHOT_OF_LAB = "lab.snapshot.lab"
SNAPSHOT_OF_REPLICA = "lab.snapshot.replica"
SNAPSHOT_BASE = "lab.snapshot.base-image"
SNAPSHOT_TIME = "lab.snapshot.time"


# Pure -------------------------------------------------------------------------------------------
def parse_dest(value: object) -> str:
    """An absolute path inside a container, normalised; '..' and relative paths are refused."""
    text = str(value)
    if not text.startswith("/"):
        raise InvalidInput(f"--dest must be an absolute path inside the replica, not {text!r}")
    if ".." in text.split("/"):
        raise InvalidInput(f"--dest must not contain '..': {text!r}")
    return posixpath.normpath(text)


def parse_source(value: object) -> Path:
    """A file or folder on this machine to copy, or a one-line InvalidInput."""
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise InvalidInput(f"copy source {str(value)!r} does not exist")
    if not (path.is_file() or path.is_dir()):
        raise InvalidInput(f"copy source {str(value)!r} is neither a file nor a folder")
    return path.resolve()


def pick_replicas(replica: str | None, everyone: bool) -> None:
    """Exactly one of `--replica R` and `--all`."""
    if (replica is not None) == everyone:
        raise InvalidInput("give --replica REPLICA or --all (one of them)")


def archive(source: Path, name: str) -> bytes:
    """A tar archive holding `source` (a file, or a folder with everything in it) as `name`.

    Members belong to root and are readable by everyone: httpd serves them as an unprivileged user,
    whatever the owner and mode were on this machine.
    """
    buffer = io.BytesIO()

    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mode |= 0o555 if info.isdir() else 0o444
        return info

    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(str(source), arcname=name, recursive=True, filter=as_root)
    return buffer.getvalue()


@dataclass(frozen=True)
class Placement:
    """Where a copy unpacks (an existing directory) and under which name the source lands."""

    directory: str
    name: str

    @property
    def path(self) -> str:
        return posixpath.join(self.directory, self.name)


def place(source: Path, dest: str, *, dest_is_dir: bool | None) -> Placement:
    """`docker cp` semantics: into `dest` when it is a directory, else as `dest` (its parent must
    exist). `dest_is_dir` is None when nothing is at `dest`."""
    if dest_is_dir:
        return Placement(dest, source.name)
    if dest_is_dir is False and source.is_dir():
        raise InvalidInput(f"cannot copy folder {source} over the file {dest}")
    parent, name = posixpath.split(dest)
    return Placement(parent or "/", name)


def snapshot_labels(lab: str, replica: ContainerInfo, tag: str, now: float) -> dict[str, str]:
    """What a snapshot says about where it came from (and the version it serves).

    The engine merges the container's own labels into the image's; the replica's (its lab, session,
    number...) are blanked, so a container made from the snapshot never passes for that replica."""
    inherited = {key: "" for key in replica.labels if key.startswith(labels.PREFIX)}
    return inherited | {
        labels.ROLE: labels.ROLE_SITE_IMAGE,
        labels.SITE_VERSION: tag,
        SNAPSHOT_OF_LAB: lab,
        SNAPSHOT_OF_REPLICA: replica.name,
        SNAPSHOT_BASE: replica.image,
        SNAPSHOT_TIME: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "org.opencontainers.image.version": tag,
        "org.opencontainers.image.base.name": replica.image,
    }


def image_ref(value: str) -> str:
    """What `--image` names: a bare tag is one of the lab's site images (lab/site:TAG), anything
    with a ':' or '/' is a full reference."""
    if ":" in value or "/" in value:
        return value
    return f"{SITE_REPOSITORY}:{parse_version_tag(value)}"


# Engine ---------------------------------------------------------------------------------------
def find_replicas(engine: ContainerEngine, lab: str, replica: str | None) -> list[ContainerInfo]:
    """The running replicas of `lab`: one by name (`lab-web-2`) or number (`2`), or all (None).

    A swarm lab is refused: its replicas are tasks, on other nodes too, that Swarm replaces at will,
    so a change made inside one would not last (and some would be out of reach).
    """
    lb = LoadBalancer.find(engine, lab)
    if lb is not None and lb.spec().engine == "swarm":
        raise InvalidInput(
            f"lab {lab!r} runs on Docker Swarm, whose tasks are replaced at will: change the site "
            "and `lab deploy` it instead"
        )
    web = sorted(
        engine.containers(labels.lab_filter(lab, labels.ROLE_WEB)),
        key=lambda c: labels.replica_index(c.labels),
    )
    if not web:
        raise LabError(f"there is no lab named {lab!r}; start one with `lab up --name {lab}`")
    if replica is None:
        chosen = web
    else:
        chosen = [c for c in web if replica in (c.name, c.labels.get(labels.REPLICA))]
        if not chosen:
            known = ", ".join(c.name for c in web)
            raise InvalidInput(f"lab {lab!r} has no replica {replica!r} (replicas: {known})")
    stopped = [c.name for c in chosen if c.status != "running"]
    if stopped:
        raise LabError(f"replica {', '.join(stopped)} is not running; `lab chaos restore` first")
    return chosen


@dataclass(frozen=True)
class Copied:
    source: str
    path: str  # where it is inside each replica
    replicas: tuple[str, ...]
    bytes: int  # size of the archive sent to each

    def as_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "path": self.path,
            "replicas": list(self.replicas),
            "bytes": self.bytes,
        }


def copy(
    engine: ContainerEngine,
    lab: str,
    source: object,
    *,
    replica: str | None = None,
    everyone: bool = False,
    dest: object = DOCROOT,
) -> Copied:
    """Copy a file or folder into running replicas (`docker container cp`), one archive upload each.

    Every input is checked, and every replica's destination looked at, before the first upload.
    """
    pick_replicas(replica, everyone)
    path = parse_source(source)
    target = parse_dest(dest)
    chosen = find_replicas(engine, lab, replica)
    placements: list[tuple[ContainerInfo, Placement]] = []
    for container in chosen:
        found = engine.stat_path(container, target)
        placement = place(path, target, dest_is_dir=None if found is None else found.directory)
        if found is None and engine.stat_path(container, placement.directory) is None:
            raise InvalidInput(f"{placement.directory} does not exist in {container.name}")
        placements.append((container, placement))
    archives: dict[str, bytes] = {}  # by the name the source takes (the same on every replica, usually)
    for container, placement in placements:
        data = archives.get(placement.name) or archives.setdefault(
            placement.name, archive(path, placement.name)
        )
        engine.put_archive(container, placement.directory, data)
    first = placements[0][1]
    return Copied(str(path), first.path, tuple(c.name for c in chosen), len(archives[first.name]))


@dataclass(frozen=True)
class Snapshot:
    image: str  # lab/site:TAG
    image_id: str
    replica: str
    labels: dict[str, str]

    def as_dict(self) -> dict[str, object]:
        return {"image": self.image, "id": self.image_id, "replica": self.replica, "labels": self.labels}


def snapshot(
    engine: ContainerEngine, lab: str, replica: str, tag: object, *, now: float | None = None
) -> Snapshot:
    """Commit a replica, with whatever was copied into it, into lab/site:TAG (`docker container
    commit`), labelled with its origin; its X-Site-Version becomes TAG. A read-only mounted site is
    not in the replica's file system, so a lab in that mode is refused."""
    version = parse_version_tag(tag)
    (container,) = find_replicas(engine, lab, str(replica))
    if container.labels.get(labels.SITE_MOUNT):
        raise InvalidInput(
            f"lab {lab!r} serves its site from a host folder (--mount-site): a snapshot would not hold it"
        )
    ref = f"{SITE_REPOSITORY}:{version}"
    if engine.image_exists(ref):  # site images are named by content: moving a tag would lie about one
        raise InvalidInput(f"image {ref} exists already; choose another --tag")
    found = snapshot_labels(lab, container, version, time.time() if now is None else now)
    image_id = engine.commit(
        container,
        SITE_REPOSITORY,
        version,
        labels=found,
        changes=[f"ENV LAB_SITE_VERSION={version}"],
        message=f"lab snapshot of {container.name} (lab {lab})",
    )
    return Snapshot(ref, image_id, container.name, found)
