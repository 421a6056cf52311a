"""A batch/v1 Job controller, reduced to what a client of Jobs observes.

Mirrors kube-controller-manager's job controller: for each Job it keeps up to
``parallelism`` pods running from ``spec.template`` (named ``{job}-xxxxx``, labelled
``job-name``/``batch.kubernetes.io/job-name`` and ``controller-uid``, owned by the Job with
``controller: true``) until ``completions`` pods succeeded, and writes ``status``:
``active``, ``ready``, ``succeeded``, ``failed``, ``startTime``, ``completionTime`` and the
conditions of Kubernetes ≥ 1.31 — ``SuccessCriteriaMet`` then ``Complete``, or
``FailureTarget`` then ``Failed`` (reason ``BackoffLimitExceeded`` once more than
``backoffLimit`` pods failed, ``DeadlineExceeded`` after ``activeDeadlineSeconds``). A pod
deleted before it finished counts as failed. Finished Jobs keep their pods.
"""
import asyncio
import copy
from typing import Any, Dict, Set

from .defaults import default_pod, generate_name
from .resources import JOBS, PODS
from .store import Event, Obj, Store, now_rfc3339

TERMINAL = ("Succeeded", "Failed")


def _condition(ctype: str, reason: str, message: str) -> Dict[str, Any]:
    now = now_rfc3339()
    return {"type": ctype, "status": "True", "reason": reason, "message": message,
            "lastProbeTime": now, "lastTransitionTime": now}


def is_finished(job: Obj) -> bool:
    return any(c["type"] in ("Complete", "Failed") and c["status"] == "True"
               for c in job.get("status", {}).get("conditions") or [])


class JobController:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.counted: Dict[str, Dict[str, str]] = {}  # job uid -> pod uid -> final phase
        self.active: Dict[str, Set[str]] = {}          # job uid -> uids of unfinished pods
        self._queued: Set[tuple] = set()
        store.listeners.append(self.on_event)

    def on_event(self, ev: Event) -> None:
        meta = ev.obj["metadata"]
        if ev.rt is JOBS and ev.type == "ADDED":
            self._enqueue(meta["namespace"], meta["name"])
            deadline = ev.obj["spec"].get("activeDeadlineSeconds")
            if deadline:
                asyncio.get_running_loop().call_later(deadline, self._deadline,
                                                      meta["namespace"], meta["name"], meta["uid"])
        elif ev.rt is JOBS and ev.type == "DELETED":
            self.counted.pop(meta["uid"], None)
            self.active.pop(meta["uid"], None)
        elif ev.rt is PODS:
            for ref in meta.get("ownerReferences") or []:
                if ref.get("kind") == "Job" and ref.get("controller"):
                    self._enqueue(meta["namespace"], ref["name"])

    def _enqueue(self, namespace: str, name: str) -> None:
        if (namespace, name) not in self._queued:
            self._queued.add((namespace, name))
            asyncio.get_running_loop().call_soon(self.sync, namespace, name)

    def _pods(self, job: Obj) -> list:
        uid = job["metadata"]["uid"]
        return [p for p in self.store.items(PODS, job["metadata"]["namespace"])
                if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])]

    def sync(self, namespace: str, name: str) -> None:
        self._queued.discard((namespace, name))
        job = self.store.find(JOBS, namespace, name)
        if job is None or is_finished(job) or job["metadata"].get("deletionTimestamp"):
            return
        spec, uid = job["spec"], job["metadata"]["uid"]
        pods = self._pods(job)
        counted = self.counted.setdefault(uid, {})
        for pod in pods:
            phase = pod.get("status", {}).get("phase")
            if phase in TERMINAL:
                counted.setdefault(pod["metadata"]["uid"], phase)
        for pod_uid in self.active.get(uid, set()) - {p["metadata"]["uid"] for p in pods}:
            counted.setdefault(pod_uid, "Failed")  # deleted before it finished
        active = [p for p in pods if p["metadata"]["uid"] not in counted]
        succeeded = sum(1 for v in counted.values() if v == "Succeeded")
        failed = len(counted) - succeeded
        completions, parallelism = spec.get("completions") or 1, spec.get("parallelism", 1)
        status = copy.deepcopy(job.get("status") or {})
        status.setdefault("startTime", now_rfc3339())
        status.update(succeeded=succeeded, failed=failed)
        if failed > spec.get("backoffLimit", 6):
            self._finish(job, status, active, "Failed", "BackoffLimitExceeded",
                         "Job has reached the specified backoff limit")
            return
        if succeeded >= completions:
            self._finish(job, status, active, "Complete", "CompletionsReached",
                         "Reached expected number of succeeded pods")
            return
        for _ in range(min(parallelism, completions - succeeded) - len(active)):
            active.append(self._create_pod(job))
        self.active[uid] = {p["metadata"]["uid"] for p in active}
        ready = sum(1 for p in active for c in p.get("status", {}).get("conditions") or []
                    if c["type"] == "Ready" and c["status"] == "True")
        status.update(active=len(active), ready=ready, terminating=0, uncountedTerminatedPods={})
        for key in ("active", "succeeded", "failed"):
            if not status[key]:
                del status[key]
        self._set_status(job, status)

    def _create_pod(self, job: Obj) -> Obj:
        template = copy.deepcopy(job["spec"]["template"])
        meta = template.get("metadata") or {}
        namespace = job["metadata"]["namespace"]
        name = generate_name(job["metadata"]["name"] + "-",
                             lambda n: self.store.find(PODS, namespace, n) is not None)
        meta.update(name=name, generateName=job["metadata"]["name"] + "-", ownerReferences=[{
            "apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
            "uid": job["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}])
        pod = {"metadata": meta, "spec": template.get("spec") or {}}
        default_pod(pod)
        return self.store.create(PODS, job["metadata"]["namespace"], pod)

    def _finish(self, job: Obj, status: Dict[str, Any], active: list, ctype: str,
                reason: str, message: str) -> None:
        interim = "SuccessCriteriaMet" if ctype == "Complete" else "FailureTarget"
        status["conditions"] = [*(status.get("conditions") or []),
                                _condition(interim, reason, message),
                                _condition(ctype, reason, message)]
        if ctype == "Complete":
            status["completionTime"] = now_rfc3339()
        status.update(ready=0, terminating=0, uncountedTerminatedPods={})
        for key in ("active", "succeeded", "failed"):
            if not status.get(key):
                status.pop(key, None)
        self._set_status(job, status)
        for pod in active:  # a failed Job's remaining pods are terminated
            meta = pod["metadata"]
            if self.store.find(PODS, meta["namespace"], meta["name"]) is not None:
                self.store.remove(PODS, meta["namespace"], meta["name"])

    def _set_status(self, job: Obj, status: Dict[str, Any]) -> None:
        if status != job.get("status"):
            job = copy.deepcopy(job)
            job["status"] = status
            self.store.update(JOBS, job)

    def _deadline(self, namespace: str, name: str, uid: str) -> None:
        job = self.store.find(JOBS, namespace, name)
        if job is None or job["metadata"]["uid"] != uid or is_finished(job):
            return
        active = [p for p in self._pods(job) if p.get("status", {}).get("phase") not in TERMINAL]
        self._finish(job, copy.deepcopy(job.get("status") or {}), active, "Failed",
                     "DeadlineExceeded", "Job was active longer than specified deadline")
