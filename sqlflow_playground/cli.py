"""Command line: ``sqlflow_playground [FLAGS]`` serves; ``sqlflow_playground demo`` sets up
certificates and serves on the embedded defaults, printing a curl line that works."""
import argparse
import asyncio
import datetime
import gc
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .accesslog import AccessLine, AccessRecord
from .config import Config, ConfigError, effective_settings, gc_thresholds, load_config
from .errors import PlaygroundError
from .server import Gateway

log = logging.getLogger("sqlflow_playground")

DEMO_CLIENT = "demo"
ACCESS_LOGGER = "sqlflow_playground.access"


# Defence in depth: whatever slips into a message, a URL's password and a data source's
# secret are masked on the way out (the code never logs them on purpose).
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s\"']*:)[^@\s\"']+@")
_SECRET_PARAM = re.compile(r"((?:secret|password)=)[^&\s\"']+")


def redact(text: str) -> str:
    # The substring tests are what each pattern needs to match at all: most lines (an
    # access line per request) have neither and skip both regular expressions.
    if "://" in text:
        text = _URL_PASSWORD.sub(r"\1***@", text)
    if "secret=" in text or "password=" in text:
        text = _SECRET_PARAM.sub(r"\1***", text)
    return text


_last_second: Tuple[int, str] = (-1, "")  # a second and its "%Y-%m-%dT%H:%M:%S."


def _iso(created: float) -> str:
    global _last_second
    second = int(created)
    cached, prefix = _last_second  # one tuple: threads see a pair, never half of one
    if cached != second:  # one strftime per second, not per line
        prefix = datetime.datetime.fromtimestamp(second, datetime.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S.")
        _last_second = (second, prefix)
    return f"{prefix}{min(999, round((created - second) * 1e6) // 1000):03d}Z"


def _access_fields(record: logging.LogRecord) -> Optional[Dict[str, Any]]:
    """The fields of an access line (its message is a JSON object), else None."""
    if record.name != ACCESS_LOGGER:
        return None
    if isinstance(record.msg, AccessLine) and not record.args:
        return dict(record.msg.fields)  # a copy: the text format pops from it
    message = record.getMessage()
    if not message.startswith("{"):
        return None
    try:
        fields = json.loads(message)
    except ValueError:
        return None
    return fields if isinstance(fields, dict) else None


# json.dumps(doc, default=str, ensure_ascii=False) builds this encoder anew per call.
_encode_json = json.JSONEncoder(default=str, ensure_ascii=False).encode


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, the
    event's own fields (an access line's, or ``extra={"fields": {...}}``), then ``msg``
    last (so a line ends with what it says)."""

    def format(self, record: logging.LogRecord) -> str:
        if type(record) is AccessRecord and record.msg.fields and not record.exc_info:
            # An access line (one per request): the same text as below, with only its
            # fields encoded (the head's values are known to need no escaping).
            return redact(f'{{"ts": "{_iso(record.created)}", "level": "{record.levelname}", '
                          f'"logger": "{record.name}", ' + _encode_json(record.msg.fields)[1:])
        doc: Dict[str, Any] = {"ts": _iso(record.created), "level": record.levelname,
                               "logger": record.name}
        access = _access_fields(record)
        if access is not None:
            doc.update(access)
        doc.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        if access is None:  # a message whose values are all fields may say less here
            doc["msg"] = getattr(record, "json_msg", None) or record.getMessage()
        return redact(_encode_json(doc))


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: MESSAGE``, an access line's fields as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        access = _access_fields(record)
        if access is None:
            message = record.getMessage()
        else:
            head = [str(access.pop(k)) for k in ("method", "path", "status") if k in access]
            duration = access.pop("duration_ms", None)
            if duration is not None:
                head.append(f"{duration:g}ms")
            message = " ".join(head + [f"{k}={v}" for k, v in access.items()
                                       if v is not None])
        line = f"{_iso(record.created)} {record.levelname} {record.name}: {message}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


class TurnBatchingStreamHandler(logging.StreamHandler):
    """A StreamHandler that writes the INFO and DEBUG lines logged on the event loop's
    thread together, at the end of the loop's turn, rather than one write per line: under
    load a turn answers several requests, and their access lines cost one write. Lines at
    WARNING and above, lines from other threads, and any line before ``attach()`` is called
    are written at once, with whatever is pending ahead of them, so order is kept. A kill -9
    can lose the lines of the turn it interrupts, nothing older; ``logging.shutdown()``
    (at exit) writes what is pending."""

    def __init__(self, stream: Any = None):
        super().__init__(stream)
        self._pending: List[str] = []
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_thread: Optional[int] = None
        self._flush_scheduled = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Defer the lines logged on ``loop``'s thread (call it on that thread)."""
        self._loop, self._loop_thread = loop, threading.get_ident()

    def detach(self) -> None:
        self.flush()
        self._loop = self._loop_thread = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._pending.append(self.format(record) + self.terminator)
        except Exception:  # pylint: disable=broad-except
            self.handleError(record)
            return
        if record.levelno < logging.WARNING and self._loop is not None \
                and threading.get_ident() == self._loop_thread:
            if self._flush_scheduled:
                return
            try:
                self._loop.call_soon(self.flush)
                self._flush_scheduled = True
                return
            except RuntimeError:  # the loop is closed: write now
                pass
        self.flush()

    def flush(self) -> None:
        with self.lock:
            self._flush_scheduled = False
            if self._pending:
                text = "".join(self._pending)
                self._pending.clear()
                try:
                    self.stream.write(text)
                except (OSError, ValueError):  # stderr gone or closed: nothing to tell
                    return
            super().flush()


def _batching_handlers() -> List[TurnBatchingStreamHandler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, TurnBatchingStreamHandler)]


def setup_logging(level: str, log_format: str = "json") -> None:
    """Every logger, access lines included, to stderr in one format."""
    handler = TurnBatchingStreamHandler()
    handler.setFormatter(TextFormatter() if log_format == "text" else JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    access = logging.getLogger(ACCESS_LOGGER)
    for old in list(access.handlers):
        access.removeHandler(old)
    access.propagate = True


def log_settings(config: Config) -> None:
    """The effective configuration, once at start, secrets masked."""
    settings = effective_settings(config)
    log.info("effective configuration: %s",
             " ".join(f"{k}={v!r}" for k, v in settings.items()),
             extra={"fields": {"event": "configuration", "config": settings},
                    "json_msg": "effective configuration"})


def loop_factory(choice: str) -> Optional[Callable[[], asyncio.AbstractEventLoop]]:
    """The event loop ``--event_loop`` asks for: uvloop's factory, or None (asyncio's).

    ``auto`` takes uvloop when it is installed (``pip install uvloop``, or the ``bench``
    extra); ``uvloop`` without it installed is a configuration error."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("event_loop uvloop: uvloop is not installed "
                              "(pip install uvloop)") from None
        return None
    return uvloop.new_event_loop


def run(main: Any, event_loop: str = "auto") -> Any:
    """``asyncio.run(main)`` on the event loop ``--event_loop`` chose."""
    factory = loop_factory(event_loop)
    if factory is None:
        return asyncio.run(main)
    if not hasattr(asyncio, "Runner"):  # Python < 3.11
        loop = factory()
        try:
            asyncio.set_event_loop(loop)
            return loop.run_until_complete(main)
        finally:
            asyncio.set_event_loop(None)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


async def serve(config: Config, on_started: Optional[Callable[[Gateway], None]] = None) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP re-reads certificates and the CRL."""
    os.umask(0o077)  # whatever this process or its jobs write is for this user only
    gc.set_threshold(*gc_thresholds(config.gc_thresholds))
    gateway = Gateway(config)
    await gateway.start()
    loop_class = type(asyncio.get_running_loop())
    log.info("event loop: %s.%s; garbage collector thresholds %s", loop_class.__module__,
             loop_class.__qualname__, ",".join(map(str, gc.get_threshold())))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.reload_tls)
    for handler in _batching_handlers():
        handler.attach(loop)  # a turn's access lines in one write
    if on_started:
        on_started(gateway)
    try:
        await stopping.wait()
        log.info("stopping")
        await gateway.stop()
        log.info("stopped")
    finally:
        for handler in _batching_handlers():
            handler.detach()


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


def _format_given(config: Config, argv: Sequence[str]) -> bool:
    """Whether --log_format was chosen (flag, environment, or a --config value other than
    the default) rather than left to its default."""
    if config.log_format != Config.__dataclass_fields__["log_format"].default:
        return True
    return any(a == "--log_format" or a.startswith("--log_format=") for a in argv) \
        or "SQLFLOW_PLAYGROUND_LOG_FORMAT" in os.environ


def demo(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="sqlflow_playground demo", add_help=False)
    parser.add_argument("--key_store", default="key_store")
    known, rest = parser.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        print("usage: sqlflow_playground demo [--key_store DIR] [server flags]\n"
              "Creates DIR (default ./key_store) with a CA, a server and a 'demo' client\n"
              "certificate if missing, then serves with the embedded defaults on\n"
              "127.0.0.1 (--host=0.0.0.0 for every interface), `process` jobs on, and\n"
              "readable log lines (--log_format=json for JSON). Server flags: see\n"
              "sqlflow_playground --help.")
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
        # A demo is for this machine: every interface only when asked (--host).
        host=config.host or "127.0.0.1",
    )
    if not _format_given(config, rest):  # a person watches a demo: readable lines
        config = config.replace(log_format="text")
    setup_logging(config.log_level, config.log_format)
    log_settings(config)

    def announce(gateway: Gateway) -> None:
        print("\nsqlflow-playground demo is running. Try:\n\n  "
              + demo_curl(key_store, gateway.port)
              + "\n\nStop with Ctrl+C. Issue more client certificates with:\n  KEY_STORE="
              + shlex.quote(str(key_store)) + " " + shlex.quote(find_gen_cert()) + " NAME\n",
              flush=True)

    run(serve(config, on_started=announce), config.event_loop)


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
        setup_logging(config.log_level, config.log_format)
        log_settings(config)
        run(serve(config), config.event_loop)
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
