"""SQL output benchmark: does a tenant's big `sql` output stay a bounded cost to the server?
Run:  .venv/bin/python bench/sql_output.py [--quick]

Server: the real Gateway in a child process (this file's ``_serve`` mode, started like
bench/_servers.py's servers: pinned to core 0 with taskset when possible, an ephemeral
port of 127.0.0.1, mutual TLS with certificates from scripts/gen_cert.sh, a temporary
state dir, the sqlite provisioner, logging at WARNING), with ``--fetch_page_bytes``
(default 1 MiB) and ``--max_output_bytes`` (default 256 MiB, the server's own default:
the 1,000,000-row result below is about 30 MB on disk, well within it).

Load (this process, pinned to core 1, asyncio): 5 clients, each acting for its own user
(``create_db`` first) over its own keep-alive connection, one after the other:
  1. ``SELECT hex(zeroblob(50000000))``: one 100 MB value. It must be refused fast (the
     job FAILED saying why), never built, stored or sent whole.
  2. ``WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 1000000)
     SELECT x, 'row ' || x FROM c``: fetched page by page (``wait=5``) to eof, while the
     job runs and after; every row is counted.
Meanwhile a heart-beat client (a process of its own, on the load generator's core) sends
``GET /api/heart_beat`` every 10 ms on its own keep-alive connection, and a sampler reads
the server's VmRSS from /proc/PID/status every 10 ms (and VmHWM at the end).

Then the 5 finished results are fetched again from their start, all at once: the fetch
path alone (1 MiB pages read from disk and sent), without the jobs' own work, with the
heart beats measured again.

Before the load, the cost of starting a job: ``--select1`` (default 20) ``SELECT 1`` jobs
one after the other, each timed from its submit to the fetch (``wait=5``) that says eof.

On a shared host, the server and the heart-beat client run with priority over their
neighbours (``--boost``, on by default where allowed: a session of their own, nice -10 and
autogroup nice -10), so that what is measured is the server under its own load (its jobs'
runners, niced +10 by the server itself, included), not the other users of the cores.

The server also times its own IOLoop: a callback due every 10 ms records how late it
ran (written to ``ioloop_lag.txt`` in its directory), so that the server's own stalls (a
thread holding the GIL) are told apart from delays of the heart-beat client, which shares
its core with the load generator (and, on a busy host, with everything else).

Figures: the server's peak RSS growth over its RSS before the load (the larger of the
sampled VmRSS peak and VmHWM, minus the baseline; each sql job runs in a runner process
of its own, whose RSS is reported apart, summed), the largest fetch body, pages and rows
per client, the zeroblob job's status, message and time, and heart-beat p50/p99/max.
Targets: RSS growth <= 64 MB + 2 x fetch_page_bytes per client; heart-beat p99 < 20 ms,
in both phases.
The exit code is 0 unless something crashed; PASS/MISS lines say how the targets went.
--quick: 100,000 rows instead of 1,000,000.
"""
import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import _jobs_load as jl
import _load
import _servers
import heartbeat as hb

MB = 1 << 20
CLIENTS = 5
TARGET_BASE_BYTES = 64 * MB
TARGET_HEART_BEAT_P99_MS = 20.0
HEART_BEAT_EVERY_S = 0.01
RSS_EVERY_S = 0.01
LAG_EVERY_S = 0.01
ZEROBLOB = "SELECT hex(zeroblob(50000000))"
ROWS_SQL = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < {n}) "
            "SELECT x, 'row ' || x FROM c")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="100,000 rows instead of 1,000,000")
    p.add_argument("--rows", type=int, help="rows of the big result (default 1,000,000)")
    p.add_argument("--clients", type=int, default=CLIENTS)
    p.add_argument("--fetch_page_bytes", type=int, default=1 * MB)
    p.add_argument("--max_output_bytes", type=int, default=256 * MB)
    p.add_argument("--select1", type=int, default=20,
                   help="SELECT 1 jobs timed from submit to eof before the load (0: none)")
    p.add_argument("--no_boost", action="store_true",
                   help="leave the server and heart-beat client at the default priority")
    p.add_argument("--no_pin", action="store_true", help="do not pin server and client to cores")
    p.add_argument("--switch_interval_ms", type=float, default=0,
                   help="an experiment: the server's sys.setswitchinterval (default: Python's "
                   "5 ms); how long a thread holding the GIL keeps the IOLoop waiting")
    args = p.parse_args(argv)
    if args.rows is None:
        args.rows = 100_000 if args.quick else 1_000_000
    return args


# -- the server ---------------------------------------------------------------------------

def serve(argv: List[str]) -> None:
    """Child mode: run the gateway with the limits under test; print READY <port>."""
    from sqlflow_playground import cli
    from sqlflow_playground.config import Config
    p = argparse.ArgumentParser()
    for flag in ("--ca_crt", "--server_crt", "--server_key", "--state_dir"):
        p.add_argument(flag, required=True)
    p.add_argument("--fetch_page_bytes", type=int, required=True)
    p.add_argument("--max_output_bytes", type=int, required=True)
    p.add_argument("--switch_interval_ms", type=float, default=0)
    p.add_argument("--lag_file", required=True)
    a = p.parse_args(argv)
    if a.switch_interval_ms > 0:
        sys.setswitchinterval(a.switch_interval_ms / 1000)
    cli.setup_logging("warning")
    os.makedirs(a.state_dir, exist_ok=True)
    config = Config(port=0, host=_load.HOST, ca_crt=a.ca_crt, server_crt=a.server_crt,
                    server_key=a.server_key, state_dir=a.state_dir, log_level="warning",
                    executor_threads=16, fetch_page_bytes=a.fetch_page_bytes,
                    max_output_bytes=a.max_output_bytes)

    def started(gateway) -> None:
        probe_lag(asyncio.get_running_loop(), a.lag_file)
        print(f"READY {gateway.port}", flush=True)

    asyncio.run(cli.serve(config, on_started=started))


def probe_lag(loop: asyncio.AbstractEventLoop, path: str) -> None:
    """Every LAG_EVERY_S, on the server's own loop: how late the callback ran, as
    "WALL_TIME LAG_MS" lines in ``path`` (flushed once a second)."""
    out = open(path, "w", buffering=1 << 16)
    state = {"due": loop.time() + LAG_EVERY_S, "flushed": loop.time()}

    def tick() -> None:
        now = loop.time()
        out.write(f"{time.time():.4f} {1000 * (now - state['due']):.3f}\n")
        if now - state["flushed"] > 1:
            out.flush()
            state["flushed"] = now
        state["due"] = now + LAG_EVERY_S
        loop.call_at(state["due"], tick)

    loop.call_at(state["due"], tick)


def lags_between(path: Path, start: float, end: float) -> List[float]:
    """The server's IOLoop lags (ms) sampled between two wall-clock times."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lags = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and start <= float(parts[0]) <= end:
            lags.append(float(parts[1]))
    return lags


BOOST_NICE = -10


def boosted() -> None:
    """A child's preexec_fn: its own session (so, where Linux groups a session's processes
    for scheduling, its own autogroup), nice BOOST_NICE for all its threads, and it dies
    with this process. Best effort: without the privilege it runs unboosted."""
    os.setsid()
    try:
        os.nice(BOOST_NICE)
    except OSError:
        pass
    _servers._die_with_parent()


def boost_group(pid: int) -> str:
    """Raise the autogroup of ``pid``'s session (whose weight is what counts between
    sessions, whatever the nice values inside it); a note saying how it went."""
    try:
        with open(f"/proc/{pid}/autogroup", "w") as fh:
            fh.write(str(BOOST_NICE))
    except FileNotFoundError:
        pass  # no autogroup: the nice value is what counts
    except OSError as e:
        return f"not boosted ({e.strerror})"
    nice = os.getpriority(os.PRIO_PROCESS, pid)
    return f"nice {nice}" + (" (not boosted)" if nice != BOOST_NICE else "")


class SqlServer(_servers.ServerProcess):
    """A ServerProcess whose child is this file in ``_serve`` mode."""

    def __init__(self, keys: _servers.KeyStore, workdir: Path, core: Optional[int],
                 args: argparse.Namespace):
        super().__init__("sql", keys, workdir, core)
        self.lag_file = workdir / "ioloop_lag.txt"
        self.boost = not args.no_boost
        self.limits = ["--fetch_page_bytes", str(args.fetch_page_bytes),
                       "--max_output_bytes", str(args.max_output_bytes),
                       "--switch_interval_ms", str(args.switch_interval_ms),
                       "--lag_file", str(self.lag_file)]

    def start(self, timeout_s: float = 30.0) -> int:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = _servers.pin_command(self.core) + [
            sys.executable, str(Path(__file__).resolve()), "_serve",
            "--ca_crt", self.keys.ca, "--server_crt", self.keys.crt("server"),
            "--server_key", self.keys.key("server"), "--state_dir", str(self.workdir / "state"),
            *self.limits]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, cwd=str(self.workdir),
                preexec_fn=boosted if self.boost else _servers._die_with_parent)
        self.priority = boost_group(self.proc.pid) if self.boost else "default priority"
        self.port = self._await_ready(timeout_s)
        return self.port


def memory_kib(pid: int) -> Dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":")
                out[name] = int(value.split()[0])
    return out


def children(pid: int) -> List[int]:
    """The processes ``pid`` started (any of its threads), from /proc."""
    found = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                found += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return found


class RssSampler(threading.Thread):
    """The server's VmRSS every RSS_EVERY_S; ``peak`` in bytes. Also the sum of its
    children's (the sql jobs' runners), ``runners_peak``, and how many ran at once."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stopping = pid, 0, threading.Event()
        self.runners_peak, self.runners_most = 0, 0

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.peak = max(self.peak, memory_kib(self.pid)["VmRSS"] * 1024)
            except (OSError, KeyError):
                return
            total, running = 0, children(self.pid)
            for child in running:
                try:
                    total += memory_kib(child).get("VmRSS", 0) * 1024
                except OSError:
                    pass  # ended meanwhile
            self.runners_peak = max(self.runners_peak, total)
            self.runners_most = max(self.runners_most, len(running))
            self.stopping.wait(RSS_EVERY_S)


# -- the load -----------------------------------------------------------------------------

async def run_job(pool: jl.Pool, user: str, sql: str) -> Dict[str, Any]:
    """Submit, then fetch page by page to eof: what a client saw."""
    t0 = time.monotonic()
    code, answer = await pool.call("POST", "/api/jobs", {"user_id": user, "task_type": "sql",
                                                         "spec": {"sql": sql}})
    if code != 201:
        raise RuntimeError(f"submit for {user}: HTTP {code} {answer}")
    return await fetch_all(pool, user, answer["token"], t0)


async def fetch_all(pool: jl.Pool, user: str, token: str, t0: float) -> Dict[str, Any]:
    """Fetch the job page by page from its start to eof."""
    cursor, pages, rows, largest = "", 0, 0, 0
    while True:
        raw = (f"GET /api/jobs/{token}?since={cursor}&wait=5 HTTP/1.1\r\n"
               f"Host: {_load.SERVER_NAME}:{pool.port}\r\n\r\n").encode()
        conn = await pool.free.get()
        try:
            if conn is None:
                conn = await _load.connect(pool.port, pool.ctx, _load.BodyConnection)
            code, body = await asyncio.wait_for(conn.request(raw), 120)
        except BaseException:
            if conn is not None:
                conn.close()
            pool.free.put_nowait(None)
            raise
        pool.free.put_nowait(conn)
        if code != 200:
            raise RuntimeError(f"fetch for {user}: HTTP {code} {body[:200]!r}")
        largest = max(largest, len(body))
        page = json.loads(body)
        pages += 1
        rows += sum(1 for r in page["responses"] if "row" in r)
        cursor = page["next"]
        if page["eof"]:
            return {"status": page["status"], "message": page["message"], "pages": pages,
                    "rows": rows, "largest": largest, "seconds": time.monotonic() - t0,
                    "token": token}


async def refetch(port: int, ctx, user: str, token: str) -> Dict[str, Any]:
    pool = jl.Pool(port, ctx, 1)
    try:
        return await fetch_all(pool, user, token, time.monotonic())
    finally:
        pool.close()


async def client(port: int, ctx, user: str, args: argparse.Namespace) -> Dict[str, Any]:
    pool = jl.Pool(port, ctx, 1)
    try:
        code, answer = await pool.call("POST", "/api/create_db", {"user_id": user})
        if code != 200:
            raise RuntimeError(f"create_db {user}: HTTP {code} {answer}")
        blob = await run_job(pool, user, ZEROBLOB)
        big = await run_job(pool, user, ROWS_SQL.format(n=args.rows))
        return {"zeroblob": blob, "rows": big}
    finally:
        pool.close()


async def heart_beats(port: int, ctx, stop: asyncio.Event, latencies_ms: List[float]) -> None:
    conn = await _load.connect(port, ctx)
    raw = _load.get_request(port, hb.HEART_BEAT)
    try:
        while not stop.is_set():
            start = time.perf_counter()
            status = await conn.request(raw)
            if status != 200:
                raise RuntimeError(f"heart beat: HTTP {status}")
            latencies_ms.append(1000 * (time.perf_counter() - start))
            await asyncio.sleep(max(0.0, HEART_BEAT_EVERY_S - (time.perf_counter() - start)))
    finally:
        conn.close()


def beat(argv: List[str]) -> None:
    """Child mode: heart beats until stdin closes, then their latencies (ms) as JSON.

    A process of its own: in the load generator's process, the fetching clients' JSON
    parsing (megabytes per page) would hold up the heart-beat client, not the server."""
    port, ca, crt, key = int(argv[0]), argv[1], argv[2], argv[3]

    async def run() -> List[float]:
        stop, latencies = asyncio.Event(), []
        loop = asyncio.get_running_loop()
        loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.read() or stop.set())
        await heart_beats(port, _load.client_context(ca, crt, key), stop, latencies)
        return latencies

    print(json.dumps(asyncio.run(run())), flush=True)


def start_beats(port: int, keys: _servers.KeyStore, boost: bool = True) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "_beat", str(port), keys.ca,
         keys.crt("bench"), keys.key("bench")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        preexec_fn=boosted if boost else _servers._die_with_parent)
    if boost:
        boost_group(proc.pid)
    return proc


def stop_beats(proc: subprocess.Popen) -> List[float]:
    out, _ = proc.communicate(timeout=30)  # closes its stdin: it stops and reports
    return json.loads(out)


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


async def select1_latencies(port: int, ctx, user: str, n: int) -> List[float]:
    """Milliseconds from submit to eof of ``n`` ``SELECT 1`` jobs, one after the other."""
    pool = jl.Pool(port, ctx, 1)
    try:
        latencies = []
        for _ in range(n):
            result = await run_job(pool, user, "SELECT 1")
            if result["status"] != "SUCCEEDED" or result["rows"] != 1:
                raise RuntimeError(f"SELECT 1: {result['status']} {result['message']}")
            latencies.append(1000 * result["seconds"])
        return latencies
    finally:
        pool.close()


async def run_all(args: argparse.Namespace, server: SqlServer, keys: _servers.KeyStore) -> int:
    front = _load.client_context(keys.ca, keys.crt("front"), keys.key("front"))
    pid = server.proc.pid
    # Warm the server up (TLS, store, a first sql job) before taking its baseline RSS.
    await client(server.port, front, "warmup", argparse.Namespace(rows=10))
    if args.select1 > 0:
        lat = await select1_latencies(server.port, front, "warmup", args.select1)
        print(f"SELECT 1 job, submit to eof ({len(lat)} jobs, one at a time): p50 "
              f"{percentile(lat, 50):.1f} ms, max {max(lat):.1f} ms", flush=True)
    await asyncio.sleep(0.5)
    baseline = memory_kib(pid)["VmRSS"] * 1024
    sampler = RssSampler(pid)
    sampler.start()
    beating = start_beats(server.port, keys, server.boost)
    await asyncio.sleep(0.5)  # connected and beating before the load starts
    t0, wall0 = time.monotonic(), time.time()
    try:
        results = await asyncio.gather(*(client(server.port, front, f"tenant{i}", args)
                                         for i in range(args.clients)))
    finally:
        beats = stop_beats(beating)
        sampler.stopping.set()
        sampler.join()
    wall, wall1 = time.monotonic() - t0, time.time()
    hwm = memory_kib(pid)["VmHWM"] * 1024
    # The same results again, finished now: the fetch path alone, without the jobs' work.
    beating = start_beats(server.port, keys, server.boost)
    await asyncio.sleep(0.5)
    t1, wall2 = time.monotonic(), time.time()
    try:
        again = await asyncio.gather(*(
            refetch(server.port, front, f"tenant{i}", r["rows"]["token"])
            for i, r in enumerate(results)))
    finally:
        beats_again = stop_beats(beating)
    wall_again, wall3 = time.monotonic() - t1, time.time()
    await asyncio.sleep(1.5)  # the server flushes its lag samples once a second
    lags = lags_between(server.lag_file, wall0, wall1)
    lags_again = lags_between(server.lag_file, wall2, wall3)
    hwm = max(hwm, memory_kib(pid)["VmHWM"] * 1024)
    peak = max(sampler.peak, hwm)
    growth = peak - baseline
    allowed = TARGET_BASE_BYTES + 2 * args.fetch_page_bytes * args.clients

    print(f"{'client':<9} {'zeroblob job':<42} {'rows job':<10} {'rows':>9} {'pages':>6} "
          f"{'largest body':>12} {'seconds':>8}")
    for i, r in enumerate(results):
        z, b = r["zeroblob"], r["rows"]
        blob = f"{z['status']} in {z['seconds']:.2f}s: {z['message'][:22]}"
        print(f"tenant{i:<3} {blob:<42} {b['status']:<10} {b['rows']:>9} {b['pages']:>6} "
              f"{b['largest']:>12} {b['seconds']:>8.1f}")
    print(f"zeroblob job's message (tenant0): {results[0]['zeroblob']['message']}")
    print(f"\nall clients done in {wall:.1f}s; heart beats: {len(beats)}, p50 "
          f"{percentile(beats, 50):.2f} ms, p99 {percentile(beats, 99):.2f} ms, "
          f"max {max(beats or [float('nan')]):.2f} ms")
    print(f"re-fetch of the 5 finished results ({sum(a['rows'] for a in again)} rows, "
          f"{sum(a['pages'] for a in again)} pages) in {wall_again:.1f}s; heart beats: "
          f"{len(beats_again)}, p50 {percentile(beats_again, 50):.2f} ms, p99 "
          f"{percentile(beats_again, 99):.2f} ms, max {max(beats_again or [float('nan')]):.2f} ms")
    for what, values in (("jobs running, fetched", lags), ("re-fetch", lags_again)):
        print(f"server IOLoop lag ({what}): {len(values)} samples, p50 "
              f"{percentile(values, 50):.2f} ms, p99 {percentile(values, 99):.2f} ms, "
              f"max {max(values or [float('nan')]):.2f} ms")
    print(f"server RSS: baseline {baseline / MB:.1f} MB, sampled peak {sampler.peak / MB:.1f} MB, "
          f"VmHWM {hwm / MB:.1f} MB -> growth {growth / MB:.1f} MB "
          f"(allowed {allowed / MB:.0f} MB = 64 MB + 2 x {args.fetch_page_bytes / MB:g} MB "
          f"x {args.clients} clients)")
    print(f"sql job runners (the server's child processes, outside its RSS): at most "
          f"{sampler.runners_most} at once, peak total RSS {sampler.runners_peak / MB:.1f} MB")
    rows_ok = all(r["rows"]["status"] == "SUCCEEDED" and r["rows"]["rows"] == args.rows
                  for r in results)
    blob_ok = all(r["zeroblob"]["status"] == "FAILED" for r in results)
    pages_ok = all(r["rows"]["largest"] <= args.fetch_page_bytes + 4096 for r in results)
    print("\ntargets:")
    for what, ok in (
            (f"server RSS growth <= {allowed / MB:.0f} MB", growth <= allowed),
            (f"heart-beat p99 < {TARGET_HEART_BEAT_P99_MS:g} ms (jobs running, fetched)",
             percentile(beats, 99) < TARGET_HEART_BEAT_P99_MS),
            (f"heart-beat p99 < {TARGET_HEART_BEAT_P99_MS:g} ms (finished results re-fetched)",
             percentile(beats_again, 99) < TARGET_HEART_BEAT_P99_MS),
            (f"every client got all {args.rows} rows, SUCCEEDED", rows_ok),
            ("every zeroblob job refused (FAILED)", blob_ok),
            ("no fetch body over fetch_page_bytes + 4 KiB of envelope", pages_ok)):
        print(f"  {what:<62} {hb.verdict(ok)}")
    tail = server.log_tail(5)
    if tail:
        print("note: the server logged (last lines):\n    " + tail.replace("\n", "\n    "))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_serve"]:
        serve(argv[1:])
        return 0
    if argv[:1] == ["_beat"]:
        beat(argv[1:])
        return 0
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server_core, pin_note = hb.pin_self(args)
    print(f"sql output bench: {args.clients} clients, {args.rows} rows each, fetch_page_bytes "
          f"{args.fetch_page_bytes}, max_output_bytes {args.max_output_bytes}; {pin_note}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="sqlflow-bench-") as tmp:
        keys = _servers.KeyStore(Path(tmp) / "key_store")
        server = SqlServer(keys, Path(tmp), server_core, args)
        try:
            server.start()
            print(f"server and heart-beat client: {server.priority}; load "
                  f"{' '.join(open('/proc/loadavg').read().split()[:3])}", flush=True)
            hb.run_loop(run_all(args, server, keys))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
