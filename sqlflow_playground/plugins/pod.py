"""The `pod` task type: one Kubernetes Pod per job.

Status comes from the shared pod cache (a watch), so polling a job costs the API server
nothing; the log, once the pod has started, comes from the program's one stream per running
pod (``k8s/logfollow.py``), or is read from the API incrementally where that stream cannot
answer (``k8s/logs.py``).
"""
import logging
import time
from typing import Any, Dict, Optional

from kubernetes.client.rest import ApiException

from ..errors import BadRequest, Unavailable, Unprocessable
from ..k8s import logs, objects
from ..k8s.clients import (api_message, cluster_call, cluster_failure, create_if_missing,
                           delete_if_present)
from ..k8s.cluster import Cluster
from ..k8s.names import hashed_name
from .base import (FAILED, PENDING, RUNNING, SUCCEEDED, UNKNOWN, TaskContext, TaskPlugin,
                   TaskState)

log = logging.getLogger(__name__)

# A pod not yet in the cache this soon after creation is on its way, not lost.
CACHE_GRACE_S = 30.0
# The name of the job's container in its pod (``objects.make_job_pod``): its log is the
# job's output, whatever sidecars (istio-proxy, linkerd-proxy, …) a webhook added.
JOB_CONTAINER = "job"
QUANTITIES = {"type": "object", "additionalProperties": {"type": ["string", "number"]}}
# Waiting reasons of a pod on its way, not stuck.
ON_ITS_WAY = ("", "ContainerCreating", "PodInitializing")
# The gateway ends a job this long after its pod's own deadline would have: the kubelet's
# DeadlineExceeded, with its exit code, comes first when the pod is on a node.
DEADLINE_SLACK_S = 5.0


def describe_end(pod: Dict[str, Any], container: str = JOB_CONTAINER) -> str:
    """Why the pod ended: the pod's own reason (DeadlineExceeded, Evicted) first, then its
    container's (OOMKilled, Error) with the exit code: the job's own container, not a
    sidecar's, when it has ended; else the first that has."""
    status = pod.get("status") or {}
    parts = [": ".join(p for p in (status.get("reason"), status.get("message")) if p)]
    ended = [(c.get("name"), (c.get("state") or {}).get("terminated"))
             for c in status.get("containerStatuses") or []]
    ended = sorted((e for e in ended if e[1]), key=lambda e: e[0] != container)
    if ended:
        state = ended[0][1]
        parts.append(f"{state.get('reason') or 'Terminated'}, exit code {state.get('exitCode')}")
    return "; ".join(p for p in parts if p) or "Failed"


def waiting_reason(pod: Dict[str, Any]) -> str:
    """Why the pod is not running yet: the scheduler's (Unschedulable), else its container's
    waiting reason (ContainerCreating, ImagePullBackOff, …) with the message."""
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return ": ".join(p for p in (cond.get("reason") or "Unschedulable",
                                         cond.get("message")) if p)
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            return ": ".join(p for p in (waiting["reason"], waiting.get("message")) if p)
    return ""


def overdue(pod: Dict[str, Any], created: float, pending_grace_s: float,
            now: float) -> Optional[str]:
    """Why a job whose pod has not ended must end now, if it must: the pod was stuck
    (Unschedulable, an image that does not pull, …) for longer than ``pending_grace_s``
    since ``created``, or the job outlived its timeout (``activeDeadlineSeconds``, which the
    kubelet enforces from the pod's start, when the pod is on a node at all)."""
    deadline = (pod.get("spec") or {}).get("activeDeadlineSeconds")
    why = waiting_reason(pod) if (pod.get("status") or {}).get("phase") in (None, "Pending") \
        else ""
    if why.split(":")[0] in ON_ITS_WAY:
        why = ""
    if deadline and now - created > deadline + DEADLINE_SLACK_S:
        return f"DeadlineExceeded: the job ran longer than its timeout_s ({deadline}s)" + \
            (f"; its pod was still pending: {why}" if why else "")
    if why and now - created > pending_grace_s:
        return f"{why} (the pod was stuck for more than {pending_grace_s:g}s)"
    return None


def delete_quietly(plugin: TaskPlugin, ctx: TaskContext, meta: Dict[str, Any]) -> None:
    """``plugin.delete`` for a job that has just ended: a failure is logged, not raised, so
    that the end is recorded all the same (what the job holds then goes when it is purged)."""
    try:
        plugin.delete(ctx, meta)
    except Exception as e:
        log.warning("could not delete the cluster objects of job %s… (%s); they go when "
                    "the job is purged", ctx.token[:8], getattr(e, "message", type(e).__name__))


class PodPlugin(TaskPlugin):
    task_type = "pod"
    version = "v1"
    description = "Run a container image as a Kubernetes Pod in the playground cluster."
    spec_schema = {
        "type": "object",
        "required": ["image"],
        "additionalProperties": False,
        "properties": {
            "image": {"type": "string", "minLength": 1},
            "command": {"type": "array", "items": {"type": "string"}},
            "args": {"type": "array", "items": {"type": "string"}},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "resources": {"type": "object", "additionalProperties": False,
                          "properties": {"requests": QUANTITIES, "limits": QUANTITIES}},
            "timeout_s": {"type": "number", "exclusiveMinimum": 0},
        },
    }

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.logs = cluster.logs

    def create(self, ctx: TaskContext, spec: Dict[str, Any]) -> Dict[str, Any]:
        self.cluster.start()
        name = hashed_name(ctx.token, "sfp-job")
        try:
            pod = objects.make_job_pod(name, ctx.user_id, ctx.token, spec["image"],
                                       command=spec.get("command"), args=spec.get("args"),
                                       env=spec.get("env"), resources=spec.get("resources"),
                                       timeout_s=spec.get("timeout_s"))
        except ValueError as e:  # e.g. a quantity that is not one
            raise Unprocessable(f"spec: {e}") from None
        try:
            create_if_missing(self.cluster.core.create_namespaced_pod, self.cluster.namespace, pod)
        except ApiException as e:
            failure = cluster_failure(e, "create", "pods", self.cluster.namespace)
            if failure is not None:  # the cluster's trouble (RBAC, overload), not the spec's
                raise failure from None
            if 400 <= e.status < 500:
                raise Unprocessable(f"Kubernetes refused the pod: {api_message(e)}") from None
            raise Unavailable(f"Kubernetes refused the pod: {e.status} {e.reason}") from None
        return {"pod": name, "namespace": self.cluster.namespace, "created": time.time(),
                "container": JOB_CONTAINER}

    def get(self, ctx: TaskContext, meta: Dict[str, Any], cursor: str) -> TaskState:
        pod = self.cluster.pods.get(meta["pod"])  # from the watch: no API call
        if pod is None:
            if time.time() - meta["created"] < CACHE_GRACE_S:
                return TaskState(status=PENDING, message="waiting for the pod", cursor=cursor)
            return TaskState(status=UNKNOWN, message="the pod is gone", cursor=cursor)
        phase = (pod.get("status") or {}).get("phase")
        if phase == "Running":
            status, message = RUNNING, ""
        elif phase == "Succeeded":
            status, message = SUCCEEDED, "Completed, exit code 0"
        elif phase == "Failed":
            status, message = FAILED, describe_end(pod, meta.get("container", JOB_CONTAINER))
        else:
            status, message = PENDING, waiting_reason(pod)
        ended = None if phase in ("Succeeded", "Failed") else overdue(
            pod, meta["created"], self.cluster.pending_grace_s, time.time())
        if ended:
            status, message = FAILED, ended
        state = TaskState(status=status, message=message, cursor=cursor)
        if phase in ("Running", "Succeeded", "Failed") and ctx.max_bytes > 0:
            # A pod being deleted is not worth a stream: it is about to end.
            follow = not pod["metadata"].get("deletionTimestamp") and not ended
            self._read_log(state, meta, cursor, ctx.max_bytes, status != RUNNING, follow)
        if ended:  # the job is over: its pod goes, and with it what it holds in the cluster
            delete_quietly(self, ctx, meta)
        return state

    def _read_log(self, state: TaskState, meta: Dict[str, Any], cursor: str, max_bytes: int,
                  complete: bool, follow: bool) -> None:
        try:
            position = logs.parse_cursor(cursor)
        except ValueError:
            raise BadRequest(f"invalid cursor {cursor!r}") from None
        with cluster_call("get", "pods/log", meta["namespace"]):
            page = self.logs.read(meta["namespace"], meta["pod"], position, max_bytes,
                                  complete, follow,
                                  container=meta.get("container", JOB_CONTAINER))
        if page is None:
            return  # container not started yet, or already deleted: no log to read
        state.responses = [{"message": line} for line in page.lines]
        state.cursor = logs.format_cursor(page.cursor)
        state.more = page.more

    def delete(self, ctx: TaskContext, meta: Dict[str, Any]) -> None:
        with cluster_call("delete", "pods", meta["namespace"]):
            delete_if_present(self.cluster.core.delete_namespaced_pod, meta["pod"],
                              meta["namespace"])
        self.logs.stop(meta["namespace"], meta["pod"])

    def recover(self, ctx: TaskContext, meta: Dict[str, Any]) -> Optional[str]:
        return None  # the pod runs on in the cluster; get() follows it after a restart
