"""The two requests sent most often, answered where the HTTP request is parsed, not by a
RequestHandler: ``GET /api/heart_beat`` and the plugin door's poll
``GET /plugins/v1/{task_type}/{version}/{job_id}``.

The heart beat is the request every notebook sends every few seconds, and a poll what
every Flyte-style caller repeats while its job runs: most of what a gateway answers.
Through the Application, Tornado spends more on such a request than its own work costs:
matching ~40 routes, building a handler (its header defaults, a Date string), the
body-streaming steps of our handlers, its flush. Here the same answer is made with none of
that: the same identity rules, the same body and headers (Server, Content-Type, Date,
X-Request-Id, Content-Length), the same metrics, dashboard count and access line.

Only the plain case is taken: GET of exactly ``/api/heart_beat`` with no query or
``user_id=ID`` alone, or of a poll path with no query; no body, one valid Host, an
identity (a certificate's, or ``--insecure``'s anonymous frontend), and a caller allowed
to act for that user. Everything
else (HEAD, a body, another query, an error to answer: a job that is not the caller's, of
another type, a refusal of the job service) goes to the Application, which answers it as
it always has (a poll that fails here is asked again there, and fails there the same way).
"""
import json
import re
import time
from typing import Any, Optional

import tornado
from tornado import httputil
from tornado.iostream import StreamClosedError

from .. import eager
from ..accesslog import REQUEST_ID_HEADER, request_id_for
from ..errors import PlaygroundError
from .base import connection_identity
from .db import heart_beat
from .jobs import TOKEN_PATTERN
from .plugins import NAME, job_state

ROUTE = "/api/heart_beat"
POLL_ROUTE = "/plugins/v1/{task_type}/{version}/{job_id}"
POLL_PATH = re.compile(rf"/plugins/v1/{NAME}/{NAME}/{TOKEN_PATTERN}")
# The raw query the fast path takes; anything else (escapes, other fields, a repeated
# user_id) is left to the Application's parser.
PLAIN_QUERY = re.compile(r"(?:user_id=([A-Za-z0-9][A-Za-z0-9_.@-]{0,62}))?")
SERVER = "TornadoServer/%s" % tornado.version
JSON_TYPE = "application/json; charset=UTF-8"
OK = httputil.ResponseStartLine("HTTP/1.1", 200, "OK")

_date: Any = (0, "")  # (second, its HTTP date): one format per second, not per request


def http_date(now: float) -> str:
    global _date
    second, text = _date
    if int(now) != second:
        text = httputil.format_timestamp(now)
        _date = (int(now), text)
    return text


# Tornado's own test of a Host header (HTTPServerRequest), where this version has one.
_VALID_HOST = getattr(getattr(httputil, "_ABNF", None), "host", None)


def _plain_host(headers: httputil.HTTPHeaders) -> bool:
    """One well-formed Host header: a request without (or with a bad one) is Tornado's to
    refuse, with the JSON 400 of connections.py."""
    host = headers.get("Host")
    if not host or "," in host:
        return False
    return _VALID_HOST is None or _VALID_HOST.fullmatch(host) is not None


class _Request:
    """What the access line and the dashboard read of a request."""

    __slots__ = ("method", "path", "remote_ip", "_start")

    def __init__(self, path: str, remote_ip: str, start: float):
        self.method, self.path, self.remote_ip, self._start = "GET", path, remote_ip, start

    def request_time(self) -> float:
        return time.time() - self._start


class FastPath(httputil.HTTPMessageDelegate):
    """One request on a connection: a plain heart beat or poll answered here, anything else
    handed to ``fallback`` (the Application's delegate)."""

    empty_wait = False

    def __init__(self, app: Any, connection: Any, fallback: httputil.HTTPMessageDelegate):
        self.app = app
        self.connection = connection
        self.fallback = fallback
        self.passing: Optional[httputil.HTTPMessageDelegate] = None
        self.request: Optional[_Request] = None
        self.identity: Any = None
        self.request_id: Optional[str] = None
        self.route = ROUTE
        self.body = b""
        self.poll: Optional[tuple] = None  # (task_type, version, job_id) of a poll
        self.received: Optional[tuple] = None  # (start_line, headers), to pass on later

    # -- what log_request and the dashboard read, as of a RequestHandler -------------------

    def get_status(self) -> int:
        return 200

    # -- HTTPMessageDelegate -----------------------------------------------------------------

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        if not self._answer(start_line, headers):
            self.passing = self.fallback
            return self.fallback.headers_received(start_line, headers)
        return None

    def data_received(self, chunk: bytes) -> Any:
        if self.passing is not None:
            return self.passing.data_received(chunk)
        return None  # unreachable: a request with a body is passed on

    def finish(self) -> None:
        if self.passing is not None:
            self.passing.finish()
        elif self.poll is not None:
            # answered in this turn, as a heart beat, unless the job service has to wait
            task = eager.start(self._answer_poll())
            if task is not None:
                _running.add(task)
                task.add_done_callback(_running.discard)
        else:
            self._respond()

    def _respond(self) -> None:
        self.connection.write_headers(OK, httputil.HTTPHeaders({
            "Server": SERVER, "Content-Type": JSON_TYPE, "Date": http_date(time.time()),
            REQUEST_ID_HEADER: self.request_id, "Content-Length": str(len(self.body)),
        }), self.body)
        self.connection.finish()
        settings = self.app.settings
        metrics = settings.get("metrics")
        if metrics is not None:
            metrics.observe_request(self.route, "GET", 200, self.request.request_time())
        log_function = settings.get("log_function")
        if log_function is not None:
            log_function(self)

    def on_connection_close(self) -> None:
        if self.passing is not None:
            self.passing.on_connection_close()

    def _answer(self, start_line: Any, headers: httputil.HTTPHeaders) -> bool:
        """Make the answer of a plain heart beat, or take a plain poll (answered once the
        request has been read); False for anything the Application takes."""
        if start_line.method != "GET" or "Content-Length" in headers \
                or "Transfer-Encoding" in headers or not _plain_host(headers):
            return False
        path, _, query = start_line.path.partition("?")
        if path == ROUTE:
            poll, beat = None, PLAIN_QUERY.fullmatch(query)
        else:
            poll, beat = (None if query else POLL_PATH.fullmatch(path)), None
        if poll is None and beat is None:
            return False
        start = time.time()
        settings = self.app.settings
        try:
            identity = connection_identity(self.connection, settings)
            if identity is None:
                return False
            # a poll's owner is checked by the job service (JobService.status)
            user_id = identity.act_for(beat.group(1)) if beat else None
        except PlaygroundError:
            return False  # the Application answers it, with its JSON error
        self.identity = identity
        self.request_id = request_id_for(headers)
        self.request = _Request(path, self.connection.context.remote_ip, start)
        if poll:
            self.route, self.poll = POLL_ROUTE, poll.groups()
            self.received = (start_line, headers)
            return True
        self.body = json.dumps(heart_beat(settings["playground"], user_id)).encode()
        return True

    async def _answer_poll(self) -> None:
        """The poll's answer, as PluginJobHandler.get makes it; on anything but a job of the
        caller's of this type and version, the Application answers instead."""
        task_type, version, job_id = self.poll
        try:
            job = await self.app.settings["jobs"].status(self.identity, job_id)
            answer = job_state(job, task_type, version, job_id)
        except Exception:  # pylint: disable=broad-except  # the Application says what
            answer = None
        if answer is None:
            self.passing = self.fallback
            start_line, headers = self.received
            received = self.fallback.headers_received(start_line, headers)
            if received is not None:
                await received
            self.fallback.finish()
            return
        self.body = json.dumps(answer).encode()
        try:
            self._respond()
        except StreamClosedError:
            pass  # the caller left meanwhile


_running: set = set()  # polls being answered (a task needs a reference to be kept)
