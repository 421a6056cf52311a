"""The `k8s_job` task type: a user's workload manifest (a batch/v1 Job, a Kubeflow
PyTorchJob, …) run in the playground's namespace — the distributed mode of the job runner.

The manifest is made safe by ``objects.prepare_workload``; status comes from the shared
watch cache of its kind and the log lines from the pods carrying the job's label (pod
cache), per pod from the program's log streams (``k8s/logfollow.py``) or read incrementally,
so polling a job never GETs the workload, nor reads a followed pod's log again.
"""
import base64
import calendar
import contextlib
import json
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import urllib3
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from ..errors import BadRequest, Unavailable, Unprocessable
from ..k8s import logs, objects
from ..k8s.clients import api_message, cluster_call, cluster_failure, delete_if_present
from ..k8s.cluster import Cluster
from ..k8s.names import JOB_LABEL, label_value
from .base import (FAILED, PENDING, RUNNING, SUCCEEDED, UNKNOWN, TaskContext, TaskPlugin,
                   TaskState, is_terminal)
from .pod import CACHE_GRACE_S, delete_quietly, overdue

BATCH = ("batch", "v1", "jobs")
SUCCESS = {"Complete", "SuccessCriteriaMet", "Succeeded"}   # batch/v1 and Kubeflow
FAILURE = {"Failed", "FailureTarget"}
ACTIVE = {"Running", "Restarting"}
POD_DONE = ("Succeeded", "Failed")
PodCursors = Dict[str, List[Any]]  # pod name -> [log cursor, 1 once its log was read whole]
# Containers that meshes and secret injectors add to pods (Istio, Linkerd, Envoy-based
# meshes, Vault): never a job's own output, so never the default container to read.
SIDECARS = frozenset({"istio-proxy", "linkerd-proxy", "envoy", "vault-agent"})


def job_container(pod: Dict[str, Any], wanted: Optional[str] = None) -> Optional[str]:
    """The container of ``pod`` whose log is the job's output: ``wanted`` (the spec's
    ``container``) if the pod has it, else its first container that is not a known sidecar
    (else its first). None for a pod without containers."""
    names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
    if wanted in names:
        return wanted
    return next((n for n in names if n not in SIDECARS), names[0] if names else None)


def refuse_ttl(manifest: Any, path: str = "") -> None:
    """Unprocessable if the manifest sets ``ttlSecondsAfterFinished`` anywhere (batch/v1:
    ``spec``; Kubeflow: ``spec.runPolicy``): the cluster would delete the finished workload,
    its pods and their logs, possibly before the playground has recorded the job's end and
    read its output. The playground deletes the workload itself (cancel, or ``--job_ttl_s``
    after the job ended)."""
    if isinstance(manifest, dict):
        for key, value in manifest.items():
            here = f"{path}.{key}" if path else str(key)
            if key == "ttlSecondsAfterFinished" and value is not None:
                raise Unprocessable(
                    f"spec['manifest']: {here} is not allowed: the cluster would delete the "
                    "finished workload and its logs before the playground recorded its end; "
                    "the playground deletes it when the job is cancelled or expires")
            if key not in ("labels", "annotations"):
                refuse_ttl(value, here)
    elif isinstance(manifest, list):
        for i, item in enumerate(manifest):
            refuse_ttl(item, f"{path}[{i}]")


def workload_status(obj: Dict[str, Any]) -> Tuple[str, str]:
    """(status, message) from a workload's ``status``: a terminal condition that holds
    wins, else the latest condition that holds, or active pods, says it is running."""
    status = obj.get("status") or {}
    holding = [c for c in status.get("conditions") or [] if c.get("status") == "True"]
    for condition in reversed(holding):
        why = ": ".join(p for p in (condition.get("reason"), condition.get("message")) if p)
        if condition.get("type") in SUCCESS:
            return SUCCEEDED, why
        if condition.get("type") in FAILURE:
            return FAILED, why or "Failed"
    latest = holding[-1].get("type") if holding else None
    if (status.get("active") or 0) > 0 or latest in ACTIVE:
        return RUNNING, ""
    return PENDING, ""


def container_names(node: Any) -> Iterator[str]:
    """The name of every container (in any ``containers`` list) anywhere in ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "containers" and isinstance(value, list):
                yield from (c["name"] for c in value if isinstance(c, dict) and c.get("name"))
            else:
                yield from container_names(value)
    elif isinstance(node, list):
        for item in node:
            yield from container_names(item)


def check_container(body: Dict[str, Any], container: str) -> None:
    """Unprocessable unless some pod template of the workload has ``container``."""
    names = set(container_names(body))
    if container not in names:
        raise Unprocessable(f"spec['container']: no container {container!r} in the manifest's "
                            f"pod templates (it has {sorted(n for n in names if n)})")


def created_at(meta: Dict[str, Any]) -> float:
    """An object's creationTimestamp as epoch seconds (now, if it has none)."""
    try:
        return calendar.timegm(time.strptime(meta["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ"))
    except (KeyError, TypeError, ValueError):
        return time.time()


def encode_cursor(pods: PodCursors) -> str:
    if not pods:
        return ""
    raw = json.dumps(pods, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> PodCursors:
    if not cursor:
        return {}
    try:
        pods = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        for value in pods.values():
            logs.parse_cursor(value[0])
            if value[1] not in (0, 1):
                raise ValueError(value)
        return {str(name): list(value) for name, value in pods.items()}
    except Exception:
        raise BadRequest(f"invalid cursor {cursor!r}") from None


class K8sJobPlugin(TaskPlugin):
    task_type = "k8s_job"
    version = "v1"
    description = ("Run a Kubernetes workload manifest (a batch/v1 Job, a Kubeflow "
                   "PyTorchJob, …) in the playground cluster; logs of all its pods.")
    spec_schema = {
        "type": "object",
        "required": ["manifest"],
        "additionalProperties": False,
        "properties": {
            "manifest": {"type": "object"},
            # the resource's plural name; required for kinds other than batch/v1 Job
            "plural": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
            # the container whose log is the output; default: the first that is not a
            # known sidecar (SIDECARS)
            "container": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
            # the logs of every container of every pod, "[pod/container] "-prefixed
            "all_containers": {"type": "boolean"},
        },
    }

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.logs = cluster.logs

    def create(self, ctx: TaskContext, spec: Dict[str, Any]) -> Dict[str, Any]:
        namespace = self.cluster.namespace
        refuse_ttl(spec["manifest"])
        try:
            body = objects.prepare_workload(spec["manifest"], ctx.user_id, ctx.token, namespace)
        except ValueError as e:
            raise Unprocessable(f"spec['manifest']: {e}") from None
        group, _, version = body["apiVersion"].rpartition("/")
        if (group, version, body["kind"]) == ("batch", "v1", "Job"):
            plural = "jobs"
        elif spec.get("plural"):
            plural = spec["plural"]
        else:
            raise Unprocessable(f"spec['plural']: needed for {body['apiVersion']} {body['kind']}"
                                " (the resource's plural name, e.g. 'pytorchjobs')")
        meta = {"group": group, "version": version, "plural": plural,
                "name": body["metadata"]["name"], "namespace": namespace}
        if spec.get("container"):
            check_container(body, spec["container"])
            meta["container"] = spec["container"]
        if spec.get("all_containers"):
            meta["all_containers"] = True
        try:
            if (group, version, plural) == BATCH:
                self.cluster.batch.create_namespaced_job(namespace, body)
            else:
                self.cluster.custom.create_namespaced_custom_object(
                    group, version, namespace, plural, body)
        except ApiException as e:
            resource = f"{plural}.{group}" if group else plural
            failure = cluster_failure(e, "create", resource, namespace)
            if failure is not None:  # the cluster's trouble, not the user's manifest
                raise failure from None
            if 400 <= e.status < 500:
                raise Unprocessable(f"Kubernetes refused the workload: {api_message(e)}") from None
            raise Unavailable(f"Kubernetes refused the workload: {e.status} {e.reason}") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise Unavailable(f"cannot reach Kubernetes: {e}") from None
        try:  # the caches get() reads; started only now, once the kind is known to exist
            self.cluster.workloads(group, version, plural)
            self.cluster.start()
        except Exception as e:
            with contextlib.suppress(Exception):
                self.delete(ctx, meta)
            raise Unavailable(f"cannot watch {plural}: {type(e).__name__}: {e}") from None
        return {**meta, "created": time.time()}

    def get(self, ctx: TaskContext, meta: Dict[str, Any], cursor: str) -> TaskState:
        # Status first: when it is terminal, every pod has ended and their logs are whole.
        cache = self.cluster.workloads(meta["group"], meta["version"], meta["plural"])
        obj = cache.get(meta["name"])  # from the watch: no API call
        if obj is None:
            if time.time() - meta["created"] < CACHE_GRACE_S:
                status, message = PENDING, "waiting for the workload"
            else:
                status, message = UNKNOWN, "the workload is gone"
        else:
            status, message = workload_status(obj)
        stuck = None if is_terminal(status) else self._stuck_pod(ctx)
        if stuck:
            status, message = FAILED, stuck
        state = TaskState(status=status, message=message, cursor=cursor)
        if ctx.max_bytes > 0:
            self._read_logs(state, ctx, meta, is_terminal(status))
        if stuck:  # the job is over: the workload goes, and what it holds in the cluster
            delete_quietly(self, ctx, meta)
        return state

    def _stuck_pod(self, ctx: TaskContext) -> Optional[str]:
        """Why the job cannot go on, if one of its pods has been stuck (Unschedulable, an
        image that does not pull, …) for longer than the pending grace since it was made."""
        job, now = label_value(ctx.token), time.time()
        for pod in list(self.cluster.pods.objects.values()):
            meta = pod["metadata"]
            if (meta.get("labels") or {}).get(JOB_LABEL) != job:
                continue
            why = overdue(pod, created_at(meta), self.cluster.pending_grace_s, now)
            if why:
                return f"[{meta['name']}] {why}"
        return None

    def _log_sources(self, ctx: TaskContext, meta: Dict[str, Any]
                     ) -> Iterator[Tuple[str, Dict[str, Any], Optional[str], bool]]:
        """(cursor key and prefix, pod, container, may follow) of every log the job's output
        is made of, oldest pod first: each pod's job container (``pod``), or with
        ``all_containers`` each of its containers (``pod/container``; only the first is
        followed: one stream per pod)."""
        job = label_value(ctx.token)
        pods = sorted((p for p in self.cluster.pods.objects.values()
                       if (p["metadata"].get("labels") or {}).get(JOB_LABEL) == job),
                      key=lambda p: (p["metadata"].get("creationTimestamp") or "",
                                     p["metadata"]["name"]))
        for pod in pods:
            name = pod["metadata"]["name"]
            if meta.get("all_containers"):
                names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
                for i, container in enumerate(names):
                    yield f"{name}/{container}", pod, container, i == 0
            else:
                yield name, pod, job_container(pod, meta.get("container")), True

    def _read_logs(self, state: TaskState, ctx: TaskContext, meta: Dict[str, Any],
                   ended: bool) -> None:
        """Append the new lines of every started pod of the job, ``[pod] ``-prefixed (or
        ``[pod/container] ``), oldest pod first, up to about ``ctx.max_bytes``;
        ``state.cursor`` holds one cursor per log."""
        positions = decode_cursor(state.cursor)
        budget, more = ctx.max_bytes, False
        for name, pod, container, may_follow in self._log_sources(ctx, meta):
            phase = (pod.get("status") or {}).get("phase")
            position, done = positions.get(name, ["", 0])
            if done or (phase in (None, "Pending") and not ended):
                continue  # read whole already, or not started: nothing to ask
            if budget <= 0:
                more = True
                break
            follow = may_follow and phase == "Running" and \
                not pod["metadata"].get("deletionTimestamp")
            # Each line gets "[pod] " in front: the page must fit the budget with it.
            with cluster_call("get", "pods/log", meta["namespace"]):
                page = self.logs.read(meta["namespace"], pod["metadata"]["name"],
                                      logs.parse_cursor(position), budget,
                                      ended or phase in POD_DONE, follow, len(name) + 3,
                                      container)
            if page is None:
                continue  # container not started yet, or already deleted
            state.responses += [{"message": f"[{name}] {line}"} for line in page.lines]
            budget -= sum(len(line) + len(name) + 4 for line in page.lines)
            finished = phase in POD_DONE and page.done
            positions[name] = [logs.format_cursor(page.cursor), 1 if finished else 0]
            if page.more:
                more = True
                break
        state.cursor = encode_cursor(positions)
        state.more = more

    def delete(self, ctx: TaskContext, meta: Dict[str, Any]) -> None:
        """Delete the workload and, first, its pods (``Foreground``); gone already is fine.
        Their logs are no longer followed."""
        resource = f"{meta['plural']}.{meta['group']}" if meta["group"] else meta["plural"]
        with cluster_call("delete", resource, meta["namespace"]):
            if (meta["group"], meta["version"], meta["plural"]) == BATCH:
                delete_if_present(self.cluster.batch.delete_namespaced_job, meta["name"],
                                  meta["namespace"],
                                  body=k8s.V1DeleteOptions(propagation_policy="Foreground"))
            else:
                delete_if_present(self.cluster.custom.delete_namespaced_custom_object,
                                  meta["group"], meta["version"], meta["namespace"],
                                  meta["plural"], meta["name"],
                                  body={"propagationPolicy": "Foreground"})
        job = label_value(ctx.token)
        for pod in list(self.cluster.pods.objects.values()):
            if (pod["metadata"].get("labels") or {}).get(JOB_LABEL) == job:
                self.logs.stop(meta["namespace"], pod["metadata"]["name"])

    def recover(self, ctx: TaskContext, meta: Dict[str, Any]) -> Optional[str]:
        return None  # the workload runs on in the cluster; get() follows it after a restart
