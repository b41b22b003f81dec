"""MX: the domain's mail exchangers (RFC 5321 5.1): present, a null MX (RFC 7505) alone, host
names rather than IP literals or CNAME aliases (RFC 2181 10.3), every host with an address,
reverse DNS of the addresses, DANE TLSA records. mx_hosts() is shared with the STARTTLS probe
and the MTA-STS check (the resolver's cache makes the second ask free)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from mailctl.dns import findings as F
from mailctl.dns.findings import CheckResult
from mailctl.dns.resolver import Lookup, Resolver, normalize

_LOCAL_NETS = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16",
    "::1/128", "::/128", "fc00::/7", "fe80::/10"))


@dataclass
class MxHost:
    preference: int
    host: str
    addresses: list[str] = field(default_factory=list)
    cname_chain: list[str] = field(default_factory=list)
    ip_literal: bool = False

    def to_dict(self) -> dict:
        d = {"preference": self.preference, "host": self.host, "addresses": self.addresses}
        if self.cname_chain:
            d["cname_chain"] = self.cname_chain
        if self.ip_literal:
            d["ip_literal"] = True
        return d


@dataclass
class MxSet:
    lookup: Lookup
    hosts: list[MxHost]  # sorted by preference, null MX excluded
    null_mx: bool = False
    malformed: list[str] = field(default_factory=list)
    address_lookups: list[Lookup] = field(default_factory=list)


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def mx_hosts(resolver: Resolver, domain: str, *, addresses: bool = True) -> MxSet:
    """The MX records of `domain`, sorted by preference, each host with its A/AAAA addresses."""
    lk = resolver.lookup(domain, "MX")
    hosts: list[MxHost] = []
    null_mx = False
    malformed = []
    for rec in lk.records:
        pref, _, host = rec.strip().partition(" ")
        host = normalize(host)
        try:
            preference = int(pref)
        except ValueError:
            malformed.append(rec)
            continue
        if host == "":
            null_mx = True
            continue
        hosts.append(MxHost(preference, host, ip_literal=_ip_literal(host)))
    hosts.sort(key=lambda h: (h.preference, h.host))
    mxset = MxSet(lk, hosts, null_mx, malformed)
    if addresses:
        names = [h.host for h in hosts if not h.ip_literal]
        resolver.prefetch((n, t) for n in dict.fromkeys(names) for t in ("A", "AAAA"))
        for h in hosts:
            if h.ip_literal:
                continue
            a, aaaa = resolver.lookup(h.host, "A"), resolver.lookup(h.host, "AAAA")
            mxset.address_lookups += [a, aaaa]
            h.addresses = list(dict.fromkeys(list(a.records) + list(aaaa.records)))
            chain = a.cnames or aaaa.cnames
            h.cname_chain = [t for _, t in chain]
    return mxset


def _reverse_name(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer


def check_mx(resolver: Resolver, domain: str) -> CheckResult:
    domain = normalize(domain)
    result = CheckResult("mx", domain)
    mxset = mx_hosts(resolver, domain)
    lk = mxset.lookup
    if lk.temporary:
        result.add(F.dns_failure(lk, "MX records"))
        return result
    result.data["hosts"] = [h.to_dict() for h in mxset.hosts]
    result.data["null_mx"] = mxset.null_mx
    result.data["count"] = len(mxset.hosts)
    if lk.status == "nxdomain":
        result.add(F.error("mx.nxdomain", f"{domain} does not exist (NXDOMAIN): mail From it is rejected as from a non-existent domain",
                           "register the domain or send from an existing one", domain))
        return result
    if mxset.null_mx:
        if mxset.hosts:
            result.add(F.error("mx.null-mx-mixed",
                               f"{domain} publishes a null MX ('0 .') next to {len(mxset.hosts)} other MX record(s) (RFC 7505 3: it must stand alone)",
                               "remove the null MX if the domain receives mail, else remove the other MX records", domain))
        else:
            result.add(F.warning("mx.null", f"{domain} has a null MX (RFC 7505): it accepts no mail, so bounces and replies are lost and receivers may reject mail from it (550 5.7.27)",
                                 f"publish real MX records if {domain} is used as a sender address", domain))
    for rec in mxset.malformed:
        result.add(F.error("mx.malformed", f"MX record of {domain} does not parse: '{rec}'", "publish 'PREFERENCE HOST'", domain))
    if not mxset.hosts and not mxset.null_mx:
        a = resolver.lookup(domain, "A")
        implicit = " (mail to it goes to its A record, the implicit MX of RFC 5321 5.1)" if a.records else ""
        result.add(F.warning("mx.missing", f"{domain} has no MX record{implicit}: bounces and replies to it may be lost and some receivers distrust such senders",
                             f"publish an MX record for {domain} (or a null MX '0 .' if it never receives mail)", domain))
        return result
    for lk2 in mxset.address_lookups:
        if lk2.temporary:
            result.add(F.dns_failure(lk2, "address of an MX host"))
    seen = set()
    for h in mxset.hosts:
        if h.host in seen:
            result.add(F.info("mx.duplicate-host", f"{h.host} appears in more than one MX record of {domain}", "keep one MX record per host", h.host))
        seen.add(h.host)
    resolvable = [h for h in mxset.hosts if h.addresses]
    for h in {h.host: h for h in mxset.hosts}.values():
        if h.ip_literal:
            result.add(F.error("mx.ip-literal", f"the MX record of {domain} names an IP address ({h.host}) instead of a host name; senders look it up as a name and fail",
                               f"publish an A record (e.g. mx.{domain} A {h.host.strip('[]')}) and point the MX at that name", h.host))
            continue
        if h.cname_chain:
            result.add(F.warning("mx.cname", f"MX host {h.host} is a CNAME ({' -> '.join([h.host] + h.cname_chain)}); RFC 2181 10.3 forbids MX targets that are aliases",
                                 f"point the MX record at the canonical name {h.cname_chain[-1]}", h.host))
        if not h.addresses and not result.temporary:
            if resolvable:
                result.add(F.warning("mx.host-unresolvable", f"MX host {h.host} (preference {h.preference}) has no A or AAAA record; senders skip it",
                                     f"publish an address for {h.host} or remove its MX record", h.host))
            else:
                result.add(F.error("mx.host-unresolvable", f"MX host {h.host} (preference {h.preference}) has no A or AAAA record, and no other MX host has one: mail to {domain} cannot be delivered",
                                   f"publish an address for {h.host} or point the MX at a host that has one", h.host))
        for ip in h.addresses:
            if any(ipaddress.ip_address(ip) in net for net in _LOCAL_NETS if net.version == ipaddress.ip_address(ip).version):
                result.add(F.warning("mx.private-address", f"MX host {h.host} resolves to {ip}, an address not reachable from the Internet",
                                     f"publish the public address of {h.host}", ip))
    if result.temporary:
        return result
    # reverse DNS of every address, forward-confirmed; DANE TLSA at _25._tcp.<host>
    addrs = [(h, ip) for h in resolvable for ip in h.addresses]
    resolver.prefetch([(_reverse_name(ip), "PTR") for _, ip in addrs] +
                      [(f"_25._tcp.{h.host}", "TLSA") for h in resolvable])
    confirm = []
    for h, ip in addrs:
        ptr = resolver.lookup(_reverse_name(ip), "PTR")
        names = [normalize(n) for n in ptr.records]
        entry = next(d for d in result.data["hosts"] if d["host"] == h.host)
        entry.setdefault("reverse_dns", {})[ip] = names
        if not ptr.temporary and names:
            confirm.append((h, ip, names))
        elif not ptr.temporary:
            result.add(F.info("mx.no-reverse-dns", f"{ip} (MX host {h.host}) has no reverse DNS (PTR) record",
                              f"ask the owner of {ip} to publish a PTR record naming {h.host}", ip))
    resolver.prefetch((n, "AAAA" if ":" in ip else "A") for _, ip, names in confirm for n in names)
    for h, ip, names in confirm:
        forward = [resolver.lookup(n, "AAAA" if ":" in ip else "A") for n in names]
        if not any(str(ipaddress.ip_address(ip)) in {str(ipaddress.ip_address(r)) for r in f.records} for f in forward):
            result.add(F.info("mx.reverse-dns-mismatch", f"the reverse DNS of {ip} is {', '.join(names)}, which does not resolve back to {ip}",
                              f"make {names[0]} resolve to {ip} (forward-confirmed reverse DNS)", ip))
    for h in resolvable:
        tlsa = resolver.lookup(f"_25._tcp.{h.host}", "TLSA")
        if tlsa.records:
            entry = next(d for d in result.data["hosts"] if d["host"] == h.host)
            entry["tlsa"] = list(tlsa.records)
    return result
