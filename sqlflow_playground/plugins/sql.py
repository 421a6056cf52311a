"""The `sql` task type: statements run on the job owner's own database (DESIGN §6), with
the owner's credentials from ``ctx.data_source``, never the admin's.

A job touches its owner's database and nothing else (DESIGN §9):

* sqlite: the file is opened only if it is the owner's own file in the sqlite
  provisioner's directory (``--state_dir``/databases, known from the server, not from the
  data source), a regular file, not a symbolic or hard link. Every statement passes an
  authorizer (``sql_runner._Guard``) that refuses, with a job error naming what and saying it is not
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

The work runs in a small process of its own per job (``plugins/sql_runner.py``, started
in a new session, its pid in the job's meta, at a lower priority), never in the server: a
CPU-bound query on a thread of the server held its GIL and kept the IOLoop waiting. The runner learns what to
run from ``job.json`` (0600; it holds the data source, so never argv or environment), which
it deletes once read. In ``ctx.workdir``: ``responses.jsonl`` (flushed after every batch of
rows), ``status.json`` (written atomically after the last flush, so a reader that sees it
knows every response is on disk), ``cancel`` (asks the runner to stop; ``delete`` also
sends it SIGTERM, which interrupts the statement under way) and ``runner.err`` (the
runner's stderr: the last line says why, should it die without a status).
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Optional

from ..errors import Unprocessable
from ..provisioners.sqlite import data_source_path, database_path, databases_directory
from . import sql_runner
from .base import CANCELLED, FAILED, RUNNING, TaskContext, TaskPlugin, TaskState
from .output import ResponseLogOutput, open_private
from .process_runner import describe_exit
from .sql_runner import read_status, write_status
from .sqlsplit import split_statements

MYSQL_RE = re.compile(r"^mysql://(?P<user>[^:@/]*):(?P<password>.*)@tcp\((?P<host>[^()]*?)"
                      r"(?::(?P<port>\d+))?\)/(?P<database>[^?/]*)(?:\?.*)?$")
CANCEL_WAIT_S = 5.0  # how long a cancelled runner may take to stop before SIGKILL
RUNNER_ERR_TAIL_BYTES = 4096
#: the runner's whole environment: nothing of the server's, which may hold secrets
#: (``SQLFLOW_PLAYGROUND_DB_URL``); ``-I`` has Python ignore PYTHON* variables anyway
RUNNER_ENV = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
              "LANG": "C.UTF-8"}

# Runners this process started, each with a thread waiting for it, so that its exit is
# reaped at once (no zombie).
_runners: Dict[int, subprocess.Popen] = {}
_exits: Dict[int, int] = {}  # pid -> exit code of a runner that died without a status


def _start_runner(workdir: str) -> int:
    # The runner's own errors (it should have none) are kept, to say why it died.
    with open_private(os.path.join(workdir, "runner.err")) as err:
        runner = subprocess.Popen([sys.executable, "-I", "-S", sql_runner.__file__, workdir],
                                  cwd=workdir, env=RUNNER_ENV, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=err,
                                  start_new_session=True)
    _runners[runner.pid] = runner

    def reap() -> None:
        code = runner.wait()
        if read_status(workdir) is None:  # died without a word: get() says how
            _exits[runner.pid] = code
        _runners.pop(runner.pid, None)

    threading.Thread(target=reap, name=f"sql-runner-{runner.pid}", daemon=True).start()
    return runner.pid


def _runs_job(pid: int, workdir: str) -> bool:
    """Whether a process this server did not start (a previous server's) is still the
    runner of the job in ``workdir``: its pid may since have gone to another process."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            args = fh.read().split(b"\0")
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return False
        try:  # no /proc: trust the pid, as the process task type does
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False  # not the server's user's: not a runner
        return True
    except PermissionError:
        return False
    return os.fsencode(workdir) in args and \
        any(arg.endswith(b"sql_runner.py") for arg in args)


def _alive(pid: Optional[int], workdir: str) -> bool:
    if not pid or pid in _exits:
        return False
    if pid in _runners:
        return True
    return _runs_job(pid, workdir)


def _stop(pid: int, workdir: str, wait_s: float = CANCEL_WAIT_S) -> None:
    """SIGTERM the runner (it interrupts its statement and ends), then SIGKILL its
    group if it is still there after ``wait_s``."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + wait_s
    while _alive(pid, workdir) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _alive(pid, workdir):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 1.0  # until the reaping thread has seen it go
        while _alive(pid, workdir) and time.monotonic() < deadline:
            time.sleep(0.01)


def _drop_job_file(workdir: str) -> None:
    """The job file of a runner that is gone: read or not, it goes (it holds a password)."""
    try:
        os.unlink(os.path.join(workdir, sql_runner.JOB_FILE))
    except FileNotFoundError:
        pass


def _runner_death(workdir: str, pid: Optional[int]) -> str:
    """Why the runner died without a status: the last line of its stderr, else how it
    exited."""
    message = "the SQL job's runner died unexpectedly"
    try:
        with open(os.path.join(workdir, "runner.err"), "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - RUNNER_ERR_TAIL_BYTES))
            tail = fh.read().decode("utf-8", "replace").strip().splitlines()
    except FileNotFoundError:
        tail = []
    if tail:
        return f"{message}: {tail[-1][:500]}"
    code = _exits.get(pid) if pid else None
    return f"{message} ({describe_exit(code)})" if code is not None else message


def _parse_source(data_source: Optional[str]) -> Dict[str, Any]:
    ds = data_source or ""
    if ds.startswith("sqlite:///"):
        return {"kind": "sqlite", "path": data_source_path(ds)}
    m = MYSQL_RE.match(ds)
    if m is None:  # never echo the data source: it holds a password
        raise Unprocessable("the sql task type needs a mysql:// (SQLFlow form) or "
                            "sqlite:/// data source")
    return {"kind": "mysql", **m.groupdict(), "port": int(m["port"] or 3306)}


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


class SqlPlugin(ResponseLogOutput, TaskPlugin):
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
            directory = _sqlite_directory(ctx)
            src.update(directory=directory, own_path=directory and
                       database_path(directory, ctx.user_id))
        job_file = os.path.join(ctx.workdir, sql_runner.JOB_FILE)
        with open_private(job_file, "w") as fh:
            json.dump({"source": src, "statements": statements, "page_bytes": ctx.page_bytes,
                       "max_output_bytes": ctx.max_output_bytes,
                       "sys_path": [p for p in sys.path if os.path.isabs(p)],
                       "server_pid": os.getpid()}, fh)
        try:
            pid = _start_runner(ctx.workdir)
        except BaseException:
            os.unlink(job_file)  # no runner will read it: the password goes now
            raise
        return {"statements": len(statements), "runner_pid": pid}

    def get(self, ctx: TaskContext, meta: Dict[str, Any], cursor: str) -> TaskState:
        # Status first: once it is terminal, every response is already on disk.
        final = read_status(ctx.workdir)
        pid = meta.get("runner_pid")
        if final is None and not _alive(pid, ctx.workdir):
            final = read_status(ctx.workdir)  # it may have ended just before the check
            if final is None:  # died without a word: say so once and for all
                _drop_job_file(ctx.workdir)
                write_status(ctx.workdir, FAILED, _runner_death(ctx.workdir, pid), {})
                final = read_status(ctx.workdir)
        if final is not None:
            _exits.pop(pid, None)
        final = final or {"status": RUNNING}
        responses, next_cursor, _ = self.read_output(ctx, cursor, False)
        return TaskState(final["status"], final.get("message", ""), responses,
                         cursor=next_cursor, outputs=final.get("outputs") or {})

    def delete(self, ctx: TaskContext, meta: Dict[str, Any]) -> None:
        if read_status(ctx.workdir) is not None:
            return
        open(os.path.join(ctx.workdir, "cancel"), "a").close()
        pid = meta.get("runner_pid")
        if _alive(pid, ctx.workdir):
            _stop(pid, ctx.workdir)
        _drop_job_file(ctx.workdir)
        if read_status(ctx.workdir) is None:  # no runner, or killed before it could say
            write_status(ctx.workdir, CANCELLED, "cancelled", {})

    def recover(self, ctx: TaskContext, meta: Dict[str, Any]) -> Optional[str]:
        """A job that ended by itself keeps its status (its output is all on disk); one
        still running when its server stopped is stopped and FAILED: its runner does not
        outlive its server unnoticed."""
        if read_status(ctx.workdir) is not None:
            return None
        message = "the server restarted while this SQL job was running"
        pid = meta.get("runner_pid")
        if _alive(pid, ctx.workdir):
            _stop(pid, ctx.workdir)
        _drop_job_file(ctx.workdir)
        write_status(ctx.workdir, FAILED, message, {})  # so get() agrees
        return message
