"""mailctl.net.certs' small DER reader is strict: a certificate it describes is one that
cryptography accepts, with the same facts, and what cryptography rejects the reader rejects
too (describe_certificate() then raises cryptography's error, as for any unparseable one).

Differential: real certificates built with cryptography (RSA and P-256/384/521 keys, DNS, IP,
e-mail, URI, directory, otherName and registeredID SANs, UTCTime and GeneralizedTime validity,
the usual CA and leaf extensions), then their bytes mutated systematically: every byte of the
header area (up to the key) and of every tag and length changed, truncations, trailing data,
each element's length non-minimal, indefinite or off by one, OID arcs padded, other times."""

from __future__ import annotations

import collections
import datetime
import ipaddress
import warnings
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from mailctl.net import certs

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.timezone.utc)


# --- the certificates -----------------------------------------------------------------------
def _name(cn: str, *more: x509.NameAttribute) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Ex (Co), Ltd."), *more,
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(key, *, san=None, not_after=None, extensions=(), issuer_key=None, hash_=None,
          subject=None, issuer=None) -> bytes:
    subject = subject or _name("mail.example.com")
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or subject)
               .public_key(key.public_key()).serial_number(0x0123456789ABCDEF)
               .not_valid_before(NOW - datetime.timedelta(days=1))
               .not_valid_after(not_after or NOW + datetime.timedelta(days=90)))
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key or key, hash_ or hashes.SHA256()).public_bytes(serialization.Encoding.DER)


_SCT_OID = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")  # embedded SCTs, which cryptography parses


def _sct_list() -> bytes:
    """Two SCTs as a CT log signs them (RFC 6962 3.2, 3.3), TLS-encoded."""
    def u16(raw: bytes) -> bytes:
        return len(raw).to_bytes(2, "big") + raw

    scts = [u16(b"\x00" + bytes([i]) * 32 + (1780000000000 + i).to_bytes(8, "big") + u16(b"") + b"\x04\x03"
                + u16(b"\x30\x06\x02\x01\x01\x02\x01\x02")) for i in (1, 2)]
    return u16(b"".join(scts))


def _pem_der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def _der_octets(raw: bytes) -> bytes:
    return b"\x04" + bytes([len(raw)]) + raw if len(raw) < 0x80 else b"\x04\x81" + bytes([len(raw)]) + raw


@pytest.fixture(scope="module")
def corpus() -> dict[str, bytes]:
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA"),
                         x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "example")])
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = _cert(ca_key, subject=ca_name, hash_=hashes.SHA384(), extensions=[
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                       encipher_only=False, decipher_only=False), True),
        (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)])
    leaf_extensions = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                       data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
                       encipher_only=True, decipher_only=False), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False),
        (x509.AuthorityInformationAccess([x509.AccessDescription(
            AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier("http://ca.example/ca.der"))]), False),
        (x509.CRLDistributionPoints([x509.DistributionPoint(
            [x509.UniformResourceIdentifier("http://ca.example/crl")], None, None, None)]), False),
        (x509.CertificatePolicies([
            x509.PolicyInformation(x509.ObjectIdentifier("2.23.140.1.2.1"), ["https://ca.example/cps"]),
            x509.PolicyInformation(x509.ObjectIdentifier("1.3.6.1.4.1.55555.2"), [
                x509.UserNotice(x509.NoticeReference("Ex Co", [1, 2]), "Use at your own risk"),
                x509.UserNotice(None, "Only a text")])]), False),
        (x509.IssuerAlternativeName([x509.RFC822Name("ca@example.com")]), False),
        (x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00 not DER"), False),
        (x509.UnrecognizedExtension(_SCT_OID, _der_octets(_sct_list())), False),
    ]
    import trustme  # the test CAs the TLS tests use: their CA and a leaf as well

    test_ca = trustme.CA()
    issued = test_ca.issue_cert("localhost", "127.0.0.1", "mail.example.org")
    return {
        "trustme CA": _pem_der(test_ca.cert_pem.bytes()),
        "trustme leaf": _pem_der(issued.cert_chain_pems[0].bytes()),
        "RSA 2048 leaf, DNS names, the usual extensions": _cert(
            rsa_key, san=[x509.DNSName("mail.example.com"), x509.DNSName("*.example.com")],
            extensions=leaf_extensions, issuer=ca_name, issuer_key=ca_key, hash_=hashes.SHA384()),
        "P-256, IPv4 and IPv6 addresses": _cert(
            ec.generate_private_key(ec.SECP256R1()),
            san=[x509.IPAddress(ipaddress.ip_address("192.0.2.1")), x509.DNSName("a.example"),
                 x509.IPAddress(ipaddress.ip_address("2001:db8::2"))]),
        "P-384 CA (no SAN), GeneralizedTime after 2049": _cert(
            ca_key, subject=ca_name, hash_=hashes.SHA384(), extensions=[
                (x509.BasicConstraints(ca=True, path_length=1), True)],
            not_after=datetime.datetime(2051, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc)),
        "P-384 CA with key usage": ca,
        "P-521, e-mail, URI, directory, otherName and registeredID SANs": _cert(
            ec.generate_private_key(ec.SECP521R1()), hash_=hashes.SHA512(),
            san=[x509.DNSName("x.example"), x509.RFC822Name("pm@example.com"),
                 x509.UniformResourceIdentifier("https://x.example/"),
                 x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dir")])),
                 x509.OtherName(x509.ObjectIdentifier("1.3.6.1.5.5.7.8.7"), b"\x16\x0c_smtp.x.test"),
                 x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4"))]),
        "RSA, SHA-256, UTF-8 and IA5 names, a multi-valued RDN": _cert(
            rsa_key, subject=x509.Name([
                x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ops"),
                                                x509.NameAttribute(NameOID.COMMON_NAME, "mail.example.com")]),
                x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.LOCALITY_NAME, "Zürich")]),
                x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.EMAIL_ADDRESS, "pm@example.com")]),
                x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "n")])])),
    }


# --- a DER tree, to re-encode with other lengths and contents -------------------------------
class _Node:
    """One element: its tag and either its children or its content bytes."""

    def __init__(self, tag: int, content: bytes, children: list[_Node] | None, header: int):
        self.tag, self.content, self.children, self.header = tag, content, children, header

    def walk(self) -> Iterator[_Node]:
        yield self
        for child in self.children or []:
            yield from child.walk()


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _parse(data: bytes, pos: int, end: int) -> list[_Node]:
    nodes = []
    while pos < end:
        tag, size, head = data[pos], data[pos + 1], 2
        if size & 0x80:
            count = size & 0x7F
            size, head = int.from_bytes(data[pos + 2:pos + 2 + count], "big"), 2 + count
        start, stop = pos + head, pos + head + size
        children = None
        if tag & 0x20:
            children = _parse(data, start, stop)
        elif tag in (0x03, 0x04) and stop > start + 1:  # encapsulated DER (a key, an extension's value)
            skip = 1 if tag == 0x03 else 0
            try:
                inner = _parse(data, start + skip, stop)
                if _encode_all(inner) == data[start + skip:stop] and inner[0].tag in (0x30, 0x04, 0x03):
                    children = inner
            except (IndexError, ValueError):
                pass
        nodes.append(_Node(tag, data[start:stop], children, head))
        pos = stop
    return nodes


def _encode_all(nodes: list[_Node], special: dict | None = None) -> bytes:
    return b"".join(_encode(n, special or {}) for n in nodes)


def _encode(node: _Node, special: dict) -> bytes:
    """node as DER, except what `special` says for a node: (how, extra) to encode its length."""
    if node.children is None:
        body = node.content
    else:
        prefix = node.content[:1] if node.tag == 0x03 else b""
        body = prefix + b"".join(_encode(c, special) for c in node.children)
    how = special.get(id(node))
    if how == "non-minimal":
        raw = len(body).to_bytes(max(1, (len(body).bit_length() + 7) // 8), "big")
        return bytes([node.tag, 0x80 | (len(raw) + 1), 0]) + raw + body
    if how == "long-form small":
        return bytes([node.tag, 0x81, len(body)]) + body if len(body) < 0x80 else _encode(node, {})
    if how == "indefinite":
        return bytes([node.tag, 0x80]) + body + b"\0\0"
    if how in ("+1", "-1"):
        return bytes([node.tag]) + _length(max(0, len(body) + int(how))) + body
    if isinstance(how, bytes):
        body = how
    return bytes([node.tag]) + _length(len(body)) + body


def _headers(root: _Node, data: bytes) -> list[int]:
    """Positions of every tag and length byte in data (as parsed into root)."""
    out: list[int] = []

    def visit(node: _Node, pos: int) -> int:
        out.extend(range(pos, pos + node.header))
        inner = pos + node.header + (1 if node.tag == 0x03 and node.children is not None else 0)
        for child in node.children or []:
            inner = visit(child, inner)
        return pos + node.header + len(node.content)

    visit(root, 0)
    return out


def _key_start(root: _Node) -> int:
    """Where subjectPublicKeyInfo begins: the header area is everything before it."""
    tbs = root.children[0]
    pos = root.header + tbs.header
    for field in tbs.children:
        if field.tag == 0x30 and field.children and field.children[-1].tag == 0x03 and field.children[0].tag == 0x30:
            return pos
        pos += field.header + len(field.content)
    raise AssertionError("no key")


_STRINGS = {0x0C, 0x13, 0x16, 0x1A, 0x1E, 0x14, 0x12}  # UTF8, Printable, IA5, Visible, BMP, T61, Numeric
_TIMES = [b"\x17\x0d260601000000Z", b"\x17\x0b2606010000Z", b"\x17\x11260601000000+0000", b"\x17\x0d261301000000Z",
          b"\x17\x0d260230000000Z", b"\x17\x0d260601240000Z", b"\x17\x0d260601006000Z", b"\x17\x0d26060100000\x00Z",
          b"\x17\x0d260601000000z", b"\x17\x0e260601000000Z\x00", b"\x18\x0f20260601000000Z", b"\x18\x0f20510601000000Z",
          b"\x18\x1320260601000000.123Z", b"\x18\x0d202606010000Z", b"\x18\x0f00000101000000Z", b"\x18\x0f2026060100000aZ",
          b"\x04\x0d260601000000Z", b"\x17\x0d491231235959Z", b"\x17\x0d500101000000Z"]


def _mutants(der: bytes) -> Iterator[tuple[str, bytes]]:
    (root,) = _parse(der, 0, len(der))
    assert _encode(root, {}) == der
    sct = der.find(_sct_list())  # and every byte of the SCT list (TLS, not DER: no headers)
    scts = range(sct, sct + len(_sct_list())) if sct >= 0 else range(0)
    positions = sorted(set(_headers(root, der)) | set(range(_key_start(root))) | set(scts))
    for i in positions:
        for value in {der[i] ^ 0x01, der[i] ^ 0x80, der[i] ^ 0x20, (der[i] + 1) & 0xFF, (der[i] - 1) & 0xFF,
                      0x00, 0xFF, der[i] | 0x1F}:
            if value != der[i]:
                yield f"byte {i} {der[i]:#04x} -> {value:#04x}", der[:i] + bytes([value]) + der[i + 1:]
    for cut in sorted(set(range(0, len(der), 5)) | set(positions)):
        yield f"truncated to {cut} bytes", der[:cut]
    for extra in (b"\x00", b"\x00\x00", b"\x30\x00", b"\xff" * 3, der[:20]):
        yield f"followed by {extra.hex()}", der + extra
    nodes = list(root.walk())
    for k, node in enumerate(nodes):
        for how in ("non-minimal", "long-form small", "indefinite", "+1", "-1"):
            yield f"element {k} (tag {node.tag:#04x}) length {how}", _encode(root, {id(node): how})
        yield f"element {k} (tag {node.tag:#04x}) emptied", _encode(root, {id(node): b""})
        if node.tag == 0x06 and node.children is None:
            for arc in range(len(node.content)):
                yield f"OID {k} arc {arc} padded", _encode(root, {id(node): node.content[:arc] + b"\x80" + node.content[arc:]})
        if node.tag == 0x02 and node.children is None:  # INTEGERs not minimal, or negative
            for prefix in (b"\x00", b"\xff", b"\x00\x00"):
                yield f"INTEGER {k} prefixed {prefix.hex()}", _encode(root, {id(node): prefix + node.content})
            yield f"INTEGER {k} empty", _encode(root, {id(node): b""})
        if node.tag == 0x01:  # DER BOOLEANs are 00 or ff
            for value in (b"\x00", b"\x01", b"\x7f", b"", b"\xff\xff"):
                yield f"BOOLEAN {k} = {value.hex()}", _encode(root, {id(node): value})
        if node.tag == 0x03 and node.children is None and node.content:  # unused bits
            for unused in (1, 7, 8):
                yield f"BIT STRING {k} unused {unused}", _encode(root, {id(node): bytes([unused]) + node.content[1:]})
        if node.tag in _STRINGS:  # the other string types
            for tag in _STRINGS - {node.tag}:
                yield f"string {k} retagged {tag:#04x}", _retag(root, node, bytes([tag, 0]) + node.content)
        if node.tag == 0x31 and len(node.children or []) > 1:  # SET OF out of DER order
            node.children.reverse()
            yield f"SET {k} reversed", _encode(root, {})
            node.children.reverse()
        if node.tag in (0x17, 0x18):
            for time in _TIMES:
                yield f"time {k} = {time!r}", _encode(root, {id(node): time[2:]}) if time[0] == node.tag else \
                    _retag(root, node, time)


def _retag(root: _Node, node: _Node, tagged: bytes) -> bytes:
    """The certificate with node's tag and content replaced (tag, a length byte, the content)."""
    tag, node.tag = node.tag, tagged[0]
    try:
        return _encode(root, {id(node): tagged[2:]})
    finally:
        node.tag = tag


def _outcome(function, der: bytes):
    try:
        return function(der)
    except Exception as exc:  # noqa: BLE001 - either side's rejection is the fact compared
        return exc


# --- the tests ---------------------------------------------------------------------------
def test_the_corpus_is_read_by_the_reader(corpus):
    for label, der in corpus.items():
        assert certs._der_facts(der) == certs._cryptography_facts(der), label


def test_every_mutant_is_rejected_by_both_or_described_alike(corpus):
    counts: collections.Counter[str] = collections.Counter()
    wrong = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cryptography's deprecation warning for a serial mutated negative
        for label, der in corpus.items():
            for what, mutant in _mutants(der):
                ours, theirs = _outcome(certs._der_facts, mutant), _outcome(certs._cryptography_facts, mutant)
                if isinstance(theirs, Exception):
                    counts["both reject" if isinstance(ours, Exception) else "reader too lenient"] += 1
                    if not isinstance(ours, Exception):
                        wrong.append((label, what, f"cryptography: {theirs}"))
                elif isinstance(ours, certs._Malformed):
                    counts["reader calls malformed what cryptography reads"] += 1
                    wrong.append((label, what, f"reader: {ours}"))
                elif isinstance(ours, Exception):
                    counts["not covered: cryptography describes it"] += 1
                elif ours != theirs:
                    counts["different facts"] += 1
                    wrong.append((label, what, {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}))
                else:
                    counts["both accept, same facts"] += 1
    assert wrong == [], (len(wrong), counts, wrong[:20])
    assert counts["both reject"] > 10000 and counts["both accept, same facts"] > 1000, counts


def test_describe_certificate_reports_a_rejected_mutant_as_cryptography_does(corpus):
    der = corpus["P-256, IPv4 and IPv6 addresses"]
    (root,) = _parse(der, 0, len(der))
    tbs = root.children[0]
    for mutant in (der[:-1], der + b"\x00", _encode(root, {id(tbs): "non-minimal"}), _encode(root, {id(tbs): "indefinite"})):
        with pytest.raises(Exception) as reader:
            certs._der_facts(mutant)
        assert isinstance(reader.value, certs._Malformed)
        with pytest.raises(ValueError) as described:
            certs.describe_certificate(mutant, now=NOW)
        with pytest.raises(ValueError) as reference:
            x509.load_der_x509_certificate(mutant)
        assert str(described.value) == str(reference.value)


def test_a_point_off_the_curve_is_cryptographys_to_refuse(corpus):
    der = corpus["P-256, IPv4 and IPv6 addresses"]
    point = der.index(b"\x03\x42\x00\x04") + 4 + 31  # the last byte of x
    mutant = der[:point] + bytes([der[point] ^ 0x01]) + der[point + 1:]
    with pytest.raises(certs._Malformed):
        certs._der_facts(mutant)
    with pytest.raises(ValueError):
        certs.describe_certificate(mutant, now=NOW)
