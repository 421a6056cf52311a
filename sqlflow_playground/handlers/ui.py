"""The dashboard (DESIGN §10, issue 14): HTML pages at ``/ui/`` over the same mutual TLS and
with the same authorisation as the API.

* ``/ui/`` is the admin page for a frontend certificate (every user and job, counts, a chart
  of the last hour, release and cancel) and the user page for any other (their database,
  their jobs, a SQL console); ``/ui/jobs/{token}`` follows one job's output live by
  long-polling the API's own ``GET /api/jobs/{token}?since=&wait=``.
* The pages are Tornado templates (autoescaped) and read bounded JSON from ``/ui/data/…``
  (one page of users and one of jobs at a time); ``static/dashboard.js`` puts every value
  into the page with ``textContent``, never as HTML.
* Every answer carries a Content-Security-Policy without inline script or style and
  without any other host. State-changing routes (``POST /ui/action/…``) check Tornado's
  XSRF token (cookie ``_xsrf`` + header ``X-XSRFToken``) and refuse cross-site requests;
  the JSON API's routes are untouched (they take no cookies, so there is nothing to forge).
"""
import asyncio
import hashlib
import os
import re
import time
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

import tornado.web

from ..errors import BadRequest, NotFound, PlaygroundError
from ..identity import validate_user_id
from ..store import READY
from .base import APIHandler
from .jobs import TOKEN_PATTERN

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE_DIR = os.path.join(PACKAGE_DIR, "templates")
STATIC_DIR = os.path.join(PACKAGE_DIR, "static")

PAGE_SIZE = 50  # rows of users and of jobs per page: the JSON a page reads stays bounded
MAX_PAGE_SIZE = 200
MESSAGE_CHARS = 300  # a job's message, cut to this in lists (its page shows it whole)
CREATE_WAIT_S = 5.0  # how long "Create database" holds the request before saying "provisioning"
MAX_SQL_BYTES = 64 << 10
CHART_MINUTES = 60
LOST = "lost"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")

_MYSQL_ADDRESS = re.compile(r"@tcp\(([^()]*)\)")


def data_source_host(data_source: str) -> str:
    """Where a data source points, without user, password or options: ``host:port`` of a
    SQLFlow MySQL data source, ``sqlite (server file)`` for a sqlite one."""
    if not data_source:
        return ""
    m = _MYSQL_ADDRESS.search(data_source)
    if m:
        return m.group(1)
    try:
        parts = urllib.parse.urlsplit(data_source)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "?"
    if host:
        return f"{host}:{port}" if port else host
    scheme = parts.scheme.split("+")[0]
    return f"{scheme} (server file)" if scheme else "?"


class Activity:
    """Heart beats per minute over the last hour, counted by this replica as requests
    finish (the Application's ``log_function`` is wrapped); the jobs chart reads the store
    instead (every replica's jobs). A ring of ``CHART_MINUTES`` slots; no thread, no
    timer."""

    KINDS = {("/api/heart_beat", "GET"): "heart_beats"}

    def __init__(self, clock=time.time) -> None:
        self.clock = clock
        self._minute = [-1] * CHART_MINUTES
        self._counts: Dict[str, List[int]] = {k: [0] * CHART_MINUTES
                                              for k in set(self.KINDS.values())}

    def count(self, kind: str, n: int = 1) -> None:
        minute = int(self.clock() // 60)
        slot = minute % CHART_MINUTES
        if self._minute[slot] != minute:
            self._minute[slot] = minute
            for counts in self._counts.values():
                counts[slot] = 0
        self._counts[kind][slot] += n

    def observe(self, handler: Any) -> None:
        if handler.get_status() < 400:
            kind = self.KINDS.get((getattr(handler, "route", None), handler.request.method))
            if kind is not None:
                self.count(kind)

    def wrap(self, log_function):
        def log(handler: Any) -> None:
            self.observe(handler)
            log_function(handler)
        return log

    def series(self, kind: str, now: Optional[float] = None) -> Tuple[int, List[int]]:
        """(first minute, counts of the last CHART_MINUTES minutes, oldest first)."""
        last = int((self.clock() if now is None else now) // 60)
        first = last - CHART_MINUTES + 1
        counts = self._counts[kind]
        return first, [counts[m % CHART_MINUTES] if self._minute[m % CHART_MINUTES] == m
                       else 0 for m in range(first, last + 1)]


_asset_versions: Dict[str, str] = {}


def asset_url(name: str) -> str:
    """``/ui/static/NAME?v=HASH``: cached for long, refreshed when the file changes."""
    version = _asset_versions.get(name)
    if version is None:
        with open(os.path.join(STATIC_DIR, name), "rb") as fh:
            version = _asset_versions[name] = hashlib.sha256(fh.read()).hexdigest()[:12]
    return f"/ui/static/{name}?v={version}"


def security_headers(handler: tornado.web.RequestHandler) -> None:
    handler.set_header("Content-Security-Policy", CSP)
    handler.set_header("X-Content-Type-Options", "nosniff")
    handler.set_header("X-Frame-Options", "DENY")
    handler.set_header("Referrer-Policy", "no-referrer")
    handler.set_header("Cross-Origin-Opener-Policy", "same-origin")
    handler.set_header("Cross-Origin-Resource-Policy", "same-origin")


class UIHandler(APIHandler):
    """A dashboard route: the caller's identity as for the API, security headers, and an
    HTML error page (``html = True``) or the API's JSON error."""

    html = True

    def set_default_headers(self) -> None:
        super().set_default_headers()
        security_headers(self)
        self.set_header("Cache-Control", "no-store")

    def get_template_path(self) -> str:
        return self.settings.get("template_path") or TEMPLATE_DIR

    def get_template_namespace(self) -> Dict[str, Any]:
        namespace = super().get_template_namespace()
        namespace.update(asset=asset_url, identity=getattr(self, "identity", None),
                         xsrf_token=self.xsrf_token.decode())
        return namespace

    @property
    def playground(self):
        return self.settings["playground"]

    @property
    def jobs(self):
        return self.settings["jobs"]

    @property
    def runner(self):
        return self.settings["runner"]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if not self.html:
            return super().write_error(status_code, **kwargs)
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = "Something went wrong on the server."
        if isinstance(exc, PlaygroundError):
            status_code, message = exc.status, exc.message
        elif isinstance(exc, tornado.web.HTTPError) and exc.log_message and status_code < 500:
            message = exc.log_message % exc.args
        elif status_code < 500:
            message = {403: "Forbidden", 404: "Not found"}.get(status_code, "Request refused")
        self.set_status(status_code)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.render("error.html", status=status_code, message=message,
                    reason=self._reason)

    def int_arg(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.query(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise BadRequest(f"{name} must be a whole number") from None
        if not low <= value <= high:
            raise BadRequest(f"{name} must be between {low} and {high}")
        return value

    def page_args(self, prefix: str) -> Tuple[int, int]:
        """(offset, limit) from ``PREFIXpage`` (1-based) and ``per_page``."""
        limit = self.int_arg("per_page", PAGE_SIZE, 1, MAX_PAGE_SIZE)
        page = self.int_arg(prefix + "page", 1, 1, 10 ** 7)
        return (page - 1) * limit, limit

    def user_view(self, user: Dict[str, Any], now: float) -> Dict[str, Any]:
        """A user's row as the dashboard shows it: never the data source, only its host."""
        pg = self.playground
        user = pg._with_pending_beat(user)  # a heart beat not yet flushed counts
        status = user["status"]
        if status == READY and user.get("provisioner") == pg.provisioner.name \
                and not pg.provisioner.is_alive(user["user_id"], user["resource"]):
            status = LOST
        idle_left = None
        if status == READY:
            idle_left = max(0.0, user["last_seen_at"] + pg.idle_timeout_s - now)
        host = data_source_host(pg.for_users(user)["data_source"]) if status != "provisioning" \
            else ""
        return {"user_id": user["user_id"], "status": status, "provisioner": user["provisioner"],
                "host": host, "created_at": user["created_at"],
                "last_seen_at": user["last_seen_at"], "idle_left_s": idle_left}

    @staticmethod
    def job_view(job: Dict[str, Any], now: float) -> Dict[str, Any]:
        started, finished = job.get("started_at"), job.get("finished_at")
        message = job.get("message") or ""
        return {"token": job["token"], "user_id": job["user_id"], "task_type": job["task_type"],
                "version": job["version"], "status": job["status"],
                "message": message[:MESSAGE_CHARS] + ("…" if len(message) > MESSAGE_CHARS
                                                      else ""),
                "created_at": job["created_at"], "started_at": started, "finished_at": finished,
                "replica": job.get("replica") or "", "age_s": max(0.0, now - job["created_at"]),
                "runtime_s": (max(0.0, (finished or now) - started) if started else None)}

    @staticmethod
    def page_info(offset: int, limit: int, total: int) -> Dict[str, int]:
        return {"page": offset // limit + 1, "per_page": limit, "total": total,
                "pages": max(1, -(-total // limit))}


class RootHandler(APIHandler):
    """``/`` and ``/ui`` lead a browser to the dashboard; any other method is the API's
    JSON 405, as every API route answers it (no HTML, no cookie for a script)."""

    def get(self) -> None:
        self.redirect("/ui/")


class HomeHandler(UIHandler):
    """The admin page for a frontend certificate, the user page for any other."""

    def get(self) -> None:
        if self.identity.is_frontend:
            self.render("admin.html", idle_timeout_s=self.playground.idle_timeout_s)
        else:
            self.render("user.html", idle_timeout_s=self.playground.idle_timeout_s,
                        user_id=self.identity.name)


class JobPageHandler(UIHandler):
    """One job, its output followed live: 404 (the same page) for a job that is not the
    caller's, as the API answers."""

    async def get(self, token: str) -> None:
        summary = await self.jobs.status(self.identity, token)
        self.render("job.html", job=summary, can_cancel=True)


class UIDataHandler(UIHandler):
    html = False


class AdminDataHandler(UIDataHandler):
    """Counts, the last hour per minute, one page of users and one of jobs (frontend only)."""

    async def get(self) -> None:
        self.identity.require_frontend()
        u_offset, u_limit = self.page_args("users_")
        j_offset, j_limit = self.page_args("jobs_")
        prefix = self.query("user_prefix") or None
        if prefix is not None and len(prefix) > 64:
            raise BadRequest("user_prefix is at most 64 characters")
        user_status = self.query("user_status") or None
        owner = self.query("owner") or None
        if owner is not None:
            owner = validate_user_id(owner)
        job_status = self.query("job_status") or None
        now = time.time()
        first_minute = int(now // 60) - CHART_MINUTES + 1
        store = self.playground.store

        def read():
            return (store.count_users_by_status(), store.count_jobs_by_status(),
                    store.users_page(u_offset, u_limit, user_status, prefix),
                    store.jobs_page(j_offset, j_limit, owner, job_status),
                    store.jobs_per_minute(first_minute * 60))

        user_counts, job_counts, (users, n_users), (jobs, n_jobs), per_minute = \
            await self.runner.run(read)
        activity: Activity = self.settings["ui_activity"]
        _, beats = activity.series("heart_beats", now)
        self.write_json({
            "now": now, "idle_timeout_s": self.playground.idle_timeout_s,
            "counts": {"users": user_counts, "jobs": job_counts},
            "chart": {"first_minute": first_minute * 60,
                      "jobs": [per_minute.get(i, 0) for i in range(CHART_MINUTES)],
                      "heart_beats": beats, "replica": self.jobs.settings.replica},
            "users": {**self.page_info(u_offset, u_limit, n_users),
                      "rows": [self.user_view(u, now) for u in users]},
            "jobs": {**self.page_info(j_offset, j_limit, n_jobs),
                     "rows": [self.job_view(j, now) for j in jobs]},
        })


class MeDataHandler(UIDataHandler):
    """The caller's own database (no data source: see DataSourceHandler) and jobs."""

    async def get(self) -> None:
        user_id = self.identity.act_for(None)
        offset, limit = self.page_args("jobs_")
        store = self.playground.store
        now = time.time()

        def read():
            return (store.get_user(user_id), store.jobs_page(offset, limit, user_id),
                    store.count_jobs_by_status(user_id))

        user, (jobs, total), counts = await self.runner.run(read)
        self.write_json({
            "now": now, "user_id": user_id, "idle_timeout_s": self.playground.idle_timeout_s,
            "database": self.user_view(user, now) if user else None,
            "counts": {"jobs": counts},
            "jobs": {**self.page_info(offset, limit, total),
                     "rows": [self.job_view(j, now) for j in jobs]},
        })


class ActionHandler(UIDataHandler):
    """A state-changing route of the pages: XSRF token required, cross-site refused."""

    def prepare(self) -> None:
        super().prepare()
        site = self.request.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            raise tornado.web.HTTPError(403, "cross-site request refused")
        origin = self.request.headers.get("Origin")
        if origin is not None and urllib.parse.urlsplit(origin).netloc != self.request.host:
            raise tornado.web.HTTPError(403, "cross-origin request refused")
        self.check_xsrf_cookie()


class CreateDBAction(ActionHandler):
    """Starts provisioning the caller's database and waits a little for it; the page
    polls ``/ui/data/me`` for the rest. The data source is not in the answer."""

    async def post(self) -> None:
        self.json_body()
        user_id = self.identity.act_for(None)
        tasks: Dict[str, asyncio.Task] = self.settings.setdefault("ui_create_tasks", {})
        task = tasks.get(user_id)
        if task is None or task.done():
            task = tasks[user_id] = asyncio.get_running_loop().create_task(
                self.playground.create_db(user_id))

            def forget(done: asyncio.Task) -> None:
                if tasks.get(user_id) is done:
                    del tasks[user_id]
                if not done.cancelled():
                    done.exception()  # retrieved: a page that went away leaves no warning
            task.add_done_callback(forget)
        done, _ = await asyncio.wait([task], timeout=CREATE_WAIT_S)
        if not done:
            self.write_json({"user_id": user_id, "status": "provisioning"}, status=202)
            return
        _, created = task.result()
        self.write_json({"user_id": user_id, "status": READY, "created": created})


class ReleaseAction(ActionHandler):
    async def post(self) -> None:
        user_id = self.identity.act_for(self.json_body(allowed=("user_id",)).get("user_id"))
        released = await self.playground.delete_db(user_id)
        self.write_json({"user_id": user_id, "released": released})


class DataSourceAction(ActionHandler):
    """The caller's own data source, on demand (a POST: it is a credential)."""

    async def post(self) -> None:
        self.json_body()
        user = await self.playground.get_user(self.identity.act_for(None))
        if user["status"] != READY:
            raise NotFound("the database is not ready")
        self.write_json({"data_source": user["data_source"]})


class CancelAction(ActionHandler):
    async def post(self) -> None:
        token = self.json_body(allowed=("token",)).get("token")
        if not isinstance(token, str) or not re.fullmatch(TOKEN_PATTERN[1:-1], token):
            raise BadRequest("token is required")
        self.write_json(await self.jobs.cancel(self.identity, token))


class SqlAction(ActionHandler):
    """The SQL console: a ``sql`` job of the caller's own (its output is then followed
    through the API's fetch, like any job)."""

    async def post(self) -> None:
        sql = self.json_body(allowed=("sql",)).get("sql")
        if not isinstance(sql, str) or not sql.strip():
            raise BadRequest("sql is required")
        if len(sql.encode()) > MAX_SQL_BYTES:
            raise BadRequest(f"sql is longer than {MAX_SQL_BYTES} bytes")
        job = await self.jobs.submit(self.identity.act_for(None), "sql", None, {"sql": sql})
        self.write_json(job, status=201)


class UIStaticHandler(tornado.web.StaticFileHandler):
    """The pages' own JavaScript, CSS and icon (from the package: nothing from elsewhere)."""

    def set_default_headers(self) -> None:
        security_headers(self)

    def set_extra_headers(self, path: str) -> None:
        if self.get_query_argument("v", None):
            self.set_header("Cache-Control", "max-age=31536000, immutable")


default_handlers = [
    (r"/", RootHandler),
    (r"/ui", RootHandler),
    (r"/ui/", HomeHandler),
    (rf"/ui/jobs/{TOKEN_PATTERN}", JobPageHandler),
    (r"/ui/data/admin", AdminDataHandler),
    (r"/ui/data/me", MeDataHandler),
    (r"/ui/action/create_db", CreateDBAction),
    (r"/ui/action/release", ReleaseAction),
    (r"/ui/action/data_source", DataSourceAction),
    (r"/ui/action/cancel", CancelAction),
    (r"/ui/action/sql", SqlAction),
]

static_handlers = [
    (r"/ui/static/(.*)", UIStaticHandler, {"path": STATIC_DIR}),
]


def route_templates() -> Dict[type, str]:
    from . import path_template
    return {handler: path_template(pattern, handler) for pattern, handler in default_handlers}
