"""Two replicas sharing one store (MariaDB) and one cluster, as in production."""
import os
import sys
import threading
import time

import pytest

from conftest import client_context, request, wait_until

PY = sys.executable


@pytest.fixture
def replicas(sim, store_url, make_server, tmp_path):
    return [make_server(db_url=store_url, state_dir=str(tmp_path / f"replica{i}"),
                        replica=f"replica{i}", enable_process_jobs=True,
                        provisioner="kubernetes", enable_pod_jobs=True,
                        kubeconfig=sim.kubeconfig, namespace="default", provision_timeout_s=10,
                        reconcile_grace_s=0) for i in range(2)]


def test_a_job_created_through_one_replica_is_fetched_and_cancelled_through_the_other(
        replicas, certs):
    a, b = replicas
    alice = client_context(certs.dir, "alice")
    token = request(a.port, alice, "POST", "/api/jobs", {"task_type": "pod", "spec": {
        "image": "img", "command": [PY, "-c", "print('hi', flush=True); import time; "
                                               "time.sleep(60)"]}}).body["token"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        body = request(b.port, alice, "GET", f"/api/jobs/{token}?wait=5").body
        if body["responses"]:
            break
    assert body["status"] == "RUNNING" and body["responses"] == [{"message": "hi"}]
    assert request(b.port, alice, "DELETE", f"/api/jobs/{token}").body["status"] == "CANCELLED"
    assert request(a.port, alice, "GET", f"/api/jobs/{token}").body["status"] == "CANCELLED"


def test_concurrent_create_db_on_both_replicas_yields_one_database(replicas, sim, certs):
    front = client_context(certs.dir, "front")
    results = []

    def create(server):
        results.append(request(server.port, front, "POST", "/api/create_db",
                               {"user_id": "carol"}))
    threads = [threading.Thread(target=create, args=(s,)) for s in replicas * 5]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status for r in results] == [200] * 10, [r.body for r in results]
    assert len({r.body["data_source"] for r in results}) == 1
    assert sum(r.body["created"] for r in results) == 1
    assert len(sim.list_objects("", "v1", "pods", "default")) == 1


def test_reapers_on_both_replicas_cancel_an_abandoned_job_once(replicas, sim, certs):
    a, b = replicas
    alice = client_context(certs.dir, "alice")
    token = request(a.port, alice, "POST", "/api/jobs", {
        "task_type": "pod", "fetch_timeout_s": 0.3,
        "spec": {"image": "img", "command": [PY, "-c", "import time; time.sleep(60)"]}}
    ).body["token"]
    pod = sim.list_objects("", "v1", "pods", "default")[0]["metadata"]["name"]
    time.sleep(0.5)
    sim.reset_counts()
    reaps = [threading.Thread(target=s.call, args=(s.gateway.jobs.reap(),)) for s in replicas]
    for t in reaps:
        t.start()
    for t in reaps:
        t.join(30)
    assert sim.counts[("delete", "pods", pod)] == 1
    body = request(b.port, alice, "GET", f"/api/jobs/{token}").body
    assert body["status"] == "CANCELLED" and "not fetched" in body["message"]


def test_a_local_job_is_followed_and_cancelled_through_the_other_replica(replicas, certs):
    """Any replica answers (issue 10): the job runs in replica0, its output and status
    reach replica1 through the store, and a cancel through replica1 stops it in replica0."""
    a, b = replicas
    alice = client_context(certs.dir, "alice")
    token = request(a.port, alice, "POST", "/api/jobs", {"task_type": "process", "spec": {
        "command": [PY, "-c", "import os, time; print(os.getpid(), flush=True); "
                              "time.sleep(60)"]}}).body["token"]
    seen = []
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:
        elsewhere = request(b.port, alice, "GET", f"/api/jobs/{token}?wait=5")
        assert elsewhere.status == 200, elsewhere.body
        seen = elsewhere.body["responses"]
    assert elsewhere.body["status"] == "RUNNING" and elsewhere.body["eof"] is False
    pid = int(seen[0]["message"])
    b.call(b.gateway.jobs.recover())  # a restart of replica1 leaves replica0's job alone
    b.call(b.gateway.jobs.reap())
    assert request(a.port, alice, "GET", f"/api/jobs/{token}").body["status"] == "RUNNING"
    assert request(b.port, alice, "DELETE", f"/api/jobs/{token}").body["status"] == "CANCELLED"
    assert wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 20)  # stopped in replica0
    for server in (a, b):
        body = request(server.port, alice, "GET", f"/api/jobs/{token}?wait=5").body
        assert body["status"] == "CANCELLED" and body["message"] == "cancelled by the user"
    assert wait_until(lambda: request(b.port, alice, "GET", f"/api/jobs/{token}?since="
                                      f"{elsewhere.body['next']}").body["eof"], 20)


def test_a_local_job_on_one_replica_does_not_stop_its_owner_submitting_on_the_other(
        replicas, certs):
    a, b = replicas
    alice = client_context(certs.dir, "alice")
    sleep = {"task_type": "process", "spec": {"command": [PY, "-c", "import time; time.sleep(60)"]}}
    first = request(a.port, alice, "POST", "/api/jobs", sleep).body["token"]
    second = request(b.port, alice, "POST", "/api/jobs", sleep)  # the quota check looks at both
    assert second.status == 201, second.body
    assert request(b.port, alice, "DELETE", f"/api/jobs/{second.body['token']}").status == 200
    assert request(a.port, alice, "DELETE", f"/api/jobs/{first}").status == 200
