"""dns check --smtp: the MX STARTTLS probe against local SMTP servers (aiosmtpd, certificates
from a test CA). The MX hosts of starttls.test and starttls2.test resolve to 127.0.0.1;
--smtp-port points the probe at the server, --ca-file trusts the test CA."""

from __future__ import annotations

import datetime
import ssl
import time
import warnings

import pytest
import trustme

from dnsserver import check, extras_dns_server  # noqa: F401  (fixtures)
from smtpserver import closed_port, silent_listener, smtp_server


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def ca_file(ca, tmp_path):
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def probe(check, port, ca_file=None, domain="starttls.test", *more):
    args = [domain, "--checks", "mx", "--smtp", "--smtp-port", str(port), "--connect-timeout", "2", *more]
    if ca_file:
        args += ["--ca-file", ca_file]
    return check(*args)


def findings(data):
    return {f["id"]: f["severity"] for f in data["checks"]["starttls"]["findings"]}


def test_smtp_is_opt_in(check):
    _, data = check("starttls.test")
    assert "starttls" not in data["checks"]
    _, data = check("starttls.test", "--checks", "starttls", "--smtp-port", str(closed_port()))
    assert list(data["checks"]) == ["starttls"]


def test_valid_certificate(check, ca, ca_file):
    with smtp_server(cert=ca.issue_cert("mx.starttls.test"), auth=False) as srv:
        res, data = probe(check, srv.port, ca_file)
    assert res.exit_code == 0, res.output
    st = data["checks"]["starttls"]
    assert st["status"] == "pass" and st["findings"] == []
    host = st["hosts"][0]
    assert host["host"] == "mx.starttls.test" and host["address"] == "127.0.0.1" and host["starttls_offered"] is True
    assert host["tls"]["verified"] is True and host["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
    assert host["tls"]["certificate"]["san"] == ["DNS:mx.starttls.test"]
    assert host["tls"]["certificate"]["expires_in_seconds"] > 14 * 86400
    assert host["ehlo_after_tls"] == 250
    assert list(data["checks"]) == ["mx", "starttls"]


def test_every_mx_host_is_probed(check, ca, ca_file):
    cert = ca.issue_cert("mx1.starttls2.test", "mx2.starttls2.test")
    with smtp_server(cert=cert, auth=False) as srv:
        before = srv.handler.connections  # the controller's own start-up probe counts too
        res, data = probe(check, srv.port, ca_file, "starttls2.test")
        assert srv.handler.connections - before == 2
    assert res.exit_code == 0, res.output
    assert [h["host"] for h in data["checks"]["starttls"]["hosts"]] == ["mx1.starttls2.test", "mx2.starttls2.test"]


def test_starttls_not_offered(check):
    with smtp_server(auth=False) as srv:  # no certificate: no STARTTLS
        res, data = probe(check, srv.port)
    assert findings(data) == {"starttls.not-offered": "warning"}
    assert res.exit_code == 0
    assert data["checks"]["starttls"]["hosts"][0]["starttls_offered"] is False


def test_certificate_for_another_name(check, ca, ca_file):
    with smtp_server(cert=ca.issue_cert("mail.other.test"), auth=False) as srv:
        res, data = probe(check, srv.port, ca_file)
    assert findings(data) == {"starttls.certificate-name-mismatch": "warning"}
    f = data["checks"]["starttls"]["findings"][0]
    assert "not valid for mx.starttls.test" in f["message"] and "mail.other.test" in f["message"]
    assert data["checks"]["starttls"]["hosts"][0]["tls"]["problem"] == "name-mismatch"


def test_untrusted_certificate(check, ca):
    with smtp_server(cert=ca.issue_cert("mx.starttls.test"), auth=False) as srv:
        _, data = probe(check, srv.port)  # no --ca-file: the test CA is unknown
    assert findings(data) == {"starttls.certificate-untrusted": "warning"}


def test_expired_and_expiring_certificates(check, ca, ca_file):
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = ca.issue_cert("mx.starttls.test", not_before=now - datetime.timedelta(days=90), not_after=now - datetime.timedelta(days=1))
    with smtp_server(cert=expired, auth=False) as srv:
        _, data = probe(check, srv.port, ca_file)
    assert findings(data) == {"starttls.certificate-expired": "warning"}
    assert data["checks"]["starttls"]["hosts"][0]["tls"]["certificate"]["expired"] is True
    soon = ca.issue_cert("mx.starttls.test", not_before=now - datetime.timedelta(days=80), not_after=now + datetime.timedelta(days=5))
    with smtp_server(cert=soon, auth=False) as srv:
        _, data = probe(check, srv.port, ca_file)
    assert findings(data) == {"starttls.certificate-expiring": "warning"}


class _OldTls:
    """A certificate whose server context speaks TLS 1.1 at most."""

    def __init__(self, cert):
        self.cert = cert

    def configure_cert(self, ctx: ssl.SSLContext) -> None:
        self.cert.configure_cert(ctx)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")


def test_old_tls_version(check, ca, ca_file):
    with smtp_server(cert=_OldTls(ca.issue_cert("mx.starttls.test")), auth=False) as srv:
        res, data = probe(check, srv.port, ca_file)
    assert findings(data) == {"starttls.old-tls": "error"}
    assert data["checks"]["starttls"]["hosts"][0]["tls"]["version"] in ("TLSv1", "TLSv1.1")
    assert res.exit_code == 1


def test_refused_connection_is_a_warning(check):
    res, data = probe(check, closed_port())
    assert findings(data) == {"starttls.unreachable": "warning"}
    assert "connection refused" in data["checks"]["starttls"]["findings"][0]["message"]
    assert res.exit_code == 0


def test_silent_server_times_out_in_bounded_time(check):
    with silent_listener() as port:
        start = time.perf_counter()
        _, data = check("starttls.test", "--checks", "starttls", "--smtp-port", str(port), "--connect-timeout", "0.5")
        elapsed = time.perf_counter() - start
    assert findings(data) == {"starttls.unreachable": "warning"}
    assert "timed out" in data["checks"]["starttls"]["hosts"][0]["error"]
    assert elapsed < 5


def test_banner_refusal(check):
    with smtp_server(script={"banner": "554 5.7.1 go away"}, auth=False) as srv:
        _, data = probe(check, srv.port)
    assert findings(data) == {"starttls.smtp-refused": "warning"}
    assert "554" in data["checks"]["starttls"]["findings"][0]["message"]


def test_mta_sts_enforce_makes_certificate_problems_errors(check, ca, ca_file):
    from httpfakes import FakeHTTPS, Reply

    policy = "version: STSv1\nmode: enforce\nmx: mx.stsenforce.test\nmax_age: 604800\n"
    with FakeHTTPS(ca, hostname="mta-sts.stsenforce.test") as https, \
            smtp_server(cert=ca.issue_cert("mail.other.test"), auth=False) as srv:
        https.on("GET", r"/\.well-known/mta-sts\.txt", Reply(200, policy))
        res, data = check("stsenforce.test", "--checks", "mta-sts", "--smtp", "--smtp-port", str(srv.port),
                          "--mta-sts-port", str(https.port), "--ca-file", ca_file)
        assert len(https.requests) == 1  # the policy is fetched once for both checks
    assert data["checks"]["starttls"]["mta_sts_mode"] == "enforce"
    assert findings(data) == {"starttls.certificate-name-mismatch": "error"}
    assert "senders do not deliver to it" in data["checks"]["starttls"]["findings"][0]["message"]
    assert data["checks"]["mta-sts"]["findings"] == []
    assert res.exit_code == 1


def test_bad_ca_file_is_a_usage_error(check, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    res, _ = check("starttls.test", "--smtp", "--ca-file", str(bad))
    assert res.exit_code == 2
    res, _ = check("starttls.test", "--smtp", "--ca-file", str(tmp_path / "missing.pem"))
    assert res.exit_code == 2


def test_human_output(cli, extras_dns_server, ca, ca_file):
    with smtp_server(cert=ca.issue_cert("mx.starttls.test"), auth=False) as srv:
        res = cli("dns", "check", "starttls.test", "--checks", "mx", "--smtp", "--smtp-port", str(srv.port),
                  "--ca-file", ca_file, "--nameserver", extras_dns_server.address)
    assert "STARTTLS starttls.test: PASS" in res.stdout
    assert "mx.starttls.test (127.0.0.1): TLSv1." in res.stdout and "certificate valid" in res.stdout
