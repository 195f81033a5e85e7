"""What an experiment runs, validated completely before anything touches the engine (pure).

`ExperimentPlan.create` turns raw values (a command line, a test, the dashboard) into a plan or a
one-line InvalidInput: a bad rate, duration, option or deploy tag is refused before any load is
sent. `schedule` says when each step is due.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lab.chaos import HOW
from lab.errors import InvalidInput
from lab.spec import MAX_REPLICAS, parse_int_in_range, parse_site, parse_version_tag
from lab.workflow import image_ref

KINDS = ("scale", "deploy", "failover", "reload", "kill-lb", "node-failure")
MIN_RATE, MAX_RATE = 1.0, 2000.0  # requests per second
MIN_DURATION, MAX_DURATION = 2.0, 600.0  # seconds
DEFAULT_STEPS = (8, 2)
DEFAULT_RELOADS = 3
MAX_STEPS = 10
MAX_RELOADS = 20
HOWS = HOW  # failover: the ways `lab chaos` breaks a replica
RESTORE = ("after", "during", "no")  # failover: restore after the measured window, inside it, or not at all
NODE_RESTORE = ("after", "no")  # node-failure: start the killed node again after the window, or not
WARM_UP = 0.2  # the operations start after this share of the run...
OPS_END = 0.8  # ...and several steps are spread evenly up to this share
RESTORE_AT = 0.7  # failover with restore "during": when the restore begins

# Which options each kind takes; anything else given for it is refused.
_OPTIONS = {
    "scale": {"steps"},
    "deploy": {"batch", "site", "tag", "image"},
    "failover": {"how", "replica", "restore"},
    "reload": {"times"},
    "kill-lb": set(),
    "node-failure": {"node", "restore"},  # a swarm lab: kill a worker node of this desk
}
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,60}")


@dataclass(frozen=True)
class ExperimentPlan:
    """What to run, validated: the kind, the load, and the kind's options."""

    kind: str
    rate: float
    duration: float
    steps: tuple[int, ...] = ()
    batch: int = 1
    site: Path | None = None
    tag: str | None = None
    image: str | None = None  # deploy: roll out this existing image (a snapshot's tag, or name:tag)
    how: str = "kill"
    replica: str | None = None
    restore: str = "after"
    times: int = DEFAULT_RELOADS
    node: str | None = None  # node-failure: the node to kill (default: the one running most tasks)

    @classmethod
    def create(
        cls, kind: object, *, rate: object, duration: object, options: Mapping[str, object] | None = None
    ) -> ExperimentPlan:
        """Validate raw values (a command line, a test) into a plan, or raise InvalidInput.

        Options set to None count as not given; an option the kind does not take is refused.
        """
        what = parse_kind(kind)
        given = {k: v for k, v in (options or {}).items() if v is not None}
        unknown = sorted(set(given) - _OPTIONS[what])
        if unknown:
            takes = ", ".join(sorted(_OPTIONS[what])) or "no options"
            raise InvalidInput(f"a {what} experiment does not take {', '.join(unknown)} (it takes {takes})")
        plan = cls(
            kind=what,
            rate=parse_number(rate, "rate", MIN_RATE, MAX_RATE, "requests per second"),
            duration=parse_number(duration, "duration", MIN_DURATION, MAX_DURATION, "seconds"),
        )
        if what == "scale":
            return _replace(plan, steps=parse_steps(given.get("steps", DEFAULT_STEPS)))
        if what == "deploy":
            site = given.get("site")
            tag = given.get("tag")
            image = given.get("image")
            if image is not None and (site is not None or tag is not None):
                raise InvalidInput("--image rolls out an existing image: give it without --site and --tag")
            return _replace(
                plan,
                batch=parse_int_in_range(given.get("batch", 1), "batch", 1, MAX_REPLICAS),
                site=parse_site(site) if site is not None else None,
                tag=parse_version_tag(tag) if tag is not None else None,
                image=image_ref(str(image)) if image is not None else None,
            )
        if what == "failover":
            how = str(given.get("how", "kill"))
            if how not in HOWS:
                raise InvalidInput(f"unknown way to break a replica {how!r}; choose one of {', '.join(HOWS)}")
            restore = str(given.get("restore", "after"))
            if restore not in RESTORE:
                raise InvalidInput(f"restore must be one of {', '.join(RESTORE)}, not {restore!r}")
            replica = given.get("replica")
            if replica is not None and not _NAME.fullmatch(str(replica)):
                raise InvalidInput(
                    f"replica must be a container name such as lab-web-2 or a number, not {replica!r}"
                )
            return _replace(
                plan, how=how, restore=restore, replica=str(replica) if replica is not None else None
            )
        if what == "node-failure":
            restore = str(given.get("restore", "after"))
            if restore not in NODE_RESTORE:
                raise InvalidInput(
                    f"restore must be one of {', '.join(NODE_RESTORE)} for a node failure, not {restore!r}"
                )
            node = given.get("node")
            if node is not None and not _NAME.fullmatch(str(node)):
                raise InvalidInput(f"node must be a node name such as lab-node-1, not {node!r}")
            return _replace(plan, restore=restore, node=str(node) if node is not None else None)
        if what == "reload":
            return _replace(
                plan, times=parse_int_in_range(given.get("times", DEFAULT_RELOADS), "times", 1, MAX_RELOADS)
            )
        return plan

    @property
    def concurrency(self) -> int:
        """Connections the load may open: enough that a request stalled for seconds (a frozen
        replica) does not hold back the pace. The engine opens only as many as it needs."""
        return max(16, min(256, math.ceil(self.rate / 2)))

    def options(self) -> dict[str, object]:
        """The kind's options, as plain values (for JSON and the report)."""
        values: dict[str, object] = {
            "steps": list(self.steps),
            "batch": self.batch,
            "site": str(self.site) if self.site else None,
            "tag": self.tag,
            "image": self.image,
            "how": self.how,
            "replica": self.replica,
            "restore": self.restore,
            "times": self.times,
            "node": self.node,
        }
        return {k: values[k] for k in sorted(_OPTIONS[self.kind])}


def _replace(plan: ExperimentPlan, **changes: object) -> ExperimentPlan:
    return dataclasses.replace(plan, **changes)  # type: ignore[arg-type]


def parse_kind(value: object) -> str:
    text = str(value).strip().lower().replace("_", "-")
    if text == "killlb":
        text = "kill-lb"
    if text not in KINDS:
        raise InvalidInput(f"unknown experiment {str(value)!r}; choose one of {', '.join(KINDS)}")
    return text


def parse_number(value: object, what: str, low: float, high: float, unit: str) -> float:
    """A finite number between `low` and `high`, or a one-line InvalidInput."""
    if isinstance(value, bool):
        raise InvalidInput(f"{what} must be a number of {unit}, not {value!r}")
    try:
        x = float(str(value).strip())
    except ValueError:
        raise InvalidInput(f"{what} must be a number of {unit}, not {str(value)!r}") from None
    if not math.isfinite(x) or not low <= x <= high:
        shown = f"{x:g}" if math.isfinite(x) else str(value)
        raise InvalidInput(f"{what} must be between {low:g} and {high:g} {unit}, not {shown}")
    return x


def parse_steps(value: object) -> tuple[int, ...]:
    """Scale steps: '8,2' or a sequence of replica counts, each 1..MAX_REPLICAS."""
    if isinstance(value, str):
        items: list[object] = list(value.split(","))
    elif isinstance(value, Iterable):
        items = list(value)
    else:
        raise InvalidInput(f"steps must be replica counts such as 8,2, not {value!r}")
    raw = [item for item in items if str(item).strip()]
    if not raw:
        raise InvalidInput("give at least one scale step, e.g. --steps 8,2")
    if len(raw) > MAX_STEPS:
        raise InvalidInput(f"at most {MAX_STEPS} scale steps, not {len(raw)}")
    return tuple(parse_int_in_range(item, "each scale step (replicas)", 1, MAX_REPLICAS) for item in raw)


def schedule(duration: float, count: int) -> list[float]:
    """When each of `count` steps is due, in seconds since the start: the first once the warm-up
    (a fifth of the run) is over, the others spread evenly up to four fifths of it."""
    start, end = duration * WARM_UP, duration * OPS_END
    return [start + i * (end - start) / count for i in range(count)]
