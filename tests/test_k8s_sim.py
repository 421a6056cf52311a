"""The in-test Kubernetes API server, driven by the official client and kubectl, behaves
like a real one where the product's Kubernetes backends depend on it."""
import base64
import calendar
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from k8s_sim import running_simulator

NS = "default"


def group_alive(pid):
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def sim():
    with running_simulator() as simulator:
        yield simulator
    assert not [pid for pid in simulator.spawned_pids if group_alive(pid)]


@pytest.fixture
def kube(sim, tmp_path):
    path = sim.write_kubeconfig(tmp_path / "kubeconfig")
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=cfg)
    api = client.ApiClient(cfg)
    yield SimpleNamespace(sim=sim, kubeconfig=path, core=client.CoreV1Api(api),
                          batch=client.BatchV1Api(api), custom=client.CustomObjectsApi(api))
    api.close()


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {predicate}")


def pod(name, command=None, image="python:3.11", labels=None, **spec):
    container = {"name": "main", "image": image, **({"command": command} if command else {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"restartPolicy": "Never", "containers": [container], **spec}}


def job(name, command, **spec):
    return {"metadata": {"name": name}, "spec": {**spec, "template": {"spec": {
        "restartPolicy": "Never", "containers": [{"name": "w", "image": "python:3.11",
                                                   "command": command}]}}}}


def phase(kube, name):
    return kube.core.read_namespaced_pod(name, NS).status.phase


def job_condition(kube, name, kind):
    conditions = kube.batch.read_namespaced_job(name, NS).status.conditions or []
    return [c for c in conditions if c.type == kind and c.status == "True"]


def rejection(call):
    """The status code and Status document of a refused request."""
    try:
        call()
    except ApiException as e:
        return e.status, json.loads(e.body)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    raise AssertionError("the request was accepted")


def names(items):
    return sorted(i.metadata.name for i in items)


def test_pods_services_secrets_round_trip_with_label_selectors(kube):
    kube.core.create_namespaced_pod(NS, pod("web", labels={"app": "web", "tier": "fe"}))
    kube.core.create_namespaced_pod(NS, pod("db", image="busybox", labels={"app": "db"}))
    kube.core.create_namespaced_pod(NS, pod("bare", image="busybox"))
    listing = kube.core.list_namespaced_pod(NS)
    assert names(listing.items) == ["bare", "db", "web"] and int(listing.metadata.resource_version)
    for selector, expected in [("app=web", ["web"]), ("app!=web", ["bare", "db"]),
                               ("app in (web,db)", ["db", "web"]), ("app", ["db", "web"]),
                               ("!app", ["bare"]), ("app=web,tier=fe", ["web"])]:
        assert names(kube.core.list_namespaced_pod(NS, label_selector=selector).items) == expected
    by_name = kube.core.list_namespaced_pod(NS, field_selector="metadata.name=db")
    assert names(by_name.items) == ["db"]

    svc = kube.core.create_namespaced_service(NS, {"metadata": {"name": "web", "labels": {
        "app": "web"}}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})
    assert svc.spec.cluster_ip and svc.spec.ports[0].target_port == 80
    kube.core.create_namespaced_secret(NS, {"metadata": {"name": "pw", "labels": {"app": "db"}},
                                            "stringData": {"password": "s3cret"}})
    secret = kube.core.read_namespaced_secret("pw", NS)
    assert base64.b64decode(secret.data["password"]) == b"s3cret" and secret.type == "Opaque"
    assert names(kube.core.list_namespaced_service(NS, label_selector="app=web").items) == ["web"]
    assert names(kube.core.list_namespaced_secret(NS, label_selector="app=db").items) == ["pw"]

    kube.core.delete_namespaced_pod("web", NS)
    kube.core.delete_collection_namespaced_pod(NS, label_selector="!app")
    kube.core.delete_namespaced_service("web", NS)
    kube.core.delete_namespaced_secret("pw", NS)
    wait_for(lambda: names(kube.core.list_namespaced_pod(NS).items) == ["db"])
    assert not kube.core.list_namespaced_service(NS).items
    assert not kube.core.list_namespaced_secret(NS).items


def test_duplicates_are_409_and_missing_objects_are_404(kube):
    kube.core.create_namespaced_pod(NS, pod("p1", image="busybox"))
    status, body = rejection(lambda: kube.core.create_namespaced_pod(NS, pod("p1")))
    assert (status, body["reason"]) == (409, "AlreadyExists")
    status, body = rejection(lambda: kube.core.read_namespaced_pod("nope", NS))
    assert (status, body["kind"], body["reason"]) == (404, "Status", "NotFound")
    assert body["message"] == 'pods "nope" not found'
    for call in (lambda: kube.core.delete_namespaced_pod("nope", NS),
                 lambda: kube.core.delete_namespaced_service("nope", NS),
                 lambda: kube.core.read_namespaced_secret("nope", NS),
                 lambda: kube.batch.read_namespaced_job("nope", NS)):
        assert rejection(call)[0] == 404


def raw_create_pod(kube, body):
    """What a client without the Python client's own checks (kubectl, curl) may send."""
    urllib.request.urlopen(urllib.request.Request(
        f"{kube.sim.url}/api/v1/namespaces/{NS}/pods", json.dumps(body).encode(),
        {"Content-Type": "application/json"}), timeout=10)


@pytest.mark.parametrize("create, field", [
    (lambda k: raw_create_pod(k, {"metadata": {"name": "p"}, "spec": {
        "containers": [{"image": "busybox"}]}}), "spec.containers[0].name"),
    (lambda k: raw_create_pod(k, {"metadata": {"name": "p"}, "spec": {
        "containers": [{"name": "c", "image": "busybox", "colour": "red"}]}}),
     "spec.containers[0].colour"),
    (lambda k: k.core.create_namespaced_pod(NS, pod("Bad_Name")), "metadata.name"),
    (lambda k: k.core.create_namespaced_pod(NS, pod("p", labels={"app": "no spaces"})),
     "metadata.labels"),
    (lambda k: k.core.create_namespaced_service(NS, {"metadata": {"name": "1svc"}, "spec": {
        "ports": [{"port": 80}]}}), "metadata.name"),
    (lambda k: k.batch.create_namespaced_job(NS, {"metadata": {"name": "j"}, "spec": {"template": {
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}),
     "spec.template.spec.restartPolicy"),
])
def test_invalid_objects_are_rejected_with_422(kube, create, field):
    status, body = rejection(lambda: create(kube))
    assert (status, body["reason"]) == (422, "Invalid")
    assert field in [c["field"] for c in body["details"]["causes"]] and field in body["message"]


def test_pod_runs_its_command_fails_with_exit_code_and_serves_its_log(kube):
    rv = kube.core.list_namespaced_pod(NS).metadata.resource_version
    kube.core.create_namespaced_pod(NS, pod("hello", ["python", "-c",
                                                     "print('hello'); import sys; sys.exit(3)"]))
    w = watch.Watch()
    phases = []
    for event in w.stream(kube.core.list_namespaced_pod, NS, resource_version=rv,
                          timeout_seconds=10):
        phases.append(event["object"].status.phase)
        if phases[-1] == "Failed":
            w.stop()
    assert [p for i, p in enumerate(phases) if i == 0 or p != phases[i - 1]] == \
        ["Pending", "Running", "Failed"]
    state = kube.core.read_namespaced_pod("hello", NS).status.container_statuses[0].state
    assert (state.terminated.exit_code, state.terminated.reason) == (3, "Error")
    assert kube.core.read_namespaced_pod_log("hello", NS) == "hello\n"
    stamped = kube.core.read_namespaced_pod_log("hello", NS, timestamps=True)
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.\d{9}Z hello\n", stamped)
    assert match

    def log_since(since):
        url = f"{kube.sim.url}/api/v1/namespaces/{NS}/pods/hello/log?sinceTime={since}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.read().decode()
    second = calendar.timegm(time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S"))
    fmt = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
    assert log_since(fmt(second)) == "hello\n"  # at or after: cut to the second
    assert log_since(fmt(second + 1)) == ""
    assert kube.core.read_namespaced_pod_log("hello", NS, tail_lines=0) == ""


def test_the_active_deadline_and_deletion_stop_a_pods_processes(kube):
    kube.core.create_namespaced_pod(NS, pod("slow", ["python", "-c", "import time; time.sleep(60)"],
                                            activeDeadlineSeconds=1))
    kube.core.create_namespaced_pod(NS, pod("tree", ["sh", "-c", "sleep 60 & sleep 60"]))
    wait_for(lambda: phase(kube, "tree") == phase(kube, "slow") == "Running")
    pids = kube.sim.pids()
    kube.core.delete_namespaced_pod("tree", NS)  # SIGTERM to the group, then removed
    wait_for(lambda: phase(kube, "slow") == "Failed", timeout=10)
    status = kube.core.read_namespaced_pod("slow", NS).status  # the pod's reason, as for real
    assert (status.reason, status.container_statuses[0].state.terminated.exit_code) == \
        ("DeadlineExceeded", 137)
    wait_for(lambda: names(kube.core.list_namespaced_pod(NS).items) == ["slow"])
    assert len(pids) == 2 and wait_for(lambda: not any(map(group_alive, pids)), timeout=5)


def test_watch_from_a_resource_version_sees_changes_in_order(kube):
    rv = kube.core.list_namespaced_pod(NS).metadata.resource_version
    kube.core.create_namespaced_pod(NS, pod("w1", image="busybox", labels={"v": "1"}))
    wait_for(lambda: phase(kube, "w1") == "Running")
    kube.core.patch_namespaced_pod("w1", NS, {"metadata": {"labels": {"v": "2"}}})
    kube.core.delete_namespaced_pod("w1", NS)
    seen = []
    w = watch.Watch()
    for event in w.stream(kube.core.list_namespaced_pod, NS, resource_version=rv,
                          timeout_seconds=10):
        seen.append((event["type"], int(event["object"].metadata.resource_version),
                     event["object"].metadata.labels["v"]))
        if event["type"] == "DELETED":
            w.stop()
    types, rvs, _ = zip(*seen)
    assert types[0] == "ADDED" and types[-1] == "DELETED" and set(types[1:-1]) == {"MODIFIED"}
    assert list(rvs) == sorted(set(rvs)) and rvs[0] > int(rv)
    assert ("MODIFIED", "2") in [(t, label) for t, _, label in seen]


def test_watch_from_a_compacted_resource_version_is_410_gone(kube):
    old = kube.core.list_namespaced_pod(NS).metadata.resource_version
    kube.core.create_namespaced_pod(NS, pod("c1", image="busybox"))
    kube.sim.compact()
    for extra in ({"timeout_seconds": 5}, {}):  # without a timeout the client retries once
        with pytest.raises(ApiException) as e:
            list(watch.Watch().stream(kube.core.list_namespaced_pod, NS, resource_version=old,
                                      **extra))
        assert e.value.status == 410 and "too old resource version" in e.value.reason
    fresh = kube.core.list_namespaced_pod(NS).metadata.resource_version  # re-list, then watch
    kube.core.delete_namespaced_pod("c1", NS)
    events = list(watch.Watch().stream(kube.core.list_namespaced_pod, NS, resource_version=fresh,
                                       timeout_seconds=1))
    assert [e["type"] for e in events][-1] == "DELETED"


def test_job_completes_and_propagated_delete_collects_its_pods(kube):
    kube.batch.create_namespaced_job(NS, job("ok", ["python", "-c", "print('done')"]))
    assert wait_for(lambda: job_condition(kube, "ok", "Complete"))
    status = kube.batch.read_namespaced_job("ok", NS).status
    assert status.succeeded == 1 and status.completion_time and status.start_time
    pods = kube.core.list_namespaced_pod(NS, label_selector="job-name=ok").items
    assert len(pods) == 1 and pods[0].status.phase == "Succeeded"
    assert pods[0].metadata.owner_references[0].controller
    assert kube.core.read_namespaced_pod_log(pods[0].metadata.name, NS) == "done\n"
    kube.batch.delete_namespaced_job("ok", NS, propagation_policy="Foreground")
    wait_for(lambda: not kube.core.list_namespaced_pod(NS, label_selector="job-name=ok").items)
    wait_for(lambda: not kube.batch.list_namespaced_job(NS).items)


def test_job_over_its_backoff_limit_fails_and_default_delete_orphans_pods(kube):
    kube.batch.create_namespaced_job(NS, job("bad", ["python", "-c", "raise SystemExit(1)"],
                                             backoffLimit=0))
    failed = wait_for(lambda: job_condition(kube, "bad", "Failed"))
    assert failed[0].reason == "BackoffLimitExceeded"
    assert kube.batch.read_namespaced_job("bad", NS).status.failed == 1
    kube.batch.delete_namespaced_job("bad", NS)  # batch/v1 orphans pods unless told otherwise
    wait_for(lambda: not kube.batch.list_namespaced_job(NS).items)
    (orphan,) = kube.core.list_namespaced_pod(NS, label_selector="job-name=bad").items
    assert not orphan.metadata.owner_references


def test_a_mysql_pod_becomes_ready_and_its_service_is_collected_with_it(kube):
    owner = kube.core.create_namespaced_pod(NS, pod("db", image="mariadb:11"))  # no command run
    ref = {"apiVersion": "v1", "kind": "Pod", "name": "db", "uid": owner.metadata.uid}
    kube.core.create_namespaced_service(NS, {
        "metadata": {"name": "owned", "ownerReferences": [ref]},
        "spec": {"ports": [{"port": 3306}]}})

    def ready():
        status = kube.core.read_namespaced_pod("db", NS).status
        return any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])
    wait_for(ready, timeout=5)
    assert phase(kube, "db") == "Running" and kube.core.read_namespaced_service("owned", NS)
    kube.core.delete_namespaced_pod("db", NS)
    wait_for(lambda: not kube.core.list_namespaced_service(NS).items)


def test_requests_are_counted_by_verb_resource_and_name(kube):
    kube.core.create_namespaced_pod(NS, pod("counted", image="busybox"))
    kube.sim.reset_counts()
    for _ in range(3):
        kube.core.read_namespaced_pod("counted", NS)
    kube.core.list_namespaced_pod(NS)
    list(watch.Watch().stream(kube.core.list_namespaced_pod, NS, timeout_seconds=1))
    counts = kube.sim.counts
    assert counts[("get", "pods", "counted")] == 3
    assert counts[("list", "pods", None)] == 1 and counts[("watch", "pods", None)] == 1
    kube.sim.reset_counts()
    assert kube.core.list_namespaced_pod(NS) and not kube.sim.counts[("get", "pods", "counted")]


def test_injected_faults_show_their_reasons(kube):
    kube.sim.image_pull_backoff_images.add("registry.invalid/nothing:1")
    kube.core.create_namespaced_pod(NS, pod("pull", image="registry.invalid/nothing:1"))
    kube.core.create_namespaced_pod(NS, pod("hook", image="busybox"))
    kube.sim.fail_pod(NS, "hook", "ImagePullBackOff", 'Back-off pulling image "busybox"')

    def waiting_reason(name):
        statuses = kube.core.read_namespaced_pod(name, NS).status.container_statuses or []
        return statuses and statuses[0].state.waiting and statuses[0].state.waiting.reason
    for name in ("pull", "hook"):
        assert wait_for(lambda: waiting_reason(name) == "ImagePullBackOff")
        assert phase(kube, name) == "Pending"
    status, body = rejection(lambda: kube.core.read_namespaced_pod_log("pull", NS))
    assert status == 400 and "waiting to start" in body["message"]

    kube.core.create_namespaced_pod(NS, pod("oom", ["python", "-c", "import time; time.sleep(60)"]))
    wait_for(lambda: phase(kube, "oom") == "Running")
    kube.sim.fail_pod(NS, "oom", "OOMKilled")
    wait_for(lambda: phase(kube, "oom") == "Failed")
    state = kube.core.read_namespaced_pod("oom", NS).status.container_statuses[0].state
    assert (state.terminated.reason, state.terminated.exit_code) == ("OOMKilled", 137)


def test_custom_resource_stored_as_given_and_status_set_by_a_fake_operator(kube):
    body = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "train"},
            "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1}}}}
    args = ("kubeflow.org", "v1", NS, "pytorchjobs")
    created = kube.custom.create_namespaced_custom_object(*args, body)
    assert created["spec"] == body["spec"] and created["metadata"]["uid"]
    kube.sim.set_status("kubeflow.org", "v1", "pytorchjobs", NS, "train",
                        {"conditions": [{"type": "Succeeded", "status": "True"}]})
    got = kube.custom.get_namespaced_custom_object(*args, "train")
    assert got["status"]["conditions"][0]["type"] == "Succeeded"
    assert int(got["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    kube.custom.delete_namespaced_custom_object(*args, "train")
    assert not kube.custom.list_namespaced_custom_object(*args)["items"]


def test_kubectl_lists_pods_and_jobs_and_reads_logs(kube, tmp_path):
    kube.core.create_namespaced_pod(NS, pod("greeter", ["python", "-c", "print('hi from a pod')"]))
    kube.batch.create_namespaced_job(NS, job("nightly", ["python", "-c", "pass"]))
    wait_for(lambda: phase(kube, "greeter") == "Succeeded")

    def kubectl(*args):
        done = subprocess.run(["kubectl", "--kubeconfig", str(kube.kubeconfig), "--cache-dir",
                               str(tmp_path / "cache"), *args], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout
    assert re.search(r"^greeter\s+0/1\s+Completed", kubectl("get", "pods"), re.M)
    assert "sim-node" in kubectl("get", "pods", "-o", "wide")
    assert kubectl("logs", "greeter") == "hi from a pod\n"
    assert re.search(r"^nightly\s", kubectl("get", "jobs"), re.M)
