"""TLS session resumption (``--tls_session_tickets``), the identity of a connection, and
the gateway on uvloop (``--event_loop``): cheaper connections must name the same caller
and refuse the same certificates."""
import asyncio
import json
import socket
import ssl
import threading

import pytest

from conftest import RunningServer, client_context, gen_cert
from sqlflow_playground import cli
from sqlflow_playground.config import Config, ConfigError, load_config

HEART_BEAT = (b"GET /api/heart_beat HTTP/1.1\r\nHost: localhost\r\n"
              b"Connection: close\r\n\r\n")


def beat(port, ctx, session=None):
    """One heart beat on a new connection (resuming ``session`` if given):
    (user_id, whether the session was resumed, the session to resume next time)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(HEART_BEAT)
            data = b""
            while True:  # reading to the end also takes in the server's session tickets
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            return json.loads(body)["user_id"], tls.session_reused, tls.session


def refused(port, ctx, session=None) -> bool:
    try:
        beat(port, ctx, session)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    return False


def test_a_resumed_session_carries_the_certificate_identity(server, certs):
    alice = client_context(certs.dir, "alice")
    user, reused, session = beat(server.port, alice)
    assert (user, reused) == ("alice", False)
    assert session is not None and session.has_ticket
    user, reused, _ = beat(server.port, alice, session)
    assert (user, reused) == ("alice", True)


def test_each_connection_has_its_own_identity(server, certs):
    """The identity is cached on the connection: another connection, even resuming in
    between, never sees the one before."""
    alice, bob = client_context(certs.dir, "alice"), client_context(certs.dir, "bob")
    _, _, alice_session = beat(server.port, alice)
    _, _, bob_session = beat(server.port, bob)
    assert beat(server.port, bob, bob_session)[:2] == ("bob", True)
    assert beat(server.port, alice, alice_session)[:2] == ("alice", True)
    assert beat(server.port, bob)[:2] == ("bob", False)


def test_a_session_is_not_resumed_by_another_certificate(server, certs):
    """OpenSSL's rule, relied on: a ticket resumes the session it was issued for, whose
    client certificate is the one of its full handshake, whoever presents it."""
    alice, bob = client_context(certs.dir, "alice"), client_context(certs.dir, "bob")
    _, _, alice_session = beat(server.port, alice)
    # A session belongs to the context that made it; another context cannot offer it.
    with pytest.raises((ValueError, ssl.SSLError)):
        beat(server.port, bob, alice_session)


def test_after_a_reload_a_revoked_certificate_cannot_resume(make_server, tmp_path):
    ks = tmp_path / "ks"
    for name in ("server", "erin"):
        gen_cert(ks, name)
    server = make_server(ca_crt=str(ks / "ca" / "ca.crt"), crl=str(ks / "ca" / "crl.pem"),
                         server_crt=str(ks / "server" / "server.crt"),
                         server_key=str(ks / "server" / "server.key"))
    erin = client_context(ks, "erin")
    _, _, session = beat(server.port, erin)
    user, reused, session = beat(server.port, erin, session)
    assert (user, reused) == ("erin", True)  # the control: resumption works before
    gen_cert(ks, "revoke", "erin")
    server.loop.call_soon_threadsafe(server.gateway.reload_tls)  # SIGHUP
    server.call(asyncio.sleep(0))
    # The new context does not know the old tickets: a full handshake, and the CRL.
    assert refused(server.port, erin, session)
    assert refused(server.port, client_context(ks, "erin"))


def test_no_tickets_no_resumption(make_server, certs):
    server = make_server(tls_session_tickets=0)
    alice = client_context(certs.dir, "alice")
    _, _, session = beat(server.port, alice)
    assert beat(server.port, alice, session)[:2] == ("alice", False)


def test_session_tickets_flag():
    assert Config().tls_session_tickets == 1
    assert load_config(["--tls_session_tickets", "0"]).tls_session_tickets == 0


# -- --event_loop ----------------------------------------------------------------------

def test_event_loop_flag():
    assert Config().event_loop == "auto"
    assert load_config(["--event_loop", "asyncio"]).event_loop == "asyncio"
    with pytest.raises(SystemExit):  # argparse refuses it, like any bad choice
        load_config(["--event_loop", "trio"])
    with pytest.raises(ConfigError):
        load_config([], environ={"SQLFLOW_PLAYGROUND_EVENT_LOOP": "trio"})


def test_asyncio_is_asyncio():
    assert cli.loop_factory("asyncio") is None

    async def loop_type():
        return type(asyncio.get_running_loop())
    assert cli.run(loop_type(), "asyncio").__module__.startswith("asyncio")


def test_uvloop_asked_for_but_missing_is_a_config_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "uvloop", None)  # import fails
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        cli.loop_factory("uvloop")
    assert cli.loop_factory("auto") is None  # auto falls back to asyncio


def test_auto_and_uvloop_run_on_uvloop_when_installed():
    import uvloop  # in the test extra
    assert cli.loop_factory("auto") is uvloop.new_event_loop

    async def loop_type():
        return type(asyncio.get_running_loop())
    assert cli.run(loop_type(), "uvloop") is uvloop.Loop


class UvloopServer(RunningServer):
    """RunningServer on a uvloop loop, as ``--event_loop auto`` serves with uvloop."""

    def __init__(self, config):
        import uvloop
        self.config, self._factory = config, None
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gateway = self.call(self._start())


def test_the_gateway_on_uvloop_names_callers_resumes_and_refuses(certs, tmp_path):
    server = UvloopServer(Config(
        port=0, host="127.0.0.1", ca_crt=certs.ca, crl=certs.crl,
        server_crt=str(certs.dir / "server" / "server.crt"),
        server_key=str(certs.dir / "server" / "server.key"), state_dir=str(tmp_path / "state"),
        log_level="debug", reap_interval_s=3600, heartbeat_flush_s=3600, grpc_port=0))
    try:
        alice = client_context(certs.dir, "alice")
        user, _, session = beat(server.port, alice)
        assert user == "alice"
        assert beat(server.port, alice, session)[:2] == ("alice", True)
        assert refused(server.port, client_context(certs.dir, "mallory"))  # revoked (CRL)
        assert refused(server.port, client_context(certs.dir, None))
    finally:
        server.stop()
