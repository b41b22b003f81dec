"""BIMI (Brand Indicators for Message Identification, draft-brand-indicators-for-message-
identification): the `default._bimi` TXT record of the domain (else of its organizational
domain), `v=BIMI1`, the `l=` logo and `a=` certificate (VMC/CMC) URLs, and the DMARC policy
BIMI needs: p=quarantine or p=reject (and sp= for subdomains), applied to all mail (pct=100).
Receivers show no logo otherwise."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from mailctl.dns import findings as F
from mailctl.dns.dkim import TagSyntaxError, parse_tags  # the tag-list syntax BIMI shares
from mailctl.dns.alignment import applied_dmarc
from mailctl.dns.findings import CheckResult
from mailctl.dns.psl import organizational_domain
from mailctl.dns.resolver import Resolver, normalize

_PREFIX = re.compile(r"^v\s*=\s*BIMI1\s*(;|$)", re.IGNORECASE)
SELECTOR = "default"


def is_bimi_record(text: str) -> bool:
    return _PREFIX.match(text) is not None


def _https_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme == "https" and bool(parts.hostname) and " " not in value


def dmarc_enforcement(resolver: Resolver, domain: str) -> tuple[str | None, str, list]:
    """(the DMARC policy that applies to `domain` or None, why it is not enough or "", findings
    for temporary DNS failures), from the record the dmarc check reads too (cached)."""
    where, tags, failed = applied_dmarc(resolver, domain)
    if failed:
        return None, "", [F.dns_failure(lk, "DMARC record (for BIMI)") for lk in failed]
    if where is None:
        return None, "there is no (single) DMARC record", []
    p = tags.get("p", "none").lower()
    policy = tags.get("sp", p).lower() if where != domain else p
    if policy not in ("quarantine", "reject"):
        return policy, f"the DMARC policy for {domain} is {'sp' if where != domain else 'p'}={policy}", []
    if tags.get("pct", "100").strip() != "100":
        return policy, f"the DMARC record applies the policy to pct={tags['pct']}% of mail only", []
    return policy, "", []


def check_bimi(resolver: Resolver, domain: str) -> CheckResult:
    domain = normalize(domain)
    result = CheckResult("bimi", domain)
    org = organizational_domain(domain)
    names = [f"{SELECTOR}._bimi.{domain}"] + ([f"{SELECTOR}._bimi.{org}"] if org != domain else [])
    resolver.prefetch([(n, "TXT") for n in names] + [(f"_dmarc.{domain}", "TXT"), (f"_dmarc.{org}", "TXT")])
    where = None
    records: list[str] = []
    for n in names:
        lk = resolver.txt(n)
        if lk.temporary:
            result.add(F.dns_failure(lk, "BIMI record"))
            return result
        records = [r for r in lk.records if is_bimi_record(r)]
        if records:
            where = n
            break
    result.data["selector"] = SELECTOR
    result.data["record_name"] = where
    result.data["record"] = records[0] if records else None
    if not records:
        result.add(F.info("bimi.missing", f"{domain} publishes no BIMI record ({names[0]}), so receivers show no brand logo",
                          f"publish TXT 'v=BIMI1; l=https://{org}/logo.svg; a=https://{org}/vmc.pem' at {names[0]} (needs DMARC p=quarantine or reject)", names[0]))
        return result
    if len(records) > 1:
        result.add(F.error("bimi.multiple-records", f"{where} has {len(records)} BIMI records; receivers ignore them",
                           "keep exactly one v=BIMI1 record", where))
        return result
    try:
        tags = parse_tags(records[0])
    except TagSyntaxError as exc:
        result.add(F.error("bimi.syntax", f"{where}: {exc}", "publish 'v=BIMI1; l=https://.../logo.svg; a=https://.../vmc.pem'", where))
        return result
    result.data["tags"] = tags
    if next(iter(tags)) != "v" or tags["v"] != "BIMI1":
        result.add(F.error("bimi.syntax", f"{where}: the record must start with 'v=BIMI1'", "start the record with 'v=BIMI1;'", where))
    if "l" not in tags:
        result.add(F.error("bimi.syntax", f"{where}: no l= tag (the logo URL)", "add l=https://.../logo.svg (SVG Tiny PS)", where))
        return result
    logo, authority = tags["l"].strip(), tags.get("a", "").strip()
    if not logo and not authority:
        result.add(F.info("bimi.declined", f"{where} declines BIMI (empty l= and a=)", "", where))
        return result
    for url in (u.strip() for u in logo.split(",") if u.strip()):
        if not _https_url(url):
            result.add(F.error("bimi.invalid-location", f"{where}: l={url} is not an https:// URL", "serve the SVG logo over HTTPS and put its URL in l=", url))
    if authority and not _https_url(authority):
        result.add(F.error("bimi.invalid-authority", f"{where}: a={authority} is not an https:// URL", "serve the VMC/CMC PEM over HTTPS and put its URL in a=", authority))
    elif not authority:
        result.add(F.info("bimi.no-authority", f"{where}: no a= certificate; Gmail and Apple Mail show logos only with a VMC or CMC",
                          "get a Verified Mark Certificate (VMC) or Common Mark Certificate (CMC) and publish its URL in a=", where))
    policy, why, failures = dmarc_enforcement(resolver, domain)
    for f in failures:
        result.add(f)
    result.data["dmarc_policy"] = policy
    if why:
        result.add(F.error("bimi.dmarc-not-enforced", f"BIMI needs DMARC at quarantine or reject for all mail, but {why}: receivers show no logo",
                           f"set p=quarantine or p=reject (without pct below 100) in _dmarc.{org}", f"_dmarc.{org}"))
    return result
