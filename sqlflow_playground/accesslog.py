"""One JSON line per request on the ``sqlflow_playground.access`` logger (the Application's
``log_function``), and the request id that ties a response to its line.

Logged: request id, identity, method, route template, path WITHOUT its query string (a
query may hold cursors), status, duration, remote address. Never bodies or headers.
2xx/3xx at INFO, 4xx at WARNING, 5xx at ERROR; a long poll (``GET /api/jobs/{token}?wait=``)
that ended with nothing new at DEBUG: a follower makes one every ``wait`` seconds while its
job is quiet, so at INFO each fetch that brought output (or the end) is one line, and the
waits in between are none. The process's formatter (cli.py) puts these fields on one JSON
line beside ``ts``, ``level`` and ``logger``, or renders them as text.
"""
import json
import logging
import random
import re
import threading
import time
from typing import Any, Dict

access_log = logging.getLogger("sqlflow_playground.access")

REQUEST_ID_HEADER = "X-Request-Id"
SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def request_id_for(headers: Any) -> str:
    """The caller's ``X-Request-Id`` if it is short and plain, else a new random one."""
    given = headers.get(REQUEST_ID_HEADER)
    if given and SANE_REQUEST_ID.match(given):
        return given
    return f"{random.getrandbits(64):016x}"  # an id, not a secret: no syscall per request


class AccessLine:
    """The message of an access line: its fields, and ``str()`` of it (what a record's
    ``getMessage()`` returns) is their JSON object. The process's formatters (cli.py)
    take ``fields`` as they are, rather than encoding them to JSON only to parse it back,
    and no JSON is made at all for a handler that does not format the record."""

    __slots__ = ("fields",)

    def __init__(self, fields: Dict[str, Any]):
        self.fields = fields

    def __str__(self) -> str:
        return json.dumps(self.fields)


class AccessRecord(logging.LogRecord):
    """A LogRecord made for an access line at a fraction of the stdlib's cost: what is the
    same for every access line (source file, function, process) is copied from one record
    made at import; only the time, level, thread and message are set per line. It is a
    complete LogRecord, so any handler or formatter takes it (pytest's caplog included);
    the process's formatters (cli.py) recognise it and encode only its fields."""

    def __init__(self, level: int, line: "AccessLine"):  # pylint: disable=super-init-not-called
        self.__dict__.update(_ACCESS_RECORD_CONSTANTS)
        self.msg = line
        self.levelno = level
        self.levelname = logging.getLevelName(level)
        self.created = now = time.time()
        self.msecs = int((now - int(now)) * 1000) + 0.0
        self.relativeCreated = (now - logging._startTime) * 1000  # pylint: disable=protected-access
        self.thread = threading.get_ident()
        self.threadName = threading.current_thread().name


_ACCESS_RECORD_CONSTANTS = dict(logging.LogRecord(
    access_log.name, logging.INFO, __file__, 0, "", (), None, "log_request").__dict__)
for _varying in ("msg", "levelno", "levelname", "created", "msecs", "relativeCreated",
                 "thread", "threadName"):
    del _ACCESS_RECORD_CONSTANTS[_varying]


def log_request(handler: Any) -> None:
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if level == logging.INFO and getattr(handler, "empty_wait", False):
        level = logging.DEBUG
    if not access_log.isEnabledFor(level):
        return
    request = handler.request
    identity = getattr(handler, "identity", None)
    # handle(record) is what Logger.log does, minus finding the caller's source line (a walk
    # up the stack per request; no access line shows it) and the stdlib record's set-up.
    access_log.handle(AccessRecord(level, AccessLine({
        "request_id": getattr(handler, "request_id", None),
        "identity": getattr(identity, "name", None),
        "method": request.method,
        "route": getattr(handler, "route", None),
        "path": request.path,
        "status": status,
        "duration_ms": round(request.request_time() * 1000, 3),
        "remote_ip": request.remote_ip,
    })))
