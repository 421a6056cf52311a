"""Output benchmark: a 1 GiB process-job output over REST, page by page (JSON) and as a
raw download, next to ``cat`` of the same file to /dev/null and to the TLS floor (what
Python's ssl moves over loopback), watching the server's memory.
Run:  .venv/bin/python bench/output.py [--quick] [--fetch_page_bytes N] [--profile]

One server (the real Gateway, started in a child process by this file's ``serve``:
``--enable_process_jobs``, ``--max_output_bytes`` and ``--max_output_bytes_per_user``
raised past the output's size, ``--fetch_page_bytes`` as given, no gRPC door, logging at
WARNING), pinned to core 0 with ``taskset``; mutual TLS with certificates from
scripts/gen_cert.sh in a temporary key store; this process (core 1) is the client.

1. A ``process`` job writes ``--bytes`` (default 1 GiB) of text lines (``--line_bytes``
   each, newline included: printable ASCII, a counter in each) to its output.log; the
   benchmark waits for it to end SUCCEEDED, then for the server to go quiet (under 5% of
   a core for 0.5 s: it ships the ended job's output to the store).
2. ``cat output.log > /dev/null``, timed (page cache, as for every reader below).
3. The TLS floor: a child on core 0 (``floor``) with the gateway's own server context
   (tls.make_server_context) sends the same number of bytes in ``fetch_page_bytes``
   writes over one blocking TLS socket; this process receives and discards them
   (recv_into, one blocking thread). The cipher negotiated is printed.
4. ``GET /api/jobs/{token}?since=<next>`` over one keep-alive connection (uvloop), from
   "" until ``eof``: every page's head is parsed, the first page's responses are checked
   against the file's first lines, and the last ``next`` must be the file's size.
5. ``GET /api/jobs/{token}/output`` (the raw download) over one blocking TLS socket, the
   body read and discarded; its length must be the file's size.
6. ``cat`` again (the better of the two cat runs is the one compared).
7. With ``--from_disk`` (root only): ``cat``, the fetch and the download once more, each
   after the kernel's page cache was dropped (``/proc/sys/vm/drop_caches``), so each
   reads the file from the disk; the ratios to that ``cat`` are printed and judged too.

During 4 and 5 the server's RSS is watched: the baseline is VmRSS just before; the peak
is the kernel's VmHWM, reset to the baseline just before (/proc/PID/clear_refs "5"), and
VmRSS sampled every 5 ms (the larger counts). "Other load" is the CPU time both cores
spent on anything but the server and this process (/proc/stat): the machine is shared,
so the bytes per CPU second of the sending side are printed next to the speeds.

Targets (PASS/MISS; informational, the exit code is 0 unless something crashed):
speed >= 0.5 x cat's; server RSS growth <= 2 x fetch_page_bytes.
"""
import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _load  # noqa: E402
import _servers  # noqa: E402
from heartbeat import pin_self, run_loop  # noqa: E402
from plugin_door import ScriptServer, one_request  # noqa: E402

TARGET_SPEED_RATIO = 0.5
TARGET_RSS_PAGES = 2
RSS_SAMPLE_S = 0.005
WARM_PAGES = 32  # the steady state's RSS is measured from after this many pages
WRITER = r"""
import sys
total, line_bytes = int(sys.argv[1]), int(sys.argv[2])
out = sys.stdout.buffer
block, n, written = [], 0, 0
while written < total:
    head = b"line %012d " % n
    size = min(line_bytes, total - written)
    line = (head + b"abcdefghijklmnopqrstuvwxyz0123456789-" * (line_bytes // 37 + 1))[:size - 1]
    block.append(line + b"\n")
    written += size
    n += 1
    if len(block) == 4096:
        out.write(b"".join(block))
        block = []
out.write(b"".join(block))
"""


# -- the server (child side) -----------------------------------------------------------------

def serve(argv: Sequence[str]) -> None:
    """``output.py serve jobs --ca_crt ... --state_dir ... --fetch_page_bytes N
    --max_output_bytes N``: the gateway, announced as ``READY <port>``."""
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["jobs"])
    for flag in ("--ca_crt", "--server_crt", "--server_key", "--state_dir"):
        p.add_argument(flag, required=True)
    p.add_argument("--fetch_page_bytes", type=int, required=True)
    p.add_argument("--max_output_bytes", type=int, required=True)
    args = p.parse_args(argv)
    import cProfile
    import pstats

    from sqlflow_playground import cli
    from sqlflow_playground.config import Config
    os.makedirs(args.state_dir, exist_ok=True)
    config = Config(port=0, host=_load.HOST, ca_crt=args.ca_crt, server_crt=args.server_crt,
                    server_key=args.server_key, state_dir=args.state_dir,
                    log_level="warning", grpc_port=0, enable_process_jobs=True,
                    fetch_page_bytes=args.fetch_page_bytes,
                    max_output_bytes=args.max_output_bytes,
                    max_output_bytes_per_user=2 * args.max_output_bytes)
    cli.setup_logging("warning")
    run = cli.serve(config, on_started=lambda g: print(f"READY {g.port}", flush=True))
    profile_path = os.environ.get("BENCH_PROFILE")
    if not profile_path:
        asyncio.run(run)
        return
    from _server_entry import profile_executor_threads
    threads = profile_executor_threads()
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        asyncio.run(run)
    finally:
        profiler.disable()
        stats = pstats.Stats(profiler)
        for profile in threads:
            stats.add(profile)
        stats.dump_stats(profile_path)


def serve_floor(argv: Sequence[str]) -> None:
    """``output.py floor --ca_crt ... --bytes N --chunk N``: the TLS floor's sender. The
    gateway's own server context (tls.make_server_context: mutual TLS, the same cipher
    negotiated), one blocking socket: after the client's "go", ``--bytes`` in
    ``--chunk`` writes of one buffer; then waits for the client's "bye"."""
    import socket

    from sqlflow_playground.tls import make_server_context
    p = argparse.ArgumentParser()
    for flag in ("--ca_crt", "--server_crt", "--server_key"):
        p.add_argument(flag, required=True)
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--chunk", type=int, required=True)
    args = p.parse_args(argv)
    ctx = make_server_context(args.ca_crt, args.server_crt, args.server_key)
    with socket.create_server((_load.HOST, 0)) as listener:
        print(f"READY {listener.getsockname()[1]}", flush=True)
        sock, _ = listener.accept()
    with ctx.wrap_socket(sock, server_side=True) as tls:
        tls.recv(2)
        line = (b"line 000000000000 " + b"abcdefghijklmnopqrstuvwxyz0123456789-" * 3)[:99]
        data = memoryview((line + b"\n") * (args.chunk // 100 + 1))[:args.chunk]
        sent = 0
        while sent < args.bytes:
            n = min(args.chunk, args.bytes - sent)
            tls.sendall(data[:n])
            sent += n
        tls.recv(3)


def tls_client(port: int, ctx):
    import socket
    sock = socket.create_connection((_load.HOST, port))
    return ctx.wrap_socket(sock, server_hostname=_load.SERVER_NAME)


def receive(tls, total: int, chunk: int = 1 << 20) -> int:
    """Blocking: read and discard ``total`` bytes (or to the end); how many came."""
    buf = memoryview(bytearray(chunk))
    got = 0
    while got < total:
        n = tls.recv_into(buf, min(chunk, total - got))
        if not n:
            break
        got += n
    return got


def tls_floor(keys: _servers.KeyStore, core: Optional[int], total: int, chunk: int, ctx,
              cores: List[int]) -> dict:
    """The TLS floor: what Python's ssl moves over loopback, one blocking thread each side
    (sender on the server's core, this process receiving and discarding on the other)."""
    cmd = _servers.pin_command(core) + [
        sys.executable, str(Path(__file__).resolve()), "floor", "--ca_crt", keys.ca,
        "--server_crt", keys.crt("server"), "--server_key", keys.key("server"),
        "--bytes", str(total), "--chunk", str(chunk)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    try:
        port = int(proc.stdout.readline().split()[1])
        with tls_client(port, ctx) as tls:
            cipher = tls.cipher()
            (u0, s0), busy0, c0 = user_sys(proc.pid), _servers.busy_seconds(cores), \
                time.process_time()
            start = time.perf_counter()
            tls.sendall(b"go")
            got = receive(tls, total)
            wall = time.perf_counter() - start
            (u1, s1), busy1 = user_sys(proc.pid), _servers.busy_seconds(cores)
            client = time.process_time() - c0
            tls.sendall(b"bye")
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if got != total:
        raise RuntimeError(f"the TLS floor moved {got} of {total} bytes")
    server = u1 - u0 + s1 - s0
    return {"wall": wall, "cipher": cipher, "server_cpu": server, "client_cpu": client,
            "other": busy1 - busy0 - server - client}


def download_raw(port: int, ctx, token: str, total: int) -> Tuple[float, int]:
    """Blocking: ``GET /api/jobs/{token}/output`` over one mutual-TLS connection, the body
    read and discarded; (seconds, body bytes). The head is checked (200, Content-Length)."""
    with tls_client(port, ctx) as tls:
        start = time.perf_counter()
        tls.sendall(_load.get_request(port, f"/api/jobs/{token}/output"))
        head = b""
        while b"\r\n\r\n" not in head:
            more = tls.recv(65536)
            if not more:
                raise RuntimeError(f"the download closed early: {head[:300]!r}")
            head += more
        head, rest = head.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 200") \
                or f"content-length: {total}".encode() not in head.lower():
            raise RuntimeError(f"the download answered {head[:300]!r}")
        got = len(rest) + receive(tls, total - len(rest))
        return time.perf_counter() - start, got


# -- the client ------------------------------------------------------------------------------

def vm_rss(pid: int, field: str = "VmRSS") -> int:
    """A process's VmRSS (or ``field``, e.g. VmHWM: the peak RSS) in bytes."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0, /proc/PID/clear_refs
    "5"); False if not allowed (then only the sampled peak is known)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


async def wait_quiet(pid: int, window_s: float = 0.5, limit_s: float = 300.0) -> float:
    """Wait until the server used under 5% of a core for ``window_s`` (it ships a job's
    output to the store after the job ends: that must not count as the fetch's time or
    memory); the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        before = sum(user_sys(pid))
        await asyncio.sleep(window_s)
        if sum(user_sys(pid)) - before < 0.05 * window_s:
            break
    return time.monotonic() - start


class RssSampler:
    def __init__(self, pid: int):
        self.pid, self.peak, self.stopping = pid, 0, False
        self.baseline = vm_rss(pid)
        self.samples = 0
        self.warm: Optional[int] = None  # VmRSS once WARM_PAGES pages were fetched
        self.warm_peak = 0  # the peak from then on
        self.early_peak = 0  # the peak before

    async def run(self) -> None:
        while not self.stopping:
            rss = vm_rss(self.pid)
            self.peak = max(self.peak, rss)
            if self.warm is not None:
                self.warm_peak = max(self.warm_peak, rss)
            else:
                self.early_peak = max(self.early_peak, rss)
            self.samples += 1
            await asyncio.sleep(RSS_SAMPLE_S)


def user_sys(pid: int) -> Tuple[float, float]:
    """(user, system) CPU seconds of a process, all its threads (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) / _servers.CLOCK_TICKS, int(fields[12]) / _servers.CLOCK_TICKS


def time_cat(path: str) -> float:
    start = time.perf_counter()
    with open(os.devnull, "wb") as null:
        subprocess.run(["cat", path], stdout=null, check=True)
    return time.perf_counter() - start


def head_of(body: bytes) -> dict:
    """The fetch answer without its responses (they come last: jobs.fetch_body)."""
    cut = body.index(b',"responses":')
    return json.loads(body[:cut] + b"}")


async def fetch_to_end(port: int, ctx, token: str, first_lines: List[bytes],
                       sampler: RssSampler) -> Tuple[int, int, int, str]:
    """(pages, body bytes, last cursor, status) of fetching the job's output to eof."""
    conn = await _load.connect(port, ctx, _load.BodyConnection)
    pages = body_bytes = 0
    cursor, checked = "", False
    try:
        while True:
            status, body = await conn.request(
                _load.get_request(port, f"/api/jobs/{token}?since={cursor}"))
            if status != 200:
                raise RuntimeError(f"fetch answered {status}: {body[:300]!r}")
            head = head_of(body)
            pages += 1
            body_bytes += len(body)
            if pages == WARM_PAGES:
                sampler.warm = vm_rss(sampler.pid)
            if not checked:
                responses = json.loads(body)["responses"]
                got = [r["message"].encode() for r in responses[:len(first_lines)]]
                if got != first_lines[:len(got)] or not got:
                    raise RuntimeError(f"the first page is not the file's first lines: "
                                       f"{got[:2]!r} vs {first_lines[:2]!r}")
                checked = True
            cursor = head["next"]
            if head["eof"]:
                return pages, body_bytes, int(cursor), head["status"]
    finally:
        sampler.stopping = True
        conn.close()


async def submit_and_wait(port: int, ctx, args: argparse.Namespace) -> str:
    body = json.dumps({"task_type": "process", "fetch_timeout_s": 3600, "spec": {
        "command": [sys.executable, "-c", WRITER, str(args.bytes), str(args.line_bytes)]}})
    raw = (f"POST /api/jobs HTTP/1.1\r\nHost: {_load.SERVER_NAME}:{port}\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
           ).encode() + body.encode()
    status, answer = await one_request(port, ctx, raw)
    if status != 201:
        raise RuntimeError(f"submit answered {status}: {answer[:300]!r}")
    token = json.loads(answer)["token"]
    start, deadline = time.monotonic(), time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            status, answer = await one_request(
                port, ctx, _load.get_request(port, f"/plugins/v1/process/v1/{token}"))
        except (asyncio.TimeoutError, ConnectionError) as e:  # a loaded machine: ask again
            print(f"  (status poll: {type(e).__name__}; asking again)", flush=True)
            continue
        state = json.loads(answer)
        if state["job_state"] != "RUNNING":
            if state["job_state"] != "SUCCEEDED":
                raise RuntimeError(f"the writer job ended {state}")
            print(f"writer job: {args.bytes:,} bytes written in "
                  f"{time.monotonic() - start:.1f} s", flush=True)
            return token
        await asyncio.sleep(0.2)
    raise RuntimeError("the writer job did not end in 600 s")


async def measure_rss(pid: int, work) -> Tuple[object, dict]:
    """Run ``work`` (a coroutine function taking the sampler) with the server's RSS
    watched: the baseline just before, the peak sampled every RSS_SAMPLE_S and, where
    /proc/PID/clear_refs allows resetting it, the kernel's own peak (VmHWM) since then."""
    sampler = RssSampler(pid)
    exact = reset_peak(pid)
    sampling = asyncio.ensure_future(sampler.run())
    try:
        result = await work(sampler)
    finally:
        sampler.stopping = True
        await sampling
    hwm = vm_rss(pid, "VmHWM") if exact else 0
    peak = max(sampler.peak, hwm)
    return result, {"baseline": sampler.baseline, "sampled": sampler.peak, "hwm": hwm,
                    "peak": peak, "growth": peak - sampler.baseline, "samples": sampler.samples,
                    "warm": sampler.warm, "warm_peak": sampler.warm_peak,
                    "early_peak": sampler.early_peak}


def print_rss(what: str, rss: dict, page: int) -> None:
    mib = 2 ** 20
    how = (f"VmHWM {rss['hwm'] / mib:.1f} MiB, sampled {rss['sampled'] / mib:.1f} MiB"
           if rss["hwm"] else f"sampled only ({rss['samples']} samples)")
    print(f"  server RSS during {what}: {rss['baseline'] / mib:.1f} MiB before, peak "
          f"{rss['peak'] / mib:.1f} MiB ({how}): growth {rss['growth'] / mib:.2f} MiB = "
          f"{rss['growth'] / page:.2f} x fetch_page_bytes", flush=True)


async def run_all(args: argparse.Namespace, server: _servers.ServerProcess,
                  keys: _servers.KeyStore, workdir: Path) -> None:
    ctx = _load.client_context(keys.ca, keys.crt("bench"), keys.key("bench"))
    pid, page = server.proc.pid, args.fetch_page_bytes
    token = await submit_and_wait(server.port, ctx, args)
    quiet = await wait_quiet(pid)
    print(f"server quiet {quiet:.1f} s after the job ended (it ships the output to the "
          f"store); RSS {vm_rss(pid) / 2**20:.1f} MiB", flush=True)
    path = str(workdir / "jobs" / "state" / "jobs" / token / "output.log")
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        first_lines = fh.read(1 << 16).split(b"\n")[:-1]
    cat1 = time_cat(path)
    print(f"cat 1: {size / cat1 / 1e6:,.0f} MB/s ({cat1:.3f} s)", flush=True)

    floor = await asyncio.to_thread(tls_floor, keys, server.core, size, page, ctx, args.cores)
    print(f"TLS floor: {size / floor['wall'] / 1e6:,.0f} MB/s ({floor['wall']:.3f} s; "
          f"{floor['cipher'][1]} {floor['cipher'][0]}; sender CPU {floor['server_cpu']:.2f} s, "
          f"receiver CPU {floor['client_cpu']:.2f} s; other load on the cores "
          f"{max(0.0, floor['other']):.2f} s)", flush=True)

    perf = None
    if args.perf:  # the fetch alone, sampled by perf (C and kernel frames too)
        perf = subprocess.Popen(["perf", "record", "-g", "-o", args.perf, "-p", str(pid)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(1.0)

    async def pages(sampler):
        (u0, s0), t0, c0 = user_sys(pid), time.perf_counter(), time.process_time()
        busy0 = _servers.busy_seconds(args.cores)
        got = await fetch_to_end(server.port, ctx, token, first_lines, sampler)
        wall = time.perf_counter() - t0
        (u1, s1), client = user_sys(pid), time.process_time() - c0
        other = _servers.busy_seconds(args.cores) - busy0 - (u1 - u0 + s1 - s0) - client
        return got, wall, u1 - u0, s1 - s0, client, other
    (got, wall, user, system, client, other), rss = await measure_rss(pid, pages)
    n_pages, body_bytes, end, status = got
    if perf is not None:
        perf.send_signal(signal.SIGINT)
        perf.wait(30)
    if end != size:
        raise RuntimeError(f"the last cursor {end} is not the file's size {size}")
    cpu = user + system
    print(f"fetch (JSON pages): {size / wall / 1e6:,.0f} MB/s of output ({wall:.3f} s, "
          f"{n_pages} pages, {body_bytes / 1e6:,.0f} MB of JSON, job {status}), server CPU "
          f"{cpu:.2f} s ({cpu / wall:.0%} of a core: user {user:.2f} s, system {system:.2f} s); "
          f"client CPU {client:.2f} s ({client / wall:.0%}); other load on the cores "
          f"{max(0.0, other):.2f} s", flush=True)
    print_rss("the fetch", rss, page)
    if rss["warm"] is not None:
        steady = rss["warm_peak"] - rss["warm"]
        print(f"    sampled after the first {WARM_PAGES} pages (steady state): "
              f"{steady / 2**20:.2f} MiB = {steady / page:.2f} x fetch_page_bytes; "
              f"during the first {WARM_PAGES}: peak "
              f"{(rss['early_peak'] - rss['baseline']) / 2**20:+.2f} MiB", flush=True)

    async def raw(sampler):
        (u0, s0), busy0, c0 = user_sys(pid), _servers.busy_seconds(args.cores), \
            time.process_time()
        seconds, got = await asyncio.to_thread(download_raw, server.port, ctx, token, size)
        (u1, s1), client = user_sys(pid), time.process_time() - c0
        other = _servers.busy_seconds(args.cores) - busy0 - (u1 - u0 + s1 - s0) - client
        return seconds, got, u1 - u0 + s1 - s0, client, other
    (raw_wall, raw_got, raw_cpu, raw_client, raw_other), raw_rss = await measure_rss(pid, raw)
    if raw_got != size:
        raise RuntimeError(f"the download brought {raw_got} of {size} bytes")
    print(f"download (GET /api/jobs/{{token}}/output): {size / raw_wall / 1e6:,.0f} MB/s "
          f"({raw_wall:.3f} s), server CPU {raw_cpu:.2f} s ({raw_cpu / raw_wall:.0%} of a "
          f"core); client CPU {raw_client:.2f} s; other load on the cores "
          f"{max(0.0, raw_other):.2f} s", flush=True)
    print_rss("the download", raw_rss, page)

    cat2 = time_cat(path)
    print(f"cat 2: {size / cat2 / 1e6:,.0f} MB/s ({cat2:.3f} s)", flush=True)
    cat = min(cat1, cat2)
    disk = await from_disk(path, size, pages, raw, pid) if args.from_disk else None
    speeds = {"cat": size / cat, "floor": size / floor["wall"], "fetch": size / wall,
              "raw": size / raw_wall}
    # Bytes per CPU second of the sending side: what the wall-clock speeds would be with a
    # core to itself (the cores are shared: see "other load" above).
    per_cpu = {"floor": size / max(floor["server_cpu"], 1e-9), "fetch": size / max(cpu, 1e-9),
               "raw": size / max(raw_cpu, 1e-9)}

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"
    print("\n== summary " + "=" * 70)
    print(f"output {size:,} bytes ({args.line_bytes}-byte lines), fetch_page_bytes {page:,}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"  cat to /dev/null             {speeds['cat'] / 1e6:>8,.0f} MB/s")
    print(f"  TLS floor (Python ssl)       {speeds['floor'] / 1e6:>8,.0f} MB/s   "
          f"= {speeds['floor'] / speeds['cat']:.3f} x cat   [sender: "
          f"{per_cpu['floor'] / 1e6:,.0f} MB per CPU second]")
    for name, label in (("fetch", "fetch, JSON pages"), ("raw", "download, raw bytes")):
        ratio = speeds[name] / speeds["cat"]
        print(f"  {label:<28} {speeds[name] / 1e6:>8,.0f} MB/s   = {ratio:.3f} x cat, "
              f"{speeds[name] / speeds['floor']:.2f} x the TLS floor   (target >= "
              f"{TARGET_SPEED_RATIO} x cat)  {verdict(ratio >= TARGET_SPEED_RATIO)}   "
              f"[server: {per_cpu[name] / 1e6:,.0f} MB per CPU second = "
              f"{per_cpu[name] / per_cpu['floor']:.2f} x the floor's sender]")
    for label, r in (("fetch", rss), ("download", raw_rss)):
        print(f"  server RSS growth, {label:<9} {r['growth'] / page:.2f} x fetch_page_bytes "
              f"(target <= {TARGET_RSS_PAGES})  "
              f"{verdict(r['growth'] <= TARGET_RSS_PAGES * page)}")
    if isinstance(disk, str):
        print(f"  from disk: not measured: {disk}")
    elif disk is not None:
        print(f"  from disk (the page cache dropped before each read):\n"
              f"  cat to /dev/null             {size / disk['cat'] / 1e6:>8,.0f} MB/s")
        for name, label in (("fetch", "fetch, JSON pages"), ("raw", "download, raw bytes")):
            ratio = disk["cat"] / disk[name]
            print(f"  {label:<28} {size / disk[name] / 1e6:>8,.0f} MB/s   = {ratio:.3f} x "
                  f"cat from disk   (target >= {TARGET_SPEED_RATIO} x cat)  "
                  f"{verdict(ratio >= TARGET_SPEED_RATIO)}")


def drop_page_cache() -> Optional[str]:
    """Empty the kernel's page cache (root only; every process's cached files go): None,
    or why it could not."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("1\n")
    except OSError as e:
        return f"cannot drop the page cache ({e.strerror}; it takes root)"
    return None


async def from_disk(path: str, size: int, pages, raw, pid: int):
    """``--from_disk``: cat, the fetch and the download again, each after the page cache
    was dropped, so each reads the file from the disk: {name: seconds}, or why not."""
    seconds = {}
    problem = drop_page_cache()
    if problem:
        return problem
    seconds["cat"] = time_cat(path)
    print(f"cat from disk: {size / seconds['cat'] / 1e6:,.0f} MB/s", flush=True)
    drop_page_cache()
    seconds["fetch"] = (await measure_rss(pid, pages))[0][1]
    print(f"fetch from disk: {size / seconds['fetch'] / 1e6:,.0f} MB/s", flush=True)
    drop_page_cache()
    seconds["raw"] = (await measure_rss(pid, raw))[0][0]
    print(f"download from disk: {size / seconds['raw'] / 1e6:,.0f} MB/s", flush=True)
    return seconds


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bytes", type=int, default=1 << 30, help="output size (default 1 GiB)")
    p.add_argument("--line_bytes", type=int, default=100, help="bytes per line, newline incl.")
    p.add_argument("--fetch_page_bytes", type=int, default=1 << 20,
                   help="the server's --fetch_page_bytes (default 1 MiB, its default)")
    p.add_argument("--quick", action="store_true", help="--bytes 64 MiB")
    p.add_argument("--profile", action="store_true",
                   help="run the server under cProfile and print the fetch path's costs")
    p.add_argument("--perf", metavar="PATH",
                   help="record the server during the fetch with perf record -g into PATH")
    p.add_argument("--mmap_threshold", type=int, default=0, metavar="BYTES",
                   help="run the server with MALLOC_MMAP_THRESHOLD_=BYTES (glibc: buffers "
                        "this large are mapped and unmapped, never kept in a heap)")
    p.add_argument("--from_disk", action="store_true",
                   help="also cat, fetch and download with the page cache dropped before "
                        "each (root only; it empties every process's cached files)")
    p.add_argument("--no_pin", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.bytes = 64 << 20
    return args


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve(argv[1:])
        return 0
    if argv[:1] == ["floor"]:
        serve_floor(argv[1:])
        return 0
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server_core, pin_note = pin_self(args)
    args.cores = [0, 1] if server_core is not None else _servers.usable_cores()
    print(f"output bench: {args.bytes:,} bytes; {pin_note}; load average "
          f"{os.getloadavg()[0]:.2f}"
          + (f"; server with MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}"
             if args.mmap_threshold else ""), flush=True)
    with tempfile.TemporaryDirectory(prefix="sqlflow-bench-") as tmp:
        keys = _servers.KeyStore(Path(tmp) / "key_store")
        profile = Path(tmp) / "jobs.prof" if args.profile else None
        server = ScriptServer(Path(__file__).resolve(), "jobs", keys, Path(tmp), server_core,
                              profile_to=profile, extra_args=[
                                  "--fetch_page_bytes", str(args.fetch_page_bytes),
                                  "--max_output_bytes", str(args.bytes + (64 << 20))])
        if args.mmap_threshold:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)  # (the child's)
        try:
            server.start(timeout_s=180.0)  # a loaded machine starts it slowly
            run_loop(run_all(args, server, keys, Path(tmp)))
        finally:
            server.stop()
        if profile is not None and profile.exists():
            import pstats
            stats = pstats.Stats(str(profile))
            print("cProfile (IOLoop and executor threads; inflates call-heavy code):")
            stats.sort_stats("tottime").print_stats(20)
        tail = server.log_tail(5)
        if tail:
            print("server logged (last lines):\n    " + tail.replace("\n", "\n    "))
    return 0


if __name__ == "__main__":
    sys.exit(main())
