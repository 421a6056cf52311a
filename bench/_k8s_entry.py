"""Child-process entry of bench/k8s_poll.py: the Kubernetes simulator, or a pod-job gateway.

    python bench/_k8s_entry.py sim --kubeconfig PATH
    python bench/_k8s_entry.py gateway --kubeconfig PATH --ca_crt C --server_crt S
                               --server_key K --state_dir DIR

sim      ``tests/k8s_sim``'s ``running_simulator()`` (plain HTTP on 127.0.0.1, a kubelet that
         runs each pod's command as a local process). Writes the kubeconfig to PATH and
         prints ``READY <port>``, then answers one-line commands on stdin with one line of
         JSON on stdout:
           counts   API requests since the last reset, summed by (verb, resource):
                    [[verb, resource, n], ...]  (pod names are summed over)
           reset    clears the counts; answers "ok"
           pods     names of the pods in namespace default
           pids     every pod process ever started (each led its own process group)
           streams  how many follow=true log streams are open now
         EOF, ``quit``, SIGTERM or SIGINT stop the simulator, which kills every pod process.
gateway  the real gateway (``cli.serve``) with the ``pod`` task type on, pointed at PATH,
         namespace default, quotas of 2000 jobs (per user and in all), fetch_timeout_s a
         day, logging at WARNING; prints ``READY <port>`` and stops on SIGTERM/SIGINT.
Both bind an ephemeral port of 127.0.0.1 only.
"""
import argparse
import asyncio
import collections
import faulthandler
import json
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
LOG_LEVEL = "warning"
JOBS_QUOTA = 2000
FETCH_TIMEOUT_S = 86400.0


def announce(port: int) -> None:
    print(f"READY {port}", flush=True)


def reply(value) -> None:
    print(json.dumps(value), flush=True)


# -- sim ---------------------------------------------------------------------------------------

def run_sim(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from k8s_sim import running_simulator

    def stop(*_):
        raise SystemExit(0)  # unwinds through running_simulator(), which kills the pods

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with running_simulator() as sim:
        sim.write_kubeconfig(args.kubeconfig)
        announce(sim.port)
        for line in sys.stdin:
            command = line.strip()
            if command == "counts":
                by_kind = collections.Counter()
                for (verb, resource, _name), n in sim.counts.items():
                    by_kind[(verb, resource)] += n
                reply([[verb, resource, n] for (verb, resource), n in sorted(by_kind.items())])
            elif command == "reset":
                sim.reset_counts()
                reply("ok")
            elif command == "pods":
                reply([p["metadata"]["name"] for p in sim.list_objects("", "v1", "pods", "default")])
            elif command == "pids":
                reply(sim.spawned_pids)
            elif command == "streams":
                reply(sim.open_log_streams())
            elif command == "quit":
                break
            else:
                reply({"error": f"unknown command {command!r}"})


# -- gateway -----------------------------------------------------------------------------------

def run_gateway(args: argparse.Namespace) -> None:
    from sqlflow_playground import cli
    from sqlflow_playground.config import Config

    cli.setup_logging(LOG_LEVEL)
    os.makedirs(args.state_dir, exist_ok=True)
    config = Config(port=0, host=HOST, ca_crt=args.ca_crt, server_crt=args.server_crt,
                    server_key=args.server_key, state_dir=args.state_dir, log_level=LOG_LEVEL,
                    enable_pod_jobs=True, kubeconfig=args.kubeconfig, namespace="default",
                    max_jobs_per_user=JOBS_QUOTA, max_jobs=JOBS_QUOTA,
                    fetch_timeout_s=FETCH_TIMEOUT_S)
    asyncio.run(cli.serve(config, on_started=lambda gateway: announce(gateway.port)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("sim", "gateway"))
    parser.add_argument("--kubeconfig", required=True)
    for flag in ("--ca_crt", "--server_crt", "--server_key", "--state_dir"):
        parser.add_argument(flag)
    args = parser.parse_args()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # stacks to the log, for hangs
    if args.kind == "sim":
        run_sim(args)
    else:
        run_gateway(args)


if __name__ == "__main__":
    sys.exit(main())
