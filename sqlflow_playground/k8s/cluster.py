"""The program's view of the playground cluster: API clients and the shared watch caches.

One ``Cluster`` per process, shared by the kubernetes provisioner and the task types, so
there is one watch per kind (pods, batch Jobs, each custom workload kind) however many
users and jobs there are, and one follower per running pod whose log is being fetched
(``logfollow.py``), so fetching a pod's output does not cost a request per fetch either.
"""
import threading
from typing import Dict, Optional, Tuple

from kubernetes import client as k8s

from .clients import shared_api_client, streaming_api_client
from .logfollow import PodLogs
from .names import managed_selector
from .reflector import ResourceReflector


class Cluster:
    """Clients for one namespace, and watch-fed caches of the objects the server manages."""

    def __init__(self, namespace: str, kubeconfig: Optional[str] = None,
                 pending_grace_s: float = 120.0):
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        # How long a job's pod may stay stuck (Unschedulable, image pull, …) before the job
        # ends FAILED with the cluster's reason.
        self.pending_grace_s = pending_grace_s
        api = shared_api_client(kubeconfig)
        self.core = k8s.CoreV1Api(api)
        self.batch = k8s.BatchV1Api(api)
        self.custom = k8s.CustomObjectsApi(api)
        self.pods = ResourceReflector(self.core.list_namespaced_pod, namespace,
                                      managed_selector(), "pods")
        self._workloads: Dict[Tuple[str, str, str], ResourceReflector] = {}
        self._lock = threading.Lock()
        # Pod logs: followed streams on a client of their own (one connection each).
        self.logs = PodLogs(api, self._stream_client, self.pods.get)

    def _stream_client(self):
        return streaming_api_client(self.kubeconfig, self.logs.followers.max_followers)

    def start(self) -> None:
        """Load the pod cache (blocking: call it through the executor)."""
        if not self.pods.first_load.is_set():
            self.pods.start()

    def workloads(self, group: str, version: str, plural: str) -> ResourceReflector:
        """The started cache of one workload kind: ``("batch", "v1", "jobs")`` or a custom
        resource such as ``("kubeflow.org", "v1", "pytorchjobs")``. Blocking on first use."""
        key = (group, version, plural)
        with self._lock:
            reflector = self._workloads.get(key)
            if reflector is None:
                if key == ("batch", "v1", "jobs"):
                    list_fn = self.batch.list_namespaced_job
                else:
                    def list_fn(namespace, **kwargs):
                        return self.custom.list_namespaced_custom_object(
                            group, version, namespace, plural, **kwargs)
                reflector = self._workloads[key] = ResourceReflector(
                    list_fn, self.namespace, managed_selector(), plural)
        if not reflector.first_load.is_set():
            reflector.start()
        return reflector

    def workload_caches(self) -> Dict[Tuple[str, str, str], ResourceReflector]:
        """The workload caches started so far, by (group, version, plural)."""
        with self._lock:
            return dict(self._workloads)

    def stop(self) -> None:
        self.logs.close()
        self.pods.stop()
        for reflector in list(self._workloads.values()):
            reflector.stop()
