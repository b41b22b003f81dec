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
from dataclasses import dataclass, field
from typing import Iterable

from mailctl.errors import UsageError

OK = "ok"
NXDOMAIN = "nxdomain"
NODATA = "nodata"
SERVFAIL = "servfail"
TIMEOUT = "timeout"
TEMPORARY = (SERVFAIL, TIMEOUT)


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
                res.nameservers = [dns.nameserver.Do53Nameserver(ns.host, ns.port) for ns in self.nameservers]
            else:
                try:
                    res = dns.resolver.Resolver()
                except Exception as exc:  # no /etc/resolv.conf, etc.
                    raise UsageError(
                        f"no system DNS configuration: {exc}", hint="pass --nameserver IP[:PORT]"
                    ) from None
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

    def _query(self, name: str, rdtype: str) -> Lookup:
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
            return Lookup(name, rdtype, NODATA, cnames=cnames)
        return Lookup(name, rdtype, OK, tuple(_text(rdtype, rd) for rd in answer.rrset), cnames)


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
