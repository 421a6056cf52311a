"""The Python client and `sqlflow_playground client` against a real server over mutual TLS."""
import json
import os
import pty
import queue
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from sqlflow_playground.client import PlaygroundClient, PlaygroundClientError, read_env_file

PY = sys.executable
SLEEPER = [PY, "-c", "import time; print('started', flush=True); time.sleep(60)"]


@pytest.fixture
def jobs_server(make_server):
    return make_server(enable_process_jobs=True)


def tls(certs, name):
    return {"ca": certs.ca, "cert": str(certs.dir / name / f"{name}.crt"),
            "key": str(certs.dir / name / f"{name}.key")}


@pytest.fixture
def connect(certs, jobs_server):
    """``connect("alice")``: a client with alice's certificate acting for alice."""
    made = []

    def make(name="alice", server=None, **kw):
        kw.setdefault("user_id", name)
        client = PlaygroundClient(f"https://127.0.0.1:{(server or jobs_server).port}",
                                  **tls(certs, name), **kw)
        made.append(client)
        return client
    yield make
    for client in made:
        client.close()


@pytest.fixture
def alice(connect):
    return connect("alice")


def messages(responses):
    return [r["message"] for r in responses if "message" in r]


# -- the Python client --------------------------------------------------------------

def test_database_routes(alice, connect):
    created = alice.create_db()
    assert created["created"] is True and created["data_source"].startswith("sqlite:///")
    assert alice.create_db()["created"] is False
    assert alice.heart_beat() == {"user_id": "alice", "status": "ok",
                                  "idle_timeout_s": created["idle_timeout_s"]}
    me = alice.user()
    assert me["user_id"] == "alice" and me["data_source"] == created["data_source"]
    front = connect("front", user_id=None)
    assert [u["user_id"] for u in front.users()["users"]] == ["alice"]
    assert front.user("alice")["status"] == me["status"]
    assert alice.delete_db() == {"user_id": "alice", "released": True}
    with pytest.raises(PlaygroundClientError) as gone:
        alice.user()
    assert gone.value.status == 404 and gone.value.code == "not_found"


def test_job_routes(alice):
    assert {(p["task_type"], p["version"]) for p in alice.plugins()["plugins"]} >= {
        ("process", "v1"), ("sql", "v1")}
    submitted = alice.submit("process", {"command": [PY, "-c", "print('a'); print('b')"]})
    token = submitted["token"]
    body = alice.fetch(token, wait=10)
    assert body["token"] == token and "next" in body
    statuses = []
    stream = alice.iter_responses(token, wait=5, on_status=lambda b: statuses.append(b))
    got = []
    try:
        while True:
            got.append(next(stream))
    except StopIteration as done:
        final = done.value
    assert messages(got) == ["a", "b"] and final["eof"] is True
    assert statuses[-1] is final and final["status"] == "SUCCEEDED"
    assert messages(alice.fetch(token, since=body["next"])["responses"]) == \
        messages(got)[len(messages(body["responses"])):]

    seen = []
    result = alice.run("process", {"command": [PY, "-c", "print(1); import sys; sys.exit(3)"]},
                       on_response=seen.append)
    assert (result["status"], result["message"]) == ("FAILED", "exit code 3")
    assert result["responses"] == seen == [{"message": "1"}]

    long = alice.submit("process", {"command": SLEEPER}, version="v1", fetch_timeout_s=60)
    assert [j["token"] for j in alice.jobs(status="RUNNING")["jobs"]] == [long["token"]]
    assert alice.cancel(long["token"])["status"] == "CANCELLED"
    assert {j["status"] for j in alice.jobs()["jobs"]} == {"SUCCEEDED", "FAILED", "CANCELLED"}


def test_sql_run_returns_every_response(alice):
    alice.create_db()
    result = alice.run("sql", {"sql": "SELECT 1 AS one; SELECT 'x' AS two"})
    assert result["status"] == "SUCCEEDED" and result["eof"] is True
    assert result["responses"] == [{"head": ["one"]}, {"row": [1]}, {"eoe": True},
                                   {"head": ["two"]}, {"row": ["x"]}, {"eoe": True}]


def test_errors_carry_status_code_and_message(alice, connect, certs, jobs_server):
    with pytest.raises(PlaygroundClientError) as forbidden:
        alice.heart_beat(user_id="bob")
    assert (forbidden.value.status, forbidden.value.code) == (403, "forbidden")
    assert "bob" in forbidden.value.message
    assert str(forbidden.value) == f"forbidden: {forbidden.value.message}"
    token = alice.submit("process", {"command": SLEEPER})["token"]
    for call in (lambda: connect("bob").fetch(token), lambda: alice.cancel("nosuchtoken")):
        with pytest.raises(PlaygroundClientError) as unknown:
            call()
        assert (unknown.value.status, unknown.value.code) == (404, "not_found")
    with pytest.raises(PlaygroundClientError) as bad:
        alice.submit("process", {"command": "not a list"})
    assert bad.value.status == 422 and "command" in bad.value.message
    alice.cancel(token)
    with pytest.raises(PlaygroundClientError) as users:
        alice.users()
    assert users.value.status == 403
    # The server refuses a certificate from another CA: no answer at all, status 0.
    stranger = PlaygroundClient(f"https://127.0.0.1:{jobs_server.port}", ca=certs.ca,
                                cert=str(certs.other / "alice" / "alice.crt"),
                                key=str(certs.other / "alice" / "alice.key"))
    with pytest.raises(PlaygroundClientError) as refused:
        stranger.heart_beat()
    assert refused.value.status == 0 and refused.value.code == "unknown_ca"
    closed = PlaygroundClient("https://127.0.0.1:1", **tls(certs, "alice"))
    with pytest.raises(PlaygroundClientError) as down:
        closed.heart_beat()
    assert down.value.status == 0 and "127.0.0.1:1" in down.value.message


def test_one_keep_alive_connection_is_reused_and_renewed_after_a_restart(
        alice, connect, make_server, jobs_server):
    for _ in range(5):
        alice.heart_beat()
    assert len(alice._idle) == 1
    with ThreadPoolExecutor(8) as pool:  # thread-safe: each call its own connection
        assert all(b["status"] == "ok" for b in pool.map(lambda _: alice.heart_beat(), range(32)))
    port = jobs_server.port
    jobs_server.stop()
    with pytest.raises(PlaygroundClientError) as down:
        alice.heart_beat()
    assert down.value.status == 0
    make_server(port=port, enable_process_jobs=True)
    assert alice.heart_beat()["status"] == "ok"


ENV_FILE = """# written by the README's heredoc
SQLFLOW_SERVER="sqlflow.example.com:50051"
SQLFLOW_PLAYGROUND_USER_ID_ENV=SQLFLOW_USER_ID
SQLFLOW_USER_ID="alice"   # a comment after a quoted value
SQLFLOW_PLAYGROUND_SERVRE="{server}"
export SQLFLOW_PLAYGROUND_SERVER_CA='{ca}'
SQLFLOW_PLAYGROUND_CLIENT_KEY={key} # unquoted
SQLFLOW_PLAYGROUND_CLIENT_CERT = "{cert}"
"""


def test_from_env_reads_the_env_file_of_the_readme(tmp_path, certs, jobs_server):
    env_file = tmp_path / "playground.env"
    env_file.write_text(ENV_FILE.format(server=f"https://127.0.0.1:{jobs_server.port}",
                                        **tls(certs, "alice")))
    assert read_env_file(str(env_file))["SQLFLOW_USER_ID"] == "alice"
    client = PlaygroundClient.from_env({"SQLFLOW_JUPYTER_ENV_PATH": str(env_file)})
    assert client.user_id == "alice" and client.create_db()["user_id"] == "alice"
    # What is already set wins over the file.
    bob = PlaygroundClient.from_env({
        "SQLFLOW_JUPYTER_ENV_PATH": str(env_file), "SQLFLOW_USER_ID": "bob",
        "SQLFLOW_PLAYGROUND_CLIENT_KEY": tls(certs, "bob")["key"],
        "SQLFLOW_PLAYGROUND_CLIENT_CERT": tls(certs, "bob")["cert"]})
    assert bob.heart_beat()["user_id"] == "bob"
    client.close(), bob.close()


def test_from_env_names_what_is_missing(tmp_path, certs):
    full = {"SQLFLOW_PLAYGROUND_SERVER": "https://127.0.0.1:1",
            "SQLFLOW_PLAYGROUND_SERVER_CA": certs.ca,
            "SQLFLOW_PLAYGROUND_CLIENT_CERT": tls(certs, "alice")["cert"],
            "SQLFLOW_PLAYGROUND_CLIENT_KEY": tls(certs, "alice")["key"]}
    assert PlaygroundClient.from_env(full).user_id is None  # the certificate's identity
    for name in full:
        with pytest.raises(ValueError, match=name):
            PlaygroundClient.from_env({k: v for k, v in full.items() if k != name})
    with pytest.raises(ValueError, match="SQLFLOW_USER_ID"):
        PlaygroundClient.from_env({**full, "SQLFLOW_PLAYGROUND_USER_ID_ENV": "SQLFLOW_USER_ID"})
    with pytest.raises(ValueError, match="no such file"):
        PlaygroundClient.from_env({**full, "SQLFLOW_JUPYTER_ENV_PATH": str(tmp_path / "none")})
    assert PlaygroundClient.from_env({**full, "SQLFLOW_PLAYGROUND_SERVER": ""},
                                     server="https://h:2").server == "https://h:2"


# -- the command line ---------------------------------------------------------------

@pytest.fixture
def cli_env(certs, jobs_server):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SQLFLOW_PLAYGROUND", "SQLFLOW_JUPYTER"))}
    return {**env, "PYTHONUNBUFFERED": "1",
            "SQLFLOW_PLAYGROUND_SERVER": f"https://127.0.0.1:{jobs_server.port}",
            "SQLFLOW_PLAYGROUND_SERVER_CA": certs.ca,
            "SQLFLOW_PLAYGROUND_CLIENT_CERT": tls(certs, "alice")["cert"],
            "SQLFLOW_PLAYGROUND_CLIENT_KEY": tls(certs, "alice")["key"],
            "SQLFLOW_PLAYGROUND_USER_ID_ENV": "SQLFLOW_USER_ID", "SQLFLOW_USER_ID": "alice"}


CLIENT = [PY, "-m", "sqlflow_playground", "client"]


@pytest.fixture
def cli(cli_env):
    def run(*args, code=0, env=None):
        done = subprocess.run(CLIENT + list(args), env=env or cli_env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == code, (done.stdout, done.stderr)
        return done
    return run


def text_fields(out):
    return dict(re.split(r":\s+", line, 1) for line in out.splitlines())


def test_cli_every_command(cli, certs, alice):
    data_source = json.loads(cli("create-db", "--output", "json").stdout)["data_source"]
    assert text_fields(cli("create-db").stdout) == {
        "data_source": data_source, "user_id": "alice", "created": "False",
        "idle_timeout_s": "3600.0"}
    assert text_fields(cli("heartbeat").stdout)["status"] == "ok"
    assert json.loads(cli("-o", "json", "heartbeat").stdout)["status"] == "ok"
    assert json.loads(cli("user", "-o", "json").stdout)["data_source"] == data_source
    assert "user_id:" in cli("user", "alice").stdout
    front = ["--cert", tls(certs, "front")["cert"], "--key", tls(certs, "front")["key"]]
    users = json.loads(cli(*front, "--user", "", "users", "-o", "json").stdout)["users"]
    assert [u["user_id"] for u in users] == ["alice"]
    assert cli(*front, "users").stdout.splitlines()[0].split() == [
        "USER_ID", "PROVISIONER", "STATUS", "CREATED_AT", "LAST_SEEN_AT"]
    assert "process" in cli("plugins").stdout
    plugins = json.loads(cli("plugins", "-o", "json").stdout)["plugins"]
    assert "sql" in {p["task_type"] for p in plugins}

    token = cli("submit", "process", "--command", *SLEEPER).stdout.strip()
    first = json.loads(cli("fetch", token, "--wait", "10", "-o", "json").stdout)
    assert first["status"] == "RUNNING" and first["responses"] == [{"message": "started"}]
    again = cli("fetch", token, "--since", first["next"])
    assert again.stdout == "" and again.stderr.startswith("RUNNING: next=")
    listed = cli("jobs", "--status", "RUNNING")
    assert token in listed.stdout and "process" in listed.stdout
    assert cli("cancel", token).stdout.splitlines()[0].startswith("token:")
    assert alice.fetch(token)["status"] == "CANCELLED"
    assert json.loads(cli("jobs", "-o", "json").stdout)["jobs"][0]["status"] == "CANCELLED"
    done = cli("submit", "process", "--spec", json.dumps({"command": ["/bin/echo", "hi"]}))
    assert cli("fetch", done.stdout.strip(), "--wait", "10").stdout in ("hi\n", "")
    assert json.loads(cli("delete-db", "-o", "json").stdout) == {"user_id": "alice",
                                                                 "released": True}


def test_cli_exit_codes(cli, cli_env):
    ok = cli("run", "process", "--command", PY, "-c", "print('fine')")
    assert ok.stdout == "fine\n" and "SUCCEEDED: exit code 0" in ok.stderr
    failed = cli("run", "process", "--command", PY, "-c", "import sys; sys.exit(3)", code=1)
    assert "FAILED: exit code 3" in failed.stderr
    as_json = json.loads(cli("run", "process", "-o", "json", "--command", PY, "-c",
                             "print(1); print(2)").stdout)
    assert as_json["status"] == "SUCCEEDED" and messages(as_json["responses"]) == ["1", "2"]
    assert json.loads(cli("run", "process", "-o", "json", "--command", "false",
                          code=1).stdout)["status"] == "FAILED"
    missing = cli("cancel", "nosuchtoken", code=1)
    assert missing.stderr.startswith("error: not_found: ")
    assert cli("run", "sql", "--sql", "SELECT 1", code=1).stderr.startswith("error: conflict: ")
    assert cli("user", "bob", code=1).stderr.startswith("error: forbidden: ")
    assert "--spec is not valid JSON" in cli("submit", "process", "--spec", "{", code=2).stderr
    cli("run", "process", code=2)  # no spec
    cli("frobnicate", code=2)
    unset = {k: v for k, v in cli_env.items() if k != "SQLFLOW_PLAYGROUND_SERVER"}
    assert "SQLFLOW_PLAYGROUND_SERVER" in cli("jobs", env=unset, code=2).stderr
    down = cli("--server", "https://127.0.0.1:1", "jobs", code=1)
    assert down.stderr.startswith("error: server_down: nothing listens on 127.0.0.1:1")


def test_run_follow_prints_lines_in_order_and_tables_aligned(cli, alice):
    script = "import time\nfor i in range(6):\n    print('line', i, flush=True)\n" \
             "    time.sleep(0.05)\n"
    followed = cli("run", "process", "--follow", "--command", PY, "-c", script)
    assert followed.stdout.splitlines() == [f"line {i}" for i in range(6)]
    assert followed.stderr.startswith("submitted job ") and "\r" not in followed.stderr

    alice.create_db()
    sql = ("CREATE TABLE t (a INT, name TEXT); "
           "INSERT INTO t VALUES (1, 'x'), (10, 'longer'), (NULL, NULL); "
           "SELECT a, name FROM t ORDER BY a IS NULL, a")
    out = cli("run", "sql", "--sql", sql, "--follow").stdout
    assert out == ("0 row(s) affected\n"
                   "3 row(s) affected\n"
                   "   a  name\n"
                   "----  ------\n"
                   "   1  x\n"
                   "  10  longer\n"
                   "NULL  NULL\n")


class Lines:
    """Lines of a stream read in the background, to wait for one with a timeout."""

    def __init__(self, stream):
        self.queue = queue.Queue()
        threading.Thread(target=lambda: [self.queue.put(line) for line in stream],
                         daemon=True).start()

    def next(self, timeout=20):
        return self.queue.get(timeout=timeout)


def test_run_follow_streams_and_ctrl_c_cancels_the_job(cli_env, alice):
    proc = subprocess.Popen(CLIENT + ["run", "process", "--follow", "--command", *SLEEPER],
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert Lines(proc.stdout).next() == "started\n"  # while the job still runs
        [job] = alice.jobs()["jobs"]
        assert job["status"] == "RUNNING"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 130
    finally:
        proc.kill()
    assert "cancelled" in proc.stderr.read()
    assert alice.fetch(job["token"])["status"] == "CANCELLED"


def test_elapsed_indicator_only_on_a_terminal(cli_env):
    master, slave = pty.openpty()
    proc = subprocess.Popen(CLIENT + ["run", "process", "--follow", "--command", PY, "-c",
                                      "import time; time.sleep(3.5); print('done')"],
                            env=cli_env, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.wait(20) == 0 and proc.stdout.read() == "done\n"
    assert b"\r\x1b[K[RUNNING 1s]" in seen and b"[RUNNING 2s]" in seen
