"""A real authoritative DNS server on loopback (dnslib, UDP and TCP) serving test zones.

Used by tests/test_dns_*.py (session fixture) and bench/dns_check.py. Names under
servfail.test answer SERVFAIL; names outside the zones answer NXDOMAIN; CNAMEs are chased
inside the server like a recursive resolver would, so a client sees the whole chain. Names in
`timeouts` never get an answer (the query times out) except for the record types listed for
them; tests/spf_suites.py builds such zones from the openspf suites' zonedata.
"""

from __future__ import annotations

import base64
import os
import socket
import threading
from dataclasses import dataclass, field

from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RCODE, RR, TXT, A
from dnslib.dns import DNSError
from dnslib.server import BaseResolver, DNSLogger, DNSServer


# -- keys --------------------------------------------------------------------------------------
def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def rsa_spki(bits: int, seed: int = 1) -> str:
    """Base64 SubjectPublicKeyInfo of an RSA key with a modulus of exactly `bits` bits.
    (Only the structure and size matter to a DNS checker; no private key exists.)"""
    rnd = int.from_bytes(os.urandom(bits // 8 + 1), "big") | 1 | (1 << (bits - 1))
    modulus = (rnd & ((1 << bits) - 1)).to_bytes(bits // 8, "big")
    integer = _der(0x02, b"\x00" + modulus)
    rsa_key = _der(0x30, integer + _der(0x02, b"\x01\x00\x01"))
    algorithm = _der(0x30, _der(0x06, bytes.fromhex("2a864886f70d010101")) + b"\x05\x00")
    return base64.b64encode(_der(0x30, algorithm + _der(0x03, b"\x00" + rsa_key))).decode()


def real_rsa_spki(bits: int = 2048) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


# -- zones -------------------------------------------------------------------------------------
def txt(name: str, value: str) -> RR:
    raw = value.encode()
    chunks = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
    return RR(name, QTYPE.TXT, rdata=TXT(chunks), ttl=60)


def txt_strings(name: str, strings: list[bytes | str], rtype: str = "TXT") -> RR:
    """A TXT (or type 99 SPF) record made of exactly these strings: several strings, or none at
    all (an empty TXT, which some resolver libraries refuse to parse)."""
    raw = [s.encode() if isinstance(s, str) else s for s in strings]
    return RR(name, getattr(QTYPE, rtype), rdata=TXT(raw), ttl=60)


def a(name: str, ip: str) -> RR:
    return RR(name, QTYPE.A, rdata=A(ip), ttl=60)


def aaaa(name: str, ip: str) -> RR:
    return RR(name, QTYPE.AAAA, rdata=AAAA(ip), ttl=60)


def mx(name: str, host: str, pref: int = 10) -> RR:
    return RR(name, QTYPE.MX, rdata=MX(host, pref), ttl=60)


def cname(name: str, target: str) -> RR:
    return RR(name, QTYPE.CNAME, rdata=CNAME(target), ttl=60)


def ptr(name: str, target: str) -> RR:
    return RR(name, QTYPE.PTR, rdata=PTR(target), ttl=60)


def test_zones() -> list[RR]:
    k2048 = real_rsa_spki(2048)
    k1024 = rsa_spki(1024)
    k512 = rsa_spki(512)
    ed = base64.b64encode(os.urandom(32)).decode()
    rr = [
        # -- a valid domain ------------------------------------------------------------------
        txt("valid.test", "v=spf1 ip4:192.0.2.0/24 include:_spf.provider.test -all"),
        txt("valid.test", "google-site-verification=abc"),  # non-SPF TXT next to it is fine
        txt("_spf.provider.test", "v=spf1 ip4:198.51.100.0/24 ip6:2001:db8::/32 ~all"),
        a("valid.test", "192.0.2.10"),
        mx("valid.test", "mx.valid.test"),
        a("mx.valid.test", "192.0.2.25"),
        txt("selector1._domainkey.valid.test", f"v=DKIM1; k=rsa; p={k2048}"),
        txt("_dmarc.valid.test", "v=DMARC1; p=reject; adkim=s; rua=mailto:dmarc@valid.test"),
        a("www.sub.valid.test", "192.0.2.11"),
        txt("sub.valid.test", "v=spf1 -all"),
        # -- SPF broken cases ----------------------------------------------------------------
        txt("twospf.test", "v=spf1 ip4:192.0.2.1 -all"),
        txt("twospf.test", "v=spf1 include:_spf.provider.test -all"),
        # 11 lookups through nested includes: 2 + n1(3 + n3(4)) + n2(2)
        txt("toomany.test", "v=spf1 include:n1.toomany.test include:n2.toomany.test -all"),
        txt("n1.toomany.test", "v=spf1 include:n3.toomany.test a:h1.toomany.test a:h2.toomany.test ~all"),
        txt("n3.toomany.test", "v=spf1 a:h1.toomany.test a:h2.toomany.test a:h3.toomany.test mx:toomany.test ~all"),
        txt("n2.toomany.test", "v=spf1 a:h1.toomany.test a:h2.toomany.test ip4:203.0.113.0/24 ~all"),
        a("h1.toomany.test", "10.0.0.1"), a("h2.toomany.test", "10.0.0.2"), a("h3.toomany.test", "10.0.0.3"),
        mx("toomany.test", "mx.toomany.test"), a("mx.toomany.test", "10.0.0.25"),
        txt("loop.test", "v=spf1 include:loop2.test -all"),
        txt("loop2.test", "v=spf1 include:loop.test ~all"),
        txt("void.test", "v=spf1 a:nx1.void.test a:nx2.void.test mx:nx3.void.test ip4:192.0.2.0/24 -all"),
        txt("syntax.test", "v=spf1 ip4:192.0.2.300 -all"),
        txt("badmech.test", "v=spf1 include:_spf.provider.test foo:bar -all"),
        txt("macro.test", "v=spf1 exists:%{ir}.%{v}._spf.%{d} -all"),
        a("1.2.0.192.in-addr._spf.macro.test", "127.0.0.2"),
        txt("ptr.test", "v=spf1 ptr:ptr.test -all"),
        ptr("5.2.0.192.in-addr.arpa", "host.ptr.test"),
        a("host.ptr.test", "192.0.2.5"),
        txt("passall.test", "v=spf1 ip4:192.0.2.1 +all"),
        txt("neutralall.test", "v=spf1 ip4:192.0.2.1 ?all"),
        txt("noall.test", "v=spf1 ip4:192.0.2.1"),
        txt("results.test", "v=spf1 ip4:192.0.2.1 -ip4:192.0.2.2 ~ip4:192.0.2.3 ?ip4:192.0.2.4 include:_spf.provider.test -all"),
        txt("redirect.test", "v=spf1 redirect=_spf.provider.test"),
        txt("redirectall.test", "v=spf1 ip4:192.0.2.1 redirect=toomany.test -all"),
        txt("tempfail.test", "v=spf1 ip4:192.0.2.1 include:_spf.servfail.test -all"),
        a("nospf.test", "192.0.2.1"),
        txt("newline.test", "v=spf1 ip4:192.0.2.5\n -all"),  # a newline inside the record: permerror
        txt("colon.test", "v=spf1 a:foo:bar/baz.colon.test mx:foo:bar/baz.colon.test -all"),  # RFC 7208 7.1
        a("foo:bar/baz.colon.test", "192.0.2.6"), mx("foo:bar/baz.colon.test", "mx.colon.test"), a("mx.colon.test", "192.0.2.7"),
        txt_strings("emptytxt.test", []),  # a TXT record without strings (dnspython refuses to parse it)
        txt_strings("emptytxt.test", ["v=spf1 ip4:", "192.0.2.5 -all"]),
        txt("helo.test", "v=spf1 a:%{h} -all"),
        a("mail.helo.test", "192.0.2.40"),
        txt("exp.test", "v=spf1 ip4:192.0.2.1 -all exp=why.exp.test"),
        txt("why.exp.test", "Correct! %{i} may not send for %{d}: see https://exp.test/spf?ip=%{I}"),
        # -- DKIM ----------------------------------------------------------------------------
        txt("good._domainkey.dkim.test", f"v=DKIM1; k=rsa; p={k2048}"),
        txt("short._domainkey.dkim.test", f"v=DKIM1; k=rsa; p={k1024}"),
        txt("weak._domainkey.dkim.test", f"v=DKIM1; k=rsa; p={k512}"),
        txt("revoked._domainkey.dkim.test", "v=DKIM1; k=rsa; p="),
        txt("testing._domainkey.dkim.test", f"v=DKIM1; k=rsa; t=y; p={k2048}"),
        txt("bad._domainkey.dkim.test", f"v=DKIM1; k; p={k2048}"),
        txt("ed._domainkey.dkim.test", f"v=DKIM1; k=ed25519; p={ed}"),
        txt("notkey._domainkey.dkim.test", "v=DKIM1; k=rsa; p=bm90IGEga2V5"),
        cname("dangling._domainkey.dkim.test", "gone.dkim.test"),
        txt("_dmarc.dkim.test", "v=DMARC1; p=reject"),
        # -- Microsoft 365, Google, custom SMTP ----------------------------------------------
        txt("m365.test", "v=spf1 include:spf.protection.outlook.com -all"),
        txt("spf.protection.outlook.com", "v=spf1 ip4:40.92.0.0/15 ip4:40.107.0.0/16 -all"),
        cname("selector1._domainkey.m365.test", "selector1-m365-test._domainkey.contoso.onmicrosoft.test"),
        txt("selector1-m365-test._domainkey.contoso.onmicrosoft.test", f"v=DKIM1; k=rsa; p={k2048}"),
        cname("selector2._domainkey.m365.test", "selector2-m365-test._domainkey.contoso.onmicrosoft.test"),
        cname("selector2-m365-test._domainkey.contoso.onmicrosoft.test", "rotated2._domainkey.contoso.onmicrosoft.test"),
        txt("rotated2._domainkey.contoso.onmicrosoft.test", f"v=DKIM1; k=rsa; p={k2048}"),
        txt("_dmarc.m365.test", "v=DMARC1; p=quarantine; rua=mailto:dmarc@m365.test"),
        txt("m365bad.test", "v=spf1 include:_spf.provider.test -all"),
        txt("selector1._domainkey.m365bad.test", f"v=DKIM1; k=rsa; p={k2048}"),
        txt("_dmarc.m365bad.test", "v=DMARC1; p=reject"),
        txt("google.test", "v=spf1 include:_spf.google.com ~all"),
        txt("_spf.google.com", "v=spf1 ip4:209.85.128.0/17 ~all"),
        txt("google._domainkey.google.test", f"v=DKIM1; k=rsa; p={k2048}"),
        txt("_dmarc.google.test", "v=DMARC1; p=reject"),
        txt("custom.test", "v=spf1 a:smtp.custom.test -all"),
        a("smtp.custom.test", "192.0.2.77"),
        a("smtp.elsewhere.test", "203.0.113.9"),
        txt("_dmarc.custom.test", "v=DMARC1; p=reject"),
        # -- DMARC ---------------------------------------------------------------------------
        txt("_dmarc.dmarcbad.test", "v=DMARC1; p=maybe; adkim=x"),
        txt("_dmarc.dmarcsyntax.test", "v=DMARC1; p=reject; rua"),
        txt("_dmarc.dmarcnone.test", "v=DMARC1; p=none; pct=50; ri=3600; rf=afrf; rua=mailto:d@dmarcnone.test"),
        txt("_dmarc.external.test", "v=DMARC1; p=reject; rua=mailto:agg@reports.test,mailto:agg@noauth.test"),
        txt("external.test._report._dmarc.reports.test", "v=DMARC1"),
        txt("_dmarc.twodmarc.test", "v=DMARC1; p=reject"),
        txt("_dmarc.twodmarc.test", "v=DMARC1; p=none"),
        txt("_dmarc.badversion.test", "v=dmarc1; p=reject"),
        txt("_dmarc.spaced.test", "v = DMARC1 ; p = reject ; rua = mailto:dmarc@spaced.test"),  # RFC 7489 6.4 allows the spaces
        # -- DKIM: service types, a CNAME answered bare by the selector's zone ---------------
        txt("web._domainkey.dkim.test", f"v=DKIM1; k=rsa; s=web:ftp; p={k2048}"),
        txt("anysvc._domainkey.dkim.test", f"v=DKIM1; k=rsa; s=*; p={k2048}"),
        txt("mailsvc._domainkey.dkim.test", f"v=DKIM1; k=rsa; s = web : Email; p={k2048}"),
        cname("sel._domainkey.bare-cname.test", "sel-bare-cname-test._domainkey.keys.provider.test"),
        txt("sel-bare-cname-test._domainkey.keys.provider.test", f"v=DKIM1; k=rsa; p={k2048}"),
        cname("gone._domainkey.bare-cname.test", "nothing-here.keys.provider.test"),
        txt("_dmarc.bare-cname.test", "v=DMARC1; p=reject"),
    ]
    return rr


def bench_zones() -> list[RR]:
    """bench.test: an SPF tree with exactly ten DNS lookups (the limit), DKIM and DMARC."""
    return [
        txt("bench.test", "v=spf1 include:b1.bench.test include:b2.bench.test mx a -all"),  # 4 + 3 + 3
        txt("b1.bench.test", "v=spf1 include:b3.bench.test a:h1.bench.test ip4:192.0.2.0/24 ~all"),  # 2 + 1
        txt("b3.bench.test", "v=spf1 exists:h2.bench.test ip4:198.51.100.0/24 ~all"),  # 1
        txt("b2.bench.test", "v=spf1 a:h1.bench.test a:h2.bench.test mx:bench.test ip4:203.0.113.0/24 ~all"),  # 3
        a("bench.test", "192.0.2.1"), a("h1.bench.test", "192.0.2.2"), a("h2.bench.test", "192.0.2.3"),
        mx("bench.test", "mx.bench.test"), a("mx.bench.test", "192.0.2.25"),
        txt("selector1._domainkey.bench.test", f"v=DKIM1; k=rsa; p={rsa_spki(2048)}"),
        txt("_dmarc.bench.test", "v=DMARC1; p=reject; rua=mailto:dmarc@bench.test"),
    ]


# -- the server --------------------------------------------------------------------------------
class ZoneResolver(BaseResolver):
    def __init__(self, records: list[RR], servfail_suffixes: tuple[str, ...] = ("servfail.test",),
                 timeouts: dict[str, frozenset[int]] | None = None,
                 bare_cname_suffixes: tuple[str, ...] = ("bare-cname.test",)) -> None:
        self.by_name: dict[str, list[RR]] = {}
        for r in records:
            self.by_name.setdefault(str(r.rname).lower().rstrip("."), []).append(r)
        self.servfail = servfail_suffixes
        # name -> the qtypes still answered there; every other query for the name is dropped
        self.timeouts = {_key(n): frozenset(t) for n, t in (timeouts or {}).items()}
        # CNAMEs in these zones are answered alone, as an authoritative server that does not
        # recurse answers a CNAME into another zone: the client must follow it
        self.bare_cnames = bare_cname_suffixes
        self.queries = 0
        self.lock = threading.Lock()

    def _exists(self, name: str) -> bool:
        return name in self.by_name or any(n.endswith("." + name) for n in self.by_name)

    def resolve(self, request, handler):
        with self.lock:
            self.queries += 1
        reply = request.reply()
        qtype = request.q.qtype
        name = str(request.q.qname).lower().rstrip(".")
        for _ in range(10):
            if any(name == s or name.endswith("." + s) for s in self.servfail):
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            if name in self.timeouts and qtype not in self.timeouts[name]:
                raise DNSError(f"{name}: no answer (timeout)")  # dnslib's handler sends nothing
            rrs = self.by_name.get(name, [])
            chain = [r for r in rrs if r.rtype == QTYPE.CNAME]
            if chain and qtype != QTYPE.CNAME:
                reply.add_answer(chain[0])
                if any(name == s or name.endswith("." + s) for s in self.bare_cnames):
                    return reply
                name = str(chain[0].rdata.label).lower().rstrip(".")
                continue
            for r in rrs:
                if r.rtype == qtype:
                    reply.add_answer(r)
            if not rrs and not self._exists(name):
                reply.header.rcode = RCODE.NXDOMAIN
            return reply
        return reply


def _key(name: str) -> str:
    """A name as ZoneResolver keys it (dnslib's text form: special characters escaped)."""
    from dnslib import DNSLabel

    return str(DNSLabel(name)).lower().rstrip(".")


@dataclass
class LocalDNS:
    records: list[RR]
    host: str = "127.0.0.1"
    port: int = 0
    servers: list = field(default_factory=list)
    timeouts: dict[str, frozenset[int]] = field(default_factory=dict)  # see ZoneResolver

    def start(self) -> "LocalDNS":
        self.resolver = ZoneResolver(self.records, timeouts=self.timeouts)
        logger = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False, logf=lambda s: None)
        port = self.port or _free_port(self.host)
        for tcp in (False, True):
            server = DNSServer(self.resolver, address=self.host, port=port, tcp=tcp, logger=logger)
            server.start_thread()
            self.servers.append(server)
        self.port = port
        return self

    def stop(self) -> None:
        for s in self.servers:
            s.stop()
            s.server.server_close()
        self.servers.clear()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _free_port(host: str) -> int:
    # a port free for both UDP and TCP
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port")


class SilentNameserver:
    """A UDP port that receives queries and never answers (for timeout tests)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.address = f"{host}:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()


# -- pytest helpers (imported by tests/test_dns_*.py) --------------------------------------------
_shared: LocalDNS | None = None
_shared_lock = threading.Lock()


def shared_server() -> LocalDNS:
    """One server per test process, started on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            import atexit

            _shared = LocalDNS(test_zones() + bench_zones()).start()
            atexit.register(_shared.stop)
        return _shared


try:
    import pytest
except ImportError:  # bench/ runs without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def dns_server() -> LocalDNS:
        return shared_server()

    @pytest.fixture
    def dns(cli, dns_server):
        """dns("check-spf", "valid.test", "--ip", ...) -> (Result, parsed JSON or None)."""
        import json

        def run(*args: str, timeout: str = "3"):
            res = cli("dns", *args, "--nameserver", dns_server.address, "--timeout", timeout, "--json")
            data = json.loads(res.stdout) if res.stdout.strip() else None
            return res, data

        return run


def ids(data: dict, check: str | None = None, severity: str | None = None) -> list[str]:
    """Finding ids in a JSON report, optionally for one check and one severity."""
    out = []
    for name, c in data["checks"].items():
        if check and name != check:
            continue
        out += [f["id"] for f in c["findings"] if severity is None or f["severity"] == severity]
    return out


# -- dns check beyond SPF/DKIM/DMARC: MX, MTA-STS, TLS-RPT, BIMI, DNSSEC, NS/SOA ------------------
# These zones are served by their own server (extras_server(), fixture extras_dns_server) whose
# resolver also sends RRSIGs to queries with the DO bit, and, as a *validating* resolver
# (validating_server()), sets the AD bit for signed zones and answers SERVFAIL for bogus ones.
LOOPBACK = "127.0.0.1"
SOA_TIMES = (2024010101, 7200, 3600, 1209600, 300)


def soa(name: str, times: tuple[int, ...] = SOA_TIMES, mname: str = "", rname: str = "") -> RR:
    from dnslib import SOA

    return RR(name, QTYPE.SOA, rdata=SOA(mname or f"ns1.{name}", rname or f"hostmaster.{name}", times), ttl=60)


def ns(name: str, host: str) -> RR:
    from dnslib import NS

    return RR(name, QTYPE.NS, rdata=NS(host), ttl=60)


def zone_basics(domain: str, nameservers: int = 2, times: tuple[int, ...] = SOA_TIMES) -> list[RR]:
    """SOA, NS ns1.. nsN.<domain> and their addresses: what every real zone has."""
    rr = [soa(domain, times)]
    for i in range(1, nameservers + 1):
        rr += [ns(domain, f"ns{i}.{domain}"), a(f"ns{i}.{domain}", f"198.51.100.{50 + i}")]
    return rr


def signed_zone(domain: str, *, ds: str = "good", expired: bool = False, corrupt: bool = False,
                dnskey: bool = True) -> list[RR]:
    """SOA, NS, DNSKEY and RRSIGs over the DNSKEY and SOA RRsets, really signed (ECDSA P-256),
    and the DS the parent would publish: ds = good | none | bad (a wrong digest) | sha1."""
    import importlib
    import time as _time

    import dns._features

    dns._features.force("dnssec", True)  # mailctl's resolver turns it off (start-up speed) in this process
    import dns.dnssec

    if dns.dnssec.sign is getattr(dns.dnssec, "_need_pyca", None):  # imported while it was off
        importlib.reload(dns.dnssec)
    import dns.name
    import dns.rdata
    import dns.rrset
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    origin = dns.name.from_text(domain + ".")
    rd_key = dns.dnssec.make_dnskey(key.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256, flags=257)
    keys = dns.rrset.from_rdata(origin, 60, rd_key)
    soa_text = f"ns1.{domain}. hostmaster.{domain}. " + " ".join(str(t) for t in SOA_TIMES)
    soas = dns.rrset.from_rdata(origin, 60, dns.rdata.from_text("IN", "SOA", soa_text))
    now = int(_time.time())
    window = dict(inception=now - 40 * 86400, expiration=now - 86400) if expired else dict(inception=now - 3600, expiration=now + 30 * 86400)
    texts = [f"{domain}. 60 IN SOA {soa_text}"]
    if dnskey:
        texts.append(f"{domain}. 60 IN DNSKEY {rd_key.to_text()}")
        for rrset in (keys, soas):
            sig = dns.dnssec.sign(rrset, key, origin, rd_key, **window)
            if corrupt:
                raw = bytearray(sig.signature)
                raw[5] ^= 0xFF
                sig = sig.replace(signature=bytes(raw))
            texts.append(f"{domain}. 60 IN RRSIG {sig.to_text()}")
    if ds != "none":
        ds_rd = dns.dnssec.make_ds(origin, rd_key, "SHA1" if ds == "sha1" else "SHA256", policy=dns.dnssec.allow_all_policy)
        text = ds_rd.to_text()
        if ds == "bad":
            head, digest = text.rsplit(" ", 1)
            text = f"{head} {'0' * len(digest)}"
        texts.append(f"{domain}. 60 IN DS {text}")
    rr = [r for t in texts for r in RR.fromZone(t)]
    rr += [ns(domain, f"ns1.{domain}"), ns(domain, f"ns2.{domain}"),
           a(f"ns1.{domain}", "198.51.100.51"), a(f"ns2.{domain}", "198.51.100.52")]
    return rr


STS_RECORD = "v=STSv1; id=20240101T000000"
SECURE_ZONES = ("signed.test",)  # what the validating resolver authenticates
BOGUS_ZONES = ("dsbad.test", "expired.test", "badsig.test", "dsonly.test")  # where it answers SERVFAIL


def extra_zones() -> list[RR]:
    rr: list[RR] = []
    # -- MX ---------------------------------------------------------------------------------------
    rr += zone_basics("mx-good.test")
    rr += [mx("mx-good.test", "mx1.mx-good.test", 10), mx("mx-good.test", "mx2.mx-good.test", 20),
           a("mx1.mx-good.test", "198.51.100.25"), a("mx2.mx-good.test", "198.51.100.26"),
           aaaa("mx1.mx-good.test", "2001:db8::25"),
           ptr("25.100.51.198.in-addr.arpa", "mx1.mx-good.test"), ptr("26.100.51.198.in-addr.arpa", "mx2.mx-good.test"),
           ptr("5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa", "mx1.mx-good.test"),
           txt("mx-good.test", "v=spf1 mx -all"), txt("_dmarc.mx-good.test", "v=DMARC1; p=reject; rua=mailto:d@mx-good.test")]
    rr += [mx("mx-null.test", ".", 0), txt("mx-null.test", "v=spf1 -all")]
    rr += [mx("mx-nullmixed.test", ".", 0), mx("mx-nullmixed.test", "mx.mx-nullmixed.test", 10), a("mx.mx-nullmixed.test", "198.51.100.27")]
    rr += [a("mx-none.test", "198.51.100.28"), txt("mx-none.test", "v=spf1 a -all")]
    rr += [mx("mx-cname.test", "alias.mx-cname.test"), cname("alias.mx-cname.test", "real.mx-cname.test"), a("real.mx-cname.test", "198.51.100.29")]
    rr += [mx("mx-iplit.test", "198.51.100.30")]
    rr += [mx("mx-noaddr.test", "gone.mx-noaddr.test"), txt("mx-noaddr.test", "v=spf1 -all")]
    rr += [mx("mx-partial.test", "mx1.mx-partial.test", 10), mx("mx-partial.test", "gone.mx-partial.test", 20), a("mx1.mx-partial.test", "198.51.100.31")]
    rr += [mx("mx-private.test", "mx.mx-private.test"), a("mx.mx-private.test", "10.1.2.3")]
    rr += [mx("mx-rdns.test", "mx.mx-rdns.test"), a("mx.mx-rdns.test", "198.51.100.32"), ptr("32.100.51.198.in-addr.arpa", "elsewhere.mx-rdns.test")]
    rr += [mx("mx-dup.test", "mx.mx-dup.test", 10), mx("mx-dup.test", "mx.mx-dup.test", 20), a("mx.mx-dup.test", "198.51.100.33")]
    # -- STARTTLS (the MX hosts are the local SMTP server of the test) ---------------------------
    rr += [mx("starttls.test", "mx.starttls.test"), a("mx.starttls.test", LOOPBACK)]
    rr += [mx("starttls2.test", "mx1.starttls2.test", 10), mx("starttls2.test", "mx2.starttls2.test", 20),
           a("mx1.starttls2.test", LOOPBACK), a("mx2.starttls2.test", LOOPBACK)]
    # -- MTA-STS and TLS-RPT (mta-sts.<domain> is the local HTTPS server of the test) -------------
    for d in ("sts.test", "stsenforce.test"):
        rr += [txt(f"_mta-sts.{d}", STS_RECORD), a(f"mta-sts.{d}", LOOPBACK)]
    rr += [mx("sts.test", "mx1.sts.test", 10), mx("sts.test", "mx2.sts.test", 20), a("mx1.sts.test", "198.51.100.40"),
           a("mx2.sts.test", "198.51.100.41"), txt("_smtp._tls.sts.test", "v=TLSRPTv1; rua=mailto:tls@sts.test,https://reports.sts.test/v1")]
    rr += [mx("stsenforce.test", "mx.stsenforce.test"), a("mx.stsenforce.test", LOOPBACK)]
    rr += [txt("_mta-sts.stsbad.test", "v=STSv1; id=not-an-id!")]
    rr += [txt("_mta-sts.sts2.test", STS_RECORD), txt("_mta-sts.sts2.test", "v=STSv1; id=2")]
    rr += [txt("stsroot.test", STS_RECORD), txt("stsroot.test", "v=spf1 -all")]
    rr += [txt("_mta-sts.stsnohost.test", STS_RECORD)]
    rr += [txt("_smtp._tls.rpt-bad.test", "v=TLSRPTv1; rua=ftp://reports.rpt-bad.test")]
    rr += [txt("_smtp._tls.rpt-norua.test", "v=TLSRPTv1;")]
    rr += [txt("_smtp._tls.rpt-two.test", "v=TLSRPTv1; rua=mailto:a@rpt-two.test"), txt("_smtp._tls.rpt-two.test", "v=TLSRPTv1; rua=mailto:b@rpt-two.test")]
    # -- BIMI ----------------------------------------------------------------------------------
    rr += [txt("default._bimi.bimi.test", "v=BIMI1; l=https://bimi.test/logo.svg; a=https://bimi.test/vmc.pem"),
           txt("_dmarc.bimi.test", "v=DMARC1; p=reject; rua=mailto:d@bimi.test"), a("sub.bimi.test", "198.51.100.60")]
    rr += [txt("default._bimi.bimi-none.test", "v=BIMI1; l=https://bimi-none.test/logo.svg; a=https://bimi-none.test/vmc.pem"),
           txt("_dmarc.bimi-none.test", "v=DMARC1; p=none")]
    rr += [txt("default._bimi.bimi-pct.test", "v=BIMI1; l=https://bimi-pct.test/logo.svg; a=https://bimi-pct.test/vmc.pem"),
           txt("_dmarc.bimi-pct.test", "v=DMARC1; p=quarantine; pct=50")]
    rr += [txt("default._bimi.bimi-http.test", "v=BIMI1; l=http://bimi-http.test/logo.svg; a=http://bimi-http.test/vmc.pem"),
           txt("_dmarc.bimi-http.test", "v=DMARC1; p=reject")]
    rr += [txt("default._bimi.bimi-noa.test", "v=BIMI1; l=https://bimi-noa.test/logo.svg"), txt("_dmarc.bimi-noa.test", "v=DMARC1; p=reject")]
    rr += [txt("default._bimi.bimi-decl.test", "v=BIMI1; l=; a=;")]
    rr += [txt("default._bimi.bimi-two.test", "v=BIMI1; l=https://a.test/1.svg"), txt("default._bimi.bimi-two.test", "v=BIMI1; l=https://a.test/2.svg")]
    rr += [txt("default._bimi.bimi-syntax.test", "v=BIMI1; l")]
    # -- DNSSEC ----------------------------------------------------------------------------------
    rr += signed_zone("signed.test") + [a("www.signed.test", "198.51.100.70")]
    rr += signed_zone("signed2.test")  # signed and valid, but the validating resolver gives no AD
    rr += signed_zone("nods.test", ds="none")
    rr += signed_zone("dsonly.test", dnskey=False)
    rr += signed_zone("dsbad.test", ds="bad")
    rr += signed_zone("dssha1.test", ds="sha1")
    rr += signed_zone("expired.test", expired=True)
    rr += signed_zone("badsig.test", corrupt=True)
    # -- NS/SOA ----------------------------------------------------------------------------------
    rr += zone_basics("ns-good.test") + [a("www.ns-good.test", "198.51.100.80")]
    rr += zone_basics("ns-single.test", nameservers=1)
    rr += [soa("ns-noaddr.test"), ns("ns-noaddr.test", "ns1.ns-noaddr.test"), ns("ns-noaddr.test", "ns2.gone.test"),
           a("ns1.ns-noaddr.test", "198.51.100.53")]
    rr += zone_basics("ns-soa.test", times=(1, 60, 3600, 3600, 604800))
    rr += [soa("ns-none.test")]
    # -- a domain with everything (dns check passes every check) ---------------------------------
    rr += signed_zone("complete.test")
    rr += [txt("complete.test", "v=spf1 mx -all"), mx("complete.test", "mx.complete.test"), a("mx.complete.test", "198.51.100.90"),
           ptr("90.100.51.198.in-addr.arpa", "mx.complete.test"),
           txt("selector1._domainkey.complete.test", f"v=DKIM1; k=rsa; p={rsa_spki(2048)}"),
           txt("_dmarc.complete.test", "v=DMARC1; p=reject; rua=mailto:dmarc@complete.test"),
           txt("_mta-sts.complete.test", STS_RECORD), a("mta-sts.complete.test", LOOPBACK),
           txt("_smtp._tls.complete.test", "v=TLSRPTv1; rua=mailto:tls@complete.test"),
           txt("default._bimi.complete.test", "v=BIMI1; l=https://complete.test/logo.svg; a=https://complete.test/vmc.pem")]
    # -- profile alignment -----------------------------------------------------------------------
    rr += [txt("m365spf.test", "v=spf1 include:spf.protection.outlook.com -all"), txt("_dmarc.m365spf.test", "v=DMARC1; p=reject")]
    rr += [txt("m365limit.test", "v=spf1 include:toomany.test include:spf.protection.outlook.com -all"),
           txt("_dmarc.m365limit.test", "v=DMARC1; p=reject")]
    rr += [txt("relay.test", "v=spf1 a:smtp.relay.test -all"), a("smtp.relay.test", "192.0.2.78"),
           txt("s1._domainkey.relay.test", f"v=DKIM1; k=rsa; p={rsa_spki(2048)}"), txt("_dmarc.relay.test", "v=DMARC1; p=reject")]
    return rr


class DnssecZoneResolver(ZoneResolver):
    """ZoneResolver that sends the RRSIGs covering the answer to queries with the DO bit; as a
    validating resolver it also sets AD for names in `secure` zones and answers SERVFAIL in
    `bogus` ones (what a real validator does with broken signatures)."""

    def __init__(self, records: list[RR], *, validating: bool = False, secure: tuple[str, ...] = SECURE_ZONES,
                 bogus: tuple[str, ...] = BOGUS_ZONES, **kwargs) -> None:
        super().__init__(records, **kwargs)
        self.validating, self.secure, self.bogus = validating, secure, bogus

    @staticmethod
    def _under(name: str, zones: tuple[str, ...]) -> bool:
        return any(name == z or name.endswith("." + z) for z in zones)

    def resolve(self, request, handler):
        from dnslib import QTYPE as Q

        name = str(request.q.qname).lower().rstrip(".")
        if self.validating and self._under(name, self.bogus):
            reply = request.reply()
            reply.header.rcode = RCODE.SERVFAIL
            reply.header.ad = 0
            return reply
        reply = super().resolve(request, handler)
        reply.header.ad = 0  # request.reply() copies the query's flags, AD included
        do = any(r.rtype == Q.OPT and r.ttl & 0x8000 for r in request.ar)
        if do and reply.header.rcode == RCODE.NOERROR:
            for r in self.by_name.get(name, []):
                if r.rtype == Q.RRSIG and r.rdata.covered == request.q.qtype:
                    reply.add_answer(r)
        if self.validating and self._under(name, self.secure):
            reply.header.ad = 1
        return reply


@dataclass
class ExtrasDNS(LocalDNS):
    validating: bool = False

    def start(self) -> "ExtrasDNS":
        self.resolver = DnssecZoneResolver(self.records, validating=self.validating)
        logger = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False, logf=lambda s: None)
        port = self.port or _free_port(self.host)
        for tcp in (False, True):
            server = DNSServer(self.resolver, address=self.host, port=port, tcp=tcp, logger=logger)
            server.start_thread()
            self.servers.append(server)
        self.port = port
        return self


_extras: dict[bool, ExtrasDNS] = {}


def extras_server(validating: bool = False) -> ExtrasDNS:
    """One server per test process for the extra zones (plus the classic ones, for profiles)."""
    with _shared_lock:
        if validating not in _extras:
            import atexit

            records = extra_zones() if validating else test_zones() + bench_zones() + extra_zones()
            _extras[validating] = ExtrasDNS(records, validating=validating).start()
            atexit.register(_extras[validating].stop)
        return _extras[validating]


if pytest is not None:

    @pytest.fixture(scope="session")
    def extras_dns_server() -> ExtrasDNS:
        return extras_server()

    @pytest.fixture(scope="session")
    def validating_dns_server() -> ExtrasDNS:
        return extras_server(validating=True)

    @pytest.fixture
    def check(cli, extras_dns_server):
        """check("mx-good.test", "--checks", "mx") -> (Result, parsed JSON or None): dns check
        against the extra zones."""
        import json

        def run(*args: str, timeout: str = "3"):
            res = cli("dns", "check", *args, "--nameserver", extras_dns_server.address, "--timeout", timeout, "--json")
            data = json.loads(res.stdout) if res.stdout.strip() else None
            return res, data

        return run


def bench_full_zones() -> list[RR]:
    """benchfull.test, for the full `dns check --smtp` against `checkdmarc --check-mx-tls`
    (bench/dns_check.py): the ten-lookup SPF tree of bench.test, DKIM, DMARC, a really signed
    zone (DNSKEY, RRSIGs, DS; SOA and NS), an MX host and the MTA-STS policy host on 127.0.0.1
    (the bench's local SMTP and HTTPS servers), TLS-RPT and a BIMI record (a declination: a
    logo URL would make checkdmarc download and parse an SVG that mailctl does not fetch)."""
    d = "benchfull.test"
    return signed_zone(d) + [
        txt(d, f"v=spf1 include:b1.{d} include:b2.{d} mx a -all"),
        txt(f"b1.{d}", f"v=spf1 include:b3.{d} a:h1.{d} ip4:192.0.2.0/24 ~all"),
        txt(f"b3.{d}", f"v=spf1 exists:h2.{d} ip4:198.51.100.0/24 ~all"),
        txt(f"b2.{d}", f"v=spf1 a:h1.{d} a:h2.{d} mx:{d} ip4:203.0.113.0/24 ~all"),
        a(d, "192.0.2.1"), a(f"h1.{d}", "192.0.2.2"), a(f"h2.{d}", "192.0.2.3"),
        mx(d, f"mx.{d}"), a(f"mx.{d}", LOOPBACK), ptr("1.0.0.127.in-addr.arpa", f"mx.{d}"),
        txt(f"selector1._domainkey.{d}", f"v=DKIM1; k=rsa; p={rsa_spki(2048)}"),
        txt(f"_dmarc.{d}", f"v=DMARC1; p=reject; rua=mailto:dmarc@{d}"),
        txt(f"_mta-sts.{d}", STS_RECORD), a(f"mta-sts.{d}", LOOPBACK),
        txt(f"_smtp._tls.{d}", f"v=TLSRPTv1; rua=mailto:tls@{d}"),
        txt(f"default._bimi.{d}", "v=BIMI1; l=; a=;"),
    ]
