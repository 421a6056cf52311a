"""Issue 9, output side: pages, output caps, fetch_timeout_s, process specs, eof.

Each test plays a tenant trying to make the server hold too much, lose track of a job,
or answer wrongly, and checks what that tenant (and only that tenant) sees.
"""
import json
import os
import subprocess
import sys
import threading

import pytest

from conftest import fetch_until_eof, wait_until
from sqlflow_playground import jobs as jobs_module
from sqlflow_playground.errors import BadRequest
from sqlflow_playground.jobs import check_fetch_timeout
from sqlflow_playground.plugins.base import (SUCCEEDED, TaskContext, TaskPlugin, TaskState)
from sqlflow_playground.plugins.output import (OutputLimitExceeded, ResponseLog,
                                               ResponseWriter)
from sqlflow_playground.plugins.process import ProcessPlugin

PY = sys.executable
PAGE = 4096
CAP = 64 << 10


def compact(value):
    return json.dumps(value, separators=(",", ":"))


def page_sizes(fetch, token):
    """Every page of the job to its end: (sizes of each page's responses JSON, all)."""
    sizes, responses, cursor = [], [], ""
    while True:
        body = fetch("GET", f"/api/jobs/{token}?since={cursor}&wait=5").body
        sizes.append(len(compact(body["responses"])))
        responses += body["responses"]
        cursor = body["next"]
        if body["eof"]:
            return body, sizes, responses


def submit(fetch, command, **extra):
    # timeout_s: a command that prints forever must not outlive a failed test
    resp = fetch("POST", "/api/jobs", {"task_type": "process",
                                       "spec": {"command": command, "timeout_s": 60}, **extra})
    assert resp.status == 201, resp.body
    return resp.body["token"]


def job_dir(server, token):
    return os.path.join(server.config.state_dir, "jobs", token)


def finished_on_disk(server, token):
    return wait_until(lambda: os.path.exists(os.path.join(job_dir(server, token),
                                                          "status.json")), 30)


@pytest.fixture
def process_server(make_server):
    return make_server(enable_process_jobs=True, fetch_page_bytes=PAGE, max_output_bytes=CAP)


@pytest.fixture
def alice(fetch_as, process_server):
    return fetch_as("alice", process_server.port)


# -- pages -----------------------------------------------------------------------------

def test_a_response_larger_than_a_page_is_skipped_never_read_whole(tmp_path):
    path = str(tmp_path / "responses.jsonl")
    huge = {"row": ["x" * 300_000]}  # as written before writers refused such lines
    with open(path, "w") as fh:
        for response in ({"head": ["v"]}, huge, {"row": ["small"]}, {"eoe": True}):
            fh.write(compact(response) + "\n")
    log, cursor, got = ResponseLog(path), "", []
    for _ in range(10):
        responses, cursor = log.read(cursor, PAGE)
        assert len(compact(list(responses))) <= PAGE
        got += responses
        if not log.more:
            break
    assert got[0] == {"head": ["v"]} and got[2:] == [{"row": ["small"]}, {"eoe": True}]
    assert got[1] == {"message": f"response of {len(compact(huge))} bytes skipped: larger "
                                 f"than fetch_page_bytes ({PAGE} bytes)"}
    assert int(cursor) == os.path.getsize(path)


def test_a_stored_response_larger_than_a_page_never_makes_a_fetch_page_larger(make_server,
                                                                              fetch_as):
    server = make_server(fetch_page_bytes=PAGE)
    alice = fetch_as("alice", server.port)
    assert alice("POST", "/api/create_db", {}).status == 200
    resp = alice("POST", "/api/jobs", {"task_type": "sql", "spec": {"sql": "SELECT 1 AS one"}})
    token = resp.body["token"]
    assert finished_on_disk(server, token)
    # As if written before writers refused such responses: one of 1 MB between two others.
    path = os.path.join(job_dir(server, token), "responses.jsonl")
    huge = compact({"row": ["h" * 1_000_000]})
    with open(path, "w") as fh:
        fh.write(compact({"head": ["one"]}) + "\n" + huge + "\n" + compact({"eoe": True}) + "\n")
    body, sizes, responses = page_sizes(alice, token)
    assert max(sizes) <= PAGE
    assert responses == [{"head": ["one"]},
                         {"message": f"response of {len(huge)} bytes skipped: larger than "
                                     f"fetch_page_bytes ({PAGE} bytes)"},
                         {"eoe": True}]


def test_a_response_of_exactly_a_page_still_comes_whole(tmp_path):
    path = str(tmp_path / "responses.jsonl")
    response = {"row": ["y" * (PAGE - len(compact({"row": [""]})))]}
    assert len(compact(response)) == PAGE
    with open(path, "w") as fh:
        fh.write(compact(response) + "\n")
    assert ResponseLog(path).read("", PAGE)[0] == [response]


def test_no_page_of_a_process_job_passes_fetch_page_bytes_whatever_it_prints(alice):
    # One long line of control characters and non-UTF-8 bytes: JSON escapes each into
    # six bytes, so raw-byte pages would be six times too large.
    script = ("import sys; sys.stdout.buffer.write(b'\\x01\\xff' * 20000 + b'\\n'"
              " + 'é'.encode() * 5000 + b'\\nend\\n')")
    body, sizes, responses = page_sizes(alice, submit(alice, [PY, "-c", script]))
    assert body["status"] == "SUCCEEDED"
    assert max(sizes) <= PAGE and len(sizes) > 20
    text = "".join(r["message"] for r in responses)
    assert text == "\x01\ufffd" * 20000 + "é" * 5000 + "end"


@pytest.mark.parametrize("page", [5, 16, 40, 100, PAGE])
def test_text_output_paged_in_any_size_comes_back_whole_and_every_page_moves_on(tmp_path,
                                                                                page):
    from sqlflow_playground.plugins.output import read_messages
    data = b"\n\nabc\n" + "é".encode() * 50 + "😀".encode() * 3 + b"\x00\xff\nend"
    (tmp_path / "output.log").write_bytes(data)
    cursor, text = "", ""
    while True:
        responses, after, more = read_messages(str(tmp_path / "output.log"), cursor, page, True)
        if not responses:
            break
        assert int(after) > int(cursor or 0)  # progress, even on a page too small for a message
        if page >= 40:
            assert len(compact(responses)) <= page
        text += "".join(r["message"] for r in responses)
        cursor = after
    assert not more and text == data.decode("utf-8", "replace").replace("\n", "")


def test_a_big_page_is_encoded_off_the_ioloop(alice, process_server, monkeypatch):
    calls = []
    real = jobs_module.encode_responses

    def recording(responses):
        calls.append((threading.get_ident(), len(responses)))
        return real(responses)

    monkeypatch.setattr(jobs_module, "encode_responses", recording)
    token = submit(alice, [PY, "-c", "for i in range(3000): print('line', i)"])
    assert finished_on_disk(process_server, token)
    body, sizes, responses = page_sizes(alice, token)
    assert len(responses) == 3000
    big = [thread for thread, n in calls if n > 10]
    assert big and process_server.thread.ident not in big


# -- output caps -----------------------------------------------------------------------

@pytest.mark.parametrize("command", [
    [PY, "-c", "while True: print('z' * 99)"],  # Python ignores SIGXFSZ: gets EFBIG
    ["yes", "a line of output"],  # killed by SIGXFSZ
])
def test_a_process_job_printing_past_its_cap_fails_saying_so(alice, process_server, command):
    token = submit(alice, command)
    body, responses, _ = fetch_until_eof(alice, token)
    assert body["status"] == "FAILED", body
    assert "output cap reached" in body["message"] and "--max_output_bytes" in body["message"]
    assert str(CAP) in body["message"]
    path = os.path.join(job_dir(process_server, token), "output.log")
    assert os.path.getsize(path) == CAP  # cut exactly there
    with open(path, "rb") as fh:
        on_disk = fh.read().decode()
    assert "\n".join(r["message"] for r in responses) == on_disk.rstrip("\n")


def test_response_writer_refuses_a_line_past_its_limit_and_keeps_what_came_before(tmp_path):
    path = str(tmp_path / "responses.jsonl")
    line = {"row": [1, "abc"]}
    size = len(compact(line)) + 1
    with ResponseWriter(path, limit=3 * size + 5) as out:
        for _ in range(3):
            out.write(line)
        with pytest.raises(OutputLimitExceeded) as e:
            out.write(line)
        assert e.value.limit == 3 * size + 5
    assert os.path.getsize(path) == 3 * size
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert ResponseLog(path).read("", 1 << 20)[0] == [line] * 3
    with ResponseWriter(path, limit=3 * size + 5) as again:  # appending counts what is there
        with pytest.raises(OutputLimitExceeded):
            again.write(line)


def test_a_sql_job_producing_past_its_cap_fails_saying_so(make_server, fetch_as):
    server = make_server(max_output_bytes=CAP)
    alice = fetch_as("alice", server.port)
    assert alice("POST", "/api/create_db", {}).status == 200
    sql = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 100000) "
           "SELECT x, 'row ' || x FROM c")
    resp = alice("POST", "/api/jobs", {"task_type": "sql", "spec": {"sql": sql}})
    assert resp.status == 201, resp.body
    token = resp.body["token"]
    body, responses, _ = fetch_until_eof(alice, token)
    assert body["status"] == "FAILED", body
    assert "output cap reached" in body["message"] and "--max_output_bytes" in body["message"]
    path = os.path.join(job_dir(server, token), "responses.jsonl")
    assert CAP - 100 < os.path.getsize(path) <= CAP
    rows = [r["row"] for r in responses if "row" in r]
    assert responses[0] == {"head": ["x", "'row ' || x"]} and len(rows) > 1000
    assert rows == [[i, f"row {i}"] for i in range(1, len(rows) + 1)]  # the output so far


def test_a_user_over_their_output_bound_gets_429_and_nothing_changes(make_server, fetch_as):
    bound = 50_000
    server = make_server(enable_process_jobs=True, max_output_bytes_per_user=bound)
    alice, bob = fetch_as("alice", server.port), fetch_as("bob", server.port)
    first = submit(alice, [PY, "-c", "while True: print('w' * 99)"])
    body, _, _ = fetch_until_eof(alice, first)
    # The job was given what remained of the bound, less than max_output_bytes.
    assert body["status"] == "FAILED" and "output cap reached" in body["message"]
    assert os.path.getsize(os.path.join(job_dir(server, first), "output.log")) <= bound
    jobs_before = alice("GET", "/api/jobs").body["jobs"]
    dirs_before = sorted(os.listdir(os.path.join(server.config.state_dir, "jobs")))
    resp = alice("POST", "/api/jobs", {"task_type": "process", "spec": {"command": ["true"]}})
    assert resp.status == 429, resp.body
    message = resp.body["error"]["message"]
    assert "max_output_bytes_per_user" in message and "expire" in message
    assert alice("GET", "/api/jobs").body["jobs"] == jobs_before
    assert sorted(os.listdir(os.path.join(server.config.state_dir, "jobs"))) == dirs_before
    assert submit(bob, ["true"])  # another tenant is not touched


# -- fetch_timeout_s -------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e308", "-1", "0",
                                 '"x"', "604801", "true"])
def test_fetch_timeout_must_be_a_sane_number_of_seconds(alice, process_server, raw):
    body = '{"spec": {"command": ["true"]}, "fetch_timeout_s": %s}' % raw
    for path, extra in (("/api/jobs", '"task_type": "process", '),
                        ("/plugins/v1/process/v1", "")):
        resp = alice("POST", path, "{" + extra + body[1:])
        assert resp.status == 400, (path, resp.body)
        if raw not in ("NaN", "Infinity", "-Infinity"):  # the parser may refuse those first
            assert "fetch_timeout_s" in resp.body["error"]["message"]
    listing = alice("GET", "/api/jobs")
    assert listing.status == 200 and listing.body == {"jobs": []}
    assert not os.listdir(os.path.join(process_server.config.state_dir, "jobs")) \
        if os.path.isdir(os.path.join(process_server.config.state_dir, "jobs")) else True


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e308, -1, 0, "60", None,
                                   604800.5])
def test_the_service_refuses_any_fetch_timeout_the_parser_lets_through(value):
    with pytest.raises(BadRequest, match="fetch_timeout_s"):
        check_fetch_timeout(value)


def test_a_week_of_fetch_timeout_is_fine(alice):
    assert submit(alice, ["true"], fetch_timeout_s=604800)


# -- process specs ---------------------------------------------------------------------

@pytest.mark.parametrize("spec, named", [
    ({"command": ["true"], "env": {"A=B": "1"}}, "A=B"),
    ({"command": ["true"], "env": {"GOOD": "a\u0000b"}}, "GOOD"),
    ({"command": ["true"], "env": {"1ST": "x"}}, "1ST"),
    ({"command": ["true"], "env": {"BIG": "v" * (33 << 10)}}, "BIG"),
    ({"command": ["echo", "a\u0000b"]}, "command'][1]"),
])
def test_a_process_spec_exec_would_refuse_is_refused_at_submit(alice, process_server,
                                                                 spec, named):
    resp = alice("POST", "/api/jobs", {"task_type": "process", "spec": spec})
    assert resp.status in (400, 422), resp.body
    assert named in resp.body["error"]["message"]
    assert "a\u0000b" not in resp.body["error"]["message"]
    assert alice("GET", "/api/jobs").body == {"jobs": []}


def test_a_runner_that_dies_says_why(tmp_path):
    (tmp_path / "runner.err").write_text(
        "Traceback (most recent call last):\n  ...\nValueError: something broke\n")
    dead = subprocess.Popen(["true"])
    dead.wait()
    ctx = TaskContext(token="t", user_id="alice", workdir=str(tmp_path))
    state = ProcessPlugin().get(ctx, {"runner_pid": dead.pid}, "")
    assert state.status == "FAILED"
    assert state.message == "the job's runner died unexpectedly: ValueError: something broke"


def test_job_files_are_private(alice, process_server):
    token = submit(alice, ["echo", "hi"])
    assert finished_on_disk(process_server, token)
    for name in ("output.log", "status.json", "spec_env.json", "runner.err"):
        mode = os.stat(os.path.join(job_dir(process_server, token), name)).st_mode & 0o777
        assert mode == 0o600, (name, oct(mode))


# -- eof and started_at ----------------------------------------------------------------

def test_a_finished_process_job_hands_over_everything_with_eof_in_one_fetch(alice,
                                                                            process_server):
    token = submit(alice, ["echo", "all of it"])
    assert finished_on_disk(process_server, token)
    body = alice("GET", f"/api/jobs/{token}").body
    assert body["responses"] == [{"message": "all of it"}]
    assert body["eof"] is True and body["status"] == "SUCCEEDED"
    assert body["started_at"] is not None


def test_a_finished_sql_job_hands_over_everything_with_eof_in_one_fetch(make_server,
                                                                        fetch_as):
    server = make_server()
    alice = fetch_as("alice", server.port)
    assert alice("POST", "/api/create_db", {}).status == 200
    resp = alice("POST", "/api/jobs", {"task_type": "sql", "spec": {"sql": "SELECT 1 AS one"}})
    assert resp.status == 201
    token = resp.body["token"]
    assert finished_on_disk(server, token)
    body = alice("GET", f"/api/jobs/{token}").body
    assert body["responses"] == [{"head": ["one"]}, {"row": [1]}, {"eoe": True}]
    assert body["eof"] is True and body["status"] == "SUCCEEDED"


class InstantPlugin(TaskPlugin):
    """Done before anyone looks, and silent on whether more output is ready."""

    task_type, version = "instant", "v1"

    def create(self, ctx, spec):
        return {}

    def get(self, ctx, meta, cursor):
        done = [{"message": "done"}]
        return TaskState(SUCCEEDED, "ok", [] if cursor == "1" else done, cursor="1")

    def delete(self, ctx, meta):
        pass


def test_a_job_seen_finished_before_it_was_seen_running_has_started_at_and_eof(
        make_server, fetch_as):
    server = make_server()
    server.gateway.registry.register(InstantPlugin())
    alice = fetch_as("alice", server.port)
    resp = alice("POST", "/api/jobs", {"task_type": "instant", "spec": {}})
    assert resp.status == 201 and resp.body["status"] == SUCCEEDED
    body = alice("GET", f"/api/jobs/{resp.body['token']}").body
    assert body["started_at"] is not None and body["started_at"] <= body["finished_at"]
    assert body["responses"] == [{"message": "done"}] and body["eof"] is True
