"""Crash recovery against the in-test API server: watches survive 410 Gone, orphans are
deleted, vanished objects are noticed."""
import sys
import threading
import time

import pytest
from kubernetes import client as k8s

from conftest import client_context, request, wait_until
from sqlflow_playground.k8s import objects
from sqlflow_playground.k8s.clients import shared_api_client
from sqlflow_playground.k8s.names import managed_selector
from sqlflow_playground.k8s.reflector import ResourceReflector
from sqlflow_playground.plugins import pod as pod_plugin

PY = sys.executable
SLEEP = [PY, "-c", "import time; time.sleep(60)"]


@pytest.fixture
def core(sim):
    return k8s.CoreV1Api(shared_api_client(sim.kubeconfig))


def pods(sim):
    return sorted(p["metadata"]["name"] for p in sim.list_objects("", "v1", "pods", "default"))


def test_watch_broken_by_410_gone_relists_and_loses_no_change(sim, core):
    gate = threading.Event()
    gate.set()

    def gated_list(namespace, **kwargs):
        if kwargs.get("watch"):
            assert gate.wait(30)
        return core.list_namespaced_pod(namespace, **kwargs)

    reflector = ResourceReflector(gated_list, "default", managed_selector(), "pods",
                                  watch_timeout_s=1)
    reflector.start()
    try:
        core.create_namespaced_pod("default", objects.make_job_pod("p1", "u", "t1", "img",
                                                                   command=SLEEP))
        assert wait_until(lambda: reflector.get("p1") is not None)
        gate.clear()  # the next watch, after this one times out, waits here
        time.sleep(1.5)
        core.delete_namespaced_pod("p1", "default")
        core.create_namespaced_pod("default", objects.make_job_pod("p2", "u", "t2", "img",
                                                                   command=SLEEP))
        assert wait_until(lambda: pods(sim) == ["p2"])
        sim.compact()  # the watch will resume from a resourceVersion the server forgot
        gate.set()
        assert wait_until(lambda: reflector.relists >= 2)
        assert wait_until(lambda: sorted(reflector.objects) == ["p2"])
        assert wait_until(lambda: reflector.get("p2")["status"]["phase"] == "Running")
    finally:
        reflector.stop()


@pytest.fixture
def server(sim, make_server):
    return make_server(provisioner="kubernetes", enable_pod_jobs=True, kubeconfig=sim.kubeconfig,
                       namespace="default", reconcile_grace_s=0, provision_timeout_s=10)


def test_reconcile_deletes_orphans_and_keeps_what_the_store_knows(server, sim, core, certs):
    front = client_context(certs.dir, "front")
    assert request(server.port, front, "POST", "/api/create_db", {"user_id": "alice"}).status == 200
    job = request(server.port, front, "POST", "/api/jobs", {
        "user_id": "alice", "task_type": "pod", "spec": {"image": "img", "command": SLEEP}})
    assert job.status == 201
    kept = pods(sim)
    # What a crash leaves behind: a job pod and a user's MySQL objects nobody knows of.
    core.create_namespaced_pod("default", objects.make_job_pod("sfp-job-ghost", "ghost",
                                                               "gone-token", "img", command=SLEEP))
    pod = core.create_namespaced_pod("default", objects.make_mysql_pod(
        "sfp-mysql-ghost", "ghost", "mariadb:10.11", "sfp-mysql-ghost"))
    owned = objects.serialize(pod)
    core.create_namespaced_secret("default", objects.with_owner(objects.make_mysql_secret(
        "sfp-mysql-ghost", "ghost", "pw" * 12, "playground", "sqlflow"), owned))
    core.create_namespaced_service("default", objects.with_owner(objects.make_mysql_service(
        "sfp-mysql-ghost", "ghost", "sfp-mysql-ghost"), owned))
    assert wait_until(lambda: len(server.gateway.cluster.pods.objects) == len(kept) + 2)

    assert server.call(server.gateway.reconciler.run()) == 2
    assert wait_until(lambda: pods(sim) == kept)
    for plural in ("secrets", "services"):
        names = [o["metadata"]["name"] for o in sim.list_objects("", "v1", plural, "default")]
        assert "sfp-mysql-ghost" not in names and len(names) == 1
    request(server.port, front, "DELETE", f"/api/jobs/{job.body['token']}")


def test_job_whose_pod_vanished_becomes_unknown(server, sim, core, certs, monkeypatch):
    monkeypatch.setattr(pod_plugin, "CACHE_GRACE_S", 0)
    alice = client_context(certs.dir, "alice")
    token = request(server.port, alice, "POST", "/api/jobs", {
        "task_type": "pod", "spec": {"image": "img", "command": SLEEP}}).body["token"]
    assert wait_until(lambda: len(pods(sim)) == 1)
    core.delete_namespaced_pod(pods(sim)[0], "default")
    assert wait_until(lambda: not server.gateway.cluster.pods.objects)
    body = request(server.port, alice, "GET", f"/api/jobs/{token}").body
    assert body["status"] == "UNKNOWN" and "gone" in body["message"]


def test_user_whose_mysql_pod_vanished_is_provisioned_anew(server, sim, core, certs):
    front = client_context(certs.dir, "front")
    first = request(server.port, front, "POST", "/api/create_db", {"user_id": "bob"}).body
    name = pods(sim)[0]
    core.delete_namespaced_pod(name, "default")
    assert wait_until(lambda: server.gateway.cluster.pods.get(name) is None)
    again = request(server.port, front, "POST", "/api/create_db", {"user_id": "bob"}).body
    assert again["created"] is True and again["data_source"] != first["data_source"]
    assert pods(sim) == [name]
