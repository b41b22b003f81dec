"""mailctl dns check-spf against a real DNS server on loopback (tests/dnsserver.py)."""

from __future__ import annotations

import pytest

from dnsserver import dns, dns_server, ids  # noqa: F401  (fixtures)


def test_valid_domain_passes_with_tree_and_counts(dns):
    res, data = dns("check-spf", "valid.test")
    assert res.exit_code == 0, res.output
    spf = data["checks"]["spf"]
    assert spf["record"] == "v=spf1 ip4:192.0.2.0/24 include:_spf.provider.test -all"
    assert spf["lookups"] == 1
    assert ids(data, severity="error") == [] and ids(data, severity="warning") == []
    include = spf["tree"]["terms"][1]
    assert include["term"] == "include:_spf.provider.test" and include["lookups"] == 1
    assert include["record"]["record"].startswith("v=spf1 ip4:198.51.100.0/24")
    assert data["ok"] is True and data["exit_code"] == 0


def test_json_shape(dns):
    _, data = dns("check-spf", "valid.test")
    assert set(data) >= {"domain", "ok", "exit_code", "strict", "counts", "checks", "nameservers", "queries"}
    assert data["domain"] == "valid.test"
    assert set(data["counts"]) == {"error", "warning", "info"}
    spf = data["checks"]["spf"]
    assert spf["check"] == "spf" and spf["status"] == "pass"
    for t in spf["tree"]["terms"]:
        assert {"term", "kind", "name", "lookups"} <= set(t)


def test_two_spf_records_is_an_error(dns):
    res, data = dns("check-spf", "twospf.test")
    assert res.exit_code == 1
    assert "spf.multiple-records" in ids(data, severity="error")


def test_two_records_ip_evaluation_is_permerror(dns):
    _, data = dns("check-spf", "twospf.test", "--ip", "192.0.2.1")
    assert data["checks"]["spf"]["evaluations"][0]["result"] == "permerror"


def test_over_ten_lookups_through_nested_includes(dns):
    res, data = dns("check-spf", "toomany.test")
    assert res.exit_code == 1
    spf = data["checks"]["spf"]
    assert spf["lookups"] == 11
    assert "spf.too-many-lookups" in ids(data, severity="error")
    # the full tree is still there, with the count of every term
    n1, n2 = spf["tree"]["terms"][0], spf["tree"]["terms"][1]
    assert (n1["lookups"], n2["lookups"]) == (8, 3)
    n3 = n1["record"]["terms"][0]
    assert n3["term"] == "include:n3.toomany.test" and n3["lookups"] == 5
    assert [t["lookups"] for t in n3["record"]["terms"]] == [1, 1, 1, 1, 0]


def test_over_ten_lookups_ip_evaluation_stops_with_permerror(dns):
    _, data = dns("check-spf", "toomany.test", "--ip", "203.0.113.5")
    ev = data["checks"]["spf"]["evaluations"][0]
    assert ev["result"] == "permerror"
    assert ev["term"] == "a:h2.toomany.test" and ev["domain"] == "n2.toomany.test"
    assert ev["lookups"] == 11


def test_exactly_ten_lookups_is_fine(dns):
    res, data = dns("check-spf", "bench.test")
    assert data["checks"]["spf"]["lookups"] == 10
    assert "spf.too-many-lookups" not in ids(data)
    assert res.exit_code == 0, res.output


def test_include_loop(dns):
    res, data = dns("check-spf", "loop.test")
    assert res.exit_code == 1
    assert "spf.include-loop" in ids(data, severity="error")
    finding = next(f for f in data["checks"]["spf"]["findings"] if f["id"] == "spf.include-loop")
    assert "loop.test -> loop2.test -> loop.test" in finding["message"]


def test_void_lookups(dns):
    res, data = dns("check-spf", "void.test")
    assert res.exit_code == 1
    spf = data["checks"]["spf"]
    assert spf["void_lookups"] == 3
    assert ids(data).count("spf.void-lookup") == 3
    assert "spf.too-many-void-lookups" in ids(data, severity="error")
    _, data = dns("check-spf", "void.test", "--ip", "192.0.2.9")
    ev = data["checks"]["spf"]["evaluations"][0]
    assert ev["result"] == "permerror" and ev["term"] == "mx:nx3.void.test"


@pytest.mark.parametrize("domain, text", [("syntax.test", "ip4:192.0.2.300"), ("badmech.test", "foo:bar")])
def test_syntax_errors(dns, domain, text):
    res, data = dns("check-spf", domain)
    assert res.exit_code == 1
    finding = next(f for f in data["checks"]["spf"]["findings"] if f["id"] == "spf.syntax")
    assert text in finding["message"] and finding["fix"]


def test_macros_are_expanded_per_ip(dns):
    res, data = dns("check-spf", "macro.test", "--ip", "192.0.2.1", "--ip", "192.0.2.2")
    evs = data["checks"]["spf"]["evaluations"]
    assert [e["result"] for e in evs] == ["pass", "fail"]
    assert evs[0]["term"] == "exists:%{ir}.%{v}._spf.%{d}"
    assert "spf.macro" in ids(data, severity="info")
    assert res.exit_code == 1  # 192.0.2.2 is not authorized


def test_ptr_is_deprecated_but_evaluated(dns):
    res, data = dns("check-spf", "ptr.test", "--ip", "192.0.2.5")
    assert "spf.ptr-deprecated" in ids(data, severity="warning")
    assert data["checks"]["spf"]["evaluations"][0]["result"] == "pass"
    assert res.exit_code == 0
    res, _ = dns("check-spf", "ptr.test", "--strict")
    assert res.exit_code == 1


@pytest.mark.parametrize("domain, finding, severity, code", [
    ("passall.test", "spf.pass-all", "error", 1),
    ("neutralall.test", "spf.neutral-all", "warning", 0),
    ("noall.test", "spf.missing-all", "warning", 0),
])
def test_all_qualifiers(dns, domain, finding, severity, code):
    res, data = dns("check-spf", domain)
    assert finding in ids(data, severity=severity)
    assert res.exit_code == code


def test_redirect_supplies_the_all(dns):
    res, data = dns("check-spf", "redirect.test", "--ip", "198.51.100.7")
    assert "spf.missing-all" not in ids(data)
    ev = data["checks"]["spf"]["evaluations"][0]
    assert ev["result"] == "pass" and ev["path"] == ["redirect=_spf.provider.test", "ip4:198.51.100.0/24"]
    assert res.exit_code == 0


def test_redirect_next_to_all_is_ignored_and_not_counted(dns):
    res, data = dns("check-spf", "redirectall.test", "--ip", "203.0.113.5")
    assert "spf.redirect-ignored" in ids(data, severity="warning")
    assert data["checks"]["spf"]["lookups"] == 0  # toomany.test's 11 lookups are never made
    assert data["checks"]["spf"]["evaluations"][0]["result"] == "fail"


@pytest.mark.parametrize("ip, result, term, domain", [
    ("192.0.2.1", "pass", "ip4:192.0.2.1", "results.test"),
    ("192.0.2.2", "fail", "-ip4:192.0.2.2", "results.test"),
    ("192.0.2.3", "softfail", "~ip4:192.0.2.3", "results.test"),
    ("192.0.2.4", "neutral", "?ip4:192.0.2.4", "results.test"),
    ("198.51.100.20", "pass", "include:_spf.provider.test", "results.test"),
    ("2001:db8::1", "pass", "include:_spf.provider.test", "results.test"),
    ("203.0.113.1", "fail", "-all", "results.test"),
])
def test_ip_results_and_deciding_term(dns, ip, result, term, domain):
    res, data = dns("check-spf", "results.test", "--ip", ip)
    ev = data["checks"]["spf"]["evaluations"][0]
    assert (ev["result"], ev["term"], ev["domain"]) == (result, term, domain)
    assert res.exit_code == (0 if result == "pass" else 1)
    if result != "pass":
        assert "spf.ip-not-authorized" in ids(data, severity="error")


def test_ip_result_through_include_reports_path(dns):
    _, data = dns("check-spf", "results.test", "--ip", "198.51.100.20")
    ev = data["checks"]["spf"]["evaluations"][0]
    assert ev["path"] == ["include:_spf.provider.test", "ip4:198.51.100.0/24"]


def test_result_none_when_no_record(dns):
    res, data = dns("check-spf", "nospf.test", "--ip", "192.0.2.1")
    assert data["checks"]["spf"]["evaluations"][0]["result"] == "none"
    assert "spf.missing" in ids(data, severity="error")
    assert res.exit_code == 1


def test_temperror_via_servfail_exits_75(dns):
    res, data = dns("check-spf", "tempfail.test", "--ip", "203.0.113.1")
    assert res.exit_code == 75, res.output
    assert data["checks"]["spf"]["evaluations"][0]["result"] == "temperror"
    assert "dns.servfail" in ids(data)
    assert data["checks"]["spf"]["status"] == "temperror"
    # an address matched before the failing include still passes
    _, data = dns("check-spf", "tempfail.test", "--ip", "192.0.2.1")
    assert data["checks"]["spf"]["evaluations"][0]["result"] == "pass"


def test_sender_macro_domain(dns):
    # %{d} is the domain being checked; --sender only changes %{s}/%{l}/%{o}
    _, data = dns("check-spf", "macro.test", "--ip", "192.0.2.1", "--sender", "alice@macro.test")
    ev = data["checks"]["spf"]["evaluations"][0]
    assert ev["sender"] == "alice@macro.test" and ev["result"] == "pass"


def test_bad_ip_is_usage_error(dns):
    res, _ = dns("check-spf", "valid.test", "--ip", "not-an-ip")
    assert res.exit_code == 2
    assert "invalid --ip" in res.stderr


def test_human_output_shows_tree_and_counts(cli, dns_server):
    res = cli("dns", "check-spf", "toomany.test", "--nameserver", dns_server.address)
    assert res.exit_code == 1
    assert "11/10 lookups" in res.stdout
    assert "include:n3.toomany.test  [5 lookups]" in res.stdout
    assert "spf.too-many-lookups" in res.stdout
    assert res.stderr.startswith("Error: check-spf toomany.test: ")


def test_newline_inside_a_record_is_a_syntax_error(dns):
    # "ip4:192.0.2.5\n" once passed: the term regex ended in "$", which matches before a newline
    res, data = dns("check-spf", "newline.test", "--ip", "192.0.2.5")
    assert data["checks"]["spf"]["evaluations"][0]["result"] == "permerror"
    assert "spf.syntax" in ids(data, severity="error")
    assert res.exit_code == 1


def test_domain_spec_may_hold_any_visible_character_before_the_last_label(dns):
    # RFC 7208 7.1: a:foo:bar/baz.example.com is a valid domain-spec
    res, data = dns("check-spf", "colon.test", "--ip", "192.0.2.6", "--ip", "192.0.2.7", "--ip", "192.0.2.8")
    assert "spf.syntax" not in ids(data)
    evs = data["checks"]["spf"]["evaluations"]
    assert [(e["result"], e["term"]) for e in evs] == [
        ("pass", "a:foo:bar/baz.colon.test"), ("pass", "mx:foo:bar/baz.colon.test"), ("fail", "-all")]
    assert data["checks"]["spf"]["lookups"] == 2


@pytest.mark.parametrize("record, valid", [
    ("v=spf1 a:example.com:8080 -all", False),  # the top label may not hold ':'
    ("v=spf1 a:museum -all", False),  # one label
    ("v=spf1 a:abc.123 -all", False),  # numeric top label
    ("v=spf1 a:example.-com -all", False),
    ("v=spf1 a:foo.example.com\0 -all", False),
    ("v=spf1 a:%{h}.bar exists:%{ir}.%{v}.x.%{d} -all", True),
    ("v=spf1 a:foo.example.xn--zckzah a:mail.example.com. -all", True),
    ("v=spf1 exists:%{d0}.example.com -all", False),  # a DIGIT transformer must not be zero
    ("v=spf1 -all exp=%{r}.example.com", False),  # c, r, t only in the explanation text
])
def test_domain_spec_grammar(record, valid):
    from mailctl.dns.spf import SpfSyntaxError, parse_record

    if valid:
        parse_record(record)
    else:
        with pytest.raises(SpfSyntaxError):
            parse_record(record)


def test_empty_txt_record_is_judged_on_the_rest_of_the_answer(dns):
    # dnspython refuses a TXT record without strings; the answer used to become a timeout
    res, data = dns("check-spf", "emptytxt.test", "--ip", "192.0.2.5")
    assert res.exit_code == 0, res.output
    spf = data["checks"]["spf"]
    assert spf["record"] == "v=spf1 ip4:192.0.2.5 -all"  # two strings, glued together
    assert spf["evaluations"][0]["result"] == "pass"


def test_helo_feeds_the_h_macro(dns):
    res, data = dns("check-spf", "helo.test", "--ip", "192.0.2.40", "--helo", "mail.helo.test")
    ev = data["checks"]["spf"]["evaluations"][0]
    assert (ev["result"], ev["term"], ev["helo"]) == ("pass", "a:%{h}", "mail.helo.test")
    assert res.exit_code == 0, res.output
    _, data = dns("check-spf", "helo.test", "--ip", "192.0.2.40")
    ev = data["checks"]["spf"]["evaluations"][0]
    assert (ev["result"], ev["helo"]) == ("fail", None)


def test_fail_shows_the_exp_explanation(dns, cli, dns_server):
    res, data = dns("check-spf", "exp.test", "--ip", "192.0.2.9")
    ev = data["checks"]["spf"]["evaluations"][0]
    text = "Correct! 192.0.2.9 may not send for exp.test: see https://exp.test/spf?ip=192.0.2.9"
    assert (ev["result"], ev["explanation"]) == ("fail", text)  # case and punctuation kept
    assert repr(text) in next(f["message"] for f in data["checks"]["spf"]["findings"] if f["id"] == "spf.ip-not-authorized")
    _, data = dns("check-spf", "exp.test", "--ip", "192.0.2.1")
    assert data["checks"]["spf"]["evaluations"][0]["explanation"] is None  # only for fail
    res = cli("dns", "check-spf", "exp.test", "--ip", "192.0.2.9", "--nameserver", dns_server.address)
    assert res.exit_code == 1
    assert f"explanation: {text!r}" in res.stdout


@pytest.mark.parametrize("domain", ["a..b.test", "[192.0.2.1]", "localhost", "a" * 64 + ".test"])
def test_invalid_domain_with_ip_is_evaluated_as_none(dns, domain):
    res, data = dns("check-spf", domain, "--ip", "192.0.2.1")
    assert res.exit_code == 1, res.output
    spf = data["checks"]["spf"]
    assert spf["evaluations"][0]["result"] == "none"
    assert ids(data) == ["spf.invalid-domain"]
    assert data["queries"] == 0  # nothing a receiver would look up


def test_invalid_domain_without_ip_is_still_a_usage_error(dns):
    res, _ = dns("check-spf", "a..b.test")
    assert res.exit_code == 2
    assert "invalid domain" in res.stderr
