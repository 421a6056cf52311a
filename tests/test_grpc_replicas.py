"""The gRPC door on two replicas sharing a store: a cell Run through one is fetched through
either, alternately, with nothing lost or repeated; then kill -9 of the replica running
it, and the other tells the notebook client that the job died with it."""
import signal
import time
import uuid

import grpc

from conftest import (client_context, free_port, request, start_server_process,
                      stop_server_process)
from sqlflow_client import channel, session
from sqlflow_playground.proto import sqlflow_pb2 as pb
from sqlflow_playground.proto import sqlflow_pb2_grpc as pb_grpc

LEASE_S = 3


def test_any_replica_answers_a_fetch_and_reports_a_lost_one(certs, tmp_path, store_url,
                                                           mariadb):
    common = [f"--db_url={store_url}", "--provisioner=mysql", f"--mysql_dsn={mariadb}",
              "--reap_interval_s=1", f"--replica_lease_s={LEASE_S}"]
    grpc_ports = {"a": free_port(), "b": free_port()}
    a, a_port = start_server_process(certs, tmp_path / "a", "--replica=replica-a",
                                     f"--grpc_port={grpc_ports['a']}", *common)
    b, _ = start_server_process(certs, tmp_path / "b", "--replica=replica-b",
                                f"--grpc_port={grpc_ports['b']}", *common)
    channels = {name: channel(port, certs.ca) for name, port in grpc_ports.items()}
    stubs = {name: pb_grpc.SQLFlowStub(ch) for name, ch in channels.items()}
    try:
        user = "g" + uuid.uuid4().hex[:8]
        ds = request(a_port, client_context(certs.dir, "front"), "POST", "/api/create_db",
                     {"user_id": user}).body["data_source"]
        table = "t" + uuid.uuid4().hex[:6]
        sql = (f"CREATE TABLE {table} (i INT); "
               f"INSERT INTO {table} VALUES (1), (2), (3), (4); "
               f"SELECT i, SLEEP(0.5) AS s FROM {table} ORDER BY i; "
               f"SELECT count(*) AS n FROM {table}")
        job_id = next(iter(stubs["a"].Run(pb.Request(sql=sql, session=session(ds, user))))
                      ).job.id
        # Fetch alternately through b and a, echoing updated_fetch_since as the client does.
        req, seen, turns = pb.FetchRequest(job=pb.Job(id=job_id)), [], 0
        for turns in range(1, 200):
            answer = stubs["ab"[turns % 2]].Fetch(req)
            seen += [_plain(r) for r in answer.responses.response]
            if answer.eof:
                break
            req = answer.updated_fetch_since
            time.sleep(0.2)
        assert answer.eof and turns >= 2
        assert seen == ["0 row(s) affected", "4 row(s) affected", ("head", ["i", "s"]),
                        ("row", [1, 0]), ("row", [2, 0]), ("row", [3, 0]), ("row", [4, 0]),
                        "eoe", ("head", ["n"]), ("row", [4]), "eoe"]

        # A long cell on a, then a dies: b reports it FAILED, naming a, as a status.
        job_id = next(iter(stubs["a"].Run(pb.Request(sql="SELECT SLEEP(600)",
                                                     session=session(ds, user))))).job.id
        answer = stubs["b"].Fetch(pb.FetchRequest(job=pb.Job(id=job_id)))
        assert not answer.eof
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        req, messages, deadline = answer.updated_fetch_since, [], time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                answer = stubs["b"].Fetch(req)
                messages += [r.message.message for r in answer.responses.response]
                assert not answer.eof
                req = answer.updated_fetch_since
                time.sleep(0.5)
            raise AssertionError("the lost replica's job never ended")
        except grpc.RpcError as e:
            error = e
        assert error.code() == grpc.StatusCode.UNKNOWN and "replica-a" in error.details()
        assert any(m.startswith("ERROR: job FAILED") and "replica-a" in m for m in messages)
    finally:
        for ch in channels.values():
            ch.close()
        for proc in (a, b):
            stop_server_process(proc)


def _plain(response: pb.Response):
    kind = response.WhichOneof("response")
    if kind == "message":
        return response.message.message
    if kind == "eoe":
        return "eoe"
    if kind == "head":
        return ("head", list(response.head.column_names))
    from sqlflow_client import decode_any
    return ("row", [decode_any(v) for v in response.row.data])
