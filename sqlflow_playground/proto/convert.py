"""Between the job service's JSON responses and SQLFlow's protobuf ``Response``s.

A job's output is a list of JSON responses (DESIGN §5): ``{"message": text}``,
``{"head": [column, …]}``, ``{"row": [value, …]}``, ``{"eoe": true}`` (optionally with
``sql`` and ``spent_time_seconds``). SQLFlow's protocol carries the same four shapes, a
row's values packed in ``google.protobuf.Any`` as the wrapper types the deployed client
unpacks (``sqlflow.Client._decode_any``): integers as ``Int64Value`` (``UInt64Value`` past
int64, text past uint64), floats as ``DoubleValue``, text as ``StringValue``, booleans as
``BoolValue``, SQL NULL as ``Row.Null``; dates and times are already ISO-8601 text.
"""
import json
import math
from typing import Any, Dict

from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from . import sqlflow_pb2 as pb

INT64 = (-(1 << 63), (1 << 63) - 1)
UINT64_MAX = (1 << 64) - 1

_WRAPPERS = (wrappers_pb2.Int64Value, wrappers_pb2.DoubleValue, wrappers_pb2.StringValue,
             wrappers_pb2.BoolValue, wrappers_pb2.UInt64Value, wrappers_pb2.Int32Value,
             wrappers_pb2.UInt32Value, wrappers_pb2.FloatValue, wrappers_pb2.BytesValue)
_NULL_ANY = any_pb2.Any()
_NULL_ANY.Pack(pb.Row.Null())


def value_to_any(value: Any) -> any_pb2.Any:
    """One JSON value of a row, packed as the deployed client unpacks it."""
    packed = any_pb2.Any()
    if value is None:
        packed.CopyFrom(_NULL_ANY)
    elif isinstance(value, bool):  # before int: a bool is an int
        packed.Pack(wrappers_pb2.BoolValue(value=value))
    elif isinstance(value, int):
        if INT64[0] <= value <= INT64[1]:
            packed.Pack(wrappers_pb2.Int64Value(value=value))
        elif 0 <= value <= UINT64_MAX:
            packed.Pack(wrappers_pb2.UInt64Value(value=value))
        else:
            packed.Pack(wrappers_pb2.StringValue(value=str(value)))
    elif isinstance(value, float):
        packed.Pack(wrappers_pb2.DoubleValue(value=value))
    elif isinstance(value, str):
        packed.Pack(wrappers_pb2.StringValue(value=value))
    else:  # a list or an object: a JSON value the row kept as is
        packed.Pack(wrappers_pb2.StringValue(value=json.dumps(value, separators=(",", ":"))))
    return packed


def any_to_value(packed: any_pb2.Any) -> Any:
    """A row value received from a SQLFlow server, as JSON: the wrapper's value, None for
    ``Row.Null``, ISO-8601 text for a ``Timestamp``, text for bytes (UTF-8,
    else ``base64:…``, as the ``sql`` task type writes them), the type's name otherwise."""
    for wrapper in _WRAPPERS:
        if packed.Is(wrapper.DESCRIPTOR):
            message = wrapper()
            packed.Unpack(message)
            value = message.value
            if isinstance(value, bytes):
                try:
                    return value.decode("utf-8")
                except UnicodeDecodeError:
                    import base64
                    return "base64:" + base64.b64encode(value).decode()
            if isinstance(value, float) and not math.isfinite(value):
                return str(value)  # NaN is not JSON; the sql task type writes "nan" too
            return value
    if packed.Is(pb.Row.Null.DESCRIPTOR):
        return None
    if packed.Is(Timestamp.DESCRIPTOR):
        stamp = Timestamp()
        packed.Unpack(stamp)
        return stamp.ToJsonString()
    return f"<{packed.TypeName() or 'unknown type'}>"


def to_pb(response: Dict[str, Any]) -> pb.Response:
    """One JSON response as a protobuf ``Response``; a shape SQLFlow has no field for
    becomes a ``message`` holding its JSON, so nothing is dropped silently."""
    if isinstance(response, dict):
        if isinstance(response.get("message"), str) and len(response) == 1:
            return pb.Response(message=pb.Message(message=response["message"]))
        if isinstance(response.get("row"), list):
            return pb.Response(row=pb.Row(data=[value_to_any(v) for v in response["row"]]))
        if isinstance(response.get("head"), list):
            return pb.Response(head=pb.Head(column_names=[str(c) for c in response["head"]]))
        if response.get("eoe"):
            spent = response.get("spent_time_seconds")
            return pb.Response(eoe=pb.EndOfExecution(
                sql=str(response.get("sql") or ""),
                spent_time_seconds=int(spent) if isinstance(spent, (int, float))
                and math.isfinite(spent) else 0))
    return pb.Response(message=pb.Message(
        message=json.dumps(response, separators=(",", ":"), default=str)))


def from_pb(response: pb.Response) -> Dict[str, Any]:
    """A protobuf ``Response`` from a SQLFlow server as the JSON response a job records."""
    kind = response.WhichOneof("response")
    if kind == "message":
        return {"message": response.message.message}
    if kind == "head":
        return {"head": list(response.head.column_names)}
    if kind == "row":
        return {"row": [any_to_value(v) for v in response.row.data]}
    if kind == "eoe":
        out: Dict[str, Any] = {"eoe": True}
        if response.eoe.sql:
            out["sql"] = response.eoe.sql
        if response.eoe.spent_time_seconds:
            out["spent_time_seconds"] = response.eoe.spent_time_seconds
        return out
    if kind == "job":
        return {"job": {"id": response.job.id, "namespace": response.job.namespace}}
    return {"message": ""}
