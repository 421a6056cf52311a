"""Dashboard benchmark (issue 14): the admin page's data route with 1,000 users and 10,000
jobs in the store, beside the heart-beat route.   Run:  .venv/bin/python bench/dashboard.py

The real gateway (``_server_entry.py ours``: sqlite store, mutual TLS, certificates from
scripts/gen_cert.sh) is pinned to core 0 and started on a store filled beforehand with
``--users`` users (ready, seen in the last half hour, so no reaper touches them) and
``--jobs`` finished jobs (created over the last two hours, spread over the users).

This process (pinned to core 1) then makes, one at a time over one keep-alive connection
each (so the figures are the server's latency, not queueing):
  admin  GET /ui/data/admin as the frontend certificate ``front``, cycling through pages
         of users and of jobs (so offsets vary: page 1..N of each), the answer the admin
         page reads every time it draws: counts, the last hour per minute, 50 users, 50 jobs.
  beat   GET /api/heart_beat?user_id=bench as ``bench``.
Printed: p50/p99/max latency, server CPU per request, answer size; then one PASS/MISS line
for the target: admin p99 < 100 ms. The exit code is 0 unless something crashed.
"""
import argparse
import asyncio
import json
import os
import random
import secrets
import sys
import tempfile
import time
from pathlib import Path

import _load
import _servers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlflow_playground.store import Store, jobs, users  # noqa: E402

TARGET_P99_MS = 100.0
SERVER_CORE, CLIENT_CORE = 0, 1
STATUSES = ("SUCCEEDED", "SUCCEEDED", "SUCCEEDED", "FAILED", "CANCELLED")


def fill_store(state_dir: Path, n_users: int, n_jobs: int) -> None:
    state_dir.mkdir(parents=True, mode=0o700)
    store = Store("sqlite:///" + str(state_dir / "store.db"))
    now = time.time()
    rng = random.Random(14)
    user_rows = [dict(user_id=f"user{i:04d}", provisioner="sqlite", status="ready",
                      data_source=f"sqlite:///{state_dir}/databases/user{i:04d}.db"
                                  f"?secret={secrets.token_urlsafe(24)}",
                      resource=json.dumps({"path": f"{state_dir}/databases/user{i:04d}.db"}),
                      created_at=now - 3600 + i, last_seen_at=now - rng.uniform(0, 1800),
                      status_changed_at=now - 3600) for i in range(n_users)]
    job_rows = []
    for i in range(n_jobs):
        created = now - rng.uniform(0, 7200)
        job_rows.append(dict(
            token=secrets.token_urlsafe(24), user_id=f"user{i % n_users:04d}",
            task_type="sql", version="v1", spec=json.dumps({"sql": "SELECT 1 " + "x" * 200}),
            meta="{}", status=STATUSES[i % len(STATUSES)],
            message="" if i % 5 < 3 else "no such table: t" + str(i),
            outputs=None, created_at=created, started_at=created + 0.01,
            finished_at=created + rng.uniform(0.05, 30), last_fetched_at=created + 30,
            fetch_timeout_s=600.0, replica="bench-replica", output_size=0))
    with store.engine.begin() as conn:
        conn.execute(users.insert(), user_rows)
        for i in range(0, len(job_rows), 2000):
            conn.execute(jobs.insert(), job_rows[i:i + 2000])
    store.close()


async def timed(port: int, ctx, targets, warmup: int, server: _servers.ServerProcess):
    conn = await _load.connect(port, ctx, protocol=_load.BodyConnection)
    try:
        sizes, latencies = [], []
        for target in targets[:warmup]:
            status, _ = await conn.request(_load.get_request(port, target))
            assert status == 200, (target, status)
        cpu0 = server.cpu_seconds()
        for target in targets[warmup:]:
            start = time.perf_counter()
            status, body = await conn.request(_load.get_request(port, target))
            latencies.append((time.perf_counter() - start) * 1000)
            if status != 200:
                raise RuntimeError(f"GET {target}: HTTP {status}: {body[:300]!r}")
            sizes.append(len(body))
        cpu_ms = (server.cpu_seconds() - cpu0) * 1000 / len(latencies)
        return latencies, sizes, cpu_ms, body
    finally:
        conn.close()


def pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100.0 * len(ordered)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=10000)
    p.add_argument("--requests", type=int, default=500, help="measured requests per route")
    p.add_argument("--warmup", type=int, default=30)
    args = p.parse_args()
    cores = _servers.usable_cores()
    if CLIENT_CORE in cores and len(cores) > 1:
        os.sched_setaffinity(0, {CLIENT_CORE})
    with tempfile.TemporaryDirectory(prefix="bench_dashboard_") as tmp:
        tmp = Path(tmp)
        keys = _servers.KeyStore(tmp / "key_store")
        t0 = time.perf_counter()
        fill_store(tmp / "run" / "ours" / "state", args.users, args.jobs)
        print(f"store: {args.users} users, {args.jobs} jobs (filled in "
              f"{time.perf_counter() - t0:.1f} s); server pinned to core {SERVER_CORE}, "
              f"client to core {CLIENT_CORE}; {args.requests} requests per route, one at a time")
        server = _servers.ServerProcess("ours", keys, tmp / "run",
                                        SERVER_CORE if len(cores) > 1 else None)
        port = server.start()
        try:
            front = _load.client_context(keys.ca, keys.crt("front"), keys.key("front"))
            bench = _load.client_context(keys.ca, keys.crt("bench"), keys.key("bench"))
            n = args.warmup + args.requests
            user_pages = -(-args.users // 50)
            job_pages = -(-args.jobs // 50)
            admin_targets = [f"/ui/data/admin?users_page={i % user_pages + 1}"
                             f"&jobs_page={(i * 7) % job_pages + 1}" for i in range(n)]
            beat_targets = ["/api/heart_beat?user_id=bench"] * n
            loop = asyncio.new_event_loop()
            try:
                admin = loop.run_until_complete(timed(port, front, admin_targets, args.warmup,
                                                      server))
                beat = loop.run_until_complete(timed(port, bench, beat_targets, args.warmup,
                                                     server))
            finally:
                loop.close()
        finally:
            server.stop()
    last = json.loads(admin[3])
    assert last["users"]["total"] == args.users and last["jobs"]["total"] == args.jobs, last
    print(f"{'route':<44} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'srv ms/req':>11} "
          f"{'bytes':>8}")
    for name, (lat, sizes, cpu_ms, _) in (("GET /ui/data/admin (50 users + 50 jobs)", admin),
                                          ("GET /api/heart_beat", beat)):
        print(f"{name:<44} {pct(lat, 50):8.2f} {pct(lat, 99):8.2f} {max(lat):8.2f} "
              f"{cpu_ms:11.2f} {max(sizes):8d}")
    p99 = pct(admin[0], 99)
    verdict = "PASS" if p99 < TARGET_P99_MS else "MISS"
    print(f"{verdict}: admin data p99 {p99:.1f} ms with {args.users} users and {args.jobs} jobs "
          f"(target < {TARGET_P99_MS:g} ms; heart beat p99 {pct(beat[0], 99):.2f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
