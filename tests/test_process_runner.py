"""The `process` job runner waits for its command without polling where the system has a
pidfd (it polled waitpid ~45 times a second before), and as before where it has none."""
import json
import os
import subprocess
import sys

import pytest

from conftest import missing
from sqlflow_playground.plugins import process_runner
from sqlflow_playground.plugins.process_runner import child_pidfd, wait_child

PY = sys.executable


def _has_pidfd() -> bool:
    fd = child_pidfd(os.getpid())
    if fd is None:
        return False
    os.close(fd)
    return True


HAS_PIDFD = _has_pidfd()
NO_PIDFD = "no pidfd_open here (Linux >= 5.3 and Python >= 3.9 have it)"


def need_pidfd() -> None:
    """This machine must have pidfds: under CI=true (Linux) a missing one fails."""
    if not HAS_PIDFD:
        missing(NO_PIDFD)


@pytest.fixture
def sleeper():
    child = subprocess.Popen([PY, "-c", "import time; time.sleep(120)"])
    yield child
    child.kill()
    child.wait()


@pytest.fixture
def waitpids(monkeypatch):
    calls = []
    real = os.waitpid

    def counting(pid, options):
        calls.append(options)
        return real(pid, options)
    monkeypatch.setattr(os, "waitpid", counting)
    return calls


def test_waiting_for_a_running_command_with_a_pidfd_does_not_poll(sleeper, waitpids):
    need_pidfd()
    pidfd = child_pidfd(sleeper.pid)
    try:
        assert wait_child(sleeper, 0.3, pidfd) is None
        assert wait_child(sleeper, 0, pidfd) is None
    finally:
        os.close(pidfd)
    assert waitpids == []  # Popen.wait(timeout=0.3) calls waitpid(WNOHANG) in a loop
    assert sleeper.poll() is None


@pytest.mark.parametrize("use_pidfd", [True, False])
def test_an_ended_command_is_reaped_and_its_code_returned(use_pidfd):
    if use_pidfd and not HAS_PIDFD:
        need_pidfd()
    child = subprocess.Popen([PY, "-c", "import sys; sys.exit(3)"])
    pidfd = child_pidfd(child.pid) if use_pidfd else None
    try:
        assert wait_child(child, 60, pidfd) == 3
    finally:
        if pidfd is not None:
            os.close(pidfd)
    assert child.returncode == 3
    with pytest.raises(ChildProcessError):  # reaped: no zombie left
        os.waitpid(child.pid, os.WNOHANG)


def test_without_a_pidfd_a_running_command_times_out_as_before(sleeper):
    assert wait_child(sleeper, 0.05, None) is None
    assert sleeper.poll() is None


def run_runner(tmp_path, command, timeout_s=0, max_bytes=0, pidfd=True):
    """Run process_runner.py as ProcessPlugin does (with os.pidfd_open taken away if not
    ``pidfd``); the status it wrote and its output."""
    workdir = tmp_path / "job"
    (workdir / "work").mkdir(parents=True)
    (workdir / "spec_env.json").write_text(json.dumps({"PATH": os.environ["PATH"]}))
    start = ("import os, runpy, sys\n"
             + ("" if pidfd else "del os.pidfd_open\n")
             + "sys.argv = sys.argv[1:]\n"
             + "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    subprocess.run([PY, "-S", "-E", "-c", start, process_runner.__file__, str(workdir),
                    str(timeout_s), str(max_bytes), "--", *command], check=True, timeout=120)
    status = json.loads((workdir / "status.json").read_text())
    return status, (workdir / "output.log").read_bytes()


@pytest.mark.parametrize("pidfd", [True, False])
def test_the_runner_keeps_its_exit_code_timeout_and_cap_with_or_without_a_pidfd(
        tmp_path, pidfd):
    if pidfd and not HAS_PIDFD:
        need_pidfd()
    ok, out = run_runner(tmp_path / "ok", [PY, "-c", "print('hi')"], pidfd=pidfd)
    assert (ok["status"], ok["message"], out) == ("SUCCEEDED", "exit code 0", b"hi\n")

    slow, _ = run_runner(tmp_path / "slow", [PY, "-c", "import time; time.sleep(120)"],
                         timeout_s=0.5, pidfd=pidfd)
    assert (slow["status"], slow["message"]) == ("FAILED", "timed out after 0.5s")

    # Writes past the cap, then would sleep: stopped by the cap check (or SIGXFSZ).
    big = ("import signal, sys, time\n"
           "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
           "try:\n"
           "    sys.stdout.buffer.write(b'x' * 5000); sys.stdout.flush()\n"
           "except OSError:\n"
           "    pass\n"
           "time.sleep(120)\n")
    capped, out = run_runner(tmp_path / "big", [PY, "-c", big], max_bytes=1000, pidfd=pidfd)
    assert capped["status"] == "FAILED" and capped["message"].startswith("output cap reached")
    assert len(out) == 1000
