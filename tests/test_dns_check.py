"""mailctl dns check: all three checks, profile expectations, JUnit, exit codes, timeouts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest

from dnsserver import SilentNameserver, dns, dns_server, ids  # noqa: F401  (fixtures)


def test_check_runs_all_three(dns):
    res, data = dns("check", "valid.test")
    assert res.exit_code == 0, res.output
    # and the checks beyond them (tests/test_dns_extras.py): all but the opt-in STARTTLS probe
    assert list(data["checks"]) == ["spf", "dkim", "dmarc", "mx", "mta-sts", "tls-rpt", "bimi", "dnssec", "ns"]
    assert all(data["checks"][c]["status"] == "pass" for c in ("spf", "dkim", "dmarc"))
    assert data["queries"] > 0


def test_check_collects_errors_of_every_check(dns):
    res, data = dns("check", "external.test")
    assert res.exit_code == 1
    assert "spf.missing" in ids(data, "spf") and "dmarc.external-report-unauthorized" in ids(data, "dmarc")
    assert "dkim.no-selector-found" in ids(data, "dkim")


def test_finding_fields(dns):
    _, data = dns("check", "toomany.test")
    for check in data["checks"].values():
        for f in check["findings"]:
            assert f["severity"] in ("error", "warning", "info")
            assert set(f) >= {"severity", "id", "message", "fix"}
            assert f["id"].split(".")[0] in ("spf", "dkim", "dmarc", "dns", "profile", "mx", "starttls", "mta-sts",
                                             "tls-rpt", "bimi", "dnssec", "ns")


def test_global_json_flag(cli, dns_server):
    res = cli("--json", "dns", "check-dmarc", "valid.test", "--nameserver", dns_server.address)
    assert res.exit_code == 0
    assert json.loads(res.stdout)["checks"]["dmarc"]["policy"] == "reject"


def test_junit_report_is_valid_xml(dns, tmp_path):
    path = tmp_path / "dns.xml"
    res, _ = dns("check", "external.test", "--checks", "spf,dkim,dmarc", "--junit", str(path))
    assert res.exit_code == 1
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["spf", "dkim", "dmarc"]
    assert suite.get("tests") == "3" and suite.get("failures") == "2" and suite.get("errors") == "0"
    failed = {c.get("name"): c.find("failure") for c in cases}
    assert failed["dkim"] is None  # warnings only
    assert "spf.missing" in failed["spf"].get("message")
    assert "dmarc.external-report-unauthorized" in failed["dmarc"].text
    assert "dkim.no-selector-found" in cases[1].find("system-out").text


def test_junit_strict_and_pass(dns, tmp_path):
    path = tmp_path / "ok.xml"
    res, _ = dns("check", "valid.test", "--junit", str(path))
    assert res.exit_code == 0
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite.get("failures") == "0" and all(c.find("failure") is None for c in suite)
    res, _ = dns("check-dmarc", "dmarcnone.test", "--strict", "--junit", str(path))
    assert res.exit_code == 1
    assert ET.parse(path).getroot().find("testsuite").get("failures") == "1"


def test_junit_records_dns_errors(dns, tmp_path):
    path = tmp_path / "tf.xml"
    res, _ = dns("check-spf", "servfail.test", "--junit", str(path))
    assert res.exit_code == 75
    case = ET.parse(path).getroot().find("testsuite/testcase")
    assert case.find("error").get("type") == "dns.servfail"


def test_junit_unwritable_path_is_usage_error(dns, tmp_path):
    res, _ = dns("check-spf", "valid.test", "--junit", str(tmp_path / "no" / "such" / "dir.xml"))
    assert res.exit_code == 2


def test_timeout_exits_75(cli):
    silent = SilentNameserver()
    try:
        res = cli("dns", "check-spf", "valid.test", "--nameserver", silent.address, "--timeout", "0.3", "--json")
    finally:
        silent.close()
    assert res.exit_code == 75, res.output
    data = json.loads(res.stdout)
    assert "dns.timeout" in ids(data)
    assert "Error: DNS lookups failed" in res.stderr


def test_servfail_exits_75(dns):
    res, data = dns("check", "servfail.test")
    assert res.exit_code == 75
    assert data["checks"]["spf"]["status"] == "temperror"


@pytest.mark.parametrize("args", [
    ("check-spf", "valid.test", "--nameserver", "not-an-ip"),
    ("check-spf", "valid.test", "--nameserver", "127.0.0.1:99999"),
    ("check-spf", "-bad-.test", "--nameserver", "127.0.0.1"),
    ("check", "--nameserver", "127.0.0.1"),
    ("check-spf", "valid.test", "--timeout", "-1"),
    ("check-spf", "valid.test", "--no-such-flag"),
])
def test_usage_errors_exit_2(cli, args):
    res = cli("dns", *args)
    assert res.exit_code == 2, res.output


def test_human_output_has_summary_and_findings(cli, dns_server):
    res = cli("dns", "check", "dmarcnone.test", "--checks", "spf,dkim,dmarc", "--nameserver", dns_server.address)
    assert "DMARC dmarcnone.test: WARN" in res.stdout
    assert "dmarc.policy-none" in res.stdout and "fix:" in res.stdout
    assert res.exit_code == 1  # spf.missing is an error
    assert res.stderr == "Error: check dmarcnone.test: 1 error(s), 5 warning(s), 1 info\n"


def test_help_does_not_import_dnspython():
    code = "import sys; from mailctl.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit: pass\n" \
           "print('dns' in sys.modules, any(m.startswith('dns.') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"


def test_dns_help_does_not_import_dnspython():
    code = "import sys; from mailctl.cli import main\ntry:\n    main(['dns', 'check', '--help'])\nexcept SystemExit: pass\n" \
           "print('dns' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_domain_package_has_no_cli_imports():
    code = "import sys, mailctl.dns.check, mailctl.dns.render, mailctl.dns.spf, mailctl.dns.dkim, mailctl.dns.dmarc, " \
           "mailctl.dns.expectations\nprint(sorted(m for m in ('typer', 'rich', 'click', 'dns') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- profiles --------------------------------------------------------------------------------
PROFILES = textwrap.dedent("""\
    schema_version = 1
    default = "m365"

    [profiles.m365]
    type = "smtp"
    provider = "microsoft365"
    from_address = "ops@m365.test"

    [profiles.m365bad]
    type = "smtp"
    provider = "microsoft365"
    from_address = "ops@m365bad.test"

    [profiles.google]
    type = "smtp"
    provider = "gmail"
    from_address = "ops@google.test"

    [profiles.custom]
    type = "smtp"
    host = "smtp.custom.test"
    from_address = "ops@custom.test"

    [profiles.elsewhere]
    type = "smtp"
    host = "smtp.elsewhere.test"
    from_address = "ops@custom.test"

    [profiles.nohost]
    type = "smtp"
    host = "nothing.custom.test"
    from_address = "ops@custom.test"
""")


@pytest.fixture
def profiles(tmp_path):
    path = tmp_path / "profiles.toml"
    path.write_text(PROFILES)
    return str(path)


def run_profile(cli, dns_server, profiles, *args):
    res = cli("--config", profiles, "dns", "check", *args, "--nameserver", dns_server.address, "--json")
    return res, (json.loads(res.stdout) if res.stdout.strip() else None)


def test_profile_microsoft365_ok(cli, dns_server, profiles):
    res, data = run_profile(cli, dns_server, profiles, "--profile", "m365")
    assert res.exit_code == 0, res.output
    assert data["domain"] == "m365.test"
    prof = data["checks"]["profile"]
    assert prof["provider"] == "microsoft365" and prof["findings"] == []
    assert [s["selector"] for s in prof["selectors"]] == ["selector1", "selector2"]
    # DKIM discovery used the provider's selectors
    assert {s["selector"] for s in data["checks"]["dkim"]["selectors"]} == {"selector1", "selector2"}


def test_profile_microsoft365_missing_include_and_txt_selector(cli, dns_server, profiles):
    res, data = run_profile(cli, dns_server, profiles, "--profile", "m365bad")
    assert res.exit_code == 1
    prof_ids = ids(data, "profile", "error")
    assert "profile.spf-include-missing" in prof_ids
    assert "profile.dkim-not-cname" in prof_ids  # selector1 is a TXT record
    assert "profile.dkim-selector-missing" in prof_ids  # selector2 absent


def test_profile_google(cli, dns_server, profiles):
    res, data = run_profile(cli, dns_server, profiles, "--profile", "google")
    assert res.exit_code == 0, res.output
    assert data["checks"]["profile"]["spf_include"] == "_spf.google.com"


def test_profile_custom_host_authorized(cli, dns_server, profiles):
    res, data = run_profile(cli, dns_server, profiles, "--profile", "custom")
    evs = data["checks"]["profile"]["host_evaluations"]
    assert [(e["ip"], e["result"]) for e in evs] == [("192.0.2.77", "pass")]
    assert "profile" not in {i.split(".")[0] for i in ids(data, severity="error")}


def test_profile_custom_host_not_authorized(cli, dns_server, profiles):
    res, data = run_profile(cli, dns_server, profiles, "--profile", "elsewhere")
    assert res.exit_code == 1
    assert "profile.host-not-authorized" in ids(data, "profile", "error")
    assert data["checks"]["profile"]["host_evaluations"][0]["result"] == "fail"


def test_profile_host_unresolvable(cli, dns_server, profiles):
    res, data = run_profile(cli, dns_server, profiles, "--profile", "nohost")
    assert "profile.host-unresolvable" in ids(data, "profile", "error")


def test_profile_with_explicit_domain(cli, dns_server, profiles):
    res, data = run_profile(cli, dns_server, profiles, "valid.test", "--profile", "google")
    assert data["domain"] == "valid.test"
    assert data["checks"]["profile"]["domain"] == "google.test"


def test_unknown_profile_exits_66(cli, dns_server, profiles):
    res, _ = run_profile(cli, dns_server, profiles, "--profile", "nope")
    assert res.exit_code == 66


def test_check_does_not_load_doh_libraries(dns_server):
    # httpx/httpcore are ~150 ms of start-up that plain DNS never needs (see resolver._light_dnspython)
    code = ("import sys; from mailctl.cli import main\n"
            f"try:\n    main(['dns', 'check-spf', 'valid.test', '--nameserver', '{dns_server.address}', '--json'])\n"
            "except SystemExit: pass\n"
            "print(sorted(m for m in ('httpx', 'httpcore', 'httpcore2') if m in sys.modules), 'dns.resolver' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[] True"


def test_every_finding_id_is_documented():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    source = "\n".join(p.read_text() for p in (root / "src/mailctl/dns").glob("*.py"))
    prefixes = "spf|dkim|dmarc|profile|mx|starttls|mta-sts|tls-rpt|bimi|dnssec|ns|helo"
    in_source = set(re.findall(rf'"((?:{prefixes})\.[a-z0-9-]+)"', source)) | {"dns.timeout", "dns.servfail"}
    documented = set(re.findall(r"^\| `([a-z-]+\.[a-z0-9-]+)` \|", (root / "docs/dns.md").read_text(), re.M))
    assert in_source == documented
