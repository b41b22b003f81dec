"""DMARC (RFC 7489, DMARCbis): find the policy record (at the domain, else at the
organizational domain), check its tags, and check that external report destinations agree to
receive reports (<domain>._report._dmarc.<destination>)."""

from __future__ import annotations

import re
from typing import Any

from mailctl.dns import findings as F
from mailctl.dns.dkim import TagSyntaxError, parse_tags
from mailctl.dns.findings import CheckResult
from mailctl.dns.psl import organizational_domain
from mailctl.dns.resolver import Resolver, normalize

POLICIES = ("none", "quarantine", "reject")
KNOWN_TAGS = {"v", "p", "sp", "np", "adkim", "aspf", "rua", "ruf", "fo", "pct", "rf", "ri", "psd", "t"}
DEPRECATED = {
    "pct": "DMARCbis removes pct (use t=y for testing)",
    "rf": "DMARCbis removes rf (only AFRF exists)",
    "ri": "DMARCbis removes ri (receivers send daily reports)",
}
_DMARC_START = re.compile(r"\s*v\s*=\s*dmarc", re.IGNORECASE)
_MAILTO = re.compile(r"^mailto:([^@\s!]+)@([^@\s!]+?)(?:!(\d+)([kmgt]?))?$", re.IGNORECASE)


def is_dmarc_record(text: str) -> bool:
    return re.match(r"^v\s*=\s*DMARC1\s*(;|$)", text) is not None


def find_record(resolver: Resolver, domain: str, result: CheckResult):
    """(record_domain, records) or (None, []) after adding findings."""
    org = organizational_domain(domain)
    names = [domain] if org == domain else [domain, org]
    resolver.prefetch((f"_dmarc.{n}", "TXT") for n in names)
    for n in names:
        lk = resolver.txt(f"_dmarc.{n}")
        if lk.temporary:
            result.add(F.dns_failure(lk, "DMARC record"))
            return None, []
        # RFC 7489 6.6.3: other TXT records at the name are discarded; a near miss (v=dmarc1)
        # is kept so the report can name the mistake. Spaces around '=' are allowed (6.4).
        candidates = [r for r in lk.records if _DMARC_START.match(r)]
        if candidates:
            return n, candidates
    return None, []


def check_dmarc(resolver: Resolver, domain: str) -> CheckResult:
    domain = normalize(domain)
    result = CheckResult("dmarc", domain)
    org = organizational_domain(domain)
    result.data["organizational_domain"] = org
    where, records = find_record(resolver, domain, result)
    if result.temporary:
        return result
    if where is None:
        result.data["record"] = None
        result.add(F.error("dmarc.missing", f"no DMARC record at _dmarc.{domain}" + (f" or _dmarc.{org}" if org != domain else ""),
                           f"publish a TXT record at _dmarc.{org}: 'v=DMARC1; p=none; rua=mailto:dmarc@{org}', then tighten p",
                           f"_dmarc.{domain}"))
        return result
    result.data["record_domain"] = where
    result.data["record"] = records[0]
    if where != domain:
        result.add(F.info("dmarc.org-domain-fallback",
                          f"no record at _dmarc.{domain}; the organizational domain's record at _dmarc.{where} applies (its sp= policy)",
                          "", f"_dmarc.{where}"))
    if len(records) > 1:
        result.add(F.error("dmarc.multiple-records", f"_dmarc.{where} has {len(records)} DMARC records; receivers ignore them all",
                           "keep exactly one v=DMARC1 record", f"_dmarc.{where}"))
    record = records[0]
    try:
        tags = parse_tags(record)
    except TagSyntaxError as exc:
        result.add(F.error("dmarc.syntax", f"_dmarc.{where}: {exc}", "fix the record: 'v=DMARC1; p=reject; rua=mailto:...'", f"_dmarc.{where}"))
        return result
    result.data["tags"] = tags
    if next(iter(tags), None) != "v" or tags.get("v") != "DMARC1":
        result.add(F.error("dmarc.syntax", f"_dmarc.{where}: the record must start with 'v=DMARC1'",
                           "start the record with 'v=DMARC1;' (upper case)", f"_dmarc.{where}"))
    _check_values(result, where, tags)
    _check_reports(resolver, result, where, tags)
    policy = tags.get("p", "").lower()
    applied = policy
    if where != domain:
        applied = tags.get("sp", policy).lower()
    result.data["policy"] = applied or None
    if applied == "none":
        result.add(F.warning("dmarc.policy-none", f"{domain}: DMARC policy is p=none, so spoofed mail is delivered anyway",
                             "once reports show your mail passes, move to p=quarantine, then p=reject", f"_dmarc.{where}"))
    return result


def _check_values(result: CheckResult, where: str, tags: dict[str, str]) -> None:
    subject = f"_dmarc.{where}"

    def bad(tag: str, expected: str) -> None:
        result.add(F.error("dmarc.invalid-value", f"{subject}: {tag}={tags[tag]} is not valid (expected {expected})",
                           f"set {tag} to {expected}", subject))

    if "p" not in tags:
        if "rua" in tags:
            result.add(F.warning("dmarc.syntax", f"{subject}: no p= tag; receivers treat it as p=none",
                                 "add p=none, p=quarantine or p=reject", subject))
        else:
            result.add(F.error("dmarc.syntax", f"{subject}: no p= tag and no rua=; receivers ignore the record",
                               "add p=none, p=quarantine or p=reject", subject))
    for tag in ("p", "sp", "np"):
        if tag in tags and tags[tag].lower() not in POLICIES:
            bad(tag, "none, quarantine or reject")
    for tag in ("adkim", "aspf"):
        if tag in tags and tags[tag].lower() not in ("r", "s"):
            bad(tag, "r (relaxed) or s (strict)")
    if "pct" in tags and (not tags["pct"].isdigit() or int(tags["pct"]) > 100):
        bad("pct", "an integer 0-100")
    if "ri" in tags and not tags["ri"].isdigit():
        bad("ri", "a number of seconds")
    if "fo" in tags and not all(x.strip() in ("0", "1", "d", "s") for x in tags["fo"].split(":")):
        bad("fo", "0, 1, d, s or a colon-separated list of them")
    if "psd" in tags and tags["psd"].lower() not in ("y", "n", "u"):
        bad("psd", "y, n or u")
    if "t" in tags and tags["t"].lower() not in ("y", "n"):
        bad("t", "y or n")
    for tag, why in DEPRECATED.items():
        if tag in tags:
            extra = ""
            if tag == "pct" and tags[tag].isdigit() and int(tags[tag]) < 100:
                extra = f"; pct={tags[tag]} also applies the policy to only part of the mail"
            result.add(F.warning("dmarc.deprecated-tag", f"{subject}: {tag}= is deprecated: {why}{extra}",
                                 f"remove {tag}=" + (" (use t=y while testing)" if tag == "pct" else ""), tag))
    for tag in tags:
        if tag not in KNOWN_TAGS:
            result.add(F.warning("dmarc.unknown-tag", f"{subject}: unknown tag '{tag}' is ignored by receivers",
                                 "check the spelling or remove it", tag))
    p = tags.get("p", "").lower()
    sp = tags.get("sp", "").lower()
    if p in ("quarantine", "reject") and sp == "none":
        result.add(F.info("dmarc.subdomain-policy-none", f"{subject}: sp=none leaves subdomains unprotected while p={p}",
                          "remove sp= or set it to quarantine/reject", subject))


def _check_reports(resolver: Resolver, result: CheckResult, where: str, tags: dict[str, str]) -> None:
    org = organizational_domain(where)
    destinations: list[dict[str, Any]] = []
    checks = []
    for tag in ("rua", "ruf"):
        if tag not in tags:
            continue
        for uri in (u.strip() for u in tags[tag].split(",")):
            m = _MAILTO.match(uri)
            if not m:
                result.add(F.error("dmarc.invalid-uri", f"_dmarc.{where}: {tag} URI '{uri}' is not a valid mailto: URI",
                                   f"use {tag}=mailto:dmarc@{org}", uri))
                continue
            dest = normalize(m.group(2))
            entry = {"tag": tag, "uri": uri, "domain": dest, "external": organizational_domain(dest) != org}
            destinations.append(entry)
            if entry["external"]:
                checks.append((entry, f"{where}._report._dmarc.{dest}"))
    if "rua" not in tags:
        result.add(F.info("dmarc.no-rua", f"_dmarc.{where}: no rua=, so you receive no aggregate reports",
                          f"add rua=mailto:dmarc-reports@{org}", f"_dmarc.{where}"))
    resolver.prefetch((name, "TXT") for _, name in checks)
    for entry, name in checks:
        lk = resolver.txt(name)
        if lk.temporary:
            result.add(F.dns_failure(lk, f"DMARC report authorization for {entry['uri']}"))
            continue
        authorized = any(is_dmarc_record(r) for r in lk.records)
        entry["authorization_record"] = name
        entry["authorized"] = authorized
        if authorized:
            result.add(F.info("dmarc.external-report-authorized", f"{entry['uri']} is in another domain and {name} authorizes it", "", entry["uri"]))
        else:
            result.add(F.error("dmarc.external-report-unauthorized",
                               f"{entry['tag']} {entry['uri']} is in another domain and {name} has no 'v=DMARC1' record, so receivers drop those reports",
                               f"ask {entry['domain']} to publish TXT 'v=DMARC1' at {name}, or send reports to an address in {org}", entry["uri"]))
    result.data["report_destinations"] = destinations
