"""Certificates as diagnostics show them: the peer's chain off a TLS socket, a DER
certificate described (subject, SAN, issuer, validity, key, signature, SHA-256), and why a
chain was refused, as facts (CertificateProblem: the names it is valid for and the name used,
the dates, the issuer and whether a ca_file signed it, a weak key or signature). The words
for those facts are mailctl.knowledge.tls's. cryptography is imported only when a
certificate is described in a way the small DER reader here does not cover (it reads the
common certificates, RSA or NIST-curve EC keys with the usual signatures, by itself: importing
cryptography costs a one-shot `mailctl test` about 35 ms). The reader is strict: what is not
DER, or not a certificate cryptography accepts, goes to cryptography too, which refuses it
(tests/test_cert_der_reader.py compares the two on thousands of mutated certificates)."""

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


def describe_shown(der: bytes, *, now: datetime | None = None) -> dict[str, Any]:
    """describe_certificate() of a certificate a peer showed, which OpenSSL took but which may
    still be one cryptography cannot read (a sloppy private CA's: a SAN that is not IA5 text,
    a bad extension): then what is certain, its SHA-256 fingerprint, and why it cannot be read
    (`unreadable`), every other fact None; a diagnosis shows that instead of failing."""
    try:
        return describe_certificate(der, now=now)
    except Exception as exc:  # noqa: BLE001 (cryptography's ValueError, or its extension errors)
        digest = hashlib.sha256(der).hexdigest().upper()
        return {"subject": None, "san": [], "names": [], "issuer": None, "self_signed": None, "serial": None,
                "not_before": None, "not_after": None, "days_left": None, "expired": None, "not_yet_valid": None,
                "key": None, "key_bits": None, "signature_hash": None,
                "sha256": ":".join(digest[i:i + 2] for i in range(0, len(digest), 2)),
                "unreadable": " ".join(str(exc).split())[:300] or type(exc).__name__}


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


# --- a small, strict DER reader for the common certificates -------------------------------
class _Unsupported(Exception):
    """Not a certificate _der_facts reads: cryptography describes it (or says why it cannot)."""


class _Malformed(_Unsupported):
    """Not well-formed DER, or not a certificate as cryptography accepts one: cryptography
    rejects it too (describe_certificate() then raises cryptography's error)."""


_NAME_KEYS = {"2.5.4.3": "CN", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.6": "C",
              "2.5.4.9": "STREET", "0.9.2342.19200300.100.1.25": "DC", "0.9.2342.19200300.100.1.1": "UID"}
# UTF8String, PrintableString, IA5String in names (cryptography reads an IA5String there as UTF-8)
_STRING_TAGS = {0x0C: "utf-8", 0x13: "ascii", 0x16: "utf-8"}
_PRINTABLE = b" '()+,-./0123456789:=?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # X.680 41.4
_SIGNATURE_HASHES = {  # signatureAlgorithm -> its hash, as cryptography names it
    "1.2.840.113549.1.1.4": "md5", "1.2.840.113549.1.1.5": "sha1", "1.2.840.113549.1.1.14": "sha224",
    "1.2.840.113549.1.1.11": "sha256", "1.2.840.113549.1.1.12": "sha384", "1.2.840.113549.1.1.13": "sha512",
    "1.2.840.10045.4.1": "sha1", "1.2.840.10045.4.3.1": "sha224", "1.2.840.10045.4.3.2": "sha256",
    "1.2.840.10045.4.3.3": "sha384", "1.2.840.10045.4.3.4": "sha512",
}
_CURVES = {  # OID -> (name, bits, p, a, b): a point must be on its curve for cryptography to load the key
    "1.2.840.10045.3.1.7": ("secp256r1", 256, 2**256 - 2**224 + 2**192 + 2**96 - 1, -3,
                            0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B),
    "1.3.132.0.34": ("secp384r1", 384, 2**384 - 2**128 - 2**96 + 2**32 - 1, -3,
                     0xB3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875AC656398D8A2ED19D2A85C8EDD3EC2AEF),
    "1.3.132.0.35": ("secp521r1", 521, 2**521 - 1, -3,
                     int("51953EB9618E1C9A1F929A21A0B68540EEA2DA725B99B315F3B8B489918EF109E156193951EC7E937B1"
                         "652C0BD3BB1BF073573DF883D2C34F1EF451FD46B503F00", 16)),
}
_RSA, _EC, _SAN = "1.2.840.113549.1.1.1", "1.2.840.10045.2.1", "2.5.29.17"
_Element = tuple[int, int, int]  # (tag, start of the value, its end) in the certificate's bytes


def _tlv(data: bytes, pos: int, end: int) -> _Element:
    """The DER element at pos (which must end by `end`): definite, minimal lengths only."""
    if pos + 2 > end:
        raise _Malformed("truncated")
    tag, size = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise _Unsupported("high tag number")  # no certificate field has one
    pos += 2
    if size & 0x80:
        count = size & 0x7F
        if not 1 <= count <= 4 or pos + count > end or data[pos] == 0:
            raise _Malformed("length")  # indefinite, too long, or not minimal
        size, pos = int.from_bytes(data[pos:pos + count], "big"), pos + count
        if size < 0x80:
            raise _Malformed("length not minimal")
    if pos + size > end:
        raise _Malformed("truncated")
    return tag, pos, pos + size


def _children(data: bytes, start: int, end: int) -> list[_Element]:
    """The elements that exactly fill data[start:end]."""
    out = []
    while start < end:
        if start + 2 <= end and data[start + 1] < 0x80 and data[start] & 0x1F != 0x1F:  # the usual: _tlv inlined
            stop = start + 2 + data[start + 1]
            if stop <= end:
                out.append((data[start], start + 2, stop))
                start = stop
                continue
        element = _tlv(data, start, end)
        out.append(element)
        start = element[2]
    return out


def _expect(element: _Element, tag: int) -> _Element:
    if element[0] != tag:
        raise _Malformed(f"tag {element[0]:#x}, not {tag:#x}")
    return element


def _inside(data: bytes, element: _Element, tag: int, count: tuple[int, int] | None = None) -> list[_Element]:
    """The children of a constructed element of this tag (count: their allowed min, max)."""
    if element[0] != tag:
        raise _Malformed(f"tag {element[0]:#x}, not {tag:#x}")
    parts = _children(data, element[1], element[2])
    if count is not None and not count[0] <= len(parts) <= count[1]:
        raise _Malformed("elements")
    return parts


def _one(data: bytes, start: int, end: int, tag: int) -> _Element:
    """The single element of this tag that fills data[start:end] (an OCTET STRING's DER)."""
    parts = _children(data, start, end)
    if len(parts) != 1:
        raise _Malformed("not one element")
    return _expect(parts[0], tag)


def _integer(data: bytes, element: _Element, tag: int = 0x02) -> int:
    raw = data[_expect(element, tag)[1]:element[2]]
    if not raw or (len(raw) > 1 and (raw[0], raw[1] & 0x80) in ((0, 0), (0xFF, 0x80))):
        raise _Malformed("integer")
    return int.from_bytes(raw, "big", signed=True)


def _oid(data: bytes, element: _Element, tag: int = 0x06) -> str:
    raw = data[_expect(element, tag)[1]:element[2]]
    text = _OIDS.get(raw)
    if text is None:  # a certificate repeats a few dozen OIDs: decode each once
        text = _decode_oid(raw)
        if len(_OIDS) < 4096:
            _OIDS[raw] = text
    return text


_OIDS: dict[bytes, str] = {}


def _decode_oid(raw: bytes) -> str:
    """An OID's dotted text (every arc minimal, the last one ended)."""
    if not raw or raw[-1] & 0x80:
        raise _Malformed("OID")
    if len(raw) > 63:
        raise _Unsupported("long OID")
    parts, value, fresh = [], 0, True
    for byte in raw:
        if fresh and byte == 0x80:
            raise _Malformed("OID arc not minimal")
        value = (value << 7) | (byte & 0x7F)
        fresh = not byte & 0x80
        if fresh:
            parts.append(value)
            value = 0
    first = min(parts[0] // 40, 2)
    return ".".join(str(p) for p in [first, parts[0] - 40 * first, *parts[1:]])


def _boolean_true(data: bytes, element: _Element) -> bool:
    """A DER BOOLEAN that has a DEFAULT FALSE: present, it can only be TRUE (0xFF)."""
    if data[_expect(element, 0x01)[1]:element[2]] != b"\xff":
        raise _Malformed("boolean")
    return True


def _bits(data: bytes, element: _Element, tag: int = 0x03) -> bytes:
    """A BIT STRING's bytes (unused bits at most 7, and zero)."""
    raw = data[_expect(element, tag)[1]:element[2]]
    if not raw or raw[0] > 7 or (len(raw) == 1 and raw[0]) or (len(raw) > 1 and raw[-1] & ((1 << raw[0]) - 1)):
        raise _Malformed("bit string")
    return raw[1:]


def _text(data: bytes, element: _Element, codec: str = "ascii") -> str:
    try:
        return data[element[1]:element[2]].decode(codec)
    except UnicodeDecodeError:
        raise _Malformed("string") from None


def _any(data: bytes, element: _Element) -> None:
    """A value of any type (otherName's, a policy qualifier's): well-formed DER all the way down."""
    if element[0] & 0x20:
        for child in _children(data, element[1], element[2]):
            _any(data, child)


def _name(data: bytes, element: _Element) -> list[list[tuple[str, str]]]:
    """Name -> its RDNs, each a list of (OID, text value)."""
    rdns = []
    for rdn in _inside(data, element, 0x30):
        attributes, begin, previous = [], rdn[1], b""
        for attribute in _inside(data, rdn, 0x31, (1, 1 << 30)):
            encoded, begin = data[begin:attribute[2]], attribute[2]
            if encoded < previous:
                raise _Malformed("SET OF not in DER order")
            previous = encoded
            oid, value = _inside(data, attribute, 0x30, (2, 2))
            codec = _STRING_TAGS.get(value[0])
            if codec is None:
                raise _Unsupported("string type")
            if value[0] == 0x13 and data[value[1]:value[2]].translate(None, _PRINTABLE):
                raise _Malformed("not a PrintableString")
            attributes.append((_oid(data, oid), _text(data, value, codec)))
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


def _time(data: bytes, element: _Element) -> datetime:
    """UTCTime YYMMDDHHMMSSZ or GeneralizedTime YYYYMMDDHHMMSSZ, nothing else (RFC 5280 4.1.2.5)."""
    raw = data[element[1]:element[2]]
    if element[0] == 0x17 and len(raw) == 13 and raw[:12].isdigit() and raw[12:] == b"Z":
        year = int(raw[:2])
        raw = (b"19" if year >= 50 else b"20") + raw
    elif not (element[0] == 0x18 and len(raw) == 15 and raw[:14].isdigit() and raw[14:] == b"Z"):
        raise _Malformed("time")
    fields = [int(raw[i:i + 2]) for i in range(4, 14, 2)]
    try:
        return datetime(int(raw[:4]), *fields, tzinfo=timezone.utc)  # not strptime: it imports _strptime, locale
    except ValueError:
        raise _Malformed("time") from None


def _algorithm(data: bytes, element: _Element) -> str:
    """An AlgorithmIdentifier's OID (for these algorithms: no parameters, or NULL)."""
    parts = _inside(data, element, 0x30, (1, 2))
    if len(parts) == 2 and data[parts[1][1] - 2:parts[1][2]] != b"\x05\x00":
        raise _Unsupported("algorithm parameters")
    return _oid(data, parts[0])


def _key(data: bytes, element: _Element) -> tuple[str, int]:
    algorithm, bits = _inside(data, element, 0x30, (2, 2))
    params = _inside(data, algorithm, 0x30, (1, 2))
    kind = _oid(data, params[0])
    key = _bits(data, bits)
    if data[bits[1]] != 0:
        raise _Unsupported("key bits")
    start = bits[1] + 1
    if kind == _RSA:
        if len(params) == 2 and data[params[1][1] - 2:params[1][2]] != b"\x05\x00":
            raise _Malformed("RSA parameters")
        modulus, exponent = _inside(data, _one(data, start, bits[2], 0x30), 0x30, (2, 2))
        number, e = _integer(data, modulus), _integer(data, exponent)
        if number <= 0 or e <= 0:
            raise _Malformed("RSA key")
        if e < 3 or not e & 1 or not number & 1:
            raise _Unsupported("RSA key cryptography may refuse")
        return "RSA", number.bit_length()
    if kind == _EC and len(params) == 2 and params[1][0] == 0x06:
        curve = _CURVES.get(_oid(data, params[1]))
        if curve is not None:
            _on_curve(key, *curve[2:])
            return f"EC {curve[0]}", curve[1]
    raise _Unsupported("key type")


def _on_curve(point: bytes, p: int, a: int, b: int) -> None:
    """An EC point as OpenSSL loads it: uncompressed on the curve, or compressed with an x that has a y."""
    size = (p.bit_length() + 7) // 8
    if point[:1] == b"\x04" and len(point) == 1 + 2 * size:
        x, y = int.from_bytes(point[1:1 + size], "big"), int.from_bytes(point[1 + size:], "big")
        if x < p and y < p and (y * y - (x * x * x + a * x + b)) % p == 0:
            return
        raise _Malformed("EC point not on the curve")
    if point[:1] in (b"\x02", b"\x03") and len(point) == 1 + size:
        x = int.from_bytes(point[1:], "big")
        rhs = (x * x * x + a * x + b) % p
        if x < p and (rhs == 0 or pow(rhs, (p - 1) // 2, p) == 1):  # p = 3 mod 4 for these curves
            return
        raise _Malformed("EC point not on the curve")
    raise _Unsupported("EC point encoding")


def _general_name(data: bytes, name: _Element) -> str | None:
    """One GeneralName, checked as cryptography parses it: 'DNS:...', 'IP:...' or None (another kind)."""
    kind, start, end = name
    if kind == 0x82:  # dNSName
        return "DNS:" + _text(data, name)
    if kind == 0x87:  # iPAddress
        if end - start not in (4, 16):
            raise _Unsupported("IP address length")
        return f"IP:{ipaddress.ip_address(data[start:end])}"
    if kind in (0x81, 0x86):  # rfc822Name, URI
        _text(data, name)
    elif kind == 0x88:  # registeredID
        _oid(data, name, 0x88)
    elif kind == 0xA4:  # directoryName
        _name(data, _one(data, start, end, 0x30))
    elif kind == 0xA0:  # otherName: type-id, [0] EXPLICIT value
        oid, value = _inside(data, name, 0xA0, (2, 2))
        _oid(data, oid)
        _any(data, _single(data, _expect(value, 0xA0)))
    else:
        raise _Unsupported("general name")
    return None


def _general_names(data: bytes, element: _Element, tag: int = 0x30) -> list[str]:
    """GeneralNames -> its DNS names, then its IP addresses (as cryptography lists them)."""
    names = [_general_name(data, name) for name in _inside(data, element, tag)]  # empty: cryptography reads it
    return [n for n in names if n and n[0] == "D"] + [n for n in names if n and n[0] == "I"]


def _single(data: bytes, element: _Element) -> _Element:
    """The one element an EXPLICIT tag wraps."""
    inner = _children(data, element[1], element[2])
    if len(inner) != 1:
        raise _Malformed("explicit tag")
    return inner[0]


def _basic_constraints(data: bytes, element: _Element) -> None:
    parts = _inside(data, element, 0x30, (0, 2))
    ca = bool(parts) and parts[0][0] == 0x01 and _boolean_true(data, parts[0])
    rest = parts[1:] if ca else parts
    if len(rest) > 1 or (rest and (not ca or _integer(data, rest[0]) < 0)):
        raise _Malformed("basic constraints")  # a path length only for a CA, and not negative


def _key_usage(data: bytes, element: _Element) -> None:
    raw = _bits(data, element)
    if raw[1:2] and raw[1] & 0x80 or (raw[:1] and raw[0] & 0x01):  # encipher/decipher only
        if not (raw[:1] and raw[0] & 0x08):
            raise _Malformed("encipher_only/decipher_only without key_agreement")


def _tagged_fields(data: bytes, element: _Element, tags: tuple[int, ...], count: tuple[int, int],
                   what: str) -> dict[int, _Element]:
    """The optional [0], [1], [2]... fields of a SEQUENCE, by number: each of `tags` at most
    once and in order (DER), `count` (min, max) of them; anything else is malformed."""
    fields: dict[int, _Element] = {}
    last = -1
    for field_ in _inside(data, element, 0x30, count):
        number = tags.index(field_[0]) if field_[0] in tags else None
        if number is None or number <= last:
            raise _Malformed(what)
        fields[number], last = field_, number
    return fields


def _authority_key_id(data: bytes, element: _Element) -> None:
    fields = _tagged_fields(data, element, (0x80, 0xA1, 0x82), (0, 3), "authority key identifier")
    if (1 in fields) != (2 in fields):
        raise _Malformed("authority cert issuer and serial go together")
    if 1 in fields:
        _general_names(data, fields[1], 0xA1)
        if _integer(data, fields[2], 0x82) < 0:
            raise _Malformed("negative serial")


def _access(data: bytes, element: _Element) -> None:
    """Authority/Subject Information Access: SEQUENCE OF (method OID, GeneralName)."""
    for description in _inside(data, element, 0x30):
        method, location = _inside(data, description, 0x30, (2, 2))
        _oid(data, method)
        _general_name(data, location)


def _crl_points(data: bytes, element: _Element) -> None:
    """cRLDistributionPoints / freshestCRL: each point names where (full name) or who (CRL issuer)."""
    for point in _inside(data, element, 0x30):
        fields = _tagged_fields(data, point, (0xA0, 0x81, 0xA2), (1, 3), "distribution point")
        if 1 in fields:
            raise _Unsupported("reasons")
        named = False
        if 0 in fields:
            name = _single(data, fields[0])
            if name[0] == 0xA1:
                raise _Unsupported("relative name")
            _general_names(data, _expect(name, 0xA0), 0xA0)
            named = name[2] > name[1]
        if 2 in fields:
            _general_names(data, fields[2], 0xA2)
            named = named or fields[2][2] > fields[2][1]
        if not named:  # cryptography: "Either full_name, relative_name or crl_issuer must be provided."
            raise _Malformed("distribution point without a name")


def _policies(data: bytes, element: _Element) -> None:
    """certificatePolicies: policy OIDs, each with CPS URIs or user notices (RFC 5280 4.2.1.4)."""
    for policy in _inside(data, element, 0x30):
        parts = _inside(data, policy, 0x30, (1, 2))
        _oid(data, parts[0])
        for qualifier in _inside(data, parts[1], 0x30) if len(parts) == 2 else []:
            kind, value = _inside(data, qualifier, 0x30, (2, 2))
            oid = _oid(data, kind)
            if oid == "1.3.6.1.5.5.7.2.1" and value[0] == 0x16:  # CPS: an IA5String
                _text(data, value)
            elif oid == "1.3.6.1.5.5.7.2.2":
                _user_notice(data, value)
            else:
                raise _Unsupported("policy qualifier")


def _user_notice(data: bytes, element: _Element) -> None:
    parts = _inside(data, element, 0x30, (0, 2))
    if parts and parts[0][0] == 0x30:  # noticeRef: organization, noticeNumbers
        organization, numbers = _inside(data, parts[0], 0x30, (2, 2))
        _display_text(data, organization)
        if any(_integer(data, n) < 0 for n in _inside(data, numbers, 0x30)):
            raise _Unsupported("negative notice number")
        parts = parts[1:]
    if len(parts) > 1:
        raise _Malformed("user notice")
    for text in parts:
        _display_text(data, text)


def _display_text(data: bytes, element: _Element) -> None:
    """DisplayText: IA5String, VisibleString, BMPString or UTF8String."""
    if element[0] == 0x16:
        _text(data, element)
    elif element[0] == 0x0C:
        _text(data, element, "utf-8")
    elif element[0] == 0x1A:
        if data[element[1]:element[2]].translate(None, bytes(range(0x20, 0x7F))):
            raise _Malformed("not a VisibleString")
    elif element[0] == 0x1E:
        if (element[2] - element[1]) % 2:
            raise _Malformed("not a BMPString")
        _text(data, element, "utf-16-be")
    else:
        raise _Malformed("display text")


def _extended_key_usage(data: bytes, element: _Element) -> None:
    for usage in _inside(data, element, 0x30, (1, 1 << 30)):
        _oid(data, usage)


def _key_identifier(data: bytes, element: _Element) -> None:
    _expect(element, 0x04)


def _scts(data: bytes, element: _Element) -> None:
    """The embedded SCT list (RFC 6962 3.3: TLS-encoded, in an OCTET STRING) as cryptography
    reads it: each SCT version 0, its hash (1-6) and signature (1-3) algorithms known."""
    raw = data[_expect(element, 0x04)[1]:element[2]]
    end = 2 + int.from_bytes(raw[:2], "big")
    if len(raw) < 2 or end != len(raw):
        raise _Malformed("SCT list length")
    pos = 2
    while pos < end:
        stop = pos + 2 + int.from_bytes(raw[pos:pos + 2], "big")
        if pos + 2 > end or stop > end:
            raise _Malformed("SCT length")
        sct, pos = raw[pos + 2:stop], stop
        at = 43 + int.from_bytes(sct[41:43], "big")  # version, log id, timestamp, extensions
        if len(sct) < 43 or sct[0] != 0 or at + 4 > len(sct) or not (1 <= sct[at] <= 6 and 1 <= sct[at + 1] <= 3):
            raise _Malformed("SCT")
        if at + 4 + int.from_bytes(sct[at + 2:at + 4], "big") != len(sct):
            raise _Malformed("SCT signature length")


# extension OID -> the check of its value as cryptography parses it (the SAN: _general_names);
# an extension cryptography parses that is in neither is _Unsupported (_PARSED_BY_CRYPTOGRAPHY);
# any other extension cryptography keeps as bytes (UnrecognizedExtension), and so does this reader
_EXTENSIONS: dict[str, Any] = {
    "2.5.29.19": _basic_constraints, "2.5.29.15": _key_usage, "2.5.29.37": _extended_key_usage,
    "2.5.29.14": _key_identifier, "2.5.29.35": _authority_key_id,
    "2.5.29.18": _general_names, "1.3.6.1.5.5.7.1.1": _access, "1.3.6.1.5.5.7.1.11": _access,
    "2.5.29.31": _crl_points, "2.5.29.46": _crl_points, "2.5.29.32": _policies,
    "1.3.6.1.4.1.11129.2.4.2": _scts,
}
_PARSED_BY_CRYPTOGRAPHY = {  # x509.ExtensionOID's that cryptography reads the value of
    "1.3.36.8.3.3", "2.5.29.54", "1.3.6.1.4.1.311.21.7", "2.5.29.30", "1.3.6.1.5.5.7.48.1.5", "2.5.29.36",
    "1.3.6.1.4.1.11129.2.4.3", "1.3.6.1.4.1.11129.2.4.5", "2.5.29.16",
    "1.3.6.1.5.5.7.1.24",
}


def _extensions(data: bytes, element: _Element) -> list[str]:
    """The [3] extensions, each checked; the SAN's names (DNS first, then IP addresses)."""
    san: list[str] = []
    seen = set()
    for extension in _inside(data, _one(data, element[1], element[2], 0x30), 0x30):
        parts = _inside(data, extension, 0x30, (2, 3))
        oid = _oid(data, parts[0])
        if oid in seen:
            raise _Malformed("duplicate extension")
        seen.add(oid)
        if len(parts) == 3:
            _boolean_true(data, parts[1])
        value = _expect(parts[-1], 0x04)
        if oid in _PARSED_BY_CRYPTOGRAPHY:
            raise _Unsupported("extension cryptography reads")
        if oid == _SAN:
            san = _general_names(data, _one(data, value[1], value[2], 0x30))
        elif oid in _EXTENSIONS:
            inner = _children(data, value[1], value[2])
            if len(inner) != 1:
                raise _Malformed("extension value")
            _EXTENSIONS[oid](data, inner[0])
    return san


def _der_facts(der: bytes) -> dict[str, Any]:
    """What describe_certificate() shows, read from the DER by this module (RFC 5280: version 1
    or 3; RSA or P-256/384/521 keys; RSA/ECDSA signatures with SHA-1/2 or MD5; UTF8, Printable
    and IA5 strings in names). Strict: what is not DER, or not a certificate as cryptography
    accepts it, is _Malformed; what it does not read, _Unsupported (cryptography decides both)."""
    outer = _tlv(der, 0, len(der))
    if outer[2] != len(der):
        raise _Malformed("data after the certificate")
    tbs, signature_algorithm, signature = _inside(der, outer, 0x30, (3, 3))
    _bits(der, signature)
    fields = _inside(der, tbs, 0x30)
    if fields and fields[0][0] == 0xA0:
        version = _integer(der, _one(der, fields[0][1], fields[0][2], 0x02))
        if version != 2:
            raise (_Malformed if version == 0 else _Unsupported)("version")  # v1 is the DEFAULT: not encoded
        fields = fields[1:]
    if len(fields) < 6:
        raise _Malformed("fields")
    serial, inner_signature, issuer, validity, subject, spki, *rest = fields
    serial_number = _integer(der, serial)
    if serial_number < 0:
        raise _Unsupported("negative serial")  # cryptography warns (and says it will refuse them)
    hash_name = _SIGNATURE_HASHES.get(_algorithm(der, signature_algorithm))
    if hash_name is None or _algorithm(der, inner_signature) not in _SIGNATURE_HASHES:
        raise _Unsupported("signature algorithm")
    not_before, not_after = (_time(der, t) for t in _inside(der, validity, 0x30, (2, 2)))
    issuer_rdns, subject_rdns = _name(der, issuer), _name(der, subject)
    key_type, key_bits = _key(der, spki)
    san: list[str] = []
    last = 0
    for optional in rest:  # issuerUniqueID [1], subjectUniqueID [2], extensions [3], in that order
        number = {0x81: 1, 0x82: 2, 0xA3: 3}.get(optional[0], 0)
        if number <= last:
            raise _Malformed("field after the key")
        last = number
        if number == 3:
            san = _extensions(der, optional)
        else:
            _bits(der, optional, optional[0])
    return {"subject": _rfc4514(subject_rdns), "san": san,
            "common_names": [v for rdn in subject_rdns for oid, v in rdn if oid == "2.5.4.3"],
            "issuer": _rfc4514(issuer_rdns),
            "self_signed": [set(r) for r in subject_rdns] == [set(r) for r in issuer_rdns],
            "serial": format(serial_number, "X"), "not_before": not_before,
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
    described = [describe_shown(der, now=now) for der in chain]
    leaf = described[0] if described else {}
    top = described[-1] if described else {}
    problem = CertificateProblem("other", host, verify_message or "", leaf, issuer=top.get("issuer") or "",
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
