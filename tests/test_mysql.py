"""The MySQL provisioner against a real MariaDB server (127.0.0.1:3306, root, no password).
Under CI=true these tests fail without it."""
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor

import pymysql
import pytest
import sqlalchemy as sa

from conftest import DATA_SOURCE_RE, admin_connect, client_context, request

@pytest.fixture
def mysql_server(make_server, mariadb):
    return make_server(provisioner="mysql", mysql_dsn=mariadb)


@pytest.fixture
def uid():
    """A fresh user id per test, so leftovers of an aborted run never interfere."""
    return "t" + uuid.uuid4().hex[:10]


def parse(data_source):
    m = DATA_SOURCE_RE.match(data_source)
    assert m, data_source
    return m.groupdict()


def connect_as(ds, db=None):
    return pymysql.connect(host=ds["host"], port=int(ds["port"]), user=ds["user"],
                           password=ds["password"], database=db, connect_timeout=3,
                           autocommit=True)


def databases_like(pattern):
    with admin_connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW DATABASES LIKE %s", (pattern,))
        return [r[0] for r in cur.fetchall()]


def mysql_users(name):
    with admin_connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT user FROM mysql.user WHERE user = %s", (name,))
        return [r[0] for r in cur.fetchall()]


def create(server, certs, user_id):
    resp = request(server.port, client_context(certs.dir, "front"), "POST", "/api/create_db",
                   {"user_id": user_id})
    assert resp.status == 200, resp.body
    return parse(resp.body["data_source"])


def delete(server, certs, user_id):
    return request(server.port, client_context(certs.dir, "front"), "POST", "/api/delete_db",
                   {"user_id": user_id})


def test_credentials_work_on_own_database_only(mysql_server, certs, uid):
    mine, theirs = create(mysql_server, certs, uid + "a"), create(mysql_server, certs, uid + "b")
    assert len(mine["password"]) >= 24 and mine["password"] != theirs["password"]
    assert (mine["host"], mine["port"]) == ("127.0.0.1", "3306")
    with connect_as(mine, mine["db"]) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE iris (id INT PRIMARY KEY, species VARCHAR(20))")
        cur.execute("INSERT INTO iris VALUES (1, 'setosa'), (2, 'virginica')")
        cur.execute("SELECT species FROM iris ORDER BY id")
        assert [r[0] for r in cur.fetchall()] == ["setosa", "virginica"]
        with pytest.raises(pymysql.err.OperationalError) as denied:
            cur.execute(f"SELECT * FROM `{theirs['db']}`.iris")
        assert denied.value.args[0] in (1142, 1044)  # command / access denied
    with pytest.raises(pymysql.err.OperationalError) as denied:
        connect_as(mine, theirs["db"])
    assert denied.value.args[0] == 1044
    for suffix in "ab":
        delete(mysql_server, certs, uid + suffix)


def test_twenty_concurrent_create_db_yield_one_database(mysql_server, certs, uid):
    front = client_context(certs.dir, "front")
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: request(mysql_server.port, front, "POST",
                                                  "/api/create_db", {"user_id": uid}), range(20)))
    assert [r.status for r in results] == [200] * 20
    assert len({r.body["data_source"] for r in results}) == 1
    assert sum(r.body["created"] for r in results) == 1
    db = parse(results[0].body["data_source"])["db"]
    assert databases_like(f"sfp_{uid}%") == [db]
    delete(mysql_server, certs, uid)


def test_delete_db_drops_database_user_and_sessions(mysql_server, certs, uid):
    ds = create(mysql_server, certs, uid)
    session = connect_as(ds, ds["db"])
    assert databases_like(ds["db"]) == [ds["db"]] and mysql_users(ds["user"]) == [ds["user"]]
    assert delete(mysql_server, certs, uid).body == {"user_id": uid, "released": True}
    assert databases_like(ds["db"]) == [] and mysql_users(ds["user"]) == []
    with pytest.raises(pymysql.MySQLError):
        connect_as(ds)
    with pytest.raises(pymysql.MySQLError):  # the open session was ended too
        session.ping(reconnect=False)


def test_names_do_not_collide_across_case(mysql_server, certs, uid):
    upper, lower = create(mysql_server, certs, uid.upper()), create(mysql_server, certs, uid)
    assert upper["db"] != lower["db"] and upper["user"] != lower["user"]
    delete(mysql_server, certs, uid.upper())
    delete(mysql_server, certs, uid)


def test_public_host_is_written_into_the_data_source(make_server, mariadb, certs, uid):
    server = make_server(provisioner="mysql", mysql_dsn=mariadb,
                         mysql_public_host="db.playground.example:13306")
    ds = create(server, certs, uid)
    assert (ds["host"], ds["port"]) == ("db.playground.example", "13306")
    delete(server, certs, uid)


def test_idle_reaper_drops_mysql_database(mysql_server, certs, uid):
    ds = create(mysql_server, certs, uid)
    playground = mysql_server.gateway.playground
    real_clock = playground.clock
    playground.clock = lambda: real_clock() + 3601
    assert uid in mysql_server.call(playground.reap_idle())
    assert databases_like(ds["db"]) == [] and mysql_users(ds["user"]) == []


def test_no_secret_reaches_the_logs(mysql_server, certs, uid, caplog):
    caplog.set_level(logging.DEBUG)
    ds = create(mysql_server, certs, uid)
    request(mysql_server.port, client_context(certs.dir, "front"), "GET", f"/api/users/{uid}")
    delete(mysql_server, certs, uid)
    assert "provisioned a mysql database" in caplog.text  # the log was captured
    assert ds["password"] not in caplog.text
    assert "maxAllowedPacket" not in caplog.text


def test_unreachable_mysql_server_is_a_503_not_a_leak(make_server, mariadb, certs, uid, caplog):
    server = make_server(provisioner="mysql", mysql_dsn=mariadb)
    # Point the admin engine at a closed port: what a database outage looks like.
    server.gateway.provisioner.engine.dispose()
    server.gateway.provisioner.engine = sa.create_engine(
        "mysql+pymysql://root:s3cret-admin-pw@127.0.0.1:1/", hide_parameters=True)
    resp = request(server.port, client_context(certs.dir, "front"), "POST", "/api/create_db",
                   {"user_id": uid})
    assert resp.status == 503 and resp.body["error"]["code"] == "unavailable"
    assert "s3cret-admin-pw" not in caplog.text and "s3cret-admin-pw" not in str(resp.body)
    # Whatever may have been made cannot be checked now: the row stays, its claim expired,
    # so that the rollback is tried again (nothing on the server the store cannot explain).
    row = server.gateway.store.get_user(uid)
    assert row["status"] == "provisioning" and row["claim_expires_at"] == 0.0
    server.gateway.provisioner.engine = sa.create_engine(
        sa.engine.make_url(mariadb).set(drivername="mysql+pymysql"))  # the server is back
    assert server.call(server.gateway.playground.reap_idle()) == [uid]
    assert request(server.port, client_context(certs.dir, "front"), "GET",
                   f"/api/users/{uid}").status == 404


# -- the host jobs use and the host users get (issue 13, item 7) -----------------------

UNRESOLVABLE = "mysql.playground.invalid"  # .invalid never resolves (RFC 6761)


def run_job(server, certs, uid, sql):
    from conftest import fetch_until_eof

    def fetch(*args, **kw):
        return request(server.port, client_context(certs.dir, "front"), *args, **kw)
    created = fetch("POST", "/api/jobs", {"user_id": uid, "task_type": "sql",
                                          "spec": {"sql": sql}})
    assert created.status == 201, created.body
    page, responses, _ = fetch_until_eof(fetch, created.body["token"], timeout=60)
    return page, responses


def user_view(server, certs, uid):
    resp = request(server.port, client_context(certs.dir, "front"), "GET", f"/api/users/{uid}")
    assert resp.status == 200, resp.body
    return parse(resp.body["data_source"])


def test_sql_jobs_connect_through_the_dsn_host_whatever_users_are_told(make_server, mariadb,
                                                                       certs, uid):
    server = make_server(provisioner="mysql", mysql_dsn=mariadb,
                         mysql_public_host=f"{UNRESOLVABLE}:13306")
    ds = create(server, certs, uid)
    assert (ds["host"], ds["port"]) == (UNRESOLVABLE, "13306")
    assert user_view(server, certs, uid) == ds
    page, responses = run_job(server, certs, uid, "SELECT 41 + 1 AS answer")
    assert page["status"] == "SUCCEEDED", page["message"]
    assert {"row": [42]} in responses
    # The jobs' host is not written into what users see, nor is it in the store's row
    # handed out anywhere: the store keeps the internal address, users get the public one.
    row = server.gateway.store.get_user(uid)
    assert "tcp(127.0.0.1:3306)" in row["data_source"]
    delete(server, certs, uid)


def test_a_restart_with_another_public_host_changes_what_users_see(make_server, mariadb,
                                                                   certs, uid, tmp_path):
    state = str(tmp_path / "shared_state")
    first = make_server(provisioner="mysql", mysql_dsn=mariadb, state_dir=state,
                        mysql_public_host=f"{UNRESOLVABLE}:13306")
    before = create(first, certs, uid)
    assert before["host"] == UNRESOLVABLE
    first.stop()

    # The maintainer corrects the flag: the same database, the same credentials, the
    # new address, without delete_db.
    second = make_server(provisioner="mysql", mysql_dsn=mariadb, state_dir=state,
                         mysql_public_host="db.playground.example:3307")
    resp = request(second.port, client_context(certs.dir, "front"), "POST", "/api/create_db",
                   {"user_id": uid})
    assert resp.status == 200 and resp.body["created"] is False
    after = parse(resp.body["data_source"])
    assert (after["host"], after["port"]) == ("db.playground.example", "3307")
    assert {k: after[k] for k in ("user", "password", "db")} == \
        {k: before[k] for k in ("user", "password", "db")}
    assert user_view(second, certs, uid) == after
    page, _ = run_job(second, certs, uid, "SELECT 1")
    assert page["status"] == "SUCCEEDED", page["message"]
    second.stop()

    # Without the flag, users get the DSN's own address again.
    third = make_server(provisioner="mysql", mysql_dsn=mariadb, state_dir=state)
    assert (user_view(third, certs, uid)["host"], user_view(third, certs, uid)["port"]) == \
        ("127.0.0.1", "3306")
    delete(third, certs, uid)


def test_a_database_made_before_the_split_keeps_working(make_server, mariadb, certs, uid):
    # Rows written by an older server hold the public address; jobs still connect.
    server = make_server(provisioner="mysql", mysql_dsn=mariadb,
                         mysql_public_host=f"{UNRESOLVABLE}:13306")
    ds = create(server, certs, uid)
    store = server.gateway.store
    row = store.get_user(uid)
    frozen = row["data_source"].replace("tcp(127.0.0.1:3306)", f"tcp({UNRESOLVABLE}:13306)")
    assert frozen != row["data_source"]
    store.save_user(uid, "mysql", frozen, row["resource"], row["created_at"])
    page, _ = run_job(server, certs, uid, "SELECT 1")
    assert page["status"] == "SUCCEEDED", page["message"]
    assert user_view(server, certs, uid) == ds
    delete(server, certs, uid)


@pytest.mark.parametrize("bad", ["host/x", "a)b", "h:port", "h:1:2", ""])
def test_a_malformed_public_host_stops_the_start(mariadb, bad):
    from sqlflow_playground.blocking import BlockingRunner
    from sqlflow_playground.provisioners.mysql import MysqlProvisioner
    if not bad:
        MysqlProvisioner(BlockingRunner(1), mariadb, bad).close()  # empty: not set
        return
    with pytest.raises(ValueError, match="--mysql_public_host"):
        MysqlProvisioner(BlockingRunner(1), mariadb, bad)


def test_the_grpc_door_knows_a_user_by_the_public_data_source(make_server, mariadb, certs,
                                                              uid):
    from conftest import free_port
    from sqlflow_client import channel, run_cell, session
    from sqlflow_playground.proto import sqlflow_pb2_grpc as pb_grpc
    server = make_server(provisioner="mysql", mysql_dsn=mariadb, grpc_port=free_port(),
                         mysql_public_host=f"{UNRESOLVABLE}:13306")
    resp = request(server.port, client_context(certs.dir, "front"), "POST", "/api/create_db",
                   {"user_id": uid})
    public = resp.body["data_source"]
    assert UNRESOLVABLE in public
    with channel(server.gateway.grpc_port, certs.ca) as ch:
        cell = run_cell(pb_grpc.SQLFlowStub(ch), "SELECT 6 * 7 AS answer",
                        session(public, uid), 0.1)
    assert cell.tables == [(["answer"], [[42]])]
    delete(server, certs, uid)
