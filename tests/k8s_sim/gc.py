"""Deletion: propagation policies, graceful pod termination and the garbage collector.

Mirrors the API server's delete path plus kube-controller-manager's garbage collector.
``Background`` (the default; batch/v1 Jobs default to ``Orphan``) removes the owner at once
and the collector then deletes every object whose ``ownerReferences`` no longer name a live
owner; ``Foreground`` marks the owner with a ``deletionTimestamp`` and the
``foregroundDeletion`` finalizer, deletes its dependents, and removes it when they are gone;
``Orphan`` strips the owner's reference from its dependents first. A pod whose container is
running is deleted gracefully: it gets a ``deletionTimestamp`` (a MODIFIED event), the
kubelet stops it, and only then is it removed. An object created with owners none of which
exists is collected too, as the real collector does.
"""
import copy
from typing import Any, Callable, Dict, List, Optional, Tuple

from .errors import bad_request
from .resources import PODS, ResourceType
from .store import Event, Obj, Store, now_rfc3339

FOREGROUND = "foregroundDeletion"
POLICIES = ("Background", "Foreground", "Orphan")


class GarbageCollector:
    """Deletes objects the way the API server and the garbage collector together do."""

    def __init__(self, store: Store, call_soon: Callable[..., Any]) -> None:
        self.store, self.call_soon = store, call_soon
        self._sweep_scheduled = False
        # set by the kubelet: terminate(namespace, name, grace_s, done) -> True if it must wait
        self.terminate_pod: Optional[Callable[..., bool]] = None
        store.listeners.append(self.on_event)

    def dependents(self, uid: str) -> List[Tuple[ResourceType, Obj]]:
        return [(rt, o) for rt, o in self.store.all_items()
                if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])]

    def delete(self, rt: ResourceType, namespace: str, name: str,
               policy: Optional[str] = None, grace: Optional[int] = None) -> Obj:
        """The DELETE verb: returns the object as it is after the call (maybe still there)."""
        obj = self.store.get(rt, namespace, name)
        policy = policy or rt.default_propagation
        if policy not in POLICIES:
            raise bad_request(f'Unsupported value: "{policy}": supported values: '
                              '"Foreground", "Background", "Orphan"')
        if obj["metadata"].get("deletionTimestamp"):
            return obj
        uid = obj["metadata"]["uid"]
        dependents = self.dependents(uid)
        if policy == "Orphan":
            for drt, dep in dependents:
                dep = copy.deepcopy(dep)
                dep["metadata"]["ownerReferences"] = [
                    r for r in dep["metadata"]["ownerReferences"] if r.get("uid") != uid]
                self.store.update(drt, dep)
        elif policy == "Foreground" and dependents:
            obj = self._mark_deleting(rt, obj, finalizer=FOREGROUND)
            for drt, dep in dependents:
                self.delete(drt, dep["metadata"]["namespace"], dep["metadata"]["name"],
                            "Foreground")
            return self.store.find(rt, namespace, name) or obj
        return self._finish(rt, obj, grace)

    def _mark_deleting(self, rt: ResourceType, obj: Obj, finalizer: Optional[str] = None,
                       grace: Optional[int] = None) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta["deletionTimestamp"] = now_rfc3339()
        if grace is not None:
            meta["deletionGracePeriodSeconds"] = grace
        if finalizer:
            meta["finalizers"] = [*meta.get("finalizers", []), finalizer]
        return self.store.update(rt, obj)

    def _finish(self, rt: ResourceType, obj: Obj, grace: Optional[int]) -> Obj:
        meta = obj["metadata"]
        if rt is PODS and self.terminate_pod is not None:
            grace = obj["spec"].get("terminationGracePeriodSeconds", 30) if grace is None else grace
            if grace > 0 and self.terminate_pod(meta["namespace"], meta["name"], grace,
                                                lambda: self._remove(rt, meta, meta["uid"])):
                return self._mark_deleting(rt, obj, grace=grace)
        return self.store.remove(rt, meta["namespace"], meta["name"])

    def _remove(self, rt: ResourceType, meta: Dict[str, Any], uid: str) -> None:
        current = self.store.find(rt, meta["namespace"], meta["name"])
        if current is not None and current["metadata"]["uid"] == uid:
            self.store.remove(rt, meta["namespace"], meta["name"])

    def on_event(self, ev: Event) -> None:
        owned = ev.type == "ADDED" and ev.obj["metadata"].get("ownerReferences")
        if (ev.type == "DELETED" or owned) and not self._sweep_scheduled:
            self._sweep_scheduled = True
            self.call_soon(self.collect)

    def collect(self) -> None:
        """One sweep: delete orphans of vanished owners, finish foreground deletions."""
        self._sweep_scheduled = False
        alive = set(self.store.by_uid)
        for rt, obj in self.store.all_items():
            meta = obj["metadata"]
            if meta["uid"] not in self.store.by_uid:
                continue  # removed earlier in this sweep
            owners = [r.get("uid") for r in meta.get("ownerReferences") or []]
            if owners and not any(uid in alive for uid in owners) \
                    and not meta.get("deletionTimestamp"):
                self.delete(rt, meta["namespace"], meta["name"], "Background")
            elif FOREGROUND in (meta.get("finalizers") or []) and not self.dependents(meta["uid"]):
                self._remove(rt, meta, meta["uid"])
