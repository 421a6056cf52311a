"""Least privilege, tested (finding 7): the Role in deploy/role.yaml grants exactly the
(API group, resource, verb) triples the gateway's code calls, and the cluster's refusals
(403, 429, 5xx) reach the user as 503s naming them, never as a 422 about their spec.

The simulator enforces the Role (``sim.rbac_rules``: a call it does not grant is a 403, as
on a real cluster) and records every request; a run that provisions a database, runs and
cancels ``pod`` and ``k8s_job`` jobs (batch/v1 and PyTorchJob), reconciles orphans and
releases the database is compared with the Role both ways.
"""
import sys
from pathlib import Path

import pytest
import yaml

from conftest import client_context, fetch_until_eof, request, wait_until
from k8s_sim.defaults import apply_defaults
from k8s_sim.resources import JOBS, PODS, SECRETS, SERVICES, group_of
from sqlflow_playground.k8s import objects
from sqlflow_playground.k8s.names import dns_label

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SLEEP = [PY, "-c", "import time; print('up', flush=True); time.sleep(60)"]
PYTORCH = ("kubeflow.org", "v1", "pytorchjobs")
NOT_RESOURCES = ("discovery", "openapi", "unknown")
# Grants the run cannot exercise in the simulator, each with the reason. (None.)
UNEXERCISED: dict = {}


def role_rules():
    return yaml.safe_load((ROOT / "deploy" / "role.yaml").read_text())["rules"]


def grants(rules):
    return {(g, r, v) for rule in rules for g in rule["apiGroups"]
            for r in rule["resources"] for v in rule["verbs"]}


def calls(counts):
    """(API group, resource[/subresource], verb) of every request recorded."""
    return {(group_of(resource), resource, verb) for verb, resource, _ in counts
            if resource not in NOT_RESOURCES}


@pytest.fixture
def enforced(sim):
    sim.rbac_rules = role_rules()
    return sim


@pytest.fixture
def server(enforced, make_server):
    return make_server(provisioner="kubernetes", enable_pod_jobs=True,
                       kubeconfig=enforced.kubeconfig, namespace="default",
                       reconcile_grace_s=0, provision_timeout_s=30, fetch_page_bytes=300)


def call(server, certs, who, method, path, body=None):
    return request(server.port, client_context(certs.dir, who), method, path, body)


def batch_job(script):
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
            "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
                     "containers": [{"name": "main", "image": "python:3.11",
                                     "command": [PY, "-c", script]}]}}}}


def pytorch_job():
    template = {"spec": {"containers": [{"name": "pytorch", "image": "pytorch:2",
                                         "command": [PY, "-c", "pass"]}]}}
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "t"},
            "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": template}}}}


def plant_mysql(sim, user, complete):
    """The objects a provisioning of ``user`` left when the server died (straight into
    the store: not the gateway's calls); ``complete``: its Secret and Service too."""
    name = dns_label(user, "sfp-mysql")
    pod = objects.serialize(objects.make_mysql_pod(name, user, "mariadb:10.11", name))
    pod = sim.call(lambda: sim.store.create(PODS, "default", pod))
    if not complete:
        return
    owned = {k: pod[k] for k in ("apiVersion", "kind", "metadata")}
    secret = objects.serialize(objects.with_owner(objects.make_mysql_secret(
        name, user, "pw" * 12, "playground", "sqlflow"), owned))
    service = objects.serialize(objects.with_owner(objects.make_mysql_service(
        name, user, name), owned))
    for rt, obj in ((SECRETS, secret), (SERVICES, service)):
        sim.call(lambda: sim.store.create(rt, "default", obj, lambda o: apply_defaults(
            rt.kind, o, sim.allocate_cluster_ip)))


def test_the_role_grants_exactly_what_the_code_calls(server, enforced, certs):
    sim = enforced
    front = lambda *a: call(server, certs, "front", *a)  # noqa: E731
    alice = client_context(certs.dir, "alice")

    def fetch(method, path, body=None):
        return request(server.port, alice, method, path, body)

    created = front("POST", "/api/create_db", {"user_id": "alice"})
    assert created.status == 200, created.body
    # Provisionings a crash cut short: a MySQL pod alone; a pod with its Secret and Service.
    plant_mysql(sim, "bob", complete=False)
    plant_mysql(sim, "carol", complete=True)
    for user in ("bob", "carol"):
        again = front("POST", "/api/create_db", {"user_id": user})
        assert again.status == 200, again.body

    def submit(task_type, spec):
        resp = fetch("POST", "/api/jobs", {"task_type": task_type, "spec": spec})
        assert resp.status == 201, resp.body
        return resp.body["token"]

    # A pod job read to its end (its log followed while it runs), one cancelled.
    done = submit("pod", {"image": "python:3.11", "command": [
        PY, "-c", "import time\nfor i in range(30): print(i, flush=True); time.sleep(0.02)"]})
    body, responses, _ = fetch_until_eof(fetch, done)
    assert body["status"] == "SUCCEEDED" and len(responses) == 30, body
    running = submit("pod", {"image": "python:3.11", "command": SLEEP})
    assert wait_until(lambda: fetch("GET", f"/api/jobs/{running}?wait=1").body["responses"])
    assert fetch("DELETE", f"/api/jobs/{running}").body["status"] == "CANCELLED"

    # k8s_job: a batch/v1 Job to its end, one cancelled, a PyTorchJob driven and cancelled.
    body, responses, _ = fetch_until_eof(fetch, submit("k8s_job", {
        "manifest": batch_job("print('trained')")}))
    assert body["status"] == "SUCCEEDED" and len(responses) == 1, body
    cancelled = submit("k8s_job", {"manifest": batch_job(SLEEP[-1])})
    assert wait_until(lambda: fetch("GET", f"/api/jobs/{cancelled}?wait=1").body["responses"])
    assert fetch("DELETE", f"/api/jobs/{cancelled}").body["status"] == "CANCELLED"
    torch = submit("k8s_job", {"manifest": pytorch_job(), "plural": "pytorchjobs"})
    [pt] = sim.list_objects(*PYTORCH, "default")
    sim.set_status(*PYTORCH, "default", pt["metadata"]["name"], {"conditions": [
        {"type": "Running", "status": "True", "reason": "PyTorchJobRunning"}]})
    assert wait_until(lambda: fetch("GET", f"/api/jobs/{torch}").body["status"] == "RUNNING")
    assert fetch("DELETE", f"/api/jobs/{torch}").body["status"] == "CANCELLED"

    # What a crash leaves behind (written straight into the store: not the gateway's
    # calls), then a reconcile pass deletes it.
    ghost_pod = objects.serialize(objects.make_job_pod("sfp-job-ghost", "ghost", "gone",
                                                       "img", command=SLEEP))
    ghost_job = objects.serialize(objects.make_batch_job("sfp-job-ghost2", "ghost", "gone2",
                                                         "img", command=SLEEP))
    sim.call(lambda: sim.store.create(PODS, "default", ghost_pod))
    sim.call(lambda: sim.store.create(JOBS, "default", ghost_job))
    gateway = server.gateway
    assert wait_until(lambda: gateway.cluster.pods.get("sfp-job-ghost") is not None)
    assert wait_until(lambda: any(c.get("sfp-job-ghost2") for c in
                                  gateway.cluster.workload_caches().values()))
    assert server.call(gateway.reconciler.run()) >= 2

    for user in ("alice", "bob", "carol"):
        assert front("POST", "/api/delete_db", {"user_id": user}).status == 200
    assert wait_until(lambda: not sim.list_objects("", "v1", "secrets", "default"), 30)

    made, granted = calls(sim.counts), grants(role_rules())
    assert made - granted == set(), "calls the Role does not grant"
    unused = granted - made - set(UNEXERCISED)
    assert unused == set(), "grants no code path used"
    assert not any(v in ("list", "watch") and r == "secrets" for _, r, v in granted)
    denied = [k for k, n in sim.counts.items() if k[0] == "forbidden"]
    assert denied == []


def test_the_role_never_lists_secrets_or_uses_wildcards():
    for rule in role_rules():
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        if "secrets" in rule["resources"]:
            assert set(rule["verbs"]) <= {"get", "create", "delete"}, rule


# -- the cluster's refusals are the cluster's ----------------------------------------------

@pytest.fixture
def jobs_server(sim, make_server):
    return make_server(enable_pod_jobs=True, kubeconfig=sim.kubeconfig, namespace="default")


def submit_raw(server, certs, task_type, spec):
    return call(server, certs, "alice", "POST", "/api/jobs",
                {"task_type": task_type, "spec": spec})


def test_a_role_without_create_jobs_is_503_naming_it_not_422(jobs_server, sim, certs):
    sim.rbac_rules = [r for r in role_rules() if "jobs" not in r["resources"]] + [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list", "watch", "delete"]}]
    resp = submit_raw(jobs_server, certs, "k8s_job", {"manifest": batch_job("pass")})
    assert resp.status == 503, resp.body
    message = resp.body["error"]["message"]
    assert "service account may not create jobs.batch" in message and "default" in message
    assert sim.list_objects("batch", "v1", "jobs", "default") == []


@pytest.mark.parametrize("task_type,resource,code,needle", [
    ("pod", "pods", 403, "service account may not create pods"),
    ("pod", "pods", 429, "overloaded"),
    ("pod", "pods", 500, "Kubernetes API failed"),
    ("k8s_job", "jobs", 429, "overloaded"),
    ("k8s_job", "jobs", 503, "Kubernetes API failed"),
])
def test_refusals_of_the_cluster_are_503(jobs_server, sim, certs, task_type, resource, code,
                                         needle):
    spec = {"image": "python:3.11", "command": SLEEP} if task_type == "pod" else \
        {"manifest": batch_job("pass")}
    sim.faults = {("create", resource): code}
    resp = submit_raw(jobs_server, certs, task_type, spec)
    assert resp.status == 503 and needle in resp.body["error"]["message"], resp.body
    sim.faults = {}
    assert submit_raw(jobs_server, certs, task_type, spec).status == 201


@pytest.mark.parametrize("limits", [{"nvidia.com/gpu": "lots"},  # refused by the API server
                                    {"cpu": "lots"}])           # refused before it
def test_a_pod_spec_with_an_invalid_quantity_is_422(jobs_server, sim, certs, limits):
    resp = submit_raw(jobs_server, certs, "pod", {"image": "python:3.11", "command": SLEEP,
                                                  "resources": {"limits": limits}})
    assert resp.status == 422 and "lots" in resp.body["error"]["message"], resp.body
    assert sim.list_objects("", "v1", "pods", "default") == []


def test_refused_log_reads_and_deletes_are_503_naming_them(jobs_server, sim, certs):
    alice = client_context(certs.dir, "alice")
    token = submit_raw(jobs_server, certs, "pod", {"image": "python:3.11",
                                                   "command": SLEEP}).body["token"]
    assert wait_until(lambda: request(jobs_server.port, alice, "GET",
                                      f"/api/jobs/{token}?wait=1").body["status"] == "RUNNING")
    jobs_server.gateway.cluster.logs.close()  # no follower: every read asks the API
    sim.faults = {("get", "pods/log"): 403, ("delete", "pods"): 429}
    reads = []  # the first may come from the log reader's short memory (≤ 5 s)
    assert wait_until(lambda: reads.append(request(jobs_server.port, alice, "GET",
                                                   f"/api/jobs/{token}")) or
                      reads[-1].status != 200, 20)
    assert reads[-1].status == 503, reads[-1].body
    assert "may not get pods/log" in reads[-1].body["error"]["message"]
    cancel = request(jobs_server.port, alice, "DELETE", f"/api/jobs/{token}")
    assert cancel.status == 503 and "overloaded" in cancel.body["error"]["message"], cancel.body
    sim.faults = {}
    assert request(jobs_server.port, alice, "DELETE", f"/api/jobs/{token}").status == 200
