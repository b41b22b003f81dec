"""SmtpTransport against real aiosmtpd servers on 127.0.0.1."""

from __future__ import annotations

import time

import pytest

from mailctl.errors import AuthError, ConfigError, DeliveryError, ExitCode, ProtocolError, UnavailableError
from mailctl.message import build_message, envelope, message_bytes
from mailctl.profiles.model import ResolvedProfile
from mailctl.secrets import default_resolver
from mailctl.transports import open_transport
from mailctl.transports.smtp import SmtpTransport, TranscriptRecorder, queue_id_of

from smtpserver import (
    PASSWORD,
    TOKEN,
    USER,
    HttpConnectProxy,
    RecordingHandler,
    Socks5Server,
    assert_no_secret,
    closed_port,
    make_pki,
    running,
    silent_listener,
    smtp_server,
    store_secret,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def profile(name="t", **values) -> ResolvedProfile:
    base = {"type": "smtp", "host": "localhost", "security": "starttls", "auth": "none", "timeout": 5, "from_address": USER}
    base.update(values)
    return ResolvedProfile(name, base, {}, [name])


def msg_for(p, to=("bob@example.net",), **kw):
    m = build_message(p, {}, to=list(to), subject="hello", body="body text", **kw)
    sender, rcpts = envelope(m)
    return message_bytes(m), sender, rcpts


def test_registry_opens_smtp_and_file(tmp_path):
    assert isinstance(open_transport(profile(), default_resolver()), SmtpTransport)
    from mailctl.transports.file import FileTransport

    p = ResolvedProfile("f", {"type": "file", "maildir": str(tmp_path / "md")}, {}, ["f"])
    assert isinstance(open_transport(p, None), FileTransport)


def test_starttls_auth_plain_many_messages_one_connection(pki):
    store_secret("t", "password", PASSWORD)
    with smtp_server(cert=pki.good) as srv:
        p = profile(port=srv.port, ca_file=str(pki.ca_file), auth="password", username=USER)
        rec = TranscriptRecorder()
        with SmtpTransport(p, default_resolver(), recorder=rec) as t:
            assert t.encrypted and t.auth_mechanism == "PLAIN"
            results = [t.send(*msg_for(p)) for _ in range(5)]
        assert "C: AUTH PLAIN [redacted]" in rec.render()
        assert_no_secret("\n".join(rec.render()))
        assert srv.handler.connections == 2  # aiosmtpd's readiness probe + ours
        assert len(srv.messages) == 5
        assert results[0].server == f"localhost:{srv.port}" and not results[0].used_alternate
        assert results[-1].queue_id == "Q00005"
        assert srv.messages[0]["auth"] is True


def test_attempts_authin_when_plain_not_offered(pki, monkeypatch):
    store_secret("t", "password", PASSWORD)
    with smtp_server(cert=pki.good) as srv:
        p = profile(port=srv.port, ca_file=str(pki.ca_file), auth="password", username=USER)
        t = SmtpTransport(p, default_resolver())
        t.handshake(t.servers[0])
        t.session.esmtp_features["auth"] = "LOGIN"
        assert t.authenticate() == "LOGIN"
        t.send(*msg_for(p))
        t.close()
        assert srv.handler.attempts_auth == [("LOGIN", True)]


def test_implicit_tls_xoauth2_from_secret_store(pki):
    store_secret("t", "access_token", TOKEN)
    handler = RecordingHandler()
    with smtp_server(security="tls", cert=pki.good, handler=handler) as srv:
        # aiosmtpd offers custom mechanisms from the handler's auth_* methods
        p = profile(port=srv.port, security="tls", ca_file=str(pki.ca_file), auth="oauth", username=USER)
        rec = TranscriptRecorder()
        with SmtpTransport(p, default_resolver(), recorder=rec) as t:
            assert t.auth_mechanism == "XOAUTH2"
            t.send(*msg_for(p))
        assert handler.attempts_auth == [("XOAUTH2", True)]
        text = "\n".join(rec.render())
        assert "AUTH XOAUTH2 [redacted]" in text
        assert_no_secret(text)


def test_oauth_535_refreshes_token_once(pki, monkeypatch):
    import sys
    import types

    calls = []

    def get_access_token(profile, secrets, *, force_refresh=False):
        calls.append(force_refresh)
        return TOKEN if force_refresh else "stale-token"

    monkeypatch.setitem(sys.modules, "mailctl.oauth", types.SimpleNamespace(get_access_token=get_access_token))
    handler = RecordingHandler()
    with smtp_server(security="tls", cert=pki.good, handler=handler) as srv:
        p = profile(port=srv.port, security="tls", ca_file=str(pki.ca_file), auth="oauth", username=USER)
        with SmtpTransport(p, default_resolver()) as t:
            t.send(*msg_for(p))
    assert calls == [False, True]
    assert [ok for _m, ok in handler.attempts_auth] == [False, True]


def test_wrong_password_is_auth_error_77(pki):
    store_secret("t", "password", "wrong-" + PASSWORD)
    with smtp_server(cert=pki.good) as srv:
        p = profile(port=srv.port, ca_file=str(pki.ca_file), auth="password", username=USER)
        rec = TranscriptRecorder()
        with pytest.raises(AuthError) as info:
            SmtpTransport(p, default_resolver(), recorder=rec).open()
    err = info.value
    assert_no_secret(err.message, err.hint, "\n".join(rec.render()), secrets=("wrong-" + PASSWORD,))
    assert err.exit_code == ExitCode.NOPERM and err.stage == "auth"
    assert err.code == 535 and err.enhanced == "5.7.8"
    assert err.hint


def test_starttls_not_offered_is_76_never_plaintext(pki):
    store_secret("t", "password", PASSWORD)
    with smtp_server(auth=True, auth_require_tls=False) as srv:  # no certificate: no STARTTLS
        p = profile(port=srv.port, auth="password", username=USER)
        with pytest.raises(ProtocolError) as info:
            SmtpTransport(p, default_resolver()).open()
        assert info.value.exit_code == ExitCode.PROTOCOL
        assert_no_secret(info.value.message, info.value.hint)
        assert srv.handler.attempts_auth == []


def test_auth_refused_on_plaintext_without_allow_insecure_auth():
    store_secret("t", "password", PASSWORD)
    with smtp_server(auth=True, auth_require_tls=False) as srv:
        p = profile(port=srv.port, security="none", auth="password", username=USER)
        with pytest.raises(ConfigError) as info:
            SmtpTransport(p, default_resolver()).open()
        assert info.value.exit_code == ExitCode.CONFIG
        assert_no_secret(info.value.message, info.value.hint)
        assert srv.handler.attempts_auth == []
        p = profile(port=srv.port, security="none", auth="password", username=USER, allow_insecure_auth=True)
        with SmtpTransport(p, default_resolver()) as t:
            t.send(*msg_for(p))
        assert srv.handler.attempts_auth == [("PLAIN", True)]


def test_partial_refusal_is_reported_not_raised(pki):
    with smtp_server(script={"rcpt": {"nobody@example.net": "550 5.1.1 <nobody@example.net>: User unknown"}}) as srv:
        p = profile(port=srv.port, security="none")
        with SmtpTransport(p, default_resolver()) as t:
            result = t.send(*msg_for(p, to=("bob@example.net", "nobody@example.net")))
        assert list(result.refused) == ["nobody@example.net"]
        assert srv.messages[0]["to"] == ["bob@example.net"]


@pytest.mark.parametrize(
    "stage,reply,permanent,exit_code",
    [
        ("mail", "451 4.3.0 try later", False, ExitCode.TEMPFAIL),
        ("rcpt", "550 5.1.1 <bob@example.net>: User unknown", True, ExitCode.PROBLEMS),
        ("data", "554 5.7.1 rejected as spam", True, ExitCode.PROBLEMS),
    ],
)
def test_delivery_errors_and_connection_reused_after(stage, reply, permanent, exit_code):
    handler = RecordingHandler({stage: reply})
    with smtp_server(handler=handler) as srv:
        p = profile(port=srv.port, security="none")
        with SmtpTransport(p, default_resolver()) as t:
            with pytest.raises(DeliveryError) as info:
                t.send(*msg_for(p))
            err = info.value
            assert (err.permanent, err.stage, err.code, err.exit_code) == (permanent, stage, int(reply[:3]), exit_code)
            assert err.server == f"localhost:{srv.port}"
            handler.script.clear()
            t.send(*msg_for(p))  # RSET kept the session usable
        assert len(srv.messages) == 1


def test_bcc_reaches_envelope_not_headers():
    with smtp_server() as srv:
        p = profile(port=srv.port, security="none")
        with SmtpTransport(p, default_resolver()) as t:
            t.send(*msg_for(p, to=("bob@example.net",), bcc=("hidden@example.org",)))
        m = srv.messages[0]
        assert m["to"] == ["bob@example.net", "hidden@example.org"]
        assert b"hidden@example.org" not in m["data"] and b"Bcc" not in m["data"]


def test_failover_to_alternate_when_primary_refuses():
    with smtp_server() as srv:
        p = profile(host="127.0.0.1", port=closed_port(), security="none", alternate_host="127.0.0.1", alternate_port=srv.port)
        with SmtpTransport(p, default_resolver()) as t:
            result = t.send(*msg_for(p))
        assert result.used_alternate and result.server == f"127.0.0.1:{srv.port}"
        assert t.attempts and t.attempts[0]["stage"] == "connect"


def test_failover_on_tls_handshake_failure(pki):
    with smtp_server(security="tls", cert=pki.self_signed) as bad, smtp_server(security="tls", cert=pki.good) as good:
        p = profile(port=bad.port, security="tls", ca_file=str(pki.ca_file), alternate_host="localhost", alternate_port=good.port)
        with SmtpTransport(p, default_resolver()) as t:
            assert t.send(*msg_for(p)).used_alternate


def test_all_servers_unreachable_is_69_naming_both():
    p = profile(host="127.0.0.1", port=closed_port(), security="none", alternate_host="no-such-host.invalid")
    with pytest.raises(UnavailableError) as info:
        SmtpTransport(p, default_resolver()).open()
    assert info.value.exit_code == ExitCode.UNAVAILABLE
    assert "no-such-host.invalid" in info.value.message and "127.0.0.1" in info.value.message


def test_tls_fingerprint_pin(pki):
    import hashlib
    import ssl

    pem = pki.self_signed.cert_file.read_text()
    der = ssl.PEM_cert_to_DER_cert(pem)
    pin = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    with smtp_server(security="tls", cert=pki.self_signed) as srv:
        p = profile(port=srv.port, security="tls", tls_fingerprint=pin)
        with SmtpTransport(p, default_resolver()) as t:
            t.send(*msg_for(p))
        p = profile(port=srv.port, security="tls", tls_fingerprint="AA" * 32)
        with pytest.raises(UnavailableError) as info:
            SmtpTransport(p, default_resolver()).open()
        assert info.value.failure_id == "tls-fingerprint-mismatch"


def test_tls_12_minimum_and_local_hostname(pki):
    with smtp_server(cert=pki.good) as srv:
        p = profile(port=srv.port, ca_file=str(pki.ca_file), ehlo_name="client.example.org")
        t = SmtpTransport(p, default_resolver())
        t.open()
        assert t.session.local_hostname == "client.example.org"
        assert t.session.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert t.tls_context.minimum_version.name == "TLSv1_2"
        import socket

        assert t.session.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        t.close()


def test_default_ehlo_name_is_not_getfqdn(monkeypatch):
    import socket

    monkeypatch.setattr(socket, "getfqdn", lambda *a: (_ for _ in ()).throw(AssertionError("getfqdn called")))
    with smtp_server() as srv:
        p = profile(port=srv.port, security="none")
        with SmtpTransport(p, default_resolver()) as t:
            t.send(*msg_for(p))


def test_banner_timeout_is_unavailable():
    with silent_listener() as port:
        p = profile(host="127.0.0.1", port=port, security="none", timeout=0.5)
        start = time.monotonic()
        with pytest.raises(UnavailableError) as info:
            SmtpTransport(p, default_resolver()).open()
        assert time.monotonic() - start < 3
        assert info.value.stage == "banner"


@pytest.mark.parametrize("kind", ["socks5", "socks5h", "http"])
def test_proxy_with_credentials_from_secret_store(kind):
    store_secret("t", "proxy_password", "proxy-pw-123")
    proxy = Socks5Server(("puser", "proxy-pw-123")) if kind.startswith("socks") else HttpConnectProxy(("puser", "proxy-pw-123"))
    with smtp_server() as srv, running(proxy) as pport:
        p = profile(host="127.0.0.1", port=srv.port, security="none", proxy=f"{kind}://puser@127.0.0.1:{pport}")
        rec = TranscriptRecorder()
        with SmtpTransport(p, default_resolver(), recorder=rec) as t:
            t.send(*msg_for(p))
        assert proxy.targets == [("127.0.0.1", srv.port)]
        assert len(srv.messages) == 1
        assert_no_secret("\n".join(rec.render()), secrets=("proxy-pw-123",))


@pytest.mark.parametrize("kind", ["socks5", "http"])
def test_proxy_wrong_password_is_77(kind):
    store_secret("t", "proxy_password", "wrong")
    proxy = Socks5Server(("puser", "right")) if kind == "socks5" else HttpConnectProxy(("puser", "right"))
    with smtp_server() as srv, running(proxy) as pport:
        p = profile(host="127.0.0.1", port=srv.port, security="none", proxy=f"{kind}://puser@127.0.0.1:{pport}")
        with pytest.raises(AuthError) as info:
            SmtpTransport(p, default_resolver()).open()
        assert info.value.exit_code == ExitCode.NOPERM
        assert_no_secret(info.value.message, info.value.hint, secrets=("wrong", "right"))


def test_proxy_password_in_url_is_refused():
    p = profile(proxy="socks5://u:pw@127.0.0.1:1080")
    with pytest.raises(ConfigError):
        SmtpTransport(p, default_resolver()).open()


def test_queue_id_parsing():
    assert queue_id_of("2.0.0 Ok: queued as 4Xyz12") == "4Xyz12"
    assert queue_id_of("2.0.0 OK  1700000000 x1-20020a05.3 - gsmtp") == "x1-20020a05.3"
    assert queue_id_of("2.0.0 OK <AB12@PH0PR.namprd.prod.outlook.com> [Hostname=PH0PR]") == "AB12@PH0PR.namprd.prod.outlook.com"
    assert queue_id_of("OK") is None


# --- bounded replies, deadlines, redaction (issue #12 items 7 and 9) -------------------------
def _ehlo_with(lines: int):
    """A raw server whose EHLO reply has `lines` lines, then a normal session."""
    def behaviour(conn) -> None:
        conn.send(b"220 raw.test ESMTP\r\n")
        while (line := conn.line()) is not None:
            verb = line.split(" ", 1)[0].upper()
            if verb == "EHLO":
                conn.send(b"".join(b"250-EXT%d\r\n" % i for i in range(lines - 1)) + b"250 8BITMIME\r\n")
            elif verb == "QUIT":
                conn.send(b"221 bye\r\n")
                return
            else:
                conn.send(b"250 ok\r\n")
    return behaviour


def test_a_reply_of_100_lines_is_read_101_are_refused():
    from mailctl.transports.smtp import MAX_REPLY_LINES

    from smtpserver import raw_server

    assert MAX_REPLY_LINES == 100
    with raw_server(_ehlo_with(100)) as srv:
        t = SmtpTransport(profile(host="127.0.0.1", port=srv.port, security="none"), None)
        t.open()
        assert t.session.has_extn("ext98") and t.session.has_extn("8bitmime")
        t.close()
    with raw_server(_ehlo_with(101)) as srv:
        rec = TranscriptRecorder()
        with pytest.raises(ProtocolError) as info:
            SmtpTransport(profile(host="127.0.0.1", port=srv.port, security="none"), None, recorder=rec).open()
        err = info.value
        assert (err.stage, err.failure_id, err.exit_code) == ("ehlo", "reply-too-long", ExitCode.PROTOCOL)
        assert "sent more than 100 lines in its EHLO reply" in err.message
        assert any("reply cut off after 100 lines" in line for line in rec.render())


def test_the_deadline_bounds_a_stage_not_a_read():
    from smtpserver import raw_server

    def slow_lines(conn) -> None:
        conn.send(b"220 raw.test ESMTP\r\n")
        if conn.line() is None:
            return
        for i in range(20):  # each line quick, one every 0.2 s: 4 s for the reply
            if not conn.send(b"250-SLOW%d\r\n" % i) or conn.stop.wait(0.2):
                return
        conn.send(b"250 OK\r\n")

    with raw_server(slow_lines) as srv:
        start = time.monotonic()
        with pytest.raises(DeliveryError) as info:
            SmtpTransport(profile(host="127.0.0.1", port=srv.port, security="none", timeout=1), None).open()
        assert time.monotonic() - start < 2
        err = info.value
        assert (err.stage, err.failure_id, err.permanent, err.exit_code) == ("ehlo", "reply-too-slow", False, ExitCode.TEMPFAIL)


def test_redactor_masks_every_form():
    import base64

    from mailctl.transports.base import Redactor

    r = Redactor()
    assert r.redact("nothing to hide") == "nothing to hide" and not r
    r.add(PASSWORD)
    r.add(f"\0{USER}\0{PASSWORD}")
    r.add(USER, plain=False)
    r.add("ab")  # too short to mask
    plain_b64 = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    pw_b64 = base64.b64encode(PASSWORD.encode()).decode()
    text = (f"535 {plain_b64} / {plain_b64.rstrip('=')} / {pw_b64} / {pw_b64.rstrip('=')} / {PASSWORD} / "
            f"{plain_b64[:-5]}... / {base64.b64encode(USER.encode()).decode()} / ab")
    masked = r.redact(text)
    assert masked == "535 " + " / ".join(["[redacted]"] * 6) + "... / [redacted] / ab"
    assert r.redact(f"as {USER}") == f"as {USER}"  # the user name itself is no secret


def test_echoed_payload_is_masked_without_a_recorder():
    import base64

    from smtpserver import raw_server

    def echo(conn) -> None:
        conn.send(b"220 echo.test ESMTP\r\n")
        while (line := conn.line()) is not None:
            words = line.split()
            if words and words[0].upper() == "EHLO":
                conn.send(b"250-echo.test\r\n250 AUTH PLAIN\r\n")
            elif words and words[0].upper() == "AUTH":
                conn.send(f"535-5.7.8 Authentication failed for payload {words[2]}\r\n535 5.7.8 {words[2].rstrip('=')}\r\n".encode())
            else:
                conn.send(b"221 bye\r\n")
                return

    store_secret("t", "password", PASSWORD)
    with raw_server(echo) as srv:
        p = profile(host="127.0.0.1", port=srv.port, security="none", auth="password", username=USER, allow_insecure_auth=True)
        with pytest.raises(AuthError) as info:
            SmtpTransport(p, default_resolver()).open()
    err = info.value
    assert "for payload [redacted]" in err.message and err.code == 535
    cause = err.__cause__
    texts = [err.message, err.text or "", err.hint or "", str(err), repr(cause), cause.smtp_error.decode()]
    assert_no_secret(*texts)
    assert base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode() not in "".join(texts)


@pytest.mark.parametrize("challenge, what", [(None, "one challenge after another"), ("abc", "a challenge that is not base64")])
def test_auth_challenges_without_end_or_sense_are_a_protocol_error(challenge, what):
    from smtpserver import raw_server

    def server(conn) -> None:
        conn.send(b"220 raw.test ESMTP\r\n")
        while (line := conn.line()) is not None:
            words = line.split()
            if words and words[0].upper() == "EHLO":
                conn.send(b"250-raw.test\r\n250 AUTH PLAIN\r\n")
            elif words and words[0].upper() == "QUIT":
                return
            else:  # AUTH and every answer to a challenge: another challenge, echoing what came
                conn.send(f"334 {challenge or words[-1]}\r\n".encode())

    store_secret("t", "password", PASSWORD)
    with raw_server(server) as srv:
        p = profile(host="127.0.0.1", port=srv.port, security="none", auth="password", username=USER, allow_insecure_auth=True)
        with pytest.raises(ProtocolError) as info:
            SmtpTransport(p, default_resolver()).open()
    err = info.value
    assert (err.stage, err.exit_code) == ("auth", ExitCode.PROTOCOL) and what in err.message
    assert_no_secret(err.message, str(err.__cause__), str(err.__context__ if not err.__suppress_context__ else ""))
