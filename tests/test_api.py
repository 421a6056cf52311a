"""create_db / heart_beat / delete_db / users as a notebook user and a frontend see them."""
import asyncio
import json
import os
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClient, HTTPRequest

from conftest import client_context, request
from sqlflow_playground.provisioners.sqlite import SqliteProvisioner


def test_replay_of_the_deployed_magic_gets_a_data_source(server, certs):
    # Exactly what the %%sqlflow magic does: tornado HTTPClient, a SERVER_AUTH context with
    # the CA pinned and check_hostname off, json.dumps body with no Content-Type header.
    ssl_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ssl_ctx.load_cert_chain(str(certs.dir / "alice" / "alice.crt"),
                            str(certs.dir / "alice" / "alice.key"))
    ssl_ctx.load_verify_locations(certs.ca)
    ssl_ctx.check_hostname = False
    base = f"https://127.0.0.1:{server.port}"
    http = HTTPClient()
    try:
        req = HTTPRequest(f"{base}/api/create_db", method="POST", ssl_options=ssl_ctx,
                          body=json.dumps({"user_id": "alice"}))
        result = json.loads(http.fetch(req).body)
        beat = http.fetch(f"{base}/api/heart_beat?user_id=alice", ssl_options=ssl_ctx)
    finally:
        http.close()
    assert result["data_source"].startswith("sqlite:///")
    assert result["user_id"] == "alice" and result["created"] is True
    assert json.loads(beat.body) == {"user_id": "alice", "status": "ok", "idle_timeout_s": 3600.0}


def test_create_db_is_idempotent(fetch_as):
    alice = fetch_as("alice")
    first = alice("POST", "/api/create_db", {"user_id": "alice"})
    second = alice("POST", "/api/create_db", {"user_id": "alice"})
    assert first.status == second.status == 200
    assert first.body["created"] is True and second.body["created"] is False
    assert first.body["data_source"] == second.body["data_source"]


def test_user_id_defaults_to_the_certificate_identity(fetch_as):
    resp = fetch_as("bob")("POST", "/api/create_db", b"")
    assert resp.status == 200 and resp.body["user_id"] == "bob"
    assert fetch_as("bob")("GET", "/api/heart_beat").body["user_id"] == "bob"


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/api/create_db", {"user_id": "bob"}),
    ("POST", "/api/delete_db", {"user_id": "bob"}),
    ("GET", "/api/heart_beat?user_id=bob", None),
    ("GET", "/api/users/bob", None),
])
def test_user_acting_for_another_is_forbidden(fetch_as, method, path, body):
    fetch_as("bob")("POST", "/api/create_db")
    resp = fetch_as("alice")(method, path, body)
    assert resp.status == 403
    assert resp.body["error"]["code"] == "forbidden"
    assert fetch_as("bob")("GET", "/api/users/bob").status == 200  # bob's db untouched


def test_frontend_may_act_for_anyone_and_list_users(fetch_as):
    front = fetch_as("front")
    for user in ("zoe", "yuri"):
        assert front("POST", "/api/create_db", {"user_id": user}).status == 200
    assert front("GET", "/api/heart_beat?user_id=zoe").status == 200
    listing = front("GET", "/api/users")
    assert listing.status == 200
    assert [u["user_id"] for u in listing.body["users"]] == ["yuri", "zoe"]
    assert all("data_source" not in u for u in listing.body["users"])
    assert front("GET", "/api/users/zoe").body["data_source"].startswith("sqlite:///")


def test_frontend_certs_flag_grants_the_frontend_role(make_server, certs):
    server = make_server(frontend_certs=("alice",))
    resp = request(server.port, client_context(certs.dir, "alice"), "POST", "/api/create_db",
                   {"user_id": "someone"})
    assert resp.status == 200 and resp.body["user_id"] == "someone"


def test_only_frontends_list_users(fetch_as):
    resp = fetch_as("alice")("GET", "/api/users")
    assert resp.status == 403 and resp.body["error"]["code"] == "forbidden"


def test_user_view_shows_own_database(fetch_as):
    alice = fetch_as("alice")
    assert alice("GET", "/api/users/alice").status == 404
    created = alice("POST", "/api/create_db").body
    view = alice("GET", "/api/users/alice").body
    assert view["data_source"] == created["data_source"]
    assert view["provisioner"] == "sqlite" and view["status"] == "ready"
    assert view["jobs"] == []


def test_delete_db_releases_the_database(fetch_as):
    alice = fetch_as("alice")
    ds = alice("POST", "/api/create_db").body["data_source"]
    path = ds[len("sqlite:///"):].partition("?")[0]
    assert os.path.exists(path)
    assert alice("POST", "/api/delete_db").body == {"user_id": "alice", "released": True}
    assert not os.path.exists(path)
    assert alice("GET", "/api/users/alice").status == 404
    assert alice("POST", "/api/delete_db").body["released"] is False
    again = alice("POST", "/api/create_db").body
    assert again["created"] is True and os.path.exists(path)


def test_concurrent_create_db_for_one_user_provisions_once(make_server, certs):
    calls = []

    class CountingProvisioner(SqliteProvisioner):
        def _create(self, user_id):
            calls.append(user_id)
            time.sleep(0.3)  # long enough for all 20 requests to arrive meanwhile
            return super()._create(user_id)

    server = make_server(provisioner_factory=lambda runner: CountingProvisioner(
        runner, server_state_dir(certs)))
    ctx = client_context(certs.dir, "alice")
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: request(server.port, ctx, "POST", "/api/create_db"),
                                range(20)))
    assert {r.status for r in results} == {200}
    assert len({r.body["data_source"] for r in results}) == 1
    assert sum(r.body["created"] for r in results) == 1
    assert calls == ["alice"]


def server_state_dir(certs):
    return str(certs.dir.parent / "slow_state")


@pytest.mark.gen_test(timeout=30)
async def test_heart_beat_answers_promptly_while_slow_create_db_is_in_flight(make_server, certs):
    class SlowProvisioner(SqliteProvisioner):
        def _create(self, user_id):
            time.sleep(3)  # a blocking driver call, run where the gateway runs such calls
            return super()._create(user_id)

    server = make_server(provisioner_factory=lambda runner: SlowProvisioner(
        runner, server_state_dir(certs)))
    front = client_context(certs.dir, "front")
    base = f"https://127.0.0.1:{server.port}"
    client = AsyncHTTPClient(force_instance=True, max_clients=20)
    try:
        creating = [client.fetch(f"{base}/api/create_db", method="POST", ssl_options=front,
                                 body=json.dumps({"user_id": f"slow{i}"})) for i in range(5)]
        await asyncio.sleep(0.3)
        for _ in range(20):  # one after another, while all five provisionings run
            beat = await client.fetch(f"{base}/api/heart_beat?user_id=x", ssl_options=front)
            assert beat.code == 200
        # All 20 were answered before any provisioning finished: the IOLoop was not blocked.
        assert not any(f.done() for f in creating)
        assert [r.code for r in await asyncio.gather(*creating)] == [200] * 5
    finally:
        client.close()
