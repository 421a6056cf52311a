"""``%load_ext sqlflow_playground.magic``: the ``%%sqlflow`` cell magic on the playground.

Settings are the deployed magic's: the file named by ``SQLFLOW_JUPYTER_ENV_PATH`` is
loaded into ``os.environ`` (never overriding a variable already set), then the client is
configured as ``PlaygroundClient.from_env`` describes. On the first cell, unless
``SQLFLOW_DATASOURCE`` is already set, the magic calls ``create_db`` and exports the data
source as ``SQLFLOW_DATASOURCE``; then one daemon thread sends a heart beat every
``SQLFLOW_PLAYGROUND_HEARTBEAT_S`` seconds (default 600).

    %%sqlflow                          the cell is SQL, run as a `sql` job
    SELECT * FROM t

    %%sqlflow --task process           with --task, the cell is the JSON spec of that type
    {"command": ["python", "-c", "print(42)"]}

While the job runs, one line shows its token, status and age and how to cancel
(interrupting the kernel cancels the job), redrawn in place; when it ends, the same line
gives the status, the time taken and the row count. Messages are printed as they arrive.

The cell's value is a ``Result`` (results.py) when the job returned result sets: it draws
them as tables (HTML in a browser, aligned text elsewhere; the head and tail of a large
one, with "N rows × M columns"), and ``_.to_dataframe()`` in the next cell is the last
one as a pandas DataFrame with typed columns (``_.tables[i].to_dataframe()`` for the
others). A job with no result set (DDL only, a process job) gives no value. The last
job's final body (all responses included) is ``_sqlflow`` in the user namespace.

A job that does not succeed raises ``JobFailed`` so a notebook run stops there, after
drawing the tables it returned; it and the client's errors (``PlaygroundClientError``:
server down, refused, …) show as one line, not a traceback.
"""
import atexit
import functools
import json
import logging
import os
import threading
import time
from typing import Any, Dict, Optional

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.core.displaypub import DisplayPublisher
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from .client import (CertificateProblem, PlaygroundClient, PlaygroundClientError, environment,
                     provisioning_line)
from .client_cli import Statements
from .results import Progress, Result, Table

__all__ = ["JobFailed", "Result", "SQLFlowMagics", "Table", "load_ipython_extension",
           "unload_ipython_extension"]

log = logging.getLogger(__name__)

HEARTBEAT_ENV = "SQLFLOW_PLAYGROUND_HEARTBEAT_S"
DATASOURCE_ENV = "SQLFLOW_DATASOURCE"


class JobFailed(RuntimeError):
    """A job that ended FAILED, CANCELLED or UNKNOWN; ``result`` is its final body."""

    def __init__(self, result: Dict[str, Any]):
        self.result = result
        super().__init__(f"job {result.get('token')} {result.get('status')}: "
                         f"{result.get('message') or ''}".rstrip(": "))

    def _render_traceback_(self):  # IPython shows these lines instead of a traceback
        return [f"JobFailed: {self}"]


def _one_line_errors(method):
    """A cell whose PlaygroundClientError shows as one line (``_render_traceback_``, as
    JobFailed), not a traceback through the client: it is an expected error (server
    down, certificate refused, quota), its message says what happened. The exception is
    re-raised as it is, type and attributes unchanged."""
    @functools.wraps(method)
    def cell(self, line: str, cell: str):
        try:
            return method(self, line, cell)
        except PlaygroundClientError as e:
            line = f"{type(e).__name__}: {e}"  # not `e` in the lambda: deleted after except
            e._render_traceback_ = lambda: [line]
            raise
    return cell


class HeartBeat:
    """A daemon thread calling ``heart_beat`` every ``interval`` seconds until stopped.

    A failure (server down, network gone) is remembered and waited out exactly like a
    success, so an outage never makes it spin, and it resumes by itself afterwards."""

    def __init__(self, client: PlaygroundClient, interval: float):
        self.client, self.interval = client, interval
        self.stopped = threading.Event()
        self.beats = self.failures = 0
        self.last_error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._loop, daemon=True,
                                       name="sqlflow-playground-heartbeat")

    def start(self) -> None:
        self.thread.start()
        atexit.register(self.stop)

    def stop(self) -> None:
        self.stopped.set()
        atexit.unregister(self.stop)

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.client.heart_beat()
                self.beats += 1
            except Exception as e:  # noqa: BLE001 -- whatever it is, try again next time
                self.failures += 1
                self.last_error = e
                log.info("heart beat failed: %s", e)


class Provisioning:
    """create_db's progress: "provisioning your database… 12 s (phase)", one display
    updated in place (a new line per update in a plain terminal)."""

    def __init__(self) -> None:
        self.handle: Any = None

    def __call__(self, body: Dict[str, Any]) -> None:
        self.show(provisioning_line(body))

    def show(self, text: str) -> None:
        if self.handle is None:
            self.handle = display({"text/plain": text}, raw=True, display_id=True)
        else:
            self.handle.update({"text/plain": text}, raw=True)


@magics_class
class SQLFlowMagics(Magics):
    def __init__(self, shell: Any):
        super().__init__(shell)
        self.client: Optional[PlaygroundClient] = None
        self.heartbeat: Optional[HeartBeat] = None
        self._exported = False  # whether SQLFLOW_DATASOURCE is the one this magic set

    def connect(self) -> PlaygroundClient:
        """The client; on first use, the database and the heart beats too."""
        if self.client is not None:
            return self.client
        try:
            for name, value in environment().items():  # the file's settings, e.g. SQLFLOW_SERVER
                os.environ.setdefault(name, value)
            client = PlaygroundClient.from_env()
            interval = float(os.environ.get(HEARTBEAT_ENV) or 600)
            if not interval > 0:
                raise ValueError(f"{HEARTBEAT_ENV} must be a positive number of seconds")
        except CertificateProblem:
            raise  # expired, key not matching, …: its one line says what to do
        except ValueError as e:
            raise UsageError(f"%%sqlflow is not configured: {e}") from None
        if not os.environ.get(DATASOURCE_ENV):
            self._create_db(client)
        self.client = client
        self.heartbeat = HeartBeat(client, interval)
        self.heartbeat.start()
        return client

    def _create_db(self, client: PlaygroundClient) -> None:
        """Waits as long as the server may take to provision, showing its progress."""
        progress = Provisioning()
        os.environ[DATASOURCE_ENV] = client.create_db(on_progress=progress)["data_source"]
        if progress.handle is not None:
            progress.show("your database is ready")
        self._exported = True

    @magic_arguments()
    @argument("--task", default="sql", help="task type; other than sql, the cell is its JSON spec")
    @argument("--version", default=None, help="task type version (default: newest)")
    @cell_magic
    @_one_line_errors
    def sqlflow(self, line: str, cell: str) -> Optional[Result]:
        """Run the cell as a playground job (see the module's documentation)."""
        args = parse_argstring(self.sqlflow, line)
        spec: Any = {"sql": cell}
        if args.task != "sql":
            try:
                spec = json.loads(cell)
            except ValueError as e:
                raise UsageError(f"with --task {args.task}, the cell must be a JSON spec: {e}")
        client = self.connect()
        try:
            token = client.submit(args.task, spec, args.version)["token"]
        except PlaygroundClientError as e:
            if not (e.status == 409 and args.task == "sql"):
                raise
            # No database (released while the kernel slept): make one, as the first cell does.
            if self._exported or not os.environ.get(DATASOURCE_ENV):
                self._create_db(client)
            else:
                client.create_db()
            token = client.submit(args.task, spec, args.version)["token"]
        return self._follow(client, token)

    def _follow(self, client: PlaygroundClient, token: str) -> Optional[Result]:
        """Follow the job with the live line; its Result, None without result sets."""
        progress = Progress(token, live=type(self.shell.display_pub) is not DisplayPublisher)
        tables, messages = [], []

        def message(text: str) -> None:
            messages.append(text)
            print(text, flush=True)
        statements = Statements(message, lambda head, rows: tables.append(Table(head, rows)))

        def response(body: Dict[str, Any]) -> None:
            if "row" in body:
                progress.add_rows()
            statements.feed(body)

        def ended(status: Optional[str]) -> None:
            statements.flush()
            progress.finish(status, sum(len(t) for t in tables) if tables else None)
            for table in tables:  # what the job returned before it stopped
                display(table)
        try:
            body = client.follow(token, on_response=response,
                                 on_status=lambda b: progress.set_status(b.get("status")))
        except KeyboardInterrupt:
            ended("CANCELLED")
            print(f"cancelled job {token}")
            raise
        except BaseException:  # e.g. the server went away: the line must stop ticking
            ended("UNKNOWN")
            raise
        statements.flush()
        result = Result(body, tables, messages, time.monotonic() - progress.started)
        self.shell.user_ns["_sqlflow"] = body
        if body["status"] != "SUCCEEDED":
            ended(body["status"])
            raise JobFailed(body)
        progress.finish(body["status"], result.rows if tables else None)
        return result if tables else None

    def close(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.client is not None:
            self.client.close()


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magics(SQLFlowMagics(ipython))


def unload_ipython_extension(ipython: Any) -> None:
    magics = ipython.magics_manager.registry.pop(SQLFlowMagics.__name__, None)
    ipython.magics_manager.magics["cell"].pop("sqlflow", None)
    if magics is not None:
        magics.close()
