"""HTTP routes; each module exports ``default_handlers``."""
from . import db, jobs, plugins, users
from .base import APIHandler, NotFoundHandler

ROUTE_MODULES = (db, users, jobs, plugins)


def all_handlers():
    return [route for module in ROUTE_MODULES for route in module.default_handlers]


__all__ = ["APIHandler", "NotFoundHandler", "all_handlers"]
