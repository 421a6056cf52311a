"""The load generator: asyncio (uvloop when installed) clients that present a client
certificate and speak raw HTTP/1.1, so a request costs the client far less than the server.

A ``Run`` holds the flags every worker checks (``measuring``, ``stopping``) and the
latencies of the responses that completed inside the measured window. ``measure()``
drives one run: warm-up, window (with server and client CPU read at both ends), stop.
Every loop here ends when ``stopping`` is set or its connection fails; ``measure`` waits
a bounded time for workers and then closes whatever is left.
"""
import asyncio
import json
import ssl
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, List, Optional, Tuple

HOST = "127.0.0.1"
SERVER_NAME = "localhost"  # the server certificate's SAN
CONNECT_TIMEOUT_S = 10.0


def client_context(ca: str, crt: str, key: str) -> ssl.SSLContext:
    """Verifies the server against the CA and presents ``crt`` as the client certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.load_cert_chain(crt, key)
    return ctx


def get_request(port: int, target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: {SERVER_NAME}:{port}\r\n\r\n".encode()


def post_json_request(port: int, target: str, payload: dict) -> bytes:
    body = json.dumps(payload).encode()
    return (f"POST {target} HTTP/1.1\r\nHost: {SERVER_NAME}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


def parse_response(buf: bytearray) -> Optional[Tuple[int, int]]:
    """(status, size of the whole response) once ``buf`` starts with a complete
    Content-Length response, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    start = head.find(b"\r\ncontent-length:")
    if start < 0:
        raise ConnectionError("response without Content-Length: " + repr(head[:200]))
    stop = head.find(b"\r\n", start + 2)
    length = int(head[start + 17:stop if stop >= 0 else len(head)])
    size = end + 4 + length
    if len(buf) < size:
        return None
    return int(head[9:12]), size


class HttpConnection(asyncio.Protocol):
    """One TLS connection; ``await conn.request(raw)`` returns the response status
    (with ``with_body``: the pair status, body bytes)."""

    with_body = False

    def __init__(self) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self.buf = bytearray()
        self.waiter: Optional[asyncio.Future] = None
        self.lost: Optional[BaseException] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def request(self, raw: bytes) -> "asyncio.Future[int]":
        if self.lost is not None:
            raise self.lost
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None:
            return
        try:
            parsed = parse_response(self.buf)
        except (ConnectionError, ValueError) as e:
            self.waiter.set_exception(e)
            self.waiter = None
            return
        if parsed is not None:
            status, size = parsed
            result = status
            if self.with_body:
                result = (status, bytes(self.buf[self.buf.find(b"\r\n\r\n") + 4:size]))
            del self.buf[:size]
            waiter, self.waiter = self.waiter, None
            waiter.set_result(result)

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.lost = exc or ConnectionResetError("connection closed")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class BodyConnection(HttpConnection):
    """``await conn.request(raw)`` returns (status, body bytes)."""

    with_body = True


async def connect(port: int, ctx: ssl.SSLContext, protocol=HttpConnection) -> HttpConnection:
    """A new TCP connection and full TLS handshake (no session resumption)."""
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(
        loop.create_connection(protocol, HOST, port, ssl=ctx, server_hostname=SERVER_NAME),
        CONNECT_TIMEOUT_S)
    return conn


@dataclass
class Run:
    """Shared by the workers of one measurement."""

    measuring: bool = False
    stopping: bool = False
    latencies_s: List[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    def record(self, status: int, seconds: float) -> None:
        if not self.measuring:
            return
        if status == 200:
            self.latencies_s.append(seconds)
        else:
            self.error(f"HTTP {status}")

    def error(self, what: str) -> None:
        if self.measuring:
            self.errors += 1
            self.first_error = self.first_error or what


async def keep_alive_worker(run: Run, port: int, ctx: ssl.SSLContext, raw: bytes,
                            ready: "asyncio.Future[None]") -> None:
    """One connection, one request at a time, until ``run.stopping``."""
    conn = await connect(port, ctx)
    if not ready.done():
        ready.set_result(None)
    perf = time.perf_counter
    try:
        while not run.stopping:
            start = perf()
            try:
                status = await conn.request(raw)
            except (OSError, ConnectionError, ValueError) as e:
                run.error(f"{type(e).__name__}: {e}")
                return
            run.record(status, perf() - start)
    finally:
        conn.close()


async def new_connection_worker(run: Run, port: int, ctx: ssl.SSLContext, raw: bytes) -> None:
    """A new connection (full handshake) per request; latency includes the handshake."""
    perf = time.perf_counter
    while not run.stopping:
        start = perf()
        conn: Optional[HttpConnection] = None
        try:
            conn = await connect(port, ctx)
            status = await asyncio.wait_for(conn.request(raw), CONNECT_TIMEOUT_S)
        except (OSError, ConnectionError, ValueError, asyncio.TimeoutError) as e:
            run.error(f"{type(e).__name__}: {e}")
            await asyncio.sleep(0.01)
            continue
        finally:
            if conn is not None:
                conn.close()
        run.record(status, perf() - start)


@dataclass
class Result:
    requests: int
    errors: int
    wall_s: float
    latencies_ms: List[float]
    server_cpu_s: float
    client_cpu_s: float
    cores_busy_s: float  # everything the benchmark's cores did, whoever did it
    first_error: str = ""
    workload_cpu_s: float = 0.0  # helper processes that are part of the load (e.g. jobs)

    @property
    def rps(self) -> float:
        return self.requests / self.wall_s if self.wall_s else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100.0 * len(ordered)))]

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def server_cpu_ms_per_request(self) -> float:
        return 1000.0 * self.server_cpu_s / self.requests if self.requests else float("nan")

    @property
    def server_core_share(self) -> float:
        return self.server_cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def client_core_share(self) -> float:
        return self.client_cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def workload_core_share(self) -> float:
        return self.workload_cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def other_core_share(self) -> float:
        """Work on the benchmark's cores by neither server nor client nor workload (other
        processes, hypervisor steal, interrupts), in cores: noise when well above a few
        percent."""
        other = self.cores_busy_s - self.server_cpu_s - self.client_cpu_s - self.workload_cpu_s
        return max(0.0, other / self.wall_s) if self.wall_s else 0.0


def combine(parts: List[Result]) -> Result:
    """Several windows of one server as one: their requests, time and CPU added up."""
    first = parts[0]
    return Result(requests=sum(p.requests for p in parts), errors=sum(p.errors for p in parts),
                  wall_s=sum(p.wall_s for p in parts),
                  latencies_ms=[ms for p in parts for ms in p.latencies_ms],
                  server_cpu_s=sum(p.server_cpu_s for p in parts),
                  client_cpu_s=sum(p.client_cpu_s for p in parts),
                  cores_busy_s=sum(p.cores_busy_s for p in parts),
                  first_error=next((p.first_error for p in parts if p.first_error), ""),
                  workload_cpu_s=sum(p.workload_cpu_s for p in parts)) if len(parts) > 1 \
        else first


async def stop_workers(run, tasks, timeout_s: float) -> None:
    """Ask the workers to stop, cancel those that do not, and count the ones that died
    (even outside the measured window: a worker that died is news)."""
    run.stopping = True
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            run.errors += 1
            run.first_error = run.first_error or f"worker failed: {task.exception()!r}"


async def measure(start_workers: Callable[[Run], Awaitable[List["asyncio.Task"]]],
                  server_cpu: Callable[[], float], cores_busy: Callable[[], float],
                  warmup_s: float, seconds: float,
                  during: Optional[Callable[[], Awaitable[None]]] = None,
                  workload_cpu: Optional[Callable[[], float]] = None) -> Result:
    """Start the workers, warm up, measure for ``seconds``, stop them.

    ``server_cpu`` and ``cores_busy`` are CPU-seconds counters read at both ends of the
    window: the server process's, and all work done on the benchmark's cores.

    ``during`` (if given) is awaited after the warm-up, before the window opens: scenario
    (c) starts its slow create_db calls there.

    ``workload_cpu`` (if given) is a CPU-seconds counter of helper processes that belong
    to the load (bench/fetch.py: the jobs' processes), read at both ends too, so that
    their work is not counted as "other".
    """
    workload = workload_cpu or (lambda: 0.0)
    run = Run()
    tasks = await start_workers(run)
    try:
        await asyncio.sleep(warmup_s)
        if during is not None:
            await during()
        work0, busy0, cpu0, client0 = workload(), cores_busy(), server_cpu(), time.process_time()
        t0 = time.perf_counter()
        run.measuring = True
        await asyncio.sleep(seconds)
        run.measuring = False
        t1 = time.perf_counter()
        busy1, cpu1, client1, work1 = cores_busy(), server_cpu(), time.process_time(), workload()
    finally:
        await stop_workers(run, tasks, CONNECT_TIMEOUT_S + 5)
    return Result(requests=len(run.latencies_s) + run.errors, errors=run.errors, wall_s=t1 - t0,
                  latencies_ms=[1000.0 * s for s in run.latencies_s],
                  server_cpu_s=cpu1 - cpu0, client_cpu_s=client1 - client0,
                  cores_busy_s=busy1 - busy0,
                  first_error=run.first_error, workload_cpu_s=work1 - work0)


def keep_alive_load(port: int, ctx: ssl.SSLContext, raw: bytes, connections: int):
    """A ``start_workers`` for ``measure``: ``connections`` keep-alive connections,
    all established before the warm-up clock starts."""
    async def start(run: Run) -> List[asyncio.Task]:
        loop = asyncio.get_running_loop()
        readies = [loop.create_future() for _ in range(connections)]
        tasks = [asyncio.ensure_future(keep_alive_worker(run, port, ctx, raw, ready))
                 for ready in readies]
        for task, ready in zip(tasks, readies):  # a worker that fails early is "ready" too
            task.add_done_callback(lambda _, r=ready: r.done() or r.set_result(None))
        await asyncio.wait(readies, timeout=CONNECT_TIMEOUT_S)
        return tasks
    return start


def new_connection_load(port: int, ctx: ssl.SSLContext, raw: bytes, workers: int):
    """A ``start_workers`` for ``measure``: ``workers`` loops of connect-request-close."""
    async def start(run: Run) -> List[asyncio.Task]:
        return [asyncio.ensure_future(new_connection_worker(run, port, ctx, raw))
                for _ in range(workers)]
    return start


async def timed_request(port: int, ctx: ssl.SSLContext, raw: bytes,
                        timeout_s: float) -> Tuple[int, float]:
    """(status, seconds) of one request on a new connection; status 0 if it failed."""
    start = time.perf_counter()
    conn: Optional[HttpConnection] = None
    try:
        conn = await connect(port, ctx)
        status = await asyncio.wait_for(conn.request(raw), timeout_s)
    except (OSError, ConnectionError, ValueError, asyncio.TimeoutError):
        status = 0
    finally:
        if conn is not None:
            conn.close()
    return status, time.perf_counter() - start
