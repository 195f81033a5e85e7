"""pytest plugin: real labs as fixtures, guaranteed teardown, and lab context on failing tests.

Registered through the `pytest11` entry point, so any test suite with `lab` installed can use
`lab_cluster(...)` (one lab per test) and `lab_cluster_session(...)` (one lab per session and
xdist worker). Without a Docker engine those tests skip; under CI (see `in_ci`) they fail instead.

The core is `running_lab(engine, **options)`, a context manager usable without pytest: it starts
a lab and removes it afterwards, whatever happened (a failed or interrupted `up` included). Every
resource carries this session's id (`lab.session`). Before the first lab, the session starts its
reaper (lab/reaper.py) and holds a connection to it: if the session dies, even by kill -9 or in
another PID namespace, the reaper removes the session's labs; no session ever removes another's.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import socket
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from lab import labels, orchestrator
from lab import reaper as reapers
from lab.docker_ops import Engine
from lab.errors import EngineUnavailable, InvalidInput, LabError
from lab.loadbalancer import LoadBalancer
from lab.results import LabStatus
from lab.spec import DEFAULT_REPLICAS, LabSpec, parse_replicas
from lab.undo import sigint_ignored

if TYPE_CHECKING:
    from lab.results import VerifyResult

_ENGINE_KEY = pytest.StashKey[Engine | None]()
_LABS_KEY = pytest.StashKey[list[str]]()  # labs a test started (item stash)
_SESSION_LABS_KEY = pytest.StashKey[list[str]]()  # labs of lab_cluster_session (config stash)
_KEPT_KEY = pytest.StashKey[list[list[str]]]()  # [name, url] of labs left up by --lab-keep
_REAPER_KEY = pytest.StashKey[reapers.SessionReaper]()  # this process's connection to the session's reaper
CI_TRUE = ("1", "true", "yes", "on")

# What a fixture call may set: LabSpec.create's parameters.
KNOWN_OPTIONS = tuple(p for p in inspect.signature(LabSpec.create).parameters if p != "check_site")


def in_ci() -> bool:
    """Whether this runs under CI: `CI` set to 1, true, yes or on (any case). The one place that decides."""
    return os.environ.get("CI", "").strip().lower() in CI_TRUE


def free_port() -> int:
    """A port nobody listens on right now on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def unique_name(prefix: str = "t") -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return f"{prefix}-{worker + '-' if worker else ''}{uuid.uuid4().hex[:8]}"


# The handle and its context manager ------------------------------------------------------------
@dataclass
class LabHandle:
    """A running lab inside a test."""

    engine: Engine
    spec: LabSpec
    replicas: list[str] = field(default_factory=list)  # container (and host) names in the upstream

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def url(self) -> str:
        return self.spec.url

    @property
    def nginx_conf(self) -> str:
        return nginx_conf(self.engine, self.name)

    def logs(self, tail: int = 40) -> dict[str, str]:
        """The last `tail` log lines of each container, by container name."""
        return container_logs(self.engine, self.name, tail)

    def status(self) -> LabStatus:
        return orchestrator.status(self.engine, self.name)

    def verify(self, requests: int = 1000, concurrency: int = 8, clients: int = 0) -> VerifyResult:
        """Send bounded load through the load balancer and judge the spread, as `lab verify` does."""
        from lab import (
            verify as verifier,  # imported on use: it brings scipy, which pytest runs need not pay for
        )

        plan = verifier.LoadPlan.create(
            requests=requests, duration=None, concurrency=concurrency, clients=clients
        )
        return verifier.verify(verifier.lab_target(self.engine, self.name), plan, engine=self.engine)

    def scale(self, replicas: int) -> None:
        """Add or remove replicas live; `.spec` and `.replicas` follow."""
        self.spec = orchestrator.scale(self.engine, self.name, replicas).spec
        self.replicas = orchestrator.find_running(self.engine, self.name).replicas

    def kill(self, replica: int | str) -> None:
        """SIGKILL a replica (its number from 1, or its container name), as a crash would."""
        from lab import chaos

        chaos.break_replica(self.engine, self.name, str(replica), how="kill")


def lab_spec(**options: object) -> LabSpec:
    """Validate fixture options into a spec; a unique name and a free port unless given."""
    unknown = sorted(set(options) - set(KNOWN_OPTIONS))
    if unknown:
        raise InvalidInput(f"unknown parameter {unknown[0]!r} (known: {', '.join(KNOWN_OPTIONS)})")
    options.setdefault("name", unique_name())
    options.setdefault("port", free_port())
    return LabSpec.create(**options)  # type: ignore[arg-type]


@contextlib.contextmanager
def running_lab(
    engine: Engine, spec: LabSpec | None = None, *, keep: bool = False, **options: object
) -> Iterator[LabHandle]:
    """Start a lab (`spec`, or one made from `options`), yield its handle, and remove it afterwards.

    It is removed whatever happens: an exception or Ctrl-C in `up` (which also rolls itself
    back) or in the block. With `keep=True` a lab that came up is left running.
    """
    spec = spec or lab_spec(**options)
    came_up = False
    try:
        orchestrator.up(engine, spec)
        came_up = True
        yield LabHandle(engine, spec, spec.replica_names())
    finally:
        if not (keep and came_up):
            with sigint_ignored():  # a second Ctrl-C must not leave it half removed
                orchestrator.remove_lab(engine, spec.name)


# What a failing test's report shows ---------------------------------------------------------
def nginx_conf(engine: Engine, name: str) -> str:
    lb = LoadBalancer.find(engine, name)
    if lb is None:
        return "(no load balancer)"
    try:
        return lb.config()
    except Exception as exc:  # a dead container has no readable file; say so in the report
        return f"(could not read: {exc})"


def container_logs(engine: Engine, name: str, tail: int = 40) -> dict[str, str]:
    containers = sorted(engine.containers(labels.lab_filter(name)), key=lambda c: c.name)
    return {c.name: engine.logs(c, tail=tail) for c in containers}


def status_text(status: LabStatus) -> str:
    """`lab status` as a plain-text table."""
    rows = [("container", "role", "state", "health", "image")]
    members = ([status.load_balancer] if status.load_balancer else []) + list(status.replicas)
    for m in members:
        role = "load balancer" if m.role == labels.ROLE_LB else f"replica {m.index}"
        rows.append((m.name, role, m.state, m.health, m.image))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join([f"lab {status.name}  {status.url}  ({status.algorithm or 'unknown method'})", *lines])


def report_sections(engine: Engine, name: str) -> list[tuple[str, str]]:
    try:
        status = status_text(orchestrator.status(engine, name))
    except LabError as exc:
        status = exc.message
    sections = [(f"lab {name}: status", status), (f"lab {name}: nginx.conf", nginx_conf(engine, name))]
    for container, text in container_logs(engine, name).items():
        sections.append((f"lab {name}: logs of {container}", text))
    return sections


# Hooks and fixtures ----------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lab", "lab: real load-balanced labs as fixtures")
    group.addoption(
        "--lab-keep",
        action="store_true",
        help="Leave the labs up after the tests, for debugging; the summary says how to reach and remove them.",
    )
    parser.addini(
        "lab_no_skips_in_ci",
        type="bool",
        default=False,
        help="Under CI (CI=1/true/yes/on) a skipped test fails the run instead of passing silently.",
    )
    group.addoption(
        "--lab-replicas",
        default=None,
        help=f"Replicas of a lab whose test does not say (default {DEFAULT_REPLICAS}).",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "docker: needs a real Docker engine (fails instead of skipping when CI=true)"
    )
    replicas = config.getoption("lab_replicas", None)
    if replicas is not None:
        try:
            parse_replicas(replicas)
        except InvalidInput as exc:
            raise pytest.UsageError(f"--lab-replicas: {exc.message}") from None
    config.stash[_KEPT_KEY] = []
    config.stash[_SESSION_LABS_KEY] = []
    # xdist workers inherit the controller's id, so one run is one session (and has one reaper).
    os.environ.setdefault("LAB_SESSION", labels.new_session_id())


@pytest.fixture(scope="session")
def lab_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """The Docker engine, guarded by this session's reaper; skips without an engine, fails under CI.

    A reaper that cannot start fails every test that needs the engine, with the reason: no lab
    runs unguarded.
    """
    try:
        engine = Engine.connect(timeout=120)
    except EngineUnavailable as exc:
        if in_ci():
            pytest.fail(f"CI={os.environ['CI']} and {exc.message}", pytrace=False)
        pytest.skip(exc.message)
    try:
        guard = reapers.guard_session(engine, labels.session_id())
    except LabError as exc:
        pytest.fail(f"the session's reaper did not start, so no lab may run: {exc.message}", pytrace=False)
    with contextlib.suppress(LabError):
        reapers.release_orphaned_swarm(engine)
    request.config.stash[_ENGINE_KEY] = engine
    request.config.stash[_REAPER_KEY] = guard
    yield engine
    guard.close()  # the labs are down by now; the reaper removes whatever is left, and itself


def _starter(
    config: pytest.Config, engine: Engine, stack: contextlib.ExitStack, started: list[str], fixture: str
) -> Callable[..., LabHandle]:
    """The function a lab fixture returns: validate, start within `stack`, fail in one line."""
    keep = bool(config.getoption("lab_keep"))

    def start(**options: object) -> LabHandle:
        options.setdefault("replicas", config.getoption("lab_replicas") or DEFAULT_REPLICAS)
        try:
            spec = lab_spec(**options)
        except InvalidInput as exc:
            pytest.fail(f"{fixture}: {exc.message}", pytrace=False)
        guard = config.stash[_REAPER_KEY]
        started.append(spec.name)  # before `up`: a failing `up` still gets its report sections
        try:
            guard.check()  # never start a lab nobody would remove
            handle = stack.enter_context(running_lab(engine, spec, keep=keep))
            if keep:  # it outlives the session: the reaper must leave it alone
                guard.keep(spec.name)
        except LabError as exc:
            detail = f"\n{exc.detail}" if exc.detail else ""
            pytest.fail(f"{fixture}: lab {spec.name} did not come up: {exc.message}{detail}", pytrace=False)
        if keep:
            config.stash[_KEPT_KEY].append([spec.name, spec.url])
        return handle

    return start


@pytest.fixture
def lab_cluster(lab_engine: Engine, request: pytest.FixtureRequest) -> Iterator[Callable[..., LabHandle]]:
    """A factory: `lab_cluster(replicas=3, algorithm="round_robin", site=path)` starts a lab for
    this test only; it is removed after the test, whatever happened."""
    started = request.node.stash.setdefault(_LABS_KEY, [])
    with contextlib.ExitStack() as stack:
        yield _starter(request.config, lab_engine, stack, started, "lab_cluster")


@pytest.fixture(scope="session")
def lab_cluster_session(
    lab_engine: Engine, pytestconfig: pytest.Config
) -> Iterator[Callable[..., LabHandle]]:
    """Like `lab_cluster`, but a lab lives for the whole session (one per xdist worker), and calls
    with the same options share it: a test that scales or kills changes it for the others too."""
    shared: dict[str, LabHandle] = {}
    with contextlib.ExitStack() as stack:
        start = _starter(
            pytestconfig, lab_engine, stack, pytestconfig.stash[_SESSION_LABS_KEY], "lab_cluster_session"
        )

        def get(**options: object) -> LabHandle:
            key = repr(sorted(options.items()))
            if key not in shared:
                shared[key] = start(**options)
            return shared[key]

        yield get


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and _skips_forbidden(item.config):
        _skip_fails(report)
    names: list[str] = item.stash.get(_LABS_KEY, [])
    if "lab_cluster_session" in getattr(item, "fixturenames", ()):
        names = names + item.config.stash[_SESSION_LABS_KEY]
    engine = item.config.stash.get(_ENGINE_KEY, None)
    if report.failed and names and engine is not None and call.when in ("setup", "call"):
        for name in names:
            report.sections.extend(report_sections(engine, name))
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if report.skipped and _skips_forbidden(collector.config):
        _skip_fails(report)
    return report


def _skips_forbidden(config: pytest.Config) -> bool:
    return bool(config.getini("lab_no_skips_in_ci")) and in_ci()


def _skip_fails(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a skip into a failure that says why (an expected failure, xfail, stays what it is)."""
    if hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    where = f"{report.longrepr[0]}:{report.longrepr[1]}: " if isinstance(report.longrepr, tuple) else ""
    report.outcome = "failed"
    report.longrepr = f"{where}CI={os.environ.get('CI')}, where nothing may skip, and this skipped: {reason}"


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: its controller prints the summary
        workeroutput["lab_kept"] = session.config.stash[_KEPT_KEY]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """xdist controller: collect the labs a worker kept."""
    config = getattr(node, "config", None)
    kept = getattr(node, "workeroutput", {}).get("lab_kept", [])
    if config is not None:
        config.stash[_KEPT_KEY].extend(kept)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    kept = config.stash.get(_KEPT_KEY, [])
    if kept:
        terminalreporter.section("labs left running (--lab-keep)")
        for name, url in kept:
            terminalreporter.write_line(
                f"lab {name}: {url}   status: lab status --name {name}   remove: lab down --name {name}"
            )
