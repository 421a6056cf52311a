"""Tests for scripts/gen_cert.sh (needs bash and openssl on PATH)."""
import asyncio
import datetime
import os
import re
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from conftest import client_context, issue_with_ca, request

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gen_cert.sh"


def run(*args, ks=None, cwd=None, check=True, env=None):
    """Run gen_cert.sh; ks sets KEY_STORE (None leaves it unset); env adds variables.

    With check=True the run must succeed silently on stderr (no openssl noise)."""
    extra = env
    env = {k: v for k, v in os.environ.items() if k not in ("KEY_STORE", "P12_PASSWORD")}
    if ks is not None:
        env["KEY_STORE"] = str(ks)
    proc = subprocess.run([str(SCRIPT), *args], cwd=cwd, env={**env, **(extra or {})},
                          capture_output=True, text=True)
    if check:
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return proc


def load_cert(path):
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def ext(cert, oid):
    return cert.extensions.get_extension_for_oid(oid)


def names(cert, oid):
    return [a.value for a in cert.subject.get_attributes_for_oid(oid)]


def eku(cert):
    return list(ext(cert, ExtensionOID.EXTENDED_KEY_USAGE).value)


def lifetime(cert):
    return cert.not_valid_after_utc - cert.not_valid_before_utc


def verify(ks, name, crl=False):
    cmd = ["openssl", "verify", "-x509_strict", "-CAfile", str(ks / "ca" / "ca.crt")]
    if crl:
        cmd += ["-crl_check", "-CRLfile", str(ks / "ca" / "crl.pem")]
    cert = ks / "ca" / "ca.crt" if name == "ca" else ks / name / f"{name}.crt"
    return subprocess.run(cmd + [str(cert)], capture_output=True, text=True)


@pytest.fixture
def ks(tmp_path):
    return tmp_path / "key_store"


def test_ca_is_v3_constrained_ten_year_ca(ks):
    run("alice", ks=ks)
    ca = load_cert(ks / "ca" / "ca.crt")
    assert ca.version == x509.Version.v3
    assert ca.subject == ca.issuer
    assert names(ca, NameOID.COMMON_NAME) == ["sqlflow-playground CA"]
    bc = ext(ca, ExtensionOID.BASIC_CONSTRAINTS)
    assert bc.critical and bc.value.ca
    ku = ext(ca, ExtensionOID.KEY_USAGE)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    ext(ca, ExtensionOID.SUBJECT_KEY_IDENTIFIER)
    assert abs(lifetime(ca) - datetime.timedelta(days=3650)) <= datetime.timedelta(days=1)


def test_ca_and_cert_key_files_are_private(ks):
    run("alice", ks=ks)
    for key in (ks / "ca" / "ca.key", ks / "alice" / "alice.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    for path in (ks / "ca").iterdir():
        assert not path.stat().st_mode & stat.S_IROTH, path


def test_initial_crl_exists_and_is_signed_by_ca(ks):
    out = run("alice", ks=ks).stdout
    assert "crl.pem" in out
    crl = x509.load_pem_x509_crl((ks / "ca" / "crl.pem").read_bytes())
    ca = load_cert(ks / "ca" / "ca.crt")
    assert crl.issuer == ca.subject
    assert crl.is_signature_valid(ca.public_key())
    assert len(list(crl)) == 0
    assert crl.next_update_utc - crl.last_update_utc >= datetime.timedelta(days=3649)


def test_server_cert_is_serverauth_only_with_sans(ks):
    run("server", "--san", "DNS:db.example.com,IP:10.1.2.3", "--san", "DNS:x.test", ks=ks)
    cert = load_cert(ks / "server" / "server.crt")
    assert eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = ext(cert, ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "db.example.com", "x.test"]
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    assert ips == ["127.0.0.1", "10.1.2.3"]


def test_client_cert_is_clientauth_only(ks):
    run("alice@corp", ks=ks)
    cert = load_cert(ks / "alice@corp" / "alice@corp.crt")
    ca = load_cert(ks / "ca" / "ca.crt")
    assert cert.version == x509.Version.v3
    assert cert.issuer == ca.subject
    assert names(cert, NameOID.COMMON_NAME) == ["alice@corp"]
    assert names(cert, NameOID.ORGANIZATION_NAME) == ["sqlflow.tech"]
    assert names(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) == []
    assert eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    bc = ext(cert, ExtensionOID.BASIC_CONSTRAINTS)
    assert bc.critical and not bc.value.ca
    ku = ext(cert, ExtensionOID.KEY_USAGE)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    ext(cert, ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
    ext(cert, ExtensionOID.SUBJECT_KEY_IDENTIFIER)
    assert cert.signature_hash_algorithm.name == "sha256"
    with pytest.raises(x509.ExtensionNotFound):
        ext(cert, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)


def test_frontend_and_san_options_on_client_keep_clientauth(ks):
    run("--frontend", "--san", "DNS:web.example", "web", ks=ks)
    cert = load_cert(ks / "web" / "web.crt")
    assert names(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) == ["frontend"]
    san = ext(cert, ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert san.get_values_for_type(x509.DNSName) == ["web.example"]
    assert eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_default_key_is_ec_p256_and_default_validity_825_days(ks):
    run("alice", ks=ks)
    cert = load_cert(ks / "alice" / "alice.crt")
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    assert b"BEGIN PRIVATE KEY" in (ks / "alice" / "alice.key").read_bytes()
    assert lifetime(cert) == datetime.timedelta(days=825)


def test_rsa_option_gives_rsa_2048_key_with_key_encipherment(ks):
    run("bob", "--rsa", ks=ks)  # option after NAME is accepted too
    cert = load_cert(ks / "bob" / "bob.crt")
    assert isinstance(cert.public_key(), rsa.RSAPublicKey)
    assert cert.public_key().key_size == 2048
    assert ext(cert, ExtensionOID.KEY_USAGE).value.key_encipherment


def test_days_option_sets_validity(ks):
    run("--days", "3", "shortlived", ks=ks)
    assert lifetime(load_cert(ks / "shortlived" / "shortlived.crt")) == datetime.timedelta(days=3)


def test_serials_are_random_and_unique(ks):
    for name in ("a", "b", "c"):
        run(name, ks=ks)
    serials = {load_cert(ks / n / f"{n}.crt").serial_number for n in "abc"}
    assert len(serials) == 3 and all(s > 2**64 for s in serials)


def index_rows(ks):
    """The CA database: (status letter, serial as int, reason) per line."""
    rows = []
    for line in (ks / "ca" / "index.txt").read_text().splitlines():
        status, _expires, revoked, serial, _file, _subject = line.split("\t")
        rows.append((status, int(serial, 16), revoked.partition(",")[2]))
    return rows


def revoked_serials(ks):
    crl = x509.load_pem_x509_crl((ks / "ca" / "crl.pem").read_bytes())
    return {r.serial_number for r in crl}


def test_issuing_over_a_valid_cert_fails_and_says_to_use_force(ks):
    run("alice", ks=ks)
    crt = ks / "alice" / "alice.crt"
    before, crl = crt.read_bytes(), (ks / "ca" / "crl.pem").read_bytes()
    proc = run("alice", "--rsa", ks=ks, check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "alice.crt exists (valid, expires " in proc.stderr
    assert "add --force to revoke it and issue a new one" in proc.stderr
    assert crt.read_bytes() == before and (ks / "ca" / "crl.pem").read_bytes() == crl
    assert len(index_rows(ks)) == 1 and not (ks / "alice" / "previous").exists()


def test_keep_keeps_a_valid_cert_and_exits_0(ks):
    run("alice", ks=ks)
    before = (ks / "alice" / "alice.crt").read_bytes()
    proc = run("--keep", "alice", ks=ks)
    assert "keeping it" in proc.stdout
    assert (ks / "alice" / "alice.crt").read_bytes() == before and len(index_rows(ks)) == 1


def test_force_reissues_revoking_the_old_cert_and_rewriting_the_crl(ks):
    # The README's order: `server`, then `--force --san DNS:... server`.
    run("server", ks=ks)
    run("alice", ks=ks)
    old = load_cert(ks / "server" / "server.crt")
    old_key = (ks / "server" / "server.key").read_bytes()
    proc = run("--force", "--san", "DNS:playground.example.com", "server", ks=ks)
    new = load_cert(ks / "server" / "server.crt")
    assert new.serial_number != old.serial_number
    san = ext(new, ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "playground.example.com"]
    assert (ks / "server" / "server.key").read_bytes() != old_key
    # The old pair is moved aside, revoked (superseded) in index.txt and in the new CRL.
    [aside] = (ks / "server" / "previous").glob("*.crt")  # named by the serial in hex
    assert int(aside.stem, 16) == old.serial_number and load_cert(aside) == old
    assert aside.with_suffix(".key").read_bytes() == old_key
    rows = {serial: (status, reason) for status, serial, reason in index_rows(ks)}
    assert rows[old.serial_number] == ("R", "superseded")
    assert rows[new.serial_number] == ("V", "")
    assert revoked_serials(ks) == {old.serial_number}
    assert "wrote" in proc.stdout and "crl.pem" in proc.stdout
    assert "kill -HUP <pid>" in proc.stdout
    assert verify(ks, "server", crl=True).returncode == 0
    assert verify(ks, "alice", crl=True).returncode == 0
    # Forcing again revokes the second one too; both stay in the CRL.
    run("--force", "server", ks=ks)
    assert revoked_serials(ks) == {old.serial_number, new.serial_number}


def test_a_revoked_name_is_reissued_without_force(ks):
    run("alice", ks=ks)
    old = load_cert(ks / "alice" / "alice.crt")
    run("revoke", "alice", ks=ks)
    crl = (ks / "ca" / "crl.pem").read_bytes()
    proc = run("alice", ks=ks)
    assert "moved the revoked certificate" in proc.stdout
    new = load_cert(ks / "alice" / "alice.crt")
    assert new.serial_number != old.serial_number
    [aside] = (ks / "alice" / "previous").glob("*.crt")
    assert load_cert(aside) == old
    assert verify(ks, "alice", crl=True).returncode == 0  # the new one is good
    assert (ks / "ca" / "crl.pem").read_bytes() == crl  # still lists the old one
    assert revoked_serials(ks) == {old.serial_number}


def test_an_expired_cert_is_reissued_without_force(ks):
    run("alice", ks=ks)
    # Replace alice's cert with an expired one that this CA signed (not in index.txt).
    (ks / "alice" / "alice.crt").unlink()
    (ks / "alice" / "alice.key").unlink()
    (ks / "alice").rmdir()
    issue_with_ca(ks, "alice", "alice", days_valid=(-30, -1))
    assert "expired" in run("list", ks=ks).stdout
    proc = run("alice", ks=ks)
    assert "moved the expired certificate" in proc.stdout
    assert verify(ks, "alice").returncode == 0


def test_revoke_prints_the_sighup_hint(ks):
    run("alice", ks=ks)
    for _ in range(2):  # also when it was already revoked: the CRL was rewritten
        out = run("revoke", "alice", ks=ks).stdout
        assert "SIGHUP" in out and "kill -HUP <pid>" in out
        assert out.index("crl.pem") < out.index("SIGHUP")


def test_list_shows_names_expiry_and_revocation(ks):
    run("server", ks=ks)
    run("--days", "3", "alice", ks=ks)
    run("bob", ks=ks)
    run("revoke", "bob", ks=ks)
    lines = run("list", ks=ks).stdout.splitlines()
    assert lines[0].split() == ["NAME", "EXPIRES", "STATUS"]
    table = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert sorted(table) == ["alice", "bob", "server"]
    for name, status in (("alice", "valid"), ("bob", "revoked"), ("server", "valid")):
        expires = load_cert(ks / name / f"{name}.crt").not_valid_after_utc
        assert table[name] == [expires.strftime("%Y-%m-%d"), expires.strftime("%H:%M:%SZ"),
                               status], name
    assert table["alice"][0] != table["server"][0]  # 3 days against 825


def test_list_without_a_ca_fails(ks):
    proc = run("list", ks=ks, check=False)
    assert proc.returncode == 1 and "no CA" in proc.stderr


def test_reissued_cert_is_accepted_and_the_old_refused_after_crl_reload(make_server, ks):
    for name in ("server", "erin"):
        run(name, ks=ks)
    server = make_server(ca_crt=str(ks / "ca" / "ca.crt"), crl=str(ks / "ca" / "crl.pem"),
                         server_crt=str(ks / "server" / "server.crt"),
                         server_key=str(ks / "server" / "server.key"))
    old = client_context(ks, "erin")  # reads the files now
    assert request(server.port, old, "GET", "/api/heart_beat").status == 200
    run("--force", "erin", ks=ks)
    new = client_context(ks, "erin")
    assert request(server.port, old, "GET", "/api/heart_beat").status == 200  # not re-read
    server.loop.call_soon_threadsafe(server.gateway.reload_tls)  # what SIGHUP does
    server.call(asyncio.sleep(0))
    assert request(server.port, new, "GET", "/api/heart_beat").body["user_id"] == "erin"
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        request(server.port, old, "GET", "/api/heart_beat")


def test_all_certs_pass_strict_openssl_verify(ks):
    for args in (["server"], ["alice"], ["--frontend", "web"], ["--rsa", "bob"]):
        run(*args, ks=ks)
    for name in ("ca", "server", "alice", "web", "bob"):
        proc = verify(ks, name)
        assert proc.returncode == 0, (name, proc.stdout, proc.stderr)


def test_revoke_fails_crl_check_for_that_cert_only(ks):
    for name in ("server", "alice", "bob"):
        run(name, ks=ks)
    assert verify(ks, "alice", crl=True).returncode == 0
    proc = run("revoke", "alice", ks=ks)
    assert "revoked" in proc.stdout
    bad = verify(ks, "alice", crl=True)
    assert bad.returncode != 0
    assert "revoked" in bad.stdout + bad.stderr
    for name in ("server", "bob"):
        assert verify(ks, name, crl=True).returncode == 0, name
    crl = x509.load_pem_x509_crl((ks / "ca" / "crl.pem").read_bytes())
    serial = load_cert(ks / "alice" / "alice.crt").serial_number
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None


def test_revoke_twice_is_not_an_error(ks):
    run("alice", ks=ks)
    run("revoke", "alice", ks=ks)
    proc = run("revoke", "alice", ks=ks)
    assert "already revoked" in proc.stdout
    assert verify(ks, "alice", crl=True).returncode != 0


def test_revoke_unknown_name_fails(ks):
    run("alice", ks=ks)
    proc = run("revoke", "nobody", ks=ks, check=False)
    assert proc.returncode == 1
    assert "nobody" in proc.stderr


def test_crl_command_refreshes_crl(ks):
    run("alice", ks=ks)
    first = (ks / "ca" / "crl.pem").read_bytes()
    run("crl", ks=ks)
    crl = x509.load_pem_x509_crl((ks / "ca" / "crl.pem").read_bytes())
    assert (ks / "ca" / "crl.pem").read_bytes() != first
    assert crl.is_signature_valid(load_cert(ks / "ca" / "ca.crt").public_key())


@pytest.mark.parametrize("args", [
    [], ["--bogus", "alice"], ["-x", "alice"], ["ca"], ["CRL"], ["revoke"], ["_bad"],
    ["bad/name"], ["a" * 64], ["alice", "bob"], ["--days", "0", "alice"],
    ["--san", "nonsense", "alice"], ["revoke", "--rsa", "alice"], ["list", "x"],
    ["--force", "list"], ["--force", "--keep", "alice"], ["LIST"], ["--force", "crl"],
])
def test_invalid_usage_exits_2_without_side_effects(ks, args):
    proc = run(*args, ks=ks, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Usage:" in proc.stderr and proc.stdout == ""
    assert not ks.exists()


def test_help_prints_usage(ks):
    assert "Usage:" in run("--help", ks=ks).stdout


def test_seed_usage_writes_to_cwd_key_store(tmp_path):
    workspace = tmp_path / "ws"
    (workspace / "key_store").mkdir(parents=True)
    run("server", cwd=workspace)
    run("some_client", cwd=workspace)
    ks = workspace / "key_store"
    for name in ("ca/ca", "server/server", "some_client/some_client"):
        assert (ks / f"{name}.crt").is_file() and (ks / f"{name}.key").is_file()
    assert (ks / "ca" / "crl.pem").is_file()
    assert verify(ks, "some_client").returncode == 0


def test_relative_key_store_and_read_only_cwd(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        run("alice", ks=tmp_path / "elsewhere", cwd=ro)
        assert (tmp_path / "elsewhere" / "alice" / "alice.crt").is_file()
        run("alice", ks="../rel_store", cwd=ro)
        assert (tmp_path / "rel_store" / "alice" / "alice.crt").is_file()
    finally:
        ro.chmod(0o755)


# -- --p12: a PKCS#12 bundle for browsers (issue 14) -----------------------------------------

def load_p12(path, password):
    from cryptography.hazmat.primitives.serialization import pkcs12
    return pkcs12.load_key_and_certificates(Path(path).read_bytes(), password.encode())


def test_p12_issues_and_bundles_key_cert_and_ca_under_a_random_password(ks):
    out = run("--p12", "alice", ks=ks).stdout
    p12, pw_file = ks / "alice" / "alice.p12", ks / "alice" / "alice.p12.pass"
    assert f"wrote {ks}/alice/alice.p12 (password in {ks}/alice/alice.p12.pass)" in out
    for f in (p12, pw_file):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    password = pw_file.read_text().strip()
    assert len(password) >= 20 and password not in out
    key, cert, extra = load_p12(p12, password)
    assert cert == load_cert(ks / "alice" / "alice.crt")
    assert [c.subject for c in extra] == [load_cert(ks / "ca" / "ca.crt").subject]
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    with pytest.raises(ValueError):
        load_p12(p12, "wrong password")
    # Another bundle gets another password.
    run("--p12", "bob", ks=ks)
    assert (ks / "bob" / "bob.p12.pass").read_text() != pw_file.read_text()


def test_p12_exports_an_existing_valid_cert_without_reissuing_it(ks):
    run("--frontend", "front", ks=ks)
    before = (ks / "front" / "front.crt").read_bytes()
    out = run("--p12", "front", ks=ks, env={"P12_PASSWORD": "s3cret pass"}).stdout
    assert "keeping it (--p12)" in out and "the password is $P12_PASSWORD" in out
    assert (ks / "front" / "front.crt").read_bytes() == before
    assert not (ks / "front" / "front.p12.pass").exists()
    _, cert, _ = load_p12(ks / "front" / "front.p12", "s3cret pass")
    assert names(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) == ["frontend"]
    assert not list(ks.glob(".gen_cert.*")), "temporary files left behind"


def test_p12_with_force_reissues_and_moves_the_old_bundle_aside(ks):
    run("--p12", "alice", ks=ks)
    old_serial = format(load_cert(ks / "alice" / "alice.crt").serial_number, "X")
    old_p12 = (ks / "alice" / "alice.p12").read_bytes()
    run("--force", "alice", ks=ks)  # a re-issue without --p12 still moves the bundle
    previous = ks / "alice" / "previous"
    moved = [p.name for p in previous.iterdir()]
    assert any(n.endswith(".p12") for n in moved) and any(n.endswith(".p12.pass") for n in moved)
    assert not (ks / "alice" / "alice.p12").exists()
    assert (previous / next(n for n in moved if n.endswith(".p12"))).read_bytes() == old_p12
    assert old_serial.lstrip("0") in {n.split(".")[0].lstrip("0") for n in moved}
    run("--force", "--p12", "alice", ks=ks)
    _, cert, _ = load_p12(ks / "alice" / "alice.p12",
                          (ks / "alice" / "alice.p12.pass").read_text().strip())
    assert cert == load_cert(ks / "alice" / "alice.crt")
    assert format(cert.serial_number, "X") != old_serial


def test_p12_imports_into_an_nss_database_with_pk12util(ks, tmp_path):
    """What the dashboard's browser tests (and Chrome on Linux) do with the bundle."""
    import shutil
    if not shutil.which("pk12util"):
        from conftest import missing
        missing("pk12util is not installed (apt-get install libnss3-tools)")
    run("--p12", "alice", ks=ks)
    db = tmp_path / "nssdb"
    db.mkdir()
    subprocess.run(["certutil", "-N", "-d", f"sql:{db}", "--empty-password"], check=True)
    subprocess.run(["pk12util", "-i", str(ks / "alice" / "alice.p12"), "-d", f"sql:{db}",
                    "-w", str(ks / "alice" / "alice.p12.pass")], check=True,
                   capture_output=True)
    listing = subprocess.run(["certutil", "-L", "-d", f"sql:{db}"], check=True,
                             capture_output=True, text=True).stdout
    assert re.search(r"^alice\s+u,u,u$", listing, re.M), listing


@pytest.mark.parametrize("args", [["--p12", "list"], ["--p12", "revoke", "alice"],
                                  ["--p12", "crl"]])
def test_p12_only_applies_when_issuing(ks, args):
    proc = run(*args, ks=ks, check=False)
    assert proc.returncode == 2 and "--p12" in proc.stderr and not ks.exists()
