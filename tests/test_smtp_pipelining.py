"""RFC 2920 PIPELINING in SmtpTransport.send(): MAIL FROM, every RCPT TO and DATA in one write,
the replies read in order, the data only after DATA's 354. Against aiosmtpd (which reads
pipelined commands in order; the handler here advertises PIPELINING, which aiosmtpd 1.4 does not
itself, and records what each read of the server got) and a raw-socket server scripted
here (with or without PIPELINING, 421 mid-envelope, a 354 after every RCPT was refused)."""

from __future__ import annotations

import smtplib
import socket
import threading
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from mailctl.errors import DeliveryError, ExitCode
from mailctl.profiles.model import ResolvedProfile
from mailctl.transports.smtp import SmtpSession, SmtpTransport

from outbox_smtp import journaled_ids
from smtpserver import RecordingHandler, ScriptedSMTP, free_port

SENDER = "app@example.com"
BODY_MARK = b"pipelined body line"


def profile(port: int, **values) -> ResolvedProfile:
    base = {"type": "smtp", "host": "127.0.0.1", "port": port, "security": "none", "auth": "none", "timeout": 5,
            "ehlo_name": "client.test", "from_address": SENDER}
    base.update(values)
    return ResolvedProfile("pipe", base, {}, ["pipe"])


def raw_message(n: int = 0) -> bytes:
    return (f"From: {SENDER}\r\nTo: someone@example.net\r\nSubject: pipelined {n}\r\n"
            f"Message-ID: <p{n}@example.com>\r\n\r\n").encode() + BODY_MARK + b"\r\n.a line that starts with a dot\r\n"


# --- aiosmtpd with a recorder of the server's reads ------------------------------------------
class SegmentHandler(RecordingHandler):
    """aiosmtpd 1.4 reads pipelined commands in order but does not advertise PIPELINING: this
    handler adds it to the EHLO reply (like Postfix). `sessions` counts the EHLOs (aiosmtpd's
    Controller makes a connection of its own when it starts)."""

    def __init__(self, script=None, pipelining: bool = True):
        super().__init__(script)
        self.pipelining = pipelining
        self.sessions = 0
        self.segments: list[bytes] = []  # every chunk the server's transport read, in order

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.sessions += 1
        responses = await super().handle_EHLO(server, session, envelope, hostname, responses)
        if self.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses


class SegmentSMTP(ScriptedSMTP):
    def data_received(self, data):
        self.event_handler.segments.append(bytes(data))
        super().data_received(data)


class SegmentController(Controller):
    def factory(self):
        return SegmentSMTP(self.handler, **self.SMTP_kwargs)


class aiosmtpd_server:
    def __init__(self, script=None):
        self.handler = SegmentHandler(script)
        self.port = free_port()
        self.controller = SegmentController(self.handler, hostname="127.0.0.1", port=self.port,
                                            server_hostname="mail.test", ident="pipelining-test ESMTP")

    def __enter__(self):
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()

    def envelope_segments(self) -> list[bytes]:
        return [s for s in self.handler.segments if b"MAIL FROM" in s.upper()]

    def got_body(self) -> bool:
        return any(BODY_MARK in s for s in self.handler.segments)


@pytest.fixture
def io_log(monkeypatch):
    """The client's writes (W) and replies read (R), in order: W followed by R is a round trip."""
    events: list[str] = []
    real_send, real_getreply = smtplib.SMTP.send, SmtpSession.getreply

    def send(self, s):
        events.append("W")
        return real_send(self, s)

    def getreply(self):
        events.append("R")
        return real_getreply(self)

    monkeypatch.setattr(smtplib.SMTP, "send", send)
    monkeypatch.setattr(SmtpSession, "getreply", getreply)
    return events


def round_trips(events: list[str]) -> int:
    return sum(1 for a, b in zip(events, events[1:]) if a == "W" and b == "R")


def test_the_envelope_is_one_write_and_one_round_trip(io_log):
    rcpts = ["a@example.net", "b@example.net", "c@example.net"]
    with aiosmtpd_server() as srv, SmtpTransport(profile(srv.port), None) as t:
        assert t.session.has_extn("pipelining")
        for n in range(2):
            io_log.clear()
            result = t.send(raw_message(n), SENDER, rcpts)
            assert result.refused == {} and result.reply.startswith("250")
            # MAIL, 3 x RCPT, DATA in one write; their 5 replies; the data; its reply
            assert io_log == ["W", "R", "R", "R", "R", "R", "W", "R"]
            assert round_trips(io_log) == 2  # smtplib: 6 (one per command, and the data)
        envelopes = srv.envelope_segments()
        assert len(envelopes) == 2
        for seg in envelopes:
            lines = seg.split(b"\r\n")
            assert lines[0].startswith(b"MAIL FROM:<app@example.com>") and b"SIZE=" in lines[0]
            assert lines[1:] == [b"RCPT TO:<a@example.net>", b"RCPT TO:<b@example.net>", b"RCPT TO:<c@example.net>",
                                 b"DATA", b""]
        messages = srv.handler.messages
        assert [m["to"] for m in messages] == [rcpts, rcpts]
        assert b"\n.a line that starts with a dot" in messages[0]["data"]  # dot-stuffed on the wire, undone by the server
        assert srv.handler.sessions == 1


def test_some_recipients_refused_is_a_result_not_an_error(io_log):
    script = {"rcpt": {"bad@example.net": "550 5.1.1 No such user", "later@example.net": "451 4.2.0 Try later"}}
    rcpts = ["good@example.net", "bad@example.net", "later@example.net", "fine@example.net"]
    with aiosmtpd_server(script) as srv, SmtpTransport(profile(srv.port), None) as t:
        io_log.clear()
        result = t.send(raw_message(), SENDER, rcpts)
        assert result.refused == {"bad@example.net": "550 5.1.1 No such user", "later@example.net": "451 4.2.0 Try later"}
        assert round_trips(io_log) == 2
        assert srv.handler.messages[0]["to"] == ["good@example.net", "fine@example.net"]


@pytest.mark.parametrize("replies, permanent", [
    (("550 5.1.1 No such user", "553 5.1.3 Bad address"), True),
    (("550 5.1.1 No such user", "450 4.2.1 Busy"), False),  # a 4xx among them: retry
])
def test_all_recipients_refused_sends_no_data_and_keeps_the_connection(replies, permanent):
    rcpts = ["x@example.net", "y@example.net"]
    script = {"rcpt": dict(zip(rcpts, replies))}
    with aiosmtpd_server(script) as srv, SmtpTransport(profile(srv.port), None) as t:
        with pytest.raises(DeliveryError) as err:
            t.send(raw_message(), SENDER, rcpts)
        e = err.value
        assert e.stage == "rcpt" and e.permanent is permanent and e.code == 550
        assert e.refused == dict(zip(rcpts, replies))
        assert not srv.got_body() and srv.handler.messages == []
        # aiosmtpd answered the pipelined DATA with 503; the transport sent RSET and goes on
        assert any(s.upper().startswith(b"RSET") for s in srv.handler.segments)
        assert t.session is not None
        srv.handler.script.clear()
        assert t.send(raw_message(1), SENDER, ["ok@example.net"]).refused == {}
        assert srv.handler.sessions == 1 and len(srv.handler.messages) == 1


def test_a_4xx_at_mail_from_defers_and_sends_no_data():
    with aiosmtpd_server({"mail": "451 4.3.0 Mail system busy"}) as srv, SmtpTransport(profile(srv.port), None) as t:
        with pytest.raises(DeliveryError) as err:
            t.send(raw_message(), SENDER, ["a@example.net", "b@example.net"])
        e = err.value
        assert e.stage == "mail" and e.permanent is False and e.code == 451 and e.exit_code == ExitCode.TEMPFAIL
        assert "MAIL FROM:<app@example.com> refused" in e.message and e.refused is None
        assert not srv.got_body() and srv.handler.messages == []
        srv.handler.script.clear()  # RSET went out; the same connection takes the next message
        assert t.send(raw_message(1), SENDER, ["a@example.net"]).reply.startswith("250")
        assert srv.handler.sessions == 1


def test_while_waiting_runs_with_the_envelope_on_the_wire_and_before_any_data():
    with aiosmtpd_server() as srv, SmtpTransport(profile(srv.port), None) as t:
        seen: list[tuple[bool, bool]] = []

        def while_waiting():
            # the commands went out before this runs: wait until the server has read DATA
            for _ in range(500):
                if any(s.rstrip().upper().endswith(b"DATA") for s in srv.envelope_segments()):
                    break
                time.sleep(0.01)
            seen.append((bool(srv.envelope_segments()), srv.got_body()))

        t.send(raw_message(), SENDER, ["a@example.net"], while_waiting=while_waiting)
        assert seen == [(True, False)]
        assert len(srv.handler.messages) == 1


def test_a_failing_while_waiting_sends_none_of_the_data():
    class Boom(Exception):
        pass

    def fail():
        raise Boom("the previous result could not be committed")

    with aiosmtpd_server() as srv:
        t = SmtpTransport(profile(srv.port), None)
        t.open()
        t.send(raw_message(0), SENDER, ["a@example.net"])
        with pytest.raises(Boom):
            t.send(raw_message(1), SENDER, ["a@example.net"], while_waiting=fail)
        assert t.session is None  # dropped: the server may be waiting for data after its 354
        t.close()
        time.sleep(0.2)  # let the server read whatever might have come (nothing should)
        assert len(srv.handler.messages) == 1
        assert sum(BODY_MARK in s for s in srv.handler.segments) == 1  # message 0's data only
        # the next send reconnects
        t.send(raw_message(2), SENDER, ["a@example.net"])
        t.close()
        assert len(srv.handler.messages) == 2 and srv.handler.sessions == 2


# --- a raw-socket server scripted here ------------------------------------------------------
class RawServer:
    """One connection at a time. EHLO advertises PIPELINING when `pipelining`; `rcpt` maps an
    address to its reply; a reply starting 421 is sent and the connection closed; DATA gets 354
    when a recipient was accepted (or always with `data_354_always`), else 503. `chunks`: every
    recv, in order; `lines`: the commands."""

    def __init__(self, *, pipelining: bool = True, rcpt: dict[str, str] | None = None, mail: str = "250 2.1.0 Ok",
                 data_354_always: bool = False):
        self.pipelining = pipelining
        self.rcpt = rcpt or {}
        self.mail = mail
        self.data_354_always = data_354_always
        self.chunks: list[bytes] = []
        self.lines: list[str] = []
        self.bodies: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.sock.close()
        self.thread.join(5)

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    self._session(conn)
                except OSError:
                    pass

    def _session(self, conn):
        buf = b""
        conn.sendall(b"220 raw.test ESMTP\r\n")
        accepted = 0
        in_data, body = False, []
        while True:
            while b"\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                self.chunks.append(chunk)
                buf += chunk
            raw, buf = buf.split(b"\r\n", 1)
            if in_data:
                if raw == b".":
                    in_data = False
                    self.bodies.append(b"\r\n".join(body))
                    body = []
                    conn.sendall(b"250 2.0.0 Ok: queued as RAW1\r\n")
                else:
                    body.append(raw)
                continue
            line = raw.decode()
            self.lines.append(line)
            verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                reply = "250-raw.test\r\n" + ("250-PIPELINING\r\n" if self.pipelining else "") + "250 8BITMIME"
            elif verb == "MAIL":
                reply, accepted = self.mail, 0
            elif verb == "RCPT":
                address = line.split(":", 1)[1].strip().strip("<>")
                reply = self.rcpt.get(address, "250 2.1.5 Ok")
                accepted += reply.startswith("250")
            elif verb == "DATA":
                reply = "354 go ahead" if accepted or self.data_354_always else "503 5.5.1 No valid recipients"
                in_data = reply.startswith("354")
            elif verb == "RSET":
                reply, accepted = "250 2.0.0 Ok", 0
            elif verb == "QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:
                reply = "502 5.5.2 no"
            conn.sendall(reply.encode() + b"\r\n")
            if reply.startswith("421"):
                return

    def transaction_chunks(self) -> list[bytes]:
        """The chunks from the first MAIL FROM on."""
        for i, chunk in enumerate(self.chunks):
            if chunk.upper().startswith(b"MAIL FROM"):
                return self.chunks[i:]
        return []


def test_a_server_without_pipelining_gets_one_command_at_a_time(io_log):
    with RawServer(pipelining=False) as srv, SmtpTransport(profile(srv.port), None) as t:
        io_log.clear()
        result = t.send(raw_message(), SENDER, ["a@example.net", "b@example.net"])
        assert result.reply == "250 2.0.0 Ok: queued as RAW1" and result.queue_id == "RAW1"
        assert round_trips(io_log) == 5  # MAIL, RCPT, RCPT, DATA, data
        chunks = srv.transaction_chunks()
        assert [c.split(b"\r\n")[0].split(b":")[0].upper() for c in chunks[:4]] == [b"MAIL FROM", b"RCPT TO", b"RCPT TO", b"DATA"]
        assert all(c.count(b"\r\n") == 1 for c in chunks[:4])  # each command alone, after the previous reply
        assert len(srv.bodies) == 1 and BODY_MARK in srv.bodies[0]


def test_the_raw_server_with_pipelining_gets_the_envelope_in_one_segment(io_log):
    with RawServer(pipelining=True) as srv, SmtpTransport(profile(srv.port), None) as t:
        io_log.clear()
        result = t.send(raw_message(), SENDER, ["a@example.net", "b@example.net"])
        assert result.queue_id == "RAW1" and round_trips(io_log) == 2
        first = srv.transaction_chunks()[0]
        assert first.split(b"\r\n")[1:] == [b"RCPT TO:<a@example.net>", b"RCPT TO:<b@example.net>", b"DATA", b""]
        assert len(srv.bodies) == 1 and BODY_MARK in srv.bodies[0]


def test_421_mid_envelope_defers_and_drops_the_connection():
    rcpts = ["a@example.net", "b@example.net", "c@example.net"]
    with RawServer(rcpt={"b@example.net": "421 4.7.0 Too many errors, closing"}) as srv:
        t = SmtpTransport(profile(srv.port), None)
        t.open()
        with pytest.raises(DeliveryError) as err:
            t.send(raw_message(), SENDER, rcpts)
        e = err.value
        assert e.stage == "rcpt" and e.code == 421 and e.permanent is False and e.exit_code == ExitCode.TEMPFAIL
        assert "RCPT TO:<b@example.net>" in e.message
        assert t.session is None and srv.bodies == []
        # the next message gets a new connection and goes through
        srv.rcpt.clear()
        assert t.send(raw_message(1), SENDER, rcpts).queue_id == "RAW1"
        t.close()
        assert len(srv.bodies) == 1


def test_421_at_mail_from_defers_without_reading_further():
    with RawServer(mail="421 4.3.2 Shutting down") as srv:
        t = SmtpTransport(profile(srv.port), None)
        t.open()
        with pytest.raises(DeliveryError) as err:
            t.send(raw_message(), SENDER, ["a@example.net"])
        assert err.value.stage == "mail" and err.value.code == 421 and err.value.permanent is False
        assert t.session is None and srv.bodies == []


def test_a_354_after_every_recipient_was_refused_gets_no_data():
    # RFC 2920: DATA should then be refused (503/554); a server that says 354 anyway must
    # not receive the message: the transport drops the connection instead of sending it
    rcpts = ["x@example.net"]
    with RawServer(rcpt={"x@example.net": "550 5.1.1 No such user"}, data_354_always=True) as srv:
        t = SmtpTransport(profile(srv.port), None)
        t.open()
        with pytest.raises(DeliveryError) as err:
            t.send(raw_message(), SENDER, rcpts)
        e = err.value
        assert e.stage == "rcpt" and e.permanent is True and e.refused == {"x@example.net": "550 5.1.1 No such user"}
        assert t.session is None
    assert srv.bodies == [] and not any(BODY_MARK in c for c in srv.chunks)
    assert "RSET" not in [line.upper() for line in srv.lines]


def test_data_refused_after_accepted_recipients():
    with aiosmtpd_server({"data": "554 5.6.0 Message refused"}) as srv, SmtpTransport(profile(srv.port), None) as t:
        with pytest.raises(DeliveryError) as err:
            t.send(raw_message(), SENDER, ["a@example.net"])
        assert err.value.stage == "data" and err.value.code == 554 and err.value.permanent is True
        assert srv.handler.sessions == 1 and t.session is not None  # RSET, connection kept


def test_smtputf8_and_8bitmime_options_with_pipelining():
    raw = "From: app@example.com\r\nSubject: caf\u00e9\r\n\r\nna\u00efve body\r\n".encode()
    srv = aiosmtpd_server()
    srv.controller = SegmentController(srv.handler, hostname="127.0.0.1", port=srv.port, enable_SMTPUTF8=True)
    with srv, SmtpTransport(profile(srv.port), None) as t:
        t.send(raw, SENDER, ["j\u00fcrgen@example.net"])
        mail_line = srv.envelope_segments()[0].split(b"\r\n")[0]
        assert b"SMTPUTF8" in mail_line and b"BODY=8BITMIME" in mail_line and f"SIZE={len(raw)}".encode() in mail_line
        assert srv.handler.messages[0]["to"] == ["j\u00fcrgen@example.net"]


def test_test_send_stages_stay_one_command_at_a_time(cli, isolated_env, io_log):
    from smtpserver import write_profiles

    with aiosmtpd_server() as srv:
        write_profiles(isolated_env, {"pipe": {"type": "smtp", "host": "127.0.0.1", "port": srv.port, "security": "none",
                                               "auth": "none", "from_address": SENDER, "timeout": 5}})
        r = cli("test", "send", "pipe", "--to", "a@example.net")
        assert r.exit_code == 0, r.output
        chunks = [s for s in srv.handler.segments if s.upper().startswith((b"MAIL", b"RCPT", b"DATA"))]
        assert [c.split(b":")[0].split(b"\r\n")[0].upper() for c in chunks] == [b"MAIL FROM", b"RCPT TO", b"DATA"]


# --- the outbox's invariant, pipelined -------------------------------------------------------
def _outbox_server(handler_cls, db, **kw):
    from outbox_smtp import SmtpServer

    return SmtpServer(handler_cls(db, **kw))


def _ledger_classes():
    import sqlite3

    from outbox_smtp import RecordingHandler as OutboxHandler

    class PipeliningHandler(OutboxHandler):
        def __init__(self, db, **kw):
            super().__init__(**kw)
            self.db = db
            self.segments: list[bytes] = []

        async def handle_EHLO(self, server, session, envelope, hostname, responses):
            responses = await super().handle_EHLO(server, session, envelope, hostname, responses)
            responses.insert(len(responses) - 1, "250-PIPELINING")
            return responses

    class Ledger(PipeliningHandler):
        """At each DATA (the point of delivery) reads the outbox with its own connection."""

        def __init__(self, db, **kw):
            super().__init__(db, **kw)
            self.committed_at_data: list[tuple[int, int]] = []

        async def handle_DATA(self, server, session, envelope):
            with sqlite3.connect(self.db) as conn:
                # committed: the row says sent, or its result waits in the journal or a side file
                sent = {i for (i,) in conn.execute("SELECT id FROM messages WHERE state='sent'")}
            self.committed_at_data.append((self.count, len(sent | journaled_ids(self.db))))
            return await super().handle_DATA(server, session, envelope)

    class Locking(PipeliningHandler):
        """After the first message, another connection takes the outbox's write lock."""

        def __init__(self, db, **kw):
            super().__init__(db, **kw)
            self.holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)

        async def handle_DATA(self, server, session, envelope):
            reply = await super().handle_DATA(server, session, envelope)
            if self.count == 1:
                self.holder.execute("BEGIN IMMEDIATE")
            return reply

    return Ledger, Locking


def _flush(box, server):
    from mailctl.outbox import FlushOptions, FlushPolicy, flush
    from mailctl.transports import open_transport

    p = ResolvedProfile("local_smtp", {"type": "smtp", "host": "127.0.0.1", "port": server.port, "security": "none",
                                       "auth": "none", "from_address": SENDER, "timeout": 10})
    return flush(box, policy=FlushPolicy(), resolve=lambda name: p, open_transport=lambda q: open_transport(q, None),
                 options=FlushOptions())


def _msg(n: int) -> bytes:
    return (f"From: {SENDER}\r\nTo: user@example.org\r\nSubject: test {n}\r\n"
            f"Message-ID: <m{n}@test.example>\r\n\r\nbody {n}\r\n").encode()


def test_pipelined_flush_commits_each_result_before_the_next_message_is_delivered(tmp_path, io_log):
    from mailctl.outbox import Outbox

    Ledger, _ = _ledger_classes()
    path = tmp_path / "o.sqlite3"
    with _outbox_server(Ledger, path) as server:
        box = Outbox(path)
        for n in range(20):
            box.enqueue(_msg(n), SENDER, ["user@example.org", "other@example.org"])
        io_log.clear()
        report = _flush(box, server)
        assert report.sent == 20
        assert server.handler.committed_at_data == [(k, k) for k in range(20)]
        # pipelined: per message one write of the envelope and one of the data
        assert round_trips(io_log) <= 2 * 20 + 4  # + banner, EHLO, QUIT
        box.close()


@pytest.mark.parametrize("nowhere", ["side file blocked", "synchronous FULL"])
def test_pipelined_flush_stops_before_any_data_when_a_result_cannot_be_written(tmp_path, nowhere):
    import sqlite3

    from mailctl.outbox import Outbox

    _, Locking = _ledger_classes()
    path = tmp_path / "o.sqlite3"
    if nowhere == "side file blocked":  # a file where the side files' directory would be
        Path(f"{path}.results").write_text("")
    with _outbox_server(Locking, path) as server:
        box = Outbox(path, timeout=0.3, synchronous="FULL" if nowhere == "synchronous FULL" else "NORMAL")
        ids = [box.enqueue(_msg(n), SENDER, ["user@example.org"]) for n in range(5)]
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            _flush(box, server)
        time.sleep(0.2)
        assert server.handler.count == 1  # message 2: envelope on the wire, none of its data
        assert server.handler.by_message_id == {"<m0@test.example>": 1}
        server.handler.holder.execute("ROLLBACK")
        server.handler.holder.close()
        states = {i: box.get(i).state for i in ids}
        assert states[ids[0]] == "sending" and set(states.values()) <= {"sending", "queued"}
        box.close()
