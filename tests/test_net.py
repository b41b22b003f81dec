"""mailctl.net against real servers on 127.0.0.1: the one TLS builder (system / ca_file /
fingerprint / none, for sockets and for requests, agreeing on the same profile values), the
session factory (proxy, NO_PROXY, timeout, User-Agent), Retry-After, and the proxy helpers."""

from __future__ import annotations

import base64
import os
import socket
import ssl
from pathlib import Path
import subprocess
import sys
import warnings

import pytest
import trustme

from httpfakes import ConnectProxy, FakeHTTPS, Reply
from smtpserver import silent_listener
from idp import ca_pem, trust_ca  # noqa: F401
from mailctl.errors import AuthError, ConfigError, TemporaryFailure
from mailctl.net import http as net_http
from mailctl.net.proxy import connect_via_proxy, needs_password, parse_proxy, requests_proxy_url
from mailctl.net.tls import (
    CA_FILE, FINGERPRINT, NONE, SYSTEM, fingerprint_of, requests_verify, socket_context, system_ca_bundle, tls_config,
)

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def no_environment_proxies(monkeypatch):
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def srv(trust_ca):
    """An HTTPS server whose certificate the test CA (ca_pem) issued."""
    with FakeHTTPS(trust_ca) as server:
        server.on("GET", r"/hello", Reply(200, "hello"))
        yield server


@pytest.fixture(scope="module")
def other_ca():
    return trustme.CA()


@pytest.fixture
def stranger(other_ca):
    """An HTTPS server with a certificate from a CA nobody trusts."""
    with FakeHTTPS(other_ca) as server:
        server.on("GET", r"/hello", Reply(200, "hello"))
        yield server


def handshake(values, port, host="127.0.0.1"):
    """Connect with the socket context the profile values give; (ok, peer DER or error)."""
    ctx, _mode = socket_context(values, "p")
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        with ctx.wrap_socket(sock, server_hostname=host) as tls:
            return True, tls.getpeercert(binary_form=True)
    except ssl.SSLError as exc:
        return False, exc
    finally:
        sock.close()


def http_get(values, url, **kw):
    session = net_http.new_session(values, "p", user_agent="mailctl-test/1", **kw)
    try:
        with warnings.catch_warnings():
            if session.verify is False:  # InsecureRequestWarning: not verifying is the point here
                warnings.simplefilter("ignore")
            return session.get(url)
    finally:
        session.close()


def fetch_ok(values, url) -> bool:
    import requests

    try:
        return http_get(values, url).status_code == 200
    except requests.exceptions.SSLError:
        return False


# --- modes --------------------------------------------------------------------------------
@pytest.mark.parametrize("values, mode, http_mode", [
    ({}, SYSTEM, SYSTEM),
    ({"tls_verify": True, "ca_file": "/x/ca.pem"}, CA_FILE, CA_FILE),
    ({"tls_verify": False}, NONE, NONE),
    ({"tls_verify": "false"}, NONE, NONE),
    ({"tls_verify": False, "ca_file": "/x/ca.pem"}, NONE, NONE),
    ({"tls_fingerprint": "AB:CD"}, FINGERPRINT, SYSTEM),  # requests cannot pin: the chain is verified
    ({"tls_fingerprint": "abcd", "ca_file": "/x/ca.pem"}, FINGERPRINT, CA_FILE),
    ({"tls_fingerprint": "abcd", "tls_verify": False}, FINGERPRINT, NONE),
])
def test_mode_from_profile_values(values, mode, http_mode):
    config = tls_config(values, "p")
    assert config.mode == mode and config.http_mode == http_mode


def test_sockets_get_tls_1_2_at_least(ca_pem):
    for values in ({}, {"ca_file": ca_pem}, {"tls_verify": False}, {"tls_fingerprint": "ab" * 32}):
        ctx, _ = socket_context(values)
        assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_system_mode_does_not_trust_a_private_ca(srv):
    ok, err = handshake({}, srv.port)
    assert not ok and isinstance(err, ssl.SSLCertVerificationError)
    assert not fetch_ok({}, srv.base_url + "/hello")


def test_system_mode_uses_the_system_store(srv, ca_pem, monkeypatch):
    # SSL_CERT_FILE is OpenSSL's system store: both consumers must read the same one
    monkeypatch.setenv("SSL_CERT_FILE", ca_pem)
    assert system_ca_bundle() == ca_pem
    assert handshake({}, srv.port)[0]
    assert requests_verify({}).verify == ca_pem
    assert fetch_ok({}, srv.base_url + "/hello")


def test_ca_file_mode_adds_the_ca_and_checks_the_host_name(srv, stranger, ca_pem):
    values = {"ca_file": ca_pem}
    assert handshake(values, srv.port)[0]
    assert not handshake(values, stranger.port)[0]
    ok, err = handshake(values, srv.port, host="wrong.example")
    assert not ok and "match" in str(err).lower()
    assert fetch_ok(values, srv.base_url + "/hello")
    assert not fetch_ok(values, stranger.base_url + "/hello")


def test_ca_file_is_an_extra_ca_next_to_the_system_store(srv, stranger, ca_pem, other_ca, tmp_path, monkeypatch):
    system = tmp_path / "system.pem"
    other_ca.cert_pem.write_to_path(str(system))
    monkeypatch.setenv("SSL_CERT_FILE", str(system))
    values = {"ca_file": ca_pem}
    assert handshake(values, srv.port)[0] and handshake(values, stranger.port)[0]
    assert fetch_ok(values, srv.base_url + "/hello") and fetch_ok(values, stranger.base_url + "/hello")
    verify = requests_verify(values, "p")
    try:
        bundle = open(verify.verify, "rb").read()
        assert other_ca.cert_pem.bytes() in bundle and trust_ca_pem(ca_pem) in bundle
    finally:
        verify.cleanup()
    assert not os.path.exists(verify.verify)


def trust_ca_pem(path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def test_none_mode_verifies_nothing(stranger):
    values = {"tls_verify": False}
    ctx, mode = socket_context(values)
    assert mode == NONE and ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    assert handshake(values, stranger.port)[0]
    assert requests_verify(values).verify is False
    assert fetch_ok(values, stranger.base_url + "/hello")


def test_fingerprint_mode_pins_the_certificate(stranger):
    ok, der = handshake({"tls_verify": False}, stranger.port)
    assert ok
    pin = fingerprint_of(der)
    colons = ":".join(pin[i:i + 2] for i in range(0, len(pin), 2)).upper()
    good = {"tls_fingerprint": colons}
    ctx, mode = socket_context(good)
    assert mode == FINGERPRINT and ctx.verify_mode == ssl.CERT_NONE
    ok, peer = handshake(good, stranger.port)  # the CA is unknown: the pin decides
    assert ok and tls_config(good).matches(peer)
    assert not tls_config({"tls_fingerprint": "AA" * 32}).matches(peer)
    assert not tls_config({}).matches(peer)


@pytest.mark.parametrize("kind", ["system", "ca_file", "none"])
@pytest.mark.parametrize("server", ["srv", "stranger"])
def test_socket_context_and_requests_verify_agree(kind, server, request, ca_pem):
    values = {"system": {}, "ca_file": {"ca_file": ca_pem}, "none": {"tls_verify": False}}[kind]
    target = request.getfixturevalue(server)
    assert tls_config(values).mode == tls_config(values).http_mode == kind
    assert handshake(values, target.port)[0] == fetch_ok(values, target.base_url + "/hello")


# --- ca_file errors: each consumer keeps its wording ------------------------------------
def test_socket_context_ca_file_errors(tmp_path):
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError) as err:
        socket_context({"ca_file": str(missing)}, "p")
    assert err.value.message == f"ca_file {missing}: no such file"
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as err:
        socket_context({"ca_file": str(junk)}, "p")
    assert err.value.message.startswith(f"ca_file {junk}: not a PEM CA bundle")


# --- the system trust store: only when verification needs it, loaded once (issue #14) ------
@pytest.fixture
def store_loads(monkeypatch):
    """Fresh context cache; counts the contexts built from the system store."""
    from mailctl.net import tls as net_tls

    monkeypatch.setattr(net_tls, "_contexts", {})
    calls = []
    real = net_tls._load_system_store

    def counting(*a, **kw):
        calls.append(a)
        return real(*a, **kw)

    monkeypatch.setattr(net_tls, "_load_system_store", counting)
    return calls


@pytest.mark.parametrize("values", [{"tls_fingerprint": "ab" * 32}, {"tls_verify": False},
                                    {"tls_fingerprint": "ab" * 32, "tls_verify": False}])
def test_a_pin_or_no_verification_loads_no_system_ca(values, store_loads, monkeypatch):
    ctx, mode = socket_context(values, "p")
    assert mode in (FINGERPRINT, NONE)
    assert store_loads == [] and ctx.cert_store_stats()["x509_ca"] == 0 and ctx.get_ca_certs() == []
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_a_pin_with_a_ca_file_loads_only_that_file_and_still_checks_it(ca_pem, tmp_path, store_loads):
    ctx, mode = socket_context({"tls_fingerprint": "ab" * 32, "ca_file": ca_pem}, "p")
    assert mode == FINGERPRINT and store_loads == [] and ctx.cert_store_stats()["x509_ca"] == 1
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError) as err:
        socket_context({"tls_fingerprint": "ab" * 32, "ca_file": str(missing)}, "p")
    assert err.value.message == f"ca_file {missing}: no such file"


def test_the_system_store_is_loaded_once_per_process(ca_pem, store_loads):
    first, mode = socket_context({}, "a")
    again, _ = socket_context({"host": "other.example"}, "b")  # another profile, same inputs
    assert mode == SYSTEM and first is again and len(store_loads) == 1
    with_ca, _ = socket_context({"ca_file": ca_pem}, "a")
    assert socket_context({"ca_file": ca_pem}, "c")[0] is with_ca and with_ca is not first
    assert len(store_loads) == 2
    assert with_ca.verify_mode == ssl.CERT_REQUIRED and with_ca.check_hostname
    assert with_ca.cert_store_stats()["x509_ca"] == first.cert_store_stats()["x509_ca"] + 1


def test_the_cache_follows_its_inputs(ca_pem, other_ca, tmp_path, store_loads, monkeypatch):
    extra = tmp_path / "extra.pem"
    other_ca.cert_pem.write_to_path(str(extra))
    one, _ = socket_context({"ca_file": str(extra)})
    # the file changed: read again
    extra.write_bytes(other_ca.cert_pem.bytes() + b"\n" + open(ca_pem, "rb").read())
    two, _ = socket_context({"ca_file": str(extra)})
    assert two is not one and two.cert_store_stats()["x509_ca"] == one.cert_store_stats()["x509_ca"] + 1
    # another system store (OpenSSL's SSL_CERT_FILE): built again, and it is what is trusted
    monkeypatch.setenv("SSL_CERT_FILE", ca_pem)
    three, _ = socket_context({})
    assert three is not socket_context({"ca_file": str(extra)})[0]
    monkeypatch.delenv("SSL_CERT_FILE")
    assert socket_context({})[0] is not three


def test_system_mode_with_a_cached_context_still_verifies(srv, ca_pem, monkeypatch, store_loads):
    assert not handshake({}, srv.port)[0]  # the real system store: the test CA is unknown
    assert not handshake({}, srv.port)[0]  # the same context again
    monkeypatch.setenv("SSL_CERT_FILE", ca_pem)
    assert handshake({}, srv.port)[0] and handshake({}, srv.port)[0]
    assert len(store_loads) == 2


def test_requests_verify_ca_file_errors(tmp_path):
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError) as err:
        requests_verify({"ca_file": str(missing)}, "p")
    assert err.value.message.startswith(f"profile 'p': cannot read ca_file {missing}: ")
    assert "mailctl profile edit p --ca-file PATH" in err.value.hint
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as err:
        requests_verify({"ca_file": str(junk)}, "p")
    assert err.value.message == f"profile 'p': ca_file {junk} holds no PEM certificate"
    lenient = requests_verify({"ca_file": str(junk)}, "p", check_pem=False)  # the identity providers' session
    lenient.cleanup()


def test_session_close_removes_its_bundle_but_not_a_shared_one(ca_pem):
    session = net_http.new_session({"ca_file": ca_pem}, "p", user_agent="x")
    bundle = session.verify
    assert os.path.isfile(bundle) and os.path.basename(bundle).startswith("mailctl-ca-")
    session.close()
    assert not os.path.exists(bundle)
    first = net_http.new_session({"ca_file": ca_pem}, "p", user_agent="x", shared_ca_bundle=True)
    second = net_http.new_session({"ca_file": ca_pem}, "p", user_agent="x", shared_ca_bundle=True)
    assert first.verify == second.verify
    first.close()
    second.close()
    assert os.path.isfile(first.verify)  # removed at exit, not by a session nobody may close


# --- the session factory -------------------------------------------------------------------
def test_session_ignores_requests_ca_bundle_and_sends_the_user_agent(srv, ca_pem, monkeypatch):
    import certifi

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("CURL_CA_BUNDLE", certifi.where())
    response = http_get({"ca_file": ca_pem}, srv.base_url + "/hello")
    assert response.status_code == 200 and response.text == "hello"
    assert srv.requests[-1].headers["user-agent"] == "mailctl-test/1"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca_pem)  # nor does it let the environment widen trust
    assert not fetch_ok({}, srv.base_url + "/hello")


def test_profile_proxy_carries_every_request(srv, ca_pem):
    with ConnectProxy() as proxy:
        response = http_get({"ca_file": ca_pem, "proxy": proxy.url}, srv.base_url + "/hello")
    assert response.status_code == 200
    assert proxy.targets == [f"127.0.0.1:{srv.port}"]


def test_environment_proxy_and_no_proxy(srv, ca_pem, monkeypatch):
    values = {"ca_file": ca_pem}
    url = srv.base_url + "/hello"
    with ConnectProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        assert http_get(values, url).status_code == 200
        assert proxy.targets == [f"127.0.0.1:{srv.port}"]
        assert net_http.proxies_for("", url)["https"] == proxy.url
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        session = net_http.new_session(values, "p", user_agent="x")
        try:
            assert session.get(url).status_code == 200
            assert session.proxies_for(url) == {} and session.proxies_for(None) == {}
            assert session.proxies["https"] == proxy.url  # still there for other hosts
        finally:
            session.close()
        assert net_http.proxies_for("", url) == {}
        assert proxy.targets == [f"127.0.0.1:{srv.port}"]  # the second request went direct


def test_profile_proxy_wins_over_the_environment(srv, ca_pem, monkeypatch):
    with ConnectProxy() as env_proxy, ConnectProxy() as profile_proxy:
        monkeypatch.setenv("HTTPS_PROXY", env_proxy.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # NO_PROXY belongs to the environment's proxies
        assert http_get({"ca_file": ca_pem, "proxy": profile_proxy.url}, srv.base_url + "/hello").status_code == 200
    assert env_proxy.targets == [] and profile_proxy.targets == [f"127.0.0.1:{srv.port}"]


def test_the_profile_timeout_applies_to_every_request():
    import requests

    with silent_listener() as port:
        session = net_http.new_session({"timeout": 0.5}, "p", user_agent="x")
        try:
            assert session.default_timeout == 0.5
            with pytest.raises(requests.exceptions.ReadTimeout):
                session.get(f"http://127.0.0.1:{port}/")
            with pytest.raises(TemporaryFailure) as err:
                net_http.request(session, "GET", f"http://127.0.0.1:{port}/")
            assert "did not answer within 0.5 s" in err.value.message
        finally:
            session.close()
    assert net_http.new_session({}, "p", user_agent="x").default_timeout == net_http.DEFAULT_TIMEOUT


# --- Retry-After -------------------------------------------------------------------------------
def test_parse_retry_after():
    assert net_http.parse_retry_after("7") == 7.0
    assert net_http.parse_retry_after(" 0 ") == 0.0
    assert net_http.parse_retry_after("-3") == 0.0
    assert net_http.parse_retry_after(None) is None and net_http.parse_retry_after("") is None
    assert net_http.parse_retry_after("soon") is None
    assert net_http.parse_retry_after("Sat, 21 Nov 2026 10:00:30 GMT", now=1795255200.0) == pytest.approx(30.0)
    assert net_http.parse_retry_after("Sat, 21 Nov 2026 10:00:30 GMT", now=1795255300.0) == 0.0


def test_request_waits_out_retry_after_within_bounds(srv, ca_pem):
    srv.on("GET", r"/busy", Reply(429, "slow down", {"Retry-After": "2"}), Reply(503, "", {"Retry-After": "1"}),
           Reply(200, "done"))
    srv.on("GET", r"/later", Reply(503, "", {"Retry-After": "3600"}))
    slept: list[float] = []
    retried: list[tuple[int, float, int]] = []
    session = net_http.new_session({"ca_file": ca_pem}, "p", user_agent="x")
    try:
        policy = net_http.RetryPolicy(sleep=slept.append)
        response = net_http.request(session, "GET", srv.base_url + "/busy", retry=policy,
                                    on_retry=lambda n, d, r: retried.append((n, d, r.status_code)))
        assert response.status_code == 200 and slept == [2.0, 1.0]
        assert retried == [(1, 2.0, 429), (2, 1.0, 503)]
        slept.clear()
        response = net_http.request(session, "GET", srv.base_url + "/later", retry=policy)
        assert response.status_code == 503 and slept == []  # too long to wait: the caller defers
    finally:
        session.close()


# --- proxies ---------------------------------------------------------------------------------
def test_requests_proxy_url():
    assert requests_proxy_url("") == ""
    assert requests_proxy_url("http://proxy.example:3128") == "http://proxy.example:3128"
    assert requests_proxy_url("http://bob@proxy.example:3128", "p@ss:w/rd") == "http://bob:p%40ss%3Aw%2Frd@proxy.example:3128"
    assert requests_proxy_url("socks5://[::1]:1080") == "socks5h://[::1]:1080"
    assert requests_proxy_url("socks5://bob@[::1]:1080", "pw") == "socks5h://bob:pw@[::1]:1080"
    assert needs_password("http://bob@proxy.example") and not needs_password("http://proxy.example")
    assert net_http.redact_url("http://bob:secret@proxy.example:3128/x?y") == "http://proxy.example:3128/x"


def test_socket_proxy_refusal_carries_failure_id_and_stage(srv):
    token = base64.b64encode(b"bob:right").decode()
    with ConnectProxy(require_auth=f"Basic {token}") as proxy:
        spec = parse_proxy(proxy.url.replace("http://", "http://bob@"), "wrong")
        with pytest.raises(AuthError) as err:
            connect_via_proxy(spec, "127.0.0.1", srv.port, 5)
        assert err.value.failure_id == "proxy-auth-failed" and err.value.stage == "connect"
        assert "wrong" not in err.value.message
        good = parse_proxy(proxy.url.replace("http://", "http://bob@"), "right")
        connect_via_proxy(good, "127.0.0.1", srv.port, 5).close()
    with pytest.raises(ConfigError):
        parse_proxy("http://bob:pw@proxy.example:3128")


# --- the HTTP transports on one session/token lifecycle -------------------------------------
def test_ews_transport_shares_the_session_and_token_lifecycle(isolated_env, srv, ca_pem):
    """EWS like Graph and the Gmail API: open() makes the session (net.http) and the token once,
    every message reuses them, close() drops both; a failed __enter__ closes."""
    import keyring

    from httpfakes import create_item_ok, ews_fake
    from idp import resolved, write_profiles
    from mailctl.message import build_message, envelope, message_bytes
    from mailctl.secrets import default_resolver
    from mailctl.transports.ews import EwsTransport
    from mailctl.transports.http import SessionTransport

    token = "ews-static-token-SECRET"
    ews_fake(srv, bearer=token, create_item=create_item_ok())
    keyring.set_password("mailctl", "o/access_token", token)
    write_profiles(isolated_env, {"o": {"type": "ews", "auth": "oauth", "username": "ops@corp.example",
                                        "from_address": "ops@corp.example", "ews_url": srv.base_url + "/EWS/Exchange.asmx",
                                        "ca_file": ca_pem, "timeout": 7}})
    profile = resolved(isolated_env, "o")
    msg = build_message(profile, {}, to=["alice@example.net"], subject="s", body="b\n")
    sender, rcpts = envelope(msg)
    stages: list[str] = []
    transport = EwsTransport(profile, default_resolver(), trace=lambda stage, detail, secs: stages.append(stage))
    assert isinstance(transport, SessionTransport)
    with transport as t:
        session = t.session
        bundle = session.verify
        assert session.default_timeout == 7.0 and os.path.isfile(bundle)
        t.send(message_bytes(msg), sender, rcpts)
        t.send(message_bytes(msg), sender, rcpts)
        assert t.session is session
    assert stages.count("token") == 1 and stages.count("account") == 1 and stages.count("CreateItem") == 2
    assert transport.session is None and transport._token is None and transport.account is None
    assert not os.path.exists(bundle)

    write_profiles(isolated_env, {"n": {"type": "ews", "auth": "oauth", "username": "ops@corp.example",
                                        "ca_file": ca_pem}})  # no ews_url, no autodiscover
    keyring.set_password("mailctl", "n/access_token", token)
    failing = EwsTransport(resolved(isolated_env, "n"), default_resolver())
    with pytest.raises(ConfigError):
        with failing:
            pass
    assert failing.session is None and failing._token is None


def test_net_imports_no_heavy_library():
    code = ("import sys, mailctl.net.http, mailctl.net.tls, mailctl.net.proxy;"
            "bad=[m for m in ('requests','urllib3','socks','mailctl.profiles','mailctl.transports') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- a hashed CA directory is read lazily: no 30 ms bundle parse per process (issue #14) ------
def _hashed_dir(tmp_path, pem_path) -> Path:
    """A directory like Debian's /etc/ssl/certs: the CA under its subject-hash name."""
    import subprocess

    name = subprocess.run(["openssl", "x509", "-noout", "-subject_hash", "-in", str(pem_path)],
                          capture_output=True, text=True, check=True).stdout.strip()
    d = tmp_path / "certs"
    d.mkdir()
    (d / f"{name}.0").write_bytes(open(pem_path, "rb").read())
    return d


def test_a_hashed_system_directory_is_used_lazily_and_still_verifies(srv, stranger, ca_pem, tmp_path, monkeypatch, store_loads):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("SSL_CERT_DIR", str(_hashed_dir(tmp_path, ca_pem)))
    ctx, mode = socket_context({}, "p")
    assert mode == SYSTEM and ctx.cert_store_stats()["x509_ca"] == 0  # nothing parsed up front
    assert handshake({}, srv.port)[0]  # the issuer is looked up by its hash during the handshake
    assert not handshake({}, stranger.port)[0]  # and only what the directory holds is trusted
    ok, err = handshake({}, srv.port, host="wrong.example")
    assert not ok and "match" in str(err).lower()


def test_without_a_hashed_directory_the_bundle_is_loaded(tmp_path, monkeypatch, store_loads):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README").write_text("no certificates here")
    monkeypatch.setenv("SSL_CERT_DIR", str(empty))
    ctx, _ = socket_context({}, "p")
    full = ssl.create_default_context()
    assert ctx.cert_store_stats()["x509_ca"] == full.cert_store_stats()["x509_ca"]
