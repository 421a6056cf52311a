"""`pod` jobs against the in-test API server: real output, real reasons, no API storm."""
import sys
import time

import pytest

from conftest import fetch_until_eof, wait_until

PY = sys.executable


@pytest.fixture
def pod_server(sim, make_server):
    return make_server(enable_pod_jobs=True, kubeconfig=sim.kubeconfig, namespace="default",
                       fetch_page_bytes=300)


@pytest.fixture
def alice(fetch_as, pod_server):
    return fetch_as("alice", pod_server.port)


def submit(fetch, command, **spec):
    resp = fetch("POST", "/api/jobs", {"task_type": "pod",
                                       "spec": {"image": "python:3.11", "command": command,
                                                **spec}})
    assert resp.status == 201 and resp.body["status"] == "PENDING", resp.body
    return resp.body["token"]


def pod_names(sim):
    return [p["metadata"]["name"] for p in sim.list_objects("", "v1", "pods", "default")]


def test_pod_job_output_through_fetch_equals_the_commands_output(alice, sim):
    script = "for i in range(200): print('line', i, 'x' * (i % 13))"
    body, responses, marks = fetch_until_eof(alice, submit(alice, [PY, "-c", script]))
    assert body["status"] == "SUCCEEDED"
    assert [r["message"] for r in responses] == [f"line {i} " + "x" * (i % 13)
                                                 for i in range(200)]
    assert len(marks) > 5  # read in several pages through the log cursor
    labels = sim.list_objects("", "v1", "pods", "default")[0]["metadata"]["labels"]
    assert labels["sqlflow.tech/user"] == "alice"


@pytest.mark.parametrize("command,spec,needle", [
    ([PY, "-c", "import sys; print('bye'); sys.exit(3)"], {}, "exit code 3"),
    ([PY, "-c", "import time; time.sleep(30)"], {"timeout_s": 1}, "DeadlineExceeded"),
])
def test_failure_reasons_reach_the_message(alice, command, spec, needle):
    body, _, _ = fetch_until_eof(alice, submit(alice, command, **spec))
    assert body["status"] == "FAILED" and needle in body["message"], body


def test_oom_killed_and_image_pull_backoff_are_reported(alice, sim):
    sim.image_pull_backoff_images.add("no/such:image")
    stuck = alice("POST", "/api/jobs", {"task_type": "pod", "spec": {"image": "no/such:image"}})
    token = stuck.body["token"]
    for _ in range(100):
        body = alice("GET", f"/api/jobs/{token}?wait=1").body
        if "ImagePullBackOff" in body["message"]:
            break
    assert body["status"] == "PENDING" and "ImagePullBackOff" in body["message"]
    alice("DELETE", f"/api/jobs/{token}")

    victim = submit(alice, [PY, "-c", "import time; print('up', flush=True); time.sleep(30)"])
    alice("GET", f"/api/jobs/{victim}?wait=10")
    name = pod_names(sim)[-1]
    sim.fail_pod("default", name, "OOMKilled")
    body, _, _ = fetch_until_eof(alice, victim)
    assert body["status"] == "FAILED" and "OOMKilled" in body["message"]


def test_cancel_deletes_the_pod(alice, sim):
    token = submit(alice, [PY, "-c", "import time; time.sleep(60)"])
    assert len(pod_names(sim)) == 1
    assert alice("DELETE", f"/api/jobs/{token}").body["status"] == "CANCELLED"
    # A running pod is deleted gracefully, as Kubernetes does: marked at once, removed once
    # the kubelet stopped its container (a loaded CI run found it still there, marked).
    assert all(p["metadata"].get("deletionTimestamp")
               for p in sim.list_objects("", "v1", "pods", "default"))
    assert wait_until(lambda: pod_names(sim) == [], 30), pod_names(sim)


def test_abandoned_pod_job_is_deleted(pod_server, alice, sim):
    resp = alice("POST", "/api/jobs", {"task_type": "pod", "fetch_timeout_s": 0.2, "spec": {
        "image": "python:3.11", "command": [PY, "-c", "import time; time.sleep(60)"]}})
    token = resp.body["token"]
    time.sleep(0.4)
    pod_server.call(pod_server.gateway.jobs.reap())
    assert alice("GET", f"/api/jobs/{token}").body["status"] == "CANCELLED"
    assert wait_until(lambda: pod_names(sim) == [], 30), pod_names(sim)  # (gracefully)


def test_a_thousand_fetches_of_a_running_pod_job_make_no_status_gets(alice, sim):
    token = submit(alice, [PY, "-c", "import time; print('working', flush=True); "
                                     "time.sleep(60)"])
    for _ in range(20):
        if alice("GET", f"/api/jobs/{token}?wait=5").body["status"] == "RUNNING":
            break
    name = pod_names(sim)[0]
    sim.reset_counts()
    started = time.monotonic()
    for _ in range(1000):
        assert alice("GET", f"/api/jobs/{token}").body["status"] == "RUNNING"
    elapsed = time.monotonic() - started
    assert sim.counts[("get", "pods", name)] == 0
    assert sim.counts[("list", "pods", None)] == 0
    # The log is followed by one stream that the first fetches started: these read none of
    # it from the API (at most the stream opening, and a read before it was up).
    assert sim.counts[("get", "pods/log", name)] <= 2, elapsed
    alice("DELETE", f"/api/jobs/{token}")
