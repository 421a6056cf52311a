"""The one Kubernetes API client the program shares, and idempotent create/delete.

Like kubespawner's ``clients.py``: configuration is loaded once (in-cluster first, a
kubeconfig otherwise) and every caller shares one ``ApiClient`` and its connection pool.
Everything here is synchronous and may block on the network: the server calls it through
its bounded executor (``await runner.run(fn, ...)`` of ``sqlflow_playground.blocking``),
never on the IOLoop.
"""
import contextlib
import json
import os
import threading
from typing import Any, Callable, Dict, Iterator, Optional, TypeVar

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.config import incluster_config

from ..errors import PlaygroundError, Unavailable

T = TypeVar("T")
# Executor threads and watch threads share the pool; the client's default of 10 would
# make urllib3 discard connections under load.
POOL_MAXSIZE = 32
USER_AGENT = "sqlflow-playground"

_clients: Dict[Optional[str], client.ApiClient] = {}
_lock = threading.Lock()


def _in_cluster() -> bool:
    return (os.path.exists(incluster_config.SERVICE_TOKEN_FILENAME)
            and bool(os.environ.get(incluster_config.SERVICE_HOST_ENV_NAME)))


def load_config(kubeconfig: Optional[str] = None, context: Optional[str] = None
                ) -> client.Configuration:
    """A fresh ``Configuration``: the pod's service account when no kubeconfig is given and
    we run in a cluster, else ``kubeconfig`` (``$KUBECONFIG`` or ``~/.kube/config`` if None).

    The global default configuration is left alone, and refreshed credentials are never
    written back to the kubeconfig file (the server's filesystem is read-only).
    """
    configuration = client.Configuration()
    if kubeconfig is None and context is None and _in_cluster():
        # try_refresh_token: projected service-account tokens rotate under a running pod.
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(config_file=kubeconfig, context=context,
                                client_configuration=configuration, persist_config=False)
    return configuration


def shared_api_client(kubeconfig: Optional[str] = None) -> client.ApiClient:
    """The program's one ``ApiClient`` for ``kubeconfig`` (None: in-cluster or default)."""
    key = os.path.abspath(os.path.expanduser(kubeconfig)) if kubeconfig else None
    with _lock:
        api = _clients.get(key)
        if api is None:
            configuration = load_config(key)
            configuration.connection_pool_maxsize = max(
                configuration.connection_pool_maxsize or 0, POOL_MAXSIZE)
            api = _clients[key] = client.ApiClient(configuration)
            api.user_agent = USER_AGENT
        return api


def streaming_api_client(kubeconfig: Optional[str], pool_maxsize: int) -> client.ApiClient:
    """A client of its own for long-lived streams (log follows), not shared: each open stream
    holds a connection for as long as it lasts, so sharing the pool of ``shared_api_client``
    would starve the short calls and make urllib3 discard connections ("connection pool is
    full"). ``pool_maxsize``: the most streams open at once. The caller closes it."""
    configuration = load_config(os.path.abspath(os.path.expanduser(kubeconfig))
                                if kubeconfig else None)
    configuration.connection_pool_maxsize = pool_maxsize
    api = client.ApiClient(configuration)
    api.user_agent = USER_AGENT
    return api


def close_shared_clients() -> None:
    """Close every shared client (at shutdown, and between tests)."""
    with _lock:
        for api in _clients.values():
            api.close()
        _clients.clear()


def core_v1(kubeconfig: Optional[str] = None) -> client.CoreV1Api:
    """Pods, pod logs, Services and Secrets."""
    return client.CoreV1Api(shared_api_client(kubeconfig))


def batch_v1(kubeconfig: Optional[str] = None) -> client.BatchV1Api:
    """batch/v1 Jobs."""
    return client.BatchV1Api(shared_api_client(kubeconfig))


def custom_objects(kubeconfig: Optional[str] = None) -> client.CustomObjectsApi:
    """Workloads of other kinds (e.g. kubeflow.org PyTorchJobs), as dicts."""
    return client.CustomObjectsApi(shared_api_client(kubeconfig))


def create_if_missing(create_fn: Callable[..., T], *args: Any, **kwargs: Any) -> Optional[T]:
    """``create_fn(*args, **kwargs)``; None if the object already exists (409), so that
    retrying a half-finished provisioning finishes it. Other errors are raised."""
    try:
        return create_fn(*args, **kwargs)
    except ApiException as e:
        if e.status == 409:
            return None
        raise


def delete_if_present(delete_fn: Callable[..., T], *args: Any, **kwargs: Any) -> Optional[T]:
    """``delete_fn(*args, **kwargs)``; None if the object is already gone (404).
    Other errors are raised."""
    try:
        return delete_fn(*args, **kwargs)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def api_message(e: ApiException) -> str:
    """The message of the ``Status`` the API server answered with, else its status line."""
    try:
        return str(json.loads(e.body)["message"])
    except Exception:
        return f"{e.status} {e.reason}"


def cluster_failure(e: ApiException, verb: str, resource: str,
                    namespace: str) -> Optional[PlaygroundError]:
    """The error to answer when the API server refused ``verb`` on ``resource`` (RBAC's
    spelling: ``pods``, ``jobs.batch``) for a reason that is the cluster's, not the user's:
    401/403 (the gateway's service account may not), 429 (overloaded) and 5xx, each a 503
    naming it. None for other statuses (a 4xx about the request: the caller's to map)."""
    if e.status in (401, 403):
        return Unavailable(
            f"the gateway's service account may not {verb} {resource} in namespace "
            f"{namespace!r} (Kubernetes answered {e.status}: {api_message(e)}); its Role "
            "must grant it (deploy/role.yaml)")
    if e.status == 429:
        return Unavailable(f"the Kubernetes API is overloaded (429 Too Many Requests) and "
                           f"refused to {verb} {resource}; try again shortly")
    if e.status is not None and e.status >= 500:
        return Unavailable(f"the Kubernetes API failed to {verb} {resource}: {e.status} "
                           f"{api_message(e)}")
    return None


@contextlib.contextmanager
def cluster_call(verb: str, resource: str, namespace: str) -> Iterator[None]:
    """Around a call whose refusal cannot be the user's fault (reading a log, deleting a
    job's objects): an ``ApiException`` becomes a 503 naming what was refused."""
    try:
        yield
    except ApiException as e:
        raise (cluster_failure(e, verb, resource, namespace) or Unavailable(
            f"Kubernetes refused to {verb} {resource}: {api_message(e)}")) from None
