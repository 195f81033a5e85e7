"""Changes to a running lab: find it, test a new nginx config inside it, reload gracefully."""

from __future__ import annotations

import contextlib
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from docker.models.containers import Container

from lab import labels
from lab.docker_ops import Engine
from lab.errors import DeployFailed, InvalidInput, LabError, NotReady
from lab.images import ensure_base_images
from lab.orchestrator import (
    NGINX_CONF,
    SPEC_FILE,
    current_spec,
    lab_network,
    probe_http,
    replica_request,
    spec_label,
    start_containers,
)
from lab.progress import EventFn, ProgressFn
from lab.render import nginx_view, render_nginx_conf
from lab.site import ensure_site_image, site_image_tag, site_version
from lab.spec import LabSpec, parse_int_in_range, parse_replicas, parse_site

NEXT_CONF = "/etc/nginx/nginx.conf.next"


@dataclass(frozen=True)
class RunningLab:
    """A lab whose load balancer is running, and what it serves now."""

    spec: LabSpec
    lb: Container
    replicas: list[str]  # names of the running replicas
    backend: str  # the network the replicas serve on (found by label: not always NAME-backend)


def find_running(engine: Engine, name: str) -> RunningLab:
    """The running lab `name`, or a one-line error saying why there is none."""
    lbs = engine.containers(labels.lab_filter(name, labels.ROLE_LB))
    if not lbs:
        raise LabError(f"there is no lab named {name!r}; start one with `lab up --name {name}`")
    lb = lbs[0]
    if lb.status != "running":
        raise LabError(f"the load balancer of lab {name!r} is {lb.status}, not running")
    web = engine.containers(labels.lab_filter(name, labels.ROLE_WEB))
    running = sorted((c for c in web if c.status == "running"), key=_index)
    backend = lab_network(engine, name, labels.ROLE_BACKEND_NET, lb)
    return RunningLab(current_spec(engine, lb), lb, [c.name for c in running], backend)


def apply_config(
    engine: Engine,
    lab: RunningLab,
    spec: LabSpec,
    *,
    hosts: list[str] | None = None,
    timeout: float = 10.0,
) -> str:
    """Render `spec` (upstream: `hosts`, by default the serving replicas), test it with `nginx -t`
    in the load balancer, and only then reload gracefully.

    A config that fails the test is never installed: the old one keeps serving. Returns the
    new config's generation once the load balancer answers with it.
    """
    if hosts is None:
        hosts = [c.name for c in serving_members(engine, spec.name, lab.backend)]
    view = nginx_view(spec, hosts)
    config = render_nginx_conf(view)
    engine.put_file(lab.lb, NEXT_CONF, config)
    code, output = engine.exec(lab.lb, ["nginx", "-t", "-q", "-c", NEXT_CONF])
    if code != 0:
        engine.exec(lab.lb, ["rm", "-f", NEXT_CONF])
        raise InvalidInput("the new nginx config failed `nginx -t`; the old one keeps serving", detail=output)
    old_workers = active_workers(engine, lab.lb)
    code, output = engine.exec(
        lab.lb,
        [
            "sh",
            "-c",
            f"cp {NGINX_CONF} {NGINX_CONF}.previous && mv {NEXT_CONF} {NGINX_CONF} && nginx -s reload",
        ],
    )
    if code != 0:
        raise LabError("nginx did not accept the reload signal", detail=output)
    engine.put_file(lab.lb, SPEC_FILE, spec_label(spec))
    _wait_for_new_workers(engine, lab.lb, old_workers, timeout)
    return view.generation


_WORKERS = (
    "grep -l 'worker[ ]process' /proc/[0-9]*/cmdline 2>/dev/null; echo --; "
    "grep -l 'shutting[ ]down' /proc/[0-9]*/cmdline 2>/dev/null"
)  # "[ ]" keeps this command's own cmdline from matching


def active_workers(engine: Engine, lb: Container) -> set[str]:
    """The /proc entries of nginx workers that take new connections (not the old, draining ones)."""
    _, output = engine.exec(lb, ["sh", "-c", _WORKERS])
    workers, _, draining = output.partition("--")
    return set(workers.split()) - set(draining.split())


def _wait_for_new_workers(engine: Engine, lb: Container, old: set[str], timeout: float) -> None:
    """`nginx -s reload` only signals the master: wait until fresh workers have replaced the old."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = active_workers(engine, lb)
        if current and not current & old:
            return
        time.sleep(0.02)
    raise LabError(f"nginx did not start new workers within {timeout:.0f} s of the reload")


def configure(engine: Engine, name: str, **changes: object) -> LabSpec:
    """Change a running lab's balancing (method, weights, ...) with a tested, graceful reload."""
    lab = find_running(engine, name)
    spec = lab.spec.with_changes(**changes)
    if spec == lab.spec:
        return spec
    hosts = [c.name for c in serving_members(engine, name, lab.backend)]
    if spec.weights and len(spec.weights) != len(hosts):
        raise InvalidInput(f"got {len(spec.weights)} weights for {len(hosts)} serving replicas")
    apply_config(engine, lab, spec, hosts=hosts)
    return spec


# Members of the upstream -----------------------------------------------------------------------
def serving_members(engine: Engine, name: str, backend: str | None = None) -> list[Container]:
    """Replicas nginx can be pointed at: running or frozen, and reachable by name on the backend
    network (`backend`, by default the one the lab's load balancer is on).

    Docker's DNS forgets stopped and disconnected containers, and nginx refuses a config naming
    a host it cannot resolve, so those are left out of any new config.
    """
    backend = backend or lab_network(engine, name, labels.ROLE_BACKEND_NET)
    web = engine.containers(labels.lab_filter(name, labels.ROLE_WEB))
    members = [
        c
        for c in web
        if c.status in ("running", "paused") and backend in c.attrs["NetworkSettings"]["Networks"]
    ]
    return sorted(members, key=_index)


def _index(container: Container) -> int:
    return labels.replica_index(container.labels)


def _announce(on_event: EventFn | None, message: str) -> None:
    if on_event is not None:
        on_event(message)


def _progress_as_events(on_event: EventFn | None) -> ProgressFn:
    def report(description: str, _fraction: float | None) -> None:
        _announce(on_event, description)

    return report


def drain(engine: Engine, lb: Container, *, timeout: float = 15.0) -> None:
    """Wait until nginx's old workers (after a reload) have finished their requests and exited."""
    # "[ ]" keeps this command's own cmdline (and its shell's) from matching the pattern.
    count = "grep -l 'shutting[ ]down' /proc/[0-9]*/cmdline 2>/dev/null | wc -l"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, output = engine.exec(lb, ["sh", "-c", count])
        if code != 0 or output.strip() in ("", "0"):
            return
        time.sleep(0.05)


def _retire(engine: Engine, containers: list[Container], on_event: EventFn | None) -> None:
    """Stop replicas with their graceful stop signal (in-flight requests finish), then remove them."""

    def retire(container: Container) -> None:
        container.stop(timeout=10)
        engine.remove_containers([container])
        _announce(on_event, f"replica {container.name} stopped and removed")

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(containers)))) as pool:
        list(pool.map(retire, containers))


def _add_replicas(
    engine: Engine,
    spec: LabSpec,
    network: str,
    count: int,
    first_index: int,
    image: str,
    version: str,
    on_event: EventFn | None,
) -> list[Container]:
    """Start `count` new replicas on `network` and make sure each answers HTTP inside its container."""
    indices = range(first_index, first_index + count)
    requests_ = [replica_request(spec, i, image, version, network) for i in indices]
    try:
        started = start_containers(engine, requests_, _progress_as_events(on_event))
        for container in started:
            health = probe_http(engine, container)
            if health != "ok":
                raise NotReady(
                    f"new replica {container.name} does not answer: {health}", detail=engine.logs(container)
                )
            _announce(on_event, f"replica {container.name} answers")
        return started
    except BaseException:
        with contextlib.suppress(Exception):
            engine.remove_containers(c for c in engine.containers(labels.lab_filter(spec.name, labels.ROLE_WEB))
                                     if c.name in {r.name for r in requests_})  # fmt: skip
        raise


def _current_image(members: list[Container]) -> tuple[str, str]:
    """The image tag and site version the newest serving replica runs."""
    newest = members[-1]
    version = newest.labels.get(labels.SITE_VERSION, "")
    tags = newest.image.tags if newest.image else []
    return (tags[0] if tags else site_image_tag(version)), version


def _next_index(engine: Engine, name: str) -> int:
    web = engine.containers(labels.lab_filter(name, labels.ROLE_WEB))
    return max((_index(c) for c in web), default=0) + 1


# Operations ------------------------------------------------------------------------------------
def reload(engine: Engine, name: str, *, on_event: EventFn | None = None) -> None:
    """Test and gracefully reload the current config (what a config change costs, without a change)."""
    lab = find_running(engine, name)
    hosts = [c.name for c in serving_members(engine, name, lab.backend)]
    apply_config(engine, lab, lab.spec, hosts=hosts)
    _announce(on_event, f"nginx reloaded ({len(hosts)} replicas in the upstream)")


def scale(engine: Engine, name: str, replicas: object, *, on_event: EventFn | None = None) -> LabSpec:
    """Add replicas (start, check, then add to the upstream) or remove them (take them out of the
    upstream, let in-flight requests finish, then stop them gracefully). Never drops a request."""
    n = parse_replicas(replicas)
    lab = find_running(engine, name)
    members = serving_members(engine, name, lab.backend)
    if not members:
        raise LabError(f"lab {name!r} has no serving replica to scale from; `lab chaos restore` first")
    if n == len(members):
        _announce(on_event, f"already {n} replicas")
        return lab.spec
    spec = lab.spec.resized(n)
    if n > len(members):
        image, version = _current_image(members)
        added = _add_replicas(
            engine, spec, lab.backend, n - len(members), _next_index(engine, name), image, version, on_event
        )
        try:
            apply_config(engine, lab, spec, hosts=[c.name for c in members + added])
        except BaseException:
            engine.remove_containers(added)
            raise
        _announce(on_event, f"reloaded: {n} replicas in the upstream")
    else:
        keep, remove = members[:n], members[n:]
        apply_config(engine, lab, spec, hosts=[c.name for c in keep])
        _announce(on_event, f"reloaded: {n} replicas in the upstream, {len(remove)} taken out")
        drain(engine, lab.lb)
        _retire(engine, remove, on_event)
    return spec


_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def deploy(
    engine: Engine,
    name: str,
    *,
    site: Path | str | None = None,
    batch: object = 1,
    tag: str | None = None,
    on_event: EventFn | None = None,
) -> str:
    """Rolling update: replace `batch` replicas at a time with the new site version, each new one
    answering before it joins the upstream and each old one drained before it stops.

    If a new replica does not become healthy, the replicas already replaced go back to the
    previous version and DeployFailed says so. Returns the new version.
    """
    lab = find_running(engine, name)
    members = serving_members(engine, name, lab.backend)
    if not members:
        raise LabError(f"lab {name!r} has no serving replica to deploy over; `lab chaos restore` first")
    site_dir = parse_site(site) if site is not None else lab.spec.site
    size = parse_int_in_range(batch, "batch (replicas replaced at a time)", 1, len(members))
    if tag is not None and not _TAG.fullmatch(tag):
        raise InvalidInput(
            f"tag must be 1-64 letters, digits or _.- starting with a letter or digit, not {tag!r}"
        )
    previous_image, previous_version = _current_image(members)
    base = ensure_base_images(engine.client)
    version = tag
    if version is None:
        content = site_version(site_dir, engine.image_id(base.httpd))
        # With nothing changed, deploy still rolls out a new version (a rebuild), as asked.
        version = content if content != previous_version else f"{content}.{time.strftime('%Y%m%d%H%M%S')}"
    image, version = ensure_site_image(
        engine, site_dir, base.httpd, _progress_as_events(on_event), version_name=version
    )
    _announce(on_event, f"built version {version}; replacing {len(members)} replicas, {size} at a time")
    spec = lab.spec.with_changes(site=site_dir)
    replaced: list[Container] = []
    serving = list(members)
    for start in range(0, len(members), size):
        old = members[start : start + size]
        try:
            new = _swap(engine, lab, spec, serving, old, image, version, on_event)
        except (LabError, OSError) as exc:
            _announce(on_event, f"deploy stopped: {exc}; rolling back to {previous_version}")
            if replaced:
                serving = serving_members(engine, name, lab.backend)
                _swap(engine, lab, lab.spec, serving, replaced, previous_image, previous_version, on_event)
            detail = exc.detail if isinstance(exc, LabError) else ""
            raise DeployFailed(
                f"deploy of version {version} stopped ({exc}); version {previous_version} serves again",
                detail=detail,
            ) from exc
        replaced += new
        serving = [c for c in serving if c not in old] + new
    engine.put_file(find_running(engine, name).lb, SPEC_FILE, spec_label(spec))
    _announce(on_event, f"deployed version {version} to {len(members)} replicas")
    return version


def _swap(
    engine: Engine,
    lab: RunningLab,
    spec: LabSpec,
    serving: list[Container],
    old: list[Container],
    image: str,
    version: str,
    on_event: EventFn | None,
) -> list[Container]:
    """Start len(old) replicas of `image`, add them, then drain and retire `old`."""
    new = _add_replicas(
        engine, spec, lab.backend, len(old), _next_index(engine, spec.name), image, version, on_event
    )
    hosts = [c.name for c in serving if c not in old] + [c.name for c in new]
    try:
        apply_config(engine, lab, spec.resized(len(hosts)), hosts=hosts)
    except BaseException:
        engine.remove_containers(new)
        raise
    _announce(
        on_event, f"reloaded: {', '.join(c.name for c in new)} in, {', '.join(c.name for c in old)} out"
    )
    drain(engine, lab.lb)
    _retire(engine, old, on_event)
    return new
