"""Configuration: one frozen dataclass, built once from flags, environment and YAML.

Precedence, highest first: command-line flag, ``SQLFLOW_PLAYGROUND_<FLAG>`` environment
variable, the YAML file named by ``--config``, the default. Flag names keep the seed's
spelling (``--port --ca_crt --server_key --server_crt``).

Secrets (``db_url``, ``mysql_dsn``) are best given as ``SQLFLOW_PLAYGROUND_DB_URL`` in the
environment or as a file (``--db_url_file=/run/secrets/db_url``, also settable from the
environment): a flag's value is visible to every local user in ``ps``.
"""
import argparse
import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import yaml

ENV_PREFIX = "SQLFLOW_PLAYGROUND_"


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class Config:
    """Every setting of the server; see ``sqlflow_playground --help``."""

    port: int = _opt(50052, "HTTPS port to listen on")
    host: str = _opt("", "interface to bind (default: all; `demo`: 127.0.0.1)")
    ca_crt: Optional[str] = _opt(None, "CA certificate that client certificates must chain to")
    server_key: Optional[str] = _opt(None, "server private key (PEM)")
    server_crt: Optional[str] = _opt(None, "server certificate (PEM)")
    crl: Optional[str] = _opt(None, "certificate revocation list (PEM); re-read on SIGHUP")
    grpc_port: int = _opt(
        50051, "port of the gRPC door, SQLFlow's own protocol (Run/Fetch) for the deployed "
        "%sqlflow client; TLS with the server certificate, client certificates optional "
        "(0: off)")
    sqlflow_server: Optional[str] = _opt(
        None, "host:port of an upstream SQLFlow server that runs the statements needing "
        "its engine (TO TRAIN, TO PREDICT, ...) as `sqlflow` jobs (default: none)")
    sqlflow_server_ca: Optional[str] = _opt(
        None, "CA certificate to reach --sqlflow_server over TLS (default: plain gRPC)")
    health_port: int = _opt(0, "plain-HTTP port for /healthz and /readyz probes (0: off)")
    metrics_port: int = _opt(
        0, "plain-HTTP port for Prometheus /metrics without client certificates (0: off)")
    insecure: bool = _opt(False, "serve plain HTTP without client certificates (development only)")
    frontend_certs: Tuple[str, ...] = _opt(
        (), "comma-separated certificate identities that may act for any user_id")
    replica: str = _opt(
        "", "this server's name among replicas sharing a store (default: the host name)")
    replica_lease_s: float = _opt(
        30.0, "a replica that has not renewed its lease in the store for this long is lost: "
        "the jobs it ran end FAILED, naming it")
    state_dir: str = _opt("sqlflow_playground_state", "directory for the store and sqlite databases")
    db_url: Optional[str] = _opt(
        None, "SQLAlchemy URL of the state store (default: sqlite file in --state_dir)")
    db_url_file: Optional[str] = _opt(
        None, "file holding --db_url (e.g. a mounted Secret), so no password is on the command line")
    mysql_dsn_file: Optional[str] = _opt(None, "file holding --mysql_dsn, likewise")
    provisioner: str = _opt("sqlite", "per-user database backend",
                            choices=("sqlite", "mysql", "kubernetes"))
    mysql_dsn: Optional[str] = _opt(
        None, "admin DSN of an existing MySQL/MariaDB server, e.g. mysql://root:pw@127.0.0.1:3306")
    mysql_public_host: Optional[str] = _opt(
        None, "HOST[:PORT] written into the data sources users get, when they reach MySQL "
        "under another name than the gateway does (default: the host of --mysql_dsn, which "
        "the jobs the gateway runs always use)")
    mysql_max_user_connections: int = _opt(
        20, "MAX_USER_CONNECTIONS of each tenant's MySQL account (0: the server's own limit)")
    mysql_tenant_host: str = _opt(
        "%", "host part of tenant MySQL accounts; narrow it to the gateway's and the "
        "notebooks' network, e.g. 10.0.% (default: '%', any host)")
    kubeconfig: Optional[str] = _opt(
        None, "kubeconfig file for the Kubernetes backends (default: in-cluster, then ~/.kube)")
    namespace: str = _opt("default", "Kubernetes namespace of the objects the server manages")
    mysql_image: str = _opt("mariadb:10.11", "image of the per-user MySQL pods")
    provision_timeout_s: float = _opt(180.0, "how long a MySQL pod may take to become ready")
    pending_grace_s: float = _opt(
        120.0, "end a create_db or a pod job whose pod stays stuck (Unschedulable, image pull) "
        "this long, with the cluster's reason")
    reconcile_grace_s: float = _opt(
        600.0, "leave managed cluster objects younger than this alone when reconciling")
    idle_timeout_s: float = _opt(3600.0, "release a user's database after this long without a heart beat")
    reap_interval_s: float = _opt(60.0, "how often the idle reaper runs")
    heartbeat_flush_s: float = _opt(1.0, "how often buffered heart beats are written to the store")
    enable_process_jobs: bool = _opt(
        False, "allow the 'process' task type (runs commands on this host as this user)")
    enable_pod_jobs: bool = _opt(
        False, "allow the 'pod' task type (needs a cluster: --kubeconfig or in-cluster)")
    fetch_timeout_s: float = _opt(
        600.0, "cancel a job not fetched for this long (a job may ask for its own)")
    job_ttl_s: float = _opt(86400.0, "purge finished jobs and their output after this long")
    max_jobs_per_user: int = _opt(8, "unfinished jobs one user may have")
    max_jobs: int = _opt(256, "unfinished jobs on the whole server")
    fetch_page_bytes: int = _opt(1 << 20, "at most this much output per Fetch")
    max_output_bytes: int = _opt(
        256 << 20, "output one job may leave on disk; past it the job ends FAILED (0: no limit)")
    max_output_bytes_per_user: int = _opt(
        1 << 30, "output all of one user's kept jobs may hold on disk (0: no limit)")
    handshake_timeout_s: float = _opt(10.0, "close a connection whose TLS handshake takes longer")
    header_timeout_s: float = _opt(
        10.0, "close a connection whose request headers take longer to arrive, once begun")
    body_timeout_s: float = _opt(60.0, "close a connection whose request body takes longer")
    idle_connection_timeout_s: float = _opt(
        120.0, "close a keep-alive connection idle (no request under way) for this long")
    max_connections: int = _opt(
        10000, "open client connections at most; beyond it new ones are closed at once")
    executor_threads: int = _opt(16, "threads for blocking work (database drivers)")
    event_loop: str = _opt(
        "auto", "the asyncio event loop: uvloop (faster per request and per connection; "
        "pip install uvloop), asyncio (the standard one), or auto (uvloop when installed)",
        choices=("auto", "asyncio", "uvloop"))
    tls_session_tickets: int = _opt(
        1, "TLS 1.3 session tickets sent per full handshake, for clients that resume "
        "sessions (a resumed handshake skips certificate signing and verifying; the "
        "identity is the certificate of the full handshake); 0: no resumption")
    gc_thresholds: str = _opt(
        "700,1000,10", "Python's garbage collector thresholds (gc.set_threshold: young, "
        "middle, old; Python's own are 700,10,10). A middle one of 1000 keeps objects of "
        "requests that live seconds (long-polls) out of the oldest generation, whose growth "
        "sets off full collections: each looks at every object, 300-500 ms with 10,000 "
        "connections open (bench/connections.py)", check=lambda value: gc_thresholds(value))
    log_level: str = _opt("info", "logging level", choices=("debug", "info", "warning", "error"))
    log_format: str = _opt(
        "json", "log lines on stderr: json (one object per line: ts, level, logger, the "
        "event's fields, msg) or text (readable: time, level, logger, message)",
        choices=("json", "text"))
    config: Optional[str] = _opt(None, "YAML file with any of these settings")

    @property
    def store_url(self) -> str:
        if self.db_url:
            return self.db_url
        return "sqlite:///" + os.path.abspath(os.path.join(self.state_dir, "store.db"))

    @property
    def tls_enabled(self) -> bool:
        return bool(self.ca_crt and self.server_key and self.server_crt)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)


class ConfigError(ValueError):
    """A setting is missing, unknown or has the wrong type."""


def gc_thresholds(text: str) -> Tuple[int, int, int]:
    """``--gc_thresholds`` as gc.set_threshold takes them: three whole numbers, the
    first above 0 (0 would turn the collector off)."""
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise ValueError("must be three whole numbers separated by commas, as 700,1000,10")
    young, middle, old = (int(p) for p in parts)
    if young < 1 or middle < 1 or old < 1:
        raise ValueError("must all be at least 1 (0 would turn collections off)")
    return young, middle, old


def _convert(f: dataclasses.Field, raw: Any, source: str) -> Any:
    """Turn a flag/env/YAML value into the field's type, refusing what does not fit."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if "Tuple" in kind:
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return tuple(s.strip() for s in items if str(s).strip())
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        value = str(raw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: invalid value for {f.name}: {raw!r}") from e
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{source}: {f.name} must be one of {', '.join(choices)}, not {value!r}")
    check = f.metadata.get("check")  # raises ValueError saying what is wrong
    if check is not None:
        try:
            check(value)
        except ValueError as e:
            raise ConfigError(f"{source}: {f.name} {e}, not {value!r}") from None
    return value


def _default_text(f: dataclasses.Field) -> str:
    """"default: X; " once: none when the help text already says what the default is."""
    if "(default" in f.metadata["help"]:
        return ""
    default = "not set" if f.default is None else repr(f.default)
    if isinstance(f.default, tuple) and not f.default:
        default = "none"
    return f"default: {default}; "


def build_parser(prog: str = "sqlflow_playground") -> argparse.ArgumentParser:
    """An argparse parser whose defaults are all None, so unset flags can be told apart."""
    from . import __version__  # at call time: the package has finished importing
    parser = argparse.ArgumentParser(
        prog=prog,
        usage=f"{prog} [FLAGS]\n       {prog} demo [--key_store DIR] [FLAGS]\n"
        f"       {prog} client COMMAND ...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="SQLFlow playground gateway: serves with FLAGS (below). Every flag can\n"
        f"also be set as {ENV_PREFIX}<FLAG> in the environment or as a key of the\n"
        "--config YAML file.",
        epilog="commands:\n"
        f"  {prog} [FLAGS]\n"
        "      serve (the three TLS flags are required, or --insecure)\n"
        f"  {prog} demo [--key_store DIR] [FLAGS]\n"
        "      make DIR (default ./key_store: a CA, a server and a 'demo' certificate)\n"
        "      if missing, then serve on 127.0.0.1 (unless --host) with the embedded\n"
        "      defaults and print a curl line that works; demo --help says more\n"
        f"  {prog} client COMMAND ...\n"
        "      the command-line client: create-db, run, submit, fetch, jobs, cancel, ...;\n"
        f"      {prog} client --help lists them",
    )
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    for f in dataclasses.fields(Config):
        help_text = f"{f.metadata['help']} ({_default_text(f)}env {ENV_PREFIX}{f.name.upper()})"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        if f.type in (bool, "bool"):
            parser.add_argument(f"--{f.name}", nargs="?", const="true", default=None,
                                metavar="BOOL", help=help_text)
        else:
            parser.add_argument(f"--{f.name}", default=None, metavar=f.name.upper(),
                                choices=f.metadata.get("choices"), help=help_text)
    return parser


def load_config(argv: Sequence[str], environ: Optional[Mapping[str, str]] = None) -> Config:
    """Build the Config from command-line ``argv``, ``environ`` and the YAML file."""
    environ = os.environ if environ is None else environ
    flags = {k: v for k, v in vars(build_parser().parse_args(list(argv))).items() if v is not None}
    fields = {f.name: f for f in dataclasses.fields(Config)}

    env = {}
    for name in fields:
        key = ENV_PREFIX + name.upper()
        if key in environ:
            env[name] = environ[key]

    yaml_values: Dict[str, Any] = {}
    config_path = flags.get("config") or env.get("config")
    if config_path:
        try:
            with open(config_path, encoding="utf-8") as fh:
                loaded = yaml.safe_load(fh) or {}
        except OSError as e:
            raise ConfigError(f"cannot read --config {config_path}: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"--config {config_path} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config {config_path} must hold a mapping of settings")
        unknown = sorted(set(loaded) - set(fields))
        if unknown:
            raise ConfigError(f"--config {config_path}: unknown settings {', '.join(unknown)}")
        yaml_values = loaded

    values: Dict[str, Any] = {}
    for source, layer in (("config file", yaml_values), ("environment", env), ("flag", flags)):
        for name, raw in layer.items():
            if raw is None:
                continue
            values[name] = _convert(fields[name], raw, source)
    for name in SECRET_SETTINGS:
        path = values.get(name + "_file")
        if path:
            if values.get(name):
                raise ConfigError(f"give {name} or {name}_file, not both")
            values[name] = read_secret_file(path, name)
    return Config(**values)


# Settings that carry passwords: each can also be read from the file named by <name>_file.
SECRET_SETTINGS = ("db_url", "mysql_dsn")

_URL_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?:(?P<userinfo>[^@/?#]*)@)?"
                     r"(?P<rest>[^?#]*)(?P<query>[?#].*)?$", re.DOTALL)


def mask_url(url: Optional[str]) -> Optional[str]:
    """``url`` with its password (and its whole query string, which may hold one) replaced
    by ``***``: ``mysql://root:***@db:3306/x``. Anything that does not parse as a URL is
    ``***`` as a whole."""
    if url is None:
        return None
    m = _URL_RE.match(url)
    if m is None:
        return "***"
    userinfo = m["userinfo"]
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        userinfo = f"{user}:***@" if colon else f"{user}@"
    return m["scheme"] + (userinfo or "") + m["rest"] + ("?***" if m["query"] else "")


def effective_settings(config: "Config") -> Dict[str, Any]:
    """Every setting as the server runs with it, for its start-up log line: secrets masked
    (the state store's URL, the MySQL admin DSN), files named, never their content."""
    values: Dict[str, Any] = {}
    for f in dataclasses.fields(Config):
        value = getattr(config, f.name)
        if f.name in SECRET_SETTINGS:
            value = mask_url(value)
        elif isinstance(value, tuple):
            value = list(value)
        values[f.name] = value
    values["db_url"] = mask_url(config.store_url)  # the one in use, default included
    return values


def read_secret_file(path: str, name: str) -> str:
    """The secret in ``path``, surrounding white space (a trailing newline) removed. Errors
    name the file, never its content."""
    try:
        with open(path, encoding="utf-8") as fh:
            secret = fh.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{name}_file {path}: cannot read it: "
                          f"{getattr(e, 'strerror', None) or 'not UTF-8 text'}") from e
    if not secret:
        raise ConfigError(f"{name}_file {path} is empty")
    return secret
