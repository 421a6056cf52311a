"""Fixtures that make a test read like a user's request: real certificates from
gen_cert.sh, a real Gateway on 127.0.0.1 over mutual TLS, and ``fetch_as(name)``."""
import asyncio
import datetime
import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Optional, Tuple

import pymysql
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sqlflow_playground.config import Config
from sqlflow_playground.server import Gateway

ROOT = Path(__file__).resolve().parents[1]
# The gRPC door listens on 50051 by default; servers started by tests (in-process or as
# processes, several at once) keep it off unless a test asks for it (free_port()).
os.environ["SQLFLOW_PLAYGROUND_GRPC_PORT"] = "0"
GEN_CERT = ROOT / "scripts" / "gen_cert.sh"


def gen_cert(key_store: Path, *args: str) -> None:
    subprocess.run(["bash", str(GEN_CERT), *args], env={**os.environ, "KEY_STORE": str(key_store)},
                   check=True, capture_output=True)


def issue_with_ca(key_store: Path, name: str, cn: str, *, days_valid: Tuple[int, int] = (-1, 30),
                  eku=ExtendedKeyUsageOID.CLIENT_AUTH) -> None:
    """A certificate signed by key_store's CA but shaped by the test (expired, legacy CN)."""
    ca_cert = x509.load_pem_x509_certificate((key_store / "ca" / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((key_store / "ca" / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=days_valid[0]))
            .not_valid_after(now + datetime.timedelta(days=days_valid[1]))
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    out = key_store / name
    out.mkdir()
    (out / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> SimpleNamespace:
    """A CA with server, alice, bob, a frontend, a legacy-CN, an expired, a revoked cert,
    plus a cert from a different CA."""
    ks = tmp_path_factory.mktemp("key_store")
    for args in (["server"], ["alice"], ["bob"], ["--frontend", "front"], ["mallory"]):
        gen_cert(ks, *args)
    gen_cert(ks, "revoke", "mallory")
    issue_with_ca(ks, "legacy", "sqlflow-playground-carol")
    issue_with_ca(ks, "expired", "dave", days_valid=(-30, -1))
    other = tmp_path_factory.mktemp("other_ca")
    gen_cert(other, "alice")
    return SimpleNamespace(dir=ks, other=other, ca=str(ks / "ca" / "ca.crt"),
                           crl=str(ks / "ca" / "crl.pem"))


def client_context(key_store: Path, name: Optional[str], ca: Optional[str] = None) -> ssl.SSLContext:
    """What a client such as the notebook magic builds: CA pinned, no hostname check."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                     cafile=ca or str(key_store / "ca" / "ca.crt"))
    ctx.check_hostname = False
    if name:
        ctx.load_cert_chain(str(key_store / name / f"{name}.crt"),
                            str(key_store / name / f"{name}.key"))
    return ctx


class Response(SimpleNamespace):
    status: int
    body: Any
    headers: Dict[str, str]


def request(port: int, ctx: ssl.SSLContext, method: str, path: str,
            body: Any = None, headers: Optional[Dict[str, str]] = None,
            timeout: float = 30) -> Response:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=timeout)
    try:
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw
        return Response(status=resp.status, body=parsed, headers=dict(resp.getheaders()))
    finally:
        conn.close()


class RunningServer:
    """A Gateway served from its own thread and event loop, as a separate process would be."""

    def __init__(self, config: Config, provisioner_factory=None):
        self.config = config
        self._factory = provisioner_factory
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gateway: Gateway = self.call(self._start())

    async def _start(self) -> Gateway:
        gateway = Gateway(self.config)
        if self._factory is not None:
            gateway.provisioner = self._factory(gateway.runner)
            gateway.playground.provisioner = gateway.provisioner
        await gateway.start()
        return gateway

    @property
    def port(self) -> int:
        return self.gateway.port

    def call(self, coro, timeout: float = 60) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.call(self.gateway.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def make_server(certs, tmp_path):
    """``make_server(**config)`` starts a server; every one is stopped after the test."""
    started = []

    def make(provisioner_factory=None, **overrides) -> RunningServer:
        settings = dict(port=0, host="127.0.0.1", ca_crt=certs.ca, crl=certs.crl,
                        server_crt=str(certs.dir / "server" / "server.crt"),
                        server_key=str(certs.dir / "server" / "server.key"),
                        state_dir=str(tmp_path / "state"), log_level="debug",
                        reap_interval_s=3600, heartbeat_flush_s=3600, grpc_port=0)
        settings.update(overrides)
        server = RunningServer(Config(**settings), provisioner_factory)
        started.append(server)
        return server

    yield make
    for server in started:
        if server.loop.is_running():
            server.stop()


@pytest.fixture
def server(make_server) -> RunningServer:
    return make_server()


@pytest.fixture
def fetch_as(certs, server):
    """``fetch_as("alice")("POST", "/api/create_db", {...})`` over mutual TLS as alice."""
    def as_user(name: str, port: Optional[int] = None):
        ctx = client_context(certs.dir, name)

        def fetch(method: str, path: str, body: Any = None, **kw) -> Response:
            return request(port or server.port, ctx, method, path, body, **kw)
        return fetch
    return as_user


@pytest.fixture
def notebook(tmp_path, monkeypatch):
    """An IPython shell with this project's magic loaded and no SQLFLOW_* variable of
    the test process's; the environment is restored afterwards."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config as ShellConfig
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith("SQLFLOW_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    config = ShellConfig()
    config.HistoryManager.hist_file = ":memory:"
    InteractiveShell.clear_instance()
    ip = InteractiveShell.instance(config=config)
    ip.run_line_magic("load_ext", "sqlflow_playground.magic")
    yield ip
    ip.run_line_magic("unload_ext", "sqlflow_playground.magic")
    InteractiveShell.clear_instance()
    os.environ.clear()
    os.environ.update(saved)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a server that cannot take port 0)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=15.0):
    """Poll ``predicate`` until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def fetch_until_eof(fetch, token, cursor="", wait=5, timeout=60):
    """Every response from ``cursor`` to the end, as (last body, responses, [(cursor, n)])."""
    responses, marks, deadline = [], [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        marks.append((cursor, len(responses)))
        body = fetch("GET", f"/api/jobs/{token}?since={cursor}&wait={wait}").body
        responses += body["responses"]
        cursor = body["next"]
        if body["eof"]:
            return body, responses, marks
    raise AssertionError("job did not finish")


def run_sql(fetch, sql, user_id=None):
    """Submit a `sql` job and follow it to eof: (last page, every response)."""
    body = {"task_type": "sql", "spec": {"sql": sql}}
    if user_id:
        body["user_id"] = user_id
    created = fetch("POST", "/api/jobs", body)
    assert created.status == 201, created.body
    page, responses, _ = fetch_until_eof(fetch, created.body["token"], timeout=60)
    return page, responses


# -- Kubernetes ------------------------------------------------------------------

@pytest.fixture
def sim(tmp_path):
    """An in-test Kubernetes API server (tests/k8s_sim) with ``.kubeconfig`` written.
    Request it before ``make_server`` so servers stop before the simulator does.

    With ``SQLFLOW_PLAYGROUND_TEST_KUBECONFIG`` set: that real cluster instead
    (``k8s_sim/real_cluster.py``; tests using sim-only hooks skip, saying so)."""
    from sqlflow_playground.k8s.clients import close_shared_clients
    real = os.environ.get("SQLFLOW_PLAYGROUND_TEST_KUBECONFIG")
    if real:
        from k8s_sim.real_cluster import RealCluster
        cluster = RealCluster(os.path.abspath(os.path.expanduser(real)))
        cluster.cleanup()
        try:
            yield cluster
        finally:
            close_shared_clients()
            cluster.cleanup()
            cluster.close()
        return
    from k8s_sim import running_simulator
    with running_simulator() as simulator:
        simulator.kubeconfig = str(simulator.write_kubeconfig(tmp_path / "kubeconfig"))
        yield simulator
    close_shared_clients()


# -- MariaDB ---------------------------------------------------------------------

DSN = "mysql://root@127.0.0.1:3306/"
DATA_SOURCE_RE = re.compile(
    r"^mysql://(?P<user>[^:]+):(?P<password>[^@]+)@tcp\((?P<host>[^:]+):(?P<port>\d+)\)"
    r"/(?P<db>[^?]+)\?maxAllowedPacket=0$")


def admin_connect():
    return pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                           connect_timeout=3, autocommit=True)


def missing(message: str) -> None:
    """A service or tool the test needs is absent: under CI=true the test fails (.ci/run
    installs and starts everything); elsewhere it is skipped, saying how to run it."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message + " (install or start it, or run under CI=true to make this fail)")


@pytest.fixture(scope="session")
def mariadb():
    try:
        admin_connect().close()
    except pymysql.MySQLError as e:
        missing(f"MariaDB is not reachable on 127.0.0.1:3306: {e}")
    return DSN


# -- PostgreSQL ------------------------------------------------------------------

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def postgres():
    """The admin URL of the PostgreSQL on 127.0.0.1:5432 (trust auth), like ``mariadb``."""
    import sqlalchemy as sa
    from sqlflow_playground.store import normalize_url
    engine = sa.create_engine(normalize_url(POSTGRES_URL),
                              connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as e:
        missing(f"PostgreSQL is not reachable on 127.0.0.1:5432: {e.orig}")
    finally:
        engine.dispose()
    return POSTGRES_URL


@pytest.fixture
def store_url(mariadb):
    """A fresh MariaDB database for a state store shared by replicas; dropped after."""
    name = "sfp_store_" + uuid.uuid4().hex[:10]
    with admin_connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    yield f"mysql://root@127.0.0.1:3306/{name}"
    with admin_connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


def _nice(increment: int):
    def apply() -> None:
        try:
            os.nice(increment)
        except OSError:  # lowering it needs root; then the process runs as it is
            pass
    return apply


def start_server_process(certs, state_dir, *flags, nice: int = 0):
    """A real server process over mutual TLS on 127.0.0.1; returns (process, port). Its
    output is read until it serves; the caller stops (or kills) it. ``nice``: its
    scheduling priority (all its threads), where allowed."""
    args = [sys.executable, "-m", "sqlflow_playground", "--port=0", "--host=127.0.0.1",
            f"--ca_crt={certs.ca}", f"--server_crt={certs.dir / 'server' / 'server.crt'}",
            f"--server_key={certs.dir / 'server' / 'server.key'}",
            f"--state_dir={state_dir}", *flags]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=_nice(nice) if nice else None)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "serving https on" in line:
            # Keep draining its output, so a chatty server never blocks on a full pipe.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, int(line.rsplit(":", 1)[1].split()[0])
    raise AssertionError("the server did not start:\n" + "".join(seen))


def stop_server_process(proc) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
