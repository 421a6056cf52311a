"""``KubeSimulator``: the in-test Kubernetes API server, its thread and its test hooks.

Mirrors a one-node cluster as its API clients see it: an API server on a plain-HTTP
loopback port (``server``), etcd and the watch cache (``store``), the garbage collector
(``gc``), the Job controller (``controllers``) and a kubelet that runs pod commands as
local processes (``kubelet``). It all runs on one Tornado/asyncio loop in a thread of its
own, so tests may call the synchronous ``kubernetes`` client from any other thread. The
hooks (``fail_pod``, ``set_status``, ``compact``, …) are thread-safe: they run on that loop.

Fault injection: ``inject(target, fault)`` with a pod name (that pod) or a label selector
(a dict; ``{}`` is every pod, now and later) — ``unschedulable``, ``unpullable`` and
``crashloop`` are standing rules, until ``clear_faults()``; ``evicted`` hits the matching
pods now, and so does ``oomkilled`` (Failed), except MySQL pods: their restart policy
restarts them, and they are killed again, until ``clear_faults()`` (``CrashLoopBackOff``). Images named ``unpullable/...`` never pull.
``mysql_shutdown_s`` is how long a MySQL pod stays Terminating after its deletion (within
its grace period), and ``mysql_refusal(data_source)`` says whether the MySQL server behind a
data source's host would accept its credentials.
"""
import asyncio
import collections
import copy
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Counter, Dict, List, Optional, Union

import kubernetes_validate
import tornado.httpserver
import tornado.netutil

from .controllers import JobController
from .errors import not_found
from .gc import GarbageCollector
from .kubeconfig import write_kubeconfig
from .kubelet import Kubelet
from .resources import PODS, SERVICES, Discovery, lookup
from .server import make_app
from .store import Store


def newest_schema_version() -> str:
    return ".".join(kubernetes_validate.latest_version().split(".")[:2])


class KubeSimulator:
    """An API server for tests. ``start()``, use ``url`` or ``write_kubeconfig()``, ``stop()``.

    :param history_limit: watch events kept; a watch from an older resourceVersion gets 410.
    :param startup_delay: seconds a pod spends in ContainerCreating before it runs.
    :param mysql_ready_delay: seconds from Running to Ready for MySQL/MariaDB images.
    :param schema_version: Kubernetes version whose schemas validate objects (newest known).
    :param default_watch_timeout_s: how long a watch without ``timeoutSeconds`` stays open.
    :param bookmark_interval_s: how often a watch with ``allowWatchBookmarks`` gets one.
    :param max_grace_s: cap on a deleted pod's termination grace period.
    :param log_follow_timeout_s: how long a ``follow=true`` log stream stays open; None
        (the real API server's behaviour): until the container ends or the client leaves.
    :param log_clock_resolution_ns: the node clock's resolution for log timestamps; above 1,
        consecutive lines may share a timestamp.
    """

    def __init__(self, *, history_limit: int = 1000, startup_delay: float = 0.05,
                 mysql_ready_delay: float = 0.2, schema_version: Optional[str] = None,
                 default_watch_timeout_s: float = 60.0, bookmark_interval_s: float = 1.0,
                 max_grace_s: float = 2.0, restart_backoff_s: float = 0.2,
                 log_follow_timeout_s: Optional[float] = None,
                 log_clock_resolution_ns: int = 1) -> None:
        self.history_limit, self.startup_delay = history_limit, startup_delay
        self.log_follow_timeout_s = log_follow_timeout_s
        self.log_clock_resolution_ns = log_clock_resolution_ns
        self.log_streams: set = set()  # LogHandlers following a log now (the loop's own)
        self.mysql_ready_delay, self.max_grace_s = mysql_ready_delay, max_grace_s
        self.restart_backoff_s = restart_backoff_s
        self.schema_version = schema_version or newest_schema_version()
        self.default_watch_timeout_s = default_watch_timeout_s
        self.bookmark_interval_s = bookmark_interval_s
        self.image_pull_backoff_images: set = set()
        self._mysql_shutdown_s = 0.0
        self._counts: Counter = collections.Counter()
        self._counts_lock = threading.Lock()
        self._cluster_ips = iter(range(10, 60000))
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self.port = 0

    # -- lifecycle
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> "KubeSimulator":
        self._thread = threading.Thread(target=self._serve, name="k8s-sim", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error:
            raise RuntimeError(f"the Kubernetes simulator did not start: {self._error}")
        return self

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._setup())
        except BaseException as e:  # reported by start()
            self._error = e
        self._ready.set()
        if self._error is None:
            loop.run_forever()
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    async def _setup(self) -> None:
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self.store = Store(history_limit=self.history_limit)
        loop = asyncio.get_running_loop()
        self.gc = GarbageCollector(self.store, loop.call_soon)
        self.kubelet = Kubelet(self.store, self.port, startup_delay=self.startup_delay,
                               mysql_ready_delay=self.mysql_ready_delay,
                               max_grace_s=self.max_grace_s,
                               restart_backoff_s=self.restart_backoff_s,
                               log_clock_resolution_ns=self.log_clock_resolution_ns)
        self.kubelet.image_pull_backoff_images = self.image_pull_backoff_images
        self.kubelet.mysql_shutdown_s = self._mysql_shutdown_s
        self.gc.terminate_pod = self.kubelet.terminate
        self.jobs = JobController(self.store)
        self.discovery = Discovery(f"127.0.0.1:{self.port}", f"v{self.schema_version}.0")
        self.http_server = tornado.httpserver.HTTPServer(make_app(self))
        self.http_server.add_sockets(sockets)

    def stop(self, timeout: float = 15.0) -> None:
        """Close every watch and connection, kill every pod process, end the thread."""
        if self._thread is None or self._loop is None:
            return
        if self._error is None and self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._thread = None

    async def _shutdown(self) -> None:
        self.http_server.stop()
        for stream in list(self.log_streams):
            stream.cut()
        for watcher in list(self.store.watchers):
            watcher.close()
        await self.kubelet.shutdown()
        try:
            await asyncio.wait_for(self.http_server.close_all_connections(), 5.0)
        except asyncio.TimeoutError:
            pass

    def write_kubeconfig(self, path: Union[str, Path], namespace: str = "default") -> Path:
        return write_kubeconfig(path, self.url, namespace)

    # -- request accounting (written by the loop thread, read by tests)
    def record_request(self, verb: str, resource: str, name: Optional[str]) -> None:
        with self._counts_lock:
            self._counts[(verb, resource, name)] += 1

    @property
    def counts(self) -> Counter:
        """A snapshot: ``counts[("get", "pods", "p1")]``, ``counts[("list", "pods", None)]``."""
        with self._counts_lock:
            return collections.Counter(self._counts)

    def reset_counts(self) -> None:
        with self._counts_lock:
            self._counts.clear()

    def allocate_cluster_ip(self) -> str:
        n = next(self._cluster_ips)
        return f"10.96.{n // 250}.{n % 250 + 1}"

    @staticmethod
    def now() -> float:
        return time.time()

    # -- test hooks, run on the simulator's loop
    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 10.0) -> Any:
        """Run ``fn(*args)`` on the simulator's loop and return its result."""
        if threading.current_thread() is self._thread:
            return fn(*args)

        async def run() -> Any:
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    @property
    def resource_version(self) -> int:
        return self.call(lambda: self.store.rv)

    def compact(self) -> int:
        """Forget the event history: a watch from any earlier resourceVersion gets 410."""
        return self.call(self.store.compact)

    def open_log_streams(self, name: Optional[str] = None) -> int:
        """How many ``follow=true`` log streams (of pod ``name``, or of any pod) are open."""
        return self.call(lambda: sum(1 for h in self.log_streams
                                     if name is None or h.path_kwargs.get("name") == name))

    def cut_log_streams(self, name: Optional[str] = None) -> int:
        """Break the open log streams (of pod ``name``, or all) mid-way; how many."""
        def cut() -> int:
            streams = [h for h in self.log_streams
                       if name is None or h.path_kwargs.get("name") == name]
            for h in streams:
                h.cut()
            return len(streams)
        return self.call(cut)

    def fail_pod(self, namespace: str, name: str, reason: str = "ImagePullBackOff",
                 message: Optional[str] = None) -> None:
        """Waiting reasons (ImagePullBackOff, ErrImagePull, CrashLoopBackOff, …) leave the
        pod Pending with that reason; others (OOMKilled, Error, Evicted, DeadlineExceeded)
        kill it and end it Failed."""
        def fail() -> None:
            runtime = self.kubelet.runtime(namespace, name)
            if runtime is None:
                raise not_found(PODS, name)
            self.kubelet.fail(runtime, reason, message or reason)
        self.call(fail)

    # -- fault injection
    FAULTS = ("unschedulable", "unpullable", "crashloop", "evicted", "oomkilled")

    def inject(self, target: Union[str, Dict[str, str]], fault: str,
               namespace: str = "default") -> int:
        """Inject ``fault`` into the pod named ``target`` (the one there now, else the next one
        of that name), or every pod, now and later, whose labels include the dict ``target``.
        Returns how many existing pods it hits now."""
        if fault not in self.FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {self.FAULTS}")

        def add() -> int:
            named = self.store.find(PODS, namespace, target) if isinstance(target, str) else None
            uid = named["metadata"]["uid"] if named else None

            def matches(pod: Dict[str, Any]) -> bool:
                meta = pod["metadata"]
                if meta["namespace"] != namespace:
                    return False
                if isinstance(target, str):  # that pod, not a later one of the same name
                    return meta["name"] == target and uid in (None, meta["uid"])
                labels = meta.get("labels") or {}
                return all(labels.get(k) == v for k, v in target.items())

            hit = [p for p in self.store.items(PODS, namespace) if matches(p)]
            if fault != "evicted":  # oomkilled: MySQL pods restart (and are killed again)
                self.kubelet.faults.append((matches, fault))
                self.kubelet.poke()
            if fault in ("evicted", "oomkilled"):
                for pod in hit:
                    if fault == "evicted" or not self._is_mysql(pod):
                        self._fail_now(pod, fault)
            return len(hit)
        return self.call(add)

    @staticmethod
    def _is_mysql(pod: Dict[str, Any]) -> bool:
        image = pod["spec"]["containers"][0]["image"]
        return "mysql" in image or "mariadb" in image

    def _fail_now(self, pod: Dict[str, Any], fault: str) -> None:
        r = self.kubelet.runtime(pod["metadata"]["namespace"], pod["metadata"]["name"])
        if r is None:
            return
        if fault == "evicted":
            self.kubelet.fail(r, "Evicted", "The node was low on resource: memory. Threshold "
                              "quantity: 100Mi, available: 51200Ki.")
        else:
            self.kubelet.fail(r, "OOMKilled")

    def evict(self, namespace: str, name: str) -> None:
        """Evict the pod (node pressure): it ends Failed, reason ``Evicted``."""
        if self.inject(name, "evicted", namespace) == 0:
            raise not_found(PODS, name)

    def clear_faults(self) -> None:
        """Lift every standing fault (unschedulable pods get scheduled, and so on)."""
        def clear() -> None:
            self.kubelet.faults.clear()
            self.kubelet.poke()
        self.call(clear)

    @property
    def mysql_shutdown_s(self) -> float:
        return self._mysql_shutdown_s

    @mysql_shutdown_s.setter
    def mysql_shutdown_s(self, seconds: float) -> None:
        self._mysql_shutdown_s = seconds
        if self._loop is not None:
            self.call(setattr, self.kubelet, "mysql_shutdown_s", seconds)

    def mysql_refusal(self, data_source: str) -> Optional[str]:
        """None if a client of ``data_source`` (``mysql://USER:PASS@tcp(HOST:PORT)/DB?…``,
        HOST a Service's DNS name) would get in; else why not. Like a connection: the
        Service must exist and select a ready, not terminating MySQL pod, whose server
        was started with those credentials and that database."""
        m = re.match(r"^mysql://([^:]+):([^@]*)@tcp\(([^:)]+):(\d+)\)/([^?]+)", data_source)
        if not m:
            return "not a MySQL data source"
        user, password, host, _, database = m.groups()
        service, _, rest = host.partition(".")
        namespace = rest.split(".")[0] or "default"

        def check() -> Optional[str]:
            svc = self.store.find(SERVICES, namespace, service)
            if svc is None:
                return f"Unknown MySQL server host '{host}' (no Service)"
            selector = (svc.get("spec") or {}).get("selector") or {}
            for pod in self.store.items(PODS, namespace):
                labels = pod["metadata"].get("labels") or {}
                if not selector or any(labels.get(k) != v for k, v in selector.items()) \
                        or pod["metadata"].get("deletionTimestamp"):
                    continue
                r = self.kubelet.pods.get(pod["metadata"]["uid"])
                env = r.mysql_env if r else None
                if env is None:
                    continue
                if (user, password) != (env.get("MYSQL_USER"), env.get("MYSQL_PASSWORD")) \
                        and (user, password) != ("root", env.get("MYSQL_ROOT_PASSWORD")):
                    return f"Access denied for user '{user}'"
                if database != env.get("MYSQL_DATABASE") and user != "root":
                    return f"Access denied for user '{user}' to database '{database}'"
                return None
            return f"Can't connect to MySQL server on '{host}' (no ready endpoint)"
        return self.call(check)

    def _type(self, group: str, version: str, plural: str) -> Any:
        rt = lookup(group, version, plural)
        if rt is None:
            raise ValueError(f"the simulator does not serve {group}/{version} {plural}")
        return rt

    def set_status(self, group: str, version: str, plural: str, namespace: str, name: str,
                   status: Dict[str, Any]) -> Dict[str, Any]:
        """Replace an object's ``status`` (a MODIFIED event), as an operator would."""
        rt = self._type(group, version, plural)

        def update() -> Dict[str, Any]:
            obj = copy.deepcopy(self.store.get(rt, namespace, name))
            obj["status"] = copy.deepcopy(status)
            return copy.deepcopy(self.store.update(rt, obj))
        return self.call(update)

    def get_object(self, group: str, version: str, plural: str, namespace: str,
                   name: str) -> Optional[Dict[str, Any]]:
        """The stored object (a copy), or None; not counted as a request."""
        rt = self._type(group, version, plural)
        return self.call(lambda: copy.deepcopy(self.store.find(rt, namespace, name)))

    def list_objects(self, group: str, version: str, plural: str,
                     namespace: Optional[str] = None) -> List[Dict[str, Any]]:
        rt = self._type(group, version, plural)
        return self.call(lambda: copy.deepcopy(self.store.items(rt, namespace)))

    def pids(self) -> List[int]:
        """Process ids of the pod containers running now."""
        return self.call(lambda: [r.proc.pid for r in self.kubelet.pods.values() if r.proc])

    @property
    def spawned_pids(self) -> List[int]:
        """Every container process ever started; each led its own process group."""
        return list(self.kubelet.spawned)
