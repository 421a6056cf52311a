"""The program's view of the playground cluster: API clients and the shared pod cache.

One ``Cluster`` per process, shared by the kubernetes provisioner and the pod task type,
so there is one watch of pods however many users and jobs there are.
"""
from typing import Optional

from kubernetes import client as k8s

from .clients import shared_api_client
from .names import managed_selector
from .reflector import ResourceReflector


class Cluster:
    """Clients for one namespace, and a watch-fed cache of the pods the server manages."""

    def __init__(self, namespace: str, kubeconfig: Optional[str] = None):
        self.namespace = namespace
        api = shared_api_client(kubeconfig)
        self.core = k8s.CoreV1Api(api)
        self.batch = k8s.BatchV1Api(api)
        self.custom = k8s.CustomObjectsApi(api)
        self.pods = ResourceReflector(self.core.list_namespaced_pod, namespace,
                                      managed_selector(), "pods")

    def start(self) -> None:
        """Load the pod cache (blocking: call it through the executor)."""
        if not self.pods.first_load.is_set():
            self.pods.start()

    def stop(self) -> None:
        self.pods.stop()
