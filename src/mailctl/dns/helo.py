"""HELO/EHLO name: what receivers check about the name a client says in EHLO, and about the
address it connects from (`dns check --helo NAME [--ip ADDR]`).

- the name is a fully-qualified domain name: not a bare word (Postfix
  reject_non_fqdn_helo_hostname), not malformed or an unbracketed IP address
  (reject_invalid_helo_hostname); an address literal `[192.0.2.1]` is valid syntax but a
  spam signal for most large receivers;
- it resolves to an address (reject_unknown_helo_hostname; Postfix also accepts an MX);
- for every --ip (the sending address): forward-confirmed reverse DNS, which Gmail's and
  Microsoft's sender rules require (a PTR record whose name resolves back to the address),
  and whether the HELO name is that PTR name (many filters score a mismatch)."""

from __future__ import annotations

import ipaddress
import re

from mailctl.dns import findings as F
from mailctl.dns.findings import CheckResult
from mailctl.dns.resolver import Lookup, Resolver, normalize

# A host name label (RFC 1123 2.1): letters, digits, inner hyphens; no underscores in HELO.
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _literal_address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address of an RFC 5321 4.1.3 address literal ([192.0.2.1], [IPv6:2001:db8::1])."""
    inner = name[1:-1]
    if inner.lower().startswith("ipv6:"):
        addr = _ip(inner[5:])
        return addr if addr is not None and addr.version == 6 else None
    addr = _ip(inner)
    return addr if addr is not None and addr.version == 4 else None


def _syntax(result: CheckResult, name: str) -> bool:
    """Findings about the form of the name; True when it is a name worth looking up."""
    if name.startswith("[") and name.endswith("]"):
        addr = _literal_address(name)
        if addr is None:
            result.add(F.error("helo.invalid", f"HELO name {name} is not a valid address literal (RFC 5321 4.1.3: [192.0.2.1] or "
                               "[IPv6:2001:db8::1]); receivers reject it (Postfix reject_invalid_helo_hostname)",
                               "send a fully-qualified host name that resolves to the sending address: "
                               "mailctl profile edit PROFILE --ehlo-name mail.example.com", name))
        else:
            result.data["literal"] = str(addr)
            result.add(F.warning("helo.address-literal", f"HELO name {name} is an address literal: valid, but Gmail, Microsoft and "
                                 "most spam filters distrust clients that do not name themselves",
                                 "send the host's fully-qualified name (the name its PTR record gives): "
                                 "mailctl profile edit PROFILE --ehlo-name mail.example.com", name))
        return False
    if _ip(name) is not None:
        result.add(F.error("helo.ip-literal", f"HELO name {name} is a bare IP address; receivers reject it as an invalid host name "
                           "(Postfix reject_invalid_helo_hostname; an address belongs in brackets: [192.0.2.1])",
                           "send a fully-qualified host name that resolves to the sending address: "
                           "mailctl profile edit PROFILE --ehlo-name mail.example.com", name))
        return False
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        result.add(F.error("helo.invalid", f"HELO name {name!r} is not a valid host name (letters, digits and inner hyphens in "
                           "dot-separated labels of at most 63, 253 in all); receivers reject it (Postfix "
                           "reject_invalid_helo_hostname)",
                           "send a fully-qualified host name such as mail.example.com: "
                           "mailctl profile edit PROFILE --ehlo-name mail.example.com", name))
        return False
    if len(labels) < 2:
        result.add(F.error("helo.not-fqdn", f"HELO name {name} is a bare word, not a fully-qualified domain name; receivers reject "
                           "it (Postfix reject_non_fqdn_helo_hostname: 504 5.5.2 Helo command rejected: need fully-qualified hostname)",
                           f"send a fully-qualified name ({name}.example.com, the host's name in DNS): "
                           f"mailctl profile edit PROFILE --ehlo-name {name}.example.com", name))
        return False
    if labels[-1] in ("localhost", "localdomain") or labels[0] == "localhost":
        result.add(F.error("helo.localhost", f"HELO name {name} is a local name that means nothing to the receiver; many reject it "
                           "outright, the rest score it as spam",
                           "send the host's public fully-qualified name: mailctl profile edit PROFILE --ehlo-name mail.example.com", name))
        return False
    return True


def _addresses(resolver: Resolver, name: str, result: CheckResult) -> list[str] | None:
    """The A and AAAA addresses of the name (None: a DNS failure, already reported)."""
    a, aaaa = resolver.lookup(name, "A"), resolver.lookup(name, "AAAA")
    failed = [lk for lk in (a, aaaa) if lk.temporary]
    for lk in failed:
        result.add(F.dns_failure(lk, "address of the HELO name"))
    if failed:
        return None
    addresses = list(dict.fromkeys(str(ipaddress.ip_address(r)) for r in a.records + aaaa.records))
    result.data["addresses"] = addresses
    if addresses:
        return addresses
    mx = resolver.lookup(name, "MX")
    if mx.temporary:
        result.add(F.dns_failure(mx, "MX of the HELO name"))
        return None
    if mx.records:
        result.add(F.warning("helo.no-address", f"HELO name {name} has no A or AAAA record, only MX: "
                             "Postfix accepts that, but receivers that match the name against the sending address cannot",
                             f"publish an A/AAAA record for {name} with the sending address", name))
    else:
        what = "does not exist (NXDOMAIN)" if a.status == "nxdomain" else "has no A or AAAA record"
        result.add(F.error("helo.unresolvable", f"HELO name {name} {what}; receivers reject it (Postfix reject_unknown_helo_hostname: "
                           "450 4.7.1 Helo command rejected: Host not found)",
                           f"publish an A/AAAA record for {name} with the sending address, or send a name that has one: "
                           "mailctl profile edit PROFILE --ehlo-name NAME", name))
    return addresses


def _forward_confirmed(resolver: Resolver, ip: str, names: list[str]) -> tuple[list[str], list[Lookup]]:
    """The PTR names of ip whose A/AAAA includes ip, and the forward lookups that failed."""
    rdtype = "AAAA" if ":" in ip else "A"
    resolver.prefetch((n, rdtype) for n in names)
    confirmed, failed = [], []
    for n in names:
        lk = resolver.lookup(n, rdtype)
        if lk.temporary:
            failed.append(lk)
        elif ip in {str(ipaddress.ip_address(r)) for r in lk.records}:
            confirmed.append(n)
    return confirmed, failed


def _check_ip(resolver: Resolver, result: CheckResult, helo: str, ip: str, helo_addresses: list[str] | None) -> dict:
    """Reverse DNS of one sending address, forward-confirmed, and the HELO name against it."""
    entry: dict = {"ip": ip, "ptr": [], "confirmed": [], "fcrdns": False, "helo_matches_ptr": False,
                   "helo_resolves_to_ip": None if helo_addresses is None else ip in helo_addresses}
    ptr = resolver.lookup(ipaddress.ip_address(ip).reverse_pointer, "PTR")
    if ptr.temporary:
        result.add(F.dns_failure(ptr, f"reverse DNS of {ip}"))
        return entry
    names = list(dict.fromkeys(normalize(n) for n in ptr.records))
    entry["ptr"] = names
    if not names:
        result.add(F.error("helo.no-ptr", f"{ip} has no reverse DNS (PTR) record; Gmail rejects mail from addresses without one "
                           "(550 5.7.25), Microsoft and most filters junk or reject it",
                           f"ask the owner of {ip} (the hosting provider or ISP) to publish a PTR record naming the host "
                           "(a name that resolves back to it, best the HELO name)", ip))
        return entry
    confirmed, failed = _forward_confirmed(resolver, ip, names)
    for lk in failed:
        result.add(F.dns_failure(lk, f"forward lookup of the reverse DNS name of {ip}"))
    entry["confirmed"] = confirmed
    entry["fcrdns"] = bool(confirmed)
    entry["helo_matches_ptr"] = helo in names
    if not confirmed and not failed:
        result.add(F.error("helo.ptr-not-confirmed", f"the reverse DNS of {ip} is {', '.join(names)}, which does not resolve back to "
                           f"{ip}: no forward-confirmed reverse DNS, which Gmail's and Microsoft's sender rules require",
                           f"make {names[0]} resolve to {ip} (an A/AAAA record), or have the PTR of {ip} changed to a name that does", ip))
    elif confirmed and helo not in names and not helo.startswith("["):  # a literal: helo.address-literal says it
        result.add(F.warning("helo.ptr-mismatch", f"HELO name {helo} is not the reverse DNS name of {ip} ({', '.join(confirmed)}); "
                             "many filters score a HELO that does not match the PTR",
                             f"send {confirmed[0]} in EHLO (mailctl profile edit PROFILE --ehlo-name {confirmed[0]}), or have the "
                             f"PTR of {ip} changed to {helo}", ip))
    return entry


def check_helo(resolver: Resolver, helo: str, ips: list[str] = ()) -> CheckResult:
    """The checks receivers make on HELO `helo` from the addresses `ips` (may be empty)."""
    name = normalize(helo) if not helo.strip().startswith("[") else helo.strip()
    result = CheckResult("helo", name)
    result.data["helo"] = name
    result.data["addresses"] = []
    lookable = _syntax(result, name)
    helo_addresses = _addresses(resolver, name, result) if lookable else []
    literal = result.data.get("literal")
    if literal is not None:
        helo_addresses = [literal]
    entries = []
    for ip in ips:
        entries.append(_check_ip(resolver, result, name, ip, helo_addresses))
        if literal is not None and ip != literal:
            result.add(F.error("helo.literal-mismatch", f"HELO address literal {name} is not the sending address {ip}; receivers "
                               "that compare them reject or score it", f"send [{ip}], or better the host's fully-qualified name", ip))
        elif lookable and helo_addresses and ip not in helo_addresses:
            result.add(F.info("helo.ip-not-in-helo", f"HELO name {name} resolves to {', '.join(helo_addresses)}, not to the sending "
                              f"address {ip}",
                              f"send the name of the host that sends (the PTR name of {ip}), or add {ip} to the A/AAAA records of {name}",
                              ip))
    result.data["ips"] = entries
    return result
