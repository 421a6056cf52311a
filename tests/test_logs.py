"""One JSON line per request on ``sqlflow_playground.access``, its id in X-Request-Id; and a
whole MySQL scenario after which no log record of any logger holds a secret."""
import json
import logging
import re
import time
import uuid

from conftest import DATA_SOURCE_RE, client_context, fetch_until_eof, request
from sqlflow_playground.provisioners.mysql import MysqlProvisioner

FIELDS = {"request_id", "identity", "method", "route", "path", "status", "duration_ms",
          "remote_ip"}
ADMIN_PASSWORD = "S3cretAdminPw"


def access_lines(caplog, count, timeout=5.0):
    """The parsed access lines, once ``count`` of them were logged (the server's thread
    logs right after writing the response)."""
    deadline = time.monotonic() + timeout
    while True:
        records = [r for r in caplog.records if r.name == "sqlflow_playground.access"]
        if len(records) >= count or time.monotonic() > deadline:
            return [json.loads(r.getMessage()) for r in records]
        time.sleep(0.01)


def test_one_json_line_per_request_with_the_id_of_the_response(fetch_as, caplog):
    caplog.set_level(logging.DEBUG)
    alice = fetch_as("alice")
    responses = [
        alice("GET", "/api/heart_beat?user_id=alice"),
        alice("GET", "/api/jobs/SomeToken?since=CursorFromTheQuery&wait=0"),
        alice("POST", "/api/create_db", b"{not json"),
        alice("DELETE", "/api/create_db"),
        alice("GET", "/nowhere"),
        # Refused from its declared length alone (sending 1 MiB would race the refusal).
        alice("POST", "/api/delete_db", b" " * ((1 << 20) + 1)),
    ]
    lines = access_lines(caplog, len(responses))
    assert len(lines) == len(responses)
    for line, resp in zip(lines, responses):
        assert set(line) == FIELDS
        assert line["request_id"] == resp.headers["X-Request-Id"]
        assert line["status"] == resp.status
        assert line["identity"] == "alice" and line["remote_ip"] == "127.0.0.1"
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
        assert "?" not in line["path"]
    assert [(l["method"], l["route"], l["path"], l["status"]) for l in lines] == [
        ("GET", "/api/heart_beat", "/api/heart_beat", 200),
        ("GET", "/api/jobs/{token}", "/api/jobs/SomeToken", 404),
        ("POST", "/api/create_db", "/api/create_db", 400),
        ("DELETE", "/api/create_db", "/api/create_db", 405),
        ("GET", "unmatched", "/nowhere", 404),
        ("POST", "/api/delete_db", "/api/delete_db", 413),
    ]
    assert len({l["request_id"] for l in lines}) == len(lines)
    assert "CursorFromTheQuery" not in caplog.text


def test_a_sane_incoming_request_id_is_kept_and_another_replaced(fetch_as, caplog):
    caplog.set_level(logging.INFO)
    alice = fetch_as("alice")
    kept = alice("GET", "/api/heart_beat", headers={"X-Request-Id": "trace-4f2a.9:1"})
    replaced = alice("GET", "/api/users/bob", headers={"X-Request-Id": "evil id\"}{"})
    lines = access_lines(caplog, 2)
    assert kept.headers["X-Request-Id"] == lines[0]["request_id"] == "trace-4f2a.9:1"
    assert replaced.status == 403
    assert re.fullmatch(r"[0-9a-f]{16}", replaced.headers["X-Request-Id"])
    assert lines[1]["request_id"] == replaced.headers["X-Request-Id"]


def everything_logged(caplog):
    """All captured text: the formatted lines, and each record formatted in full
    (arguments, tracebacks, extra attributes)."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    parts = [caplog.text]
    for record in caplog.records:
        parts.append(formatter.format(record))
        parts.append(repr(record.__dict__))
    return "\n".join(parts)


def test_no_password_key_or_data_source_in_any_log(make_server, mariadb, certs, caplog):
    caplog.set_level(logging.DEBUG)
    server = make_server(provisioner="mysql", mysql_dsn=mariadb)
    front = client_context(certs.dir, "front")

    def fetch(*args, **kw):
        return request(server.port, front, *args, **kw)
    uid = "t" + uuid.uuid4().hex[:10]

    created = fetch("POST", "/api/create_db", {"user_id": uid})
    assert created.status == 200
    password = DATA_SOURCE_RE.match(created.body["data_source"])["password"]
    job = fetch("POST", "/api/jobs", {"user_id": uid, "task_type": "sql",
                                      "spec": {"sql": "SELECT 1 AS one; SELECT nope"}})
    assert job.status == 201
    fetch_until_eof(fetch, job.body["token"])
    for _ in range(2):
        assert fetch("GET", f"/api/heart_beat?user_id={uid}").status == 200
    assert fetch("GET", f"/api/users/{uid}").body["data_source"] == created.body["data_source"]
    assert fetch("POST", "/api/delete_db", {"user_id": uid}).body["released"] is True
    assert fetch("POST", "/api/create_db", {"user_id": "not a user id!"}).status == 400

    # The MySQL server goes away: the admin DSN (with its password) now points nowhere.
    gateway = server.gateway
    gateway.provisioner.close()
    gateway.provisioner = gateway.playground.provisioner = MysqlProvisioner(
        gateway.runner, f"mysql://root:{ADMIN_PASSWORD}@127.0.0.1:1/")
    unavailable = fetch("POST", "/api/create_db", {"user_id": uid})
    assert unavailable.status == 503
    server.stop()

    logged = everything_logged(caplog)
    statuses = [line["status"] for line in access_lines(caplog, 0)]
    assert {200, 201, 400, 503} <= set(statuses)  # the scenario was logged...
    assert "provisioned a mysql database" in logged and "MySQL provisioner" in logged
    for secret in (password, ADMIN_PASSWORD, "PRIVATE KEY", "maxAllowedPacket", "sqlite:///",
                   "mysql://"):  # ...and nothing secret was
        assert secret not in logged, secret
    assert not re.search(r"BEGIN[A-Z ]*PRIVATE", logged)


def test_success_is_info_and_client_errors_are_warnings(fetch_as, caplog):
    caplog.set_level(logging.WARNING)
    assert fetch_as("alice")("GET", "/api/heart_beat").status == 200
    assert fetch_as("alice")("GET", "/nowhere").status == 404
    lines = access_lines(caplog, 1)
    assert [line["status"] for line in lines] == [404]  # 2xx at INFO, 4xx at WARNING
