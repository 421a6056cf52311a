"""Command line: ``sqlflow_playground [FLAGS]`` serves; ``sqlflow_playground demo`` sets up
certificates and serves on the embedded defaults, printing a curl line that works."""
import argparse
import asyncio
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from .config import Config, ConfigError, load_config
from .errors import PlaygroundError
from .server import Gateway

log = logging.getLogger("sqlflow_playground")

DEMO_CLIENT = "demo"


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Access lines are JSON documents of their own: no prefix, so log shippers parse them.
    access = logging.getLogger("sqlflow_playground.access")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False


async def serve(config: Config, on_started: Optional[Callable[[Gateway], None]] = None) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP re-reads certificates and the CRL."""
    os.umask(0o077)  # whatever this process or its jobs write is for this user only
    gateway = Gateway(config)
    await gateway.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.reload_tls)
    if on_started:
        on_started(gateway)
    await stopping.wait()
    log.info("stopping")
    await gateway.stop()
    log.info("stopped")


def find_gen_cert() -> str:
    """gen_cert.sh as installed beside the interpreter, on PATH, or in a source checkout."""
    candidates = [Path(sys.executable).parent / "gen_cert.sh",
                  Path(__file__).resolve().parents[1] / "scripts" / "gen_cert.sh"]
    on_path = shutil.which("gen_cert.sh")
    if on_path:
        candidates.insert(1, Path(on_path))
    for path in candidates:
        if path.is_file():
            return str(path)
    raise ConfigError("gen_cert.sh not found; reinstall the package (pip install .)")


def ensure_demo_certs(key_store: Path) -> None:
    env = {**os.environ, "KEY_STORE": str(key_store)}
    script = find_gen_cert()
    for name in ("server", DEMO_CLIENT):
        # --keep: a second start keeps the certificates (gen_cert.sh refuses otherwise).
        subprocess.run(["bash", script, "--keep", name], env=env, check=True,
                       stdout=subprocess.DEVNULL)


def demo_curl(key_store: Path, port: int) -> str:
    client = key_store / DEMO_CLIENT
    return " ".join([
        "curl", "--cacert", shlex.quote(str(key_store / "ca" / "ca.crt")),
        "--cert", shlex.quote(str(client / f"{DEMO_CLIENT}.crt")),
        "--key", shlex.quote(str(client / f"{DEMO_CLIENT}.key")),
        "-d", shlex.quote('{"user_id": "%s"}' % DEMO_CLIENT),
        f"https://localhost:{port}/api/create_db",
    ])


def demo(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="sqlflow_playground demo", add_help=False)
    parser.add_argument("--key_store", default="key_store")
    known, rest = parser.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        print("usage: sqlflow_playground demo [--key_store DIR] [server flags]\n"
              "Creates DIR (default ./key_store) with a CA, a server and a 'demo' client\n"
              "certificate if missing, then serves with the embedded defaults.")
        return
    key_store = Path(known.key_store).resolve()
    ensure_demo_certs(key_store)
    config = load_config(rest)
    ca = key_store / "ca"
    config = config.replace(
        ca_crt=config.ca_crt or str(ca / "ca.crt"),
        server_crt=config.server_crt or str(key_store / "server" / "server.crt"),
        server_key=config.server_key or str(key_store / "server" / "server.key"),
        crl=config.crl or (str(ca / "crl.pem") if (ca / "crl.pem").exists() else None),
        enable_process_jobs=True,
    )
    setup_logging(config.log_level)

    def announce(gateway: Gateway) -> None:
        print("\nsqlflow-playground demo is running. Try:\n\n  "
              + demo_curl(key_store, gateway.port)
              + "\n\nStop with Ctrl+C. Issue more client certificates with:\n  KEY_STORE="
              + shlex.quote(str(key_store)) + " " + shlex.quote(find_gen_cert()) + " NAME\n",
              flush=True)

    asyncio.run(serve(config, on_started=announce))


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["demo"]:
            demo(argv[1:])
            return
        if argv[:1] == ["client"]:
            from . import client_cli  # the client needs none of the server's imports
            client_cli.main(argv[1:])
            return
        config = load_config(argv)
        setup_logging(config.log_level)
        asyncio.run(serve(config))
    except ConfigError as e:
        print(f"sqlflow_playground: {e}", file=sys.stderr)
        sys.exit(2)
    except PlaygroundError as e:  # a backend unreachable at start-up
        print(f"sqlflow_playground: cannot start: {e.message}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:  # port in use, certificate file missing or unreadable
        print(f"sqlflow_playground: cannot start: {e}", file=sys.stderr)
        sys.exit(1)
    except subprocess.CalledProcessError as e:
        print(f"sqlflow_playground: creating certificates failed (exit {e.returncode})",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
