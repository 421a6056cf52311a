"""What every route of the simulated API server shares, like the API server's handler chain.

JSON responses, errors rendered as ``Status`` objects (an unexpected exception becomes a
500 ``InternalError``, never a traceback), Go-style boolean query flags (``1``, ``t``,
``true``, ``True``…), JSON bodies (bad JSON is a 400), and the request accounting that
tests assert on: one count per request, keyed (verb, resource, name or ``None``).
"""
import json
from typing import Any, Optional

import tornado.web

from . import tables
from .errors import ApiError, bad_request, path_not_found
from .resources import lookup

TRUE = ("1", "t", "T", "true", "TRUE", "True")


class SimHandler(tornado.web.RequestHandler):
    """What every route shares: JSON out, Status errors, query flags, request counting."""

    def initialize(self, sim: Any) -> None:
        self.sim, self.store = sim, sim.store

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")

    def send(self, doc: Any, code: int = 200) -> None:
        self.set_status(code)
        self.finish(json.dumps(doc))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, tornado.web.HTTPError) and exc.status_code == 405:
            exc = ApiError(405, "MethodNotAllowed", "the server does not allow this method "
                           "on the requested resource")
        if not isinstance(exc, ApiError):
            exc = ApiError(status_code, "InternalError" if status_code >= 500 else "BadRequest",
                           f"an error on the server ({exc or status_code}) has prevented the "
                           "request from succeeding")
        self.set_status(exc.code)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(exc.status()))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if not isinstance(value, ApiError):
            super().log_exception(typ, value, tb)

    def flag(self, name: str) -> bool:
        return self.get_query_argument(name, "") in TRUE

    def count(self, verb: str, resource: str, name: Optional[str]) -> None:
        self.sim.record_request(verb, resource, name)

    def resource(self, group: str, version: str, plural: str) -> Any:
        rt = lookup(group or "", version, plural)
        if rt is None:
            raise path_not_found()
        return rt

    def body_json(self) -> Any:
        if not self.request.body:
            return None
        try:
            return json.loads(self.request.body)
        except ValueError as e:
            raise bad_request(f"couldn't get version/kind; json parse error: {e}") from e

    def render(self, rt: Any, items: list, single: bool = False) -> Any:
        if tables.wants_table(self.request.headers.get("Accept", "")):
            return tables.table(rt.kind, items, str(self.store.rv))
        if single:
            return items[0]
        # Items of a built-in list carry no kind/apiVersion, those of a custom one do.
        strip = ("kind", "apiVersion") if rt.builtin else ()
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(self.store.rv)},
                "items": [{k: v for k, v in o.items() if k not in strip} for o in items]}


class NotFoundHandler(SimHandler):
    def prepare(self) -> None:
        self.count(self.request.method.lower(), "unknown", self.request.path)
        raise path_not_found()
