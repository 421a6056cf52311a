"""Run a coroutine at once, as far as it goes without waiting; a Task only if it waits.

A poll of the plugin door is nearly always answered from memory: the job service's
status coroutine ends without waiting on anything. Started as a Task it still costs a
loop turn, and its answer comes after the request's own turn, so Tornado watches the
connection meanwhile (a reader registered, then a second read): together a third of a
poll's instructions (callgrind). Python 3.12's eager tasks (``eager_task_factory``)
do this for every task; on 3.11 this does it for the coroutine it is given.

The first step runs outside any task (``asyncio.current_task()`` is None there) and in
a copy of the caller's context: what needs a task to belong to (``asyncio.timeout``, a
``TaskGroup``) raises RuntimeError at once, which the caller can answer the usual way.
From its first wait on, the coroutine goes on in a Task of its own, as any other would.
"""
import asyncio
import contextvars
import types
from asyncio.tasks import _enter_task, _leave_task  # private, in asyncio since 3.7
from typing import Any, Coroutine, Generator, Optional


def start(coro: Coroutine) -> Optional[asyncio.Task]:
    """Run ``coro`` up to its first wait. None if it ended there (it returned: its value
    is dropped; what it raised is raised here), else the Task that goes on with it."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    outer = asyncio.current_task(loop)
    if outer is not None:
        _leave_task(loop, outer)
    try:
        waiting = context.run(coro.send, None)
    except StopIteration:
        return None
    finally:
        if outer is not None:
            _enter_task(loop, outer)
    return loop.create_task(_resume(coro, waiting), context=context)


async def _resume(coro: Coroutine, waiting: Any) -> Any:
    return await _go_on(coro, waiting)


@types.coroutine
def _go_on(coro: Coroutine, waiting: Any) -> Generator[Any, Any, Any]:
    """``yield from`` for a coroutine already started: the Task running this sees what
    ``coro`` yields (the future it waits on) and resumes, throws into or closes it as
    it would ``coro`` itself."""
    while True:
        try:
            sent = yield waiting
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as error:  # noqa: B902  # a cancel too, handed on as Task does
            try:
                waiting = coro.throw(error)
            except StopIteration as done:
                return done.value
        else:
            try:
                waiting = coro.send(sent)
            except StopIteration as done:
                return done.value
