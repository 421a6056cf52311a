"""Every bad request gets a clear 4xx JSON error and changes nothing."""
import http.client
import os

import pytest

from conftest import client_context

ONE_MIB = 1024 * 1024


def snapshot(server):
    databases = os.path.join(server.config.state_dir, "databases")
    files = sorted(os.listdir(databases)) if os.path.isdir(databases) else []
    return server.gateway.store.list_users(), files


@pytest.fixture
def alice_with_db(server, fetch_as):
    alice = fetch_as("alice")
    assert alice("POST", "/api/create_db").status == 200
    return alice


@pytest.mark.parametrize("method,path,body,status,code", [
    ("POST", "/api/create_db", b"{not json", 400, "bad_request"),
    ("POST", "/api/create_db", b"\xff\xfe", 400, "bad_request"),
    ("POST", "/api/create_db", b'["alice"]', 400, "bad_request"),
    ("POST", "/api/create_db", b'{"user_id": "alice", "extra": 1}', 400, "bad_request"),
    ("POST", "/api/create_db", b'{"user_id": ""}', 400, "bad_request"),
    ("POST", "/api/create_db", b'{"user_id": 42}', 400, "bad_request"),
    ("POST", "/api/create_db", b'{"user_id": "../etc/passwd"}', 400, "bad_request"),
    ("POST", "/api/create_db", b'{"user_id": "_alice"}', 400, "bad_request"),
    ("POST", "/api/create_db", ('{"user_id": "%s"}' % ("a" * 64)).encode(), 400, "bad_request"),
    ("POST", "/api/delete_db", b"{not json", 400, "bad_request"),
    ("POST", "/api/delete_db", b'{"user_id": "al ice"}', 400, "bad_request"),
    ("GET", "/api/heart_beat?user_id=al%20ice", None, 400, "bad_request"),
    ("GET", "/api/heart_beat?user_id=", None, 400, "bad_request"),
    ("GET", "/api/users/al%20ice", None, 400, "bad_request"),
    ("POST", "/api/create_db", b"x" * (ONE_MIB + 1), 413, "payload_too_large"),
    ("GET", "/api/create_db", None, 405, "method_not_allowed"),
    ("DELETE", "/api/heart_beat", None, 405, "method_not_allowed"),
    ("PUT", "/api/users", b"{}", 405, "method_not_allowed"),
    ("GET", "/api/nope", None, 404, "not_found"),
    ("POST", "/", b"{}", 405, "method_not_allowed"),  # GET / leads to the dashboard
])
def test_bad_request_is_refused_and_changes_nothing(server, alice_with_db, method, path, body,
                                                    status, code):
    before = snapshot(server)
    resp = alice_with_db(method, path, body)
    assert resp.status == status, resp.body
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.body["error"]["code"] == code
    assert resp.body["error"]["message"]
    assert snapshot(server) == before


def test_chunked_body_over_the_limit_is_refused(server, certs, alice_with_db):
    before = snapshot(server)
    conn = http.client.HTTPSConnection("127.0.0.1", server.port,
                                       context=client_context(certs.dir, "alice"))
    try:
        chunks = (b'{"user_id": "' + b"a" * 65536 for _ in range(20))  # 1.25 MiB, no length
        conn.request("POST", "/api/delete_db", body=chunks, encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 413
        assert b"payload_too_large" in resp.read()
    finally:
        conn.close()
    assert snapshot(server) == before


def test_body_of_exactly_the_limit_is_read(alice_with_db):
    body = b'{"user_id": "alice"}' + b" " * (ONE_MIB - 20)
    assert len(body) == ONE_MIB
    assert alice_with_db("POST", "/api/create_db", body).status == 200


def test_keep_alive_connection_survives_an_error(server, certs):
    conn = http.client.HTTPSConnection("127.0.0.1", server.port,
                                       context=client_context(certs.dir, "alice"))
    try:
        conn.request("POST", "/api/create_db", body=b"{bad")
        first = conn.getresponse()
        first.read()
        conn.request("GET", "/api/heart_beat")
        second = conn.getresponse()
        assert (first.status, second.status) == (400, 200)
    finally:
        conn.close()
