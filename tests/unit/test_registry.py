"""Registry names, tags, references and the push stream check (no Docker)."""

from __future__ import annotations

from typing import Any

import pytest

from lab import registry
from lab.docker_ops import transfer_digest
from lab.errors import InvalidInput, RegistryError


def test_a_registry_is_a_container_a_volume_and_a_network() -> None:
    names = registry.RegistryNames.of("lab-registry")
    assert (names.container, names.volume, names.network) == (
        "lab-registry",
        "lab-registry-data",
        "lab-registry-net",
    )
    assert names.inner_address == "lab-registry:5000"


@pytest.mark.parametrize("value", ["", "Lab", "has space", "a" * 41, "x/y"])
def test_bad_registry_names_are_refused(value: str) -> None:
    with pytest.raises(InvalidInput):
        registry.RegistryNames.of(value)


@pytest.mark.parametrize("tag", ["v1", "1.0.2", "release_2024-01", "a" * 128, "_x", "43379b848ecb"])
def test_valid_tags(tag: str) -> None:
    assert registry.parse_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", "v 1", "v1:latest", ".hidden", "-dash", "a" * 129, "ü", "a/b", "x@sha"])
def test_invalid_tags_are_refused(tag: str) -> None:
    with pytest.raises(InvalidInput, match="is not valid"):
        registry.parse_tag(tag)


def test_one_reference_serves_the_host_and_every_node() -> None:
    assert registry.repository_at(5123) == "127.0.0.1:5123/lab/site"
    pushed = registry.Pushed("lab/site:abc", "127.0.0.1:5123/lab/site:v1", "sha256:00ff", 1.5)
    assert pushed.pinned == "127.0.0.1:5123/lab/site:v1@sha256:00ff"


@pytest.mark.parametrize(
    ("message", "taken"),
    [
        (
            "driver failed programming external connectivity: listen tcp4 127.0.0.1:5000: bind: address already in use",
            True,
        ),
        ("Bind for 127.0.0.1:5000 failed: port is already allocated", True),
        ("No such image: lab/registry:2.8-debian", False),
    ],
)
def test_port_taken_is_recognised_in_engine_errors(message: str, taken: bool) -> None:
    assert registry.port_taken(message) is taken


def test_status_knows_when_it_can_be_used() -> None:
    running = registry.RegistryStatus("r", "running", 5000, "r-data", True, {})
    assert running.running and running.url == "http://127.0.0.1:5000"
    assert not registry.RegistryStatus("r", "absent", None, "r-data", False, {}).running
    assert not registry.RegistryStatus("r", "exited", 5000, "r-data", True, {}).running


# The push / pull stream -------------------------------------------------------------------------------
PUSH_OK: list[dict[str, Any]] = [
    {"status": "The push refers to repository [127.0.0.1:5000/lab/site]"},
    {"status": "Preparing", "id": "aaa"},
    {"status": "Pushing", "id": "aaa", "progressDetail": {"current": 50, "total": 100}},
    {"status": "Pushed", "id": "aaa"},
    {"status": "v1: digest: sha256:abc size: 1982"},
    {"aux": {"Tag": "v1", "Digest": "sha256:abc", "Size": 1982}},
]


def test_a_good_push_yields_its_digest_and_progress() -> None:
    seen: list[tuple[str, float | None]] = []
    assert transfer_digest(PUSH_OK, lambda s, f: seen.append((s, f)), what="push") == "sha256:abc"
    assert ("push: pushing", 0.5) in seen


def test_a_pull_reports_its_digest_as_a_status_line() -> None:
    chunks = [
        {"status": "Pulling from lab/site", "id": "v1"},
        {"status": "Digest: sha256:def"},
        {"status": "Status: Downloaded newer image"},
    ]
    assert transfer_digest(chunks, None, what="pull") == "sha256:def"


def test_an_error_chunk_fails_with_the_registry_message_even_after_progress() -> None:
    chunks = [
        *PUSH_OK[:3],
        {
            "errorDetail": {
                "message": "unknown: filesystem: mkdir /var/lib/docker-registry/docker: permission denied"
            },
            "error": "unknown: filesystem: mkdir ...",
        },
        {"aux": {"Digest": "sha256:never"}},
    ]
    with pytest.raises(
        RegistryError,
        match="push failed: unknown: filesystem: mkdir /var/lib/docker-registry/docker: permission denied",
    ):
        transfer_digest(chunks, None, what="push")


def test_an_error_without_detail_still_fails() -> None:
    with pytest.raises(RegistryError, match="connection refused"):
        transfer_digest([{"error": "Get http://127.0.0.1:5000/v2/: connection refused"}], None, what="push")


def test_a_stream_that_ends_without_a_digest_is_no_success() -> None:
    with pytest.raises(RegistryError, match="never reported a digest"):
        transfer_digest(PUSH_OK[:4], None, what="push")
