"""The base images on a real engine: present, shaped like the official ones, and runnable locked down.

Each test checks the images labs use, whichever they are: the offline stand-ins, or the official
images where those are present. What is checked holds for both (the stand-ins are held to more).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container

from lab import labels
from lab.docker_ops import Engine
from lab.images import BaseImages, ensure_base_images
from lab.loadbalancer import NGINX_CAPS
from lab.pytest_plugin import unique_name
from lab.replicas import HTTPD_CAPS

pytestmark = pytest.mark.docker

# What the stand-ins need with --cap-drop ALL (port 80 needs no NET_BIND_SERVICE on
# Docker >= 20.10: it sets net.ipv4.ip_unprivileged_port_start=0 in containers). The official
# images get what labs give them (the official nginx chowns its temp directories at start).
STAND_IN_CAPS = ["SETUID", "SETGID"]


def caps(base: BaseImages, official: tuple[str, ...]) -> list[str]:
    return STAND_IN_CAPS if base.offline else list(official)


def base_image_role(base: BaseImages) -> str | None:
    """The `lab.role` label the image carries: the stand-ins say what they are, official ones don't."""
    return "base-image" if base.offline else None


SITE_DOCKERFILE = """\
ARG HTTPD_IMAGE=httpd:2.4
FROM ${HTTPD_IMAGE}
COPY ./ /usr/local/apache2/htdocs/
RUN echo 'Header always set X-Served-By "${HOSTNAME}"' >> conf/httpd.conf \\
 && echo 'LoadModule include_module modules/mod_include.so' >> conf/httpd.conf \\
 && httpd -t
"""


@pytest.fixture(scope="module")
def client(lab_engine: Engine) -> docker.DockerClient:
    return lab_engine.client


@pytest.fixture(scope="module")
def base(lab_engine: Engine) -> BaseImages:
    return ensure_base_images(lab_engine)  # builds the stand-ins once when missing; never removes them


@pytest.fixture
def started(client: docker.DockerClient) -> Iterator[list[Container]]:
    """Containers a test starts; all removed afterwards."""
    containers: list[Container] = []
    yield containers
    for container in containers:
        container.remove(force=True)


def run_locked_down(
    client: docker.DockerClient, image: str, started: list[Container], cap_add: list[str], **options: object
) -> int:
    """Start `image` with only the capabilities `cap_add`; return its port on 127.0.0.1."""
    container = client.containers.run(
        image,
        detach=True,
        cap_drop=["ALL"],
        cap_add=cap_add,
        security_opt=["no-new-privileges"],
        ports={"80/tcp": ("127.0.0.1", None)},
        labels=labels.for_lab(unique_name("img"), "image-test"),
        **options,
    )
    started.append(container)
    container.reload()
    return int(container.ports["80/tcp"][0]["HostPort"])


def get(port: int, timeout: float = 15) -> tuple[int, Message, str]:
    """GET / on 127.0.0.1:port, retrying until the server answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                return response.status, response.headers, response.read().decode()
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def stop_seconds(container: Container) -> float:
    began = time.monotonic()
    container.stop(timeout=10)
    return time.monotonic() - began


def test_ensure_is_a_no_op_once_the_images_exist(lab_engine: Engine, base: BaseImages) -> None:
    began = time.monotonic()
    again = ensure_base_images(lab_engine)
    assert time.monotonic() - began < 2
    assert again == base


def test_the_httpd_image_is_shaped_like_the_official_one(
    client: docker.DockerClient, base: BaseImages
) -> None:
    config = client.api.inspect_image(base.httpd)["Config"]
    assert config["Cmd"] == ["httpd-foreground"]
    assert config["StopSignal"] == "SIGWINCH"
    assert set(config["ExposedPorts"]) == {"80/tcp"}
    assert config["WorkingDir"] == "/usr/local/apache2"
    assert (config["Labels"] or {}).get("lab.role") == base_image_role(base)


def test_the_nginx_image_is_shaped_like_the_official_one(
    client: docker.DockerClient, base: BaseImages
) -> None:
    config = client.api.inspect_image(base.nginx)["Config"]
    assert config["Cmd"] == ["nginx", "-g", "daemon off;"]
    assert config["StopSignal"] == "SIGQUIT"
    assert set(config["ExposedPorts"]) == {"80/tcp"}
    assert (config["Labels"] or {}).get("lab.role") == base_image_role(base)


def test_a_site_built_on_the_httpd_image_serves_its_pages(
    client: docker.DockerClient, base: BaseImages, started: list[Container], tmp_path: Path
) -> None:
    (tmp_path / "Dockerfile").write_text(SITE_DOCKERFILE)
    (tmp_path / "index.html").write_text("<p>site page</p>\n")
    tag = f"lab-test/site:{unique_name('img')}"
    client.images.build(path=str(tmp_path), tag=tag, buildargs={"HTTPD_IMAGE": base.httpd}, rm=True)
    try:
        port = run_locked_down(client, tag, started, caps(base, HTTPD_CAPS), hostname="replica-7")
        status, headers, body = get(port)
        assert (status, body) == (200, "<p>site page</p>\n")
        assert headers["X-Served-By"] == "replica-7"
        container = started[0]
        assert stop_seconds(container) < 5  # SIGWINCH: a graceful stop, not the 10 s kill
        container.reload()
        assert container.attrs["State"]["ExitCode"] == 0
    finally:
        for container in started:
            container.remove(force=True)
        started.clear()
        client.images.remove(tag, force=True)


def test_the_nginx_image_serves_reloads_and_stops_locked_down(
    client: docker.DockerClient, base: BaseImages, started: list[Container]
) -> None:
    port = run_locked_down(client, base.nginx, started, caps(base, NGINX_CAPS))
    assert get(port)[0] == 200
    container = started[0]
    code, output = container.exec_run(["sh", "-c", "nginx -t"])
    assert code == 0, output.decode()
    code, output = container.exec_run(["nginx", "-s", "reload"])
    assert code == 0, output.decode()
    assert get(port)[0] == 200
    assert stop_seconds(container) < 5
    logs = container.logs().decode()
    assert "emerg" not in logs and "Operation not permitted" not in logs
