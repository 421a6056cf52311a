"""The `sql` task type: statements run on the job owner's own database (DESIGN §6), with
the owner's credentials from ``ctx.data_source``, never the admin's.

The work runs on a dedicated daemon thread (a query may take hours; it must not hold a
slot of the shared executor). In ``ctx.workdir``: ``responses.jsonl`` (flushed after every
batch of rows), ``status.json`` (written atomically after the last flush, so a reader that
sees it knows every response is on disk) and ``cancel`` (asks the worker to stop).
"""
import base64
import datetime
import decimal
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, List, Optional

import pymysql
import pymysql.cursors

from ..errors import Unprocessable
from .base import CANCELLED, FAILED, RUNNING, SUCCEEDED, TaskContext, TaskPlugin, TaskState
from .output import ResponseLog, ResponseWriter
from .sqlsplit import split_statements

log = logging.getLogger(__name__)

BATCH_ROWS = 500
CONNECT_TIMEOUT_S = 10
CANCEL_WAIT_S = 5.0
MYSQL_RE = re.compile(r"^mysql://(?P<user>[^:@/]*):(?P<password>.*)@tcp\((?P<host>[^()]*?)"
                      r"(?::(?P<port>\d+))?\)/(?P<database>[^?/]*)(?:\?.*)?$")
DB_ERRORS = (sqlite3.Error, pymysql.MySQLError)


class _Cancelled(Exception):
    """The job was asked to stop."""


class _Failed(Exception):
    """The job fails with this message (the database's own, with where it failed)."""


def _quietly(fn: Callable[[], None]) -> None:
    """Best effort: the statement or connection may have ended meanwhile."""
    try:
        fn()
    except Exception as e:
        log.debug("sql job: %s failed: %s", getattr(fn, "__name__", "call"), type(e).__name__)


class _Worker:
    """An in-process worker: its cancel signal, completion, and how to interrupt it."""

    def __init__(self, workdir: str):
        self.cancel_file = os.path.join(workdir, "cancel")
        self.cancel, self.done = threading.Event(), threading.Event()
        self._lock = threading.Lock()
        self._interrupt: Optional[Callable[[], None]] = None

    def cancelled(self) -> bool:
        return self.cancel.is_set() or os.path.exists(self.cancel_file)

    def set_interrupt(self, fn: Optional[Callable[[], None]]) -> None:
        with self._lock:  # cleared before the connection closes, so never called after
            self._interrupt = fn

    def interrupt(self) -> None:
        with self._lock:
            if self._interrupt is not None:
                _quietly(self._interrupt)


_workers: Dict[str, _Worker] = {}  # workdir -> the worker this process runs for it


def json_safe(value: Any) -> Any:
    """A JSON-representable form of one database value.

    Decimal → str (exact); datetime/date/time → ISO 8601; NaN/±inf → "nan"/"inf"/"-inf";
    bytes → UTF-8 text, or "base64:…" when not UTF-8. A timedelta (what pymysql returns
    for a MySQL TIME column) → MySQL's own TIME text, ``[-]H:MM:SS[.ffffff]``, hours
    unbounded, e.g. "-1:30:00" or "838:59:59", as the mysql client and SQLFlow show it.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        seconds, micros = divmod(abs(value) // datetime.timedelta(microseconds=1), 10**6)
        text = "%s%d:%02d:%02d" % ("-" if value < datetime.timedelta(0) else "",
                                   seconds // 3600, seconds // 60 % 60, seconds % 60)
        return text + (f".{micros:06d}" if micros else "")
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(raw).decode("ascii")
    return str(value)


def _reason(e: BaseException) -> str:
    """The database's own message, without pymysql's error code."""
    return str(e.args[1]) if isinstance(e, pymysql.MySQLError) and len(e.args) > 1 else str(e)


def _parse_source(data_source: Optional[str]) -> Dict[str, Any]:
    ds = data_source or ""
    if ds.startswith("sqlite:///"):
        return {"kind": "sqlite", "path": ds[len("sqlite:///"):]}
    m = MYSQL_RE.match(ds)
    if m is None:  # never echo the data source: it holds a password
        raise Unprocessable("the sql task type needs a mysql:// (SQLFlow form) or "
                            "sqlite:/// data source")
    return {"kind": "mysql", **m.groupdict(), "port": int(m["port"] or 3306)}


def _connect_mysql(src: Dict[str, Any], **kw: Any) -> pymysql.Connection:
    return pymysql.connect(host=src["host"], port=src["port"], user=src["user"],
                           password=src["password"], database=src["database"] or None,
                           charset="utf8mb4", autocommit=True,
                           connect_timeout=CONNECT_TIMEOUT_S, **kw)


def _kill_query(src: Dict[str, Any], connection_id: int) -> None:
    """Interrupt the statement a worker's connection runs; a user may kill its own."""
    conn = _connect_mysql(src)
    try:
        conn.cursor().execute(f"KILL QUERY {int(connection_id)}")
    finally:
        conn.close()


class _Session:
    """One open connection and cursor of either kind, and how to interrupt it."""

    def __init__(self, src: Dict[str, Any]):
        if src["kind"] == "sqlite":
            # mode=rw: a released database fails the job instead of springing up empty.
            uri = "file:" + urllib.parse.quote(src["path"]) + "?mode=rw"
            self.conn = sqlite3.connect(uri, uri=True, timeout=CONNECT_TIMEOUT_S,
                                        isolation_level=None)  # autocommit, as for MySQL
            self.interrupt: Callable[[], None] = self.conn.interrupt
        else:
            # Unbuffered, so a long result streams instead of filling memory.
            self.conn = _connect_mysql(src, cursorclass=pymysql.cursors.SSCursor)
            connection_id = self.conn.thread_id()
            self.interrupt = lambda: _kill_query(src, connection_id)
        self.cursor = self.conn.cursor()

    def close(self, stop: bool) -> None:
        """``stop``: the work was cut short. pymysql reads an unbuffered result to its
        end before a cursor (or the result, when collected) can go, so first have the
        server end the statement; what is already on the way is then read quickly."""
        if stop:
            _quietly(self.interrupt)
        _quietly(self.cursor.close)  # may raise the stopped statement's error
        self.conn.close()


def _write_status(workdir: str, status: str, message: str, outputs: Dict[str, Any]) -> None:
    path = os.path.join(workdir, "status.json")
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w") as fh:
        json.dump({"status": status, "message": message, "outputs": outputs}, fh)
    os.replace(tmp, path)


def _read_status(workdir: str) -> Optional[Dict[str, Any]]:
    try:
        with open(os.path.join(workdir, "status.json")) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


def _execute(session: _Session, statement: str, out: ResponseWriter, worker: _Worker) -> int:
    """Run one statement, write its responses; the number of rows it returned."""
    cur, rows = session.cursor, 0
    cur.execute(statement)
    if cur.description is None:
        out.write({"message": f"{max(cur.rowcount, 0)} row(s) affected"})
    else:
        out.write({"head": [column[0] for column in cur.description]})
        while True:
            batch = cur.fetchmany(BATCH_ROWS)
            for row in batch:
                out.write({"row": [json_safe(v) for v in row]})
            out.flush()  # a polling reader sees these rows while the query still runs
            rows += len(batch)
            if not batch:
                break
            if worker.cancelled():
                raise _Cancelled()
    out.write({"eoe": True})
    out.flush()  # visible while the next statement runs
    return rows


def _run(workdir: str, src: Dict[str, Any], statements: List[str], out: ResponseWriter,
         worker: _Worker) -> None:
    """The worker thread: run every statement, then write the final status."""
    n, rows = len(statements), 0
    status, message, outputs = FAILED, "", {}
    try:
        try:
            session = _Session(src)
        except DB_ERRORS as e:
            raise _Failed(f"cannot connect to the database: {_reason(e)}") from None
        worker.set_interrupt(session.interrupt)
        try:
            for i, statement in enumerate(statements, 1):
                if worker.cancelled():
                    raise _Cancelled()
                try:
                    rows += _execute(session, statement, out, worker)
                except DB_ERRORS as e:
                    if worker.cancelled():
                        raise _Cancelled() from None
                    raise _Failed(f"statement {i} of {n} failed: {_reason(e)}") from None
            # Asked to stop before the end: a statement may have been killed without an
            # error (SLEEP() returns 1), so its results cannot be trusted.
            if worker.cancelled():
                raise _Cancelled()
            status, outputs = SUCCEEDED, {"statements": n, "rows": rows}
        finally:
            worker.set_interrupt(None)
            session.close(stop=status != SUCCEEDED)
    except _Cancelled:
        status, message = CANCELLED, "cancelled"
    except _Failed as e:
        message = str(e)
    except Exception:
        log.exception("sql job crashed")
        message = "internal error while running the SQL job"
    finally:
        try:
            out.close()  # the final flush, before the status says the job is over
            _write_status(workdir, status, message, outputs)
        finally:
            _workers.pop(workdir, None)
            worker.done.set()


class SqlPlugin(TaskPlugin):
    task_type = "sql"
    version = "v1"
    description = "Run SQL statements on your own database with your own credentials."
    spec_schema = {"type": "object", "required": ["sql"],
                   "properties": {"sql": {"type": "string", "minLength": 1}},
                   "additionalProperties": False}
    needs_database = True
    runs_locally = True

    def create(self, ctx: TaskContext, spec: Dict[str, Any]) -> Dict[str, Any]:
        sql = spec.get("sql")
        statements = split_statements(sql) if isinstance(sql, str) else []
        if not statements:
            raise Unprocessable("spec.sql contains no statement")
        src = _parse_source(ctx.data_source)
        out = ResponseWriter(os.path.join(ctx.workdir, "responses.jsonl"))
        worker = _workers[ctx.workdir] = _Worker(ctx.workdir)
        threading.Thread(target=_run, args=(ctx.workdir, src, statements, out, worker),
                         name="sql-job", daemon=True).start()
        return {"statements": len(statements)}

    def get(self, ctx: TaskContext, meta: Dict[str, Any], cursor: str) -> TaskState:
        # Status first: once it is terminal, every response is already on disk.
        final = _read_status(ctx.workdir) or {"status": RUNNING}
        responses, next_cursor = ResponseLog(
            os.path.join(ctx.workdir, "responses.jsonl")).read(cursor, ctx.max_bytes)
        return TaskState(final["status"], final.get("message", ""), responses,
                         cursor=next_cursor, outputs=final.get("outputs") or {})

    def delete(self, ctx: TaskContext, meta: Dict[str, Any]) -> None:
        open(os.path.join(ctx.workdir, "cancel"), "a").close()
        worker = _workers.get(ctx.workdir)
        if worker is None:  # no live worker here (e.g. after a restart): settle it now
            if _read_status(ctx.workdir) is None:
                _write_status(ctx.workdir, CANCELLED, "cancelled", {})
            return
        worker.cancel.set()
        deadline = time.monotonic() + CANCEL_WAIT_S
        # Interrupt again until done: a statement may start just after the first attempt.
        while not worker.done.is_set() and time.monotonic() < deadline:
            worker.interrupt()
            worker.done.wait(min(0.5, max(0.0, deadline - time.monotonic())))

    def recover(self, ctx: TaskContext, meta: Dict[str, Any]) -> Optional[str]:
        message = "the server restarted while this SQL job was running"
        if ctx.workdir not in _workers and _read_status(ctx.workdir) is None:
            _write_status(ctx.workdir, FAILED, message, {})  # so get() agrees
        return message
