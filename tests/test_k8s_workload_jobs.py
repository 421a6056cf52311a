"""`k8s_job` jobs (workload manifests) against the in-test API server: batch/v1 Jobs run
by the simulator's Job controller and kubelet, PyTorchJobs driven by ``set_status``."""
import copy
import sys
import time

import pytest

from conftest import fetch_until_eof
from sqlflow_playground.errors import BadRequest
from sqlflow_playground.k8s.names import JOB_LABEL, USER_LABEL, label_value
from sqlflow_playground.plugins.base import FAILED, PENDING, RUNNING, SUCCEEDED
from sqlflow_playground.plugins.k8s_job import decode_cursor, encode_cursor, workload_status

PY = sys.executable
PYTORCH = ("kubeflow.org", "v1", "pytorchjobs")


@pytest.fixture
def server(sim, make_server):  # overrides conftest's: fetch_as talks to this one
    return make_server(enable_pod_jobs=True, kubeconfig=sim.kubeconfig, namespace="default",
                       fetch_page_bytes=300)


@pytest.fixture
def alice(fetch_as, server):
    return fetch_as("alice")


def batch_job(script, backoff_limit=0, spec=None, **pod_spec):
    container = {"name": "main", "image": "python:3.11", "command": [PY, "-c", script]}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "mine"},
            "spec": {"backoffLimit": backoff_limit, **(spec or {}), "template": {"spec": {
                "restartPolicy": "Never", "containers": [container], **pod_spec}}}}


def pytorch_job():
    template = {"spec": {"containers": [{"name": "pytorch", "image": "pytorch:2",
                                         "command": [PY, "-c", "pass"]}]}}
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "t"},
            "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": template}}}}


def submit(fetch, manifest, **spec):
    resp = fetch("POST", "/api/jobs", {"task_type": "k8s_job",
                                       "spec": {"manifest": manifest, **spec}})
    assert resp.status == 201 and resp.body["status"] in (PENDING, RUNNING), resp.body
    return resp.body["token"]


def objects_of(sim, group, version, plural):
    return sim.list_objects(group, version, plural, "default")


def names_of(sim, group, version, plural):
    return sorted(o["metadata"]["name"] for o in objects_of(sim, group, version, plural))


def wait_status(fetch, token, wanted, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = fetch("GET", f"/api/jobs/{token}?wait=1").body
        if body["status"] == wanted:
            return body
    raise AssertionError(f"job never became {wanted}: {body}")


def test_batch_job_output_arrives_prefixed_once_across_pages(alice, sim):
    script = "for i in range(60): print('line', i, 'x' * (i % 7))"
    token = submit(alice, batch_job(script))
    body, responses, marks = fetch_until_eof(alice, token)
    assert body["status"] == SUCCEEDED, body
    [pod] = names_of(sim, "", "v1", "pods")
    assert [r["message"] for r in responses] == [f"[{pod}] line {i} " + "x" * (i % 7)
                                                 for i in range(60)]
    assert len(marks) > 3  # several pages through the composite cursor
    [job] = objects_of(sim, "batch", "v1", "jobs")
    assert job["metadata"]["labels"][USER_LABEL] == "alice"
    # the last cursor is stable: nothing more, nothing repeated
    again = alice("GET", f"/api/jobs/{token}?since={body['next']}").body
    assert again["responses"] == [] and again["eof"]


def test_every_pod_of_a_parallel_job_is_read_whole(alice, sim):
    script = "for i in range(25): print('n', i)"
    token = submit(alice, batch_job(script, spec={"completions": 2, "parallelism": 2}))
    body, responses, _ = fetch_until_eof(alice, token)
    assert body["status"] == SUCCEEDED, body
    pods = names_of(sim, "", "v1", "pods")
    assert len(pods) == 2
    for pod in pods:
        assert [r["message"] for r in responses if r["message"].startswith(f"[{pod}] ")] == \
            [f"[{pod}] n {i}" for i in range(25)]
    assert len(responses) == 50


def test_failing_batch_job_fails_with_the_conditions_reason(alice, sim):
    token = submit(alice, batch_job("import sys; print('bye'); sys.exit(2)"))
    body, responses, _ = fetch_until_eof(alice, token)
    assert body["status"] == FAILED and "BackoffLimitExceeded" in body["message"], body
    [pod] = names_of(sim, "", "v1", "pods")
    assert [r["message"] for r in responses] == [f"[{pod}] bye"]


def test_pytorchjob_is_a_custom_object_whose_conditions_drive_the_status(alice, sim):
    token = submit(alice, pytorch_job(), plural="pytorchjobs")
    [job] = objects_of(sim, *PYTORCH)
    name, labels = job["metadata"]["name"], job["metadata"]["labels"]
    assert labels[USER_LABEL] == "alice" and labels[JOB_LABEL] == label_value(token)
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"]["labels"]
    assert master[JOB_LABEL] == label_value(token)
    assert alice("GET", f"/api/jobs/{token}").body["status"] == PENDING

    created = {"type": "Created", "status": "True", "reason": "PyTorchJobCreated"}
    running = {"type": "Running", "status": "True", "reason": "PyTorchJobRunning"}
    sim.set_status(*PYTORCH, "default", name, {"conditions": [created, running]})
    wait_status(alice, token, RUNNING)
    done = {"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded",
            "message": "PyTorchJob t is successfully completed."}
    sim.set_status(*PYTORCH, "default", name,
                   {"conditions": [created, {**running, "status": "False"}, done]})
    body = wait_status(alice, token, SUCCEEDED)
    assert "PyTorchJobSucceeded" in body["message"]

    assert alice("DELETE", f"/api/jobs/{token}").body["status"] == SUCCEEDED  # finished
    assert len(objects_of(sim, *PYTORCH)) == 1


def test_cancelled_pytorchjob_is_deleted(alice, sim):
    token = submit(alice, pytorch_job(), plural="pytorchjobs")
    assert alice("DELETE", f"/api/jobs/{token}").body["status"] == "CANCELLED"
    assert objects_of(sim, *PYTORCH) == []


@pytest.mark.parametrize("manifest,plural,needle", [
    (pytorch_job(), None, "spec['plural']"),
    ({**pytorch_job(), "kind": "TFJob"}, "tfjobs", "Kubernetes refused"),  # unknown kind: 404
    (batch_job("pass", backoff_limit=-1), None, "backoffLimit"),            # invalid: 422
])
def test_what_kubernetes_cannot_create_is_422(alice, sim, manifest, plural, needle):
    resp = alice("POST", "/api/jobs", {"task_type": "k8s_job", "spec": {
        "manifest": manifest, **({"plural": plural} if plural else {})}})
    assert resp.status == 422 and needle in resp.body["error"]["message"], resp.body
    assert objects_of(sim, "batch", "v1", "jobs") == objects_of(sim, *PYTORCH) == []


def test_cancel_deletes_the_job_and_its_pods(alice, sim):
    token = submit(alice, batch_job("import time; print('up', flush=True); time.sleep(60)"))
    wait_status(alice, token, RUNNING)
    for _ in range(100):
        if names_of(sim, "", "v1", "pods"):
            break
        time.sleep(0.05)
    assert len(names_of(sim, "", "v1", "pods")) == 1
    assert alice("DELETE", f"/api/jobs/{token}").body["status"] == "CANCELLED"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (names_of(sim, "batch", "v1", "jobs")
                                           or names_of(sim, "", "v1", "pods")):
        time.sleep(0.1)
    assert names_of(sim, "batch", "v1", "jobs") == [] and names_of(sim, "", "v1", "pods") == []
    assert sim.pids() == []


def _dangerous():
    privileged = batch_job("pass")
    privileged["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {
        "privileged": True}
    elsewhere = batch_job("pass")
    elsewhere["metadata"]["namespace"] = "kube-system"
    return {
        "host networking": batch_job("pass", hostNetwork=True),
        "privileged": privileged,
        "hostPath": batch_job("pass", volumes=[{"name": "v", "hostPath": {"path": "/"}}]),
        "namespace": elsewhere,
    }


@pytest.mark.parametrize("needle", list(_dangerous()))
def test_dangerous_manifests_are_422_and_create_nothing(alice, sim, needle):
    sim.reset_counts()
    resp = alice("POST", "/api/jobs", {"task_type": "k8s_job",
                                       "spec": {"manifest": _dangerous()[needle]}})
    assert resp.status == 422 and needle in resp.body["error"]["message"], resp.body
    assert not any(verb == "create" for verb, _, _ in sim.counts)
    assert objects_of(sim, "batch", "v1", "jobs") == [] and names_of(sim, "", "v1", "pods") == []
    assert alice("GET", "/api/jobs").body["jobs"] == []


def test_two_hundred_fetches_of_a_running_workload_make_no_job_gets(alice, sim):
    token = submit(alice, batch_job("import time; print('working', flush=True); "
                                    "time.sleep(60)"))
    wait_status(alice, token, RUNNING)
    [name] = names_of(sim, "batch", "v1", "jobs")
    sim.reset_counts()
    for _ in range(200):
        assert alice("GET", f"/api/jobs/{token}").body["status"] == RUNNING
    assert sim.counts[("get", "jobs", name)] == 0
    assert sim.counts[("list", "jobs", None)] == 0
    alice("DELETE", f"/api/jobs/{token}")


def condition(ctype, status="True", reason=""):
    return {"type": ctype, "status": status, "reason": reason}


@pytest.mark.parametrize("status,expected", [
    ({}, PENDING),
    ({"active": 1}, RUNNING),
    ({"conditions": [condition("Suspended")]}, PENDING),
    ({"active": 1, "conditions": [condition("FailureTarget", reason="DeadlineExceeded")]},
     FAILED),
    ({"conditions": [condition("SuccessCriteriaMet"), condition("Complete")]}, SUCCEEDED),
    ({"conditions": [condition("Created"), condition("Running")]}, RUNNING),
    ({"conditions": [condition("Running"), condition("Restarting")]}, RUNNING),
    ({"conditions": [condition("Created"), condition("Running", "False"),
                     condition("Failed", reason="OOM")]}, FAILED),
    ({"conditions": [condition("Created"), condition("Running", "False")]}, PENDING),
])
def test_workload_status_from_conditions(status, expected):
    assert workload_status({"status": copy.deepcopy(status)})[0] == expected


def test_composite_cursor_round_trips_and_rejects_garbage():
    pods = {"p-1": ["2024-01-01T00:00:00.5Z|2", 1], "p-2": ["", 0]}
    assert decode_cursor(encode_cursor(pods)) == pods
    assert encode_cursor({}) == "" and decode_cursor("") == {}
    for bad in ("x", "WzFd", encode_cursor({"p": ["nope", 0]}), encode_cursor({"p": ["", 7]})):
        with pytest.raises(BadRequest):
            decode_cursor(bad)
