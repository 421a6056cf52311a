"""A real notebook with ``%%sqlflow`` cells, executed by nbclient in a real kernel (this
venv's python, ipykernel) against a real gateway over mutual TLS (issue 13, items 4 and 5).

The assertions are on what nbclient stores in the executed notebook (saved under the
test's tmp dir), plus the kernel's messages as they arrived, to see that the job's line
was drawn once and then updated in place (``update_display_data``), not one line per
second: nbclient folds an update into the output it updates, so the stored notebook alone
shows the final line only."""
import json
import os
import sys

import pytest

# All in the test extra: a missing one fails the run, it does not skip.
import ipykernel  # noqa: F401,E402  (the kernel nbclient starts)
import nbclient  # noqa: E402
import nbformat  # noqa: E402
import pandas  # noqa: F401,E402  (the kernel's .to_dataframe())

from conftest import free_port  # noqa: E402

from sqlflow_playground.client import PlaygroundClient  # noqa: E402

KERNEL = "sqlflow-playground-test-venv"
EXTENSION = "sqlflow_playground.magic"

TYPED = ("CREATE TABLE m (n INTEGER, x REAL, day TEXT, label TEXT);\n"
         "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 300)\n"
         "INSERT INTO m SELECT i, i * 0.5, date('2024-01-01', '+' || (i - 1) || ' days'),"
         " 'row ' || i FROM c;\n"
         "SELECT n, x, day, datetime(day, '+' || n || ' minutes') AS at, label,"
         " CASE WHEN n % 2 THEN n END AS odd FROM m ORDER BY n")


@pytest.fixture
def jupyter(tmp_path, monkeypatch):
    """A kernelspec running this venv's python, found before any of the machine's own;
    Jupyter's and IPython's files under tmp_path."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "sqlflow-playground tests", "language": "python"}))
    for name, sub in (("JUPYTER_DATA_DIR", "jupyter"), ("JUPYTER_PATH", "jupyter"),
                      ("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_CONFIG_DIR", "config"),
                      ("IPYTHONDIR", "ipython")):
        monkeypatch.setenv(name, str(tmp_path / sub))
    return tmp_path


def env_file(path, certs, server):
    """The deployed magic's settings file, as tests/test_magic.py writes it."""
    key = certs.dir / "alice"
    path.write_text(
        "SQLFLOW_PLAYGROUND_USER_ID_ENV=SQLFLOW_USER_ID\n"
        'SQLFLOW_USER_ID="alice"\n'
        f'SQLFLOW_PLAYGROUND_SERVRE="{server}"\n'
        f'SQLFLOW_PLAYGROUND_SERVER_CA="{certs.ca}"\n'
        f'SQLFLOW_PLAYGROUND_CLIENT_KEY="{key / "alice.key"}"\n'
        f'SQLFLOW_PLAYGROUND_CLIENT_CERT="{key / "alice.crt"}"\n')
    return path


def kernel_env(settings):
    """What the kernel process inherits: this environment without the tests' own SQLFLOW_
    variables, with the magic's settings file named by SQLFLOW_JUPYTER_ENV_PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQLFLOW_")}
    env["SQLFLOW_JUPYTER_ENV_PATH"] = str(settings)
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # ipykernel's debugger warning on stderr
    return env


class Recording(nbclient.NotebookClient):
    """Keeps every kernel message (cell index, type, content) as it arrives; ``watch`` is
    called with each one (to react while a cell runs)."""

    def process_message(self, msg, cell, cell_index):
        self.received.append((cell_index, msg["msg_type"], json.loads(json.dumps(
            msg["content"], default=str))))
        self.watch(*self.received[-1])
        return super().process_message(msg, cell, cell_index)


def execute(cells, path, env, watch=lambda *message: None):
    """Write the notebook to ``path``, execute it (errors allowed: each cell runs), save the
    executed one next to it; (executed notebook, received messages)."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": KERNEL, "language": "python"}
    nbformat.write(nb, str(path))
    nb = nbformat.read(str(path), as_version=4)
    client = Recording(nb, kernel_name=KERNEL, timeout=120, startup_timeout=90,
                       allow_errors=True)
    client.received, client.watch = [], watch
    client.execute(env=env)
    nbformat.write(nb, str(path.with_name(path.stem + ".executed.ipynb")))
    return nb, client.received


def job_line(message_type, content):
    text = content.get("data", {}).get("text/plain", "")
    if message_type in ("display_data", "update_display_data") and text.startswith("job "):
        return content["transient"]["display_id"], text


def test_a_notebook_shows_life_tables_dataframes_and_one_line_errors(
        make_server, certs, jupyter, tmp_path):
    server = make_server(enable_process_jobs=True)
    settings = env_file(tmp_path / "sqlflow_playground.env", certs,
                        f"https://127.0.0.1:{server.port}")
    release = tmp_path / "release"
    wait_for_release = json.dumps({"command": [
        sys.executable, "-c", "import os, time\nprint('started', flush=True)\n"
        f"while not os.path.exists({str(release)!r}):\n    time.sleep(0.05)\nprint('done')"]})

    def watch(cell_index, message_type, content):
        # Let the job end once the kernel has redrawn its line at least once while it
        # was RUNNING and at least a second old: whatever the machine's speed, the line
        # has been updated in place before the job ends.
        line = job_line(message_type, content)
        if cell_index == 1 and message_type == "update_display_data" and line and \
                " RUNNING · " in line[1] and not line[1].split(" · ")[1].startswith("0 "):
            release.touch()

    nb, received = execute([
        f"%load_ext {EXTENSION}",
        f"%%sqlflow --task process\n{wait_for_release}",
        f"%%sqlflow\n{TYPED}",
        "import json\ndf = _.to_dataframe()\n"
        "print(json.dumps({name: str(dtype) for name, dtype in df.dtypes.items()}))\n"
        "print(df.shape, df['at'].iloc[0], repr(df['label'].iloc[-1]))",
        "%%sqlflow\nSELECT * FROM missing",
    ], tmp_path / "magic.ipynb", kernel_env(settings), watch)
    assert (tmp_path / "magic.executed.ipynb").exists()
    load, process, table, frame, failing = nb.cells

    # -- the job's live line: drawn once, updated in place, finished ----------------
    alice = PlaygroundClient(f"https://127.0.0.1:{server.port}", user_id="alice", ca=certs.ca,
                             cert=str(certs.dir / "alice" / "alice.crt"),
                             key=str(certs.dir / "alice" / "alice.key"))
    jobs = {j["token"]: j for j in alice.jobs()["jobs"]}
    alice.close()
    lines = [(t, job_line(t, c)) for i, t, c in received if i == 1 and job_line(t, c)]
    kinds = [t for t, _ in lines]
    assert kinds[0] == "display_data" and set(kinds[1:]) == {"update_display_data"}
    assert len({display_id for _, (display_id, _) in lines}) == 1
    texts = [text for _, (_, text) in lines]
    token = texts[0].split()[1]
    assert jobs[token]["status"] == "SUCCEEDED"  # the job the line is about
    assert texts[0].startswith(f"job {token} PENDING · 0 s")
    assert texts[0].endswith(" · interrupt the kernel to cancel")
    assert any(t.startswith(f"job {token} RUNNING · ") and
               t.endswith(" · interrupt the kernel to cancel") for t in texts[1:-1])
    assert texts[-1].startswith(f"job {token} SUCCEEDED in ") and texts[-1].endswith(" s")
    # Stored: one output for the line (the updates replaced its content), the final text.
    shown = [o for o in process.outputs if o.output_type == "display_data"]
    assert [o.data["text/plain"] for o in shown] == [texts[-1]]
    assert "".join(o.text for o in process.outputs if o.output_type == "stream"
                   and o.name == "stdout") == "started\ndone\n"
    assert not [o for o in process.outputs if o.output_type in ("execute_result", "error")]

    # -- a large result: head, tail, "N rows × M columns" --------------------------
    [result] = [o for o in table.outputs if o.output_type == "execute_result"]
    html = result.data["text/html"]
    assert "<p>300 rows × 6 columns</p>" in html
    assert html.count("<tr>") == 1 + 5 + 1 + 5
    assert "<td>1</td><td>0.5</td><td>2024-01-01</td><td>2024-01-01 00:01:00</td>" in html
    assert "<td>row 300</td><td><i>NULL</i></td>" in html and "row 150<" not in html
    assert result.data["text/plain"].endswith("\n\n300 rows × 6 columns")
    [done] = [o.data["text/plain"] for o in table.outputs if o.output_type == "display_data"]
    assert done.startswith("job ") and " SUCCEEDED in " in done and done.endswith(" · 300 rows")

    # -- the cell's value as a DataFrame with typed columns --------------------------
    assert not [o for o in frame.outputs if o.output_type == "error"], frame.outputs
    printed = "".join(o.text for o in frame.outputs if o.output_type == "stream"
                      and o.name == "stdout").splitlines()
    dtypes = json.loads(printed[0])
    assert dtypes["n"] == "int64" and dtypes["x"] == "float64" and dtypes["odd"] == "Int64"
    assert dtypes["day"].startswith("datetime64[") and dtypes["at"].startswith("datetime64[")
    assert dtypes["label"] == "object"
    assert printed[1] == "(300, 6) 2024-01-01 00:01:00 'row 300'"

    # -- a failing statement: one readable line, no traceback ----------------------
    [error] = [o for o in failing.outputs if o.output_type == "error"]
    assert error.ename == "JobFailed"
    [line] = error.traceback
    assert line.startswith("JobFailed: job ") and line.endswith(" no such table: missing")
    assert " FAILED" in line
    [done] = [o.data["text/plain"] for o in failing.outputs if o.output_type == "display_data"]
    assert " FAILED in " in done
    assert not [o for o in failing.outputs if o.output_type == "stream" and o.name == "stderr"]


def test_a_notebook_pointed_at_a_stopped_server_gets_one_line(certs, jupyter, tmp_path):
    port = free_port()  # nothing listens there
    settings = env_file(tmp_path / "down.env", certs, f"https://127.0.0.1:{port}")
    nb, _ = execute([f"%load_ext {EXTENSION}", "%%sqlflow\nSELECT 1"],
                    tmp_path / "down.ipynb", kernel_env(settings))
    assert (tmp_path / "down.executed.ipynb").exists()
    [error] = [o for o in nb.cells[1].outputs if o.output_type == "error"]
    assert error.ename == "PlaygroundClientError"
    [line] = error.traceback  # one line, not the 22 of a traceback through the client
    assert line.startswith("PlaygroundClientError: ") and f"127.0.0.1:{port}" in line
    assert "\n" not in line and "Traceback" not in line
    assert not [o for o in nb.cells[1].outputs if o.output_type == "stream"
                and o.name == "stderr"]
