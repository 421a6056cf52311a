"""The deployed notebook client's flow (``sqlflow.Client`` 0.15, ``../shared/SQLFLOW_PROTOCOL.md``)
replayed with stubs generated from the package's own ``.proto``: Run, read the stream
until a ``job``, then Fetch from ``{job: {id}}``, reading each answer's responses as the
client does (a table closes at ``eoe``, and nothing after an ``eoe`` in one answer is
read), sending back ``updated_fetch_since`` unchanged after a sleep, until ``eof``.

What the client would show is recorded in ``Cell``: messages in order, tables (columns,
rows with values unpacked as ``Client._decode_any`` does), every FetchRequest sent, and
the responses a real client would have ignored (a test asserts there are none).
"""
import time
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

import grpc
from google.protobuf import wrappers_pb2 as wrapper
from google.protobuf.timestamp_pb2 import Timestamp

from sqlflow_playground.proto import sqlflow_pb2 as pb
from sqlflow_playground.proto import sqlflow_pb2_grpc as pb_grpc


@dataclass
class Cell:
    job_id: str = ""
    messages: List[str] = field(default_factory=list)
    tables: List[Tuple[List[str], List[List[Any]]]] = field(default_factory=list)
    requests: List[pb.FetchRequest] = field(default_factory=list)
    ignored: List[pb.Response] = field(default_factory=list)  # after an eoe in one answer
    answers: int = 0


def decode_any(any_message) -> Any:
    """``sqlflow.Client._decode_any``: the first wrapper type that matches, else Null."""
    for type_name, desc in wrapper.DESCRIPTOR.message_types_by_name.items():
        if any_message.Is(desc):
            message = getattr(wrapper, type_name)()
            any_message.Unpack(message)
            return message.value
    if any_message.Is(pb.Row.Null.DESCRIPTOR):
        return None
    if any_message.Is(Timestamp.DESCRIPTOR):
        stamp = Timestamp()
        any_message.Unpack(stamp)
        return stamp.ToDatetime()
    raise TypeError(f"Unsupported type {any_message}")


def session(db_conn_str: str = "", user_id: str = "", **kw: Any) -> pb.Session:
    """As ``Client.sql_request`` fills it from the environment (exit_on_submit: True)."""
    return pb.Session(db_conn_str=db_conn_str, user_id=user_id, exit_on_submit=True, **kw)


def channel(port: int, ca: Optional[str], key: Optional[bytes] = None,
            cert: Optional[bytes] = None) -> grpc.Channel:
    """``Client.new_rpc_channel``: TLS with the CA when given (``key``/``cert``: a client
    certificate, which the deployed client never presents), else plain."""
    target = f"localhost:{port}"
    if ca is None:
        return grpc.insecure_channel(target)
    with open(ca, "rb") as fh:
        creds = grpc.ssl_channel_credentials(fh.read(), private_key=key,
                                             certificate_chain=cert)
    return grpc.secure_channel(target, creds)


def run_cell(stub: pb_grpc.SQLFlowStub, sql: str, sess: pb.Session, sleep_s: float = 2.0,
             max_answers: int = 10_000) -> Cell:
    """Run ``sql`` as the client does; a gRPC error propagates as it does there."""
    cell = Cell()
    stream = stub.Run(pb.Request(sql=sql, session=sess), timeout=36000)
    for response in stream:
        kind = response.WhichOneof("response")
        if kind == "job":
            cell.job_id = response.job.id
            break
        if kind == "message":
            cell.messages.append(response.message.message)
    else:
        return cell
    req = pb.FetchRequest(job=pb.Job(id=cell.job_id))
    columns, rows = None, []
    while cell.answers < max_answers:
        cell.requests.append(req)
        answer = stub.Fetch(req)
        cell.answers += 1
        listed = list(answer.responses.response)
        for i, response in enumerate(listed):
            kind = response.WhichOneof("response")
            if kind == "message":
                cell.messages.append(response.message.message)
            elif kind == "eoe":
                if rows:
                    cell.tables.append((columns, rows))
                rows = []
                cell.ignored.extend(listed[i + 1:])
                break
            elif kind == "head":
                columns = list(response.head.column_names)
            elif kind == "row":
                rows.append([decode_any(d) for d in response.row.data])
        if answer.eof:
            break
        req = answer.updated_fetch_since
        time.sleep(sleep_s)
    return cell
