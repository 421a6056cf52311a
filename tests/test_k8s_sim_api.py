"""The simulator's API as real clients use it (finding 9): ``dryRun=All`` stores and runs
nothing, ``/openapi/v2`` and ``/openapi/v3`` let ``kubectl apply`` validate, Events can
be recorded, listed and watched, and a Role can be enforced."""
import json
import os
import shutil
import subprocess
import sys
import urllib.request

import pytest
from kubernetes import client as k8s

from conftest import missing
from k8s_sim.events import record_event
from sqlflow_playground.k8s import objects
from sqlflow_playground.k8s.clients import shared_api_client

PY = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def core(sim):
    return k8s.CoreV1Api(shared_api_client(sim.kubeconfig))


def job_pod(name, script="open('ran', 'w').write('x'); print('ran')"):
    return objects.make_job_pod(name, "u", "t-" + name, "python:3.11",
                                command=[PY, "-c", script])


def test_dry_run_create_stores_and_runs_nothing(sim, core):
    answered = core.create_namespaced_pod("default", job_pod("dry"), dry_run="All")
    assert answered.metadata.name == "dry" and answered.metadata.uid
    assert answered.spec.containers[0].name == "job"
    assert sim.get_object("", "v1", "pods", "default", "dry") is None
    assert sim.spawned_pids == [] and sim.pids() == []
    with pytest.raises(k8s.ApiException) as refused:  # still validated
        bad = job_pod("Dry_Bad")
        core.create_namespaced_pod("default", bad, dry_run="All")
    assert refused.value.status == 422
    with pytest.raises(k8s.ApiException) as other:
        core.create_namespaced_pod("default", job_pod("dry2"), dry_run="Some")
    assert other.value.status == 400


def test_dry_run_delete_deletes_nothing(sim, core):
    core.create_namespaced_pod("default", job_pod("kept", "import time; time.sleep(30)"))
    answered = core.delete_namespaced_pod("kept", "default", dry_run="All")
    assert answered.metadata.name == "kept"
    kept = sim.get_object("", "v1", "pods", "default", "kept")
    assert kept is not None and not kept["metadata"].get("deletionTimestamp")
    core.delete_namespaced_pod("kept", "default", grace_period_seconds=0)


def get_json(sim, path, accept="application/json"):
    request = urllib.request.Request(sim.url + path, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def test_openapi_documents_name_every_kind_and_accept_field_validation(sim):
    v2 = get_json(sim, "/openapi/v2")
    assert v2["swagger"] == "2.0"
    patch = v2["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": "", "version": "v1",
                                                       "kind": "Pod"}
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    kinds = {gvk["kind"] for d in v2["definitions"].values()
             for gvk in d["x-kubernetes-group-version-kind"]}
    assert {"Pod", "Service", "Secret", "Job", "PyTorchJob", "Event"} <= kinds
    root = get_json(sim, "/openapi/v3")["paths"]
    assert {"api/v1", "apis/batch/v1", "apis/kubeflow.org/v1"} <= set(root)
    batch = get_json(sim, root["apis/batch/v1"]["serverRelativeURL"])
    assert "/apis/batch/v1/namespaces/{namespace}/jobs/{name}" in batch["paths"]
    with pytest.raises(urllib.error.HTTPError) as pb:
        get_json(sim, "/openapi/v2", "application/com.github.proto-openapi.spec.v2@v1.0+protobuf")
    assert pb.value.code == 406


def test_kubectl_apply_validates_without_validate_false(sim, tmp_path):
    if shutil.which("kubectl") is None:  # Debian's kubectl comes with this kind of machine
        missing("kubectl is not installed")
    manifest = tmp_path / "pod.json"
    good = objects.serialize(job_pod("applied"))
    manifest.write_text(json.dumps(good))
    run = subprocess.run(["kubectl", "--kubeconfig", sim.kubeconfig, "apply", "-f",
                          str(manifest)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert sim.get_object("", "v1", "pods", "default", "applied") is not None
    good["spec"]["containers"][0]["nope"] = 1  # an unknown field: validation must say so
    good["metadata"]["name"] = "refused"
    manifest.write_text(json.dumps(good))
    run = subprocess.run(["kubectl", "--kubeconfig", sim.kubeconfig, "apply", "-f",
                          str(manifest)], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "nope" in run.stderr, run.stderr
    assert sim.get_object("", "v1", "pods", "default", "refused") is None


def test_events_are_recorded_listed_and_watched(sim, core):
    core.create_namespaced_pod("default", job_pod("seen", "import time; time.sleep(30)"))
    stored = sim.get_object("", "v1", "pods", "default", "seen")
    stream = core.list_namespaced_event("default", watch=True, timeout_seconds=10,
                                        field_selector="involvedObject.name=seen",
                                        _preload_content=False)
    for _ in range(2):
        sim.call(record_event, sim.store, "default", stored, "BackOff",
                 "Back-off pulling image", "Warning")
    sim.call(record_event, sim.store, "default", stored, "Scheduled", "assigned to sim-node")
    events = core.list_namespaced_event("default",
                                        field_selector="involvedObject.name=seen").items
    by_reason = {e.reason: e for e in events}
    assert set(by_reason) == {"BackOff", "Scheduled"}
    assert by_reason["BackOff"].count == 2 and by_reason["BackOff"].type == "Warning"
    assert by_reason["BackOff"].involved_object.uid == stored["metadata"]["uid"]
    assert by_reason["BackOff"].involved_object.kind == "Pod"
    seen = []
    for line in stream:
        seen.append(json.loads(line))
        if len(seen) == 3:
            break
    stream.close()
    assert [e["type"] for e in seen] == ["ADDED", "MODIFIED", "ADDED"]
    core.delete_namespaced_pod("seen", "default", grace_period_seconds=0)


def test_the_scenario_tests_run_against_a_cluster_named_by_a_kubeconfig(tmp_path):
    """The real-cluster tier, pointed at a simulator standing in for a real cluster: the
    tests pass unchanged, and one needing sim-only fault injection skips, saying why (as
    a developer runs the tier; under CI=true that test fails instead, checked below)."""
    from k8s_sim import running_simulator
    with running_simulator() as other:
        kubeconfig = other.write_kubeconfig(tmp_path / "real.yaml")
        env = {k: v for k, v in os.environ.items() if k != "CI"}
        env["SQLFLOW_PLAYGROUND_TEST_KUBECONFIG"] = str(kubeconfig)

        def tier(**extra):
            return subprocess.run(
                [PY, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                 "tests/test_k8s_pod_jobs.py", "-k", "output_through_fetch or cancel_deletes "
                 "or oom_killed"], cwd=str(ROOT), capture_output=True, text=True,
                timeout=300, env={**env, **extra})
        run = tier()
        assert "2 passed, 1 skipped" in run.stdout, run.stdout[-3000:]
        under_ci = tier(CI="true")  # no skip may count as a pass there
        assert "1 failed, 2 passed" in under_ci.stdout, under_ci.stdout[-3000:]
        assert "needs the simulator: sim.image_pull_backoff_images" in run.stdout
        created = sum(n for (verb, res, _), n in other.counts.items()
                      if (verb, res) == ("create", "pods"))
        assert created >= 2  # the jobs ran there
