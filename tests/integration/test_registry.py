"""The local registry on the real engine: push, pull back, images across down/up, and its failures."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator

import pytest

from lab import labels, registry
from lab.docker_ops import Engine
from lab.errors import RegistryError
from lab.images import ensure_base_images
from lab.pytest_plugin import LabHandle, free_port, unique_name
from lab.site import ensure_site_image
from lab.spec import DEFAULT_SITE

from .conftest import raw, run_lab


@pytest.fixture(scope="module")
def site_image(lab_engine: Engine) -> str:
    base = ensure_base_images(lab_engine)
    tag, _ = ensure_site_image(lab_engine, DEFAULT_SITE, base.httpd, lambda _s, _f: None)
    return tag


@pytest.fixture
def names(lab_engine: Engine) -> Iterator[registry.RegistryNames]:
    """A registry of this test's own (name and port); it and every tag pushed to it go afterwards."""
    names = registry.RegistryNames.of(unique_name("reg"))
    yield names
    found = registry.status(lab_engine, names.name)
    registry.down(lab_engine, names.name, purge=True)
    if found.port is not None:
        ours = registry.repository_at(found.port) + ":"
        for image in lab_engine.client.images.list(name=registry.repository_at(found.port)):
            for tag in image.tags:
                if tag.startswith(ours):  # never the image's other tags (lab/site:VERSION)
                    lab_engine.remove_image(tag)


def leftovers(engine: Engine, names: registry.RegistryNames) -> tuple[int, bool, bool]:
    containers = engine.containers(labels.role_filter(labels.ROLE_REGISTRY, registry=names.name))
    return len(containers), engine.volume_exists(names.volume), engine.network(names.network) is not None


def test_up_publishes_on_loopback_only_labelled_with_its_volume(
    lab_engine: Engine, names: registry.RegistryNames
) -> None:
    port = free_port()
    result = run_lab("registry", "up", "--port", str(port), "--registry", names.name)
    assert result.code == 0, result.stderr
    assert f"http://127.0.0.1:{port}" in result.stdout
    container = registry.find(lab_engine, names)
    assert container is not None and container.labels[labels.ROLE] == labels.ROLE_REGISTRY
    settings = raw(lab_engine, container)
    bindings = settings["HostConfig"]["PortBindings"]
    assert bindings == {"5000/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    mounts = {m["Name"]: m["Destination"] for m in settings["Mounts"] if m["Type"] == "volume"}
    assert mounts == {names.volume: registry.STORAGE}
    assert "lab.name" not in container.labels  # desk-wide: `lab down` of any lab never removes it
    assert registry.answers(port)
    again = run_lab("registry", "up", "--port", str(port), "--registry", names.name)
    assert again.code == 0 and registry.find(lab_engine, names).id == container.id  # type: ignore[union-attr]
    moved = run_lab("registry", "up", "--port", str(free_port()), "--registry", names.name)
    assert moved.code == 2 and "already runs on" in moved.stderr


def test_lab_push_then_pull_back_after_removing_the_local_tag(
    lab_engine: Engine, names: registry.RegistryNames, lab_cluster: Callable[..., LabHandle]
) -> None:
    lab = lab_cluster(replicas=1)
    port = free_port()
    registry.up(lab_engine, names.name, port)
    result = run_lab("push", "--name", lab.name, "--tag", "v1", "--registry", names.name, "--json")
    assert result.code == 0, result.stderr
    pushed = json.loads(result.stdout)
    reference = f"127.0.0.1:{port}/lab/site:v1"
    assert pushed["reference"] == reference and pushed["digest"].startswith("sha256:")
    assert registry.status(lab_engine, names.name).repositories == {"lab/site": ["v1"]}
    source_id = lab_engine.image_id(pushed["source"])
    assert lab_engine.remove_image(reference)
    assert not lab_engine.image_exists(reference)
    digest = lab_engine.pull_image(registry.repository_at(port), "v1")
    assert digest == pushed["digest"]
    assert lab_engine.image_id(reference) == source_id  # the same image came back


def test_images_survive_down_and_up_but_not_purge(
    lab_engine: Engine, names: registry.RegistryNames, site_image: str
) -> None:
    port = free_port()
    registry.up(lab_engine, names.name, port)
    pushed = registry.push_image(lab_engine, site_image, "keep", registry=names.name)
    down = run_lab("registry", "down", "--registry", names.name)
    assert down.code == 0 and "volume kept" in down.stdout
    assert leftovers(lab_engine, names) == (0, True, False)
    registry.up(lab_engine, names.name, port)
    assert registry.status(lab_engine, names.name).repositories == {"lab/site": ["keep"]}
    lab_engine.remove_image(pushed.reference)
    assert lab_engine.pull_image(registry.repository_at(port), "keep") == pushed.digest
    purged = run_lab("registry", "down", "--purge", "--registry", names.name)
    assert purged.code == 0 and "volume deleted" in purged.stdout
    assert leftovers(lab_engine, names) == (0, False, False)
    registry.up(lab_engine, names.name, port)
    assert registry.status(lab_engine, names.name).repositories == {}


def test_a_taken_port_is_one_line_and_leaves_nothing(
    lab_engine: Engine, names: registry.RegistryNames
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_lab("registry", "up", "--port", str(port), "--registry", names.name)
    assert result.code == 2
    assert (
        result.stderr.strip()
        == f"lab: error: port {port} on 127.0.0.1 is already in use; choose another with --port"
    )
    assert leftovers(lab_engine, names) == (0, False, False)


def test_push_to_a_registry_that_is_down_is_refused_and_writes_nothing(
    lab_engine: Engine, names: registry.RegistryNames, site_image: str
) -> None:
    port = free_port()
    registry.up(lab_engine, names.name, port)
    registry.down(lab_engine, names.name)
    with pytest.raises(RegistryError, match=f"the registry {names.name} is not running"):
        registry.push_image(lab_engine, site_image, "never", registry=names.name)
    assert not lab_engine.image_exists(f"127.0.0.1:{port}/lab/site:never")
    cli = run_lab("push", "--name", unique_name("nolab"), "--registry", names.name)
    assert cli.code == 1 and len(cli.stderr.strip().splitlines()) == 1 and "Traceback" not in cli.stderr


def test_a_push_the_registry_refuses_fails_with_its_message_and_takes_the_tag_back(
    lab_engine: Engine, names: registry.RegistryNames, site_image: str
) -> None:
    port = free_port()
    registry.up(lab_engine, names.name, port)
    container = registry.find(lab_engine, names)
    assert container is not None
    # The registry's own user makes its storage read-only: uploads fail inside the registry.
    code, output = lab_engine.exec(container, ["chmod", "0555", registry.STORAGE])
    assert code == 0, output
    with pytest.raises(RegistryError) as failure:
        registry.push_image(lab_engine, site_image, "refused", registry=names.name)
    message = failure.value.message
    assert message.startswith(f"push of 127.0.0.1:{port}/lab/site:refused failed: ")
    # What the engine relays of the registry's answer; the registry's log says why.
    assert message.endswith("received unexpected HTTP status: 500 Internal Server Error")
    assert "permission denied" in lab_engine.logs(container, tail=200)
    assert not lab_engine.image_exists(f"127.0.0.1:{port}/lab/site:refused")
    assert registry.catalog(port) == {}  # no half-written tag in the registry either
