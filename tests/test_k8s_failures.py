"""Kubernetes when things go wrong (issue 11), on the simulator with injected faults: a
dead MySQL pod is a lost database provisioned afresh, a re-created one never inherits what
dies with the old one, and the cluster's reason ends a create_db or a job promptly."""
import sys
import time

import pytest

from conftest import client_context, request, wait_until

PY = sys.executable
KINDS = ("pods", "secrets", "services")


@pytest.fixture
def sim(tmp_path):
    """The simulator, with grace periods long enough for a slow MySQL shutdown."""
    from k8s_sim import running_simulator
    from sqlflow_playground.k8s.clients import close_shared_clients
    with running_simulator(max_grace_s=10) as simulator:
        simulator.kubeconfig = str(simulator.write_kubeconfig(tmp_path / "kubeconfig"))
        yield simulator
    close_shared_clients()


@pytest.fixture
def front(certs):
    return client_context(certs.dir, "front")


def k8s_server(make_server, sim, **config):
    return make_server(**{"provisioner": "kubernetes", "kubeconfig": sim.kubeconfig,
                          "namespace": "default", "provision_timeout_s": 30, **config})


def create(server, front, user_id):
    return request(server.port, front, "POST", "/api/create_db", {"user_id": user_id})


def objects_of(sim, plural):
    return sim.list_objects("", "v1", plural, "default")


def mysql_pod(sim):
    (pod,) = objects_of(sim, "pods")
    return pod


@pytest.mark.parametrize("fault", ["evicted", "crashloop", "oomkilled"])
def test_a_dead_mysql_pod_is_a_lost_database_provisioned_afresh(make_server, sim, front,
                                                                 fault):
    """Finding 1: an evicted or crash-looping pod no longer counts as a database."""
    server = k8s_server(make_server, sim)
    first = create(server, front, "bob")
    assert first.status == 200, first.body
    assert sim.mysql_refusal(first.body["data_source"]) is None
    name = mysql_pod(sim)["metadata"]["name"]
    sim.inject(name, fault)
    assert wait_until(lambda: sim.mysql_refusal(first.body["data_source"]) is not None)
    assert wait_until(lambda: not server.gateway.provisioner.is_alive("bob", {"pod": name}))

    started = time.monotonic()
    again = create(server, front, "bob")
    assert again.status == 200, again.body
    assert time.monotonic() - started < 30  # within the provision timeout
    assert again.body["created"] is True
    assert again.body["data_source"] != first.body["data_source"]  # new credentials
    assert sim.mysql_refusal(again.body["data_source"]) is None
    assert create(server, front, "bob").body == {**again.body, "created": False}


@pytest.mark.parametrize("release", ["delete_db", "idle"])
def test_create_db_right_after_a_release_gets_credentials_the_new_pod_accepts(
        make_server, sim, front, release):
    """Finding 2: the old pod takes 3 s to stop; nothing of the new one is owned by it."""
    sim.mysql_shutdown_s = 3.0
    server = k8s_server(make_server, sim, idle_timeout_s=1)
    assert create(server, front, "carol").status == 200
    old_uid = mysql_pod(sim)["metadata"]["uid"]
    if release == "delete_db":
        assert request(server.port, front, "POST", "/api/delete_db",
                       {"user_id": "carol"}).body["released"] is True
    else:  # the user comes back right after the reaper released their idle database
        time.sleep(1.5)
        assert server.call(server.gateway.playground.reap_idle()) == ["carol"]
    assert mysql_pod(sim)["metadata"].get("deletionTimestamp")  # still terminating

    again = create(server, front, "carol")
    assert again.status == 200, again.body
    assert wait_until(lambda: old_uid not in [p["metadata"]["uid"]
                                              for p in objects_of(sim, "pods")])
    time.sleep(0.5)  # let the garbage collector act on what the old pod owned, if anything
    assert sim.mysql_refusal(again.body["data_source"]) is None
    new_uid = mysql_pod(sim)["metadata"]["uid"]
    for plural in ("secrets", "services"):
        (obj,) = objects_of(sim, plural)
        assert [r["uid"] for r in obj["metadata"]["ownerReferences"]] == [new_uid]
    assert create(server, front, "carol").body == {**again.body, "created": False}


@pytest.mark.parametrize("fault,reason", [("unschedulable", "Unschedulable"),
                                          ("unpullable", "ErrImagePull"),
                                          ("crashloop", "CrashLoopBackOff"),
                                          ("oomkilled", "OOMKilled")])
def test_create_db_on_a_sick_cluster_is_a_503_naming_the_reason_within_the_grace(
        make_server, sim, front, fault, reason):
    """Finding 3 (create_db): not a silent 180 s wait ending in "not ready"."""
    server = k8s_server(make_server, sim, provision_timeout_s=120, pending_grace_s=1)
    sim.inject({}, fault)
    started = time.monotonic()
    resp = create(server, front, "dave")
    assert resp.status == 503 and reason in resp.body["error"]["message"], resp.body
    assert time.monotonic() - started < 30  # the grace, not the provision timeout
    warned = {e["reason"] for e in sim.list_objects("", "v1", "events", "default")
              if e["type"] == "Warning"}  # what kubectl describe pod shows
    assert warned >= {"FailedScheduling" if fault == "unschedulable" else
                      "Failed" if fault == "unpullable" else "BackOff"}
    assert wait_until(lambda: not any(objects_of(sim, plural) for plural in KINDS))
    sim.clear_faults()
    assert create(server, front, "dave").status == 200  # and a retry starts clean


def test_a_heart_beat_for_a_lost_database_says_so(make_server, sim, front):
    """Heart beats of a dead database neither pass for liveness nor hide it."""
    server = k8s_server(make_server, sim)

    def beat():
        resp = request(server.port, front, "GET", "/api/heart_beat?user_id=erin")
        assert resp.status == 200  # the deployed magic reads no body
        return resp.body

    assert create(server, front, "erin").status == 200
    assert beat()["status"] == "ok"
    sim.evict("default", mysql_pod(sim)["metadata"]["name"])
    assert wait_until(lambda: beat()["status"] == "lost")
    assert "create_db" in beat()["message"]
    assert create(server, front, "erin").body["created"] is True
    assert beat()["status"] == "ok"


# -- pod jobs ---------------------------------------------------------------------------

def pod_server(make_server, sim, **config):
    return make_server(enable_pod_jobs=True, kubeconfig=sim.kubeconfig, namespace="default",
                       **config)


def submit(server, alice, image="python:3.11", **spec):
    resp = request(server.port, alice, "POST", "/api/jobs", {"task_type": "pod", "spec": {
        "image": image, "command": [PY, "-c", "import time; time.sleep(60)"], **spec}})
    return resp


def until_done(server, alice, token, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = request(server.port, alice, "GET", f"/api/jobs/{token}?wait=2").body
        if body["status"] not in ("PENDING", "RUNNING"):
            return body
    raise AssertionError(f"job still {body['status']}: {body['message']}")


@pytest.mark.parametrize("fault,image,reason", [
    (None, "unpullable/nothing:1", "ImagePullBackOff"),
    ("unschedulable", "python:3.11", "Unschedulable"),
])
def test_a_stuck_pod_job_fails_with_the_reason_within_its_grace_and_frees_its_slot(
        make_server, sim, certs, fault, image, reason):
    """Findings 3 and 4 (pod jobs): not PENDING forever, holding a quota slot."""
    server = pod_server(make_server, sim, pending_grace_s=2, max_jobs_per_user=1)
    alice = client_context(certs.dir, "alice")
    if fault:
        sim.inject({}, fault)
    started = time.monotonic()
    token = submit(server, alice, image).body["token"]
    body = until_done(server, alice, token)
    assert body["status"] == "FAILED" and reason in body["message"], body
    assert time.monotonic() - started < 30
    assert wait_until(lambda: not objects_of(sim, "pods"))  # nothing left in the cluster
    sim.clear_faults()
    assert submit(server, alice).status == 201  # its slot is free


def test_timeout_s_is_enforced_by_the_gateway_when_no_kubelet_can(make_server, sim, certs):
    """Finding 4: an unscheduled pod has no node to enforce its deadline."""
    server = pod_server(make_server, sim, pending_grace_s=600)
    alice = client_context(certs.dir, "alice")
    sim.inject({}, "unschedulable")
    token = submit(server, alice, timeout_s=1).body["token"]
    body = until_done(server, alice, token)
    assert body["status"] == "FAILED" and "DeadlineExceeded" in body["message"], body
    assert "Unschedulable" in body["message"]
    assert wait_until(lambda: not objects_of(sim, "pods"))


def test_an_unpullable_pod_fails_by_its_deadline_in_the_simulator_too(make_server, sim, certs):
    """The kubelet counts activeDeadlineSeconds from the pod's start, image pulls included."""
    from kubernetes import client as k8s
    from sqlflow_playground.k8s import objects
    from sqlflow_playground.k8s.clients import shared_api_client
    core = k8s.CoreV1Api(shared_api_client(sim.kubeconfig))
    core.create_namespaced_pod("default", objects.make_job_pod(
        "stuck", "u", "t", "unpullable/x:1", timeout_s=1))
    assert wait_until(lambda: (sim.get_object("", "v1", "pods", "default", "stuck")["status"]
                               .get("reason")) == "DeadlineExceeded")


def test_a_k8s_job_whose_pod_is_stuck_fails_naming_the_pod_and_reason(make_server, sim, certs):
    """Findings 3 and 4 (workloads): a Job's pod that never starts ends the job."""
    server = pod_server(make_server, sim, pending_grace_s=2)
    alice = client_context(certs.dir, "alice")
    manifest = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "train"},
                "spec": {"backoffLimit": 0, "template": {"spec": {"containers": [{
                    "name": "worker", "image": "unpullable/trainer:1",
                    "command": [PY, "-c", "print('never')"]}]}}}}
    resp = request(server.port, alice, "POST", "/api/jobs",
                   {"task_type": "k8s_job", "spec": {"manifest": manifest}})
    assert resp.status == 201, resp.body
    body = until_done(server, alice, resp.body["token"])
    assert body["status"] == "FAILED" and "ImagePullBackOff" in body["message"], body
    assert wait_until(lambda: not objects_of(sim, "pods")
                      and not sim.list_objects("batch", "v1", "jobs", "default"))


def test_a_stuck_pod_job_ends_failed_even_if_its_pod_cannot_be_deleted(make_server, sim, certs):
    """The end is recorded whatever the cluster says to the clean-up."""
    server = pod_server(make_server, sim, pending_grace_s=1)
    alice = client_context(certs.dir, "alice")
    sim.faults = {("delete", "pods"): 403}  # the API server refuses every pod deletion
    token = submit(server, alice, "unpullable/nothing:1").body["token"]
    body = until_done(server, alice, token)
    assert body["status"] == "FAILED" and "ImagePullBackOff" in body["message"], body
    assert len(objects_of(sim, "pods")) == 1
    sim.faults = {}
