"""The proxy handshake as one stage with one deadline (mailctl.net.proxy.connect_via_proxy):
hostile or broken proxies on 127.0.0.1 that trickle the SOCKS5 reply a byte at a time, send an
endless CONNECT header block or never answer must not stretch `mailctl test connect` past the
profile's timeout, and a well-behaved proxy still carries a real SMTP send end to end. The
proxy password never shows in what mailctl prints."""

from __future__ import annotations

import json
import socket
import time

import pytest

from mailctl.errors import ExitCode, UnavailableError
from mailctl.net.proxy import connect_via_proxy, parse_proxy

from smtpserver import (
    HttpConnectProxy,
    Socks5Server,
    assert_no_secret,
    raw_server,
    running,
    silent_listener,
    smtp_server,
    store_secret,
    write_profiles,
)

pytestmark = pytest.mark.timeout(60)

PROXY_PASSWORD = "proxy-secret-Zq81"
TIMEOUT = 1.0
SLACK = 1.0  # CLI start-up and teardown on a shared, loaded machine


def profile(proxy: str, port: int = 25, timeout: float = TIMEOUT) -> dict:
    return {"type": "smtp", "host": "127.0.0.1", "port": port, "security": "none", "auth": "none",
            "timeout": timeout, "from_address": "app@example.com", "proxy": proxy}


def recv_exact(conn, size: int, wait: float = 5.0) -> bytes | None:
    """`size` bytes from the client (None when it is gone, the test is over or it took too long)."""
    deadline = time.monotonic() + wait
    while len(conn.buf) < size:
        if conn.stop.is_set() or time.monotonic() > deadline:
            return None
        try:
            chunk = conn.sock.recv(4096)
        except socket.timeout:
            continue
        except OSError:
            return None
        if not chunk:
            return None
        conn.buf += chunk
    data, conn.buf = conn.buf[:size], conn.buf[size:]
    return data


def trickling_socks5(conn) -> None:
    """A SOCKS5 proxy asking for user/password, then answering each step a byte every 0.3 s:
    every single read gets its byte well within a 1 s per-read timeout, the whole handshake
    would take over 4 s."""
    head = recv_exact(conn, 2)
    if head is None or recv_exact(conn, head[1]) is None:
        return
    if not conn.send_slowly(b"\x05\x02", 0.3):
        return
    auth = recv_exact(conn, 2)
    if auth is None or recv_exact(conn, auth[1]) is None:
        return
    plen = recv_exact(conn, 1)
    if plen is None or recv_exact(conn, plen[0]) is None:
        return
    if not conn.send_slowly(b"\x01\x00", 0.3):
        return
    if recv_exact(conn, 10) is None:  # VER CMD RSV ATYP=1 ADDR(4) PORT(2)
        return
    conn.send_slowly(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x19", 0.3)


def endless_connect_headers(conn) -> None:
    """An HTTP proxy whose 200 reply has headers without end, as fast as it can send them."""
    if conn.line() is None:
        return
    conn.send(b"HTTP/1.1 200 Connection established\r\n")
    while conn.sent < 4_000_000 and conn.send(b"X-Filler: " + b"a" * 40 + b"\r\n"):
        pass


def slow_connect_headers(conn) -> None:
    """Headers without end, a short line every 0.2 s: within the size bound for long, only the
    deadline ends it."""
    if conn.line() is None:
        return
    conn.send(b"HTTP/1.1 200 Connection established\r\n")
    for i in range(200):
        if not conn.send(b"X-Slow: %d\r\n" % i) or conn.stop.wait(0.2):
            return


def timed(cli, *args):
    start = time.monotonic()
    res = cli(*args)
    return res, time.monotonic() - start


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def check_connect(cli, isolated_env, proxy_url: str):
    """`mailctl test connect` (and its --json) through the proxy: the result, the error line,
    the JSON and the time each took."""
    store_secret("p", "proxy_password", PROXY_PASSWORD)
    write_profiles(isolated_env, {"p": profile(proxy_url)})
    res, took = timed(cli, "test", "connect")
    res_json, took_json = timed(cli, "test", "connect", "--json")
    assert_no_secret(res.stdout, res.stderr, res_json.stdout, res_json.stderr, secrets=(PROXY_PASSWORD,))
    return res, took, json.loads(res_json.stdout), res_json.exit_code, took_json


# --- (a) a SOCKS5 reply a byte every 0.3 s ---------------------------------------------------
def test_trickling_socks5_reply_ends_at_the_deadline(cli, isolated_env):
    with raw_server(trickling_socks5) as srv:
        url = f"socks5://puser@127.0.0.1:{srv.port}"
        res, took, data, code, took_json = check_connect(cli, isolated_env, url)
    assert res.exit_code == ExitCode.UNAVAILABLE, res.output
    assert took < TIMEOUT + SLACK and took_json < TIMEOUT + SLACK, (took, took_json)
    line = error_line(res.stderr)
    assert f"the proxy socks5://puser@127.0.0.1:{srv.port} did not complete the SOCKS5 handshake within 1s" in line, line
    assert "(waited 1." in line or "(waited 0.9" in line, line
    assert code == 69 and data["failed_stage"] == "connect", data


def test_trickling_socks5_without_a_deadline_would_have_taken_longer():
    """The same proxy with a generous timeout completes: the handshake really is slow, not
    broken, so the test above measures the deadline and not a protocol error."""
    with raw_server(trickling_socks5) as srv:
        spec = parse_proxy(f"socks5://puser@127.0.0.1:{srv.port}", PROXY_PASSWORD)
        start = time.monotonic()
        sock = connect_via_proxy(spec, "127.0.0.1", 25, 20)
        took = time.monotonic() - start
        sock.close()
    assert took > 3.5, took  # 14 bytes at 0.3 s


# --- (b) an endless CONNECT response header block ------------------------------------------
def test_endless_connect_headers_are_bounded(cli, isolated_env):
    with raw_server(endless_connect_headers) as srv:
        res, took, data, code, _ = check_connect(cli, isolated_env, f"http://puser@127.0.0.1:{srv.port}")
    assert res.exit_code == ExitCode.UNAVAILABLE, res.output
    assert took < TIMEOUT + SLACK, took
    line = error_line(res.stderr)
    assert "sent an oversized CONNECT reply (more than 16 KiB or 100 lines of headers)" in line, line
    assert code == 69 and data["failed_stage"] == "connect"


def test_endless_slow_connect_headers_end_at_the_deadline(cli, isolated_env):
    with raw_server(slow_connect_headers) as srv:
        res, took, data, code, _ = check_connect(cli, isolated_env, f"http://puser@127.0.0.1:{srv.port}")
    assert res.exit_code == ExitCode.UNAVAILABLE, res.output
    assert took < TIMEOUT + SLACK, took
    line = error_line(res.stderr)
    assert "did not complete the HTTP CONNECT within 1s" in line, line
    assert code == 69


def test_connect_reply_bound_in_the_library():
    """The bound itself: the reply is cut at 100 lines, long before the proxy's 4 MB."""
    with raw_server(endless_connect_headers) as srv:
        spec = parse_proxy(f"http://127.0.0.1:{srv.port}")
        with pytest.raises(UnavailableError) as info:
            connect_via_proxy(spec, "127.0.0.1", 25, 5)
    assert info.value.failure_id == "proxy-failed" and info.value.stage == "connect"
    assert "oversized CONNECT reply" in info.value.message


# --- (c) a proxy that never answers ----------------------------------------------------------
@pytest.mark.parametrize("scheme, stage", [("socks5", "SOCKS5 handshake"), ("socks5h", "SOCKS5 handshake"),
                                           ("http", "HTTP CONNECT")])
def test_silent_proxy_ends_at_the_deadline(cli, isolated_env, scheme, stage):
    with silent_listener() as port:
        res, took, data, code, _ = check_connect(cli, isolated_env, f"{scheme}://puser@127.0.0.1:{port}")
    assert res.exit_code == ExitCode.UNAVAILABLE, res.output
    assert took < TIMEOUT + SLACK, took
    line = error_line(res.stderr)
    assert f"the proxy {scheme}://puser@127.0.0.1:{port} did not complete the {stage} within 1s (waited " in line, line
    assert code == 69 and data["failed_stage"] == "connect"


def test_send_through_a_silent_proxy_is_deferred_within_the_deadline(cli, isolated_env):
    """mailctl send: the connect failure is temporary (the message waits in the outbox, 75),
    and it comes within the deadline too."""
    with silent_listener() as port:
        write_profiles(isolated_env, {"p": profile(f"socks5://127.0.0.1:{port}")})
        res, took = timed(cli, "send", "--to", "user@example.org", "--subject", "s", "--body", "b")
    assert res.exit_code == ExitCode.TEMPFAIL, res.output
    assert took < TIMEOUT + SLACK, took
    assert "did not complete the SOCKS5 handshake within 1s" in res.stderr


# --- (d) a well-behaved proxy still works end to end -----------------------------------------
@pytest.mark.parametrize("kind", ["socks5", "socks5h", "http"])
def test_smtp_send_through_a_normal_proxy(cli, isolated_env, kind):
    store_secret("p", "proxy_password", PROXY_PASSWORD)
    proxy = Socks5Server(("puser", PROXY_PASSWORD)) if kind.startswith("socks") else HttpConnectProxy(("puser", PROXY_PASSWORD))
    with smtp_server() as srv, running(proxy) as pport:
        host = "localhost" if kind == "socks5h" else "127.0.0.1"
        prof = profile(f"{kind}://puser@127.0.0.1:{pport}", port=srv.port, timeout=5)
        prof["host"] = host
        write_profiles(isolated_env, {"p": prof})
        res = cli("test", "send", "--to", "bob@example.net", "--transcript")
        assert res.exit_code == 0, res.output
        assert len(srv.messages) == 1
        assert proxy.targets == [(host, srv.port)]
    assert_no_secret(res.stdout, res.stderr, secrets=(PROXY_PASSWORD,))


def test_socks5_wrong_password_is_77_and_not_shown(cli, isolated_env):
    store_secret("p", "proxy_password", PROXY_PASSWORD)
    proxy = Socks5Server(("puser", "the-right-one"))
    with smtp_server() as srv, running(proxy) as pport:
        write_profiles(isolated_env, {"p": profile(f"socks5://puser@127.0.0.1:{pport}", port=srv.port, timeout=5)})
        res = cli("test", "connect")
    assert res.exit_code == ExitCode.NOPERM, res.output
    assert "refused the credentials" in error_line(res.stderr)
    assert_no_secret(res.stdout, res.stderr, secrets=(PROXY_PASSWORD, "the-right-one"))


def test_socks5_proxy_that_cannot_reach_the_server_says_why(cli, isolated_env):
    from smtpserver import closed_port

    proxy = Socks5Server()
    with running(proxy) as pport:
        port = closed_port()
        write_profiles(isolated_env, {"p": profile(f"socks5://127.0.0.1:{pport}", port=port, timeout=5)})
        res = cli("test", "connect")
    assert res.exit_code == ExitCode.UNAVAILABLE, res.output
    assert f"could not reach 127.0.0.1:{port}: connection refused (0x05)" in error_line(res.stderr)
