"""Will a profile's mail pass DMARC? DMARC (RFC 7489 3.1, 4.2) passes when SPF passes for a
MAIL FROM domain aligned with the From domain, or a DKIM signature verifies with a d= domain
aligned with it. What each sender uses:

- Microsoft 365 (SMTP, Graph, EWS): MAIL FROM is the From address, sent from the addresses in
  spf.protection.outlook.com; DKIM d= is the From domain only once selector1/selector2 are
  CNAMEs to the tenant's keys and signing is on (else d=<tenant>.onmicrosoft.com, unaligned).
- Google Workspace / Gmail: MAIL FROM is the From address, sent from _spf.google.com's
  addresses; d= is the From domain with a key at google._domainkey (else d=*.gappssmtp.com).
- A custom relay: mailctl sends MAIL FROM = the From address, so SPF must pass for the relay's
  addresses; DNS cannot say how the relay signs (--selector names the key it would use).

The SPF side is decided by evaluating check_host() for an address of the provider (taken from
its SPF record) or of the relay, so lookup limits and `-all` before the include count too."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from mailctl.dns.psl import organizational_domain
from mailctl.dns.resolver import Resolver, normalize

_DMARC = re.compile(r"^v\s*=\s*DMARC1\s*(;|$)")
_INCLUDE = re.compile(r"(?:^|\s)[+]?(?:include:|redirect=)(\S+)", re.IGNORECASE)
_IP4 = re.compile(r"(?:^|\s)[+]?ip4:(\S+)", re.IGNORECASE)
_IP6 = re.compile(r"(?:^|\s)[+]?ip6:(\S+)", re.IGNORECASE)
_KEY = re.compile(r"(?:^|;)\s*p\s*=\s*([A-Za-z0-9+/=]+)")


def applied_dmarc(resolver: Resolver, domain: str) -> tuple[str | None, dict[str, str], list]:
    """(record domain, tags, temporary lookups) of the DMARC record that applies to `domain`:
    its own, else its organizational domain's (RFC 7489 6.6.3)."""
    org = organizational_domain(domain)
    names = [domain] if org == domain else [domain, org]
    resolver.prefetch((f"_dmarc.{n}", "TXT") for n in names)
    for n in names:
        lk = resolver.txt(f"_dmarc.{n}")
        if lk.temporary:
            return None, {}, [lk]
        records = [r for r in lk.records if _DMARC.match(r)]
        if len(records) == 1:
            tags = {}
            for part in records[0].split(";"):
                key, sep, value = part.partition("=")
                if sep and key.strip().lower() not in tags:
                    tags[key.strip().lower()] = value.strip()
            return n, tags, []
        if records:
            return None, {}, []  # several records: receivers ignore them all
    return None, {}, []


def aligned(auth_domain: str, from_domain: str, mode: str) -> bool:
    """RFC 7489 3.1: strict = the same name; relaxed = the same organizational domain."""
    a, f = normalize(auth_domain), normalize(from_domain)
    if mode == "s":
        return a == f
    return organizational_domain(a) == organizational_domain(f)


def provider_address(resolver: Resolver, include: str, limit: int = 10) -> str | None:
    """An address the provider sends from: the first ip4 (else ip6) network of its SPF record
    or of the records it includes, breadth first."""
    queue, seen, v6 = [normalize(include)], set(), None
    while queue and len(seen) < limit:
        name = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        lk = resolver.txt(name)
        for record in (r for r in lk.records if r.lower().startswith("v=spf1")):
            for net in _IP4.findall(record):
                ip = _first_host(net)
                if ip:
                    return ip
            for net in _IP6.findall(record):
                v6 = v6 or _first_host(net)
            targets = [normalize(t) for t in _INCLUDE.findall(record) if "%" not in t]
            resolver.prefetch((t, "TXT") for t in targets)
            queue += targets
    return v6


def _first_host(network: str) -> str | None:
    try:
        net = ipaddress.ip_network(network, strict=False)
    except ValueError:
        return None
    return str(net.network_address + 1) if net.num_addresses > 2 else str(net.network_address)


def has_key(resolver: Resolver, name: str) -> tuple[bool, Any]:
    """(a non-revoked key is published at `name`, the lookup)."""
    lk = resolver.txt(name)
    return any(_KEY.search(r) for r in lk.records), lk


def verdict(spf_pass: bool | None, dkim_pass: bool | None) -> str:
    if spf_pass or dkim_pass:
        return "pass"
    if spf_pass is False and dkim_pass is False:
        return "fail"
    return "unknown"
