"""A fake upstream SQLFlow gRPC server for tests: it answers ``Run`` and ``Fetch`` as a
test scripts it, and records what it was asked and whether the client hung up.

    with FakeSQLFlow() as fake:
        fake.script = Script([{"head": ["a"]}, {"row": [1]}, {"eoe": True}], delay=0.5)
        ... point the client at fake.address ...
        assert fake.runs[0].request.session.user_id == "alice"
        assert fake.runs[0].cancelled.wait(10)

Responses are given as the job service's JSON responses (``proto.convert.to_pb``) or as
``sqlflow_pb2.Response`` messages.
"""
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

import grpc

from sqlflow_playground.proto import convert
from sqlflow_playground.proto import sqlflow_pb2 as pb
from sqlflow_playground.proto import sqlflow_pb2_grpc as pb_grpc

#: how long a held stream (``Script.hold``) waits for its client at most
HOLD_LIMIT_S = 120.0


@dataclass
class Script:
    """What the next ``Run`` calls answer."""

    responses: Sequence[Any] = ()
    delay: float = 0.0  # seconds before each response (Run) or each Fetch answer
    #: end with this (code, details) after the responses (Run, or the last Fetch)
    fail: Optional[Tuple[grpc.StatusCode, str]] = None
    #: keep the Run stream open after the responses until the client cancels it
    hold: bool = False
    #: workflow mode: Run answers Response{job}; Fetch pages the responses, ``page`` at
    #: a time, the cursor in ``step_id``, eof on the last page
    workflow: bool = False
    page: int = 2
    job: pb.Job = field(default_factory=lambda: pb.Job(id="sqlflow-job-1", namespace="ns"))


@dataclass
class RunRecord:
    """One ``Run`` call as the fake saw it."""

    request: pb.Request
    cancelled: Any  # threading.Event: the client cancelled the stream before its end
    ended: Any  # threading.Event: the RPC is over, however it ended
    sent: int = 0  # responses sent


def _pb(response: Any) -> pb.Response:
    return response if isinstance(response, pb.Response) else convert.to_pb(response)


def _sleep(context: grpc.ServicerContext, seconds: float) -> bool:
    """Sleep while the client is there; False if it went away."""
    deadline = time.monotonic() + seconds
    while context.is_active() and time.monotonic() < deadline:
        time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
    return context.is_active()


class _Servicer(pb_grpc.SQLFlowServicer):
    def __init__(self, fake: "FakeSQLFlow"):
        self.fake = fake

    def Run(self, request: pb.Request, context: grpc.ServicerContext):
        script = self.fake.script
        record = RunRecord(request, threading.Event(), threading.Event())
        self.fake.runs.append(record)
        finished = []  # set when the handler ends by itself (normally or failing)

        def on_done() -> None:
            if not finished:
                record.cancelled.set()
            record.ended.set()
        context.add_callback(on_done)
        if script.workflow:
            finished.append(True)
            record.sent += 1
            yield pb.Response(job=script.job)
            return
        for response in script.responses:
            if not _sleep(context, script.delay):
                return
            record.sent += 1
            yield _pb(response)
        if script.hold:
            _sleep(context, HOLD_LIMIT_S)
            return
        finished.append(True)
        if script.fail is not None:
            context.abort(*script.fail)

    def Fetch(self, request: pb.FetchRequest, context: grpc.ServicerContext):
        script = self.fake.script
        self.fake.fetches.append(request)
        if request.job.id != script.job.id:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job.id!r}")
        _sleep(context, script.delay)
        start = int(request.step_id or 0)
        end = min(start + script.page, len(script.responses))
        eof = end >= len(script.responses)
        if eof and script.fail is not None:
            context.abort(*script.fail)
        # step_phase is set so that a test can see the cursor came back unchanged.
        return pb.FetchResponse(
            updated_fetch_since=pb.FetchRequest(job=request.job, step_id=str(end),
                                                step_phase=f"phase-{end}"),
            eof=eof,
            responses=pb.FetchResponse.Responses(
                response=[_pb(r) for r in script.responses[start:end]]))


class FakeSQLFlow:
    """A SQLFlow server on 127.0.0.1 (a free port), plaintext or, given
    ``credentials`` (``grpc.ssl_server_credentials``), TLS. ``script`` says how it answers;
    ``runs`` and ``fetches`` record what it was asked."""

    def __init__(self, script: Optional[Script] = None,
                 credentials: Optional[grpc.ServerCredentials] = None, workers: int = 8):
        self.script = script or Script()
        self.runs: List[RunRecord] = []
        self.fetches: List[pb.FetchRequest] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
        pb_grpc.add_SQLFlowServicer_to_server(_Servicer(self), self._server)
        if credentials is None:
            self.port = self._server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self._server.add_secure_port("127.0.0.1:0", credentials)
        self._server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def requests(self) -> List[pb.Request]:
        return [run.request for run in self.runs]

    def stop(self) -> None:
        """Stop serving; open streams are cancelled (held ones end at once)."""
        self._server.stop(grace=None).wait(10)

    def __enter__(self) -> "FakeSQLFlow":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
