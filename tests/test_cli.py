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

    def __init__(self, args, cwd):
        self.proc = subprocess.Popen(args, cwd=cwd, env=ENV, stdout=subprocess.PIPE,
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
