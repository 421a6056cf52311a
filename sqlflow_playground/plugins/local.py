"""Run a plugin in-process, without a server: the plugin author's test bench."""
import asyncio
import inspect
import os
import secrets
import tempfile
import time
from typing import Any, Callable, Dict, Optional

from .base import TaskContext, TaskPlugin, TaskState, is_terminal


def run_local(plugin: TaskPlugin, spec: Dict[str, Any], *, user_id: str = "local",
              data_source: Optional[str] = None, workdir: Optional[str] = None,
              timeout_s: float = 600.0, poll_s: float = 0.05,
              on_response: Optional[Callable[[Dict[str, Any]], None]] = None) -> TaskState:
    """Create the job, poll ``get`` until it ends, and return the final state with every
    response (each also passed to ``on_response`` as it arrives). On timeout the job is
    deleted and TimeoutError raised.

        >>> from sqlflow_playground.plugins import run_local
        >>> state = run_local(MyPlugin(), {"text": "hi"})
        >>> state.status, state.responses
    """
    workdir = workdir or tempfile.mkdtemp(prefix="sqlflow_playground_job_")
    os.makedirs(workdir, exist_ok=True)
    ctx = TaskContext(token=secrets.token_urlsafe(24), user_id=user_id, workdir=workdir,
                      data_source=data_source)

    def call(method: Callable[..., Any], *args: Any) -> Any:
        result = method(*args)
        return asyncio.run(result) if inspect.iscoroutine(result) else result

    meta = call(plugin.create, ctx, spec)
    responses, cursor = [], ""
    deadline = time.monotonic() + timeout_s
    while True:
        state = call(plugin.get, ctx, meta, cursor)
        for response in state.responses:
            responses.append(response)
            if on_response:
                on_response(response)
        cursor = state.cursor
        if is_terminal(state.status) and not state.responses:
            state.responses = responses
            return state
        if time.monotonic() > deadline:
            call(plugin.delete, ctx, meta)
            raise TimeoutError(f"{plugin.task_type} job did not finish in {timeout_s:g}s")
        if not state.responses:
            time.sleep(poll_s)
