"""Child-process entry of the benchmark: runs ONE server and prints ``READY <port>``.

    python bench/_server_entry.py {ours,bare,original,slow,jobs} --ca_crt C --server_crt S --server_key K
                                  --state_dir DIR [--slow_s 5] [--grpc_port N]

ours  the real gateway: ``Config(...)`` served by ``sqlflow_playground.cli.serve``.
jobs  the real gateway with the ``process`` task type enabled, quotas of 2000 jobs (per
      user and in all) and a fetch timeout of a day (bench/fetch.py).
bare  the floor: a Tornado app with one constant-JSON handler, same TLS context and
      HTTPServer settings as the gateway.
original  the original playground server's shape: the same constant-JSON handler on a
      plain Tornado HTTPServer, with the TLS context the original server built
      (``ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)``, ``load_cert_chain``,
      ``load_verify_locations``, ``verify_mode = CERT_REQUIRED``, nothing else).
slow  the real gateway, but its sqlite provisioner sleeps ``--slow_s`` in the blocking
      ``_create`` (which runs in the gateway's executor, as in production).

``--grpc_port`` sets the gateway's gRPC door port (0: off); without it, the Config default
(bench/grpc_fetch.py passes it; the other benchmarks leave it unset).
``--set NAME=VALUE`` (repeatable) sets any other Config field of ours, jobs and slow, after
their own settings (bench/connections.py: ``max_connections``); without it, nothing changes.
``--lag_file PATH`` (jobs only): the server also times its own IOLoop, as bench/sql_output.py's
server does (``probe_lag``: how late a callback due every 10 ms ran, "WALL_TIME LAG_MS" lines),
and logs its garbage collections to PATH.gc (``log_collections``).

All of them listen on an ephemeral port of 127.0.0.1 and log at WARNING (Tornado's
access log is discarded alike in all of them), except ``ours``' own access log, at INFO and stop on SIGTERM/SIGINT. With BENCH_PROFILE=PATH
in the environment, the IOLoop thread is run under cProfile and its stats dumped to PATH.
SIGUSR1 writes every thread's stack to stderr (the benchmark sends it when a server hangs).
"""
import argparse
import asyncio
import concurrent.futures.thread
import cProfile
import faulthandler
import gc
import json
import logging
import os
import pstats
import signal
import ssl
import sys
import time
from typing import Any, List

import tornado.netutil
import tornado.web
from tornado.httpserver import HTTPServer

from sqlflow_playground import cli
from sqlflow_playground.config import Config
from sqlflow_playground.provisioners.sqlite import SqliteProvisioner
from sqlflow_playground.server import Gateway
from sqlflow_playground.tls import make_server_context

HOST = "127.0.0.1"
LOG_LEVEL = "warning"
EXECUTOR_THREADS = 16  # >= 10, so 10 slow provisionings are all in flight at once
# Same shape and size as the gateway's heart_beat answer for user "bench".
BARE_BODY = json.dumps({"user_id": "bench", "status": "ok", "idle_timeout_s": 3600.0})


def announce(port: int) -> None:
    print(f"READY {port}", flush=True)


async def until_signalled() -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()


# -- ours ------------------------------------------------------------------------

def gateway_config(args: argparse.Namespace) -> Config:
    config = Config(port=0, host=HOST, ca_crt=args.ca_crt, server_crt=args.server_crt,
                    server_key=args.server_key, state_dir=args.state_dir,
                    executor_threads=EXECUTOR_THREADS, log_level=LOG_LEVEL)
    if args.grpc_port is not None:
        config = config.replace(grpc_port=args.grpc_port)
    return config


def config_overrides(config: Config, settings: List[str]) -> Config:
    """``config`` with the ``--set NAME=VALUE`` settings applied, each converted to its
    field's type as a flag would be."""
    import dataclasses
    from sqlflow_playground.config import _convert
    fields = {f.name: f for f in dataclasses.fields(Config)}
    changes = {}
    for setting in settings:
        name, _, raw = setting.partition("=")
        if name not in fields:
            raise SystemExit(f"--set {setting}: Config has no field {name!r}")
        changes[name] = _convert(fields[name], raw, "--set")
    return config.replace(**changes) if changes else config


async def run_ours(args: argparse.Namespace) -> None:
    # As deployed: the access log at INFO (its JSON lines go to this server's log file),
    # the rest at WARNING like the other servers.
    logging.getLogger(cli.ACCESS_LOGGER).setLevel(logging.INFO)
    await cli.serve(config_overrides(gateway_config(args), args.set),
                    on_started=lambda gateway: announce(gateway.port))


# -- jobs ------------------------------------------------------------------------

JOBS_QUOTA = 2000
JOBS_FETCH_TIMEOUT_S = 86400.0


async def run_jobs(args: argparse.Namespace) -> None:
    config = gateway_config(args).replace(
        enable_process_jobs=True, max_jobs_per_user=JOBS_QUOTA, max_jobs=JOBS_QUOTA,
        fetch_timeout_s=JOBS_FETCH_TIMEOUT_S)
    config = config_overrides(config, args.set)

    def started(gateway: Gateway) -> None:
        if args.lag_file:
            from sql_output import probe_lag
            probe_lag(asyncio.get_running_loop(), args.lag_file)
            log_collections(args.lag_file + ".gc")
        announce(gateway.port)

    await cli.serve(config, on_started=started)


def log_collections(path: str) -> None:
    """Every garbage collection of the server's interpreter as a "WALL_TIME GENERATION
    PAUSE_MS COLLECTED" line in ``path`` (flushed once a second): a full
    collection stops the IOLoop for as long as it takes."""
    out = open(path, "w", buffering=1 << 16)
    state = {"start": 0.0, "flushed": time.monotonic()}

    def callback(phase: str, info: dict) -> None:
        now = time.perf_counter()
        if phase == "start":
            state["start"] = now
            return
        out.write(f"{time.time():.4f} {info['generation']} "
                  f"{1000 * (now - state['start']):.3f} {info['collected']}\n")
        if time.monotonic() - state["flushed"] > 1:
            out.flush()
            state["flushed"] = time.monotonic()

    gc.callbacks.append(callback)


# -- slow ------------------------------------------------------------------------

class SlowSqliteProvisioner(SqliteProvisioner):
    """Provisioning that blocks its executor thread for ``delay_s`` first."""

    delay_s = 5.0

    def _create(self, user_id: str) -> str:
        time.sleep(self.delay_s)
        return super()._create(user_id)


async def run_slow(args: argparse.Namespace) -> None:
    config = config_overrides(gateway_config(args), args.set)
    SlowSqliteProvisioner.delay_s = args.slow_s
    provisioner = SlowSqliteProvisioner(None, config.state_dir)
    gateway = Gateway(config, provisioner=provisioner)
    # make_provisioner() hands the gateway's own executor to the provisioner; do the same.
    provisioner.runner = gateway.runner
    await gateway.start()
    announce(gateway.port)
    try:
        await until_signalled()
    finally:
        await gateway.stop()


# -- bare ------------------------------------------------------------------------

class BareHeartBeat(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(BARE_BODY)


async def run_bare(args: argparse.Namespace) -> None:
    app = tornado.web.Application([(r"/api/heart_beat", BareHeartBeat)])
    context = make_server_context(args.ca_crt, args.server_crt, args.server_key)
    http = HTTPServer(app, ssl_options=context, max_buffer_size=2 << 20)  # as Gateway.start
    sockets = tornado.netutil.bind_sockets(0, HOST)
    http.add_sockets(sockets)
    announce(sockets[0].getsockname()[1])
    try:
        await until_signalled()
    finally:
        http.stop()
        await http.close_all_connections()


def original_context(args: argparse.Namespace) -> ssl.SSLContext:
    """The original server's context, exactly: nothing but these four steps."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.server_crt, args.server_key)
    context.load_verify_locations(args.ca_crt)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


async def run_original(args: argparse.Namespace) -> None:
    app = tornado.web.Application([(r"/api/heart_beat", BareHeartBeat)])
    http = HTTPServer(app, ssl_options=original_context(args))
    sockets = tornado.netutil.bind_sockets(0, HOST)
    http.add_sockets(sockets)
    announce(sockets[0].getsockname()[1])
    try:
        await until_signalled()
    finally:
        http.stop()
        await http.close_all_connections()


RUNNERS = {"ours": run_ours, "bare": run_bare, "original": run_original, "slow": run_slow, "jobs": run_jobs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(RUNNERS))
    for flag in ("--ca_crt", "--server_crt", "--server_key", "--state_dir"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--slow_s", type=float, default=5.0)
    parser.add_argument("--grpc_port", type=int, default=None,
                        help="the gateway's gRPC door port, 0: off (default: Config's)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="any other Config field of ours, jobs and slow (repeatable)")
    parser.add_argument("--lag_file", default=None,
                        help="jobs: write the IOLoop's lateness every 10 ms there")
    args = parser.parse_args()
    cli.setup_logging(LOG_LEVEL)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # stacks to the log, for hangs
    os.makedirs(args.state_dir, exist_ok=True)
    run = RUNNERS[args.kind](args)
    profile_path = os.environ.get("BENCH_PROFILE")
    # ours, jobs and slow run on the gateway's own choice (--event_loop, default auto:
    # uvloop when installed); bare and original on asyncio's loop, as Tornado defaults.
    event_loop = Config.event_loop if args.kind in ("ours", "jobs", "slow") else "asyncio"
    if not profile_path:
        cli.run(run, event_loop)
        return
    thread_profiles = profile_executor_threads()
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        cli.run(run, event_loop)
    finally:
        profiler.disable()
        stats = pstats.Stats(profiler)
        for profile in thread_profiles:
            stats.add(profile)
        stats.dump_stats(profile_path)


def profile_executor_threads() -> List[cProfile.Profile]:
    """Profile every executor thread started from now on too (cProfile sees one thread)."""
    profiles: List[cProfile.Profile] = []
    original = concurrent.futures.thread._worker

    def worker(*args: Any, **kwargs: Any) -> None:
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.enable()
        try:
            original(*args, **kwargs)
        finally:
            profile.disable()

    concurrent.futures.thread._worker = worker
    return profiles


if __name__ == "__main__":
    sys.exit(main())
