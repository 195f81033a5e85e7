"""A small in-memory engine for the unit tests: it implements `lab.engine.ContainerEngine`.

Containers and networks live in dicts and are found by label filters; files written into a
container are kept, so a test reads back the nginx.conf and the spec the load balancer got.
`exec` understands the few commands lab runs inside containers (the HTTP probe, `nginx -t`, the
swap-and-reload, the worker listings) and nothing else. Knobs make things fail (`fail_start`,
`config_ok`, `unremovable`, ...) and counters check the rules the orchestrator must follow
(`races`: a network removed while a container was being created).
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
import tarfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lab.engine import (
    ContainerEngine,
    ContainerInfo,
    ContainerRequest,
    ContainerState,
    Endpoint,
    Filters,
    NetworkInfo,
    PathStat,
    ServiceInfo,
    TaskInfo,
)
from lab.errors import LabError, NameInUse
from lab.loadbalancer import SPEC_FILE
from lab.progress import ProgressFn


@dataclass
class FakeContainer:
    id: str
    name: str
    labels: dict[str, str]
    image: str
    status: str = "created"
    networks: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    command: list[str] | None = None
    request: ContainerRequest | None = None
    restart_count: int = 0
    workers: int = 1  # nginx: the generation of its workers (a reload starts the next)

    def info(self) -> ContainerInfo:
        addresses = {n: Endpoint(f"10.0.0.{int(self.id.split('-')[-1]) % 250 + 2}" if self.status == "running" else "")
                     for n in self.networks}  # fmt: skip
        return ContainerInfo(self.id, self.name, dict(self.labels), self.status, self.image, addresses)


@dataclass
class FakeNetwork:
    id: str
    name: str
    labels: dict[str, str]
    internal: bool
    phantom: bool = False  # the engine counts an endpoint on it that nothing is behind

    def info(self) -> NetworkInfo:
        return NetworkInfo(self.id, self.name, dict(self.labels), self.internal)


def _matches(found: Mapping[str, str], filters: Filters) -> bool:
    for wanted in filters.get("label", []):
        key, _, value = wanted.partition("=")
        if key not in found or (value and found[key] != value):
            return False
    return True


class FakeEngine:
    """See the module's docstring; every public method is a `ContainerEngine` verb."""

    def __init__(
        self, *, fail_start: Iterable[str] = (), log_ready: bool = True, slow_create: float = 0.0
    ) -> None:
        self.by_name: dict[str, FakeContainer] = {}
        self.networks_by_name: dict[str, FakeNetwork] = {}
        self.fail_start = set(fail_start)  # container names that exit while starting (once each)
        self.log_ready = log_ready
        self.slow_create = slow_create
        self.hang_logs = False  # wait_for_log blocks until the container is killed
        self.unremovable: set[str] = set()  # container names the engine refuses to remove
        self.config_ok = True  # what `nginx -t` says
        self.unresolved_tests = 0  # how many `nginx -t` runs meet a name Docker's DNS does not answer yet
        self.images: set[str] = set()  # images that exist (besides those `image_exists_always` covers)
        self.image_exists_always = True
        self.built: list[str] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.races = 0
        self.killed: list[str] = []
        self.started: set[str] = set()
        self.log_waits_timed_out = 0
        self.history: list[str] = []  # "remove container X", "remove network Y", ..., in order
        self.directories = {
            "/",
            "/usr",
            "/usr/local",
            "/usr/local/apache2",
            "/usr/local/apache2/htdocs",
            "/tmp",
        }
        self.uploads: list[tuple[str, str, list[str]]] = []  # (container, directory, member names)
        self.commits: list[dict[str, object]] = []
        self.labels_of: dict[str, dict[str, str]] = {}  # image -> its labels
        self.registry: dict[str, dict[str, str]] = {}  # repository:tag a registry serves -> its labels
        self.pulled: list[str] = []
        self._ids = 0

    # Finding things ------------------------------------------------------------------------------
    def _by_id(self, container: ContainerInfo | str) -> FakeContainer | None:
        wanted = container if isinstance(container, str) else container.id
        return next((c for c in self.by_name.values() if c.id == wanted), None)

    def _get(self, container: ContainerInfo) -> FakeContainer:
        found = self._by_id(container)
        if found is None:
            raise LabError(f"the Docker engine refused: no such container: {container.name}")
        return found

    def containers(self, filters: Filters) -> list[ContainerInfo]:
        with self.lock:
            return [c.info() for c in self.by_name.values() if _matches(c.labels, filters)]

    def inspect(self, container: ContainerInfo) -> ContainerInfo | None:
        found = self._by_id(container)
        return found.info() if found else None

    def state(self, container: ContainerInfo) -> ContainerState:
        found = self._by_id(container)
        if found is None:
            return ContainerState("gone")
        pid = 4000 + int(found.id.split("-")[-1]) if found.status == "running" else 0
        return ContainerState(found.status, pid, "2024-01-01T00:00:00Z", found.restart_count, 0)

    def container_exists(self, container_id: str) -> bool:
        return self._by_id(container_id) is not None

    def networks(self, filters: Filters) -> list[NetworkInfo]:
        return [n.info() for n in self.networks_by_name.values() if _matches(n.labels, filters)]

    def network_containers(self, network: NetworkInfo) -> dict[str, str]:
        with self.lock:
            return {c.id: c.name for c in self.by_name.values() if network.name in c.networks}

    # Making and changing things ------------------------------------------------------------------
    def create_network(self, name: str, labels: dict[str, str], *, internal: bool) -> NetworkInfo:
        if name in self.networks_by_name:
            raise NameInUse(f"a network named {name} exists already")
        self.networks_by_name[name] = FakeNetwork(f"net-{name}", name, labels, internal)
        return self.networks_by_name[name].info()

    def create_container(self, req: ContainerRequest) -> ContainerInfo:
        with self.lock:
            self.in_flight += 1
        time.sleep(self.slow_create)
        with self.lock:
            self.in_flight -= 1
            if req.name in self.by_name:
                raise LabError(f"the Docker engine refused: the name {req.name} is in use")
            self._ids += 1
            networks = [] if req.network_disabled or not req.network else [req.network]
            container = FakeContainer(f"id-{self._ids}", req.name, dict(req.labels), req.image,
                                      networks=networks, command=req.command, request=req)  # fmt: skip
            self.by_name[req.name] = container
            return container.info()

    def start(self, container: ContainerInfo) -> None:
        found = self._get(container)
        found.status = "running"
        if self._refuses_config(found):
            found.status = "restarting"  # nginx exits at start, and its restart policy tries again
        self.started.add(found.name)

    def _refuses_config(self, container: FakeContainer) -> bool:
        return not self.config_ok and container.labels.get("lab.role") == "lb"

    def stop(self, container: ContainerInfo, timeout: int) -> None:
        found = self._by_id(container)
        if found is not None:
            found.status = "exited"
            self.history.append(f"stop {found.name}")

    def kill(self, containers: Iterable[ContainerInfo]) -> None:
        for container in containers:
            found = self._by_id(container)
            if found is None or found.status != "running":
                continue
            with self.lock:
                self.killed.append(found.name)
                self.history.append(f"kill {found.name}")
            found.status = "exited"

    def pause(self, container: ContainerInfo) -> None:
        self._get(container).status = "paused"

    def unpause(self, container: ContainerInfo) -> None:
        self._get(container).status = "running"

    def attach(self, network: str, container: ContainerInfo, aliases: list[str] | None = None) -> None:
        self._get(container).networks.append(network)

    def detach(self, network: str, container: ContainerInfo) -> None:
        self._get(container).networks.remove(network)

    def release_endpoints(self, container: ContainerInfo) -> None:
        with self.lock:
            self.history.append(f"release {container.name}")
            found = self._by_id(container)
            if found is not None:
                found.networks = []

    def put_files(self, container: ContainerInfo, files: Mapping[str, str]) -> None:
        self._get(container).files.update(files)

    def stat_path(self, container: ContainerInfo, path: str) -> PathStat | None:
        found = self._get(container)
        if path in self.directories:
            return PathStat(posixpath.basename(path) or "/", 4096, True)
        if path in found.files:
            return PathStat(posixpath.basename(path), len(found.files[path]), False)
        return None

    def put_archive(self, container: ContainerInfo, directory: str, data: bytes) -> None:
        found = self._get(container)
        if directory not in self.directories:
            raise LabError(f"{directory} does not exist in {container.name}")
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = tar.getmembers()
            for member in members:
                extracted = tar.extractfile(member) if member.isfile() else None
                if extracted is not None:
                    found.files[posixpath.join(directory, member.name)] = extracted.read().decode()
        self.uploads.append((found.name, directory, [m.name for m in members]))

    def commit(
        self,
        container: ContainerInfo,
        repository: str,
        tag: str,
        *,
        labels: Mapping[str, str],
        changes: list[str],
        message: str,
    ) -> str:
        found = self._get(container)
        ref = f"{repository}:{tag}"
        self.images.add(ref)
        self.labels_of[ref] = dict(labels)
        self.commits.append({"container": found.name, "ref": ref, "labels": dict(labels), "changes": changes})
        return f"sha256:{ref}"

    def read_file(self, container: ContainerInfo, path: str) -> str:
        files = self._get(container).files
        if path not in files:
            raise LabError(f"the Docker engine refused: no such file {path}")
        return files[path]

    def exec(self, container: ContainerInfo, command: list[str]) -> tuple[int, str]:
        found = self._by_id(container)
        if found is None or found.status != "running":
            return 1, ""
        text = " ".join(command)
        if command[0] == "bash":  # the HTTP probe
            return 0, "HTTP/1.1 200 OK"
        if command[0] == "rm":
            for path in command[2:]:
                found.files.pop(path, None)
            return 0, ""
        if "nginx -t" in text:
            if self.unresolved_tests:
                self.unresolved_tests -= 1
                return (
                    1,
                    'nginx: [emerg] host not found in upstream "x-web-1:80" in /etc/nginx/nginx.conf.next:40',
                )
            if not self.config_ok:
                return 1, "nginx: [emerg] invalid config (fake)"
            # As the shell does: the script's status is its last command's (grep finding nothing: 1).
            return (0 if text.rstrip().endswith("exit 0") else 1), f"==\n{self._workers(found)}"
        if "nginx -s reload" in text:
            script = text.split("'")[1]  # the swap, as the lock runs it (lab.loadbalancer.swap_script)
            check = re.search(r'= "([0-9a-f]{64})" \] \|\| exit (\d+)', script)
            if check:
                stored = hashlib.sha256(found.files.get(SPEC_FILE, "").encode()).hexdigest()
                if stored != check.group(1):
                    return int(check.group(2)), ""
            for source, target in re.findall(r"mv (\S+) (\S+)", script):
                found.files[target] = found.files.pop(source)
            found.workers += 1
            self.history.append(f"reload {found.name}")
            return 0, ""
        if "wc -l" in text:  # old workers still draining
            return 0, "0"
        if "worker[ ]process" in text:
            return 0, self._workers(found)
        raise AssertionError(f"the fake engine does not know {command}")

    @staticmethod
    def _workers(container: FakeContainer) -> str:
        return f"/proc/{container.workers}00/cmdline\n--\n"

    # Waiting and reading ------------------------------------------------------------------------------
    def wait_for_log(self, container: ContainerInfo, marker: str) -> bool:
        found = self._get(container)
        if found.name in self.fail_start:
            self.fail_start.discard(found.name)
            found.status = "exited"
            return False
        deadline = (
            time.monotonic() + 5
        )  # bounded, so a broken orchestrator fails the test instead of hanging it
        while self.hang_logs and found.status == "running":
            if time.monotonic() > deadline:
                self.log_waits_timed_out += 1
                break
            time.sleep(0.01)
        return self.log_ready and found.status == "running"

    def wait_exit(self, container: ContainerInfo, timeout: float) -> int:
        found = self._get(container)
        found.status = "exited"
        return 0 if self.config_ok else 1

    def logs(self, container: ContainerInfo, tail: int = 40) -> str:
        found = self._by_id(container)
        if found is not None and self._refuses_config(found):
            return 'nginx: [emerg] invalid number of arguments in "keepalive" directive (fake)'
        return f"log of {container.name}"

    def log_lines(self, container: ContainerInfo, since: float) -> Iterator[str]:
        return iter(())

    # Removing ---------------------------------------------------------------------------------------
    def remove_containers(self, containers: Iterable[ContainerInfo]) -> int:
        with self.lock:
            removed = 0
            for container in list(containers):
                found = self._by_id(container)
                if found is None or found.name in self.unremovable:
                    continue
                del self.by_name[found.name]
                self.history.append(f"remove container {found.name}")
                removed += 1
            return removed

    def wait_gone(self, filters: Filters, *, timeout: float = 30.0) -> list[ContainerInfo]:
        return self.containers(filters)

    def remove_network(self, network: NetworkInfo, *, patience: float = 0.0) -> str:
        with self.lock:
            self.races += self.in_flight > 0
            self.history.append(f"remove network {network.name}")
        found = self.networks_by_name.get(network.name)
        if found is None:
            return ""
        if found.phantom or self.network_containers(network):
            return f"error while removing network: network {network.name} id 0123 has active endpoints"
        del self.networks_by_name[network.name]
        return ""

    def remove_volumes(self, filters: Filters) -> int:
        return 0

    # Services: this fake engine is in no swarm ---------------------------------------------------------
    def services(self, filters: Filters | None = None) -> list[ServiceInfo]:
        return []

    def service_tasks(self, service: str, *, desired: str | None = "running") -> list[TaskInfo]:
        return []

    def remove_service(self, service: str) -> bool:
        return False

    # Images ------------------------------------------------------------------------------------------
    def image_exists(self, ref: str) -> bool:
        return self.image_exists_always or ref in self.images

    def image_id(self, ref: str) -> str:
        return f"sha256:{ref}"

    def image_tags(self) -> set[str]:
        from lab.images import HTTPD, NGINX

        return {HTTPD.tag, NGINX.tag, *self.images}

    def image_labels(self, ref: str) -> dict[str, str]:
        return dict(self.labels_of.get(ref, {}))

    def build_image(self, context: Path, tag: str, **_: object) -> str:
        self.built.append(tag)
        self.images.add(tag)
        return f"sha256:{tag}"

    def import_image(self, tarball: Path, repository: str, tag: str, changes: list[str]) -> None:
        self.images.add(f"{repository}:{tag}")

    def pull_image(self, repository: str, tag: str, on_progress: ProgressFn | None = None) -> str:
        ref = f"{repository}:{tag}"
        if ref not in self.registry:
            raise LabError(f"pull of {ref} failed: manifest for {ref} not found: manifest unknown")
        self.pulled.append(ref)
        self.images.add(ref)
        self.labels_of[ref] = dict(self.registry[ref])
        return "sha256:feed"

    def remove_image(self, ref: str) -> bool:
        if ref not in self.images:
            return False
        self.images.discard(ref)
        return True

    # For the tests -----------------------------------------------------------------------------------
    def container(self, name: str) -> FakeContainer:
        return self.by_name[name]


def _conforms(engine: FakeEngine) -> ContainerEngine:
    return engine  # mypy checks that the fake implements the interface
