"""Pod-poll benchmark: how many Kubernetes API requests does polling 500 running `pod` jobs
cost through the gateway (status from the watch-fed pod cache), compared with a naive
gateway that GETs the pod on every poll?   Run:  .venv/bin/python bench/k8s_poll.py [--quick]

Processes (127.0.0.1 only, not pinned to cores):
  sim      the in-test API server tests/k8s_sim (``running_simulator()``), in a child
           process (bench/_k8s_entry.py sim): plain HTTP, a kubelet that runs each pod's
           command as a local process. It counts every API request it answers by (verb,
           resource, name); this benchmark resets the counts when a window opens and reads
           them when it closes, over the child's stdin/stdout.
  gateway  the real gateway (bench/_k8s_entry.py gateway): the ``pod`` task type on,
           kubeconfig of the simulator, namespace default, quotas of 2000 jobs, fetch
           timeout a day, mutual TLS with certificates from scripts/gen_cert.sh.
  this     the load generator (asyncio on uvloop, raw HTTP/1.1 from bench/_load.py).

Setup: a frontend certificate submits 500 ``pod`` jobs (image "busybox", command
``sleep 600``) for users k0..k9, then waits until every one reports RUNNING.

Priming: one fetch of every job (16 connections), as each client's first poll would be;
its API requests are counted and printed on their own: ~2 per pod, once (a first page of
the log and the follow stream), whatever the poll rate afterwards.

Phases, each a warm-up then a measured window (30 s; 10 s with --quick) over the same 500
pods; N keep-alive connections, one request in flight each, round-robin over the jobs.
Each gateway route runs at two poll rates: 50 clients flat out, and 5 clients that pause
100 ms after each answer (at most ~50 polls/s; 5 clients flat out would saturate the
gateway as well as 50 do, so the rates would not differ):
  fetch      gateway: GET /api/jobs/{token}?since={cursor}, no wait, as a client polls;
             the cursor moves on to each answer's ``next``.
  status     gateway: GET /plugins/v1/pod/v1/{token}, the status-only route (the job
             service's ``status()``: no output is read).
  naive x50  no gateway: what one without a cache would do per poll, straight to the API
             server: GET /api/v1/namespaces/default/pods/{name} (plain HTTP, keep-alive,
             flat out: the API server's CPU is the limit).

Columns: "pause" each client's pause between polls; "polls/s" answers per second (a poll whose job is not RUNNING counts as an
error); p50/p99 their latency; "API req/s" every request the API server answered in the
window, per second; "API/1k polls" the same per 1,000 polls; "pod GET/s" the part of it
that read a pod object (GET pods/{name} and LIST pods); "gw core"/"sim core" the share of
one core the gateway / API server process used (utime+stime, /proc/PID/stat). Below the
table, each phase's API requests by (verb, resource). A watch is counted once, when it
is opened, however many events it carries; the gateway's pod watch lasts 300 s, so a
window usually sees none, and its events cost the API server nothing per poll.

How to read it: a naive gateway makes 1,000 API requests per 1,000 polls, so its API load
is its poll rate. Ours should make ~0 pod reads, whatever the poll rate: compare the
two rows of one route: polls/s differ ~10x or more; API req/s should not. The fetch route
reads the job's output, which for a running pod is the pod's log: the first fetch of a pod
reads a page of it (GET pods/log) and starts following it with ONE streaming GET pods/log
(follow=true, sqlflow_playground/k8s/logfollow.py) into a bounded buffer; every later
fetch of that pod is answered from the buffer, with no API request. So the fetch route's
API requests are ~2 per pod, once (the priming line), not per poll; "open log streams"
after each fetch row is how many streams the API server is serving (one per followed pod).
The status route reads nothing.
Poll rates depend on the machine (three busy processes share it): the API counts are the
robust figures. Targets and PASS/MISS are informational; exit code 0 unless a crash.

Clean-up: the gateway is stopped (SIGTERM), then the simulator, which kills every pod
process; any pod process still alive after that (the simulator died) is killed by pid.
"""
import argparse
import asyncio
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import _load
import _servers
import heartbeat as hb
from _load import Run

ENTRY = Path(__file__).resolve().parent / "_k8s_entry.py"
USERS = 10
IMAGE = "busybox"
COMMAND = ["sleep", "600"]
SETUP_CONNECTIONS = 16
SETUP_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 30.0
POD_READS = {("get", "pods"), ("list", "pods")}
# "roughly constant": API req/s of the many-client row at most this times the few-client
# row's, plus this much slack (a watch re-opened in one window but not the other).
CONSTANT_FACTOR, CONSTANT_SLACK_RPS = 1.5, 1.0
MIN_POLL_RATIO = 3.0  # the two rows' poll rates must differ this much to show anything


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, help="measured window per phase (default 30)")
    p.add_argument("--warmup", type=float, help="warm-up before each window (default 2)")
    p.add_argument("--quick", action="store_true", help="defaults --seconds 10 --warmup 1")
    p.add_argument("--jobs", type=int, default=500, help="running pod jobs (default 500)")
    p.add_argument("--clients", type=int, default=50, help="connections of the busy rows")
    p.add_argument("--few_clients", type=int, default=5, help="connections of the slow rows")
    p.add_argument("--slow_interval", type=float, default=0.1,
                   help="pause of a slow row's client between polls, seconds (default 0.1)")
    args = p.parse_args(argv)
    if args.seconds is None:
        args.seconds = 10.0 if args.quick else 30.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 2.0
    if not (0 < args.jobs <= 2000 and 0 < args.few_clients < args.clients):
        p.error("need 0 < --jobs <= 2000 and 0 < --few_clients < --clients")
    return args


# -- child processes -------------------------------------------------------------------------

class Child(_servers.ServerProcess):
    """A bench/_k8s_entry.py child; start/stop/logs/CPU as bench/_servers.py's servers."""

    def __init__(self, kind: str, workdir: Path, argv: List[str]):
        super().__init__(kind, None, workdir, None)
        self.argv = argv

    def start(self, timeout_s: float = 30.0) -> int:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(ENTRY), self.kind, *self.argv], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=log, cwd=str(self.workdir),
                preexec_fn=_servers._die_with_parent)
        self.port = self._await_ready(timeout_s)
        return self.port

    def stop(self, timeout_s: float = 30.0) -> Optional[int]:
        proc = self.proc
        try:
            return super().stop(timeout_s)
        finally:
            if proc is not None and proc.stdin is not None:
                proc.stdin.close()


class Simulator(Child):
    """The API server child, with its control channel: ``ask("counts")`` and so on."""

    def __init__(self, workdir: Path):
        self.kubeconfig = str(workdir / "kubeconfig")
        super().__init__("sim", workdir, ["--kubeconfig", self.kubeconfig])
        self._pending = b""

    def ask(self, command: str, timeout_s: float = 20.0) -> Any:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"the simulator did not answer {command!r}:\n{self.log_tail()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(remaining, 0.5))
            if ready:
                self._pending += os.read(self.proc.stdout.fileno(), 1 << 20)
        line, self._pending = self._pending.split(b"\n", 1)
        return json.loads(line)

    def counts(self) -> Dict[Tuple[str, str], int]:
        return {(verb, resource): n for verb, resource, n in self.ask("counts")}

    def log_streams(self) -> int:
        """How many follow=true log streams the API server is serving now."""
        return self.ask("streams")


def kill_leftover_pods(pids: List[int]) -> int:
    """SIGKILL the process group of every pod process still alive (each led its own);
    only processes whose command line is still the pods' command."""
    killed = 0
    wanted = "\0".join(COMMAND).encode()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if not fh.read().startswith(wanted):
                    continue
            os.killpg(pid, signal.SIGKILL)
            killed += 1
        except (OSError, ProcessLookupError):
            continue
    return killed


# -- setup: submit the jobs, wait for them to run ----------------------------------------------

@dataclass
class Job:
    token: str
    cursor: str = ""  # where a fetch goes on reading, as a client's would


async def call(conn: _load.HttpConnection, raw: bytes) -> Tuple[int, Any]:
    status, body = await asyncio.wait_for(conn.request(raw), REQUEST_TIMEOUT_S)
    return status, json.loads(body) if body else None


async def with_connections(port: int, ctx, count: int, work: Callable) -> None:
    """Run ``work(conn)`` on ``count`` keep-alive connections at once."""
    async def one() -> None:
        conn = await _load.connect(port, ctx, _load.BodyConnection)
        try:
            await work(conn)
        finally:
            conn.close()
    await asyncio.gather(*(one() for _ in range(count)))


async def submit_jobs(port: int, ctx, count: int) -> List[Job]:
    todo = list(range(count))
    jobs: List[Job] = []
    deadline = time.monotonic() + SETUP_TIMEOUT_S

    async def submitter(conn) -> None:
        while todo and time.monotonic() < deadline:
            i = todo.pop()
            status, body = await call(conn, _load.post_json_request(port, "/api/jobs", {
                "user_id": f"k{i % USERS}", "task_type": "pod",
                "spec": {"image": IMAGE, "command": COMMAND}}))
            if status != 201:
                raise RuntimeError(f"submit answered {status}: {body}")
            jobs.append(Job(body["token"]))

    await with_connections(port, ctx, SETUP_CONNECTIONS, submitter)
    if len(jobs) != count:
        raise RuntimeError(f"only {len(jobs)} of {count} jobs submitted in {SETUP_TIMEOUT_S:g}s")
    return jobs


async def wait_running(port: int, ctx, jobs: List[Job]) -> None:
    """Until every job reports RUNNING (through the status route: no log reads)."""
    pending = list(jobs)
    deadline = time.monotonic() + SETUP_TIMEOUT_S
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} jobs not RUNNING after {SETUP_TIMEOUT_S:g}s")
        queue, still = list(pending), []

        async def checker(conn) -> None:
            while queue:
                job = queue.pop()
                status, body = await call(conn, _load.get_request(port, status_target(job)))
                state = body.get("job_state") if status == 200 else None
                if state not in ("PENDING", "RUNNING"):
                    raise RuntimeError(f"job {job.token[:8]}… answered {status}: {body}")
                if state != "RUNNING":
                    still.append(job)

        await with_connections(port, ctx, SETUP_CONNECTIONS, checker)
        pending = still
        if pending:
            await asyncio.sleep(0.5)


async def prime(port: int, ctx, jobs: List[Job], sim: "Simulator") -> None:
    """One fetch of every job, its API requests counted apart from the windows'."""
    await asyncio.to_thread(sim.ask, "reset")
    queue, t = list(jobs), time.monotonic()

    async def fetcher(conn) -> None:
        while queue:
            job = queue.pop()
            status, body = await call(conn, _load.get_request(port, fetch_target(job)))
            if status != 200:
                raise RuntimeError(f"fetch answered {status}: {body}")
            job.cursor = body["next"]

    await with_connections(port, ctx, SETUP_CONNECTIONS, fetcher)
    took = time.monotonic() - t
    deadline = time.monotonic() + 10
    while await asyncio.to_thread(sim.log_streams) < len(jobs) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    api = await asyncio.to_thread(sim.counts)
    logs = api.get(("get", "pods/log"), 0)
    streams = await asyncio.to_thread(sim.log_streams)
    print(f"prime: one fetch of each of {len(jobs)} jobs in {took:.1f}s: {logs} GET pods/log "
          f"({logs / len(jobs):.2f} per pod: a first page and a follow stream), "
          f"{sum(api.values()) - logs} other API requests; {streams} log streams open",
          flush=True)


# -- the pollers ---------------------------------------------------------------------------------

def fetch_target(job: Job) -> str:
    return f"/api/jobs/{job.token}?since={urllib.parse.quote(job.cursor, safe='')}"


def status_target(job: Job) -> str:
    return f"/plugins/v1/pod/v1/{job.token}"


async def poll_loop(run: Run, conn: _load.HttpConnection, next_request: Callable,
                    check: Callable, pause_s: float) -> None:
    """One request at a time until ``run.stopping``, ``pause_s`` between an answer and the
    next request; ``check(item, status, body)`` says what is wrong with an answer (or "")."""
    perf = time.perf_counter
    try:
        while not run.stopping:
            if pause_s:
                await asyncio.sleep(pause_s)
            item, raw = next_request()
            start = perf()
            try:
                status, body = await asyncio.wait_for(conn.request(raw), REQUEST_TIMEOUT_S)
            except (OSError, ConnectionError, ValueError, asyncio.TimeoutError) as e:
                run.error(f"{type(e).__name__}: {e}")
                return
            problem = check(item, status, body)
            if problem:
                run.error(problem)
            else:
                run.record(200, perf() - start)
    finally:
        conn.close()


def gateway_poller(port: int, ctx, jobs: List[Job], route: str, pause_s: float) -> Callable:
    """A worker factory: one mutual-TLS connection to the gateway polling ``route``
    ("fetch" or "status"), round-robin over ``jobs`` shared with the other workers."""
    turn = itertools.count()

    def next_request() -> Tuple[Job, bytes]:
        job = jobs[next(turn) % len(jobs)]
        target = fetch_target(job) if route == "fetch" else status_target(job)
        return job, _load.get_request(port, target)

    def check(job: Job, status: int, body: bytes) -> str:
        if status != 200:
            return f"HTTP {status}: {body[:200]!r}"
        answer = json.loads(body)
        if route == "fetch":
            job.cursor = answer["next"]
        state = answer["status"] if route == "fetch" else answer["job_state"]
        return "" if state == "RUNNING" else f"job {job.token[:8]}… is {state}"

    async def worker(run: Run) -> None:
        conn = await _load.connect(port, ctx, _load.BodyConnection)
        await poll_loop(run, conn, next_request, check, pause_s)
    return worker


def naive_poller(port: int, pods: List[str]) -> Callable:
    """A worker factory: one plain keep-alive connection to the API server, one
    GET pods/{name} per poll, round-robin over ``pods``."""
    turn = itertools.count()

    def next_request() -> Tuple[str, bytes]:
        name = pods[next(turn) % len(pods)]
        return name, (f"GET /api/v1/namespaces/default/pods/{name} HTTP/1.1\r\n"
                      f"Host: {_load.HOST}:{port}\r\nAccept: application/json\r\n\r\n").encode()

    def check(name: str, status: int, body: bytes) -> str:
        if status != 200:
            return f"HTTP {status}: {body[:200]!r}"
        phase = (json.loads(body).get("status") or {}).get("phase")
        return "" if phase == "Running" else f"pod {name} is {phase}"

    async def worker(run: Run) -> None:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(_load.BodyConnection, _load.HOST, port),
            _load.CONNECT_TIMEOUT_S)
        await poll_loop(run, conn, next_request, check, 0.0)
    return worker


# -- one phase -------------------------------------------------------------------------------------

@dataclass
class Phase:
    name: str
    clients: int
    pause_s: float  # each client's pause between polls; 0: flat out
    polls: int
    errors: int
    first_error: str
    wall_s: float
    latencies_ms: List[float]
    api: Dict[Tuple[str, str], int]  # (verb, resource) -> requests in the window
    gateway_cpu_s: float
    sim_cpu_s: float
    result: _load.Result = field(init=False)

    def __post_init__(self) -> None:  # for its percentiles
        self.result = _load.Result(requests=self.polls, errors=self.errors, wall_s=self.wall_s,
                                   latencies_ms=self.latencies_ms, server_cpu_s=0.0,
                                   client_cpu_s=0.0, cores_busy_s=0.0)

    @property
    def polls_per_s(self) -> float:
        return self.polls / self.wall_s

    @property
    def api_total(self) -> int:
        return sum(self.api.values())

    @property
    def api_per_s(self) -> float:
        return self.api_total / self.wall_s

    @property
    def api_per_1k_polls(self) -> float:
        return 1000.0 * self.api_total / self.polls if self.polls else float("nan")

    @property
    def pod_reads_per_s(self) -> float:
        return sum(n for key, n in self.api.items() if key in POD_READS) / self.wall_s


async def run_phase(name: str, clients: int, pause_s: float, worker: Callable[[Run], Any],
                    sim: Simulator, gateway: Child, args: argparse.Namespace) -> Phase:
    """``clients`` workers: warm-up, then a window with the API counts reset at its start
    and read at its end; then the workers are stopped (bounded)."""
    run = Run()
    tasks = [asyncio.ensure_future(worker(run)) for _ in range(clients)]
    try:
        await asyncio.sleep(args.warmup)
        await asyncio.to_thread(sim.ask, "reset")
        gw0, sim0, t0 = gateway.cpu_seconds(), sim.cpu_seconds(), time.perf_counter()
        run.measuring = True
        await asyncio.sleep(args.seconds)
        run.measuring = False
        gw1, sim1, t1 = gateway.cpu_seconds(), sim.cpu_seconds(), time.perf_counter()
        api = await asyncio.to_thread(sim.counts)
    finally:
        await _load.stop_workers(run, tasks, REQUEST_TIMEOUT_S + 5)
    return Phase(name, clients, pause_s, len(run.latencies_s) + run.errors, run.errors, run.first_error,
                 t1 - t0, [1000.0 * s for s in run.latencies_s], api, gw1 - gw0, sim1 - sim0)


# -- reporting -------------------------------------------------------------------------------------

HEADER = (f"{'phase':<12} {'clients':>7} {'pause':>8} {'polls/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'API req/s':>9} {'API/1k polls':>12} {'pod GET/s':>9} {'gw core':>7} "
          f"{'sim core':>8} {'errors':>6}")


def row(p: Phase) -> str:
    gw = f"{p.gateway_cpu_s / p.wall_s:>7.0%}" if p.name != "naive" else f"{'-':>7}"
    pause = f"{1000 * p.pause_s:g} ms" if p.pause_s else "none"
    return (f"{p.name:<12} {p.clients:>7} {pause:>8} {p.polls_per_s:>8.0f} {p.result.p50:>7.2f} "
            f"{p.result.p99:>7.2f} {p.api_per_s:>9.1f} {p.api_per_1k_polls:>12.1f} "
            f"{p.pod_reads_per_s:>9.2f} {gw} {p.sim_cpu_s / p.wall_s:>8.0%} {p.errors:>6}")


def breakdown(p: Phase) -> str:
    parts = [f"{verb} {resource}: {n} ({n / p.wall_s:.1f}/s)"
             for (verb, resource), n in sorted(p.api.items(), key=lambda kv: -kv[1])]
    return f"    {p.name} x{p.clients} API requests in {p.wall_s:.1f}s: " + (
        ", ".join(parts) if parts else "none")


def show(p: Phase) -> None:
    print(row(p), flush=True)
    if p.errors:
        print(f"    {p.errors} error(s); first: {p.first_error}", flush=True)


def poll_ratio(hi: Phase, lo: Phase) -> float:
    return hi.polls_per_s / lo.polls_per_s if lo.polls_per_s else float("inf")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def summary(phases: Dict[Tuple[str, int], Phase], args: argparse.Namespace) -> None:
    print("\n== summary " + "=" * 90)
    print(HEADER)
    for p in phases.values():
        print(row(p))
    print("\nAPI requests by (verb, resource):")
    for p in phases.values():
        print(breakdown(p))

    many, few = args.clients, args.few_clients
    naive = phases[("naive", many)]
    print(f"\nratio gateway / naive API req/s (both x{many}):")
    for route in ("fetch", "status"):
        ours = phases[(route, many)]
        print(f"  {route:<6} {ours.api_per_s:8.1f} / {naive.api_per_s:8.1f} = "
              f"{ours.api_per_s / naive.api_per_s:.4f}   (polls/s {ours.polls_per_s:.0f} vs "
              f"{naive.polls_per_s:.0f})")
    print("API requests per 1,000 polls: " + ", ".join(
        f"{p.name} x{p.clients} {p.api_per_1k_polls:.1f}" for p in phases.values()))
    print(f"API req/s at two poll rates (x{many} flat out vs x{few} pausing "
          f"{1000 * args.slow_interval:g} ms):")
    for route in ("fetch", "status"):
        hi, lo = phases[(route, many)], phases[(route, few)]
        print(f"  {route:<6} polls/s {hi.polls_per_s:7.0f} vs {lo.polls_per_s:6.0f} "
              f"(x{poll_ratio(hi, lo):.1f})   API req/s {hi.api_per_s:7.1f} vs "
              f"{lo.api_per_s:6.1f}   pod GET/s {hi.pod_reads_per_s:.2f} vs "
              f"{lo.pod_reads_per_s:.2f}")

    print("\ntargets (informational):")
    checks = []
    for route in ("fetch", "status"):
        hi, lo = phases[(route, many)], phases[(route, few)]
        reads = hi.pod_reads_per_s * hi.wall_s + lo.pod_reads_per_s * lo.wall_s
        checks.append((f"{route}: no pod GET/LIST in either window", f"{reads:.0f} requests",
                       reads == 0))
        constant = hi.api_per_s <= CONSTANT_FACTOR * lo.api_per_s + CONSTANT_SLACK_RPS
        shown = poll_ratio(hi, lo) >= MIN_POLL_RATIO  # else the rows prove nothing
        checks.append((f"{route}: API req/s x{many} <= {CONSTANT_FACTOR:g} * x{few} + "
                       f"{CONSTANT_SLACK_RPS:g}", f"{hi.api_per_s:.1f} vs {lo.api_per_s:.1f}",
                       constant if shown else None))
    for name, value, ok in checks:
        result = verdict(ok) if ok is not None else (
            f"n/a (polls/s differ < x{MIN_POLL_RATIO:g})")
        print(f"  {name:<52} {value:>22}  {result}")
    for clients in (many, few):
        phase = phases[("fetch", clients)]
        logs = phase.api.get(("get", "pods/log"), 0)
        print(f"note: fetch x{clients} made {logs} GET pods/log in its window "
              f"({1000.0 * logs / phase.polls if phase.polls else 0:.1f} per 1,000 polls): "
              "first reads and stream opens of pods not followed yet, not one per fetch.")
    if any(p.errors for p in phases.values()):
        print("note: some phases had errors (see the rows above); their rates are suspect.")


# -- orchestration ---------------------------------------------------------------------------------

async def run_all(args: argparse.Namespace, keys: _servers.KeyStore, sim: Simulator,
                  gateway: Child) -> List[int]:
    """Returns the pod processes' pids (for the clean-up)."""
    ctx = _load.client_context(keys.ca, keys.crt("front"), keys.key("front"))
    t = time.monotonic()
    jobs = await submit_jobs(gateway.port, ctx, args.jobs)
    submitted = time.monotonic() - t
    await wait_running(gateway.port, ctx, jobs)
    print(f"setup: {len(jobs)} pod jobs submitted in {submitted:.1f}s, all RUNNING after "
          f"{time.monotonic() - t:.1f}s", flush=True)
    pids = await asyncio.to_thread(sim.ask, "pids")
    pods = await asyncio.to_thread(sim.ask, "pods")
    if len(pods) != len(jobs):
        raise RuntimeError(f"{len(pods)} pods in the simulator for {len(jobs)} jobs")
    await prime(gateway.port, ctx, jobs, sim)

    print(HEADER, flush=True)
    phases: Dict[Tuple[str, int], Phase] = {}
    slow = args.slow_interval
    plan = [("fetch", args.clients, 0.0), ("fetch", args.few_clients, slow),
            ("status", args.clients, 0.0), ("status", args.few_clients, slow),
            ("naive", args.clients, 0.0)]
    for route, clients, pause_s in plan:
        if route == "naive":
            worker = naive_poller(sim.port, pods)
        else:
            worker = gateway_poller(gateway.port, ctx, jobs, route, pause_s)
        phases[(route, clients)] = phase = await run_phase(route, clients, pause_s, worker,
                                                           sim, gateway, args)
        show(phase)
        if route == "fetch":
            streams = await asyncio.to_thread(sim.log_streams)
            print(f"    open log streams after this row: {streams}", flush=True)
        if phase.polls == 0:
            gateway.dump_stacks()
            print("    nothing answered; gateway log:\n    "
                  + gateway.log_tail(40).replace("\n", "\n    "), flush=True)
    summary(phases, args)
    for child in (gateway, sim):
        tail = child.log_tail(5)
        if tail:
            print(f"note: {child.kind} logged (last lines):\n    " + tail.replace("\n", "\n    "))
    return pids


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below runs
    print(f"k8s poll bench: {args.jobs} running pod jobs; {args.seconds:g}s windows after "
          f"{args.warmup:g}s warm-up; {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; nothing pinned", flush=True)
    pids: List[int] = []
    with tempfile.TemporaryDirectory(prefix="sqlflow-bench-k8s-") as tmp:
        keys = _servers.KeyStore(Path(tmp) / "key_store")
        sim = Simulator(Path(tmp) / "sim")
        gateway = Child("gateway", Path(tmp) / "gateway", [
            "--kubeconfig", sim.kubeconfig, "--ca_crt", keys.ca,
            "--server_crt", keys.crt("server"), "--server_key", keys.key("server"),
            "--state_dir", str(Path(tmp) / "gateway" / "state")])
        try:
            sim.start()
            gateway.start()
            holder: List[List[int]] = []

            async def go() -> None:
                holder.append(await run_all(args, keys, sim, gateway))
            hb.run_loop(go())
            pids = holder[0] if holder else []
        finally:
            gateway.stop()
            if not pids and sim.proc is not None and sim.proc.poll() is None:
                try:
                    pids = sim.ask("pids")  # set-up failed half-way: still clean up
                except Exception:
                    pass
            sim.stop()
            leftover = kill_leftover_pods(pids)
            if leftover:
                print(f"note: killed {leftover} pod processes the simulator left behind")
    return 0


if __name__ == "__main__":
    sys.exit(main())
