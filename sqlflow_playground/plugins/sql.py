"""The `sql` task type: statements run on the job owner's own database (DESIGN §6), with
the owner's credentials from ``ctx.data_source``, never the admin's.

A job touches its owner's database and nothing else (DESIGN §9):

* sqlite: the file is opened only if it is the owner's own file in the sqlite
  provisioner's directory (``--state_dir``/databases, known from the server, not from the
  data source), a regular file, not a symbolic or hard link. Every statement passes an
  authorizer (``_Guard``) that refuses, with a job error naming what and saying it is not
  allowed on the playground: ATTACH and DETACH, VACUUM INTO, the functions
  ``load_extension`` and ``fts3_tokenizer``, the ``sqlite_dbpage`` table, virtual tables
  other than fts3/fts4/fts5/rtree, and every pragma outside two lists: ``PRAGMAS`` (read
  or set: introspection of the tenant's own schema, per-connection switches such as
  ``foreign_keys``, ``user_version``, ``optimize``, ``wal_checkpoint``) and
  ``READ_ONLY_PRAGMAS`` (read but not set: ``journal_mode``, ``synchronous``,
  ``schema_version``, ``cache_size``, ``temp_store``…). So ``writable_schema``,
  ``temp_store_directory``, ``data_store_directory``, ``soft_heap_limit`` and the like are
  refused. Everything else stays: DDL, DML, SELECT, CTEs, transactions and savepoints,
  temp tables, views, triggers, indexes, plain VACUUM, ANALYZE, the built-in functions.
* One value, one row: sqlite's SQLITE_LIMIT_LENGTH is set to ``ctx.page_bytes`` (the
  server's ``--fetch_page_bytes``; Python ≥ 3.11), so ``zeroblob(50000000)`` fails before
  it is built, and any row whose JSON is larger than a page is refused, on MySQL too
  (where the server's ``max_allowed_packet`` bounds what is read). An oversized value is
  refused, never split.
* Output on disk stops at ``ctx.max_output_bytes`` (``--max_output_bytes``): the job ends
  FAILED saying so, and the output so far is kept.

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
import stat
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, List, Optional

import pymysql
import pymysql.cursors

from ..errors import Unprocessable
from .base import CANCELLED, FAILED, RUNNING, SUCCEEDED, TaskContext, TaskPlugin, TaskState
from ..provisioners.sqlite import database_path, databases_directory
from .output import OutputLimitExceeded, ResponseLog, ResponseWriter
from .sqlsplit import split_statements

log = logging.getLogger(__name__)

BATCH_ROWS = 500
CONNECT_TIMEOUT_S = 10
CANCEL_WAIT_S = 5.0
MYSQL_RE = re.compile(r"^mysql://(?P<user>[^:@/]*):(?P<password>.*)@tcp\((?P<host>[^()]*?)"
                      r"(?::(?P<port>\d+))?\)/(?P<database>[^?/]*)(?:\?.*)?$")
DB_ERRORS = (sqlite3.Error, pymysql.MySQLError)


NOT_ALLOWED = "is not allowed on the playground (a sql job may use its own database only)"

#: pragmas a job may read or set: its own schema, and switches of its own connection
PRAGMAS = frozenset("""
    table_info table_xinfo table_list index_list index_info index_xinfo foreign_key_list
    foreign_key_check integrity_check quick_check collation_list function_list module_list
    pragma_list database_list compile_options page_count freelist_count data_version
    foreign_keys defer_foreign_keys recursive_triggers case_sensitive_like
    reverse_unordered_selects automatic_index query_only user_version application_id
    optimize analysis_limit incremental_vacuum wal_checkpoint secure_delete cell_size_check
""".split())
#: pragmas a job may read but not set (setting them could corrupt its database, reach
#: outside it, or take the server's memory)
READ_ONLY_PRAGMAS = frozenset("""
    journal_mode synchronous locking_mode schema_version page_size cache_size cache_spill
    mmap_size temp_store auto_vacuum encoding max_page_count busy_timeout trusted_schema
    ignore_check_constraints legacy_alter_table
""".split())
DENIED_FUNCTIONS = frozenset(("load_extension", "fts3_tokenizer"))
DENIED_TABLES = frozenset(("sqlite_dbpage",))  # raw pages: writing them corrupts the file
VIRTUAL_TABLE_MODULES = frozenset((
    "fts3", "fts4", "fts5", "fts3tokenize", "fts4aux", "fts5vocab", "rtree", "rtree_i32"))
_ALLOWED_ACTIONS = frozenset(getattr(sqlite3, "SQLITE_" + name) for name in """
    CREATE_INDEX CREATE_TABLE CREATE_TEMP_INDEX CREATE_TEMP_TABLE CREATE_TEMP_TRIGGER
    CREATE_TEMP_VIEW CREATE_TRIGGER CREATE_VIEW DROP_INDEX DROP_TABLE DROP_TEMP_INDEX
    DROP_TEMP_TABLE DROP_TEMP_TRIGGER DROP_TEMP_VIEW DROP_TRIGGER DROP_VIEW DROP_VTABLE
    SELECT TRANSACTION SAVEPOINT ALTER_TABLE REINDEX ANALYZE RECURSIVE
""".split())
_TABLE_ACTIONS = frozenset((sqlite3.SQLITE_READ, sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE,
                            sqlite3.SQLITE_DELETE))
_LEADING_COMMENTS = re.compile(r"(?:\s+|--[^\n]*|/\*.*?(?:\*/|$))*", re.S)


def _refusal(action: int, arg1: Optional[str], arg2: Optional[str], vacuum: bool) -> Optional[str]:
    """What a sqlite authorizer call asks for, if it is refused; None if allowed."""
    if action in _ALLOWED_ACTIONS:
        return None
    if action in _TABLE_ACTIONS:
        return f"the table {arg1}" if (arg1 or "").lower() in DENIED_TABLES else None
    if action == sqlite3.SQLITE_ATTACH:
        if vacuum and arg1 == "":
            return None  # plain VACUUM's scratch copy: a private temporary file
        return "VACUUM INTO" if vacuum else "ATTACH DATABASE"
    if action == sqlite3.SQLITE_DETACH:
        return "DETACH DATABASE"
    if action == sqlite3.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        if name in PRAGMAS or (name in READ_ONLY_PRAGMAS and arg2 is None):
            return None
        return f"{'setting ' if name in READ_ONLY_PRAGMAS else ''}PRAGMA {name}"
    if action == sqlite3.SQLITE_FUNCTION:
        return f"{arg2}()" if (arg2 or "").lower() in DENIED_FUNCTIONS else None
    if action == sqlite3.SQLITE_CREATE_VTABLE:
        return None if (arg2 or "").lower() in VIRTUAL_TABLE_MODULES \
            else f"CREATE VIRTUAL TABLE USING {arg2}"
    return f"this kind of statement (sqlite action {action})"


class _Guard:
    """The authorizer of a tenant's sqlite connection; remembers the first refusal of the
    statement under way, for the job's message."""

    def __init__(self) -> None:
        self.vacuum, self.refused = False, None  # type: bool, Optional[str]

    def start(self, statement: str) -> None:
        rest = statement[_LEADING_COMMENTS.match(statement).end():]
        self.vacuum, self.refused = rest[:6].upper() == "VACUUM", None

    def __call__(self, action: int, arg1: Optional[str], arg2: Optional[str],
                 db: Optional[str], source: Optional[str]) -> int:
        why = _refusal(action, arg1, arg2, self.vacuum)
        if why is None:
            return sqlite3.SQLITE_OK
        if self.refused is None:
            self.refused = why
        return sqlite3.SQLITE_DENY


class _Cancelled(Exception):
    """The job was asked to stop."""


class _Failed(Exception):
    """The job fails with this message (the database's own, with where it failed)."""


class _TooLarge(Exception):
    """A row is larger than one fetch page."""


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


NOT_OWN_FILE = ("refused to open the sqlite data source: it is not this user's own database "
                "(a regular file in the server's databases directory, not a link)")


def _sqlite_directory(ctx: TaskContext) -> Optional[str]:
    """The directory a job's sqlite file must be in, learnt from the server, never from the
    data source: ``ctx.settings["sqlite_directory"]``, else the server's layout seen in the
    job's own directory (STATE_DIR/jobs/TOKEN: files in STATE_DIR/databases). None only
    in-process without a server (``run_local``), where the caller chose the data source."""
    if ctx.settings.get("sqlite_directory"):
        return os.path.abspath(ctx.settings["sqlite_directory"])
    jobs = os.path.dirname(os.path.abspath(ctx.workdir))
    return databases_directory(os.path.dirname(jobs)) if os.path.basename(jobs) == "jobs" \
        else None


def _own_sqlite_file(src: Dict[str, Any]) -> str:
    """The path to open, if it is the owner's own file; else the job fails."""
    path, directory = os.path.abspath(src["path"]), src.get("directory")
    if directory is not None and (path != database_path(directory, src["user_id"])
                                  or os.path.islink(directory)):
        raise _Failed(NOT_OWN_FILE)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path  # released: connecting (mode=rw, never creates) says so
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        raise _Failed(NOT_OWN_FILE)
    return path


def _limit_length(conn: sqlite3.Connection, page_bytes: int) -> Optional[int]:
    """Refuse to build any value (string, blob, row) longer than ``page_bytes``. Without
    ``setlimit`` (Python < 3.11) a row is still refused, once read, by its JSON size."""
    setlimit = getattr(conn, "setlimit", None)
    if page_bytes <= 0 or setlimit is None:
        return None
    setlimit(sqlite3.SQLITE_LIMIT_LENGTH, page_bytes)
    return page_bytes


def _too_large(page_bytes: int) -> str:
    return (f"a value larger than fetch_page_bytes ({page_bytes} bytes) was refused: every "
            "row must fit in one fetch page; an oversized value is refused, not split")


def _row_too_large(values: List[Any], page_bytes: int) -> bool:
    """Whether the row's JSON line would be longer than a page. Exact only when a cheap
    bound (a character is at most 12 bytes of JSON, any other value 32) says it may be."""
    bound = 16 + sum(12 * len(v) + 3 if isinstance(v, str) else 32 for v in values)
    return bound > page_bytes and \
        len(json.dumps({"row": values}, separators=(",", ":"))) + 1 > page_bytes


def _connect_mysql(src: Dict[str, Any], **kw: Any) -> pymysql.Connection:
    # local_infile=False: LOAD DATA LOCAL would read files of the gateway's host.
    return pymysql.connect(host=src["host"], port=src["port"], user=src["user"],
                           password=src["password"], database=src["database"] or None,
                           charset="utf8mb4", autocommit=True, local_infile=False,
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

    def __init__(self, src: Dict[str, Any], page_bytes: int):
        self.guard: Optional[_Guard] = None
        self.value_limit: Optional[int] = None
        if src["kind"] == "sqlite":
            # mode=rw: a released database fails the job instead of springing up empty.
            uri = "file:" + urllib.parse.quote(_own_sqlite_file(src)) + "?mode=rw"
            self.conn = sqlite3.connect(uri, uri=True, timeout=CONNECT_TIMEOUT_S,
                                        isolation_level=None)  # autocommit, as for MySQL
            self.guard = _Guard()
            self.conn.set_authorizer(self.guard)
            self.value_limit = _limit_length(self.conn, page_bytes)
            self.interrupt: Callable[[], None] = self.conn.interrupt
        else:
            # Unbuffered, so a long result streams instead of filling memory.
            self.conn = _connect_mysql(src, cursorclass=pymysql.cursors.SSCursor)
            connection_id = self.conn.thread_id()
            self.interrupt = lambda: _kill_query(src, connection_id)
        self.cursor = self.conn.cursor()

    def explain(self, e: BaseException) -> str:
        """Why a statement ended with the database error ``e``."""
        if self.guard is not None and self.guard.refused:
            return f"refused: {self.guard.refused} {NOT_ALLOWED}"
        if self.value_limit and isinstance(e, sqlite3.DataError) and "too big" in str(e):
            return "failed: " + _too_large(self.value_limit)
        return "failed: " + _reason(e)

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
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"status": status, "message": message, "outputs": outputs}, fh)
    os.replace(tmp, path)


def _read_status(workdir: str) -> Optional[Dict[str, Any]]:
    try:
        with open(os.path.join(workdir, "status.json")) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


def _execute(session: _Session, statement: str, out: ResponseWriter, worker: _Worker,
             page_bytes: int) -> int:
    """Run one statement, write its responses; the number of rows it returned."""
    cur, rows = session.cursor, 0
    if session.guard is not None:
        session.guard.start(statement)
    cur.execute(statement)
    if cur.description is None:
        out.write({"message": f"{max(cur.rowcount, 0)} row(s) affected"})
    else:
        out.write({"head": [column[0] for column in cur.description]})
        for row in cur:  # one row at a time: memory holds a row, not a batch of them
            values = [json_safe(v) for v in row]
            if page_bytes > 0 and _row_too_large(values, page_bytes):
                raise _TooLarge()
            out.write({"row": values})
            rows += 1
            if rows % BATCH_ROWS == 0:
                out.flush()  # a polling reader sees these rows while the query still runs
                if worker.cancelled():
                    raise _Cancelled()
    out.write({"eoe": True})
    out.flush()  # visible while the next statement runs
    return rows


def _run(workdir: str, src: Dict[str, Any], statements: List[str], out: ResponseWriter,
         worker: _Worker, page_bytes: int) -> None:
    """The worker thread: run every statement, then write the final status."""
    n, rows = len(statements), 0
    status, message, outputs = FAILED, "", {}
    try:
        try:
            session = _Session(src, page_bytes)
        except DB_ERRORS as e:
            raise _Failed(f"cannot connect to the database: {_reason(e)}") from None
        worker.set_interrupt(session.interrupt)
        try:
            for i, statement in enumerate(statements, 1):
                if worker.cancelled():
                    raise _Cancelled()
                try:
                    rows += _execute(session, statement, out, worker, page_bytes)
                except DB_ERRORS as e:
                    if worker.cancelled():
                        raise _Cancelled() from None
                    raise _Failed(f"statement {i} of {n} {session.explain(e)}") from None
                except _TooLarge:
                    raise _Failed(f"statement {i} of {n} failed: {_too_large(page_bytes)}") \
                        from None
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
    except OutputLimitExceeded as e:
        # The process task type's wording (plugins/process_runner.py cap_message).
        message = (f"output cap reached: the job's output may not exceed {e.limit} bytes "
                   "(--max_output_bytes, or less when its owner's --max_output_bytes_per_user "
                   "was nearly used up); the job was stopped, its output so far is kept")
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
        if src["kind"] == "sqlite":
            src.update(directory=_sqlite_directory(ctx), user_id=ctx.user_id)
        out = ResponseWriter(os.path.join(ctx.workdir, "responses.jsonl"),
                             limit=ctx.max_output_bytes)
        worker = _workers[ctx.workdir] = _Worker(ctx.workdir)
        threading.Thread(target=_run, name="sql-job", daemon=True,
                         args=(ctx.workdir, src, statements, out, worker, ctx.page_bytes)
                         ).start()
        return {"statements": len(statements)}

    output_file = "responses.jsonl"

    def read_output(self, ctx: TaskContext, cursor: str, complete: bool):
        log = ResponseLog(os.path.join(ctx.workdir, self.output_file))
        responses, next_cursor = log.read(cursor, ctx.max_bytes)
        return responses, next_cursor, log.more

    def get(self, ctx: TaskContext, meta: Dict[str, Any], cursor: str) -> TaskState:
        # Status first: once it is terminal, every response is already on disk.
        final = _read_status(ctx.workdir) or {"status": RUNNING}
        responses, next_cursor, _ = self.read_output(ctx, cursor, False)
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
