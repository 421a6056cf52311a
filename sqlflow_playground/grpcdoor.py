"""SQLFlow's own door: gRPC ``Run``/``Fetch`` (``../shared/SQLFLOW_PROTOCOL.md``) over the
same job service as ``/api/jobs``, so the deployed notebook client (``sqlflow.Client``
behind ``%%sqlflow``) runs its cells here and polls for their output.

* ``Run`` identifies the caller, submits the cell as one job and streams back one
  ``Response{job}``: the client then polls ``Fetch``. Standard SQL is a ``sql`` job on the
  caller's own database; a cell with a statement that needs the SQLFlow engine (``TO
  TRAIN``/``PREDICT``/``EXPLAIN``/``EVALUATE``/``RUN``, ``SHOW TRAIN``) is a ``sqlflow`` job,
  which forwards it to ``--sqlflow_server``. Same quotas, abandonment, TTL, listing.
* ``Fetch`` pages the job's output. The cursor travels in ``updated_fetch_since``, which
  the client echoes back unchanged: ``step_id`` is ``SKIP:CURSOR`` (the job service's
  cursor, and how many responses of the page read from it were handed over already),
  ``step_phase`` is ``table`` inside a table, ``failed`` once a failed job's error went
  out as a message. An answer ends right after an ``eoe`` (the deployed client reads
  nothing past one; an ``eoe`` that closes no table is left out), holds at most
  ``fetch_page_bytes`` of protobuf (and less than the client's 4 MiB receive limit), and
  says ``eof`` only when the job ended and everything was handed over. A job that did not
  succeed ends with its error as a ``message``, then, at the next Fetch, a gRPC status
  (``UNKNOWN`` for FAILED, as a SQLFlow server reports a statement's error; ``CANCELLED``
  for CANCELLED) whose details say why.

Who is calling (DESIGN §4, §10): a client certificate, when presented, must chain to the
CA and names the caller as on REST (``tlsrelay.py``). Without one, the caller is the user
whose data source equals ``Session.db_conn_str`` (compared in constant time; every
provisioner's data source carries a random secret, so it is a bearer secret), and
``Session.user_id``, when set, must name that user. ``Fetch`` carries no session, so a
job id handed to a certificate-less caller is ``TOKEN.PROOF``: PROOF is an HMAC of the
token keyed with the owner's data source, which only its holder could have been given; a
bare token (say, one seen in a listing) is refused.
"""
import base64
import collections
import hashlib
import hmac
import logging
import re
import time
from typing import Any, Dict, List, Optional, Tuple

import grpc

from .errors import (BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge,
                     PlaygroundError, QuotaExceeded, Unavailable, Unprocessable)
from .identity import USER_ID_RE, Identity
from .plugins.base import CANCELLED, SUCCEEDED
from .plugins.sqlsplit import code_only, split_statements
from .provisioners.mysql import without_address
from .proto import sqlflow_pb2 as pb
from .proto import sqlflow_pb2_grpc as pb_grpc
from .proto.convert import to_pb
from .store import READY

log = logging.getLogger(__name__)

FETCH_WAIT_S = 1.0  # a Fetch of a running job waits this long for news (the client then sleeps 2 s)
CLIENT_RECEIVE_LIMIT = 4 << 20  # gRPC's default max receive size: the deployed client's
ANSWER_MARGIN = 64 << 10  # room for the FetchResponse around its responses
MAX_REQUEST_BYTES = 1 << 20  # a Run's cell: as large as a REST body may be
MAX_CONCURRENT_CALLS = 4096  # beyond, gRPC answers RESOURCE_EXHAUSTED
PROOF_CACHE_SIZE, PROOF_CACHE_S = 4096, 30.0  # see _by_proof
ENGINE_RE = re.compile(r"\bTO\s+(TRAIN|PREDICT|EXPLAIN|EVALUATE|RUN)\b|^\s*SHOW\s+TRAIN\b",
                       re.IGNORECASE)
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PROOF_CHARS = 32  # base64url characters of the HMAC kept in a job id: 192 bits
FAILED_PHASE = "failed"  # step_phase once a failed job's error went out as a message
TABLE_PHASE = "table"  # step_phase while a table's head went out and its eoe did not
_CODES = [(BadRequest, grpc.StatusCode.INVALID_ARGUMENT),
          (PayloadTooLarge, grpc.StatusCode.INVALID_ARGUMENT),
          (Unprocessable, grpc.StatusCode.FAILED_PRECONDITION),
          (Forbidden, grpc.StatusCode.PERMISSION_DENIED),
          (NotFound, grpc.StatusCode.NOT_FOUND),
          (Conflict, grpc.StatusCode.FAILED_PRECONDITION),
          (QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
          (Unavailable, grpc.StatusCode.UNAVAILABLE)]


def status_code(error: PlaygroundError) -> grpc.StatusCode:
    """The gRPC status of a domain error (the REST side's HTTP status, in gRPC's words)."""
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def needs_engine(statement: str) -> bool:
    """Whether a statement is SQLFlow's extended syntax, which only its engine runs."""
    return ENGINE_RE.search(code_only(statement)) is not None


def has_secret(data_source: str) -> bool:
    """Whether a data source holds a secret worth the name: a MySQL password, or the
    ``secret`` of a sqlite one (the sqlite provisioner adds one since the gRPC door)."""
    if data_source.startswith("sqlite:///"):
        _, _, query = data_source.partition("?")
        secret = dict(p.partition("=")[::2] for p in query.split("&")).get("secret", "")
        return len(secret) >= 16
    match = re.match(r"^mysql://[^:@/]*:(?P<password>[^@]*)@", data_source)
    return match is not None and len(match["password"]) >= 16


def fetch_proof(data_source: str, token: str) -> str:
    """What a certificate-less caller shows, beside the token, to fetch its job. Keyed
    with the data source's secret part: its MySQL address follows the server's flags."""
    data_source = without_address(data_source)
    digest = hmac.new(data_source.encode(), b"sqlflow-playground fetch " + token.encode(),
                      hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode()[:PROOF_CHARS]


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class SQLFlowDoor(pb_grpc.SQLFlowServicer):
    """The servicer: thin, as the REST handlers are; the job service does the work."""

    def __init__(self, jobs, store, runner, metrics=None, relay=None):
        self.jobs = jobs
        self.store = store
        self.runner = runner
        self.metrics = metrics
        self.relay = relay  # tlsrelay.TlsRelay, None when the door serves plain gRPC
        page = jobs.settings.fetch_page_bytes
        self.answer_bytes = max(1, min(page, CLIENT_RECEIVE_LIMIT - ANSWER_MARGIN))
        #: (token, proof) -> (owner, when proven): a polling client's next Fetches skip
        #: the two store reads that prove it
        self._proven: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()

    # -- the two methods -------------------------------------------------------------

    async def Run(self, request: pb.Request, context) -> Any:
        job_id = await self._call("Run", self._run, request, context)
        yield pb.Response(job=pb.Job(id=job_id))

    async def Fetch(self, request: pb.FetchRequest, context) -> pb.FetchResponse:
        return await self._call("Fetch", self._fetch, request, context)

    async def _call(self, method: str, work, request, context) -> Any:
        """``work``'s answer; a refusal as its status with a clear message, a bug as
        INTERNAL without its details (they are in the server log), and never a trace."""
        started = time.monotonic()
        try:
            answer = await work(request, context)
        except (_Refused, PlaygroundError) as e:
            code, message = _refusal(e)
        except Exception:
            log.exception("gRPC %s failed", method)
            code, message = grpc.StatusCode.INTERNAL, \
                "internal error of the playground; its log says more"
        else:
            self._observe(method, grpc.StatusCode.OK, started)
            return answer
        self._observe(method, code, started)
        await context.abort(code, message)

    # -- Run ------------------------------------------------------------------------

    async def _run(self, request: pb.Request, context) -> str:
        certified, identity = self._certificate(context)
        session = request.session
        if identity is not None:
            user_id = identity.act_for(session.user_id or None)
            data_source = None
        else:
            user_id, data_source = await self._by_data_source(session)
        statements = split_statements(request.sql)
        if not statements:
            raise BadRequest("the request holds no SQL statement")
        task_type = "sqlflow" if any(needs_engine(s) for s in statements) else "sql"
        spec: Dict[str, Any] = {"sql": request.sql}
        if task_type == "sqlflow" and session.submitter:
            spec["submitter"] = session.submitter
        job = await self.jobs.submit(user_id, task_type, None, spec)
        token = job["token"]
        log.info("gRPC Run: job %s… (%s) for %s, %s", token[:8], task_type, user_id,
                 "by certificate" if certified else "by data source")
        return token if data_source is None else f"{token}.{fetch_proof(data_source, token)}"

    async def _by_data_source(self, session: pb.Session) -> Tuple[str, str]:
        """(user, data source) that ``Session.db_conn_str`` proves, or refuse."""
        given = session.db_conn_str
        if not given:
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED,
                           "who are you? present a client certificate, or set "
                           "SQLFLOW_DATASOURCE to the data source create_db gave you")
        if session.user_id and not USER_ID_RE.match(session.user_id):
            raise BadRequest("Session.user_id (SQLFLOW_USER_ID) is not a valid user id")
        if session.user_id:
            user = await self.runner.run(self.store.get_user, session.user_id)
            candidates = [user] if user is not None else []
        else:
            candidates = await self.runner.run(self.store.list_users)
        owner = None
        for user in candidates:  # every comparison in constant time, all of them made
            # The address is not part of the proof: it is the one users get now
            # (--mysql_public_host), while the store keeps the one jobs use.
            if hmac.compare_digest(without_address(user.get("data_source") or ""),
                                   without_address(given)) and owner is None:
                owner = user
        if owner is None:
            raise _Refused(grpc.StatusCode.PERMISSION_DENIED,
                           "this data source is not " + (
                               f"user {session.user_id!r}'s" if session.user_id else
                               "any user's") + " on this playground: set SQLFLOW_DATASOURCE "
                           "to what create_db returned (a released database's is void)")
        if not has_secret(given):
            raise _Refused(grpc.StatusCode.PERMISSION_DENIED,
                           "this database's data source carries no secret, so it cannot "
                           "prove who you are: release it (delete_db) and create it again")
        if owner["status"] != READY:
            raise Conflict(f"user {owner['user_id']!r} has no database ready "
                           f"({owner['status']}); call create_db first")
        return owner["user_id"], given

    # -- Fetch ----------------------------------------------------------------------

    async def _fetch(self, request: pb.FetchRequest, context) -> pb.FetchResponse:
        token, _, proof = request.job.id.partition(".")
        if not TOKEN_RE.match(token):
            raise BadRequest("job.id is not a job id that Run returned")
        skip, cursor = _parse_step(request.step_id)
        _, viewer = self._certificate(context)
        if viewer is None:
            viewer = await self._by_proof(token, proof)
        answer = await self.jobs.fetch(viewer, token, cursor,
                                       wait=0.0 if skip else FETCH_WAIT_S)
        if skip > len(answer["responses"]):
            raise BadRequest("updated_fetch_since was changed: send it back as Fetch "
                             "returned it")
        responses, used, in_table = self._answer(
            answer["responses"][skip:], request.step_phase == TABLE_PHASE, token)
        whole = skip + used == len(answer["responses"])
        since = pb.FetchRequest(job=request.job, step_phase=TABLE_PHASE if in_table else "",
                                step_id=f"0:{answer['next']}" if whole
                                else f"{skip + used}:{cursor}")
        eof = whole and answer["eof"]
        if eof and answer["status"] != SUCCEEDED:
            # Its error as a message, then (next Fetch) as the call's status.
            if request.step_phase == FAILED_PHASE:
                raise _Refused(grpc.StatusCode.CANCELLED if answer["status"] == CANCELLED
                               else grpc.StatusCode.UNKNOWN,
                               f"job {answer['status']}: {answer['message']}")
            if not responses or responses[-1].WhichOneof("response") != "eoe":
                responses.append(pb.Response(message=pb.Message(
                    message=f"ERROR: job {answer['status']}: {answer['message']}")))
                since.step_phase = FAILED_PHASE
            eof = False
        return pb.FetchResponse(updated_fetch_since=since, eof=eof,
                                responses=pb.FetchResponse.Responses(response=responses))

    def _answer(self, page: List[Dict[str, Any]], in_table: bool,
                token: str) -> Tuple[List[pb.Response], int, bool]:
        """(the responses of one answer, how many of ``page`` they used, whether a table
        is open at its end). The deployed client reads nothing past an ``eoe`` in an
        answer, so one ends at an ``eoe``; an ``eoe`` that closes no table (a statement
        without rows) tells the client nothing and is left out, so the messages of many
        statements share an answer rather than costing a poll (2 s) each."""
        responses: List[pb.Response] = []
        used = size = 0
        for response in page:
            message = to_pb(response)
            kind = message.WhichOneof("response")
            if kind == "eoe" and not in_table:
                used += 1
                continue
            n = message.ByteSize() + 8
            if responses and size + n > self.answer_bytes:
                break
            if n > CLIENT_RECEIVE_LIMIT - ANSWER_MARGIN:
                message = pb.Response(message=pb.Message(message=(
                    f"a response of {n} bytes was left out: the SQLFlow client takes at "
                    f"most {CLIENT_RECEIVE_LIMIT} bytes per Fetch; read it with "
                    f"GET /api/jobs/{token}")))
            responses.append(message)
            used, size = used + 1, size + n
            if kind == "head":
                in_table = True
            elif kind == "eoe":
                in_table = False
                break
        return responses, used, in_table

    async def _by_proof(self, token: str, proof: str) -> Identity:
        if not proof:
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED,
                           "this job id carries no proof of who you are: use the id Run "
                           "returned, or present a client certificate")
        now = time.monotonic()
        proven = self._proven.get((token, proof))
        if proven is not None and now - proven[1] < PROOF_CACHE_S:
            return Identity(name=proven[0])
        job = await self.runner.run(self.store.get_job, token)
        owner = job and await self.runner.run(self.store.get_user, job["user_id"])
        expected = fetch_proof(owner.get("data_source") or "", token) if owner else ""
        if not hmac.compare_digest(expected.encode(), proof.encode()) or not expected:
            raise NotFound("no such job")  # as REST says it of another user's job
        self._proven[(token, proof)] = (job["user_id"], now)
        while len(self._proven) > PROOF_CACHE_SIZE:
            self._proven.popitem(last=False)
        return Identity(name=job["user_id"])

    # -- helpers ----------------------------------------------------------------------

    def _certificate(self, context) -> Tuple[bool, Optional[Identity]]:
        """(whether a client certificate named the caller, that identity)."""
        if self.relay is None:
            return False, None
        known, identity = self.relay.peer_identity(context.peer())
        if not known:
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED,
                           "connect through the gateway's gRPC port")
        return identity is not None, identity

    def _observe(self, method: str, code: grpc.StatusCode, started: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_grpc(method, code.name, time.monotonic() - started)


def _parse_step(step_id: str) -> Tuple[int, str]:
    if not step_id:
        return 0, ""
    skip, sep, cursor = step_id.partition(":")
    if not sep or not skip.isdigit() or len(skip) > 9:
        raise BadRequest("updated_fetch_since was changed: send it back as Fetch returned it")
    return int(skip), cursor


def _refusal(error: Exception) -> Tuple[grpc.StatusCode, str]:
    if isinstance(error, _Refused):
        return error.code, error.message
    return status_code(error), error.message


async def start_door(door: SQLFlowDoor, address: str) -> Tuple[grpc.aio.Server, int]:
    """A gRPC server on the running loop serving ``door`` in plain text at ``address``."""
    server = grpc.aio.server(maximum_concurrent_rpcs=MAX_CONCURRENT_CALLS, options=[
        ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
        ("grpc.max_send_message_length", CLIENT_RECEIVE_LIMIT),
        ("grpc.so_reuseport", 0),
    ])
    pb_grpc.add_SQLFlowServicer_to_server(door, server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:  # grpcio's word for a port it cannot bind
        port = 0
    if not port:
        raise OSError(f"cannot listen on {address} for gRPC (--grpc_port): is the port "
                      "in use?")
    await server.start()
    return server, port


__all__: List[str] = ["SQLFlowDoor", "start_door", "needs_engine", "has_secret",
                      "fetch_proof", "status_code"]
