"""Issue #14, one-shot `mailctl send` / `mailctl test send`: what they no longer pay for at
startup stays that way, and the shortcuts say exactly what the long way said.

- the certificate a `mailctl test` shows is read by mailctl.net.certs' small DER reader, not by
  cryptography (~35 ms of imports): same facts as cryptography for every certificate it reads,
  cryptography for the rest;
- a verifying TLS context (the system CA store) is built in the background while the command
  gets going (mailctl.net.tls.prefetch_context), with the same context and the same errors;
- mailctl.addresses' atom class is written so that it compiles in microseconds."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import os
import re
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from smtpserver import PASSWORD, USER, make_pki, smtp_server, write_profiles

from mailctl.errors import ConfigError
from mailctl.net import certs, tls

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.timezone.utc)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def _made(name: x509.Name, *, key=None, san=None, not_after=None, issuer: x509.Name | None = None, serial=12345) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(key.public_key())
               .serial_number(serial).not_valid_before(NOW - datetime.timedelta(days=1))
               .not_valid_after(not_after or NOW + datetime.timedelta(days=30)))
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA384()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER)


def _attr(oid, value, tag=None):
    return x509.NameAttribute(oid, value, tag) if tag is not None else x509.NameAttribute(oid, value)


def _cases() -> dict[str, bytes]:
    awkward = x509.Name([
        x509.RelativeDistinguishedName([_attr(NameOID.COUNTRY_NAME, "DE")]),
        x509.RelativeDistinguishedName([_attr(NameOID.ORGANIZATION_NAME, 'Ex, "Ample" + Co; <x>\\')]),
        x509.RelativeDistinguishedName([_attr(NameOID.ORGANIZATIONAL_UNIT_NAME, "#ops "),
                                        _attr(NameOID.COMMON_NAME, " mail.example.com")]),  # multi-valued RDN
        x509.RelativeDistinguishedName([_attr(NameOID.EMAIL_ADDRESS, "pm@example.com")]),
        x509.RelativeDistinguishedName([_attr(NameOID.DOMAIN_COMPONENT, "example")]),
        x509.RelativeDistinguishedName([_attr(NameOID.LOCALITY_NAME, "Zürich")]),
    ])
    cn = x509.Name([_attr(NameOID.COMMON_NAME, "cn-only.example")])
    return {
        "awkward names, IPv6, far future (GeneralizedTime)": _made(
            awkward, san=[x509.DNSName("a.example"), x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
                          x509.RFC822Name("pm@example.com"), x509.IPAddress(ipaddress.ip_address("192.0.2.7"))],
            not_after=datetime.datetime(2051, 1, 1, tzinfo=datetime.timezone.utc)),
        "no SAN: the CN names it, RSA 3072, issued by another name": _made(
            cn, key=rsa.generate_private_key(public_exponent=65537, key_size=3072),
            issuer=x509.Name([_attr(NameOID.COMMON_NAME, "Some CA")]), serial=2**150 + 7),
        "P-521": _made(cn, key=ec.generate_private_key(ec.SECP521R1()), san=[x509.DNSName("x.example")]),
        "empty value": _made(x509.Name([_attr(NameOID.COMMON_NAME, "n"), _attr(NameOID.ORGANIZATIONAL_UNIT_NAME, "")])),
    }


def _fallback_cases() -> dict[str, bytes]:
    cn = x509.Name([_attr(NameOID.COMMON_NAME, "fallback.example")])
    bmp = x509.Name([_attr(NameOID.COMMON_NAME, "bmp.example", x509.name._ASN1Type.BMPString)])
    return {"Ed25519 key and signature": _made(cn, key=ed25519.Ed25519PrivateKey.generate()),
            "secp256k1": _made(cn, key=ec.generate_private_key(ec.SECP256K1())),
            "BMPString": _made(bmp)}


def _system_store() -> list[bytes]:
    bundle = tls.system_ca_bundle()
    if not bundle:
        return []
    text = Path(bundle).read_text(errors="replace")
    return [ssl.PEM_cert_to_DER_cert(m.group(0)) for m in
            re.finditer(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)]


def test_the_der_reader_says_what_cryptography_says(pki):
    corpus = {"good": _der(pki.good.cert_chain_pems[0].bytes()), "ca": _der(pki.ca.cert_pem.bytes()),
              "wrong name": _der(pki.wrong_name.cert_chain_pems[0].bytes()),
              "expired": _der(pki.expired.cert_chain_pems[0].bytes()),
              "self-signed": ssl.PEM_cert_to_DER_cert(Path(pki.self_signed.cert_file).read_text()),
              **_cases()}
    for label, der in corpus.items():
        assert certs._der_facts(der) == certs._cryptography_facts(der), label
        described = certs.describe_certificate(der, now=NOW)
        assert described["sha256"].replace(":", "").lower() == hashlib.sha256(der).hexdigest()
    read = 0
    for der in _system_store():  # the CAs a real server chain ends in, when the system has them
        try:
            facts = certs._der_facts(der)
        except Exception:
            continue  # described by cryptography: see the fallback test
        read += 1
        assert facts == certs._cryptography_facts(der), facts["subject"]
    assert read >= 0.9 * len(_system_store())


def test_what_the_reader_does_not_cover_is_described_by_cryptography():
    for label, der in _fallback_cases().items():
        with pytest.raises(Exception):
            certs._der_facts(der)
        facts = certs._cryptography_facts(der)
        described = certs.describe_certificate(der, now=NOW)
        assert (described["subject"], described["key"], described["signature_hash"]) == (
            facts["subject"], facts["key"], facts["signature_hash"]), label
    with pytest.raises(ValueError):
        certs.describe_certificate(b"\x30\x03\x02\x01\x01")  # malformed: cryptography's error, as before
    der = _cases()["P-521"]
    with pytest.raises(ValueError):
        certs.describe_certificate(der + b"\x00")  # data after the certificate


def test_the_atom_class_is_the_same_set():
    old = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+")
    from mailctl.addresses import _ATOM

    differ = [c for c in range(0x110000) if bool(old.fullmatch(chr(c))) != bool(_ATOM.fullmatch(chr(c)))]
    assert differ == []


# --- the TLS context built in the background ----------------------------------------------
def _pending() -> list:
    return [v for v in tls._contexts.values() if isinstance(v, tls._Prefetch)]


def test_a_prefetched_context_is_the_one_used(pki, monkeypatch):
    monkeypatch.setattr(tls, "_contexts", {})
    values = {"ca_file": str(pki.ca_file)}
    tls.prefetch_context(values, "p")
    assert len(_pending()) == 1
    tls.prefetch_context(values, "p")  # once
    assert len(tls._contexts) == 1
    ctx, mode = tls.socket_context(values, "p")
    assert mode == "ca_file" and _pending() == [] and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.cert_store_stats()["x509_ca"] >= 1  # the ca_file at least
    assert tls.socket_context(values, "p")[0] is ctx  # cached as before
    tls.prefetch_context(values, "p")
    assert _pending() == []  # built already
    tls.prefetch_context({"tls_fingerprint": "ab" * 32, "ca_file": str(pki.ca_file)}, "p")
    tls.prefetch_context({"tls_verify": False}, "p")
    tls.prefetch_context({"ca_file": "/nonexistent/ca.pem"}, "p")
    assert _pending() == []  # nothing to build ahead: a bare context, or a file that is not there


def test_a_prefetched_context_raises_the_same_error(tmp_path, monkeypatch):
    monkeypatch.setattr(tls, "_contexts", {})
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    tls.prefetch_context({"ca_file": str(junk)}, "p")
    with pytest.raises(ConfigError) as err:
        tls.socket_context({"ca_file": str(junk)}, "p")
    assert err.value.message.startswith(f"ca_file {junk}: not a PEM CA bundle")
    with pytest.raises(ConfigError) as again:  # not cached: the same error again, built the usual way
        tls.socket_context({"ca_file": str(junk)}, "p")
    assert again.value.message == err.value.message


PROBE = """
import json, sys, threading
from mailctl.cli import main
names = []
start = threading.Thread.start
def tracked(self):
    names.append(self.name)
    start(self)
threading.Thread.start = tracked
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
mods = sorted(m for m in ('cryptography', '_cffi_backend', 'mailctl.knowledge.smtp', 'tempfile') if m in sys.modules)
sys.stderr.write('PROBE=' + json.dumps({'mods': mods, 'threads': names, 'code': code}) + '\\n')
"""


# site as usual, but without a .pth that imports certifi (and so tempfile) in every interpreter,
# as some sandboxes have: what mailctl itself loads is what is checked
NO_CERTIFI_PTH = """
import site
_add = site.addpackage
site.addpackage = lambda d, name, known: known if name == '_sandboxing_egress_ca.pth' else _add(d, name, known)
site.main()
"""


def _run(args: list[str], env: dict) -> tuple[subprocess.CompletedProcess, dict]:
    cmd = [sys.executable, "-S", "-c", NO_CERTIFI_PTH + PROBE, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    line = [x for x in proc.stderr.splitlines() if x.startswith("PROBE=")]
    assert line, proc.stdout + proc.stderr
    return proc, json.loads(line[0][6:])


def test_one_shot_commands_load_what_they_need(pki, isolated_env):
    leaf = x509.load_pem_x509_certificate(pki.good.cert_chain_pems[0].bytes())
    pin = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
    with smtp_server(cert=pki.good) as srv:
        common = {"type": "smtp", "host": "localhost", "port": srv.port, "security": "starttls", "auth": "password",
                  "username": USER, "from_address": USER, "timeout": 10}
        write_profiles(isolated_env, {"ca": {**common, "ca_file": str(pki.ca_file)}, "pin": {**common, "tls_fingerprint": pin}})
        env = dict(os.environ, MAILCTL_SECRET_CA_PASSWORD=PASSWORD, MAILCTL_SECRET_PIN_PASSWORD=PASSWORD,
                   MAILCTL_OUTBOX=str(isolated_env / "outbox.sqlite3"))
        msg = ["--to", "bob@example.org", "--subject", "startup"]
        for name in ("ca", "pin"):
            proc, seen = _run(["test", "send", name, *msg], env)
            assert seen["code"] in (0, None), proc.stdout + proc.stderr
            assert "subject:" in proc.stdout and "trustme" in proc.stdout  # the certificate is still shown
            assert seen["mods"] == [], f"`mailctl test send {name}` imported {seen['mods']}"
            assert seen["threads"] == (["mailctl-tls-context"] if name == "ca" else [])
            proc, seen = _run(["send", name, *msg, "--body", "hi"], env)
            assert seen["code"] in (0, None) and "Sent via" in proc.stderr, proc.stdout + proc.stderr
            assert seen["mods"] == [] and seen["threads"] == (["mailctl-tls-context"] if name == "ca" else [])
        proc, seen = _run(["send", "ca", *msg, "--body", "later", "--queue"], env)
        assert seen["code"] in (0, None) and seen["threads"] == []  # nothing will connect: nothing built ahead
        assert len(srv.messages) == 4


# --- the end of the process -----------------------------------------------------------------
EXIT = """
import atexit, gc, sys
from mailctl.cli import main
atexit.register(lambda: print('atexit ran, frozen', gc.get_freeze_count() > 0))
sys.argv = ['mailctl', 'profile', 'list']
if sys.argv[0] and %r:
    main()
else:
    main(['profile', 'list'])
"""


@pytest.mark.parametrize("as_program", [True, False])
def test_the_program_skips_the_final_collections_and_nothing_else(as_program, isolated_env):
    (isolated_env / "profiles.toml").write_text('schema_version = 1\n[profiles.a]\nhost = "a.example"\n')
    proc = subprocess.run([sys.executable, "-c", EXIT % as_program], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "a.example" in proc.stdout  # the command's output, flushed
    # main() of the program freezes what exists before the interpreter's shutdown (its final
    # garbage collections then skip it); atexit handlers run as before. main([...]), a caller's,
    # changes nothing.
    assert proc.stdout.rstrip().endswith(f"atexit ran, frozen {as_program}")


# --- $SSL_CERT_FILE next to a hashed directory that already holds its certificates --------------
def _hashed_dir(tmp_path: Path, pems: list[bytes]) -> Path:
    """A directory like Debian's /etc/ssl/certs: each CA under its subject-hash name."""
    d = tmp_path / "certs"
    d.mkdir()
    for i, pem in enumerate(pems):
        f = tmp_path / f"ca{i}.pem"
        f.write_bytes(pem)
        name = subprocess.run(["openssl", "x509", "-noout", "-subject_hash", "-in", str(f)],
                              capture_output=True, text=True, check=True).stdout.strip()
        (d / f"{name}.0").write_bytes(pem)
    return d


def _verifies(ctx: ssl.SSLContext, port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                return True
    except ssl.SSLCertVerificationError:
        return False


def test_a_bundle_the_hashed_directory_holds_is_read_from_the_directory(pki, tmp_path, monkeypatch):
    import trustme

    monkeypatch.setattr(tls, "_contexts", {})
    other = trustme.CA()  # in the directory too
    outsider = trustme.CA()  # only ever in a bundle
    ca, second, third = pki.ca.cert_pem.bytes(), other.cert_pem.bytes(), outsider.cert_pem.bytes()
    capath = str(_hashed_dir(tmp_path, [ca, second]))
    monkeypatch.setenv("SSL_CERT_DIR", capath)
    bundle = tmp_path / "bundle.crt"  # the directory's certificates again, as update-ca-certificates writes them
    bundle.write_bytes(second + b"\n" + ca)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    with smtp_server(security="tls", cert=pki.good) as good, \
            smtp_server(security="tls", cert=outsider.issue_cert("localhost", "127.0.0.1")) as stranger:
        ctx, mode = tls.socket_context({}, "p")
        assert mode == "system" and ctx.cert_store_stats()["x509_ca"] == 0  # nothing parsed up front
        assert _verifies(ctx, good.port)  # looked up in the directory during the handshake
        assert not _verifies(ctx, stranger.port)
        # the bundle holds a CA the directory does not: OpenSSL's own load of file + directory
        bundle.write_bytes(ca + b"\n" + third)
        monkeypatch.setattr(tls, "_contexts", {})  # (contexts are cached by the variable, not the file's contents)
        full, _ = tls.socket_context({}, "p")
        assert full.cert_store_stats()["x509_ca"] == 2 and _verifies(full, stranger.port) and _verifies(full, good.port)
    for odd in (b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", b"-----BEGIN CERTIFICATE-----\nAAAA\n",
                b"-----BEGIN TRUSTED CERTIFICATE-----\nAAAA\n-----END TRUSTED CERTIFICATE-----\n"):
        bundle.write_bytes(ca + b"\n" + odd)  # not only certificates the directory holds: OpenSSL's load decides
        assert not tls._bundle_in_dir(str(bundle), capath)
    bundle.write_bytes(ca)
    assert tls._bundle_in_dir(str(bundle), capath)
    assert not tls._bundle_in_dir(str(tmp_path / "missing.crt"), capath)
