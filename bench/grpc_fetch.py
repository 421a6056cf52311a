"""gRPC door benchmark (issue 12): Fetch over gRPC next to Fetch over REST for the same
jobs, and what the idle gRPC door costs the heart beats.
Run:  .venv/bin/python bench/grpc_fetch.py [--quick]

Servers: the real Gateway in child processes (bench/_servers.py, ``_server_entry.py``),
pinned to core 0 with taskset, mutual TLS with certificates from scripts/gen_cert.sh,
127.0.0.1 only, a temporary state dir, the sqlite provisioner, logging at WARNING; the
gRPC door on a free port (``--grpc_port``), i.e. its TLS relay (tlsrelay.py) in front of
the in-process grpc.aio server, or off (``--grpc_port 0``).

The load generator is this process, pinned to core 1: REST as raw HTTP/1.1 over
keep-alive mutual-TLS connections (bench/_load.py, asyncio on uvloop); gRPC with the
synchronous stubs of sqlflow_playground/proto, as the deployed ``sqlflow.Client`` calls
them, one thread and one channel (so one TLS connection) per client.

(1) fetch: ``--jobs`` (default 10) ``sql`` jobs of user ``bench``, each a SELECT of
    ``--rows`` (default 5) rows of three columns, submitted with gRPC ``Run`` by a client
    without certificate (Session.db_conn_str = bench's data source from /api/create_db)
    and followed to their end over REST. Then the same jobs are fetched, round-robin,
    the same number of calls (``--calls``, after ``--warmup_calls`` per client on the
    same connection) by each of:
      rest       GET /api/jobs/{token}?since=CURSOR with the ``bench`` client certificate;
      grpc-ds    Fetch without client certificate: the job id Run returned (TOKEN.PROOF,
                 the proof an HMAC keyed with the data source), as the notebook client;
      grpc-cert  Fetch presenting the ``bench`` client certificate, the bare token.
    Cursors (two groups of rows):
      page  the cursor at the job's start: every call answers the whole output again
            (REST: ``since=`` empty, the JSON responses; gRPC: the first FetchRequest
            ``{job{id}}``, answering head, rows and eoe, eof), i.e. a notebook's first
            Fetch of a finished cell: the cost of the page, converted and encoded;
      eof   the cursor at the job's end, echoed as a client goes on: REST ``since=`` the
            answer's ``next``, gRPC the ``updated_fetch_since`` of the page's answer sent
            back unchanged; each call answers nothing new and eof: the per-call cost of
            identity, lookup and framing alone.
    Sequential (one client, one call at a time on a warm connection) for both cursors;
    then ``--clients`` (default 8) concurrent clients, page cursor, the calls split among
    them. Every answer is checked (HTTP 200 / gRPC OK, the expected number of responses).
    Each group's calls are split into ``--rounds`` (default 2) rounds, the variants' order
    reversed every other round (rest, grpc-ds, grpc-cert, then grpc-cert, grpc-ds, rest),
    each row on new connections warmed up anew; the summary adds a variant's rounds up.
(2) heart beats: GET /api/heart_beat?user_id=bench over ``--connections`` (default 16)
    keep-alive mutual-TLS connections (bench/heartbeat.py's scenario (a)), against a
    gateway with the gRPC door on (idle: no gRPC client ever connects) and one with it off,
    both running all along, measured alternately, ``--rounds`` (default 2) times: off then
    on, then on then off, and so on, so that neither is always measured first.
    Before that, both idle for ``--idle_s``: their CPU with no load at all (summed from
    /proc/PID/task/*/schedstat, in ns) and their threads.

Columns: "calls/s" and latency percentiles as the client sees them (for gRPC that includes
the client's protobuf decoding; REST answers are JSON-decoded too, for the check);
"srv ms/call" the server process's CPU time (utime+stime, all threads, /proc/PID/stat)
from the first measured call to the last, divided by the calls; "srv core"/"cli core" the
share of one core used by the server and this process; "other" what else ran on the two
cores (/proc/stat): above ~15% the row is noise. Ratios grpc/rest are of p50, p99 and
server CPU per call (1.0: the same; >1: gRPC costs more). No numeric target: no PASS/MISS.
In (2): req/s and CPU/req of door on / door off (1.0: the idle door costs nothing).

Reading: sequential latency is mostly the client's and the server's per-call fixed cost;
server CPU per call is the robust comparison. A gRPC call crosses the server twice (the
relay's TLS, then grpc.aio's HTTP/2 on a loopback connection), a REST call once.
--quick: fewer calls (600 per row, 50 warm-up), 1.5 s heart-beat windows, 2 s idle.
"""
import argparse
import asyncio
import concurrent.futures
import json
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import grpc

import _jobs_load as jl
import _load
import _servers
import heartbeat as hb
from _load import Result
from sqlflow_playground.proto import sqlflow_pb2 as pb
from sqlflow_playground.proto import sqlflow_pb2_grpc as pb_grpc

USER = "bench"  # the ``bench`` certificate's identity
SQL = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows}) "
       "SELECT x AS i, 'row ' || x AS s, x * 0.5 AS f FROM c")
SETUP_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 30.0
VARIANTS = ("rest", "grpc-ds", "grpc-cert")
PAGE, EOF = "page", "eof"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: --calls 600 --warmup_calls 50 --seconds 1.5 --warmup 0.5 "
                   "--idle_s 2")
    p.add_argument("--calls", type=int, help="measured calls per row (default 5000)")
    p.add_argument("--warmup_calls", type=int, help="calls per client before (default 200)")
    p.add_argument("--jobs", type=int, default=10, help="sql jobs fetched round-robin")
    p.add_argument("--rows", type=int, default=5, help="rows each job's SELECT returns")
    p.add_argument("--clients", type=int, default=8,
                   help="concurrent clients of the last fetch group (0: skip it)")
    p.add_argument("--seconds", type=float, help="heart-beat window per round and server "
                   "(default 5)")
    p.add_argument("--warmup", type=float, help="warm-up before each heart-beat window "
                   "(default 2)")
    p.add_argument("--rounds", type=int, default=2,
                   help="rounds, each variant's order reversed every other one (default 2)")
    p.add_argument("--idle_s", type=float, help="both door servers idle, CPU read (default 5)")
    p.add_argument("--connections", type=int, default=16, help="heart-beat connections")
    p.add_argument("--scenarios", default="1,2", help="which of 1 (fetch), 2 (heart beats)")
    p.add_argument("--no_pin", action="store_true", help="do not pin server and client to cores")
    args = p.parse_args(argv)
    for name, default, quick in (("calls", 5000, 600), ("warmup_calls", 200, 50),
                                 ("seconds", 5.0, 1.5), ("warmup", 2.0, 0.5),
                                 ("idle_s", 5.0, 2.0)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else default)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if set(args.scenarios) - {"1", "2"} or args.calls < 1 or args.jobs < 1 or args.rows < 1:
        p.error("bad --scenarios, --calls, --jobs or --rows")
    return args


def free_port() -> int:
    """A port free on 127.0.0.1 now (the gateway's gRPC door binds it a moment later)."""
    with socket.socket() as s:
        s.bind((_load.HOST, 0))
        return s.getsockname()[1]


# -- gRPC clients -------------------------------------------------------------------------

def grpc_stub(port: int, keys: _servers.KeyStore,
              cert: Optional[str] = None) -> Tuple[grpc.Channel, pb_grpc.SQLFlowStub]:
    """A channel over TLS as ``sqlflow.Client`` makes it (the CA, no client certificate),
    or presenting ``cert``'s. A local subchannel pool: each channel its own connection."""
    key = crt = None
    if cert:
        key, crt = Path(keys.key(cert)).read_bytes(), Path(keys.crt(cert)).read_bytes()
    creds = grpc.ssl_channel_credentials(Path(keys.ca).read_bytes(), private_key=key,
                                         certificate_chain=crt)
    channel = grpc.secure_channel(f"{_load.HOST}:{port}", creds, options=[
        ("grpc.ssl_target_name_override", _load.SERVER_NAME),
        ("grpc.use_local_subchannel_pool", 1)])
    return channel, pb_grpc.SQLFlowStub(channel)


def run_job(stub: pb_grpc.SQLFlowStub, sql: str, data_source: str) -> str:
    """gRPC Run as the notebook client: the job id from the stream's ``job`` response."""
    session = pb.Session(db_conn_str=data_source, user_id=USER, exit_on_submit=True)
    for response in stub.Run(pb.Request(sql=sql, session=session), timeout=CALL_TIMEOUT_S):
        if response.WhichOneof("response") == "job":
            return response.job.id
    raise RuntimeError("Run answered no job")


# -- the jobs ------------------------------------------------------------------------------

@dataclass
class FetchJob:
    job_id: str  # as Run returned it: TOKEN.PROOF
    token: str
    rest_next: str = ""  # REST cursor at the end
    grpc_end: Dict[str, pb.FetchRequest] = field(default_factory=dict)  # per variant


async def make_jobs(server: _servers.ServerProcess, grpc_port: int, keys: _servers.KeyStore,
                    args: argparse.Namespace) -> Tuple[List[FetchJob], str]:
    ctx = _load.client_context(keys.ca, keys.crt(USER), keys.key(USER))
    pool = jl.Pool(server.port, ctx, 4)
    channel, stub = grpc_stub(grpc_port, keys)
    try:
        status, answer = await pool.call("POST", "/api/create_db", {})
        if status != 200:
            raise RuntimeError(f"create_db: HTTP {status} {answer}")
        data_source = answer["data_source"]
        sql = SQL.format(rows=args.rows)
        t0 = time.monotonic()
        ids = [await asyncio.to_thread(run_job, stub, sql, data_source)
               for _ in range(args.jobs)]
        jobs = [FetchJob(job_id=i, token=i.partition(".")[0]) for i in ids]
        followed = [jl.Job(token=j.token, user_id=USER, ticker=False) for j in jobs]
        await jl.follow_all(pool, followed, SETUP_TIMEOUT_S, until_eof=True)
        for job, f in zip(jobs, followed):
            job.rest_next = f.poll_cursor
        t1 = time.monotonic()
        code, listing = await pool.call("GET", "/api/jobs?status=SUCCEEDED")
        succeeded = len(listing["jobs"]) if code == 200 else "?"
    finally:
        pool.close()
        channel.close()
    return jobs, (f"create_db for {USER!r}; {args.jobs} sql jobs ({args.rows} rows x 3 "
                  f"columns) run over gRPC (data source) and followed to eof over REST in "
                  f"{t1 - t0:.1f}s; {succeeded} SUCCEEDED")


# -- one measured row -----------------------------------------------------------------------

@dataclass
class Tally:
    """What one client saw in its measured calls."""

    latencies_s: List[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    def error(self, what: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or what


class RestClient:
    """One keep-alive mutual-TLS connection; ``calls(n)`` makes n fetches, round-robin."""

    def __init__(self, port: int, ctx, jobs: List[FetchJob], cursor: str, offset: int):
        self.port, self.ctx, self.offset = port, ctx, offset
        self.raws = [_load.get_request(port, f"/api/jobs/{j.token}?since="
                                       f"{j.rest_next if cursor == EOF else ''}") for j in jobs]
        self.expected: Optional[int] = 0 if cursor == EOF else None  # responses per answer
        self.conn: Optional[_load.HttpConnection] = None

    async def calls(self, n: int, tally: Tally) -> None:
        if self.conn is None:
            self.conn = await _load.connect(self.port, self.ctx, _load.BodyConnection)
        perf = time.perf_counter
        for i in range(n):
            raw = self.raws[(self.offset + i) % len(self.raws)]
            start = perf()
            try:
                status, body = await self.conn.request(raw)
                answer = json.loads(body)
            except (OSError, ConnectionError, ValueError) as e:
                tally.error(f"rest: {type(e).__name__}: {e}")
                return
            tally.latencies_s.append(perf() - start)
            n_responses = len(answer.get("responses", ()))
            if self.expected is None:
                self.expected = n_responses
            if status != 200 or not answer.get("eof") or n_responses != self.expected:
                tally.error(f"rest: HTTP {status}, eof {answer.get('eof')}, {n_responses} "
                            f"responses (expected {self.expected})")
        self.offset += n

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class GrpcClient:
    """One channel (one TLS connection through the relay), calls from one thread."""

    def __init__(self, port: int, keys: _servers.KeyStore, jobs: List[FetchJob], variant: str,
                 cursor: str, offset: int):
        self.cert = USER if variant == "grpc-cert" else None
        self.channel, self.stub = grpc_stub(port, keys, self.cert)
        self.offset = offset
        ids = [j.job_id if self.cert is None else j.token for j in jobs]
        self.requests = [pb.FetchRequest(job=pb.Job(id=i)) for i in ids]
        if cursor == EOF:  # the page's updated_fetch_since, echoed from now on
            self.requests = [j.grpc_end[variant] for j in jobs]
        self.expected: Optional[int] = 0 if cursor == EOF else None

    def calls(self, n: int, tally: Tally) -> None:
        perf = time.perf_counter
        for i in range(n):
            request = self.requests[(self.offset + i) % len(self.requests)]
            start = perf()
            try:
                answer = self.stub.Fetch(request, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as e:
                tally.error(f"grpc: {e.code()}: {e.details()}")
                return
            tally.latencies_s.append(perf() - start)
            n_responses = len(answer.responses.response)
            if self.expected is None:
                self.expected = n_responses
            if not answer.eof or n_responses != self.expected:
                tally.error(f"grpc: eof {answer.eof}, {n_responses} responses (expected "
                            f"{self.expected})")
        self.offset += n

    def close(self) -> None:
        self.channel.close()


async def grpc_end_cursors(port: int, keys: _servers.KeyStore, jobs: List[FetchJob]) -> str:
    """For each job and gRPC variant, the ``updated_fetch_since`` of its page's answer;
    what the first job's page holds."""
    sizes = ""
    for variant in VARIANTS[1:]:
        client = GrpcClient(port, keys, jobs, variant, PAGE, 0)
        try:
            for job, request in zip(jobs, client.requests):
                answer = await asyncio.to_thread(client.stub.Fetch, request,
                                                 timeout=CALL_TIMEOUT_S)
                if not answer.eof:
                    raise RuntimeError(f"job {job.token[:8]}…: the page's answer is not eof")
                job.grpc_end[variant] = answer.updated_fetch_since
                sizes = sizes or (f"gRPC {len(answer.responses.response)} responses, "
                                  f"{answer.ByteSize()} bytes of protobuf")
        finally:
            client.close()
    return sizes


async def rest_page(server: _servers.ServerProcess, keys: _servers.KeyStore,
                    job: FetchJob) -> str:
    ctx = _load.client_context(keys.ca, keys.crt(USER), keys.key(USER))
    conn = await _load.connect(server.port, ctx, _load.BodyConnection)
    try:
        status, body = await conn.request(
            _load.get_request(server.port, f"/api/jobs/{job.token}?since="))
    finally:
        conn.close()
    return f"REST {len(json.loads(body)['responses'])} responses, {len(body)} bytes of JSON"


async def fetch_row(variant: str, cursor: str, clients: int, calls: int,
                    server: _servers.ServerProcess, grpc_port: int, keys: _servers.KeyStore,
                    jobs: List[FetchJob], args: argparse.Namespace,
                    pool: concurrent.futures.Executor) -> Result:
    """``calls`` measured calls split among ``clients`` (new connections), after their
    warm-up calls."""
    shares = [calls // clients + (1 if i < calls % clients else 0) for i in range(clients)]
    offsets = [i * len(jobs) // clients for i in range(clients)]
    warm, tallies = [Tally() for _ in shares], [Tally() for _ in shares]
    loop = asyncio.get_running_loop()
    if variant == "rest":
        ctx = _load.client_context(keys.ca, keys.crt(USER), keys.key(USER))
        rest = [RestClient(server.port, ctx, jobs, cursor, o) for o in offsets]

        async def phase(counts: List[int], into: List[Tally]) -> None:
            await asyncio.gather(*(c.calls(n, t) for c, n, t in zip(rest, counts, into)))
        closers = [c.close for c in rest]
    else:
        stubs = [GrpcClient(grpc_port, keys, jobs, variant, cursor, o) for o in offsets]

        async def phase(counts: List[int], into: List[Tally]) -> None:
            await asyncio.gather(*(loop.run_in_executor(pool, c.calls, n, t)
                                   for c, n, t in zip(stubs, counts, into)))
        closers = [c.close for c in stubs]
    cores = lambda: _servers.busy_seconds(args.cores)  # noqa: E731
    try:
        await phase([args.warmup_calls] * clients, warm)
        busy0, cpu0, client0 = cores(), server.cpu_seconds(), time.process_time()
        t0 = time.perf_counter()
        await phase(shares, tallies)
        t1 = time.perf_counter()
        busy1, cpu1, client1 = cores(), server.cpu_seconds(), time.process_time()
    finally:
        for close in closers:
            close()
    latencies = [s for t in tallies for s in t.latencies_s]
    errors = sum(t.errors for t in warm + tallies)
    first = next((t.first_error for t in warm + tallies if t.first_error), "")
    return Result(requests=len(latencies), errors=errors, wall_s=t1 - t0,
                  latencies_ms=[1000.0 * s for s in latencies], server_cpu_s=cpu1 - cpu0,
                  client_cpu_s=client1 - client0, cores_busy_s=busy1 - busy0,
                  first_error=first)


# -- reporting -------------------------------------------------------------------------------

FETCH_HEADER = (f"{'fetch':<40} {'calls':>6} {'calls/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
                f"{'max ms':>7} {'srv ms/call':>11} {'srv core':>8} {'cli core':>8} "
                f"{'other':>6} {'errors':>6}")


def group_label(cursor: str, clients: int) -> str:
    return f"{cursor} cursor, {'sequential' if clients == 1 else f'{clients} clients'}"


def fetch_row_text(variant: str, cursor: str, clients: int, r: Result,
                   round_: Optional[int] = None) -> str:
    name = f"{variant} ({group_label(cursor, clients)})"
    if round_ is not None:
        name = f"{variant} r{round_} ({group_label(cursor, clients)})"
    top = max(r.latencies_ms) if r.latencies_ms else float("nan")
    return (f"{name:<40} {r.requests:>6} {r.rps:>8.0f} {r.p50:>7.2f} {r.p99:>7.2f} "
            f"{top:>7.2f} {r.server_cpu_ms_per_request:>11.3f} {r.server_core_share:>8.0%} "
            f"{r.client_core_share:>8.0%} {r.other_core_share:>6.0%} {r.errors:>6}")


def ratio_lines(groups: Dict[Tuple[str, int], Dict[str, Result]]) -> List[str]:
    out = []
    for (cursor, clients), rows in groups.items():
        rest = rows.get("rest")
        for variant in VARIANTS[1:]:
            r = rows.get(variant)
            if rest is None or r is None:
                continue
            extra_us = 1000 * (r.server_cpu_ms_per_request - rest.server_cpu_ms_per_request)
            cpu = r.server_cpu_ms_per_request / rest.server_cpu_ms_per_request
            out.append(f"{variant + '/rest':<15} {group_label(cursor, clients):<26} "
                       f"p50 {r.p50 / rest.p50:>5.2f}   p99 {r.p99 / rest.p99:>5.2f}   "
                       f"srv CPU/call {cpu:>5.2f}   ({extra_us:+.0f} us of server CPU per call)")
    return out


def combined(results: List[Result]) -> Result:
    """Rounds of one server as one Result (totals; latencies pooled)."""
    return Result(requests=sum(r.requests for r in results),
                  errors=sum(r.errors for r in results), wall_s=sum(r.wall_s for r in results),
                  latencies_ms=[x for r in results for x in r.latencies_ms],
                  server_cpu_s=sum(r.server_cpu_s for r in results),
                  client_cpu_s=sum(r.client_cpu_s for r in results),
                  cores_busy_s=sum(r.cores_busy_s for r in results),
                  first_error=next((r.first_error for r in results if r.first_error), ""))


# -- scenarios ----------------------------------------------------------------------------

async def scenario_fetch(args: argparse.Namespace, keys: _servers.KeyStore,
                         start: Callable) -> Tuple[Dict[Tuple[str, int], Dict[str, Result]],
                                                   List[str]]:
    grpc_port = free_port()
    server = start("jobs", Path(args.tmp) / "fetch", grpc_port)
    jobs, note = await make_jobs(server, grpc_port, keys, args)
    print("setup: " + note, flush=True)
    grpc_page = await grpc_end_cursors(grpc_port, keys, jobs)
    print(f"setup: a job's page: {await rest_page(server, keys, jobs[0])}; {grpc_page}",
          flush=True)
    groups: Dict[Tuple[str, int], Dict[str, Result]] = {}
    plan = [(PAGE, 1), (EOF, 1)] + ([(PAGE, args.clients)] if args.clients > 1 else [])
    print("\n" + FETCH_HEADER, flush=True)
    with concurrent.futures.ThreadPoolExecutor(max(1, args.clients)) as pool:
        for cursor, clients in plan:
            rounds: Dict[str, List[Result]] = {variant: [] for variant in VARIANTS}
            for i in range(args.rounds):  # the calls split among rounds, orders alternating
                calls = args.calls // args.rounds + (1 if i < args.calls % args.rounds else 0)
                for variant in VARIANTS if i % 2 == 0 else VARIANTS[::-1]:
                    r = await fetch_row(variant, cursor, clients, calls, server, grpc_port,
                                        keys, jobs, args, pool)
                    rounds[variant].append(r)
                    print(fetch_row_text(variant, cursor, clients, r, i + 1), flush=True)
                    if r.errors:
                        print(f"    {r.errors} error(s); first: {r.first_error}", flush=True)
                    if r.requests == 0:
                        hb.report_hang(server)
            groups[(cursor, clients)] = {v: combined(rs) for v, rs in rounds.items()}
    notes = []
    tail = server.log_tail(5)
    server.stop()
    if tail:
        notes.append("the fetch server logged (last lines):\n    " + tail.replace("\n", "\n    "))
    return groups, notes


def threads(server: _servers.ServerProcess) -> int:
    assert server.proc is not None
    return len(list(Path(f"/proc/{server.proc.pid}/task").iterdir()))


def run_ns(server: _servers.ServerProcess) -> int:
    """Nanoseconds its threads ran (/proc/PID/task/*/schedstat): finer than the clock
    ticks of cpu_seconds, for the idle servers. Threads that ended are not counted."""
    assert server.proc is not None
    total = 0
    for task in Path(f"/proc/{server.proc.pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


async def scenario_heart_beats(args: argparse.Namespace, keys: _servers.KeyStore,
                               start: Callable) -> Tuple[Dict[str, List[Result]], List[str]]:
    servers = {"off": start("ours", Path(args.tmp) / "door-off", 0),
               "on": start("ours", Path(args.tmp) / "door-on", free_port())}
    await asyncio.sleep(1.0)  # let both settle after start-up
    ns0 = {k: run_ns(s) for k, s in servers.items()}
    await asyncio.sleep(args.idle_s)
    idle = {k: (run_ns(s) - ns0[k]) / 1e6 / args.idle_s for k, s in servers.items()}
    idle_note = ("idle, no client at all, for {:g}s: door off {:.3f} ms CPU/s, {} threads; "
                 "door on {:.3f} ms CPU/s, {} threads").format(
        args.idle_s, idle["off"], threads(servers["off"]), idle["on"], threads(servers["on"]))
    print("\n" + idle_note, flush=True)
    print("\n" + hb.HEADER.replace("srv  ", "door "), flush=True)
    results: Dict[str, List[Result]] = {"off": [], "on": []}
    label = f"heart beats x{args.connections}, round {{}}"
    for i in range(args.rounds):
        for door in ("off", "on") if i % 2 == 0 else ("on", "off"):  # no order favoured
            r = await hb.scenario_a(servers[door], keys, args)
            results[door].append(r)
            hb.show(label.format(i + 1), door, r)
            if r.requests == 0:
                hb.report_hang(servers[door])
    notes = [idle_note]
    for door, server in servers.items():
        tail = server.log_tail(5)
        server.stop()
        if tail:
            notes.append(f"the door-{door} server logged (last lines):\n    "
                         + tail.replace("\n", "\n    "))
    return results, notes


# -- orchestration ---------------------------------------------------------------------------

def summary(args: argparse.Namespace, fetch: Dict[Tuple[str, int], Dict[str, Result]],
            beats: Dict[str, List[Result]], notes: List[str]) -> None:
    print("\n== summary " + "=" * 100)
    flat: Dict[str, Result] = {}
    if fetch:
        print(FETCH_HEADER)
        for (cursor, clients), rows in fetch.items():
            for variant, r in rows.items():
                print(fetch_row_text(variant, cursor, clients, r))
                flat[f"{variant} {group_label(cursor, clients)}"] = r
        print("\nratios grpc/rest (1.00: the same; above: gRPC costs more):")
        for line in ratio_lines(fetch):
            print("  " + line)
    if beats:
        print("\n" + hb.HEADER.replace("srv  ", "door "))
        total = {door: combined(rs) for door, rs in beats.items()}
        for door in ("off", "on"):
            print(hb.row(f"heart beats x{args.connections}, {len(beats[door])} round(s)", door,
                         total[door]))
            flat[f"heart beats, door {door}"] = total[door]
        off, on = total["off"], total["on"]
        if off.rps and off.server_cpu_ms_per_request:
            extra_us = 1000 * (on.server_cpu_ms_per_request - off.server_cpu_ms_per_request)
            print(f"\nratio door on/off: req/s {on.rps / off.rps:.3f}   CPU/req "
                  f"{on.server_cpu_ms_per_request / off.server_cpu_ms_per_request:.3f}   "
                  f"p99 {on.p99 / off.p99:.3f}   (the idle door costs {extra_us:+.0f} us of "
                  "server CPU per heart beat)")
    for key, r in flat.items():
        if r.other_core_share > hb.NOISY_OTHER_SHARE:
            notes.append(f"{key}: something else used {r.other_core_share:.0%} of a core on "
                         "the benchmark's cores; this row is unreliable, rerun on a quiet "
                         "machine.")
    for note in notes:
        print("note: " + note)


async def run_all(args: argparse.Namespace, keys: _servers.KeyStore, start: Callable) -> None:
    fetch: Dict[Tuple[str, int], Dict[str, Result]] = {}
    beats: Dict[str, List[Result]] = {}
    notes: List[str] = []
    if "1" in args.scenarios:
        fetch, more = await scenario_fetch(args, keys, start)
        notes += more
    if "2" in args.scenarios:
        beats, more = await scenario_heart_beats(args, keys, start)
        notes += more
    summary(args, fetch, beats, notes)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below runs
    server_core, pin_note = hb.pin_self(args)
    args.cores = ([hb.SERVER_CORE, hb.CLIENT_CORE] if server_core is not None
                  else _servers.usable_cores())
    print(f"grpc fetch bench: {args.calls} calls per fetch row after {args.warmup_calls} "
          f"warm-up calls per client; heart beats {args.rounds} round(s) of {args.seconds:g}s "
          f"windows after {args.warmup:g}s warm-up; {pin_note}", flush=True)
    servers: List[_servers.ServerProcess] = []
    with tempfile.TemporaryDirectory(prefix="sqlflow-bench-") as tmp:
        args.tmp = tmp
        keys = _servers.KeyStore(Path(tmp) / "key_store")

        def start(kind: str, workdir: Path, grpc_port: int) -> _servers.ServerProcess:
            server = _servers.ServerProcess(kind, keys, workdir, server_core,
                                            extra_args=["--grpc_port", str(grpc_port)])
            servers.append(server)
            server.start()
            return server

        try:
            hb.run_loop(run_all(args, keys, start))
        finally:
            for server in servers:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
