"""Runs one `process` job's command and records how it ended. Started by ProcessPlugin.

    python -S -E .../process_runner.py WORKDIR TIMEOUT_S MAX_OUTPUT_BYTES -- COMMAND...

A separate small process, so that the job's state lives in files and not in the server:
the command's stdout and stderr go, interleaved in the order written, to
``WORKDIR/output.log``; the command's own process group id to ``WORKDIR/child.pgid``;
and when it ends, ``WORKDIR/status.json`` is written atomically. The command runs in its
own session, so cancelling kills the whole group and nothing else. It imports nothing
but the standard library and runs with ``-S``, so it starts in milliseconds.

With MAX_OUTPUT_BYTES > 0 the command runs under RLIMIT_FSIZE of that many bytes (soft
and hard, inherited by what it starts): ``output.log`` cannot grow past it, a write that
would is cut there and the writer gets SIGXFSZ (or EFBIG where that signal is ignored).
The limit bounds every file the command writes, not only its output. The runner itself is
not limited, so it can always write ``status.json``: a job whose output reached the cap
is stopped and ends FAILED with a message saying so, its output so far kept.
"""
import json
import os
import math
import resource
import select
import signal
import subprocess
import sys
import time

# The job statuses of plugins/base.py, repeated so this script needs no package import.
SUCCEEDED, FAILED, CANCELLED = "SUCCEEDED", "FAILED", "CANCELLED"
CAP_CHECK_S = 0.25  # how often a running command's output is checked against the cap


def write_status(workdir: str, status: str, message: str, outputs: dict) -> None:
    tmp = os.path.join(workdir, "status.json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "w") as fh:
        json.dump({"status": status, "message": message, "outputs": outputs}, fh)
    os.replace(tmp, os.path.join(workdir, "status.json"))


def kill_group(pgid: int, grace_s: float = 2.0) -> None:
    """SIGTERM the group, then SIGKILL whatever is left after ``grace_s``."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def limit_files(max_bytes: int):
    """The child's preexec_fn: no file it writes may grow past ``max_bytes``, and no core
    dump (SIGXFSZ would write one)."""
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if max_bytes > 0:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return preexec


def child_pidfd(pid: int):
    """A descriptor that becomes readable when ``pid`` (a child of ours, not yet reaped)
    exits, or None where there is none (Python < 3.9, Linux < 5.3, a filter that refuses
    the call): then ``wait_child`` polls as Popen.wait does."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def wait_child(child: subprocess.Popen, timeout, pidfd=None):
    """``child``'s exit code once it ended (reaped), or None if it still runs after
    ``timeout`` seconds (None: no limit). With ``pidfd``, sleeps until the child ends or
    the time is up, waking once; without, Popen.wait(timeout), which polls (sleeps of up
    to 50 ms: ~45 wake-ups a second, ~0.3 % of a core per running job)."""
    if pidfd is not None and timeout is not None:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(math.ceil(max(0.0, timeout) * 1000)):
            return None
        return child.wait()  # it has ended: this reaps it at once
    try:
        return child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def cap_message(max_bytes: int) -> str:
    return (f"output cap reached: the job's output may not exceed {max_bytes} bytes "
            f"(--max_output_bytes, or less when its owner's --max_output_bytes_per_user "
            f"was nearly used up); the job was stopped, its output so far is kept")


def main(argv: list) -> int:
    os.umask(0o077)  # the job's files, and its command's, are for the server's user only
    workdir, timeout_s, max_bytes = argv[0], float(argv[1]), int(argv[2])
    command = argv[4:]
    with open(os.path.join(workdir, "spec_env.json")) as fh:
        env = json.load(fh)
    path = os.path.join(workdir, "output.log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    with open(fd, "ab", buffering=0) as out:
        try:
            child = subprocess.Popen(command, cwd=os.path.join(workdir, "work"), env=env,
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     start_new_session=True, preexec_fn=limit_files(max_bytes))
        except (OSError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) else str(e)
            write_status(workdir, FAILED, f"cannot start {command[0]!r}: {reason}", {})
            return 0
        # Killed before the child's group was on record: take the child down too.
        signal.signal(signal.SIGTERM, lambda *_: (kill_group(child.pid, 0.5), sys.exit(1)))
        with open(os.path.join(workdir, "child.pgid"), "w") as fh:
            fh.write(str(child.pid))

        def capped() -> bool:
            return max_bytes > 0 and os.fstat(out.fileno()).st_size >= max_bytes

        pidfd = child_pidfd(child.pid)
        deadline = time.monotonic() + timeout_s if timeout_s > 0 else None
        while True:
            wait = CAP_CHECK_S if max_bytes > 0 else None
            if deadline is not None:
                left = max(0.0, deadline - time.monotonic())
                wait = left if wait is None else min(wait, left)
            code = wait_child(child, wait, pidfd)
            if code is not None:
                break
            if capped() or (deadline is not None and time.monotonic() >= deadline):
                kill_group(child.pid)
                child.wait()
                if capped():
                    write_status(workdir, FAILED, cap_message(max_bytes),
                                 {"exit_code": child.returncode})
                else:
                    write_status(workdir, FAILED, f"timed out after {timeout_s:g}s",
                                 {"exit_code": child.returncode})
                return 0
        is_capped = capped()
    kill_group(child.pid, grace_s=0)  # background processes the command left behind
    outputs = {"exit_code": code}
    if os.path.exists(os.path.join(workdir, "cancel")):
        write_status(workdir, CANCELLED, f"cancelled ({describe_exit(code)})", outputs)
    elif is_capped:
        write_status(workdir, FAILED, cap_message(max_bytes), outputs)
    elif code == 0:
        write_status(workdir, SUCCEEDED, describe_exit(code), outputs)
    else:
        write_status(workdir, FAILED, describe_exit(code), outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
