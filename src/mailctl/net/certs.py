"""Certificates as diagnostics show them: the peer's chain off a TLS socket, a DER
certificate described (subject, SAN, issuer, validity, key, signature, SHA-256), and why a
chain was refused, as facts (CertificateProblem: the names it is valid for and the name used,
the dates, the issuer and whether a ca_file signed it, a weak key or signature). The words
for those facts are mailctl.knowledge.tls's. cryptography is imported only when a
certificate is described in a way the small DER reader here does not cover (it reads the
common certificates, RSA or NIST-curve EC keys with the usual signatures, by itself: importing
cryptography costs a one-shot `mailctl test` about 35 ms)."""

from __future__ import annotations

import hashlib
import ipaddress
import ssl
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


def describe_certificate(der: bytes, *, now: datetime | None = None) -> dict[str, Any]:
    """Subject, SAN, issuer, validity (with days left) and SHA-256 fingerprint of a DER cert."""
    now = now or datetime.now(timezone.utc)
    try:
        facts = _der_facts(der)
    except Exception:  # not one the DER reader covers (or malformed): cryptography says what it is
        facts = _cryptography_facts(der)
    san, not_before, not_after = facts["san"], facts["not_before"], facts["not_after"]
    digest = hashlib.sha256(der).hexdigest().upper()
    return {
        "subject": facts["subject"],
        "san": san,
        "names": [n.split(":", 1)[1] for n in san] or facts["common_names"],
        "issuer": facts["issuer"],
        "self_signed": facts["self_signed"],
        "serial": facts["serial"],
        "not_before": not_before.isoformat(),
        "not_after": not_after.isoformat(),
        "days_left": (not_after - now).days,
        "expired": not_after < now,
        "not_yet_valid": not_before > now,
        "key": facts["key"],
        "key_bits": facts["key_bits"],
        "signature_hash": facts["signature_hash"],
        "sha256": ":".join(digest[i:i + 2] for i in range(0, len(digest), 2)),
    }


def _cryptography_facts(der: bytes) -> dict[str, Any]:
    """What describe_certificate() shows, as cryptography reads it (the reference _der_facts matches)."""
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID

    cert = x509.load_der_x509_certificate(der)
    try:
        san_ext = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        san = [f"DNS:{n}" for n in san_ext.get_values_for_type(x509.DNSName)] + [
            f"IP:{ip}" for ip in san_ext.get_values_for_type(x509.IPAddress)
        ]
    except x509.ExtensionNotFound:
        san = []
    key_type, key_bits = _key_of(cert)
    hash_alg = cert.signature_hash_algorithm
    return {"subject": cert.subject.rfc4514_string(), "san": san, "common_names": _common_names(cert),
            "issuer": cert.issuer.rfc4514_string(), "self_signed": cert.subject == cert.issuer,
            "serial": format(cert.serial_number, "X"), "not_before": cert.not_valid_before_utc,
            "not_after": cert.not_valid_after_utc, "key": key_type, "key_bits": key_bits,
            "signature_hash": hash_alg.name if hash_alg is not None else None}


# --- a small DER reader for the common certificates (anything else: _Unsupported) ----------
class _Unsupported(Exception):
    """Not a certificate _der_facts reads: cryptography describes it."""


_NAME_KEYS = {"2.5.4.3": "CN", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.6": "C",
              "2.5.4.9": "STREET", "0.9.2342.19200300.100.1.25": "DC", "0.9.2342.19200300.100.1.1": "UID"}
_STRING_TAGS = {0x0C: "utf-8", 0x13: "ascii", 0x16: "ascii"}  # UTF8String, PrintableString, IA5String
_SIGNATURE_HASHES = {  # signatureAlgorithm -> its hash, as cryptography names it
    "1.2.840.113549.1.1.4": "md5", "1.2.840.113549.1.1.5": "sha1", "1.2.840.113549.1.1.14": "sha224",
    "1.2.840.113549.1.1.11": "sha256", "1.2.840.113549.1.1.12": "sha384", "1.2.840.113549.1.1.13": "sha512",
    "1.2.840.10045.4.1": "sha1", "1.2.840.10045.4.3.1": "sha224", "1.2.840.10045.4.3.2": "sha256",
    "1.2.840.10045.4.3.3": "sha384", "1.2.840.10045.4.3.4": "sha512",
}
_CURVES = {"1.2.840.10045.3.1.7": ("secp256r1", 256), "1.3.132.0.34": ("secp384r1", 384),
           "1.3.132.0.35": ("secp521r1", 521)}
_RSA, _EC, _SAN = "1.2.840.113549.1.1.1", "1.2.840.10045.2.1", "2.5.29.17"


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of the value, its end) of the DER element at pos."""
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise _Unsupported("high tag number")
    size, pos = data[pos + 1], pos + 2
    if size & 0x80:
        count = size & 0x7F
        if not 1 <= count <= 4 or pos + count > end:
            raise _Unsupported("length")
        size, pos = int.from_bytes(data[pos:pos + count], "big"), pos + count
    if pos + size > end:
        raise _Unsupported("truncated")
    return tag, pos, pos + size


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        tag, vstart, vend = _tlv(data, start, end)
        out.append((tag, vstart, vend))
        start = vend
    return out


def _expect(element: tuple[int, int, int], tag: int) -> tuple[int, int, int]:
    if element[0] != tag:
        raise _Unsupported(f"tag {element[0]:#x}, not {tag:#x}")
    return element


def _oid(data: bytes) -> str:
    parts, value = [], 0
    for byte in data:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    first = min(parts[0] // 40, 2)
    return ".".join(str(p) for p in [first, parts[0] - 40 * first, *parts[1:]])


def _name(data: bytes, start: int, end: int) -> list[list[tuple[str, str]]]:
    """Name -> its RDNs, each a list of (OID, text value)."""
    rdns = []
    for rdn in _children(data, start, end):
        attributes = []
        for attribute in _children(data, *_expect(rdn, 0x31)[1:]):
            oid, value = _children(data, *_expect(attribute, 0x30)[1:])
            codec = _STRING_TAGS.get(value[0])
            if codec is None:
                raise _Unsupported("string type")
            attributes.append((_oid(data[slice(*_expect(oid, 0x06)[1:])]), data[value[1]:value[2]].decode(codec)))
        rdns.append(attributes)
    return rdns


def _escape(value: str) -> str:
    """An attribute value as RFC 4514 (and cryptography's rfc4514_string()) writes it."""
    if not value:
        return ""
    for char in ("\\", '"', "+", ",", ";", "<", ">"):
        value = value.replace(char, "\\" + char)
    value = value.replace("\0", "\\00")
    if value[0] == "#" or (value[0] == " " and len(value) > 1):
        value = "\\" + value
    if value[-1] == " ":
        value = value[:-1] + "\\ "
    return value


def _rfc4514(rdns: list[list[tuple[str, str]]]) -> str:
    return ",".join("+".join(f"{_NAME_KEYS.get(oid, oid)}={_escape(v)}" for oid, v in rdn) for rdn in reversed(rdns))


def _time(data: bytes, element: tuple[int, int, int]) -> datetime:
    text = data[element[1]:element[2]].decode("ascii")
    if element[0] == 0x17 and len(text) == 13 and text[:12].isdigit() and text[12] == "Z":  # UTCTime
        year = int(text[:2])
        text = ("19" if year >= 50 else "20") + text
    elif not (element[0] == 0x18 and len(text) == 15 and text[:14].isdigit() and text[14] == "Z"):
        raise _Unsupported("time")
    fields = [int(text[i:i + 2]) for i in range(4, 14, 2)]
    return datetime(int(text[:4]), *fields, tzinfo=timezone.utc)  # not strptime: it imports _strptime, locale


def _key(data: bytes, start: int, end: int) -> tuple[str, int]:
    algorithm, bits = _children(data, start, end)
    params = _children(data, *_expect(algorithm, 0x30)[1:])
    kind = _oid(data[slice(*_expect(params[0], 0x06)[1:])])
    _expect(bits, 0x03)
    if kind == _RSA:
        if data[bits[1]] != 0:
            raise _Unsupported("unused bits")
        modulus = _children(data, *_expect(_tlv(data, bits[1] + 1, bits[2]), 0x30)[1:])[0]
        number = int.from_bytes(data[slice(*_expect(modulus, 0x02)[1:])], "big")
        return "RSA", number.bit_length()
    if kind == _EC and len(params) == 2 and params[1][0] == 0x06:
        curve = _CURVES.get(_oid(data[params[1][1]:params[1][2]]))
        if curve is not None:
            return f"EC {curve[0]}", curve[1]
    raise _Unsupported("key type")


def _san(data: bytes, start: int, end: int) -> list[str]:
    dns, ips = [], []
    for tag, vstart, vend in _children(data, *_expect(_tlv(data, start, end), 0x30)[1:]):
        if tag == 0x82:  # dNSName
            dns.append("DNS:" + data[vstart:vend].decode("ascii"))
        elif tag == 0x87:  # iPAddress
            if vend - vstart not in (4, 16):
                raise _Unsupported("IP address length")
            ips.append(f"IP:{ipaddress.ip_address(data[vstart:vend])}")
    return dns + ips


def _der_facts(der: bytes) -> dict[str, Any]:
    """What describe_certificate() shows, read from the DER by this module (RFC 5280: version 1
    or 3; RSA or P-256/384/521 keys; RSA/ECDSA signatures with SHA-1/2 or MD5; UTF8, Printable
    and IA5 strings in names); _Unsupported otherwise."""
    outer = _expect(_tlv(der, 0, len(der)), 0x30)
    if outer[2] != len(der):
        raise _Unsupported("data after the certificate")
    tbs, signature_algorithm, _signature = _children(der, *outer[1:])
    fields = _children(der, *_expect(tbs, 0x30)[1:])
    if fields[0][0] == 0xA0:
        version = _children(der, fields[0][1], fields[0][2])[0]
        if der[version[1]:version[2]] not in (b"\x00", b"\x02"):
            raise _Unsupported("version")
        fields = fields[1:]
    serial, _inner_signature, issuer, validity, subject, spki, *rest = fields
    serial_bytes = der[slice(*_expect(serial, 0x02)[1:])]
    if not serial_bytes or serial_bytes[0] & 0x80:
        raise _Unsupported("negative serial")
    algorithm = _children(der, *_expect(signature_algorithm, 0x30)[1:])[0]
    hash_name = _SIGNATURE_HASHES.get(_oid(der[slice(*_expect(algorithm, 0x06)[1:])]))
    if hash_name is None:
        raise _Unsupported("signature algorithm")
    not_before, not_after = (_time(der, t) for t in _children(der, *_expect(validity, 0x30)[1:]))
    subject_rdns, issuer_rdns = _name(der, *_expect(subject, 0x30)[1:]), _name(der, *_expect(issuer, 0x30)[1:])
    san: list[str] = []
    extensions = [e for e in rest if e[0] == 0xA3]
    seen = set()
    for extension in _children(der, *_expect(_tlv(der, extensions[0][1], extensions[0][2]), 0x30)[1:]) if extensions else []:
        parts = _children(der, *_expect(extension, 0x30)[1:])
        oid = _oid(der[slice(*_expect(parts[0], 0x06)[1:])])
        if oid in seen:
            raise _Unsupported("duplicate extension")
        seen.add(oid)
        if oid == _SAN:
            san = _san(der, *_expect(parts[-1], 0x04)[1:])
    key_type, key_bits = _key(der, *_expect(spki, 0x30)[1:])
    return {"subject": _rfc4514(subject_rdns), "san": san,
            "common_names": [v for rdn in subject_rdns for oid, v in rdn if oid == "2.5.4.3"],
            "issuer": _rfc4514(issuer_rdns),
            "self_signed": [set(r) for r in subject_rdns] == [set(r) for r in issuer_rdns],
            "serial": format(int.from_bytes(serial_bytes, "big"), "X"), "not_before": not_before,
            "not_after": not_after, "key": key_type, "key_bits": key_bits, "signature_hash": hash_name}


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
