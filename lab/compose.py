"""`lab compose`: the lab `lab up` would build, written as a Compose file and its nginx.conf.

The containers are described by the same requests `lab up` creates them from, so the file has the
same images, names, labels, capabilities and limits; `docker compose up -d --wait` then runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab import labels
from lab.engine import ContainerEngine as Engine
from lab.images import BaseImages, ensure_base_images
from lab.loadbalancer import NGINX_CONF, LoadBalancer, lb_request, render
from lab.progress import ProgressFn, quiet
from lab.render import ComposeNetwork, ComposeService, ComposeView, render_compose
from lab.replicas import SiteImage, replica_request
from lab.site import site_dockerfile, site_image_tag, site_version
from lab.spec import DEFAULT_SITE, LabSpec

# The probe `lab status` runs inside each container (lab/replicas.py), made to fail unless the answer
# is 2xx or 3xx. Through the load balancer, `/` is answered only once a replica is reachable.
HEALTH_PROBE = (
    "exec 3<>/dev/tcp/127.0.0.1/80 && "
    "printf 'GET / HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && "
    "read -r _ code _ <&3 && case $code in [23]??) exit 0;; *) exit 1;; esac"
)
BACKEND, FRONTEND = "backend", "frontend"  # network keys inside the file


@dataclass(frozen=True)
class ComposeFiles:
    compose_file: Path
    nginx_conf: Path


def nginx_conf_path(compose_file: Path, spec: LabSpec) -> Path:
    """The rendered nginx config lives beside the Compose file, named after the lab."""
    return compose_file.with_name(f"{spec.name}.nginx.conf")


def command_line(spec: LabSpec, output: Path) -> str:
    """The `lab compose` command that writes this file again (the header says it)."""
    parts = ["lab compose", f"--name {spec.name}", f"--replicas {spec.replicas}", f"--port {spec.port}"]
    if spec.bind != "127.0.0.1":
        parts.append(f"--bind {spec.bind}")
    if spec.site != DEFAULT_SITE:
        parts.append(f"--site {spec.site}")
    if spec.algorithm != "round_robin":
        parts.append(f"--algorithm {spec.algorithm}")
    if spec.weights:
        parts.append(f"--weights {','.join(map(str, spec.weights))}")
    return " ".join([*parts, f"-o {output.name}"])


def compose_view(
    spec: LabSpec, base: BaseImages, version: str, *, conf_file: str, command: str
) -> ComposeView:
    """Decide what the Compose file says (pure: images and version already resolved)."""
    image = site_image_tag(version)
    # Compose creates the networks itself, under the names `lab up` gives when they are free.
    site_image = SiteImage(image, version)
    replicas = [replica_request(spec, i, i, site_image, spec.backend_network) for i in spec.indices()]
    lb = lb_request(spec, base.nginx, spec.frontend_network)
    replica_services = tuple(
        ComposeService(
            service=f"web-{i}",
            container=req.name,
            comment=f"replica {i}: serves the site as {req.name}",
            image=req.image,
            labels=req.labels,
            networks=(BACKEND,),
            cap_add=req.cap_add,
            mem_limit=req.mem_limit,
            pids_limit=req.pids_limit,
            healthcheck=HEALTH_PROBE,
        )
        for i, req in zip(spec.indices(), replicas, strict=True)
    )
    lb_service = ComposeService(
        service="lb",
        container=lb.name,
        comment=f"the load balancer: nginx on both networks, published on {spec.bind}:{spec.port} only",
        image=lb.image,
        labels=lb.labels,
        networks=(FRONTEND, BACKEND),
        cap_add=lb.cap_add,
        mem_limit=lb.mem_limit,
        pids_limit=lb.pids_limit,
        healthcheck=HEALTH_PROBE,
        depends_on=tuple(s.service for s in replica_services),
        ports=((spec.bind, spec.port, 80),),
        volumes=(f"./{conf_file}:{NGINX_CONF}:ro",),
        restart=lb.restart,
    )
    return ComposeView(
        lab=spec.name,
        command=command,
        build_context=str(spec.site),
        dockerfile=str(site_dockerfile(spec.site)),
        build_args={"HTTPD_IMAGE": base.httpd, "SITE_VERSION": version},
        build_labels={labels.ROLE: labels.ROLE_SITE_IMAGE, labels.SITE_VERSION: version},
        replicas=replica_services,
        lb=lb_service,
        networks=(
            ComposeNetwork(
                BACKEND, spec.backend_network, True, labels.for_lab(spec.name, labels.ROLE_BACKEND_NET)
            ),
            ComposeNetwork(
                FRONTEND, spec.frontend_network, False, labels.for_lab(spec.name, labels.ROLE_FRONTEND_NET)
            ),
        ),
    )


def write_compose(engine: Engine, spec: LabSpec, output: Path, progress: ProgressFn = quiet) -> ComposeFiles:
    """Resolve the base images, test the nginx config with `nginx -t`, and write both files.

    Nothing else is created: Compose builds the site image when it is missing.
    """
    base = ensure_base_images(engine, progress=progress)
    version = site_version(spec.site, engine.image_id(base.httpd))
    config = render(spec)[0]  # names the replicas by their container names
    LoadBalancer.test_config(engine, spec, base.nginx, config)
    output = output.resolve()
    conf = nginx_conf_path(output, spec)
    view = compose_view(spec, base, version, conf_file=conf.name, command=command_line(spec, output))
    output.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(config)
    output.write_text(render_compose(view))
    return ComposeFiles(output, conf)
