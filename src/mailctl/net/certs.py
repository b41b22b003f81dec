"""Certificates as diagnostics show them: the peer's chain off a TLS socket, and a DER
certificate described (subject, SAN, issuer, validity, SHA-256). cryptography is imported
only when a certificate is described."""

from __future__ import annotations

import hashlib
import ssl
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
    return {
        "subject": cert.subject.rfc4514_string(),
        "san": san,
        "issuer": cert.issuer.rfc4514_string(),
        "self_signed": cert.subject == cert.issuer,
        "serial": format(cert.serial_number, "X"),
        "not_before": not_before.isoformat(),
        "not_after": not_after.isoformat(),
        "days_left": (not_after - now).days,
        "expired": not_after < now,
        "sha256": ":".join(digest[i:i + 2] for i in range(0, len(digest), 2)),
    }


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
