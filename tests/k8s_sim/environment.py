"""A container's environment, resolved the way the kubelet does before starting it.

Mirrors ``kubelet_pods.go`` ``makeEnvironmentVariables``: ``envFrom`` secrets first, then
``env`` entries with a literal ``value``, a ``secretKeyRef`` (decoded from the Secret's
base64 ``data``) or a ``fieldRef`` (``metadata.name``/``namespace``/``uid``,
``spec.nodeName``, ``status.podIP``). A missing Secret or key raises ``ConfigError``; the
kubelet reports ``CreateContainerConfigError`` and retries until it appears. The process
also sees a ``PATH`` whose first entry holds this interpreter, so ``python`` resolves.
"""
import base64
import os
import sys
from typing import Any, Dict

from .resources import SECRETS
from .store import Store


class ConfigError(Exception):
    """The container's configuration cannot be resolved yet (CreateContainerConfigError)."""


def _secret(store: Store, namespace: str, name: str, optional: bool = False) -> Dict[str, str]:
    secret = store.find(SECRETS, namespace, name)
    if secret is None:
        if optional:
            return {}
        raise ConfigError(f'secret "{name}" not found')
    return {k: base64.b64decode(v).decode("utf-8", "replace")
            for k, v in (secret.get("data") or {}).items()}


def container_environment(store: Store, pod: Dict[str, Any], node_name: str,
                          api_port: int) -> Dict[str, str]:
    meta, container = pod["metadata"], pod["spec"]["containers"][0]
    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
           "HOSTNAME": meta["name"], "LANG": "C.UTF-8",
           "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api_port)}
    for source in container.get("envFrom") or []:
        ref = source.get("secretRef")
        if ref:
            data = _secret(store, meta["namespace"], ref["name"], ref.get("optional", False))
            env.update({source.get("prefix", "") + k: v for k, v in data.items()})
    for var in container.get("env") or []:
        if "value" in var or not var.get("valueFrom"):
            env[var["name"]] = str(var.get("value", ""))
            continue
        source = var["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = _secret(store, meta["namespace"], ref["name"], ref.get("optional", False))
            if ref["key"] not in data and not ref.get("optional"):
                raise ConfigError(f"couldn't find key {ref['key']} in Secret "
                                  f"{meta['namespace']}/{ref['name']}")
            env[var["name"]] = data.get(ref["key"], "")
        elif "fieldRef" in source:
            values = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
                      "metadata.uid": meta["uid"], "spec.nodeName": node_name,
                      "status.podIP": pod.get("status", {}).get("podIP", "")}
            env[var["name"]] = values.get(source["fieldRef"]["fieldPath"], "")
        else:
            raise ConfigError(f"{next(iter(source))} is not supported by the simulator")
    return env
