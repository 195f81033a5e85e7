"""The lab's load balancer: one nginx container, and the only code that writes its config.

`LoadBalancer` writes nginx.conf and the stored spec (/etc/nginx/lab-spec.json) together, both
from the same spec, so what nginx balances with and what `lab verify` expects can never
disagree. A change is rendered, tested with `nginx -t` next to the config that serves, and only
then moved into place and reloaded; a config that fails its test never replaces a good one. It
also waits for the new workers, drains the old ones, and reads its restart count and pid.

The upstream is whatever members a replica backend hands it (lab.replicas): names (or
addresses) nginx can reach on the backend network, each with its slot, whose weight and backup
flag the spec gives.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import requests

from lab import labels
from lab.engine import ContainerEngine, ContainerInfo, ContainerRequest, ContainerState, Endpoint
from lab.errors import Conflict, InvalidInput, LabError, NotReady
from lab.progress import ProgressFn
from lab.render import Server, nginx_view, render_nginx_conf
from lab.spec import LabSpec, probe_host

if TYPE_CHECKING:
    from lab.replicas import Member

NGINX_CONF = "/etc/nginx/nginx.conf"
SPEC_FILE = "/etc/nginx/lab-spec.json"
# The container starts before nginx may: nginx resolves the replicas' names as it starts, and those
# resolve only once the replicas run. So its first process waits for this file, then becomes nginx.
GO_FILE = "/etc/nginx/lab-start"
HELD_START = ["sh", "-c", f"until [ -e {GO_FILE} ]; do sleep 0.01; done; exec nginx -g 'daemon off;'"]
DNS_PATIENCE = 5.0  # seconds `apply` waits for names Docker's DNS does not resolve yet
_NEXT = ".next"  # a change is written beside what serves, tested, then moved into place
# Two writers may change one load balancer at once (a swarm lab's watcher and a `lab` command):
# each writes its own .next files, and the swap (compare, move, reload) happens under this lock.
APPLY_LOCK = "/run/lab-apply.lock"
CONFLICT = 3  # the swap's exit status when the spec changed under the caller
# What nginx needs once every capability is dropped: bind port 80 (engines that keep ports below
# 1024 privileged), switch to an unprivileged user, and hand its temp directories to that user
# (the official image creates them at start).
NGINX_CAPS = ("NET_BIND_SERVICE", "SETUID", "SETGID", "CHOWN")
_PORT_TAKEN = ("already allocated", "address already in use")
# nginx's workers by their command line: those taking new connections, then the old ones a reload
# left finishing their requests. "[ ]" keeps the shell's own command line from matching.
_WORKERS = (
    "grep -l 'worker[ ]process' /proc/[0-9]*/cmdline 2>/dev/null; echo --; "
    "grep -l 'shutting[ ]down' /proc/[0-9]*/cmdline 2>/dev/null"
)


# A `server` line of a rendered config (lab.livestate reads them too, but loads the statistics).
_SERVER_LINE = re.compile(r"^\s*server\s+([A-Za-z0-9_.:-]+?):(\d+)\b", re.MULTILINE)


def upstream_hosts(config: str) -> list[str]:
    """The hosts of the `server` lines of a rendered config, in order (what nginx balances over)."""
    return [m.group(1) for m in _SERVER_LINE.finditer(config)]


_GENERATION = re.compile(r"add_header\s+X-Lab-Config\s+(\S+)")


def config_generation(config: str) -> str:
    """The generation a rendered config answers with (its X-Lab-Config header); "" if none."""
    found = _GENERATION.search(config)
    return found.group(1) if found else ""


def spec_json(spec: LabSpec) -> str:
    """The spec as stored: a label on the container (as created) and a file in it (as now)."""
    return json.dumps(spec.as_dict(), sort_keys=True)


def lb_request(spec: LabSpec, image: str, network: str) -> ContainerRequest:
    """The load balancer of `spec` on `network`: the only container that publishes a port."""
    return ContainerRequest(
        name=spec.lb_name,
        hostname=spec.lb_name,
        image=image,
        labels=labels.for_lab(spec.name, labels.ROLE_LB, spec=spec_json(spec)),
        network=network,
        ports={"80/tcp": (spec.bind, spec.port)},
        cap_add=NGINX_CAPS,
        restart="unless-stopped",
    )


def servers(members: Sequence[Member]) -> list[Server]:
    """The upstream's (host, slot, what) for `members`: a task on a node says so."""
    return [
        (m.host, m.slot, f"task {m.name} on node {m.node}" if m.node else f"container {m.host}")
        for m in members
    ]


def spec_digest(spec: LabSpec) -> str:
    """What `apply(..., based_on=spec)` compares the stored spec with."""
    return hashlib.sha256(spec_json(spec).encode()).hexdigest()


def swap_script(moves: Sequence[tuple[str, str]], expected_digest: str | None) -> str:
    """The shell script that puts tested files in place and reloads, under the apply lock: with
    `expected_digest`, only if the stored spec is still the one the change was based on."""
    check = (
        f'[ "$(sha256sum < {SPEC_FILE} | cut -d" " -f1)" = "{expected_digest}" ] || exit {CONFLICT}; '
        if expected_digest
        else ""
    )
    swap = " && ".join(f"mv {source} {target}" for source, target in moves)
    script = f"{check}{swap} && nginx -s reload"
    return (
        f"if command -v flock >/dev/null; then exec flock {APPLY_LOCK} sh -c '{script}'; "
        f"else sh -c '{script}'; fi"
    )


def render(spec: LabSpec, members: Sequence[Member] | None = None) -> tuple[str, str]:
    """The config for `spec` and `members` (default: every slot of the spec), and its generation."""
    view = nginx_view(spec, servers(members) if members is not None else None)
    return render_nginx_conf(view), view.generation


def only_unresolved(output: str) -> bool:
    """Whether every error nginx -t reported is an upstream name that does not resolve (yet)."""
    errors = [line for line in output.splitlines() if "[emerg]" in line]
    return bool(errors) and all("host not found" in line for line in errors)


class LoadBalancer:
    """A lab's nginx container and what it serves."""

    def __init__(self, engine: ContainerEngine, container: ContainerInfo) -> None:
        self.engine = engine
        self.container = container

    @property
    def name(self) -> str:
        return self.container.name

    # Finding and making one ----------------------------------------------------------------
    @classmethod
    def find(cls, engine: ContainerEngine, lab: str) -> LoadBalancer | None:
        found = engine.containers(labels.lab_filter(lab, labels.ROLE_LB))
        return cls(engine, found[0]) if found else None

    @classmethod
    def create(
        cls,
        engine: ContainerEngine,
        spec: LabSpec,
        members: Sequence[Member] | None = None,
        *,
        image: str,
        network: str,
        config: str | None = None,
    ) -> LoadBalancer:
        """Create (not start) the load balancer on `network`, publishing the spec's port, with its
        config for `members` (default: every slot of the spec) and its spec in place. Then: `start`
        (the container), `join` (the network the members are on), and `release` once they run,
        which lets nginx start; nginx tests the config as it starts, and `wait_serving` reports a
        config it refused."""
        container = engine.create_container(replace(lb_request(spec, image, network), command=HELD_START))
        engine.put_files(
            container, {NGINX_CONF: config or render(spec, members)[0], SPEC_FILE: spec_json(spec)}
        )
        return cls(engine, container)

    def join(self, network: str) -> None:
        """Attach it to `network` (where the replicas are), running or not."""
        self.engine.attach(network, self.container)
        self.container = replace(self.container, networks={**self.container.networks, network: Endpoint()})

    @staticmethod
    def test_config(engine: ContainerEngine, spec: LabSpec, image: str, config: str) -> None:
        """`nginx -t` a config in a throwaway container of the load balancer's image (`lab compose`
        tests the config it writes): the replicas' names are mapped to a placeholder address, as
        nginx resolves upstream host names while testing."""
        req = ContainerRequest(
            name=f"{spec.name}-config-check-{int(time.time() * 1000) % 100000}",
            image=image,
            labels=labels.for_lab(spec.name, labels.ROLE_CHECK),
            network="",
            network_disabled=True,
            command=["nginx", "-t"],
            extra_hosts={name: "127.0.0.1" for name in spec.replica_names()},
            cap_add=NGINX_CAPS,
        )
        container = engine.create_container(req)
        try:
            engine.put_files(container, {NGINX_CONF: config})
            engine.start(container)
            if engine.wait_exit(container, timeout=30) != 0:
                raise LabError(
                    "the rendered nginx config failed `nginx -t`", detail=engine.logs(container, tail=20)
                )
        finally:
            engine.remove_containers([container])

    def prime(self, spec: LabSpec, members: Sequence[Member]) -> None:
        """Before its first start: the config for `members`, if it is not the one it was created with
        (a swarm's tasks are named by address, known only once they run). nginx tests it as it starts."""
        config = render(spec, members)[0]
        if config != render(spec)[0]:
            self.engine.put_files(self.container, {NGINX_CONF: config, SPEC_FILE: spec_json(spec)})

    def start(self, spec: LabSpec, progress: ProgressFn) -> None:
        """Start the container (networks, the published port); nginx waits for `release`."""
        progress("starting the load balancer", None)
        try:
            self.engine.start(self.container)
        except LabError as exc:
            if any(marker in exc.message for marker in _PORT_TAKEN):
                raise InvalidInput(
                    f"port {spec.port} on {spec.bind} is already in use; choose another with --port"
                ) from exc
            raise

    def release(self) -> None:
        """Let nginx start: every name its upstream gives must resolve by now."""
        self.engine.put_files(self.container, {GO_FILE: ""})

    # What it serves --------------------------------------------------------------------------
    def spec(self) -> LabSpec:
        """The spec it serves now: its spec file, else the label it was created with."""
        try:
            return LabSpec.from_dict(json.loads(self.engine.read_file(self.container, SPEC_FILE)))
        except Exception:  # noqa: BLE001 - no file (or a stopped container): the creation label still tells
            return LabSpec.from_dict(json.loads(self.container.labels[labels.SPEC]))

    def config(self) -> str:
        return self.engine.read_file(self.container, NGINX_CONF)

    def state(self) -> ContainerState:
        return self.engine.state(self.container)

    @property
    def restart_count(self) -> int:
        return self.state().restart_count

    @property
    def pid(self) -> int:
        return self.state().pid

    def logs(self, tail: int = 40) -> str:
        return self.engine.logs(self.container, tail=tail)

    def log_lines(self, since: float) -> Iterator[str]:
        """Its access log (and errors) since a UNIX time."""
        return self.engine.log_lines(self.container, since)

    # Changing what it serves -------------------------------------------------------------------
    def apply(
        self,
        spec: LabSpec,
        members: Sequence[Member],
        *,
        timeout: float = 10.0,
        based_on: LabSpec | None = None,
    ) -> str:
        """Balance over `members` as `spec` says: render, `nginx -t`, then a graceful reload.

        The config and the spec are written side by side, tested, and moved into place together;
        a config that fails the test is never installed (the old one keeps serving). With
        `based_on`, the change is made only if the stored spec is still that one, else Conflict
        (nothing changed): a writer that read the spec earlier never undoes another's change.
        Returns the new config's generation once fresh workers serve it.
        """
        config, generation = render(spec, members)
        suffix = f"{_NEXT}-{secrets.token_hex(4)}"  # each writer its own files
        conf_next, spec_next = NGINX_CONF + suffix, SPEC_FILE + suffix
        self.engine.put_files(self.container, {conf_next: config, spec_next: spec_json(spec)})
        # One exec tests the config and lists the workers the reload will replace. A name that does
        # not resolve is no error of the config while Docker's DNS answers late (a busy engine): the
        # test is repeated for a few seconds, as `up` waits such names out.
        deadline = time.monotonic() + DNS_PATIENCE
        while True:
            code, output = self.engine.exec(
                self.container,
                ["sh", "-c", f"nginx -t -q -c {conf_next} 2>&1 || exit 1; echo ==; {_WORKERS}; exit 0"],
            )
            if code == 0 or not only_unresolved(output) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        if code != 0:
            self.engine.exec(self.container, ["rm", "-f", conf_next, spec_next])
            raise InvalidInput(
                "the new nginx config failed `nginx -t`; the old one keeps serving", detail=output
            )
        old = _active(output.partition("==")[2])
        expected = spec_digest(based_on) if based_on is not None else None
        script = swap_script([(conf_next, NGINX_CONF), (spec_next, SPEC_FILE)], expected)
        code, output = self.engine.exec(self.container, ["sh", "-c", script])
        if code == CONFLICT and expected is not None:
            self.engine.exec(self.container, ["rm", "-f", conf_next, spec_next])
            raise Conflict(f"the spec of {self.name} changed meanwhile; nothing was changed")
        if code != 0:
            raise LabError("nginx did not accept the reload signal", detail=output)
        self._wait_for_new_workers(old, timeout)
        return generation

    def upstream(self) -> list[str]:
        """The hosts its config balances over now."""
        return upstream_hosts(self.config())

    def answers_with(self, spec: LabSpec, generation: str) -> bool:
        """Whether a new connection to it on loopback is answered by the config of `generation`
        (its workers reload a moment after the config file changed)."""
        try:
            response = requests.get(spec.url, timeout=2, headers={"Connection": "close"})
        except requests.RequestException:
            return False
        return response.headers.get("X-Lab-Config", "") == generation

    def active_workers(self) -> set[str]:
        """The /proc entries of nginx workers that take new connections (not the old, draining ones)."""
        return _active(self.engine.exec(self.container, ["sh", "-c", _WORKERS])[1])

    def _wait_for_new_workers(self, old: set[str], timeout: float) -> None:
        """`nginx -s reload` only signals the master: wait until fresh workers have replaced the old."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.active_workers()
            if current and not current & old:
                return
            time.sleep(0.02)
        raise LabError(f"nginx did not start new workers within {timeout:.0f} s of the reload")

    def drain(self, *, timeout: float = 15.0) -> None:
        """Wait until the old workers (after a reload) have finished their requests and exited."""
        count = "grep -l 'shutting[ ]down' /proc/[0-9]*/cmdline 2>/dev/null | wc -l"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code, output = self.engine.exec(self.container, ["sh", "-c", count])
            if code != 0 or output.strip() in ("", "0"):
                return
            time.sleep(0.05)

    # Waiting for it --------------------------------------------------------------------------
    def raise_if_config_refused(self) -> None:
        self._status_unless_config_refused()

    def _status_unless_config_refused(self) -> str:
        """Its state, unless nginx refused its config: nginx tests its config as it starts and exits
        on an error (its restart policy then tries again and again), which is said at once, with its
        log. Names that do not resolve yet are no error of the config (Docker's DNS may answer late
        on a busy engine): those are waited out."""
        state = self.state().status
        if state not in ("restarting", "exited", "dead"):
            return state
        log = self.logs(tail=20)
        refused = [line for line in log.splitlines() if "[emerg]" in line and "host not found" not in line]
        if refused:
            raise LabError(
                "the rendered nginx config failed `nginx -t` (nginx refused it as it started)", detail=log
            )
        return state

    def wait_serving(
        self, spec: LabSpec, names: Sequence[str], progress: ProgressFn, *, deadline: float
    ) -> None:
        """Poll it on loopback until every replica in `names` has answered through it.

        Bounded twice: by `deadline`, and by a budget of answered requests (refused connections
        while nginx starts cost nothing and are retried quickly; the engine is asked how the load
        balancer is at most every quarter second meanwhile).
        """
        wanted = set(names)
        seen: set[str] = set()
        last_problem = "no answer yet"
        url = f"http://{probe_host(spec.bind)}:{spec.port}/"
        budget = 50 + 20 * len(wanted)  # requests that reached nginx
        next_look = time.monotonic()
        with requests.Session() as session:
            while budget > 0:
                try:
                    response = session.get(url, timeout=2)
                except requests.RequestException as exc:
                    last_problem = type(exc).__name__
                    time.sleep(0.01)
                else:
                    budget -= 1
                    served_by = response.headers.get("X-Served-By", "")
                    if response.status_code == 200 and served_by in wanted:
                        seen.add(served_by)
                        progress(
                            f"{len(seen)}/{len(wanted)} replicas answered through {url}",
                            len(seen) / len(wanted),
                        )
                        if seen == wanted:
                            return
                        continue  # it serves: no need to ask the engine how it is
                    last_problem = f"HTTP {response.status_code} from {served_by or 'the load balancer'}"
                if time.monotonic() > deadline:
                    break
                if time.monotonic() < next_look:
                    continue
                next_look = time.monotonic() + 0.25
                status = self._status_unless_config_refused()
                # nginx exited at start and its restart policy tries again: seen when Docker's DNS did
                # not resolve the replicas' names for a few seconds (a busy engine, or one entering or
                # leaving swarm mode). Wait for it until the deadline, sending nothing meanwhile.
                while status == "restarting" and time.monotonic() < deadline:
                    last_problem = "the load balancer keeps restarting"
                    time.sleep(0.25)
                    status = self._status_unless_config_refused()
                if status not in ("running", "created"):
                    break
        missing = sorted(wanted - seen)
        raise NotReady(
            f"{len(missing)} replica(s) never answered through {url} ({last_problem}): {', '.join(missing[:5])}",
            detail=self.logs(),
        )


def _active(listing: str) -> set[str]:
    workers, _, draining = listing.partition("--")
    return set(workers.split()) - set(draining.split())
