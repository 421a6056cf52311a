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


# -- one format per output, lifecycle events, long polls, the configuration (issue 13,
# item 8) -----------------------------------------------------------------------------

import http.client  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from conftest import wait_until  # noqa: E402
from sqlflow_playground.cli import JsonFormatter, TextFormatter  # noqa: E402

PY = sys.executable
TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
TEXT_LINE = re.compile(rf"^{TS} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


def record(name, level, msg, *args, **extra):
    rec = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_a_timestamp_and_end_with_the_message():
    line = JsonFormatter().format(record("sqlflow_playground.jobs", logging.INFO,
                                         "job %s ended", "abc",
                                         fields={"event": "job_ended", "status": "FAILED"}))
    doc = json.loads(line)
    assert re.fullmatch(TS, doc["ts"])
    assert list(doc) == ["ts", "level", "logger", "event", "status", "msg"]
    assert (doc["level"], doc["logger"], doc["msg"]) == ("INFO", "sqlflow_playground.jobs",
                                                         "job abc ended")


def test_an_access_line_is_one_json_object_with_its_fields_not_a_string_in_a_string():
    fields = {"request_id": "r1", "method": "GET", "path": "/api/heart_beat", "status": 200,
              "duration_ms": 1.5}
    rec = record("sqlflow_playground.access", logging.INFO, json.dumps(fields))
    doc = json.loads(JsonFormatter().format(rec))
    assert doc.pop("ts") and doc == {"level": "INFO", "logger": "sqlflow_playground.access",
                                     **fields}
    text = TextFormatter().format(rec)
    assert TEXT_LINE.match(text)
    assert text.endswith("sqlflow_playground.access: GET /api/heart_beat 200 1.5ms "
                         "request_id=r1")


def test_a_secret_that_slips_into_a_message_is_masked_in_both_formats():
    msg = ("connect mysql://u:pw-Secret-1@tcp(db:3306)/x failed; "
           "sqlite:////s/a.db?secret=Sqlite-Secret-2")
    for formatter in (JsonFormatter(), TextFormatter()):
        out = formatter.format(record("x", logging.ERROR, msg))
        assert "pw-Secret-1" not in out and "Sqlite-Secret-2" not in out, out
        assert "mysql://u:***@" in out and "secret=***" in out


class ServerProcess:
    """A server process whose whole output (stdout and stderr) goes to one file."""

    def __init__(self, certs, tmp_path, *flags, env=None):
        self.out = tmp_path / f"server-{len(list(tmp_path.glob('server-*')))}.log"
        args = [PY, "-m", "sqlflow_playground", "--port=0", "--host=127.0.0.1",
                f"--ca_crt={certs.ca}", f"--server_crt={certs.dir / 'server' / 'server.crt'}",
                f"--server_key={certs.dir / 'server' / 'server.key'}",
                f"--state_dir={tmp_path / 'state'}", *flags]
        with open(self.out, "w") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1",
                                              **(env or {})})
        assert wait_until(lambda: "serving https on" in self.text()
                          or self.proc.poll() is not None, 60), self.text()
        line = next(ln for ln in self.lines() if "serving https on" in ln)
        self.port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))

    def text(self):
        return self.out.read_text()

    def lines(self):
        return self.text().splitlines()

    def stop(self):
        self.proc.terminate()
        assert self.proc.wait(30) == 0
        return self.lines()


def test_every_line_of_a_server_process_is_json_by_default_or_text_when_asked(certs,
                                                                            tmp_path):
    for flags, check in (((), lambda ln: re.fullmatch(TS, json.loads(ln)["ts"])),
                         (("--log_format=text",), TEXT_LINE.match)):
        server = ServerProcess(certs, tmp_path, "--log_level=debug", *flags)
        ctx = client_context(certs.dir, "alice")
        assert request(server.port, ctx, "POST", "/api/create_db", {}).status == 200
        assert request(server.port, ctx, "GET", "/nowhere").status == 404
        lines = server.stop()
        assert len(lines) > 5 and [ln for ln in lines if not check(ln)] == [], lines
        assert sum("/api/create_db" in ln for ln in lines) == 1  # the access line
        assert any("stopped" in ln for ln in lines)


def test_the_effective_configuration_is_logged_once_at_start_with_secrets_masked(certs,
                                                                                tmp_path):
    dsn_file = tmp_path / "mysql_dsn"
    dsn_file.write_text("mysql://admin:Dsn-File-Secret-7@db.internal:3306\n")
    server = ServerProcess(certs, tmp_path, f"--mysql_dsn_file={dsn_file}",
                           "--idle_timeout_s=123",
                           env={"SQLFLOW_PLAYGROUND_DB_URL":
                                f"sqlite:///{tmp_path / 'store.db'}?password=Url-Secret-8"})
    lines = server.stop()
    [line] = [json.loads(ln) for ln in lines if '"configuration"' in ln]
    config = line["config"]
    assert line["msg"] == "effective configuration" and line["event"] == "configuration"
    assert config["idle_timeout_s"] == 123.0 and config["port"] == 0
    assert config["mysql_dsn"] == "mysql://admin:***@db.internal:3306"
    assert config["mysql_dsn_file"] == str(dsn_file)  # named, never read into the log
    assert config["db_url"] == f"sqlite:///{tmp_path / 'store.db'}?***"
    assert set(config) >= {"ca_crt", "server_key", "provisioner", "log_format", "grpc_port"}
    text = "\n".join(lines)
    assert "Dsn-File-Secret-7" not in text and "Url-Secret-8" not in text
    assert lines.index(next(ln for ln in lines if '"configuration"' in ln)) < \
        lines.index(next(ln for ln in lines if "serving https on" in ln))


def test_no_secret_of_a_whole_session_reaches_a_server_processs_output(certs, tmp_path):
    server = ServerProcess(certs, tmp_path, "--log_level=debug", "--enable_process_jobs",
                           env={"SQLFLOW_PLAYGROUND_MYSQL_DSN":
                                "mysql://root:Admin-Secret-9@127.0.0.1:1"})
    ctx = client_context(certs.dir, "alice")

    def fetch(*args, **kw):
        return request(server.port, ctx, *args, **kw)
    data_source = fetch("POST", "/api/create_db", {}).body["data_source"]
    secret = data_source.partition("secret=")[2]
    assert len(secret) >= 16
    token = fetch("POST", "/api/jobs", {"task_type": "sql",
                                        "spec": {"sql": "SELECT 1; SELECT nope"}}).body["token"]
    fetch_until_eof(fetch, token)
    assert fetch("GET", "/api/users/alice").body["data_source"] == data_source
    assert fetch("POST", "/api/delete_db", {}).body["released"] is True
    text = "\n".join(server.stop())
    assert "job_ended" in text and "released the database" in text  # it was logged...
    for leaked in (secret, "Admin-Secret-9", data_source, "PRIVATE KEY"):  # ...not these
        assert leaked not in text, leaked


def events(caplog, event):
    return [r for r in caplog.records if (getattr(r, "fields", None) or {}).get("event")
            == event]


@pytest.fixture
def jobs_server(make_server):
    return make_server(enable_process_jobs=True)


def submit(fetch, command, **extra):
    resp = fetch("POST", "/api/jobs", {"task_type": "process", "spec": {"command": command},
                                       **extra})
    assert resp.status == 201, resp.body
    return resp.body["token"]


def test_a_jobs_start_and_end_are_logged_once_with_status_and_duration(jobs_server, fetch_as,
                                                                      caplog):
    caplog.set_level(logging.INFO)
    alice = fetch_as("alice", jobs_server.port)
    done = submit(alice, [PY, "-c", "print('hi')"])
    fetch_until_eof(alice, done)
    for _ in range(3):  # fetching a finished job again logs nothing new
        alice("GET", f"/api/jobs/{done}")
    sleeper = submit(alice, [PY, "-c", "import time; print('up', flush=True); "
                                       "time.sleep(60)"])
    assert wait_until(lambda: alice("GET", f"/api/jobs/{sleeper}").body["status"]
                      == "RUNNING")
    alice("DELETE", f"/api/jobs/{sleeper}")
    ended = {r.fields["job"]: r for r in events(caplog, "job_ended")}
    assert len(events(caplog, "job_ended")) == 2 and set(ended) == {done[:8], sleeper[:8]}
    assert ended[done[:8]].fields["status"] == "SUCCEEDED"
    assert ended[sleeper[:8]].fields["status"] == "CANCELLED"
    for r in ended.values():
        assert r.fields["duration_s"] >= r.fields["running_s"] >= 0
        assert r.fields["task_type"] == "process" and r.fields["user_id"] == "alice"
        assert re.search(r"ended (SUCCEEDED|CANCELLED) after \d+\.\d\ds", r.getMessage())
    started = [r.fields["job"] for r in events(caplog, "job_started")]
    assert sleeper[:8] in started and len(started) == len(set(started))


def test_recovery_and_reaping_are_logged(jobs_server, fetch_as, caplog):
    caplog.set_level(logging.INFO)
    gateway = jobs_server.gateway
    now = time.time()
    # A job the previous life of this server accepted but never started.
    gateway.store.insert_job(token="Orphan" + uuid.uuid4().hex, user_id="alice",
                             task_type="process", version="v1", spec={"command": ["true"]},
                             status="PENDING", message="", created_at=now - 5,
                             last_fetched_at=now, fetch_timeout_s=600.0,
                             replica=gateway.jobs.settings.replica)
    jobs_server.call(gateway.jobs.recover())
    [recovered] = events(caplog, "jobs_recovered")
    assert (recovered.fields["unfinished"], recovered.fields["ended"]) == (1, 1)
    assert [r.fields["status"] for r in events(caplog, "job_ended")] == ["FAILED"]

    alice = fetch_as("alice", jobs_server.port)
    abandoned = submit(alice, [PY, "-c", "import time; time.sleep(60)"], fetch_timeout_s=1)
    real_clock = gateway.jobs.clock
    gateway.jobs.clock = lambda: real_clock() + 5  # its owner has not fetched it for 5 s
    try:
        jobs_server.call(gateway.jobs.reap())
    finally:
        gateway.jobs.clock = real_clock
    [reaped] = events(caplog, "jobs_reaped")
    assert reaped.fields["cancelled_job"] == 1
    assert "job reaper: cancelled 1 abandoned job(s)" in reaped.getMessage()
    assert {r.fields["job"]: r.fields["status"] for r in events(caplog, "job_ended")}[
        abandoned[:8]] == "CANCELLED"


def test_provisioning_is_logged_as_it_starts_and_ends(fetch_as, caplog):
    caplog.set_level(logging.INFO)
    assert fetch_as("alice")("POST", "/api/create_db", {}).status == 200
    assert fetch_as("alice")("POST", "/api/create_db", {}).status == 200  # exists: no line
    assert [r.fields["event"] for r in caplog.records if getattr(r, "fields", None)
            and r.fields.get("event", "").startswith("provision")] == [
        "provisioning_started", "provisioned"]


def test_a_long_poll_is_one_line_per_fetch_that_brought_something(jobs_server, fetch_as,
                                                                  caplog):
    caplog.set_level(logging.DEBUG)
    alice = fetch_as("alice", jobs_server.port)
    gate = jobs_server.config.state_dir + "/gate"
    token = submit(alice, [PY, "-c", "import os, time\n"
                                     "print('one', flush=True)\n"
                                     f"while not os.path.exists({gate!r}): time.sleep(0.05)\n"
                                     "print('two', flush=True)"])
    fetches = []  # (request id, wait, body)

    def get(cursor, wait):
        resp = alice("GET", f"/api/jobs/{token}?since={cursor}&wait={wait}")
        fetches.append((resp.headers["X-Request-Id"], wait, resp.body))
        return resp.body

    cursor = ""
    while not fetches or not fetches[-1][2]["responses"]:  # until 'one' arrives
        cursor = get(cursor, 5)["next"]
    for _ in range(2):  # the job waits for the gate: nothing new
        quiet = get(cursor, 0.2)
        assert quiet["responses"] == [] and quiet["eof"] is False
    get(cursor, 0)  # not a long poll: a status check is always a line
    open(gate, "w").close()
    while not fetches[-1][2]["eof"]:
        cursor = get(cursor, 5)["next"]

    ids = {rid for rid, _, _ in fetches}
    assert wait_until(lambda: len([r for r in caplog.records
                                   if r.name == "sqlflow_playground.access"
                                   and json.loads(r.getMessage())["request_id"] in ids])
                      == len(fetches), 5)
    level = {json.loads(r.getMessage())["request_id"]: r.levelno for r in caplog.records
             if r.name == "sqlflow_playground.access"}
    for rid, wait, body in fetches:
        empty_wait = wait > 0 and not body["responses"] and not body["eof"]
        assert level[rid] == (logging.DEBUG if empty_wait else logging.INFO), (wait, body)
    assert sum(level[rid] == logging.DEBUG for rid in ids) >= 2  # the two quiet waits


def test_an_access_record_made_by_log_request_formats_like_one_from_json_text(caplog):
    """log_request hands the formatters its fields (AccessLine) rather than JSON text; the
    lines are the same, and getMessage() still gives the JSON object."""
    import types
    from sqlflow_playground.accesslog import AccessLine, log_request
    req = types.SimpleNamespace(method="GET", path="/api/heart_beat", remote_ip="127.0.0.1",
                                request_time=lambda: 0.0015)
    handler = types.SimpleNamespace(get_status=lambda: 200, request=req, route="/api/x",
                                    identity=types.SimpleNamespace(name="alice"),
                                    request_id="r1")
    with caplog.at_level(logging.INFO, logger="sqlflow_playground.access"):
        log_request(handler)
    (rec,) = [r for r in caplog.records if r.name == "sqlflow_playground.access"]
    assert isinstance(rec.msg, AccessLine)
    fields = json.loads(rec.getMessage())
    assert set(fields) == FIELDS and fields["identity"] == "alice"
    as_text = record("sqlflow_playground.access", logging.INFO, json.dumps(fields))
    as_text.created = rec.created
    for formatter in (JsonFormatter(), TextFormatter()):
        assert formatter.format(rec) == formatter.format(as_text)
    assert rec.msg.fields == fields  # the text format's pops were on a copy


def test_redact_skips_only_what_cannot_match():
    from sqlflow_playground.cli import _SECRET_PARAM, _URL_PASSWORD, redact
    samples = ["plain line", "mysql://u:pw@h/x", "a=1&password=p&secret=s",
               "x://:@", "sqlite:////a.db?secret=s", "PASSWORD=p", "http://h/x?y=1"]
    for text in samples:
        assert redact(text) == _SECRET_PARAM.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


def test_timestamps_are_utc_milliseconds_as_datetime_formats_them():
    import datetime
    import random
    from sqlflow_playground.cli import _iso
    for t in [0.0, 1.9999, 1.0005, 1e9 + 0.9995] + [random.uniform(0, 4e9) for _ in range(2000)]:
        stamp = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
        assert _iso(t) == stamp.strftime("%Y-%m-%dT%H:%M:%S.") + \
            f"{stamp.microsecond // 1000:03d}Z", t


def test_a_kill_9_loses_no_access_line_of_a_request_answered_before_the_last(certs, tmp_path):
    """Access lines are written once per turn of the loop, at its end
    (TurnBatchingStreamHandler): once a later request has been answered, the line of every
    earlier one is in the log, however the process dies next."""
    server = ServerProcess(certs, tmp_path)
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=30,
                                       context=client_context(certs.dir, "alice"))
    ids = [uuid.uuid4().hex[:16] for _ in range(40)]
    # heart beats (answered before routing) and routed requests, on one connection
    paths = ["/api/heart_beat", "/plugins/v1"] * 20 + ["/api/heart_beat"]
    for path, request_id in zip(paths, ids + ["the-last-one"]):
        conn.request("GET", path, headers={"X-Request-Id": request_id})
        response = conn.getresponse()
        response.read()
        assert response.status == 200 and response.headers["X-Request-Id"] == request_id
    server.proc.send_signal(signal.SIGKILL)
    assert server.proc.wait(30) == -signal.SIGKILL
    logged = {json.loads(ln).get("request_id") for ln in server.lines() if ln.startswith("{")}
    assert [i for i in ids if i not in logged] == []
