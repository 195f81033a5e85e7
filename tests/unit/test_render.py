import os
from pathlib import Path

import jinja2
import pytest

from lab.render import ZONE_MARGIN, nginx_view, render_nginx_conf, upstream_zone_bytes
from lab.spec import MAX_REPLICAS, LabSpec

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("replicas", [1, 3])
def test_rendered_config_matches_golden_file(replicas: int) -> None:
    rendered = render_nginx_conf(nginx_view(LabSpec.create(replicas=replicas)))
    golden = GOLDEN / f"nginx-{replicas}.conf"
    if os.environ.get("LAB_UPDATE_GOLDEN") == "1":
        golden.write_text(rendered)
    assert rendered == golden.read_text()


def test_config_explains_which_replica_each_server_line_is() -> None:
    rendered = render_nginx_conf(nginx_view(LabSpec.create(name="demo", replicas=2)))
    assert "# replica 1: container demo-web-1" in rendered
    assert "server demo-web-2:80 max_fails=1 fail_timeout=10s;" in rendered
    assert "server_tokens off;" in rendered
    assert "zone replicas" in rendered
    assert "add_header X-Upstream-Addr $upstream_addr always;" in rendered


def test_weights_appear_on_their_server_lines() -> None:
    rendered = render_nginx_conf(nginx_view(LabSpec.create(replicas=3, weights="3,1,1")))
    assert "server lab-web-1:80 weight=3 " in rendered
    assert "server lab-web-2:80 max_fails" in rendered


@pytest.mark.parametrize(
    ("algorithm", "directive"),
    [
        ("least_conn", "least_conn;"),
        ("ip_hash", "ip_hash;"),
        ("random", "random;"),
        ("random_two", "random two least_conn;"),
    ],
)
def test_balancing_method_comes_before_keepalive(algorithm: str, directive: str) -> None:
    rendered = render_nginx_conf(nginx_view(LabSpec.create(algorithm=algorithm)))
    # nginx requires the method to be activated before `keepalive`.
    assert rendered.index(directive) < rendered.index("keepalive 32;")


def test_a_missing_template_variable_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "nginx.conf.j2").write_text("upstream {{ view.upstream }} { {{ view.no_such_thing }} }")
    with pytest.raises(jinja2.UndefinedError):
        render_nginx_conf(nginx_view(LabSpec.create()), template_dir=tmp_path)


def test_hash_renders_its_key_and_consistency() -> None:
    spec = LabSpec.create(algorithm="hash", hash_key="$request_uri")
    assert "hash $request_uri consistent;" in render_nginx_conf(nginx_view(spec))
    plain = LabSpec.create(algorithm="hash", hash_key="$http_x_client_id", consistent=False)
    assert "hash $http_x_client_id;" in render_nginx_conf(nginx_view(plain))


def test_backup_and_passive_health_settings_reach_the_server_lines() -> None:
    spec = LabSpec.create(replicas=3, backup=3, max_fails=2, fail_timeout=5)
    rendered = render_nginx_conf(nginx_view(spec))
    assert "server lab-web-3:80 max_fails=2 fail_timeout=5s backup;" in rendered
    assert "server lab-web-1:80 max_fails=2 fail_timeout=5s;" in rendered
    assert "used only when all others are down" in rendered


def test_generation_changes_exactly_when_the_config_does() -> None:
    one = nginx_view(LabSpec.create(replicas=3))
    assert one.generation == nginx_view(LabSpec.create(replicas=3)).generation
    assert one.generation != nginx_view(LabSpec.create(replicas=3, algorithm="random")).generation
    assert f"add_header X-Lab-Config {one.generation} always;" in render_nginx_conf(one)


# The upstream zone -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("servers", "zone_k"),
    # Measured with `nginx -t` in lab/nginx:1.22-debian: the most servers named lab-web-N:80 each
    # zone size holds (64k held 63, which is why a fixed 64k failed `lab up --replicas 64`).
    [(16, 32), (63, 64), (104, 96)],
)
def test_zone_model_matches_what_nginx_was_measured_to_hold(servers: int, zone_k: int) -> None:
    assert upstream_zone_bytes(servers, len(f"lab-web-{servers}:80")) == zone_k * 1024
    one_more = servers + 1
    assert upstream_zone_bytes(one_more, len(f"lab-web-{one_more}:80")) > zone_k * 1024


def test_zone_has_room_for_the_maximum_whatever_the_lab_has_now() -> None:
    one = nginx_view(LabSpec.create(replicas=1)).zone
    full = nginx_view(LabSpec.create(replicas=MAX_REPLICAS)).zone
    assert one == full  # `lab scale` up to the maximum never needs a different zone
    assert full.servers == MAX_REPLICAS
    longest = len(f"{'x' * 40}-web-999999:80")  # the longest lab name, a replica number after many deploys
    wide = nginx_view(LabSpec.create(name="x" * 40, replicas=MAX_REPLICAS)).zone
    needed = upstream_zone_bytes(MAX_REPLICAS, longest)
    assert int(wide.size.removesuffix("k")) * 1024 == ZONE_MARGIN * needed
    assert int(full.size.removesuffix("k")) * 1024 > upstream_zone_bytes(MAX_REPLICAS, len("lab-web-64:80"))


def test_config_says_why_the_zone_has_its_size() -> None:
    view = nginx_view(LabSpec.create(replicas=3))
    rendered = render_nginx_conf(view)
    assert f"zone replicas {view.zone.size};" in rendered
    lines = rendered.splitlines()
    at = lines.index(f"        zone replicas {view.zone.size};")
    comment = " ".join(line.strip().removeprefix("# ") for line in lines[at - 3 : at])
    assert comment.startswith(f"{view.zone.size}: nginx 1.22 keeps {view.zone.per_server} bytes per server")
    assert "64 servers, the most a lab can have, so `lab scale` never needs a bigger zone" in comment
