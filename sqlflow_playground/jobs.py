"""The job service: submit -> token -> fetch with a cursor -> cancel. No HTTP here.

State lives in the store and the job's output on disk (or in the backend), so a
restart or another replica sees every job. Plugins do the work; this service owns
tokens, ownership, quotas, long-polling and the reaper of abandoned and expired jobs.
"""
import asyncio
import collections
import contextlib
import ctypes
import functools
import inspect
import json
import logging
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from .blocking import BlockingRunner
from .errors import (BadRequest, Conflict, NotFound, PlaygroundError, QuotaExceeded,
                     Unavailable)
from .identity import Identity
from .longpoll import REFRESH_S, LongPolls
from .plugins.base import (CANCELLED, FAILED, PENDING, RUNNING, STATUSES, SUCCEEDED, UNKNOWN,
                           TaskContext, TaskState, is_terminal)
from .plugins.output import JsonLines
from .plugins.output import parse_cursor
from .plugins.registry import PluginRegistry
from .sharing import (SHIP_TICK_BYTES, SHIP_TICK_TOTAL_BYTES, forget_mirror, new_output,
                      ship_all_output, sync_mirror)
from .store import READY, Store

log = logging.getLogger(__name__)

MAX_WAIT_S = 30.0
POLL_INTERVAL_S = 0.05  # how often waiting fetches look at their jobs (all in one go)
ORPHAN_GRACE_S = 60.0  # see _remove_orphan_dirs
ENDED_CACHE_SIZE = 4096  # finished jobs whose end is known: see _remembered_end
# Rows of unfinished jobs that any replica answers for (plugins that do not run locally),
# read from the store at most this long ago: a poll uses the row as it is, with no store
# read. A change made through this replica replaces the row at once; a change made through
# another replica (a cancel) is seen here at most ROW_CACHE_S later. See _cached_row.
ROW_CACHE_S = 1.0
ROW_CACHE_SIZE = 4096
# The ship tick (every SHIP_INTERVAL_S) reads a running job whose plugin has a glance only
# when the glance changed since its last read, and at least this often all the same.
SHIP_REFRESH_S = REFRESH_S


@dataclass(frozen=True)
class JobSettings:
    state_dir: str
    fetch_timeout_s: float = 600.0
    job_ttl_s: float = 86400.0
    max_jobs_per_user: int = 8
    max_jobs: int = 256
    fetch_page_bytes: int = 1 << 20
    max_output_bytes: int = 256 << 20  # per job, on disk (0: no limit)
    max_output_bytes_per_user: int = 1 << 30  # all of one user's kept jobs (0: no limit)
    replica: str = ""  # this server's name among replicas sharing the store
    replica_lease_s: float = 30.0  # a replica silent this long is lost, and its jobs end


MAX_FETCH_TIMEOUT_S = 7 * 86400.0


def check_fetch_timeout(value: Any) -> None:
    """400 unless ``value`` is a finite number of seconds in (0, 7 days].

    Whatever the JSON parser lets through: NaN would fail the store, Infinity would make
    job listings invalid JSON, and 1e308 would keep an abandoned job forever."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 < value <= MAX_FETCH_TIMEOUT_S:  # NaN fails every comparison
        raise BadRequest(f"fetch_timeout_s must be a number of seconds greater than 0 and "
                         f"at most {MAX_FETCH_TIMEOUT_S:g} (7 days)")


ENCODE_SLICE = 1000  # responses per json.dumps call: see encode_responses
ENCODE_ON_LOOP_BYTES = 64 << 10  # an async plugin's page smaller than this is encoded inline
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # NaN is not JSON
# (one encoder for all: json.dumps with any non-default argument builds one per call)


def encode_responses(responses: Sequence[Dict[str, Any]]) -> bytes:
    """The compact JSON array of ``responses``.

    Encoded a slice at a time: one json.dumps call holds the GIL throughout, so a page of
    many responses in one call would stall the IOLoop thread however far from it it ran.
    """
    if isinstance(responses, JsonLines):
        return responses.json  # already JSON on disk
    if len(responses) <= ENCODE_SLICE:
        return _ENCODER.encode(responses).encode()
    parts = [_ENCODER.encode(responses[i:i + ENCODE_SLICE])[1:-1]
             for i in range(0, len(responses), ENCODE_SLICE)]
    return ("[" + ",".join(parts) + "]").encode()


# glibc's mallopt(M_MMAP_THRESHOLD, ...): see release_large_buffers
_M_MMAP_THRESHOLD = -3
LARGE_BUFFER_BYTES = 128 << 10  # glibc's own starting threshold, kept from moving


def release_large_buffers(threshold: int = LARGE_BUFFER_BYTES) -> bool:
    """Make glibc map every allocation of ``threshold`` bytes or more on its own and unmap
    it when freed, as it does at start; whether that was done.

    A fetch makes a page-sized buffer per page (its JSON: plugins/output.py
    _clean_page), a download two half-page ones, freed once sent. By default glibc
    raises its threshold to the size of the largest such buffer freed (up to 32 MiB);
    from then on page-sized buffers come from heaps (the IOLoop's, and one per executor
    thread that made one) which keep them once freed. Measured (bench/output.py, 1 MiB
    pages, before the slices): the server's RSS grew by 4-6 pages over a long fetch, of
    which 2 in use. With the threshold fixed it grows by what is in use only. Not done when the operator set MALLOC_MMAP_THRESHOLD_ (theirs
    wins), nor on a C library without mallopt (musl, macOS)."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, threshold) == 1


def _complete(state: TaskState) -> bool:
    """Whether a page needs a second look to tell whether it was the last: the plugin saw
    the job ended and returned responses, but did not say whether more are ready."""
    return is_terminal(state.status) and state.more is None and bool(state.responses)


def _page(get: Callable[..., TaskState], ctx: TaskContext, meta: Dict[str, Any],
          cursor: str) -> TaskState:
    """Blocking: a page of a blocking plugin, with ``more`` known once the job has ended
    (so the fetch that hands over the last of it says eof), encoded for the answer:
    all of it in the one executor call a fetch makes anyway."""
    state = get(ctx, meta, cursor)
    if _complete(state):
        state.more = bool(get(ctx, meta, state.cursor).responses)
    state.encoded = encode_responses(state.responses)
    return state


def _page_async(runner: BlockingRunner, get: Callable[..., Any]):
    """``_page`` for a plugin whose ``get`` is async; a big page is encoded off the loop."""
    async def page(ctx: TaskContext, meta: Dict[str, Any], cursor: str) -> TaskState:
        state = await get(ctx, meta, cursor)
        if _complete(state):
            state.more = bool((await get(ctx, meta, state.cursor)).responses)
        if isinstance(state.responses, JsonLines) \
                or _rough_size(state.responses) < ENCODE_ON_LOOP_BYTES:
            state.encoded = encode_responses(state.responses)
        else:
            state.encoded = await runner.run(encode_responses, state.responses)
        return state
    return page


def _rough_size(responses: Sequence[Dict[str, Any]]) -> int:
    """About how large the JSON of ``responses`` is: their texts' lengths, cheaply."""
    if len(responses) >= 4096:
        return ENCODE_ON_LOOP_BYTES
    return sum(len(r["message"]) + 16
               if isinstance(r, dict) and isinstance(r.get("message"), str) else 256
               for r in responses)


class JobService:
    """Runs jobs through plugins and answers for them by token."""

    def __init__(self, store: Store, registry: PluginRegistry, runner: BlockingRunner,
                 settings: JobSettings, clock: Callable[[], float] = time.time):
        self.store = store
        self.registry = registry
        self.runner = runner
        self.settings = settings
        release_large_buffers()  # fetched pages' buffers go back to the system when freed
        self.clock = clock
        self._fetched: Dict[str, float] = {}  # token -> last fetch, written in batches
        self._submit_lock = asyncio.Lock()
        self._polls = LongPolls(runner, POLL_INTERVAL_S)
        # token -> (summary, cursor at the end of its output) of jobs seen finished and
        # read to the end: immutable until purged, so any replica may remember them.
        self._ended: "collections.OrderedDict[str, tuple]" = collections.OrderedDict()
        # token -> row of the unfinished jobs running in this process: no other replica
        # writes their rows (see _require_here), so the copy here is as good as the store's.
        self._running_here: Dict[str, Dict[str, Any]] = {}
        # token -> (row, when read) of unfinished jobs of plugins that do not run locally:
        # see ROW_CACHE_S and _cached_row. ``row_clock`` times them (tests replace it).
        self._rows: Dict[str, Tuple[Dict[str, Any], float]] = {}
        self.row_clock: Callable[[], float] = time.monotonic
        self._jobs_dir = os.path.join(os.path.abspath(settings.state_dir), "jobs")
        self._async_get: Dict[int, Tuple[Any, bool]] = {}  # see _is_async_get
        # user -> {token: bytes on disk} of their ended jobs: see _output_bytes
        self._ended_bytes: Dict[str, Dict[str, int]] = {}
        # token -> [bytes shipped to the store], of the jobs this replica runs whose output
        # every replica can serve (sharing.py), until all of it is shipped. Tokens are
        # added and removed on the IOLoop only; the count in each one's list is read and
        # written under _ship_lock by the shippers (executor threads), which hold on to
        # the list: a token the loop removes meanwhile is neither looked up again (a
        # KeyError) nor put back.
        self._shipping: Dict[str, List[int]] = {}
        self._ship_lock = threading.Lock()  # one shipper of a job's bytes at a time
        # token -> (glance, when, read to the end) of the ship tick's last read of a job
        # whose plugin has a glance: see _ship_some. Under _ship_lock.
        self._ship_glances: Dict[str, tuple] = {}
        # tokens of jobs whose work is being stopped here: while it dies, what the plugin
        # sees (a runner gone, no status yet) is not the job's end, so the tick waits
        self._stopping: set = set()
        self.boot = secrets.token_hex(8)  # this life of this replica, in its lease
        # The data source a job connects with, from its owner's row: the Gateway sets the
        # playground's (a MySQL host from the current flags, not the stored one).
        self.data_source_of: Callable[[Dict[str, Any]], Optional[str]] = \
            lambda user: user["data_source"]

    # -- requests ------------------------------------------------------------

    async def submit(self, user_id: str, task_type: str, version: Optional[str],
                     spec: Any, fetch_timeout_s: Optional[float] = None) -> Dict[str, Any]:
        version = version or self.registry.latest_version(task_type)
        plugin = self.registry.get(task_type, version)
        self.registry.validate(plugin, spec)
        plugin.check_spec(spec)
        timeout = self.settings.fetch_timeout_s if fetch_timeout_s is None else fetch_timeout_s
        check_fetch_timeout(timeout)
        data_source = None
        if plugin.needs_database:
            user = await self.runner.run(self.store.get_user, user_id)
            if user is None or user["status"] != READY:
                raise Conflict(f"user {user_id!r} has no database yet; call /api/create_db first")
            data_source = self.data_source_of(user)
        token = new_token()
        ctx = TaskContext(token=token, user_id=user_id, workdir=self._workdir(token),
                          data_source=data_source, page_bytes=self.settings.fetch_page_bytes,
                          max_output_bytes=self.settings.max_output_bytes)
        # Outside the lock below: it stats every kept job's files, and is a soft bound
        # anyway (see _output_bytes).
        ctx.max_output_bytes = await self._output_cap(user_id)
        async with self._submit_lock:  # so two submits cannot both take the last slot
            await self._check_quota(user_id)
            now = self.clock()
            os.makedirs(os.path.dirname(ctx.workdir), mode=0o700, exist_ok=True)
            os.makedirs(ctx.workdir, mode=0o700)
            await self.runner.run(
                self.store.insert_job, token=token, user_id=user_id, task_type=task_type,
                version=version, spec=spec, status=PENDING, message="", created_at=now,
                last_fetched_at=now, fetch_timeout_s=float(timeout),
                replica=self.settings.replica)
        try:
            meta = await self.registry.call(plugin.create, ctx, spec)
        except PlaygroundError:
            # The plugin refused the spec: as if the request had never come.
            await self.runner.run(self.store.delete_job, token)
            shutil.rmtree(ctx.workdir, ignore_errors=True)
            raise
        except Exception as e:
            log.exception("job %s (%s/%s) failed to start", token[:8], task_type, version)
            await self.runner.run(self.store.update_job, token, status=FAILED,
                                  message=f"could not start: {type(e).__name__}: {e}",
                                  finished_at=self.clock())
            return {"token": token, "status": FAILED}
        await self.runner.run(self.store.update_job, token, meta=meta)
        if _shippable(plugin):
            self._shipping[token] = [0]
        job = await self.runner.run(self.store.get_job, token)
        job, _ = await self._observe(job, "", 0)  # PENDING until the plugin says RUNNING
        self._keep(job)
        log.info("job %s… %s/%s submitted by %s", token[:8], task_type, version, user_id)
        return {"token": token, "status": job["status"]}

    async def fetch(self, viewer: Identity, token: str, since: str = "",
                    wait: float = 0.0) -> Dict[str, Any]:
        """The job's status and the responses after ``since``; with ``wait``, hold the
        request until there is something new or ``wait`` seconds have passed."""
        answer, state = await self._fetch(viewer, token, since, wait)
        return {**answer, "responses": list(state.responses)}

    async def fetch_body(self, viewer: Identity, token: str, since: str = "",
                         wait: float = 0.0) -> bytes:
        """``fetch``'s answer as its JSON body (``fetch_parts``, joined)."""
        return b"".join(await self.fetch_parts(viewer, token, since, wait))

    async def fetch_parts(self, viewer: Identity, token: str, since: str = "",
                          wait: float = 0.0) -> Tuple[bytes, Any, bytes]:
        """``fetch``'s answer as its JSON body in three parts to send one after the other:
        the head (status, cursor, ``,"responses":``), the responses, ``}``. The responses,
        up to a page of them, were encoded off the IOLoop by the same executor call that
        read them (see _page), and are handed over as they are (a bytearray of a clean
        text page: no copy is made of a page here; see handlers/jobs.py)."""
        answer, state = await self._fetch(viewer, token, since, wait)
        encoded = state.encoded
        if encoded is None:  # no page was read: nothing, or the status alone
            encoded = encode_responses(state.responses)
        head = _ENCODER.encode(answer).encode()
        return head[:-1] + b',"responses":', encoded, b"}"

    async def open_output(self, viewer: Identity, token: str,
                          byte_range: Optional[str] = None) -> "Download":
        """The job's output file as it is, for ``GET /api/jobs/{token}/output``: the
        bytes from the start of ``byte_range`` (an HTTP Range header, ``bytes=N-`` or
        ``bytes=N-M``; None: all) to its end or to the file's size now, whichever comes
        first. Visible as a fetch is (another user's job: 404), and counts as a fetch.
        Only for task types whose output is one file (``output_file``: process, sql,
        sqlflow); others: 409. Nothing is read here: see ``Download.read_into``."""
        job = await self.runner.run(self._visible_job_sync, viewer, token)
        plugin = self.registry.get(job["task_type"], job["version"])
        if plugin.output_file is None:
            raise Conflict(f"{job['task_type']} jobs have no output file to download: "
                           f"fetch their output with GET /api/jobs/{token}")
        path = os.path.join(self._workdir(token), plugin.output_file)
        remote = plugin.runs_locally and job["replica"] != self.settings.replica
        if remote:  # run by another replica: what it shipped to the store, mirrored here
            size = job.get("output_size")
            if size is None:
                size = await self.runner.run(self.store.shipped_size, token)
        else:
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                size = 0
        start, stop = parse_byte_range(byte_range, size)
        self._fetched[token] = self.clock()
        return Download(path, start, stop, size, byte_range is not None,
                        self.store if remote else None, token)

    def _visible_job_sync(self, viewer: Identity, token: str) -> Dict[str, Any]:
        return self._check_visible(viewer, self.store.get_job(token) if token else None)

    async def _fetch(self, viewer: Identity, token: str, since: str,
                     wait: float) -> Tuple[Dict[str, Any], TaskState]:
        """(the answer without its responses, the state holding them)."""
        if not 0 <= wait <= MAX_WAIT_S:
            raise BadRequest(f"wait must be between 0 and {MAX_WAIT_S:g} seconds")
        ended = self._remembered_end(viewer, token)
        if ended is not None and ended[1] == since:
            # Finished and read to its end: nothing new can come; no store, no plugin.
            self._fetched[token] = self.clock()
            return ({**ended[0], "next": since, "eof": True},
                    TaskState(status=ended[0]["status"], cursor=since))
        stored, probe, seen = await self._look(viewer, token, since,
                                               self.settings.fetch_page_bytes)
        self._fetched[token] = self.clock()
        job, state = await self._settle(stored, seen, since)
        if wait > 0 and probe is not None and not self._is_news(stored, seen):
            news = await self._polls.wait(probe.fn, probe.blocking,
                                          functools.partial(self._is_news, job), wait,
                                          glance=probe.glance, key=probe.key,
                                          glance_key=token if probe.glance else None)
            if news is not None:
                seen = news
                job, state = await self._settle(job, seen, since)
        eof = is_terminal(state.status) and state.more is not True \
            and (state.more is False or not state.responses)
        if eof and seen is not None and is_terminal(seen.status):
            self._remember_end(job, state.cursor)
        return {**self._summary(job), "next": state.cursor, "eof": eof}, state

    async def status(self, viewer: Identity, token: str) -> Dict[str, Any]:
        """The job's status without its output (counts as a fetch)."""
        ended = self._remembered_end(viewer, token)
        if ended is not None:
            self._fetched[token] = self.clock()
            return dict(ended[0])
        stored, _, seen = await self._look(viewer, token, "", 0)
        self._fetched[token] = self.clock()
        job, _ = await self._settle(stored, seen, "")
        return self._summary(job)

    async def cancel(self, viewer: Identity, token: str,
                     reason: str = "cancelled by the user") -> Dict[str, Any]:
        """Stop the job. Cancelling a finished job changes nothing."""
        job = await self._visible_job(viewer, token)
        job = await self._cancel(job, reason)
        return self._summary(job)

    async def list(self, user_id: Optional[str], status: Optional[str]) -> List[Dict[str, Any]]:
        if status is not None and status not in STATUSES:
            raise BadRequest(f"status must be one of {', '.join(STATUSES)}")
        jobs = await self.runner.run(self.store.list_jobs, user_id, status)
        return [self._summary(j) for j in jobs]

    # -- background work -------------------------------------------------------

    async def recover(self) -> None:
        """At start-up: jobs whose work died with the previous process become FAILED."""
        active = await self.runner.run(self.store.active_jobs)
        ended = others = 0
        for job in active:
            try:
                plugin = self.registry.get(job["task_type"], job["version"])
            except NotFound:
                await self._finish(job, UNKNOWN, "its task type is no longer available")
                ended += 1
                continue
            if plugin.runs_locally and job["replica"] != self.settings.replica:
                others += 1
                continue  # another replica's job: it is not ours to judge
            if job["meta"] is None:
                await self._finish(job, FAILED, "the server stopped before the job started")
                ended += 1
                continue
            message = await self.registry.call(plugin.recover, self._context(job), job["meta"])
            if message:
                await self._finish(job, FAILED, message)
                ended += 1
        log.info("recovery: %d unfinished job(s) in the store: %d ended (their work did not "
                 "survive the last stop), %d still running, %d left to other replicas",
                 len(active), ended, len(active) - ended - others, others,
                 extra={"fields": {"event": "jobs_recovered", "unfinished": len(active),
                                   "ended": ended, "others": others}})

    async def reap(self) -> Dict[str, int]:
        """Cancel abandoned jobs, refresh the status of active ones, purge expired ones.
        Returns how many jobs it cancelled and purged (for the metrics)."""
        await self.flush_fetches()
        now = self.clock()
        done = {"cancelled_job": 0, "purged_job": 0}
        for job in await self.runner.run(self.store.abandoned_jobs, now):
            if job["token"] in self._fetched or not self._is_here(job):
                continue  # fetched since the flush above, or its own server's to reap
            done["cancelled_job"] += await self._each(job, self._cancel(
                job, f"cancelled: not fetched for {job['fetch_timeout_s']:g}s (fetch_timeout_s)",
                claim_first=True))
        for job in await self.runner.run(self.store.active_jobs):
            if self._is_here(job):
                await self._each(job, self._observe(job, "", 0))
        for job in await self.runner.run(self.store.expired_jobs, now - self.settings.job_ttl_s):
            done["purged_job"] += await self._each(job, self._purge(job))
        done["removed_orphan_job_dir"] = await self.runner.run(self._remove_orphan_dirs)
        if any(done.values()):
            log.info("job reaper: cancelled %d abandoned job(s), purged %d expired job(s), "
                     "removed %d orphaned job directory(ies)", done["cancelled_job"],
                     done["purged_job"], done["removed_orphan_job_dir"],
                     extra={"fields": {"event": "jobs_reaped", **done}})
        return done

    async def close(self) -> None:
        """At shutdown: waiting fetches answer now rather than hold the server up; the
        jobs this replica runs are ended, FAILED with a message saying why (no other replica
        can take over work that runs inside this one), their output shipped; the lease
        is given up."""
        await self._polls.close()
        running = [job for job in self._running_here.values() if job["meta"] is not None]
        if running:
            message = (f"the server running this job (replica {self.settings.replica!r}) "
                       "stopped; its output up to then is kept")
            await asyncio.gather(*(self._each(job, self._stop_here(job, message))
                                   for job in running))
        try:
            await self.runner.run(self.store.drop_lease, self.settings.replica, self.boot)
        except Exception:
            log.exception("giving up this replica's lease failed; it expires by itself")

    async def _stop_here(self, job: Dict[str, Any], message: str) -> None:
        with self._stopping_work(job["token"]):
            await self._kill_here(job)
            await self._finish(job, FAILED, message)

    @contextlib.contextmanager
    def _stopping_work(self, token: str):
        """While a job's work is stopped here and its end recorded, the ship tick leaves
        it alone: a runner gone before its status is written is not the job's end."""
        self._stopping.add(token)
        try:
            yield
        finally:
            self._stopping.discard(token)

    async def _kill_here(self, job: Dict[str, Any]) -> None:
        """Stop the work of a job that runs in this replica (plugin.delete: idempotent)."""
        plugin = self.registry.get(job["task_type"], job["version"])
        user = await self.runner.run(self.store.get_user, job["user_id"])
        ctx = self._context(job, data_source=self.data_source_of(user) if user else None)
        await self.registry.call(plugin.delete, ctx, job["meta"])

    # -- replicas ------------------------------------------------------------------

    async def renew_lease(self) -> None:
        """Tell the other replicas this one is alive (every RENEW_INTERVAL_S)."""
        await self.runner.run(self.store.renew_lease, self.settings.replica, self.boot,
                              self.clock() + self.settings.replica_lease_s)

    async def ship(self) -> None:
        """Every SHIP_INTERVAL_S: send the new output of the jobs this replica runs to the
        store, notice those that ended (and record them, with all their output), and act
        on verdicts other replicas wrote (a cancel: the work is stopped here)."""
        if not self._shipping:
            return
        tokens = list(self._shipping)
        statuses, seen = await self.runner.run(self._ship_some, tokens)
        for token in tokens:
            if token not in self._shipping:
                continue  # concluded meanwhile
            status = statuses.get(token)
            try:
                if status is None:  # purged
                    self._shipping.pop(token, None)
                elif is_terminal(status):
                    await self._conclude(token)
                elif token in seen and token in self._running_here \
                        and token not in self._stopping:
                    await self._settle(self._running_here[token], seen[token], "")
            except Exception:
                log.exception("shipping job %s… failed; will retry", token[:8])

    def _ship_some(self, tokens: List[str]):
        """Blocking: ship what each job wrote since the last tick; the store's status of
        each; and what each plugin sees of its job (status only). A job whose plugin has a
        glance that has not changed since a read that reached the end of its output (less
        than SHIP_REFRESH_S ago) is not read: it wrote nothing and did not end."""
        seen: Dict[str, TaskState] = {}
        with self._ship_lock:  # all new output in one transaction, bounded in size
            chunks, budget = [], SHIP_TICK_TOTAL_BYTES
            shipped: Dict[str, List[int]] = {}
            glances, now = self._ship_glances, time.monotonic()
            for token in [t for t in glances if t not in self._shipping]:
                del glances[token]
            for token in tokens:
                job = self._running_here.get(token)
                shipped_so_far = self._shipping.get(token)
                if job is None or shipped_so_far is None or budget <= 0:
                    continue
                plugin = self.registry.get(job["task_type"], job["version"])
                ctx = self._context(job)
                glanced = self._ship_glance(plugin, ctx, job["meta"])
                last = glances.get(token)
                if glanced is not None and last is not None and last[0] == glanced \
                        and last[2] and now - last[1] < SHIP_REFRESH_S:
                    continue  # nothing written nor ended since the last read to the end
                if not inspect.iscoroutinefunction(plugin.get):
                    seen[token] = plugin.get(ctx, job["meta"], "")
                limit = min(SHIP_TICK_BYTES, budget)
                new = new_output(os.path.join(self._workdir(token), plugin.output_file),
                                 shipped_so_far[0], limit)
                read = sum(len(data) for _, data in new)
                chunks += [(token, offset, data) for offset, data in new]
                budget -= read
                shipped[token] = shipped_so_far
                if glanced is not None:  # taken before the reads: a later change shows
                    glances[token] = (glanced, now, read < limit)
            self.store.append_output(chunks)
            for token, offset, data in chunks:
                shipped[token][0] = offset + len(data)
        return self.store.job_statuses(tokens), seen

    @staticmethod
    def _ship_glance(plugin, ctx: TaskContext, meta: Dict[str, Any]) -> Any:
        """Blocking: the plugin's glance at the job (see TaskPlugin.glance), or None when
        it has none or it failed (then the job is read)."""
        glance = getattr(plugin, "glance", None)
        if glance is None or inspect.iscoroutinefunction(plugin.get):
            return None
        try:
            return glance(ctx, meta)
        except Exception:
            return None

    def _ship_rest(self, job: Dict[str, Any]) -> int:
        """Blocking: ship all of the job's output not shipped yet; the output's size."""
        plugin = self.registry.get(job["task_type"], job["version"])
        token = job["token"]
        with self._ship_lock:
            shipped = self._shipping.get(token)
            # None: e.g. at recover(), after a restart
            start = self.store.shipped_size(token) if shipped is None else shipped[0]
            size = ship_all_output(self.store, token,
                                   os.path.join(self._workdir(token), plugin.output_file),
                                   start)
            if shipped is not None:
                shipped[0] = size
            return size

    async def _conclude(self, token: str) -> None:
        """A job this replica runs was ended in the store (by another replica, or the
        reaper): stop its work here, ship the rest of its output, say all of it is there."""
        job = await self.runner.run(self.store.get_job, token)
        if job is not None and job["meta"] is not None:
            with self._stopping_work(token):
                await self._kill_here(job)
            size = await self.runner.run(self._ship_rest, job)
            await self.runner.run(self.store.update_job, token, output_size=size)
            job = {**job, "output_size": size}
        self._shipping.pop(token, None)
        self._running_here.pop(token, None)
        self._keep(job)

    async def end_lost_jobs(self) -> int:
        """End the jobs of replicas whose lease ran out: FAILED naming the replica. Their
        output up to then (what was shipped) stays fetchable from every replica."""
        kinds = [(p.task_type, p.version) for p in self.registry.plugins() if p.runs_locally]
        if not kinds:
            return 0
        now, ended = self.clock(), 0
        for job in await self.runner.run(self.store.jobs_of_lost_replicas, now, kinds):
            if job["replica"] == self.settings.replica:
                continue  # ours: recover() and the shipping tick answer for them
            size = await self.runner.run(self.store.shipped_size, job["token"])
            message = (f"the server running this job (replica {job['replica']!r}) was lost: "
                       f"no sign of life for {self.settings.replica_lease_s:g}s; its output "
                       "up to then is kept")
            if await self.runner.run(self.store.update_job, job["token"], True, status=FAILED,
                                     message=message, finished_at=now, output_size=size):
                log.warning("job %s… ended: replica %s was lost", job["token"][:8],
                            job["replica"])
                self._log_end(job, FAILED, now, f": replica {job['replica']} was lost")
                ended += 1
        return ended

    async def flush_fetches(self) -> None:
        if self._fetched:
            fetched, self._fetched = self._fetched, {}
            await self.runner.run(self.store.touch_jobs, fetched)

    # -- internals ---------------------------------------------------------------

    async def _each(self, job: Dict[str, Any], work) -> bool:
        try:
            await work
            return True
        except Exception:
            # One bad job must not stop the sweep; the next sweep tries again.
            log.exception("job reaper: job %s… failed", job["token"][:8])
            return False

    async def _visible_job(self, viewer: Identity, token: str) -> Dict[str, Any]:
        job = await self.runner.run(self.store.get_job, token) if token else None
        return self._check_visible(viewer, job)

    @staticmethod
    def _check_visible(viewer: Identity, job: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        if job is None or not (viewer.is_frontend or job["user_id"] == viewer.name):
            raise NotFound("no such job")  # the same answer for "not yours": no probing
        return job

    async def _check_quota(self, user_id: str) -> None:
        for job in await self.runner.run(self.store.active_jobs, user_id):
            if self._is_here(job):
                await self._observe(job, "", 0)  # finished but never fetched: not counted
        mine = await self.runner.run(self.store.count_active_jobs, user_id)
        if mine >= self.settings.max_jobs_per_user:
            raise QuotaExceeded(f"user {user_id!r} already has {mine} unfinished jobs "
                                f"(max_jobs_per_user={self.settings.max_jobs_per_user})")
        total = await self.runner.run(self.store.count_active_jobs)
        if total >= self.settings.max_jobs:
            raise QuotaExceeded(f"the server is running {total} jobs "
                                f"(max_jobs={self.settings.max_jobs}); try again later")

    async def _output_cap(self, user_id: str) -> int:
        """How many bytes of output a new job of ``user_id`` may write (0: no limit):
        ``max_output_bytes``, or less when the user's kept jobs hold nearly
        ``max_output_bytes_per_user``; 429 when they hold all of it."""
        per_job, per_user = self.settings.max_output_bytes, self.settings.max_output_bytes_per_user
        if per_user <= 0:
            return per_job
        used = await self.runner.run(self._output_bytes, user_id)
        if used >= per_user:
            raise QuotaExceeded(
                f"user {user_id!r} keeps {used} bytes of job output "
                f"(max_output_bytes_per_user={per_user}); finished jobs free theirs when "
                f"they expire, job_ttl_s={self.settings.job_ttl_s:g}s after they finish")
        return min(per_job, per_user - used) if per_job > 0 else per_user - used

    def _output_bytes(self, user_id: str) -> int:
        """Blocking: the bytes the files of ``user_id``'s kept jobs take on this server.

        The files directly in each job's directory (output, status; not what a process job
        leaves in ``work/``, each file of which RLIMIT_FSIZE bounds), stat'ed once the job
        has ended (its ``status.json`` is written last), remembered after: with 1,000 kept
        jobs, one store query and a dict look-up each, ~30 ms the first time. Jobs kept by
        other replicas have their files there. Unfinished jobs count what they wrote so
        far, so jobs running at once may together pass the bound by what each may still
        write (at most max_jobs_per_user x max_output_bytes)."""
        known = self._ended_bytes.get(user_id, {})
        ended: Dict[str, int] = {}
        total = 0
        for token in self.store.job_tokens_of(user_id):
            size = known.get(token)
            if size is None:
                size, done = _dir_bytes(self._workdir(token))
                if done:
                    ended[token] = size
            else:
                ended[token] = size
            total += size
        self._ended_bytes[user_id] = ended  # purged jobs drop out here
        return total

    def _probe(self, job: Dict[str, Any], cursor: str, max_bytes: int) -> Optional["Probe"]:
        """The plugin's ``get`` for this job, bound to its arguments; None if the job has
        not started (yet): there is nothing to ask."""
        if job["meta"] is None:
            return None
        plugin = self.registry.get(job["task_type"], job["version"])
        # Probes of one job from one cursor give the same answer: waiting fetches share one.
        key = (job["token"], cursor, max_bytes)
        if plugin.runs_locally and job["replica"] != self.settings.replica \
                and _shippable(plugin):
            return Probe(self._remote_probe(job, plugin, cursor, max_bytes), True,
                         key=("remote", *key))
        self._require_here(plugin, job)
        ctx = self._context(job, max_bytes=max_bytes)
        if self._is_async_get(plugin):
            get = _page_async(self.runner, plugin.get) if max_bytes > 0 else plugin.get
            return Probe(functools.partial(get, ctx, job["meta"], cursor), False, key=key)
        get = functools.partial(_page, plugin.get) if max_bytes > 0 else plugin.get
        glance = getattr(plugin, "glance", None)
        return Probe(functools.partial(get, ctx, job["meta"], cursor), True,
                     functools.partial(glance, ctx, job["meta"]) if glance else None, key)

    def _is_async_get(self, plugin) -> bool:
        """``inspect.iscoroutinefunction(plugin.get)``, asked once per plugin (a poll asks)."""
        known = self._async_get.get(id(plugin))
        if known is None or known[0] is not plugin:
            known = self._async_get[id(plugin)] = (plugin,
                                                   inspect.iscoroutinefunction(plugin.get))
        return known[1]

    def _remote_probe(self, job: Dict[str, Any], plugin, cursor: str,
                      max_bytes: int) -> Callable[[], TaskState]:
        """``_remote_page`` as a probe: the first look uses ``job``, the row just read
        from the store; a long poll's later looks read it again, for news."""
        first = [job]

        def page() -> TaskState:
            row = first.pop() if first else (self.store.get_job(job["token"]) or job)
            return self._remote_page(row, plugin, cursor, max_bytes)
        return page

    def _remote_page(self, row: Dict[str, Any], plugin, cursor: str,
                     max_bytes: int) -> TaskState:
        """Blocking: a page of a job another replica runs, from the output it shipped
        (mirrored here, read by the plugin's own reader), its status from ``row``."""
        state = TaskState(status=row["status"], message=row["message"], cursor=cursor,
                          outputs=row["outputs"] or {})
        state.from_store = row
        if max_bytes <= 0:
            return state
        offset, final = parse_cursor(cursor), row.get("output_size")
        shipped = final if final is not None else self.store.shipped_size(row["token"])
        if offset > shipped:
            if final is not None:
                raise BadRequest(f"invalid cursor {cursor!r}: beyond the end of the output")
            # A cursor the running replica gave: its bytes are not all shipped yet.
            state.more = True if is_terminal(row["status"]) else None
            state.encoded = encode_responses([])
            return state
        path = os.path.join(self._workdir(row["token"]), plugin.output_file)
        size = sync_mirror(self.store, row["token"], path, shipped, offset + max_bytes + 1)
        complete = final is not None and size >= final
        responses, state.cursor, more = plugin.read_output(
            self._context(row, max_bytes=max_bytes), cursor, complete)
        # Not all shipped yet: an ended job has more to come; a running one may.
        state.more = more if complete else (True if is_terminal(row["status"]) else None)
        state.responses, state.encoded = responses, encode_responses(responses)
        return state

    def _load(self, viewer: Identity, token: str, cursor: str, max_bytes: int):
        """Blocking: the job (checked visible to ``viewer``), the probe of its plugin and,
        if that probe is blocking too, its observation: a fetch's one trip to the executor."""
        job = self._check_visible(viewer, self.store.get_job(token) if token else None)
        probe = self._probe(job, cursor, max_bytes)
        return job, probe, probe.fn() if probe is not None and probe.blocking else None

    async def _look(self, viewer: Identity, token: str, cursor: str, max_bytes: int):
        """(row, probe, what the plugin saw): the row from memory for a job running here
        or recently read (see _cached_row), else from the store together with a blocking
        plugin's answer (see _load)."""
        job = self._running_here.get(token) or self._cached_row(token)
        if job is not None:
            self._check_visible(viewer, job)
            probe = self._probe(job, cursor, max_bytes)
            return job, probe, await self._ask(probe)
        job, probe, seen = await self.runner.run(self._load, viewer, token, cursor, max_bytes)
        self._keep(job)
        if probe is not None and not probe.blocking:
            seen = await probe.fn()
        return job, probe, seen

    def _cached_row(self, token: str) -> Optional[Dict[str, Any]]:
        """The row of an unfinished job any replica answers for, if read from the store (or
        written by this replica) less than ROW_CACHE_S ago; else None (and forgotten).

        What the plugin says is still asked at every poll (its job changes by itself, and
        a change it reports is recorded as before: a conditional update, so a row another
        replica ended is read again then). What this saves is the store read, and with an
        async plugin the executor trip. What it may hide for at most ROW_CACHE_S is a
        verdict another replica wrote to the store without the plugin noticing: a cancel.
        """
        entry = self._rows.get(token)
        if entry is None:
            return None
        if self.row_clock() - entry[1] >= ROW_CACHE_S:
            del self._rows[token]
            return None
        return entry[0]

    async def _ask(self, probe: Optional["Probe"]) -> Optional[TaskState]:
        if probe is None:
            return None
        return await (self.runner.run(probe.fn) if probe.blocking else probe.fn())

    async def _observe(self, job: Dict[str, Any], cursor: str, max_bytes: int):
        """Ask the plugin how the job is doing; record a status change in the store."""
        return await self._settle(job, await self._ask(self._probe(job, cursor, max_bytes)),
                                  cursor)

    async def _settle(self, job: Dict[str, Any], seen: Optional[TaskState], cursor: str):
        """Reconcile what the plugin saw with the store: the job and the state to answer."""
        if seen is None:
            return job, TaskState(status=job["status"], message=job["message"], cursor=cursor)
        from_store = getattr(seen, "from_store", None)
        if from_store is not None:  # another replica's job: the store is the truth
            return from_store, seen
        state = seen
        if is_terminal(job["status"]):
            # The service's verdict (cancelled, failed at restart) stands; output still flows.
            state = TaskState(**vars(seen))  # a copy: the plugin's object stays as it said
            state.status, state.message = job["status"], job["message"]
            state.outputs = job["outputs"] or state.outputs
        elif state.status != job["status"] or state.message != job["message"]:
            job = await self._record(job, state)
        return job, state

    @staticmethod
    def _is_news(job: Dict[str, Any], seen: Optional[TaskState]) -> bool:
        """Whether a waiting fetch should answer: what the plugin saw differs from ``job``
        as the store had it, or the job is over."""
        return seen is None or bool(seen.responses) or seen.status != job["status"] \
            or is_terminal(seen.status) or is_terminal(job["status"])

    def _remembered_end(self, viewer: Identity, token: str) -> Optional[tuple]:
        """(summary, cursor at the end of its output) of a job seen finished and read to
        its end, if visible to ``viewer``. A cache of immutable rows, valid until the job
        may have been purged, by any replica (``job_ttl_s`` after it finished)."""
        ended = self._ended.get(token)
        if ended is None or not self._still_kept(ended[0]):
            return None
        self._check_visible(viewer, ended[0])
        self._ended.move_to_end(token)
        return ended

    def _remember_end(self, job: Dict[str, Any], end: str) -> None:
        summary = self._summary(job)
        if summary["finished_at"] is None:
            return
        self._ended[job["token"]] = (summary, end)
        self._ended.move_to_end(job["token"])
        while len(self._ended) > ENDED_CACHE_SIZE:
            self._ended.popitem(last=False)

    def _still_kept(self, summary: Dict[str, Any]) -> bool:
        return self.clock() - summary["finished_at"] < self.settings.job_ttl_s

    async def _record(self, job: Dict[str, Any], state: TaskState) -> Dict[str, Any]:
        self._rows.pop(job["token"], None)  # whatever happens below, ask the store next
        values: Dict[str, Any] = {"status": state.status, "message": state.message}
        if is_terminal(state.status):
            values.update(finished_at=self.clock(), outputs=state.outputs)
            if job["started_at"] is None and state.status in (SUCCEEDED, FAILED) \
                    and job["meta"] is not None:
                # Seen ended without ever being seen running (it was quick): it ran.
                values["started_at"] = values["finished_at"]
        elif state.status == RUNNING and job["started_at"] is None:
            values["started_at"] = self.clock()
        shipping = is_terminal(state.status) and self._ships_here(job)
        if shipping:  # all the output in the store before the row says the job ended
            values["output_size"] = await self.runner.run(self._ship_rest, job)
        if await self.runner.run(self.store.update_job, job["token"], True, **values):
            if shipping:
                self._shipping.pop(job["token"], None)
            self._log_change(job, values)
            job = {**job, **values}
        else:  # someone else did
            job = await self.runner.run(self.store.get_job, job["token"])
        self._keep(job)
        return job

    def _log_change(self, job: Dict[str, Any], values: Dict[str, Any]) -> None:
        """A job's start and end, once each (the store's conditional update decided)."""
        status = values.get("status")
        if status == RUNNING and job["started_at"] is None and values.get("started_at"):
            log.info("job %s… started (%s/%s, user %s)", job["token"][:8], job["task_type"],
                     job["version"], job["user_id"],
                     extra={"fields": self._event("job_started", job)})
        if status is not None and is_terminal(status) and not is_terminal(job["status"]):
            self._log_end({**job, **values}, status, values.get("finished_at"))

    def _log_end(self, job: Dict[str, Any], status: str, finished_at: Optional[float],
                 how: str = "") -> None:
        """One line per job end: status, time since submit, and time running. Never the
        job's message (an error may quote the tenant's data)."""
        finished = finished_at or self.clock()
        total = max(0.0, finished - job["created_at"])
        running = max(0.0, finished - job["started_at"]) if job.get("started_at") else None
        log.info("job %s… ended %s after %.2fs%s (%s/%s, user %s)%s", job["token"][:8],
                 status, total, f", {running:.2f}s running" if running is not None else "",
                 job["task_type"], job["version"], job["user_id"], how,
                 extra={"fields": self._event("job_ended", job, status=status,
                                              duration_s=round(total, 3),
                                              running_s=None if running is None
                                              else round(running, 3))})

    @staticmethod
    def _event(event: str, job: Dict[str, Any], **more: Any) -> Dict[str, Any]:
        return {"event": event, "job": job["token"][:8], "task_type": job["task_type"],
                "user_id": job["user_id"], **more}

    async def _finish(self, job: Dict[str, Any], status: str, message: str,
                      outputs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return await self._record(job, TaskState(status=status, message=message,
                                                 outputs=outputs or {}))

    async def _cancel(self, job: Dict[str, Any], reason: str,
                      claim_first: bool = False) -> Dict[str, Any]:
        """Stop the job's work and mark it CANCELLED.

        The reaper claims the job in the store first (a conditional update), so that of
        several replicas reaping at once exactly one stops the work. A user's cancel stops
        the work first, so that a failure to stop it is the user's error to see.
        """
        self._rows.pop(job["token"], None)
        if is_terminal(job["status"]):
            return job
        plugin = self.registry.get(job["task_type"], job["version"])
        if plugin.runs_locally and job["replica"] != self.settings.replica \
                and _shippable(plugin):
            # Another replica runs it: the store's verdict reaches it on its next ship tick.
            if not await self.runner.run(self.store.update_job, job["token"], True,
                                         status=CANCELLED, message=reason,
                                         finished_at=self.clock()):
                return await self.runner.run(self.store.get_job, job["token"])
            self._log_end(job, CANCELLED, None, f" on replica {job['replica']}'s behalf")
            log.info("job %s… cancelled on replica %s's behalf: %s", job["token"][:8],
                     job["replica"], reason)
            return await self.runner.run(self.store.get_job, job["token"])
        if claim_first:
            self._running_here.pop(job["token"], None)
            won = await self.runner.run(self.store.update_job, job["token"], True,
                                        status=CANCELLED, message=reason,
                                        finished_at=self.clock())
            if not won:  # another replica, or the job itself, got there first
                return await self.runner.run(self.store.get_job, job["token"])
            self._log_end(job, CANCELLED, None)
        if job["meta"] is not None:
            self._require_here(plugin, job)
            with self._stopping_work(job["token"]):
                await self._kill_here(job)
                if not claim_first:
                    job = await self._finish(job, CANCELLED, reason)
        elif not claim_first:
            job = await self._finish(job, CANCELLED, reason)
        log.info("job %s… cancelled: %s", job["token"][:8], reason)
        return job

    def _keep(self, job: Optional[Dict[str, Any]]) -> None:
        """Remember the row of an unfinished job running here, or (for ROW_CACHE_S) of an
        unfinished job any replica answers for; forget any other. ``job`` is the row as
        the store has it now: just read, or just written."""
        if job is None:
            return
        token = job["token"]
        self._rows.pop(token, None)
        try:
            local = self.registry.get(job["task_type"], job["version"]).runs_locally
        except NotFound:
            self._running_here.pop(token, None)
            return
        if job["meta"] is None or is_terminal(job["status"]):
            self._running_here.pop(token, None)
        elif not local:
            self._rows[token] = (job, self.row_clock())
            if len(self._rows) > ROW_CACHE_SIZE:
                del self._rows[next(iter(self._rows))]  # the one read longest ago
        elif job["replica"] == self.settings.replica:
            self._running_here[token] = job
        else:
            self._running_here.pop(token, None)

    def _ships_here(self, job: Dict[str, Any]) -> bool:
        """Whether this replica runs ``job`` and ships its output (not all shipped yet)."""
        if job["replica"] != self.settings.replica or job.get("output_size") is not None \
                or job["meta"] is None:
            return False
        try:
            return _shippable(self.registry.get(job["task_type"], job["version"]))
        except NotFound:
            return False

    def _is_here(self, job: Dict[str, Any]) -> bool:
        try:
            plugin = self.registry.get(job["task_type"], job["version"])
        except NotFound:
            return False
        return not plugin.runs_locally or job["replica"] == self.settings.replica

    def _require_here(self, plugin, job: Dict[str, Any]) -> None:
        """Work that runs inside a server can only be followed from that server."""
        if plugin.runs_locally and job["replica"] != self.settings.replica:
            raise Unavailable(f"this {job['task_type']} job runs on replica "
                              f"{job['replica']!r}; ask that server")

    async def _purge(self, job: Dict[str, Any]) -> None:
        self._ended.pop(job["token"], None)
        self._rows.pop(job["token"], None)
        await self.runner.run(self.store.delete_job, job["token"])
        await self.runner.run(shutil.rmtree, self._workdir(job["token"]), True)
        forget_mirror(job["token"])

    def _remove_orphan_dirs(self) -> int:
        """Blocking: delete this server's job directories whose job has no row any more.

        Any replica may purge an expired job's row, but the job's files live on the server
        that took it, which must then clean up by itself. A directory changed within
        ORPHAN_GRACE_S is left alone: a job being submitted has its directory before its row.
        """
        root = self._jobs_dir
        try:
            names = os.listdir(root)
        except FileNotFoundError:
            return 0
        unknown = set(names) - self.store.known_job_tokens(names) if names else set()
        removed, cutoff = 0, time.time() - ORPHAN_GRACE_S
        for name in unknown:
            path = os.path.join(root, name)
            try:
                if os.stat(path).st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        return removed

    def _workdir(self, token: str) -> str:
        return os.path.join(self._jobs_dir, token)

    def _context(self, job: Dict[str, Any], data_source: Optional[str] = None,
                 max_bytes: int = 0) -> TaskContext:
        return TaskContext(token=job["token"], user_id=job["user_id"],
                           workdir=self._workdir(job["token"]), data_source=data_source,
                           max_bytes=max_bytes, page_bytes=self.settings.fetch_page_bytes,
                           max_output_bytes=self.settings.max_output_bytes)

    @staticmethod
    def _summary(job: Dict[str, Any]) -> Dict[str, Any]:
        return {key: job[key] for key in (
            "token", "user_id", "task_type", "version", "status", "message", "outputs",
            "created_at", "started_at", "finished_at", "fetch_timeout_s")}


def _dir_bytes(path: str) -> Tuple[int, bool]:
    """(bytes in the files directly in ``path``, whether its job had ended when read)."""
    total, ended = 0, False
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
                    ended = ended or entry.name == "status.json"
    except FileNotFoundError:
        pass
    return total, ended


def new_token() -> str:
    """192 random bits, URL-safe, never starting with '-' (a command line would take the
    token for an option: ``client fetch -Xq…``)."""
    while True:
        token = secrets.token_urlsafe(24)
        if not token.startswith("-"):
            return token


def _shippable(plugin) -> bool:
    """Whether the plugin's jobs run in one replica and can be served by every replica."""
    return plugin.runs_locally and plugin.output_file is not None


class RangeNotSatisfiable(PlaygroundError):
    """A download's Range starts at or past the end of the output (HTTP 416)."""

    status, code = 416, "range_not_satisfiable"

    def __init__(self, message: str, size: int):
        super().__init__(message)
        self.size = size


MAX_RANGE_HEADER = 64
READ_AHEAD_BYTES = 8 << 20  # how far ahead of a download the kernel is asked to read: see Download


def parse_byte_range(header: Optional[str], size: int) -> Tuple[int, int]:
    """(first byte, end) of a download of an output of ``size`` bytes, from its Range
    header: None (everything), ``bytes=N-`` or ``bytes=N-M`` (M included, cut at the
    size). Other forms (several ranges, a suffix ``bytes=-N``, other units) are refused
    (400) rather than ignored: a client resuming a download must not get the whole
    output again unawares. A start at or past the end is 416 (but ``bytes=0-`` of an
    empty output is an empty answer: the output may not have begun)."""
    if header is None:
        return 0, size
    value = header.strip()
    first, sep, last = value[6:].partition("-") if value[:6].lower() == "bytes=" \
        else ("", "", "")
    first, last = first.strip(), last.strip()
    if len(value) > MAX_RANGE_HEADER or not sep or not first.isdigit() \
            or not (last == "" or last.isdigit()) or len(first) > 18 or len(last) > 18:
        raise BadRequest(f"invalid Range {header[:MAX_RANGE_HEADER]!r}: use bytes=N- or "
                         f"bytes=N-M (one range, N and M byte offsets)")
    start = int(first)
    stop = size if last == "" else min(int(last) + 1, size)
    if last != "" and int(last) < start:
        raise BadRequest(f"invalid Range {header!r}: the last byte is before the first")
    if start >= size and not (start == 0 and size == 0):
        raise RangeNotSatisfiable(f"Range {header!r} starts at or past the end of the "
                                  f"output ({size} bytes)", size)
    return start, stop


class Download:
    """An open job output download: bytes ``start`` to ``stop`` of the file at ``path``
    (``size`` bytes when opened), read a buffer at a time (``read_into``, blocking: in
    the executor). With ``store``, the job runs on another replica: the local file is a
    mirror, brought up to each read's end from the store first."""

    def __init__(self, path: str, start: int, stop: int, size: int, partial: bool,
                 store: Optional[Store], token: str):
        self.path, self.start, self.stop, self.size = path, start, stop, size
        self.partial, self.store, self.token = partial, store, token
        self._fd: Optional[int] = None
        self._ahead = start  # where the read-ahead asked of the kernel ends

    @property
    def length(self) -> int:
        return self.stop - self.start

    def read_into(self, view: memoryview, offset: int) -> int:
        """Blocking: read bytes from ``offset`` (at most to ``stop``) into ``view``; how many."""
        want = min(len(view), self.stop - offset)
        if want <= 0:
            return 0
        if self.store is not None:
            sync_mirror(self.store, self.token, self.path, self.size, offset + want)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self._read_ahead(offset + want)
        with view[:want] as into:
            return os.preadv(self._fd, [into], offset)

    def _read_ahead(self, upto: int) -> None:
        """Ask the kernel to start reading the next READ_AHEAD_BYTES from the disk now
        (POSIX_FADV_WILLNEED: asynchronous), a window before they are needed, so that a
        read finds them cached instead of waiting for the disk while nothing is sent. Its
        own read-ahead starts smaller and only grows as reads prove sequential: measured
        from disk (page cache dropped), a download went from 0.31 to 0.79 x the speed of
        cat (bench/output.py --from_disk)."""
        if self._ahead >= min(upto + READ_AHEAD_BYTES // 2, self.stop):
            return
        start, self._ahead = self._ahead, min(upto + READ_AHEAD_BYTES, self.stop)
        try:
            os.posix_fadvise(self._fd, start, self._ahead - start, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # only advice: a file system that takes none is read as it comes

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Probe(NamedTuple):
    """A plugin's ``get`` for one job and cursor; ``blocking``: run it in the executor;
    ``glance``: the plugin's cheap check of whether ``fn``'s answer may have changed (see
    longpoll and TaskPlugin.glance), if it has one; ``key``: equal for probes that give
    the same answer (one job, one cursor, one page size), which waiting fetches share."""
    fn: Callable[[], Any]
    blocking: bool
    glance: Optional[Callable[[], Any]] = None
    key: Any = None
