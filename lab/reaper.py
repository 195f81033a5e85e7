"""Reapers: small containers that remove labs nobody owns any more, the way Testcontainers' Ryuk does.

A process id cannot say whether a session is alive: in another PID namespace (a CI job in its own
container) or on another machine sharing the engine, the same number names another process or
none. A connection can: each pytest session starts (or joins) a reaper for its session id and
keeps a TCP connection to it open; the kernel closes that connection however the session ends,
kill -9 included. Once no connection has been open for a grace period, the reaper removes the
containers, networks and volumes labelled with that session (`lab.session`): its labs and the
engine-wide parts it started (a registry, swarm nodes), then itself. No
session ever removes another's labs, and a crashed session's labs go without anyone's help.

`lab up --ttl` starts a reaper with a deadline instead: it needs no connection and no network, and
removes its lab (`lab.name`) at that time.

The trade-off: a reaper must reach the engine, so it gets the Docker socket, which is as good as
root on the engine. Everything else is taken away: no capabilities, no new privileges, a read-only
root file system, 64 MB and 16 processes, no network at all for deadline reapers, and for session
reapers only the bridge with one port published on 127.0.0.1. Its program (lab/reaper_agent.py)
is one short file that only lists and removes what its label filters select.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lab import images, labels, swarm
from lab.engine import ContainerEngine, ContainerInfo, ContainerRequest
from lab.errors import EngineRefused, LabError
from lab.progress import ProgressFn
from lab.reaper_agent import READY
from lab.spec import parse_int_in_range

if TYPE_CHECKING:
    from lab.docker_ops import Engine

AGENT = Path(__file__).with_name("reaper_agent.py")
REPOSITORY = "lab/reaper"
PORT = 8080  # inside the container; published on a port the engine picks, on 127.0.0.1
SOCKET_INSIDE = "/var/run/docker.sock"
DEFAULT_SOCKET = "/var/run/docker.sock"
DEFAULT_GRACE = 10  # seconds with no connection before a session's labs go (Ryuk waits 10 s too)
FIRST_CONNECTION = 60  # seconds a new reaper waits for its first connection
ANSWER_TIMEOUT = 10  # seconds the reaper may take to answer a line
GRACE_ENV = "LAB_REAPER_GRACE"
SOCKET_ENV = "LAB_REAPER_SOCKET"  # the engine's socket as a path on the engine's host
DOCKERFILE = """\
ARG ROOTFS
FROM ${ROOTFS}
COPY reaper_agent.py /usr/local/lib/lab-reaper.py
STOPSIGNAL SIGTERM
CMD ["python3", "-I", "-B", "/usr/local/lib/lab-reaper.py"]
"""


class ReaperFailed(LabError):
    """A reaper did not start or stopped answering: nothing may run unguarded."""


# The image ----------------------------------------------------------------------------------
def image_tag() -> str:
    """Named by content: a changed program gets a new image, and old sessions keep theirs."""
    digest = hashlib.sha256(DOCKERFILE.encode() + b"\0" + AGENT.read_bytes())
    return f"{REPOSITORY}:{digest.hexdigest()[:12]}"


def ensure_image(engine: ContainerEngine, progress: ProgressFn | None = None) -> str:
    """Build the reaper image (Debian's python3 and the agent, offline) unless it exists."""
    return images.ensure_program_image(
        engine,
        image_tag(),
        DOCKERFILE,
        [("reaper_agent.py", AGENT.read_bytes())],
        {
            labels.ROLE: labels.ROLE_REAPER_IMAGE,
            "org.opencontainers.image.title": "lab reaper",
            "org.opencontainers.image.description": "Removes labs whose session is gone or whose time is up",
        },
        progress,
    )


# Settings -----------------------------------------------------------------------------------
def socket_path() -> str:
    """Where the engine's socket is on the engine's host: LAB_REAPER_SOCKET, DOCKER_HOST, or the default."""
    if os.environ.get(SOCKET_ENV):
        return os.environ[SOCKET_ENV]
    host = os.environ.get("DOCKER_HOST", "")
    return host[len("unix://") :] if host.startswith("unix://") else DEFAULT_SOCKET


def grace_seconds() -> int:
    """LAB_REAPER_GRACE (whole seconds, 1-3600), else the default."""
    value = os.environ.get(GRACE_ENV, "")
    return parse_int_in_range(value, GRACE_ENV, 1, 3600) if value else DEFAULT_GRACE


def session_reaper_name(session: str) -> str:
    """One name per session: xdist workers of one run find (and race for) the same reaper."""
    return f"lab-reaper-{hashlib.sha256(session.encode()).hexdigest()[:12]}"


def reaper_request(
    *, name: str, image: str, labels_: dict[str, str], environment: dict[str, str], publish: bool
) -> ContainerRequest:
    """A reaper container: the engine's socket and nothing else it does not need."""
    return ContainerRequest(
        name=name,
        image=image,
        labels=labels_,
        network="bridge" if publish else "",
        network_disabled=not publish,
        environment={
            **environment,
            "LAB_REAPER_NAME": name,
            "DOCKER_SOCKET": SOCKET_INSIDE,
            "DOCKER_SOCKET_SOURCE": socket_path(),
        },
        ports={f"{PORT}/tcp": ("127.0.0.1", None)} if publish else {},
        cap_add=(),
        mem_limit="64m",
        pids_limit=16,
        # An engine restart brings it back: it then finds no connection and reaps after FIRST_CONNECTION.
        restart="unless-stopped",
        binds={socket_path(): SOCKET_INSIDE},
        read_only=True,
    )


# A session's reaper -------------------------------------------------------------------------
@dataclass
class SessionReaper:
    """The open connection that keeps a session's labs alive; closing it (or dying) lets them go."""

    session: str
    container: str
    port: int
    sock: socket.socket

    def check(self) -> None:
        """Raise ReaperFailed if the reaper hung up (someone removed it): the session is unguarded."""
        self.sock.setblocking(False)  # a peek that must not wait (a timeout would make it wait)
        try:
            data = self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return  # nothing to read, nothing closed: it holds on
        except OSError as exc:
            raise ReaperFailed(f"the connection to the reaper {self.container} broke: {exc}") from exc
        finally:
            self.sock.settimeout(ANSWER_TIMEOUT)
        if not data:
            raise ReaperFailed(
                f"the reaper {self.container} hung up; labs started now would never be removed"
            )

    def keep(self, lab: str) -> None:
        """Tell the reaper to leave lab `lab` running after the session (pytest --lab-keep)."""
        try:
            self.sock.sendall(f"keep {lab}\n".encode())
            answer = _read_line(self.sock)
        except OSError as exc:
            raise ReaperFailed(f"the reaper {self.container} stopped answering: {exc}") from exc
        if answer != f"kept {lab}":
            raise ReaperFailed(f"the reaper {self.container} did not agree to keep lab {lab} ({answer!r})")

    def close(self) -> None:
        self.sock.close()


def session_reaper_request(session: str, image: str, grace: int | None = None) -> ContainerRequest:
    """The reaper of `session`: it removes everything labelled with the session (labels.session_resources)."""
    return reaper_request(
        name=session_reaper_name(session),
        image=image,
        labels_=labels.for_session_reaper(session),
        environment={
            "LAB_REAP_LABELS": json.dumps(labels.session_resources(session)),
            "LAB_REAPER_SESSION": session,
            "LAB_REAPER_PORT": str(PORT),
            "LAB_REAPER_GRACE": str(grace if grace is not None else grace_seconds()),
            "LAB_REAPER_FIRST": str(FIRST_CONNECTION),
        },
        publish=True,
    )


def guard_session(
    engine: Engine, session: str, *, grace: int | None = None, timeout: float = 60.0
) -> SessionReaper:
    """Start this session's reaper, or join the one another process of the session started, and
    hold a connection to it. Raises ReaperFailed with the reason when that cannot be done."""
    request = session_reaper_request(session, ensure_image(engine), grace)
    name = request.name
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container = engine.container_named(name)
        if container is None:
            container = _create(engine.create_unless_named, request)
            if container is None:
                continue  # another process of this session created it a moment ago
            _start(engine, container)
        state = engine.state(container)
        if state.status == "restarting" or (state.status == "exited" and state.exit_code):
            _fail(engine, container, "exited")
        if state.status == "running":
            port = engine.published_port(container, f"{PORT}/tcp")
            sock = _greet(port, session) if port else None
            if sock is not None and port is not None:
                return SessionReaper(session, name, port, sock)
        # Not listening yet, or reaping after its last session left (it then removes itself).
        time.sleep(0.1)
    raise ReaperFailed(f"the reaper {name} did not answer within {timeout:.0f} s")


def _create(
    create: Callable[[ContainerRequest], ContainerInfo | None], request: ContainerRequest
) -> ContainerInfo | None:
    try:
        return create(request)
    except EngineRefused as exc:  # a missing socket path, say
        raise ReaperFailed(f"the reaper could not be created: {exc.message}") from exc


def _start(engine: ContainerEngine, container: ContainerInfo) -> None:
    try:
        engine.start(container)
    except LabError as exc:
        engine.remove_containers([container])
        raise ReaperFailed(f"the reaper did not start: {exc.message}") from exc
    if not engine.wait_for_log(container, READY):
        _fail(engine, container, "exited while starting")


def _fail(engine: ContainerEngine, container: ContainerInfo, what: str) -> None:
    logs = engine.logs(container, tail=10)
    engine.remove_containers([container])
    last = next((line for line in reversed(logs.splitlines()) if line.strip()), "no output")
    raise ReaperFailed(f"the reaper {container.name} {what}: {last}", detail=logs)


def _greet(port: int, session: str) -> socket.socket | None:
    """A connection the reaper of `session` greeted (and so counts), or None."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=3)
    except OSError:
        return None
    try:
        line = _read_line(sock)
    except OSError:
        line = ""
    if line != f"lab-reaper {session} ready":
        sock.close()  # not listening yet (the engine's proxy accepted and hung up), or closing
        return None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.settimeout(ANSWER_TIMEOUT)
    return sock


def _read_line(sock: socket.socket, limit: int = 512) -> str:
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


# A lab's deadline ---------------------------------------------------------------------------
def start_deadline_reaper(engine: ContainerEngine, lab: str, ttl: int) -> float:
    """Start the reaper that removes lab `lab` in `ttl` seconds; return that UNIX time.

    It carries the lab's name, so `lab down` removes it with the lab.
    """
    image = ensure_image(engine)
    expires = time.time() + ttl
    name = f"{lab}-reaper"
    request = reaper_request(
        name=name,
        image=image,
        labels_=labels.for_lab(lab, labels.ROLE_REAPER, expires=str(int(expires))),
        environment={
            "LAB_REAP_LABELS": json.dumps([f"{labels.NAME}={lab}"]),
            "LAB_REAPER_DEADLINE": f"{expires:.3f}",
        },
        publish=False,
    )
    container = _create(engine.create_container, request)
    assert container is not None  # create_container always returns one
    _start(engine, container)
    return expires


def expires_at(found: Mapping[str, str]) -> float | None:
    """The UNIX time a reaper's labels say its lab goes, or None."""
    value = found.get(labels.EXPIRES, "")
    try:
        return float(value) if value else None
    except ValueError:
        return None


# A swarm left by a session that is gone ---------------------------------------------------------
def release_orphaned_swarm(engine: Engine) -> str:
    """Leave a swarm a pytest session initialised if that session's reaper is gone and nothing uses it.

    A session's reaper leaves the swarm itself when it reaps; this covers the reaper that never got
    to (removed by hand, or an engine reset). A swarm whose session still has a reaper, or that no
    session initialised (`lab nodes add --init` by a person, or not the lab's at all), is left alone.
    Returns what was done, or "" when there was nothing to do.
    """
    if not swarm.lab_initialised(engine):
        return ""
    by = engine.swarm_labels().get(labels.SWARM_INIT, "").rsplit(" ", 1)[-1]
    if not by.startswith("pytest.") or by == labels.session_id():
        return ""
    if engine.container_named(session_reaper_name(by)) is not None:
        return ""
    released = swarm.release_if_unused(engine)
    return f"swarm initialised by gone session {by}: {released.reason}"
