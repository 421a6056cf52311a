"""The package's sqlflow.proto is SQLFlow's wire protocol (../shared/SQLFLOW_PROTOCOL.md),
and the generated modules checked in are what scripts/gen_proto.sh makes of it."""
import subprocess
import sys
from pathlib import Path

from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.descriptor import FieldDescriptor as F

from sqlflow_playground.proto import convert
from sqlflow_playground.proto import sqlflow_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT / "sqlflow_playground" / "proto"

# (message, field number, name, type) from the protocol document's table.
S, B, I64, MSG = F.TYPE_STRING, F.TYPE_BOOL, F.TYPE_INT64, F.TYPE_MESSAGE
EXPECTED = {
    "Job": [(1, "id", S), (2, "namespace", S)],
    "FetchRequest": [(1, "job", MSG), (2, "step_id", S), (3, "step_phase", S)],
    "FetchResponse": [(1, "updated_fetch_since", MSG), (2, "eof", B), (4, "responses", MSG)],
    "FetchResponse.Responses": [(1, "response", MSG)],
    "Session": [(1, "token", S), (2, "db_conn_str", S), (3, "exit_on_submit", B),
                (4, "user_id", S), (5, "hive_location", S), (6, "hdfs_namenode_addr", S),
                (7, "hdfs_user", S), (8, "hdfs_pass", S), (9, "submitter", S),
                (10, "service_account", S), (11, "wf_namespace", S)],
    "Request": [(1, "sql", S), (2, "session", MSG)],
    "Response": [(1, "head", MSG), (2, "row", MSG), (3, "message", MSG), (4, "eoe", MSG),
                 (5, "job", MSG)],
    "Head": [(1, "column_names", S)],
    "Row": [(1, "data", MSG)],
    "Row.Null": [],
    "Message": [(1, "message", S)],
    "EndOfExecution": [(1, "sql", S), (2, "spent_time_seconds", I64)],
}


def _message(name):
    descriptor = pb.DESCRIPTOR.message_types_by_name[name.split(".")[0]]
    for nested in name.split(".")[1:]:
        descriptor = descriptor.nested_types_by_name[nested]
    return descriptor


def test_messages_match_the_protocol_document():
    assert pb.DESCRIPTOR.package == "proto"
    for name, fields in EXPECTED.items():
        got = [(f.number, f.name, f.type) for f in _message(name).fields]
        assert got == fields, name
    assert _message("Row").fields_by_name["data"].message_type.full_name == \
        "google.protobuf.Any"
    assert _message("Row").fields_by_name["data"].is_repeated
    assert _message("Head").fields_by_name["column_names"].is_repeated
    assert [f.name for f in _message("Response").oneofs_by_name["response"].fields] == \
        ["head", "row", "message", "eoe", "job"]


def test_service_paths_and_streaming_match():
    service = pb.DESCRIPTOR.services_by_name["SQLFlow"]
    assert service.full_name == "proto.SQLFlow"
    run, fetch = service.methods_by_name["Run"], service.methods_by_name["Fetch"]
    assert (run.input_type.name, run.output_type.name) == ("Request", "Response")
    assert (run.client_streaming, run.server_streaming) == (False, True)
    assert (fetch.input_type.name, fetch.output_type.name) == ("FetchRequest",
                                                               "FetchResponse")
    assert (fetch.client_streaming, fetch.server_streaming) == (False, False)


def test_checked_in_modules_are_what_the_proto_generates(tmp_path):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}",
                    f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                    str(PROTO / "sqlflow.proto")], check=True, cwd=ROOT)
    for name in ("sqlflow_pb2.py", "sqlflow_pb2_grpc.py"):
        generated = (tmp_path / "sqlflow_playground" / "proto" / name).read_text()
        assert generated == (PROTO / name).read_text(), \
            f"{name} is stale: run scripts/gen_proto.sh"


def test_values_round_trip_through_any():
    values = [0, -1, 2 ** 63 - 1, 2 ** 64 - 1, 2 ** 70, 1.5, float("-0.0"), "", "日本",
              True, False, None, [1, "a"], {"k": None}]
    packed = [convert.value_to_any(v) for v in values]
    kinds = [p.TypeName() for p in packed]
    assert kinds == ["google.protobuf.Int64Value"] * 3 + [
        "google.protobuf.UInt64Value", "google.protobuf.StringValue",
        "google.protobuf.DoubleValue", "google.protobuf.DoubleValue",
        "google.protobuf.StringValue", "google.protobuf.StringValue",
        "google.protobuf.BoolValue", "google.protobuf.BoolValue", "proto.Row.Null",
        "google.protobuf.StringValue", "google.protobuf.StringValue"]
    back = [convert.any_to_value(p) for p in packed]
    assert back == [0, -1, 2 ** 63 - 1, 2 ** 64 - 1, str(2 ** 70), 1.5, -0.0, "", "日本",
                    True, False, None, '[1,"a"]', '{"k":null}']
    nan = any_pb2.Any()
    nan.Pack(wrappers_pb2.DoubleValue(value=float("nan")))
    assert convert.any_to_value(nan) == "nan"  # JSON has no NaN


def test_responses_round_trip():
    for response in ({"message": "hi"}, {"head": ["a", "b"]}, {"row": [1, None, "x"]},
                     {"eoe": True}, {"eoe": True, "sql": "SELECT 1", "spent_time_seconds": 3}):
        assert convert.from_pb(convert.to_pb(response)) == response
    # A shape SQLFlow has no field for is kept as a message, not dropped.
    assert convert.to_pb({"status": "x"}).message.message == '{"status":"x"}'
