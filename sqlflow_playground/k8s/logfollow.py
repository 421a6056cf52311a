"""Following running pods' logs: one streaming read per pod, fetches answered from memory.

Reading a page of a running pod's log per fetch (``logs.LogReader``) costs the API server
requests in proportion to how often clients poll. Instead, the first fetch of a running
pod's log (still answered by ``LogReader``) starts a *follower*: a thread reading
``GET pods/{name}/log?follow=true&timestamps=true`` as it comes into a buffer bounded in
bytes, and later fetches of that pod are cut from the buffer with no API call at all.

Cursors are those of ``logs.py``: a line's *place* is (its timestamp, its rank among the
lines sharing that timestamp), which every reader agrees on. A buffer holds every line
after some place, its *floor*, so it answers any cursor at or after the floor, whoever
issued it. Other cursors (older than the buffer, or while the follower is disconnected)
are answered by ``LogReader`` as before: any replica answers any cursor, following or not.

Where a stream starts, so that starting one never pulls a huge old log: at the requesting
cursor's second when ``LogReader``'s page reached the end of the log (the stream then
repeats at most that page), else, with a backlog longer than a page, at the current second:
the client reads the backlog through ``LogReader`` and is served from memory once it
reaches the buffer's floor.

A stream that breaks is reopened, after a backoff, from the second of the last line
received; lines already held are dropped by place, as ``new_lines`` does. A stream that
ends cleanly and was opened after the pod was seen ended (in the watch cache) held the
whole rest of the log: the buffer is then final, with its unterminated last line, and the
thread ends. A follower is dropped when its pod leaves the cache, its job is deleted,
nobody has read it for ``idle_s``, memory runs short (least recently read first), or the
program stops (``PodLogs.close``, from ``Cluster.stop``).
"""
import bisect
import logging
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from kubernetes.client.rest import ApiException

from .logs import Cursor, LogReader, new_lines, open_log_stream, time_key, whole_second

log = logging.getLogger(__name__)

Place = Tuple[Tuple[str, int], int]  # (time_key of the line's stamp, rank within it)
POD_DONE = ("Succeeded", "Failed")
READ_SIZE = 65536
LINE_OVERHEAD = 400       # bytes Python spends per buffered line beyond its text (measured)
READ_TIMEOUT_S = 300.0    # a stream silent this long is reopened (a dead peer, not a quiet pod)
LASTING_S = 10.0          # a stream that lasted this long was no failure: no backoff growth
MIN_BACKOFF_S, MAX_BACKOFF_S = 0.5, 30.0


class Page(NamedTuple):
    """The lines after a cursor, and where to go on."""

    lines: List[str]
    cursor: Optional[Cursor]
    more: bool      # more lines are ready past ``cursor`` (the page was full or cut short)
    complete: bool  # read from the final log: the unterminated last line counted

    @property
    def done(self) -> bool:
        """The log is final and this page reached its end."""
        return self.complete and not self.more


def place_of(cursor: Optional[Cursor]) -> Optional[Place]:
    return None if cursor is None else (time_key(cursor[0]), cursor[1])


class LogFollower:
    """One pod's log stream and the buffer it fills; its thread is started by ``LogFollowers``.

    The buffer holds the lines after ``_floor`` (None: from the log's start) as parallel
    lists of places and (stamp, text, size); lines before ``_head`` are dropped ones.
    Everything is guarded by the registry's lock.
    """

    def __init__(self, registry: "LogFollowers", namespace: str, name: str,
                 since: Optional[str], container: Optional[str] = None):
        self.registry, self.namespace, self.name = registry, namespace, name
        self.container = container  # the one container of the pod whose log is followed
        self.since = since  # the first stream's sinceTime (a whole second), None: the start
        self._lock = registry.lock
        self._places: List[Place] = []
        self._lines: List[Tuple[str, str, int]] = []
        self._head = 0
        self._floor: Optional[Place] = None if since is None else (time_key(since), 0)
        self._last: Optional[Place] = None  # place of the last line received
        self._last_stamp: Optional[str] = None
        self.bytes = 0
        self.final = False      # the buffer ends where the log does
        self.connected = False  # a stream is open: the buffer is (nearly) up to date
        self.streams = 0        # streams opened so far
        self.last_read = time.monotonic()
        self._stopping = threading.Event()
        self._response: Any = None
        self.thread = threading.Thread(target=self._run, name=f"logfollow-{name}", daemon=True)

    # -- readers (any thread) ------------------------------------------------------------

    def read(self, cursor: Optional[Cursor], max_bytes: int, line_overhead: int = 0
             ) -> Optional[Page]:
        """The buffered lines after ``cursor``, about ``max_bytes`` of them (as ``new_lines``
        counts), or None when the buffer cannot answer for ``cursor``."""
        place = place_of(cursor)
        with self._lock:
            self.last_read = time.monotonic()
            if not (self.final or self.connected) or self._stopping.is_set():
                return None
            if self._floor is not None and (place is None or place < self._floor):
                return None  # older than the buffer
            i = self._head if place is None else \
                bisect.bisect_right(self._places, place, self._head)
            out: List[str] = []
            size, last = 0, cursor
            for j in range(i, len(self._lines)):
                stamp, text, _ = self._lines[j]
                cost = len(text) + 1 + line_overhead
                if out and size + cost > max_bytes:
                    return Page(out, last, True, self.final)
                out.append(text)
                size += cost
                last = (stamp, self._places[j][1])
            return Page(out, last, False, self.final)

    def stop(self) -> None:
        """Ask the thread to end, and end a blocked read at once."""
        self._stopping.set()
        response = self._response
        if response is not None:
            try:
                response.shutdown()  # wakes a read blocked in another thread
            except Exception:
                pass

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = MIN_BACKOFF_S
        try:
            while not self._stopping.is_set():
                pod = self.registry.lookup(self.name)
                if pod is None:
                    return  # deleted: nothing more to follow
                ended = _phase(pod) in POD_DONE
                opened, why = time.monotonic(), ""
                added, clean = 0, False
                try:
                    added, clean = self._stream(ended)
                except ApiException as e:
                    if e.status == 404:
                        return
                    why = f"API error {e.status} {e.reason}"
                except Exception as e:
                    why = f"{type(e).__name__}: {e}"
                if self._stopping.is_set() or (clean and ended):
                    return  # stopped, or final
                pod = self.registry.lookup(self.name)
                if clean and pod is not None and _phase(pod) in POD_DONE:
                    continue  # ended meanwhile: one more stream, opened now, reads the rest
                lasting = added or time.monotonic() - opened >= LASTING_S
                backoff = MIN_BACKOFF_S if lasting else min(backoff * 2, MAX_BACKOFF_S)
                log.log(logging.INFO if why else logging.DEBUG,
                        "log stream of pod %s ended (%s); reopening in %.1fs", self.name,
                        why or "closed", backoff)
                self._stopping.wait(backoff)
        finally:
            with self._lock:
                self.connected = False

    def _stream(self, ended: bool) -> Tuple[int, bool]:
        """One stream, from the second of the last line held; (lines added, ended cleanly).
        ``ended``: the pod had ended when it was opened, so a clean end is the log's end."""
        response = open_log_stream(self.registry.api(), self.namespace, self.name,
                                   self._last_stamp or self.since, READ_TIMEOUT_S,
                                   self.container)
        self._response = response
        added, rank_of, pending, clean = 0, [None, 0], b"", False
        try:
            if self._stopping.is_set():  # stop() may have missed the response
                return 0, False
            with self._lock:
                self.connected = True
                self.streams += 1
            while True:
                data = response.read1(READ_SIZE)
                if not data:
                    break
                *lines, pending = (pending + data).split(b"\n")
                if len(pending) > self.registry.per_pod_bytes:
                    raise ValueError("a line longer than the buffer")
                added += self._take(lines, rank_of)
            if self._stopping.is_set():
                return added, False  # a shutdown() looks like a clean end
            clean = True
            if ended:
                added += self._take([pending] if pending else [], rank_of, final=True)
            return added, True
        finally:
            self._response = None
            with self._lock:
                self.connected = False
            if not clean:  # a connection left mid-answer must not be reused as it is
                response.close()
            response.release_conn()

    def _take(self, raw: List[bytes], rank_of: list, final: bool = False) -> int:
        """Add the lines not held yet (``rank_of``: the stream's last time key and rank
        there); with ``final``, mark the buffer final in the same step. How many added."""
        entries = []
        for line in raw:
            stamp, _, text = line.decode("utf-8", "replace").partition(" ")
            key = time_key(stamp)
            rank_of[:] = [key, rank_of[1] + 1 if key == rank_of[0] else 1]
            entries.append(((key, rank_of[1]), stamp, text, len(line) + LINE_OVERHEAD))
        added, victims = 0, []
        with self._lock:
            if self._stopping.is_set():
                return 0
            before = self.bytes
            for place, stamp, text, size in entries:
                if self._last is not None and place <= self._last:
                    continue  # held already (a reopened stream repeats its first second)
                self._places.append(place)
                self._lines.append((stamp, text, size))
                self._last, self._last_stamp = place, stamp
                self.bytes += size
                added += 1
            self._trim()
            self.final = self.final or final
            victims = self.registry.charge(self, self.bytes - before)
        for victim in victims:
            victim.stop()
        return added

    def _trim(self) -> None:
        """Drop the oldest lines beyond the per-pod bound (keeping one); the floor rises."""
        while self.bytes > self.registry.per_pod_bytes and len(self._lines) - self._head > 1:
            self._floor = self._places[self._head]
            self.bytes -= self._lines[self._head][2]
            self._head += 1
        if self._head > 1024 and 2 * self._head > len(self._lines):
            del self._places[:self._head], self._lines[:self._head]
            self._head = 0


def _phase(pod: Dict[str, Any]) -> Optional[str]:
    return (pod.get("status") or {}).get("phase")


class LogFollowers:
    """The followers of one program, by (namespace, pod name), and their janitor thread.

    :param make_api: makes the ``ApiClient`` the streams use (``clients.streaming_api_client``),
        called once, when the first follower starts; closed by ``close``.
    :param lookup: a pod (dict) by name from the watch cache, None when it is gone.
    """

    def __init__(self, make_api: Callable[[], Any], lookup: Callable[[str], Optional[dict]],
                 per_pod_bytes: int = 4 << 20, total_bytes: int = 64 << 20,
                 idle_s: float = 60.0, max_followers: int = 1000, tick_s: float = 1.0):
        self.make_api, self.lookup = make_api, lookup
        self.per_pod_bytes, self.total_bytes = per_pod_bytes, total_bytes
        self.idle_s, self.max_followers, self.tick_s = idle_s, max_followers, tick_s
        self.lock = threading.Lock()
        self._followers: Dict[Tuple[str, str], LogFollower] = {}
        self._bytes = 0
        self._api: Any = None
        self._api_lock = threading.Lock()
        self._janitor: Optional[threading.Thread] = None
        self._closed = threading.Event()

    def api(self) -> Any:
        with self._api_lock:
            if self._api is None:
                self._api = self.make_api()
            return self._api

    def get(self, namespace: str, name: str) -> Optional[LogFollower]:
        return self._followers.get((namespace, name))

    def follow(self, namespace: str, name: str, since: Optional[str],
               container: Optional[str] = None) -> None:
        """Start following the log of the pod's ``container`` from ``since`` (a whole
        second; None: from its start), unless the pod is followed already."""
        key = (namespace, name)
        if key in self._followers or self._closed.is_set():
            return
        self.api()  # fail here, in the caller, if there is no configuration
        victims = []
        with self.lock:
            if key in self._followers or self._closed.is_set():
                return
            while len(self._followers) >= self.max_followers:
                victims.append(self._drop(min(self._followers.values(),
                                              key=lambda f: f.last_read)))
            follower = self._followers[key] = LogFollower(self, namespace, name, since,
                                                          container)
            follower.thread.start()
            if self._janitor is None:
                self._janitor = threading.Thread(target=self._sweep, name="logfollow-janitor",
                                                 daemon=True)
                self._janitor.start()
        for victim in victims:
            victim.stop()

    def stop(self, namespace: str, name: str) -> None:
        """Stop following the pod (its job was deleted); no-op if not followed."""
        with self.lock:
            follower = self._followers.get((namespace, name))
            if follower is not None:
                self._drop(follower)
        if follower is not None:
            follower.stop()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop every follower and the janitor, wait for their threads, close the client."""
        self._closed.set()
        with self.lock:
            followers = list(self._followers.values())
            for follower in followers:
                self._drop(follower)
            janitor = self._janitor
        for follower in followers:
            follower.stop()
        deadline = time.monotonic() + timeout_s
        for thread in [f.thread for f in followers] + ([janitor] if janitor else []):
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        with self._api_lock:
            if self._api is not None:
                self._api.close()
                self._api = None

    # -- under the lock --------------------------------------------------------------------

    def charge(self, follower: LogFollower, delta: int) -> List[LogFollower]:
        """Account ``delta`` more bytes held by ``follower``; the least recently read other
        followers to stop (already dropped) while the total is over the bound. Lock held."""
        if self._followers.get((follower.namespace, follower.name)) is not follower:
            return []
        self._bytes += delta
        victims = []
        while self._bytes > self.total_bytes:
            others = [f for f in self._followers.values() if f is not follower]
            if not others:
                break
            victims.append(self._drop(min(others, key=lambda f: f.last_read)))
        return victims

    def _drop(self, follower: LogFollower) -> LogFollower:
        """Forget ``follower`` (lock held); the caller stops it once the lock is released."""
        if self._followers.get((follower.namespace, follower.name)) is follower:
            del self._followers[(follower.namespace, follower.name)]
            self._bytes -= follower.bytes
        follower._stopping.set()
        return follower

    # -- the janitor thread ------------------------------------------------------------------

    def _sweep(self) -> None:
        """Every ``tick_s``: drop followers that are idle, whose pod is gone, or whose thread
        ended short of a final buffer. Ends when there are none left (``follow`` restarts it)."""
        while not self._closed.wait(self.tick_s):
            now, victims = time.monotonic(), []
            with self.lock:
                for follower in list(self._followers.values()):
                    if (now - follower.last_read > self.idle_s
                            or self.lookup(follower.name) is None
                            or not (follower.thread.is_alive() or follower.final)):
                        victims.append(self._drop(follower))
                empty = not self._followers
                if empty:
                    self._janitor = None
            for victim in victims:
                victim.stop()
            if empty:
                return


class PodLogs:
    """A pod's log lines after a cursor: from its follower when one can answer, else read
    through ``LogReader`` (which then starts a follower for a running pod).

    One per program (``Cluster.logs``), shared by the ``pod`` and ``k8s_job`` task types.
    """

    def __init__(self, api_client: Any, make_stream_api: Callable[[], Any],
                 lookup: Callable[[str], Optional[dict]], **limits: Any):
        self.reader = LogReader(api_client)
        self.followers = LogFollowers(make_stream_api, lookup, **limits)

    def read(self, namespace: str, name: str, cursor: Optional[Cursor], max_bytes: int,
             ended: bool, follow: bool = True, line_overhead: int = 0,
             container: Optional[str] = None) -> Optional[Page]:
        """The lines of ``container``'s log after ``cursor`` (None: the pod's only
        container), about ``max_bytes`` of them (each counted with ``line_overhead`` more
        bytes); None when there is no log to read (not started, or deleted). ``ended``: the
        pod has terminated, so only a final log will do. ``follow``: start following a
        running pod's log if it is not followed yet."""
        follower = self.followers.get(namespace, name)
        if follower is not None and follower.container != container:
            follower = None  # another container's stream: not this log
        if follower is not None:
            page = follower.read(cursor, max_bytes, line_overhead)
            if page is not None and (page.complete or not ended):
                return page
        got = self.reader.page(namespace, name, cursor, max_bytes, ended, container)
        if got is None:
            return None
        text, whole = got
        lines, last, cut = new_lines(text, cursor, max_bytes, ended and whole, line_overhead)
        if follow and not ended and follower is None:
            try:
                self.followers.follow(namespace, name, start_at(cursor, whole), container)
            except Exception as e:  # this fetch is answered anyway; the next one tries again
                log.warning("cannot follow the log of pod %s: %s: %s", name,
                            type(e).__name__, e)
        return Page(lines, last, cut or not whole, ended and whole)

    def stop(self, namespace: str, name: str) -> None:
        self.followers.stop(namespace, name)

    def close(self) -> None:
        self.followers.close()


def start_at(cursor: Optional[Cursor], whole: bool) -> Optional[str]:
    """Where a follow starts (see the module docstring): the cursor's second (None: the log's
    start) when the rest of the log fit one page, else the current second (or the cursor's,
    if that is later: the node's clock may be ahead)."""
    if whole:
        return whole_second(cursor[0]) if cursor else None
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return max(now, whole_second(cursor[0])) if cursor else now
