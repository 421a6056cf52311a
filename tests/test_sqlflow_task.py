"""The `sqlflow` task type against a fake upstream SQLFlow server (tests/fake_sqlflow.py):
called in-process through a TaskContext, and through HTTPS with a real gateway."""
import secrets
import time
import uuid

import grpc
import pytest

from conftest import fetch_until_eof, wait_until
from fake_sqlflow import FakeSQLFlow, Script
from sqlflow_playground.errors import Unprocessable
from sqlflow_playground.plugins import sqlflow_engine
from sqlflow_playground.plugins.base import RUNNING, TaskContext, is_terminal
from sqlflow_playground.plugins.sql_runner import cap_message, read_status, write_status
from sqlflow_playground.plugins.sqlflow_engine import SqlflowPlugin
from sqlflow_playground.proto import sqlflow_pb2 as pb

DATA_SOURCE = "mysql://alice:s3cret@tcp(127.0.0.1:3306)/alice?maxAllowedPacket=0"
TABLE = [{"message": "training…"}, {"head": ["i", "f", "s", "n", "b"]},
         {"row": [1, 2.5, "x", None, True]}, {"row": [-(1 << 40), -0.125, "", None, False]},
         {"eoe": True}]


@pytest.fixture
def fake():
    with FakeSQLFlow() as server:
        yield server


@pytest.fixture
def plugin(fake, monkeypatch):
    monkeypatch.setattr(SqlflowPlugin, "FETCH_INTERVAL_S", 0.05)
    return SqlflowPlugin(fake.address)


def make_ctx(tmp_path, **kw):
    workdir = tmp_path / ("job-" + uuid.uuid4().hex[:8])
    workdir.mkdir()
    return TaskContext(token=secrets.token_hex(16), user_id="alice", workdir=str(workdir),
                       data_source=DATA_SOURCE, **kw)


def poll(plugin, ctx, meta, timeout=60):
    """Follow the cursors until the job is over and nothing is left: (state, responses)."""
    cursor, responses, deadline = "", [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = plugin.get(ctx, meta, cursor)
        responses += state.responses
        cursor = state.cursor
        if is_terminal(state.status) and not state.responses:
            return state, responses
        if not state.responses:
            time.sleep(0.02)
    raise AssertionError(f"job still {state.status} after {timeout}s")


def run(plugin, ctx, sql="SELECT * FROM iris TO TRAIN DNNClassifier", **spec):
    meta = plugin.create(ctx, {"sql": sql, **spec})
    return poll(plugin, ctx, meta)


# -- in-process ---------------------------------------------------------------------

def test_responses_are_recorded_in_order_with_typed_values(plugin, fake, tmp_path):
    fake.script = Script(TABLE)
    state, responses = run(plugin, make_ctx(tmp_path))
    assert (state.status, state.message) == ("SUCCEEDED", "")
    assert responses == TABLE
    values = responses[2]["row"]
    assert [type(v) for v in values] == [int, float, str, type(None), bool]


def test_the_session_carries_the_owners_data_source_and_user_id(plugin, fake, tmp_path):
    fake.script = Script([{"message": "ok"}])
    run(plugin, make_ctx(tmp_path), sql="SELECT 1 TO RUN a.b", submitter="argo")
    [request] = fake.requests
    assert request.sql == "SELECT 1 TO RUN a.b"
    assert (request.session.db_conn_str, request.session.user_id) == (DATA_SOURCE, "alice")
    assert request.session.exit_on_submit is False
    assert request.session.submitter == "argo"


def test_a_slow_stream_is_running_with_partial_output_visible(plugin, fake, tmp_path):
    fake.script = Script(TABLE, delay=0.4)
    ctx = make_ctx(tmp_path)
    meta = plugin.create(ctx, {"sql": "SELECT 1 TO PREDICT t.p USING m"})
    seen = []

    def partial():
        state = plugin.get(ctx, meta, "")
        seen[:] = [state]
        return state.status == RUNNING and len(state.responses) >= 2
    assert wait_until(partial, 30), seen
    assert seen[0].responses == TABLE[:len(seen[0].responses)]
    state, responses = poll(plugin, ctx, meta)
    assert state.status == "SUCCEEDED" and responses == TABLE


def test_an_upstream_error_fails_the_job_with_its_details(plugin, fake, tmp_path):
    fake.script = Script(TABLE[:2], fail=(grpc.StatusCode.UNKNOWN, "no such model: m"))
    state, responses = run(plugin, make_ctx(tmp_path))
    assert state.status == "FAILED"
    assert state.message == "the SQLFlow server failed: UNKNOWN: no such model: m"
    assert responses == TABLE[:2]  # what came before is kept; sql_runner adds no message


def test_an_unreachable_server_fails_the_job_saying_so(tmp_path):
    with FakeSQLFlow() as gone:
        address = gone.address
    state, _ = run(SqlflowPlugin(address), make_ctx(tmp_path))
    assert state.status == "FAILED"
    assert state.message.startswith(f"the SQLFlow server at {address} cannot be reached")


def test_cancel_closes_the_upstream_stream(plugin, fake, tmp_path):
    fake.script = Script(TABLE[:2], hold=True)
    ctx = make_ctx(tmp_path)
    meta = plugin.create(ctx, {"sql": "SELECT 1 TO TRAIN m"})
    assert wait_until(lambda: len(plugin.get(ctx, meta, "").responses) == 2, 30)
    plugin.delete(ctx, meta)
    assert fake.runs[0].cancelled.wait(30)
    state, responses = poll(plugin, ctx, meta)
    assert (state.status, responses) == ("CANCELLED", TABLE[:2])
    plugin.delete(ctx, meta)  # idempotent
    assert plugin.get(ctx, meta, "").status == "CANCELLED"


def test_workflow_mode_polls_fetch_until_eof(plugin, fake, tmp_path):
    fake.script = Script(TABLE, workflow=True, page=2)
    state, responses = run(plugin, make_ctx(tmp_path))
    assert state.status == "SUCCEEDED"
    assert responses == TABLE  # the job response itself is not recorded
    # The first Fetch names the job; every later one is the cursor sent back unchanged.
    assert fake.fetches[0] == pb.FetchRequest(job=Script().job)
    assert [(f.step_id, f.step_phase) for f in fake.fetches] == \
        [("", ""), ("2", "phase-2"), ("4", "phase-4")]


def test_workflow_mode_cancel_stops_polling(plugin, fake, tmp_path, monkeypatch):
    monkeypatch.setattr(SqlflowPlugin, "FETCH_INTERVAL_S", 3600)
    fake.script = Script(TABLE, workflow=True, page=1)
    ctx = make_ctx(tmp_path)
    meta = plugin.create(ctx, {"sql": "SELECT 1 TO TRAIN m"})
    assert wait_until(lambda: len(fake.fetches) == 1, 30)
    plugin.delete(ctx, meta)  # wakes the poller from its sleep
    state, responses = poll(plugin, ctx, meta)
    assert state.status == "CANCELLED" and len(fake.fetches) == 1
    assert responses == TABLE[:1]


def test_the_output_cap_cancels_the_upstream_stream(plugin, fake, tmp_path):
    fake.script = Script([{"row": [i, "x" * 50]} for i in range(100)], hold=True)
    state, responses = run(plugin, make_ctx(tmp_path, max_output_bytes=1000))
    assert (state.status, state.message) == ("FAILED", cap_message(1000))
    assert 0 < len(responses) < 100 and responses[0] == {"row": [0, "x" * 50]}
    assert fake.runs[0].cancelled.wait(30)


def test_without_a_server_a_job_is_unprocessable(tmp_path):
    with pytest.raises(Unprocessable, match="no SQLFlow engine configured"):
        SqlflowPlugin().create(make_ctx(tmp_path), {"sql": "SELECT 1 TO TRAIN m"})


def test_without_a_stream_get_fails_and_recover_fails(plugin, tmp_path):
    ctx = make_ctx(tmp_path)  # no create in this process: another one's job
    state = plugin.get(ctx, {}, "")
    assert state.status == "FAILED" and "stream to the SQLFlow server was lost" in state.message
    ctx = make_ctx(tmp_path)
    assert plugin.recover(ctx, {}) == "the server restarted while this SQLFlow job was running"
    assert read_status(ctx.workdir)["status"] == "FAILED"
    ended = make_ctx(tmp_path)
    write_status(ended.workdir, "SUCCEEDED", "", {})
    assert plugin.recover(ended, {}) is None


def test_tls_to_the_server_with_its_ca(certs, tmp_path):
    key = (certs.dir / "server" / "server.key").read_bytes()
    crt = (certs.dir / "server" / "server.crt").read_bytes()
    with FakeSQLFlow(Script(TABLE), grpc.ssl_server_credentials([(key, crt)])) as tls:
        state, responses = run(SqlflowPlugin(tls.address, certs.ca), make_ctx(tmp_path))
    assert state.status == "SUCCEEDED" and responses == TABLE
    with pytest.raises(FileNotFoundError):  # an unreadable CA: the job does not start
        SqlflowPlugin(tls.address, str(tmp_path / "missing.crt")).create(
            make_ctx(tmp_path), {"sql": "SELECT 1 TO TRAIN m"})


def test_no_thread_is_left_behind(plugin, fake, tmp_path):
    fake.script = Script(TABLE)
    run(plugin, make_ctx(tmp_path))
    assert wait_until(lambda: not sqlflow_engine._streams, 30)


# -- through HTTPS --------------------------------------------------------------------

@pytest.fixture
def alice(server, fetch_as, fake, monkeypatch):
    """alice, with a database, on a gateway whose sqlflow task type uses the fake."""
    monkeypatch.setattr(SqlflowPlugin, "FETCH_INTERVAL_S", 0.05)
    server.gateway.registry.register(SqlflowPlugin(fake.address), override=True)
    fetch = fetch_as("alice")
    assert fetch("POST", "/api/create_db").status == 200
    return fetch


def submit(fetch, sql="SELECT * FROM iris TO TRAIN DNNClassifier"):
    created = fetch("POST", "/api/jobs", {"task_type": "sqlflow", "spec": {"sql": sql}})
    assert created.status == 201, created.body
    return created.body["token"]


def test_rest_job_records_the_stream_with_the_owners_session(alice, fake):
    fake.script = Script(TABLE, delay=0.05)
    page, responses, _ = fetch_until_eof(alice, submit(alice))
    assert page["status"] == "SUCCEEDED" and responses == TABLE
    data_source = alice("POST", "/api/create_db").body["data_source"]
    [request] = fake.requests
    assert (request.session.db_conn_str, request.session.user_id) == (data_source, "alice")


def test_rest_upstream_failure_and_cancel(alice, fake):
    fake.script = Script(TABLE[:1], fail=(grpc.StatusCode.INTERNAL, "the model diverged"))
    page, responses, _ = fetch_until_eof(alice, submit(alice))
    assert page["status"] == "FAILED" and "INTERNAL: the model diverged" in page["message"]
    assert responses == TABLE[:1]

    fake.script = Script(TABLE[:1], hold=True)
    token = submit(alice)
    assert wait_until(lambda: len(fake.runs) == 2 and fake.runs[1].sent == 1, 30)
    cancelled = alice("DELETE", f"/api/jobs/{token}")
    assert cancelled.status == 200 and cancelled.body["status"] == "CANCELLED"
    assert fake.runs[1].cancelled.wait(30)


def test_rest_without_a_server_is_422(server, fetch_as):
    alice = fetch_as("alice")
    alice("POST", "/api/create_db")
    resp = alice("POST", "/api/jobs", {"task_type": "sqlflow",
                                       "spec": {"sql": "SELECT 1 TO TRAIN m"}})
    assert resp.status == 422 and "no SQLFlow engine configured" in resp.body["error"]["message"]
    assert alice("GET", "/api/jobs").body["jobs"] == []
