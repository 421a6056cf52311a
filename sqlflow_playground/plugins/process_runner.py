"""Runs one `process` job's command and records how it ended. Started by ProcessPlugin.

    python -S -E .../process_runner.py WORKDIR TIMEOUT_S -- COMMAND...

A separate small process, so that the job's state lives in files and not in the server:
the command's stdout and stderr go, interleaved in the order written, to
``WORKDIR/output.log``; the command's own process group id to ``WORKDIR/child.pgid``;
and when it ends, ``WORKDIR/status.json`` is written atomically. The command runs in its
own session, so cancelling kills the whole group and nothing else. It imports nothing
but the standard library and runs with ``-S``, so it starts in milliseconds.
"""
import json
import os
import signal
import subprocess
import sys
import time

# The job statuses of plugins/base.py, repeated so this script needs no package import.
SUCCEEDED, FAILED, CANCELLED = "SUCCEEDED", "FAILED", "CANCELLED"


def write_status(workdir: str, status: str, message: str, outputs: dict) -> None:
    tmp = os.path.join(workdir, "status.json.tmp")
    with open(tmp, "w") as fh:
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


def main(argv: list) -> int:
    workdir, timeout_s, command = argv[0], float(argv[1]), argv[3:]
    with open(os.path.join(workdir, "spec_env.json")) as fh:
        env = json.load(fh)
    with open(os.path.join(workdir, "output.log"), "ab", buffering=0) as out:
        try:
            child = subprocess.Popen(command, cwd=os.path.join(workdir, "work"), env=env,
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     start_new_session=True)
        except OSError as e:
            write_status(workdir, FAILED, f"cannot start {command[0]!r}: {e.strerror}", {})
            return 0
        # Killed before the child's group was on record: take the child down too.
        signal.signal(signal.SIGTERM, lambda *_: (kill_group(child.pid, 0.5), sys.exit(1)))
        with open(os.path.join(workdir, "child.pgid"), "w") as fh:
            fh.write(str(child.pid))
        try:
            code = child.wait(timeout=timeout_s if timeout_s > 0 else None)
        except subprocess.TimeoutExpired:
            kill_group(child.pid)
            child.wait()
            write_status(workdir, FAILED, f"timed out after {timeout_s:g}s",
                         {"exit_code": child.returncode})
            return 0
    kill_group(child.pid, grace_s=0)  # background processes the command left behind
    outputs = {"exit_code": code}
    if os.path.exists(os.path.join(workdir, "cancel")):
        write_status(workdir, CANCELLED, f"cancelled ({describe_exit(code)})", outputs)
    elif code == 0:
        write_status(workdir, SUCCEEDED, describe_exit(code), outputs)
    else:
        write_status(workdir, FAILED, describe_exit(code), outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
