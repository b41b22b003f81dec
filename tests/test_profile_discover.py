"""Issue #17: `mailctl profile discover ADDRESS [--add NAME]` against a real DNS server on
loopback (tests/dnsserver.py's LocalDNS with this file's zones: MX, RFC 6186 SRV, A records
for the autoconfig hosts) and a local HTTPS server with a test CA serving Mozilla autoconfig
files (autoconfig.<domain> and <domain> resolve to 127.0.0.1; --https-port points the fetch
at the server, --ca-file trusts its CA)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import trustme
from dnslib import QTYPE, RR, SRV

from dnsserver import LocalDNS, a, mx
from httpfakes import FakeHTTPS, Reply

AUTOCONFIG = """<?xml version="1.0" encoding="UTF-8"?>
<clientConfig version="1.1">
  <emailProvider id="ac.test">
    <domain>ac.test</domain>
    <displayName>AC Mail</displayName>
    <incomingServer type="imap"><hostname>imap.ac.test</hostname><port>993</port><socketType>SSL</socketType></incomingServer>
    <outgoingServer type="smtp">
      <hostname>plain.ac.test</hostname><port>25</port><socketType>plain</socketType>
      <authentication>password-cleartext</authentication><username>%EMAILADDRESS%</username>
    </outgoingServer>
    <outgoingServer type="smtp">
      <hostname>smtp.%EMAILDOMAIN%</hostname><port>587</port><socketType>STARTTLS</socketType>
      <authentication>password-cleartext</authentication><username>%EMAILLOCALPART%</username>
    </outgoingServer>
  </emailProvider>
</clientConfig>
"""
PATH_AUTOCONFIG = r"/mail/config-v1\.1\.xml"
PATH_WELL_KNOWN = r"/\.well-known/autoconfig/mail/config-v1\.1\.xml"


def srv(name: str, priority: int, weight: int, port: int, target: str) -> RR:
    return RR(name, QTYPE.SRV, rdata=SRV(priority, weight, port, target), ttl=60)


def zones() -> list[RR]:
    return [
        mx("contoso.test", "contoso-test.mail.protection.outlook.com"),
        mx("gov.test", "gov-test.mail.protection.office365.us"),
        mx("gws.test", "smtp.google.com", 1),
        mx("ac.test", "mx.ac.test"), a("autoconfig.ac.test", "127.0.0.1"),
        mx("wk.test", "mx.wk.test"), a("wk.test", "127.0.0.1"),
        mx("srv.test", "mx.srv.test"),
        srv("_submissions._tcp.srv.test", 10, 1, 465, "backup.srv.test"),
        srv("_submissions._tcp.srv.test", 0, 5, 465, "mail.srv.test"),
        srv("_submission._tcp.srv.test", 0, 1, 587, "mail.srv.test"),
        mx("dot.test", "mx.dot.test"), srv("_submission._tcp.dot.test", 0, 0, 0, "."),
        a("autoconfig.evil.test", "127.0.0.1"), a("autoconfig.big.test", "127.0.0.1"),
        a("autoconfig.slow.test", "127.0.0.1"), a("autoconfig.bad.test", "127.0.0.1"),
        mx("nothing.test", "mx.nothing.test"),
    ]


@pytest.fixture(scope="module")
def dns_zone():
    server = LocalDNS(zones()).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def ca_file(ca, tmp_path):
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch):
    """Fetches go direct here (tests/test_profile_discover_proxy.py covers the proxies): no
    proxy variable of the machine may leak in."""
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def discover(cli, dns_zone, ca_file):
    def run(address, *more, port=None):
        args = ["profile", "discover", address, "--nameserver", dns_zone.address, "--timeout", "2", "--ca-file", ca_file, "--json"]
        if port:
            args += ["--https-port", str(port)]
        res = cli(*args, *more)
        return res, (json.loads(res.stdout) if res.stdout.strip() else None)
    return run


def test_microsoft365_from_mx(discover):
    res, data = discover("ops@contoso.test")
    assert res.exit_code == 0, res.output
    assert data["source"] == "mx:microsoft365"
    assert data["fields"] == {"provider": "microsoft365", "username": "ops@contoso.test", "from_address": "ops@contoso.test",
                               "tenant_id": "contoso.test"}
    # offline (this zone has no login.microsoftonline.com): the domain is kept, and the note says why
    assert ("tenant_id is the domain contoso.test (the tenant's GUID works too): the tenant lookup "
            "https://login.microsoftonline.com/contoso.test/v2.0/.well-known/openid-configuration failed: "
            "login.microsoftonline.com has no A or AAAA record") in data["notes"]
    res, data = discover("ops@gov.test")
    assert data["fields"]["cloud"] == "usgov"
    assert any("https://login.microsoftonline.us/gov.test/v2.0/" in n for n in data["notes"])  # its cloud's login host


def test_google_workspace_from_mx(discover):
    res, data = discover("me@gws.test")
    assert res.exit_code == 0, res.output
    assert data["source"] == "mx:gmail" and data["fields"]["provider"] == "gmail"


def test_srv_prefers_submissions_lowest_priority_highest_weight(discover):
    res, data = discover("me@srv.test")
    assert res.exit_code == 0, res.output
    assert data["source"] == "srv:_submissions._tcp.srv.test"
    assert data["fields"] == {"host": "mail.srv.test", "port": 465, "security": "tls", "auth": "password",
                               "username": "me@srv.test", "from_address": "me@srv.test"}
    [alt] = data["alternatives"]
    assert alt["fields"]["port"] == 587 and alt["fields"]["security"] == "starttls"


def test_srv_dot_target_means_not_offered(discover):
    res, data = discover("me@dot.test")
    assert res.exit_code == 66
    assert "publishes no mail submission settings" in res.stderr


def test_autoconfig_best_server_with_placeholders_and_nothing_sent_but_the_domain(discover, ca):
    with FakeHTTPS(ca, hostname="autoconfig.ac.test") as srv:
        srv.on("GET", PATH_AUTOCONFIG, Reply(200, AUTOCONFIG, {"Content-Type": "text/xml"}))
        res, data = discover("alice@ac.test", port=srv.port)
        [request] = srv.requests
    assert res.exit_code == 0, res.output
    assert data["source"].startswith("autoconfig:https://autoconfig.ac.test:")
    assert data["fields"] == {"host": "smtp.ac.test", "port": 587, "security": "starttls", "auth": "password",
                               "username": "alice", "from_address": "alice@ac.test"}
    assert request.headers["host"] == "autoconfig.ac.test" and request.query == ""
    assert "authorization" not in request.headers and b"alice" not in request.body


def test_well_known_autoconfig_on_the_domain_itself(discover, ca):
    with FakeHTTPS(ca, hostname="wk.test") as srv:
        srv.on("GET", PATH_WELL_KNOWN, Reply(200, AUTOCONFIG.replace("%EMAILLOCALPART%", "%EMAILADDRESS%")))
        res, data = discover("bob@wk.test", port=srv.port)
    assert res.exit_code == 0, res.output
    assert "/.well-known/autoconfig/mail/config-v1.1.xml" in data["source"]
    assert data["fields"]["host"] == "smtp.wk.test" and data["fields"]["username"] == "bob@wk.test"
    first = data["evidence"][1]
    assert first["type"] == "autoconfig" and first["status"] == "unresolvable"  # autoconfig.wk.test has no A


def test_an_entity_declaration_is_refused_before_parsing(discover, ca):
    bomb = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
            "<clientConfig><emailProvider><outgoingServer type=\"smtp\"><hostname>&lol2;</hostname><port>587</port>"
            "<socketType>STARTTLS</socketType></outgoingServer></emailProvider></clientConfig>")
    with FakeHTTPS(ca, hostname="autoconfig.evil.test") as srv:
        srv.on("GET", PATH_AUTOCONFIG, Reply(200, bomb))
        res, data = discover("x@evil.test", port=srv.port)
        assert len(srv.requests) == 1
    assert res.exit_code == 66, res.output
    assert "a DTD or entity declaration is refused" in res.stderr and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 2  # Error: ... and Hint: ...


def test_not_xml_or_not_autoconfig_is_a_reason_not_a_crash(discover, ca):
    for body, reason in (("<clientConfig><oops></clientConfig>", "not well-formed XML"),
                         ("<html><body>hello</body></html>", "not <clientConfig>")):
        with FakeHTTPS(ca, hostname="autoconfig.bad.test") as srv:
            srv.on("GET", PATH_AUTOCONFIG, Reply(200, body))
            res, _ = discover("x@bad.test", port=srv.port)
        assert res.exit_code == 66 and reason in res.stderr, res.output


def test_an_oversized_autoconfig_is_not_read_whole(discover, ca):
    huge = "<clientConfig>" + "<!-- padding -->" * 10000 + "</clientConfig>"
    with FakeHTTPS(ca, hostname="autoconfig.big.test") as srv:
        srv.on("GET", PATH_AUTOCONFIG, Reply(200, huge))
        res, data = discover("x@big.test", port=srv.port)
    assert res.exit_code == 66 and "larger than 64 KiB" in res.stderr


def test_a_redirect_is_not_followed(discover, ca):
    with FakeHTTPS(ca, hostname="autoconfig.ac.test") as srv:
        srv.on("GET", PATH_AUTOCONFIG, Reply(302, "", {"Location": "http://elsewhere.example/config.xml"}))
        res, _ = discover("alice@ac.test", port=srv.port)
        assert len(srv.requests) == 1
    assert res.exit_code == 66 and "not followed" in res.stderr


def test_an_untrusted_certificate_is_not_used(cli, dns_zone, ca, tmp_path):
    other = trustme.CA()
    path = tmp_path / "other.pem"
    other.cert_pem.write_to_path(str(path))
    with FakeHTTPS(ca, hostname="autoconfig.ac.test") as srv:
        srv.on("GET", PATH_AUTOCONFIG, Reply(200, AUTOCONFIG))
        res = cli("profile", "discover", "alice@ac.test", "--nameserver", dns_zone.address, "--timeout", "2",
                  "--ca-file", str(path), "--https-port", str(srv.port))
        served = len(srv.requests)
    assert res.exit_code == 66 and served == 0
    assert "not trusted" in res.stderr


def test_a_server_that_never_answers_is_bounded(discover):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    held = []
    threading.Thread(target=lambda: held.append(listener.accept()), daemon=True).start()
    started = time.monotonic()
    try:
        res, _ = discover("x@slow.test", port=listener.getsockname()[1])
    finally:
        listener.close()
    assert res.exit_code == 66 and "timed out" in res.stderr, res.output
    assert time.monotonic() - started < 15  # 2 s steps, a bounded budget per fetch


def test_add_creates_the_proposed_profile(cli, discover, isolated_env):
    res, data = discover("me@srv.test", "--add", "srvmail")
    assert res.exit_code == 0, res.output
    assert data["added"]["name"] == "srvmail"
    shown = json.loads(cli("profile", "show", "srvmail", "--json").stdout)["values"]
    assert shown["host"] == "mail.srv.test" and shown["port"] == 465 and shown["security"] == "tls"
    res, data = discover("ops@contoso.test", "--add", "m365", "--client-id", "11111111-2222-3333-4444-555555555555")
    assert res.exit_code == 0, res.output
    shown = json.loads(cli("profile", "show", "m365", "--json").stdout)["values"]
    assert shown["host"] == "smtp.office365.com" and shown["auth"] == "oauth" and shown["tenant_id"] == "contoso.test"


def test_m365_add_without_client_id_says_what_is_missing(discover, isolated_env):
    res, _ = discover("ops@contoso.test", "--add", "m365")
    assert res.exit_code == 78 and "client_id" in res.stderr
    assert "mailctl profile discover ops@contoso.test --add m365 --client-id ID" in res.stderr
    assert not (isolated_env / "profiles.toml").exists() or "m365" not in (isolated_env / "profiles.toml").read_text()


def test_bad_address_and_timeouts(cli, discover):
    res, _ = discover("not-an-address")
    assert res.exit_code == 65 and "ADDRESS" in res.stderr
    from dnsserver import SilentNameserver

    silent = SilentNameserver()
    try:
        started = time.monotonic()
        res = cli("profile", "discover", "x@nothing.test", "--nameserver", silent.address, "--timeout", "0.5")
    finally:
        silent.close()
    assert res.exit_code == 75, res.output
    assert time.monotonic() - started < 20
