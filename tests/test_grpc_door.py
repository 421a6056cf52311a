"""The gRPC door (grpcdoor.py, tlsrelay.py): SQLFlow's Run/Fetch as the deployed notebook
client speaks it, replayed by tests/sqlflow_client.py with stubs generated from the
package's .proto, over real TLS to a real gateway."""
import time

import grpc
import pytest

from conftest import client_context, free_port, request, wait_until
from fake_sqlflow import FakeSQLFlow, Script
from sqlflow_client import Cell, channel, run_cell, session
from sqlflow_playground.grpcdoor import fetch_proof, has_secret, needs_engine
from sqlflow_playground.proto import sqlflow_pb2 as pb
from sqlflow_playground.proto import sqlflow_pb2_grpc as pb_grpc

QUICK = 0.1  # seconds between polls where the client's 2 s would only slow the test down


class Door:
    """A gateway with its gRPC door; users created over REST with their certificates."""

    def __init__(self, make_server, certs, **config):
        self.certs = certs
        self.server = make_server(grpc_port=free_port(), **config)
        self.port = self.server.gateway.grpc_port
        self.channels = []

    def rest(self, name, method, path, body=None):
        return request(self.server.port, client_context(self.certs.dir, name), method, path,
                       body)

    def create_db(self, name) -> str:
        return self.rest(name, "POST", "/api/create_db").body["data_source"]

    def stub(self, cert_of=None, ca=None, key_store=None) -> pb_grpc.SQLFlowStub:
        """A stub over TLS as the deployed client makes it (no client certificate), or
        presenting ``cert_of``'s certificate from ``key_store`` (default: our CA's)."""
        key = cert = None
        if cert_of:
            base = (key_store or self.certs.dir) / cert_of
            key = (base / f"{cert_of}.key").read_bytes()
            cert = (base / f"{cert_of}.crt").read_bytes()
        ch = channel(self.port, ca or self.certs.ca, key, cert)
        self.channels.append(ch)
        return pb_grpc.SQLFlowStub(ch)

    def jobs_of(self, name):
        return self.rest(name, "GET", "/api/jobs").body["jobs"]


@pytest.fixture
def door(make_server, certs):
    d = Door(make_server, certs)
    yield d
    for ch in d.channels:
        ch.close()


def refused(call, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args, **kw)
        if hasattr(result, "__iter__"):  # a stream raises once read
            list(result)
    return info.value


def typed(rows):
    return [[(type(v).__name__, v) for v in row] for row in rows]


# -- the client's flow ---------------------------------------------------------------------

def test_select_returns_typed_values(door):
    ds = door.create_db("alice")
    cell = run_cell(door.stub(), "SELECT 1 AS i, -2.5 AS f, 'héllo' AS s, NULL AS n, "
                    "date('2024-02-29') AS d, 9223372036854775807 AS big",
                    session(ds, "alice"), QUICK)
    assert cell.tables == [(["i", "f", "s", "n", "d", "big"],
                            [[1, -2.5, "héllo", None, "2024-02-29", 9223372036854775807]])]
    assert typed(cell.tables[0][1]) == [[("int", 1), ("float", -2.5), ("str", "héllo"),
                                         ("NoneType", None), ("str", "2024-02-29"),
                                         ("int", 9223372036854775807)]]
    assert cell.ignored == []
    # The job is an ordinary job of alice's, seen over REST too.
    token = cell.job_id.partition(".")[0]
    assert [(j["token"], j["task_type"], j["status"]) for j in door.jobs_of("alice")] == \
        [(token, "sql", "SUCCEEDED")]


def test_on_mysql_values_keep_their_types_and_dates_come_as_text(make_server, certs,
                                                                  mariadb):
    door = Door(make_server, certs, provisioner="mysql", mysql_dsn=mariadb)
    try:
        ds = door.create_db("alice")
        assert has_secret(ds)  # the MySQL provisioner's data source holds a password
        cell = run_cell(door.stub(), """
            DROP TABLE IF EXISTS t;
            CREATE TABLE t (i BIGINT, f DOUBLE, s VARCHAR(10), d DATE, ts DATETIME,
                            dec_ DECIMAL(6, 2), n INT);
            INSERT INTO t VALUES (-7, 0.25, 'ü', '2024-02-29', '2024-02-29 13:14:15',
                                  1234.50, NULL);
            SELECT * FROM t""", session(ds, "alice"), QUICK)
    finally:
        for ch in door.channels:
            ch.close()
    assert cell.tables == [(["i", "f", "s", "d", "ts", "dec_", "n"],
                            [[-7, 0.25, "ü", "2024-02-29", "2024-02-29T13:14:15",
                              "1234.50", None]])]
    assert [type(v).__name__ for v in cell.tables[0][1][0]] == \
        ["int", "float", "str", "str", "str", "str", "NoneType"]


def test_the_embedded_sqlite_data_source_holds_a_secret(door):
    ds = door.create_db("alice")
    assert has_secret(ds) and not has_secret(ds.partition("?")[0])
    assert has_secret(door.create_db("bob")) and door.create_db("bob") != ds


def test_a_script_returns_its_messages_and_one_table_per_select(door):
    ds = door.create_db("alice")
    cell = run_cell(door.stub(), """
        CREATE TABLE iris (id INT, species TEXT);
        INSERT INTO iris VALUES (1, 'setosa'), (2, 'virginica'), (3, NULL);
        SELECT id, species FROM iris ORDER BY id;
        UPDATE iris SET species = 'versicolor' WHERE id = 3;
        SELECT count(*) AS n FROM iris WHERE species IS NOT NULL""",
        session(ds, "alice"), QUICK)
    assert cell.messages == ["0 row(s) affected", "3 row(s) affected", "1 row(s) affected"]
    assert cell.tables == [(["id", "species"], [[1, "setosa"], [2, "virginica"], [3, None]]),
                           (["n"], [[3]])]
    assert cell.ignored == []  # nothing was put where the client does not read
    # The cursor lives in updated_fetch_since, which the client sent back unchanged.
    assert cell.requests[0] == pb.FetchRequest(job=pb.Job(id=cell.job_id))
    assert all(r.job.id == cell.job_id for r in cell.requests)


def test_a_failing_statement_reports_its_error(door):
    ds = door.create_db("alice")
    cell = Cell()
    with pytest.raises(grpc.RpcError) as info:
        _run_into(cell, door.stub(), "CREATE TABLE t (a INT); SELECT * FROM no_such_table",
                  session(ds, "alice"))
    error = info.value
    assert error.code() == grpc.StatusCode.UNKNOWN
    assert "statement 2 of 2" in error.details() and "no_such_table" in error.details()
    assert "Traceback" not in error.details()
    assert cell.messages[0] == "0 row(s) affected"
    assert cell.messages[-1].startswith("ERROR: job FAILED: statement 2 of 2") \
        and "no_such_table" in cell.messages[-1]


def _run_into(cell: Cell, stub, sql, sess, sleep_s=QUICK):
    """run_cell, keeping what was seen before an error in ``cell``."""
    import sqlflow_client
    original = sqlflow_client.Cell
    sqlflow_client.Cell = lambda: cell
    try:
        return run_cell(stub, sql, sess, sleep_s)
    finally:
        sqlflow_client.Cell = original


def test_a_20_second_job_streams_across_fetches_without_loss_or_repetition(
        make_server, certs):
    with FakeSQLFlow() as fake:
        fake.script = Script([{"message": f"epoch {i}"} for i in range(20)]
                             + [{"head": ["epoch", "loss"]}]
                             + [{"row": [i, 1.0 / (i + 1)]} for i in range(20)]
                             + [{"eoe": True}], delay=0.5)
        door = Door(make_server, certs, sqlflow_server=fake.address)
        ds = door.create_db("alice")
        started = time.monotonic()
        cell = run_cell(door.stub(), "SELECT * FROM iris TO TRAIN DNNClassifier "
                        "LABEL species INTO my_model", session(ds, "alice"), sleep_s=2.0)
        took = time.monotonic() - started
    assert cell.messages == [f"epoch {i}" for i in range(20)]
    assert cell.tables == [(["epoch", "loss"], [[i, 1.0 / (i + 1)] for i in range(20)])]
    assert took >= 20  # it really streamed for 20 s...
    assert cell.answers >= 5  # ...across many Fetches, each answering what was new
    assert cell.ignored == []
    sent = fake.runs[0].request
    assert "TO TRAIN" in sent.sql and sent.session.user_id == "alice"
    assert sent.session.db_conn_str == ds


def test_a_job_whose_client_stops_fetching_is_cancelled(make_server, certs):
    with FakeSQLFlow() as fake:
        fake.script = Script([{"message": "training…"}], hold=True)
        door = Door(make_server, certs, sqlflow_server=fake.address, fetch_timeout_s=2,
                    reap_interval_s=0.5)
        ds = door.create_db("alice")
        stream = door.stub().Run(pb.Request(sql="SELECT 1 TO TRAIN m INTO x",
                                            session=session(ds, "alice")))
        job_id = next(iter(stream)).job.id
        # The client went away: no Fetch. Listing jobs over REST is not a fetch.
        assert wait_until(lambda: door.jobs_of("alice")[0]["status"] == "CANCELLED", 30)
        job = door.jobs_of("alice")[0]
        assert job["token"] == job_id.partition(".")[0]
        assert "not fetched" in job["message"]
        assert fake.runs[0].cancelled.wait(10)  # and the upstream stream was closed


# -- who is calling -----------------------------------------------------------------------

def test_the_caller_must_prove_who_they_are(door):
    alice_ds, bob_ds = door.create_db("alice"), door.create_db("bob")
    stub = door.stub()
    sql = pb.Request(sql="CREATE TABLE pwned (a INT)")
    cases = [
        (session(), grpc.StatusCode.UNAUTHENTICATED, "SQLFLOW_DATASOURCE"),
        (session(alice_ds + "x", "alice"), grpc.StatusCode.PERMISSION_DENIED, "not user"),
        (session(alice_ds[:-1]), grpc.StatusCode.PERMISSION_DENIED, "not any user"),
        (session(bob_ds, "alice"), grpc.StatusCode.PERMISSION_DENIED, "not user 'alice'"),
        (session(alice_ds, "no such user!"), grpc.StatusCode.INVALID_ARGUMENT, "user id"),
    ]
    for sess, code, words in cases:
        error = refused(stub.Run, pb.Request(sql=sql.sql, session=sess))
        assert (error.code(), words in error.details()) == (code, True), error.details()
        assert alice_ds not in error.details() and bob_ds not in error.details()
    assert door.jobs_of("alice") == [] and door.jobs_of("bob") == []  # nothing ran
    # Bob's own data source makes him bob, with or without his user id.
    cell = run_cell(stub, "CREATE TABLE mine (a INT)", session(bob_ds), QUICK)
    assert cell.messages == ["0 row(s) affected"]
    assert [j["user_id"] for j in door.jobs_of("bob")] == ["bob"]


def test_a_job_is_fetched_only_with_its_owners_proof(door):
    alice_ds, bob_ds = door.create_db("alice"), door.create_db("bob")
    stub = door.stub()
    job_id = next(iter(stub.Run(pb.Request(sql="SELECT 42 AS secret",
                                           session=session(alice_ds, "alice"))))).job.id
    token, _, proof = job_id.partition(".")
    assert proof == fetch_proof(alice_ds, token)
    cases = [
        (token, grpc.StatusCode.UNAUTHENTICATED),  # the bare token, as listings show it
        (f"{token}.{fetch_proof(bob_ds, token)}", grpc.StatusCode.NOT_FOUND),  # bob's proof
        # the last character changed (to another one: a proof may end in "A" already)
        (f"{token}.{proof[:-1]}{'B' if proof.endswith('A') else 'A'}",
         grpc.StatusCode.NOT_FOUND),
        ("../../etc/passwd.x", grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for job, code in cases:
        error = refused(stub.Fetch, pb.FetchRequest(job=pb.Job(id=job)))
        assert error.code() == code, (job, error.details())
        assert "42" not in error.details()
    # Bob's certificate does not open alice's job either; alice's does.
    error = refused(door.stub(cert_of="bob").Fetch, pb.FetchRequest(job=pb.Job(id=token)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    answer = door.stub(cert_of="alice").Fetch(pb.FetchRequest(job=pb.Job(id=token)))
    assert [r.WhichOneof("response") for r in answer.responses.response][:1] == ["head"]
    # A changed cursor is refused, not trusted.
    error = refused(stub.Fetch, pb.FetchRequest(job=pb.Job(id=job_id), step_id="x"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_client_certificate_names_the_caller(door, certs):
    door.create_db("alice")
    # alice's certificate, no data source: she is alice.
    cell = run_cell(door.stub(cert_of="alice"), "SELECT 'me' AS who", session(), QUICK)
    assert cell.tables == [(["who"], [["me"]])]
    assert "." not in cell.job_id  # the certificate is the proof at every Fetch
    # It may not act for bob; a frontend certificate may.
    door.create_db("bob")
    error = refused(door.stub(cert_of="alice").Run,
                    pb.Request(sql="SELECT 1", session=session(user_id="bob")))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    cell = run_cell(door.stub(cert_of="front"), "SELECT 2 AS two", session(user_id="bob"),
                    QUICK)
    assert cell.tables == [(["two"], [[2]])]
    assert [j["user_id"] for j in door.jobs_of("bob")] == ["bob"]


def test_certificates_of_another_ca_revoked_or_expired_are_refused(door, certs):
    alice_ds = door.create_db("alice")
    for name, key_store in (("alice", certs.other), ("mallory", None), ("expired", None)):
        stub = door.stub(cert_of=name, key_store=key_store)
        error = refused(stub.Run, pb.Request(sql="CREATE TABLE x (a INT)",
                                             session=session(alice_ds, "alice")))
        # Refused in the TLS handshake, before any call: gRPC says UNAVAILABLE.
        assert error.code() == grpc.StatusCode.UNAVAILABLE, (name, error.details())
    assert door.jobs_of("alice") == []


def test_a_connection_around_the_relay_is_refused(door):
    alice_ds = door.create_db("alice")
    inner = door.server.gateway.grpc_inner_port
    ch = grpc.insecure_channel(f"127.0.0.1:{inner}")
    door.channels.append(ch)
    error = refused(pb_grpc.SQLFlowStub(ch).Run,
                    pb.Request(sql="SELECT 1", session=session(alice_ds, "alice")))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert door.jobs_of("alice") == []


def test_quotas_and_the_missing_engine(make_server, certs):
    with FakeSQLFlow() as fake:
        fake.script = Script([{"message": "…"}], hold=True)
        door = Door(make_server, certs, sqlflow_server=fake.address, max_jobs_per_user=1)
        ds = door.create_db("alice")
        stub = door.stub()
        list(stub.Run(pb.Request(sql="SELECT 1 TO TRAIN m", session=session(ds, "alice"))))
        error = refused(stub.Run, pb.Request(sql="SELECT 1", session=session(ds, "alice")))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(door.jobs_of("alice")) == 1


def test_without_an_engine_extended_sql_fails_saying_so(door):
    ds = door.create_db("alice")
    error = refused(door.stub().Run, pb.Request(
        sql="CREATE TABLE t (a INT); SELECT * FROM t TO TRAIN DNNClassifier INTO m",
        session=session(ds, "alice")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no SQLFlow engine configured" in error.details()
    assert door.jobs_of("alice") == []  # nothing ran, not even the CREATE


def test_pages_respect_fetch_page_bytes(make_server, certs):
    door = Door(make_server, certs, fetch_page_bytes=4096)
    ds = door.create_db("alice")
    sql = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600) "
           "SELECT i, printf('%040d', i) AS padded FROM n")
    stub = door.stub()
    job_id = next(iter(stub.Run(pb.Request(sql=sql, session=session(ds, "alice"))))).job.id
    req, rows, sizes = pb.FetchRequest(job=pb.Job(id=job_id)), [], []
    for _ in range(1000):
        answer = stub.Fetch(req)
        sizes.append(answer.ByteSize())
        rows += [[v.value for v in _unpack(r.row.data)] for r in answer.responses.response
                 if r.WhichOneof("response") == "row"]
        if answer.eof:
            break
        req = answer.updated_fetch_since
    assert rows == [[i, f"{i:040d}"] for i in range(1, 601)]
    assert max(sizes) <= 4096 + 512 and len(sizes) > 10


def _unpack(data):
    from google.protobuf import wrappers_pb2
    out = []
    for packed in data:
        for kind in (wrappers_pb2.Int64Value, wrappers_pb2.StringValue):
            if packed.Is(kind.DESCRIPTOR):
                value = kind()
                packed.Unpack(value)
                out.append(value)
    return out


def test_calls_are_counted_in_metrics(door):
    ds = door.create_db("alice")
    run_cell(door.stub(), "SELECT 1", session(ds, "alice"), QUICK)
    refused(door.stub().Run, pb.Request(sql="SELECT 1", session=session()))
    text = door.server.gateway.metrics.render().decode()
    assert 'sqlflow_playground_grpc_requests_total{code="OK",method="Run"} 1.0' in text
    assert 'sqlflow_playground_grpc_requests_total{code="UNAUTHENTICATED",method="Run"} 1.0' \
        in text
    assert 'method="Fetch"' in text


@pytest.mark.parametrize("statement, engine", [
    ("SELECT * FROM iris TO TRAIN DNNClassifier INTO m", True),
    ("select * from iris to predict iris.out.class using m", True),
    ("SELECT * FROM t TO EXPLAIN m", True),
    ("SELECT * FROM t TO EVALUATE m", True),
    ("SELECT 1 TO RUN my_image", True),
    ("SHOW TRAIN m", True),
    ("SELECT 'to train' AS words", False),
    ("SELECT 1 -- TO TRAIN later", False),
    ("SELECT `to train` FROM t", False),
    ("SELECT * FROM toto WHERE a = 'TO PREDICT'", False),
])
def test_statements_that_need_the_engine_are_told_apart(statement, engine):
    assert needs_engine(statement) is engine


def test_a_newly_revoked_certificate_is_refused_after_sighup(make_server, certs, tmp_path):
    from conftest import gen_cert
    ks = tmp_path / "ks"
    for name in ("server", "erin"):
        gen_cert(ks, name)
    server = make_server(grpc_port=free_port(), ca_crt=str(ks / "ca" / "ca.crt"),
                         crl=str(ks / "ca" / "crl.pem"),
                         server_crt=str(ks / "server" / "server.crt"),
                         server_key=str(ks / "server" / "server.key"))
    request(server.port, client_context(ks, "erin"), "POST", "/api/create_db")

    def run_as_erin():
        key = (ks / "erin" / "erin.key").read_bytes()
        cert = (ks / "erin" / "erin.crt").read_bytes()
        with channel(server.gateway.grpc_port, str(ks / "ca" / "ca.crt"), key, cert) as ch:
            return run_cell(pb_grpc.SQLFlowStub(ch), "SELECT 1 AS one", session(), QUICK)

    assert run_as_erin().tables == [(["one"], [[1]])]
    gen_cert(ks, "revoke", "erin")
    server.loop.call_soon_threadsafe(server.gateway.reload_tls)
    server.call(__import__("asyncio").sleep(0))
    with pytest.raises(grpc.RpcError) as info:
        run_as_erin()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_without_tls_the_door_is_plain_grpc_and_knows_callers_by_data_source(make_server):
    server = make_server(grpc_port=free_port(), insecure=True, ca_crt=None, crl=None,
                         server_crt=None, server_key=None)
    import http.client
    import json
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/api/create_db", body=json.dumps({"user_id": "alice"}))
    ds = json.loads(conn.getresponse().read())["data_source"]
    conn.close()
    with grpc.insecure_channel(f"127.0.0.1:{server.gateway.grpc_port}") as ch:
        stub = pb_grpc.SQLFlowStub(ch)
        assert run_cell(stub, "SELECT 'plain' AS p", session(ds), QUICK).tables == \
            [(["p"], [["plain"]])]
        error = refused(stub.Run, pb.Request(sql="SELECT 1", session=session()))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_door_is_off_with_port_0(make_server):
    server = make_server(grpc_port=0)
    assert server.gateway.grpc_port is None and server.gateway.grpc_server is None


def test_a_client_going_away_leaves_no_warning_and_no_connection(door, caplog):
    ds = door.create_db("alice")
    with channel(door.port, door.certs.ca) as ch:
        run_cell(pb_grpc.SQLFlowStub(ch), "SELECT 1", session(ds, "alice"), QUICK)
        relay = door.server.gateway.grpc_relay
        assert len(relay.connections) == 1 and len(relay.identities) == 1
    assert wait_until(lambda: not relay.connections and not relay.identities, 10)
    noisy = [r.getMessage() for r in caplog.records
             if r.levelname in ("WARNING", "ERROR") and r.name in ("asyncio", "grpc")]
    assert noisy == []


def test_the_door_serves_on_uvloop_too(certs, tmp_path):
    """uvloop's server-side start_tls stalls: the relay must not depend on it."""
    from conftest import start_server_process, stop_server_process
    port = free_port()
    proc, rest_port = start_server_process(certs, tmp_path / "state", "--event_loop=uvloop",
                                           f"--grpc_port={port}")
    try:
        ds = request(rest_port, client_context(certs.dir, "alice"), "POST",
                     "/api/create_db").body["data_source"]
        with channel(port, certs.ca) as ch:
            cell = run_cell(pb_grpc.SQLFlowStub(ch), "SELECT 'uv' AS loop", session(ds), QUICK)
        key = (certs.dir / "alice" / "alice.key").read_bytes()
        cert = (certs.dir / "alice" / "alice.crt").read_bytes()
        with channel(port, certs.ca, key, cert) as ch:  # a certificate names the caller
            by_cert = run_cell(pb_grpc.SQLFlowStub(ch), "SELECT 2 AS two", session(), QUICK)
    finally:
        stop_server_process(proc)
    assert cell.tables == [(["loop"], [["uv"]])]
    assert by_cert.tables == [(["two"], [[2]])]
