"""A hostile tenant (issue 9, DESIGN §9 "tenants are walls"): alice attacks bob, the state
store and the host through `sql` jobs on sqlite and on MariaDB, through data sources, and
through bob's tokens and routes. Every attempt is refused (a FAILED job naming what was
refused, or a 4xx), and bob's data, the store and the host's files are as they were."""
import asyncio
import hashlib
import json
import os
import sqlite3
import stat
import time
import types
import uuid

import pymysql
import pytest
import sqlalchemy as sa

from conftest import (DATA_SOURCE_RE, RunningServer, admin_connect, client_context,
                      fetch_until_eof, request, run_sql, wait_until)
from sqlflow_playground.blocking import BlockingRunner
from sqlflow_playground.config import Config, ConfigError
from sqlflow_playground.provisioners import make_provisioner
from sqlflow_playground.provisioners import sqlite as sqlite_provisioner
from sqlflow_playground.provisioners.mysql import MysqlProvisioner

NOT_ALLOWED = "is not allowed on the playground"
TOO_LARGE = "larger than fetch_page_bytes (1048576 bytes)"
BOB_SECRET = "bob-private"


def server_settings(certs, state_dir, **overrides):
    settings = dict(port=0, host="127.0.0.1", ca_crt=certs.ca, crl=certs.crl,
                    server_crt=str(certs.dir / "server" / "server.crt"),
                    server_key=str(certs.dir / "server" / "server.key"),
                    state_dir=str(state_dir), log_level="debug",
                    reap_interval_s=3600, heartbeat_flush_s=3600, grpc_port=0)
    settings.update(overrides)
    return settings


def as_user(certs, port, name):
    ctx = client_context(certs.dir, name)
    return lambda method, path, body=None: request(port, ctx, method, path, body)


def fingerprint(path):
    """Bytes and mtime of a file, or None when there is none."""
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest(), os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None


def rows_of(path, sql):
    """Read a sqlite file without writing anything next to it (immutable: no -wal, -shm)."""
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# -- sqlite: one server, alice and bob ----------------------------------------------

@pytest.fixture(scope="module")
def lite(certs, tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    host_dir = base / "host"  # stands for any directory the server's user may write
    host_dir.mkdir()
    server = RunningServer(Config(**server_settings(certs, base / "state")))
    alice, bob = as_user(certs, server.port, "alice"), as_user(certs, server.port, "bob")
    bob_ds = bob("POST", "/api/create_db").body["data_source"]
    assert alice("POST", "/api/create_db").status == 200
    page, _ = run_sql(bob, "CREATE TABLE secret (x TEXT); "
                           f"INSERT INTO secret VALUES ('{BOB_SECRET}')")
    assert page["status"] == "SUCCEEDED", page["message"]
    page, _ = run_sql(alice, "CREATE TABLE mine (id INTEGER PRIMARY KEY, name TEXT); "
                             "INSERT INTO mine (name) VALUES ('a'), ('b')")
    assert page["status"] == "SUCCEEDED", page["message"]
    yield types.SimpleNamespace(
        server=server, alice=alice, bob=bob, host_dir=host_dir,
        bob_path=bob_ds[len("sqlite:///"):].partition("?")[0],
        store_path=str(base / "state" / "store.db"))
    server.stop()


def walls_hold(lite, bob_before, store_before):
    """Bob's file and rows, the store's record of bob, and the host directory unchanged."""
    assert fingerprint(lite.bob_path) == bob_before
    assert rows_of(lite.bob_path, "SELECT x FROM secret") == [(BOB_SECRET,)]
    assert lite.server.gateway.store.get_user("bob") == store_before
    assert os.listdir(lite.host_dir) == []


# Each: what alice sends ({bob} bob's file, {store} the state store, {new} a path in a
# directory the server may write), and what the refusal must name.
SQLITE_ATTEMPTS = [
    ("attach-bobs-file", "ATTACH DATABASE '{bob}' AS b; SELECT * FROM b.secret",
     "ATTACH DATABASE " + NOT_ALLOWED),
    ("attach-bobs-file-as-uri", "ATTACH 'file:{bob}?mode=ro' AS b; SELECT * FROM b.secret",
     "ATTACH DATABASE " + NOT_ALLOWED),
    ("attach-store-read", "ATTACH DATABASE '{store}' AS s; SELECT data_source FROM s.users",
     "ATTACH DATABASE " + NOT_ALLOWED),
    ("attach-store-rewrite", "ATTACH '{store}' AS s; UPDATE s.users SET data_source = ''; "
                             "UPDATE s.jobs SET status = 'CANCELLED'",
     "ATTACH DATABASE " + NOT_ALLOWED),
    ("attach-new-file", "ATTACH DATABASE '{new}' AS n; CREATE TABLE n.t (x)",
     "ATTACH DATABASE " + NOT_ALLOWED),
    ("detach", "DETACH DATABASE b", "DETACH DATABASE " + NOT_ALLOWED),
    ("vacuum-into", "VACUUM INTO '{new}'", "VACUUM INTO " + NOT_ALLOWED),
    ("vacuum-into-after-comment", "/* x */ VACUUM main INTO '{new}'",
     "VACUUM INTO " + NOT_ALLOWED),
    ("load-extension", "SELECT load_extension('{new}')", "load_extension() " + NOT_ALLOWED),
    ("fts3-tokenizer", "SELECT fts3_tokenizer('simple')", "fts3_tokenizer() " + NOT_ALLOWED),
    ("writable-schema", "PRAGMA writable_schema = ON; "
                        "UPDATE sqlite_master SET sql = 'garbage' WHERE name = 'mine'",
     "PRAGMA writable_schema " + NOT_ALLOWED),
    ("temp-store-directory", "PRAGMA temp_store_directory = '{host}'",
     "PRAGMA temp_store_directory " + NOT_ALLOWED),
    ("data-store-directory", "PRAGMA data_store_directory = '{host}'",
     "PRAGMA data_store_directory " + NOT_ALLOWED),
    ("journal-mode-off", "PRAGMA journal_mode = OFF", "setting PRAGMA journal_mode " + NOT_ALLOWED),
    ("schema-version", "PRAGMA schema_version = 1", "setting PRAGMA schema_version " + NOT_ALLOWED),
    ("soft-heap-limit", "PRAGMA soft_heap_limit = 1", "PRAGMA soft_heap_limit " + NOT_ALLOWED),
    ("hex-zeroblob-100MB", "SELECT hex(zeroblob(50000000))", TOO_LARGE),
    # The result is a small number: refused because the 50 MB value is never built.
    ("length-zeroblob-50MB", "SELECT length(zeroblob(50000000))", TOO_LARGE),
]


@pytest.mark.parametrize("sql, refusal", [a[1:] for a in SQLITE_ATTEMPTS],
                         ids=[a[0] for a in SQLITE_ATTEMPTS])
def test_sqlite_attempt_is_refused_and_changes_nothing(lite, sql, refusal):
    bob_before = fingerprint(lite.bob_path)
    store_before = lite.server.gateway.store.get_user("bob")
    mine_before = run_sql(lite.alice, "SELECT sql FROM sqlite_master WHERE name = 'mine'")[1]
    sql = sql.format(bob=lite.bob_path, store=lite.store_path, host=lite.host_dir,
                     new=lite.host_dir / "planted.db")
    page, responses = run_sql(lite.alice, sql)
    assert page["status"] == "FAILED", (page["message"], responses)
    assert refusal in page["message"]
    assert page["message"].startswith("statement 1 of ")  # nothing after it ran
    assert BOB_SECRET not in json.dumps(responses) and "sqlite:" not in json.dumps(responses)
    walls_hold(lite, bob_before, store_before)
    # alice's own schema is intact, and her database still works
    assert run_sql(lite.alice, "SELECT sql FROM sqlite_master WHERE name = 'mine'")[1] \
        == mine_before
    assert [r for r in run_sql(lite.alice, "SELECT count(*) FROM mine")[1] if "row" in r] \
        == [{"row": [2]}]


ALLOWED = [
    ("cte", "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
            "SELECT n FROM r", [[1], [2], [3]]),
    ("temp-table", "CREATE TEMP TABLE scratch (a); INSERT INTO scratch VALUES (7); "
                   "SELECT a FROM scratch", [[7]]),
    ("pragma-table-info", "PRAGMA table_info(mine)",
     [[0, "id", "INTEGER", 0, None, 1], [1, "name", "TEXT", 0, None, 0]]),
    ("pragma-function", "SELECT name FROM pragma_table_info('mine') ORDER BY cid",
     [["id"], ["name"]]),
    ("index-list", "CREATE INDEX IF NOT EXISTS mine_name ON mine (name); "
                   "SELECT name FROM pragma_index_list('mine')", [["mine_name"]]),
    ("savepoints", "BEGIN; SAVEPOINT s; INSERT INTO mine (name) VALUES ('gone'); "
                   "ROLLBACK TO s; RELEASE s; COMMIT; SELECT count(*) FROM mine", [[2]]),
    ("foreign-keys", "PRAGMA foreign_keys = ON; PRAGMA foreign_keys", [[1]]),
    ("read-journal-mode", "PRAGMA journal_mode", [["wal"]]),
    ("vacuum", "VACUUM; SELECT count(*) FROM mine", [[2]]),
    ("fts5", "CREATE VIRTUAL TABLE IF NOT EXISTS docs USING fts5(body); "
             "INSERT INTO docs VALUES ('a quick fox'); "
             "SELECT count(*) > 0 FROM docs WHERE docs MATCH 'quick'", [[1]]),
    ("functions", "SELECT upper('x'), json_extract('{\"a\": 2}', '$.a'), "
                  "length(zeroblob(1000)), length(hex(randomblob(16)))", [["X", 2, 1000, 32]]),
]


@pytest.mark.parametrize("sql, rows", [a[1:] for a in ALLOWED], ids=[a[0] for a in ALLOWED])
def test_ordinary_sqlite_work_is_still_allowed(lite, sql, rows):
    page, responses = run_sql(lite.alice, sql)
    assert page["status"] == "SUCCEEDED", page["message"]
    assert [r["row"] for r in responses if "row" in r] == rows


# -- data sources: the gateway opens only the owner's own file -----------------------

def test_a_data_source_naming_another_file_is_not_opened(lite):
    """As if a route let a tenant choose its data source: the store says alice's database
    is bob's file, the store itself, or a new file. The job refuses to open any of them."""
    store = lite.server.gateway.store
    mine = store.get_user("alice")
    bob_before, store_before = fingerprint(lite.bob_path), store.get_user("bob")
    try:
        for path in (lite.bob_path, lite.store_path, str(lite.host_dir / "planted.db"),
                     os.path.dirname(lite.bob_path) + "/../databases/" +
                     os.path.basename(lite.bob_path)):
            store.save_user("alice", "sqlite", "sqlite:///" + path, mine["resource"],
                            time.time())
            page, responses = run_sql(lite.alice, "SELECT * FROM secret; "
                                                  "CREATE TABLE planted (x)")
            assert page["status"] == "FAILED", page["message"]
            assert "not this user's own database" in page["message"]
            assert path not in page["message"]  # data sources stay out of messages
            assert responses == []
    finally:
        store.save_user("alice", "sqlite", mine["data_source"], mine["resource"], time.time())
    walls_hold(lite, bob_before, store_before)
    assert "planted" not in sa.inspect(store.engine).get_table_names()


def test_a_symlinked_or_hard_linked_database_file_is_not_opened(lite, certs):
    """Someone who could plant a link where alice's file is (not alice) gets nothing."""
    front = as_user(certs, lite.server.port, "front")
    victim_path = lite.bob_path
    for kind in ("symlink", "link"):
        uid = "mallet" + uuid.uuid4().hex[:6]
        ds = front("POST", "/api/create_db", {"user_id": uid}).body["data_source"]
        path = ds[len("sqlite:///"):].partition("?")[0]
        bob_before = fingerprint(victim_path)
        os.remove(path)
        getattr(os, kind)(victim_path, path)
        try:
            page, responses = run_sql(front, "SELECT * FROM secret; DROP TABLE secret", uid)
            assert page["status"] == "FAILED", page["message"]
            assert "not this user's own database" in page["message"]
            assert responses == []
        finally:
            os.remove(path)
        assert fingerprint(victim_path) == bob_before
        assert rows_of(victim_path, "SELECT x FROM secret") == [(BOB_SECRET,)]


def test_no_route_takes_a_data_source(lite):
    evil = "sqlite:///" + lite.bob_path
    for method, path, body, status in [
        ("POST", "/api/create_db", {"data_source": evil}, 400),
        ("POST", "/api/jobs", {"task_type": "sql", "spec": {"sql": "SELECT 1"},
                               "data_source": evil}, 400),
        ("POST", "/api/jobs", {"task_type": "sql",
                               "spec": {"sql": "SELECT 1", "data_source": evil}}, 422),
        ("POST", "/plugins/v1/sql/v1", {"spec": {"sql": "SELECT 1"}, "data_source": evil}, 400),
    ]:
        resp = lite.alice(method, path, body)
        assert resp.status == status, (path, resp.body)
    databases = sqlite_provisioner.databases_directory(os.path.dirname(lite.store_path))
    kept = lite.server.gateway.store.get_user("alice")["data_source"]
    assert sqlite_provisioner.data_source_path(kept) == \
        sqlite_provisioner.database_path(databases, "alice") and evil not in kept


def test_sqlite_files_are_private_from_the_start_and_never_through_a_link(tmp_path, monkeypatch):
    seen = {}
    connect = sqlite3.connect

    def spy(path, *args, **kw):
        seen["mode"] = stat.S_IMODE(os.stat(path).st_mode) if os.path.exists(path) else None
        return connect(path, *args, **kw)

    monkeypatch.setattr(sqlite_provisioner.sqlite3, "connect", spy)
    provisioner = sqlite_provisioner.SqliteProvisioner(None, str(tmp_path / "state"))
    old_umask = os.umask(0o022)
    try:
        path = provisioner._create("alice")
        assert seen["mode"] == 0o600  # before sqlite ever opened it
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        target = tmp_path / "elsewhere.db"
        target.write_bytes(b"")
        os.chmod(target, 0o644)
        os.symlink(target, provisioner.path_for("bob"))
        with pytest.raises(OSError):
            provisioner._create("bob")
        assert target.read_bytes() == b"" and stat.S_IMODE(os.stat(target).st_mode) == 0o644
    finally:
        os.umask(old_umask)


# -- bob's tokens and routes ------------------------------------------------------

def test_bobs_tokens_and_routes_are_closed_to_alice(lite):
    created = lite.bob("POST", "/api/jobs", {"task_type": "sql",
                                             "spec": {"sql": "SELECT x FROM secret"}})
    token = created.body["token"]
    bob_page, bob_responses, _ = fetch_until_eof(lite.bob, token)
    for method, path in [("GET", f"/api/jobs/{token}"), ("DELETE", f"/api/jobs/{token}"),
                         ("GET", f"/plugins/v1/sql/v1/{token}"),
                         ("DELETE", f"/plugins/v1/sql/v1/{token}")]:
        resp = lite.alice(method, path)
        assert resp.status == 404, (method, path, resp.body)
        assert BOB_SECRET not in json.dumps(resp.body)
    for method, path, body in [
        ("GET", "/api/users/bob", None), ("GET", "/api/jobs?user_id=bob", None),
        ("POST", "/api/delete_db", {"user_id": "bob"}),
        ("POST", "/api/create_db", {"user_id": "bob"}),
        ("POST", "/api/jobs", {"user_id": "bob", "task_type": "sql",
                               "spec": {"sql": "DROP TABLE secret"}}),
        ("POST", "/plugins/v1/sql/v1", {"user_id": "bob", "spec": {"sql": "DROP TABLE secret"}}),
    ]:
        resp = lite.alice(method, path, body)
        assert resp.status == 403, (method, path, resp.body)
    again = lite.bob("GET", f"/api/jobs/{token}").body
    assert again["status"] == bob_page["status"] == "SUCCEEDED"
    assert {"row": [BOB_SECRET]} in bob_responses
    assert rows_of(lite.bob_path, "SELECT x FROM secret") == [(BOB_SECRET,)]


# -- output cap --------------------------------------------------------------------

def test_output_cap_ends_the_job_failed_and_keeps_the_output(certs, tmp_path):
    server = RunningServer(Config(**server_settings(certs, tmp_path / "state",
                                                    max_output_bytes=20000)))
    try:
        alice = as_user(certs, server.port, "alice")
        alice("POST", "/api/create_db")
        created = alice("POST", "/api/jobs", {"task_type": "sql", "spec": {
            "sql": "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r "
                   "WHERE n < 1000000) SELECT n FROM r"}})
        page, responses, _ = fetch_until_eof(alice, created.body["token"])
        assert page["status"] == "FAILED"
        assert "--max_output_bytes" in page["message"] and "20000 bytes" in page["message"]
        rows = [r["row"][0] for r in responses if "row" in r]
        assert responses[0] == {"head": ["n"]} and rows == list(range(1, len(rows) + 1))
        assert 1000 < len(rows) < 5000
        out = tmp_path / "state" / "jobs" / created.body["token"] / "responses.jsonl"
        assert out.stat().st_size <= 20000
    finally:
        server.stop()


# -- MariaDB -----------------------------------------------------------------------

MAX_CONNECTIONS, TENANT_HOST = 3, "127.0.0.%"


@pytest.fixture(scope="module")
def maria(certs, mariadb, tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile_mysql")
    server = RunningServer(Config(**server_settings(
        certs, base / "state", provisioner="mysql", mysql_dsn=mariadb,
        mysql_max_user_connections=MAX_CONNECTIONS, mysql_tenant_host=TENANT_HOST)))
    front = as_user(certs, server.port, "front")
    alice, bob = ("h" + uuid.uuid4().hex[:10] for _ in range(2))
    sources = {u: DATA_SOURCE_RE.match(front("POST", "/api/create_db", {"user_id": u})
                                       .body["data_source"]).groupdict() for u in (alice, bob)}
    page, _ = run_sql(front, "CREATE TABLE secret (x VARCHAR(40)); "
                             f"INSERT INTO secret VALUES ('{BOB_SECRET}')", bob)
    assert page["status"] == "SUCCEEDED", page["message"]
    assert run_sql(front, "CREATE TABLE t (x TEXT)", alice)[0]["status"] == "SUCCEEDED"
    yield types.SimpleNamespace(server=server, front=front, alice=alice, bob=bob,
                                sources=sources, host_dir=base)
    for u in (alice, bob):
        front("POST", "/api/delete_db", {"user_id": u})
    server.stop()


def connect_as(ds):
    return pymysql.connect(host=ds["host"], port=int(ds["port"]), user=ds["user"],
                           password=ds["password"], database=ds["db"], connect_timeout=5)


def accounts(maria):
    users = [s["user"] for s in maria.sources.values()] + ["evil"]
    return admin_rows("SELECT user, host, max_user_connections FROM mysql.user "
                      "WHERE user IN %s ORDER BY user, host", (users,))


def admin_rows(sql, args=()):
    with admin_connect() as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


MYSQL_ATTEMPTS = [
    ("read-bobs-database", "SELECT x FROM `{bobdb}`.secret", "denied"),
    ("rewrite-bobs-database", "DELETE FROM `{bobdb}`.secret", "denied"),
    ("grant-itself-bobs-database", "GRANT SELECT ON `{bobdb}`.* TO CURRENT_USER", "denied"),
    ("read-accounts", "SELECT authentication_string FROM mysql.user", "denied"),
    ("create-account", "CREATE USER 'evil'@'%' IDENTIFIED BY 'x'", "denied"),
    ("raise-own-limit", "SET GLOBAL max_user_connections = 0", "privilege"),
    ("write-host-file", "SELECT 'x' INTO OUTFILE '{new}'", "denied"),
    ("read-gateway-file", "LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t", "not allowed"),
    ("oversized-row", "SELECT REPEAT('x', 2000000)", TOO_LARGE),
]


@pytest.mark.parametrize("sql, refusal", [a[1:] for a in MYSQL_ATTEMPTS],
                         ids=[a[0] for a in MYSQL_ATTEMPTS])
def test_mysql_attempt_is_refused_and_changes_nothing(maria, sql, refusal):
    bobdb = maria.sources[maria.bob]["db"]
    accounts_before = accounts(maria)
    new = maria.host_dir / "planted.txt"
    page, responses = run_sql(maria.front, sql.format(bobdb=bobdb, new=new), maria.alice)
    assert page["status"] == "FAILED", (page["message"], responses)
    assert refusal in page["message"]
    assert BOB_SECRET not in json.dumps(responses)
    assert admin_rows(f"SELECT x FROM `{bobdb}`.secret") == ((BOB_SECRET,),)
    assert accounts(maria) == accounts_before
    assert not new.exists()


def test_mysql_accounts_have_the_flags_host_and_connection_limit(maria):
    for user_id in (maria.alice, maria.bob):
        assert admin_rows("SELECT host, max_user_connections FROM mysql.user WHERE user = %s",
                          (maria.sources[user_id]["user"],)) == ((TENANT_HOST, MAX_CONNECTIONS),)


def test_a_mysql_tenant_cannot_open_more_than_its_connections(maria):
    mine, theirs = maria.sources[maria.alice], maria.sources[maria.bob]
    held = [connect_as(mine) for _ in range(MAX_CONNECTIONS)]
    try:
        with pytest.raises(pymysql.err.OperationalError) as refused:
            connect_as(mine)
        assert refused.value.args[0] == 1226  # ER_USER_LIMIT_REACHED
        page, _ = run_sql(maria.front, "SELECT 1", maria.alice)
        assert page["status"] == "FAILED" and "max_user_connections" in page["message"]
        assert mine["password"] not in page["message"]
        # the limit is alice's alone: bob is not affected
        page, responses = run_sql(maria.front, "SELECT x FROM secret", maria.bob)
        assert page["status"] == "SUCCEEDED" and {"row": [BOB_SECRET]} in responses
        with connect_as(theirs):
            pass
    finally:
        for conn in held:
            conn.close()
    assert wait_until(lambda: not admin_rows(
        "SELECT id FROM information_schema.processlist WHERE user = %s", (mine["user"],)), 30)
    page, _ = run_sql(maria.front, "SELECT 1", maria.alice)
    assert page["status"] == "SUCCEEDED", page["message"]


def test_release_drops_the_account_with_its_host(maria, certs):
    uid = "h" + uuid.uuid4().hex[:10]
    ds = DATA_SOURCE_RE.match(maria.front("POST", "/api/create_db", {"user_id": uid})
                              .body["data_source"]).groupdict()
    assert admin_rows("SELECT host FROM mysql.user WHERE user = %s",
                      (ds["user"],)) == ((TENANT_HOST,),)
    assert maria.front("POST", "/api/delete_db", {"user_id": uid}).body["released"] is True
    assert admin_rows("SELECT host FROM mysql.user WHERE user = %s", (ds["user"],)) == ()


def test_accounts_made_without_a_limit_get_one_at_start(mariadb):
    unlimited, limited = ("sfp_zz" + uuid.uuid4().hex[:8] for _ in range(2))
    admin_rows("CREATE USER %s@'%%' IDENTIFIED BY 'x'", (unlimited,))
    admin_rows("CREATE USER %s@'%%' IDENTIFIED BY 'x' WITH MAX_USER_CONNECTIONS 7", (limited,))
    runner = BlockingRunner(1)
    provisioner = MysqlProvisioner(runner, mariadb, max_user_connections=4)
    try:
        asyncio.run(provisioner.check())  # what the server does at start
        limit = "SELECT max_user_connections FROM mysql.user WHERE user = %s"
        # 4, or another server's limit if one started meanwhile: never none any more
        assert admin_rows(limit, (unlimited,))[0][0] > 0
        assert admin_rows(limit, (limited,)) == ((7,),)  # a limit already set is kept
    finally:
        for user in (unlimited, limited):
            admin_rows("DROP USER IF EXISTS %s@'%%'", (user,))
        provisioner.close()
        runner.shutdown()


@pytest.mark.parametrize("host", ["x'@'%", "10.0.% ", "a\\b", "", "h`", "10.0.%'; DROP"])
def test_a_tenant_host_that_is_not_a_plain_pattern_is_a_config_error(host):
    config = Config(provisioner="mysql", mysql_dsn="mysql://root@127.0.0.1:3306/",
                    mysql_tenant_host=host)
    with pytest.raises(ConfigError, match="mysql_tenant_host"):
        make_provisioner(config, None)
