"""Runs one `sql` job and records how it ended. Started by SqlPlugin (plugins/sql.py):

    python -I -S .../plugins/sql_runner.py WORKDIR

A separate small process per job, so that a CPU-bound query (sqlite runs in the caller's
process, and turning rows into JSON is Python work for either kind of database) never
holds the server's GIL: five such jobs as threads of the server kept its IOLoop waiting
for tens of milliseconds (bench/sql_output.py).

What to run comes from ``WORKDIR/job.json`` (0600, written by the server), never from
argv or the environment, which ``ps`` and /proc show: it holds the data source, with its
password. The runner deletes the file as soon as it has read it. Then, in WORKDIR:

* ``responses.jsonl``: the responses, flushed after every batch of rows, so a reader
  sees them while the query runs; at most ``max_output_bytes`` (ResponseWriter's limit);
* ``status.json``: written atomically (0600) after the last flush, so a reader that sees
  it knows every response is on disk;
* ``cancel``: when it exists the job stops at the next batch or statement. SIGTERM says the
  same and also interrupts the statement under way (sqlite ``interrupt()``, MySQL ``KILL
  QUERY`` over a second connection): the work runs on a thread, the main thread waits for
  it and handles the signal.

Run by path with ``-I -S`` (no environment variables, no site or user site, not the
current or the script's directory on sys.path), importing the standard library,
``plugins/output.py`` and ``errors.py`` only, and pymysql only for a MySQL data source
(from the server's own sys.path, given in the job file): its start then costs tens of
milliseconds, not the 150 or so of ``python -m`` with site and the package's
``__init__`` files (see ``_bare_packages``). It runs at a lower priority (``NICE``).
"""
import datetime
import json
import math
import os
import re
import signal
import sqlite3
import stat
import sys
import threading
import types
from typing import Any, Callable, Dict, List, Optional, Tuple


def _bare_packages() -> None:
    """Make this package's modules importable without running its ``__init__`` files,
    which load the server's configuration, yaml and asyncio: 100 ms more for each job,
    for nothing the runner uses. Only when run as a script."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name, path in (("sqlflow_playground", package),
                       ("sqlflow_playground.plugins", os.path.join(package, "plugins"))):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [path]
            sys.modules[name] = module


if __name__ == "__main__":
    _bare_packages()

from sqlflow_playground.plugins.output import OutputLimitExceeded, ResponseWriter  # noqa: E402

# The job statuses of plugins/base.py, repeated: base.py imports dataclasses (slow).
SUCCEEDED, FAILED, CANCELLED = "SUCCEEDED", "FAILED", "CANCELLED"
JOB_FILE = "job.json"
BATCH_ROWS = 500
CONNECT_TIMEOUT_S = 10
WATCH_EVERY_S = 0.25  # how often the main thread looks at its server and the work
#: the runner's niceness: its queries are batch work, and must not take the CPU from the
#: server's IOLoop (heart beats, fetches) even when pinned to the same core
NICE = 10
ORPHANED = "the server stopped while this SQL job was running"

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
    except Exception:
        pass


class _Worker:
    """The work's cancel signal, and how to interrupt the statement it runs."""

    def __init__(self, workdir: str):
        self.cancel_file = os.path.join(workdir, "cancel")
        self.cancel = threading.Event()
        self.orphaned = False  # the server that started it is gone: stopped for that
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
    decimal = sys.modules.get("decimal")  # not imported here (5 ms of each job's start):
    if decimal is not None and isinstance(value, decimal.Decimal):  # a Decimal's module
        return str(value)                                           # is loaded already
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
            import base64  # imported when needed: every module costs each job's start
            return "base64:" + base64.b64encode(raw).decode("ascii")
    return str(value)


def _db_errors(src: Dict[str, Any]) -> Tuple[type, ...]:
    """The exceptions the database of ``src`` raises (pymysql is imported for MySQL only)."""
    if src["kind"] == "sqlite":
        return (sqlite3.Error,)
    import pymysql
    return (pymysql.MySQLError,)


def _reason(e: BaseException) -> str:
    """The database's own message, without pymysql's error code."""
    pymysql = sys.modules.get("pymysql")
    if pymysql is not None and isinstance(e, pymysql.MySQLError) and len(e.args) > 1:
        return str(e.args[1])
    return str(e)


NOT_OWN_FILE = ("refused to open the sqlite data source: it is not this user's own database "
                "(a regular file in the server's databases directory, not a link)")


def _own_sqlite_file(src: Dict[str, Any]) -> str:
    """The path to open, if it is the owner's own file; else the job fails.

    ``own_path`` is the one file the owner's database may be (``database_path`` of the
    server's databases ``directory`` and the owner's id), computed by the server; both are
    None only in-process without a server (``run_local``), where the caller chose the
    data source."""
    path, directory = os.path.abspath(src["path"]), src.get("directory")
    if directory is not None and (path != src["own_path"] or os.path.islink(directory)):
        raise _Failed(NOT_OWN_FILE)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path  # released: connecting (mode=rw, never creates) says so
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        raise _Failed(NOT_OWN_FILE)
    return path


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~/")


def _quote(path: str) -> str:
    """``urllib.parse.quote(path)``: every byte but letters, digits, ``_.-~/`` as %XX, so
    that no ``?`` or ``#`` in a path can add URI parameters. (urllib.parse imports
    ipaddress: 4 ms of each job's start.)"""
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in os.fsencode(path))


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


def _connect_mysql(src: Dict[str, Any], **kw: Any):
    import pymysql
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
            uri = "file:" + _quote(_own_sqlite_file(src)) + "?mode=rw"
            self.conn = sqlite3.connect(uri, uri=True, timeout=CONNECT_TIMEOUT_S,
                                        isolation_level=None)  # autocommit, as for MySQL
            self.guard = _Guard()
            self.conn.set_authorizer(self.guard)
            self.value_limit = _limit_length(self.conn, page_bytes)
            self.interrupt: Callable[[], None] = self.conn.interrupt
        else:
            import pymysql.cursors
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


def write_status(workdir: str, status: str, message: str, outputs: Dict[str, Any]) -> None:
    """``status.json``, atomically (0600): whoever sees it sees the whole file."""
    path = os.path.join(workdir, "status.json")
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"status": status, "message": message, "outputs": outputs}, fh)
    os.replace(tmp, path)


def read_status(workdir: str) -> Optional[Dict[str, Any]]:
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


def cap_message(limit: int) -> str:
    # The process task type's wording (plugins/process_runner.py cap_message).
    return (f"output cap reached: the job's output may not exceed {limit} bytes "
            "(--max_output_bytes, or less when its owner's --max_output_bytes_per_user "
            "was nearly used up); the job was stopped, its output so far is kept")


def run(workdir: str, src: Dict[str, Any], statements: List[str], out: ResponseWriter,
        worker: _Worker, page_bytes: int) -> None:
    """Run every statement, then write the final status."""
    n, rows = len(statements), 0
    status, message, outputs = FAILED, "", {}
    try:
        errors = _db_errors(src)
        try:
            session = _Session(src, page_bytes)
        except errors as e:
            raise _Failed(f"cannot connect to the database: {_reason(e)}") from None
        worker.set_interrupt(session.interrupt)
        try:
            for i, statement in enumerate(statements, 1):
                if worker.cancelled():
                    raise _Cancelled()
                try:
                    rows += _execute(session, statement, out, worker, page_bytes)
                except errors as e:
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
        status, message = (FAILED, ORPHANED) if worker.orphaned else (CANCELLED, "cancelled")
    except _Failed as e:
        message = str(e)
    except OutputLimitExceeded as e:
        message = cap_message(e.limit)
    except Exception:
        import traceback  # to stderr: runner.err in the job's directory
        traceback.print_exc()
        message = "internal error while running the SQL job"
    finally:
        out.close()  # the final flush, before the status says the job is over
        write_status(workdir, status, message, outputs)


def take_job(workdir: str) -> Dict[str, Any]:
    """The job the server wrote for this runner; the file (it holds the data source's
    password) is deleted once read."""
    path = os.path.join(workdir, JOB_FILE)
    try:
        with open(path) as fh:
            return json.load(fh)
    finally:
        os.unlink(path)


def _lower_priority() -> None:
    """Make way for the server: ``NICE`` for this process and, where Linux groups the
    processes of a session for scheduling (autogroup: on by default on desktops and many
    servers), for its session too. The runner's session is its own, and one autogroup
    weighs as much as the server's, whatever the nice values inside it."""
    _quietly(lambda: os.nice(NICE))
    try:
        with open("/proc/self/autogroup", "w") as fh:
            fh.write(str(NICE))
    except OSError:
        pass  # no autogroup here: the process's own nice is what counts


def main(argv: List[str]) -> int:
    os.umask(0o077)
    _lower_priority()
    workdir = argv[0]
    job = take_job(workdir)
    # Where the server finds its libraries (pymysql), without site's start-up cost; never
    # "" (the current directory: the job's).
    sys.path.extend(p for p in job.get("sys_path", ()) if p and p not in sys.path)
    worker = _Worker(workdir)
    # SIGTERM: stop. The handler runs on this (main) thread while the work's thread is
    # inside the database; the loop below interrupts it until it is over.
    signal.signal(signal.SIGTERM, lambda *_: worker.cancel.set())
    out = ResponseWriter(os.path.join(workdir, "responses.jsonl"),
                         limit=job["max_output_bytes"])
    work = threading.Thread(target=run, name="sql-job", args=(
        workdir, job["source"], job["statements"], out, worker, job["page_bytes"]))
    work.start()
    while work.is_alive():
        work.join(WATCH_EVERY_S)
        # A runner never outlives its server unnoticed: once the server is gone (this
        # process has a new parent), the job stops and ends FAILED saying so.
        if os.getppid() != job["server_pid"] and not worker.cancel.is_set():
            worker.orphaned = True
            worker.cancel.set()
        if worker.cancel.is_set():
            worker.interrupt()  # again until over: a statement may start just after one
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
