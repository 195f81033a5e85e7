"""Changes to a running lab: find it, test a new nginx config inside it, reload gracefully."""

from __future__ import annotations

import time
from dataclasses import dataclass

import requests
from docker.models.containers import Container

from lab import labels
from lab.docker_ops import Engine
from lab.errors import InvalidInput, LabError
from lab.lab import NGINX_CONF, SPEC_FILE, current_spec, spec_label
from lab.render import nginx_view, render_nginx_conf
from lab.spec import LabSpec

NEXT_CONF = "/etc/nginx/nginx.conf.next"


@dataclass(frozen=True)
class RunningLab:
    """A lab whose load balancer is running, and what it serves now."""

    spec: LabSpec
    lb: Container
    replicas: list[str]  # names of the running replicas


def find_running(engine: Engine, name: str) -> RunningLab:
    """The running lab `name`, or a one-line error saying why there is none."""
    lbs = engine.containers(labels.lab_filter(name, labels.ROLE_LB))
    if not lbs:
        raise LabError(f"there is no lab named {name!r}; start one with `lab up --name {name}`")
    lb = lbs[0]
    if lb.status != "running":
        raise LabError(f"the load balancer of lab {name!r} is {lb.status}, not running")
    web = engine.containers(labels.lab_filter(name, labels.ROLE_WEB))
    running = sorted(
        (c for c in web if c.status == "running"), key=lambda c: int(c.labels.get(labels.REPLICA, "0"))
    )
    return RunningLab(current_spec(engine, lb), lb, [c.name for c in running])


def apply_config(engine: Engine, lab: RunningLab, spec: LabSpec, *, timeout: float = 10.0) -> str:
    """Render `spec`, test it with `nginx -t` in the load balancer, and only then reload.

    A config that fails the test is never installed: the old one keeps serving. Returns the
    new config's generation once the load balancer answers with it.
    """
    view = nginx_view(spec)
    config = render_nginx_conf(view)
    engine.put_file(lab.lb, NEXT_CONF, config)
    code, output = engine.exec(lab.lb, ["nginx", "-t", "-q", "-c", NEXT_CONF])
    if code != 0:
        engine.exec(lab.lb, ["rm", "-f", NEXT_CONF])
        raise InvalidInput("the new nginx config failed `nginx -t`; the old one keeps serving", detail=output)
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
    _wait_for_generation(spec, view.generation, timeout)
    return view.generation


def _wait_for_generation(spec: LabSpec, generation: str, timeout: float) -> None:
    """A reload is asynchronous: wait until a fresh connection is answered by the new workers."""
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        try:
            # A new connection each time: keep-alive ones may still belong to old workers.
            seen = requests.get(spec.url, timeout=2, headers={"Connection": "close"}).headers.get(
                "X-Lab-Config", ""
            )
        except requests.RequestException:
            seen = ""
        if seen == generation:
            return
        time.sleep(0.02)
    raise LabError(
        f"the load balancer did not pick up the new config in {timeout:.0f} s (still {seen or 'silent'})"
    )


def configure(engine: Engine, name: str, **changes: object) -> LabSpec:
    """Change a running lab's balancing (method, weights, ...) with a tested, graceful reload."""
    lab = find_running(engine, name)
    spec = lab.spec.with_changes(**changes)
    if spec == lab.spec:
        return spec
    apply_config(engine, lab, spec)
    return spec
