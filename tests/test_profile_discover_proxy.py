"""`mailctl profile discover` through the environment's proxy, and the Microsoft 365 tenant
lookup. Only the wire is fake: the loopback DNS server (tests/dnsserver.py) answers MX, SRV
and A; local HTTPS servers with a test CA (tests/httpfakes.py) stand in for the autoconfig
hosts and for login.microsoftonline.com / .us (--https-port points the fetches at them,
--ca-file trusts their CA); tests/httpfakes.py's ConnectProxy is a real HTTP CONNECT proxy.

The proxy resolves the names it is asked to CONNECT to with its own DNS (PROXY_SIDE below),
as a corporate proxy does: autoconfig.behind.test exists only there, so a fetch of it can only
succeed through the proxy, the situation of a host that reaches the web only through
HTTPS_PROXY."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time

import pytest
import trustme
from dnslib import QTYPE, RR, SRV

from dnsserver import LocalDNS, a, mx
from httpfakes import ConnectProxy, FakeHTTPS, Reply

AUTOCONFIG = """<?xml version="1.0" encoding="UTF-8"?>
<clientConfig version="1.1"><emailProvider id="x">
  <outgoingServer type="smtp"><hostname>smtp.%EMAILDOMAIN%</hostname><port>465</port><socketType>SSL</socketType>
    <authentication>password-cleartext</authentication><username>%EMAILADDRESS%</username></outgoingServer>
</emailProvider></clientConfig>
"""
PATH_AUTOCONFIG = r"/mail/config-v1\.1\.xml"
PATH_TENANT = r"/contoso\.test/v2\.0/\.well-known/openid-configuration"
GUID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
GOV_GUID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
PROXY_USER, PROXY_PASSWORD = "proxyuser7", "S3cret@pw-771"
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy")
# what the proxy's own resolver knows (the loopback servers); other .test names it cannot resolve
PROXY_SIDE = {"autoconfig.behind.test", "behind.test", "autoconfig.ac.test", "autoconfig.both.test",
              "login.microsoftonline.com", "login.microsoftonline.us"}


def srv(name: str, priority: int, weight: int, port: int, target: str) -> RR:
    return RR(name, QTYPE.SRV, rdata=SRV(priority, weight, port, target), ttl=60)


def zones() -> list[RR]:
    return [
        mx("behind.test", "mx.behind.test"),  # autoconfig.behind.test: no A here, only the proxy knows it
        mx("ac.test", "mx.ac.test"), a("autoconfig.ac.test", "127.0.0.1"),
        mx("both.test", "mx.both.test"), a("autoconfig.both.test", "127.0.0.1"),
        srv("_submissions._tcp.both.test", 0, 1, 465, "mail.both.test"),
        mx("contoso.test", "contoso-test.mail.protection.outlook.com"),
        mx("gov.test", "gov-test.mail.protection.office365.us"),
        a("login.microsoftonline.com", "127.0.0.1"), a("login.microsoftonline.us", "127.0.0.1"),
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
    """Each test sets the proxy variables it means; none leak in from the machine."""
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture
def proxy_dns(monkeypatch):
    """The proxy's resolver: ConnectProxy dials its upstream with socket.create_connection(name).
    mailctl never dials a name itself (it dials addresses, or the proxy), so its connections
    pass through unchanged."""
    real = socket.create_connection

    def create_connection(address, *args, **kwargs):
        host, port = address[0], address[1]
        if host in PROXY_SIDE:
            host = "127.0.0.1"
        elif host.endswith(".test"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real((host, port), *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)


@pytest.fixture
def discover(cli, dns_zone, ca_file):
    def run(address, *more, port=None, as_json=True):
        args = ["profile", "discover", address, "--nameserver", dns_zone.address, "--timeout", "2", "--ca-file", ca_file]
        if as_json:
            args.append("--json")
        if port:
            args += ["--https-port", str(port)]
        res = cli(*args, *more)
        data = json.loads(res.stdout) if as_json and res.stdout.strip() else None
        return res, data
    return run


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def tenant_config(host: str, guid: str) -> dict:
    base = f"https://{host}/{guid}"
    return {"issuer": f"{base}/v2.0", "token_endpoint": f"{base}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize"}


# --- autoconfig through the proxy -----------------------------------------------------------
def test_autoconfig_only_reachable_through_https_proxy_is_fetched_and_reported(discover, ca, proxy_dns, no_proxy_env):
    with FakeHTTPS(ca, hostname="autoconfig.behind.test") as web, ConnectProxy() as proxy:
        web.on("GET", PATH_AUTOCONFIG, Reply(200, AUTOCONFIG))
        res, data = discover("carol@behind.test", port=web.port)
        assert res.exit_code == 66 and "autoconfig.behind.test has no A or AAAA record" in res.stderr  # direct: no way

        no_proxy_env.setenv("HTTPS_PROXY", proxy.url)
        res, data = discover("carol@behind.test", port=web.port)
        assert res.exit_code == 0, res.output
        assert proxy.targets == [f"autoconfig.behind.test:{web.port}"]  # the name, for the proxy to resolve
        assert web.requests[0].headers["host"] == "autoconfig.behind.test"
        text, _ = discover("carol@behind.test", port=web.port, as_json=False)
    assert data["source"].startswith("autoconfig:https://autoconfig.behind.test:")
    assert data["fields"]["host"] == "smtp.behind.test" and data["fields"]["security"] == "tls"
    fetch = next(e for e in data["evidence"] if e["type"] == "autoconfig")
    assert fetch["proxy"] == proxy.url and fetch["status"] == 200
    assert any(f"fetched (through the proxy {proxy.url}, HTTPS_PROXY)" in n for n in data["notes"]), data["notes"]
    assert text.exit_code == 0 and f"through the proxy {proxy.url}, HTTPS_PROXY" in text.stderr


def test_no_proxy_sends_the_host_direct(discover, ca, proxy_dns, no_proxy_env):
    with FakeHTTPS(ca, hostname="autoconfig.ac.test") as web, ConnectProxy() as proxy:
        web.on("GET", PATH_AUTOCONFIG, Reply(200, AUTOCONFIG))
        no_proxy_env.setenv("HTTPS_PROXY", proxy.url)
        no_proxy_env.setenv("NO_PROXY", "localhost,.ac.test")
        res, data = discover("alice@ac.test", port=web.port)
        direct = list(proxy.targets)
        no_proxy_env.setenv("NO_PROXY", "localhost,.other.test")
        res2, data2 = discover("alice@ac.test", port=web.port)
    assert res.exit_code == 0, res.output
    assert direct == [] and len(web.requests) == 2
    assert all("proxy" not in e for e in data["evidence"]) and not any("proxy" in n for n in data["notes"])
    assert res2.exit_code == 0 and proxy.targets == [f"autoconfig.ac.test:{web.port}"]  # not covered: proxied
    assert next(e for e in data2["evidence"] if e["type"] == "autoconfig")["proxy"] == proxy.url


def test_a_proxy_that_cannot_be_reached_is_a_one_line_reason(discover, ca, no_proxy_env):
    port = closed_port()
    no_proxy_env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    with FakeHTTPS(ca, hostname="autoconfig.ac.test") as web:
        web.on("GET", PATH_AUTOCONFIG, Reply(200, AUTOCONFIG))
        started = time.monotonic()
        res, _ = discover("alice@ac.test", port=web.port)
        served = len(web.requests)
    assert served == 0 and time.monotonic() - started < 15
    assert res.exit_code == 69, res.output  # unavailable: not "publishes nothing"
    error = res.stderr.strip().splitlines()[0]
    assert f"cannot connect to the proxy http://127.0.0.1:{port}" in error and "HTTPS_PROXY" in error, res.stderr
    assert "refused" in error.lower() and "Traceback" not in res.output


def test_a_refusing_proxy_is_noted_when_discovery_falls_back(discover, ca, no_proxy_env):
    with ConnectProxy(require_auth=basic("someone", "else")) as proxy:
        no_proxy_env.setenv("https_proxy", proxy.url)
        res, data = discover("bob@both.test")
        text, _ = discover("bob@both.test", as_json=False)
    assert res.exit_code == 0, res.output
    assert data["source"] == "srv:_submissions._tcp.both.test"  # the fallback...
    refused = [n for n in data["notes"] if "requires authentication or refused it" in n]
    assert len(refused) == 2, data["notes"]  # ...but not a silent one: both autoconfig URLs say why
    assert all("407" in n and proxy.url in n and "(https_proxy)" in n and "\n" not in n for n in refused)
    assert [e["status"] for e in data["evidence"] if e["type"] == "autoconfig"] == ["proxy", "proxy"]
    assert "Note: https://autoconfig.both.test/mail/config-v1.1.xml: the proxy" in text.stderr


def test_a_silent_proxy_is_bounded_by_the_deadline(discover, no_proxy_env):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    held = []
    threading.Thread(target=lambda: [held.append(listener.accept()) for _ in range(2)], daemon=True).start()
    no_proxy_env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{listener.getsockname()[1]}")
    started = time.monotonic()
    try:
        res, _ = discover("alice@ac.test")
    finally:
        listener.close()
    assert time.monotonic() - started < 15  # two fetches, each at most --timeout 2 for the CONNECT
    assert res.exit_code == 69 and "did not complete the HTTP CONNECT within 2s" in res.stderr, res.output


def test_the_limits_hold_inside_the_tunnel(discover, ca, proxy_dns, no_proxy_env):
    huge = "<clientConfig>" + "<!-- padding -->" * 10000 + "</clientConfig>"
    with FakeHTTPS(ca, hostname="autoconfig.behind.test") as web, ConnectProxy() as proxy:
        no_proxy_env.setenv("HTTPS_PROXY", proxy.url)
        web.on("GET", PATH_AUTOCONFIG, Reply(302, "", {"Location": "https://elsewhere.test/config.xml"}))
        moved, _ = discover("carol@behind.test", port=web.port)
        web.on("GET", PATH_AUTOCONFIG, Reply(200, huge))
        big, _ = discover("carol@behind.test", port=web.port)
        assert len(web.requests) == 2 and proxy.targets.count(f"autoconfig.behind.test:{web.port}") == 2
    assert moved.exit_code == 66 and "not followed" in moved.stderr, moved.output
    assert big.exit_code == 66 and "larger than 64 KiB" in big.stderr, big.output


def test_an_unusable_proxy_url_is_a_reason_not_a_direct_fetch(discover, ca, no_proxy_env):
    no_proxy_env.setenv("HTTPS_PROXY", "ftp://proxy.example:21")
    with FakeHTTPS(ca, hostname="autoconfig.ac.test") as web:
        web.on("GET", PATH_AUTOCONFIG, Reply(200, AUTOCONFIG))
        res, _ = discover("alice@ac.test", port=web.port)
        assert web.requests == []
    assert res.exit_code == 69 and "the proxy ftp://proxy.example:21 (HTTPS_PROXY) cannot be used" in res.stderr


def test_proxy_credentials_are_used_and_never_shown(discover, ca, proxy_dns, no_proxy_env):
    secret_url = "http://{user}:{pw}@127.0.0.1:{port}"
    with FakeHTTPS(ca, hostname="autoconfig.behind.test") as web, \
            ConnectProxy(require_auth=basic(PROXY_USER, PROXY_PASSWORD)) as proxy:
        web.on("GET", PATH_AUTOCONFIG, Reply(200, AUTOCONFIG))
        no_proxy_env.setenv("HTTPS_PROXY", secret_url.format(user=PROXY_USER, pw="S3cret%40pw-771", port=proxy.port))
        good = [discover("carol@behind.test", port=web.port, as_json=j)[0] for j in (True, False)]
        no_proxy_env.setenv("HTTPS_PROXY", secret_url.format(user=PROXY_USER, pw="Wr0ng-pw-55", port=proxy.port))
        bad = [discover("carol@behind.test", port=web.port, as_json=j)[0] for j in (True, False)]
    assert [r.exit_code for r in good] == [0, 0], good[0].output
    assert proxy.auth_headers[0] == basic(PROXY_USER, PROXY_PASSWORD)  # percent-decoded, sent to the proxy only
    assert json.loads(good[0].stdout)["evidence"][1]["proxy"] == proxy.url
    assert [r.exit_code for r in bad] == [69, 69], bad[0].output
    assert "requires authentication or refused it" in bad[1].stderr
    for res in good + bad:
        for secret in (PROXY_PASSWORD, "S3cret%40pw", "S3cret", "Wr0ng-pw-55", PROXY_USER):
            assert secret not in res.stdout + res.stderr


# --- the Microsoft 365 tenant ---------------------------------------------------------------
@pytest.mark.parametrize("config", [
    tenant_config("login.microsoftonline.com", GUID),
    {"issuer": "https://login.microsoftonline.com/{tenantid}/v2.0",
     "token_endpoint": f"https://login.microsoftonline.com/{GUID.upper()}/oauth2/v2.0/token"},
], ids=["issuer", "token_endpoint"])
def test_the_tenant_guid_is_looked_up(discover, ca, cli, config):
    with FakeHTTPS(ca, hostname="login.microsoftonline.com") as login:
        login.on("GET", PATH_TENANT, Reply(200, config))
        res, data = discover("ops@contoso.test", "--add", "m365", "--client-id", "11111111-2222-3333-4444-555555555555",
                             port=login.port)
        [request] = login.requests
    assert res.exit_code == 0, res.output
    assert data["fields"]["tenant_id"] == GUID and "cloud" not in data["fields"]
    assert request.query == "" and "ops" not in json.dumps(request.headers) and request.body == b""  # only the domain
    assert "json" in request.headers["accept"]
    assert any(n.startswith(f"tenant_id {GUID}: the Microsoft Entra tenant of contoso.test") for n in data["notes"])
    assert json.loads(cli("profile", "show", "m365", "--json").stdout)["values"]["tenant_id"] == GUID


def test_a_national_cloud_asks_its_own_login_host(discover, ca):
    with FakeHTTPS(ca, hostname="login.microsoftonline.us") as login:  # a certificate for .com would fail
        login.on("GET", r"/gov\.test/v2\.0/\.well-known/openid-configuration",
                 Reply(200, tenant_config("login.microsoftonline.us", GOV_GUID)))
        res, data = discover("ops@gov.test", port=login.port)
        assert len(login.requests) == 1
    assert res.exit_code == 0, res.output
    assert data["fields"]["cloud"] == "usgov" and data["fields"]["tenant_id"] == GOV_GUID


def test_the_tenant_lookup_goes_through_the_proxy(discover, ca, proxy_dns, no_proxy_env):
    with FakeHTTPS(ca, hostname="login.microsoftonline.com") as login, ConnectProxy() as proxy:
        login.on("GET", PATH_TENANT, Reply(200, tenant_config("login.microsoftonline.com", GUID)))
        no_proxy_env.setenv("https_proxy", proxy.url)
        res, data = discover("ops@contoso.test", port=login.port)
    assert res.exit_code == 0, res.output
    assert proxy.targets == [f"login.microsoftonline.com:{login.port}"] and data["fields"]["tenant_id"] == GUID
    tenant = next(e for e in data["evidence"] if e["type"] == "tenant")
    assert tenant["proxy"] == proxy.url and tenant["records"] == [GUID]
    assert any(GUID in n and f"(through the proxy {proxy.url}, https_proxy)" in n for n in data["notes"])


@pytest.mark.parametrize("reply, reason", [
    (Reply(400, {"error": "invalid_tenant", "error_description": "AADSTS90002: Tenant 'contoso.test' not found."}),
     "HTTP 400 Bad Request (Microsoft knows no tenant contoso.test)"),
    (Reply(200, {"issuer": "https://login.microsoftonline.com/{tenantid}/v2.0"}), "no tenant GUID"),
    (Reply(200, "<html>captive portal</html>"), "not JSON"),
], ids=["tenant-not-found", "no-guid", "not-json"])
def test_a_failed_tenant_lookup_keeps_the_domain_and_says_why(discover, ca, reply, reason):
    with FakeHTTPS(ca, hostname="login.microsoftonline.com") as login:
        login.on("GET", PATH_TENANT, reply)
        res, data = discover("ops@contoso.test", port=login.port)
    assert res.exit_code == 0, res.output
    assert data["fields"]["tenant_id"] == "contoso.test"
    [note] = [n for n in data["notes"] if n.startswith("tenant_id is the domain contoso.test")]
    assert reason in note and "\n" not in note, note


def test_a_tenant_lookup_that_never_answers_is_bounded(discover):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    held = []
    threading.Thread(target=lambda: held.append(listener.accept()), daemon=True).start()
    started = time.monotonic()
    try:
        res, data = discover("ops@contoso.test", port=listener.getsockname()[1])
    finally:
        listener.close()
    assert res.exit_code == 0, res.output
    assert time.monotonic() - started < 15
    assert data["fields"]["tenant_id"] == "contoso.test"
    assert any(n.startswith("tenant_id is the domain") and "timed out" in n for n in data["notes"]), data["notes"]


def test_a_tenant_lookup_through_a_dead_proxy_says_so(discover, no_proxy_env):
    port = closed_port()
    no_proxy_env.setenv("HTTPS_PROXY", f"http://{PROXY_USER}:{PROXY_PASSWORD.replace('@', '%40')}@127.0.0.1:{port}")
    res, data = discover("ops@contoso.test")
    assert res.exit_code == 0, res.output
    assert data["fields"]["tenant_id"] == "contoso.test"
    [note] = [n for n in data["notes"] if n.startswith("tenant_id is the domain")]
    assert f"cannot connect to the proxy http://127.0.0.1:{port}" in note and "(HTTPS_PROXY)" in note
    assert PROXY_USER not in res.output and "S3cret" not in res.output
