"""dns check beyond SPF/DKIM/DMARC: MX, BIMI, DNSSEC, NS/SOA against the loopback DNS server
(zones in tests/dnsserver.py extra_zones(): really signed DNSSEC zones, and a second server
acting as a validating resolver), check selection, JUnit and exit codes, and the DMARC
alignment of a profile."""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET

import pytest

from dnsserver import check, extras_dns_server, ids, validating_dns_server  # noqa: F401  (fixtures)


def found(data, name):
    return {f["id"]: f["severity"] for f in data["checks"][name]["findings"]}


# -- MX ------------------------------------------------------------------------------------------
def test_mx_good(check):
    res, data = check("mx-good.test", "--checks", "mx")
    assert res.exit_code == 0, res.output
    mx = data["checks"]["mx"]
    assert mx["findings"] == [] and mx["count"] == 2 and mx["null_mx"] is False
    assert [(h["preference"], h["host"]) for h in mx["hosts"]] == [(10, "mx1.mx-good.test"), (20, "mx2.mx-good.test")]
    assert mx["hosts"][0]["addresses"] == ["198.51.100.25", "2001:db8::25"]
    assert mx["hosts"][0]["reverse_dns"]["198.51.100.25"] == ["mx1.mx-good.test"]


@pytest.mark.parametrize("domain, expect, code", [
    ("mx-null.test", {"mx.null": "warning"}, 0),
    ("mx-nullmixed.test", {"mx.null-mx-mixed": "error", "mx.no-reverse-dns": "info"}, 1),
    ("mx-none.test", {"mx.missing": "warning"}, 0),
    ("mx-cname.test", {"mx.cname": "warning", "mx.no-reverse-dns": "info"}, 0),
    ("mx-iplit.test", {"mx.ip-literal": "error"}, 1),
    ("mx-noaddr.test", {"mx.host-unresolvable": "error"}, 1),
    ("mx-partial.test", {"mx.host-unresolvable": "warning", "mx.no-reverse-dns": "info"}, 0),
    ("mx-private.test", {"mx.private-address": "warning", "mx.no-reverse-dns": "info"}, 0),
    ("mx-rdns.test", {"mx.reverse-dns-mismatch": "info"}, 0),
    ("mx-dup.test", {"mx.duplicate-host": "info", "mx.no-reverse-dns": "info"}, 0),
    ("nonexistent.test", {"mx.nxdomain": "error"}, 1),
])
def test_mx_cases(check, domain, expect, code):
    res, data = check(domain, "--checks", "mx")
    assert found(data, "mx") == expect
    assert res.exit_code == code


def test_mx_implicit_a_is_mentioned(check):
    _, data = check("mx-none.test", "--checks", "mx")
    assert "implicit MX" in data["checks"]["mx"]["findings"][0]["message"]


def test_mx_cname_chain_is_reported(check):
    _, data = check("mx-cname.test", "--checks", "mx")
    assert data["checks"]["mx"]["hosts"][0]["cname_chain"] == ["real.mx-cname.test"]


# -- BIMI ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("domain, expect, code", [
    ("bimi.test", {}, 0),
    ("sub.bimi.test", {}, 0),  # the organizational domain's record applies
    ("bimi-none.test", {"bimi.dmarc-not-enforced": "error"}, 1),
    ("bimi-pct.test", {"bimi.dmarc-not-enforced": "error"}, 1),
    ("bimi-http.test", {"bimi.invalid-location": "error", "bimi.invalid-authority": "error"}, 1),
    ("bimi-noa.test", {"bimi.no-authority": "info"}, 0),
    ("bimi-decl.test", {"bimi.declined": "info"}, 0),
    ("bimi-two.test", {"bimi.multiple-records": "error"}, 1),
    ("bimi-syntax.test", {"bimi.syntax": "error"}, 1),
    ("mx-good.test", {"bimi.missing": "info"}, 0),
])
def test_bimi_cases(check, domain, expect, code):
    res, data = check(domain, "--checks", "bimi")
    assert found(data, "bimi") == expect
    assert res.exit_code == code


def test_bimi_data(check):
    _, data = check("sub.bimi.test", "--checks", "bimi")
    b = data["checks"]["bimi"]
    assert b["record_name"] == "default._bimi.bimi.test" and b["dmarc_policy"] == "reject"
    assert b["tags"]["l"] == "https://bimi.test/logo.svg"


# -- DNSSEC --------------------------------------------------------------------------------------
@pytest.mark.parametrize("domain, expect, code", [
    ("signed.test", {}, 0),
    ("www.signed.test", {}, 0),  # a name inside the signed zone
    ("mx-good.test", {"dnssec.unsigned": "info"}, 0),
    ("nods.test", {"dnssec.no-ds": "warning"}, 0),
    ("dsonly.test", {"dnssec.no-dnskey": "error"}, 1),
    ("dsbad.test", {"dnssec.ds-mismatch": "error"}, 1),
    ("dssha1.test", {"dnssec.weak-algorithm": "warning"}, 0),
    ("expired.test", {"dnssec.signature-expired": "error"}, 1),
    ("badsig.test", {"dnssec.signature-invalid": "error"}, 1),
])
def test_dnssec_cases(check, domain, expect, code):
    res, data = check(domain, "--checks", "dnssec")
    assert found(data, "dnssec") == expect
    assert res.exit_code == code


def test_dnssec_signed_zone_data(check):
    _, data = check("www.signed.test", "--checks", "dnssec")
    d = data["checks"]["dnssec"]
    assert d["zone"] == "signed.test" and d["signed"] is True and d["dnskey_count"] == 1
    assert d["ds_matches"] == [d["dnskeys"][0]["key_tag"]]
    assert [(s["covers"], s["verified"]) for s in d["signatures"]] == [("DNSKEY", True), ("SOA", True)]
    assert "validated" not in d  # no --dnssec-resolver


@pytest.mark.parametrize("domain, expect", [
    ("signed.test", {}),
    ("signed2.test", {"dnssec.not-validated": "error"}),  # signed, but the validator sets no AD bit
    ("dsbad.test", {"dnssec.ds-mismatch": "error", "dnssec.bogus": "error"}),
    ("mx-good.test", {"dnssec.unsigned": "info"}),
])
def test_dnssec_with_a_validating_resolver(check, validating_dns_server, domain, expect):
    res, data = check(domain, "--checks", "dnssec", "--dnssec-resolver", validating_dns_server.address)
    assert found(data, "dnssec") == expect
    d = data["checks"]["dnssec"]
    assert d["validating_resolver"] == validating_dns_server.address
    assert d["validated"] is (domain == "signed.test")


def test_dnssec_resolver_must_be_an_address(check):
    res, _ = check("signed.test", "--dnssec-resolver", "resolver.example")
    assert res.exit_code == 2


# -- NS/SOA --------------------------------------------------------------------------------------
@pytest.mark.parametrize("domain, expect, code", [
    ("ns-good.test", {}, 0),
    ("www.ns-good.test", {}, 0),  # the zone is found above the name
    ("ns-single.test", {"ns.single": "warning"}, 0),
    ("ns-noaddr.test", {"ns.unresolvable": "error"}, 1),
    ("ns-soa.test", {"ns.soa-values": "info"}, 0),
    ("ns-none.test", {"ns.missing": "error"}, 1),
    ("mx-null.test", {"ns.no-soa": "warning"}, 0),
    ("nonexistent.test", {"ns.nxdomain": "error"}, 1),
])
def test_ns_cases(check, domain, expect, code):
    res, data = check(domain, "--checks", "ns")
    assert found(data, "ns") == expect
    assert res.exit_code == code


def test_ns_data(check):
    _, data = check("www.ns-good.test", "--checks", "ns")
    ns = data["checks"]["ns"]
    assert ns["zone"] == "ns-good.test"
    assert [n["host"] for n in ns["nameservers"]] == ["ns1.ns-good.test", "ns2.ns-good.test"]
    assert ns["soa"]["rname"] == "hostmaster@ns-good.test" and ns["soa"]["serial"] == 2024010101


# -- the whole run ---------------------------------------------------------------------------------
def test_complete_domain_passes_every_check(check):
    res, data = check("complete.test", "--mta-sts-port", "1")  # no policy server: only that check fails
    assert list(data["checks"]) == ["spf", "dkim", "dmarc", "mx", "mta-sts", "tls-rpt", "bimi", "dnssec", "ns"]
    failing = {name for name, c in data["checks"].items() if c["status"] != "pass"}
    assert failing == {"mta-sts"}
    assert ids(data, "mta-sts") == ["mta-sts.policy-unavailable"]
    assert res.exit_code == 1


@pytest.mark.parametrize("args, expect", [
    (("--checks", "mx,ns"), ["mx", "ns"]),
    (("--checks", "ns", "--checks", "mx"), ["mx", "ns"]),
    (("--checks", "all", "--skip", "starttls,spf,dkim,dmarc"), ["mx", "mta-sts", "tls-rpt", "bimi", "dnssec", "ns"]),
    (("--skip", "bimi", "--skip", "dnssec,ns,mta-sts,tls-rpt,mx"), ["spf", "dkim", "dmarc"]),
])
def test_check_selection(check, args, expect):
    _, data = check("mx-good.test", *args)
    assert list(data["checks"]) == expect


@pytest.mark.parametrize("args", [("--checks", "spf,nope"), ("--skip", "xyz"), ("--checks", "mx", "--skip", "mx"),
                                  ("--smtp-port", "0", "--smtp"), ("--connect-timeout", "0")])
def test_selection_usage_errors(check, args):
    res, _ = check("mx-good.test", *args)
    assert res.exit_code == 2, res.output


def test_junit_has_one_case_per_check(check, tmp_path):
    path = tmp_path / "dns.xml"
    res, _ = check("mx-nullmixed.test", "--checks", "mx,bimi,dnssec,ns", "--junit", str(path))
    assert res.exit_code == 1
    suite = ET.parse(path).getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert list(cases) == ["mx", "bimi", "dnssec", "ns"]
    assert suite.get("tests") == "4" and suite.get("failures") == "1" and suite.get("errors") == "0"
    assert "mx.null-mx-mixed" in cases["mx"].find("failure").get("message")
    assert "bimi.missing" in cases["bimi"].find("system-out").text


def test_servfail_in_a_new_check_exits_75(check):
    res, data = check("servfail.test", "--checks", "mx,mta-sts,tls-rpt,bimi,dnssec,ns")
    assert res.exit_code == 75
    assert all(c["status"] == "temperror" for c in data["checks"].values()), {n: c["status"] for n, c in data["checks"].items()}


def test_strict_turns_new_warnings_into_failures(check):
    res, _ = check("mx-null.test", "--checks", "mx")
    assert res.exit_code == 0
    res, _ = check("mx-null.test", "--checks", "mx", "--strict")
    assert res.exit_code == 1


def test_human_summary_lines(cli, extras_dns_server):
    res = cli("dns", "check", "signed.test", "--skip", "spf,dkim,dmarc,mta-sts", "--nameserver", extras_dns_server.address)
    out = res.stdout
    assert "DNSSEC signed.test: PASS  (zone signed.test: signed)" in out
    assert "NS/SOA signed.test: PASS  (zone signed.test: ns1.signed.test, ns2.signed.test)" in out
    assert "MX signed.test: WARN  (0 host(s))" in out and "TLS-RPT signed.test: PASS" in out


def test_new_modules_load_no_cli_or_network_library_on_import():
    import subprocess
    import sys

    code = ("import sys, mailctl.dns.mx, mailctl.dns.mtasts, mailctl.dns.smtp_probe, mailctl.dns.tlsrpt, mailctl.dns.bimi, "
            "mailctl.dns.dnssec, mailctl.dns.nssoa, mailctl.dns.alignment, mailctl.dns.tlsprobe\n"
            "print(sorted(m for m in ('typer', 'rich', 'click', 'dns', 'requests', 'cryptography') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- DMARC alignment of a profile ------------------------------------------------------------------
PROFILES = textwrap.dedent("""\
    schema_version = 1

    [profiles.m365]
    provider = "microsoft365"
    from_address = "ops@m365.test"

    [profiles.m365bad]
    provider = "microsoft365"
    from_address = "ops@m365bad.test"

    [profiles.m365spf]
    provider = "microsoft365"
    from_address = "ops@m365spf.test"

    [profiles.m365limit]
    provider = "microsoft365"
    from_address = "ops@m365limit.test"

    [profiles.google]
    provider = "gmail"
    from_address = "ops@google.test"

    [profiles.relay]
    type = "smtp"
    host = "smtp.relay.test"
    from_address = "ops@relay.test"

    [profiles.elsewhere]
    type = "smtp"
    host = "smtp.elsewhere.test"
    from_address = "ops@relay.test"
""")


@pytest.fixture
def aligned(cli, extras_dns_server, tmp_path):
    path = tmp_path / "profiles.toml"
    path.write_text(PROFILES)

    def run(profile, *args):
        res = cli("--config", str(path), "dns", "check", "--profile", profile, "--checks", "spf,dkim,dmarc", *args,
                  "--nameserver", extras_dns_server.address, "--json")
        data = json.loads(res.stdout)
        return res, data, data["checks"]["profile"]

    return run


def test_alignment_microsoft365_passes_both_ways(aligned):
    res, data, prof = aligned("m365")
    al = prof["dmarc_alignment"]
    assert al["verdict"] == "pass" and al["policy"] == "quarantine"
    assert al["spf"]["pass"] is True and al["spf"]["result"] == "pass" and al["spf"]["ip"] == "40.92.0.1"
    assert al["dkim"]["pass"] is True and al["dkim"]["signing_domain"] == "m365.test"
    assert al["dkim"]["selectors"] == ["selector1", "selector2"]
    assert prof["findings"] == [] and res.exit_code == 0


def test_alignment_microsoft365_without_dkim_is_spf_only(aligned):
    res, _, prof = aligned("m365spf")
    al = prof["dmarc_alignment"]
    assert al["verdict"] == "pass" and al["dkim"]["signing_domain"] == "<tenant>.onmicrosoft.com"
    assert {f["id"] for f in prof["findings"]} >= {"profile.dmarc-spf-only", "profile.dkim-selector-missing"}


def test_alignment_include_present_but_spf_over_the_limit_fails(aligned):
    # the include is there, but evaluation hits the lookup limit first: permerror, and no DKIM
    _, _, prof = aligned("m365limit")
    al = prof["dmarc_alignment"]
    assert al["spf"]["result"] == "permerror" and al["verdict"] == "fail"
    fail = [f for f in prof["findings"] if f["id"] == "profile.dmarc-fail"]
    assert fail and "SPF gives permerror" in fail[0]["message"] and "p=reject" in fail[0]["message"]


def test_alignment_microsoft365_txt_selector_does_not_count(aligned):
    _, _, prof = aligned("m365bad")
    al = prof["dmarc_alignment"]
    assert al["spf"]["result"] == "fail" and al["dkim"]["pass"] is False and al["verdict"] == "fail"
    assert "profile.dmarc-fail" in ids({"checks": {"profile": prof}}, "profile", "error")


def test_alignment_google(aligned):
    res, _, prof = aligned("google")
    al = prof["dmarc_alignment"]
    assert al["verdict"] == "pass" and al["spf"]["ip"] == "209.85.128.1" and al["dkim"]["selectors"] == ["google"]
    assert res.exit_code == 0


def test_alignment_custom_relay(aligned):
    _, _, prof = aligned("relay")
    al = prof["dmarc_alignment"]
    assert al["spf"]["pass"] is True and al["dkim"]["pass"] is None and al["verdict"] == "pass"
    assert [f["id"] for f in prof["findings"]] == ["profile.dmarc-spf-only"]
    # with the relay's selector, DKIM can be aligned too
    res, _, prof = aligned("relay", "--selector", "s1")
    al = prof["dmarc_alignment"]
    assert al["dkim"]["pass"] is True and al["dkim"]["selectors"] == ["s1"] and prof["findings"] == []
    assert res.exit_code == 0


def test_alignment_custom_relay_not_authorized(aligned):
    res, _, prof = aligned("elsewhere")
    al = prof["dmarc_alignment"]
    assert al["verdict"] == "unknown" and al["spf"]["result"] == ["fail"]
    assert {"profile.host-not-authorized", "profile.dmarc-fail"} <= {f["id"] for f in prof["findings"]}
    assert res.exit_code == 1


def test_alignment_in_human_output(cli, extras_dns_server, tmp_path):
    path = tmp_path / "profiles.toml"
    path.write_text(PROFILES)
    res = cli("--config", str(path), "dns", "check", "--profile", "m365", "--checks", "dmarc", "--nameserver", extras_dns_server.address)
    assert "DMARC for this profile: PASS  (SPF aligned pass for m365.test, DKIM aligned pass d=m365.test; policy quarantine)" in res.stdout


def test_every_new_finding_id_is_documented():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    source = "\n".join(p.read_text() for p in (root / "src/mailctl/dns").glob("*.py"))
    prefixes = "mx|starttls|mta-sts|tls-rpt|bimi|dnssec|ns|profile"
    in_source = set(re.findall(rf'"((?:{prefixes})\.[a-z0-9-]+)"', source))
    documented = set(re.findall(r"^\| `([a-z-]+\.[a-z0-9-]+)` \|", (root / "docs/dns.md").read_text(), re.M))
    assert in_source - documented == set()
