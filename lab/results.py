"""What `lab verify` found, as plain data: the one shape behind the table, the JSON and the HTML report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        data["replicas"] = {name: asdict(r) for name, r in self.replicas.items()}
        return data
