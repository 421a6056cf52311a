"""The HTTP face of the simulator: Tornado routes speaking the Kubernetes REST protocol.

Mirrors the API server's URL layout (``/api/v1/namespaces/{ns}/{resource}[/{name}]``,
``/apis/{group}/{version}/namespaces/…``, all-namespace collections), its verbs (create,
get, list, watch as a chunked stream of JSON lines, patch, delete with propagation), its
discovery and OpenAPI documents, the pod ``log`` subresource, ``dryRun=All`` on create and
delete (validated and answered, nothing stored or run), and errors as ``Status`` objects.
Every request is counted by (verb, resource, name or ``None``), then authorized
(``resources.authorize``: injected faults, and a Role when the simulator enforces one).
A mutating webhook (``admission.install_webhooks``) may add a sidecar to every new pod.
Handlers only translate HTTP; the state lives in the ``Store`` and its controllers,
reached through ``sim``.
"""
import asyncio
import copy
import json
import uuid
from typing import Any, Dict, Optional, Tuple

import tornado.iostream
import tornado.web

from . import selectors
from .admission import apply_patch, install_webhooks, prepare_create
from .base import TRUE, NotFoundHandler, SimHandler
from .errors import ApiError, already_exists, bad_request, path_not_found, status_success
from .podlog import LogHandler
from .resources import authorize
from .store import now_rfc3339

ORPHAN_WARNING = ('299 - "child pods are preserved by default when jobs are deleted; set '
                  'propagationPolicy=Background to remove them or set propagationPolicy=Orphan '
                  'to suppress this warning"')


def dry_run(handler: SimHandler, options: Optional[Dict[str, Any]] = None) -> bool:
    """``dryRun=All`` (query, or DeleteOptions' ``dryRun: ["All"]``): validate and answer,
    store and run nothing. Any other value is a 400, as on the real server."""
    values = handler.get_query_arguments("dryRun") + list((options or {}).get("dryRun") or [])
    for value in values:
        if value != "All":
            raise bad_request(f'Invalid dryRun value "{value}": supported values: "All"')
    return bool(values)


def delete_options(handler: SimHandler) -> Tuple[Dict[str, Any], Optional[str], Optional[int]]:
    """DeleteOptions from the body or the query: (options, propagation policy, grace)."""
    options: Dict[str, Any] = handler.body_json() or {}
    query = handler.get_query_argument
    policy = options.get("propagationPolicy") or query("propagationPolicy", None)
    orphan = options.get("orphanDependents", query("orphanDependents", None))
    if policy is None and orphan is not None:
        policy = "Orphan" if str(orphan) in TRUE else "Background"
    grace = options.get("gracePeriodSeconds", query("gracePeriodSeconds", None))
    return options, policy, None if grace is None else int(grace)


class DiscoveryHandler(SimHandler):
    async def get(self, group: Optional[str] = None, version: Optional[str] = None) -> None:
        self.count("get", "discovery", self.request.path)
        d, path = self.sim.discovery, self.request.path.rstrip("/")
        docs = {"/version": d.version, "/api": d.core_versions, "/apis": d.group_list}
        if path in docs:
            doc = docs[path]()
        elif version is None and group:
            doc = d.group(group)
        else:
            doc = d.resource_list(group or "", version or "v1")
        if doc is None:
            raise path_not_found()
        self.send(doc)


class OpenAPIHandler(SimHandler):
    """``/openapi/v2`` (JSON only: clients asking for protobuf are told 406, as by a server
    without it), ``/openapi/v3`` and ``/openapi/v3/{api/v1 | apis/group/version}``."""

    async def get(self, path: str = "") -> None:
        self.count("get", "openapi", self.request.path)
        d, parts = self.sim.discovery, [p for p in path.split("/") if p]
        if self.request.path.rstrip("/") == "/openapi/v2":
            accept = self.request.headers.get("Accept", "")
            if "protobuf" in accept and "json" not in accept and "*/*" not in accept:
                raise ApiError(406, "NotAcceptable", "only the following media types are "
                               "accepted: application/json")
            doc = d.openapi_v2()
        elif not parts:
            doc = d.openapi_v3_root()
        elif parts[0] == "api" and len(parts) == 2:
            doc = d.openapi_v3("", parts[1])
        elif parts[0] == "apis" and len(parts) == 3:
            doc = d.openapi_v3(parts[1], parts[2])
        else:
            doc = None
        if doc is None:
            raise path_not_found()
        self.send(doc)


class CollectionHandler(SimHandler):
    """``GET`` list or watch, ``POST`` create, ``DELETE`` deletecollection."""

    async def get(self, version: str, plural: str, group: str = "",
                  namespace: Optional[str] = None) -> None:
        rt = self.resource(group, version, plural)
        watch = self.flag("watch")
        self.count("watch" if watch else "list", plural, None)
        authorize(self.sim, "watch" if watch else "list", rt.group, plural, namespace, None)
        match = selectors.matcher(self.get_query_argument("labelSelector", None),
                                  self.get_query_argument("fieldSelector", None),
                                  rt.field_selectors)
        if not watch:
            self.send(self.render(rt, self.store.items(rt, namespace, match)))
            return
        await self._watch(rt, namespace, match)

    async def _watch(self, rt: Any, namespace: Optional[str], match: Any) -> None:
        loop = asyncio.get_running_loop()
        timeout = float(self.get_query_argument("timeoutSeconds", 0) or 0) or \
            self.sim.default_watch_timeout_s
        bookmarks = self.flag("allowWatchBookmarks")
        interval = self.sim.bookmark_interval_s
        self.watcher = self.store.watch(rt, namespace, match,
                                        self.get_query_argument("resourceVersion", None))
        deadline, next_bookmark = loop.time() + timeout, loop.time() + interval
        try:
            while True:
                while self.watcher.pending:
                    event = self.watcher.pending.popleft()
                    if event is None:
                        return
                    self.write(json.dumps(event) + "\n")
                await self.flush()
                self.watcher.wake.clear()
                now = loop.time()
                if now >= deadline:
                    return
                if bookmarks and now >= next_bookmark:
                    self.write(json.dumps({"type": "BOOKMARK", "object": {
                        "kind": rt.kind, "apiVersion": rt.api_version,
                        "metadata": {"resourceVersion": str(self.store.rv)}}}) + "\n")
                    next_bookmark = now + interval
                    continue
                if not self.watcher.pending:
                    wait = min(deadline, next_bookmark) - now if bookmarks else deadline - now
                    try:
                        await asyncio.wait_for(self.watcher.wake.wait(), wait)
                    except asyncio.TimeoutError:
                        pass
        except tornado.iostream.StreamClosedError:
            pass
        finally:
            self.store.unwatch(self.watcher)
            if not self._finished and not self.request.connection.stream.closed():
                self.finish()

    def on_connection_close(self) -> None:
        watcher = getattr(self, "watcher", None)
        if watcher is not None:
            watcher.close()

    async def delete(self, version: str, plural: str, group: str = "",
                     namespace: Optional[str] = None) -> None:
        """deletecollection: every object matching the selectors; answers their list."""
        rt = self.resource(group, version, plural)
        self.count("deletecollection", plural, None)
        authorize(self.sim, "deletecollection", rt.group, plural, namespace, None)
        match = selectors.matcher(self.get_query_argument("labelSelector", None),
                                  self.get_query_argument("fieldSelector", None),
                                  rt.field_selectors)
        _, policy, grace = delete_options(self)
        deleted = [self.sim.gc.delete(rt, o["metadata"]["namespace"], o["metadata"]["name"],
                                      policy, grace)
                   for o in self.store.items(rt, namespace, match)]
        self.send(self.render(rt, deleted))

    async def post(self, version: str, plural: str, group: str = "",
                   namespace: Optional[str] = None) -> None:
        rt = self.resource(group, version, plural)
        body = self.body_json()
        name = body.get("metadata", {}).get("name") if isinstance(body, dict) else None
        self.count("create", plural, name)
        authorize(self.sim, "create", rt.group, plural, namespace, name)
        if namespace is None:
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on "
                           "the requested resource")
        dry = dry_run(self)
        obj, prepare = prepare_create(
            rt, namespace, body, lambda n: self.store.find(rt, namespace, n) is not None,
            self.sim.schema_version, self.sim.allocate_cluster_ip)
        if not dry:
            self.send(self.store.create(rt, namespace, obj, prepare), 201)
            return
        # What the create would have stored; nothing is stored, watched or run.
        meta = obj["metadata"]
        if self.store.find(rt, namespace, meta["name"]) is not None:
            raise already_exists(rt, meta["name"])
        for server_set in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(server_set, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339())
        prepare(obj)
        self.send(obj, 201)


class ItemHandler(SimHandler):
    """``GET``, ``PATCH`` and ``DELETE`` of one named object."""

    async def get(self, version: str, plural: str, name: str, group: str = "",
                  namespace: str = "") -> None:
        rt = self.resource(group, version, plural)
        self.count("get", plural, name)
        authorize(self.sim, "get", rt.group, plural, namespace, name)
        self.send(self.render(rt, [self.store.get(rt, namespace, name)], single=True))

    async def patch(self, version: str, plural: str, name: str, group: str = "",
                    namespace: str = "") -> None:
        rt = self.resource(group, version, plural)
        self.count("patch", plural, name)
        authorize(self.sim, "patch", rt.group, plural, namespace, name)
        current = self.store.get(rt, namespace, name)
        new, precondition = apply_patch(rt, current, self.request.headers.get("Content-Type", ""),
                                        self.body_json(), self.sim.schema_version)
        self.send(self.store.update(rt, new, expect_rv=precondition))

    async def delete(self, version: str, plural: str, name: str, group: str = "",
                     namespace: str = "") -> None:
        rt = self.resource(group, version, plural)
        self.count("delete", plural, name)
        authorize(self.sim, "delete", rt.group, plural, namespace, name)
        options, policy, grace = delete_options(self)
        current = self.store.get(rt, namespace, name)
        for key, value in (options.get("preconditions") or {}).items():
            if value is not None and current["metadata"].get(key) != value:
                raise ApiError(409, "Conflict", f"Precondition failed: {key} in precondition: "
                               f"{value}, {key} in object meta: {current['metadata'].get(key)}")
        if dry_run(self, options):  # the object as it is: nothing deleted, nothing stopped
            self.send(copy.deepcopy(current) if rt.returns_deleted_object
                      else status_success(rt, current))
            return
        if policy is None and rt.default_propagation == "Orphan":
            self.set_header("Warning", ORPHAN_WARNING)
        obj = self.sim.gc.delete(rt, namespace, name, policy, grace)
        still_there = self.store.find(rt, namespace, name) is not None
        doc = obj if rt.returns_deleted_object or still_there else status_success(rt, obj)
        # Like the real server: 202 only for a deferred deletion asked with
        # orphanDependents=false; graceful and foreground deletions answer 200.
        self.send(doc, 202 if still_there and options.get("orphanDependents") is False else 200)


def routes(sim: Any) -> list:
    args = {"sim": sim}
    ns, gv = r"namespaces/(?P<namespace>[^/]+)", r"(?P<group>[^/]+)/(?P<version>[^/]+)"
    plural, name = r"(?P<plural>[^/]+)", r"(?P<name>[^/]+)"
    return [
        (r"/(?:version|api|apis)/?", DiscoveryHandler, args),
        (r"/openapi/v2/?", OpenAPIHandler, args),
        (r"/openapi/v3/?(?P<path>.*)", OpenAPIHandler, args),
        (r"/api/(?P<version>v1)/?", DiscoveryHandler, args),
        (r"/apis/(?P<group>[^/]+)/?", DiscoveryHandler, args),
        (rf"/apis/{gv}/?", DiscoveryHandler, args),
        (rf"/api/v1/{ns}/pods/{name}/log", LogHandler, args),
        (rf"/api/(?P<version>v1)/{ns}/{plural}/?", CollectionHandler, args),
        (rf"/apis/{gv}/{ns}/{plural}/?", CollectionHandler, args),
        (rf"/api/(?P<version>v1)/{ns}/{plural}/{name}/?", ItemHandler, args),
        (rf"/apis/{gv}/{ns}/{plural}/{name}/?", ItemHandler, args),
        (rf"/api/(?P<version>v1)/{plural}/?", CollectionHandler, args),
        (rf"/apis/{gv}/{plural}/?", CollectionHandler, args),
    ]


def make_app(sim: Any) -> tornado.web.Application:
    install_webhooks(sim)
    return tornado.web.Application(routes(sim), default_handler_class=NotFoundHandler,
                                   default_handler_args={"sim": sim},
                                   log_function=lambda handler: None)
