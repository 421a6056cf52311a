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
from sqlflow_playground.magic import JobFailed, Result

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
        result = shell.run_cell_magic("sqlflow", "", SCRIPT)
    assert os.environ["SQLFLOW_DATASOURCE"] == alice.user()["data_source"]
    assert os.environ["SQLFLOW_SERVER"] == "sqlflow.example.com:50051"  # the file was loaded
    assert out.stdout == "0 row(s) affected\n2 row(s) affected\n"
    # The cell's value draws the table (IPython shows it as the cell's output).
    assert isinstance(result, Result) and result.status == "SUCCEEDED"
    assert result.messages == ["0 row(s) affected", "2 row(s) affected"]
    [table] = result.tables
    html = result._repr_html_()
    assert "<th>a</th><th>b</th>" in html and "<td>1</td><td>&lt;b&gt;x&lt;/b&gt;</td>" in html
    assert "<td>2</td><td><i>NULL</i></td>" in html
    assert repr(result).splitlines() == ["a  b", "-  --------", "1  <b>x</b>", "2  NULL"]
    assert shell.user_ns["_sqlflow"]["status"] == "SUCCEEDED"
    assert shell.user_ns["_sqlflow"]["token"] == result.token
    # The job's line is one display, whose last state is the finished line.
    job_lines = [o for o in out.outputs if o.data.get("text/plain", "").startswith("job ")]
    assert len({o.transient["display_id"] for o in job_lines}) == 1
    assert job_lines[-1].data["text/plain"].startswith(f"job {result.token} SUCCEEDED in ")
    assert job_lines[-1].data["text/plain"].endswith(" s · 2 rows")
    assert job_lines[-1].data == out.outputs[-1].data  # nothing drawn after it
    # The next cell uses the same database: the table is still there.
    result = shell.run_cell_magic("sqlflow", "", "SELECT count(*) AS n FROM t")
    assert "<td>2</td>" in result._repr_html_()


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
    result = shell.run_cell_magic("sqlflow", "", "SELECT 2 AS two")
    assert "<td>2</td>" in result._repr_html_()
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


# -- issue 13: the cell shows life, results become DataFrames -------------------------

def progress_lines(outputs):
    """(update?, text) of each display of the cell's live line, in order."""
    return [(o.update, o.data["text/plain"]) for o in outputs
            if (o.transient or {}).get("display_id") and "text/plain" in o.data
            and o.data["text/plain"].startswith("job ")]


def test_the_live_line_is_redrawn_in_place_until_the_job_ends(shell, alice, tmp_path):
    release = tmp_path / "release"
    spec = json.dumps({"command": [PY, "-c", "import os, time\nprint('started', flush=True)\n"
                                   f"while not os.path.exists({str(release)!r}):\n"
                                   "    time.sleep(0.05)\nprint('done')"]})
    seen = []

    def release_after_a_tick():  # a redraw that says RUNNING 1 s or more, from the ticker
        def ticked():
            seen[:] = progress_lines(out.outputs)
            return any(u and " RUNNING · " in t and not t.split(" · ")[1].startswith("0 ")
                       for u, t in seen)
        try:
            wait_until(ticked, timeout=30)
        finally:
            release.touch()

    with capture_output() as out:
        helper = threading.Thread(target=release_after_a_tick, daemon=True)
        helper.start()
        assert shell.run_cell_magic("sqlflow", "--task process", spec) is None  # no table
        helper.join(5)
    assert out.stdout == "started\ndone\n"
    [job] = alice.jobs()["jobs"]
    lines = progress_lines(out.outputs)
    # One display (one display_id) first drawn, then only updated: never a new line.
    assert len({o.transient["display_id"] for o in out.outputs
                if o.data["text/plain"].startswith("job ")}) == 1
    assert [u for u, _ in lines] == [False] + [True] * (len(lines) - 1)
    first, *middle, last = [t for _, t in lines]
    assert first.startswith(f"job {job['token']} PENDING · 0 s")
    assert first.endswith(" · interrupt the kernel to cancel")
    assert any(t.startswith(f"job {job['token']} RUNNING · ") for t in middle)
    assert all(t.endswith("interrupt the kernel to cancel") for t in middle)
    assert last.startswith(f"job {job['token']} SUCCEEDED in ") and last.endswith(" s")
    assert " · " not in last  # no result set, no row count
    # The ticker stopped with the job: nothing is drawn after the final line.
    count = len(out.outputs)
    time.sleep(1.5)
    assert len(out.outputs) == count
    assert "sqlflow-playground-progress" not in [t.name for t in threading.enumerate()]


ROWS_300 = ("CREATE TABLE m (n INTEGER, x REAL, day TEXT, label TEXT);\n"
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 300)\n"
            "INSERT INTO m SELECT i, i * 0.5, date('2024-01-01', '+' || (i - 1) || ' days'),"
            " 'row ' || i FROM c;\n"
            "SELECT n, x, day, label FROM m ORDER BY n")


def test_a_large_result_shows_head_and_tail_and_its_size(shell):
    with capture_output() as out:
        result = shell.run_cell_magic("sqlflow", "", ROWS_300)
    assert progress_lines(out.outputs)[-1][1].endswith(" s · 300 rows")
    assert result.rows == 300 and result.tables[-1].shape == (300, 4)
    html = result._repr_html_()
    assert html.count("<tr>") == 1 + 5 + 1 + 5  # head, 5 first, "…", 5 last
    assert "<td>1</td><td>0.5</td><td>2024-01-01</td><td>row 1</td>" in html
    assert "<td>300</td><td>150.0</td><td>2024-10-26</td><td>row 300</td>" in html
    assert "row 6<" not in html and "row 295<" not in html
    assert "<p>300 rows × 4 columns</p>" in html
    text = repr(result).splitlines()
    assert text[0].split() == ["n", "x", "day", "label"]
    assert [line.split()[0] for line in text[2:13]] == ["1", "2", "3", "4", "5", "…",
                                                        "296", "297", "298", "299", "300"]
    assert text[13:] == ["", "300 rows × 4 columns"]


def test_the_cell_value_converts_to_a_typed_dataframe(shell):
    import pandas as pd  # in the test extra: missing is a failure, not a skip
    shell.run_cell_magic("sqlflow", "", ROWS_300)
    result = shell.run_cell_magic(
        "sqlflow", "", "SELECT count(*) AS n FROM m;\n"
        "SELECT n, x, day, datetime('2024-01-01 12:00:00', '+' || n || ' hours') AS at,"
        " label, CASE WHEN n % 2 THEN n END AS odd FROM m ORDER BY n")
    df = result.to_dataframe()  # the last result set
    assert df.shape == (300, 6)
    assert list(df.columns) == ["n", "x", "day", "at", "label", "odd"]
    assert str(df["n"].dtype) == "int64" and str(df["x"].dtype) == "float64"
    assert pd.api.types.is_datetime64_any_dtype(df["day"])
    assert pd.api.types.is_datetime64_any_dtype(df["at"])
    assert df["at"].iloc[0] == pd.Timestamp("2024-01-01 13:00:00")
    assert df["label"].dtype == object and df["label"].iloc[-1] == "row 300"
    assert str(df["odd"].dtype) == "Int64" and df["odd"].isna().sum() == 150
    assert df["x"].sum() == sum(i * 0.5 for i in range(1, 301))
    assert result.tables[0].to_dataframe()["n"].tolist() == [300]
    assert result.to_dataframe(parse_dates=False)["day"].iloc[0] == "2024-01-01"


def test_a_failing_statement_draws_what_came_before_and_says_why_in_one_line(shell):
    with capture_output() as out, pytest.raises(JobFailed) as failed:
        shell.run_cell_magic("sqlflow", "", "SELECT 1 AS one; SELECT * FROM missing")
    token = failed.value.result["token"]
    assert failed.value._render_traceback_() == [
        f"JobFailed: job {token} FAILED: statement 2 of 2 failed: no such table: missing"]
    tables = [o for o in out.outputs if "text/html" in o.data]
    assert len(tables) == 1 and "<th>one</th>" in tables[0].data["text/html"]
    assert progress_lines(out.outputs)[-1][1].startswith(f"job {token} FAILED in ")
    # What IPython prints for it in a cell: that one line, no traceback.
    with capture_output() as out:
        shell.run_cell("%%sqlflow\nSELECT * FROM missing")
    [line] = [line for line in out.stdout.splitlines() if line.strip()]
    assert line.startswith("JobFailed: job ") and line.endswith(" no such table: missing")


def test_a_stopped_server_is_one_line_not_a_traceback(shell, playground):
    port = playground.port
    playground.stop()  # the env file now names a closed port
    with capture_output() as out:
        shell.run_cell("%%sqlflow\nSELECT 1")
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, out.stdout
    assert lines[0].startswith("PlaygroundClientError: ") and f"127.0.0.1:{port}" in lines[0]
    with pytest.raises(PlaygroundClientError) as refused:
        shell.run_cell_magic("sqlflow", "", "SELECT 1")
    assert refused.value.status == 0  # the same error as before, now with a one-line form
    assert refused.value._render_traceback_() == [f"PlaygroundClientError: {refused.value}"]


def test_dataframe_columns_are_typed_from_the_runner_json():
    """What sql_runner.json_safe writes (numbers as JSON numbers, Decimal as exact text,
    dates ISO-8601, non-finite floats as "nan"/"inf"), typed column by column."""
    import pandas as pd  # in the test extra: missing is a failure, not a skip
    from sqlflow_playground.results import Table
    head = ["i", "f", "nonfinite", "price", "zip", "big", "flag", "d", "ts", "tz", "old",
            "empty", "i"]
    rows = [[1, 1, 1.5, "12.50", "01234", 2**70, True, "2024-01-31", "2024-01-31T12:00:00",
             "2024-01-31T12:00:00+02:00", "0001-01-01", None, 7],
            [2, 2.5, "nan", "0.10", "99999", 1, False, None, "2024-02-01T00:00:00.250000",
             "2024-01-31T10:00:00+00:00", "2024-01-01", None, 8],
            [3, None, "-inf", None, None, 2, None, "2024-03-01", None, None, None, None, 9]]
    df = Table(head, rows).to_dataframe()
    assert list(df.columns) == head  # a name used twice keeps both columns
    dtypes = [str(t) for t in df.dtypes]
    assert dtypes[:2] == ["int64", "float64"] and dtypes[-1] == "int64"
    assert df.iloc[:, 1].isna().tolist() == [False, False, True]
    nonfinite = df["nonfinite"].tolist()
    assert str(df["nonfinite"].dtype) == "float64" and nonfinite[0] == 1.5
    assert pd.isna(nonfinite[1]) and nonfinite[2] == float("-inf")
    assert df["price"].dtype == object and df["price"].tolist() == ["12.50", "0.10", None]
    assert df["zip"].dtype == object and df["zip"].iloc[0] == "01234"  # text stays text
    assert df["big"].dtype == object and df["big"].iloc[0] == 2**70  # beyond int64: exact
    assert str(df["flag"].dtype) == "boolean" and df["flag"].isna().tolist() == [False] * 2 + [True]
    for name in ("d", "ts", "tz"):
        assert pd.api.types.is_datetime64_any_dtype(df[name]), name
    assert df["tz"].iloc[0] == df["tz"].iloc[1]  # 12:00+02:00 is 10:00+00:00
    assert df["d"].isna().tolist() == [False, True, False]
    # Year 1: datetime64[us] in pandas 3; pandas < 3 (nanoseconds) cannot, the text stays.
    old = df["old"].iloc[0]
    assert (old if df["old"].dtype == object else old.isoformat()[:10]) == "0001-01-01"
    assert df["empty"].dtype == object and df["empty"].isna().all()
    assert Table(["a"], []).to_dataframe().shape == (0, 1)
    assert repr(Table(["a"], [])).splitlines() == ["a", "-", "", "0 rows × 1 column"]


def test_to_dataframe_says_how_to_get_pandas(monkeypatch):
    from sqlflow_playground.results import Table
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install pandas"):
        Table(["a"], [[1]]).to_dataframe()


def test_a_terminal_gets_the_first_and_the_last_line_only(shell, capsys):
    """Plain IPython prints every display: no ticking there, or a line per second."""
    spec = json.dumps({"command": [PY, "-c", "import time; time.sleep(2.5)"]})
    shell.run_cell_magic("sqlflow", "--task process", spec)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("job ")]
    assert len(lines) == 2, lines
    assert lines[0].endswith(" · interrupt the kernel to cancel")
    assert " SUCCEEDED in " in lines[1]
