"""Issue #15 item 2: a refused TLS handshake says exactly why, on real TLS servers.

Every case is a real server on 127.0.0.1 (aiosmtpd with STARTTLS or implicit TLS, or a bare
TLS listener for a server that speaks only TLS 1.1) with a real certificate: one for another
name, one that expired (and one not yet valid) made with the cryptography library through
trustme, one from a CA nobody trusts, a self-signed one, a 1024-bit RSA key, a SHA-1 signature
(made with `openssl x509 -sha1`: cryptography refuses to sign with SHA-1). The facts the test
expects are read from the certificate itself, not from mailctl."""

from __future__ import annotations

import datetime
import hashlib
import json
import socket
import ssl
import subprocess
import threading
import warnings
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from smtpserver import USER, make_pki, smtp_server, write_profiles


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def profile(port, **values):
    p = {"type": "smtp", "host": "localhost", "port": port, "security": "starttls", "auth": "none", "timeout": 5,
         "from_address": USER}
    p.update(values)
    return p


def run(cli, *args):
    """(json result, human result) of `mailctl test connect`."""
    res = cli("test", "connect", *args, "--json")
    human = cli("test", "connect", *args)
    assert res.exit_code == human.exit_code
    return res, json.loads(res.stdout), human


def leaf_of(cert) -> x509.Certificate:
    pem = cert.cert_chain_pems[0].bytes() if hasattr(cert, "cert_chain_pems") else Path(cert.cert_file).read_bytes()
    return x509.load_pem_x509_certificate(pem)


class ServerCert:
    """Quacks like trustme.LeafCert for smtp_server(): a certificate and key in files, and
    what the server's context allows (an old server: TLS 1.1 at most, weak keys)."""

    def __init__(self, cert_file: Path, key_file: Path, *, max_version=None):
        self.cert_file, self.key_file, self.max_version = cert_file, key_file, max_version

    def configure_cert(self, ctx: ssl.SSLContext) -> None:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the server use what this client must refuse
        if self.max_version is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = ssl.TLSVersion.TLSv1
                ctx.maximum_version = self.max_version
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))


def trustme_files(cert, tmp: Path, name: str) -> ServerCert:
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / f"{name}.pem"))
    return ServerCert(tmp / f"{name}.pem", tmp / f"{name}.pem")


# --- the name -------------------------------------------------------------------------------
@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_name_mismatch_names_the_certificate_names_and_the_name_used(cli, isolated_env, pki, security):
    with smtp_server(security=security, cert=pki.wrong_name) as srv:
        write_profiles(isolated_env, {"p": profile(srv.port, security=security, ca_file=str(pki.ca_file))})
        res, data, human = run(cli)
    assert res.exit_code == 69
    explanation = data["explanation"]
    assert explanation["id"] == "tls-hostname-mismatch"
    assert "valid for mail.other.test, not for localhost" in explanation["cause"]
    assert "--host mail.other.test" in explanation["fix"] and "ca-file" not in explanation["fix"]
    assert data["hint"] == explanation["fix"]
    problem = data["tls"]["problem"]
    assert problem["kind"] == "name-mismatch" and problem["names"] == ["mail.other.test"] and problem["host"] == "localhost"
    assert f"Hint: {explanation['fix']}" in human.stderr


def test_wildcard_certificate_suggests_a_name_under_it(cli, isolated_env, tmp_path):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert = trustme_files(ca.issue_cert("*.mail.test"), tmp_path, "wild")
    with smtp_server(cert=cert) as srv:
        write_profiles(isolated_env, {"p": profile(srv.port, ca_file=str(tmp_path / "ca.pem"))})
        res, data, _ = run(cli)
    assert "valid for *.mail.test, not for localhost" in data["explanation"]["cause"]
    assert "a name under mail.test" in data["explanation"]["fix"]


# --- dates ----------------------------------------------------------------------------------
def test_expired_says_when_and_how_long_ago(cli, isolated_env, pki):
    expired_on = leaf_of(pki.expired).not_valid_after_utc
    days = (datetime.datetime.now(datetime.timezone.utc) - expired_on).days
    with smtp_server(cert=pki.expired) as srv:
        write_profiles(isolated_env, {"p": profile(srv.port, ca_file=str(pki.ca_file))})
        res, data, human = run(cli)
    cause = data["explanation"]["cause"]
    assert data["explanation"]["id"] == "tls-expired"
    assert f"expired on {expired_on:%Y-%m-%d %H:%M} UTC, {days} days ago" in cause
    assert "--tls-fingerprint" in data["explanation"]["fix"]
    assert "EXPIRED" in human.stdout and cause in human.stdout


def test_not_yet_valid_says_from_when(cli, isolated_env, tmp_path):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    now = datetime.datetime.now(datetime.timezone.utc)
    start = (now + datetime.timedelta(days=3, hours=1)).replace(microsecond=0)
    cert = trustme_files(ca.issue_cert("localhost", not_before=start, not_after=start + datetime.timedelta(days=90)), tmp_path, "early")
    with smtp_server(cert=cert) as srv:
        write_profiles(isolated_env, {"p": profile(srv.port, ca_file=str(tmp_path / "ca.pem"))})
        res, data, human = run(cli)
    assert data["explanation"]["id"] == "tls-not-yet-valid"
    assert f"valid only from {start:%Y-%m-%d %H:%M} UTC, 3 days from now" in data["explanation"]["cause"]
    assert "NOT YET VALID" in human.stdout


# --- the issuer -----------------------------------------------------------------------------
def test_unknown_issuer_names_it_and_says_no_ca_file(cli, isolated_env, pki):
    issuer = leaf_of(pki.other_ca_cert).issuer.rfc4514_string()
    with smtp_server(cert=pki.other_ca_cert) as srv:
        write_profiles(isolated_env, {"p": profile(srv.port)})
        res, data, _ = run(cli)
    cause = data["explanation"]["cause"]
    assert res.exit_code == 69 and data["explanation"]["id"] == "tls-self-signed"
    assert f"issued by {issuer}" in cause and "no ca_file is set" in cause
    assert "--ca-file" in data["explanation"]["fix"]


@pytest.mark.parametrize("cert", ["self_signed", "other_ca_cert"])
def test_a_ca_file_that_did_not_sign_it_is_said_so(cli, isolated_env, pki, cert):
    issuer = leaf_of(getattr(pki, cert)).issuer.rfc4514_string()
    ca_subject = x509.load_pem_x509_certificate(pki.ca_file.read_bytes()).subject.rfc4514_string()
    with smtp_server(cert=getattr(pki, cert)) as srv:
        write_profiles(isolated_env, {"p": profile(srv.port, ca_file=str(pki.ca_file))})
        res, data, _ = run(cli)
    cause = data["explanation"]["cause"]
    assert f"The CA in ca_file {pki.ca_file} did not sign this certificate" in cause
    assert f"issued by {issuer}" in cause and ca_subject in cause
    assert data["tls"]["problem"]["kind"] == "ca-file-did-not-sign"


def test_self_signed_without_ca_file_offers_the_pin(cli, isolated_env, pki):
    with smtp_server(security="tls", cert=pki.self_signed) as srv:
        write_profiles(isolated_env, {"p": profile(srv.port, security="tls")})
        res, data, _ = run(cli)
    assert "self-signed" in data["explanation"]["cause"] and "no ca_file is set" in data["explanation"]["cause"]
    assert "--tls-fingerprint" in data["explanation"]["fix"]


# --- the pin --------------------------------------------------------------------------------
def test_pin_mismatch_shows_both_fingerprints(cli, isolated_env, pki):
    der = leaf_of(pki.good).public_bytes(Encoding.DER)
    actual = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    pinned = ":".join(["AB"] * 32)
    with smtp_server(cert=pki.good) as srv:
        write_profiles(isolated_env, {"p": profile(srv.port, tls_fingerprint=pinned)})
        res, data, human = run(cli)
    assert res.exit_code == 69 and data["explanation"]["id"] == "tls-fingerprint-mismatch"
    assert f"got SHA-256 {actual}, pinned {pinned}" in data["error"]
    assert actual in data["explanation"]["cause"] and pinned in data["explanation"]["cause"]
    assert data["certificates"][0]["sha256"] == actual
    assert human.stdout.count(f"got SHA-256 {actual}") == 0 and human.stderr.count(f"got SHA-256 {actual}") == 1


# --- weak keys, weak signatures, old TLS -----------------------------------------------------
def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def weak(tmp_path_factory):
    """A CA, a leaf with a 1024-bit RSA key, and a leaf signed with SHA-1 (openssl CLI)."""
    d = tmp_path_factory.mktemp("weak")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=d)
    _openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=Weak Test CA", "-days", "30", "-sha256", "-out", "ca.pem", cwd=d)
    (d / "ext").write_text("subjectAltName=DNS:localhost\n")
    for name, keygen, digest in (("rsa1024", ["genrsa", "-out", "rsa1024.key", "1024"], "-sha256"),
                                 ("sha1", ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sha1.key"], "-sha1")):
        _openssl(*keygen, cwd=d)
        _openssl("req", "-new", "-key", f"{name}.key", "-subj", "/CN=localhost", "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "5",
                 digest, "-extfile", "ext", "-out", f"{name}.crt", cwd=d)
    return d


def test_weak_key_is_said_so(cli, isolated_env, weak):
    with smtp_server(cert=ServerCert(weak / "rsa1024.crt", weak / "rsa1024.key")) as srv:
        write_profiles(isolated_env, {"p": profile(srv.port, ca_file=str(weak / "ca.pem"))})
        res, data, _ = run(cli)
    assert res.exit_code == 69
    assert "weak RSA key of 1024 bits" in data["explanation"]["cause"]
    assert "2048" in data["explanation"]["fix"]
    assert data["certificates"][0]["key"] == "RSA" and data["certificates"][0]["key_bits"] == 1024


def test_weak_signature_is_said_so(cli, isolated_env, weak):
    with smtp_server(cert=ServerCert(weak / "sha1.crt", weak / "sha1.key")) as srv:
        write_profiles(isolated_env, {"p": profile(srv.port, ca_file=str(weak / "ca.pem"))})
        res, data, _ = run(cli)
    assert res.exit_code == 69
    assert "signed with SHA1" in data["explanation"]["cause"]
    assert data["certificates"][0]["signature_hash"] == "sha1"


def test_server_with_only_tls_1_1_is_said_so(cli, isolated_env, pki, tmp_path):
    old = trustme_files(pki.good, tmp_path, "old")
    old.max_version = ssl.TLSVersion.TLSv1_1
    with smtp_server(cert=old) as srv:
        write_profiles(isolated_env, {"p": profile(srv.port, ca_file=str(pki.ca_file))})
        res, data, human = run(cli)
    assert res.exit_code == 69 and data["failed_stage"] == "starttls"
    assert data["explanation"]["id"] == "tls-protocol-too-old", data["error"]
    assert "offers only TLSv1.1" in data["explanation"]["cause"]
    assert "only TLSv1.1" in data["error"]
    assert data["tls"]["version"] == "TLSv1.1" and data["certificates"]


def test_implicit_tls_server_with_only_tls_1_0(cli, isolated_env, pki, tmp_path):
    """A bare implicit-TLS listener that speaks only TLS 1.0 (no SMTP library would)."""
    old = trustme_files(pki.good, tmp_path, "old10")
    old.max_version = ssl.TLSVersion.TLSv1
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    old.configure_cert(ctx)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (socket.timeout, OSError):
                continue
            try:
                conn.settimeout(5)
                tls = ctx.wrap_socket(conn, server_side=True)
                tls.sendall(b"220 old.test ESMTP\r\n")
                tls.close()
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        write_profiles(isolated_env, {"p": profile(listener.getsockname()[1], security="tls", ca_file=str(pki.ca_file))})
        res, data, _ = run(cli)
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    assert res.exit_code == 69 and data["failed_stage"] == "tls"
    assert "offers only TLSv1 " in data["explanation"]["cause"] or "offers only TLSv1;" in data["explanation"]["cause"]


def test_every_problem_of_the_certificate_is_said(cli, isolated_env, tmp_path):
    """OpenSSL reports one reason; a certificate for another name that also expired has both."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    now = datetime.datetime.now(datetime.timezone.utc)
    end = (now - datetime.timedelta(days=10)).replace(microsecond=0)
    cert = trustme_files(ca.issue_cert("mail.other.test", not_before=end - datetime.timedelta(days=90), not_after=end),
                         tmp_path, "both")
    with smtp_server(cert=cert) as srv:
        write_profiles(isolated_env, {"p": profile(srv.port, ca_file=str(tmp_path / "ca.pem"))})
        res, data, _ = run(cli)
    cause = data["explanation"]["cause"]
    assert res.exit_code == 69
    assert "mail.other.test" in cause and f"expired on {end:%Y-%m-%d %H:%M} UTC" in cause, cause
    assert sorted([data["tls"]["problem"]["kind"]] + data["tls"]["problem"]["also"]) == ["expired", "name-mismatch"]
