"""A real authoritative DNS server on loopback (dnslib, UDP and TCP) serving test zones.

Used by tests/test_dns_*.py (session fixture) and bench/dns_check.py. Names under
servfail.test answer SERVFAIL; names outside the zones answer NXDOMAIN; CNAMEs are chased
inside the server like a recursive resolver would, so a client sees the whole chain.
"""

from __future__ import annotations

import base64
import os
import socket
import threading
from dataclasses import dataclass, field

from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RCODE, RR, TXT, A
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
    def __init__(self, records: list[RR], servfail_suffixes: tuple[str, ...] = ("servfail.test",)) -> None:
        self.by_name: dict[str, list[RR]] = {}
        for r in records:
            self.by_name.setdefault(str(r.rname).lower().rstrip("."), []).append(r)
        self.servfail = servfail_suffixes
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
            rrs = self.by_name.get(name, [])
            chain = [r for r in rrs if r.rtype == QTYPE.CNAME]
            if chain and qtype != QTYPE.CNAME:
                reply.add_answer(chain[0])
                name = str(chain[0].rdata.label).lower().rstrip(".")
                continue
            for r in rrs:
                if r.rtype == qtype:
                    reply.add_answer(r)
            if not rrs and not self._exists(name):
                reply.header.rcode = RCODE.NXDOMAIN
            return reply
        return reply


@dataclass
class LocalDNS:
    records: list[RR]
    host: str = "127.0.0.1"
    port: int = 0
    servers: list = field(default_factory=list)

    def start(self) -> "LocalDNS":
        self.resolver = ZoneResolver(self.records)
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
