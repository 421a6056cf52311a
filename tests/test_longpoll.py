"""Long-polling fetches share one look at their jobs per interval (longpoll.LongPolls)."""
import asyncio
import threading
import time

import pytest

from sqlflow_playground.blocking import BlockingRunner
from sqlflow_playground.longpoll import LongPolls

INTERVAL_S = 0.05


class CountingRunner(BlockingRunner):
    """A BlockingRunner that counts its trips to the executor."""

    def __init__(self):
        super().__init__(4)
        self.trips = 0

    async def run(self, fn, *args, **kwargs):
        self.trips += 1
        return await super().run(fn, *args, **kwargs)


@pytest.fixture
def runner():
    r = CountingRunner()
    yield r
    r.shutdown()


class Source:
    """What a job has printed; a probe returns how many lines there are (from a thread)."""

    def __init__(self):
        self.lines = 0
        self.threads = set()

    def probe(self):
        self.threads.add(threading.get_ident())
        return self.lines


def test_many_waiters_cost_one_executor_trip_per_interval(runner):
    async def main():
        polls = LongPolls(runner, INTERVAL_S)
        sources = [Source() for _ in range(50)]
        waits = [asyncio.ensure_future(polls.wait(s.probe, True, lambda n: n > 0, 5))
                 for s in sources]
        await asyncio.sleep(10 * INTERVAL_S)
        assert polls.waiting == 50 and not any(w.done() for w in waits)
        trips_while_quiet = runner.trips
        for s in sources:
            s.lines = 1
        results = await asyncio.gather(*waits)
        return trips_while_quiet, results, sources

    trips, results, sources = asyncio.run(main())
    assert results == [1] * 50
    # ~10 looks in 10 intervals, each one trip for all 50 waiters (not 500 trips)
    assert 5 <= trips <= 12
    assert all(len(s.threads) == 1 and threading.get_ident() not in s.threads
               for s in sources)  # blocking probes run in the executor, not the loop


def test_news_wakes_a_waiter_within_an_interval_and_quiet_times_out(runner):
    async def main():
        polls = LongPolls(runner, INTERVAL_S)
        source = Source()
        quiet = await polls.wait(source.probe, True, lambda n: n > 0, 0.2)
        waiting = asyncio.ensure_future(polls.wait(source.probe, True, lambda n: n > 0, 5))
        await asyncio.sleep(0.12)
        start = time.monotonic()
        source.lines = 3
        news = await waiting
        return quiet, news, time.monotonic() - start, polls.waiting

    quiet, news, delay, left = asyncio.run(main())
    assert quiet is None and news == 3 and left == 0
    assert delay < 1.0  # woken by the news (within an interval or so), not by its 5 s timeout


def test_async_probes_run_on_the_loop_and_errors_reach_only_their_waiter(runner):
    async def main():
        polls = LongPolls(runner, INTERVAL_S)
        calls = []

        async def async_probe():
            calls.append(threading.get_ident())
            return len(calls)

        def broken():
            raise ValueError("the job's files are gone")

        good = asyncio.ensure_future(polls.wait(async_probe, False, lambda n: n >= 3, 5))
        bad = asyncio.ensure_future(polls.wait(broken, True, lambda n: True, 5))
        with pytest.raises(ValueError, match="files are gone"):
            await bad
        return await good, calls

    result, calls = asyncio.run(main())
    assert result == 3 and set(calls) == {threading.get_ident()}


def test_close_answers_every_waiter_at_once_and_later_waits_do_not_wait(runner):
    async def main():
        polls = LongPolls(runner, INTERVAL_S)
        source = Source()
        waits = [asyncio.ensure_future(polls.wait(source.probe, True, lambda n: n > 0, 30))
                 for _ in range(5)]
        await asyncio.sleep(0.1)
        start = time.monotonic()
        await polls.close()
        results = await asyncio.gather(*waits)
        after = await polls.wait(source.probe, True, lambda n: n > 0, 30)
        await asyncio.sleep(0)
        return results, after, time.monotonic() - start, polls._ticker.done()

    results, after, took, ticker_done = asyncio.run(main())
    assert results == [None] * 5 and after is None
    assert took < 2 and ticker_done  # not held for their 30 s


class Glanced(Source):
    """A Source whose probe is dear and whose glance (the line count, cheaply) is not:
    both count their calls."""

    def __init__(self, glance=None):
        super().__init__()
        self.probes = 0
        self.glances = 0
        self._glance = glance

    def probe(self):
        self.probes += 1
        return super().probe()

    def glance(self):
        self.glances += 1
        return self._glance() if self._glance else self.lines


async def looks(source, at_least):
    """Until the waiter's source has been glanced at ``at_least`` times (bounded)."""
    for _ in range(400):
        if source.glances >= at_least:
            return
        await asyncio.sleep(INTERVAL_S)
    raise AssertionError(f"only {source.glances} glances")


def test_an_unchanged_glance_spares_the_probe_until_it_changes(runner):
    async def main():
        polls = LongPolls(runner, INTERVAL_S, refresh_s=3600)
        source = Glanced()
        waiting = asyncio.ensure_future(
            polls.wait(source.probe, True, lambda n: n > 0, 10, glance=source.glance))
        await looks(source, 6)
        quiet = (source.probes, waiting.done())
        source.lines = 2
        return quiet, await waiting, source.probes

    (probed_while_quiet, done_while_quiet), news, probes = asyncio.run(main())
    assert probed_while_quiet == 1 and not done_while_quiet  # the first look alone probed
    assert news == 2 and probes == 2  # the change was seen by a glance, then probed


def test_a_glance_that_misses_a_change_is_overruled_after_refresh_s(runner):
    async def main():
        polls = LongPolls(runner, INTERVAL_S, refresh_s=0.0)
        source = Glanced(glance=lambda: "never changes")
        waiting = asyncio.ensure_future(
            polls.wait(source.probe, True, lambda n: n > 0, 10, glance=source.glance))
        await looks(source, 3)
        source.lines = 1
        return await waiting, source.probes, source.glances

    news, probes, glances = asyncio.run(main())
    assert news == 1 and probes >= 4 and probes == glances  # every look probed all the same


def test_a_failing_glance_leaves_it_to_the_probe_and_an_async_probe_takes_none(runner):
    def broken():
        raise OSError("no such file")

    async def main():
        polls = LongPolls(runner, INTERVAL_S, refresh_s=3600)
        source = Glanced(glance=broken)
        waiting = asyncio.ensure_future(
            polls.wait(source.probe, True, lambda n: n > 0, 10, glance=source.glance))
        await looks(source, 3)
        source.lines = 5

        async def async_probe():
            return 1

        with pytest.raises(ValueError, match="blocking"):
            await polls.wait(async_probe, False, lambda n: True, 10, glance=source.glance)
        return await waiting, source.probes, source.glances

    news, probes, glances = asyncio.run(main())
    assert news == 5 and probes == glances >= 4


def test_waiters_with_one_key_share_one_glance_and_one_probe_per_look(runner):
    """Ten fetches following one job from one cursor cost a look what one does."""
    async def main():
        polls = LongPolls(runner, INTERVAL_S, refresh_s=3600)
        source = Glanced()
        waits = [asyncio.ensure_future(
            polls.wait(source.probe, True, lambda n: n > 0, 30, glance=source.glance,
                       key=("job", ""), glance_key="job")) for _ in range(10)]
        await looks(source, 6)
        quiet = (source.probes, source.glances, runner.trips, any(w.done() for w in waits))
        source.lines = 1
        return quiet, await asyncio.gather(*waits), source.probes, source.glances, runner.trips

    (probes_q, glances_q, trips_q, done_q), results, probes, glances, trips = asyncio.run(main())
    assert probes_q == 1 and not done_q  # the first look probed once for all ten
    assert glances_q <= trips_q  # one glance per look (not one per waiter)
    assert results == [1] * 10 and probes == 2 and glances <= trips


def test_a_waiter_joining_a_key_makes_the_next_look_probe_and_all_of_it_see_the_news(runner):
    async def main():
        polls = LongPolls(runner, INTERVAL_S, refresh_s=3600)
        source = Glanced(glance=lambda: "misses every change")
        first = asyncio.ensure_future(polls.wait(source.probe, True, lambda n: n > 0, 30,
                                                 glance=source.glance, key="k"))
        await looks(source, 3)
        source.lines = 1  # unseen: the glance misses it, and refresh_s is an hour
        await looks(source, source.glances + 3)
        before = (first.done(), source.probes)
        second = asyncio.ensure_future(polls.wait(source.probe, True, lambda n: n > 0, 30,
                                                  glance=source.glance, key="k"))
        return before, await first, await second, source.probes

    (first_done, probes_before), first, second, probes = asyncio.run(main())
    assert not first_done and probes_before == 1
    assert first == second == 1 and probes == 2  # the joiner's look answered both


def test_one_job_from_two_cursors_one_glance_two_probes_each_waiter_judges(runner):
    """Keys differ (two cursors), the glance key is the same (one job): one glance per
    look, a probe per key; an observation is news to a waiter by its own is_news."""
    async def main():
        polls = LongPolls(runner, INTERVAL_S, refresh_s=3600)
        source = Glanced()
        other = Glanced()

        def wait(probe, is_news, key):
            return asyncio.ensure_future(polls.wait(probe, True, is_news, 30,
                                                    glance=source.glance, key=key,
                                                    glance_key="job"))
        a1 = wait(source.probe, lambda n: n >= 1, "from 0")
        a2 = wait(source.probe, lambda n: n >= 2, "from 0")
        b = wait(other.probe, lambda n: n >= 1, "from 1")
        await looks(source, 4)
        quiet = (source.probes, other.probes, source.glances, runner.trips)
        other.lines = 1
        source.lines = 1  # the shared glance changes: both keys probe
        got_a1, got_b = await a1, await b
        still = a2.done()
        source.lines = 2
        return quiet, got_a1, got_b, still, await a2

    (probes_a, probes_b, glances, trips), a1, b, a2_done, a2 = asyncio.run(main())
    assert probes_a == probes_b == 1 and glances <= trips
    assert a1 == 1 and b == 1 and not a2_done and a2 == 2


def test_a_probe_that_fails_fails_every_waiter_of_its_key(runner):
    def broken():
        raise ValueError("the job's files are gone")

    async def main():
        polls = LongPolls(runner, INTERVAL_S)
        waits = [asyncio.ensure_future(polls.wait(broken, True, lambda n: True, 30, key="k"))
                 for _ in range(3)]
        return await asyncio.gather(*waits, return_exceptions=True), polls.waiting

    results, left = asyncio.run(main())
    assert [type(r) for r in results] == [ValueError] * 3 and left == 0
