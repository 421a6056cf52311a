"""An in-test Kubernetes API server that the official client and kubectl talk to.

``KubeSimulator`` serves core/v1 pods (with logs), services and secrets, batch/v1 jobs and
kubeflow.org/v1 pytorchjobs over real HTTP on 127.0.0.1, with list/watch by
resourceVersion, label and field selectors, 404/409/410/422 ``Status`` errors, schema
validation with ``kubernetes-validate``, garbage collection by ownerReferences, a Job
controller, and a kubelet that runs each pod's command as a local process.

    with running_simulator() as sim:
        sim.write_kubeconfig(path)   # for kubernetes.config.load_kube_config / kubectl
        ...
        sim.counts[("get", "pods", "p1")]
"""
import contextlib
from typing import Any, Iterator

from .errors import ApiError
from .simulator import KubeSimulator

__all__ = ["ApiError", "KubeSimulator", "running_simulator"]


@contextlib.contextmanager
def running_simulator(**options: Any) -> Iterator[KubeSimulator]:
    """A started ``KubeSimulator(**options)``, stopped (processes killed) on exit."""
    sim = KubeSimulator(**options).start()
    try:
        yield sim
    finally:
        sim.stop()
