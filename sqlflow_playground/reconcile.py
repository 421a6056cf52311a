"""After a crash the cluster and the store disagree; this makes the cluster agree.

Managed objects (labelled ``app.kubernetes.io/managed-by=sqlflow-playground``) that no
user or job in the store accounts for are deleted: a MySQL pod (with its Secret and
Service) whose user has no record, a job pod or workload whose job has no record. Objects
younger than ``grace_s`` are left alone: they may belong to a provisioning or a submission
still under way. The opposite case, a record whose objects are gone, is handled where it
is noticed: jobs become UNKNOWN when polled, users are provisioned anew by ``create_db``.
Deleting is idempotent (404 is "already done"), so replicas reconciling at once are safe.
"""
import datetime
import logging
import time
from typing import Any, Callable, Dict, Iterable

from kubernetes import client as k8s

from .blocking import BlockingRunner
from .k8s.clients import delete_if_present
from .k8s.cluster import Cluster
from .k8s.names import COMPONENT_LABEL, JOB_LABEL, USER_LABEL, label_value
from .store import Store

log = logging.getLogger(__name__)


def created_at(obj: Dict[str, Any]) -> float:
    stamp = obj.get("metadata", {}).get("creationTimestamp")
    if not stamp:
        return time.time()
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


class ClusterReconciler:
    """Deletes managed cluster objects the store has no record of."""

    def __init__(self, cluster: Cluster, store: Store, runner: BlockingRunner, grace_s: float,
                 clock: Callable[[], float] = time.time):
        self.cluster, self.store, self.runner = cluster, store, runner
        self.grace_s, self.clock = grace_s, clock

    async def run(self) -> int:
        """One pass; returns how many orphans were deleted."""
        return await self.runner.run(self._reconcile)

    def _reconcile(self) -> int:
        users = {label_value(u) for u in (u["user_id"] for u in self.store.list_users())}
        jobs = {label_value(t) for t in self.store.job_tokens()}
        old_enough = self.clock() - self.grace_s
        deleted = 0
        for pod in self._old(self.cluster.pods.objects.values(), old_enough):
            labels, name = pod["metadata"].get("labels") or {}, pod["metadata"]["name"]
            if JOB_LABEL in labels:
                if labels[JOB_LABEL] not in jobs and not pod["metadata"].get("ownerReferences"):
                    deleted += self._delete(self.cluster.core.delete_namespaced_pod, name)
            elif labels.get(COMPONENT_LABEL) == "mysql" and labels.get(USER_LABEL) not in users:
                deleted += self._delete(self.cluster.core.delete_namespaced_service, name, count=0)
                deleted += self._delete(self.cluster.core.delete_namespaced_secret, name, count=0)
                deleted += self._delete(self.cluster.core.delete_namespaced_pod, name)
        for (group, version, plural), cache in self.cluster.workload_caches().items():
            for obj in self._old(cache.objects.values(), old_enough):
                if (obj["metadata"].get("labels") or {}).get(JOB_LABEL) not in jobs:
                    deleted += self._delete_workload(group, version, plural,
                                                     obj["metadata"]["name"])
        return deleted

    def _old(self, objects: Iterable[Dict[str, Any]], before: float):
        return [o for o in list(objects) if created_at(o) < before]

    def _delete(self, delete_fn, name: str, count: int = 1) -> int:
        try:
            gone = delete_if_present(delete_fn, name, self.cluster.namespace)
        except Exception:
            log.exception("reconcile: deleting %s failed; will retry", name)
            return 0
        if gone is not None and count:
            log.info("reconcile: deleted orphan %s", name)
        return count if gone is not None else 0

    def _delete_workload(self, group: str, version: str, plural: str, name: str) -> int:
        options = k8s.V1DeleteOptions(propagation_policy="Foreground")
        if (group, plural) == ("batch", "jobs"):
            return self._delete(lambda n, ns: self.cluster.batch.delete_namespaced_job(
                n, ns, body=options), name)
        return self._delete(lambda n, ns: self.cluster.custom.delete_namespaced_custom_object(
            group, version, ns, plural, n, body=options), name)
