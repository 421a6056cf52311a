"""Heart-beat benchmark: how close does the gateway get to bare Tornado, and does slow
provisioning stall it?   Run:  .venv/bin/python bench/heartbeat.py [--quick]

Servers (each its own process, pinned to CPU core 0 with ``taskset``; mutual TLS with
certificates from scripts/gen_cert.sh in a temporary key store; 127.0.0.1 only):
  ours  the real Gateway, started through ``sqlflow_playground.cli.serve``.
  bare  a Tornado app whose only handler returns constant JSON for GET /api/heart_beat,
        with the same TLS context (``make_server_context``) and HTTPServer settings:
        the floor of what Tornado costs for this request.
  original  the same constant-JSON handler on a plain Tornado HTTPServer with the TLS
        context the original playground server built: ``ssl.create_default_context(
        ssl.Purpose.CLIENT_AUTH)``, ``load_cert_chain``, ``load_verify_locations``,
        ``verify_mode = CERT_REQUIRED``, nothing else (so not our context's settings).
  slow  the real Gateway whose sqlite provisioner sleeps 5 s (blocking, in the gateway's
        executor) before creating a database.
bare and original log at WARNING (Tornado's access log discarded); ours runs as deployed:
its JSON access log at INFO (written to its log file) and its metrics on.

The load generator is this process (pinned to core 1, asyncio on uvloop), presenting the
``bench`` client certificate and speaking raw HTTP/1.1. Scenarios:
  (a) GET /api/heart_beat?user_id=bench over N keep-alive connections (default 16), one
      request in flight per connection; warm-up, then a measured window.
  (b) the same request over a NEW connection each time (full TLS handshake with client
      certificate, no session resumption), from a few concurrent workers (default 8).
  (c) ``slow``: 10 concurrent POST /api/create_db (a frontend certificate acting for
      users slow0..slow9, since create_db is single-flight per user); while they are in
      flight, heart_beat latency over keep-alive connections as in (a).

Scenarios (a) and (b) run in ``--rounds`` rounds (default 4 of 4 s), each server once per round
in turns; the summary adds each server's rounds up.
Columns: req/s and latency percentiles as the client sees them; "srv ms/req" is the
server process's CPU time (utime+stime, all threads, /proc/PID/stat) over the window
divided by the requests in it; "srv core" / "cli core" are the share of one core that
server and load generator used; "other" is what else ran on those two cores (other
processes, hypervisor steal, interrupts, /proc/stat): above ~15% the row is noise.
Reading the ratios:
  ours/bare req/s    throughput relative to the Tornado floor; 1.0 = no overhead of ours.
  ours/original      the same against the original server's shape and TLS context.
                     Meaningful only while the server core is saturated (srv core ~100%);
                     if the client core is saturated instead, both servers look alike.
  ours/bare CPU/req  what a request costs ours relative to bare; robust even when the
                     server is not saturated. 1/(this) is roughly the req/s ratio.
Targets and PASS/MISS are informational; the exit code is 0 unless something crashed.
"""
import argparse
import asyncio
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import _load
import _servers
from _load import Result

TARGET_RATIO = 1.0  # ours/bare and ours/original, req/s, in (a) and (b) (issue 15)
TARGET_A_P99_MS = 10.0
REFERENCES = ("bare", "original")
TARGET_C_P99_MS = 20.0
SERVER_CORE, CLIENT_CORE = 0, 1
NOISY_OTHER_SHARE = 0.15  # "other" work on our cores above this makes a row unreliable
SETTLE_S = 0.5  # after starting the slow create_db calls, before the window of (c) opens
HEART_BEAT = "/api/heart_beat?user_id=bench"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=4.0,
                   help="measured window of (a) and (b) per server and round (default 4)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up before each window (default 1)")
    p.add_argument("--quick", action="store_true", help="smoke run: --seconds 2 --warmup 0.5")
    p.add_argument("--rounds", type=int, default=4,
                   help="rounds of (a) and (b); each round measures every server once, in "
                        "turns; the summary adds the rounds up (default 4, --quick 1): short "
                        "windows in turns meet a machine's changing load alike")
    p.add_argument("--connections", type=int, default=16, help="keep-alive connections, (a) and (c)")
    p.add_argument("--handshake_workers", type=int, default=8, help="concurrent workers in (b)")
    p.add_argument("--slow_calls", type=int, default=10, help="concurrent create_db calls in (c)")
    p.add_argument("--slow_s", type=float, default=5.0, help="sleep of the slow provisioner")
    p.add_argument("--scenarios", default="abc", help="which of a, b, c to run (default abc)")
    p.add_argument("--no_pin", action="store_true", help="do not pin server and client to cores")
    p.add_argument("--profile", action="store_true",
                   help="only run (a) and (b) against ours and original under cProfile, "
                        "print their top costs and write them to --profile_dir")
    p.add_argument("--profile_dir", default=str(Path(__file__).resolve().parent / "profiles"),
                   help="where --profile writes heartbeat-<scenario>-<server>.txt "
                        "(default bench/profiles)")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.rounds = 2.0, 0.5, 1
    return args


def cores_busy(args: argparse.Namespace) -> Callable[[], float]:
    return lambda: _servers.busy_seconds(args.cores)


# -- scenarios -------------------------------------------------------------------------

async def scenario_a(server: _servers.ServerProcess, keys: _servers.KeyStore,
                     args: argparse.Namespace) -> Result:
    ctx = _load.client_context(keys.ca, keys.crt("bench"), keys.key("bench"))
    load = _load.keep_alive_load(server.port, ctx, _load.get_request(server.port, HEART_BEAT),
                                 args.connections)
    return await _load.measure(load, server.cpu_seconds, cores_busy(args), args.warmup,
                               args.seconds)


async def scenario_b(server: _servers.ServerProcess, keys: _servers.KeyStore,
                     args: argparse.Namespace) -> Result:
    ctx = _load.client_context(keys.ca, keys.crt("bench"), keys.key("bench"))
    load = _load.new_connection_load(server.port, ctx,
                                     _load.get_request(server.port, HEART_BEAT),
                                     args.handshake_workers)
    return await _load.measure(load, server.cpu_seconds, cores_busy(args), args.warmup,
                               args.seconds)


async def scenario_c(server: _servers.ServerProcess, keys: _servers.KeyStore,
                     args: argparse.Namespace) -> Tuple[Result, List[Tuple[int, float]]]:
    """Heart beats measured while ``slow_calls`` slow provisionings are in flight."""
    port = server.port
    beat_ctx = _load.client_context(keys.ca, keys.crt("bench"), keys.key("bench"))
    front_ctx = _load.client_context(keys.ca, keys.crt("front"), keys.key("front"))
    creates: List[asyncio.Future] = []

    async def start_creates() -> None:
        for i in range(args.slow_calls):
            raw = _load.post_json_request(port, "/api/create_db", {"user_id": f"slow{i}"})
            creates.append(asyncio.ensure_future(
                _load.timed_request(port, front_ctx, raw, timeout_s=args.slow_s + 10)))
        await asyncio.sleep(SETTLE_S)

    window = max(0.5, args.slow_s - SETTLE_S - 0.5)  # closes before the provisionings end
    load = _load.keep_alive_load(port, beat_ctx, _load.get_request(port, HEART_BEAT),
                                 args.connections)
    try:
        result = await _load.measure(load, server.cpu_seconds, cores_busy(args), args.warmup,
                                     window, during=start_creates)
    finally:
        outcomes = list(await asyncio.gather(*creates))
    return result, outcomes


# -- reporting ---------------------------------------------------------------------------

def label(scenario: str, args: argparse.Namespace) -> str:
    return {"a": f"(a) keep-alive x{args.connections}",
            "b": f"(b) new TLS conn/request x{args.handshake_workers}",
            "c": f"(c) keep-alive x{args.connections}, {args.slow_calls} slow create_db",
            }[scenario]


def row(label: str, server: str, r: Result) -> str:
    return (f"{label:<37} {server:<5} {r.rps:>9.0f} {r.p50:>7.2f} {r.p99:>7.2f} "
            f"{r.server_cpu_ms_per_request:>10.3f} {r.server_core_share:>8.0%} "
            f"{r.client_core_share:>8.0%} {r.other_core_share:>6.0%} {r.errors:>6}")


HEADER = (f"{'scenario':<37} {'srv':<5} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'srv ms/req':>10} {'srv core':>8} {'cli core':>8} {'other':>6} {'errors':>6}")


def show(label: str, server: str, r: Result) -> None:
    print(row(label, server, r), flush=True)
    if r.errors:
        print(f"    {r.errors} error(s); first: {r.first_error}", flush=True)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def summary(args: argparse.Namespace, results: Dict[str, Result],
            creates: List[Tuple[int, float]], notes: List[str]) -> None:
    print("\n== summary " + "=" * 90)
    print(HEADER)
    for key, result in results.items():  # keys are "<scenario>_<server>"
        scenario, server = key.split("_")
        print(row(label(scenario, args), server, result))

    ratios = {}
    for s in ("a", "b"):
        for ref in REFERENCES:
            ours, other = results.get(f"{s}_ours"), results.get(f"{s}_{ref}")
            if ours and other and other.rps and ours.server_cpu_ms_per_request:
                ratios[s, ref] = ours.rps / other.rps
                extra_us = 1000 * (ours.server_cpu_ms_per_request
                                   - other.server_cpu_ms_per_request)
                print(f"({s}) ratio ours/{ref + ':':<9} req/s {ratios[s, ref]:.3f}   CPU/req "
                      f"{ours.server_cpu_ms_per_request / other.server_cpu_ms_per_request:.3f}"
                      f"   (ours costs {extra_us:+.0f} us of server CPU per request)")

    print("\ntargets (informational; \"noisy\": other work ran on the benchmark's cores):")
    checks: List[Tuple[str, str, bool, List[str]]] = []  # name, value, met, rows it rests on
    for (s, ref), ratio in ratios.items():
        checks.append((f"({s}) req/s ours/{ref} >= {TARGET_RATIO:g}", f"{ratio:.3f}",
                       ratio >= TARGET_RATIO, [f"{s}_ours", f"{s}_{ref}"]))
    if "a_ours" in results:
        p99 = results["a_ours"].p99
        checks.append((f"(a) ours p99 < {TARGET_A_P99_MS:g} ms", f"{p99:.2f} ms",
                       p99 < TARGET_A_P99_MS, ["a_ours"]))
    if "c_slow" in results:
        p99 = results["c_slow"].p99
        checks.append((f"(c) heart_beat p99 < {TARGET_C_P99_MS:g} ms during slow create_db",
                       f"{p99:.2f} ms", p99 < TARGET_C_P99_MS, ["c_slow"]))
    if creates:
        ok_200 = sum(1 for status, _ in creates if status == 200)
        durations = [d for _, d in creates]
        in_time = all(args.slow_s <= d < args.slow_s + 1.0 for d in durations)
        checks.append((f"(c) {len(creates)} create_db all 200, each in {args.slow_s:g}-"
                       f"{args.slow_s + 1:g} s",
                       f"{ok_200}/{len(creates)} ok, {min(durations):.2f}-{max(durations):.2f} s",
                       ok_200 == len(creates) and in_time, ["c_slow"]))
    for name, value, ok, rows in checks:
        noisy = any(results[k].other_core_share > NOISY_OTHER_SHARE for k in rows)
        print(f"  {name:<58} {value:>22}  {verdict(ok)}{' (noisy)' if noisy else ''}")
    for note in notes:
        print("note: " + note)


def saturation_notes(results: Dict[str, Result]) -> List[str]:
    notes = []
    for key, r in results.items():
        if r.other_core_share > NOISY_OTHER_SHARE:
            notes.append(f"{key}: something else used {r.other_core_share:.0%} of a core on the "
                         "benchmark's cores (other processes or hypervisor steal); this row "
                         "is unreliable, rerun on a quiet machine.")
        if r.client_core_share > 0.9:
            notes.append(f"{key}: the load generator used {r.client_core_share:.0%} of its core; "
                         "req/s may be client-bound (compare CPU/req instead).")
        elif key[0] in "ab" and r.server_core_share < 0.85:
            notes.append(f"{key}: the server used only {r.server_core_share:.0%} of its core; "
                         "it was not saturated.")
    return notes


# -- orchestration -------------------------------------------------------------------------

def report_hang(server: _servers.ServerProcess) -> None:
    """A server that answered nothing: print its threads' stacks (written to its log)."""
    server.dump_stacks()
    print(f"    server {server.kind!r} answered nothing; its log and stacks:\n    "
          + server.log_tail(60).replace("\n", "\n    "), flush=True)


async def run_all(args: argparse.Namespace, keys: _servers.KeyStore, start: Callable) -> None:
    results: Dict[str, Result] = {}
    creates: List[Tuple[int, float]] = []
    print(HEADER, flush=True)

    started: List[_servers.ServerProcess] = []
    if "a" in args.scenarios or "b" in args.scenarios:
        trio = [start("ours"), start("bare"), start("original")]
        started += trio
        for key, scenario in (("a", scenario_a), ("b", scenario_b)):
            if key not in args.scenarios:
                continue
            rounds: Dict[str, List[Result]] = {server.kind: [] for server in trio}
            for n in range(args.rounds):  # servers taken in turns, so that what else
                for server in trio:       # runs on the machine meets each of them alike
                    result = await scenario(server, keys, args)
                    rounds[server.kind].append(result)
                    show(label(key, args) + f" r{n + 1}", server.kind, result)
                    if result.requests == 0:
                        report_hang(server)
            for kind, parts in rounds.items():
                results[f"{key}_{kind}"] = _load.combine(parts)
        for server in trio:
            server.stop()

    if "c" in args.scenarios:
        slow = start("slow")
        started.append(slow)
        results["c_slow"], creates = await scenario_c(slow, keys, args)
        show(label("c", args), "slow", results["c_slow"])
        print("    create_db: " + ", ".join(
            f"slow{i} {status or 'FAILED'} in {seconds:.2f}s"
            for i, (status, seconds) in enumerate(creates)), flush=True)
        if results["c_slow"].requests == 0 or any(status != 200 for status, _ in creates):
            report_hang(slow)
        slow.stop()

    notes = saturation_notes(results)
    for server in started:
        tail = server.log_tail(5)
        if tail:
            notes.append(f"server {server.kind!r} logged (last lines):\n    "
                         + tail.replace("\n", "\n    "))
    summary(args, results, creates, notes)


async def run_profile(args: argparse.Namespace, keys: _servers.KeyStore, start: Callable,
                      profile_dir: Path) -> None:
    """(a) and (b) against ours and original, each server under cProfile (one server
    process per scenario, so each profile is one scenario's); the top costs printed and
    written to ``profile_dir/heartbeat-<scenario>-<server>.txt``."""
    import io
    import pstats
    profile_dir.mkdir(parents=True, exist_ok=True)
    print(HEADER)
    for key, scenario in (("a", scenario_a), ("b", scenario_b)):
        if key not in args.scenarios:
            continue
        for kind in ("ours", "original"):
            raw = profile_dir / f"heartbeat-{key}-{kind}.prof"
            server = start(kind, profile_to=raw)
            result = await scenario(server, keys, args)
            server.stop()
            show(label(key, args) + " cProfile", kind, result)
            out = io.StringIO()
            stats = pstats.Stats(str(raw), stream=out)
            out.write(f"{label(key, args)}, server {kind!r}, under cProfile: "
                      f"{result.requests} requests in {result.wall_s:.1f}s, "
                      f"{result.server_cpu_ms_per_request:.3f} ms server CPU per request.\n"
                      "IOLoop thread (and executor threads); cProfile inflates call-heavy "
                      "code, so compare shares, not times.\n")
            stats.sort_stats("tottime").print_stats(30)
            stats.sort_stats("cumulative").print_stats(30)
            text = profile_dir / f"heartbeat-{key}-{kind}.txt"
            text.write_text(out.getvalue())
            raw.unlink()
            print(f"    profile: {text}", flush=True)


def pin_self(args: argparse.Namespace) -> Tuple[Optional[int], str]:
    """Pin this process to the client core; return the server core (or None) and a note."""
    cores = _servers.usable_cores()
    if args.no_pin:
        return None, "not pinned (--no_pin)"
    if SERVER_CORE not in cores or CLIENT_CORE not in cores:
        return None, f"not pinned: need cores {SERVER_CORE} and {CLIENT_CORE}, have {cores}"
    os.sched_setaffinity(0, {CLIENT_CORE})
    how = "taskset" if _servers.pin_command(SERVER_CORE) else "NOT pinned (no taskset)"
    return SERVER_CORE, f"server on core {SERVER_CORE} ({how}), load generator on core {CLIENT_CORE}"


def run_loop(coro) -> None:
    try:
        import uvloop
    except ImportError:
        print("note: uvloop not installed; the load generator uses the default asyncio loop")
        asyncio.run(coro)
        return
    uvloop.run(coro)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below runs
    server_core, pin_note = pin_self(args)
    args.cores = [SERVER_CORE, CLIENT_CORE] if server_core is not None else _servers.usable_cores()
    print(f"heartbeat bench: {args.seconds:g}s windows after {args.warmup:g}s warm-up; {pin_note}",
          flush=True)
    servers: List[_servers.ServerProcess] = []
    with tempfile.TemporaryDirectory(prefix="sqlflow-bench-") as tmp:
        keys = _servers.KeyStore(Path(tmp) / "key_store")

        def start(kind: str, profile_to: Optional[Path] = None) -> _servers.ServerProcess:
            server = _servers.ServerProcess(kind, keys, Path(tmp), server_core,
                                            slow_s=args.slow_s, profile_to=profile_to)
            servers.append(server)
            server.start()
            return server

        try:
            if args.profile:
                run_loop(run_profile(args, keys, start, Path(args.profile_dir)))
            else:
                run_loop(run_all(args, keys, start))
        finally:
            for server in servers:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
