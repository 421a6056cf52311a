"""Issue 13 item 3: a refused or failed TLS connection is one line naming the cause and the
fix, in the client, the CLI and the notebook; the server logs each refusal with the
certificate's subject and the reason, rate-limited."""
import logging
import os
import shutil
import subprocess
import sys

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from IPython.utils.capture import capture_output

from conftest import client_context, free_port, issue_with_ca
from sqlflow_playground import connections
from sqlflow_playground.client import (CertificateProblem, PlaygroundClient,
                                       PlaygroundClientError)


def paths(ks, name, ca=None):
    return {"ca": ca or str(ks / "ca" / "ca.crt"), "cert": str(ks / name / f"{name}.crt"),
            "key": str(ks / name / f"{name}.key")}


def refusal(server, **tls):
    client = PlaygroundClient(f"https://127.0.0.1:{server.port}", **tls)
    try:
        with pytest.raises(PlaygroundClientError) as failed:
            client.heart_beat()
        return failed.value
    finally:
        client.close()


def one_line(error):
    assert error.status == 0 and "\n" not in error.message
    assert "_ssl.c" not in error.message and "EOF occurred" not in error.message
    return error.message


@pytest.mark.parametrize("attempt", range(3))  # the alert used to be lost to a reset at times
def test_certificate_from_another_ca(server, certs, attempt):
    error = refusal(server, **paths(certs.other, "alice", ca=certs.ca))
    assert error.code == "unknown_ca"
    assert "CN=alice" in one_line(error) and "maintainer" in error.message


@pytest.mark.parametrize("attempt", range(3))
def test_revoked_certificate(server, certs, attempt):
    error = refusal(server, **paths(certs.dir, "mallory"))
    assert error.code == "certificate_revoked"
    assert "CN=mallory" in one_line(error) and "ask the maintainer for a new one" in error.message


def test_expired_certificate_is_found_before_connecting(certs):
    with pytest.raises(CertificateProblem) as failed:
        PlaygroundClient(f"https://127.0.0.1:{free_port()}", **paths(certs.dir, "expired"))
    assert failed.value.code == "certificate_expired"
    assert "CN=dave" in one_line(failed.value)
    assert "ask the maintainer for a new one" in failed.value.message


def test_certificate_the_server_finds_expired(server, certs):
    # Valid when the client was made, expired by the time it connects: the server's alert.
    client = PlaygroundClient(f"https://127.0.0.1:{server.port}", **paths(certs.dir, "alice"))
    client._context = client_context(certs.dir, "expired")
    with pytest.raises(PlaygroundClientError) as failed:
        client.heart_beat()
    assert failed.value.code == "certificate_expired"
    assert "ask the maintainer for a new one" in one_line(failed.value)


def test_key_that_does_not_match_the_certificate_is_found_before_connecting(certs):
    tls = {**paths(certs.dir, "alice"), "key": str(certs.dir / "bob" / "bob.key")}
    with pytest.raises(CertificateProblem) as failed:
        PlaygroundClient(f"https://127.0.0.1:{free_port()}", **tls)
    assert failed.value.code == "key_mismatch"
    assert "bob.key" in one_line(failed.value) and "alice.crt" in failed.value.message


def test_plain_http_to_the_tls_port(server):
    client = PlaygroundClient(f"http://127.0.0.1:{server.port}")
    with pytest.raises(PlaygroundClientError) as failed:
        client.heart_beat()
    assert failed.value.code == "tls_port"
    assert f"https://127.0.0.1:{server.port}" in one_line(failed.value)


def test_server_certificate_that_does_not_name_the_host(make_server, certs, tmp_path):
    ks = tmp_path / "ks"
    shutil.copytree(certs.dir / "ca", ks / "ca")
    issue_with_ca(ks, "elsewhere", "elsewhere.example", eku=ExtendedKeyUsageOID.SERVER_AUTH)
    server = make_server(server_crt=str(ks / "elsewhere" / "elsewhere.crt"),
                         server_key=str(ks / "elsewhere" / "elsewhere.key"))
    url, alice = f"https://127.0.0.1:{server.port}", paths(certs.dir, "alice")
    assert PlaygroundClient(url, **alice).heart_beat()["status"] == "ok"  # the magic's way
    with pytest.raises(PlaygroundClientError) as failed:
        PlaygroundClient(url, check_hostname=True, **alice).heart_beat()
    assert failed.value.code == "wrong_host", failed.value.message
    assert "does not name 127.0.0.1" in one_line(failed.value)


def test_ca_file_that_does_not_vouch_for_the_server(server, certs):
    error = refusal(server, **paths(certs.dir, "alice", ca=str(certs.other / "ca" / "ca.crt")))
    assert error.code == "server_not_trusted" and "ca.crt" in one_line(error)


def test_server_down(certs):
    client = PlaygroundClient(f"https://127.0.0.1:{free_port()}", **paths(certs.dir, "alice"))
    with pytest.raises(PlaygroundClientError) as failed:
        client.heart_beat()
    assert failed.value.code == "server_down"
    assert "connection refused" in one_line(failed.value)


def test_server_logs_each_refusal_with_the_subject_and_the_reason(server, certs, caplog,
                                                                   monkeypatch):
    monkeypatch.setattr(connections, "LOG_EVERY_S", 0.2)
    with caplog.at_level(logging.INFO):
        refusal(server, **paths(certs.dir, "mallory"))
        refusal(server, **paths(certs.other, "alice", ca=certs.ca))
        for _ in range(2):
            with pytest.raises(OSError):  # a client that sends no certificate at all
                from conftest import request
                request(server.port, client_context(certs.dir, None), "GET", "/api/heart_beat")
        from conftest import wait_until
        assert wait_until(lambda: "no client certificate" in caplog.text, timeout=10)
    lines = [r.getMessage() for r in caplog.records if "TLS handshakes refused" in r.getMessage()]
    text = "\n".join(lines)
    assert "a revoked certificate (CN=mallory, from 127.0.0.1)" in text
    assert "a certificate from an unknown CA (CN=alice, from 127.0.0.1)" in text
    assert "no client certificate (no certificate read, from 127.0.0.1)" in text
    assert "SSL Error on" not in caplog.text  # Tornado's raw line for each is gone


# -- the CLI and the notebook ---------------------------------------------------------

def run_cli(server, tls, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQLFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "sqlflow_playground", "client",
         f"--server=https://127.0.0.1:{server.port}", f"--ca={tls['ca']}",
         f"--cert={tls['cert']}", f"--key={tls['key']}", *args],
        env=env, capture_output=True, text=True, timeout=60)


def test_cli_says_what_to_do_in_one_line(server, certs):
    revoked = run_cli(server, paths(certs.dir, "mallory"), "heartbeat")
    assert revoked.returncode == 1
    assert revoked.stderr.strip().splitlines() == [
        revoked.stderr.strip()] and "ask the maintainer for a new one" in revoked.stderr
    mismatch = run_cli(server, {**paths(certs.dir, "alice"),
                                "key": str(certs.dir / "bob" / "bob.key")}, "create-db")
    assert mismatch.returncode == 1 and "usage:" not in mismatch.stderr
    assert mismatch.stderr.startswith("error: key_mismatch: ")
    assert len(mismatch.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name, says", [
    ("mallory", "ask the maintainer for a new one"),   # revoked: the server refuses it
    ("expired", "ask the maintainer for a new one"),   # found before connecting
])
def test_notebook_shows_one_line_and_no_traceback(server, certs, notebook, monkeypatch,
                                                   name, says):
    tls = paths(certs.dir, name)
    for var, value in (("SERVER", f"https://127.0.0.1:{server.port}"), ("SERVER_CA", tls["ca"]),
                       ("CLIENT_CERT", tls["cert"]), ("CLIENT_KEY", tls["key"])):
        monkeypatch.setenv(f"SQLFLOW_PLAYGROUND_{var}", value)
    with capture_output() as out:
        result = notebook.run_cell("%%sqlflow\nSELECT 1\n")
    assert isinstance(result.error_in_exec, PlaygroundClientError)
    shown = (out.stdout + out.stderr).strip()
    assert says in shown and "Traceback" not in shown
    assert len(shown.splitlines()) == 1, shown
