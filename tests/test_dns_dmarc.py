"""mailctl dns check-dmarc against the loopback DNS server."""

from __future__ import annotations

import pytest

from dnsserver import dns, dns_server, ids  # noqa: F401  (fixtures)


def test_valid_record(dns):
    res, data = dns("check-dmarc", "valid.test")
    assert res.exit_code == 0, res.output
    d = data["checks"]["dmarc"]
    assert d["record_domain"] == "valid.test"
    assert d["tags"]["p"] == "reject" and d["policy"] == "reject"
    assert ids(data, severity="error") == [] and ids(data, severity="warning") == []
    assert d["report_destinations"] == [{"tag": "rua", "uri": "mailto:dmarc@valid.test", "domain": "valid.test", "external": False}]


def test_org_domain_fallback(dns):
    res, data = dns("check-dmarc", "www.sub.valid.test")
    assert res.exit_code == 0
    d = data["checks"]["dmarc"]
    assert d["organizational_domain"] == "valid.test"
    assert d["record_domain"] == "valid.test"
    assert "dmarc.org-domain-fallback" in ids(data, severity="info")


def test_missing_record(dns):
    res, data = dns("check-dmarc", "nospf.test")
    assert res.exit_code == 1
    assert "dmarc.missing" in ids(data, severity="error")


def test_invalid_values(dns):
    res, data = dns("check-dmarc", "dmarcbad.test")
    assert res.exit_code == 1
    msgs = [f["message"] for f in data["checks"]["dmarc"]["findings"] if f["id"] == "dmarc.invalid-value"]
    assert any("p=maybe" in m for m in msgs) and any("adkim=x" in m for m in msgs)


def test_syntax_error(dns):
    res, data = dns("check-dmarc", "dmarcsyntax.test")
    assert res.exit_code == 1
    assert "dmarc.syntax" in ids(data, severity="error")


def test_version_must_be_exact(dns):
    res, data = dns("check-dmarc", "badversion.test")
    assert res.exit_code == 1
    assert "dmarc.syntax" in ids(data, severity="error")


def test_two_records(dns):
    res, data = dns("check-dmarc", "twodmarc.test")
    assert res.exit_code == 1
    assert "dmarc.multiple-records" in ids(data, severity="error")


def test_policy_none_and_deprecated_tags(dns):
    res, data = dns("check-dmarc", "dmarcnone.test")
    assert res.exit_code == 0  # warnings only
    assert "dmarc.policy-none" in ids(data, severity="warning")
    deprecated = [f["subject"] for f in data["checks"]["dmarc"]["findings"] if f["id"] == "dmarc.deprecated-tag"]
    assert sorted(deprecated) == ["pct", "rf", "ri"]
    res, _ = dns("check-dmarc", "dmarcnone.test", "--strict")
    assert res.exit_code == 1


def test_external_report_destinations(dns):
    res, data = dns("check-dmarc", "external.test")
    assert res.exit_code == 1
    dests = {d["domain"]: d for d in data["checks"]["dmarc"]["report_destinations"]}
    assert dests["reports.test"]["authorized"] is True
    assert dests["noauth.test"]["authorized"] is False
    assert dests["noauth.test"]["authorization_record"] == "external.test._report._dmarc.noauth.test"
    assert "dmarc.external-report-authorized" in ids(data, severity="info")
    bad = [f for f in data["checks"]["dmarc"]["findings"] if f["id"] == "dmarc.external-report-unauthorized"]
    assert [f["subject"] for f in bad] == ["mailto:agg@noauth.test"]


def test_servfail_exits_75(dns):
    res, data = dns("check-dmarc", "x.servfail.test")
    assert res.exit_code == 75
    assert "dns.servfail" in ids(data)


ORG_CASES = [("a.b.example.co.uk", "example.co.uk"), ("mail.example.com", "example.com"), ("example.com", "example.com"),
             ("a.www.ck", "www.ck"), ("b.a.ck", "b.a.ck"), ("a.foo.github.io", "foo.github.io"), ("co.uk", "co.uk"),
             ("a.example.xn--p1ai", "example.xn--p1ai"), ("x.y.z.test", "z.test")]


@pytest.mark.parametrize("domain, org", ORG_CASES)
def test_organizational_domain_agrees_with_publicsuffixlist(domain, org):
    from publicsuffixlist import PublicSuffixList

    from mailctl.dns.psl import organizational_domain

    assert organizational_domain(domain) == org
    assert (PublicSuffixList().privatesuffix(domain) or domain) == org


def test_organizational_domain_fallback_without_the_list(monkeypatch):
    from mailctl.dns import psl

    monkeypatch.setattr(psl, "_rules", lambda: None)
    assert psl.organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert psl.organizational_domain("mail.example.com") == "example.com"


def test_spaces_around_equals_and_semicolons(dns):
    # RFC 7489 6.4: dmarc-version = "v" *WSP "=" *WSP "DMARC1"; dmarc-sep = *WSP ";" *WSP
    res, data = dns("check-dmarc", "spaced.test")
    assert res.exit_code == 0, res.output
    d = data["checks"]["dmarc"]
    assert d["record_domain"] == "spaced.test"
    assert d["tags"] == {"v": "DMARC1", "p": "reject", "rua": "mailto:dmarc@spaced.test"}
    assert d["policy"] == "reject"
    assert "dmarc.missing" not in ids(data) and ids(data, severity="error") == []
