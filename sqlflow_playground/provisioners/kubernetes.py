"""Per-user MySQL pods in the playground cluster: a Secret, a Pod and a ClusterIP Service.

The Secret and Service carry an ownerReference to the Pod, so Kubernetes collects them
with it; release still deletes all three, so nothing waits on the garbage collector.
Readiness is read from the pod cache (one watch for all pods), never by polling.

Provisioning follows the pod: a pod that is gone, being deleted, failed, evicted or
crash-looping is a lost database (``is_alive`` is False), provisioned afresh with new
credentials; a new pod is only created once an older one of the same name is gone, so it
never inherits a Secret or Service that dies with the old one. The cluster's reason ends a
provisioning that cannot succeed: at once when the pod is hopeless (failed, image pull,
crash loop), after ``pending_grace_s`` when it is stuck (Unschedulable).
"""
import asyncio
import logging
import secrets
import time
from typing import Any, Dict, Optional, Tuple

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from ..errors import Unavailable
from ..k8s import objects
from ..k8s.clients import cluster_failure, create_if_missing, delete_if_present
from ..k8s.cluster import Cluster
from ..k8s.names import dns_label
from .base import Provisioned, Provisioner

log = logging.getLogger(__name__)

MYSQL_USER, DATABASE = "sqlflow", "playground"
# Waiting reasons after which a pod will not become ready by itself. Not among them:
# CreateContainerConfigError, which every MySQL pod may show for a moment (its Secret is
# made just after it, to be owned by it) and which the kubelet retries; a pod that stays
# in it is reported once it has waited longer than the pending grace (pod_stuck).
HOPELESS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff",
            "CreateContainerError"}
# Waiting reasons of a pod on its way: not worth reporting.
ON_ITS_WAY = {"ContainerCreating", "PodInitializing"}


def pod_ready(pod: Optional[Dict[str, Any]]) -> bool:
    conditions = ((pod or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_trouble(pod: Optional[Dict[str, Any]]) -> Optional[str]:
    """Why the pod will not become ready, if it is hopeless; None while there is hope."""
    if pod is None:
        return None
    status = pod.get("status") or {}
    if status.get("phase") in ("Failed", "Succeeded"):
        why = ": ".join(p for p in (status.get("reason"), status.get("message")) if p)
        for container in status.get("containerStatuses") or []:
            ended = (container.get("state") or {}).get("terminated") or {}
            if ended.get("reason") and ended["reason"] not in why:
                why = "; ".join(p for p in (why, f"{ended['reason']}, exit code "
                                                  f"{ended.get('exitCode')}") if p)
        return f"pod {status['phase'].lower()}: {why or 'no reason given'}"
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in HOPELESS:
            why = f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
            last = (container.get("lastState") or {}).get("terminated") or {}
            if last.get("reason"):  # what the crash loop is made of: OOMKilled, Error, …
                why += f" (last ended: {last['reason']}, exit code {last.get('exitCode')})"
            return why
    return None


def pod_stuck(pod: Optional[Dict[str, Any]]) -> Optional[str]:
    """Why the pod is not running yet (Unschedulable, a waiting reason), None if it is on
    its way; reported once it has waited longer than the pending grace."""
    status = (pod or {}).get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return ": ".join(p for p in (cond.get("reason") or "Unschedulable",
                                         cond.get("message")) if p)
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and waiting["reason"] not in ON_ITS_WAY:
            return ": ".join(p for p in (waiting["reason"], waiting.get("message")) if p)
    return None


def pod_progress(pod: Optional[Dict[str, Any]]) -> str:
    """Where a MySQL pod on its way is, in a user's words (create_db's ``phase``)."""
    status = (pod or {}).get("status") or {}
    if pod is None:
        return "creating the pod"
    if pod_ready(pod):
        return "ready"
    if not any(c.get("type") == "PodScheduled" and c.get("status") == "True"
               for c in status.get("conditions") or []):
        stuck = pod_stuck(pod)
        return f"scheduling ({stuck})" if stuck else "scheduling"
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        if "running" in state:
            return "starting MySQL"
        reason = (state.get("waiting") or {}).get("reason")
        if reason and reason not in ON_ITS_WAY:
            return f"waiting ({reason})"
    return "pulling the image"


def mysql_pod_lost(pod: Optional[Dict[str, Any]]) -> Optional[str]:
    """Why a provisioned database's pod can serve no more (gone, being deleted, failed,
    evicted, crash-looping); None while it lives."""
    if pod is None:
        return "its pod is gone"
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "its pod is being deleted"
    return pod_trouble(pod)


class KubernetesProvisioner(Provisioner):
    """One MySQL pod per user; the data source names the user's Service."""

    name = "kubernetes"

    def __init__(self, runner, cluster: Cluster, mysql_image: str, provision_timeout_s: float,
                 cluster_domain: Optional[str] = None, pending_grace_s: float = 120.0):
        super().__init__(runner)
        self.cluster = cluster
        self.namespace = cluster.namespace
        self.core = cluster.core
        self.pods = cluster.pods
        self.mysql_image = mysql_image
        self.provision_timeout_s = provision_timeout_s
        self.pending_grace_s = pending_grace_s
        self.cluster_domain = cluster_domain

    async def check(self) -> None:
        if not self.pods.first_load.is_set():
            try:
                await self.runner.run(self.cluster.start)
            except ApiException as e:
                raise cluster_failure(e, "list", "pods", self.namespace) or Unavailable(
                    f"the Kubernetes API refused to list pods: {e.status} {e.reason}") from None
            except Exception as e:
                raise Unavailable(f"cannot reach the Kubernetes API: {e}") from None

    async def provision(self, user_id: str) -> Provisioned:
        await self.check()
        name = dns_label(user_id, "sfp-mysql")
        deadline = time.monotonic() + self.provision_timeout_s
        while True:
            try:
                values, uid = await self.runner.run(self._create_objects, user_id, name)
            except ApiException as e:
                raise Unavailable(f"Kubernetes refused the MySQL objects: {e.status} {e.reason}") \
                    from None
            if values is not None:
                break
            # An older generation of the pod is going: whatever we made now would be owned by
            # it (and collected with it), and its server knows another password. Wait for it.
            log.info("waiting for the old MySQL pod of user %s to be gone", user_id)
            try:
                if time.monotonic() > deadline:
                    raise asyncio.TimeoutError
                await self.pods.wait_for(name, lambda p: p is None or p["metadata"]["uid"] != uid,
                                         max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise Unavailable(f"the old MySQL pod of {user_id!r} is still terminating after "
                                  f"{self.provision_timeout_s:g}s; try again shortly") from None
            await asyncio.sleep(0.2)  # the cache may be ahead of what the API answers
        await self._wait_ready(user_id, name, uid, deadline)
        host = objects.service_host(name, self.namespace, self.cluster_domain)
        return Provisioned(
            data_source=objects.mysql_data_source(values["user"], values["password"], host,
                                                  objects.MYSQL_PORT, values["database"]),
            resource={"pod": name, "secret": name, "service": name,
                      "namespace": self.namespace})

    def _create_objects(self, user_id: str, name: str) -> Tuple[Optional[Dict[str, str]], str]:
        """(credentials, pod uid) once the pod and its own Secret and Service are there.

        (None, uid of the pod there) when an older pod of that name is still there, being
        deleted, hopeless, or run with a password that no Secret of its own holds: it is
        deleted, and the caller waits until it is gone. A pod of this provisioning that is
        there already (a half-finished attempt) is kept, with its Secret's password.
        """
        ns = self.namespace
        try:
            pod = self.core.read_namespaced_pod(name, ns)  # once per provisioning
        except ApiException as e:
            if e.status != 404:
                raise
            pod = None
        secret = None
        if pod is None:
            # Objects of a generation that is gone: collected with it, never to be reused.
            delete_if_present(self.core.delete_namespaced_secret, name, ns)
            delete_if_present(self.core.delete_namespaced_service, name, ns)
            pod = self.core.create_namespaced_pod(
                ns, objects.make_mysql_pod(name, user_id, self.mysql_image, name))
        else:
            secret = self._owned(self.core.read_namespaced_secret, name, pod.metadata.uid)
            if pod.metadata.deletion_timestamp or secret is None \
                    or pod_trouble(objects.serialize(pod)):
                if not pod.metadata.deletion_timestamp:
                    delete_if_present(self.core.delete_namespaced_pod, name, ns,
                                      body=k8s.V1DeleteOptions(propagation_policy="Background"))
                return None, pod.metadata.uid
        owned = objects.serialize(pod)
        if secret is None:
            made = objects.make_mysql_secret(name, user_id, secrets.token_urlsafe(24), DATABASE,
                                             MYSQL_USER)
            self.core.create_namespaced_secret(ns, objects.with_owner(made, owned))
            values = dict(made.string_data)
        else:
            values = objects.secret_values(secret)
        service = objects.with_owner(objects.make_mysql_service(name, user_id, name), owned)
        if create_if_missing(self.core.create_namespaced_service, ns, service) is None and \
                self._owned(self.core.read_namespaced_service, name, pod.metadata.uid) is None:
            delete_if_present(self.core.delete_namespaced_service, name, ns)
            self.core.create_namespaced_service(ns, service)
        return values, pod.metadata.uid

    def _owned(self, read_fn, name: str, uid: str) -> Any:
        """The object, if it is there and owned by the pod ``uid``; else None."""
        try:
            obj = read_fn(name, self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            return None
        refs = obj.metadata.owner_references or []
        return obj if any(r.uid == uid for r in refs) else None

    async def _wait_ready(self, user_id: str, name: str, uid: str, deadline: float) -> None:
        """Until the pod ``uid`` is ready; a 503 with the cluster's reason (objects deleted)
        as soon as it is hopeless, once it is stuck (Unschedulable, …) past the pending
        grace, or at the deadline."""
        def ours(pod: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
            # The cache may not have the new pod yet, or still have an older one.
            return pod if pod is not None and pod["metadata"]["uid"] == uid else None

        def settled(pod: Optional[Dict[str, Any]]) -> bool:
            pod = ours(pod)
            return pod is not None and (pod_ready(pod) or bool(mysql_pod_lost(pod)))

        stuck_at = time.monotonic() + self.pending_grace_s
        while True:
            now = time.monotonic()
            until = min(deadline, stuck_at) if now < stuck_at else deadline
            try:
                pod = ours(await self.pods.wait_for(name, settled, max(0.0, until - now)))
            except asyncio.TimeoutError:
                why = pod_stuck(ours(self.pods.get(name)))
                if time.monotonic() >= deadline:
                    why = why or f"not ready after {self.provision_timeout_s:g}s"
                if not why:
                    continue  # on its way after the pending grace: wait on to the deadline
                break
            why = mysql_pod_lost(pod)
            if not why:
                return  # ready
            break
        # Start clean next time rather than leave a broken pod behind.
        await self.release(user_id, {"pod": name, "secret": name, "service": name})
        raise Unavailable(f"the MySQL pod for {user_id!r} did not become ready: {why}")

    def provisioning_phase(self, user_id: str) -> str:
        """What the provisioning of ``user_id`` waits for (from the pod cache, no I/O)."""
        return pod_progress(self.pods.get(dns_label(user_id, "sfp-mysql")))

    def is_alive(self, user_id: str, resource: Dict[str, Any]) -> bool:
        """False once the pod is gone, being deleted, failed, evicted or crash-looping
        (from the watch cache)."""
        return mysql_pod_lost(self.pods.get(resource.get("pod", ""))) is None

    async def release(self, user_id: str, resource: Dict[str, Any]) -> None:
        name = dns_label(user_id, "sfp-mysql")
        await self.runner.run(self._delete_objects, resource.get("pod", name),
                              resource.get("secret", name), resource.get("service", name))

    def _delete_objects(self, pod: str, secret: str, service: str) -> None:
        ns, background = self.namespace, k8s.V1DeleteOptions(propagation_policy="Background")
        delete_if_present(self.core.delete_namespaced_service, service, ns)
        delete_if_present(self.core.delete_namespaced_secret, secret, ns)
        delete_if_present(self.core.delete_namespaced_pod, pod, ns, body=background)
