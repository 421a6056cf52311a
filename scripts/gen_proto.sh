#!/usr/bin/env bash
# Regenerate sqlflow_playground/proto/sqlflow_pb2.py and sqlflow_pb2_grpc.py from
# sqlflow.proto (needs grpcio-tools: pip install -e '.[test]'). The generated modules are
# checked in; tests/test_grpc_proto.py fails when they differ from what this prints.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. \
    sqlflow_playground/proto/sqlflow.proto
