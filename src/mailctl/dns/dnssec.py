"""DNSSEC: whether the domain's zone is signed and the chain from its parent holds.

- the zone apex (its SOA), its DNSKEY RRset (asked with the DO bit, so the RRSIGs come along)
  and the DS RRset the parent publishes;
- a DS that matches no DNSKEY (key tag, algorithm, digest), a DS without DNSKEYs, DNSKEYs
  without DS, missing, expired or soon-expiring signatures over the DNSKEY and SOA RRsets,
  and deprecated algorithms (RFC 8624);
- the signatures themselves, verified against the zone's keys when the `cryptography` package
  is there (validation anchored at the DS the resolver reports, not a walk from the root);
- with --dnssec-resolver IP[:PORT] (a validating resolver), its AD bit: a signed zone whose
  answers it does not authenticate, or for which it answers SERVFAIL, is broken for every
  validating receiver. Without it, the AD bit of the normal nameserver is only reported."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mailctl.dns import findings as F
from mailctl.dns.findings import CheckResult
from mailctl.dns.nssoa import zone_apex
from mailctl.dns.psl import organizational_domain
from mailctl.dns.resolver import Nameserver, Resolver, normalize

# RFC 8624 3.1 / 3.3: MUST NOT or NOT RECOMMENDED for signing
WEAK_ALGORITHMS = {1: "RSAMD5", 3: "DSA", 5: "RSASHA1", 6: "DSA-NSEC3-SHA1", 7: "RSASHA1-NSEC3-SHA1", 12: "ECC-GOST"}
WEAK_DIGESTS = {1: "SHA-1", 3: "GOST R 34.11-94"}
EXPIRING_SECONDS = 3 * 86400


def _dnssec_module():
    """dns.dnssec with signature validation when cryptography is installed. The resolver turns
    dnspython's optional DNSSEC backend off for start-up speed; a signed zone turns it back on
    before dns.dnssec is first imported (effective only then)."""
    import sys

    if "dns.dnssec" not in sys.modules:
        try:
            import cryptography  # noqa: F401
            import dns._features as features

            features.force("dnssec", True)
        except Exception:
            pass
    import dns.dnssec

    return dns.dnssec


def _validate(dnssec, rrset, sigs, keys) -> str | None:
    """None when a signature in `sigs` verifies `rrset` with `keys`, else the reason; "" when
    this dnspython cannot validate (no cryptography). Only the cryptography: the validity
    window is checked (and reported) separately."""
    import dns.exception

    reasons = []
    for rrsig in sigs:
        try:
            dnssec.validate_rrsig(rrset, rrsig, keys, now=rrsig.inception + 1)
            return None
        except dns.exception.ValidationFailure as exc:
            reasons.append(str(exc) or "the signature does not verify")
        except Exception as exc:  # no cryptography: dnspython raises ImportError or NotImplementedError
            if isinstance(exc, (ImportError, NotImplementedError)) or "cryptography" in str(exc).lower():
                return ""
            reasons.append(str(exc))
    return "; ".join(dict.fromkeys(reasons)) or "no signature verifies"


def check_dnssec(resolver: Resolver, domain: str, validating: list[Nameserver] | None = None) -> CheckResult:
    domain = normalize(domain)
    result = CheckResult("dnssec", domain)
    guess = organizational_domain(domain)  # usually the apex: ask it while the SOA walk runs
    with ThreadPoolExecutor(3, thread_name_prefix="mailctl-dnssec") as pool:
        early = _ask(pool, resolver, guess, validating)
        apex, soa = zone_apex(resolver, domain)
        if soa is not None and soa.temporary:
            result.add(F.dns_failure(soa, "SOA record (zone apex)"))
            return result
        zone = apex or guess
        asked = early if zone == guess else _ask(pool, resolver, zone, validating)
        keys_answer, soa_answer = asked[0].result(), asked[1].result()
    result.data["zone"] = zone
    ds = resolver.lookup(zone, "DS")
    for answer, what in ((keys_answer, "DNSKEY records"), (soa_answer, "signed SOA record"), (ds, "DS records")):
        if answer.temporary:
            result.add(F.dns_failure(answer, what))
    if result.temporary:
        return result
    keys = keys_answer.rrsets("DNSKEY")
    ds_records = list(ds.records)
    result.data["ds"] = ds_records
    result.data["dnskey_count"] = len(keys[0]) if keys else 0
    result.data["ad"] = keys_answer.authenticated
    signed = bool(keys)
    result.data["signed"] = signed and bool(ds_records)
    if not signed and not ds_records:
        result.add(F.info("dnssec.unsigned", f"the zone {zone} is not signed (no DNSKEY, no DS): answers about it can be forged",
                          "enable DNSSEC at your DNS host and publish the DS record it gives you at your registrar", zone))
        _validating(resolver, result, zone, validating, signed=False)
        return result
    if not signed:
        result.add(F.error("dnssec.no-dnskey", f"the parent of {zone} publishes DS records but the zone has no DNSKEY: validating resolvers answer SERVFAIL for the whole domain",
                           "re-enable signing at your DNS host, or remove the DS record at your registrar", zone))
        _validating(resolver, result, zone, validating, signed=True)
        return result
    dnssec = _dnssec_module()
    import dns.name
    import dns.rdata

    zone_name = dns.name.from_text(zone)
    key_rrset = keys[0]
    key_info = [{"key_tag": dnssec.key_id(k), "algorithm": int(k.algorithm), "flags": k.flags} for k in key_rrset]
    result.data["dnskeys"] = key_info
    for k in key_info:
        if k["algorithm"] in WEAK_ALGORITHMS:
            result.add(F.warning("dnssec.weak-algorithm", f"DNSKEY {k['key_tag']} of {zone} uses {WEAK_ALGORITHMS[k['algorithm']]} (algorithm {k['algorithm']}), deprecated by RFC 8624",
                                 "roll the keys to ECDSAP256SHA256 (13) or Ed25519 (15)", zone))
    if not ds_records:
        result.add(F.warning("dnssec.no-ds", f"the zone {zone} is signed but its parent has no DS record, so no resolver validates it",
                             "publish the DS record (from your DNS host) at your registrar", zone))
    else:
        matched = []
        for text in ds_records:
            try:
                ds_rd = dns.rdata.from_text("IN", "DS", text)
            except Exception:
                continue
            if ds_rd.digest_type in WEAK_DIGESTS:
                result.add(F.warning("dnssec.weak-algorithm", f"DS {ds_rd.key_tag} of {zone} uses the {WEAK_DIGESTS[ds_rd.digest_type]} digest, deprecated by RFC 8624",
                                     "publish a SHA-256 DS record (digest type 2) instead", zone))
            for key in key_rrset:
                if dnssec.key_id(key) != ds_rd.key_tag or key.algorithm != ds_rd.algorithm:
                    continue
                try:
                    if dnssec.make_ds(zone_name, key, ds_rd.digest_type, validating=True) == ds_rd:
                        matched.append(ds_rd.key_tag)
                except Exception:  # a digest type this host cannot compute
                    continue
        result.data["ds_matches"] = sorted(set(matched))
        if not matched:
            result.add(F.error("dnssec.ds-mismatch", f"no DS record of {zone} ({'; '.join(ds_records)}) matches a DNSKEY of the zone: validating resolvers answer SERVFAIL",
                               "publish the DS of the zone's current key-signing key at the registrar (after a key rollover, update it)", zone))
    now = int(time.time())
    signatures: list[dict[str, Any]] = []
    key_map = {zone_name: key_rrset}
    for answer, rdtype in ((keys_answer, "DNSKEY"), (soa_answer, "SOA")):
        covered = answer.rrsets(rdtype)
        sigs = [s for s in answer.rrsets("RRSIG") if dns_type(s.covers) == rdtype]
        if not covered:
            continue
        if not sigs:
            if ds_records:
                result.add(F.error("dnssec.no-signature", f"the {rdtype} records of {zone} carry no RRSIG: validating resolvers treat them as bogus",
                                   "check the zone signing at your DNS host", zone))
            signatures.append({"covers": rdtype, "signed": False})
            continue
        for rd in sigs[0]:
            signatures.append({"covers": rdtype, "key_tag": rd.key_tag, "algorithm": int(rd.algorithm),
                               "inception": _iso(rd.inception), "expiration": _iso(rd.expiration)})
            if rd.expiration < now:
                result.add(F.error("dnssec.signature-expired", f"the RRSIG over {rdtype} {zone} (key {rd.key_tag}) expired on {_iso(rd.expiration)}: validating resolvers answer SERVFAIL",
                                   "re-sign the zone (check that automatic re-signing runs at your DNS host)", zone))
            elif rd.inception > now + 300:
                result.add(F.error("dnssec.signature-expired", f"the RRSIG over {rdtype} {zone} (key {rd.key_tag}) is not valid before {_iso(rd.inception)}",
                                   "check the signer's clock and re-sign the zone", zone))
            elif rd.expiration - now < EXPIRING_SECONDS:
                result.add(F.warning("dnssec.signature-expiring", f"the RRSIG over {rdtype} {zone} expires on {_iso(rd.expiration)}, in under {EXPIRING_SECONDS // 86400} days",
                                     "check that automatic re-signing runs at your DNS host", zone))
        failure = _validate(dnssec, covered[0], sigs[0], key_map)
        signatures[-1]["verified"] = None if failure == "" else failure is None
        if failure:
            result.add(F.error("dnssec.signature-invalid", f"the RRSIG over {rdtype} {zone} does not verify with the zone's DNSKEYs ({failure})",
                               "re-sign the zone; after a key change make sure the old signatures are gone", zone))
    result.data["signatures"] = signatures
    _validating(resolver, result, zone, validating, signed=bool(ds_records))
    return result


def _ask(pool: ThreadPoolExecutor, resolver: Resolver, zone: str, validating: list[Nameserver] | None) -> list:
    """Start the questions about one zone: DNSKEY and SOA with their RRSIGs, DS (cached for
    lookup()), and the validating resolver's SOA."""
    resolver.prefetch([(zone, "DS")])
    futures = [pool.submit(resolver.message, zone, "DNSKEY"), pool.submit(resolver.message, zone, "SOA")]
    if validating:
        futures.append(pool.submit(resolver.message, zone, "SOA", nameservers=validating))
    return futures


def dns_type(value: int) -> str:
    import dns.rdatatype

    return dns.rdatatype.to_text(value)


def _iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _validating(resolver: Resolver, result: CheckResult, zone: str, validating: list[Nameserver] | None, *, signed: bool) -> None:
    if not validating:
        return
    answer = resolver.message(zone, "SOA", nameservers=validating)
    result.data["validating_resolver"] = str(validating[0])
    result.data["validated"] = answer.authenticated and not answer.temporary
    if answer.status == "servfail" and signed:
        result.add(F.error("dnssec.bogus", f"the validating resolver {validating[0]} answers SERVFAIL for {zone}: DNSSEC validation fails, and receivers that validate cannot resolve the domain",
                           "fix the signatures or the DS record (see the other dnssec findings), or remove the DS to go unsigned", zone))
    elif answer.temporary:
        result.add(F.dns_failure(answer, f"SOA record from the validating resolver {validating[0]}"))
    elif signed and not answer.authenticated:
        result.add(F.error("dnssec.not-validated", f"the validating resolver {validating[0]} does not authenticate {zone} (no AD bit) although the parent publishes DS records",
                           "check the chain of trust (DS at the parent, DNSKEY, signatures); or make sure the resolver validates", zone))
