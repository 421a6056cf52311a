"""The state store on every backend it supports (sqlite, MariaDB, PostgreSQL): each Store
method, migrations from the previous release's schema and between replicas starting at
once, a gateway on PostgreSQL, and store URLs that stay out of argv and logs."""
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import sqlalchemy as sa

from conftest import admin_connect, client_context, fetch_until_eof, request
from sqlflow_playground import migrations
from sqlflow_playground.config import ConfigError, load_config
from sqlflow_playground.store import Store, jobs, metadata, normalize_url, users

BACKENDS = ["sqlite", "mariadb", "postgres"]


def _admin_engine(postgres_url):
    return sa.create_engine(normalize_url(postgres_url), isolation_level="AUTOCOMMIT")


@pytest.fixture
def fresh_url(request, tmp_path):
    """``fresh_url(backend)``: the URL of a new, empty database, dropped after the test."""
    dropped = []

    def make(backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path}/store-{secrets.token_hex(4)}.db"
        admin = request.getfixturevalue(backend)  # skips, or fails under CI=true, if down
        name = "sfp_test_" + secrets.token_hex(6)
        if backend == "mariadb":
            with admin_connect() as conn, conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {name}")
            dropped.append(lambda: _drop_mariadb(name))
            return admin.rstrip("/") + "/" + name
        engine = _admin_engine(admin)
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        dropped.append(lambda: _drop_postgres(engine, name))
        return normalize_url(admin).set(drivername="postgresql", database=name) \
            .render_as_string(hide_password=False)

    yield make
    for drop in dropped:
        drop()


def _drop_mariadb(name):
    with admin_connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")


def _drop_postgres(engine, name):
    with engine.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def url(request, fresh_url):
    return fresh_url(request.param)


@pytest.fixture
def store(url):
    s = Store(url)
    yield s
    s.close()


def job(token, user_id="alice", **kw):
    values = dict(token=token, user_id=user_id, task_type="sql", version="v1",
                  spec={"sql": "SELECT 1"}, meta=None, status="RUNNING",
                  created_at=1000.0, started_at=1000.0, last_fetched_at=1000.0,
                  fetch_timeout_s=600.0, replica="r1")
    values.update(kw)
    return values


# -- every Store method, on every backend --------------------------------------------

def test_users_lifecycle(store):
    now = time.time()  # a full-precision float must come back exactly (DOUBLE, not REAL)
    long_id = "u" * 64
    source = "mysql://u:" + "p" * 5000 + "@tcp(h:3306)/db?maxAllowedPacket=0"
    saved = store.save_user(long_id, "mysql", source, {"db": "sfp_x", "ü": [1, 2]}, now)
    assert saved["resource"] == {"db": "sfp_x", "ü": [1, 2]}
    row = store.get_user(long_id)
    assert (row["status"], row["data_source"], row["created_at"], row["last_seen_at"]) == (
        "ready", source, now, now)
    assert row["resource"] == {"db": "sfp_x", "ü": [1, 2]}
    store.save_user("bob", "sqlite", "sqlite:///b.db", {}, now)
    assert [u["user_id"] for u in store.list_users()] == ["bob", long_id]
    # saving again replaces the row (a stale one left by a crash)
    store.save_user("bob", "sqlite", "sqlite:///b2.db", {}, now + 1)
    assert store.get_user("bob")["data_source"] == "sqlite:///b2.db"

    store.touch_users({"bob": now + 10, long_id: now - 10})  # only ever forward
    assert store.get_user("bob")["last_seen_at"] == now + 10
    assert store.get_user(long_id)["last_seen_at"] == now
    store.touch_users({})

    store.delete_user("bob")
    assert store.get_user("bob") is None
    assert store.get_user("nobody") is None
    store.delete_user("nobody")


def test_provisioning_claim_goes_to_one_caller_and_is_taken_over_by_compare_and_set(store):
    assert store.begin_provisioning("alice", "mysql", 100.0, "r1/aaaa", 400.0) is True
    # the duplicate insert is an IntegrityError inside
    assert store.begin_provisioning("alice", "mysql", 101.0, "r2/bbbb", 401.0) is False
    seen = store.get_user("alice")
    assert (seen["status"], seen["claimed_by"], seen["claim_expires_at"]) == \
        ("provisioning", "r1/aaaa", 400.0)
    assert store.provisioning_claims()[0]["user_id"] == "alice"
    # of two callers that saw the same claim, one takes it over
    assert store.take_over(seen, "provisioning", "r2/bbbb", 700.0, 401.0) is True
    assert store.take_over(seen, "releasing", "r3/cccc", 700.0, 402.0) is False
    now = store.get_user("alice")
    assert (now["claimed_by"], now["claim_expires_at"], now["status_changed_at"]) == \
        ("r2/bbbb", 700.0, 401.0)
    assert store.idle_candidates(0.0, 0.0, now=699.0) == []
    store.expire_claim("alice", "r9/zzzz")  # not its claim: nothing changes
    assert store.get_user("alice")["claim_expires_at"] == 700.0
    store.expire_claim("alice", "r2/bbbb")
    assert store.idle_candidates(0.0, 0.0, now=699.0) == ["alice"]
    store.save_user("alice", "mysql", "ds", {}, 302.0)
    assert store.begin_provisioning("alice", "mysql", 900.0, "r1/aaaa", 1200.0) is False
    assert store.provisioning_claims() == []


def test_release_claim_has_one_winner_and_takes_over_abandoned_releases(store):
    store.save_user("alice", "sqlite", "ds", {"f": "a.db"}, 100.0)
    assert store.claim_for_release("alice", idle_before=50.0) is None  # seen since
    assert store.idle_candidates(idle_before=50.0, stale_before=0.0) == []
    assert store.idle_candidates(idle_before=150.0, stale_before=0.0) == ["alice"]
    won = store.claim_for_release("alice", idle_before=150.0)
    assert won["status"] == "releasing" and won["resource"] == {"f": "a.db"}
    assert store.claim_for_release("alice") is None  # the second claimer loses
    changed = won["status_changed_at"]
    assert store.claim_for_release("alice", stale_before=changed - 1) is None
    assert store.idle_candidates(idle_before=150.0, stale_before=changed - 1) == []
    assert store.idle_candidates(idle_before=0.0, stale_before=changed + 1) == ["alice"]
    assert store.claim_for_release("alice", stale_before=changed + 1)["status"] == "releasing"
    assert store.claim_for_release("nobody") is None


def test_jobs_insert_get_update_and_list(store):
    spec = {"sql": "SELECT 'é'", "n": [1, 2.5]}
    store.insert_job(**job("t1", spec=spec, meta={"pid": 7}, replica="r" * 255))
    store.insert_job(**job("t2", created_at=2000.0))
    store.insert_job(**job("t3", user_id="bob", created_at=3000.0, status="PENDING"))
    got = store.get_job("t1")
    assert (got["spec"], got["meta"], got["outputs"], got["message"]) == (spec, {"pid": 7}, None, "")
    assert got["replica"] == "r" * 255
    assert store.get_job("nope") is None

    # conditional update: of two finishers exactly one wins
    assert store.update_job("t1", only_if_active=True, status="SUCCEEDED", finished_at=1500.0,
                            outputs={"rows": 1}) is True
    assert store.update_job("t1", only_if_active=True, status="FAILED") is False
    assert store.get_job("t1")["status"] == "SUCCEEDED"
    assert store.get_job("t1")["outputs"] == {"rows": 1}
    assert store.update_job("t1", message="note") is True
    assert store.update_job("t1", message="note") is True  # matched, though nothing changed
    assert store.update_job("nope", message="x") is False

    assert [j["token"] for j in store.list_jobs()] == ["t3", "t2", "t1"]
    assert [j["token"] for j in store.list_jobs(user_id="alice")] == ["t2", "t1"]
    assert [j["token"] for j in store.list_jobs(status="SUCCEEDED")] == ["t1"]
    assert [j["token"] for j in store.list_jobs(limit=1)] == ["t3"]
    assert sorted(j["token"] for j in store.active_jobs()) == ["t2", "t3"]
    assert [j["token"] for j in store.active_jobs(user_id="bob")] == ["t3"]
    assert store.count_active_jobs() == 2
    assert store.count_active_jobs(user_id="alice") == 1
    assert store.count_active_jobs(user_id="carol") == 0


def test_jobs_touch_abandoned_expired_tokens_and_delete(store):
    store.insert_job(**job("run", last_fetched_at=1000.0, fetch_timeout_s=60.0))
    store.insert_job(**job("done", status="SUCCEEDED", finished_at=1100.0,
                           last_fetched_at=1000.0, fetch_timeout_s=60.0))
    # last_fetched_at + fetch_timeout_s < now, for active jobs only
    assert store.abandoned_jobs(now=1059.0) == []
    assert [j["token"] for j in store.abandoned_jobs(now=1061.0)] == ["run"]
    store.touch_jobs({"run": 1050.0, "done": 900.0})  # only ever forward
    assert store.get_job("run")["last_fetched_at"] == 1050.0
    assert store.get_job("done")["last_fetched_at"] == 1000.0
    store.touch_jobs({})
    assert store.abandoned_jobs(now=1061.0) == []

    assert store.expired_jobs(finished_before=1100.0) == []
    assert [j["token"] for j in store.expired_jobs(finished_before=1101.0)] == ["done"]
    assert sorted(store.job_tokens()) == ["done", "run"]
    asked = [f"x{i}" for i in range(1100)] + ["run", "done"]  # asked in chunks of 500
    assert store.known_job_tokens(asked) == {"run", "done"}
    assert store.known_job_tokens([]) == set()
    store.delete_job("done")
    assert store.job_tokens() == ["run"]
    store.delete_job("nope")


def test_two_stores_on_one_database_see_each_other(url):
    a, b = Store(url), Store(url)
    try:
        assert a.begin_provisioning("alice", "mysql", 1.0, "a/1", 99.0) is True
        assert b.begin_provisioning("alice", "mysql", 1.0, "b/1", 99.0) is False
        a.save_user("alice", "mysql", "ds", {}, 2.0)
        assert b.claim_for_release("alice")["user_id"] == "alice"
        assert a.claim_for_release("alice") is None
    finally:
        a.close()
        b.close()


def test_urls_get_this_packages_drivers():
    assert normalize_url("mysql://root@h/db").drivername == "mysql+pymysql"
    assert normalize_url("postgresql://u:p@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u:p@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+psycopg2://h/db").drivername == "postgresql+psycopg2"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"


def test_sqlite_store_file_is_private_from_the_start(tmp_path, monkeypatch):
    opened_modes = []
    import sqlite3.dbapi2
    real_connect = sqlite3.dbapi2.connect

    def spy(path, *a, **kw):  # the file's mode when sqlite first opens it
        opened_modes.append(os.stat(path).st_mode & 0o777 if os.path.exists(path) else None)
        return real_connect(path, *a, **kw)
    monkeypatch.setattr(sqlite3.dbapi2, "connect", spy)  # what SQLAlchemy calls
    old = os.umask(0o022)  # a umask that would make sqlite's own file 0644
    try:
        s = Store(f"sqlite:///{tmp_path}/state/store.db")
        s.close()
    finally:
        os.umask(old)
    assert opened_modes and opened_modes[0] == 0o600
    assert os.stat(tmp_path / "state" / "store.db").st_mode & 0o777 == 0o600


def test_job_output_chunks_are_read_back_by_byte_range(store):
    store.insert_job(**job("t1"))
    assert store.shipped_size("t1") == 0 and store.read_output("t1", 0, 100) == b""
    data = bytes(range(256)) * 1000  # every byte value, 256,000 bytes
    store.append_output([("t1", 0, data[:100_000]), ("t1", 100_000, data[100_000:200_000])])
    store.append_output([("t1", 200_000, data[200_000:])])
    assert store.shipped_size("t1") == len(data)
    for start, size in ((0, 10), (99_990, 20), (5, 250_000), (199_999, 2), (255_990, 100)):
        assert store.read_output("t1", start, size) == data[start:start + size]
    assert store.read_output("t1", len(data), 10) == b""
    assert store.job_statuses(["t1", "nope"]) == {"t1": "RUNNING"}
    assert store.job_tokens_of("alice") == ["t1"] and store.job_tokens_of("bob") == []
    store.delete_job("t1")  # the output goes with the row
    assert store.shipped_size("t1") == 0


def test_jobs_of_a_replica_whose_lease_ran_out_are_found(store):
    store.renew_lease("r1", "boot1", until=100.0)
    store.renew_lease("r2", "boot2", until=200.0)
    store.renew_lease("r1", "boot1b", until=150.0)  # renewed (by a later life)
    assert store.lease_of("r1") == {"name": "r1", "boot": "boot1b", "lease_until": 150.0}
    store.insert_job(**job("a", replica="r1"))
    store.insert_job(**job("b", replica="r2"))
    store.insert_job(**job("c", replica="r1", task_type="pod"))  # not a local kind
    store.insert_job(**job("d", replica="r1", status="SUCCEEDED"))
    store.insert_job(**job("e", replica="r3"))  # no lease at all
    kinds = [("sql", "v1"), ("process", "v1")]
    assert [j["token"] for j in store.jobs_of_lost_replicas(120.0, kinds)] == ["e"]
    assert sorted(j["token"] for j in store.jobs_of_lost_replicas(160.0, kinds)) == ["a", "e"]
    assert sorted(j["token"] for j in store.jobs_of_lost_replicas(300.0, kinds)) == [
        "a", "b", "e"]
    store.drop_lease("r2", "other-boot")  # not its life: kept
    assert store.lease_of("r2") is not None
    store.drop_lease("r2", "boot2")
    assert store.lease_of("r2") is None


# -- migrations ------------------------------------------------------------------------

# The schema as the release before migrations created it (metadata.create_all), frozen.
PREVIOUS_RELEASE_DDL = """
CREATE TABLE jobs (
    token VARCHAR(64) NOT NULL, user_id VARCHAR(64) NOT NULL,
    task_type VARCHAR(64) NOT NULL, version VARCHAR(32) NOT NULL, spec TEXT NOT NULL,
    meta TEXT, status VARCHAR(16) NOT NULL, message TEXT NOT NULL, outputs TEXT,
    created_at DOUBLE NOT NULL, started_at DOUBLE, finished_at DOUBLE,
    last_fetched_at DOUBLE NOT NULL, fetch_timeout_s DOUBLE NOT NULL,
    replica VARCHAR(255) NOT NULL, PRIMARY KEY (token));
CREATE INDEX ix_jobs_status ON jobs (status);
CREATE INDEX ix_jobs_user_id ON jobs (user_id);
CREATE TABLE users (
    user_id VARCHAR(64) NOT NULL, provisioner VARCHAR(32) NOT NULL,
    status VARCHAR(16) NOT NULL, data_source TEXT NOT NULL, resource TEXT NOT NULL,
    created_at DOUBLE NOT NULL, last_seen_at DOUBLE NOT NULL,
    status_changed_at DOUBLE NOT NULL, PRIMARY KEY (user_id));
INSERT INTO users VALUES ('alice', 'mysql', 'ready', 'mysql://a:pw@tcp(h:3306)/d',
    '{"database": "d"}', 1700000000.25, 1700000100.5, 1700000000.25);
INSERT INTO jobs VALUES ('tok1', 'alice', 'sql', 'v1', '{"sql": "SELECT 1"}', NULL,
    'SUCCEEDED', 'done', '{"rows": 1}', 1700000001.0, 1700000002.0, 1700000003.0,
    1700000004.0, 600.0, 'replica-a');
"""


def previous_release_store(url):
    engine = sa.create_engine(normalize_url(url))
    ddl = PREVIOUS_RELEASE_DDL
    if engine.dialect.name == "postgresql":
        ddl = ddl.replace("DOUBLE", "DOUBLE PRECISION")
    with engine.begin() as conn:
        for statement in ddl.split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)
    return engine


def versions(url):
    engine = sa.create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            return sorted(conn.execute(sa.select(migrations.schema_version.c.version)).scalars())
    finally:
        engine.dispose()


def test_previous_release_schema_is_migrated_with_its_rows_kept(url):
    previous_release_store(url).dispose()
    store = Store(url)
    try:
        alice = store.get_user("alice")
        assert (alice["data_source"], alice["resource"], alice["last_seen_at"]) == (
            "mysql://a:pw@tcp(h:3306)/d", {"database": "d"}, 1700000100.5)
        assert (alice["claimed_by"], alice["claim_expires_at"]) == (None, None)  # v2
        tok1 = store.get_job("tok1")
        assert (tok1["status"], tok1["outputs"], tok1["replica"]) == ("SUCCEEDED", {"rows": 1},
                                                                      "replica-a")
        store.insert_job(**job("tok2"))
        assert sorted(store.job_tokens()) == ["tok1", "tok2"]
    finally:
        store.close()
    assert versions(url) == [m[0] for m in migrations.MIGRATIONS]
    Store(url).close()  # a second start finds nothing to do
    assert versions(url) == [m[0] for m in migrations.MIGRATIONS]


def test_migrated_schema_is_exactly_the_tables_store_queries(url):
    Store(url).close()
    engine = sa.create_engine(normalize_url(url))
    try:
        inspector = sa.inspect(engine)
        assert set(inspector.get_table_names()) == set(metadata.tables) | {"schema_version"}
        for table in (users, jobs):
            found = {c["name"]: c["nullable"] for c in inspector.get_columns(table.name)}
            assert found == {c.name: c.nullable for c in table.columns}, table.name
        assert {i["name"] for i in inspector.get_indexes("jobs")} == {
            i.name for i in jobs.indexes}
    finally:
        engine.dispose()


def test_a_migration_runs_once_when_two_replicas_start_at_once(url, monkeypatch):
    runs = []

    def v2_test_only(conn):  # slow and not repeatable: a second run would fail
        runs.append(threading.get_ident())
        time.sleep(0.5)
        conn.exec_driver_sql("CREATE TABLE migration_probe (id INTEGER PRIMARY KEY)")
        migrations.add_column(conn, "jobs", sa.Column("probe", sa.String(8)))
    last = migrations.MIGRATIONS[-1][0]
    monkeypatch.setattr(migrations, "MIGRATIONS",
                        migrations.MIGRATIONS + [(last + 1, v2_test_only)])

    barrier, stores, errors = threading.Barrier(2), [], []

    def start():
        barrier.wait()
        try:
            stores.append(Store(url))
        except Exception as e:  # reported below
            errors.append(e)
    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    assert errors == [] and len(stores) == 2
    assert len(runs) == 1
    assert versions(url) == list(range(1, last + 2))
    engine = sa.create_engine(normalize_url(url))
    try:
        assert "probe" in {c["name"] for c in sa.inspect(engine).get_columns("jobs")}
    finally:
        engine.dispose()


# -- a gateway on PostgreSQL -------------------------------------------------------------

def test_gateway_on_a_postgres_store_serves_create_db_and_a_sql_job(make_server, certs,
                                                                    fresh_url):
    url = fresh_url("postgres")
    server = make_server(db_url=url)
    assert server.gateway.store.url.get_backend_name() == "postgresql"
    ctx = client_context(certs.dir, "alice")

    def fetch(method, path, body=None):
        return request(server.port, ctx, method, path, body)
    created = fetch("POST", "/api/create_db", {"user_id": "alice"})
    assert created.status == 200, created.body
    submitted = fetch("POST", "/api/jobs", {"task_type": "sql",
                                            "spec": {"sql": "SELECT 41 + 1 AS answer"}})
    assert submitted.status == 201, submitted.body
    body, responses, _ = fetch_until_eof(fetch, submitted.body["token"])
    assert body["status"] == "SUCCEEDED", body
    assert {"head": ["answer"]} in responses and {"row": [42]} in responses
    engine = sa.create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:  # the state is in PostgreSQL, not in a sqlite file
            assert conn.execute(sa.text("SELECT status FROM users WHERE user_id = 'alice'"))\
                .scalar() == "ready"
            assert conn.execute(sa.text("SELECT status FROM jobs")).scalar() == "SUCCEEDED"
    finally:
        engine.dispose()


# -- secrets from a file or the environment, never on argv nor in logs --------------------

def test_secrets_come_from_files_or_the_environment(tmp_path):
    url_file, dsn_file = tmp_path / "db_url", tmp_path / "mysql_dsn"
    url_file.write_text("postgresql://gw:s3cret@db/playground\n")
    dsn_file.write_text("mysql://root:pw@127.0.0.1:3306\n")
    config = load_config([f"--db_url_file={url_file}", f"--mysql_dsn_file={dsn_file}"],
                         environ={})
    assert config.store_url == "postgresql://gw:s3cret@db/playground"
    assert config.mysql_dsn == "mysql://root:pw@127.0.0.1:3306"
    env = {"SQLFLOW_PLAYGROUND_DB_URL_FILE": str(url_file)}
    assert load_config([], environ=env).db_url == "postgresql://gw:s3cret@db/playground"
    env = {"SQLFLOW_PLAYGROUND_DB_URL": "mysql://gw:pw@db/x"}
    assert load_config([], environ=env).store_url == "mysql://gw:pw@db/x"


@pytest.mark.parametrize("argv,content,needle", [
    (["--db_url=sqlite:///x.db"], "sqlite:///y.db", "not both"),
    ([], "", "empty"),
    ([], None, "cannot read"),
])
def test_bad_secret_files_are_refused_without_showing_their_content(tmp_path, argv,
                                                                    content, needle):
    path = tmp_path / "db_url"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=needle) as raised:
        load_config(argv + [f"--db_url_file={path}"], environ={})
    assert "y.db" not in str(raised.value)


def test_connection_errors_do_not_show_the_password():
    with pytest.raises(sa.exc.OperationalError) as raised:
        Store("postgresql://gw:Pw-marker-77@127.0.0.1:1/playground")
    assert "Pw-marker-77" not in str(raised.value)


def test_gateway_logs_never_show_the_store_url(make_server, certs, fresh_url, caplog):
    marker = "Pw-" + secrets.token_hex(8)  # trust auth: the password is never asked for
    url = fresh_url("postgres").replace("postgres@", f"postgres:{marker}@")
    caplog.set_level(logging.DEBUG)
    server = make_server(db_url=url)
    ctx = client_context(certs.dir, "alice")
    assert request(server.port, ctx, "POST", "/api/create_db", {}).status == 200
    server.stop()
    assert "serving https" in caplog.text
    assert marker not in caplog.text


@pytest.mark.parametrize("way", ["file", "environment"])
def test_server_process_keeps_the_store_url_off_argv_and_out_of_its_log(tmp_path, fresh_url,
                                                                         way):
    marker = "Pw-" + secrets.token_hex(8)
    url = fresh_url("postgres").replace("postgres@", f"postgres:{marker}@")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "sqlflow_playground", "--insecure", "--port=0",
            "--host=127.0.0.1", f"--state_dir={tmp_path / 'state'}", "--log_level=debug"]
    if way == "file":
        (tmp_path / "db_url").write_text(url + "\n")
        args.append(f"--db_url_file={tmp_path / 'db_url'}")
    else:
        env["SQLFLOW_PLAYGROUND_DB_URL"] = url
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    output = []
    try:
        for line in proc.stdout:
            output.append(line)
            if "serving http on" in line:
                break
        assert "serving http on" in output[-1], "".join(output)
        port = int(output[-1].rsplit(":", 1)[1].split()[0])
        with open(f"/proc/{proc.pid}/cmdline", "rb") as fh:
            argv = fh.read().decode()
        assert marker not in argv and "postgres" not in argv
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/create_db",
                                     data=b'{"user_id": "dev"}', method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.loads(resp.read())["user_id"] == "dev"
    finally:
        proc.terminate()
        rest, _ = proc.communicate(timeout=15)
    log = "".join(output) + rest
    assert proc.returncode == 0, log
    assert "stopped" in log
    assert marker not in log
    engine = sa.create_engine(normalize_url(url))
    try:  # and the server did use that store
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT user_id FROM users")).scalar() == "dev"
    finally:
        engine.dispose()


def test_deployment_takes_the_store_url_from_a_mounted_secret_not_from_args():
    from pathlib import Path
    import yaml
    deploy = Path(__file__).resolve().parents[1] / "deploy" / "deployment.yaml"
    pod = yaml.safe_load(deploy.read_text())["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert not [a for a in args if a.startswith(("--db_url=", "--mysql_dsn=")) or "$(" in a]
    assert "--db_url_file=/secrets/db/db_url" in args
    assert not [e for e in container.get("env", []) if "valueFrom" in e]  # no secret in env
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    assert mounts["/secrets/db"]["secret"]["secretName"] == "sqlflow-playground-db"
    assert mounts["/secrets/db"]["secret"]["defaultMode"] == 0o440
