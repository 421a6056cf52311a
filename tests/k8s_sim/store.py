"""Objects, the global resourceVersion, a bounded event history and the live watchers.

Mirrors etcd behind the API server's watch cache: every write gets the next value of one
cluster-wide counter as its ``metadata.resourceVersion``; a watch may start from any
resourceVersion still inside the cache's window of recent events, and one older than the
window gets a single ``ERROR`` event carrying a 410 ``Expired`` Status, after which the
client must list again. With a label or field selector, an object that stops (starts)
matching is seen as DELETED (ADDED), as the real cacher does. Everything here runs on the
simulator's IOLoop thread; nothing is locked.
"""
import asyncio
import collections
import copy
import datetime
import logging
import uuid
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from .errors import already_exists, conflict, expired, not_found
from .resources import RESOURCE_TYPES, ResourceType

Obj = Dict[str, Any]
Key = Tuple[Tuple[str, str, str], str, str]
Event = collections.namedtuple("Event", "rv rt type obj old")
log = logging.getLogger(__name__)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Watcher:
    """One open watch: its filter and the events waiting to be written to the client."""

    def __init__(self, rt: ResourceType, namespace: Optional[str],
                 match: Callable[[Obj], bool]) -> None:
        self.rt, self.namespace, self.match = rt, namespace, match
        self.pending: Deque[Dict[str, Any]] = collections.deque()
        self.wake = asyncio.Event()

    def offer(self, ev: Event) -> None:
        if ev.rt is not self.rt:
            return
        if self.namespace and ev.obj["metadata"].get("namespace") != self.namespace:
            return
        kind, now_ok = ev.type, self.match(ev.obj)
        was_ok = ev.old is not None and self.match(ev.old)
        if kind == "MODIFIED" and now_ok != was_ok:
            kind = "ADDED" if now_ok else "DELETED"
        elif not now_ok:
            return
        self.pending.append({"type": kind, "object": ev.obj})
        self.wake.set()

    def close(self) -> None:
        self.pending.append(None)
        self.wake.set()


class Store:
    """All objects of all kinds, keyed by (resource, namespace, name)."""

    def __init__(self, history_limit: int = 1000, first_rv: int = 1000) -> None:
        self.rv = first_rv
        self.history_limit = history_limit
        self.history: Deque[Event] = collections.deque()
        self.oldest_rv = first_rv  # a watch from any rv >= this one can be served
        self.objects: Dict[Key, Obj] = {}
        self.by_uid: Dict[str, Key] = {}
        self.watchers: List[Watcher] = []
        self.listeners: List[Callable[[Event], None]] = []

    # -- reads: the stored dicts are never mutated, callers copy before changing them.
    def find(self, rt: ResourceType, namespace: str, name: str) -> Optional[Obj]:
        return self.objects.get((rt.key, namespace, name))

    def get(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        obj = self.find(rt, namespace, name)
        if obj is None:
            raise not_found(rt, name)
        return obj

    def find_uid(self, uid: str) -> Optional[Tuple[ResourceType, Obj]]:
        key = self.by_uid.get(uid)
        return (RESOURCE_TYPES[key[0]], self.objects[key]) if key else None

    def items(self, rt: ResourceType, namespace: Optional[str] = None,
              match: Optional[Callable[[Obj], bool]] = None) -> List[Obj]:
        found = [o for (r, ns, _), o in self.objects.items()
                 if r == rt.key and (namespace is None or ns == namespace)]
        found.sort(key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]))
        return [o for o in found if match is None or match(o)]

    def all_items(self) -> List[Tuple[ResourceType, Obj]]:
        return [(RESOURCE_TYPES[k[0]], o) for k, o in self.objects.items()]

    # -- writes
    def create(self, rt: ResourceType, namespace: str, obj: Obj,
               prepare: Optional[Callable[[Obj], None]] = None) -> Obj:
        """Store a new object; ``prepare`` (validation, defaulting) sees its final metadata."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if (rt.key, namespace, meta.get("name")) in self.objects:
            raise already_exists(rt, meta["name"])
        for server_set in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(server_set, None)
        meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339())
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        if prepare:
            prepare(obj)
        if (rt.key, namespace, meta["name"]) in self.objects:
            raise already_exists(rt, meta["name"])
        self.objects[(rt.key, namespace, meta["name"])] = obj
        self.by_uid[meta["uid"]] = (rt.key, namespace, meta["name"])
        self._emit("ADDED", rt, obj, None)
        return obj

    def update(self, rt: ResourceType, obj: Obj, expect_rv: Optional[str] = None) -> Obj:
        """Replace an object with a changed copy; ``expect_rv`` makes it conditional (409)."""
        meta = obj["metadata"]
        key = (rt.key, meta["namespace"], meta["name"])
        old = self.objects.get(key)
        if old is None or old["metadata"]["uid"] != meta["uid"]:
            raise not_found(rt, meta["name"])
        if expect_rv and expect_rv != old["metadata"]["resourceVersion"]:
            raise conflict(rt, meta["name"])
        self.objects[key] = obj
        self._emit("MODIFIED", rt, obj, old)
        return obj

    def remove(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        old = self.get(rt, namespace, name)
        del self.objects[(rt.key, namespace, name)]
        self.by_uid.pop(old["metadata"]["uid"], None)
        obj = copy.deepcopy(old)
        self._emit("DELETED", rt, obj, old)
        return obj

    def _emit(self, kind: str, rt: ResourceType, obj: Obj, old: Optional[Obj]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        ev = Event(self.rv, rt, kind, obj, old)
        self.history.append(ev)
        while len(self.history) > self.history_limit:
            self.oldest_rv = self.history.popleft().rv
        for watcher in list(self.watchers):
            watcher.offer(ev)
        for listener in list(self.listeners):
            try:
                listener(ev)
            except Exception:  # one broken controller must not fail the client's request
                log.exception("listener %r failed on %s %s", listener, kind, rt.kind)

    # -- watches
    def watch(self, rt: ResourceType, namespace: Optional[str], match: Callable[[Obj], bool],
              since: Optional[str]) -> Watcher:
        """A registered watcher primed like the real server: from ``since`` (events after
        it, or 410) or, without one or with "0", synthetic ADDED events for the current state."""
        watcher = Watcher(rt, namespace, match)
        if since in (None, "", "0"):
            for obj in self.items(rt, namespace, match):
                watcher.pending.append({"type": "ADDED", "object": obj})
        else:
            try:
                start = int(since)
            except ValueError:
                start = -1
            if start < self.oldest_rv:
                watcher.pending.append({"type": "ERROR", "object": expired(
                    start, self.oldest_rv + 1).status()})
                watcher.pending.append(None)
                return watcher
            for ev in self.history:
                if ev.rv > start:
                    watcher.offer(ev)
        watcher.wake.set()
        self.watchers.append(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        if watcher in self.watchers:
            self.watchers.remove(watcher)

    def compact(self) -> int:
        """Forget every event so far (like an etcd compaction); returns the compacted rv."""
        self.history.clear()
        self.oldest_rv = self.rv
        return self.rv
