"""Many users: 10,000 keep-alive mutual-TLS connections held open at once, 1,000 of them
long-polling running jobs. What does the gateway's memory do, and does it still answer a
new connection's heart beat, and deliver a job's lines, in time?
Run:  .venv/bin/python bench/connections.py [--quick] [--connections N]

Server: the real Gateway (``_server_entry.py jobs``: the ``process`` task type on, quotas
of 2000 jobs, fetch_timeout_s a day), one process pinned to core 0 with taskset, mutual
TLS with certificates from scripts/gen_cert.sh, 127.0.0.1 only, a temporary state dir
(sqlite store), logging at WARNING, the gRPC door off (``--grpc_port 0``: its fixed port
would collide with other benchmarks on a shared machine; it is idle here anyway). It
raises its own descriptor soft limit to the hard one (20000 here). Settings that differ
from the defaults are printed at start, with the reason (see "Knobs" below).

Jobs: ``--jobs`` (default 100) running ``process`` jobs, submitted by the frontend
certificate for users t0000.., each a Python ticker printing ``N TIMESTAMP``
(``time.time()``) every 1-5 s (3 s on average, ``--tick``), which pins itself to core 1.
Each job also has its runner (``process_runner.py``, a Python process started by the
server, so on core 0 at first): the benchmark moves the runners to core 1, so that the
server's core runs the server alone. Their CPU is the "jobs" column. Why 100 jobs for
1,000 long-polls (10 each, as if each job had 10 viewers) and not 1,000 jobs: a runner
waits for its command with ``Popen.wait(timeout=0.25)``, which polls (sleeps of up to
50 ms, ~45 wake-ups a second), ~0.3 % of a core per running job: 1,000 running jobs
would take ~3 cores for their runners alone, more than this machine has. The server's
long-poll work is per waiting fetch (each is looked at every 50 ms), not per job.

The load generator is three kinds of worker process, all on core 1 (asyncio on uvloop,
raw HTTP/1.1, ``_load``), and this process, which starts them, reads the server's RSS
(/proc/PID/status) every 0.2 s and its CPU time:
  holder   ``--connections`` - ``--long_polls`` connections (default 9,000), frontend
           certificate, opened gradually (``--rate`` per second, default 250; at most 64
           handshakes in flight), then idle. In the window, ``--idle_beats`` of them
           (default 1000, picked at random, spread over the window) send GET
           /api/heart_beat?user_id=u00042 on their own connection: the idle connections'
           heart-beat latency. Every connection's loss is noticed (its transport reports
           the close), so "held" counts the ones the server never closed.
  poller   ``--long_polls`` (default 1000) connections with the frontend certificate,
           opened at ``--rate`` after the holder's, each long-polling one job (GET
           /api/jobs/{token}?since=CURSOR&wait=30, again as soon as an answer came;
           connection i follows job i mod --jobs, with its own cursor). A line's delay =
           the poller's time.time() when the answer arrived minus the timestamp in it.
  prober   a heart beat on a FRESH connection (TCP connect, full TLS handshake with the
           ``bench`` client certificate, no session resumption, GET /api/heart_beat?
           user_id=bench, close), ``--samples`` times (default 300) spaced evenly over
           the window; latency from connect to the answer. Also ``--baseline`` times
           (default 50) before any connection is opened and once the idle ones are held
           (before the long-polls): the same figure without them, for comparison.
Why separate processes, when 10,000 descriptors fit one process's limit of 20,000: a
Python client holding 9,000 TLS connections spends its own loop's time on them while
they open (a handshake costs the client ~1 ms too); a latency measured from that same
loop would include the client's own queueing. The prober and the pollers therefore run
in loops of their own, whose work is only what they measure. All share core 1.

Timeline: start the server; submit the jobs and wait until each printed a line; move
the runners; RSS "before"; baseline probes; open the idle connections (RSS), probes;
open the long-polling ones; settle 2 s (RSS "after all"); the measured window
(``--seconds``, default 30): fresh heart beats, idle heart beats and line delays
together, the server's CPU and the cores' work read at both ends; then every worker
reports how many of its connections the server closed meanwhile; close everything; RSS
after closing (memory the server keeps once the connections are gone); cancel the jobs;
stop the server.

Priority: the machine is shared; unless ``--no_boost``, this process puts itself (and so
the server and the workers it starts) in a session of its own at nice -10 with autogroup
nice -10 (as bench/sql_output.py does), so that what is measured is the server under its
own load, not the neighbours'. The jobs' runners and commands, in sessions of their own,
are not boosted.

The server also times its own IOLoop (``_server_entry.py --lag_file``, bench/sql_output.py's
``probe_lag``): how late a callback due every 10 ms ran (1 ms resolution on uvloop), while
the idle connections alone are held and in the window; a latency far above that lag was
spent outside the server's loop (in the handshake's CPU, or waiting for a core).

Columns: "samples" and p50/p99/max of each kind; "srv core" / "cli core" the share of
one core used by the server and by the load generator (all its processes) over the
window; "jobs" the tickers and runners; "other" whatever else ran on the two cores
(/proc/stat): above 15% the row is noise (the machine is shared). Memory: the server's
RSS (VmRSS) before, after the idle connections, after all, the peak of the samples
and the kernel's high-water mark (VmHWM, since the server started), and the cost per
connection: (RSS after all - RSS before) / connections, also split by kind.

Targets (informational; the exit code is 0 unless something crashed): every connection
opened and held to the end; peak RSS < 1 GB; a fresh connection's heart beat p99 < 50 ms;
line delivery delay p99 < 100 ms; all while the connections are held. Waiting long-polls
are looked at together every 50 ms (jobs.POLL_INTERVAL_S), so 0-50 ms (25 on average) of
a line's delay is by design.

Knobs (server settings that the benchmark passes when a default would make the target
impossible, printed at start with the reason): ``max_connections`` (default 10,000)
counts every open connection; with 10,000 held, the prober's fresh connection would be
closed at once, so it is raised to --connections + 100. ``idle_connection_timeout_s``
(default 120 s) closes a connection idle that long; the connections opened first sit
idle until the window ends, which on a busy machine (slow opening) can be minutes, so it
is raised to the longest this run may take (the default is kept for runs short enough).

--quick: 1,000 connections (100 long-polling 50 jobs), 500/s, a 10 s window, 100
samples. --profile: the server under cProfile, its top costs printed at the end.
Clean-up: the jobs are cancelled (DELETE) before the server stops; then any job command
still running under the jobs dir is killed; every ticker exits by itself once the
benchmark should long have ended; every worker process gets SIGKILL if this
process dies (PR_SET_PDEATHSIG), and is killed at the end in any case.
"""
import argparse
import asyncio
import json
import math
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import _jobs_load as jl
import _load
import _servers
import heartbeat as hb
import sql_output
from _jobs_load import Job, Samples
from _load import Run
from sqlflow_playground.config import Config

TARGET_RSS_BYTES = 1 << 30
TARGET_FRESH_P99_MS = 50.0
TARGET_DELIVERY_P99_MS = 100.0
DEFAULT_MAX_CONNECTIONS = Config.max_connections
DEFAULT_IDLE_TIMEOUT_S = Config.idle_connection_timeout_s
PROBE_ROOM = 100  # connections beyond those held: the prober's, setup's
SETUP_CONNECTIONS = 16
SETUP_TIMEOUT_S = 240.0  # for the jobs to start printing
SETTLE_S = 2.0
RSS_EVERY_S = 0.2
WORKER_TIMEOUT_S = 60.0  # for a worker's answer to a command (opening has its own)
PENDING_CONNECTS = 64  # handshakes in flight at once per worker, at most
FRESH_TIMEOUT_S = 10.0
HEART_BEAT = "/api/heart_beat?user_id={user}"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, help="connections held in all (default 10000)")
    p.add_argument("--long_polls", type=int, help="of which long-polling (default 1000)")
    p.add_argument("--jobs", type=int, help="running jobs the long-polls follow (default 100)")
    p.add_argument("--rate", type=float, help="connections opened per second (default 250)")
    p.add_argument("--seconds", type=float, help="measured window (default 30)")
    p.add_argument("--samples", type=int, help="fresh-connection heart beats in the window "
                   "(default 300)")
    p.add_argument("--baseline", type=int, default=50,
                   help="fresh-connection heart beats before any connection is held")
    p.add_argument("--idle_beats", type=int, help="heart beats on idle connections in the "
                   "window (default 1000)")
    p.add_argument("--tick", default="1,5", help="a job prints a line every LOW,HIGH s "
                   "(uniform; default 1,5)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1000 connections (100 long-polling 50 jobs), 500/s, "
                   "a 10 s window, 100 samples")
    p.add_argument("--no_pin", action="store_true", help="do not pin server and client to cores")
    p.add_argument("--profile", action="store_true",
                   help="run the server under cProfile (IOLoop and executor threads) and "
                   "print its top costs; the figures are then inflated")
    p.add_argument("--no_boost", action="store_true",
                   help="run at the default priority (see \"Priority\" above)")
    args = p.parse_args(argv)
    defaults = {"connections": (10000, 1000), "long_polls": (1000, 100), "jobs": (100, 50),
                "rate": (250.0, 500.0), "seconds": (30.0, 10.0), "samples": (300, 100),
                "idle_beats": (1000, 200)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.tick = tuple(float(x) for x in args.tick.split(","))
    if not (0 < args.jobs and 0 <= args.long_polls <= args.connections
            and len(args.tick) == 2 and 0 < args.tick[0] <= args.tick[1]):
        p.error("need 0 < --jobs, 0 <= --long_polls <= --connections, --tick LOW,HIGH")
    return args


# == worker processes =======================================================================
# ``connections.py --role ROLE --spec JSON``: one JSON object per line on stdout (events),
# commands as JSON lines on stdin. Every worker exits when its stdin closes.

def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def stdin_commands() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def open_gradually(spec: Dict[str, Any], protocol, on_open=None) -> Tuple[List, int, str]:
    """``spec["count"]`` connections, one started every 1/``spec["rate"]`` s (at most
    PENDING_CONNECTS handshakes in flight); (connections, failures, first error)."""
    ctx = _load.client_context(spec["ca"], spec["crt"], spec["key"])
    loop = asyncio.get_running_loop()
    pending = asyncio.Semaphore(PENDING_CONNECTS)
    conns: List[Optional[_load.HttpConnection]] = [None] * spec["count"]
    failures: List[str] = []

    async def one(i: int) -> None:
        async with pending:
            try:
                conns[i] = await _load.connect(spec["port"], ctx, protocol)
            except (OSError, ConnectionError, ValueError, asyncio.TimeoutError) as e:
                failures.append(f"{type(e).__name__}: {e}")
                return
        if on_open is not None:
            on_open(i, conns[i])

    start, tasks = loop.time(), []
    for i in range(spec["count"]):
        delay = start + i / spec["rate"] - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i)))
    await asyncio.gather(*tasks)
    return conns, len(failures), failures[0] if failures else ""


def lost(conns: List[Optional[_load.HttpConnection]]) -> Tuple[int, str]:
    """How many of the opened connections the server closed, and why the first was."""
    gone = [c.lost for c in conns if c is not None and c.lost is not None]
    return len(gone), (f"{type(gone[0]).__name__}: {gone[0]}" if gone else "")


async def role_holder(spec: Dict[str, Any]) -> None:
    """Idle keep-alive connections; heart beats on some of them when told."""
    t0 = time.monotonic()
    conns, failed, first = await open_gradually(spec, _load.HttpConnection)
    emit("opened", ok=sum(c is not None for c in conns), failed=failed, first_error=first,
         seconds=time.monotonic() - t0)
    commands = await stdin_commands()
    while True:
        line = await commands.readline()
        if not line:
            return
        cmd = json.loads(line)
        if cmd["cmd"] == "beat":
            emit("beats", **await idle_beats(spec, conns, cmd["count"], cmd["seconds"]))
        elif cmd["cmd"] == "status":
            n, why = lost(conns)
            emit("status", open=sum(c is not None for c in conns) - n, lost=n, first_lost=why)
        elif cmd["cmd"] == "close":
            for c in conns:
                if c is not None:
                    c.close()
            emit("closed")
            return


async def idle_beats(spec: Dict[str, Any], conns: List, count: int,
                     seconds: float) -> Dict[str, Any]:
    """``count`` heart beats on as many open connections picked at random, spread evenly
    over ``seconds``; each on its own connection, as that connection's user."""
    loop = asyncio.get_running_loop()
    live = [(i, c) for i, c in enumerate(conns) if c is not None and c.lost is None]
    picked = random.Random(1).sample(live, min(count, len(live)))
    latencies: List[float] = []
    errors: List[str] = []

    async def beat(i: int, conn: _load.HttpConnection) -> None:
        raw = _load.get_request(spec["port"], HEART_BEAT.format(
            user=f"{spec['user_prefix']}{spec['first'] + i:05d}"))
        t = time.perf_counter()
        try:
            status = await asyncio.wait_for(conn.request(raw), FRESH_TIMEOUT_S)
        except (OSError, ConnectionError, ValueError, asyncio.TimeoutError) as e:
            errors.append(f"{type(e).__name__}: {e}")
            return
        if status != 200:
            errors.append(f"HTTP {status}")
            return
        latencies.append(1000.0 * (time.perf_counter() - t))

    start, tasks = loop.time(), []
    for n, (i, conn) in enumerate(picked):
        delay = start + n * seconds / max(1, len(picked)) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(beat(i, conn)))
    await asyncio.gather(*tasks)
    return {"ms": latencies, "errors": len(errors), "first_error": errors[0] if errors else ""}


async def role_poller(spec: Dict[str, Any]) -> None:
    """Long-polling connections, one job each (several may share a job: own cursors)."""
    run, samples, tasks = Run(), Samples(), []
    jobs = [Job(token=t, user_id="", ticker=True) for t in spec["tokens"]]

    def start(i: int, conn: _load.HttpConnection) -> None:
        job = jobs[i % len(jobs)]
        mine = Job(token=job.token, user_id=job.user_id, ticker=True)
        tasks.append(asyncio.ensure_future(
            jl.long_poll_worker(run, samples, conn, spec["port"], mine)))

    t0 = time.monotonic()
    conns, failed, first = await open_gradually(spec, _load.BodyConnection, start)
    emit("opened", ok=sum(c is not None for c in conns), failed=failed, first_error=first,
         seconds=time.monotonic() - t0)
    commands = await stdin_commands()
    while True:
        line = await commands.readline()
        if not line:
            return
        cmd = json.loads(line)
        if cmd["cmd"] == "measure":
            run.measuring = True
            emit("measuring")
        elif cmd["cmd"] == "stop":
            run.measuring = False
            n, why = lost(conns)
            emit("delays", ms=samples.values_ms, answers=samples.requests,
                 errors=samples.errors, first_error=samples.first_error,
                 polling=sum(not t.done() for t in tasks), lost=n, first_lost=why,
                 open=sum(c is not None for c in conns) - n)
        elif cmd["cmd"] == "close":
            run.stopping = True
            for c in conns:
                if c is not None:
                    c.close()
            for t in tasks:
                t.cancel()
            emit("closed")
            return


async def role_prober(spec: Dict[str, Any]) -> None:
    """Heart beats on fresh connections, ``samples`` of them, one every ``spacing`` s."""
    ctx = _load.client_context(spec["ca"], spec["crt"], spec["key"])
    raw = _load.get_request(spec["port"], HEART_BEAT.format(user="bench"))
    loop = asyncio.get_running_loop()
    latencies: List[float] = []
    errors: List[str] = []
    start = loop.time()
    for n in range(spec["samples"]):
        delay = start + n * spec["spacing"] - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        status, seconds = await _load.timed_request(spec["port"], ctx, raw, FRESH_TIMEOUT_S)
        if status == 200:
            latencies.append(1000.0 * seconds)
        else:
            errors.append(f"HTTP {status}" if status else "connection failed or timed out")
    emit("probes", ms=latencies, errors=len(errors), first_error=errors[0] if errors else "")


ROLES = {"holder": role_holder, "poller": role_poller, "prober": role_prober}


def worker_main(argv: List[str]) -> int:
    role = argv[argv.index("--role") + 1]
    spec = json.loads(argv[argv.index("--spec") + 1])
    if spec.get("tokens_file"):
        spec["tokens"] = json.loads(Path(spec["tokens_file"]).read_text())
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    hb.run_loop(ROLES[role](spec))
    return 0


# == the parent side ========================================================================

class Worker:
    """One worker process (same affinity as this one: the client core)."""

    def __init__(self, role: str, spec: Dict[str, Any]):
        self.role, self.spec = role, spec
        self.proc: Optional[asyncio.subprocess.Process] = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), "--role", self.role,
            "--spec", json.dumps(self.spec), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, preexec_fn=_servers._die_with_parent,
            limit=64 << 20)

    async def event(self, timeout_s: float) -> Dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        if not line:
            raise RuntimeError(f"worker {self.role} exited (code {await self.proc.wait()})")
        return json.loads(line)

    async def ask(self, timeout_s: float = WORKER_TIMEOUT_S, **cmd: Any) -> Dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()
        return await self.event(timeout_s)

    def cpu_seconds(self) -> float:
        try:
            return _servers.cpu_seconds(self.proc.pid) if self.proc else 0.0
        except (OSError, ValueError, IndexError):
            return 0.0

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            await asyncio.wait_for(proc.wait(), 5)
        except (asyncio.TimeoutError, OSError, BrokenPipeError):
            proc.kill()
            await proc.wait()


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


class RssWatch:
    """The server's RSS every RSS_EVERY_S, keeping the highest seen."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._task = pid, 0, None

    def now(self) -> int:
        value = rss_bytes(self.pid)
        self.peak = max(self.peak, value)
        return value

    async def _run(self) -> None:
        while True:
            self.now()
            await asyncio.sleep(RSS_EVERY_S)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def mb(n: float) -> str:
    return f"{n / (1 << 20):.0f} MB"


def stats(values: List[float]) -> Tuple[float, float, float]:
    if not values:
        return float("nan"), float("nan"), float("nan")
    s = Samples(values_ms=list(values))
    return s.percentile(50), s.percentile(99), max(values)


def server_settings(args: argparse.Namespace) -> Tuple[List[str], List[str]]:
    """``--set`` flags for the server where a default would make the target impossible,
    and a note per setting saying what and why."""
    flags, notes = ["--grpc_port", "0"], ["grpc_port 0 (the gRPC door off: its fixed port "
                                          "would collide with other benchmarks' servers)"]
    needed = args.connections + PROBE_ROOM
    if needed > DEFAULT_MAX_CONNECTIONS:
        flags += ["--set", f"max_connections={needed}"]
        notes.append(f"max_connections {needed} instead of the default "
                     f"{DEFAULT_MAX_CONNECTIONS}: the default counts every open connection, "
                     f"so with {args.connections} held the prober's fresh connection (and "
                     "any other user's) would be closed at once")
    else:
        notes.append(f"max_connections: default {DEFAULT_MAX_CONNECTIONS} kept "
                     f"({args.connections} held + the prober's fit)")
    # The longest any connection may sit idle: from the first holder's connection to the
    # end of the window (one not picked for an idle heart beat), if opening takes as long
    # as the benchmark lets it (the server may not keep up with --rate on a busy machine).
    idle_s = (open_timeout(args.connections - args.long_polls, args.rate)
              + open_timeout(args.long_polls, args.rate) + args.baseline * 0.1
              + 2 * args.seconds + 60)
    if idle_s > 0.8 * DEFAULT_IDLE_TIMEOUT_S:
        timeout = 60 * math.ceil(idle_s / 60)
        flags += ["--set", f"idle_connection_timeout_s={timeout:g}"]
        notes.append(f"idle_connection_timeout_s {timeout:g} instead of the default "
                     f"{DEFAULT_IDLE_TIMEOUT_S:g}: the connections opened first sit idle "
                     f"until the window ends, up to ~{idle_s:.0f} s in this run if opening "
                     "is slow (the benchmark waits that long at most), and the default "
                     "would close them")
    else:
        notes.append(f"idle_connection_timeout_s: default {DEFAULT_IDLE_TIMEOUT_S:g} s kept "
                     f"(a connection sits idle at most ~{idle_s:.0f} s in this run)")
    return flags, notes


def ticker_seconds(args: argparse.Namespace) -> float:
    """How long a job prints: the whole benchmark with a wide margin, not forever."""
    return (SETUP_TIMEOUT_S + args.connections / args.rate + args.seconds
            + (args.baseline + args.samples) * 0.05 + 300)


async def start_jobs(pool: jl.Pool, args: argparse.Namespace) -> Tuple[List[Job], str]:
    seconds = ticker_seconds(args)
    command = jl.ticker_command(seconds, [hb.CLIENT_CORE] if args.pinned else [],
                                *args.tick)
    t0 = time.monotonic()
    jobs = await jl.submit_all(pool, [(f"t{i:04d}", command, True, seconds + 30)
                                      for i in range(args.jobs)])
    t1 = time.monotonic()
    await jl.follow_all(pool, jobs, SETUP_TIMEOUT_S, until_eof=False)  # printed a line
    t2 = time.monotonic()
    return jobs, (f"{len(jobs)} jobs submitted in {t1 - t0:.1f}s, all printing "
                  f"{t2 - t1:.1f}s later")


def move_runners(jobs_dir: Path, jobs: List[Job], core: int) -> Tuple[List[int], str]:
    """Move the jobs' runners (started by the pinned server, so on its core) to ``core``;
    the pids of runners and commands (for their CPU time)."""
    commands, runners = jl.job_processes(jobs_dir, jobs)
    moved = 0
    for pid in runners:
        try:
            os.sched_setaffinity(pid, {core})
            moved += 1
        except OSError:
            pass
    return runners + commands, (f"{len(commands)} job commands (tickers, on core {core}), "
                                f"{moved} of {len(runners)} runners moved to core {core}")


async def probe(keys: _servers.KeyStore, port: int, samples: int,
                seconds: float) -> Dict[str, Any]:
    w = Worker("prober", {"port": port, "ca": keys.ca, "crt": keys.crt("bench"),
                          "key": keys.key("bench"), "samples": samples,
                          "spacing": seconds / max(1, samples)})
    await w.start()
    try:
        return await w.event(seconds + samples * FRESH_TIMEOUT_S + 30)
    finally:
        await w.stop()


def open_timeout(count: int, rate: float) -> float:
    """How long opening may take: the server may not keep up with ``rate`` (a handshake
    costs it 2-5 ms of CPU: 200-500 a second at most, less on a busy machine)."""
    return 4 * count / rate + _load.CONNECT_TIMEOUT_S + 120


async def run_all(args: argparse.Namespace, keys: _servers.KeyStore,
                  server: _servers.ServerProcess, jobs_dir: Path) -> None:
    port, pid = server.port, server.proc.pid
    front = {"port": port, "ca": keys.ca, "crt": keys.crt("front"), "key": keys.key("front")}
    pool = jl.Pool(port, _load.client_context(keys.ca, keys.crt("front"), keys.key("front")),
                   SETUP_CONNECTIONS)
    jobs: List[Job] = []
    workers: List[Worker] = []
    watch = RssWatch(pid)
    try:
        jobs, note = await start_jobs(pool, args)
        print("setup: " + note, flush=True)
        job_pids, note = move_runners(jobs_dir, jobs, hb.CLIENT_CORE)
        print("setup: " + note, flush=True)
        pool.close()  # its connections would count toward max_connections
        await asyncio.sleep(SETTLE_S)
        rss: Dict[str, int] = {"before": watch.now()}
        watch.peak = 0
        watch.start()
        print(f"server RSS before: {mb(rss['before'])} (VmHWM so far "
              f"{mb(rss_bytes(pid, 'VmHWM'))})", flush=True)

        base = await probe(keys, port, args.baseline, args.baseline * 0.05)
        print(f"baseline: {len(base['ms'])} fresh-connection heart beats, no connection held: "
              f"p50 {stats(base['ms'])[0]:.2f} ms, p99 {stats(base['ms'])[1]:.2f} ms", flush=True)

        tokens_file = server.workdir / "tokens.json"
        tokens_file.write_text(json.dumps([j.token for j in jobs]))
        poller = Worker("poller", {**front, "count": args.long_polls, "rate": args.rate,
                                   "tokens_file": str(tokens_file)})
        holder = Worker("holder", {**front, "count": args.connections - args.long_polls,
                                   "rate": args.rate, "user_prefix": "u", "first": 0})
        opened: Dict[str, Dict[str, Any]] = {}
        for name, w in (("idle", holder), ("long-polling", poller)):
            workers.append(w)
            t0 = time.monotonic()
            cpu0 = server.cpu_seconds()
            await w.start()
            opened[name] = ev = await w.event(open_timeout(w.spec["count"], args.rate))
            cpu1 = server.cpu_seconds()
            await asyncio.sleep(SETTLE_S if name == "long-polling" else 0.5)
            rss[name] = watch.now()
            ev["cpu_ms"] = per = 1000.0 * (cpu1 - cpu0) / max(1, ev["ok"])
            ev["wall_s"] = time.monotonic() - t0
            print(f"opened {ev['ok']} {name} connections in {ev['wall_s']:.1f}s "
                  f"({ev['failed']} failed{': ' + ev['first_error'] if ev['failed'] else ''}); "
                  f"server CPU {per:.2f} ms per connection"
                  f"{' (their long-polls included)' if name == 'long-polling' else ''}; "
                  f"RSS {mb(rss[name])}", flush=True)
            if name == "idle":  # the connections alone, before any long-poll runs
                wall_idle = time.time()
                idle_only = await probe(keys, port, args.baseline, args.baseline * 0.1)
                idle_only["lag_between"] = (wall_idle, time.time())
                print(f"{len(idle_only['ms'])} fresh-connection heart beats with the idle "
                      f"connections held: p50 {stats(idle_only['ms'])[0]:.2f} ms, p99 "
                      f"{stats(idle_only['ms'])[1]:.2f} ms", flush=True)

        # -- the window ----------------------------------------------------------------
        clients = [poller, holder]
        wall0 = time.time()
        busy0, cpu0, t0 = _servers.busy_seconds(args.cores), server.cpu_seconds(), time.monotonic()
        cli0 = time.process_time() + sum(w.cpu_seconds() for w in clients)
        jobs0 = jl.processes_cpu_seconds(job_pids)
        await poller.ask(cmd="measure")
        prober = Worker("prober", {"port": port, "ca": keys.ca, "crt": keys.crt("bench"),
                                   "key": keys.key("bench"), "samples": args.samples,
                                   "spacing": args.seconds / max(1, args.samples)})
        await prober.start()
        clients.append(prober)
        workers.append(prober)
        beats_task = asyncio.ensure_future(holder.ask(
            timeout_s=args.seconds + WORKER_TIMEOUT_S, cmd="beat", count=args.idle_beats,
            seconds=args.seconds * 0.95))
        probes_task = asyncio.ensure_future(prober.event(
            args.seconds + args.samples * FRESH_TIMEOUT_S + 30))
        await asyncio.sleep(args.seconds)
        cli_prober = prober.cpu_seconds()
        probes, beats = await probes_task, await beats_task
        delays = await poller.ask(cmd="stop")
        t1 = time.monotonic()
        busy1, cpu1 = _servers.busy_seconds(args.cores), server.cpu_seconds()
        cli1 = (time.process_time() + poller.cpu_seconds() + holder.cpu_seconds()
                + max(cli_prober, prober.cpu_seconds()))
        jobs1 = jl.processes_cpu_seconds(job_pids)
        wall1 = time.time()
        held = await holder.ask(cmd="status")
        rss["peak"] = watch.peak
        rss["hwm"] = rss_bytes(pid, "VmHWM")
        open_now = server_open_connections(pid)

        # -- closing -------------------------------------------------------------------
        for w in (poller, holder):
            await w.ask(cmd="close")
            await w.stop()
        await asyncio.sleep(SETTLE_S)
        rss["closed"] = watch.now()
        watch.stop()
    finally:
        watch.stop()
        for w in workers:
            await w.stop()
        if jobs:
            cancel_pool = jl.Pool(port, _load.client_context(
                keys.ca, keys.crt("front"), keys.key("front")), SETUP_CONNECTIONS)
            problems = await jl.cancel_all(cancel_pool, jobs)
            cancel_pool.close()
            if problems:
                print(f"note: cancelling {len(problems)} job(s) failed, e.g. {problems[0]}")

    await_lags = 1.5 - (time.time() - wall1)  # the server writes its lags once a second
    if await_lags > 0:
        time.sleep(await_lags)
    lags = {"idle": sql_output.lags_between(args.lag_file, *idle_only["lag_between"]),
            "window": sql_output.lags_between(args.lag_file, wall0, wall1),
            "gc": collections_between(Path(f"{args.lag_file}.gc"), wall0, wall1)}
    wall = t1 - t0
    window = {"wall": wall, "srv": (cpu1 - cpu0) / wall, "cli": (cli1 - cli0) / wall,
              "jobs": (jobs1 - jobs0) / wall,
              "other": max(0.0, (busy1 - busy0) - (cpu1 - cpu0) - (cli1 - cli0)
                           - (jobs1 - jobs0)) / wall}
    report(args, rss, opened, base, idle_only, probes, beats, delays, held, window, open_now,
           lags, server.log_tail(5))


def collections_between(path: Path, start: float, end: float) -> Dict[int, List[float]]:
    """The server's garbage collections between two wall-clock times: generation -> their
    pauses (ms), from _server_entry.log_collections."""
    pauses: Dict[int, List[float]] = {0: [], 1: [], 2: []}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return pauses
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 4 and start <= float(fields[0]) <= end:
            pauses[int(fields[1])].append(float(fields[2]))
    return pauses


def server_open_connections(pid: int) -> int:
    """Sockets the server process holds, listening ones included (/proc/PID/fd)."""
    count = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return -1
    for fd in fds:
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass  # closed meanwhile
    return count


HEADER = (f"{'latency, delay, lag (ms)':<44} {'samples':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
          f"{'errors':>6}")


def report(args, rss, opened, base, idle_only, probes, beats, delays, held, window, sockets,
           lags, log_tail) -> None:
    n_open = sum(ev["ok"] for ev in opened.values())
    n_held = held["open"] + delays["open"]
    n_lost = held["lost"] + delays["lost"]
    print("\n== summary " + "=" * 80)
    print(f"connections: {n_open} opened of {args.connections} "
          f"({args.long_polls} long-polling {args.jobs} jobs, "
          f"{args.connections - args.long_polls} idle), {n_held} still open at the end of "
          f"the window, {n_lost} closed by the server"
          + (f" (first: {held['first_lost'] or delays['first_lost']})" if n_lost else "")
          + f"; the server held {sockets} sockets then; {delays['polling']} long-polls "
          "still polling")
    print(f"window {window['wall']:.1f}s: srv core {window['srv']:.0%}, cli core "
          f"{window['cli']:.0%}, jobs {window['jobs']:.0%}, other {window['other']:.0%}"
          f"{'  (noisy)' if window['other'] > hb.NOISY_OTHER_SHARE else ''}; "
          f"{delays['answers']} long-poll answers ({delays['answers'] / window['wall']:.0f}/s)")
    print()
    print(HEADER)
    idle_n = opened["idle"]["ok"]
    rows = [("fresh-connection heart beat, none held", base),
            (f"fresh-connection heart beat, {idle_n} idle held", idle_only),
            ("fresh-connection heart beat, all held", probes),
            ("idle connection's heart beat, all held", beats),
            ("line delivery delay, all held", delays)]
    for name, r in rows:
        p50, p99, top = stats(r["ms"])
        print(f"{name:<44} {len(r['ms']):>7} {p50:>7.2f} {p99:>7.2f} {top:>7.2f} "
              f"{r['errors']:>6}")
        if r["errors"]:
            print(f"    first error: {r['first_error']}")
    for name, values in ((f"server IOLoop lag, {idle_n} idle held", lags["idle"]),
                         ("server IOLoop lag, all held", lags["window"])):
        p50, p99, top = stats(values)
        print(f"{name:<44} {len(values):>7} {p50:>7.2f} {p99:>7.2f} {top:>7.2f}")
    for generation, pauses in sorted(lags["gc"].items()):
        p50, p99, top = stats(pauses)
        name = f"server GC pause, generation {generation}" + (" (full)" if generation == 2 else "")
        print(f"{name:<44} {len(pauses):>7} {p50:>7.2f} {p99:>7.2f} {top:>7.2f}")
    print()
    per_all = (rss["long-polling"] - rss["before"]) / max(1, n_open)
    per_idle = (rss["idle"] - rss["before"]) / max(1, opened["idle"]["ok"])
    per_poll = (rss["long-polling"] - rss["idle"]) / max(1, opened["long-polling"]["ok"])
    print(f"server RSS: before {mb(rss['before'])}, after the idle connections "
          f"{mb(rss['idle'])}, after all {mb(rss['long-polling'])}, peak {mb(rss['peak'])} "
          f"(VmHWM {mb(rss['hwm'])}), after closing them all {mb(rss['closed'])}")
    print(f"per connection: {per_all / 1024:.1f} KiB on average; {per_idle / 1024:.1f} KiB "
          f"per idle one, {per_poll / 1024:.1f} KiB per long-polling one")
    print(f"opening: {opened['idle']['ok']} idle connections in {opened['idle']['wall_s']:.0f}s "
          f"({opened['idle']['ok'] / opened['idle']['wall_s']:.0f}/s), server CPU "
          f"{opened['idle']['cpu_ms']:.2f} ms per connection (TLS handshake with client "
          "certificate, accept, stream)")

    print("\ntargets (informational; \"noisy\": other work ran on the benchmark's cores):")
    noisy = " (noisy)" if window["other"] > hb.NOISY_OTHER_SHARE else ""
    checks = [
        (f"{args.connections} connections opened and held to the end",
         f"{n_held}/{args.connections}", n_held == args.connections and n_lost == 0),
        (f"server peak RSS < {mb(TARGET_RSS_BYTES)}", mb(rss["peak"]),
         rss["peak"] < TARGET_RSS_BYTES),
        (f"fresh-connection heart beat p99 < {TARGET_FRESH_P99_MS:g} ms",
         f"{stats(probes['ms'])[1]:.2f} ms",
         stats(probes["ms"])[1] < TARGET_FRESH_P99_MS and not probes["errors"]),
        (f"line delivery delay p99 < {TARGET_DELIVERY_P99_MS:g} ms",
         f"{stats(delays['ms'])[1]:.2f} ms",
         stats(delays["ms"])[1] < TARGET_DELIVERY_P99_MS and not delays["errors"]),
    ]
    for name, value, ok in checks:
        print(f"  {name:<58} {value:>14}  {hb.verdict(ok)}{noisy}")
    print(f"  {'memory per connection (no target)':<58} {per_all / 1024:>10.1f} KiB")
    print("note: line delays include up to 50 ms by design: waiting long-polls look at "
          "their jobs' output every 50 ms (jobs.POLL_INTERVAL_S).")
    if log_tail:
        print("note: the server logged (last lines):\n    " + log_tail.replace("\n", "\n    "))


def print_profile(path: Path) -> None:
    import pstats
    print("\n(that run was under cProfile: its figures are inflated.) The server's IOLoop "
          "and executor threads together, setup included; compare shares, not times.")
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats("sqlflow_playground", 30)


BOOST_NICE = -10


def boost() -> str:
    """This process, and so everything it starts (the server, the workers), in a session
    of its own whose autogroup, and every process in it, runs at nice BOOST_NICE; best
    effort. What it got, in words."""
    try:
        os.setsid()  # fails in a process group leader: then the caller's session is boosted
    except OSError:
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, 0, BOOST_NICE)
    except OSError as e:
        return f"default priority (cannot boost: {e.strerror})"
    try:
        with open("/proc/self/autogroup", "w") as fh:
            fh.write(str(BOOST_NICE))
    except FileNotFoundError:
        return f"nice {BOOST_NICE} (no autogroups)"
    except OSError as e:
        return f"nice {BOOST_NICE}, its autogroup not boosted ({e.strerror})"
    return f"nice {BOOST_NICE}, autogroup nice {BOOST_NICE}"


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--role" in argv:
        return worker_main(argv)
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below runs
    priority = "default priority (--no_boost)" if args.no_boost else boost()
    server_core, pin_note = hb.pin_self(args)
    args.pinned = server_core is not None
    args.cores = [hb.SERVER_CORE, hb.CLIENT_CORE] if args.pinned else _servers.usable_cores()
    flags, notes = server_settings(args)
    print(f"connections bench: {args.connections} connections ({args.long_polls} "
          f"long-polling {args.jobs} running jobs), opened at {args.rate:g}/s, a "
          f"{args.seconds:g}s window with {args.samples} fresh-connection heart beats and "
          f"{args.idle_beats} on idle connections; {pin_note}; {priority}", flush=True)
    for note in notes:
        print("server: " + note, flush=True)
    with tempfile.TemporaryDirectory(prefix="sqlflow-bench-") as tmp:
        workdir = Path(tmp).resolve()
        keys = _servers.KeyStore(workdir / "key_store")
        jobs_dir = workdir / "jobs" / "state" / "jobs"  # ServerProcess("jobs").workdir/state
        profile = workdir / "server.prof" if args.profile else None
        args.lag_file = workdir / "ioloop_lag.txt"
        server = _servers.ServerProcess("jobs", keys, workdir, server_core, profile_to=profile,
                                        extra_args=flags + ["--lag_file", str(args.lag_file)])
        try:
            server.start()
            hb.run_loop(run_all(args, keys, server, jobs_dir))
        finally:
            server.stop()
            if profile is not None and profile.exists():
                print_profile(profile)
            killed = jl.kill_leftovers(jobs_dir)
            if killed:
                print(f"note: killed {killed} job command(s) still running after the server "
                      "stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
