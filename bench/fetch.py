"""Fetch benchmark: how fast is Fetch with 1,000 jobs in the store, and how soon does a
line printed by a running job reach a long-polling client?
Run:  .venv/bin/python bench/fetch.py [--quick]

Server: the real Gateway (``_server_entry.py jobs``: the ``process`` task type on, quotas
of 2000 jobs, fetch_timeout_s a day), one process, mutual TLS with certificates from
scripts/gen_cert.sh, 127.0.0.1 only, a temporary state dir (sqlite store and jobs dir),
logging at WARNING.

Jobs, submitted by a frontend certificate for 100 users u00..u99:
  900 finished: ``/bin/echo`` jobs, followed to eof like a client would. They are run by
      the server started unpinned, so that their 900 start-ups (a Python runner each)
      spread over all cores; the server is then stopped and started again, pinned to
      core 0 with taskset, on the same state dir (finished jobs stay as they were).
  100 tickers: running ``process`` jobs started by the pinned server, each a Python
      command printing ``N TIMESTAMP`` (``time.time()`` as repr) every 0.2-0.5 s, which
      moves itself off the benchmark's two cores when the machine has other cores.
The store and the jobs dir hold 1,000 jobs; each user has 9 finished jobs and 1 ticker.

The load generator is this process (pinned to core 1, asyncio on uvloop), raw HTTP/1.1
over keep-alive mutual-TLS connections. Each scenario: warm-up, then a measured window.
  (i)   fetch: 16 connections, one request at a time each: GET /api/jobs/{token}?since=
        {cursor} (no wait), round-robin over the 1,000 jobs (shuffled); each job's cursor
        moves on to the answer's ``next``, as a client's would: a finished job answers
        nothing new and eof, a ticker the lines since the last visit. Latency as the
        client sees it.
  (ii)  delivery: 100 long-pollers, one per ticker, each on its own connection:
        GET /api/jobs/{token}?since={cursor}&wait=30, again as soon as the answer came.
        A line's delay = the client's time.time() when the answer arrived minus the
        timestamp in the line. Waiting long-polls are looked at together (one executor
        call for all of them, longpoll.LongPolls) every 50 ms (jobs.POLL_INTERVAL_S), so
        0-50 ms (25 on average) of the delay is by design.
  (iii) both at once.

Columns: "req/s" counts answers of that row's kind (fetches, or long-poll answers);
"samples" the latencies (fetch) or line delays (delivery) in the window, of which
p50/p99/max are given; under a fetch row, "running" gives the same for the fetches of
running jobs alone (the others are finished jobs at their end). "srv ms/req" is the server process's CPU time (utime+stime, all
threads) over the window divided by ALL requests answered in it (both kinds in iii);
"srv core" / "cli core" the share of one core used by server and load generator; "jobs"
what the tickers and their runners used, where they ran on the benchmark's cores;
"other" what else ran on those cores (/proc/stat): above 15% the row is noise.
Targets (informational; the exit code is 0 unless something crashed): fetch p99 < 20 ms,
delivery p99 < 100 ms, each alone and in (iii).

Reading: the fetch clients are a closed loop, so once the server's core is saturated
(srv core ~90-100%) a fetch waits behind the other connections' and its latency is about
connections x srv ms/req; "srv ms/req" is the figure to improve, and ``--connections 1``
shows the latency of a fetch on its own. In (ii) the server is not saturated: its CPU is
what 100 waiting long-polls cost (their jobs are all re-read every 50 ms), per answer.
Before the scenarios, a window with no client at all measures the server's "upkeep" with
the tickers running (the output shipping tick every 0.25 s over the running jobs, ...).
The summary ends with the floor of the fetch latency on one core (see floor_lines): CPU
per fetch from (i) and per long-poll answer from (ii), both less the upkeep, give
    floor = connections x CPU per fetch / (1 - upkeep - long-poll answers/s x CPU per answer)
the lowest mean latency 16 closed-loop connections can see once the server's core is
saturated; p99 lies above it. It needs (i) (and (ii) for (iii)) in the same run.
--perf DIR: the server sampled by perf record in each scenario, split by shared object
(libcrypto/libssl: TLS; libpython: the interpreter; the kernel: syscalls, scheduling).
--quick: 2 s windows after 1 s warm-up and 300 jobs (200 finished); setting up the
finished jobs goes at ~25 submits/s, so 1,000 jobs take ~40 s before anything is measured.
--profile: (iii) only unless --scenarios says otherwise, with the server's IOLoop and executor threads under cProfile.

Priority: the machine may be shared; unless ``--no_boost`` this process (and so the server
and the tickers it starts) runs in a session of its own at nice -10, autogroup nice -10
(connections.boost), so the other users of the cores decide less of the figures; in a
session of its own it no longer gets a terminal's Ctrl-C: stop it with SIGTERM.

Clean-up: a process job's runner lives in its own session and survives the server, so
the tickers are cancelled (DELETE /api/jobs/{token}) before the server stops; then any
job command still running under the jobs dir (child.pgid) is killed; and every ticker
exits by itself once the benchmark should long have ended.
"""
import argparse
import asyncio
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import _jobs_load as jl
import _load
import _servers
import heartbeat as hb
from connections import boost
from _jobs_load import Job, Samples
from _load import Result

TARGET_FETCH_P99_MS = 20.0
TARGET_DELIVERY_P99_MS = 100.0
USERS = 100
SETUP_CONNECTIONS = 16
SETUP_TIMEOUT_S = 180.0  # for the finished jobs to finish, the tickers to print
SCENARIOS = ("i", "ii", "iii")
FETCH, DELIVERY = "fetch", "delivery"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, help="measured window (default 10)")
    p.add_argument("--warmup", type=float, help="warm-up before each window (default 2)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: defaults --seconds 2 --warmup 1 --jobs 300 (the server "
                   "takes ~25 submits/s, so 1000 jobs take 40 s to set up)")
    p.add_argument("--jobs", type=int, default=None,
                   help="jobs in the store, tickers included (default 1000)")
    p.add_argument("--tickers", type=int, default=100, help="running jobs and long-pollers")
    p.add_argument("--connections", type=int, default=16, help="fetch connections in (i), (iii)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help="comma-separated, of i, ii, iii (default all)")
    p.add_argument("--no_pin", action="store_true", help="do not pin server and client to cores")
    p.add_argument("--perf", metavar="DIR",
                   help="sample the server with perf record during each scenario (warm-up "
                   "and window) into DIR/SCENARIO.data; print the split by shared object "
                   "(TLS in libcrypto/libssl, the interpreter, the kernel, ...)")
    p.add_argument("--no_boost", action="store_true",
                   help="run at the default priority (else: a session of its own at nice -10 "
                   "with autogroup nice -10, as bench/connections.py and sql_output.py do)")
    p.add_argument("--profile", action="store_true",
                   help="run (iii), or --scenarios, with the server under cProfile; print its top costs")
    args = p.parse_args(argv)
    for name, default, quick in (("seconds", 10.0, 2.0), ("warmup", 2.0, 1.0),
                                 ("jobs", 1000, 300)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else default)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if args.profile and args.scenarios == list(SCENARIOS):
        args.scenarios = ["iii"]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown or not 0 < args.tickers <= args.jobs:
        p.error(f"bad --scenarios {sorted(unknown)} or --tickers/--jobs")
    return args


def user(i: int) -> str:
    return f"u{i % USERS:02d}"


# -- setup --------------------------------------------------------------------------------

def ticker_seconds(args: argparse.Namespace) -> float:
    """How long a ticker prints: the whole benchmark with a wide margin, not forever."""
    return SETUP_TIMEOUT_S + len(SCENARIOS) * (args.warmup + args.seconds + 20) + 60


async def make_finished_jobs(server: _servers.ServerProcess, front_ctx,
                             n: int) -> Tuple[List[Job], str]:
    pool = jl.Pool(server.port, front_ctx, SETUP_CONNECTIONS)
    try:
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        jobs = await jl.submit_all(pool, [
            (user(i), ["/bin/echo", f"finished job {i} of {n} for {user(i)}"], False, 60.0)
            for i in range(n)])
        cpu1, t1 = server.cpu_seconds(), time.monotonic()
        await jl.follow_all(pool, jobs, SETUP_TIMEOUT_S, until_eof=True)
        t2 = time.monotonic()
    finally:
        pool.close()
    return jobs, (f"{n} /bin/echo jobs submitted in {t1 - t0:.1f}s ({n / (t1 - t0):.0f}/s, "
                  f"server CPU {1000 * (cpu1 - cpu0) / n:.1f} ms per submit), all followed "
                  f"to eof {t2 - t1:.1f}s later")


async def start_tickers(pool: jl.Pool, args: argparse.Namespace,
                        cores: List[int]) -> Tuple[List[Job], str]:
    seconds = ticker_seconds(args)
    command = jl.ticker_command(seconds, cores)
    t0 = time.monotonic()
    tickers = await jl.submit_all(pool, [(user(i), command, True, seconds + 30)
                                         for i in range(args.tickers)])
    t1 = time.monotonic()
    await jl.follow_all(pool, tickers, SETUP_TIMEOUT_S, until_eof=False)  # printed a line
    t2 = time.monotonic()
    return tickers, (f"{len(tickers)} tickers submitted in {t1 - t0:.1f}s, all printing "
                     f"{t2 - t1:.1f}s later")


async def store_census(pool: jl.Pool, jobs_dir: Path) -> str:
    counts = []
    for status in ("SUCCEEDED", "RUNNING"):
        code, answer = await pool.call("GET", f"/api/jobs?status={status}")
        counts.append(f"{len(answer['jobs']) if code == 200 else '?'} {status}")
    return f"store: {' + '.join(counts)}; jobs dir: {len(os.listdir(jobs_dir))} entries"


# -- scenarios ------------------------------------------------------------------------------

def scenario_load(name: str, port: int, ctx, jobs: List[Job], tickers: List[Job],
                  args: argparse.Namespace) -> Tuple[Callable, Dict[str, Samples]]:
    samples: Dict[str, Samples] = {}
    starts = []
    if name in ("i", "iii"):
        samples[FETCH] = Samples()
        starts.append(jl.fetch_load(port, ctx, jobs, args.connections, samples[FETCH]))
    if name in ("ii", "iii"):
        samples[DELIVERY] = Samples()
        starts.append(jl.long_poll_load(port, ctx, tickers, samples[DELIVERY]))
    return jl.together(*starts), samples


async def measure_idle(server: _servers.ServerProcess, args: argparse.Namespace,
                       workload_cpu: Callable[[], float]) -> Result:
    """The server's CPU with the tickers running and no client at all: its upkeep of the
    running jobs (the output shipping tick, reaping), which every scenario pays too."""
    async def nobody(run) -> list:
        async def idle() -> None:
            while not run.stopping:
                await asyncio.sleep(0.05)
        return [asyncio.ensure_future(idle())]
    return await _load.measure(nobody, server.cpu_seconds,
                               lambda: _servers.busy_seconds(args.cores),
                               0.0, args.seconds, workload_cpu=workload_cpu)


async def run_scenario(name: str, server: _servers.ServerProcess, ctx, jobs: List[Job],
                       tickers: List[Job], args: argparse.Namespace,
                       workload_cpu: Callable[[], float]) -> Tuple[Result, Dict[str, Samples]]:
    load, samples = scenario_load(name, server.port, ctx, jobs, tickers, args)
    perf = start_perf(args, name, server)
    try:
        result = await _load.measure(load, server.cpu_seconds,
                                     lambda: _servers.busy_seconds(args.cores),
                                     args.warmup, args.seconds, workload_cpu=workload_cpu)
    finally:
        stop_perf(perf)
    return result, samples


def start_perf(args: argparse.Namespace, name: str,
               server: _servers.ServerProcess) -> Optional[subprocess.Popen]:
    if not args.perf:
        return None
    os.makedirs(args.perf, exist_ok=True)
    assert server.proc is not None
    return subprocess.Popen(["perf", "record", "-F", "999", "-o",
                             os.path.join(args.perf, f"{name}.data"), "-p", str(server.proc.pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_perf(perf: Optional[subprocess.Popen]) -> None:
    if perf is None:
        return
    perf.send_signal(signal.SIGINT)
    try:
        perf.wait(30)
    except subprocess.TimeoutExpired:
        perf.kill()
        perf.wait()


def perf_split(args: argparse.Namespace, name: str, top: int = 10) -> List[str]:
    """The server's samples in a scenario by shared object, largest first."""
    path = os.path.join(args.perf, f"{name}.data")
    out = subprocess.run(["perf", "report", "-i", path, "--stdio", "--sort", "dso",
                          "--percent-limit", "0.5"], capture_output=True, text=True)
    shares = [line.split(None, 1) for line in out.stdout.splitlines()
              if line.strip() and not line.startswith("#")]
    return [f"{share:>7} {dso.strip()}" for share, dso in shares[:top]]


# -- reporting ------------------------------------------------------------------------------

def label(name: str, args: argparse.Namespace) -> str:
    return {"i": f"(i) fetch x{args.connections}, {args.jobs} jobs",
            "ii": f"(ii) {args.tickers} long-polls",
            "iii": "(iii) (i) and (ii) together"}[name]


HEADER = (f"{'scenario':<30} {'row':<8} {'req/s':>7} {'samples':>7} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'max ms':>7} {'srv ms/req':>10} {'srv core':>8} {'cli core':>8} "
          f"{'jobs':>5} {'other':>6} {'errors':>6}")


def rows(name: str, args: argparse.Namespace, r: Result, samples: Dict[str, Samples]) -> List[str]:
    answered = sum(s.requests for s in samples.values())
    cpu_per_request = 1000.0 * r.server_cpu_s / answered if answered else float("nan")
    out = []
    for what, s in samples.items():
        out.append(
            f"{label(name, args):<30} {what:<8} {s.requests / r.wall_s:>7.0f} "
            f"{len(s.values_ms):>7} {s.percentile(50):>7.2f} {s.percentile(99):>7.2f} "
            f"{s.max:>7.2f} {cpu_per_request:>10.3f} {r.server_core_share:>8.0%} "
            f"{r.client_core_share:>8.0%} {r.workload_core_share:>5.0%} "
            f"{r.other_core_share:>6.0%} {s.errors + r.errors:>6}")
        if s.running_ms:  # the same fetches, those of running jobs only
            run = s.running_ms
            out.append(f"{'':<30} {'  running':<8} {len(run) / r.wall_s:>7.0f} {len(run):>7} "
                       f"{s.percentile(50, run):>7.2f} {s.percentile(99, run):>7.2f} "
                       f"{max(run):>7.2f}")
    return out


def show(name: str, args: argparse.Namespace, r: Result, samples: Dict[str, Samples]) -> None:
    for line in rows(name, args, r, samples):
        print(line, flush=True)
    for what, s in samples.items():
        if s.errors:
            print(f"    {what}: {s.errors} error(s); first: {s.first_error}", flush=True)
    if r.errors:
        print(f"    {r.errors} worker(s) failed; first: {r.first_error}", flush=True)


def per_request_ms(r: Result, samples: Dict[str, Samples]) -> float:
    answered = sum(s.requests for s in samples.values())
    return 1000.0 * r.server_cpu_s / answered if answered else float("nan")


def own_ms(r: Result, requests: int, idle: Optional[Result]) -> float:
    """Server CPU per request of a window, less the upkeep it would have paid anyway;
    NaN if the server used less than that (it hardly ran: the row says nothing)."""
    upkeep = idle.server_cpu_s / idle.wall_s if idle is not None and idle.wall_s else 0.0
    own = r.server_cpu_s - upkeep * r.wall_s
    return 1000.0 * own / requests if requests and own > 0 else float("nan")


def floor_lines(args: argparse.Namespace, idle: Optional[Result],
                results: Dict[str, Tuple[Result, Dict[str, Samples]]]) -> List[str]:
    """What one core allows the fetches of (i) and (iii), from the server's CPU per request.

    The fetch clients are a closed loop: a fetch's mean latency is connections / fetches
    per second (Little's law), whatever the server does. With the server's core its own
    and saturated, fetches per second = (the core left by the rest) / (CPU per fetch), so
    the mean latency can be no lower than
        floor = connections x CPU per fetch / (1 - upkeep - long-poll answers/s x CPU per answer)
    upkeep: the server's CPU with the tickers running and no client (the idle window);
    CPU per fetch: (i)'s server CPU less upkeep, per fetch; CPU per long-poll answer:
    (ii)'s, likewise (it includes the looks every 50 ms at all waiting jobs). It is a
    floor for the mean; p99 lies above it (a fetch also queues behind the burst of
    long-poll answers after each look, and behind the executor thread's hold of the GIL).
    """
    out = []
    upkeep = 0.0
    if idle is not None and idle.wall_s:
        upkeep = idle.server_cpu_s / idle.wall_s
        out.append(f"upkeep (tickers running, no client): server {1000 * upkeep:.0f} ms CPU/s "
                   f"= {upkeep:.0%} of a core (other {idle.other_core_share:.0%})")
    fetch_ms = delivery_ms = None
    if "i" in results:
        r, samples = results["i"]
        fetch_ms = own_ms(r, samples[FETCH].requests, idle)
        out.append(f"CPU per fetch (i): {fetch_ms:.3f} ms (srv ms/req "
                   f"{per_request_ms(r, samples):.3f} less upkeep)")
    if "ii" in results:
        r, samples = results["ii"]
        delivery_ms = own_ms(r, samples[DELIVERY].requests, idle)
        out.append(f"CPU per long-poll answer (ii): {delivery_ms:.3f} ms (srv ms/req "
                   f"{per_request_ms(r, samples):.3f} less upkeep)")
    for name in ("i", "iii"):
        if name not in results or FETCH not in results[name][1]:
            continue
        r, samples = results[name]
        s = samples[FETCH]
        rate = s.requests / r.wall_s if r.wall_s else 0.0
        little = 1000.0 * args.connections / rate if rate else float("nan")
        mean = sum(s.values_ms) / len(s.values_ms) if s.values_ms else float("nan")
        line = (f"{name}: fetch mean {mean:.1f} ms (Little: {args.connections} connections / "
                f"{rate:.0f} fetches/s = {little:.1f} ms), p99 {s.percentile(99):.1f} ms, srv core "
                f"{r.server_core_share:.0%}; ")
        if fetch_ms is None or math.isnan(fetch_ms):
            out.append(line + "floor: needs (i) in the same run, with the server running")
            continue
        rest = upkeep
        terms = f"{upkeep:.2f}"
        if name == "iii":
            if delivery_ms is None or math.isnan(delivery_ms):
                out.append(line + "floor: needs (ii) in the same run, with the server running")
                continue
            answers = samples[DELIVERY].requests / r.wall_s if r.wall_s else 0.0
            rest += answers * delivery_ms / 1000.0
            terms += f" + {answers:.0f}/s x {delivery_ms:.2f} ms"
        if rest >= 1.0:
            out.append(line + f"floor: none, the rest ({terms}) takes {rest:.0%} of the core")
            continue
        noisy = [n for n in (("i",) if name == "i" else ("i", "ii", "iii")) if n in results
                 and results[n][0].other_core_share > hb.NOISY_OTHER_SHARE]
        line = line if not noisy else line.replace("; ", f" (noisy: {', '.join(noisy)}); ", 1)
        floor = args.connections * fetch_ms / (1.0 - rest)
        out.append(line + f"floor on one core: {args.connections} x {fetch_ms:.3f} ms / "
                   f"(1 - {terms}) = {floor:.1f} ms mean"
                   + (f" >= the {TARGET_FETCH_P99_MS:g} ms p99 target"
                      if floor >= TARGET_FETCH_P99_MS
                      else f" (p99 target {TARGET_FETCH_P99_MS:g} ms)"))
    return out


def summary(args: argparse.Namespace, results: Dict[str, Tuple[Result, Dict[str, Samples]]],
            notes: List[str], idle: Optional[Result] = None) -> None:
    print("\n== summary " + "=" * 110)
    print(HEADER)
    for name, (r, samples) in results.items():
        for line in rows(name, args, r, samples):
            print(line)
    print("\ntargets (informational; \"noisy\": other work ran on the benchmark's cores):")
    for name, (r, samples) in results.items():
        for what, target in ((FETCH, TARGET_FETCH_P99_MS), (DELIVERY, TARGET_DELIVERY_P99_MS)):
            s = samples.get(what)
            if s is None:
                continue
            p99 = s.percentile(99)
            ok = p99 < target and not s.errors
            noisy = " (noisy)" if r.other_core_share > hb.NOISY_OTHER_SHARE else ""
            name_ = f"{label(name, args)}: {what} {'latency' if what == FETCH else 'delay'} p99"
            print(f"  {name_ + f' < {target:g} ms':<62} {p99:>9.2f} ms  {hb.verdict(ok)}{noisy}")
    floors = floor_lines(args, idle, results)
    if floors:
        print("\nfloor of the fetch latency on one core (closed loop: mean = connections x CPU "
              "per fetch / core share left), from this run's CPU per request (see floor_lines):")
        for line in floors:
            print("  " + line)
    if args.perf:
        for name in results:
            print(f"\nperf, the server in {label(name, args)} (samples by shared object; "
                  f"{args.perf}/{name}.data):")
            for line in perf_split(args, name):
                print("  " + line)
    for note in notes:
        print("note: " + note)


# -- orchestration ---------------------------------------------------------------------------

async def setup_finished(args: argparse.Namespace, keys: _servers.KeyStore,
                         start: Callable) -> Tuple[List[Job], str]:
    server = start(core=None)  # unpinned: job start-ups spread over all cores
    try:
        front_ctx = _load.client_context(keys.ca, keys.crt("front"), keys.key("front"))
        return await make_finished_jobs(server, front_ctx, args.jobs - args.tickers)
    finally:
        server.stop()


async def run_all(args: argparse.Namespace, keys: _servers.KeyStore, start: Callable,
                  jobs_dir: Path, profile_to: Optional[Path]) -> None:
    finished, note = await setup_finished(args, keys, start)
    print("setup: " + note, flush=True)
    server = start(core=args.server_core, profile_to=profile_to)
    ctx = _load.client_context(keys.ca, keys.crt("front"), keys.key("front"))
    pool = jl.Pool(server.port, ctx, SETUP_CONNECTIONS)
    tickers: List[Job] = []
    idle: Optional[Result] = None
    try:
        tickers, note = await start_tickers(pool, args, args.job_cores)
        print("setup: " + note, flush=True)
        print("setup: " + await store_census(pool, jobs_dir), flush=True)
        jobs = finished + tickers
        random.Random(0).shuffle(jobs)
        commands, runners = jl.job_processes(jobs_dir, tickers)
        shared = not args.job_cores or set(args.job_cores) & set(args.cores)
        counted = runners + (commands if shared else [])  # their CPU is "jobs", not "other"
        print(f"setup: {len(commands)} ticker commands, {len(runners)} runners; the load "
              f"generator uses {args.connections} + {len(tickers)} connections\n", flush=True)
        idle = await measure_idle(server, args, lambda: jl.processes_cpu_seconds(counted))
        print(f"upkeep: with no client the server used "
              f"{1000 * idle.server_cpu_s / idle.wall_s:.0f} ms CPU/s "
              f"({idle.server_core_share:.0%} of a core; other {idle.other_core_share:.0%})\n",
              flush=True)
        print(HEADER, flush=True)
        results: Dict[str, Tuple[Result, Dict[str, Samples]]] = {}
        for name in args.scenarios:
            results[name] = await run_scenario(name, server, ctx, jobs, tickers, args,
                                               lambda: jl.processes_cpu_seconds(counted))
            show(name, args, *results[name])
            if results[name][0].requests + sum(s.requests for s in results[name][1].values()) == 0:
                hb.report_hang(server)
    finally:
        if tickers:
            problems = await jl.cancel_all(pool, tickers)
            if problems:
                print(f"note: cancelling {len(problems)} ticker(s) failed, e.g. {problems[0]}")
        pool.close()
    notes = hb.saturation_notes({name: r for name, (r, _) in results.items()})
    notes.append("delivery delay includes up to 50 ms by design: waiting long-polls look "
                 "at their jobs' output every 50 ms (jobs.POLL_INTERVAL_S).")
    if args.profile:
        print("(that run was under cProfile: its figures are inflated)")
        server.stop()
        print_profile(profile_to)
        return
    tail = server.log_tail(5)
    if tail:
        notes.append("the server logged (last lines):\n    " + tail.replace("\n", "\n    "))
    summary(args, results, notes, idle)


def print_profile(path: Path) -> None:
    import pstats
    stats = pstats.Stats(str(path))
    print("\nThe IOLoop thread and the executor threads together (threads' times add up "
          "beyond the wall clock). cProfile inflates call-heavy code, so compare shares, "
          "not times. Includes the tickers' start-up.")
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats("sqlflow_playground|tornado/web.py|sqlalchemy", 40)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    priority = "default priority (--no_boost)" if args.no_boost else boost()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below runs
    args.server_core, pin_note = hb.pin_self(args)
    usable = _servers.usable_cores()
    if args.server_core is None:
        args.cores, args.job_cores = usable, []
    else:
        args.cores = [hb.SERVER_CORE, hb.CLIENT_CORE]
        args.job_cores = [c for c in usable if c not in args.cores] or usable
    print(f"fetch bench: {args.jobs} jobs ({args.tickers} running), {args.seconds:g}s windows "
          f"after {args.warmup:g}s warm-up; {pin_note}; job commands on cores "
          f"{args.job_cores or 'any'}; {priority}", flush=True)
    servers: List[_servers.ServerProcess] = []
    with tempfile.TemporaryDirectory(prefix="sqlflow-bench-") as tmp:
        workdir = Path(tmp).resolve()
        keys = _servers.KeyStore(workdir / "key_store")
        jobs_dir = workdir / "jobs" / "state" / "jobs"  # ServerProcess("jobs").workdir/state

        def start(core: Optional[int], profile_to: Optional[Path] = None) -> _servers.ServerProcess:
            server = _servers.ServerProcess("jobs", keys, workdir, core, profile_to=profile_to)
            servers.append(server)
            server.start()
            return server

        try:
            hb.run_loop(run_all(args, keys, start, jobs_dir,
                                workdir / "jobs.prof" if args.profile else None))
        finally:
            for server in servers:
                server.stop()
            killed = jl.kill_leftovers(jobs_dir)
            if killed:
                print(f"note: killed {killed} job command(s) still running after the server "
                      "stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
