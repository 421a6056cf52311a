"""A kubeconfig for the simulator, as ``kubectl config view --raw`` would print one.

Mirrors the client-side file every Kubernetes client reads: one cluster (the simulator's
plain-HTTP URL), one user with a bearer token the simulator does not check, and one
current context whose namespace is ``default``.
"""
from pathlib import Path
from typing import Union

import yaml


def kubeconfig_document(url: str, namespace: str = "default", name: str = "k8s-sim") -> dict:
    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": name, "cluster": {"server": url}}],
        "users": [{"name": f"{name}-user", "user": {"token": "k8s-sim-dummy-token"}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": f"{name}-user",
                                                "namespace": namespace}}],
        "current-context": name,
    }


def write_kubeconfig(path: Union[str, Path], url: str, namespace: str = "default") -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(kubeconfig_document(url, namespace), sort_keys=False))
    path.chmod(0o600)
    return path
