"""The documented maximum works: its config passes `nginx -t` for every method, and a lab of that
size answers from every replica through the load balancer."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from lab.docker_ops import Engine
from lab.errors import LabError
from lab.images import ensure_base_images
from lab.loadbalancer import LoadBalancer
from lab.pytest_plugin import LabHandle, unique_name
from lab.render import nginx_view, render_nginx_conf, upstream_zone_bytes
from lab.spec import ALGORITHMS, MAX_REPLICAS, LabSpec

from .conftest import leftovers, served_by

ZONE = re.compile(r"zone replicas \d+k;")


@pytest.fixture(scope="module")
def nginx_image(lab_engine: Engine) -> str:
    return ensure_base_images(lab_engine).nginx


@pytest.mark.parametrize(
    "options",
    [{"algorithm": a} for a in ALGORITHMS]
    + [{"algorithm": "round_robin", "backup": MAX_REPLICAS, "weights": ",".join(["2"] * MAX_REPLICAS)}],
    ids=[*ALGORITHMS, "weighted-with-backup"],
)
def test_the_maximum_passes_nginx_t_for_every_method(
    lab_engine: Engine, nginx_image: str, options: dict[str, object]
) -> None:
    # The longest lab name there is: the zone must hold the longest server names too.
    spec = LabSpec.create(name=unique_name("m").ljust(40, "x"), replicas=MAX_REPLICAS, **options)
    LoadBalancer.test_config(lab_engine, spec, nginx_image, render_nginx_conf(nginx_view(spec)))
    assert leftovers(lab_engine, spec.name) == (0, 0)


def test_the_zone_model_is_exact_and_the_old_fixed_zone_fails(lab_engine: Engine, nginx_image: str) -> None:
    """What the model says nginx needs is enough, one page less is not: the margin is real margin."""
    spec = LabSpec.create(name=unique_name("m"), replicas=MAX_REPLICAS)
    config = render_nginx_conf(nginx_view(spec))
    needed = upstream_zone_bytes(MAX_REPLICAS, max(len(f"{host}:80") for host in spec.replica_names()))
    LoadBalancer.test_config(
        lab_engine, spec, nginx_image, ZONE.sub(f"zone replicas {needed // 1024}k;", config)
    )
    for too_small in (needed // 1024 - 4, 64):  # one page less; the fixed size of before
        with pytest.raises(LabError, match="nginx -t") as failure:
            LoadBalancer.test_config(
                lab_engine, spec, nginx_image, ZONE.sub(f"zone replicas {too_small}k;", config)
            )
        assert 'no memory in upstream zone "replicas"' in failure.value.detail
    assert leftovers(lab_engine, spec.name) == (0, 0)


def test_a_lab_at_the_maximum_answers_from_every_replica(lab_cluster: Callable[..., LabHandle]) -> None:
    lab = lab_cluster(replicas=MAX_REPLICAS)
    counts = served_by(lab.url, 3 * MAX_REPLICAS)
    assert set(counts) == set(lab.spec.replica_names())
    assert sum(counts.values()) == 3 * MAX_REPLICAS
