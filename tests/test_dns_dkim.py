"""mailctl dns check-dkim against the loopback DNS server."""

from __future__ import annotations

import pytest

from dnsserver import dns, dns_server, ids  # noqa: F401  (fixtures)


def selector(data, name):
    return next(s for s in data["checks"]["dkim"]["selectors"] if s["selector"] == name)


def test_good_key(dns):
    res, data = dns("check-dkim", "dkim.test", "--selector", "good")
    assert res.exit_code == 0, res.output
    s = selector(data, "good")
    assert (s["status"], s["key_type"], s["key_bits"]) == ("found", "rsa", 2048)
    assert s["tags"]["v"] == "DKIM1"
    assert ids(data) == []


@pytest.mark.parametrize("sel, finding, severity, code", [
    ("weak", "dkim.weak-key", "error", 1),
    ("short", "dkim.short-key", "warning", 0),
    ("revoked", "dkim.revoked", "error", 1),
    ("testing", "dkim.testing", "warning", 0),
    ("bad", "dkim.syntax", "error", 1),
    ("notkey", "dkim.invalid-key", "error", 1),
    ("nosuchselector", "dkim.missing", "error", 1),
])
def test_broken_selectors(dns, sel, finding, severity, code):
    res, data = dns("check-dkim", "dkim.test", "--selector", sel)
    assert finding in ids(data, severity=severity), data["checks"]["dkim"]["findings"]
    assert res.exit_code == code


def test_key_sizes(dns):
    _, data = dns("check-dkim", "dkim.test", "-s", "weak", "-s", "short")
    assert selector(data, "weak")["key_bits"] == 512
    assert selector(data, "short")["key_bits"] == 1024


def test_strict_fails_on_short_key(dns):
    res, _ = dns("check-dkim", "dkim.test", "--selector", "short", "--strict")
    assert res.exit_code == 1


def test_revoked_key_status(dns):
    _, data = dns("check-dkim", "dkim.test", "--selector", "revoked")
    assert selector(data, "revoked")["status"] == "revoked"


def test_ed25519(dns):
    res, data = dns("check-dkim", "dkim.test", "--selector", "ed")
    s = selector(data, "ed")
    assert s["key_type"] == "ed25519"
    assert "dkim.ed25519" in ids(data, severity="info")
    assert res.exit_code == 0


def test_cname_chains_as_microsoft_365_publishes(dns):
    res, data = dns("check-dkim", "m365.test", "-s", "selector1", "-s", "selector2")
    assert res.exit_code == 0, res.output
    assert selector(data, "selector1")["cname_chain"] == ["selector1-m365-test._domainkey.contoso.onmicrosoft.test"]
    s2 = selector(data, "selector2")
    assert s2["cname_chain"] == ["selector2-m365-test._domainkey.contoso.onmicrosoft.test",
                                 "rotated2._domainkey.contoso.onmicrosoft.test"]
    assert s2["key_bits"] == 2048
    assert ids(data).count("dkim.cname") == 2


def test_dangling_cname(dns):
    res, data = dns("check-dkim", "dkim.test", "--selector", "dangling")
    assert res.exit_code == 1
    f = next(f for f in data["checks"]["dkim"]["findings"] if f["id"] == "dkim.missing")
    assert "gone.dkim.test" in f["message"]


def test_selector_discovery_finds_common_selector_and_says_dns_cannot_list(dns):
    res, data = dns("check-dkim", "valid.test")
    assert res.exit_code == 0
    dkim = data["checks"]["dkim"]
    assert dkim["discovered"] is True
    assert [s["selector"] for s in dkim["selectors"]] == ["selector1"]
    assert "dkim.selectors-not-listable" in ids(data, severity="info")
    assert "google" in dkim["selectors_tried"]


def test_discovery_without_any_key_warns(dns):
    res, data = dns("check-dkim", "nospf.test")
    assert "dkim.no-selector-found" in ids(data, severity="warning")
    assert res.exit_code == 0
    res, _ = dns("check-dkim", "nospf.test", "--strict")
    assert res.exit_code == 1


def test_discovery_tries_the_google_selector(dns):
    _, data = dns("check-dkim", "google.test")
    assert [s["selector"] for s in data["checks"]["dkim"]["selectors"]] == ["google"]


def test_invalid_selector_is_usage_error(dns):
    res, _ = dns("check-dkim", "dkim.test", "--selector", "bad selector!")
    assert res.exit_code == 2


@pytest.mark.parametrize("sel, usable", [("web", False), ("anysvc", True), ("mailsvc", True), ("good", True)])
def test_service_types_must_include_email(dns, sel, usable):
    # RFC 6376 3.6.1: a key whose s= lists neither email nor * is not for mail
    res, data = dns("check-dkim", "dkim.test", "--selector", sel)
    s = selector(data, sel)
    if usable:
        assert res.exit_code == 0, res.output
        assert s["status"] == "found" and "dkim.not-for-email" not in ids(data)
    else:
        assert res.exit_code == 1
        assert s["status"] == "unusable"
        f = next(f for f in data["checks"]["dkim"]["findings"] if f["id"] == "dkim.not-for-email")
        assert f["severity"] == "error" and "s=web:ftp" in f["message"] and f["fix"]


def test_service_type_not_email_is_a_warning_when_discovered(dns_server):
    from mailctl.dns.dkim import check_selector
    from mailctl.dns.findings import CheckResult
    from mailctl.dns.resolver import Nameserver, Resolver

    result = CheckResult("dkim", "dkim.test")
    with Resolver([Nameserver(dns_server.host, dns_server.port)], 3) as resolver:
        data = check_selector(resolver, "dkim.test", "web", result, explicit=False)
    assert data["status"] == "unusable"
    assert [(f.id, f.severity.value) for f in result.findings] == [("dkim.not-for-email", "warning")]


def test_bare_cname_into_another_zone_is_followed(dns):
    # the selector's zone answers the CNAME alone (no recursion into keys.provider.test)
    res, data = dns("check-dkim", "bare-cname.test", "--selector", "sel")
    assert res.exit_code == 0, res.output
    s = selector(data, "sel")
    assert s["status"] == "found" and s["key_bits"] == 2048
    assert s["cname_chain"] == ["sel-bare-cname-test._domainkey.keys.provider.test"]
    assert "dkim.cname" in ids(data, severity="info")


def test_bare_cname_to_nothing_is_missing_with_its_chain(dns):
    res, data = dns("check-dkim", "bare-cname.test", "--selector", "gone")
    assert res.exit_code == 1
    f = next(f for f in data["checks"]["dkim"]["findings"] if f["id"] == "dkim.missing")
    assert "nothing-here.keys.provider.test" in f["message"]
