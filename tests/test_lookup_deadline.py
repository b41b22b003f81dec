"""Host-name lookups inside the stage deadline (mailctl.net.lookup): a resolver that never
answers must not stretch `mailctl test connect` past the profile's `timeout`, neither for the
SMTP server's name nor for a proxy's name (or, with socks5://, the server's name looked up
here), and it must not pile up lookup threads; IP literals and /etc/hosts names cost no
thread, and real names still work end to end.

A silent DNS server cannot be put in front of glibc without editing /etc/resolv.conf, so
only the libc call is faked: socket.getaddrinfo answers the names of this file's own `.test`
zone (blocking on an Event for the stuck ones) and passes every other name to the real one.
The SMTP servers and proxies are real (aiosmtpd, the loopback SOCKS5 and CONNECT proxies)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from mailctl.errors import ExitCode, UnavailableError
from mailctl.net import lookup
from mailctl.net.proxy import connect_via_proxy, parse_proxy
from mailctl.profiles.model import ResolvedProfile
from mailctl.transports.smtp import SmtpTransport

from fake_getaddrinfo import REAL_GETADDRINFO, UNKNOWN, lookup_threads, resolver  # noqa: F401
from smtpserver import HttpConnectProxy, Socks5Server, running, smtp_server, write_profiles

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 1.0
BOUND = 3.0  # generous: CLI start-up and teardown on a shared, loaded machine
STUCK = "mail.stuck.test"
STUCK_PROXY = "proxy.stuck.test"
ALIAS = "mail.alias.test"  # answered (by the fake, in its thread) with 127.0.0.1


def timed(fn, *args, **kwargs):
    start = time.monotonic()
    out = fn(*args, **kwargs)
    return out, time.monotonic() - start


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def smtp_profile(host: str, port: int = 25, timeout: float = TIMEOUT, **extra) -> dict:
    prof = {"type": "smtp", "host": host, "port": port, "security": "none", "auth": "none", "timeout": timeout,
            "from_address": "app@example.com"}
    prof.update(extra)
    return prof


# --- the SMTP server's name ---------------------------------------------------------------------
def test_test_connect_to_a_stuck_name_ends_at_the_deadline(cli, isolated_env, resolver):
    write_profiles(isolated_env, {"p": smtp_profile(STUCK)})
    res, took = timed(cli, "test", "connect")
    res_json, took_json = timed(cli, "test", "connect", "--json")
    assert res.exit_code == ExitCode.UNAVAILABLE, res.output
    assert took < BOUND and took_json < BOUND, (took, took_json)
    assert took >= TIMEOUT * 0.9, took  # it did wait for the resolver, as long as the timeout allows
    line = error_line(res.stderr)
    assert f"cannot resolve {STUCK} within 1s: no answer from the resolver" in line, line
    assert "Traceback" not in res.output
    data = json.loads(res_json.stdout)
    assert res_json.exit_code == 69 and data["failed_stage"] == "resolve", data
    # the second run joined the first run's lookup, still pending: one thread for both
    assert len(resolver.lookups_of(STUCK)) == 1, resolver.calls


def test_transport_to_a_stuck_name_raises_within_the_deadline(resolver):
    prof = ResolvedProfile("t", smtp_profile(STUCK), {}, ["t"])
    transport = SmtpTransport(prof, None)
    start = time.monotonic()
    with pytest.raises(UnavailableError) as info:
        transport.open()
    took = time.monotonic() - start
    assert took < BOUND, took
    err = info.value
    assert err.stage == "resolve" and err.server == f"{STUCK}:25" and err.exit_code == ExitCode.UNAVAILABLE
    assert f"cannot resolve {STUCK} within 1s: no answer from the resolver (waited " in err.message, err.message
    # the stage itself keeps the lookup's timeout as the cause (open() hides it behind its summary)
    with pytest.raises(UnavailableError) as again:
        transport.resolve(transport.servers[0])
    assert isinstance(again.value.__cause__, lookup.LookupTimeout)
    assert err.explanation.id == "timeout" and "DNS lookup" in err.explanation.cause
    assert f"getent hosts {STUCK}" in err.hint
    assert resolver.lookups_of(STUCK) and resolver.lookups_of(STUCK)[0].startswith("mailctl-lookup ")


def test_stuck_primary_fails_over_to_the_alternate_within_the_deadline(cli, isolated_env, resolver):
    """A lookup timeout is an unreachable server (69), so the alternate is tried, as after a
    connect timeout."""
    with smtp_server(auth=False) as srv:
        write_profiles(isolated_env, {"p": smtp_profile(STUCK, srv.port, alternate_host="127.0.0.1")})
        res, took = timed(cli, "test", "connect")
    assert res.exit_code == 0, res.output
    assert took < BOUND, took
    assert f"cannot resolve {STUCK} within 1s" in res.output


def test_send_to_a_stuck_name_is_deferred_within_the_deadline(cli, isolated_env, resolver):
    write_profiles(isolated_env, {"p": smtp_profile(STUCK)})
    res, took = timed(cli, "send", "--to", "user@example.org", "--subject", "s", "--body", "b")
    assert res.exit_code == ExitCode.TEMPFAIL, res.output
    assert took < BOUND, took
    assert f"cannot resolve {STUCK} within 1s" in res.stderr


def test_unknown_name_keeps_its_error_and_exit_code(cli, isolated_env, resolver):
    write_profiles(isolated_env, {"p": smtp_profile(UNKNOWN)})
    res = cli("test", "connect")
    assert res.exit_code == ExitCode.UNAVAILABLE, res.output
    assert f"Error: cannot resolve {UNKNOWN}: Name or service not known" in res.stderr, res.stderr
    assert resolver.lookups_of(UNKNOWN)[0].startswith("mailctl-lookup ")


@pytest.mark.parametrize("host", ["localhost", ALIAS])
def test_a_normal_name_still_sends_end_to_end(cli, isolated_env, resolver, host):
    """localhost (from /etc/hosts) and a name answered by the resolver in the lookup thread."""
    with smtp_server(auth=False) as srv:
        write_profiles(isolated_env, {"p": smtp_profile(host, srv.port, timeout=5)})
        res = cli("test", "send", "--to", "bob@example.net")
        assert res.exit_code == 0, res.output
        assert len(srv.messages) == 1
    if host == ALIAS:
        assert resolver.lookups_of(ALIAS)[0].startswith("mailctl-lookup ")


# --- through a proxy ------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["socks5", "socks5h", "http"])
def test_proxy_named_by_a_stuck_name_ends_at_the_deadline(cli, isolated_env, resolver, scheme):
    proxy = Socks5Server() if scheme.startswith("socks") else HttpConnectProxy()
    with running(proxy) as pport:
        write_profiles(isolated_env, {"p": smtp_profile("127.0.0.1", proxy=f"{scheme}://{STUCK_PROXY}:{pport}")})
        res, took = timed(cli, "test", "connect")
        res_json, _ = timed(cli, "test", "connect", "--json")
    assert res.exit_code == ExitCode.UNAVAILABLE, res.output
    assert took < BOUND, took
    line = error_line(res.stderr)
    assert f"cannot resolve the proxy's host {STUCK_PROXY} within 1s: no answer from the resolver" in line, line
    data = json.loads(res_json.stdout)
    assert res_json.exit_code == 69 and data["failed_stage"] == "connect", data
    assert proxy.targets == []  # the proxy was never reached
    assert len(resolver.lookups_of(STUCK_PROXY)) == 1  # the second run joined the pending lookup


def test_socks5_resolving_a_stuck_server_name_ends_at_the_deadline(cli, isolated_env, resolver):
    """socks5:// (not socks5h://) looks the server's name up here, inside the handshake's deadline."""
    proxy = Socks5Server()
    with running(proxy) as pport:
        write_profiles(isolated_env, {"p": smtp_profile(STUCK, proxy=f"socks5://localhost:{pport}")})
        res, took = timed(cli, "test", "connect")
    assert res.exit_code == ExitCode.UNAVAILABLE, res.output
    assert took < BOUND, took
    line = error_line(res.stderr)
    assert f"cannot resolve {STUCK} within 1s: no answer from the resolver" in line, line
    assert "socks5h:// lets the proxy" in line
    assert proxy.targets == []  # no CONNECT request was sent


def test_socks5h_leaves_the_stuck_name_to_the_proxy(resolver):
    """socks5h:// sends the name: nothing is looked up here. The loopback proxy's own lookup
    (through the same stuck fake) then stalls its reply, which the handshake's deadline ends."""
    proxy = Socks5Server()
    with running(proxy) as pport:
        spec = parse_proxy(f"socks5h://127.0.0.1:{pport}")
        start = time.monotonic()
        with pytest.raises(UnavailableError) as info:
            connect_via_proxy(spec, STUCK, 25, TIMEOUT)
        took = time.monotonic() - start
        resolver.release.set()
    assert took < BOUND, took
    assert "did not complete the SOCKS5 handshake within 1s" in info.value.message
    assert resolver.lookups_of(STUCK) == [] and not lookup_threads()
    assert proxy.targets == [(STUCK, 25)]


@pytest.mark.parametrize("scheme", ["socks5", "http"])
def test_proxy_named_by_a_normal_name_still_works(cli, isolated_env, resolver, scheme):
    proxy = Socks5Server() if scheme == "socks5" else HttpConnectProxy()
    with smtp_server(auth=False) as srv, running(proxy) as pport:
        write_profiles(isolated_env, {"p": smtp_profile(ALIAS, srv.port, timeout=5, proxy=f"{scheme}://{ALIAS}:{pport}")})
        res = cli("test", "send", "--to", "bob@example.net")
        assert res.exit_code == 0, res.output
        assert len(srv.messages) == 1
    # socks5:// resolved the server's name here and sent the address; CONNECT sends the name
    assert proxy.targets == [("127.0.0.1" if scheme == "socks5" else ALIAS, srv.port)]
    assert len(resolver.lookups_of(ALIAS)) == (2 if scheme == "socks5" else 1)


def test_proxy_with_a_refused_port_keeps_its_error(resolver):
    from smtpserver import closed_port

    port = closed_port()
    spec = parse_proxy(f"socks5://{ALIAS}:{port}")
    with pytest.raises(UnavailableError) as info:
        connect_via_proxy(spec, "127.0.0.1", 25, 5)
    assert info.value.message == f"cannot connect to the proxy socks5://{ALIAS}:{port}: Connection refused"
    assert info.value.failure_id == "proxy-failed" and info.value.stage == "connect"


# --- the helper itself --------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_ip_literals_never_start_a_thread(resolver, host):
    before = threading.active_count()
    infos = lookup.resolve(host, 25, timeout=TIMEOUT)
    assert infos == REAL_GETADDRINFO(host, 25, 0, socket.SOCK_STREAM)
    assert resolver.lookups_of(host) == [threading.current_thread().name]
    assert threading.active_count() == before and not lookup_threads()


def test_hosts_file_names_cost_no_thread_when_files_come_first(resolver, tmp_path, monkeypatch):
    hosts, nsswitch = tmp_path / "hosts", tmp_path / "nsswitch.conf"
    hosts.write_text(f"# a comment\n127.0.0.1\tlocalhost {ALIAS}  # trailing\n::1 ip6-localhost\nbad-address other.example\n",
                     encoding="utf-8")
    nsswitch.write_text("passwd: files\nhosts:          files dns\n", encoding="utf-8")
    monkeypatch.setattr(lookup, "HOSTS_FILE", str(hosts))
    monkeypatch.setattr(lookup, "NSSWITCH_FILE", str(nsswitch))
    me = threading.current_thread().name
    lookup.resolve(ALIAS, 25, timeout=TIMEOUT)
    lookup.resolve(ALIAS.upper(), 25, timeout=TIMEOUT)
    assert resolver.lookups_of(ALIAS) == [me] and resolver.lookups_of(ALIAS.upper()) == [me]
    assert lookup.answers_at_once("ip6-localhost") and not lookup.answers_at_once("other.example")
    # DNS before files: the same name could wait for DNS, so it gets a thread
    nsswitch.write_text("hosts: dns files\n", encoding="utf-8")
    lookup.resolve(ALIAS, 25, timeout=TIMEOUT)
    assert resolver.lookups_of(ALIAS)[-1].startswith("mailctl-lookup ")


def test_a_pending_lookup_is_joined_not_repeated(resolver):
    for _ in range(3):
        with pytest.raises(lookup.LookupTimeout) as info:
            lookup.resolve(STUCK, 25, timeout=0.2)
        assert info.value.host == STUCK and 0.15 < info.value.waited < 1.5 and not info.value.busy
        assert f"for {STUCK} within 0.2s" in str(info.value)
    assert len(resolver.lookups_of(STUCK)) == 1
    assert len(lookup_threads()) == 1
    # another port is another lookup (getaddrinfo's answer depends on it)
    with pytest.raises(lookup.LookupTimeout):
        lookup.resolve(STUCK, 587, timeout=0.2)
    assert len(resolver.lookups_of(STUCK)) == 2


def test_a_lookup_that_ends_late_frees_its_slot(resolver):
    with pytest.raises(lookup.LookupTimeout):
        lookup.resolve(STUCK, 25, timeout=0.2)
    resolver.release.set()  # the resolver answers at last (a failure, here)
    for thread in lookup_threads():
        thread.join(5)
    resolver.release.clear()
    with pytest.raises(lookup.LookupTimeout):
        lookup.resolve(STUCK, 25, timeout=0.2)
    assert len(resolver.lookups_of(STUCK)) == 2  # a new lookup: nothing stale was kept


def test_lookup_threads_are_capped(resolver):
    names = [f"n{i}.stuck.test" for i in range(lookup.MAX_PENDING)]
    for name in names:
        with pytest.raises(lookup.LookupTimeout):
            lookup.resolve(name, 25, timeout=0.1)
    assert len(lookup_threads()) == lookup.MAX_PENDING
    start = time.monotonic()
    with pytest.raises(lookup.LookupTimeout) as info:
        lookup.resolve("one-more.stuck.test", 25, timeout=0.3)
    assert 0.25 < time.monotonic() - start < 2.0
    assert info.value.busy and "earlier lookups are still waiting" in str(info.value)
    assert resolver.lookups_of("one-more.stuck.test") == []  # it never started
    assert len(lookup_threads()) == lookup.MAX_PENDING
    # a name already pending is still joined while the slots are full
    with pytest.raises(lookup.LookupTimeout) as info:
        lookup.resolve(names[0], 25, timeout=0.1)
    assert not info.value.busy


def test_addresses_and_errors_are_getaddrinfo_s(resolver):
    """Same addresses in the same order, same gaierror, for a name looked up in the thread."""
    infos = lookup.resolve(ALIAS, 2525, timeout=TIMEOUT)
    assert infos == REAL_GETADDRINFO("127.0.0.1", 2525, 0, socket.SOCK_STREAM)
    with pytest.raises(socket.gaierror) as info:
        lookup.resolve(UNKNOWN, 25, timeout=TIMEOUT)
    assert info.value.errno == socket.EAI_NONAME
