"""Client side of bench/fetch.py: `process` jobs submitted, followed and cancelled over
keep-alive mutual-TLS connections (raw HTTP/1.1 from ``_load``), the load workers of
its scenarios, and the jobs' processes as found in the server's jobs directory.

Every request loop here ends when its ``Run`` is stopping, its connection fails, or a
deadline passes; every job command ends by itself (see ``ticker_command``).
"""
import asyncio
import itertools
import json
import os
import signal
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import _load
import _servers
from _load import Run

LONG_POLL_WAIT_S = 30  # the server's maximum


@dataclass
class Job:
    token: str
    user_id: str
    ticker: bool  # a running ticker, or a finished /bin/echo job
    cursor: str = ""  # where the fetch load (scenario i) goes on reading
    poll_cursor: str = ""  # where this job's long-poller (scenario ii) goes on reading


# -- commands -----------------------------------------------------------------------------

TICKER = """\
import os, random, time
if {cores!r}:
    os.sched_setaffinity(0, {cores!r})
end = time.time() + {seconds!r}
n = 0
while time.time() < end:
    n += 1
    print(n, repr(time.time()), flush=True)
    time.sleep(random.uniform({low!r}, {high!r}))
"""


def ticker_command(seconds: float, cores: Sequence[int], low: float = 0.2,
                   high: float = 0.5) -> List[str]:
    """A Python command printing ``N TIMESTAMP`` (``time.time()``, as repr) every
    ``low``-``high`` seconds for ``seconds``, then exiting; run on ``cores`` if given."""
    code = TICKER.format(cores=sorted(cores), seconds=seconds, low=low, high=high)
    return [sys.executable, "-S", "-E", "-c", code]


def line_timestamp(line: str) -> float:
    return float(line.rsplit(" ", 1)[1])


# -- one request at a time on a few connections (setup and clean-up) --------------------------

class Pool:
    """``size`` keep-alive connections; ``call()`` borrows one for one request."""

    def __init__(self, port: int, ctx: ssl.SSLContext, size: int):
        self.port, self.ctx = port, ctx
        self.free: "asyncio.Queue[Optional[_load.HttpConnection]]" = asyncio.Queue()
        for _ in range(size):
            self.free.put_nowait(None)  # connected on first use

    async def call(self, method: str, target: str, payload: Any = None,
                   timeout_s: float = 60.0) -> Tuple[int, Any]:
        """(status, decoded JSON body) of one request."""
        body = b"" if payload is None else json.dumps(payload).encode()
        raw = (f"{method} {target} HTTP/1.1\r\nHost: {_load.SERVER_NAME}:{self.port}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode() + body
        conn = await self.free.get()
        try:
            if conn is None:
                conn = await _load.connect(self.port, self.ctx, _load.BodyConnection)
            status, answer = await asyncio.wait_for(conn.request(raw), timeout_s)
        except BaseException:
            if conn is not None:
                conn.close()
            self.free.put_nowait(None)  # a fresh connection for the next caller
            raise
        self.free.put_nowait(conn)
        return status, json.loads(answer) if answer else None

    def close(self) -> None:
        while not self.free.empty():
            conn = self.free.get_nowait()
            if conn is not None:
                conn.close()


async def submit(pool: Pool, user_id: str, command: List[str], ticker: bool,
                 timeout_s: float = 0) -> Job:
    spec: Dict[str, Any] = {"command": command}
    if timeout_s:
        spec["timeout_s"] = timeout_s
    status, answer = await pool.call("POST", "/api/jobs", {
        "user_id": user_id, "task_type": "process", "spec": spec})
    if status != 201:
        raise RuntimeError(f"submitting a job for {user_id} failed: HTTP {status} {answer}")
    return Job(token=answer["token"], user_id=user_id, ticker=ticker)


async def submit_all(pool: Pool, jobs: Iterable[Tuple[str, List[str], bool, float]]) -> List[Job]:
    """Submit (user_id, command, ticker, timeout_s) jobs, as many at once as ``pool`` has
    connections; the Jobs in the same order."""
    return list(await asyncio.gather(*(submit(pool, *job) for job in jobs)))


async def follow(pool: Pool, job: Job, deadline: float, until_eof: bool) -> None:
    """Long-poll ``job`` as a client would, until its output ended (``until_eof``) or
    until its first output; the cursors are left just past what was read."""
    while time.monotonic() < deadline:
        wait = max(0.0, min(10.0, deadline - time.monotonic()))
        status, answer = await pool.call(
            "GET", f"/api/jobs/{job.token}?since={job.poll_cursor}&wait={wait:.1f}",
            timeout_s=wait + 10)
        if status != 200:
            raise RuntimeError(f"fetching job {job.token[:8]}… failed: HTTP {status} {answer}")
        job.poll_cursor = answer["next"]
        if answer["eof"] if until_eof else bool(answer["responses"]):
            return
        if answer["eof"]:
            raise RuntimeError(f"job {job.token[:8]}… ended early: {answer['status']} "
                               f"{answer['message']}")
    raise RuntimeError(f"job {job.token[:8]}… did not {'finish' if until_eof else 'start'} "
                       "in time")


async def follow_all(pool: Pool, jobs: List[Job], timeout_s: float, until_eof: bool) -> None:
    deadline = time.monotonic() + timeout_s
    await asyncio.gather(*(follow(pool, job, deadline, until_eof) for job in jobs))


async def cancel_all(pool: Pool, jobs: List[Job]) -> List[str]:
    """DELETE every job; the problems, if any."""
    async def cancel(job: Job) -> Optional[str]:
        try:
            status, answer = await pool.call("DELETE", f"/api/jobs/{job.token}", timeout_s=20)
        except (OSError, ConnectionError, ValueError, asyncio.TimeoutError) as e:
            return f"{job.token[:8]}…: {type(e).__name__}: {e}"
        if status != 200 or answer.get("status") not in ("CANCELLED", "SUCCEEDED", "FAILED"):
            return f"{job.token[:8]}…: HTTP {status} {answer}"
        return None
    return [p for p in await asyncio.gather(*(cancel(job) for job in jobs)) if p]


# -- the measured load ----------------------------------------------------------------------

@dataclass
class Samples:
    """What one kind of worker saw inside the measured window (errors: at any time)."""

    requests: int = 0  # responses received in the window
    values_ms: List[float] = field(default_factory=list)  # latencies, or delivery delays
    running_ms: List[float] = field(default_factory=list)  # the fetches of running jobs
    errors: int = 0
    first_error: str = ""

    def response(self, run: Run) -> None:
        if run.measuring:
            self.requests += 1

    def value(self, run: Run, ms: float) -> None:
        if run.measuring:
            self.values_ms.append(ms)

    def error(self, what: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or what

    def percentile(self, q: float, values: Optional[List[float]] = None) -> float:
        values = self.values_ms if values is None else values
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q / 100.0 * len(ordered)))]

    @property
    def max(self) -> float:
        return max(self.values_ms) if self.values_ms else float("nan")


CONNECTION_ERRORS = (OSError, ConnectionError, ValueError)


async def fetch_worker(run: Run, samples: Samples, conn: _load.HttpConnection, port: int,
                       jobs: List[Job], order: "itertools.count") -> None:
    """GET /api/jobs/{token}?since={cursor} (no wait), one job after the other in the
    order shared by all fetch workers; each job's cursor moves on to the answer's ``next``."""
    perf = time.perf_counter
    try:
        while not run.stopping:
            job = jobs[next(order) % len(jobs)]
            raw = _load.get_request(port, f"/api/jobs/{job.token}?since={job.cursor}")
            start = perf()
            try:
                status, body = await conn.request(raw)
            except CONNECTION_ERRORS as e:
                samples.error(f"fetch: {type(e).__name__}: {e}")
                return
            elapsed_ms = 1000.0 * (perf() - start)
            if status != 200:
                samples.error(f"fetch: HTTP {status} {body[:200]!r}")
                continue
            job.cursor = json.loads(body)["next"]
            samples.response(run)
            samples.value(run, elapsed_ms)
            if job.ticker and run.measuring:
                samples.running_ms.append(elapsed_ms)
    finally:
        conn.close()


async def long_poll_worker(run: Run, samples: Samples, conn: _load.HttpConnection, port: int,
                           job: Job) -> None:
    """GET /api/jobs/{token}?since={cursor}&wait=30 again and again on one connection; each
    line's delay is the time it was received minus the time the ticker printed in it."""
    clock = time.time  # the same clock as the ticker's
    try:
        while not run.stopping:
            raw = _load.get_request(
                port, f"/api/jobs/{job.token}?since={job.poll_cursor}&wait={LONG_POLL_WAIT_S}")
            try:
                status, body = await conn.request(raw)
            except CONNECTION_ERRORS as e:
                samples.error(f"long poll: {type(e).__name__}: {e}")
                return
            received = clock()
            if status != 200:
                samples.error(f"long poll: HTTP {status} {body[:200]!r}")
                return
            answer = json.loads(body)
            job.poll_cursor = answer["next"]
            samples.response(run)
            for response in answer["responses"]:
                samples.value(run, 1000.0 * (received - line_timestamp(response["message"])))
            if answer["eof"]:
                samples.error(f"long poll: job {job.token[:8]}… ended: {answer['status']} "
                              f"{answer['message']}")
                return
    finally:
        conn.close()


async def _connections(port: int, ctx: ssl.SSLContext, n: int) -> List[_load.HttpConnection]:
    return list(await asyncio.gather(*(_load.connect(port, ctx, _load.BodyConnection)
                                       for _ in range(n))))


def fetch_load(port: int, ctx: ssl.SSLContext, jobs: List[Job], connections: int,
               samples: Samples):
    """A ``start_workers`` for ``_load.measure``: ``connections`` fetch workers."""
    async def start(run: Run) -> List[asyncio.Task]:
        order = itertools.count()
        return [asyncio.ensure_future(fetch_worker(run, samples, conn, port, jobs, order))
                for conn in await _connections(port, ctx, connections)]
    return start


def long_poll_load(port: int, ctx: ssl.SSLContext, jobs: List[Job], samples: Samples):
    """A ``start_workers`` for ``_load.measure``: one long-poller per job."""
    async def start(run: Run) -> List[asyncio.Task]:
        conns = await _connections(port, ctx, len(jobs))
        return [asyncio.ensure_future(long_poll_worker(run, samples, conn, port, job))
                for conn, job in zip(conns, jobs)]
    return start


def together(*starts):
    """A ``start_workers`` that starts all of ``starts``."""
    async def start(run: Run) -> List[asyncio.Task]:
        tasks: List[asyncio.Task] = []
        for s in starts:
            tasks += await s(run)
        return tasks
    return start


# -- the jobs' processes, from the server's jobs directory ------------------------------------

def _child_pid(workdir: Path) -> Optional[int]:
    """The pid (and process group) of a job's command, if it is still running there."""
    try:
        pid = int((workdir / "child.pgid").read_text())
        if os.readlink(f"/proc/{pid}/cwd") != str(workdir / "work"):
            return None  # ended; the pid may belong to someone else by now
    except (OSError, ValueError):
        return None
    return pid


def _parent_pid(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def job_processes(jobs_dir: Path, jobs: List[Job]) -> Tuple[List[int], List[int]]:
    """Pids of the jobs' running commands, and of their runners (the commands' parents)."""
    commands, runners = [], []
    for job in jobs:
        child = _child_pid(jobs_dir / job.token)
        if child is not None:
            commands.append(child)
            runner = _parent_pid(child)
            if runner is not None and runner > 1:
                runners.append(runner)
    return commands, runners


def processes_cpu_seconds(pids: List[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += _servers.cpu_seconds(pid)
        except (OSError, ValueError, IndexError):
            pass  # ended
    return total


def kill_leftovers(jobs_dir: Path) -> int:
    """Safety net: SIGKILL the process group of every job command still running under
    ``jobs_dir`` (its runner then records how it ended and exits). How many groups."""
    killed = 0
    for workdir in sorted(jobs_dir.glob("*")) if jobs_dir.is_dir() else []:
        pgid = _child_pid(workdir)
        if pgid is None:
            continue
        try:
            os.killpg(pgid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed
