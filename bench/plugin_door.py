"""Plugin-door benchmark: what does polling a running job through the Flyte-style door
cost, next to a heart beat of the same server and next to a FastAPI server of the
Flyte RFC's own sketch?   Run:  .venv/bin/python bench/plugin_door.py [--quick]

Servers (each its own process, pinned to CPU core 0 with ``taskset``; mutual TLS with
certificates from scripts/gen_cert.sh in a temporary key store; 127.0.0.1 only):
  ours     the real Gateway (bench/_server_entry.py ``ours``: persistence, authorisation,
           metrics and the access log as configured by default); the example ``hello``
           plugin (examples/hello_plugin, installed in the venv) is found through its
           entry point.
  fastapi  the RFC's sketch: FastAPI on uvicorn (uvloop, httptools), the same server
           certificate and CA, client certificates required (``ssl.CERT_REQUIRED``), jobs
           in a dict; PUT creates, GET polls, DELETE cancels. Its poll computes the hello
           job's state from the job's metadata exactly as the plugin does, and answers the
           same JSON. uvicorn's access log is off and it logs at WARNING.

The load generator is this process (pinned to core 1, asyncio on uvloop, bench/_load.py):
N keep-alive connections (default 16), one request in flight each. Per round, three
windows, one after the other:
  beat     ours, GET /api/heart_beat?user_id=bench
  poll     ours, GET /plugins/v1/hello/v1/{id} of a running hello job (1000 greetings,
           one a minute: RUNNING throughout)
  fastapi  the same poll against the FastAPI server
"srv ms/req" is the server process's CPU (utime+stime, /proc/PID/stat) over the window
per request: the figure the targets use, robust even when the server core is not
saturated. Targets (PASS/MISS; informational, the exit code is 0 unless something
crashed): poll/beat CPU per request <= 1.2 (a poll of a job whose state the gateway
knows costs about a heart beat); ours/fastapi is printed, not judged.
"""
import argparse
import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _load  # noqa: E402
import _servers  # noqa: E402
from _load import Result  # noqa: E402
from heartbeat import pin_self, run_loop  # noqa: E402

TARGET_POLL_PER_BEAT = 1.2
HEART_BEAT = "/api/heart_beat?user_id=bench"
HELLO_SPEC = {"name": "bench", "times": 1000, "interval_s": 60}
NOISY_OTHER_SHARE = 0.15


class ScriptServer(_servers.ServerProcess):
    """A ``ServerProcess`` whose child runs ``script`` (same flags as _server_entry.py,
    the same ``READY <port>`` line) instead of bench/_server_entry.py."""

    def __init__(self, script: Path, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.script = script

    def start(self, timeout_s: float = 30.0) -> int:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = _servers.pin_command(self.core) + [
            sys.executable, str(self.script), "serve", self.kind,
            "--ca_crt", self.keys.ca,
            "--server_crt", self.keys.crt("server"), "--server_key", self.keys.key("server"),
            "--state_dir", str(self.workdir / "state"), *self.extra_args]
        env = dict(os.environ)
        if self.profile_to:
            env["BENCH_PROFILE"] = str(self.profile_to)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env,
                                         cwd=str(self.workdir),
                                         preexec_fn=_servers._die_with_parent)
        self.port = self._await_ready(timeout_s)
        return self.port


# -- the reference: FastAPI, the RFC's sketch ---------------------------------------------

def hello_state(meta: Dict, now: float) -> Dict:
    """The example plugin's ``get`` (examples/hello_plugin), cursor "" and status only."""
    elapsed = now - meta["started"]
    interval = meta["interval_s"]
    ready = meta["times"] if interval == 0 else min(meta["times"], int(elapsed / interval))
    finished = ready == meta["times"]
    return {"job_state": "SUCCEEDED" if finished else "RUNNING",
            "message": f"greeted {meta['name']} {ready} time(s)",
            "outputs": {"greetings": ready} if finished else {}}


def fastapi_app():
    import uuid

    from fastapi import FastAPI, HTTPException

    app = FastAPI()
    jobs: Dict[str, Dict] = {}

    @app.put("/plugins/v1/{task_type}/{version}", status_code=201)
    async def create(task_type: str, version: str, body: Dict) -> Dict:
        spec = body.get("spec") or {}
        job_id = uuid.uuid4().hex
        jobs[job_id] = {"task_type": task_type, "version": version, "cancelled": False,
                        "meta": {"started": time.time(), "name": spec.get("name", ""),
                                 "times": spec.get("times", 3),
                                 "interval_s": spec.get("interval_s", 0.1)}}
        return {"job_id": job_id, "job_state": "RUNNING"}

    def state(task_type: str, version: str, job_id: str) -> Dict:
        job = jobs.get(job_id)
        if job is None or (job["task_type"], job["version"]) != (task_type, version):
            raise HTTPException(404, "no such job")
        answer = hello_state(job["meta"], time.time())
        if job["cancelled"] and answer["job_state"] == "RUNNING":
            answer.update(job_state="CANCELLED", message="cancelled by the user")
        return {"job_id": job_id, **answer, "log_links": []}

    @app.get("/plugins/v1/{task_type}/{version}/{job_id}")
    async def get(task_type: str, version: str, job_id: str) -> Dict:
        return state(task_type, version, job_id)

    @app.delete("/plugins/v1/{task_type}/{version}/{job_id}")
    async def delete(task_type: str, version: str, job_id: str) -> Dict:
        state(task_type, version, job_id)
        jobs[job_id]["cancelled"] = True
        return state(task_type, version, job_id)

    return app


def serve(argv: Sequence[str]) -> None:
    """Child side: ``plugin_door.py serve fastapi --ca_crt ... --state_dir ...``."""
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["fastapi"])
    for flag in ("--ca_crt", "--server_crt", "--server_key", "--state_dir"):
        p.add_argument(flag, required=True)
    args = p.parse_args(argv)
    import socket

    import uvicorn
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((_load.HOST, 0))
    config = uvicorn.Config(fastapi_app(), loop="uvloop", http="httptools",
                            ssl_keyfile=args.server_key, ssl_certfile=args.server_crt,
                            ssl_ca_certs=args.ca_crt, ssl_cert_reqs=ssl.CERT_REQUIRED,
                            log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)

    async def main() -> None:
        config.load()
        started = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:
            if started.done():
                started.result()
                return
            await asyncio.sleep(0.01)
        print(f"READY {sock.getsockname()[1]}", flush=True)
        await started

    import uvloop
    uvloop.run(main())


# -- the measurement ---------------------------------------------------------------------

async def one_request(port: int, ctx: ssl.SSLContext, raw: bytes) -> Tuple[int, bytes]:
    conn = await _load.connect(port, ctx, _load.BodyConnection)
    try:
        return await asyncio.wait_for(conn.request(raw), _load.CONNECT_TIMEOUT_S)
    finally:
        conn.close()


def json_request(method: str, port: int, target: str, payload: Dict) -> bytes:
    body = json.dumps(payload).encode()
    return (f"{method} {target} HTTP/1.1\r\nHost: {_load.SERVER_NAME}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


async def create_hello(port: int, ctx: ssl.SSLContext, method: str) -> str:
    status, body = await one_request(port, ctx, json_request(
        method, port, "/plugins/v1/hello/v1", {"spec": HELLO_SPEC}))
    if status != 201:
        raise RuntimeError(f"{method} /plugins/v1/hello/v1 answered {status}: {body[:300]!r}")
    return json.loads(body)["job_id"]


async def check_poll(port: int, ctx: ssl.SSLContext, target: str) -> Dict:
    status, body = await one_request(port, ctx, _load.get_request(port, target))
    answer = json.loads(body)
    if status != 200 or answer.get("job_state") != "RUNNING":
        raise RuntimeError(f"GET {target} answered {status}: {body[:300]!r}")
    return answer


async def window(server: _servers.ServerProcess, ctx: ssl.SSLContext, target: str,
                 args: argparse.Namespace) -> Result:
    load = _load.keep_alive_load(server.port, ctx, _load.get_request(server.port, target),
                                 args.connections)
    return await _load.measure(load, server.cpu_seconds,
                               lambda: _servers.busy_seconds(args.cores), args.warmup,
                               args.seconds)


HEADER = (f"{'round':<6} {'window':<8} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'srv ms/req':>10} {'srv core':>8} {'cli core':>8} {'other':>6} {'errors':>6}")


def row(round_no: int, name: str, r: Result) -> str:
    return (f"{round_no:<6} {name:<8} {r.rps:>9.0f} {r.p50:>7.2f} {r.p99:>7.2f} "
            f"{r.server_cpu_ms_per_request:>10.3f} {r.server_core_share:>8.0%} "
            f"{r.client_core_share:>8.0%} {r.other_core_share:>6.0%} {r.errors:>6}")


async def run_profile(args: argparse.Namespace, ours: _servers.ServerProcess,
                      keys: _servers.KeyStore, profile_path: Path) -> None:
    ctx = _load.client_context(keys.ca, keys.crt("bench"), keys.key("bench"))
    poll = f"/plugins/v1/hello/v1/{await create_hello(ours.port, ctx, 'POST')}"
    result = await window(ours, ctx, poll if args.profile == "poll" else HEART_BEAT, args)
    print(HEADER)
    print(row(1, args.profile, result) + "  UNDER cProfile")
    ours.stop()
    import pstats
    stats = pstats.Stats(str(profile_path))
    print("cProfile inflates call-heavy code: compare shares, not times.")
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats("sqlflow_playground|tornado/web.py", 30)


async def run_all(args: argparse.Namespace, ours: _servers.ServerProcess,
                  fast: _servers.ServerProcess, keys: _servers.KeyStore) -> None:
    ctx = _load.client_context(keys.ca, keys.crt("bench"), keys.key("bench"))
    ours_id = await create_hello(ours.port, ctx, "POST")
    fast_id = await create_hello(fast.port, ctx, "PUT")
    poll = f"/plugins/v1/hello/v1/{ours_id}"
    fast_poll = f"/plugins/v1/hello/v1/{fast_id}"
    print("ours answers:   ", json.dumps(await check_poll(ours.port, ctx, poll)))
    print("fastapi answers:", json.dumps(await check_poll(fast.port, ctx, fast_poll)))
    print(HEADER, flush=True)
    rounds: List[Dict[str, Result]] = []
    for n in range(1, args.rounds + 1):
        results = {"beat": await window(ours, ctx, HEART_BEAT, args),
                   "poll": await window(ours, ctx, poll, args),
                   "fastapi": await window(fast, ctx, fast_poll, args)}
        for name, r in results.items():
            print(row(n, name, r), flush=True)
            if r.errors:
                print(f"    {r.errors} error(s); first: {r.first_error}", flush=True)
        rounds.append(results)
    await check_poll(ours.port, ctx, poll)  # still RUNNING, still answered
    status, body = await one_request(ours.port, ctx, _load.get_request(ours.port, poll)
                                     .replace(b"GET ", b"DELETE ", 1))
    print(f"DELETE ours -> {status} {json.loads(body)['job_state']}")

    print("\n== summary " + "=" * 70)
    verdicts = []
    for n, results in enumerate(rounds, 1):
        beat, poll_r, fast_r = results["beat"], results["poll"], results["fastapi"]
        per_beat = poll_r.server_cpu_ms_per_request / beat.server_cpu_ms_per_request
        vs_fast_cpu = poll_r.server_cpu_ms_per_request / fast_r.server_cpu_ms_per_request
        noisy = any(r.other_core_share > NOISY_OTHER_SHARE for r in results.values())
        ok = per_beat <= TARGET_POLL_PER_BEAT
        verdicts.append(ok)
        print(f"round {n}: poll/beat CPU per request {per_beat:.3f} "
              f"(target <= {TARGET_POLL_PER_BEAT}) {'PASS' if ok else 'MISS'}"
              f"{' (noisy)' if noisy else ''}")
        print(f"         poll/beat req/s {poll_r.rps / beat.rps:.3f}; ours/fastapi poll: "
              f"req/s {poll_r.rps / fast_r.rps:.3f}, CPU per poll {vs_fast_cpu:.3f} "
              f"({poll_r.server_cpu_ms_per_request:.3f} vs "
              f"{fast_r.server_cpu_ms_per_request:.3f} ms)")
    print(f"plugin door: poll <= {TARGET_POLL_PER_BEAT} x heart beat in "
          f"{sum(verdicts)}/{len(verdicts)} round(s): {'PASS' if all(verdicts) else 'MISS'}")
    for name, server in (("ours", ours), ("fastapi", fast)):
        tail = server.log_tail(3)
        if tail:
            print(f"server {name!r} logged (last lines):\n    " + tail.replace("\n", "\n    "))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="measured window (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up per window (default 2)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of the three windows")
    p.add_argument("--quick", action="store_true", help="--seconds 2 --warmup 0.5 --rounds 1")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--no_pin", action="store_true")
    p.add_argument("--profile", nargs="?", const="poll", choices=["poll", "beat"],
                   help="only poll ours (or heart-beat it) under cProfile (IOLoop and "
                        "executor threads) and print its top costs")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.rounds = 2.0, 0.5, 1
    return args


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve(argv[1:])
        return 0
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server_core, pin_note = pin_self(args)
    args.cores = [0, 1] if server_core is not None else _servers.usable_cores()
    print(f"plugin_door bench: {args.connections} keep-alive connections, {args.seconds:g}s "
          f"windows after {args.warmup:g}s warm-up, {args.rounds} round(s); {pin_note}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="sqlflow-bench-") as tmp:
        keys = _servers.KeyStore(Path(tmp) / "key_store")
        profile = Path(tmp) / "ours.prof" if args.profile else None
        # --grpc_port 0: no gRPC door, so no clash over its fixed port with other runs
        ours = _servers.ServerProcess("ours", keys, Path(tmp), server_core, profile_to=profile,
                                      extra_args=["--grpc_port", "0"])
        fast = ScriptServer(Path(__file__).resolve(), "fastapi", keys, Path(tmp), server_core)
        try:
            ours.start()
            if profile is not None:
                run_loop(run_profile(args, ours, keys, profile))
                return 0
            fast.start()
            run_loop(run_all(args, ours, fast, keys))
        finally:
            ours.stop()
            fast.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
