"""Certificates as diagnostics show them: the peer's chain off a TLS socket, a DER
certificate described (subject, SAN, issuer, validity, key, signature, SHA-256), and why a
chain was refused, as facts (CertificateProblem: the names it is valid for and the name used,
the dates, the issuer and whether a ca_file signed it, a weak key or signature). The words
for those facts are mailctl.knowledge.tls's. cryptography is imported only when a
certificate is described."""

from __future__ import annotations

import hashlib
import ipaddress
import ssl
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


def describe_certificate(der: bytes, *, now: datetime | None = None) -> dict[str, Any]:
    """Subject, SAN, issuer, validity (with days left) and SHA-256 fingerprint of a DER cert."""
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID

    now = now or datetime.now(timezone.utc)
    cert = x509.load_der_x509_certificate(der)
    try:
        san_ext = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        san = [f"DNS:{n}" for n in san_ext.get_values_for_type(x509.DNSName)] + [
            f"IP:{ip}" for ip in san_ext.get_values_for_type(x509.IPAddress)
        ]
    except x509.ExtensionNotFound:
        san = []
    not_after = cert.not_valid_after_utc
    not_before = cert.not_valid_before_utc
    digest = hashlib.sha256(der).hexdigest().upper()
    key_type, key_bits = _key_of(cert)
    hash_alg = cert.signature_hash_algorithm
    return {
        "subject": cert.subject.rfc4514_string(),
        "san": san,
        "names": [n.split(":", 1)[1] for n in san] or _common_names(cert),
        "issuer": cert.issuer.rfc4514_string(),
        "self_signed": cert.subject == cert.issuer,
        "serial": format(cert.serial_number, "X"),
        "not_before": not_before.isoformat(),
        "not_after": not_after.isoformat(),
        "days_left": (not_after - now).days,
        "expired": not_after < now,
        "not_yet_valid": not_before > now,
        "key": key_type,
        "key_bits": key_bits,
        "signature_hash": hash_alg.name if hash_alg is not None else None,
        "sha256": ":".join(digest[i:i + 2] for i in range(0, len(digest), 2)),
    }


def _common_names(cert) -> list[str]:
    """The subject's CN values: what a certificate without a SAN names (clients no longer
    match them, but they say what the certificate was meant for)."""
    from cryptography.x509.oid import NameOID

    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def _key_of(cert) -> tuple[str, int | None]:
    """('RSA', 2048), ('EC secp256r1', 256), ('Ed25519', None)..."""
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa

    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}", key.curve.key_size
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size
    return type(key).__name__.removesuffix("PublicKey").lstrip("_"), None


def name_matches(pattern: str, host: str) -> bool:
    """Whether a certificate name (DNS name, possibly '*.example.com', or an IP address)
    covers `host` as TLS clients match it (RFC 6125: a wildcard is the whole left-most label
    and stands for exactly one label)."""
    host = host.rstrip(".").lower()
    pattern = pattern.rstrip(".").lower()
    try:
        return ipaddress.ip_address(host) == ipaddress.ip_address(pattern)
    except ValueError:
        pass
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


# OpenSSL's X509_V_ERR_* codes that mailctl tells apart (ssl.SSLCertVerificationError.verify_code)
UNKNOWN_ISSUER_CODES = (2, 20, 21)  # unable to get (local) issuer certificate, cannot verify the leaf
SELF_SIGNED_CODES = (18, 19)  # the leaf, or a CA in the chain, is self-signed and not trusted
NOT_YET_VALID, EXPIRED = 9, 10
NAME_MISMATCH_CODES = (62, 64)  # host name, IP address
WEAK_KEY_CODES = (66, 67)  # EE / CA key too small
WEAK_SIGNATURE_CODES = (68,)  # CA signature digest too weak (SHA-1, MD5)


@dataclass
class CertificateProblem:
    """Why a certificate was refused, as facts. kind: name-mismatch, expired, not-yet-valid,
    unknown-issuer, self-signed, ca-file-did-not-sign, weak-key, weak-signature, or other
    (the verify message says it). also: further kinds the certificate has besides the one
    OpenSSL reported first (an expired certificate for another name: both)."""

    kind: str
    host: str
    verify_message: str = ""
    leaf: dict[str, Any] = field(default_factory=dict)  # describe_certificate() of the server's certificate
    issuer: str = ""  # the issuer of the top of the chain that was sent
    ca_file: str = ""
    ca_file_subjects: list[str] = field(default_factory=list)
    now: str = ""
    also: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "host": self.host, "verify_message": self.verify_message,
                "names": list(self.leaf.get("names", [])), "issuer": self.issuer, "ca_file": self.ca_file or None,
                "ca_file_subjects": self.ca_file_subjects, "not_before": self.leaf.get("not_before"),
                "not_after": self.leaf.get("not_after"), "now": self.now, "also": self.also,
                "key": self.leaf.get("key"), "key_bits": self.leaf.get("key_bits"),
                "signature_hash": self.leaf.get("signature_hash")}


def certificate_problem(verify_code: int | None, verify_message: str, chain: list[bytes], host: str, *,
                        ca_file: str = "", now: datetime | None = None) -> CertificateProblem:
    """Turn OpenSSL's verify code and the chain the server sent (fetched without verifying)
    into facts: the exact names, dates, issuer and ca_file involved."""
    now = now or datetime.now(timezone.utc)
    described = [describe_certificate(der, now=now) for der in chain]
    leaf = described[0] if described else {}
    top = described[-1] if described else {}
    problem = CertificateProblem("other", host, verify_message or "", leaf, issuer=top.get("issuer", ""),
                                 ca_file=ca_file, now=now.isoformat(timespec="seconds"))
    if ca_file:
        problem.ca_file_subjects = ca_file_subjects(ca_file)
    code = verify_code or 0
    if code in NAME_MISMATCH_CODES:
        problem.kind = "name-mismatch"
    elif code == EXPIRED:
        problem.kind = "expired"
    elif code == NOT_YET_VALID:
        problem.kind = "not-yet-valid"
    elif code in WEAK_KEY_CODES:
        problem.kind = "weak-key"
    elif code in WEAK_SIGNATURE_CODES:
        problem.kind = "weak-signature"
    elif code in SELF_SIGNED_CODES + UNKNOWN_ISSUER_CODES:
        if ca_file:
            problem.kind = "ca-file-did-not-sign"
        else:
            problem.kind = "self-signed" if code in SELF_SIGNED_CODES and len(chain) <= 1 else "unknown-issuer"
    if leaf:
        names = leaf.get("names", [])
        if problem.kind != "name-mismatch" and host and names and not any(name_matches(n, host) for n in names):
            problem.also.append("name-mismatch")
        if problem.kind != "expired" and leaf.get("expired"):
            problem.also.append("expired")
    return problem


def ca_file_subjects(path: str) -> list[str]:
    """The subjects of the certificates in a PEM ca_file ([] when it cannot be read)."""
    import os

    from cryptography import x509

    try:
        with open(os.path.expanduser(path), "rb") as fh:
            certs = x509.load_pem_x509_certificates(fh.read())
    except (OSError, ValueError):
        return []
    return [c.subject.rfc4514_string() for c in certs]


def peer_chain(sock) -> list[bytes]:
    """DER certificates of the peer: the chain where the ssl module exposes it, else the leaf."""
    sslobj = getattr(sock, "_sslobj", None)
    for name in ("get_verified_chain", "get_unverified_chain"):
        getter = getattr(sslobj, name, None)
        if getter is not None:
            try:
                chain = getter()
                if chain:
                    out = []
                    for cert in chain:
                        data = cert.public_bytes() if hasattr(cert, "public_bytes") else cert
                        out.append(ssl.PEM_cert_to_DER_cert(data) if isinstance(data, str) else data)
                    return out
            except Exception:  # pragma: no cover - best effort
                pass
    der = sock.getpeercert(binary_form=True)
    return [der] if der else []
