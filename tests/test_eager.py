"""eager.start: a coroutine run at once up to its first wait, a Task only if it waits."""
import asyncio
import contextvars

import pytest

from sqlflow_playground import eager

marker = contextvars.ContextVar("marker", default="outside")


def run(coro):
    return asyncio.run(coro)


def test_a_coroutine_that_never_waits_runs_to_its_end_at_once_without_a_task():
    done = []

    async def answer():
        done.append(asyncio.current_task())

    async def main():
        before = asyncio.all_tasks()
        assert eager.start(answer()) is None
        assert done == [None]  # ran before start() returned, outside any task
        assert asyncio.all_tasks() == before

    run(main())


def test_a_coroutine_that_waits_goes_on_in_a_task_that_returns_its_value():
    steps = []

    async def answer(gate):
        steps.append("before")
        value = await gate
        steps.append(asyncio.current_task())
        return value * 2

    async def main():
        gate = asyncio.get_running_loop().create_future()
        task = eager.start(answer(gate))
        assert steps == ["before"] and isinstance(task, asyncio.Task) and not task.done()
        gate.set_result(21)
        assert await task == 42
        assert steps[1] is task  # after its first wait it belongs to its own task

    run(main())


def test_what_a_coroutine_raises_reaches_the_caller_before_a_wait_and_the_task_after():
    async def fails_at_once():
        raise ValueError("at once")

    async def fails_later():
        await asyncio.sleep(0)
        raise KeyError("later")

    async def main():
        with pytest.raises(ValueError, match="at once"):
            eager.start(fails_at_once())
        task = eager.start(fails_later())
        with pytest.raises(KeyError, match="later"):
            await task

    run(main())


def test_an_exception_of_the_awaited_future_is_raised_inside_the_coroutine():
    async def answer(gate):
        try:
            await gate
        except OSError as e:
            return f"handled {e}"

    async def main():
        gate = asyncio.get_running_loop().create_future()
        task = eager.start(answer(gate))
        gate.set_exception(OSError("gone"))
        assert await task == "handled gone"

    run(main())


def test_cancelling_the_task_cancels_what_the_coroutine_waits_on_and_runs_its_cleanup():
    cleaned = []

    async def answer(gate):
        try:
            await gate
        finally:
            cleaned.append(True)

    async def main():
        gate = asyncio.get_running_loop().create_future()
        task = eager.start(answer(gate))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gate.cancelled() and cleaned == [True]

    run(main())


def test_a_timeout_after_the_first_wait_works_as_in_any_task():
    async def answer():
        await asyncio.sleep(0)
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(30)
        except TimeoutError:
            return "timed out"

    async def main():
        assert await eager.start(answer()) == "timed out"

    run(main())


def test_what_needs_a_task_in_the_first_step_fails_at_once_and_the_callers_task_is_untouched():
    async def answer():
        async with asyncio.timeout(30):
            await asyncio.sleep(0)

    async def main():
        me = asyncio.current_task()
        with pytest.raises(RuntimeError):
            eager.start(answer())
        assert asyncio.current_task() is me  # given back its place
        me.cancel()  # and nothing was left to cancel it: only this does
        with pytest.raises(asyncio.CancelledError):
            await asyncio.sleep(0.05)
        assert me.cancelling() == 1

    run(main())


def test_context_variables_set_by_the_coroutine_stay_in_its_own_context():
    seen = []

    async def answer(gate):
        marker.set("inside")
        await gate
        seen.append(marker.get())

    async def main():
        gate = asyncio.get_running_loop().create_future()
        task = eager.start(answer(gate))
        assert marker.get() == "outside"
        gate.set_result(None)
        await task
        assert seen == ["inside"] and marker.get() == "outside"

    run(main())
