"""DKIM (RFC 6376, RFC 8463) key records: <selector>._domainkey.<domain> TXT, possibly reached
through a CNAME chain (Microsoft 365 publishes selector1/selector2 that way).

DNS cannot list the selectors a domain uses: without --selector we try the profile provider's
selectors and a list of common ones, and say so.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from mailctl.dns import findings as F
from mailctl.dns.findings import CheckResult
from mailctl.dns.resolver import Resolver, normalize

PROVIDER_SELECTORS: dict[str, tuple[str, ...]] = {
    "microsoft365": ("selector1", "selector2"),
    "gmail": ("google",),
    "google": ("google",),
}
COMMON_SELECTORS: tuple[str, ...] = (
    "default", "selector1", "selector2", "google", "k1", "k2", "k3", "s1", "s2", "dkim", "mail",
    "smtp", "mx", "key1", "key2", "sig1", "mandrill", "mxvault", "zoho", "protonmail",
    "protonmail2", "protonmail3", "everlytickey1", "everlytickey2", "fm1", "fm2", "fm3",
)
WEAK_BITS = 1024  # under this: receivers reject the signature (RFC 8301)
SHORT_BITS = 2048  # under this: works, but the norm is 2048

_TAG = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_SELECTOR = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_\-]*)(\.[A-Za-z0-9_][A-Za-z0-9_\-]*)*$")


class TagSyntaxError(ValueError):
    pass


def parse_tags(record: str) -> dict[str, str]:
    """tag=value; pairs (RFC 6376 3.2), shared by DKIM and DMARC. Raises TagSyntaxError."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep:
            raise TagSyntaxError(f"'{part}' is not a tag=value pair")
        if not _TAG.match(name):
            raise TagSyntaxError(f"invalid tag name '{name}'")
        if name in tags:
            raise TagSyntaxError(f"tag '{name}' appears twice")
        tags[name] = value.strip()
    return tags


def valid_selector(selector: str) -> bool:
    return bool(_SELECTOR.match(selector)) and len(selector) <= 63 * 4


@dataclass
class _Der:
    data: bytes
    pos: int = 0

    def read(self) -> tuple[int, bytes]:
        if self.pos + 2 > len(self.data):
            raise ValueError("truncated")
        tag = self.data[self.pos]
        length = self.data[self.pos + 1]
        self.pos += 2
        if length & 0x80:
            n = length & 0x7F
            if n == 0 or n > 4 or self.pos + n > len(self.data):
                raise ValueError("bad length")
            length = int.from_bytes(self.data[self.pos:self.pos + n], "big")
            self.pos += n
        if self.pos + length > len(self.data):
            raise ValueError("truncated")
        value = self.data[self.pos:self.pos + length]
        self.pos += length
        return tag, value


def rsa_key_bits(der: bytes) -> int:
    """Modulus size of an RSA key given as SubjectPublicKeyInfo (the DKIM norm) or as a bare
    PKCS#1 RSAPublicKey (which some signers publish). Raises ValueError otherwise."""
    tag, body = _Der(der).read()
    if tag != 0x30:
        raise ValueError("not a DER SEQUENCE")
    inner = _Der(body)
    first_tag, first = inner.read()
    if first_tag == 0x30:  # SubjectPublicKeyInfo: AlgorithmIdentifier, BIT STRING
        if b"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01" not in first:  # rsaEncryption OID
            raise ValueError("not an RSA key")
        bs_tag, bits = inner.read()
        if bs_tag != 0x03 or not bits:
            raise ValueError("no BIT STRING")
        return rsa_key_bits(bits[1:])
    if first_tag == 0x02:  # RSAPublicKey: modulus, exponent
        modulus = first.lstrip(b"\x00")
        if not modulus:
            raise ValueError("empty modulus")
        return (len(modulus) - 1) * 8 + modulus[0].bit_length()
    raise ValueError("unexpected DER structure")


def check_selector(resolver: Resolver, domain: str, selector: str, result: CheckResult, *, explicit: bool) -> dict[str, Any] | None:
    """Check one selector; add findings to result; return the selector's data, or None when
    there is no record (and the selector was only a guess)."""
    name = f"{selector}._domainkey.{domain}"
    lk = resolver.txt(name)
    if lk.temporary:
        result.add(F.dns_failure(lk, f"DKIM selector {selector}"))
        return {"selector": selector, "name": name, "status": "temperror"}
    data: dict[str, Any] = {"selector": selector, "name": name}
    if lk.cnames:
        data["cname_chain"] = [target for _, target in lk.cnames]
    records = list(lk.records)
    if not records:
        if explicit:
            where = f" (CNAME chain {' -> '.join([name] + data.get('cname_chain', []))} ends nowhere)" if lk.cnames else ""
            result.add(F.error("dkim.missing", f"no DKIM record at {name}{where}",
                               f"publish the public key of selector '{selector}' at {name}", name))
            data["status"] = "missing"
            return data
        return None
    data["status"] = "found"
    # a TXT at the name that is not a key record (v= something else) is ignored by verifiers
    keys = [r for r in records if not r.lower().startswith("v=") or r.lower().replace(" ", "").startswith("v=dkim1")]
    if len(keys) > 1:
        result.add(F.error("dkim.multiple-records", f"{name} has {len(keys)} DKIM records; verifiers may pick either",
                           "keep exactly one key record per selector", name))
    record = (keys or records)[0]
    data["record"] = record
    sev_err = F.error if explicit else F.warning
    try:
        tags = parse_tags(record)
    except TagSyntaxError as exc:
        result.add(F.error("dkim.syntax", f"{name}: {exc}", "fix the record: 'v=DKIM1; k=rsa; p=<base64 key>'", name))
        data["status"] = "invalid"
        return data
    data["tags"] = tags
    if "v" in tags and (tags["v"] != "DKIM1" or next(iter(tags)) != "v"):
        result.add(F.error("dkim.syntax", f"{name}: v= must be 'DKIM1' and the first tag (found v={tags['v']})",
                           "start the record with 'v=DKIM1;'", name))
    if "p" not in tags:
        result.add(F.error("dkim.syntax", f"{name}: no p= tag (the public key)", "add p=<base64 public key>", name))
        data["status"] = "invalid"
        return data
    key_type = tags.get("k", "rsa").lower()
    data["key_type"] = key_type
    p = re.sub(r"\s+", "", tags["p"])
    if not p:
        data["status"] = "revoked"
        result.add(sev_err("dkim.revoked", f"{name}: the key is revoked (empty p=); mail signed with selector '{selector}' fails DKIM",
                           f"sign with a selector that has a key, or publish a new key at {name}", name))
    else:
        try:
            raw = base64.b64decode(p, validate=True)
        except (binascii.Error, ValueError):
            raw = None
            result.add(F.error("dkim.invalid-key", f"{name}: p= is not valid base64", "publish the key exactly as your signer exports it", name))
        if raw is not None:
            if key_type == "rsa":
                try:
                    bits = rsa_key_bits(raw)
                except ValueError as exc:
                    result.add(F.error("dkim.invalid-key", f"{name}: p= is not an RSA public key ({exc})",
                                       "publish the key exactly as your signer exports it", name))
                else:
                    data["key_bits"] = bits
                    if bits < WEAK_BITS:
                        result.add(F.error("dkim.weak-key", f"{name}: RSA key of {bits} bits; receivers reject keys under {WEAK_BITS} bits",
                                           "generate a 2048-bit key and publish it under a new selector", name))
                    elif bits < SHORT_BITS:
                        result.add(F.warning("dkim.short-key", f"{name}: RSA key of {bits} bits; {SHORT_BITS} is the norm",
                                             "rotate to a 2048-bit key under a new selector", name))
            elif key_type == "ed25519":
                data["key_bits"] = 256
                if len(raw) != 32:
                    result.add(F.error("dkim.invalid-key", f"{name}: an ed25519 key is 32 bytes, found {len(raw)}",
                                       "publish the raw 32-byte key in base64 (RFC 8463)", name))
                result.add(F.info("dkim.ed25519", f"{name}: ed25519 key; some receivers cannot verify it yet",
                                  "also sign with an RSA selector", name))
            else:
                result.add(F.error("dkim.unknown-key-type", f"{name}: unknown key type k={key_type}",
                                   "use k=rsa or k=ed25519", name))
    services = [s.strip().lower() for s in tags.get("s", "").split(":") if s.strip()]
    if "s" in tags and "email" not in services and "*" not in services:
        if data["status"] == "found":
            data["status"] = "unusable"
        result.add(sev_err("dkim.not-for-email",
                           f"{name}: s={tags['s']} does not list 'email' (or '*'), so mail verifiers ignore the key (RFC 6376 3.6.1)",
                           "remove s= or set s=email", name))
    flags = [f.strip() for f in tags.get("t", "").split(":") if f.strip()]
    if "y" in flags:
        data["testing"] = True
        result.add(F.warning("dkim.testing", f"{name}: t=y, the domain is testing DKIM and verifiers may ignore failures",
                             "remove t=y once signing works", name))
    hashes = [h.strip().lower() for h in tags.get("h", "").split(":") if h.strip()]
    if hashes and "sha256" not in hashes:
        result.add(F.error("dkim.sha1-only", f"{name}: h={tags['h']} excludes sha256; rsa-sha1 is no longer accepted (RFC 8301)",
                           "remove h= or set h=sha256", name))
    if lk.cnames:
        result.add(F.info("dkim.cname", f"{name} is a CNAME chain: {' -> '.join([name] + data['cname_chain'])}", "", name))
    return data


def check_dkim(resolver: Resolver, domain: str, selectors: list[str] = (), provider: str | None = None) -> CheckResult:
    domain = normalize(domain)
    result = CheckResult("dkim", domain)
    explicit = bool(selectors)
    if explicit:
        tried = list(dict.fromkeys(selectors))
    else:
        tried = list(dict.fromkeys(PROVIDER_SELECTORS.get((provider or "").lower(), ()) + COMMON_SELECTORS))
    resolver.prefetch((f"{s}._domainkey.{domain}", "TXT") for s in tried)
    found = []
    for s in tried:
        data = check_selector(resolver, domain, s, result, explicit=explicit)
        if data is not None:
            found.append(data)
    result.data["selectors"] = found
    result.data["selectors_tried"] = tried
    result.data["discovered"] = not explicit
    if not explicit:
        result.add(F.info("dkim.selectors-not-listable",
                          f"DNS cannot list DKIM selectors; tried {len(tried)} common ones" + (f" and those of {provider}" if provider else ""),
                          "pass --selector with the selector in your signed mail's DKIM-Signature s= tag", domain))
        if not [d for d in found if d.get("status") == "found"] and not result.temporary:
            result.add(F.warning("dkim.no-selector-found",
                                 f"no DKIM key found for {domain} at the common selectors ({', '.join(tried[:6])}, ...)",
                                 "pass --selector S; if mail is not signed, enable DKIM at your provider", domain))
    return result
