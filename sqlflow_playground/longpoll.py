"""Long-polling fetches that share one look at their jobs per interval.

A fetch with ``wait`` must notice new output within a fraction of a second, yet a hundred
clients each re-reading their job on their own would cost a hundred trips to the executor
every interval. Instead every waiting fetch registers a probe here, and one ticker, while
anybody waits, runs all the blocking probes in a single executor call (and the async ones
on the IOLoop) every ``interval_s``, waking each waiter whose probe found news.

A probe may be dear (a process job's: open its status file, open and read its log, build
the answer) while what it looks for rarely changes between two looks. A waiter may then
bring a *glance*: a cheap blocking call whose value changes whenever the probe's
observation may have (e.g. the size of the job's log and whether its runner lives). A look
runs the probe only when the glance differs from the one taken just before the waiter's
last probe, or ``refresh_s`` after that probe (a safety net for a glance that misses a
change); otherwise the glance alone is paid. The glance is taken before the probe, so a
change after it shows at the next look.
"""
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Set

from .blocking import BlockingRunner


REFRESH_S = 1.0  # a waiter with a glance is probed at least this often all the same

_UNSEEN = object()  # no glance taken yet: the first look probes
_SKIPPED = ("skipped",)  # a look that glanced only: no observation, no news


@dataclass(eq=False)
class _Waiter:
    probe: Callable[[], Any]  # returns an observation (a coroutine if not ``blocking``)
    blocking: bool
    is_news: Callable[[Any], bool]
    glance: Optional[Callable[[], Any]] = None  # blocking; see the module's docstring
    future: "asyncio.Future[Any]" = field(default_factory=lambda: asyncio.get_running_loop()
                                          .create_future())
    # Written by the look's executor thread only (one look at a time):
    glanced: Any = _UNSEEN  # the glance taken just before the last probe
    probed_at: float = 0.0  # the look's clock at the last probe


def _probe_all(waiters: List[_Waiter], now: float = 0.0,
               refresh_s: float = REFRESH_S) -> List[tuple]:
    """Run blocking probes one after another in one executor thread: (result, error);
    ``_SKIPPED`` for a waiter whose glance has not changed since its last probe (less than
    ``refresh_s`` ago)."""
    out = []
    for w in waiters:
        try:
            if w.glance is not None:
                try:
                    glanced = w.glance()
                except Exception:  # a glance that fails decides nothing: probe
                    glanced = _UNSEEN
                if glanced is not _UNSEEN and glanced == w.glanced \
                        and now - w.probed_at < refresh_s:
                    out.append(_SKIPPED)
                    continue
                w.glanced, w.probed_at = glanced, now
            out.append((w.probe(), None))
        except Exception as e:  # delivered to that waiter alone
            out.append((None, e))
    return out


class LongPolls:
    def __init__(self, runner: BlockingRunner, interval_s: float,
                 refresh_s: float = REFRESH_S):
        self.runner = runner
        self.interval_s = interval_s
        self.refresh_s = refresh_s
        self._waiters: Set[_Waiter] = set()
        self._ticker: Optional["asyncio.Task[None]"] = None
        self._closed = False

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def wait(self, probe: Callable[[], Any], blocking: bool,
                   is_news: Callable[[Any], bool], timeout_s: float,
                   glance: Optional[Callable[[], Any]] = None) -> Optional[Any]:
        """The first observation of ``probe`` that ``is_news``, or None after ``timeout_s``.

        ``glance`` (with a blocking probe only): see the module's docstring. An exception
        raised by the probe is raised here."""
        if glance is not None and not blocking:
            raise ValueError("a glance goes with a blocking probe")
        if self._closed:
            return None
        waiter = _Waiter(probe, blocking, is_news, glance)
        self._waiters.add(waiter)
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.ensure_future(self._tick())
        try:
            return await asyncio.wait_for(waiter.future, timeout_s)
        except asyncio.TimeoutError:
            return None
        finally:
            self._waiters.discard(waiter)

    async def close(self) -> None:
        """Answer every waiting fetch now (with nothing new), stop the ticker, and return
        once those fetches have written their answers (before connections are closed)."""
        self._closed = True
        for w in self._waiters:
            if not w.future.done():
                w.future.set_result(None)
        if self._ticker is not None:
            self._ticker.cancel()
        deadline = time.monotonic() + 1.0
        while self._waiters and time.monotonic() < deadline:
            await asyncio.sleep(0.001)  # each leaves on its next turn of the loop

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        next_look = loop.time()
        while self._waiters:
            # Every interval_s, however long a look takes (unless longer than that).
            next_look = max(next_look + self.interval_s, loop.time())
            await asyncio.sleep(next_look - loop.time())
            waiters = [w for w in self._waiters if not w.future.done()]
            blocking = [w for w in waiters if w.blocking]
            others = [w for w in waiters if not w.blocking]
            try:
                results = await self.runner.run(_probe_all, blocking, loop.time(),
                                                self.refresh_s) if blocking else []
            except Exception as e:  # the executor itself failed (shutting down)
                results = [(None, e)] * len(blocking)
            results += await asyncio.gather(*(_probe_async(w) for w in others))
            for w, entry in zip(blocking + others, results):
                if w.future.done() or entry is _SKIPPED:
                    continue  # timed out meanwhile, or nothing looked at
                result, error = entry
                if error is not None:
                    w.future.set_exception(error)
                elif w.is_news(result):
                    w.future.set_result(result)


async def _probe_async(w: _Waiter) -> tuple:
    try:
        return await w.probe(), None
    except Exception as e:
        return None, e
