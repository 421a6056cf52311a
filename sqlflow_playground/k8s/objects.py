"""Pure builders for the Kubernetes objects the playground creates; no I/O here.

Like kubespawner's ``objects.py``: plain arguments in, ``kubernetes.client`` models (or, for
user-supplied workloads, plain dicts) out. Every object is thereby checkable against the
real schemas in a unit test, and the code that talks to the API server only sends them.
"""
import base64
import copy
import math
import secrets
from functools import lru_cache
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from kubernetes import client as k8s
from kubernetes.utils import parse_quantity

from ..provisioners.mysql import sqlflow_data_source
from .names import (COMPONENT_LABEL, INSTANCE_LABEL, RESERVED_LABEL_PREFIX, hashed_name,
                    managed_labels)

MYSQL_PORT = 3306
# The uid of the `mysql` user in both the official mysql and mariadb images: running as it
# (instead of root + gosu) lets the pod drop every capability.
MYSQL_UID = 999
DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"},
                     "limits": {"cpu": "1", "memory": "1Gi"}}
# Environment variable -> key in the per-user Secret. The mariadb image reads the MYSQL_*
# names too, so one spelling serves both images.
SECRET_KEYS = {"MYSQL_ROOT_PASSWORD": "root-password", "MYSQL_PASSWORD": "password",
               "MYSQL_USER": "user", "MYSQL_DATABASE": "database"}

# The data source a user gets is SQLFlow's MySQL form; the host is the Service's DNS name.
mysql_data_source = sqlflow_data_source

Obj = Union[Mapping[str, Any], Any]  # a model or its dict form
Resources = Optional[Mapping[str, Mapping[str, Any]]]  # {"requests": {...}, "limits": {...}}


def _meta(name: str, labels: Dict[str, str]) -> k8s.V1ObjectMeta:
    return k8s.V1ObjectMeta(name=name, labels=labels)


def _no_privileges() -> k8s.V1SecurityContext:
    return k8s.V1SecurityContext(allow_privilege_escalation=False,
                                 capabilities=k8s.V1Capabilities(drop=["ALL"]))


def make_resources(resources: Resources = None) -> k8s.V1ResourceRequirements:
    """Defaults (requests 100m/256Mi, limits 1/1Gi) overridden per resource by ``resources``.

    A default request larger than a limit the caller set is lowered to it, or the API
    server would refuse the pod.
    """
    given = dict(resources or {})
    if set(given) - {"requests", "limits"}:
        raise ValueError("resources may only have 'requests' and 'limits'")
    # Quantities may be given as numbers (`"nvidia.com/gpu": 1`); the models want strings.
    requests, limits = ({**DEFAULT_RESOURCES[part],
                         **{k: str(v) for k, v in (given.get(part) or {}).items()}}
                        for part in ("requests", "limits"))
    for key in DEFAULT_RESOURCES["requests"]:
        if key not in (given.get("requests") or {}) and key in limits and \
                parse_quantity(limits[key]) < parse_quantity(requests[key]):
            requests[key] = limits[key]
    return k8s.V1ResourceRequirements(requests=requests, limits=limits)


def make_mysql_secret(name: str, user_id: str, password: str, database: str,
                      mysql_user: str, root_password: Optional[str] = None) -> k8s.V1Secret:
    """The Secret the user's MySQL pod reads its credentials from.

    The root password is a separate random one (unless given): the user gets their own
    account on their own database, not the server's administrator.
    """
    values = {"root-password": root_password or secrets.token_urlsafe(24),
              "password": password, "user": mysql_user, "database": database}
    return k8s.V1Secret(api_version="v1", kind="Secret", type="Opaque",
                        metadata=_meta(name, managed_labels(user_id)), string_data=values)


def secret_values(secret: Obj) -> Dict[str, str]:
    """The decoded values of a Secret read back from the API (which returns only ``data``)."""
    data = secret.get("data") if isinstance(secret, Mapping) else secret.data
    return {key: base64.b64decode(value).decode("utf-8") for key, value in (data or {}).items()}


def mysql_pod_selector(user_id: str, pod_name: str) -> Dict[str, str]:
    """Labels that only the user's MySQL pod named ``pod_name`` carries."""
    return {**managed_labels(user_id), COMPONENT_LABEL: "mysql", INSTANCE_LABEL: pod_name}


def make_mysql_pod(name: str, user_id: str, image: str, secret_name: str,
                   resources: Resources = None, data_size_limit: str = "1Gi") -> k8s.V1Pod:
    """One user's MySQL (or MariaDB) server, credentials from ``secret_name``.

    The readiness probe is a TCP connect: both images open port 3306 only once the real
    server is up (initialisation runs with networking off), and mariadb ≥ 11 images have
    no ``mysqladmin`` for an exec probe. Data lives in a size-limited ``emptyDir``: a
    playground database ends with its pod.
    """
    env = [k8s.V1EnvVar(name=var, value_from=k8s.V1EnvVarSource(
        secret_key_ref=k8s.V1SecretKeySelector(name=secret_name, key=key)))
        for var, key in SECRET_KEYS.items()]
    container = k8s.V1Container(
        name="mysql", image=image, env=env, resources=make_resources(resources),
        ports=[k8s.V1ContainerPort(name="mysql", container_port=MYSQL_PORT, protocol="TCP")],
        readiness_probe=k8s.V1Probe(tcp_socket=k8s.V1TCPSocketAction(port="mysql"),
                                    initial_delay_seconds=5, period_seconds=5),
        security_context=_no_privileges(),
        volume_mounts=[k8s.V1VolumeMount(name="data", mount_path="/var/lib/mysql")])
    spec = k8s.V1PodSpec(
        containers=[container], restart_policy="Always", enable_service_links=False,
        automount_service_account_token=False,
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True, run_as_user=MYSQL_UID, run_as_group=MYSQL_UID,
            fs_group=MYSQL_UID, seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")),
        volumes=[k8s.V1Volume(name="data", empty_dir=k8s.V1EmptyDirVolumeSource(
            size_limit=data_size_limit))])
    return k8s.V1Pod(api_version="v1", kind="Pod", spec=spec,
                     metadata=_meta(name, mysql_pod_selector(user_id, name)))


def make_mysql_service(name: str, user_id: str, pod_name: str) -> k8s.V1Service:
    """A ClusterIP Service in front of exactly that user's MySQL pod."""
    port = k8s.V1ServicePort(name="mysql", port=MYSQL_PORT, target_port="mysql", protocol="TCP")
    return k8s.V1Service(api_version="v1", kind="Service",
                         metadata=_meta(name, managed_labels(user_id)),
                         spec=k8s.V1ServiceSpec(type="ClusterIP", ports=[port],
                                                selector=mysql_pod_selector(user_id, pod_name)))


def service_host(service: str, namespace: str,
                 cluster_domain: Optional[str] = "cluster.local") -> str:
    """The DNS name SQLFlow reaches a Service by (``svc.ns`` when ``cluster_domain`` is None)."""
    short = f"{service}.{namespace}"
    return f"{short}.svc.{cluster_domain}" if cluster_domain else short


def owner_reference(obj: Obj) -> k8s.V1OwnerReference:
    """A reference to ``obj`` as the API server returned it (it needs the ``uid``).

    ``controller=False``: the Secret and Service merely die with the user's pod.
    """
    if isinstance(obj, Mapping):
        meta = obj.get("metadata") or {}
        fields = (obj.get("apiVersion"), obj.get("kind"), meta.get("name"), meta.get("uid"))
    else:
        fields = (obj.api_version, obj.kind, obj.metadata.name, obj.metadata.uid)
    if not all(fields):
        raise ValueError("an owner needs apiVersion, kind, name and uid: pass the created object")
    api_version, kind, name, uid = fields
    return k8s.V1OwnerReference(api_version=api_version, kind=kind, name=name, uid=uid,
                                block_owner_deletion=True, controller=False)


def with_owner(obj: Any, owner: Obj) -> Any:
    """Set ``owner`` as an owner of the model ``obj`` (replacing an older reference to it)."""
    ref = owner_reference(owner)
    refs = [r for r in (obj.metadata.owner_references or []) if r.uid != ref.uid]
    obj.metadata.owner_references = refs + [ref]
    return obj


def _deadline(timeout_s: Optional[float]) -> Optional[int]:
    if timeout_s is None:
        return None
    if timeout_s <= 0:
        raise ValueError("timeout_s must be positive")
    return max(1, math.ceil(timeout_s))


def _job_pod_spec(image: str, command: Optional[List[str]], args: Optional[List[str]],
                  env: Optional[Mapping[str, Any]], resources: Resources) -> k8s.V1PodSpec:
    container = k8s.V1Container(
        name="job", image=image, command=list(command) if command else None,
        args=list(args) if args else None, resources=make_resources(resources),
        env=[k8s.V1EnvVar(name=str(k), value=str(v)) for k, v in (env or {}).items()] or None,
        security_context=_no_privileges())
    return k8s.V1PodSpec(containers=[container], restart_policy="Never",
                         enable_service_links=False, automount_service_account_token=False,
                         security_context=k8s.V1PodSecurityContext(
                             seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")))


def make_job_pod(name: str, user_id: str, job_token: str, image: str,
                 command: Optional[List[str]] = None, args: Optional[List[str]] = None,
                 env: Optional[Mapping[str, Any]] = None, resources: Resources = None,
                 timeout_s: Optional[float] = None) -> k8s.V1Pod:
    """The pod of a ``pod`` job: runs once (``Never`` restarts), killed after ``timeout_s``."""
    spec = _job_pod_spec(image, command, args, env, resources)
    spec.active_deadline_seconds = _deadline(timeout_s)
    return k8s.V1Pod(api_version="v1", kind="Pod", spec=spec,
                     metadata=_meta(name, managed_labels(user_id, job_token)))


def make_batch_job(name: str, user_id: str, job_token: str, image: str,
                   command: Optional[List[str]] = None, args: Optional[List[str]] = None,
                   env: Optional[Mapping[str, Any]] = None, resources: Resources = None,
                   timeout_s: Optional[float] = None, backoff_limit: int = 0) -> k8s.V1Job:
    """The same container as ``make_job_pod``, as a batch/v1 Job (retries, pod GC)."""
    labels = managed_labels(user_id, job_token)
    template = k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels),
                                     spec=_job_pod_spec(image, command, args, env, resources))
    return k8s.V1Job(api_version="batch/v1", kind="Job", metadata=_meta(name, labels),
                     spec=k8s.V1JobSpec(template=template, backoff_limit=backoff_limit,
                                        active_deadline_seconds=_deadline(timeout_s)))


def _present(value: Any) -> bool:
    return value is not None


def _not_default(value: Any) -> bool:
    return value not in (None, "", "default")


# key anywhere in a user manifest -> (is it refused for this value?, why)
_REFUSED: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "hostNetwork": (bool, "host networking is not allowed"),
    "hostPID": (bool, "the host's process namespace is not allowed"),
    "hostIPC": (bool, "the host's IPC namespace is not allowed"),
    "privileged": (lambda value: value is True, "privileged containers are not allowed"),
    "hostPath": (_present, "hostPath volumes are not allowed"),
    "hostPort": (bool, "host ports are not allowed"),
    # The namespace holds every user's database credentials, and the gateway's account.
    "serviceAccountName": (_not_default, "service accounts are not allowed"),
    "serviceAccount": (_not_default, "service accounts are not allowed"),
    "secret": (_present, "Secret volumes are not allowed"),
    "secretRef": (_present, "Secrets are not allowed in envFrom"),
    "secretKeyRef": (_present, "Secrets are not allowed in env"),
}
# API groups whose objects are not workloads: core (Pods, Secrets, Services: use the
# `pod` task type) and RBAC.
_REFUSED_GROUPS = {"", "rbac.authorization.k8s.io"}


def _walk(node: Any, path: str = "") -> Iterator[Tuple[str, Any, Any]]:
    """Every (path, key, value) of every mapping nested in ``node``, except inside labels
    and annotations (whose keys are the user's words, not fields)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            here = f"{path}.{key}" if path else str(key)
            yield here, key, value
            if key not in ("labels", "annotations"):
                yield from _walk(value, here)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _walk(item, f"{path}[{i}]")


def _pod_templates(node: Any) -> Iterator[Dict[str, Any]]:
    """Every pod template (a mapping whose ``spec`` has ``containers``) below the root."""
    for _, key, value in _walk(node):
        if key == "template" and isinstance(value, dict) and \
                isinstance(value.get("spec"), dict) and "containers" in value["spec"]:
            yield value


def _refuse_dangerous(manifest: Mapping[str, Any], namespace: str) -> None:
    for path, key, value in _walk(manifest):
        refused, why = _REFUSED.get(key, (None, ""))
        if refused is not None and refused(value):
            raise ValueError(f"{path}: {why}")
        if key == "metadata" and isinstance(value, Mapping) and \
                value.get("namespace") not in (None, "", namespace):
            raise ValueError(f"{path}.namespace: workloads run in namespace {namespace!r} only")
        if key == "labels" and isinstance(value, Mapping) and \
                any(str(k).startswith(RESERVED_LABEL_PREFIX) for k in value):
            raise ValueError(f"{path}: labels {RESERVED_LABEL_PREFIX}* are set by the playground")


def prepare_workload(manifest: Mapping[str, Any], user_id: str, job_token: str,
                     namespace: str, name_prefix: str = "sfp-job") -> Dict[str, Any]:
    """A user's workload manifest (a batch/v1 Job, a PyTorchJob, …) made safe to create.

    Refuses (``ValueError``) host access, privileged containers, Secrets, service accounts
    and other namespaces anywhere in the manifest; then returns a copy whose metadata is
    ours (name from the token's hash, the namespace, the user's labels and annotations
    plus the managed/user/job labels) and whose every pod template carries the same labels
    and, unless the user said otherwise, no service-account token or service links.
    """
    if not isinstance(manifest, Mapping) or not manifest.get("apiVersion") or \
            not manifest.get("kind") or not isinstance(manifest.get("spec"), Mapping):
        raise ValueError("a workload manifest needs apiVersion, kind and spec")
    api_version, kind = str(manifest["apiVersion"]), str(manifest["kind"])
    group = api_version.rpartition("/")[0]
    if group in _REFUSED_GROUPS:
        raise ValueError(f"{api_version} {kind} is not a workload; use the pod task type for pods")
    _refuse_dangerous(manifest, namespace)
    obj = copy.deepcopy(dict(manifest))
    labels = managed_labels(user_id, job_token)
    given = obj.get("metadata") or {}
    obj["metadata"] = {"name": hashed_name(job_token, name_prefix), "namespace": namespace,
                       "labels": {**(given.get("labels") or {}), **labels}}
    if given.get("annotations"):
        obj["metadata"]["annotations"] = given["annotations"]
    if (group, kind) == ("batch", "Job") and "template" not in obj["spec"]:
        raise ValueError("a Job needs spec.template")
    for template in list(_pod_templates(obj)):
        meta = template.get("metadata") or {}
        template["metadata"] = {**meta, "labels": {**(meta.get("labels") or {}), **labels}}
        template["spec"].setdefault("automountServiceAccountToken", False)
        template["spec"].setdefault("enableServiceLinks", False)
        if (group, kind) == ("batch", "Job"):
            template["spec"].setdefault("restartPolicy", "Never")
    return obj


@lru_cache(maxsize=1)
def _serializer() -> k8s.ApiClient:
    return k8s.ApiClient()


def serialize(obj: Any) -> Dict[str, Any]:
    """The JSON form (camelCase keys, no ``None``) the API server receives."""
    return _serializer().sanitize_for_serialization(obj)
