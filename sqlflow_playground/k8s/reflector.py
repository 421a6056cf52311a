"""A watch-fed cache of one kind of object (like kubespawner's ResourceReflector).

One thread per kind lists the objects matching a label selector, then watches from the
list's resourceVersion, applying each event to a dict that everyone reads. A watch that
ends is resumed from the last resourceVersion seen; ``410 Gone`` (history compacted)
means re-list; any other failure re-lists after an exponential backoff. So reading a
pod's status costs no API call, and the API load does not grow with the poll rate.

Objects are kept as plain dicts (the API's JSON), keyed by name.
"""
import asyncio
import json
import logging
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)

Obj = Dict[str, Any]
Predicate = Callable[[Optional[Obj]], bool]

WATCH_TIMEOUT_S = 300  # the server ends a watch after this long; we resume it
MAX_BACKOFF_S = 30.0


class ResourceReflector:
    """Keeps ``objects`` (name -> dict) in step with the API server.

    ``list_fn`` is a namespaced list call of the official client, e.g.
    ``CoreV1Api(api).list_namespaced_pod``, called with ``_preload_content=False`` so the
    raw JSON is kept (cheaper than building model objects, and easy to copy).
    """

    def __init__(self, list_fn: Callable[..., Any], namespace: str, label_selector: str,
                 kind: str, watch_timeout_s: int = WATCH_TIMEOUT_S):
        self.list_fn = list_fn
        self.namespace = namespace
        self.label_selector = label_selector
        self.kind = kind
        self.watch_timeout_s = watch_timeout_s
        self.objects: Dict[str, Obj] = {}
        self.resource_version: Optional[str] = None
        self.first_load = threading.Event()
        # Set once the first list succeeded or was refused (401/403: no retry will help
        # until the Role changes); ``refused`` is that refusal, until a list succeeds.
        self._settled = threading.Event()
        self.refused: Optional[ApiException] = None
        self.relists = 0  # how often a full list was needed (410s and errors)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._waiters: List[Tuple[str, Predicate, asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name=f"reflector-{kind}", daemon=True)

    # -- lifecycle -------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> None:
        """Start watching (once, whoever calls); return once the first list has loaded."""
        with self._lock:
            if not self._thread.is_alive() and not self._stopping.is_set():
                self._thread.start()
        if not self._settled.wait(timeout_s):
            raise TimeoutError(f"could not list {self.kind} within {timeout_s:g}s")
        refused = self.refused
        if not self.first_load.is_set() and refused is not None:
            raise refused  # ApiException 401/403: the caller words it (clients.cluster_failure)

    def stop(self) -> None:
        self._stopping.set()
        response = self._response
        if response is not None:
            try:
                response.close()  # ends a blocked watch read at once
            except Exception:
                pass
        if self._thread.is_alive():
            self._thread.join(5)

    # -- reading -----------------------------------------------------------------

    def get(self, name: str) -> Optional[Obj]:
        return self.objects.get(name)

    async def wait_for(self, name: str, predicate: Predicate, timeout_s: float) -> Optional[Obj]:
        """Wait until ``predicate(object or None)`` holds; return the object. TimeoutError."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        with self._lock:
            current = self.objects.get(name)
            if predicate(current):
                return current
            entry = (name, predicate, loop, future)
            self._waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout_s)
        finally:
            with self._lock:
                if entry in self._waiters:
                    self._waiters.remove(entry)

    # -- the watch thread ----------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                if self.resource_version is None:
                    self._list()
                self._watch()
                backoff = 0.5
            except ApiException as e:
                if e.status == 410:
                    log.info("%s watch expired (410 Gone); re-listing", self.kind)
                    self.resource_version = None
                    continue
                if e.status in (401, 403) and not self.first_load.is_set():
                    self.refused = e
                    self._settled.set()
                backoff = self._pause(backoff, f"API error {e.status} {e.reason}")
            except Exception as e:
                if self._stopping.is_set():
                    return
                backoff = self._pause(backoff, f"{type(e).__name__}: {e}")

    def _pause(self, backoff: float, why: str) -> float:
        log.warning("%s reflector: %s; retrying in %.1fs", self.kind, why, backoff)
        self.resource_version = None  # start over from a fresh list
        self._stopping.wait(backoff)
        return min(backoff * 2, MAX_BACKOFF_S)

    def _list(self) -> None:
        response = self.list_fn(self.namespace, label_selector=self.label_selector,
                                _preload_content=False, _request_timeout=60)
        body = json.loads(response.data)
        fresh = {o["metadata"]["name"]: o for o in body.get("items", [])}
        with self._lock:
            self.objects = fresh
            self.resource_version = body["metadata"]["resourceVersion"]
        self.relists += 1
        self.refused = None
        self.first_load.set()
        self._settled.set()
        self._notify()

    def _watch(self) -> None:
        response = self.list_fn(
            self.namespace, label_selector=self.label_selector, watch=True,
            resource_version=self.resource_version, allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout_s, _preload_content=False,
            _request_timeout=(10, self.watch_timeout_s + 30))
        self._response = response
        try:
            for line in _lines(response):
                if self._stopping.is_set():
                    return
                self._apply(json.loads(line))
        finally:
            self._response = None
            response.release_conn()

    def _apply(self, event: Obj) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            raise ApiException(status=obj.get("code", 500), reason=obj.get("message", ""))
        version = obj.get("metadata", {}).get("resourceVersion")
        with self._lock:
            if kind in ("ADDED", "MODIFIED"):
                self.objects = {**self.objects, obj["metadata"]["name"]: obj}
            elif kind == "DELETED":
                rest = dict(self.objects)
                rest.pop(obj["metadata"]["name"], None)
                self.objects = rest
            if version:
                self.resource_version = version
        if kind != "BOOKMARK":
            self._notify()

    def _notify(self) -> None:
        with self._lock:
            ready = [(loop, future, self.objects.get(name))
                     for name, predicate, loop, future in self._waiters
                     if _holds(predicate, self.objects.get(name))]
        for loop, future, obj in ready:
            loop.call_soon_threadsafe(_resolve, future, obj)


def _holds(predicate: Predicate, obj: Optional[Obj]) -> bool:
    try:
        return bool(predicate(obj))
    except Exception:
        log.exception("reflector predicate failed")
        return False


def _resolve(future: asyncio.Future, obj: Optional[Obj]) -> None:
    if not future.done():
        future.set_result(obj)


def _lines(response: Any):
    """JSON lines from a urllib3 response streamed in chunks."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                yield line
    if pending.strip():
        yield pending


__all__ = ["ResourceReflector"]
