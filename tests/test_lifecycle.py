"""Heart beats, idle reaping and restarts: what happens to users over time."""
import os
import socket
import time
import urllib.error
import urllib.request

import sqlalchemy

from conftest import client_context, request, wait_until


class FakeClock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def db_path(resp):
    return resp.body["data_source"][len("sqlite:///"):].partition("?")[0]


def test_idle_reaper_releases_exactly_the_idle_users(server, fetch_as):
    clock = FakeClock()
    server.gateway.playground.clock = clock
    front = fetch_as("front")
    paths = {u: db_path(front("POST", "/api/create_db", {"user_id": u}))
             for u in ("active", "quiet", "gone")}
    clock.now += 1800
    assert front("GET", "/api/heart_beat?user_id=active").status == 200
    front("POST", "/api/create_db", {"user_id": "quiet"})  # create_db counts as a sign of life
    clock.now += 1801  # 'gone' is idle for 3601 s, the others for 1801 s

    assert server.call(server.gateway.playground.reap_idle()) == ["gone"]
    assert not os.path.exists(paths["gone"])
    assert os.path.exists(paths["active"]) and os.path.exists(paths["quiet"])
    assert front("GET", "/api/users/gone").status == 404

    clock.now += 1800  # now 'active' and 'quiet' have been silent for 3601 s as well
    assert sorted(server.call(server.gateway.playground.reap_idle())) == ["active", "quiet"]
    assert front("GET", "/api/users").body["users"] == []


def test_reaper_runs_on_its_own(make_server, certs):
    server = make_server(idle_timeout_s=0.3, reap_interval_s=0.1)
    alice = client_context(certs.dir, "alice")
    path = db_path(request(server.port, alice, "POST", "/api/create_db"))
    assert wait_until(lambda: not os.path.exists(path))
    assert request(server.port, alice, "GET", "/api/users/alice").status == 404


def test_heart_beats_are_buffered_then_written_in_one_batch(server, fetch_as):
    front = fetch_as("front")
    for u in ("u1", "u2"):
        front("POST", "/api/create_db", {"user_id": u})
    store = server.gateway.store
    before = {u["user_id"]: u["last_seen_at"] for u in store.list_users()}
    time.sleep(0.01)
    for u in ("u1", "u2"):
        assert front("GET", f"/api/heart_beat?user_id={u}").status == 200
    # Nothing written yet: the beat only touched memory...
    assert {u["user_id"]: u["last_seen_at"] for u in store.list_users()} == before
    # ...but the API already reports it.
    assert front("GET", "/api/users/u1").body["last_seen_at"] > before["u1"]
    server.call(server.gateway.playground.flush_heartbeats())
    after = {u["user_id"]: u["last_seen_at"] for u in store.list_users()}
    assert all(after[u] > before[u] for u in ("u1", "u2"))


def test_periodic_flush_writes_heart_beats(make_server, certs):
    server = make_server(heartbeat_flush_s=0.1)
    alice = client_context(certs.dir, "alice")
    request(server.port, alice, "POST", "/api/create_db")
    created = server.gateway.store.get_user("alice")["last_seen_at"]
    time.sleep(0.01)
    request(server.port, alice, "GET", "/api/heart_beat")
    assert wait_until(lambda: server.gateway.store.get_user("alice")["last_seen_at"] > created)


def test_restart_keeps_users_and_data_sources(make_server, certs, tmp_path):
    state = str(tmp_path / "kept")
    first = make_server(state_dir=state)
    front = client_context(certs.dir, "front")
    created = {u: request(first.port, front, "POST", "/api/create_db", {"user_id": u}).body
               for u in ("alice", "bob")}
    request(first.port, front, "GET", "/api/heart_beat?user_id=alice")
    first.stop()  # flushes the buffered beat

    second = make_server(state_dir=state)
    for user, body in created.items():
        again = request(second.port, front, "POST", "/api/create_db", {"user_id": user}).body
        assert again["data_source"] == body["data_source"] and again["created"] is False
        assert os.path.exists(db_path(request(second.port, front, "GET", f"/api/users/{user}")))
    alice = second.gateway.store.get_user("alice")
    assert alice["last_seen_at"] > alice["created_at"]


def test_health_port_answers_probes_and_readiness_follows_the_store(make_server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = make_server(health_port=port)

    def probe(path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
    assert probe("/healthz")[0] == 200
    assert probe("/readyz") == (200, b'{"status": "ok", "checks": {"store": "ok", '
                                     b'"provisioner": "ok"}}')
    server.gateway.store.engine.dispose()
    server.gateway.store.engine = sqlalchemy.create_engine(
        "mysql+pymysql://nobody@127.0.0.1:1/none")  # the store becomes unreachable
    status, body = probe("/readyz")
    assert status == 503 and b'"store": "unavailable' in body
    assert probe("/healthz")[0] == 200  # alive, just not ready
