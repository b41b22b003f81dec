"""mailctl dns check --helo NAME [--ip ADDR]: the HELO/EHLO name as receivers judge it
(fully-qualified, valid, resolvable) and forward-confirmed reverse DNS of the sending address
matching it, against zones on the loopback DNS server (tests/dnsserver.py)."""

from __future__ import annotations

import json

import pytest

from dnsserver import LocalDNS, a, aaaa, ids, mx, ptr
from smtpserver import write_profiles

V6 = "2001:db8::25"
V6_PTR = "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
V6_BAD = "2001:db8::26"
V6_BAD_PTR = "6.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"


def helo_zones() -> list:
    return [
        # a well-configured sender: name -> address -> name
        a("mail.helo.test", "192.0.2.10"), aaaa("mail.helo.test", V6),
        ptr("10.2.0.192.in-addr.arpa", "mail.helo.test"), ptr(V6_PTR, "mail.helo.test"),
        # forward-confirmed, but under another name than the HELO
        a("out.provider.test", "192.0.2.20"), ptr("20.2.0.192.in-addr.arpa", "out.provider.test"),
        # a PTR whose name does not resolve back (no address / another address)
        ptr("30.2.0.192.in-addr.arpa", "nowhere.helo.test"),
        ptr("31.2.0.192.in-addr.arpa", "elsewhere.helo.test"), a("elsewhere.helo.test", "192.0.2.99"),
        # 192.0.2.40: no PTR at all
        a("nothing.helo.test", "192.0.2.40"),
        # an MX but no address
        mx("mxonly.helo.test", "mail.helo.test"),
        # IPv6 whose PTR name has only an IPv4 address
        ptr(V6_BAD_PTR, "v4only.helo.test"), a("v4only.helo.test", "192.0.2.26"),
    ]


@pytest.fixture(scope="module")
def helo_dns():
    server = LocalDNS(helo_zones()).start()
    yield server
    server.stop()


@pytest.fixture
def run(cli, helo_dns):
    """run("--helo", NAME, ...) -> (Result, JSON): dns check with only the helo check."""

    def invoke(*args: str, domain: str = "helo.test", checks: str = "helo", json_: bool = True):
        argv = ["dns", "check", domain, *args, "--nameserver", helo_dns.address, "--timeout", "3"]
        if checks:
            argv += ["--checks", checks]
        if json_:
            argv.append("--json")
        res = cli(*argv)
        data = json.loads(res.stdout) if json_ and res.stdout.strip() else None
        return res, data

    return invoke


def finding(data: dict, id_: str) -> dict:
    return next(f for f in data["checks"]["helo"]["findings"] if f["id"] == id_)


def test_good_fqdn_with_matching_ptr_passes(run):
    res, data = run("--helo", "mail.helo.test", "--ip", "192.0.2.10")
    assert res.exit_code == 0, res.output
    helo = data["checks"]["helo"]
    assert list(data["checks"]) == ["helo"]
    assert helo["status"] == "pass" and helo["findings"] == []
    assert helo["helo"] == "mail.helo.test" and set(helo["addresses"]) == {"192.0.2.10", V6}
    assert helo["ips"] == [{"ip": "192.0.2.10", "ptr": ["mail.helo.test"], "confirmed": ["mail.helo.test"], "fcrdns": True,
                            "helo_matches_ptr": True, "helo_resolves_to_ip": True}]


def test_good_name_text_report(run):
    res, _ = run("--helo", "Mail.Helo.Test.", "--ip", "192.0.2.10", json_=False)
    assert res.exit_code == 0, res.output
    assert "HELO mail.helo.test: PASS  (192.0.2.10, 2001:db8::25)" in res.stdout
    assert "--ip 192.0.2.10: PTR mail.helo.test, forward-confirmed, matches HELO" in res.stdout


def test_bare_word_is_not_fqdn(run):
    res, data = run("--helo", "mailhost", "--ip", "192.0.2.10")
    assert res.exit_code == 1, res.output
    f = finding(data, "helo.not-fqdn")
    assert f["severity"] == "error" and "reject_non_fqdn_helo_hostname" in f["message"] and f["fix"]
    assert f["subject"] == "mailhost"
    # a bare word is not looked up, but the address's reverse DNS is still checked
    assert data["checks"]["helo"]["ips"][0]["fcrdns"] is True
    assert "helo.unresolvable" not in ids(data, "helo")
    res, _ = run("--helo", "mailhost", json_=False)
    assert res.exit_code == 1
    assert "helo.not-fqdn" in res.stdout and "fix: send a fully-qualified name" in res.stdout
    assert "check helo.test: 1 error(s)" in res.stderr


@pytest.mark.parametrize("name, id_, severity", [
    ("192.0.2.10", "helo.ip-literal", "error"),
    ("[192.0.2.10]", "helo.address-literal", "warning"),
    ("[IPv6:2001:db8::25]", "helo.address-literal", "warning"),
    ("[300.1.1.1]", "helo.invalid", "error"),
    ("bad_name.helo.test", "helo.invalid", "error"),
    ("-mail.helo.test", "helo.invalid", "error"),
    ("localhost", "helo.not-fqdn", "error"),
    ("localhost.localdomain", "helo.localhost", "error"),
])
def test_malformed_names(run, name, id_, severity):
    res, data = run("--helo", name)
    assert ids(data, "helo") == [id_], data["checks"]["helo"]["findings"]
    assert finding(data, id_)["severity"] == severity
    assert res.exit_code == (1 if severity == "error" else 0), res.output
    assert data["queries"] == 0  # nothing worth looking up


def test_address_literal_must_be_the_sending_address(run):
    res, data = run("--helo", "[192.0.2.11]", "--ip", "192.0.2.10")
    assert res.exit_code == 1
    assert set(ids(data, "helo")) == {"helo.address-literal", "helo.literal-mismatch"}
    _, data = run("--helo", "[192.0.2.10]", "--ip", "192.0.2.10")
    assert ids(data, "helo") == ["helo.address-literal"]


def test_unresolvable_name(run):
    res, data = run("--helo", "ghost.helo.test")
    assert res.exit_code == 1
    f = finding(data, "helo.unresolvable")
    assert "does not exist (NXDOMAIN)" in f["message"] and "reject_unknown_helo_hostname" in f["message"]
    assert "publish an A/AAAA record for ghost.helo.test" in f["fix"]
    assert data["checks"]["helo"]["addresses"] == []


def test_name_with_only_an_mx_is_a_warning(run):
    res, data = run("--helo", "mxonly.helo.test")
    assert res.exit_code == 0, res.output
    assert ids(data, "helo") == ["helo.no-address"]
    res, _ = run("--helo", "mxonly.helo.test", "--strict")
    assert res.exit_code == 1


def test_ptr_missing(run):
    res, data = run("--helo", "nothing.helo.test", "--ip", "192.0.2.40")
    assert res.exit_code == 1
    f = finding(data, "helo.no-ptr")
    assert f["subject"] == "192.0.2.40" and "no reverse DNS (PTR)" in f["message"] and "PTR record" in f["fix"]
    entry = data["checks"]["helo"]["ips"][0]
    assert entry["ptr"] == [] and entry["fcrdns"] is False and entry["helo_resolves_to_ip"] is True
    res, _ = run("--helo", "nothing.helo.test", "--ip", "192.0.2.40", "--ip", "192.0.2.31", json_=False)
    assert "--ip 192.0.2.40: no PTR" in res.stdout
    assert "--ip 192.0.2.31: PTR elsewhere.helo.test, not forward-confirmed" in res.stdout


def test_ptr_mismatch_forward_confirmed_under_another_name(run):
    res, data = run("--helo", "mail.helo.test", "--ip", "192.0.2.20")
    assert res.exit_code == 0, res.output  # a warning: FCrDNS holds, the names differ
    assert set(ids(data, "helo")) == {"helo.ptr-mismatch", "helo.ip-not-in-helo"}
    f = finding(data, "helo.ptr-mismatch")
    assert f["severity"] == "warning" and "out.provider.test" in f["message"]
    assert "--ehlo-name out.provider.test" in f["fix"]
    entry = data["checks"]["helo"]["ips"][0]
    assert entry["fcrdns"] is True and entry["helo_matches_ptr"] is False and entry["helo_resolves_to_ip"] is False


@pytest.mark.parametrize("ip, target", [("192.0.2.30", "nowhere.helo.test"), ("192.0.2.31", "elsewhere.helo.test")])
def test_ptr_not_forward_confirmed(run, ip, target):
    res, data = run("--helo", "mail.helo.test", "--ip", ip)
    assert res.exit_code == 1
    f = finding(data, "helo.ptr-not-confirmed")
    assert f["severity"] == "error" and f"{target}, which does not resolve back to {ip}" in f["message"]
    assert f"make {target} resolve to {ip}" in f["fix"]
    assert data["checks"]["helo"]["ips"][0]["confirmed"] == []


def test_ipv6_sender(run):
    res, data = run("--helo", "mail.helo.test", "--ip", "2001:DB8:0::25")
    assert res.exit_code == 0, res.output
    entry = data["checks"]["helo"]["ips"][0]
    assert entry == {"ip": V6, "ptr": ["mail.helo.test"], "confirmed": ["mail.helo.test"], "fcrdns": True,
                     "helo_matches_ptr": True, "helo_resolves_to_ip": True}
    # an IPv6 PTR name that has only an IPv4 address is not forward-confirmed (AAAA is what counts)
    res, data = run("--helo", "v4only.helo.test", "--ip", V6_BAD)
    assert res.exit_code == 1
    assert "helo.ptr-not-confirmed" in ids(data, "helo")


def test_several_addresses_each_checked(run):
    res, data = run("--helo", "mail.helo.test", "--ip", "192.0.2.10", "--ip", "192.0.2.40", "--ip", V6)
    assert res.exit_code == 1
    assert [e["ip"] for e in data["checks"]["helo"]["ips"]] == ["192.0.2.10", "192.0.2.40", V6]
    assert ids(data, "helo", "error") == ["helo.no-ptr"]


def test_dns_failure_is_temporary(run):
    res, data = run("--helo", "mail.servfail.test")
    assert res.exit_code == 75, res.output
    assert data["checks"]["helo"]["status"] == "temperror" and "dns.servfail" in ids(data, "helo")


def test_helo_joins_the_default_checks(run):
    res, data = run("--helo", "mail.helo.test", "--ip", "192.0.2.10", checks="")
    assert list(data["checks"])[-1] == "helo" and "spf" in data["checks"]
    assert data["checks"]["helo"]["status"] == "pass"
    # not part of `all`, and --skip removes it
    _, data = run(checks="all")
    assert "helo" not in data["checks"]
    _, data = run("--helo", "mail.helo.test", "--skip", "helo", checks="mx")
    assert list(data["checks"]) == ["mx"]


def test_profile_ehlo_name_is_the_default(run, isolated_env):
    write_profiles(isolated_env, {
        "named": {"type": "smtp", "host": "127.0.0.1", "from_address": "app@helo.test", "ehlo_name": "mailhost"},
        "good": {"type": "smtp", "host": "127.0.0.1", "from_address": "app@helo.test", "ehlo_name": "mail.helo.test"},
    }, default="good")
    res, data = run("--profile", "named", domain="helo.test", checks="helo")
    assert data["checks"]["helo"]["helo"] == "mailhost" and ids(data, "helo") == ["helo.not-fqdn"]
    _, data = run("--profile", "good", "--ip", "192.0.2.10", checks="helo")
    assert data["checks"]["helo"]["helo"] == "mail.helo.test" and data["checks"]["helo"]["status"] == "pass"
    assert "profile" in data["checks"]  # the profile's own expectations run next to it
    # --helo wins over the profile
    _, data = run("--profile", "named", "--helo", "mail.helo.test", checks="helo")
    assert data["checks"]["helo"]["helo"] == "mail.helo.test"


def test_without_profile_the_transport_default_name_is_checked(run):
    from mailctl.transports.smtp import default_ehlo_name

    _, data = run(checks="helo")
    assert data["checks"]["helo"]["helo"] == default_ehlo_name().lower()


@pytest.mark.parametrize("value", ["", "  ", "mail example.test"])
def test_bad_helo_value_is_a_usage_error(run, value):
    res, _ = run("--helo", value, json_=False)
    assert res.exit_code == 2, res.output
    assert "--helo" in res.stderr and "Traceback" not in res.output


def test_helo_feeds_spf_h_macro(cli, helo_dns):
    """--helo is also SPF's %{h}: a record authorizing exists:%{h} passes for a real name."""
    from dnsserver import txt

    server = LocalDNS(helo_zones() + [txt("hmacro.test", "v=spf1 exists:%{h} -all")]).start()
    try:
        args = ["dns", "check", "hmacro.test", "--checks", "spf,helo", "--ip", "192.0.2.10", "--nameserver", server.address,
                "--timeout", "3", "--json"]
        good = json.loads(cli(*args, "--helo", "mail.helo.test").stdout)
        bad = json.loads(cli(*args, "--helo", "ghost.helo.test").stdout)
    finally:
        server.stop()
    assert good["checks"]["spf"]["evaluations"][0]["result"] == "pass"
    assert bad["checks"]["spf"]["evaluations"][0]["result"] == "fail"


def test_json_validates_against_the_schema(run):
    jsonschema = pytest.importorskip("jsonschema")
    from pathlib import Path

    schema = json.loads((Path(__file__).resolve().parents[1] / "schemas" / "dns-report.json").read_text())
    for args in (("--helo", "mail.helo.test", "--ip", "192.0.2.10", "--ip", V6), ("--helo", "[192.0.2.10]"),
                 ("--helo", "mailhost", "--ip", "192.0.2.40")):
        _, data = run(*args)
        jsonschema.Draft202012Validator(schema).validate(data)
    broken = dict(data, checks={"helo": dict(data["checks"]["helo"], ips=[{"ip": "192.0.2.40"}])})
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(broken))  # the helo part is really checked
