"""The validated description of a lab: what `lab up` is asked to build (pure, no Docker)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import InvalidInput

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_SITE = PROJECT_DIR / "site"

DEFAULT_NAME = "lab"
DEFAULT_REPLICAS = 3
DEFAULT_PORT = 8080
DEFAULT_BIND = "127.0.0.1"
MAX_REPLICAS = 64
# Why there is a maximum at all: the user is told this with any count above it.
MAX_REPLICAS_WHY = (
    "the most one lab is sized and tested for (the load balancer's shared memory is sized for it, "
    "and every replica is a container of up to 128 MB on one engine)"
)
# Where the replicas run: containers on this engine, or a replicated service of this engine's swarm.
ENGINES = ("docker", "swarm")
DEFAULT_ENGINE = "docker"
ALGORITHMS = ("round_robin", "least_conn", "ip_hash", "hash", "random", "random_two")
DEFAULT_HASH_KEY = "$http_x_client_id"
# nginx refuses a backup server with these methods.
NO_BACKUP_METHODS = ("ip_hash", "hash", "random", "random_two")
# A hash key is nginx variables and plain characters only: nothing that could end the directive
# (';', '{', '}'), quote, comment ('#') or break the line.
_HASH_KEY_PATTERN = re.compile(r"(?:\$[A-Za-z_][A-Za-z0-9_]*|[A-Za-z0-9_.:/-])+")

# Docker allows more, but the name ends up in container names, DNS names and nginx configs.
_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


@dataclass(frozen=True)
class LabSpec:
    """Everything `lab up` needs to know; build it with `LabSpec.create` to get it validated."""

    name: str = DEFAULT_NAME
    replicas: int = DEFAULT_REPLICAS
    port: int = DEFAULT_PORT
    bind: str = DEFAULT_BIND
    site: Path = DEFAULT_SITE
    algorithm: str = "round_robin"
    weights: tuple[int, ...] = field(default=())  # by replica slot (1..replicas); () means equal
    hash_key: str = DEFAULT_HASH_KEY
    consistent: bool = True
    backup: int | None = None  # the replica slot (from 1) used only when all others are down
    max_fails: int = 1
    fail_timeout: int = 10  # seconds
    engine: str = DEFAULT_ENGINE  # docker: one container per replica; swarm: one service, a task per replica
    mount_site: bool = False  # the site folder is bind-mounted read-only into each replica (development)

    @classmethod
    def create(
        cls,
        *,
        name: object = DEFAULT_NAME,
        replicas: object = DEFAULT_REPLICAS,
        port: object = DEFAULT_PORT,
        bind: object = DEFAULT_BIND,
        site: object = DEFAULT_SITE,
        algorithm: object = "round_robin",
        weights: object = (),
        hash_key: object = DEFAULT_HASH_KEY,
        consistent: object = True,
        backup: object = None,
        max_fails: object = 1,
        fail_timeout: object = 10,
        engine: object = DEFAULT_ENGINE,
        mount_site: object = False,
        check_site: bool = True,
    ) -> LabSpec:
        """Validate raw values (from a command line or a test) into a spec, or raise InvalidInput."""
        n = parse_replicas(replicas)
        method = parse_algorithm(algorithm)
        if mount_site and parse_engine(engine) == "swarm":
            raise InvalidInput(
                "--mount-site is for --engine docker: a swarm's tasks run on other engines, "
                "which do not see this folder"
            )
        return cls(
            name=parse_name(name),
            replicas=n,
            port=parse_port(port),
            bind=parse_bind(bind),
            site=parse_site(site) if check_site else Path(str(site)),
            algorithm=method,
            weights=parse_weights(weights, n),
            hash_key=parse_hash_key(hash_key),
            consistent=bool(consistent),
            backup=parse_backup(backup, n, method),
            max_fails=parse_int_in_range(max_fails, "max-fails", 0, 100),
            fail_timeout=parse_int_in_range(fail_timeout, "fail-timeout (seconds)", 1, 3600),
            engine=parse_engine(engine),
            mount_site=bool(mount_site) and (not check_site or check_mountable(Path(str(site)))),
        )

    def with_changes(self, **changes: object) -> LabSpec:
        """A validated copy with some values changed (the site is not checked again)."""
        unknown = set(changes) - _FIELDS
        if unknown:
            raise InvalidInput(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values: dict[str, object] = {
            "name": self.name,
            "replicas": self.replicas,
            "port": self.port,
            "bind": self.bind,
            "site": self.site,
            "algorithm": self.algorithm,
            "weights": self.weights,
            "hash_key": self.hash_key,
            "consistent": self.consistent,
            "backup": self.backup,
            "max_fails": self.max_fails,
            "fail_timeout": self.fail_timeout,
            "engine": self.engine,
            "mount_site": self.mount_site,
        }
        values.update(changes)
        return LabSpec.create(**values, check_site=False)

    def resized(self, replicas: int) -> LabSpec:
        """A copy for `replicas` replicas. Weights and the backup follow replica slots: the slots
        that stay keep theirs, new slots get weight 1, and a backup whose slot goes (or that
        would be left alone) goes too. `resize_notes` says so in words."""
        weights = self.weights[:replicas] + (1,) * (replicas - len(self.weights)) if self.weights else ()
        backup = (
            self.backup if self.backup is not None and self.backup <= replicas and replicas >= 2 else None
        )
        return self.with_changes(replicas=replicas, weights=weights, backup=backup)

    def weight_of(self, slot: int) -> int:
        """The weight of the replica in `slot` (from 1): 1 unless weights say otherwise."""
        return self.weights[slot - 1] if self.weights and 1 <= slot <= len(self.weights) else 1

    def as_dict(self) -> dict[str, object]:
        """Plain values, for JSON and for `from_dict`."""
        return {
            "name": self.name,
            "replicas": self.replicas,
            "port": self.port,
            "bind": self.bind,
            "site": str(self.site),
            "algorithm": self.algorithm,
            "weights": list(self.weights),
            "hash_key": self.hash_key,
            "consistent": self.consistent,
            "backup": self.backup,
            "max_fails": self.max_fails,
            "fail_timeout": self.fail_timeout,
            "engine": self.engine,
            "mount_site": self.mount_site,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> LabSpec:
        return cls.create(**{k: v for k, v in data.items() if k in _FIELDS}, check_site=False)

    # Names of the resources this lab is made of. A replica's number (in its name) grows: a new
    # replica takes the next one. Its slot (1..replicas) is its place in the lab, which a deploy's
    # replacement takes over, and which weights and the backup refer to.
    def replica_name(self, index: int) -> str:
        """The container (and host) name of replica `index`, counted from 1."""
        return f"{self.name}-web-{index}"

    def indices(self) -> range:
        return range(1, self.replicas + 1)

    def replica_names(self) -> list[str]:
        return [self.replica_name(i) for i in self.indices()]

    @property
    def service_name(self) -> str:
        """The swarm service of an `--engine swarm` lab: its tasks are named replica_name(slot)."""
        return f"{self.name}-web"

    @property
    def lb_name(self) -> str:
        return f"{self.name}-lb"

    # The names `lab up` gives its networks when they are free. A running lab's networks are found
    # by label (lab.replicas.ContainerReplicas.find): a network the engine would not release keeps its name, and
    # the next `up` names its own networks afresh.
    @property
    def backend_network(self) -> str:
        return f"{self.name}-backend"

    @property
    def frontend_network(self) -> str:
        return f"{self.name}-frontend"

    @property
    def url(self) -> str:
        return f"http://{probe_host(self.bind)}:{self.port}/"


_FIELDS = frozenset(LabSpec.__dataclass_fields__)


def resize_notes(old: LabSpec, new: LabSpec) -> list[str]:
    """What a change in the number of replicas did to the weights and the backup, in words."""
    notes = []
    if new.weights and new.replicas > old.replicas:
        added = range(old.replicas + 1, new.replicas + 1)
        which = f"replica {added[0]}" if len(added) == 1 else f"replicas {added[0]}-{added[-1]}"
        notes.append(
            f"new {which} {'gets' if len(added) == 1 else 'get'} weight 1 "
            f"(weights now {','.join(map(str, new.weights))})"
        )
    elif new.weights and new.weights != old.weights:
        notes.append(f"weights now {','.join(map(str, new.weights))}")
    if old.backup is not None and new.backup is None:
        why = "its slot is gone" if old.backup > new.replicas else "a backup needs another replica beside it"
        notes.append(f"replica {old.backup} is no longer a backup: {why}")
    return notes


def probe_host(bind: str) -> str:
    """The address the host uses to reach a load balancer bound to `bind` (always loopback)."""
    address = ipaddress.ip_address(bind)
    if address.is_loopback:
        return f"[{bind}]" if address.version == 6 else bind
    return "127.0.0.1"


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise InvalidInput(f"{what} must be a whole number, not {value!r}")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not re.fullmatch(r"[+-]?\d+", text):
        raise InvalidInput(f"{what} must be a whole number, not {str(value)!r}")
    return int(text)


def parse_int_in_range(value: object, what: str, low: int, high: int) -> int:
    """A whole number from `low` to `high`, or a one-line InvalidInput."""
    n = _as_int(value, what)
    if not low <= n <= high:
        raise InvalidInput(f"{what} must be between {low} and {high}, not {n}")
    return n


def parse_hash_key(value: object) -> str:
    text = str(value)
    if not (0 < len(text) <= 128 and _HASH_KEY_PATTERN.fullmatch(text)):
        raise InvalidInput(
            f"hash key {text!r} is not allowed: use nginx variables and letters, digits or _.:/- only "
            "(e.g. $request_uri or $http_x_client_id)"
        )
    return text


def parse_backup(value: object, replicas: int, method: str) -> int | None:
    if value is None or value == "":
        return None
    index = _as_int(value, "backup replica")
    if method in NO_BACKUP_METHODS:
        raise InvalidInput(f"nginx allows no backup replica with {method}")
    if replicas < 2:
        raise InvalidInput("a backup replica needs at least one other replica")
    if not 1 <= index <= replicas:
        raise InvalidInput(f"backup replica must be one of 1..{replicas}, not {index}")
    return index


def parse_replicas(value: object) -> int:
    n = _as_int(value, "replicas")
    if n > MAX_REPLICAS:
        raise InvalidInput(
            f"replicas must be between 1 and {MAX_REPLICAS}, not {n}: {MAX_REPLICAS} is {MAX_REPLICAS_WHY}"
        )
    if n < 1:
        raise InvalidInput(f"replicas must be between 1 and {MAX_REPLICAS}, not {n}")
    return n


def parse_engine(value: object) -> str:
    text = str(value).strip().lower()
    if text not in ENGINES:
        raise InvalidInput(
            f"unknown engine {str(value)!r}; choose docker (containers on this engine) or swarm "
            "(a replicated service on this engine's swarm)"
        )
    return text


def parse_port(value: object) -> int:
    port = _as_int(value, "port")
    if not 1 <= port <= 65535:
        raise InvalidInput(f"port must be between 1 and 65535, not {port}")
    return port


def parse_bind(value: object) -> str:
    text = str(value).strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise InvalidInput(f"bind address must be an IP address such as 127.0.0.1, not {text!r}") from None


def parse_name(value: object) -> str:
    text = str(value)
    if not _NAME_PATTERN.fullmatch(text):
        raise InvalidInput(
            "lab name must be 1-40 lowercase letters, digits or dashes, "
            f"starting with a letter or digit, not {text!r}"
        )
    return text


_VERSION_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def parse_version_tag(value: object) -> str:
    """A site version name (`lab deploy --tag`): it names an image tag, so letters, digits and _.- only."""
    text = str(value)
    if not _VERSION_TAG.fullmatch(text):
        raise InvalidInput(
            f"tag must be 1-64 letters, digits or _.- starting with a letter or digit, not {text!r}"
        )
    return text


def parse_site(value: object) -> Path:
    path = Path(str(value)).expanduser()
    if not path.is_dir():
        raise InvalidInput(f"site directory {str(path)!r} does not exist")
    if not (path / "index.html").is_file():
        raise InvalidInput(f"site directory {str(path)!r} has no index.html")
    return path.resolve()


def check_mountable(site: Path) -> bool:
    """A folder replicas can serve read-only from a bind mount: httpd there runs as an unprivileged
    user, so the folder must be open to everyone (pytest's tmp folders, mode 700, are not)."""
    path = site.expanduser().resolve()
    for item in (path, path / "index.html"):
        needed = 0o005 if item.is_dir() else 0o004
        if item.stat().st_mode & needed != needed:
            raise InvalidInput(
                f"--mount-site: {item} is not readable by everyone, and the replicas' httpd runs "
                f"unprivileged; `chmod o+rX` it"
            )
    return True


def parse_algorithm(value: object) -> str:
    text = str(value).strip().replace("-", "_")
    if text not in ALGORITHMS:
        raise InvalidInput(f"unknown balancing method {str(value)!r}; choose one of {', '.join(ALGORITHMS)}")
    return text


def parse_weight_list(value: object) -> tuple[int, ...]:
    """Weights come as '3,1,1' or a sequence; empty means equal weights."""
    if value is None or value == "" or value == ():
        return ()
    items: Sequence[object] = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    weights = tuple(_as_int(item, "each weight") for item in items)
    if any(not 1 <= w <= 1000 for w in weights):
        raise InvalidInput("weights must be whole numbers between 1 and 1000")
    return weights


def parse_weights(value: object, replicas: int) -> tuple[int, ...]:
    """One weight per replica, or none (equal weights)."""
    weights = parse_weight_list(value)
    if weights and len(weights) != replicas:
        raise InvalidInput(f"got {len(weights)} weights for {replicas} replicas; give one weight per replica")
    return weights


# Time to live of a lab (`lab up --ttl`) ------------------------------------------------------------
TTL_MIN = 10  # seconds: shorter would end a lab before anyone used it
TTL_MAX = 7 * 24 * 3600  # a week
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(?:(\d+)([smhd]))+")
_DURATION_PART = re.compile(r"(\d+)([smhd])")


def parse_ttl(value: object) -> int:
    """Seconds from a duration such as 30m, 2h, 1h30m or 90s (a bare number is seconds); 10s to 7d."""
    text = str(value).strip().lower()
    if re.fullmatch(r"\d+", text):
        seconds = int(text)
    elif _DURATION.fullmatch(text):
        seconds = sum(int(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(text))
    else:
        raise InvalidInput(f"ttl must be a duration such as 30m, 2h or 1h30m, not {str(value)!r}")
    if not TTL_MIN <= seconds <= TTL_MAX:
        raise InvalidInput(
            f"ttl must be between {format_duration(TTL_MIN)} and {format_duration(TTL_MAX)} (a week), "
            f"not {format_duration(seconds) if seconds else '0'}"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """A short human duration: 45s, 29m 5s, 2h, 1d 3h (down to the two largest units)."""
    left = max(0, int(round(seconds)))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size or (unit == "s" and not parts):
            parts.append(f"{left // size}{unit}")
            left %= size
    return " ".join(parts[:2])
