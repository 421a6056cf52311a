"""The handshake is where strangers are turned away."""
import asyncio
import socket
import ssl

import pytest

from conftest import client_context, gen_cert, request


def handshake(server, ctx):
    return request(server.port, ctx, "GET", "/api/heart_beat")


def assert_refused(server, ctx):
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        handshake(server, ctx)


def test_client_with_valid_cert_gets_through(server, certs):
    resp = handshake(server, client_context(certs.dir, "alice"))
    assert resp.status == 200
    assert resp.body["user_id"] == "alice"


def test_no_client_cert_is_refused_at_handshake(server, certs):
    assert_refused(server, client_context(certs.dir, None))


def test_cert_from_another_ca_is_refused(server, certs):
    assert_refused(server, client_context(certs.other, "alice", ca=certs.ca))


def test_expired_cert_is_refused(server, certs):
    assert_refused(server, client_context(certs.dir, "expired"))


def test_revoked_cert_is_refused(server, certs):
    assert_refused(server, client_context(certs.dir, "mallory"))


def test_revoked_cert_passes_when_no_crl_is_configured(make_server, certs):
    # The control for the test above: mallory's cert is otherwise valid.
    server = make_server(crl=None)
    assert handshake(server, client_context(certs.dir, "mallory")).status == 200


def test_cert_without_client_auth_is_refused(server, certs):
    # The server's own certificate has extendedKeyUsage serverAuth only.
    assert_refused(server, client_context(certs.dir, "server"))


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_tls_below_1_2_is_refused(server, certs):
    ctx = client_context(certs.dir, "alice")
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    assert_refused(server, ctx)


def test_server_negotiates_tls_1_2_or_newer(server, certs):
    ctx = client_context(certs.dir, "alice")
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        with ctx.wrap_socket(raw) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_legacy_cn_maps_to_name(server, certs):
    resp = handshake(server, client_context(certs.dir, "legacy"))
    assert resp.status == 200
    assert resp.body["user_id"] == "carol"


def test_crl_reload_refuses_a_newly_revoked_cert(make_server, certs, tmp_path):
    ks = tmp_path / "ks"
    for name in ("server", "erin"):
        gen_cert(ks, name)
    server = make_server(ca_crt=str(ks / "ca" / "ca.crt"), crl=str(ks / "ca" / "crl.pem"),
                         server_crt=str(ks / "server" / "server.crt"),
                         server_key=str(ks / "server" / "server.key"))
    erin = client_context(ks, "erin")
    assert handshake(server, erin).status == 200
    gen_cert(ks, "revoke", "erin")
    assert handshake(server, erin).status == 200  # not re-read yet
    server.loop.call_soon_threadsafe(server.gateway.reload_tls)
    server.call(asyncio.sleep(0))
    assert_refused(server, client_context(ks, "erin"))
