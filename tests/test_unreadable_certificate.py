"""A server certificate OpenSSL takes but cryptography cannot read (here: a SAN DNS name that is
not IA5 text, as a sloppy private CA may issue) is shown by what is certain, its fingerprint and
why it cannot be read, never a traceback: in `test connect` over SMTP (verified or not: the
refused handshake's explanation reads it too) and in the HTTPS probe's look at a refused
certificate (Graph/EWS)."""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path

import pytest

from smtpserver import USER, smtp_server, write_profiles


class _BadSanCert:
    """A self-signed certificate whose SAN DNS name has a 0xFF byte (same length, so OpenSSL
    loads it; the signature no longer matches, which an unverified connection does not see)."""

    def __init__(self, tmp: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(7).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("zzzz.localhost")]), critical=False)
                .sign(key, hashes.SHA256()))
        der = bytearray(cert.public_bytes(serialization.Encoding.DER))
        der[der.index(b"zzzz.localhost")] = 0xFF
        self.der = bytes(der)
        import ssl

        self.cert_file = tmp / "bad.crt"
        self.key_file = tmp / "bad.key"
        self.cert_file.write_text(ssl.DER_cert_to_PEM_cert(self.der))
        self.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))

    def configure_cert(self, ctx) -> None:
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))

    @property
    def fingerprint(self) -> str:
        return ":".join(f"{b:02X}" for b in hashlib.sha256(self.der).digest())


@pytest.fixture
def bad_cert(tmp_path):
    return _BadSanCert(tmp_path)


def test_describe_shown_keeps_the_fingerprint_and_says_why(bad_cert):
    from mailctl.net.certs import describe_certificate, describe_shown

    with pytest.raises(ValueError):
        describe_certificate(bad_cert.der)
    shown = describe_shown(bad_cert.der)
    assert shown["sha256"] == bad_cert.fingerprint
    assert "subject_alternative_name" in shown["unreadable"] or "DNSName" in shown["unreadable"], shown
    assert shown["subject"] is None and shown["san"] == []


@pytest.mark.parametrize("verify", [False, True])
def test_smtp_test_connect_shows_an_unreadable_certificate(cli, isolated_env, bad_cert, verify):
    with smtp_server(security="tls", cert=bad_cert) as srv:
        write_profiles(isolated_env, {"p": {"type": "smtp", "host": "localhost", "port": srv.port, "security": "tls",
                                            "auth": "none", "timeout": 5, "from_address": USER, "tls_verify": verify}})
        res = cli("test", "connect", "--json")
        human = cli("test", "connect")
    assert "Traceback" not in res.output + human.output, human.output
    data = json.loads(res.stdout)
    assert res.exit_code == human.exit_code == (69 if verify else 0), res.output
    (cert,) = data["certificates"]
    assert cert["sha256"] == bad_cert.fingerprint and cert["unreadable"]
    text = human.stdout + human.stderr
    assert "cannot be read" in text and bad_cert.fingerprint in text


def test_the_https_probe_shows_an_unreadable_refused_certificate(bad_cert):
    """http_stages fetches a refused certificate again without verifying, only to show it."""
    import socket
    import ssl
    import threading

    from mailctl.transports.http_stages import _unverified_chain

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    bad_cert.configure_cert(ctx)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        (shown,) = _unverified_chain("127.0.0.1", port, 5.0)
    finally:
        listener.close()
        t.join(5)
    assert shown["sha256"] == bad_cert.fingerprint and shown["unreadable"]
