"""HTTP routes; each module exports ``default_handlers``."""
import inspect
import re
from typing import Dict, List, Type

import tornado.web

from . import db, jobs, meta, plugins, users
from .base import UNMATCHED_ROUTE, APIHandler, NotFoundHandler

ROUTE_MODULES = (db, users, jobs, plugins, meta)
HTTP_METHODS = ("get", "post", "put", "delete", "patch")
_GROUP = re.compile(r"\((?:[^()\\]|\\.)*\)")


def all_handlers():
    return [route for module in ROUTE_MODULES for route in module.default_handlers]


def implemented_methods(handler: Type[tornado.web.RequestHandler]) -> List[str]:
    """The HTTP methods a handler class answers (those it overrides), e.g. ``["GET"]``."""
    return [m.upper() for m in HTTP_METHODS
            if getattr(handler, m) is not getattr(tornado.web.RequestHandler, m)]


def path_template(pattern: str, handler: Type[tornado.web.RequestHandler]) -> str:
    """``/api/jobs/([A-Za-z0-9_-]{1,64})`` -> ``/api/jobs/{token}``: each capture group is
    named after the handler method's argument it is passed as."""
    method = getattr(handler, implemented_methods(handler)[0].lower())
    names = iter(list(inspect.signature(method).parameters)[1:])  # after self
    return _GROUP.sub(lambda _: "{%s}" % next(names), pattern.rstrip("$"))


def route_templates() -> Dict[type, str]:
    """Handler class -> its route template: the bounded ``route`` of metrics and logs."""
    return {handler: path_template(pattern, handler) for pattern, handler in all_handlers()}


__all__ = ["APIHandler", "NotFoundHandler", "UNMATCHED_ROUTE", "all_handlers",
           "implemented_methods", "path_template", "route_templates"]
