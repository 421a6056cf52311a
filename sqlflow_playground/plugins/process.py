"""The `process` task type: a command run as a child process on the server host.

Off unless ``--enable_process_jobs``: it runs arbitrary commands as the server's user.
"""
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict

from .base import CANCELLED, FAILED, RUNNING, TaskContext, TaskPlugin, TaskState, is_terminal
from .output import read_lines
from . import process_runner
from .process_runner import kill_group, write_status

# The command gets a clean environment, never the server's (which may hold secrets).
BASE_ENV = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}

# Runners this process started, so their exit is reaped and no zombie lingers.
_runners: Dict[int, subprocess.Popen] = {}


def _files(ctx: TaskContext) -> Dict[str, str]:
    return {name: os.path.join(ctx.workdir, name)
            for name in ("output.log", "status.json", "child.pgid", "cancel")}


def _read_status(path: str):
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


def _alive(pid: int) -> bool:
    runner = _runners.get(pid)
    if runner is not None:
        if runner.poll() is None:
            return True
        del _runners[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ProcessPlugin(TaskPlugin):
    task_type = "process"
    version = "v1"
    description = "Run a command (a list, never through a shell) on the server host."
    runs_locally = True
    spec_schema = {
        "type": "object",
        "required": ["command"],
        "additionalProperties": False,
        "properties": {
            "command": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "timeout_s": {"type": "number", "exclusiveMinimum": 0},
        },
    }

    def create(self, ctx: TaskContext, spec: Dict[str, Any]) -> Dict[str, Any]:
        os.makedirs(os.path.join(ctx.workdir, "work"), exist_ok=True)
        env = {**BASE_ENV, "HOME": os.path.join(ctx.workdir, "work"), **spec.get("env", {})}
        with open(os.path.join(ctx.workdir, "spec_env.json"), "w") as fh:
            json.dump(env, fh)
        runner = subprocess.Popen(
            [sys.executable, "-S", "-E", process_runner.__file__, ctx.workdir,
             str(spec.get("timeout_s", 0)), "--", *spec["command"]],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        _runners[runner.pid] = runner
        return {"runner_pid": runner.pid}

    def get(self, ctx: TaskContext, meta: Dict[str, Any], cursor: str) -> TaskState:
        files = _files(ctx)
        ended = _read_status(files["status.json"])  # before the output: see ResponseLog
        if ended is None and not _alive(meta["runner_pid"]):
            ended = _read_status(files["status.json"]) or {
                "status": FAILED, "message": "the job's runner died unexpectedly"}
        status = ended["status"] if ended else RUNNING
        lines, cursor = read_lines(files["output.log"], cursor, ctx.max_bytes,
                                   complete=is_terminal(status))
        more = None
        if ended and ctx.max_bytes > 0:
            more = os.path.exists(files["output.log"]) and (
                int(cursor) < os.path.getsize(files["output.log"]))
        return TaskState(
            more=more,
            status=status,
            message=ended["message"] if ended else "",
            responses=[{"message": line.decode("utf-8", "replace")} for line in lines],
            cursor=cursor,
            outputs=ended.get("outputs", {}) if ended else {},
        )

    def delete(self, ctx: TaskContext, meta: Dict[str, Any]) -> None:
        files = _files(ctx)
        if _read_status(files["status.json"]) is not None:
            return
        open(files["cancel"], "w").close()
        self._kill(ctx, meta)
        deadline = time.monotonic() + 5
        while _alive(meta["runner_pid"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _read_status(files["status.json"]) is None:
            write_status(ctx.workdir, CANCELLED, "cancelled", {})

    def recover(self, ctx: TaskContext, meta: Dict[str, Any]) -> str:
        self._kill(ctx, meta)
        return "the server restarted while this job was running; it was stopped"

    def _kill(self, ctx: TaskContext, meta: Dict[str, Any]) -> None:
        try:
            with open(_files(ctx)["child.pgid"]) as fh:
                kill_group(int(fh.read()))
        except (FileNotFoundError, ValueError):
            # The command has not started yet: stop its runner before it does.
            kill_group(meta["runner_pid"], grace_s=0.5)
