"""Fetches long-polling `process` jobs: those following one job from one cursor share one
look at it (longpoll keys), a quiet job costs a glance per look (ProcessPlugin.glance),
and news, the job's end and a cancel still reach every one of them, once. Also the ship
tick, with a job concluded on the IOLoop while an executor thread ships it."""
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from sqlflow_playground import longpoll
from sqlflow_playground.plugins.process import ProcessPlugin

PY = sys.executable

# Prints "first", then every line fed to the FIFO (argv[1]), and ends when it is closed.
FIFO_SCRIPT = ("import sys\n"
               "print('first', flush=True)\n"
               "with open(sys.argv[1]) as fh:\n"
               "    for line in fh:\n"
               "        print(line.strip(), flush=True)\n")
QUIET_SCRIPT = "import time\nprint('up', flush=True)\ntime.sleep(600)\n"


@pytest.fixture
def jobs_server(make_server, monkeypatch):
    # No ship tick: the tests below call it themselves, or do not need it.
    monkeypatch.setattr("sqlflow_playground.server.SHIP_INTERVAL_S", 3600)
    return make_server(enable_process_jobs=True)


@pytest.fixture
def alice(fetch_as, jobs_server):
    return fetch_as("alice", jobs_server.port)


def submit(fetch, command):
    resp = fetch("POST", "/api/jobs", {"task_type": "process", "spec": {"command": command}})
    assert resp.status == 201, resp.body
    return resp.body["token"]


def wait_until(predicate, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        time.sleep(0.01)


def first_line(fetch, token):
    """The cursor past the job's first line, once it printed it."""
    cursor = ""
    for _ in range(100):
        body = fetch("GET", f"/api/jobs/{token}?since={cursor}&wait=5").body
        cursor = body["next"]
        if body["responses"]:
            return cursor
    raise AssertionError("the job printed nothing")


@pytest.fixture
def counted(monkeypatch):
    """Counts of the looks of the long-poll ticker, of ProcessPlugin.get calls reading a
    page (a waiting fetch's probe; the ship tick's read no page) and of glances."""
    counts = {"looks": 0, "pages": 0, "glances": 0}
    lock = threading.Lock()
    probe_all, get, glance = longpoll._probe_all, ProcessPlugin.get, ProcessPlugin.glance

    def add(name):
        with lock:
            counts[name] += 1

    def counting_probe_all(*args, **kwargs):
        add("looks")
        return probe_all(*args, **kwargs)

    def counting_get(self, ctx, meta, cursor):
        if ctx.max_bytes > 0:
            add("pages")
        return get(self, ctx, meta, cursor)

    def counting_glance(self, ctx, meta):
        add("glances")
        return glance(self, ctx, meta)

    monkeypatch.setattr(longpoll, "_probe_all", counting_probe_all)
    monkeypatch.setattr(ProcessPlugin, "get", counting_get)
    monkeypatch.setattr(ProcessPlugin, "glance", counting_glance)
    return counts


def open_fifo(path, timeout=60):
    """The FIFO opened for writing once the job opened it for reading (never blocks)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:  # ENXIO: no reader yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "w")


def test_fetches_waiting_on_a_quiet_job_share_one_glance_a_look_and_get_each_line_once(
        jobs_server, alice, counted, tmp_path):
    fifo = str(tmp_path / "feed")
    os.mkfifo(fifo)
    token = submit(alice, [PY, "-c", FIFO_SCRIPT, fifo])
    cursor = first_line(alice, token)
    polls = jobs_server.gateway.jobs._polls
    polls.refresh_s = 3600  # only a changed glance may probe (no safety net here)

    def follow():
        got, since = [], cursor
        while True:
            body = alice("GET", f"/api/jobs/{token}?since={since}&wait=30").body
            got += [r["message"] for r in body["responses"]]
            since = body["next"]
            if body["eof"]:
                return got, body["status"]

    with ThreadPoolExecutor(10) as pool:
        followers = [pool.submit(follow) for _ in range(10)]
        wait_until(lambda: polls.waiting == 10, "ten fetches waiting")
        joined = counted["looks"]
        wait_until(lambda: counted["looks"] >= joined + 2, "a whole look with all ten")
        pages, glances, looks = counted["pages"], counted["glances"], counted["looks"]
        wait_until(lambda: counted["looks"] >= looks + 10, "ten more looks")
        quiet = (counted["pages"] - pages, counted["glances"] - glances,
                 counted["looks"] - looks, polls.waiting)
        with open_fifo(fifo) as feed:
            feed.write("second\n")
            feed.flush()
        results = [f.result(timeout=120) for f in followers]

    quiet_pages, quiet_glances, quiet_looks, still_waiting = quiet
    assert still_waiting == 10 and quiet_pages == 0  # nothing read while nothing changed
    assert quiet_glances <= quiet_looks + 1  # one glance a look for all ten (not ten)
    assert results == [(["second"], "SUCCEEDED")] * 10  # each line once, and the end


def test_a_cancel_answers_every_fetch_waiting_on_a_quiet_job(jobs_server, alice):
    token = submit(alice, [PY, "-c", QUIET_SCRIPT])
    cursor = first_line(alice, token)
    polls = jobs_server.gateway.jobs._polls
    polls.refresh_s = 3600
    with ThreadPoolExecutor(5) as pool:
        waiting = [pool.submit(alice, "GET", f"/api/jobs/{token}?since={cursor}&wait=30")
                   for _ in range(5)]
        wait_until(lambda: polls.waiting == 5, "five fetches waiting")
        assert alice("DELETE", f"/api/jobs/{token}").body["status"] == "CANCELLED"
        bodies = [f.result(timeout=60).body for f in waiting]
    assert [(b["status"], b["responses"]) for b in bodies] == [("CANCELLED", [])] * 5


def test_the_ship_tick_skips_a_job_concluded_while_it_runs_and_does_not_bring_it_back(
        jobs_server, alice, monkeypatch):
    """The ship tick runs in an executor thread; the IOLoop may conclude a job (a cancel,
    its end) and drop it from the jobs to ship at any point meanwhile. Here the drop is
    made at the two worst points: while the plugin is asked (it was a KeyError that
    failed the whole tick), and while the output is written to the store (the token was
    put back, to be shipped and concluded again)."""
    jobs = jobs_server.gateway.jobs
    tokens = [submit(alice, [PY, "-c", QUIET_SCRIPT]) for _ in range(3)]
    for token in tokens:
        first_line(alice, token)
    me = threading.get_ident()
    get, append = ProcessPlugin.get, jobs.store.append_output

    def get_then_conclude(self, ctx, meta, cursor):
        state = get(self, ctx, meta, cursor)
        if threading.get_ident() == me and ctx.token == tokens[0]:
            jobs._shipping.pop(ctx.token, None)  # as the loop does when it concludes it
        return state

    def append_then_conclude(chunks):
        append(chunks)
        if threading.get_ident() == me:
            jobs._shipping.pop(tokens[1], None)

    monkeypatch.setattr(ProcessPlugin, "get", get_then_conclude)
    monkeypatch.setattr(jobs.store, "append_output", append_then_conclude)
    statuses, seen = jobs._ship_some(tokens)

    assert statuses == {token: "RUNNING" for token in tokens}
    assert tokens[0] not in jobs._shipping and tokens[1] not in jobs._shipping
    assert tokens[2] in jobs._shipping and seen[tokens[2]].status == "RUNNING"
    # the others' output went to the store all the same (one transaction for all)
    assert jobs.store.shipped_size(tokens[1]) == jobs.store.shipped_size(tokens[2]) == 3


def test_the_ship_tick_reads_a_quiet_job_again_only_once_its_glance_changed(
        jobs_server, alice, monkeypatch, tmp_path):
    monkeypatch.setattr("sqlflow_playground.jobs.SHIP_REFRESH_S", 3600)
    jobs = jobs_server.gateway.jobs
    fifo = str(tmp_path / "feed")
    os.mkfifo(fifo)
    token = submit(alice, [PY, "-c", FIFO_SCRIPT, fifo])
    first_line(alice, token)
    me, reads = threading.get_ident(), []
    get = ProcessPlugin.get

    def counting_get(self, ctx, meta, cursor):
        if threading.get_ident() == me:
            reads.append(ctx.token)
        return get(self, ctx, meta, cursor)

    monkeypatch.setattr(ProcessPlugin, "get", counting_get)
    log = os.path.join(jobs._workdir(token), "output.log")
    for _ in range(5):
        statuses, seen = jobs._ship_some([token])
    quiet = (len(reads), jobs.store.shipped_size(token))
    with open_fifo(fifo) as feed:
        feed.write("second\n")
        feed.flush()
        wait_until(lambda: os.path.getsize(log) > quiet[1], "the line written")
        jobs._ship_some([token])
        after_line = (len(reads), jobs.store.shipped_size(token))
    wait_until(lambda: os.path.exists(os.path.join(jobs._workdir(token), "status.json")),
               "the job's end")
    statuses, seen = jobs._ship_some([token])

    assert quiet == (1, len("first\n"))  # read once, then glanced at only
    assert after_line == (2, len("first\nsecond\n"))
    assert len(reads) == 3 and seen[token].status == "SUCCEEDED"
