"""Per-user MySQL pods in the playground cluster: a Secret, a Pod and a ClusterIP Service.

The Secret and Service carry an ownerReference to the Pod, so Kubernetes collects them
with it; release still deletes all three, so nothing waits on the garbage collector.
Readiness is read from the pod cache (one watch for all pods), never by polling.
"""
import asyncio
import logging
import secrets
from typing import Any, Dict, Optional

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from ..errors import Unavailable
from ..k8s import objects
from ..k8s.clients import create_if_missing, delete_if_present
from ..k8s.cluster import Cluster
from ..k8s.names import dns_label
from .base import Provisioned, Provisioner

log = logging.getLogger(__name__)

MYSQL_USER, DATABASE = "sqlflow", "playground"
# Waiting reasons after which a pod will not become ready by itself.
HOPELESS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff",
            "CreateContainerError", "CreateContainerConfigError"}


def pod_ready(pod: Optional[Dict[str, Any]]) -> bool:
    conditions = ((pod or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_trouble(pod: Optional[Dict[str, Any]]) -> Optional[str]:
    """Why the pod will not become ready, if it is hopeless; None while there is hope."""
    if pod is None:
        return None
    status = pod.get("status") or {}
    if status.get("phase") in ("Failed", "Succeeded"):
        return f"pod {status['phase'].lower()}: {status.get('reason') or status.get('message')}"
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in HOPELESS:
            return f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
    return None


class KubernetesProvisioner(Provisioner):
    """One MySQL pod per user; the data source names the user's Service."""

    name = "kubernetes"

    def __init__(self, runner, cluster: Cluster, mysql_image: str, provision_timeout_s: float,
                 cluster_domain: Optional[str] = None):
        super().__init__(runner)
        self.cluster = cluster
        self.namespace = cluster.namespace
        self.core = cluster.core
        self.pods = cluster.pods
        self.mysql_image = mysql_image
        self.provision_timeout_s = provision_timeout_s
        self.cluster_domain = cluster_domain

    async def check(self) -> None:
        if not self.pods.first_load.is_set():
            try:
                await self.runner.run(self.cluster.start)
            except Exception as e:
                raise Unavailable(f"cannot reach the Kubernetes API: {e}") from None

    async def provision(self, user_id: str) -> Provisioned:
        await self.check()
        name = dns_label(user_id, "sfp-mysql")
        try:
            values = await self.runner.run(self._create_objects, user_id, name)
        except ApiException as e:
            raise Unavailable(f"Kubernetes refused the MySQL objects: {e.status} {e.reason}") \
                from None
        await self._wait_ready(user_id, name)
        host = objects.service_host(name, self.namespace, self.cluster_domain)
        return Provisioned(
            data_source=objects.mysql_data_source(values["user"], values["password"], host,
                                                  objects.MYSQL_PORT, values["database"]),
            resource={"pod": name, "secret": name, "service": name,
                      "namespace": self.namespace})

    def _create_objects(self, user_id: str, name: str) -> Dict[str, str]:
        """Pod, then Secret and Service owned by it; each step idempotent (409 = there)."""
        ns = self.namespace
        create_if_missing(self.core.create_namespaced_pod, ns,
                          objects.make_mysql_pod(name, user_id, self.mysql_image, name))
        pod = self.core.read_namespaced_pod(name, ns)  # once per provisioning, for its uid
        owned = objects.serialize(pod)
        try:  # a half-finished earlier attempt left the Secret: keep its password
            values = objects.secret_values(self.core.read_namespaced_secret(name, ns))
        except ApiException as e:
            if e.status != 404:
                raise
            secret = objects.make_mysql_secret(name, user_id, secrets.token_urlsafe(24),
                                               DATABASE, MYSQL_USER)
            self.core.create_namespaced_secret(ns, objects.with_owner(secret, owned))
            values = dict(secret.string_data)
        create_if_missing(self.core.create_namespaced_service, ns, objects.with_owner(
            objects.make_mysql_service(name, user_id, name), owned))
        return values

    async def _wait_ready(self, user_id: str, name: str) -> None:
        try:
            pod = await self.pods.wait_for(name, lambda p: pod_ready(p) or bool(pod_trouble(p)),
                                           self.provision_timeout_s)
            why = None if pod_ready(pod) else pod_trouble(pod)
        except asyncio.TimeoutError:
            why = pod_trouble(self.pods.get(name)) or (
                f"not ready after {self.provision_timeout_s:g}s")
        if why:
            # Start clean next time rather than leave a broken pod behind.
            await self.release(user_id, {"pod": name, "secret": name, "service": name})
            raise Unavailable(f"the MySQL pod for {user_id!r} did not become ready: {why}")

    def is_alive(self, user_id: str, resource: Dict[str, Any]) -> bool:
        return self.pods.get(resource.get("pod", "")) is not None  # from the watch cache

    async def release(self, user_id: str, resource: Dict[str, Any]) -> None:
        name = dns_label(user_id, "sfp-mysql")
        await self.runner.run(self._delete_objects, resource.get("pod", name),
                              resource.get("secret", name), resource.get("service", name))

    def _delete_objects(self, pod: str, secret: str, service: str) -> None:
        ns, background = self.namespace, k8s.V1DeleteOptions(propagation_policy="Background")
        delete_if_present(self.core.delete_namespaced_service, service, ns)
        delete_if_present(self.core.delete_namespaced_secret, secret, ns)
        delete_if_present(self.core.delete_namespaced_pod, pod, ns, body=background)
