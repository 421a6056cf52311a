"""GET /metrics: Prometheus text for frontend certificates, counters that move with the
traffic, provisioning and reaper metrics, and the plain --metrics_port."""
import socket
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from conftest import fetch_until_eof
from sqlflow_playground.errors import Unavailable
from sqlflow_playground.provisioners.sqlite import SqliteProvisioner


def parse(text):
    """{(sample name, frozenset(labels)): value} of a Prometheus text exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(fetch):
    resp = fetch("GET", "/metrics")
    assert resp.status == 200, resp.body
    assert resp.headers["Content-Type"].startswith("text/plain")
    return parse(resp.body.decode())


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests(samples, route, method, status):
    return value(samples, "sqlflow_playground_requests_total", route=route, method=method,
                 status=str(status))


def test_request_counters_move_by_route_template(fetch_as):
    front, alice = fetch_as("front"), fetch_as("alice")
    before = scrape(front)
    for _ in range(3):
        assert alice("GET", "/api/heart_beat").status == 200
    assert alice("GET", "/api/jobs/NoSuchToken123?since=7").status == 404
    assert alice("GET", "/no/such/route").status == 404
    assert alice("DELETE", "/api/heart_beat").status == 405
    after = scrape(front)
    assert requests(after, "/api/heart_beat", "GET", 200) - \
        requests(before, "/api/heart_beat", "GET", 200) == 3
    assert requests(after, "/api/jobs/{token}", "GET", 404) == 1
    assert requests(after, "unmatched", "GET", 404) == 1
    assert requests(after, "/api/heart_beat", "DELETE", 405) == 1
    assert requests(after, "/metrics", "GET", 200) >= 1  # the first scrape
    seconds = "sqlflow_playground_request_seconds_count"
    assert value(after, seconds, route="/api/heart_beat") - \
        value(before, seconds, route="/api/heart_beat") == 4
    routes = {dict(labels).get("route") for _, labels in after}
    assert not any("NoSuchToken" in r or "/no/such" in r for r in routes if r)


def test_only_frontend_certificates_may_scrape(fetch_as):
    for name in ("alice", "bob"):
        resp = fetch_as(name)("GET", "/metrics")
        assert resp.status == 403 and resp.body["error"]["code"] == "forbidden"
    assert scrape(fetch_as("front"))  # and the refusals were counted
    assert requests(scrape(fetch_as("front")), "/metrics", "GET", 403) == 2


def test_provisioning_jobs_and_active_users(fetch_as):
    front, alice = fetch_as("front"), fetch_as("alice")
    before = scrape(front)
    assert value(before, "sqlflow_playground_active_users") == 0
    assert alice("POST", "/api/create_db").status == 200
    assert alice("POST", "/api/create_db").status == 200  # the same database: no provisioning
    job = alice("POST", "/api/jobs", {"task_type": "sql", "spec": {"sql": "SELECT 1"}})
    fetch_until_eof(alice, job.body["token"])
    after = scrape(front)
    count = "sqlflow_playground_provision_seconds_count"
    assert value(after, count) - value(before, count) == 1
    assert value(after, "sqlflow_playground_provision_failures_total") == 0
    assert value(after, "sqlflow_playground_active_users") == 1
    assert value(after, "sqlflow_playground_jobs", task_type="sql", status="SUCCEEDED") == 1


class BrokenProvisioner(SqliteProvisioner):
    async def provision(self, user_id):
        raise Unavailable("the database server is down")


def test_a_failed_provisioning_is_counted(make_server, fetch_as, tmp_path):
    server = make_server(provisioner_factory=lambda runner: BrokenProvisioner(runner, tmp_path))
    resp = fetch_as("alice", server.port)("POST", "/api/create_db")
    assert resp.status == 503
    samples = scrape(fetch_as("front", server.port))
    assert value(samples, "sqlflow_playground_provision_failures_total") == 1
    assert value(samples, "sqlflow_playground_provision_seconds_count") == 0


def test_reaper_actions_are_counted(make_server, fetch_as):
    server = make_server(idle_timeout_s=0.2, job_ttl_s=0.2)
    alice, front = fetch_as("alice", server.port), fetch_as("front", server.port)
    actions = lambda s: {a: value(s, "sqlflow_playground_reaper_actions_total", action=a)  # noqa
                         for a in ("released_user", "cancelled_job", "purged_job",
                                   "reconciled_orphan")}
    assert actions(scrape(front)) == dict.fromkeys(actions({}), 0.0)  # exported from the start
    assert alice("POST", "/api/create_db").status == 200
    job = alice("POST", "/api/jobs", {"task_type": "sql", "spec": {"sql": "SELECT 1"}})
    fetch_until_eof(alice, job.body["token"])
    time.sleep(0.5)
    server.call(server.gateway._reap())
    assert actions(scrape(front)) == {"released_user": 1.0, "cancelled_job": 0.0,
                                      "purged_job": 1.0, "reconciled_orphan": 0.0}


def test_plain_metrics_port(make_server, fetch_as):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = make_server(metrics_port=port)
    assert fetch_as("alice", server.port)("GET", "/api/heart_beat").status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        samples = parse(resp.read().decode())
    assert requests(samples, "/api/heart_beat", "GET", 200) == 1
