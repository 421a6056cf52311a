"""The `sql` task type runs each job in a runner process of its own (plugins/sql_runner.py):
another pid, recorded in the meta; the data source reaches it only through a 0600 file it
deletes; cancel, a killed runner and a restart end the job with a status and leave no
process, zombie or not."""
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from sqlflow_playground.plugins import sql as sql_module
from sqlflow_playground.plugins.sql_runner import JOB_FILE
from test_sql_plugin import make_ctx, mysql_user, plugin, poll, start  # noqa: F401

FOREVER = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c"


@pytest.fixture
def sqlite_ctx(tmp_path):
    path = tmp_path / "user.db"
    sqlite3.connect(path).close()
    return lambda **kw: make_ctx(tmp_path, "sqlite:///" + str(path), **kw)


def proc_state(pid):
    """The process's state letter (R, S, Z…), or None once it is gone (reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.02)


def gone(pid, timeout=10.0):
    """The process has ended and been reaped: no zombie left behind."""
    wait_for(lambda: proc_state(pid) is None, timeout, f"runner {pid} reaped")


def proc_bytes(pid, name):
    with open(f"/proc/{pid}/{name}", "rb") as fh:
        return fh.read()


def test_the_job_runs_in_a_process_of_its_own_that_is_reaped(sqlite_ctx):
    ctx = sqlite_ctx()
    meta = start(ctx, FOREVER)
    pid = meta["runner_pid"]
    assert pid != os.getpid() and proc_state(pid) in ("R", "S", "D")
    assert os.getsid(pid) == pid  # its own session and group: cancel kills it alone
    # Batch work: it makes way for the server (see sql_runner._lower_priority).
    niced = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)  # 10 below the server's
    wait_for(lambda: os.getpriority(os.PRIO_PROCESS, pid) >= niced, 5, "runner niced")
    if os.path.exists("/proc/self/autogroup"):  # written just after the nice: wait for it
        wait_for(lambda: proc_bytes(pid, "autogroup").split()[-1] == b"10", 5,
                 "runner's autogroup niced")  # "/autogroup-N nice 10"
    assert b"sql_runner.py" in proc_bytes(pid, "cmdline")
    # The server's process does not do the work: the runner's CPU time grows, the
    # server's (this process, idle meanwhile) much less.
    def cpu(p):
        fields = proc_bytes(p, "stat").rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    runner_before, server_before = cpu(pid), cpu(os.getpid())
    # (niced, the runner may take a while to get 0.2 s of CPU on a busy host)
    wait_for(lambda: cpu(pid) - runner_before >= 20, 30, "runner busy")
    assert cpu(os.getpid()) - server_before < 10
    plugin.delete(ctx, meta)
    assert plugin.get(ctx, meta, "").status == "CANCELLED"
    gone(pid)


def test_a_finished_runner_is_reaped_without_anyone_asking(sqlite_ctx):
    ctx = sqlite_ctx()
    meta = start(ctx, "SELECT 1")
    gone(meta["runner_pid"])  # no get() was called: the plugin's own thread reaped it
    state, responses = poll(ctx, meta)
    assert state.status == "SUCCEEDED" and {"row": [1]} in responses


def test_the_data_source_is_in_neither_argv_nor_environment(mysql_user, tmp_path,
                                                            monkeypatch):
    monkeypatch.setenv("SQLFLOW_PLAYGROUND_DB_URL", "mysql://admin:server-secret@db/x")
    ds, db = mysql_user()
    password = ds.split(":")[2].split("@")[0]
    ctx = make_ctx(tmp_path, ds)
    meta = start(ctx, "SELECT SLEEP(3)")
    pid = meta["runner_pid"]
    # The job file goes as soon as the runner has read it, long before the job ends.
    wait_for(lambda: not os.path.exists(os.path.join(ctx.workdir, JOB_FILE)), 5,
             "job file deleted")
    assert proc_state(pid) not in (None, "Z")
    for name in ("cmdline", "environ"):
        seen = proc_bytes(pid, name)
        assert password.encode() not in seen and db.encode() not in seen, name
        assert b"server-secret" not in seen and b"mysql://" not in seen, name
    assert set(os.listdir(ctx.workdir)) <= {"responses.jsonl", "runner.err", "status.json"}
    for name in os.listdir(ctx.workdir):
        assert password.encode() not in open(os.path.join(ctx.workdir, name), "rb").read()
    plugin.delete(ctx, meta)
    gone(pid)


def test_the_job_file_is_private(sqlite_ctx, monkeypatch):
    """What the runner would read: 0600, with everything it needs (runner not started)."""
    seen = {}

    def no_runner(workdir):
        path = os.path.join(workdir, JOB_FILE)
        seen["mode"] = stat.S_IMODE(os.stat(path).st_mode)
        with open(path) as fh:
            seen["job"] = json.load(fh)
        return 0

    monkeypatch.setattr(sql_module, "_start_runner", no_runner)
    old = os.umask(0o022)
    try:
        plugin.create(sqlite_ctx(), {"sql": "SELECT 1; SELECT 2"})
    finally:
        os.umask(old)
    assert seen["mode"] == 0o600
    job = seen["job"]
    assert job["statements"] == ["SELECT 1", "SELECT 2"]
    assert job["source"]["kind"] == "sqlite" and job["page_bytes"] == 1 << 20


def test_cancel_stops_a_long_sqlite_query_and_its_runner(sqlite_ctx):
    ctx = sqlite_ctx()
    meta = start(ctx, FOREVER)
    runner = sql_module._runners[meta["runner_pid"]]
    time.sleep(0.5)
    plugin.delete(ctx, meta)
    state, _ = poll(ctx, meta, timeout=5)
    assert (state.status, state.message) == ("CANCELLED", "cancelled")
    assert runner.wait(timeout=5) == 0  # it stopped by itself: SIGKILL is the fallback
    gone(meta["runner_pid"], timeout=3)


def test_sigterm_alone_interrupts_the_statement(sqlite_ctx):
    """The runner's own handling of SIGTERM (what delete sends), without a cancel file."""
    ctx = sqlite_ctx()
    meta = start(ctx, FOREVER)
    runner = sql_module._runners[meta["runner_pid"]]
    time.sleep(0.5)
    os.kill(meta["runner_pid"], signal.SIGTERM)
    state, _ = poll(ctx, meta, timeout=10)
    assert (state.status, state.message) == ("CANCELLED", "cancelled")
    assert runner.wait(timeout=5) == 0
    gone(meta["runner_pid"])


def test_cancel_stops_a_mysql_sleep_and_its_runner(mysql_user, tmp_path):
    ds, _ = mysql_user()
    ctx = make_ctx(tmp_path, ds)
    meta = start(ctx, "SELECT SLEEP(30)")
    runner = sql_module._runners[meta["runner_pid"]]
    time.sleep(1.0)
    started = time.monotonic()
    plugin.delete(ctx, meta)
    assert time.monotonic() - started < 10  # not the 30 s of the SLEEP
    state, _ = poll(ctx, meta, timeout=5)
    assert (state.status, state.message) == ("CANCELLED", "cancelled")
    assert runner.wait(timeout=5) == 0  # KILL QUERY ended it: SIGKILL is the fallback
    gone(meta["runner_pid"], timeout=3)


def test_a_killed_runner_fails_the_job_saying_why(sqlite_ctx):
    ctx = sqlite_ctx()
    meta = start(ctx, FOREVER)
    time.sleep(0.3)
    os.kill(meta["runner_pid"], signal.SIGKILL)
    state, _ = poll(ctx, meta, timeout=5)
    assert state.status == "FAILED"
    assert state.message == ("the SQL job's runner died unexpectedly "
                             "(killed by signal SIGKILL)")
    gone(meta["runner_pid"])
    assert plugin.get(ctx, meta, "").message == state.message  # settled for good


def test_a_runner_that_crashes_says_its_last_words(sqlite_ctx):
    ctx = sqlite_ctx()
    with open(os.path.join(ctx.workdir, JOB_FILE), "w") as fh:
        fh.write("{not json")
    meta = {"runner_pid": sql_module._start_runner(ctx.workdir)}
    state, _ = poll(ctx, meta, timeout=10)
    assert state.status == "FAILED"
    assert state.message.startswith("the SQL job's runner died unexpectedly: ")
    assert "JSONDecodeError" in state.message
    assert not os.path.exists(os.path.join(ctx.workdir, JOB_FILE))
    gone(meta["runner_pid"])


def test_recover_stops_a_runner_left_by_a_previous_server(sqlite_ctx):
    ctx = sqlite_ctx()
    meta = start(ctx, FOREVER)
    pid = meta["runner_pid"]
    time.sleep(0.3)
    # As a new server sees it: a runner it did not start (the pid known from the meta).
    runner = sql_module._runners.pop(pid)
    message = plugin.recover(ctx, meta)
    assert message == "the server restarted while this SQL job was running"
    runner.wait(timeout=5)
    state = plugin.get(ctx, meta, "")
    assert (state.status, state.message) == ("FAILED", message)
    gone(pid)


def test_recover_keeps_a_job_that_ended_by_itself(sqlite_ctx):
    ctx = sqlite_ctx()
    meta = start(ctx, "SELECT 1")
    poll(ctx, meta)
    assert plugin.recover(ctx, meta) is None
    assert plugin.get(ctx, meta, "").status == "SUCCEEDED"


def test_a_recycled_pid_is_not_taken_for_a_runner(sqlite_ctx):
    """After a restart the meta's pid may belong to another process: never killed."""
    ctx = sqlite_ctx()
    meta = {"runner_pid": os.getpid()}  # alive, but not this job's runner
    assert "restarted" in plugin.recover(ctx, meta)
    assert plugin.get(ctx, meta, "").status == "FAILED"


def test_a_runner_whose_server_dies_stops_and_says_so(sqlite_ctx):
    """The server (here a child process that starts the job, then dies) is gone: its
    runner notices, stops the query and ends the job FAILED, instead of running on."""
    ctx = sqlite_ctx()
    server = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import json, os
        from sqlflow_playground.plugins.base import TaskContext
        from sqlflow_playground.plugins.sql import SqlPlugin
        ctx = TaskContext(token="t", user_id="u1", workdir={ctx.workdir!r},
                          data_source={ctx.data_source!r})
        print(json.dumps(SqlPlugin().create(ctx, {{"sql": {FOREVER!r}}})), flush=True)
        os._exit(0)  # as if killed: no clean-up of any kind
        """)], capture_output=True, text=True, timeout=60, check=True)
    meta = json.loads(server.stdout)
    state, _ = poll(ctx, meta, timeout=10)
    assert (state.status, state.message) == (
        "FAILED", "the server stopped while this SQL job was running")
    gone(meta["runner_pid"])
    assert plugin.recover(ctx, meta) is None  # the next server keeps what it says
