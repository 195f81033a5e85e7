"""A swarm lab's watcher container: its image (lab's own code on Debian's Python) and its start.

The watcher (lab.taskwatch) keeps the load balancer's upstream on the service's running tasks
for as long as the lab lives, so it is a container of the lab, on the manager, next to the load
balancer: `lab down` removes it with the rest, its restart policy brings it back with the engine.

What it may do is what the reaper may do (lab.reaper): it holds the engine's socket, which is as
good as root on the engine, and nothing else: no network at all (it speaks to the engine over the
socket, and to nginx through the engine's exec), no capabilities, a read-only root file system,
96 MB and 64 processes. No Docker API is opened on TCP.

Its image is lab's package and nginx template copied onto Debian's python3 with python3-docker,
-jinja2 and -requests (built offline like the base images), and named by the content of what was
copied: a changed lab builds a new image, and a running lab keeps the one it started with.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from lab import images, labels
from lab.engine import ContainerEngine, ContainerInfo, ContainerRequest
from lab.errors import LabError
from lab.progress import ProgressFn, quiet
from lab.reaper import SOCKET_INSIDE, socket_path
from lab.spec import PROJECT_DIR
from lab.taskwatch import READY

REPOSITORY = "lab/watcher"
PACKAGE = Path(__file__).resolve().parent
TEMPLATE = PROJECT_DIR / "nginx" / "nginx.conf.j2"
DOCKERFILE = """\
ARG ROOTFS
FROM ${ROOTFS}
COPY lab /opt/lab/lab
COPY nginx /opt/lab/nginx
ENV PYTHONPATH=/opt/lab PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
STOPSIGNAL SIGTERM
CMD ["python3", "-m", "lab.taskwatch"]
"""


def sources() -> list[tuple[str, bytes]]:
    """What the image holds besides Debian: lab's Python modules and the nginx template."""
    found = [(f"lab/{p.relative_to(PACKAGE)}", p.read_bytes()) for p in sorted(PACKAGE.rglob("*.py"))]
    return [*found, ("nginx/nginx.conf.j2", TEMPLATE.read_bytes())]


def image_tag(files: list[tuple[str, bytes]] | None = None) -> str:
    digest = hashlib.sha256(DOCKERFILE.encode())
    for path, content in sources() if files is None else files:
        digest.update(path.encode() + b"\0" + hashlib.sha256(content).digest())
    return f"{REPOSITORY}:{digest.hexdigest()[:12]}"


def ensure_image(engine: ContainerEngine, progress: ProgressFn = quiet) -> str:
    """Build the watcher image unless one of this content exists."""
    files = sources()
    return images.ensure_program_image(
        engine,
        image_tag(files),
        DOCKERFILE,
        files,
        {
            labels.ROLE: labels.ROLE_WATCHER_IMAGE,
            "org.opencontainers.image.title": "lab watcher",
            "org.opencontainers.image.description": "Keeps a swarm lab's nginx upstream on its running tasks",
        },
        progress,
    )


def name_of(lab: str) -> str:
    return f"{lab}-watcher"


def watcher_request(lab: str, image: str) -> ContainerRequest:
    """The watcher of lab `lab`: the engine's socket and nothing else it does not need."""
    return ContainerRequest(
        name=name_of(lab),
        image=image,
        labels=labels.for_lab(lab, labels.ROLE_WATCHER),
        network="",
        network_disabled=True,
        environment={"LAB_NAME": lab, "DOCKER_HOST": f"unix://{SOCKET_INSIDE}"},
        cap_add=(),
        mem_limit="96m",
        pids_limit=64,
        restart="unless-stopped",
        binds={socket_path(): SOCKET_INSIDE},
        read_only=True,
    )


def start(engine: ContainerEngine, lab: str, image: str, progress: ProgressFn = quiet) -> ContainerInfo:
    """Start the watcher of lab `lab` and return once it watches (a LabError with its log if not)."""
    progress("starting the watcher that keeps the upstream on the running tasks", None)
    container = engine.create_container(watcher_request(lab, image))
    engine.start(container)
    if not engine.wait_for_log(container, READY):
        raise LabError(f"the watcher of lab {lab!r} stopped while starting", detail=engine.logs(container))
    return container


def find(engine: ContainerEngine, lab: str) -> ContainerInfo | None:
    found = engine.containers(labels.lab_filter(lab, labels.ROLE_WATCHER))
    return found[0] if found else None
