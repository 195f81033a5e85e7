"""The reaper's program: it runs inside the reaper container and removes labs nobody holds any more.

Standard library only: the reaper image is Debian's python3 and this one file (lab/reaper.py builds
it and starts the containers). It speaks to the Docker engine through the mounted socket with a few
plain HTTP calls, and to its sessions over TCP with a line protocol:

    reaper -> client   "lab-reaper SESSION ready"   on connect: it counts this connection now
    client -> reaper   "keep NAME"                   leave lab NAME alone (pytest --lab-keep)
    reaper -> client   "kept NAME"

Two modes, chosen by the environment (lab/reaper.py sets it):
- session (LAB_REAPER_PORT set): listen; once no connection has been open for LAB_REAPER_GRACE
  seconds (or none came within LAB_REAPER_FIRST seconds), reap.
- deadline (LAB_REAPER_DEADLINE set): reap at that UNIX time (`lab up --ttl`); no network at all.
Reaping removes every container, network and volume matching the label filters in LAB_REAP_LABELS
(a JSON list, ANDed) except kept labs, then leaves the swarm this session initialised if nothing uses
it any more (the record lab/swarm.py puts on the swarm names the session), then removes this
container itself (LAB_REAPER_NAME).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import socket
import sys
import time
import urllib.parse
from dataclasses import dataclass, field

READY = "lab-reaper: ready"  # logged once the engine answered: the container started usefully
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")  # a lab name, as spec.parse_name allows
MAX_LINE = 512


# What to do when (pure) -------------------------------------------------------------------------
@dataclass
class Watch:
    """When to reap, from the connections seen so far. Times are `time.monotonic()` values."""

    started: float
    grace: float  # seconds without any connection before reaping
    first: float  # seconds to wait for the first connection
    deadline: float | None = None  # reap then, connections or not
    listening: bool = True
    open: int = 0
    idle_since: float | None = None  # when the last connection closed

    def connected(self) -> None:
        self.open += 1
        self.idle_since = None

    def disconnected(self, now: float) -> None:
        self.open = max(0, self.open - 1)
        if self.open == 0:
            self.idle_since = now

    def wait(self, now: float) -> float | None:
        """Seconds until reaping (0 or less: now), or None while nothing but a connection can end it."""
        due: list[float] = []
        if self.deadline is not None:
            due.append(self.deadline)
        if self.listening and self.open == 0:
            due.append(
                self.idle_since + self.grace if self.idle_since is not None else self.started + self.first
            )
        return min(due) - now if due else None


@dataclass
class Client:
    """One open connection from a session."""

    sock: socket.socket
    pending: bytes = b""
    closed: bool = field(default=False)


def parse_keep(line: str) -> str | None:
    """The lab name of a `keep NAME` line, or None for anything else."""
    verb, _, name = line.strip().partition(" ")
    return name if verb == "keep" and _NAME.fullmatch(name) else None


# The Docker engine, through its socket ----------------------------------------------------------
class EngineError(Exception):
    pass


class Engine:
    """Just enough of the Docker API: GET and DELETE, answers as JSON."""

    def __init__(self, path: str, shown_as: str = "") -> None:
        self.path = path
        self.shown_as = shown_as or path  # the socket's path on the engine's host, for messages

    def call(self, method: str, path: str, query: dict[str, str] | None = None) -> tuple[int, bytes]:
        target = path + ("?" + urllib.parse.urlencode(query) if query else "")
        request = (
            f"{method} {target} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(60)
            try:
                sock.connect(self.path)
                sock.sendall(request.encode())
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except OSError as exc:
                raise EngineError(f"cannot reach the Docker engine through {self.shown_as}: {exc}") from exc
        return parse_response(b"".join(chunks))

    def json(self, path: str, query: dict[str, str] | None = None) -> object:
        status, body = self.call("GET", path, query)
        if status != 200:
            raise EngineError(f"GET {path}: HTTP {status} {body[:200]!r}")
        return json.loads(body)

    def delete(self, path: str, query: dict[str, str] | None = None) -> tuple[int, bytes]:
        return self.call("DELETE", path, query)


def parse_response(raw: bytes) -> tuple[int, bytes]:
    """Status and body of an HTTP/1.1 response read to the end (chunked or not)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise EngineError(f"not an HTTP response: {lines[0][:80]!r}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return int(parts[1]), body


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


# Reaping ------------------------------------------------------------------------------------
def reap(engine: Engine, label_filters: list[str], keep: set[str], self_name: str) -> tuple[int, int, int]:
    """Remove what the filters select, except kept labs and this container; return the counts."""
    filters = json.dumps({"label": label_filters})

    def kept(found: object) -> bool:
        return isinstance(found, dict) and found.get("lab.name", "") in keep

    containers = 0
    for item in _list(engine.json("/containers/json", {"all": "1", "filters": filters})):
        names = [str(n).lstrip("/") for n in _list_of(item.get("Names"))]
        if self_name in names or kept(item.get("Labels")):
            continue
        status, _ = engine.delete(f"/containers/{item['Id']}", {"force": "1", "v": "1"})
        containers += status == 204
    networks = 0
    for item in _list(engine.json("/networks", {"filters": filters})):
        if not kept(item.get("Labels")):
            networks += _remove_network(engine, str(item["Id"]))
    volumes = 0
    listed = engine.json("/volumes", {"filters": filters})
    for item in _list(listed.get("Volumes") if isinstance(listed, dict) else None):
        if not kept(item.get("Labels")):
            status, _ = engine.delete(f"/volumes/{item['Name']}", {"force": "1"})
            volumes += status == 204
    return containers, networks, volumes


def _list(value: object) -> list[dict[str, object]]:
    return [item for item in _list_of(value) if isinstance(item, dict)]


def _list_of(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def _remove_network(engine: Engine, network_id: str, patience: float = 15.0) -> int:
    """The engine may release a just-removed container's endpoint a moment later: retry a while."""
    deadline = time.monotonic() + patience
    while True:
        status, body = engine.delete(f"/networks/{network_id}")
        if status in (200, 204):
            return 1
        if status == 404 or time.monotonic() > deadline:
            if status != 404:
                say(f"could not remove network {network_id[:12]}: HTTP {status} {body[:120]!r}")
            return 0
        time.sleep(0.2)


# A swarm the session initialised --------------------------------------------------------------
SWARM_INIT = "lab.swarm-init"  # lab/labels.py: "<when> <session>" on the swarm's spec
SWARM_GWBRIDGE = "lab.swarm-gwbridge"
NODE_DOWN_PATIENCE = 30.0


def swarm_initialised_by(engine: Engine, session: str) -> dict[str, str] | None:
    """The swarm's lab record if this engine manages a swarm `session` initialised, else None."""
    info = engine.json("/info")
    swarm = info.get("Swarm") if isinstance(info, dict) else None
    if (
        not isinstance(swarm, dict)
        or swarm.get("LocalNodeState") != "active"
        or not swarm.get("ControlAvailable")
    ):
        return None
    spec = engine.json("/swarm")
    found = ((spec.get("Spec") or {}).get("Labels") or {}) if isinstance(spec, dict) else {}
    record = {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}
    by = record.get(SWARM_INIT, "").rsplit(" ", 1)
    return record if session and len(by) == 2 and by[1] == session else None


def swarm_in_use(engine: Engine) -> str:
    """What still uses the swarm; the same rules as lab/swarm.py, which this stdlib-only file cannot import."""
    services = _list(engine.json("/services"))
    if services:
        return f"{len(services)} services"
    info = engine.json("/info")
    swarm = info.get("Swarm") if isinstance(info, dict) else None
    own = swarm.get("NodeID") if isinstance(swarm, dict) else None
    others = [n for n in _list(engine.json("/nodes")) if n.get("ID") != own and _node_state(n) != "down"]
    if others:
        return f"{len(others)} other engines"
    overlays = [
        n
        for n in _list(
            engine.json("/networks", {"filters": json.dumps({"driver": ["overlay"], "scope": ["swarm"]})})
        )
        if n.get("Name") != "ingress"
    ]
    return f"{len(overlays)} overlay networks" if overlays else ""


def _node_state(node: dict[str, object]) -> object:
    status = node.get("Status")
    return status.get("State") if isinstance(status, dict) else None


def release_swarm(engine: Engine, session: str) -> str:
    """Leave the swarm `session` initialised once nothing uses it; say what was done (or why not)."""
    record = swarm_initialised_by(engine, session)
    if record is None:
        return ""
    in_use = swarm_in_use(engine)
    patience = time.monotonic() + NODE_DOWN_PATIENCE
    while in_use.endswith("other engines") and time.monotonic() < patience:
        time.sleep(1)  # the session's nodes were just removed: the manager marks them down in seconds
        in_use = swarm_in_use(engine)
    if in_use:
        return f"the swarm this session initialised stays: {in_use} still use it"
    status, body = engine.call("POST", "/swarm/leave", {"force": "1"})
    if status != 200:
        return f"could not leave the swarm: HTTP {status} {body[:120]!r}"
    if record.get(SWARM_GWBRIDGE) == "created":
        _remove_network(engine, "docker_gwbridge")
    return "left the swarm this session had initialised"


# The loop -----------------------------------------------------------------------------------
def say(text: str) -> None:
    print(f"lab-reaper: {text}", flush=True)


def serve(watch: Watch, listener: socket.socket | None, session: str, keep: set[str]) -> None:
    """Accept and hold connections until the watch says it is time; then close them all."""
    selector = selectors.DefaultSelector()
    if listener is not None:
        selector.register(listener, selectors.EVENT_READ, None)
    greeting = f"lab-reaper {session} ready\n".encode()
    while True:
        left = watch.wait(time.monotonic())
        if left is not None and left <= 0:
            break
        for key, _ in selector.select(timeout=left):
            if key.data is None:
                _accept(key.fileobj, selector, watch, greeting)  # type: ignore[arg-type]
            else:
                _read(key.data, selector, watch, keep)
    # Stop listening before reaping: a session that connects now gets no greeting and starts a new reaper.
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    selector.close()


def _accept(listener: socket.socket, selector: selectors.BaseSelector, watch: Watch, greeting: bytes) -> None:
    try:
        sock, _ = listener.accept()
        sock.settimeout(5)
        sock.sendall(greeting)
    except OSError:
        return
    watch.connected()
    selector.register(sock, selectors.EVENT_READ, Client(sock))


def _read(client: Client, selector: selectors.BaseSelector, watch: Watch, keep: set[str]) -> None:
    try:
        data = client.sock.recv(4096)
    except OSError:
        data = b""
    client.pending += data
    if not data or len(client.pending) > MAX_LINE:
        selector.unregister(client.sock)
        client.sock.close()
        watch.disconnected(time.monotonic())
        return
    *lines, client.pending = client.pending.split(b"\n")
    for raw in lines:
        name = parse_keep(raw.decode(errors="replace"))
        if name is not None:
            keep.add(name)
            say(f"keeping lab {name}")
        with contextlib.suppress(OSError):
            client.sock.sendall(f"kept {name}\n".encode() if name else b"error\n")


def _stop(_signum: int, _frame: object) -> None:
    say("stopped; nothing reaped")
    sys.exit(0)


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)  # as PID 1 the default action would be to ignore it
    env = os.environ
    engine = Engine(env.get("DOCKER_SOCKET", "/var/run/docker.sock"), env.get("DOCKER_SOCKET_SOURCE", ""))
    label_filters = json.loads(env["LAB_REAP_LABELS"])
    self_name = env["LAB_REAPER_NAME"]
    session = env.get("LAB_REAPER_SESSION", "")
    try:
        status, _ = engine.call("GET", "/_ping")
        if status != 200:
            raise EngineError(f"the Docker engine answered HTTP {status} to a ping")
    except EngineError as exc:
        say(str(exc))
        return 1
    now = time.monotonic()
    deadline = env.get("LAB_REAPER_DEADLINE")
    port = env.get("LAB_REAPER_PORT")
    watch = Watch(
        started=now,
        grace=float(env.get("LAB_REAPER_GRACE", "10")),
        first=float(env.get("LAB_REAPER_FIRST", "60")),
        deadline=now + max(0.0, float(deadline) - time.time()) if deadline else None,
        listening=port is not None,
    )
    listener = None
    if port is not None:
        listener = socket.create_server(("0.0.0.0", int(port)), backlog=64)
    until = (
        f"until {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(float(deadline)))}"
        if deadline
        else f"while session {session} holds a connection (grace {watch.grace:g} s)"
    )
    say(f"ready: watching {label_filters} {until}")
    keep: set[str] = set()
    serve(watch, listener, session, keep)
    counts = reap(engine, label_filters, keep, self_name)
    say(f"removed {counts[0]} containers, {counts[1]} networks, {counts[2]} volumes")
    if port is not None:
        try:
            released = release_swarm(engine, session)
        except (EngineError, ValueError) as exc:
            released = f"could not check the swarm: {exc}"
        if released:
            say(released)
    say("removing myself")
    engine.delete(f"/containers/{self_name}", {"force": "1", "v": "1"})  # ends this process
    return 0


if __name__ == "__main__":
    sys.exit(main())
