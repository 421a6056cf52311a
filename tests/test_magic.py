"""`%%sqlflow` in a real IPython InteractiveShell against a real server over mutual TLS."""
import json
import os
import signal
import sys
import threading
import time

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from traitlets.config import Config

from sqlflow_playground.client import PlaygroundClient, PlaygroundClientError
from sqlflow_playground.magic import JobFailed

PY = sys.executable
EXTENSION = "sqlflow_playground.magic"


def tls(certs, name):
    return {"ca": certs.ca, "cert": str(certs.dir / name / f"{name}.crt"),
            "key": str(certs.dir / name / f"{name}.key")}


@pytest.fixture
def playground(make_server):
    return make_server(enable_process_jobs=True)


@pytest.fixture
def alice(certs, playground):
    """The test's own view of alice on the server, to check what the magic did."""
    client = PlaygroundClient(f"https://127.0.0.1:{playground.port}", user_id="alice",
                              **tls(certs, "alice"))
    yield client
    client.close()


@pytest.fixture
def shell(certs, playground, tmp_path, monkeypatch):
    """A fresh InteractiveShell configured as the README tells a user: an env file named by
    SQLFLOW_JUPYTER_ENV_PATH (with the seed's SERVRE spelling), then ``%load_ext``."""
    saved = dict(os.environ)  # the magic loads the env file into os.environ
    for name in list(os.environ):
        if name.startswith(("SQLFLOW_", "SQLFLOW_PLAYGROUND_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SQLFLOW_DATASOURCE", "")
    monkeypatch.delenv("SQLFLOW_DATASOURCE")
    paths = tls(certs, "alice")
    env_file = tmp_path / "sqlflow_playground.env"
    env_file.write_text(
        'SQLFLOW_SERVER="sqlflow.example.com:50051"\n'
        "SQLFLOW_PLAYGROUND_USER_ID_ENV=SQLFLOW_USER_ID\n"
        'SQLFLOW_USER_ID="alice"\n'
        f'SQLFLOW_PLAYGROUND_SERVRE="https://127.0.0.1:{playground.port}"\n'
        f'SQLFLOW_PLAYGROUND_SERVER_CA="{paths["ca"]}"\n'
        f'SQLFLOW_PLAYGROUND_CLIENT_KEY="{paths["key"]}"\n'
        f'SQLFLOW_PLAYGROUND_CLIENT_CERT="{paths["cert"]}"\n')
    monkeypatch.setenv("SQLFLOW_JUPYTER_ENV_PATH", str(env_file))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    InteractiveShell.clear_instance()
    ip = InteractiveShell.instance(config=config)
    ip.run_line_magic("load_ext", EXTENSION)
    yield ip
    if EXTENSION in ip.extension_manager.loaded:
        ip.run_line_magic("unload_ext", EXTENSION)
    InteractiveShell.clear_instance()
    os.environ.clear()
    os.environ.update(saved)


def magics(ip):
    return ip.magics_manager.registry["SQLFlowMagics"]


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition never became true")


SCRIPT = ("CREATE TABLE t (a INT, b TEXT); INSERT INTO t VALUES (1, '<b>x</b>'), (2, NULL);\n"
          "SELECT a, b FROM t ORDER BY a")


def test_first_cell_creates_the_database_and_shows_the_rows(shell, alice):
    assert "SQLFLOW_DATASOURCE" not in os.environ
    with capture_output() as out:
        assert shell.run_cell_magic("sqlflow", "", SCRIPT) is None
    assert os.environ["SQLFLOW_DATASOURCE"] == alice.user()["data_source"]
    assert os.environ["SQLFLOW_SERVER"] == "sqlflow.example.com:50051"  # the file was loaded
    assert out.stdout == "0 row(s) affected\n2 row(s) affected\n"
    [table] = out.outputs
    html = table.data["text/html"]
    assert "<th>a</th><th>b</th>" in html and "<td>1</td><td>&lt;b&gt;x&lt;/b&gt;</td>" in html
    assert "<td>2</td><td><i>NULL</i></td>" in html
    assert table.data["text/plain"].splitlines() == ["a  b", "-  --------", "1  <b>x</b>",
                                                     "2  NULL"]
    assert shell.user_ns["_sqlflow"]["status"] == "SUCCEEDED"
    # The next cell uses the same database: the table is still there.
    with capture_output() as out:
        shell.run_cell_magic("sqlflow", "", "SELECT count(*) AS n FROM t")
    assert "<td>2</td>" in out.outputs[0].data["text/html"]


def test_a_failing_cell_raises(shell):
    with pytest.raises(JobFailed, match="no such table: missing") as failed:
        shell.run_cell_magic("sqlflow", "", "SELECT * FROM missing")
    assert failed.value.result["status"] == "FAILED"
    assert failed.value._render_traceback_() == [f"JobFailed: {failed.value}"]
    spec = json.dumps({"command": [PY, "-c", "print('partial'); import sys; sys.exit(4)"]})
    with capture_output() as out, pytest.raises(JobFailed, match="exit code 4"):
        shell.run_cell_magic("sqlflow", "--task process", spec)
    assert out.stdout == "partial\n"
    with pytest.raises(PlaygroundClientError) as refused:
        shell.run_cell_magic("sqlflow", "--task process", '{"command": "not a list"}')
    assert refused.value.status == 422


def test_task_option_and_an_existing_data_source(shell, alice, monkeypatch):
    monkeypatch.setenv("SQLFLOW_DATASOURCE", "mysql://me:pw@tcp(db:3306)/mine")
    spec = json.dumps({"command": [PY, "-c", "print('hello'); print('world')"]})
    with capture_output() as out:
        shell.run_cell_magic("sqlflow", "--task process --version v1", spec)
    assert out.stdout == "hello\nworld\n"
    with pytest.raises(PlaygroundClientError) as none:
        alice.user()  # a data source was given: no database was made for alice
    assert none.value.status == 404
    assert os.environ["SQLFLOW_DATASOURCE"] == "mysql://me:pw@tcp(db:3306)/mine"
    from IPython.core.error import UsageError
    with pytest.raises(UsageError, match="JSON spec"):
        shell.run_cell_magic("sqlflow", "--task process", "echo hi")


def test_a_released_database_is_made_again(shell, alice):
    shell.run_cell_magic("sqlflow", "", "SELECT 1")
    alice.delete_db()  # e.g. the idle reaper, while the laptop slept
    with capture_output() as out:
        shell.run_cell_magic("sqlflow", "", "SELECT 2 AS two")
    assert "<td>2</td>" in out.outputs[0].data["text/html"]
    assert os.environ["SQLFLOW_DATASOURCE"] == alice.user()["data_source"]


def test_interrupting_the_cell_cancels_the_job(shell, alice):
    spec = json.dumps({"command": [PY, "-c", "import time; print('started', flush=True); "
                                             "time.sleep(60)"]})

    def interrupt_when_running():
        wait_until(lambda: alice.jobs(status="RUNNING")["jobs"])
        time.sleep(0.3)  # the cell is long-polling by now
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt_when_running, daemon=True).start()
        with capture_output() as out, pytest.raises(KeyboardInterrupt):
            shell.run_cell_magic("sqlflow", "--task process", spec)
    finally:
        signal.signal(signal.SIGINT, previous)
    [job] = alice.jobs()["jobs"]
    assert job["status"] == "CANCELLED"
    assert out.stdout == f"started\ncancelled job {job['token']}\n"


def test_heart_beats_from_one_thread_that_survives_an_outage(shell, alice, playground,
                                                             make_server, monkeypatch):
    monkeypatch.setenv("SQLFLOW_PLAYGROUND_HEARTBEAT_S", "0.2")
    shell.run_cell_magic("sqlflow", "", "SELECT 1")
    beat = magics(shell).heartbeat
    created = alice.user()["last_seen_at"]
    wait_until(lambda: beat.beats >= 2 and alice.user()["last_seen_at"] > created)
    shell.run_cell_magic("sqlflow", "", "SELECT 2")  # a second cell starts no second thread
    assert magics(shell).heartbeat is beat
    assert [t.name for t in threading.enumerate()].count("sqlflow-playground-heartbeat") == 1

    port = playground.port
    playground.stop()
    failures = beat.failures
    time.sleep(1.0)
    assert beat.thread.is_alive()
    assert 2 <= beat.failures - failures <= 7  # about one try per interval: no spinning
    assert isinstance(beat.last_error, PlaygroundClientError)

    restarted = time.time()
    again = make_server(port=port, enable_process_jobs=True)
    wait_until(lambda: again.gateway.playground._beats.get("alice", 0) > restarted)
    assert alice.user()["last_seen_at"] > restarted

    shell.run_line_magic("unload_ext", EXTENSION)
    beat.thread.join(2)
    assert not beat.thread.is_alive()
