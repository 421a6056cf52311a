"""The `process` task type: a command run as a child process on the server host.

Off unless ``--enable_process_jobs``: it runs arbitrary commands as the server's user.
"""
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict

from ..errors import Unprocessable
from .base import CANCELLED, FAILED, RUNNING, TaskContext, TaskPlugin, TaskState, is_terminal
from .output import open_private, read_message_page
from . import process_runner
from .process_runner import kill_group, write_status

# The command gets a clean environment, never the server's (which may hold secrets).
BASE_ENV = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
MAX_ENV_VALUE_BYTES = 32 << 10
MAX_ENV_BYTES = 128 << 10  # all of ``env``, names and values (the kernel's own limit is
                           # 128 KiB per string and about 2 MiB for argv and env together)
RUNNER_ERR_TAIL_BYTES = 4096

# Runners this process started, so their exit is reaped and no zombie lingers.
_runners: Dict[int, subprocess.Popen] = {}


def _files(ctx: TaskContext) -> Dict[str, str]:
    return {name: os.path.join(ctx.workdir, name)
            for name in ("output.log", "status.json", "child.pgid", "cancel", "runner.err")}


def _read_status(path: str):
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


def _runner_death(err_path: str) -> str:
    """Why the runner died without a status: the last line it wrote to stderr, if any."""
    message = "the job's runner died unexpectedly"
    try:
        with open(err_path, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - RUNNER_ERR_TAIL_BYTES))
            tail = fh.read().decode("utf-8", "replace").strip().splitlines()
    except FileNotFoundError:
        tail = []
    return f"{message}: {tail[-1][:500]}" if tail else message


def _alive(pid: int) -> bool:
    runner = _runners.get(pid)
    if runner is not None:
        if runner.poll() is None:
            return True
        _runners.pop(pid, None)  # (another thread may have got here first)
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
            "env": {"type": "object", "propertyNames": {"pattern": ENV_NAME},
                    "additionalProperties": {"type": "string"}},
            "timeout_s": {"type": "number", "exclusiveMinimum": 0},
        },
    }

    def check_spec(self, spec: Dict[str, Any]) -> None:
        """What the schema cannot say: no NUL anywhere (exec refuses it), bounded env."""
        for i, item in enumerate(spec["command"]):
            if "\0" in item:
                raise Unprocessable(f"spec['command'][{i}] contains a NUL character")
        total = 0
        for name, value in spec.get("env", {}).items():
            if "\0" in value:  # never echo a value: it may be a secret
                raise Unprocessable(f"spec['env'][{name!r}] contains a NUL character")
            size = len(value.encode("utf-8", "surrogatepass"))
            if size > MAX_ENV_VALUE_BYTES:
                raise Unprocessable(f"spec['env'][{name!r}] is {size} bytes; at most "
                                    f"{MAX_ENV_VALUE_BYTES} bytes per value")
            total += len(name) + 1 + size
        if total > MAX_ENV_BYTES:
            raise Unprocessable(f"spec['env'] is {total} bytes in all; at most {MAX_ENV_BYTES}")

    def create(self, ctx: TaskContext, spec: Dict[str, Any]) -> Dict[str, Any]:
        os.makedirs(os.path.join(ctx.workdir, "work"), mode=0o700, exist_ok=True)
        env = {**BASE_ENV, "HOME": os.path.join(ctx.workdir, "work"), **spec.get("env", {})}
        with open_private(os.path.join(ctx.workdir, "spec_env.json"), "w") as fh:
            json.dump(env, fh)
        # The runner's own errors (it should have none) are kept, to say why it died.
        with open_private(_files(ctx)["runner.err"]) as err:
            runner = subprocess.Popen(
                [sys.executable, "-S", "-E", process_runner.__file__, ctx.workdir,
                 str(spec.get("timeout_s", 0)), str(ctx.max_output_bytes), "--",
                 *spec["command"]],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True)
        _runners[runner.pid] = runner
        return {"runner_pid": runner.pid}

    output_file = "output.log"

    def read_output(self, ctx: TaskContext, cursor: str, complete: bool):
        return read_message_page(os.path.join(ctx.workdir, self.output_file), cursor,
                                 ctx.max_bytes, complete)

    def get(self, ctx: TaskContext, meta: Dict[str, Any], cursor: str) -> TaskState:
        files = _files(ctx)
        ended = _read_status(files["status.json"])  # before the output: see ResponseLog
        if ended is None and not _alive(meta["runner_pid"]):
            ended = _read_status(files["status.json"]) or {
                "status": FAILED, "message": _runner_death(files["runner.err"])}
        status = ended["status"] if ended else RUNNING
        responses, cursor, more = read_message_page(files["output.log"], cursor,
                                                    ctx.max_bytes, complete=is_terminal(status))
        return TaskState(
            # Once ended, everything is on disk: "no more" is then the whole truth.
            more=more if ended and ctx.max_bytes > 0 else None,
            status=status,
            message=ended["message"] if ended else "",
            responses=responses,
            cursor=cursor,
            outputs=ended.get("outputs", {}) if ended else {},
        )

    def glance(self, ctx: TaskContext, meta: Dict[str, Any]) -> tuple:
        """For a waiting fetch (see TaskPlugin.glance): all that ``get``'s answer for a
        given cursor depends on that changes by itself: the log's size (it is appended
        to only), whether the status is written (once, atomically), whether the runner
        lives (it writes the status, then exits; a cancel writes ``cancel``, kills, and
        writes the status if the runner did not). Two stats and a waitpid, instead of
        opening and reading files."""
        try:
            size = os.stat(os.path.join(ctx.workdir, "output.log")).st_size
        except FileNotFoundError:
            size = -1
        return (size, os.path.exists(os.path.join(ctx.workdir, "status.json")),
                _alive(meta["runner_pid"]))

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
