"""The `sqlflow` task type: a cell's SQL forwarded over gRPC ``Run`` to an upstream SQLFlow
server (for statements with TO TRAIN / TO PREDICT / TO EXPLAIN / TO EVALUATE / TO RUN,
which need the SQLFlow engine), its response stream recorded as the job's output. So the
gateway, not the notebook, holds the long stream, and the notebook polls the job as for
any other task type.

The upstream call is I/O bound, so it runs on a daemon thread of the server process (one
per job, ``_Stream``), not in a process of its own as the ``sql`` task type's work does.
In ``ctx.workdir``, as for ``sql`` (plugins/sql_runner.py):

* ``responses.jsonl``: every upstream ``Response`` as JSON (``proto.convert.from_pb``),
  flushed after each one, so a polling reader sees it while the stream is still open; at
  most ``ctx.max_output_bytes`` (past it the upstream call is cancelled and the job FAILED);
* ``status.json``: written once, after the last flush, so a reader that sees it knows
  every response is on disk.

SQLFlow's workflow mode (``Run`` answers ``Response{job}``) is followed as its own client
follows it (/work/shared/SQLFLOW_PROTOCOL.md): ``Fetch`` polled every ``FETCH_INTERVAL_S``,
``updated_fetch_since`` sent back unchanged, until ``eof``. The ``job`` response itself is
not recorded: it names the upstream's job, which nobody here can fetch.

The ``Session`` sent upstream holds the owner's data source, with its password: it is
never logged, nor kept anywhere but in the request.
"""
import logging
import os
import threading
from typing import Any, Dict, Optional, Tuple

import grpc

from ..errors import Unprocessable
from ..proto import convert
from ..proto import sqlflow_pb2 as pb
from ..proto import sqlflow_pb2_grpc as pb_grpc
from .base import CANCELLED, FAILED, RUNNING, SUCCEEDED, TaskContext, TaskPlugin, TaskState
from .output import OutputLimitExceeded, ResponseLogOutput, ResponseWriter
from .sql_runner import cap_message, read_status, write_status

log = logging.getLogger(__name__)

NO_ENGINE = ("this playground has no SQLFlow engine configured (--sqlflow_server), so "
             "statements with TO TRAIN, TO PREDICT, TO EXPLAIN, TO EVALUATE or TO RUN "
             "cannot run here; standard SQL can (the sql task type)")
LOST = "the stream to the SQLFlow server was lost (the server following it is gone)"
RESTARTED = "the server restarted while this SQLFlow job was running"
RUN_TIMEOUT_S = 36000  # as the deployed client's
CANCEL_WAIT_S = 5.0  # how long delete waits for the stream's thread to end

# workdir -> the stream this process follows for the job there (removed when it ends)
_streams: Dict[str, "_Stream"] = {}
_status_lock = threading.Lock()


def _end(workdir: str, status: str, message: str) -> None:
    """Write the job's status unless it has one: whoever ends the job first (the stream,
    a cancel, a get that finds the stream gone) has the last word."""
    with _status_lock:
        if read_status(workdir) is None:
            write_status(workdir, status, message, {})


class _Stopped(Exception):
    """The job was cancelled: record nothing more."""


class _Stream:
    """One job's upstream call, on a thread of its own."""

    def __init__(self, plugin: "SqlflowPlugin", ctx: TaskContext, request: pb.Request):
        self.plugin, self.workdir = plugin, ctx.workdir
        self.credentials = plugin.credentials()
        self.limit = ctx.max_output_bytes
        self.stop = threading.Event()
        # Held while a response is recorded and while cancelling: once cancel() returns,
        # nothing more is written, so a CANCELLED status follows all of the output.
        self._lock = threading.Lock()
        self._call: Any = None  # the upstream call under way (Run, or one Fetch)
        self.thread = threading.Thread(target=self._run, args=(request,), daemon=True,
                                       name=f"sqlflow-{ctx.token[:8]}")

    def cancel(self) -> None:
        """Stop recording and close the upstream call, so the upstream sees its stream
        cancelled (and polling stops)."""
        with self._lock:
            self.stop.set()
            call = self._call
        if call is not None:
            call.cancel()

    def _started(self, call: Any) -> Any:
        with self._lock:
            self._call = call
            stopped = self.stop.is_set()
        if stopped:  # cancelled before the call existed
            call.cancel()
        return call

    def _record(self, out: ResponseWriter, response: pb.Response) -> None:
        with self._lock:
            if self.stop.is_set():
                raise _Stopped()
            out.write(convert.from_pb(response))
            out.flush()  # a polling reader sees it while the stream is still open

    def _run(self, request: pb.Request) -> None:
        status, message = FAILED, "internal error while following the SQLFlow job"
        try:
            server = self.plugin.server
            with (grpc.secure_channel(server, self.credentials) if self.credentials
                  else grpc.insecure_channel(server)) as channel:
                stub = pb_grpc.SQLFlowStub(channel)
                with ResponseWriter(os.path.join(self.workdir, SqlflowPlugin.output_file),
                                    limit=self.limit) as out:
                    status, message = self._follow(stub, request, out)
        except Exception:
            log.exception("following the SQLFlow job in %s failed", self.workdir)
        finally:
            _end(self.workdir, status, message)  # after the writer's last flush
            _streams.pop(self.workdir, None)

    def _follow(self, stub: pb_grpc.SQLFlowStub, request: pb.Request,
                out: ResponseWriter) -> Tuple[str, str]:
        server = self.plugin.server
        try:
            call = self._started(stub.Run(request, timeout=RUN_TIMEOUT_S))
            job = None
            for response in call:
                if response.WhichOneof("response") == "job":
                    job = response.job  # workflow mode: the rest comes from Fetch
                    call.cancel()  # the client stops reading here; so do we
                    break
                self._record(out, response)
            if job is not None:
                self._poll(stub, job, out)
            if self.stop.is_set():
                raise _Stopped()
            return SUCCEEDED, ""
        except _Stopped:
            return CANCELLED, "cancelled"
        except OutputLimitExceeded as e:
            self.cancel()
            return FAILED, cap_message(e.limit)
        except grpc.FutureCancelledError:  # a Fetch under way when the job was cancelled
            return CANCELLED, "cancelled"
        except grpc.RpcError as e:
            if self.stop.is_set():  # the CANCELLED error of the call cancel() closed
                return CANCELLED, "cancelled"
            code, details = e.code(), e.details() or ""
            if code == grpc.StatusCode.UNAVAILABLE:
                return FAILED, f"the SQLFlow server at {server} cannot be reached: {details}"
            return FAILED, f"the SQLFlow server failed: {code.name}: {details}"

    def _poll(self, stub: pb_grpc.SQLFlowStub, job: pb.Job, out: ResponseWriter) -> None:
        """Workflow mode, as the deployed client does it: Fetch until eof, sending back
        ``updated_fetch_since`` unchanged (the upstream owns the cursor)."""
        request = pb.FetchRequest(job=job)
        while not self.stop.is_set():
            answer = self._started(stub.Fetch.future(
                request, timeout=self.plugin.FETCH_TIMEOUT_S)).result()
            for response in answer.responses.response:
                self._record(out, response)
            if answer.eof:
                return
            request = answer.updated_fetch_since
            self.stop.wait(self.plugin.FETCH_INTERVAL_S)


class SqlflowPlugin(ResponseLogOutput, TaskPlugin):
    task_type = "sqlflow"
    version = "v1"
    description = ("Run SQLFlow statements (TO TRAIN, TO PREDICT, TO EXPLAIN, TO EVALUATE, "
                   "TO RUN) on the SQLFlow engine, against your own database.")
    spec_schema = {"type": "object", "required": ["sql"],
                   "properties": {"sql": {"type": "string", "minLength": 1},
                                  "submitter": {"type": "string"}},
                   "additionalProperties": False}
    needs_database = True
    runs_locally = True
    FETCH_INTERVAL_S = 2.0  # between Fetch polls in workflow mode, as the client's
    FETCH_TIMEOUT_S = 600.0  # for one Fetch

    def __init__(self, server: Optional[str] = None, ca_crt: Optional[str] = None):
        self.server = server or None  # "host:port"
        self.ca_crt = ca_crt or None  # a CA file: TLS to the server, else plaintext

    def credentials(self) -> Optional[grpc.ChannelCredentials]:
        """TLS trusting ``ca_crt`` (read at each job's start, so a renewed CA is picked up
        and an unreadable one fails the job at once), or None: plaintext."""
        if not self.ca_crt:
            return None
        with open(self.ca_crt, "rb") as fh:
            return grpc.ssl_channel_credentials(fh.read())

    def check_spec(self, spec: Dict[str, Any]) -> None:
        """Refused before the user's database is even looked at: with no engine nothing
        can run, database or not."""
        if not self.server:
            raise Unprocessable(NO_ENGINE)
        if not spec["sql"].strip():
            raise Unprocessable("spec.sql contains no statement")

    def create(self, ctx: TaskContext, spec: Dict[str, Any]) -> Dict[str, Any]:
        self.check_spec(spec)
        session = pb.Session(db_conn_str=ctx.data_source or "", user_id=ctx.user_id,
                             exit_on_submit=False, submitter=spec.get("submitter") or "")
        stream = _Stream(self, ctx, pb.Request(sql=spec["sql"], session=session))
        _streams[ctx.workdir] = stream
        stream.thread.start()
        log.info("sqlflow job %s… of %s forwarded to %s", ctx.token[:8], ctx.user_id,
                 self.server)
        return {"server": self.server}

    def get(self, ctx: TaskContext, meta: Dict[str, Any], cursor: str) -> TaskState:
        # Status first: once it is terminal, every response is already on disk.
        final = read_status(ctx.workdir)
        if final is None:
            stream = _streams.get(ctx.workdir)
            if stream is None or not stream.thread.is_alive():
                _end(ctx.workdir, FAILED, LOST)  # unless it ended just before the check
                final = read_status(ctx.workdir)
        final = final or {"status": RUNNING}
        responses, next_cursor, _ = self.read_output(ctx, cursor, False)
        return TaskState(final["status"], final.get("message", ""), responses,
                         cursor=next_cursor, outputs=final.get("outputs") or {})

    def delete(self, ctx: TaskContext, meta: Dict[str, Any]) -> None:
        stream = _streams.get(ctx.workdir)
        if stream is not None:
            stream.cancel()
            stream.thread.join(CANCEL_WAIT_S)
        _end(ctx.workdir, CANCELLED, "cancelled")

    def recover(self, ctx: TaskContext, meta: Dict[str, Any]) -> Optional[str]:
        """A job that ended keeps its status; one whose stream died with its server is
        FAILED (the stream cannot be picked up again: SQLFlow's Run is not resumable)."""
        if read_status(ctx.workdir) is not None:
            return None
        stream = _streams.get(ctx.workdir)
        if stream is not None:
            stream.cancel()
        _end(ctx.workdir, FAILED, RESTARTED)
        return RESTARTED
