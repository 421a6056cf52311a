"""Pod ``status`` documents at each step of a pod's life, shaped like the kubelet's.

Mirrors what the scheduler and the kubelet write: ``PodScheduled`` and ``spec.nodeName``;
then ``startTime``, ``hostIP`` and containers waiting in ``ContainerCreating``; then
``phase: Running`` with ``podIP``, ``containerStatuses[].state.running`` and the
``Ready``/``ContainersReady`` conditions; finally ``Succeeded``/``Failed`` with
``state.terminated`` (``exitCode``, ``reason``, ``startedAt``, ``finishedAt``). Pure
functions over a copy of the pod; the kubelet stores the result.
"""
import datetime
import hashlib
import time
from typing import Any, Dict, List, Optional

Pod = Dict[str, Any]
CONDITION_TYPES = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady",
                   "PodScheduled")


def rfc3339(at: Optional[float] = None) -> str:
    at = time.time() if at is None else at
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _names(pod: Pod) -> List[str]:
    return [c["name"] for c in pod["spec"]["containers"]]


def set_conditions(pod: Pod, **wanted: Any) -> None:
    """``set_conditions(pod, Ready=(False, "ContainersNotReady"))``; keeps transition times."""
    status = pod.setdefault("status", {})
    current = {c["type"]: c for c in status.get("conditions") or []}
    for ctype, value in wanted.items():
        ok, reason = value if isinstance(value, tuple) else (value, None)
        cond = {"type": ctype, "status": "True" if ok else "False", "lastProbeTime": None,
                "lastTransitionTime": rfc3339()}
        old = current.get(ctype)
        if old and old["status"] == cond["status"]:
            cond["lastTransitionTime"] = old["lastTransitionTime"]
        if reason:
            cond["reason"] = reason
            if ctype in ("Ready", "ContainersReady") and reason == "ContainersNotReady":
                cond["message"] = f"containers with unready status: [{' '.join(_names(pod))}]"
        current[ctype] = cond
    status["conditions"] = [current[t] for t in CONDITION_TYPES if t in current]


def _container_statuses(pod: Pod, state: Dict[str, Any], ready: bool = False,
                        restarts: int = 0, last_state: Optional[Dict[str, Any]] = None) -> None:
    statuses = []
    for c in pod["spec"]["containers"]:
        digest = hashlib.sha256(c["image"].encode()).hexdigest()
        entry = {"name": c["name"], "image": c["image"],
                 "imageID": f"{c['image'].split(':')[0]}@sha256:{digest}",
                 "ready": ready, "restartCount": restarts, "started": "running" in state,
                 "state": state, "lastState": last_state or {}}
        if "waiting" not in state:
            uid = pod["metadata"]["uid"]
            entry["containerID"] = "containerd://" + hashlib.sha256(
                f"{uid}/{c['name']}/{restarts}".encode()).hexdigest()
        statuses.append(entry)
    pod["status"]["containerStatuses"] = statuses


def scheduled(pod: Pod, node: str) -> Pod:
    pod["spec"]["nodeName"] = node
    set_conditions(pod, PodScheduled=True)
    return pod


def creating(pod: Pod, host_ip: str) -> Pod:
    status = pod["status"]
    status.update(hostIP=host_ip, hostIPs=[{"ip": host_ip}], startTime=rfc3339())
    set_conditions(pod, PodReadyToStartContainers=False, Initialized=True,
                   Ready=(False, "ContainersNotReady"),
                   ContainersReady=(False, "ContainersNotReady"))
    _container_statuses(pod, {"waiting": {"reason": "ContainerCreating"}})
    return pod


def waiting(pod: Pod, reason: str, message: Optional[str] = None, restarts: int = 0,
            last_state: Optional[Dict[str, Any]] = None) -> Pod:
    state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
    set_conditions(pod, Ready=(False, "ContainersNotReady"),
                   ContainersReady=(False, "ContainersNotReady"))
    _container_statuses(pod, state, restarts=restarts, last_state=last_state)
    return pod


def running(pod: Pod, pod_ip: str, started_at: float, ready: bool, restarts: int = 0,
            last_state: Optional[Dict[str, Any]] = None) -> Pod:
    status = pod["status"]
    status.update(phase="Running", podIP=pod_ip, podIPs=[{"ip": pod_ip}])
    readiness = True if ready else (False, "ContainersNotReady")
    set_conditions(pod, PodReadyToStartContainers=True, Ready=readiness,
                   ContainersReady=readiness)
    _container_statuses(pod, {"running": {"startedAt": rfc3339(started_at)}}, ready=ready,
                        restarts=restarts, last_state=last_state)
    return pod


def terminated_state(exit_code: int, reason: str, started_at: Optional[float],
                     message: Optional[str] = None) -> Dict[str, Any]:
    term = {"exitCode": exit_code, "reason": reason,
            "startedAt": rfc3339(started_at) if started_at else None,
            "finishedAt": rfc3339()}
    if message:
        term["message"] = message
    return {"terminated": term}


def terminated(pod: Pod, phase: str, state: Dict[str, Any], restarts: int = 0,
               pod_reason: Optional[str] = None, pod_message: Optional[str] = None) -> Pod:
    status = pod["status"]
    status["phase"] = phase
    if pod_reason:
        status.update(reason=pod_reason, message=pod_message or pod_reason)
    set_conditions(pod, PodReadyToStartContainers=False, Ready=(False, "PodCompleted"),
                   ContainersReady=(False, "PodCompleted"))
    _container_statuses(pod, state, restarts=restarts)
    return pod


def unschedulable(pod: Pod, message: str) -> Pod:
    """What the scheduler writes when no node fits: Pending, ``PodScheduled=False``."""
    status = pod.setdefault("status", {})
    status["phase"] = "Pending"
    set_conditions(pod, PodScheduled=(False, "Unschedulable"))
    for cond in status["conditions"]:
        if cond["type"] == "PodScheduled":
            cond["message"] = message
    return pod


def container_state(pod: Optional[Pod]) -> Optional[Dict[str, Any]]:
    """The first container's current ``state``, if it has one."""
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    return statuses[0].get("state") if statuses else None
