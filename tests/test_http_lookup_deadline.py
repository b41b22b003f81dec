"""Host-name lookups of HTTP requests inside the connect timeout (mailctl.net.http's adapter
over mailctl.net.lookup): a resolver that never answers must not hold a Graph, EWS or OAuth
request (or the name of its HTTP proxy) past the profile's `timeout`; the lookup and the
connect share that one deadline (for SMTP's connect() too); IP literals cost no thread; real
requests still go through.

As in tests/test_lookup_deadline.py only libc's call is faked (a silent DNS server cannot be
put in front of glibc without editing /etc/resolv.conf): socket.getaddrinfo answers this
file's `.test` names and passes every other name to the real one. The HTTPS servers (Graph,
EWS, the identity provider), the CONNECT proxy and the SMTP transport are real, on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager

import keyring
import pytest

from httpfakes import ConnectProxy, FakeHTTPS, decoded_mime, ews_fake, graph_fake
from idp import CLIENT_ID, CLIENT_SECRET, TENANT, ca_pem, idp, ms_profile, resolved, trust_ca, write_profiles  # noqa: F401
from mailctl.errors import ExitCode, UnavailableError
from mailctl.message import build_message, envelope, message_bytes
from mailctl.net.http import connect_within, new_session
from mailctl.profiles.model import ResolvedProfile
from mailctl.secrets import default_resolver
from mailctl.transports import open_transport
from mailctl.transports.smtp import Server, SmtpTransport

from fake_getaddrinfo import SLOW, lookup_threads, resolver  # noqa: F401
from smtpserver import Socks5Server, running

pytestmark = pytest.mark.timeout(90)

TIMEOUT = 1.0
BOUND = 3.0  # generous: CLI start-up and teardown on a shared, loaded machine
TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.lookup-token-SECRET-789"
MAILBOX = "ops@example.com"
STUCK_GRAPH = "graph.stuck.test"
STUCK_PROXY = "proxy.stuck.test"
GRAPH_ALIAS = "graph.alias.test"  # answered (by the fake, in its thread) with 127.0.0.1
PROXY_ALIAS = "proxy.alias.test"


@contextmanager
def full_backlog():
    """A loopback port whose listen queue is full (one connection waiting, never accepted):
    the kernel drops further SYNs, so a connect to it hangs until its timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=2)
    try:
        probe = socket.socket()
        probe.settimeout(0.3)
        with pytest.raises(OSError):  # the premise: a connect there does hang
            probe.connect(("127.0.0.1", port))
        probe.close()
        yield port
    finally:
        filler.close()
        listener.close()


@pytest.fixture
def graph(trust_ca):
    """The Graph fake with a certificate for GRAPH_ALIAS (and 127.0.0.1) on 127.0.0.1."""
    with FakeHTTPS(trust_ca, hostname=GRAPH_ALIAS) as srv:
        yield graph_fake(srv)


def graph_profile(home, ca_pem, endpoint: str, **values):
    keyring.set_password("mailctl", "g/access_token", TOKEN)
    prof = {"type": "graph", "auth": "oauth", "username": MAILBOX, "from_address": MAILBOX, "tenant_id": TENANT,
            "client_id": CLIENT_ID, "graph_endpoint": endpoint, "ca_file": ca_pem, "timeout": TIMEOUT}
    prof.update(values)
    write_profiles(home, {"g": prof}, default="g")
    return resolved(home, "g")


def send_one(profile):
    msg = build_message(profile, {}, to=["alice@example.net"], subject="Lookup deadline", body="hello\n")
    sender, recipients = envelope(msg)
    with open_transport(profile, default_resolver()) as transport:
        return transport.send(message_bytes(msg), sender, recipients)


def failing(fn, *args, **kwargs):
    """(the UnavailableError fn raised, seconds it took)."""
    start = time.monotonic()
    with pytest.raises(UnavailableError) as info:
        fn(*args, **kwargs)
    return info.value, time.monotonic() - start


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


# --- Graph: the server's name ---------------------------------------------------------------------
def test_graph_request_to_a_stuck_name_fails_at_the_deadline(isolated_env, resolver, graph, ca_pem):
    profile = graph_profile(isolated_env, ca_pem, f"https://{STUCK_GRAPH}:{graph.port}")
    err, took = failing(send_one, profile)
    assert TIMEOUT * 0.9 <= took < BOUND, took
    assert err.exit_code == ExitCode.UNAVAILABLE
    assert err.message.startswith(f"cannot connect to {STUCK_GRAPH}:{graph.port}: cannot resolve {STUCK_GRAPH} within 1s: "
                                  "no answer from the resolver (waited "), err.message
    assert f"getent hosts {STUCK_GRAPH}" in err.hint and "/etc/resolv.conf" in err.hint
    assert "\n" not in err.message and "Connection object" not in err.message
    assert graph.requests == []
    assert [t.startswith("mailctl-lookup ") for t in resolver.lookups_of(STUCK_GRAPH)] == [True]


def test_graph_lookup_timeout_exits_like_a_connect_timeout(isolated_env, resolver, graph, ca_pem):
    """Same class and exit code as a connect that times out (a full listen queue)."""
    with full_backlog() as port:
        profile = graph_profile(isolated_env, ca_pem, f"https://127.0.0.1:{port}")
        connect_err, _ = failing(send_one, profile)
    profile = graph_profile(isolated_env, ca_pem, f"https://{STUCK_GRAPH}:{graph.port}")
    lookup_err, _ = failing(send_one, profile)
    assert "timed out connecting to 127.0.0.1" in connect_err.message, connect_err.message
    assert type(lookup_err) is type(connect_err) and lookup_err.exit_code == connect_err.exit_code == 69


def test_cli_send_and_test_connect_end_at_the_deadline(cli, isolated_env, resolver, graph, ca_pem):
    graph_profile(isolated_env, ca_pem, f"https://{STUCK_GRAPH}:{graph.port}")
    start = time.monotonic()
    res = cli("test", "connect", "--json")
    took = time.monotonic() - start
    assert res.exit_code == ExitCode.UNAVAILABLE, res.output
    assert took < BOUND, took
    data = json.loads(res.stdout)
    assert data["failed_stage"] == "connect", data
    assert f"cannot resolve {STUCK_GRAPH} within 1s: no answer from the resolver" in data["error"], data
    [stage] = [s for s in data["stages"] if s["stage"] == "connect"]
    assert "DNS lookup" in stage["explanation"]["cause"] and "port 25" not in stage["explanation"]["cause"], stage
    assert f"getent hosts {STUCK_GRAPH}" in stage["explanation"]["fix"]
    start = time.monotonic()
    sent = cli("send", "--to", "bob@example.org", "--subject", "s", "--body", "b")
    took = time.monotonic() - start
    assert sent.exit_code == ExitCode.TEMPFAIL, sent.output  # deferred: the outbox tries again later
    assert took < BOUND, took
    assert f"cannot resolve {STUCK_GRAPH} within 1s: no answer from the resolver" in error_line(sent.stderr)
    assert "Traceback" not in res.output + sent.output and TOKEN not in res.output + sent.output
    # the second command joined the first one's lookup, still pending: one thread for both
    assert len(resolver.lookups_of(STUCK_GRAPH)) == 1, resolver.calls


def test_a_slow_lookup_leaves_the_connect_only_what_is_left(isolated_env, resolver, ca_pem):
    """The lookup (SLOW s) and the connect to a port that never answers share one timeout."""
    with full_backlog() as port:
        profile = graph_profile(isolated_env, ca_pem, f"https://graph.slow.test:{port}")
        err, took = failing(send_one, profile)
    assert err.exit_code == 69 and f"timed out connecting to graph.slow.test:{port}" in err.message, err.message
    assert TIMEOUT * 0.9 <= took < TIMEOUT + SLOW * 0.6, took  # one timeout, not lookup + timeout


def test_a_normal_name_still_sends_through_the_session(isolated_env, resolver, graph, ca_pem):
    profile = graph_profile(isolated_env, ca_pem, f"https://{GRAPH_ALIAS}:{graph.port}", timeout=5)
    assert send_one(profile).reply.startswith("202")
    [req] = graph.find("POST", r"/v1.0/me/sendMail")
    assert b"Subject: Lookup deadline" in decoded_mime(req)
    assert req.headers["host"] == f"{GRAPH_ALIAS}:{graph.port}"
    assert resolver.lookups_of(GRAPH_ALIAS)[0].startswith("mailctl-lookup ")


def test_ip_literals_start_no_lookup_thread(isolated_env, resolver, trust_ca, ca_pem):
    before = {t.ident for t in threading.enumerate()}
    with FakeHTTPS(trust_ca) as srv:  # a certificate for 127.0.0.1
        graph_fake(srv)
        profile = graph_profile(isolated_env, ca_pem, srv.base_url, timeout=5)
        assert send_one(profile).reply.startswith("202")
    assert resolver.lookups_of("127.0.0.1") and set(resolver.lookups_of("127.0.0.1")) == {threading.current_thread().name}
    assert not [t for t in threading.enumerate() if t.name.startswith("mailctl-lookup ") and t.ident not in before]
    with pytest.raises(ConnectionRefusedError):  # the helper itself: ::1 too, answered in this thread
        connect_within("::1" if socket.has_ipv6 else "127.0.0.1", _closed_port(), TIMEOUT)
    assert not lookup_threads()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --- an HTTP proxy's name ---------------------------------------------------------------------------
def test_proxy_named_by_a_stuck_name_fails_at_the_deadline(isolated_env, resolver, graph, ca_pem):
    with ConnectProxy() as proxy:
        profile = graph_profile(isolated_env, ca_pem, f"https://{GRAPH_ALIAS}:{graph.port}",
                                proxy=f"http://{STUCK_PROXY}:{proxy.port}")
        err, took = failing(send_one, profile)
        assert proxy.targets == []  # never reached
    assert TIMEOUT * 0.9 <= took < BOUND, took
    assert err.exit_code == ExitCode.UNAVAILABLE
    assert f"cannot resolve the proxy's host {STUCK_PROXY} within 1s: no answer from the resolver (waited " in err.message, err.message
    assert "LookupDeadlineError" not in err.message and f"getent hosts {STUCK_PROXY}" in err.hint
    assert resolver.lookups_of(GRAPH_ALIAS) == []  # the proxy resolves the server's name
    assert [t.startswith("mailctl-lookup ") for t in resolver.lookups_of(STUCK_PROXY)] == [True]


def test_proxy_named_by_a_normal_name_still_works(isolated_env, resolver, graph, ca_pem):
    with ConnectProxy() as proxy:
        profile = graph_profile(isolated_env, ca_pem, f"https://{GRAPH_ALIAS}:{graph.port}", timeout=5,
                                proxy=f"http://{PROXY_ALIAS}:{proxy.port}")
        assert send_one(profile).reply.startswith("202")
        assert proxy.targets == [f"{GRAPH_ALIAS}:{graph.port}"]
    assert resolver.lookups_of(PROXY_ALIAS)[0].startswith("mailctl-lookup ")


def test_socks_proxy_named_by_a_stuck_name_fails_at_the_deadline(isolated_env, resolver, graph, ca_pem):
    """PySocks would look the proxy's name up itself (and the C library again in connect())."""
    proxy = Socks5Server()
    with running(proxy) as pport:
        profile = graph_profile(isolated_env, ca_pem, f"https://{GRAPH_ALIAS}:{graph.port}",
                                proxy=f"socks5://{STUCK_PROXY}:{pport}")
        err, took = failing(send_one, profile)
    assert TIMEOUT * 0.9 <= took < BOUND, took
    assert err.exit_code == ExitCode.UNAVAILABLE and proxy.targets == []
    assert f"cannot resolve the proxy's host {STUCK_PROXY} within 1s: no answer from the resolver (waited " in err.message, err.message
    assert f"getent hosts {STUCK_PROXY}" in err.hint


def test_socks_proxy_named_by_a_normal_name_still_works(isolated_env, resolver, graph, ca_pem):
    proxy = Socks5Server()
    with running(proxy) as pport:
        profile = graph_profile(isolated_env, ca_pem, f"https://{GRAPH_ALIAS}:{graph.port}", timeout=5,
                                proxy=f"socks5://{PROXY_ALIAS}:{pport}")
        assert send_one(profile).reply.startswith("202")
    assert proxy.targets == [(GRAPH_ALIAS, graph.port)]  # socks5:// is sent as socks5h://: the proxy resolves
    assert [t.startswith("mailctl-lookup ") for t in resolver.lookups_of(PROXY_ALIAS)] == [True]


def test_plain_http_through_a_stuck_proxy_name(resolver):
    """http:// URLs go to the proxy as forwarded requests: the same lookup, the same error."""
    from mailctl.net.http import request

    session = new_session({"timeout": TIMEOUT, "proxy": f"http://{STUCK_PROXY}:3128"}, "p", user_agent="t")
    try:
        err, took = failing(request, session, "GET", "http://autoconfig.example.org/mail/config-v1.1.xml")
    finally:
        session.close()
    assert took < BOUND and err.exit_code == 69
    assert f"cannot resolve the proxy's host {STUCK_PROXY} within 1s" in err.message, err.message


def test_the_session_timeout_tuple_bounds_the_lookup(resolver):
    """requests' (connect, read) timeout: the lookup gets the connect part."""
    from mailctl.net.http import request

    session = new_session({"timeout": 30}, "p", user_agent="t")
    try:
        err, took = failing(request, session, "GET", f"https://{STUCK_GRAPH}/", timeout=(0.5, 30))
    finally:
        session.close()
    assert 0.45 <= took < BOUND - 1, took
    assert f"cannot resolve {STUCK_GRAPH} within 0.5s" in err.message, err.message


def test_other_requests_sessions_are_left_alone(resolver):
    """Only mailctl's sessions use the lookup thread: urllib3 is not patched for everyone."""
    import requests

    with requests.Session() as plain:
        with pytest.raises(requests.exceptions.ConnectionError):
            plain.get(f"http://nosuch.alias.test:{_closed_port()}/", timeout=2)
    assert resolver.lookups_of("nosuch.alias.test") == [threading.current_thread().name]


# --- EWS and the identity provider --------------------------------------------------------------------
def test_ews_request_to_a_stuck_name_fails_at_the_deadline(isolated_env, resolver, trust_ca, ca_pem):
    keyring.set_password("mailctl", "e/password", "Winter2026!-secret")
    with FakeHTTPS(trust_ca) as srv:
        ews_fake(srv)
        write_profiles(isolated_env, {"e": {"type": "ews", "auth": "password", "username": "ops@corp.example",
                                            "from_address": "ops@corp.example", "timeout": TIMEOUT, "ca_file": ca_pem,
                                            "ews_url": f"https://ews.stuck.test:{srv.port}/EWS/Exchange.asmx"}})
        err, took = failing(send_one, resolved(isolated_env, "e"))
        assert srv.requests == []
    assert took < BOUND, took
    assert err.exit_code == ExitCode.UNAVAILABLE
    assert "cannot resolve ews.stuck.test within 1s: no answer from the resolver" in err.message, err.message
    assert resolver.lookups_of("ews.stuck.test")[0].startswith("mailctl-lookup ")


def test_token_endpoint_on_a_stuck_name_fails_at_the_deadline(cli, isolated_env, resolver, idp, ca_pem):
    keyring.set_password("mailctl", "cc/client_secret", CLIENT_SECRET)
    write_profiles(isolated_env, {"cc": ms_profile(idp, ca_pem, auth="client-credentials", timeout=TIMEOUT,
                                                   authority=f"https://login.stuck.test:{idp.port}/{TENANT}")})
    start = time.monotonic()
    res = cli("auth", "token", "cc")
    took = time.monotonic() - start
    assert res.exit_code == ExitCode.UNAVAILABLE, res.output
    assert took < BOUND, took
    assert "login.stuck.test" in error_line(res.stderr)
    assert "cannot resolve login.stuck.test within 1s: no answer from the resolver" in error_line(res.stderr), res.stderr
    assert "getent hosts login.stuck.test" in res.stderr  # the DNS hint, not the generic one
    assert "Traceback" not in res.output and CLIENT_SECRET not in res.output
    assert idp.requests == []
    assert resolver.lookups_of("login.stuck.test")[0].startswith("mailctl-lookup ")


# --- SMTP: connect() resolving for itself -----------------------------------------------------------
def test_smtp_connect_shares_one_deadline_with_its_lookup(resolver):
    with full_backlog() as port:
        prof = ResolvedProfile("s", {"type": "smtp", "host": "mail.slow.test", "port": port, "security": "none",
                                     "auth": "none", "timeout": TIMEOUT, "from_address": "app@example.com"}, {}, ["s"])
        transport = SmtpTransport(prof, None)
        err, took = failing(transport.connect, Server("mail.slow.test", port))
    assert err.stage == "connect" and err.exit_code == 69
    assert f"cannot connect to mail.slow.test:{port}: timed out after 1s" in err.message, err.message
    assert TIMEOUT * 0.9 <= took < TIMEOUT + SLOW * 0.6, took  # one timeout, not lookup + timeout
    assert resolver.lookups_of("mail.slow.test")[0].startswith("mailctl-lookup ")
