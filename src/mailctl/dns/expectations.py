"""What a sending profile needs from its From domain's DNS: Microsoft 365 and Google publish
fixed SPF includes and DKIM selectors; a custom SMTP host's addresses must pass SPF."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mailctl.dns import alignment as A
from mailctl.dns import findings as F
from mailctl.dns.findings import CheckResult
from mailctl.dns.resolver import Resolver, normalize
from mailctl.dns.spf import SpfEvaluator, SpfWalker


@dataclass(frozen=True)
class ProviderDns:
    spf_include: str
    selectors: tuple[str, ...]
    selectors_are_cnames: bool


PROVIDERS: dict[str, ProviderDns] = {
    "microsoft365": ProviderDns("spf.protection.outlook.com", ("selector1", "selector2"), True),
    "gmail": ProviderDns("_spf.google.com", ("google",), False),
    "google": ProviderDns("_spf.google.com", ("google",), False),
}
PROVIDER_HOSTS = {"smtp.office365.com": "microsoft365", "smtp-mail.outlook.com": "microsoft365",
                  "smtp.gmail.com": "gmail", "smtp-relay.gmail.com": "gmail"}


def provider_for(provider: str | None, host: str | None, transport: str | None = None) -> str | None:
    """The provider whose DNS expectations apply: the profile's preset, else guessed from the host
    or the transport (graph and ews are Microsoft 365)."""
    p = (provider or "").lower()
    if p in PROVIDERS:
        return p
    if host and normalize(host) in PROVIDER_HOSTS:
        return PROVIDER_HOSTS[normalize(host)]
    if (transport or "").lower() in ("graph", "ews"):
        return "microsoft365"
    if (transport or "").lower() == "gmail-api":
        return "gmail"
    return None


def check_profile(resolver: Resolver, from_domain: str, *, provider: str | None, host: str | None,
                  transport: str | None = None, profile: str = "", selectors: list[str] | tuple[str, ...] = ()) -> CheckResult:
    from_domain = normalize(from_domain)
    result = CheckResult("profile", from_domain)
    name = provider_for(provider, host, transport)
    result.data.update({"profile": profile or None, "provider": name or (provider or "custom"), "host": host or None})
    expected = PROVIDERS.get(name or "")
    if expected is not None:
        _check_provider(resolver, from_domain, name, expected, result)
        if not result.temporary:
            _provider_alignment(resolver, from_domain, name, expected, result)
    elif host and (transport or "smtp").lower() == "smtp":
        _check_host(resolver, from_domain, host, result)
        if not result.temporary:
            _relay_alignment(resolver, from_domain, normalize(host), list(selectors), result)
    return result


# -- DMARC alignment: will this profile's mail pass DMARC? (see dns/alignment.py) ----------------
_DKIM_FALLBACK = {"microsoft365": "<tenant>.onmicrosoft.com", "gmail": "<domain>.<date>.gappssmtp.com",
                  "google": "<domain>.<date>.gappssmtp.com"}


def _provider_alignment(resolver: Resolver, domain: str, name: str, expected: ProviderDns, result: CheckResult) -> None:
    where, tags, failed = A.applied_dmarc(resolver, domain)
    for lk in failed:
        result.add(F.dns_failure(lk, "DMARC record (alignment)"))
    ip = A.provider_address(resolver, expected.spf_include)
    spf: dict = {"mail_from_domain": domain, "ip": ip, "aligned": A.aligned(domain, domain, tags.get("aspf", "r"))}
    if ip is None:
        spf.update({"result": None, "pass": None, "note": f"no address found in the SPF record of {expected.spf_include}"})
    else:
        ev = SpfEvaluator(resolver, ip, f"postmaster@{domain}").evaluate(domain)
        if ev.result == "temperror":
            result.add(F.Finding(F.Severity.ERROR, "spf.temperror", f"SPF for {name} ({ip}): temperror ({ev.reason})",
                                 "check that the nameserver answers, retry later or raise --timeout", ip, temporary=True))
        spf.update({"result": ev.result, "pass": ev.result == "pass" and spf["aligned"]})
    resolver.prefetch((f"{s}._domainkey.{domain}", "TXT") for s in expected.selectors)
    keyed = []
    for s in expected.selectors:
        found, lk = A.has_key(resolver, f"{s}._domainkey.{domain}")
        if found and (lk.cnames or not expected.selectors_are_cnames):
            keyed.append(s)
    dkim_ok = bool(keyed) and A.aligned(domain, domain, tags.get("adkim", "r"))
    dkim = {"signing_domain": domain if keyed else _DKIM_FALLBACK.get(name), "selectors": keyed, "pass": dkim_ok,
            "aligned": bool(keyed)}
    if not keyed:
        dkim["note"] = f"without a key at {' or '.join(s + '._domainkey.' + domain for s in expected.selectors)}, {name} signs with d={dkim['signing_domain']}, which is not aligned"
    fix = (f"make SPF pass for {name}: 'include:{expected.spf_include}' in the SPF record of {domain}, within the lookup limit and "
           f"before 'all'; and align DKIM: publish {' and '.join(expected.selectors)} at {domain} and enable signing")
    _conclude(result, domain, name, where, tags, spf, dkim, fix=fix, relay=False)


def _relay_alignment(resolver: Resolver, domain: str, host: str, selectors: list[str], result: CheckResult) -> None:
    where, tags, failed = A.applied_dmarc(resolver, domain)
    for lk in failed:
        result.add(F.dns_failure(lk, "DMARC record (alignment)"))
    evaluations = result.data.get("host_evaluations", [])
    results = [e["result"] for e in evaluations]
    spf_pass = bool(results) and all(r == "pass" for r in results)
    spf = {"mail_from_domain": domain, "ip": [e["ip"] for e in evaluations], "result": results,
           "aligned": A.aligned(domain, domain, tags.get("aspf", "r")), "pass": spf_pass}
    keyed = [s for s in selectors if A.has_key(resolver, f"{s}._domainkey.{domain}")[0]]
    dkim = {"signing_domain": domain if keyed else None, "selectors": keyed, "pass": True if keyed else None, "aligned": True if keyed else None,
            "note": (f"aligned if {host} signs with d={domain} s={keyed[0]}" if keyed else
                     f"DNS cannot tell whether {host} signs with d={domain}; pass --selector with the selector it uses")}
    fix = f"authorize {host} in the SPF record of {domain} ('a:{host}' or its ip4/ip6), or have it DKIM-sign with d={domain}"
    _conclude(result, domain, f"the relay {host}", where, tags, spf, dkim, fix=fix, relay=True)


def _conclude(result: CheckResult, domain: str, sender: str, where: str | None, tags: dict, spf: dict, dkim: dict, *,
              fix: str, relay: bool) -> None:
    verdict = A.verdict(spf["pass"], dkim["pass"])
    policy = (tags.get("sp", tags.get("p")) if where and where != domain else tags.get("p")) if where else None
    result.data["dmarc_alignment"] = {"from_domain": domain, "dmarc_record": f"_dmarc.{where}" if where else None,
                                      "policy": (policy or "").lower() or None, "adkim": tags.get("adkim", "r"),
                                      "aspf": tags.get("aspf", "r"), "spf": spf, "dkim": dkim, "verdict": verdict}
    if result.temporary:
        return
    effect = {"reject": "receivers reject it (p=reject)", "quarantine": "receivers put it in spam (p=quarantine)",
              "none": "p=none delivers it, but Gmail and Yahoo require aligned SPF or DKIM from bulk senders"}.get(
        (policy or "").lower(), "Gmail and Yahoo require aligned SPF or DKIM from bulk senders")
    spf_text = "SPF passes" if spf["pass"] else f"SPF gives {spf.get('result') or 'no result'}"
    dkim_text = "DKIM is aligned" if dkim["pass"] else dkim.get("note", "DKIM is not aligned")
    if verdict == "fail" or (verdict == "unknown" and not spf["pass"]):
        result.add(F.error("profile.dmarc-fail", f"mail sent through {sender} From {domain} fails DMARC: {spf_text}; {dkim_text}; {effect}",
                           fix, domain))
    elif spf["pass"] and not dkim["pass"]:
        result.add(F.warning("profile.dmarc-spf-only", f"mail sent through {sender} From {domain} passes DMARC through SPF only ({dkim_text}); forwarded mail fails SPF and then DMARC",
                             f"enable DKIM signing with d={domain}" + (" on the relay" if relay else " at the provider"), domain))


def _check_provider(resolver: Resolver, domain: str, name: str, expected: ProviderDns, result: CheckResult) -> None:
    walker = SpfWalker(resolver)
    root = walker.walk(domain)
    included = {n.domain for n in root.walk()} - {domain}
    result.data["spf_include"] = expected.spf_include
    if root.status == "temperror":
        for f in walker.findings:
            if f.temporary:
                result.add(f)
    elif expected.spf_include not in included:
        result.add(F.error("profile.spf-include-missing",
                           f"{name}: the SPF record of {domain} does not include {expected.spf_include}, so {name} mail fails SPF",
                           f"add 'include:{expected.spf_include}' before the 'all' term of {domain}'s SPF record", expected.spf_include))
    resolver.prefetch((f"{s}._domainkey.{domain}", "TXT") for s in expected.selectors)
    selectors = []
    for s in expected.selectors:
        qname = f"{s}._domainkey.{domain}"
        lk = resolver.txt(qname)
        entry = {"selector": s, "name": qname, "cname_chain": [t for _, t in lk.cnames], "found": bool(lk.records)}
        selectors.append(entry)
        if lk.temporary:
            result.add(F.dns_failure(lk, f"{name} DKIM selector {s}"))
        elif not lk.records and not lk.cnames:
            result.add(F.error("profile.dkim-selector-missing",
                               f"{name}: no DKIM record at {qname}" + (" (Microsoft 365 needs a CNAME here)" if expected.selectors_are_cnames else ""),
                               _selector_fix(name, domain, s), qname))
        elif expected.selectors_are_cnames and not lk.cnames:
            result.add(F.error("profile.dkim-not-cname",
                               f"{name}: {qname} is a TXT record, not a CNAME; Microsoft 365 rotates keys behind the CNAME",
                               _selector_fix(name, domain, s), qname))
        elif not lk.records:
            result.add(F.error("profile.dkim-selector-missing",
                               f"{name}: {qname} is a CNAME to {lk.cnames[-1][1]}, which has no DKIM key yet",
                               "enable DKIM signing for the domain in the Microsoft 365 Defender portal", qname))
    result.data["selectors"] = selectors


def _selector_fix(provider: str, domain: str, selector: str) -> str:
    if provider == "microsoft365":
        return (f"publish CNAME {selector}._domainkey.{domain} -> {selector}-{domain.replace('.', '-')}._domainkey.<tenant>.onmicrosoft.com "
                "(shown in the Defender portal) and enable DKIM signing")
    return f"generate the DKIM key in the Google Admin console and publish it at {selector}._domainkey.{domain}"


def _check_host(resolver: Resolver, domain: str, host: str, result: CheckResult) -> None:
    host = normalize(host)
    try:
        ipaddress.ip_address(host)
        addresses = [host]
    except ValueError:
        resolver.prefetch([(host, "A"), (host, "AAAA")])
        lookups = [resolver.lookup(host, "A"), resolver.lookup(host, "AAAA")]
        for lk in lookups:
            if lk.temporary:
                result.add(F.dns_failure(lk, f"address of SMTP host {host}"))
        addresses = [a for lk in lookups for a in lk.records]
        if not addresses and not result.temporary:
            result.add(F.error("profile.host-unresolvable", f"the profile's SMTP host {host} has no A or AAAA record",
                               "fix the host name in the profile or publish its address", host))
    evaluations = []
    for ip in addresses:
        ev = SpfEvaluator(resolver, ip, f"postmaster@{domain}").evaluate(domain)
        evaluations.append({"host": host, **ev.to_dict()})
        if ev.result == "temperror":
            result.add(F.Finding(F.Severity.ERROR, "spf.temperror", f"SPF for {host} ({ip}): temperror ({ev.reason})",
                                 "check that the nameserver answers, retry later or raise --timeout", ip, temporary=True))
        elif ev.result != "pass":
            result.add(F.error("profile.host-not-authorized",
                               f"the SPF record of {domain} gives {ev.result} for the profile's SMTP host {host} ({ip})",
                               f"add 'ip{ipaddress.ip_address(ip).version}:{ip}' (or 'a:{host}') to the SPF record of {domain}", ip))
    result.data["host_evaluations"] = evaluations
