"""The SMTP session's reply reader (transports.smtp.SmtpSession: one receive buffer, the
one-line replies already received taken from it at once, getreplies() for a pipelined
envelope's) and the bytes the transport writes for a message and the next one's envelope.

Real sockets on 127.0.0.1; the server side is written here byte by byte, so that a reply can
come in one piece, a byte at a time, or cut anywhere. The reference for what a reply parses
to is stock smtplib (its getreply over a buffered socket file, the same 8192-byte line
limit); the reference for the data on the wire is smtplib's own quoting (SMTP.data())."""

from __future__ import annotations

import re
import smtplib
import socket
import threading
import time

import pytest

from mailctl.profiles.model import ResolvedProfile
from mailctl.transports.smtp import (
    MAX_LINE_BYTES,
    MAX_REPLY_LINES,
    ReplyTimeout,
    ReplyTooLong,
    SmtpSession,
    SmtpTransport,
)

pytestmark = pytest.mark.timeout(60)

# Streams of replies, each read with getreply() until the stream ends: one-line replies, a
# multi-line EHLO reply, a bare LF, a code with no text, a line shorter than a code, text
# that is no code, a final line without its LF before the end of the stream.
STREAMS = [
    b"250 2.0.0 Ok: queued as 4Xyz\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
    b"250-mx.test Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 8BITMIME\r\n221 bye\r\n",
    b"250 ok\n251 also ok \t\r\n250\r\n25\r\n",
    b"hello there\r\n250-first\r\n250 second\r\n250 last without LF",
    b"250-a\r\n2x0-b\r\n250 c\r\n",
    b"421 4.3.2 going away\r\n",
]


def _pair() -> tuple[socket.socket, socket.socket]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    client.settimeout(5)
    return client, server


def _feed(server: socket.socket, data: bytes, step: int | None) -> threading.Thread:
    """Write `data` (all at once, or `step` bytes at a time with a pause), then close."""
    def run() -> None:
        with server:
            if step is None:
                server.sendall(data)
                return
            for i in range(0, len(data), step):
                server.sendall(data[i:i + step])
                time.sleep(0.001)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _replies(session, count: int | None = None) -> list:
    """getreply() until the stream ends (SMTPServerDisconnected closes it)."""
    out = []
    while count is None or len(out) < count:
        try:
            out.append(session.getreply())
        except smtplib.SMTPServerDisconnected as exc:
            out.append(("closed", str(exc)))
            break
    return out


def _stock(data: bytes) -> list:
    client, server = _pair()
    feeder = _feed(server, data, None)
    session = smtplib.SMTP()
    session.sock = client
    try:
        return _replies(session)
    finally:
        feeder.join(5)
        client.close()


def _ours(data: bytes, step: int | None, timeout: float = 5.0) -> list:
    client, server = _pair()
    feeder = _feed(server, data, step)
    session = SmtpSession(local_hostname="client.test", timeout=timeout)
    session.attach(client, "127.0.0.1")
    try:
        return _replies(session)
    finally:
        feeder.join(5)
        client.close()


@pytest.mark.parametrize("data", STREAMS)
@pytest.mark.parametrize("step", [None, 1, 7])
def test_replies_parse_as_stock_smtplib_parses_them_however_they_are_cut(data, step):
    assert _ours(data, step) == _stock(data)


def _session_with(data: bytes):
    """A session whose peer has sent `data` (all of it received before the first read)."""
    client, server = _pair()
    server.sendall(data)
    session = SmtpSession(local_hostname="client.test", timeout=5)
    session.attach(client, "127.0.0.1")
    time.sleep(0.05)
    return session, server


def test_getreplies_takes_the_replies_received_together_and_stops_after_a_421():
    session, server = _session_with(b"250 2.1.0 Ok\r\n421 4.7.0 bye\r\n250 after\r\n")
    with server:
        first = session.getreply()  # receives all three at once
        replies: list = []
        session.getreplies(2, replies)
        assert first == (250, b"2.1.0 Ok")
        assert replies == [(421, b"4.7.0 bye")]
        assert session.getreply() == (250, b"after")  # left in the buffer, not lost
        session.close()


def test_getreplies_reads_a_reply_of_several_lines_and_one_not_yet_received():
    session, server = _session_with(b"250 a\r\n250-b\r\n250 c\r\n")
    with server:
        assert session.getreply() == (250, b"a")
        replies: list = []
        server.sendall(b"354 go ahead\r\n")  # after the first recv: getreplies must wait for it
        session.getreplies(2, replies)
        assert replies == [(250, b"b\nc"), (354, b"go ahead")]
        session.close()


@pytest.mark.parametrize("length, fits", [(MAX_LINE_BYTES, True), (MAX_LINE_BYTES + 1, False)])
def test_the_line_bound_holds_for_a_line_already_received(length, fits):
    line = b"250 " + b"x" * (length - 6) + b"\r\n"
    assert len(line) == length
    session, server = _session_with(b"250 before\r\n" + line + b"250 after\r\n")
    with server:
        assert session.getreply() == (250, b"before")
        replies: list = []
        if fits:
            session.getreplies(2, replies)
            assert replies == [(250, line[4:-2]), (250, b"after")]
        else:
            with pytest.raises(ReplyTooLong) as exc:
                session.getreplies(2, replies)
            assert exc.value.what == f"a line longer than {MAX_LINE_BYTES} bytes"
            assert session.sock is None  # closed


def test_the_lines_bound_holds_for_lines_already_received():
    session, server = _session_with(b"250 before\r\n" + b"250-more\r\n" * (MAX_REPLY_LINES + 5) + b"250 end\r\n")
    with server:
        assert session.getreply() == (250, b"before")
        with pytest.raises(ReplyTooLong) as exc:
            session.getreplies(1, [])
        assert exc.value.what == f"more than {MAX_REPLY_LINES} lines"


def test_a_reply_begun_then_dribbled_ends_at_its_deadline():
    client, server = _pair()
    session = SmtpSession(local_hostname="client.test", timeout=0.5)
    session.attach(client, "127.0.0.1")
    stop = threading.Event()

    def dribble() -> None:
        server.sendall(b"250-first line\r\n250-")
        while not stop.wait(0.05):
            try:
                server.sendall(b"x")
            except OSError:
                return

    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    started = time.monotonic()
    try:
        with pytest.raises(ReplyTimeout) as exc:
            session.getreply()
        took = time.monotonic() - started
    finally:
        stop.set()
        t.join(5)
        server.close()
    assert 0.4 < took < 1.5
    assert exc.value.received > 0 and exc.value.lines == [b"first line"]


def test_no_reply_at_all_ends_at_the_timeout():
    client, server = _pair()
    session = SmtpSession(local_hostname="client.test", timeout=0.3)
    session.attach(client, "127.0.0.1")
    started = time.monotonic()
    with server, pytest.raises(ReplyTimeout) as exc:
        session.getreply()
    assert 0.25 < time.monotonic() - started < 1.0
    assert exc.value.received == 0 and exc.value.lines == []
    assert session.sock is None  # closed


# --- the bytes on the wire: the data dot-stuffed as smtplib does, the next envelope after the dot
class _Recorder:
    """A PIPELINING server that answers every command, and takes the data up to the final
    dot; `wire` is everything the client sent."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.wire = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.sendall(b"220 rec.test ESMTP\r\n")
            buf, in_data, queued = b"", False, 0
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                self.wire += chunk
                buf += chunk
                while True:
                    if in_data:
                        end = buf.find(b"\r\n.\r\n")
                        if end < 0:
                            break
                        buf = buf[end + 5:]
                        in_data, queued = False, queued + 1
                        conn.sendall(f"250 2.0.0 Ok: queued as Q{queued}\r\n".encode())
                        continue
                    if b"\r\n" not in buf:
                        break
                    line, buf = buf.split(b"\r\n", 1)
                    verb = line[:4].upper()
                    if verb == b"EHLO":
                        conn.sendall(b"250-rec.test\r\n250-PIPELINING\r\n250 SIZE 100000\r\n")
                    elif verb == b"DATA":
                        in_data = True
                        buf = b"\r\n" + buf  # so that empty data ends with "\r\n.\r\n" too
                        conn.sendall(b"354 go ahead\r\n")
                    elif verb == b"QUIT":
                        conn.sendall(b"221 bye\r\n")
                        return
                    else:
                        conn.sendall(b"250 Ok\r\n")

    def close(self) -> None:
        self.thread.join(5)
        self.listener.close()


MESSAGES = [
    b"From: a@example.com\r\nSubject: one\r\n\r\nplain body\r\n",
    b".From: a@example.com\r\nSubject: a leading dot\r\n\r\n.line\r\n..two dots\r\n.\r\nend\r\n",
    b"From: a@example.com\r\nSubject: no final line end\r\n\r\nlast line",
    b"From: a@example.com\r\nSubject: four\r\n\r\n\r\n",
    b".only its first line begins with a dot\r\nSubject: five\r\n\r\nbody\r\n",
]


def _expected_wire(messages: list[bytes]) -> bytes:
    """What smtplib would send: EHLO, the first envelope, then per message its data as
    SMTP.data() quotes it and the next message's envelope in the same write, QUIT."""
    def envelope(raw: bytes) -> bytes:
        return (f"MAIL FROM:<a@example.com> SIZE={len(raw)}\r\nRCPT TO:<b@example.org>\r\n"
                "RCPT TO:<c@example.org>\r\nDATA\r\n").encode()

    wire = b"ehlo client.test\r\n" + envelope(messages[0])  # smtplib's command words
    for i, raw in enumerate(messages):
        data = re.sub(rb"(?m)^\.", b"..", raw)  # smtplib._quote_periods
        if data[-2:] != b"\r\n":
            data += b"\r\n"
        wire += data + b".\r\n"
        if i + 1 < len(messages):
            wire += envelope(messages[i + 1])
    return wire + b"quit\r\n"


def test_the_data_and_the_announced_envelopes_go_out_as_smtplib_would_send_them():
    server = _Recorder()
    profile = ResolvedProfile("rec", {"type": "smtp", "host": "127.0.0.1", "port": server.port, "security": "none",
                                      "auth": "none", "ehlo_name": "client.test", "timeout": 5})
    transport = SmtpTransport(profile, None)
    rcpts = ["b@example.org", "c@example.org"]
    results = []
    try:
        for i, raw in enumerate(MESSAGES):
            then = (MESSAGES[i + 1], "a@example.com", rcpts) if i + 1 < len(MESSAGES) else None
            results.append(transport.send(raw, "a@example.com", rcpts, then=then))
        transport.close()
    finally:
        server.close()
    assert [r.queue_id for r in results] == [f"Q{n}" for n in range(1, len(MESSAGES) + 1)]
    assert server.wire == _expected_wire(MESSAGES)
