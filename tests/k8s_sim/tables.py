"""Server-side printing: the ``Table`` answers kubectl asks for with ``Accept: …as=Table``.

Mirrors ``pkg/printers/internalversion``: the columns ``kubectl get`` shows for pods
(NAME READY STATUS RESTARTS AGE, and IP NODE … with ``-o wide``), jobs, services and
secrets; NAME and AGE for custom resources without printer columns.
"""
import calendar
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

Obj = Dict[str, Any]


def wants_table(accept: str) -> bool:
    return "as=Table" in (accept or "")


def _epoch(timestamp: str) -> int:
    return calendar.timegm(time.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ"))


def age(obj: Obj, until: Optional[str] = None) -> str:
    """kubectl's human duration from creation (or another time) to now (or ``until``)."""
    created = obj["metadata"].get("creationTimestamp")
    if not created:
        return "<unknown>"
    end = _epoch(until) if until else time.time()
    s = max(0, int(end - _epoch(created)))
    m, h, d = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if s < 600:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if s < 3 * 3600:
        return f"{m}m"
    if s < 8 * 3600:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    return f"{h}h" if s < 48 * 3600 else f"{d}d"


def _pod_status(pod: Obj) -> str:
    status = pod.get("status", {})
    reason = status.get("reason") or status.get("phase", "Pending")
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state", {})
        detail = state.get("waiting") or state.get("terminated") or {}
        if detail.get("reason"):
            reason = detail["reason"]
        elif "terminated" in state:
            reason = f"ExitCode:{detail.get('exitCode')}"
    if pod["metadata"].get("deletionTimestamp"):
        reason = "Terminating"
    return reason


def _pod_row(pod: Obj) -> List[Any]:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    ready = sum(1 for cs in statuses if cs.get("ready"))
    return [pod["metadata"]["name"], f"{ready}/{len(pod['spec']['containers'])}",
            _pod_status(pod), sum(cs.get("restartCount", 0) for cs in statuses), age(pod),
            pod.get("status", {}).get("podIP") or "<none>", pod["spec"].get("nodeName") or "<none>",
            "<none>", "<none>"]


def _job_row(job: Obj) -> List[Any]:
    status, spec = job.get("status", {}), job["spec"]
    done = {c["type"] for c in status.get("conditions") or [] if c["status"] == "True"}
    state = "Complete" if "Complete" in done else "Failed" if "Failed" in done else "Running"
    containers = spec["template"]["spec"]["containers"]
    labels = spec.get("selector", {}).get("matchLabels", {})
    selector = ",".join(f"{k}={v}" for k, v in labels.items())
    completions = f"{status.get('succeeded', 0)}/{spec.get('completions', 1)}"
    return [job["metadata"]["name"], state, completions,
            age({"metadata": {"creationTimestamp": status.get("startTime")}},
                status.get("completionTime")), age(job),
            ",".join(c["name"] for c in containers), ",".join(c["image"] for c in containers),
            selector]


def _service_row(svc: Obj) -> List[Any]:
    spec = svc["spec"]
    ports = ",".join(f"{p['port']}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or [])
    selector = ",".join(f"{k}={v}" for k, v in (spec.get("selector") or {}).items())
    return [svc["metadata"]["name"], spec.get("type", "ClusterIP"), spec.get("clusterIP", "<none>"),
            "<none>", ports or "<none>", age(svc), selector or "<none>"]


def _secret_row(secret: Obj) -> List[Any]:
    return [secret["metadata"]["name"], secret.get("type", "Opaque"),
            len(secret.get("data") or {}), age(secret)]


Columns = List[Tuple[str, str, int]]
PRINTERS: Dict[str, Tuple[Columns, Callable[[Obj], List[Any]]]] = {
    "Pod": ([("Name", "string", 0), ("Ready", "string", 0), ("Status", "string", 0),
             ("Restarts", "integer", 0), ("Age", "string", 0), ("IP", "string", 1),
             ("Node", "string", 1), ("Nominated Node", "string", 1),
             ("Readiness Gates", "string", 1)], _pod_row),
    "Job": ([("Name", "string", 0), ("Status", "string", 0), ("Completions", "string", 0),
             ("Duration", "string", 0), ("Age", "string", 0), ("Containers", "string", 1),
             ("Images", "string", 1), ("Selector", "string", 1)], _job_row),
    "Service": ([("Name", "string", 0), ("Type", "string", 0), ("Cluster-IP", "string", 0),
                 ("External-IP", "string", 0), ("Port(s)", "string", 0), ("Age", "string", 0),
                 ("Selector", "string", 1)], _service_row),
    "Secret": ([("Name", "string", 0), ("Type", "string", 0), ("Data", "integer", 0),
                ("Age", "string", 0)], _secret_row),
}


def table(kind: str, items: List[Obj], resource_version: str) -> Dict[str, Any]:
    columns, row = PRINTERS.get(kind, ([("Name", "string", 0), ("Age", "date", 0)],
                                       lambda o: [o["metadata"]["name"], age(o)]))
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": [{"name": n, "type": t, "format": "name" if n == "Name" else "",
                                   "description": n, "priority": p} for n, t, p in columns],
            "rows": [{"cells": row(o), "object": {
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": o["metadata"]}} for o in items]}
