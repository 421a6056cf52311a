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

Messages are printed as they arrive, each result set is displayed as a table (HTML in a
browser, aligned text elsewhere). A job that does not succeed raises ``JobFailed`` so a
notebook run stops there; interrupting the kernel cancels the job. The cell's value is
None; the last job's final body (all responses included) is ``_sqlflow`` in the user
namespace.
"""
import atexit
import html
import json
import logging
import os
import threading
from typing import Any, Dict, Optional, Sequence

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from .client import PlaygroundClient, PlaygroundClientError, environment
from .client_cli import Statements, text_table

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


class Table:
    """One result set: ``_repr_html_`` for a browser, an aligned text ``repr`` elsewhere."""

    def __init__(self, head: Sequence[Any], rows: Sequence[Sequence[Any]]):
        self.head, self.rows = list(head), [list(r) for r in rows]

    def _repr_html_(self) -> str:
        def cells(tag: str, values: Sequence[Any]) -> str:
            return "".join(f"<{tag}>{'<i>NULL</i>' if v is None else html.escape(str(v))}"
                           f"</{tag}>" for v in values)
        body = "".join(f"<tr>{cells('td', row)}</tr>" for row in self.rows)
        return (f"<table><thead><tr>{cells('th', self.head)}</tr></thead>"
                f"<tbody>{body}</tbody></table>")

    def __repr__(self) -> str:
        return text_table(self.head, self.rows)


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
        except ValueError as e:
            raise UsageError(f"%%sqlflow is not configured: {e}") from None
        if not os.environ.get(DATASOURCE_ENV):
            self._create_db(client)
        self.client = client
        self.heartbeat = HeartBeat(client, interval)
        self.heartbeat.start()
        return client

    def _create_db(self, client: PlaygroundClient) -> None:
        os.environ[DATASOURCE_ENV] = client.create_db()["data_source"]
        self._exported = True

    @magic_arguments()
    @argument("--task", default="sql", help="task type; other than sql, the cell is its JSON spec")
    @argument("--version", default=None, help="task type version (default: newest)")
    @cell_magic
    def sqlflow(self, line: str, cell: str) -> None:
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
        statements = Statements(print, lambda head, rows: display(Table(head, rows)))
        try:
            result = client.follow(token, on_response=statements.feed)
        except KeyboardInterrupt:
            print(f"cancelled job {token}")
            raise
        statements.flush()
        self.shell.user_ns["_sqlflow"] = result
        if result["status"] != "SUCCEEDED":
            raise JobFailed(result)

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
