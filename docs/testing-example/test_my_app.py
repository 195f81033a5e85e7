"""Testing a multi-container app with lab: a complete test file (the README's example).

`pip install lab` brings the pytest plugin; there is nothing to import or configure. Each test asks
the `lab_cluster` factory for a lab (N httpd replicas of your site behind an nginx load balancer)
and gets a handle with `.url`, `.replicas`, `.verify()`, `.kill()`, `.scale()`, `.logs()`,
`.status()` and `.nginx_conf`. Labs are removed after the test, even when it fails or you press
Ctrl-C; a failing test's report shows the lab's nginx.conf, its status and its containers' logs.
"""

import pytest
import requests

# The app under test: a static site. Point `site=` at your own directory; a Dockerfile in it
# (FROM ${HTTPD_IMAGE}) is used to build the replicas' image. The page names the replica that
# served it through a server-side include.
PAGE = '<!doctype html>\n<title>my app</title>\n<p>served by <!--#echo var="HOSTNAME" --></p>\n'


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    directory = tmp_path_factory.mktemp("site")
    (directory / "index.html").write_text(PAGE)
    return directory


@pytest.fixture(scope="session")
def shared_lab(lab_cluster_session, site):
    """One lab for the tests that only read: started once per session (and per xdist worker)."""
    return lab_cluster_session(replicas=3, algorithm="round_robin", site=site)


def test_traffic_is_spread_evenly(shared_lab):
    result = shared_lab.verify(requests=600)  # the same judgement as `lab verify`
    assert result.verdict == "balanced", result.reason
    assert sorted(result.replicas) == sorted(shared_lab.replicas)


def test_each_page_names_the_replica_that_served_it(shared_lab):
    with requests.Session() as http:
        for _ in range(6):
            response = http.get(shared_lab.url, timeout=5)
            served_by = response.headers["X-Served-By"]
            assert served_by in shared_lab.replicas
            assert f"served by {served_by}" in response.text


def test_a_killed_replica_is_failed_over(lab_cluster, site):
    lab = lab_cluster(replicas=3, site=site)  # a lab of its own: this test breaks it
    killed = lab.replicas[1]
    lab.kill(2)  # SIGKILL replica 2, as a crash would
    with requests.Session() as http:
        answers = [http.get(lab.url, timeout=10) for _ in range(30)]
    assert [a.status_code for a in answers] == [200] * 30  # nginx retried the others
    assert killed not in {a.headers["X-Served-By"] for a in answers}
