"""Label names every lab resource carries, and the filters that find them again (pure)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping

PREFIX = "lab."
NAME = "lab.name"
ROLE = "lab.role"
REPLICA = "lab.replica"  # a replica's number, in its name: a new replica takes the next one
SLOT = "lab.slot"  # its place in the lab (1..replicas): weights and the backup follow it
SESSION = "lab.session"
PID = "lab.pid"
SPEC = "lab.spec"
SITE_VERSION = "lab.site-version"
SITE_MOUNT = "lab.site-mount"  # on a replica: the host folder bind-mounted read-only as its document root
EXPIRES = "lab.expires"  # UNIX time at which a `lab up --ttl` lab removes itself (on its reaper)

ROLE_WEB = "web"
ROLE_LB = "lb"
ROLE_CHECK = "config-check"
ROLE_BACKEND_NET = "backend"
ROLE_FRONTEND_NET = "frontend"
ROLE_SITE_IMAGE = "site-image"
ROLE_REAPER = "reaper"
ROLE_REAPER_IMAGE = "reaper-image"
# An `--engine swarm` lab: its replicas are one service (on the swarm), each task a container on
# some node, and a watcher container keeps the load balancer's upstream on the running tasks.
ROLE_SERVICE = "web-service"
ROLE_TASK = "task"  # a task's container (not "web": only a swarm node's engine manages it)
ROLE_WATCHER = "watcher"
ROLE_WATCHER_IMAGE = "watcher-image"
ENGINE = "lab.engine"  # on a swarm lab's resources: "swarm"

# Engine-wide resources, shared by every lab (no lab.name: `lab down` and the test sweep never
# touch them): the local registry and the swarm nodes on this desk.
ROLE_REGISTRY = "registry"
ROLE_REGISTRY_STORAGE = "registry-storage"
ROLE_REGISTRY_NET = "registry-network"
ROLE_NODE = "node"
ROLE_NODE_STORAGE = "node-storage"
REGISTRY = "lab.registry"  # the registry a resource belongs to
NODE_SET = "lab.node-set"  # the name prefix of a group of nodes
SWARM_INIT = "lab.swarm-init"  # on the swarm spec: the lab initialised this swarm (when, by whom)
SWARM_GWBRIDGE = "lab.swarm-gwbridge"  # on the swarm spec: "created" if docker_gwbridge came with it


def session_id() -> str:
    """An id for this process's session; LAB_SESSION overrides it (the pytest plugin sets it).

    The pid is only a name: it means nothing in another PID namespace or on another machine, so
    nothing decides on it (ownership is held by a reaper connection, see lab/reaper.py).
    """
    return os.environ.get("LAB_SESSION") or f"pid{os.getpid()}"


def new_session_id() -> str:
    """A fresh id for a pytest session (xdist workers share their controller's).

    `pytest.`, not `pytest-`: older versions of lab, which may still run beside this one on a
    shared engine, swept away labs of `pytest-...` sessions whose process they could not see.
    """
    return f"pytest.{uuid.uuid4().hex[:12]}"


def for_lab(name: str, role: str, **extra: str) -> dict[str, str]:
    """Labels for a resource of lab `name` playing `role`; `extra` keys gain the `lab.` prefix."""
    labels = {NAME: name, ROLE: role, SESSION: session_id(), PID: str(os.getpid())}
    for key, value in extra.items():
        labels[PREFIX + key.replace("_", "-")] = value
    return labels


def for_component(role: str, **extra: str) -> dict[str, str]:
    """Labels for an engine-wide resource playing `role` (the registry, a node): no lab name."""
    found = {ROLE: role, SESSION: session_id(), PID: str(os.getpid())}
    for key, value in extra.items():
        found[PREFIX + key.replace("_", "-")] = value
    return found


def role_filter(role: str, **extra: str) -> dict[str, list[str]]:
    """A Docker `filters` value matching resources playing `role` (and the `extra` labels)."""
    wanted = [f"{ROLE}={role}"]
    wanted += [f"{PREFIX}{key.replace('_', '-')}={value}" for key, value in extra.items()]
    return {"label": wanted}


def replica_index(found: Mapping[str, str]) -> int:
    """A replica's number (from 1) from its labels; 0 for anything that is not a replica."""
    return int(found.get(REPLICA, "0"))


def replica_slot(found: Mapping[str, str]) -> int:
    """A replica's slot from its labels (a replica made before slots existed: its number)."""
    return int(found.get(SLOT) or found.get(REPLICA) or "0")


def lab_filter(name: str, role: str | None = None) -> dict[str, list[str]]:
    """A Docker `filters` value matching resources of lab `name` (and `role`, if given)."""
    wanted = [f"{NAME}={name}"]
    if role is not None:
        wanted.append(f"{ROLE}={role}")
    return {"label": wanted}


def session_labs(session: str) -> list[str]:
    """Docker label filters (ANDed) for the lab resources of one session; reapers carry no lab name."""
    return [f"{SESSION}={session}", NAME]


def session_resources(session: str) -> list[str]:
    """Docker label filters for everything one session made: its labs, and the engine-wide parts it
    started (a registry, swarm nodes, a test's overlay network), which carry no lab name.

    What its reaper removes: a part left behind would outlive the session (nodes and overlays keep
    a swarm the session initialised in use). The reaper itself carries the label and goes last.
    """
    return [f"{SESSION}={session}"]


def for_session_reaper(session: str) -> dict[str, str]:
    """Labels of the reaper that guards `session`: it belongs to no lab."""
    return {ROLE: ROLE_REAPER, SESSION: session}


def any_lab_filter() -> dict[str, list[str]]:
    """A Docker `filters` value matching resources of every lab."""
    return {"label": [NAME]}
