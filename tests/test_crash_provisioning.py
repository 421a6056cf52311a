"""kill -9 while provisioning (issue 10): nothing stays stuck in `provisioning`, a repeated
create_db works, and nothing is left on the MySQL server that the store cannot explain.
Against the real MariaDB (127.0.0.1:3306); under CI=true these tests fail without it."""
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pymysql
import pytest

from conftest import (DATA_SOURCE_RE, admin_connect, client_context, request,
                      start_server_process, stop_server_process, wait_until)
from sqlflow_playground.store import Store

USERS = 60


def start_server(certs, state_dir, mariadb):
    """A real server process (MySQL provisioner, replica r1); returns (process, port)."""
    return start_server_process(certs, state_dir, "--replica=r1", "--provisioner=mysql",
                                f"--mysql_dsn={mariadb}", "--executor_threads=32")


def tenant_objects(prefix):
    """The MySQL databases and accounts of this test's users."""
    with admin_connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW DATABASES LIKE %s", (f"sfp\\_{prefix}%",))
        databases = sorted(r[0] for r in cur.fetchall())
        cur.execute("SELECT user FROM mysql.user WHERE user LIKE %s", (f"sfp\\_{prefix}%",))
        accounts = sorted(r[0] for r in cur.fetchall())
    return databases, accounts


def statuses(store, user_ids):
    found = {u["user_id"]: u["status"] for u in store.list_users()}
    return [found.get(u) for u in user_ids]


@pytest.fixture
def global_read_lock():
    """Holds MariaDB's global read lock while the test says so: DDL waits behind it."""
    conn = admin_connect()
    held = []

    def take():
        conn.cursor().execute("FLUSH TABLES WITH READ LOCK")
        held.append(True)

    def release():
        if held:
            conn.cursor().execute("UNLOCK TABLES")
            held.clear()
    yield take, release
    release()
    conn.close()


def test_kill_9_during_60_concurrent_create_db_leaves_nothing_stuck_or_orphaned(
        certs, tmp_path, mariadb, global_read_lock):
    take_lock, release_lock = global_read_lock
    prefix = "k" + uuid.uuid4().hex[:6]
    ready_before = [f"{prefix}r{i}" for i in range(5)]  # provisioned before the crash
    in_flight = [f"{prefix}{i:02d}" for i in range(USERS)]  # the 60 concurrent calls
    user_ids = ready_before + in_flight
    state = tmp_path / "state"
    front = client_context(certs.dir, "front")
    proc, port = start_server(certs, state, mariadb)
    store = Store("sqlite:///" + str(state / "store.db"))
    try:
        def create(user_id):
            try:
                return request(port, front, "POST", "/api/create_db", {"user_id": user_id},
                               timeout=120).status
            except OSError as e:  # the server was killed under this call
                return type(e).__name__

        assert [create(u) for u in ready_before] == [200] * 5
        # DDL is held, so that however fast or slow this machine is, all 60 calls are
        # caught half-way (each with its claim in the store) when the server is killed.
        take_lock()
        pool = ThreadPoolExecutor(USERS)
        calls = [pool.submit(create, u) for u in in_flight]
        assert wait_until(lambda: None not in statuses(store, user_ids), 60), \
            statuses(store, user_ids)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        before_kill = statuses(store, user_ids)  # as the killed server left the store
        release_lock()
        pool.shutdown(wait=True)
        assert before_kill == ["ready"] * 5 + ["provisioning"] * USERS, before_kill
        assert sum(c.result() != 200 for c in calls) == USERS

        started = time.monotonic()
        proc, port = start_server(certs, state, mariadb)
        # At start the replica rolled back its earlier life's claims: no one is stuck.
        after = statuses(store, user_ids)
        assert after == ["ready"] * 5 + [None] * USERS, after  # rolled back: start again
        for user_id in user_ids:
            resp = request(port, front, "GET", f"/api/users/{user_id}")
            assert resp.status in (200, 404), resp.body
            assert resp.status == 404 or resp.body["status"] == "ready"
        # A repeated create_db works for everyone, with credentials that work.
        with ThreadPoolExecutor(16) as again:
            answers = list(again.map(lambda u: request(port, front, "POST", "/api/create_db",
                                                       {"user_id": u}, timeout=120), user_ids))
        assert [a.status for a in answers] == [200] * len(user_ids), [a.body for a in answers]
        assert [a.body["created"] for a in answers] == [False] * 5 + [True] * USERS
        assert time.monotonic() - started < 120  # well within the claim expiry (210 s)
        for answer in answers[::7]:
            ds = DATA_SOURCE_RE.match(answer.body["data_source"]).groupdict()
            pymysql.connect(host=ds["host"], port=int(ds["port"]), user=ds["user"],
                            password=ds["password"], database=ds["db"],
                            connect_timeout=5).close()
        # delete_db of everyone leaves 0 tenant databases and 0 tenant accounts.
        for user_id in user_ids:
            resp = request(port, front, "POST", "/api/delete_db", {"user_id": user_id})
            assert resp.status == 200 and resp.body["released"] is True, resp.body
        assert tenant_objects(prefix) == ([], [])
        assert not set(user_ids) & {u["user_id"] for u in store.list_users()}
    finally:
        store.close()
        stop_server_process(proc)
        _drop_tenant(prefix)  # whatever a failed run left


def _drop_tenant(prefix):
    databases, accounts = tenant_objects(prefix)
    with admin_connect() as conn, conn.cursor() as cur:
        for db in databases:
            cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
        for account in accounts:
            cur.execute(f"DROP USER IF EXISTS '{account}'@'%'")


def test_another_replicas_expired_claim_is_rolled_back_by_create_db_and_by_the_reaper(
        make_server, certs, mariadb):
    """A replica that died while provisioning (another name: its pod is gone for good)
    left a claim and a half-made database: once the claim expires, create_db takes it over
    and provisions afresh, and the reaper rolls back one nobody asks for."""
    prefix = "x" + uuid.uuid4().hex[:6]
    server = make_server(provisioner="mysql", mysql_dsn=mariadb)
    store, playground = server.gateway.store, server.gateway.playground
    front = client_context(certs.dir, "front")
    names = {}
    try:
        for user_id in (f"{prefix}a", f"{prefix}b"):
            names[user_id] = server.gateway.provisioner.names_for(user_id)
            with admin_connect() as conn, conn.cursor() as cur:  # the half-made database
                cur.execute(f"CREATE DATABASE `{names[user_id]['database']}`")
                cur.execute(f"CREATE TABLE `{names[user_id]['database']}`.leftover (x INT)")
            now = time.time()
            assert store.begin_provisioning(user_id, "mysql", now - 300, "gone-pod/1234",
                                            now - 1)  # expired a second ago
        resp = request(server.port, front, "POST", "/api/create_db",
                       {"user_id": f"{prefix}a"}, timeout=60)
        assert resp.status == 200 and resp.body["created"] is True, resp.body
        ds = DATA_SOURCE_RE.match(resp.body["data_source"]).groupdict()
        with pymysql.connect(host=ds["host"], port=int(ds["port"]), user=ds["user"],
                             password=ds["password"], database=ds["db"]) as conn, \
                conn.cursor() as cur:
            cur.execute("SHOW TABLES")
            assert cur.fetchall() == ()  # provisioned afresh: the leftover was rolled back

        released = server.call(playground.reap_idle())
        assert released == [f"{prefix}b"]
        assert store.get_user(f"{prefix}b") is None
        databases, _ = tenant_objects(prefix)
        assert databases == [names[f"{prefix}a"]["database"]]
        # a live claim of another replica is not taken over
        now = time.time()
        assert store.begin_provisioning(f"{prefix}c", "mysql", now, "live-pod/5678", now + 600)
        assert server.call(playground.reap_idle()) == []
        assert store.get_user(f"{prefix}c")["status"] == "provisioning"
    finally:
        _drop_tenant(prefix)
