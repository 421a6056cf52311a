"""The Kubernetes builders, names and manifests, checked against the real Kubernetes schemas
(kubernetes-validate, strict) without a cluster."""
import itertools
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes.client import Configuration, V1Secret
from kubernetes.client.rest import ApiException
from kubernetes.config import incluster_config
from kubernetes_validate.utils import latest_version

from sqlflow_playground.k8s import clients, names, objects
from sqlflow_playground.k8s.names import MANAGED_BY, USER_LABEL
from sqlflow_playground.provisioners.mysql import sqlflow_data_source

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
# The oldest version we promise to run on, and the newest the validator knows.
VERSIONS = ["1.30", latest_version()]
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
TRICKY_IDS = ["Alice", "alice", "a.b", "a_b", "a-b", "x@y.z", "x_y.z", "0day", "9", "A" * 63,
              "a" * 63, "a" * 62 + "b", "1" + "_" * 62, "a--1a2b3c4d", "bob.", "bob_", "bob-"]


def valid(obj, version):
    data = obj if isinstance(obj, dict) else objects.serialize(obj)
    kubernetes_validate.validate(data, version, strict=True)
    return data


def matches(selector, labels):
    return all(labels.get(key) == value for key, value in selector.items())


def mysql_objects(user_id="alice"):
    pod_name = names.dns_label(user_id, "sfp-mysql")
    pod = objects.make_mysql_pod(pod_name, user_id, "mariadb:11", pod_name)
    secret = objects.make_mysql_secret(pod_name, user_id, "pw", "db", "user")
    service = objects.make_mysql_service(pod_name, user_id, pod_name)
    return pod, secret, service


def created(obj, uid):
    """What the API server hands back: the object with a uid."""
    obj.metadata.uid = uid
    return obj


# --- names -------------------------------------------------------------------------------

def test_dns_labels_of_tricky_ids_are_valid_and_pairwise_distinct():
    labels = [names.dns_label(user_id, "sfp-mysql") for user_id in TRICKY_IDS]
    for label in labels:
        assert len(label) <= 63 and DNS_LABEL.match(label) and DNS_1035.match(label), label
    assert len(set(labels)) == len(TRICKY_IDS)
    assert re.fullmatch(r"sfp-mysql-alice-[0-9a-f]{8}", names.dns_label("alice", "sfp-mysql"))


def test_dns_label_respects_a_shorter_max_len_and_refuses_bad_prefixes():
    assert len(names.dns_label("a" * 63, "sfp-job", max_len=30)) <= 30
    for prefix in ("Sfp", "-sfp", "1sfp", "sfp_", "x" * 60):
        with pytest.raises(ValueError):
            names.dns_label("alice", prefix)


def test_label_values_of_tricky_ids_are_valid_and_pairwise_distinct():
    values = [names.label_value(user_id) for user_id in TRICKY_IDS]
    for value in values:
        assert len(value) <= 63 and LABEL_VALUE.match(value), value
    assert len(set(values)) == len(TRICKY_IDS)


def test_label_value_keeps_valid_ids_and_hashes_the_rest():
    assert names.label_value("Alice") == "Alice"
    assert re.fullmatch(r"x_y\.z--[0-9a-f]{8}", names.label_value("x@y.z"))
    # An id that looks like a hashed value is hashed too, so no id can pose as another.
    assert names.label_value("a--1a2b3c4d") != "a--1a2b3c4d"
    token = "-Xq_" + "a" * 28  # job tokens are token_urlsafe: may start with - or _
    assert LABEL_VALUE.match(names.label_value(token))


def test_hashed_name_reveals_nothing_of_the_token():
    token = "SecretTokenText_0123456789abcdefgh"
    name = names.hashed_name(token, "sfp-job")
    assert DNS_1035.match(name) and "secret" not in name.lower()


def test_managed_labels_and_selector_string():
    assert names.managed_labels() == {MANAGED_BY[0]: MANAGED_BY[1]}
    assert names.managed_labels("x@y.z", "tok")[USER_LABEL] == names.label_value("x@y.z")
    assert names.managed_selector("alice", "tok") == (
        "app.kubernetes.io/managed-by=sqlflow-playground,sqlflow.tech/user=alice,"
        "sqlflow.tech/job=tok")
    assert names.managed_selector() == "app.kubernetes.io/managed-by=sqlflow-playground"


# --- builders ----------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_every_builder_passes_the_kubernetes_schema(version):
    for obj in mysql_objects("x@y.z"):
        valid(obj, version)
    valid(objects.make_job_pod("sfp-job-1", "alice", "tok", "python:3.11", command=["python"],
                               args=["-c", "print(1)"], env={"A": 1}, timeout_s=2.5), version)
    valid(objects.make_batch_job("sfp-job-2", "alice", "tok", "busybox", command=["true"],
                                 resources={"limits": {"nvidia.com/gpu": 1}}, timeout_s=60),
          version)


def test_mysql_pod_reads_its_credentials_from_the_secret_and_runs_unprivileged():
    pod, secret, _ = mysql_objects()
    data = objects.serialize(pod)
    container = data["spec"]["containers"][0]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert set(env) == {"MYSQL_ROOT_PASSWORD", "MYSQL_DATABASE", "MYSQL_USER", "MYSQL_PASSWORD"}
    assert {ref["name"] for ref in env.values()} == {pod.metadata.name}
    assert {ref["key"] for ref in env.values()} == set(objects.serialize(secret)["stringData"])
    assert container["ports"] == [{"name": "mysql", "containerPort": 3306, "protocol": "TCP"}]
    assert container["readinessProbe"]["tcpSocket"] == {"port": "mysql"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert data["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"},
                                      "limits": {"cpu": "1", "memory": "1Gi"}}
    assert data["spec"]["restartPolicy"] == "Always"
    assert data["spec"]["enableServiceLinks"] is False
    assert data["spec"]["automountServiceAccountToken"] is False
    assert data["metadata"]["labels"]["app.kubernetes.io/component"] == "mysql"


def test_mysql_secret_keeps_a_separate_random_root_password():
    a = objects.make_mysql_secret("s", "alice", "pw", "db", "u").string_data
    b = objects.make_mysql_secret("s", "alice", "pw", "db", "u").string_data
    assert a["password"] == "pw" and a["root-password"] not in ("pw", b["root-password"])
    read_back = V1Secret(data={"password": "cHc="})  # the API returns base64 data only
    assert objects.secret_values(read_back) == {"password": "pw"}


def test_resources_override_defaults_per_key_and_never_request_above_a_limit():
    res = objects.make_resources({"limits": {"memory": "128Mi"}, "requests": {"cpu": "2"}})
    assert res.requests == {"cpu": "2", "memory": "128Mi"}
    assert res.limits == {"cpu": "1", "memory": "128Mi"}
    with pytest.raises(ValueError):
        objects.make_resources({"limit": {}})


def test_service_selects_that_users_pod_and_no_one_elses():
    pod, _, service = mysql_objects("alice")
    selector = service.spec.selector
    assert matches(selector, pod.metadata.labels)
    for other in ("Alice", "alice2", "a.lice"):
        assert not matches(selector, mysql_objects(other)[0].metadata.labels)
    job_pod = objects.make_job_pod("sfp-job-1", "alice", "tok", "busybox")
    assert not matches(selector, job_pod.metadata.labels)
    assert service.spec.ports[0].target_port == "mysql" and service.spec.type == "ClusterIP"
    assert service.metadata.labels == names.managed_labels("alice")


def test_job_pod_runs_once_with_a_deadline_and_the_job_labels():
    data = objects.serialize(objects.make_job_pod(
        "sfp-job-1", "alice", "tok", "busybox", env={"N": 3}, timeout_s=0.2))
    assert data["spec"]["restartPolicy"] == "Never"
    assert data["spec"]["activeDeadlineSeconds"] == 1
    assert data["spec"]["automountServiceAccountToken"] is False
    assert data["spec"]["containers"][0]["env"] == [{"name": "N", "value": "3"}]
    assert data["metadata"]["labels"] == names.managed_labels("alice", "tok")
    with pytest.raises(ValueError):
        objects.make_job_pod("j", "alice", "tok", "busybox", timeout_s=0)


def test_secret_and_service_are_owned_by_the_pod():
    pod, secret, service = mysql_objects()
    with pytest.raises(ValueError):  # not created yet: no uid
        objects.owner_reference(pod)
    pod = created(pod, "1234-uid")
    for obj in (secret, service):
        objects.with_owner(obj, pod)
        objects.with_owner(obj, pod)  # idempotent
        (ref,) = obj.metadata.owner_references
        assert (ref.api_version, ref.kind, ref.name, ref.uid) == ("v1", "Pod", pod.metadata.name,
                                                                  "1234-uid")
        assert ref.block_owner_deletion is True and ref.controller is False
        valid(obj, VERSIONS[-1])
    as_dict = objects.owner_reference({"apiVersion": "v1", "kind": "Pod",
                                       "metadata": {"name": "p", "uid": "u"}})
    assert as_dict.uid == "u"


def test_data_source_is_sqlflows_form_with_the_service_name():
    host = objects.service_host("sfp-mysql-alice-1a2b3c4d", "sqlflow-playground")
    assert host == "sfp-mysql-alice-1a2b3c4d.sqlflow-playground.svc.cluster.local"
    assert objects.service_host("s", "ns", cluster_domain=None) == "s.ns"
    assert objects.mysql_data_source is sqlflow_data_source
    assert objects.mysql_data_source("u", "p", host, 3306, "db") == (
        f"mysql://u:p@tcp({host}:3306)/db?maxAllowedPacket=0")


# --- user workloads ----------------------------------------------------------------------

def batch_job(**pod_spec):
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "mine", "labels": {"team": "ml"}},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}],
                                           **pod_spec}}}}


def pytorch_job(**pod_spec):
    def replica(count):
        return {"replicas": count, "restartPolicy": "OnFailure", "template": {
            "metadata": {"annotations": {"a": "b"}},
            "spec": {"containers": [{"name": "pytorch", "image": "pytorch:2"}], **pod_spec}}}
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "t"},
            "spec": {"pytorchReplicaSpecs": {"Master": replica(1), "Worker": replica(2)}}}


@pytest.mark.parametrize("version", VERSIONS)
def test_batch_job_gets_our_name_namespace_and_labels(version):
    manifest = batch_job()
    obj = valid(objects.prepare_workload(manifest, "x@y.z", "tok", "sqlflow-playground"), version)
    labels = names.managed_labels("x@y.z", "tok")
    assert obj["metadata"]["name"] == names.hashed_name("tok", "sfp-job")
    assert obj["metadata"]["namespace"] == "sqlflow-playground"
    assert obj["metadata"]["labels"] == {"team": "ml", **labels}
    template = obj["spec"]["template"]
    assert template["metadata"]["labels"] == labels
    assert template["spec"]["restartPolicy"] == "Never"
    assert template["spec"]["automountServiceAccountToken"] is False
    assert manifest == batch_job()  # the caller's dict is left alone


def test_a_pytorchjob_is_accepted_and_every_replica_template_labelled():
    manifest = pytorch_job()
    manifest["metadata"]["annotations"] = {"secret": "is just a word here", "hostNetwork": "1"}
    obj = objects.prepare_workload(manifest, "alice", "tok", "ns")
    assert obj["metadata"]["annotations"] == manifest["metadata"]["annotations"]
    assert obj["kind"] == "PyTorchJob" and obj["metadata"]["namespace"] == "ns"
    for replica in obj["spec"]["pytorchReplicaSpecs"].values():
        meta = replica["template"]["metadata"]
        assert meta["labels"] == names.managed_labels("alice", "tok")
        assert meta["annotations"] == {"a": "b"}
        assert "restartPolicy" not in replica["template"]["spec"]


def with_template_metadata(manifest, **metadata):
    manifest["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["metadata"] = metadata
    return manifest


REFUSED = {
    "host networking": batch_job(hostNetwork=True),
    "process namespace": batch_job(hostPID=True),
    "IPC namespace": batch_job(hostIPC=True),
    "privileged": batch_job(containers=[{"name": "c", "image": "b",
                                         "securityContext": {"privileged": True}}]),
    "hostPath": batch_job(volumes=[{"name": "v", "hostPath": {"path": "/"}}]),
    "host ports": batch_job(containers=[{"name": "c", "image": "b",
                                         "ports": [{"containerPort": 1, "hostPort": 80}]}]),
    "service accounts": batch_job(serviceAccountName="sqlflow-playground"),
    "Secret volumes": batch_job(volumes=[{"name": "v",
                                          "secret": {"secretName": "sfp-mysql-bob"}}]),
    "Secrets are not allowed in env": batch_job(containers=[{
        "name": "c", "image": "b", "env": [{"name": "P", "valueFrom": {
            "secretKeyRef": {"name": "sfp-mysql-bob", "key": "password"}}}]}]),
    "namespace": {**batch_job(), "metadata": {"namespace": "kube-system"}},
    "Worker.template.metadata.namespace": with_template_metadata(pytorch_job(),
                                                                 namespace="kube-system"),
    "pytorchReplicaSpecs.Master.template.spec.hostNetwork": pytorch_job(hostNetwork=True),
    "volumes\\[0\\].hostPath": pytorch_job(volumes=[{"name": "v", "hostPath": {"path": "/"}}]),
    "labels sqlflow.tech/": with_template_metadata(pytorch_job(), labels={USER_LABEL: "bob"}),
}


@pytest.mark.parametrize("reason", list(REFUSED))
def test_dangerous_workloads_are_refused_with_the_reason(reason):
    with pytest.raises(ValueError, match=reason):
        objects.prepare_workload(REFUSED[reason], "alice", "tok", "sqlflow-playground")


@pytest.mark.parametrize("manifest", [
    {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": []}},
    {"apiVersion": "v1", "kind": "Secret", "spec": {}},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "spec": {}},
    {"apiVersion": "batch/v1", "kind": "Job", "spec": {}},
    {"kind": "Job", "spec": {}},
    ["not", "a", "mapping"],
])
def test_non_workloads_and_malformed_manifests_are_refused(manifest):
    with pytest.raises(ValueError):
        objects.prepare_workload(manifest, "alice", "tok", "sqlflow-playground")


# --- deploy/ -----------------------------------------------------------------------------

def deploy_documents():
    docs = []
    for path in sorted(DEPLOY.glob("*.y*ml")):
        if path.name != "kustomization.yaml":
            docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def the(kind):
    (doc,) = [doc for _, doc in deploy_documents() if doc["kind"] == kind]
    return doc


@pytest.mark.parametrize("version", VERSIONS)
def test_every_deploy_manifest_passes_the_kubernetes_schema(version):
    docs = deploy_documents()
    assert {doc["kind"] for _, doc in docs} >= {"Namespace", "ServiceAccount", "Role",
                                                "RoleBinding", "Deployment", "Service"}
    for _, doc in docs:
        valid(doc, version)


def test_kustomization_lists_every_other_manifest_in_one_namespace():
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    others = {p.name for p in DEPLOY.glob("*.y*ml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(others)
    assert kustomization["namespace"] == "sqlflow-playground"
    for _, doc in deploy_documents():
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == "sqlflow-playground"


def test_role_grants_exactly_what_the_backends_need_and_nothing_cluster_wide():
    kinds = {doc["kind"] for _, doc in deploy_documents()}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    role = the("Role")
    assert "*" not in yaml.safe_dump(role["rules"])
    granted = {(group, resource, verb) for rule in role["rules"]
               for group, resource, verb in itertools.product(
                   rule["apiGroups"], rule["resources"], rule["verbs"])}
    # What the code calls, as tests/test_k8s_rbac.py records it in a run: never a list of
    # Secrets (every tenant's password), nothing unused.
    watched = ["list", "watch", "create", "delete"]
    expected = {("", "pods", v) for v in ["get"] + watched} | {("", "pods/log", "get")} \
        | {("", "services", v) for v in ("get", "create", "delete")} \
        | {("", "secrets", v) for v in ("get", "create", "delete")} \
        | {("batch", "jobs", v) for v in watched} \
        | {("kubeflow.org", "pytorchjobs", v) for v in watched}
    assert granted == expected
    binding = the("RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"][0]["name"] == the("ServiceAccount")["metadata"]["name"]


def test_deployment_runs_two_locked_down_replicas_with_probes():
    deployment = the("Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["serviceAccountName"] == the("ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for flag in ("--port=50052", "--grpc_port=50051", "--ca_crt=/certs/ca.crt", "--server_key=/certs/server.key",
                 "--server_crt=/certs/server.crt", "--crl=/certs/crl.pem",
                 "--provisioner=kubernetes", "--namespace=sqlflow-playground",
                 "--health_port=8080", "--db_url_file=/secrets/db/db_url"):
        assert flag in container["args"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    assert mounts["/certs"]["secret"]["secretName"] == "sqlflow-playground-certs"
    assert "emptyDir" in mounts["/tmp"]
    service = the("Service")
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 50052, "targetPort": "https", "protocol": "TCP"},
        {"name": "grpc", "port": 50051, "targetPort": "grpc", "protocol": "TCP"}]
    assert {"name": "grpc", "containerPort": 50051, "protocol": "TCP"} in container["ports"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(service["spec"]["selector"], pod_labels)


def test_dockerfile_installs_the_package_as_a_non_root_user():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert "pip install --no-cache-dir /src" in dockerfile
    assert re.search(r"^USER 10001", dockerfile, re.M)
    assert 'ENTRYPOINT ["sqlflow_playground"]' in dockerfile
    # the build context is the repository root: its .dockerignore serves both builders
    assert "key_store" in (DEPLOY.parent / ".dockerignore").read_text()


# --- clients -----------------------------------------------------------------------------

KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://k8s.example.test:6443",
                               insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: "t0ken"}}]
contexts: [{name: ctx, context: {cluster: c, user: u, namespace: sqlflow-playground}}]
current-context: ctx
"""


@pytest.fixture
def kubeconfig(tmp_path):
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    yield str(path)
    clients.close_shared_clients()


def test_load_config_reads_the_given_kubeconfig_without_touching_the_default(kubeconfig):
    before = Configuration.get_default_copy().host
    configuration = clients.load_config(kubeconfig)
    assert configuration.host == "https://k8s.example.test:6443"
    assert configuration.get_api_key_with_prefix("BearerToken") == "Bearer t0ken"
    assert Configuration.get_default_copy().host == before


def test_load_config_prefers_the_service_account_in_a_cluster(tmp_path, monkeypatch, kubeconfig):
    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("sa-token")
    ca.write_text("not checked until connecting")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert clients.load_config().host == "https://10.0.0.1:443"
    assert clients.load_config(kubeconfig).host == "https://k8s.example.test:6443"


def test_one_shared_client_per_kubeconfig(kubeconfig, tmp_path):
    api = clients.shared_api_client(kubeconfig)
    assert clients.shared_api_client(kubeconfig) is api
    assert clients.core_v1(kubeconfig).api_client is api
    assert clients.batch_v1(kubeconfig).api_client is api
    assert clients.custom_objects(kubeconfig).api_client is api
    other = tmp_path / "other"
    other.write_text(KUBECONFIG)
    assert clients.shared_api_client(str(other)) is not api


def raise_status(status):
    def call(*args, **kwargs):
        raise ApiException(status=status, reason="test")
    return call


def test_create_and_delete_are_idempotent_and_other_errors_raise():
    assert clients.create_if_missing(lambda *a, **kw: (a, kw), 1, x=2) == ((1,), {"x": 2})
    assert clients.create_if_missing(raise_status(409)) is None
    assert clients.delete_if_present(raise_status(404)) is None
    for helper, status in ((clients.create_if_missing, 404), (clients.create_if_missing, 403),
                           (clients.delete_if_present, 409), (clients.delete_if_present, 500)):
        with pytest.raises(ApiException):
            helper(raise_status(status))
