"""The command line as a maintainer uses it: real processes, real signals, real curl."""
import json
import os
import queue
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from conftest import client_context, gen_cert, request

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


class Process:
    """A child process whose merged output is read line by line in the background."""

    def __init__(self, args, cwd, env=None):
        self.proc = subprocess.Popen(args, cwd=cwd, env=env or ENV, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.output = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def wait_for(self, pattern, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(self.output)}")

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


@pytest.fixture
def processes():
    started = []

    def start(args, cwd):
        p = Process(args, cwd)
        started.append(p)
        return p
    yield start
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


def serve_args(ks, state, *extra):
    return [sys.executable, "-m", "sqlflow_playground", "--port=0", "--host=127.0.0.1",
            f"--ca_crt={ks}/ca/ca.crt", f"--server_key={ks}/server/server.key",
            f"--server_crt={ks}/server/server.crt", f"--state_dir={state}", *extra]


PORT_LINE = r"serving https on 127\.0\.0\.1:(\d+)"


def test_demo_on_a_fresh_directory_prints_a_curl_line_that_works(tmp_path, processes):
    demo = processes([sys.executable, "-m", "sqlflow_playground", "demo", "--port=0"], tmp_path)
    curl_line = demo.wait_for(r"^\s+(curl .*create_db)\s*$").group(1)
    for expected_created in (True, False):
        out = subprocess.run(shlex.split(curl_line) + ["--silent", "--show-error"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        body = json.loads(out)
        assert body["user_id"] == "demo" and body["created"] is expected_created
        assert body["data_source"].startswith("sqlite:///" + str(tmp_path))
    for path in ("ca/ca.crt", "ca/crl.pem", "server/server.crt", "demo/demo.key"):
        assert (tmp_path / "key_store" / path).exists()
    assert demo.stop(signal.SIGINT) == 0
    # A second start keeps the existing certificates.
    ca = (tmp_path / "key_store" / "ca" / "ca.crt").read_bytes()
    again = processes([sys.executable, "-m", "sqlflow_playground", "demo", "--port=0"], tmp_path)
    again.wait_for(r"curl .*create_db")
    assert (tmp_path / "key_store" / "ca" / "ca.crt").read_bytes() == ca
    assert again.stop() == 0


def test_sighup_rereads_the_crl(tmp_path, processes):
    ks = tmp_path / "ks"
    for name in ("server", "erin"):
        gen_cert(ks, name)
    server = processes(serve_args(ks, tmp_path / "state", f"--crl={ks}/ca/crl.pem"), tmp_path)
    port = int(server.wait_for(PORT_LINE).group(1))
    assert request(port, client_context(ks, "erin"), "GET", "/api/heart_beat").status == 200
    gen_cert(ks, "revoke", "erin")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for(r"reloaded certificates and CRL")
    with pytest.raises(OSError):
        request(port, client_context(ks, "erin"), "GET", "/api/heart_beat")
    assert server.stop() == 0


def test_sigterm_stops_gracefully_and_keeps_heart_beats(tmp_path, processes):
    ks = tmp_path / "ks"
    for name in ("server", "alice"):
        gen_cert(ks, name)
    state = tmp_path / "state"
    server = processes(serve_args(ks, state, "--heartbeat_flush_s=3600"), tmp_path)
    port = int(server.wait_for(PORT_LINE).group(1))
    alice = client_context(ks, "alice")
    request(port, alice, "POST", "/api/create_db")
    time.sleep(0.01)
    request(port, alice, "GET", "/api/heart_beat")
    assert server.stop(signal.SIGTERM) == 0
    assert "stopped" in "".join(server.output)
    with sqlite3.connect(state / "store.db") as conn:
        created, seen = conn.execute("SELECT created_at, last_seen_at FROM users").fetchone()
    assert seen > created  # the buffered beat was written on the way out


def test_without_tls_flags_the_server_refuses_to_start(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sqlflow_playground", "--port=0"],
                            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "--insecure" in result.stderr


def test_insecure_flag_serves_plain_http(tmp_path, processes):
    server = processes([sys.executable, "-m", "sqlflow_playground", "--port=0",
                        "--host=127.0.0.1", "--insecure", f"--state_dir={tmp_path}"], tmp_path)
    port = int(server.wait_for(r"serving http on 127\.0\.0\.1:(\d+)").group(1))
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/create_db",
                                 data=b'{"user_id": "dev"}', method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.loads(resp.read())["user_id"] == "dev"
    assert server.stop() == 0


# -- `sqlflow_playground client run process`: where the command ends --------------------

CLIENT = [sys.executable, "-m", "sqlflow_playground", "client"]
# The README's line (section "For users"), as the test runs it: `python` is this interpreter.
README_RUN_PROCESS = "sqlflow_playground client run process --follow -- python -c 'print(42)'"


@pytest.fixture
def client_env(certs, make_server):
    server = make_server(enable_process_jobs=True)
    env = {k: v for k, v in ENV.items()
           if not k.startswith(("SQLFLOW_PLAYGROUND", "SQLFLOW_JUPYTER"))}
    return {**env, "SQLFLOW_PLAYGROUND_SERVER": f"https://127.0.0.1:{server.port}",
            "SQLFLOW_PLAYGROUND_SERVER_CA": certs.ca,
            "SQLFLOW_PLAYGROUND_CLIENT_CERT": str(certs.dir / "alice" / "alice.crt"),
            "SQLFLOW_PLAYGROUND_CLIENT_KEY": str(certs.dir / "alice" / "alice.key"),
            "SQLFLOW_PLAYGROUND_USER_ID_ENV": "SQLFLOW_USER_ID", "SQLFLOW_USER_ID": "alice"}


def client(env, *args, code=0):
    done = subprocess.run(CLIENT + list(args), env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == code, (done.stdout, done.stderr)
    return done


def readme_argv(line):
    words = shlex.split(line)
    assert words[:2] == ["sqlflow_playground", "client"]
    return CLIENT + [sys.executable if w == "python" else w for w in words[2:]]


def jobs_of(env):
    return json.loads(client(env, "-o", "json", "jobs").stdout)["jobs"]


def test_readme_run_process_line_is_the_tested_one_and_works(client_env):
    section = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    section = section.split("## For users", 1)[1]
    [line] = [ln.split("#")[0].strip() for ln in section.splitlines()
              if ln.startswith("sqlflow_playground client run process")]
    assert line == README_RUN_PROCESS
    done = subprocess.run(readme_argv(line), env=client_env, capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout) == (0, "42\n"), done.stderr


def test_readme_form_streams_lines_before_the_job_ends(client_env, tmp_path):
    # The job prints a line, then waits for a file that the test creates only once the
    # CLI has shown that line: without streaming the job would never end (and the test
    # would fail at wait_for), however fast or slow the machine is.
    gate = tmp_path / "gate"
    script = ("import os, sys, time\n"
              "print('first', flush=True)\n"
              "deadline = time.monotonic() + 60\n"
              f"while not os.path.exists({str(gate)!r}) and time.monotonic() < deadline:\n"
              "    time.sleep(0.05)\n"
              "print('second' if os.path.exists(" + repr(str(gate)) + ") else 'no gate')\n")
    argv = readme_argv(README_RUN_PROCESS)
    argv[argv.index("print(42)")] = script
    proc = Process(argv, tmp_path, client_env)
    try:
        run_gated(proc, gate, client_env)
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait()


def run_gated(proc, gate, client_env):
    proc.wait_for(r"^first$")
    [job] = jobs_of(client_env)
    assert job["status"] == "RUNNING"  # the line arrived while the job still ran
    gate.touch()
    proc.wait_for(r"^second$")
    assert proc.proc.wait(30) == 0
    assert "SUCCEEDED" in "".join(proc.output)


def test_everything_after_double_dash_is_the_command(client_env):
    echo = [sys.executable, "-c", "import sys; print(sys.argv[1:])"]
    done = client(client_env, "run", "process", "-o", "json", "--",
                  *echo, "--follow", "-o", "text", "--", "--sql")
    result = json.loads(done.stdout)  # `-o json` before `--` is the CLI's
    assert result["status"] == "SUCCEEDED"
    assert result["responses"] == [{"message": "['--follow', '-o', 'text', '--', '--sql']"}]
    token = client(client_env, "submit", "process", "--", *echo, "-f").stdout.strip()
    fetched = json.loads(client(client_env, "fetch", token, "--wait", "10", "-o", "json").stdout)
    assert fetched["responses"][:1] == [{"message": "['-f']"}]
    # The older form stays valid when no word after --command is an option of `run`.
    old = client(client_env, "run", "process", "--follow", "--command", *echo, "-c", "x")
    assert old.stdout == "['-c', 'x']\n"


def test_command_json(client_env):
    command = [sys.executable, "-c", "import sys; print(sys.argv[1:])", "--follow"]
    done = client(client_env, "run", "process", "--command-json", json.dumps(command), "-f")
    assert done.stdout == "['--follow']\n" and "SUCCEEDED" in done.stderr
    for bad, says in (("[", "not valid JSON"), ('"ls"', "JSON list of strings"),
                      ("[]", "JSON list of strings"), ('["ls", 1]', "JSON list of strings")):
        assert says in client(client_env, "run", "process", "--command-json", bad,
                              code=2).stderr
    assert len(jobs_of(client_env)) == 1  # only the good one was submitted


@pytest.mark.parametrize("words, options", [
    (["--follow"], "`--follow`"),
    (["-f"], "`-f`"),
    (["--fol"], "`--fol`"),
    (["-o", "json"], "`-o`"),
    (["--output=json", "-f"], "`--output=json`, `-f`"),
])
def test_an_option_after_command_is_an_error_that_says_what_to_write(client_env, words,
                                                                     options):
    # The README's old line: `run process --command python -c 'print(42)' --follow`.
    done = client(client_env, "run", "process", "--command", sys.executable, "-c",
                  "print(42)", *words, code=2)
    assert done.stdout == ""
    assert f"ambiguous: {options} after --command" in done.stderr
    program = shlex.join([sys.executable, "-c", "print(42)"])
    assert f"client run process {shlex.join(words)} -- {program}\n" in done.stderr
    as_json = json.dumps([sys.executable, "-c", "print(42)", *words])
    assert f"--command-json {shlex.quote(as_json)}" in done.stderr
    assert jobs_of(client_env) == []  # nothing was submitted


def test_job_given_twice_or_not_at_all_is_an_error(client_env):
    for args, says in ((["--sql", "SELECT 1", "--", "ls"], "one way only"),
                       (["--command-json", '["ls"]', "--", "ls"], "one way only"),
                       (["--"], "nothing after `--`"),
                       (["--command"], "nothing after `--command`"),
                       ([], "give the job")):
        assert says in client(client_env, "run", "process", *args, code=2).stderr, args
    assert jobs_of(client_env) == []
