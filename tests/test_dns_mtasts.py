"""dns check: MTA-STS (RFC 8461) against the loopback DNS server and a local HTTPS server with a
test CA serving the policy (mta-sts.<domain> resolves to 127.0.0.1; --mta-sts-port points the
fetch at the server, --ca-file trusts its CA), and TLS-RPT (RFC 8460)."""

from __future__ import annotations

import datetime

import pytest
import trustme

from dnsserver import check, extras_dns_server, ids  # noqa: F401  (fixtures)
from httpfakes import FakeHTTPS, Reply

GOOD_POLICY = "version: STSv1\r\nmode: enforce\r\nmx: *.sts.test\r\nmax_age: 604800\r\n"
PATH = r"/\.well-known/mta-sts\.txt"


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def ca_file(ca, tmp_path):
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def policy_server(ca, body=GOOD_POLICY, *, hostname="mta-sts.sts.test", reply: Reply | None = None):
    srv = FakeHTTPS(ca, hostname=hostname)
    srv.on("GET", PATH, reply or Reply(200, body, {"Content-Type": "text/plain"}))
    return srv


def run_sts(check, srv, ca_file, domain="sts.test", *more):
    return check(domain, "--checks", "mta-sts,tls-rpt", "--mta-sts-port", str(srv.port), "--ca-file", ca_file, *more)


def test_good_policy_covers_every_mx(check, ca, ca_file):
    with policy_server(ca) as srv:
        res, data = run_sts(check, srv, ca_file)
        request = srv.requests[0]
    assert res.exit_code == 0, res.output
    sts = data["checks"]["mta-sts"]
    assert sts["findings"] == [] and sts["status"] == "pass"
    assert sts["policy"] == {"mx": ["*.sts.test"], "version": "STSv1", "mode": "enforce", "max_age": 604800}
    assert [c["pattern"] for c in sts["mx_coverage"]] == ["*.sts.test", "*.sts.test"]
    assert sts["policy_fetch"]["tls"]["verified"] is True
    assert sts["id"] == "20240101T000000"
    # what a sender asks: the bare host name, the well-known path, no redirects followed
    assert request.headers["host"] == "mta-sts.sts.test" and request.path == "/.well-known/mta-sts.txt"
    assert data["checks"]["tls-rpt"]["rua"] == ["mailto:tls@sts.test", "https://reports.sts.test/v1"]
    assert data["checks"]["tls-rpt"]["findings"] == []


def test_mx_not_covered_is_an_error_under_enforce(check, ca, ca_file):
    with policy_server(ca, GOOD_POLICY.replace("*.sts.test", "mx1.sts.test")) as srv:
        res, data = run_sts(check, srv, ca_file)
    assert res.exit_code == 1
    f = [f for f in data["checks"]["mta-sts"]["findings"] if f["id"] == "mta-sts.mx-not-covered"]
    assert len(f) == 1 and f[0]["severity"] == "error" and f[0]["subject"] == "mx2.sts.test"


def test_testing_mode_reports_instead_of_failing(check, ca, ca_file):
    policy = "version: STSv1\nmode: testing\nmx: mx1.sts.test\nmax_age: 3600\n"
    with policy_server(ca, policy) as srv:
        res, data = run_sts(check, srv, ca_file)
    assert res.exit_code == 0, res.output
    found = {f["id"]: f["severity"] for f in data["checks"]["mta-sts"]["findings"]}
    assert found == {"mta-sts.testing": "info", "mta-sts.max-age-short": "warning", "mta-sts.mx-not-covered": "warning"}


@pytest.mark.parametrize("policy, expect", [
    ("version: STSv2\nmode: enforce\nmx: *.sts.test\nmax_age: 604800\n", "version: STSv2"),
    ("version: STSv1\nmode: strict\nmx: *.sts.test\nmax_age: 604800\n", "mode: strict"),
    ("version: STSv1\nmode: enforce\nmax_age: 604800\n", "needs at least one mx"),
    ("version: STSv1\nmode: enforce\nmx: *.sts.test\nmax_age: 99999999999\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: *.sts.test\n", "no max_age"),
    ("<html>not a policy</html>\n", "not 'key: value'"),
])
def test_policy_syntax_errors(check, ca, ca_file, policy, expect):
    with policy_server(ca, policy) as srv:
        res, data = run_sts(check, srv, ca_file)
    assert res.exit_code == 1
    msgs = [f["message"] for f in data["checks"]["mta-sts"]["findings"] if f["id"] == "mta-sts.policy-syntax"]
    assert msgs and any(expect in m for m in msgs), msgs


def test_content_type_other_than_text_plain_is_a_warning(check, ca, ca_file):
    with policy_server(ca, reply=Reply(200, GOOD_POLICY, {"Content-Type": "text/html"})) as srv:
        res, data = run_sts(check, srv, ca_file)
    assert res.exit_code == 0
    assert ids(data, "mta-sts") == ["mta-sts.policy-content-type"]


@pytest.mark.parametrize("reply, detail", [
    (Reply(404, "no"), "HTTP 404"),
    (Reply(301, "", {"Location": "https://elsewhere.test/mta-sts.txt"}), "redirect to https://elsewhere.test/mta-sts.txt"),
])
def test_http_failures_and_redirects_are_not_followed(check, ca, ca_file, reply, detail):
    with policy_server(ca, reply=reply) as srv:
        res, data = run_sts(check, srv, ca_file)
        assert len(srv.requests) == 1
    assert res.exit_code == 1
    f = [f for f in data["checks"]["mta-sts"]["findings"] if f["id"] == "mta-sts.policy-unavailable"]
    assert f and detail in f[0]["message"]


def test_certificate_not_for_the_policy_host(check, ca, ca_file):
    with policy_server(ca, hostname="www.sts.test") as srv:
        res, data = run_sts(check, srv, ca_file)
        assert srv.requests == []  # no policy is read over an unverified connection
    assert res.exit_code == 1
    f = [f for f in data["checks"]["mta-sts"]["findings"] if f["id"] == "mta-sts.policy-certificate"]
    assert f and "not valid for mta-sts.sts.test" in f[0]["message"] and "www.sts.test" in f[0]["message"]
    tls = data["checks"]["mta-sts"]["policy_fetch"]["tls"]
    assert tls["problem"] == "name-mismatch" and tls["certificate"]["san"]


def test_untrusted_ca_without_ca_file(check, ca):
    with policy_server(ca) as srv:
        res, data = check("sts.test", "--checks", "mta-sts", "--mta-sts-port", str(srv.port))
    assert res.exit_code == 1
    assert data["checks"]["mta-sts"]["policy_fetch"]["tls"]["problem"] == "untrusted"
    assert "mta-sts.policy-certificate" in ids(data, "mta-sts", "error")


class _OneCert:
    """Quacks like trustme.CA for FakeHTTPS: always this certificate."""

    def __init__(self, cert):
        self.cert = cert

    def issue_cert(self, *names):
        return self.cert


@pytest.mark.parametrize("days, finding", [(-1, "mta-sts.policy-certificate"), (3, "mta-sts.certificate-expiring")])
def test_expired_and_expiring_certificates(check, ca, ca_file, days, finding):
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = ca.issue_cert("mta-sts.sts.test", not_before=now - datetime.timedelta(days=30),
                         not_after=now + datetime.timedelta(days=days))
    with policy_server(_OneCert(cert)) as srv:
        res, data = run_sts(check, srv, ca_file)
    f = [f for f in data["checks"]["mta-sts"]["findings"] if f["id"] == finding]
    assert f, data["checks"]["mta-sts"]
    if days < 0:
        assert "expired" in f[0]["message"] and res.exit_code == 1
    else:
        assert f[0]["severity"] == "warning" and res.exit_code == 0


def test_policy_host_unreachable(check, ca_file):
    from smtpserver import closed_port

    res, data = check("sts.test", "--checks", "mta-sts", "--mta-sts-port", str(closed_port()), "--ca-file", ca_file)
    assert res.exit_code == 1
    f = [f for f in data["checks"]["mta-sts"]["findings"] if f["id"] == "mta-sts.policy-unavailable"]
    assert f and "connection refused" in f[0]["message"]


def test_policy_host_timeout_is_bounded(check, ca_file):
    import time

    from smtpserver import silent_listener

    with silent_listener() as port:
        start = time.perf_counter()
        res, data = check("sts.test", "--checks", "mta-sts", "--mta-sts-port", str(port), "--ca-file", ca_file,
                          "--connect-timeout", "0.5")
        elapsed = time.perf_counter() - start
    assert "mta-sts.policy-unavailable" in ids(data, "mta-sts")
    assert "timed out" in data["checks"]["mta-sts"]["policy_fetch"]["detail"]
    assert elapsed < 5


@pytest.mark.parametrize("domain, finding, severity", [
    ("stsbad.test", "mta-sts.record-syntax", "error"),
    ("sts2.test", "mta-sts.multiple-records", "error"),
    ("stsroot.test", "mta-sts.misplaced-record", "error"),
    ("stsnohost.test", "mta-sts.policy-unavailable", "error"),
    ("mx-good.test", "mta-sts.missing", "info"),
])
def test_record_cases(check, domain, finding, severity):
    res, data = check(domain, "--checks", "mta-sts")
    found = {f["id"]: f["severity"] for f in data["checks"]["mta-sts"]["findings"]}
    assert found.get(finding) == severity, found
    assert res.exit_code == (1 if severity == "error" else 0)


@pytest.mark.parametrize("domain, finding, severity", [
    ("rpt-bad.test", "tls-rpt.invalid-uri", "error"),
    ("rpt-norua.test", "tls-rpt.syntax", "error"),
    ("rpt-two.test", "tls-rpt.multiple-records", "error"),
    ("mx-good.test", "tls-rpt.missing", "info"),
])
def test_tls_rpt_cases(check, domain, finding, severity):
    res, data = check(domain, "--checks", "tls-rpt")
    assert {f["id"]: f["severity"] for f in data["checks"]["tls-rpt"]["findings"]} == {finding: severity}
    assert res.exit_code == (1 if severity == "error" else 0)


def test_tls_rpt_missing_mentions_mta_sts(check):
    _, data = check("stsnohost.test", "--checks", "tls-rpt")
    assert "although it publishes MTA-STS" in data["checks"]["tls-rpt"]["findings"][0]["message"]


def test_mx_pattern_matching():
    from mailctl.dns.mtasts import mx_matches

    assert mx_matches("mx1.example.com", "*.example.com")
    assert mx_matches("MX1.Example.com.", "*.example.com")
    assert not mx_matches("a.b.example.com", "*.example.com")  # one label only (RFC 8461 4.1)
    assert not mx_matches("example.com", "*.example.com")
    assert mx_matches("mail.example.com", "mail.example.com")
    assert not mx_matches("mail.example.net", "mail.example.com")
