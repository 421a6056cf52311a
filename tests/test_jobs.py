"""Asynchronous `process` jobs as a notebook user sees them: submit, fetch, cancel."""
import os
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import fetch_until_eof

PY = sys.executable


def alive(pid):
    """Running, and not a zombie waiting for a parent that will never reap it."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def jobs_server(make_server):
    return make_server(enable_process_jobs=True, fetch_page_bytes=777)


@pytest.fixture
def alice(fetch_as, jobs_server):
    return fetch_as("alice", jobs_server.port)


@pytest.fixture
def bob(fetch_as, jobs_server):
    return fetch_as("bob", jobs_server.port)


def submit(fetch, command, **extra):
    spec = {"command": command, **extra.pop("spec", {})}
    resp = fetch("POST", "/api/jobs", {"task_type": "process", "spec": spec, **extra})
    assert resp.status == 201, resp.body
    assert resp.body["status"] in ("RUNNING", "SUCCEEDED")  # a quick one may be done already
    return resp.body["token"]


def messages(responses):
    return [r["message"] for r in responses]


def wait_for_status(fetch, token, statuses, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = fetch("GET", f"/api/jobs/{token}").body
        if body["status"] in statuses:
            return body
        time.sleep(0.05)
    raise AssertionError(f"job never reached {statuses}: {body}")


LINES_SCRIPT = ("import sys, time\n"
                "for i in range(2000):\n"
                "    print(f'line {i} ' + 'x' * (i % 97) + ' ü', flush=(i % 50 == 0))\n"
                "    if i % 500 == 0: time.sleep(0.05)\n"
                "print('no newline at the end', end='')\n")


def test_output_read_back_through_random_chunkings_equals_the_real_output(alice):
    real = subprocess.run([PY, "-c", LINES_SCRIPT], capture_output=True, text=True).stdout
    token = submit(alice, [PY, "-c", LINES_SCRIPT])
    rng = random.Random(7)
    responses, marks, cursor = [], [], ""
    while True:  # poll at random moments while the job writes
        time.sleep(rng.choice([0, 0, 0.01, 0.03]))
        marks.append((cursor, len(responses)))
        body = alice("GET", f"/api/jobs/{token}?since={cursor}").body
        responses += body["responses"]
        cursor = body["next"]
        if body["eof"]:
            break
    assert body["status"] == "SUCCEEDED" and body["message"] == "exit code 0"
    assert body["outputs"] == {"exit_code": 0}
    assert messages(responses) == real.split("\n")
    assert len(marks) > 20  # the 777-byte pages really did cut the output in many places
    # Any earlier cursor replays exactly the rest: nothing twice, nothing skipped.
    for cursor, seen in rng.sample(marks, 3):
        assert fetch_until_eof(alice, token, cursor)[1] == responses[seen:]


def test_stdout_and_stderr_arrive_line_by_line_in_order(alice):
    script = "import sys\nfor i in range(5):\n    print('out', i, flush=True)\n" \
             "    print('err', i, file=sys.stderr, flush=True)\nsys.exit(3)\n"
    body, responses, _ = fetch_until_eof(alice, submit(alice, [PY, "-c", script]))
    assert messages(responses) == [f"{s} {i}" for i in range(5) for s in ("out", "err")]
    assert (body["status"], body["message"]) == ("FAILED", "exit code 3")


def test_long_poll_returns_soon_after_new_output(alice):
    script = ("import time\nfor i in range(5):\n"
              "    time.sleep(0.5)\n    print(repr(time.time()), flush=True)\n")
    token = submit(alice, [PY, "-c", script])
    delays, cursor = [], ""
    while len(delays) < 5:
        body = alice("GET", f"/api/jobs/{token}?since={cursor}&wait=10").body
        received = time.time()
        cursor = body["next"]
        delays += [received - float(m) for m in messages(body["responses"])]
    assert statistics.median(delays) < 0.1, delays


def test_cancel_kills_the_whole_process_group(alice):
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "print(child.pid, flush=True)\ntime.sleep(60)\n")
    token = submit(alice, [PY, "-c", script])
    body = alice("GET", f"/api/jobs/{token}?wait=10").body
    grandchild = int(body["responses"][0]["message"])
    assert alive(grandchild)
    cancelled = alice("DELETE", f"/api/jobs/{token}")
    assert cancelled.status == 200 and cancelled.body["status"] == "CANCELLED"
    assert not alive(grandchild)
    again = alice("DELETE", f"/api/jobs/{token}")  # idempotent
    assert again.status == 200 and again.body["status"] == "CANCELLED"
    assert fetch_until_eof(alice, token)[0]["eof"] is True


def test_timeout_fails_the_job(alice):
    token = submit(alice, [PY, "-c", "import time; print('started', flush=True); time.sleep(30)"],
                   spec={"timeout_s": 0.5})
    body, responses, _ = fetch_until_eof(alice, token)
    assert body["status"] == "FAILED" and "timed out after 0.5s" in body["message"]
    assert messages(responses) == ["started"]


def test_env_is_given_and_the_servers_is_not(alice, monkeypatch):
    script = "import os; print(os.environ.get('GREETING'), os.environ.get('SECRET_OF_SERVER'))"
    monkeypatch.setenv("SECRET_OF_SERVER", "hunter2")
    token = submit(alice, [PY, "-c", script], spec={"env": {"GREETING": "hi"}})
    assert messages(fetch_until_eof(alice, token)[1]) == ["hi None"]


def test_two_hundred_concurrent_short_jobs_all_finish_correctly(make_server, fetch_as):
    server = make_server(enable_process_jobs=True, max_jobs_per_user=200, max_jobs=200)
    alice = fetch_as("alice", server.port)
    with ThreadPoolExecutor(16) as pool:
        tokens = list(pool.map(lambda i: submit(alice, ["/bin/echo", f"job {i}"]), range(200)))
        results = list(pool.map(lambda t: fetch_until_eof(alice, t, timeout=120), tokens))
    for i, (body, responses, _) in enumerate(results):
        assert body["status"] == "SUCCEEDED" and messages(responses) == [f"job {i}"]


def test_unfetched_job_is_cancelled_by_the_reaper_and_a_fetched_one_is_not(jobs_server, alice):
    sleep = [PY, "-c", "import time; time.sleep(60)"]
    abandoned = submit(alice, sleep, fetch_timeout_s=0.5)
    followed = submit(alice, sleep, fetch_timeout_s=0.5)
    for _ in range(8):
        time.sleep(0.1)
        assert alice("GET", f"/api/jobs/{followed}").status == 200
    jobs_server.call(jobs_server.gateway.jobs.reap())
    gone = alice("GET", f"/api/jobs/{abandoned}").body
    assert gone["status"] == "CANCELLED" and "not fetched for 0.5s" in gone["message"]
    assert alice("GET", f"/api/jobs/{followed}").body["status"] == "RUNNING"
    alice("DELETE", f"/api/jobs/{followed}")


def test_restart_keeps_finished_jobs_and_fails_running_ones(make_server, fetch_as, tmp_path):
    state = str(tmp_path / "kept")
    first = make_server(enable_process_jobs=True, state_dir=state)
    alice = fetch_as("alice", first.port)
    done = submit(alice, ["/bin/echo", "kept"])
    fetch_until_eof(alice, done)
    running = submit(alice, [PY, "-c", "import os, time; print(os.getpid(), flush=True); "
                                      "time.sleep(60)"])
    pid = int(alice("GET", f"/api/jobs/{running}?wait=10").body["responses"][0]["message"])
    first.stop()

    second = make_server(enable_process_jobs=True, state_dir=state)
    alice = fetch_as("alice", second.port)
    body, responses, _ = fetch_until_eof(alice, done)
    assert body["status"] == "SUCCEEDED" and messages(responses) == ["kept"]
    # A graceful stop ends the jobs running in the server, saying so; the output stays.
    body, responses, _ = fetch_until_eof(alice, running)
    assert body["status"] == "FAILED" and "stopped" in body["message"], body
    assert messages(responses) == [str(pid)]
    assert not alive(pid)


def test_another_users_token_is_unknown_on_every_route(alice, bob):
    token = submit(alice, [PY, "-c", "import time; time.sleep(60)"])
    for method, path in [("GET", f"/api/jobs/{token}"), ("DELETE", f"/api/jobs/{token}"),
                         ("GET", f"/plugins/v1/process/v1/{token}"),
                         ("DELETE", f"/plugins/v1/process/v1/{token}")]:
        resp = bob(method, path)
        assert resp.status == 404 and resp.body["error"]["code"] == "not_found", (method, path)
    assert bob("GET", "/api/jobs").body["jobs"] == []
    assert bob("GET", "/api/jobs?user_id=alice").status == 403
    assert alice("GET", f"/api/jobs/{token}").body["status"] == "RUNNING"  # untouched
    alice("DELETE", f"/api/jobs/{token}")


def test_quota_per_user_returns_429(make_server, fetch_as):
    server = make_server(enable_process_jobs=True, max_jobs_per_user=2)
    alice, bob = fetch_as("alice", server.port), fetch_as("bob", server.port)
    sleep = [PY, "-c", "import time; time.sleep(60)"]
    first, _ = submit(alice, sleep), submit(alice, sleep)
    over = alice("POST", "/api/jobs", {"task_type": "process", "spec": {"command": sleep}})
    assert over.status == 429 and over.body["error"]["code"] == "quota_exceeded"
    assert submit(bob, sleep)  # a quota per user
    alice("DELETE", f"/api/jobs/{first}")
    assert submit(alice, sleep)
    for job in alice("GET", "/api/jobs?status=RUNNING").body["jobs"]:
        alice("DELETE", f"/api/jobs/{job['token']}")
    for job in bob("GET", "/api/jobs").body["jobs"]:
        bob("DELETE", f"/api/jobs/{job['token']}")


@pytest.mark.parametrize("body,status,needle", [
    ({"task_type": "nope", "spec": {}}, 404, "unknown task type"),
    ({"task_type": "process", "version": "v9", "spec": {"command": ["true"]}}, 404, "v9"),
    ({"task_type": "process", "spec": {"command": "echo hi"}}, 422, "spec['command']"),
    ({"task_type": "process", "spec": {"command": []}}, 422, "spec['command']"),
    ({"task_type": "process", "spec": {"command": ["true"], "shell": True}}, 422, "shell"),
    ({"task_type": "process", "spec": {"command": ["true"], "timeout_s": -1}}, 422, "timeout_s"),
    ({"task_type": "process"}, 400, "spec is required"),
    ({"spec": {}}, 400, "task_type"),
    ({"task_type": "process", "spec": {"command": ["true"]}, "fetch_timeout_s": 0}, 400,
     "fetch_timeout_s"),
])
def test_bad_submissions_are_refused_and_create_nothing(alice, body, status, needle):
    resp = alice("POST", "/api/jobs", body)
    assert resp.status == status and needle in resp.body["error"]["message"], resp.body
    assert alice("GET", "/api/jobs").body["jobs"] == []


@pytest.mark.parametrize("query,needle", [("since=abc", "cursor"), ("since=999999", "cursor"),
                                          ("wait=31", "wait"), ("wait=soon", "wait")])
def test_bad_fetch_parameters_are_400(alice, query, needle):
    token = submit(alice, ["/bin/echo", "hi"])
    resp = alice("GET", f"/api/jobs/{token}?{query}")
    assert resp.status == 400 and needle in resp.body["error"]["message"]


def test_process_jobs_are_off_unless_enabled(server, fetch_as):
    resp = fetch_as("alice")("POST", "/api/jobs", {"task_type": "process",
                                                   "spec": {"command": ["true"]}})
    assert resp.status == 404 and "unknown task type process" in resp.body["error"]["message"]


def test_plugin_door_creates_polls_and_deletes(alice):
    listed = alice("GET", "/plugins/v1").body["plugins"]
    assert {(p["task_type"], p["version"]) for p in listed} >= {("process", "v1"), ("sql", "v1")}
    created = alice("POST", "/plugins/v1/process/v1",
                    {"spec": {"command": [PY, "-c", "import time; time.sleep(60)"]}})
    assert created.status == 201
    job_id = created.body["job_id"]
    polled = alice("GET", f"/plugins/v1/process/v1/{job_id}").body
    assert polled == {"job_id": job_id, "job_state": "RUNNING", "message": "", "outputs": {},
                      "log_links": []}
    assert alice("GET", f"/plugins/v1/sql/v1/{job_id}").status == 404  # wrong type
    assert alice("DELETE", f"/plugins/v1/process/v1/{job_id}").body["job_state"] == "CANCELLED"
    # The same job through the other door:
    assert alice("GET", f"/api/jobs/{job_id}").body["status"] == "CANCELLED"


def test_quota_for_the_whole_server_returns_429(make_server, fetch_as):
    server = make_server(enable_process_jobs=True, max_jobs=1)
    alice, bob = fetch_as("alice", server.port), fetch_as("bob", server.port)
    token = submit(alice, [PY, "-c", "import time; time.sleep(60)"])
    over = bob("POST", "/api/jobs", {"task_type": "process", "spec": {"command": ["true"]}})
    assert over.status == 429 and "max_jobs=1" in over.body["error"]["message"]
    alice("DELETE", f"/api/jobs/{token}")


def test_finished_job_that_nobody_fetched_frees_its_quota_slot(make_server, fetch_as):
    server = make_server(enable_process_jobs=True, max_jobs_per_user=1)
    alice = fetch_as("alice", server.port)
    first = submit(alice, ["/bin/echo", "done"])
    status_file = os.path.join(server.gateway.jobs._workdir(first), "status.json")
    deadline = time.monotonic() + 10
    while not os.path.exists(status_file) and time.monotonic() < deadline:
        time.sleep(0.02)  # finished on disk; the store still says RUNNING
    assert submit(alice, ["/bin/echo", "second"])  # the first no longer counts


def test_finished_jobs_and_their_output_are_purged_after_job_ttl(make_server, fetch_as):
    server = make_server(enable_process_jobs=True, job_ttl_s=0.2)
    alice = fetch_as("alice", server.port)
    token = submit(alice, ["/bin/echo", "bye"])
    fetch_until_eof(alice, token)
    workdir = server.gateway.jobs._workdir(token)
    time.sleep(0.3)
    server.call(server.gateway.jobs.reap())
    assert alice("GET", f"/api/jobs/{token}").status == 404
    assert not os.path.exists(workdir)


class CountingCalls:
    """Wraps a store method and counts the calls that reach it."""

    def __init__(self, store, name):
        self.calls, self._real = 0, getattr(store, name)
        setattr(store, name, self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._real(*args, **kwargs)


def test_a_finished_job_fetched_at_its_end_needs_no_store_until_it_may_be_purged(
        make_server, fetch_as):
    server = make_server(enable_process_jobs=True, job_ttl_s=3)
    alice, bob = fetch_as("alice", server.port), fetch_as("bob", server.port)
    token = submit(alice, ["/bin/echo", "one line"])
    body, responses, _ = fetch_until_eof(alice, token)
    end = body["next"]
    reads = CountingCalls(server.gateway.jobs.store, "get_job")
    for _ in range(20):
        again = alice("GET", f"/api/jobs/{token}?since={end}").body
        assert again["eof"] and again["responses"] == [] and again["next"] == end
        assert again["status"] == "SUCCEEDED" and again["finished_at"] == body["finished_at"]
    assert reads.calls == 0
    assert bob("GET", f"/api/jobs/{token}?since={end}").status == 404  # still not bob's
    assert messages(alice("GET", f"/api/jobs/{token}").body["responses"]) == ["one line"]
    assert reads.calls == 1  # another cursor: read as before
    time.sleep(max(0.0, body["finished_at"] + 3.1 - time.time()))
    alice("GET", f"/api/jobs/{token}?since={end}")
    assert reads.calls == 2  # past job_ttl_s another replica may have purged it: ask
    server.call(server.gateway.jobs.reap())
    assert alice("GET", f"/api/jobs/{token}?since={end}").status == 404


def test_fetching_a_running_job_reads_its_row_from_memory_yet_sees_every_change(alice,
                                                                               jobs_server):
    reads = CountingCalls(jobs_server.gateway.jobs.store, "get_job")
    token = submit(alice, [PY, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                   fetch_timeout_s=0.5)
    for _ in range(10):
        assert alice("GET", f"/api/jobs/{token}").body["status"] == "RUNNING"
    assert reads.calls <= 1  # the submit's own read; fetches none
    time.sleep(0.6)
    jobs_server.call(jobs_server.gateway.jobs.reap())  # abandoned: cancelled by the reaper
    body = alice("GET", f"/api/jobs/{token}").body
    assert body["status"] == "CANCELLED" and "not fetched" in body["message"]


def test_stopping_the_server_answers_waiting_fetches_at_once(make_server, fetch_as):
    server = make_server(enable_process_jobs=True)
    alice = fetch_as("alice", server.port)
    token = submit(alice, [PY, "-c", "import time; time.sleep(60)"])
    with ThreadPoolExecutor(4) as pool:
        waits = [pool.submit(alice, "GET", f"/api/jobs/{token}?wait=30") for _ in range(4)]
        time.sleep(0.5)
        assert not any(w.done() for w in waits)
        start = time.monotonic()
        server.stop()
        answers = [w.result(timeout=10) for w in waits]
        took = time.monotonic() - start
    assert [a.status for a in answers] == [200] * 4
    assert took < 4.5  # not held until the 5 s close timeout, let alone the 30 s wait
    with open(os.path.join(server.gateway.jobs._workdir(token), "child.pgid")) as fh:
        pgid = int(fh.read())
    with pytest.raises(ProcessLookupError):  # the stopping server ended its job
        os.killpg(pgid, 0)


def test_job_dirs_whose_rows_another_replica_purged_are_removed_here(make_server, fetch_as):
    server = make_server(enable_process_jobs=True)
    jobs = server.gateway.jobs
    alice = fetch_as("alice", server.port)
    kept, purged = (submit(alice, ["/bin/echo", name]) for name in ("kept", "purged"))
    for token in (kept, purged):
        fetch_until_eof(alice, token)
    jobs.store.delete_job(purged)  # as another replica's reaper does after job_ttl_s
    submitting = os.path.join(os.path.dirname(jobs._workdir(kept)), "a-job-being-submitted")
    os.makedirs(submitting)  # a directory without a row yet, as in the middle of a submit
    old = time.time() - 2 * 60
    for path in (jobs._workdir(kept), jobs._workdir(purged)):
        os.utime(path, (old, old))
    done = server.call(jobs.reap())
    assert done["removed_orphan_job_dir"] == 1
    assert not os.path.exists(jobs._workdir(purged))
    assert os.path.exists(jobs._workdir(kept)) and os.path.exists(submitting)
    assert messages(alice("GET", f"/api/jobs/{kept}").body["responses"]) == ["kept"]
