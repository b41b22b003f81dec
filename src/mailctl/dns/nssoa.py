"""NS and SOA basics: the zone the domain lives in (its SOA), the zone's nameservers (at least
two, RFC 1034 4.1 / RFC 2182 5), that each nameserver name resolves, and SOA timers in the
ranges RFC 1912 2.2 recommends."""

from __future__ import annotations

from mailctl.dns import findings as F
from mailctl.dns.findings import CheckResult
from mailctl.dns.psl import organizational_domain
from mailctl.dns.resolver import Lookup, Resolver, normalize

# RFC 1912 2.2 (and RIPE-203): (low, high) in seconds; outside is a warning
SOA_RANGES = {
    "refresh": (1200, 86400),
    "retry": (120, 7200),
    "expire": (604800, 2419200),
    "minimum": (60, 86400),
}


def zone_apex(resolver: Resolver, domain: str) -> tuple[str | None, Lookup | None]:
    """(apex, its SOA lookup): the closest enclosing name with an SOA record, asking the domain
    and its parents (down to the public suffix) at once. (None, failed lookup) on a DNS
    failure; (None, None) when no SOA is found."""
    domain = normalize(domain)
    labels = domain.split(".")
    org = organizational_domain(domain)
    stop = len(labels) - len(org.split("."))
    candidates = [".".join(labels[i:]) for i in range(0, max(stop, 0) + 1)] or [domain]
    resolver.prefetch((c, "SOA") for c in candidates)
    for c in candidates:
        lk = resolver.lookup(c, "SOA")
        if lk.temporary:
            return None, lk
        if lk.status == "ok" and not lk.cnames:
            return c, lk
    return None, None


def parse_soa(text: str) -> dict | None:
    parts = text.split()
    if len(parts) != 7:
        return None
    try:
        serial, refresh, retry, expire, minimum = (int(p) for p in parts[2:])
    except ValueError:
        return None
    return {"mname": normalize(parts[0]), "rname": _rname_email(parts[1]), "serial": serial, "refresh": refresh,
            "retry": retry, "expire": expire, "minimum": minimum}


def _rname_email(rname: str) -> str:
    """hostmaster.example.com. -> hostmaster@example.com (the first unescaped dot)."""
    s = normalize(rname)
    i = 0
    while i < len(s):
        if s[i] == "\\":
            i += 2
            continue
        if s[i] == ".":
            return s[:i].replace("\\.", ".") + "@" + s[i + 1:]
        i += 1
    return s


def check_ns(resolver: Resolver, domain: str) -> CheckResult:
    domain = normalize(domain)
    result = CheckResult("ns", domain)
    apex, soa = zone_apex(resolver, domain)
    if soa is not None and soa.temporary:
        result.add(F.dns_failure(soa, "SOA record"))
        return result
    result.data["zone"] = apex
    if apex is None:
        exists = resolver.lookup(domain, "NS")
        if exists.temporary:
            result.add(F.dns_failure(exists, "NS records"))
            return result
        if exists.status == "nxdomain":
            result.add(F.error("ns.nxdomain", f"{domain} does not exist (NXDOMAIN)",
                               f"register {organizational_domain(domain)} or fix the name", domain))
        else:
            result.add(F.warning("ns.no-soa", f"no SOA record found for {domain} or its parent zones, so its zone is unknown",
                                 "check that the nameservers serve the zone (dig SOA " + organizational_domain(domain) + ")", domain))
        return result
    values = parse_soa(soa.records[0]) if soa.records else None
    result.data["soa"] = {"record": soa.records[0], **(values or {})} if soa.records else None
    ns = resolver.lookup(apex, "NS")
    if ns.temporary:
        result.add(F.dns_failure(ns, "NS records"))
        return result
    hosts = sorted(set(ns.records))
    result.data["nameservers"] = []
    if not hosts:
        result.add(F.error("ns.missing", f"the zone {apex} publishes no NS records",
                           f"publish the zone's nameservers as NS records at {apex} (and at the registrar)", apex))
    elif len(hosts) == 1:
        result.add(F.warning("ns.single", f"the zone {apex} has one nameserver ({hosts[0]}); when it is down the domain disappears",
                             "add a second nameserver, preferably in another network (RFC 2182)", apex))
    resolver.prefetch((h, t) for h in hosts for t in ("A", "AAAA"))
    unresolvable = []
    for h in hosts:
        a, aaaa = resolver.lookup(h, "A"), resolver.lookup(h, "AAAA")
        for lk in (a, aaaa):
            if lk.temporary:
                result.add(F.dns_failure(lk, f"address of nameserver {h}"))
        addresses = list(a.records) + list(aaaa.records)
        result.data["nameservers"].append({"host": h, "addresses": addresses})
        if not addresses and not (a.temporary or aaaa.temporary):
            unresolvable.append(h)
    for h in unresolvable:
        result.add(F.error("ns.unresolvable", f"nameserver {h} of {apex} has no A or AAAA record",
                           f"fix or remove the NS record {apex} NS {h}", h))
    if values is None and soa.records:
        result.add(F.info("ns.soa-values", f"the SOA record of {apex} does not parse: {soa.records[0]}",
                             "check the zone's SOA record", apex))
    elif values is not None:
        odd = [f"{k}={values[k]} (recommended {lo}-{hi})" for k, (lo, hi) in SOA_RANGES.items() if not lo <= values[k] <= hi]
        if values["retry"] >= values["refresh"]:
            odd.append(f"retry={values['retry']} is not below refresh={values['refresh']}")
        if odd:
            result.add(F.info("ns.soa-values", f"SOA timers of {apex} outside the usual ranges: " + ", ".join(odd),
                              "see RFC 1912 2.2 for the recommended refresh, retry, expire and minimum", apex))
    return result
