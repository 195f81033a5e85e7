"""Every result type, as plain data: the one shape behind the tables, the JSON and the HTML reports.

Views (ui, report, experiment_report, the dashboard's page) import these and pure modules only,
so loading a view loads no Docker code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a timeline is the load engine's own per-second record
    from lab.traffic import Second

# The verdicts of an experiment.
VERDICT_ZERO_LOSS = "zero-loss"
VERDICT_LOSSY = "lossy"
VERDICT_RECOVERED = "recovered"
VERDICT_FAILED = "failed"
PASSING_VERDICTS = (VERDICT_ZERO_LOSS, VERDICT_RECOVERED)
REGISTRY_HOST = "127.0.0.1"  # the only address the lab registry is published on


@dataclass(frozen=True)
class Latency:
    """Milliseconds."""

    p50: float
    p95: float
    p99: float
    max: float
    mean: float


@dataclass(frozen=True)
class ReplicaResult:
    name: str
    count: int  # successful answers this replica served
    share: float  # count / all successful answers
    expected_share: float  # the equal (weighted) share: what one connection gets
    statuses: dict[int, int]
    errors: int  # 5xx answers it sent
    latency_ms: Latency | None
    access_log_count: int | None  # what the load balancer's log says it sent there (None: not checked)
    latency_share: float | None = (
        None  # least_conn / random_two: the inverse-latency (many connections) share
    )
    expected_low: float | None = (
        None  # the shares the test accepted, margin included (None: no per-replica band)
    )
    expected_high: float | None = None
    contents: dict[str, int] = field(default_factory=dict)  # content version -> ok answers (see below)


@dataclass(frozen=True)
class ContentVersion:
    """What a group of answers carried: the same page, whichever replica sent it.

    `version` is the answers' X-Site-Version where that version had one content in the run, else
    the version and the `digest` of the body with the replica's own name taken out
    (lab.tally.content_digest), so replicas that serve the same pages share one, and one that got
    a `lab cp` stands apart.
    """

    version: str
    site_version: str  # the X-Site-Version header ("" when the answers had none)
    digest: str  # CRC-32 of the body without the replica's name (8 hex digits)
    count: int  # ok answers
    share: float  # of all ok answers
    replicas: dict[str, int]  # replica -> its answers with this content


@dataclass(frozen=True)
class HistogramBar:
    """One bar of the latency histogram (milliseconds)."""

    low_ms: float
    high_ms: float
    count: int


@dataclass(frozen=True)
class AccessLogCheck:
    checked: bool
    matches: bool
    verifier_total: int
    log_total: int
    differences: dict[str, int]  # replica -> log count minus verifier count, only where they differ
    note: str = ""


@dataclass(frozen=True)
class NodeSpread:
    """How a swarm lab's traffic spread over the nodes its replicas run on."""

    node: str
    replicas: list[str]
    count: int  # successful answers from its replicas
    share: float
    expected_share: float  # the sum of its replicas' expected shares


@dataclass(frozen=True)
class VerifyResult:
    lab: str
    url: str
    method: str
    weights: list[int]
    requests: int  # sent
    ok: int
    errors: int
    errors_by_cause: dict[str, int]
    replicas: dict[str, ReplicaResult]
    test: dict[str, object]  # name, statistic, p_value or bound, alpha, ...
    max_deviation: float
    latency_ms: Latency | None
    latency_histogram: list[HistogramBar]
    throughput_rps: float
    duration_s: float
    concurrency: int
    clients: int
    verdict: str  # balanced | skewed | inconclusive | failed
    reason: str
    access_log: AccessLogCheck
    retried: int = 0  # idempotent GETs retried after a stale keep-alive connection closed
    notes: list[str] = field(default_factory=list)
    advice: str = ""  # inconclusive: what would make the test decisive
    by_node: list[NodeSpread] = field(default_factory=list)  # a swarm lab: the spread per node
    contents: list[ContentVersion] = field(default_factory=list)  # most answers first

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        data["replicas"] = {name: asdict(r) for name, r in self.replicas.items()}
        return data


# `lab up` and `lab status` ----------------------------------------------------------------------
@dataclass(frozen=True)
class MemberStatus:
    """One container of a lab, as `lab status` shows it."""

    name: str
    role: str
    index: int
    state: str
    health: str
    image: str
    site_version: str
    slot: int = 0  # a replica's place in the lab (its weight follows it); 0 for the load balancer
    node: str = ""  # the engine it runs on ("" on one engine)


@dataclass(frozen=True)
class Leftover:
    """Something of a lab that is still there, and why."""

    kind: str  # "network" or "container"
    name: str
    reason: str


@dataclass(frozen=True)
class LabStatus:
    name: str
    url: str
    algorithm: str
    load_balancer: MemberStatus | None
    replicas: tuple[MemberStatus, ...]
    networks: tuple[str, ...]  # every network labelled for the lab
    stuck_networks: tuple[Leftover, ...] = ()  # those nothing of the lab is on, and why they stay
    expires_at: float | None = None  # UNIX time a `--ttl` lab removes itself
    engine: str = "docker"  # docker: containers on this engine; swarm: a service's tasks on its nodes
    watcher: MemberStatus | None = None  # a swarm lab's watcher (keeps the upstream on the tasks)
    upstream_change: dict[str, object] | None = None  # the watcher's last change of the upstream
    site_mount: str = (
        ""  # the host folder every replica serves, read-only (`up --mount-site`); "" if built in
    )

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Removed:
    containers: int
    networks: int
    volumes: int
    left: tuple[Leftover, ...] = ()  # what could not be removed, and why
    running: tuple[str, ...] = ()  # containers of the lab that still run
    services: int = 0  # swarm services (a swarm lab has one)
    swarm: str = ""  # what became of a swarm the lab had initialised, once its last lab went

    @property
    def nothing(self) -> bool:
        return not (self.containers or self.networks or self.volumes or self.left or self.services)


# `lab experiment` -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """Something that happened, `t` seconds after the load started."""

    t: float
    text: str
    source: str = "operation"  # "step" (begins/ends, from the experiment) | "operation" | "note"


@dataclass(frozen=True)
class Check:
    """A judgement after a step: who got traffic in a window, and whether that is as it should be.

    For a traffic check, `live` replicas should each have answered in `window`, and nginx
    should not have tried the `removed` ones at all (X-Upstream-Addr lists every address it
    tried), or, for a broken replica still in its config, at most `allowed` probes (passive
    health tries it again once per fail_timeout). Other checks (a deploy's versions) leave
    those empty. A check that was not `judged` is not passed either.
    """

    name: str
    judged: bool
    passed: bool
    detail: str
    window: tuple[float, float] | None = None  # whole seconds [start, end) of the run judged
    live: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    served: list[str] = field(default_factory=list)  # replicas that answered in the window
    missing: list[str] = field(default_factory=list)  # live replicas that got nothing
    stray: list[str] = field(default_factory=list)  # replicas not live that still answered
    attempts: dict[str, int] = field(default_factory=dict)  # removed replica -> times nginx tried it
    allowed: int = 0  # attempts allowed per removed replica in the window (probes of a broken one)


@dataclass(frozen=True)
class ExperimentResult:
    lab: str
    kind: str
    url: str
    rate: float
    duration: float
    concurrency: int
    options: dict[str, object]
    sent: int
    ok: int
    failed: int
    failed_by_cause: dict[str, int]
    retried: int  # GETs sent again once after a stale keep-alive close (not failures, counted)
    retried_by_cause: dict[str, int]
    upstream_retries: int  # extra upstream attempts nginx made (X-Upstream-Addr lists them)
    timeline: list[Second]
    events: list[Event]
    recovery_s: float | None  # None: errors went on to the end of the run
    first_error_s: float | None
    checks: list[Check]
    verdict: str  # zero-loss | lossy | recovered | failed
    reason: str
    notes: list[str]
    replicas: list[str]  # every replica that answered, in order of first answer
    operation_error: str = ""  # the operation itself failed (e.g. a deploy rolled back)
    elapsed: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p99, max of every answer
    extra: dict[str, object] = field(default_factory=dict)  # kind-specific findings

    @property
    def passed(self) -> bool:
        """Zero loss (or recovered, for kill-lb), every check judged and passed, the operation done.

        A check that could not be judged is no evidence, so it does not pass either.
        """
        return (
            self.verdict in PASSING_VERDICTS
            and not self.operation_error
            and all(c.judged and c.passed for c in self.checks)
        )

    @property
    def unjudged(self) -> list[Check]:
        return [c for c in self.checks if not c.judged]

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        data["passed"] = self.passed
        data["unjudged"] = [c.name for c in self.unjudged]
        return data


# `lab nodes` and `lab registry` ------------------------------------------------------------------
@dataclass(frozen=True)
class NodeInfo:
    """One node as `lab nodes ls` shows it: the container and the manager's view of it."""

    name: str
    container: str  # running, exited, ... or "absent" for a stale swarm entry
    address: str
    swarm: str  # ready, down, unknown, ... or "absent" (not in the swarm)
    availability: str
    node_id: str
    engine: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class RegistryStatus:
    name: str
    state: str  # running, exited, ... or "absent"
    port: int | None
    volume: str
    volume_exists: bool
    repositories: dict[str, list[str]]  # repository -> tags (only while it runs)

    @property
    def running(self) -> bool:
        return self.state == "running" and self.port is not None

    @property
    def url(self) -> str:
        return f"http://{REGISTRY_HOST}:{self.port}" if self.port else ""

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "url": self.url, "running": self.running}
