"""The dashboard's controls: validated like CLI input, carried out by the CLI's own functions.

`parse_action` turns a JSON body into an `Action` or raises InvalidInput before anything is
touched; `Runner` carries out one action at a time with `orchestrator.scale`, `chaos.break_replica`,
`chaos.restore`, `live.configure` and `verify.verify`, telling the event log as it goes.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lab import chaos, live, orchestrator
from lab import verify as verifier
from lab.engine import ContainerEngine as Engine
from lab.errors import InvalidInput, LabError
from lab.spec import parse_algorithm, parse_int_in_range, parse_replicas

ACTIONS = ("scale", "kill", "restore", "method", "verify")
_FIELDS: dict[str, frozenset[str]] = {
    "scale": frozenset({"replicas"}),
    "kill": frozenset({"replica"}),
    "restore": frozenset(),
    "method": frozenset({"method"}),
    "verify": frozenset({"requests", "concurrency"}),
}
_REQUIRED = {"scale": "replicas", "kill": "replica", "method": "method"}
VERIFY_MAX_REQUESTS = 100_000  # the page's verify stays a short demo
VERIFY_DEFAULT_REQUESTS = 3000
_REPLICA = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")

NoteFn = Callable[[str, str], object]


class Busy(LabError):
    """Another action is still running."""


@dataclass(frozen=True)
class Action:
    kind: str
    replicas: int | None = None
    replica: str | None = None
    method: str | None = None
    plan: verifier.LoadPlan | None = None


def parse_action(kind: str, body: object) -> Action:
    """Validate an action and its JSON body, or raise InvalidInput (nothing is touched)."""
    if kind not in ACTIONS:
        raise InvalidInput(f"unknown action {kind!r}; choose one of {', '.join(ACTIONS)}")
    if body is None:
        body = {}
    if not isinstance(body, Mapping):
        raise InvalidInput("the request body must be a JSON object")
    unknown = sorted(set(body) - _FIELDS[kind])
    if unknown:
        allowed = ", ".join(sorted(_FIELDS[kind])) or "none"
        raise InvalidInput(f"{kind} takes no field {unknown[0]!r} (fields: {allowed})")
    required = _REQUIRED.get(kind)
    if required and body.get(required) is None:
        raise InvalidInput(f"{kind} needs {required!r}")
    if kind == "scale":
        return Action(kind, replicas=parse_replicas(body["replicas"]))
    if kind == "kill":
        replica = body["replica"]
        if isinstance(replica, bool) or not isinstance(replica, str | int):
            raise InvalidInput(f"replica must be a replica's name or number, not {replica!r}")
        text = str(replica)
        if not _REPLICA.fullmatch(text):
            raise InvalidInput(f"replica must be a replica's name or number, not {text!r}")
        return Action(kind, replica=text)
    if kind == "method":
        return Action(kind, method=parse_algorithm(body["method"]))
    if kind == "verify":
        requests = parse_int_in_range(
            body.get("requests", VERIFY_DEFAULT_REQUESTS), "requests", 1, VERIFY_MAX_REQUESTS
        )
        plan = verifier.LoadPlan.create(
            requests=requests, duration=None, concurrency=body.get("concurrency", 8), clients=0
        )
        return Action(kind, plan=plan)
    return Action(kind)


class Runner:
    """Carries out actions on lab `name`, one at a time."""

    def __init__(self, engine: Engine, name: str, note: NoteFn) -> None:
        self.engine = engine
        self.name = name
        self.note = note
        self._lock = threading.Lock()

    def __call__(self, kind: str, body: object) -> dict[str, object]:
        action = parse_action(kind, body)
        if not self._lock.acquire(blocking=False):
            raise Busy("another action is still running; try again when it is done")
        try:
            return self.run(action)
        finally:
            self._lock.release()

    def _teller(self, kind: str) -> Callable[[str], None]:
        def tell(message: str) -> None:
            self.note(kind, message)

        return tell

    def run(self, action: Action) -> dict[str, object]:
        engine, name = self.engine, self.name
        if action.kind == "scale":
            self.note("action", f"scale to {action.replicas} (from the dashboard)")
            scaled = orchestrator.scale(engine, name, action.replicas, on_event=self._teller("scale"))
            return {"replicas": scaled.spec.replicas}
        if action.kind == "kill":
            self.note("action", f"kill replica {action.replica} (from the dashboard)")
            chaos.break_replica(engine, name, str(action.replica), "kill", on_event=self._teller("chaos"))
            return {"killed": action.replica}
        if action.kind == "restore":
            self.note("action", "restore broken replicas (from the dashboard)")
            fixed = chaos.restore(engine, name, on_event=self._teller("chaos"))
            if not fixed:
                self.note("chaos", "nothing to restore")
            return {"restored": fixed}
        if action.kind == "method":
            self.note("action", f"switch to {action.method} (from the dashboard)")
            spec = live.configure(engine, name, algorithm=action.method)
            return {"method": spec.algorithm}
        assert action.plan is not None
        self.note("action", f"verify with {action.plan.requests:,} requests (from the dashboard)")
        result = verifier.verify(verifier.lab_target(engine, name), action.plan, engine=engine)
        self.note(
            "verify",
            f"verify: {result.verdict}, {result.requests:,} requests at {result.throughput_rps:,.0f} req/s"
            f"{', ' + result.reason if result.reason else ''}",
        )
        return {
            "verdict": result.verdict,
            "reason": result.reason,
            "requests": result.requests,
            "ok": result.ok,
            "errors": result.errors,
            "throughput_rps": round(result.throughput_rps, 1),
            "replicas": {r.name: r.count for r in result.replicas.values()},
        }
