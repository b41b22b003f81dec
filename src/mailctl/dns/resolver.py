"""A small, thread-safe, caching wrapper around dnspython.

Every query returns a Lookup whose status says what happened (ok, nxdomain, nodata,
servfail, timeout) instead of raising: SPF needs to tell a void lookup from a temporary error,
and a report must keep going after one failed name. Concurrent callers asking the same question
share one query in flight; prefetch() starts queries on a thread pool without waiting, so a
recursive walk finds its answers ready.
"""

from __future__ import annotations

import ipaddress
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Iterable

from mailctl.errors import UsageError

OK = "ok"
NXDOMAIN = "nxdomain"
NODATA = "nodata"
SERVFAIL = "servfail"
TIMEOUT = "timeout"
TEMPORARY = (SERVFAIL, TIMEOUT)
MAX_CNAMES = 8  # CNAME hops followed for one question


@dataclass(frozen=True)
class Lookup:
    name: str
    rdtype: str
    status: str
    records: tuple[str, ...] = ()
    cnames: tuple[tuple[str, str], ...] = ()  # (alias, target) in the order followed
    error: str = ""

    @property
    def temporary(self) -> bool:
        return self.status in TEMPORARY

    @property
    def void(self) -> bool:
        """RFC 7208 4.6.4: an empty answer or NXDOMAIN."""
        return self.status in (NXDOMAIN, NODATA)


@dataclass(frozen=True)
class RawAnswer:
    """One response of Resolver.message(): the status as in Lookup, the header flags that
    matter for DNSSEC (AD, AA, TC) and the dnspython message itself (None on failure)."""

    name: str
    rdtype: str
    status: str
    flags: frozenset = frozenset()
    response: object = None
    error: str = ""

    @property
    def temporary(self) -> bool:
        return self.status in TEMPORARY

    @property
    def authenticated(self) -> bool:
        return "AD" in self.flags

    def rrsets(self, rdtype: str, name: str | None = None) -> list:
        """The answer's RRsets of a type (RRSIG: all signatures) at `name` (default: the query name)."""
        if self.response is None:
            return []
        import dns.rdatatype

        owner = normalize(name or self.name)
        want = rdtype.upper()
        out = []
        for rrset in self.response.answer:
            if normalize(rrset.name.to_text()) == owner and dns.rdatatype.to_text(rrset.rdtype) == want:
                out.append(rrset)
        return out


@dataclass(frozen=True)
class Nameserver:
    host: str
    port: int = 53

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_nameserver(text: str) -> Nameserver:
    """IP, IP:PORT, [IPv6]:PORT or a bare IPv6 address."""
    value = text.strip()
    host, port = value, 53
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise UsageError(f"invalid nameserver {text!r}", hint="use IP, IP:PORT or [IPv6]:PORT")
            port = _port(rest[1:], text)
    elif value.count(":") == 1:
        host, _, p = value.partition(":")
        port = _port(p, text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(
            f"invalid nameserver {text!r}: not an IP address", hint="use IP, IP:PORT or [IPv6]:PORT"
        ) from None
    return Nameserver(host, port)


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"invalid nameserver port in {whole!r}", hint="a port is 1-65535")
    return int(text)


@dataclass
class Resolver:
    nameservers: list[Nameserver] = field(default_factory=list)
    timeout: float = 5.0
    max_workers: int = 16
    queries: int = 0  # number of queries actually sent (cache misses), for reports and benches

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._setup_lock = threading.Lock()
        self._cache: dict[tuple[str, str], Future] = {}
        self._raw_cache: dict[tuple, Future] = {}  # message(): whole responses, for DNSSEC
        self._pool: ThreadPoolExecutor | None = None
        self._dns = None

    # -- setup ------------------------------------------------------------------------------
    def _resolver(self):
        with self._setup_lock:  # the first queries arrive from several threads at once
            return self._make_resolver()

    def _make_resolver(self):
        if self._dns is None:
            _light_dnspython()
            import dns.nameserver
            import dns.resolver

            if self.nameservers:
                res = dns.resolver.Resolver(configure=False)
                res.nameservers = [_tolerant_nameserver(ns.host, ns.port) for ns in self.nameservers]
            else:
                try:
                    res = dns.resolver.Resolver()
                except Exception as exc:  # no /etc/resolv.conf, etc.
                    raise UsageError(
                        f"no system DNS configuration: {exc}", hint="pass --nameserver IP[:PORT]"
                    ) from None
                res.nameservers = [_system_nameserver(res, ns) for ns in res.nameservers]
            res.timeout = self.timeout
            res.lifetime = self.timeout
            res.cache = None  # we cache ourselves, per run
            self._dns = res
        return self._dns

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "Resolver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- queries ----------------------------------------------------------------------------
    def lookup(self, name: str, rdtype: str) -> Lookup:
        key = (normalize(name), rdtype.upper())
        with self._lock:
            fut = self._cache.get(key)
            owner = fut is None
            if owner:
                fut = Future()
                self._cache[key] = fut
        if owner:
            try:
                fut.set_result(self._query(*key))
            except BaseException as exc:  # never leave waiters hanging
                fut.set_result(Lookup(key[0], key[1], SERVFAIL, error=f"{type(exc).__name__}: {exc}"))
        return fut.result()

    def prefetch(self, questions: Iterable[tuple[str, str]]) -> None:
        """Start queries in the background; later lookup() calls pick up the answers."""
        for name, rdtype in questions:
            key = (normalize(name), rdtype.upper())
            with self._lock:
                if key in self._cache:
                    continue
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="mailctl-dns")
            self._pool.submit(self.lookup, *key)

    def txt(self, name: str) -> Lookup:
        return self.lookup(name, "TXT")

    def message(self, name: str, rdtype: str, *, dnssec: bool = True,
                nameservers: list[Nameserver] | None = None) -> "RawAnswer":
        """The whole response (flags, RRSIGs) of one query with the DO and AD bits set, for the
        DNSSEC check; cached like lookup(). `nameservers` overrides the resolver's (a
        validating resolver given with --dnssec-resolver)."""
        servers = tuple(nameservers) if nameservers else None
        key = (normalize(name), rdtype.upper(), dnssec, servers)
        with self._lock:
            fut = self._raw_cache.get(key)
            owner = fut is None
            if owner:
                fut = Future()
                self._raw_cache[key] = fut
        if owner:
            try:
                fut.set_result(self._raw_query(key[0], key[1], dnssec, servers))
            except BaseException as exc:  # never leave waiters hanging
                fut.set_result(RawAnswer(key[0], key[1], SERVFAIL, error=f"{type(exc).__name__}: {exc}"))
        return fut.result()

    def _raw_query(self, name: str, rdtype: str, dnssec: bool, servers) -> "RawAnswer":
        import time

        res = self._resolver()  # sets dnspython up first (see _light_dnspython)
        import dns.exception
        import dns.flags
        import dns.message
        import dns.nameserver
        import dns.rcode
        import dns.rdatatype

        targets = [dns.nameserver.Do53Nameserver(ns.host, ns.port) for ns in servers] if servers else [
            ns if isinstance(ns, dns.nameserver.Nameserver) else dns.nameserver.Do53Nameserver(str(ns), 53)
            for ns in res.nameservers]
        request = dns.message.make_query(name, rdtype, want_dnssec=dnssec, payload=1232)
        request.flags |= dns.flags.AD  # RFC 6840 5.7: ask for the AD bit
        deadline = time.monotonic() + self.timeout
        last = RawAnswer(name, rdtype, TIMEOUT, error="no nameserver answered")
        for ns in targets:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with self._lock:
                self.queries += 1
            try:
                try:
                    response = ns.query(request, left, None, 0, False)
                except dns.message.Truncated:
                    response = ns.query(request, max(deadline - time.monotonic(), 0.01), None, 0, True)
            except (dns.exception.Timeout, TimeoutError) as exc:
                last = RawAnswer(name, rdtype, TIMEOUT, error=str(exc) or "timed out")
                continue
            except (OSError, dns.exception.DNSException) as exc:
                last = RawAnswer(name, rdtype, SERVFAIL, error=f"{type(exc).__name__}: {exc}")
                continue
            rcode = response.rcode()
            flags = frozenset(f for f in ("AD", "AA", "TC") if response.flags & getattr(dns.flags, f))
            if rcode == dns.rcode.SERVFAIL:
                last = RawAnswer(name, rdtype, SERVFAIL, flags=flags, error="SERVFAIL")
                continue
            if rcode == dns.rcode.NXDOMAIN:
                return RawAnswer(name, rdtype, NXDOMAIN, flags=flags, response=response)
            if rcode != dns.rcode.NOERROR:
                last = RawAnswer(name, rdtype, SERVFAIL, flags=flags, error=dns.rcode.to_text(rcode))
                continue
            qname = request.question[0].name
            found = any(rrset.name == qname and rrset.rdtype == dns.rdatatype.from_text(rdtype) for rrset in response.answer) \
                if response.answer else False
            return RawAnswer(name, rdtype, OK if found else NODATA, flags=flags, response=response)
        return last

    def _query(self, name: str, rdtype: str, chain: tuple[tuple[str, str], ...] = ()) -> Lookup:
        res = self._resolver()  # first: it sets dnspython up before anything imports it
        import dns.exception
        import dns.name
        import dns.resolver

        with self._lock:
            self.queries += 1
        try:
            answer = res.resolve(name, rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN as exc:
            return Lookup(name, rdtype, NXDOMAIN, cnames=_nx_cnames(exc))
        except (dns.resolver.LifetimeTimeout, dns.exception.Timeout) as exc:
            return Lookup(name, rdtype, TIMEOUT, error=str(exc))
        except dns.resolver.NoNameservers as exc:
            return Lookup(name, rdtype, SERVFAIL, error=str(exc))
        except (dns.name.EmptyLabel, dns.name.LabelTooLong, dns.name.NameTooLong) as exc:
            return Lookup(name, rdtype, NXDOMAIN, error=str(exc))
        except dns.exception.DNSException as exc:
            return Lookup(name, rdtype, SERVFAIL, error=f"{type(exc).__name__}: {exc}")
        cnames = _cnames(answer)
        if answer.rrset is None:
            target = cnames[-1][1] if cnames else ""
            seen = {alias for alias, _ in chain + cnames}
            if target and rdtype != "CNAME" and target not in seen and len(chain + cnames) < MAX_CNAMES:
                # a bare CNAME (an authoritative server does not chase into another zone):
                # ask for the target ourselves, as a resolver does (RFC 1034 5.3.3)
                rest = self._query(target, rdtype, chain + cnames)
                return replace(rest, name=name, cnames=cnames + rest.cnames)
            return Lookup(name, rdtype, NODATA, cnames=cnames)
        return Lookup(name, rdtype, OK, tuple(_text(rdtype, rd) for rd in answer.rrset), cnames)


def _system_nameserver(res, ns):
    import dns.nameserver

    if isinstance(ns, dns.nameserver.Do53Nameserver):
        return _tolerant_nameserver(ns.address, ns.port)
    if isinstance(ns, str) and _is_ip(ns):
        return _tolerant_nameserver(ns, res.nameserver_ports.get(ns, res.port))
    return ns  # DoH and the like: as configured


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


_tolerant_class = None


def _tolerant_nameserver(host: str, port: int):
    """A plain DNS (UDP, TCP on truncation) nameserver that judges an answer on the records it
    can parse. dnspython refuses a whole message over one malformed record (a TXT record with
    no strings, for one), and over UDP it then waits for another answer until the timeout, so
    a name with a stray empty TXT record looked like a temporary failure. Here the message is
    parsed with continue_on_error: the bad record is dropped, the rest of the answer kept."""
    global _tolerant_class
    if _tolerant_class is None:
        import dns.nameserver

        class TolerantNameserver(dns.nameserver.Do53Nameserver):
            def query(self, request, timeout, source, source_port, max_size, one_rr_per_rrset=False,
                      ignore_trailing=False):
                return _exchange(request, self.address, self.port, timeout, tcp=max_size,
                                 one_rr_per_rrset=one_rr_per_rrset, ignore_trailing=ignore_trailing)

        _tolerant_class = TolerantNameserver
    return _tolerant_class(host, port)


def _exchange(request, host: str, port: int, timeout: float, *, tcp: bool, **options):
    """One query and its answer, as dns.query.udp()/tcp() do for the resolver: an answer from
    another address, with another id or that does not parse at all is ignored (UDP: keep
    listening); a truncated one raises dns.message.Truncated, so the resolver retries over TCP."""
    import socket
    import time

    import dns.exception
    import dns.message
    import dns.query

    wire = request.to_wire()
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise dns.exception.Timeout(timeout=timeout)
        return left

    def parse(data: bytes, truncation: bool):
        try:
            return dns.message.from_wire(data, continue_on_error=True, raise_on_truncation=truncation, **options)
        except dns.message.Truncated as exc:
            if request.is_response(exc.message()):
                raise
        except Exception:
            pass
        return None

    try:
        if tcp:
            with socket.create_connection((host, port), timeout=remaining()) as sock:
                sock.sendall(len(wire).to_bytes(2, "big") + wire)
                size = int.from_bytes(_read(sock, 2, remaining), "big")
                response = parse(_read(sock, size, remaining), False)
            if response is None or not request.is_response(response):
                raise dns.query.BadResponse
            return response
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        expected = ipaddress.ip_address(host)
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.sendto(wire, (host, port))
            while True:
                sock.settimeout(remaining())
                data, source = sock.recvfrom(65535)
                if ipaddress.ip_address(source[0].split("%")[0]) != expected or source[1] != port:
                    continue
                response = parse(data, True)
                if response is not None and request.is_response(response):
                    return response
    except socket.timeout:
        raise dns.exception.Timeout(timeout=timeout) from None


def _read(sock, count: int, remaining) -> bytes:
    data = b""
    while len(data) < count:
        sock.settimeout(remaining())
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError("the nameserver closed the connection")
        data += chunk
    return data


def _light_dnspython() -> None:
    """Plain DNS over UDP/TCP is all we need: tell dnspython not to load its optional DoH,
    DoQ, DNSSEC and IDNA 2008 backends (httpx alone costs ~150 ms of start-up, a large share
    of a `mailctl dns check` run). Only effective before dns.query is first imported."""
    import sys

    if "dns.query" in sys.modules:
        return
    try:
        import dns._features as features

        for feature in ("doh", "doq", "dnssec", "trio", "wmi", "idna"):
            features.force(feature, False)
    except Exception:  # a private API: if it moves, we are only slower
        pass


def _cnames(answer) -> tuple[tuple[str, str], ...]:
    out = []
    chain = getattr(answer, "chaining_result", None)
    for rrset in getattr(chain, "cnames", []) or []:
        for rd in rrset:
            out.append((normalize(rrset.name.to_text()), normalize(rd.target.to_text())))
    return tuple(out)


def _nx_cnames(exc) -> tuple[tuple[str, str], ...]:
    try:
        responses = exc.responses()
        qnames = exc.qnames()
    except Exception:
        return ()
    for qname in qnames:
        response = responses.get(qname)
        if response is None:
            continue
        try:
            chain = response.resolve_chaining()
        except Exception:
            continue
        out = []
        for rrset in chain.cnames:
            for rd in rrset:
                out.append((normalize(rrset.name.to_text()), normalize(rd.target.to_text())))
        return tuple(out)
    return ()


def _text(rdtype: str, rd) -> str:
    if rdtype == "TXT":
        # one TXT record may be split into several strings: they are concatenated (RFC 7208 3.3)
        return b"".join(rd.strings).decode("utf-8", "replace")
    if rdtype == "MX":
        return f"{rd.preference} {normalize(rd.exchange.to_text())}"
    if rdtype in ("CNAME", "PTR", "NS"):
        return normalize(rd.target.to_text())
    return rd.to_text()


def normalize(name: str) -> str:
    return name.strip().rstrip(".").lower()
