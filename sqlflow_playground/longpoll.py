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

Waiters whose probes are interchangeable (several clients following one job from the same
cursor) may say so with a ``key``: they form a group, which a look treats as one waiter
(one glance, at most one probe, its observation offered to each), so a look costs what
the distinct jobs (and cursors) cost, not what their followers do. A waiter that joins a
group makes the next look probe it, and every probe brings all its waiters up to date.
"""
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from .blocking import BlockingRunner


REFRESH_S = 1.0  # a waiter with a glance is probed at least this often all the same

_UNSEEN = object()  # no glance taken yet: the first look probes
_SKIPPED = ("skipped",)  # a look that glanced only: no observation, no news


@dataclass(eq=False)
class _Group:
    """The waiters whose probes are interchangeable (the same ``key``: e.g. one job read
    from one cursor): one probe, and one glance, per look serves them all."""
    probe: Callable[[], Any]  # returns an observation (a coroutine if not ``blocking``)
    blocking: bool
    glance: Optional[Callable[[], Any]] = None  # blocking; see the module's docstring
    glance_key: Any = None  # groups with the same glance_key share one glance per look
    waiters: Dict["_Waiter", None] = field(default_factory=dict)  # in arrival order
    # Written on the loop only: a waiter joined since the last look began (it probes).
    joined: bool = True
    # Written by the look's executor thread only (one look at a time):
    glanced: Any = _UNSEEN  # the glance taken just before the last probe
    probed_at: float = 0.0  # the look's clock at the last probe


@dataclass(eq=False)
class _Waiter:
    is_news: Callable[[Any], bool]
    group: _Group
    future: "asyncio.Future[Any]" = field(default_factory=lambda: asyncio.get_running_loop()
                                          .create_future())


def _probe_all(groups: List[Tuple[_Group, bool]], now: float = 0.0,
               refresh_s: float = REFRESH_S) -> List[tuple]:
    """Run blocking probes one after another in one executor thread, a group's probe once:
    (result, error) per group; ``_SKIPPED`` for a group not forced (no waiter joined it
    since the last look) whose glance has not changed since its last probe (less than
    ``refresh_s`` ago). Every glance is taken before any probe; one per glance key."""
    glances: Dict[Any, Any] = {}
    taken = []
    for group, forced in groups:
        glanced = _UNSEEN
        if group.glance is not None:
            gkey = group if group.glance_key is None else group.glance_key
            glanced = glances.get(gkey, _MISSING)
            if glanced is _MISSING:
                try:
                    glanced = group.glance()
                except Exception:  # a glance that fails decides nothing: probe
                    glanced = _UNSEEN
                glances[gkey] = glanced
        taken.append(glanced)
    out = []
    for (group, forced), glanced in zip(groups, taken):
        if group.glance is not None and not forced and glanced is not _UNSEEN \
                and glanced == group.glanced and now - group.probed_at < refresh_s:
            out.append(_SKIPPED)
            continue
        group.glanced, group.probed_at = glanced, now
        try:
            out.append((group.probe(), None))
        except Exception as e:  # delivered to that group's waiters alone
            out.append((None, e))
    return out


_MISSING = object()


class LongPolls:
    def __init__(self, runner: BlockingRunner, interval_s: float,
                 refresh_s: float = REFRESH_S):
        self.runner = runner
        self.interval_s = interval_s
        self.refresh_s = refresh_s
        self._groups: Dict[Any, _Group] = {}  # key -> its group, while it has waiters
        self._waiting = 0
        self._ticker: Optional["asyncio.Task[None]"] = None
        self._closed = False

    @property
    def waiting(self) -> int:
        return self._waiting

    async def wait(self, probe: Callable[[], Any], blocking: bool,
                   is_news: Callable[[Any], bool], timeout_s: float,
                   glance: Optional[Callable[[], Any]] = None, key: Any = None,
                   glance_key: Any = None) -> Optional[Any]:
        """The first observation of ``probe`` that ``is_news``, or None after ``timeout_s``.

        ``glance`` (with a blocking probe only): see the module's docstring. ``key``
        (hashable): waiters with equal keys have interchangeable probes and glances (the
        same answer at the same moment), so a look runs one probe for all of them and
        offers its observation to each (each judges it with its own ``is_news``); the
        probe and glance of the first of them serve. ``glance_key``: waiters with equal
        glance keys (e.g. the same job read from different cursors) share one glance per
        look. A waiter joining a key makes the next look probe it. An exception raised by
        the probe is raised here (to every waiter of its key)."""
        if glance is not None and not blocking:
            raise ValueError("a glance goes with a blocking probe")
        if self._closed:
            return None
        key = (blocking, key) if key is not None else None
        group = self._groups.get(key) if key is not None else None
        if group is None:
            group = _Group(probe, blocking, glance, glance_key)
            if key is None:
                key = group  # a group of its own
            self._groups[key] = group
        group.joined = True
        waiter = _Waiter(is_news, group)
        group.waiters[waiter] = None
        self._waiting += 1
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.ensure_future(self._tick())
        try:
            return await asyncio.wait_for(waiter.future, timeout_s)
        except asyncio.TimeoutError:
            return None
        finally:
            self._waiting -= 1
            del group.waiters[waiter]
            if not group.waiters and self._groups.get(key) is group:
                del self._groups[key]

    async def close(self) -> None:
        """Answer every waiting fetch now (with nothing new), stop the ticker, and return
        once those fetches have written their answers (before connections are closed)."""
        self._closed = True
        for group in self._groups.values():
            for w in group.waiters:
                if not w.future.done():
                    w.future.set_result(None)
        if self._ticker is not None:
            self._ticker.cancel()
        deadline = time.monotonic() + 1.0
        while self._waiting and time.monotonic() < deadline:
            await asyncio.sleep(0.001)  # each leaves on its next turn of the loop

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        next_look = loop.time()
        while self._waiting:
            # Every interval_s, however long a look takes (unless longer than that).
            next_look = max(next_look + self.interval_s, loop.time())
            await asyncio.sleep(next_look - loop.time())
            # Who is looked at, and which groups a waiter joined since the last look,
            # decided here on the loop; a waiter that joins during the look is probed
            # at the next.
            blocking: List[Tuple[_Group, bool]] = []
            others: List[_Group] = []
            members: Dict[_Group, List[_Waiter]] = {}
            for group in self._groups.values():
                waiters = [w for w in group.waiters if not w.future.done()]
                if not waiters:
                    continue
                members[group] = waiters
                if group.blocking:
                    blocking.append((group, group.joined))
                else:
                    others.append(group)
                group.joined = False
            try:
                results = await self.runner.run(_probe_all, blocking, loop.time(),
                                                self.refresh_s) if blocking else []
            except Exception as e:  # the executor itself failed (shutting down)
                results = [(None, e)] * len(blocking)
            results += await asyncio.gather(*(_probe_async(g) for g in others))
            for group, entry in zip([g for g, _ in blocking] + others, results):
                if entry is _SKIPPED:
                    continue  # nothing looked at
                result, error = entry
                for w in members[group]:
                    if w.future.done():
                        continue  # timed out meanwhile
                    if error is not None:
                        w.future.set_exception(error)
                    elif w.is_news(result):
                        w.future.set_result(result)


async def _probe_async(g: _Group) -> tuple:
    try:
        return await g.probe(), None
    except Exception as e:
        return None, e
