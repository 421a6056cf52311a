"""Pods of several containers (finding 5): a mesh's webhook adds a sidecar, and the job's
output is still its own container's, complete, with a true ``eof`` only at its end."""
import sys

import pytest

from conftest import fetch_until_eof
from sqlflow_playground.plugins.k8s_job import job_container

PY = sys.executable
SCRIPT = "for i in range(40): print('line', i)"


@pytest.fixture
def server(sim, make_server):  # overrides conftest's: fetch_as talks to this one
    return make_server(enable_pod_jobs=True, kubeconfig=sim.kubeconfig, namespace="default",
                       fetch_page_bytes=200)


@pytest.fixture
def alice(fetch_as, server):
    return fetch_as("alice")


def submit(fetch, task_type, spec):
    resp = fetch("POST", "/api/jobs", {"task_type": task_type, "spec": spec})
    assert resp.status == 201, resp.body
    return resp.body["token"]


def containers_of_pods(sim):
    return [[c["name"] for c in p["spec"]["containers"]]
            for p in sim.list_objects("", "v1", "pods", "default")]


def test_a_pod_job_with_an_injected_sidecar_reads_its_own_container(alice, sim):
    sim.inject_sidecars = True  # as a mesh's namespace-wide injection would
    token = submit(alice, "pod", {"image": "python:3.11", "command": [PY, "-c", SCRIPT]})
    body, responses, marks = fetch_until_eof(alice, token)
    assert containers_of_pods(sim) == [["job", "istio-proxy"]]
    assert body["status"] == "SUCCEEDED" and body["eof"], body
    assert [r["message"] for r in responses] == [f"line {i}" for i in range(40)]
    assert len(marks) >= 2  # paged (40 lines never fit one 200-byte page), eof at the end


def workload(annotations=None, containers=None):
    main = {"name": "trainer", "image": "python:3.11", "command": [PY, "-c", SCRIPT]}
    template = {"spec": {"restartPolicy": "Never", "containers": containers or [main]}}
    if annotations:
        template["metadata"] = {"annotations": annotations}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "t"},
            "spec": {"backoffLimit": 0, "template": template}}


def test_a_k8s_job_asking_for_injection_reads_its_own_container(alice, sim):
    sim.inject_sidecars = False  # only pods asking for it (the simulator's webhook: sim-only)
    token = submit(alice, "k8s_job", {"manifest": workload({"sidecar.istio.io/inject": "true"})})
    body, responses, _ = fetch_until_eof(alice, token)
    assert containers_of_pods(sim) == [["trainer", "istio-proxy"]]
    assert body["status"] == "SUCCEEDED" and body["eof"], body
    [pod] = [p["metadata"]["name"] for p in sim.list_objects("", "v1", "pods", "default")]
    assert [r["message"] for r in responses] == [f"[{pod}] line {i}" for i in range(40)]


def test_a_k8s_job_names_the_container_to_read(alice, sim):
    sim.inject_sidecars = False
    token = submit(alice, "k8s_job", {"manifest": workload({"sidecar.istio.io/inject": "true"}),
                                      "container": "trainer"})
    body, responses, _ = fetch_until_eof(alice, token)
    assert body["status"] == "SUCCEEDED" and len(responses) == 40, body


def test_a_k8s_job_can_read_every_container(alice, sim):
    sim.inject_sidecars = False
    helper = {"name": "helper", "image": "python:3.11", "command": [PY, "-c", "print('h')"]}
    main = {"name": "trainer", "image": "python:3.11", "command": [PY, "-c", SCRIPT]}
    token = submit(alice, "k8s_job", {"manifest": workload(
        {"sidecar.istio.io/inject": "true"}, [main, helper]), "all_containers": True})
    body, responses, marks = fetch_until_eof(alice, token)
    assert body["status"] == "SUCCEEDED" and body["eof"], body
    assert containers_of_pods(sim) == [["trainer", "helper", "istio-proxy"]]
    [pod] = [p["metadata"]["name"] for p in sim.list_objects("", "v1", "pods", "default")]
    # The simulated kubelet runs a pod's first container only: the others print nothing.
    assert [r["message"] for r in responses] == [f"[{pod}/trainer] line {i}" for i in range(40)]
    assert len(marks) > 2
    again = alice("GET", f"/api/jobs/{token}?since={body['next']}").body
    assert again["responses"] == [] and again["eof"]


def test_a_container_the_manifest_lacks_is_422_naming_the_field(alice, sim):
    resp = alice("POST", "/api/jobs", {"task_type": "k8s_job", "spec": {
        "manifest": workload(), "container": "nope"}})
    assert resp.status == 422 and "spec['container']" in resp.body["error"]["message"]
    assert "trainer" in resp.body["error"]["message"]
    assert sim.list_objects("batch", "v1", "jobs", "default") == []


@pytest.mark.parametrize("names,wanted,expected", [
    (["main"], None, "main"),
    (["istio-proxy", "main"], None, "main"),          # injected first (holdApplication…)
    (["linkerd-proxy", "envoy", "w"], None, "w"),
    (["main", "helper"], "helper", "helper"),
    (["main"], "absent", "main"),                     # this pod lacks it: its own container
    (["istio-proxy"], None, "istio-proxy"),           # nothing else to read
    ([], None, None),
])
def test_job_container(names, wanted, expected):
    pod = {"spec": {"containers": [{"name": n} for n in names]}}
    assert job_container(pod, wanted) == expected


# -- finding 6: the cluster must not delete a workload before its end is recorded --------

@pytest.mark.parametrize("where", ["spec", "spec.runPolicy"])
def test_ttl_seconds_after_finished_is_422_naming_the_field(alice, sim, where):
    manifest = workload()
    node = manifest["spec"]
    if where == "spec.runPolicy":
        node = node.setdefault("runPolicy", {})
        manifest = {**manifest, "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob"}
    node["ttlSecondsAfterFinished"] = 0
    resp = alice("POST", "/api/jobs", {"task_type": "k8s_job", "spec": {
        "manifest": manifest, "plural": "pytorchjobs"}})
    assert resp.status == 422, resp.body
    assert f"{where}.ttlSecondsAfterFinished" in resp.body["error"]["message"]
    assert sim.list_objects("batch", "v1", "jobs", "default") == []
    assert sim.list_objects("kubeflow.org", "v1", "pytorchjobs", "default") == []


def test_a_failed_pod_job_names_its_own_containers_end_not_a_sidecars():
    from sqlflow_playground.plugins.pod import describe_end
    pod = {"status": {"phase": "Failed", "containerStatuses": [
        {"name": "istio-proxy", "state": {"terminated": {"reason": "Completed", "exitCode": 0}}},
        {"name": "job", "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}}
    assert describe_end(pod) == "OOMKilled, exit code 137"
    assert describe_end(pod, "istio-proxy") == "Completed, exit code 0"
