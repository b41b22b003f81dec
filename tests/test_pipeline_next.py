"""Cross-message pipelining (SmtpTransport.send(then=...), FlushRun.then_on_wire): with
PIPELINING, the next message's MAIL FROM, RCPT TO and DATA follow this message's final dot in
the same write, so a flushed message costs one round trip. Against a raw-socket SMTP / LMTP
server on 127.0.0.1, written here, that notes for every final dot whether the next MAIL FROM
was already there before it replied (it waits up to WAIT seconds for it, then replies anyway).

What must hold:
* every message delivered exactly once, with its exact content, the outbox saying sent;
* every earlier message's result committed before a message's data reaches the server;
* a refused data with the next envelope announced: no RSET (it would be the next message's
  data), the next messages go through intact;
* a stop (or close()) after an announce drops the connection (no QUIT): the announced
  transaction gets no data and is discarded, its message goes back to queued;
* nothing announced without PIPELINING, with a rate limit, across profiles, past --limit,
  across claims, for non-ASCII messages, or over LMTP;
* a transcript shows the announced commands as command lines after the data.
"""

from __future__ import annotations

import re
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from mailctl.outbox import FlushOptions, FlushPolicy, Outbox
from mailctl.outbox.flush import FlushRun
from mailctl.profiles.model import ResolvedProfile
from mailctl.transports import open_transport
from mailctl.transports.base import TranscriptRecorder
from mailctl.transports.lmtp import LmtpTransport
from mailctl.transports.smtp import SmtpTransport

from outbox_smtp import block_side_files, journaled_ids  # noqa: E402
from test_lmtp import BOB, dovecot  # noqa: F401 - the private Dovecot LMTP instance (a module fixture)

pytestmark = pytest.mark.timeout(60)

SENDER = "app@example.com"
RCPT = "user@example.org"
WAIT = 0.5  # how long the server waits, after a final dot, for the next MAIL FROM before replying
_MID = re.compile(rb"^Message-ID:\s*(\S+)", re.I | re.M)


def message(n: int, to: str = RCPT) -> bytes:
    # a line starting with a dot (dot-stuffed on the wire), and a body line that looks like a command
    return (f"From: {SENDER}\r\nTo: {to}\r\nSubject: pipeline {n}\r\nMessage-ID: <n{n}@test.example>\r\n\r\n"
            f"body of message {n}\r\n.a line with a leading dot\r\nMAIL FROM:<not-a-command@example.com>\r\n").encode()


class _Lines:
    """Lines from a socket, with a look ahead that waits a bounded time."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buf = b""

    def _fill(self, timeout: float) -> bool:
        self.conn.settimeout(max(timeout, 0.001))
        try:
            chunk = self.conn.recv(65536)
        except (socket.timeout, TimeoutError):
            return False
        if not chunk:
            raise EOFError
        self.buf += chunk
        return True

    def line(self, timeout: float = 10.0) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill(timeout):
                raise EOFError("no line within the deadline")
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def peek(self, seconds: float) -> bytes | None:
        """The next complete line, without taking it; None when none came within `seconds`."""
        end = time.monotonic() + seconds
        while b"\r\n" not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                return None
            try:
                self._fill(left)
            except EOFError:
                return None
        return self.buf.split(b"\r\n", 1)[0]


class PipeServer:
    """A raw-socket SMTP server (LMTP with `lmtp`) on 127.0.0.1, a thread per connection.

    Records `commands` (connection number, line) outside the data, `bodies` (the message data,
    dot-stuffing undone), `dots` (per final dot: whether the next MAIL FROM had come before
    the reply, and the reply), `aborted` (connections that ended in the middle of a
    transaction: the stage it was in) and `quits`. `dot_replies`: reply for the data of the
    n-th message (0-based, in the order received); one starting 421 (or any, with
    `close_after_refusal`) closes the connection.
    `rcpt_replies`: reply for a recipient address. `at_data(n)`: called when the first line
    of the n-th message's data arrives; its return value goes into `at_data_seen`.
    `on_dot(n)`: called when the n-th final dot arrived, before the reply."""

    def __init__(self, *, pipelining: bool = True, lmtp: bool = False, dot_replies: dict[int, str] | None = None,
                 rcpt_replies: dict[str, str] | None = None, at_data=None, on_dot=None,
                 close_after_refusal: bool = False) -> None:
        self.close_after_refusal = close_after_refusal
        self.rcpt_replies = rcpt_replies or {}
        self.on_dot = on_dot
        self.pipelining = pipelining
        self.lmtp = lmtp
        self.dot_replies = dot_replies or {}
        self.at_data = at_data
        self.lock = threading.Lock()
        self.commands: list[tuple[int, str]] = []
        self.bodies: list[bytes] = []
        self.dots: list[dict] = []
        self.aborted: list[tuple[int, str, list[bytes]]] = []  # (connection, stage, data lines it got)
        self.quits: list[int] = []
        self.at_data_seen: list = []
        self.connections = 0
        self.threads: list[threading.Thread] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.05)  # accept() in slices, so that __exit__ ends it at once
        self.closing = False
        self.port = self.sock.getsockname()[1]
        self.acceptor = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> "PipeServer":
        self.acceptor.start()
        return self

    def __exit__(self, *exc) -> None:
        self.closing = True
        self.acceptor.join(5)
        self.sock.close()
        self.wait_idle()

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Until every connection's thread has ended (the client closed or dropped it)."""
        end = time.monotonic() + timeout
        for t in list(self.threads):
            t.join(max(0.0, end - time.monotonic()))

    def _accept(self) -> None:
        while not self.closing:
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self.lock:
                self.connections += 1
                number = self.connections
            t = threading.Thread(target=self._serve, args=(conn, number), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        state: dict = {"stage": None, "partial": []}
        with conn:
            try:
                self._session(conn, number, state)
            except (EOFError, OSError):
                if state["stage"] is not None:
                    with self.lock:
                        self.aborted.append((number, state["stage"], state["partial"]))

    def _session(self, conn: socket.socket, number: int, state: dict) -> None:
        lines = _Lines(conn)
        conn.sendall(b"220 pipe.test ESMTP\r\n")
        rcpts: list[str] = []
        while True:
            text = lines.line().decode("utf-8", "replace")
            with self.lock:
                self.commands.append((number, text))
            verb = text.split(" ", 1)[0].split(":", 1)[0].upper()
            if verb in (("LHLO",) if self.lmtp else ("EHLO", "HELO")):
                ext = ["SIZE 10240000"] + (["PIPELINING"] if self.pipelining else []) + ["8BITMIME", "ENHANCEDSTATUSCODES"]
                reply = "\r\n".join(["250-pipe.test"] + [f"250-{e}" for e in ext[:-1]] + [f"250 {ext[-1]}"])
            elif verb == "MAIL":
                reply, rcpts, state["stage"] = "250 2.1.0 Ok", [], "envelope"
            elif verb == "RCPT":
                address = text.split(":", 1)[1].split()[0].strip("<>")
                reply = self.rcpt_replies.get(address, "250 2.1.5 Ok")
                if reply.startswith("250"):
                    rcpts.append(address)
            elif verb == "DATA":
                if not rcpts:
                    reply = "503 5.5.1 No valid recipients"
                else:
                    conn.sendall(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    state["stage"], state["partial"] = "data", []
                    reply = self._data(conn, lines, rcpts, state["partial"])
                    state["stage"], state["partial"] = None, []
                    if reply.startswith("421") or (self.close_after_refusal and not reply.startswith("250")):
                        conn.sendall(reply.encode() + b"\r\n")
                        return
            elif verb == "RSET":
                reply, rcpts, state["stage"] = "250 2.0.0 Ok", [], None
            elif verb == "NOOP":
                reply = "250 2.0.0 Ok"
            elif verb == "QUIT":
                with self.lock:
                    self.quits.append(number)
                conn.sendall(b"221 2.0.0 Bye\r\n")
                return
            else:
                reply = "502 5.5.2 Error: command not recognized"
            conn.sendall(reply.encode() + b"\r\n")

    def _data(self, conn: socket.socket, lines: _Lines, rcpts: list[str], partial: list[bytes]) -> str:
        """Read one message's data; wait up to WAIT for the next MAIL FROM; the reply(ies)."""
        with self.lock:
            index = len(self.dots)  # the n-th data on this server
        body: list[bytes] = []
        first = True
        while True:
            line = lines.line()
            if first and self.at_data is not None:
                seen = self.at_data(index)
                with self.lock:
                    self.at_data_seen.append(seen)
            first = False
            if line == b".":
                break
            partial.append(line)
            body.append(line[1:] if line.startswith(b".") else line)
        following = lines.peek(WAIT)
        announced = following is not None and following.upper().startswith(b"MAIL FROM")
        if self.on_dot is not None:
            self.on_dot(index)
        reply = self.dot_replies.get(index, f"250 2.0.0 Ok: queued as Q{index}")
        with self.lock:
            self.bodies.append(b"".join(x + b"\r\n" for x in body))
            self.dots.append({"index": index, "next_mail_first": announced, "reply": reply, "next": following})
        if self.lmtp:  # one reply per accepted recipient; the last one goes out through the caller
            for _ in rcpts[:-1]:
                conn.sendall(reply.encode() + b"\r\n")
        return reply

    # what the tests look at
    def announced(self) -> list[bool]:
        return [d["next_mail_first"] for d in self.dots]

    def by_message_id(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for body in self.bodies:
            m = _MID.search(body)
            key = m.group(1).decode() if m else ""
            counts[key] = counts.get(key, 0) + 1
        return counts

    def verbs(self) -> list[str]:
        return [line.split(" ", 1)[0].split(":", 1)[0].upper() for _, line in self.commands]


def smtp_profile(server: PipeServer, name: str = "relay", **extra) -> ResolvedProfile:
    values = {"type": "smtp", "host": "127.0.0.1", "port": server.port, "security": "none", "auth": "none",
              "from_address": SENDER, "timeout": 5, "ehlo_name": "client.test", **extra}
    return ResolvedProfile(name, values, {}, [name])


def lmtp_profile(server: PipeServer, name: str = "store") -> ResolvedProfile:
    values = {"type": "lmtp", "host": "127.0.0.1", "port": server.port, "from_address": SENDER, "timeout": 5}
    return ResolvedProfile(name, values, {}, [name])


def make_run(box, profiles, *, policy: FlushPolicy | None = None, stop=None, **options) -> FlushRun:
    """A flush run; `profiles`: one profile (the default) or {name: profile} (first: default)."""
    if isinstance(profiles, ResolvedProfile):
        profiles = {profiles.name: profiles}
    default = next(iter(profiles))
    return FlushRun(box, policy=policy or FlushPolicy(retention_days=0),
                    resolve=lambda name: profiles[name or default], open_transport=lambda p: open_transport(p, None),
                    options=FlushOptions(**options), stop=stop)


def fill(box, n: int, profile: str | None = None, start: int = 0) -> list[tuple[int, bytes]]:
    out = []
    for k in range(start, start + n):
        raw = message(k)
        out.append((box.enqueue(raw, SENDER, [RCPT], profile), raw))
    return out


def committed_ids(db: Path) -> set[int]:
    """The messages whose result is committed, read with a connection of our own: a final state,
    or a row in the results journal (the flush's successes before they are folded in)."""
    with sqlite3.connect(db, timeout=5) as conn:
        return {i for (i,) in conn.execute(
            "SELECT id FROM messages WHERE state IN ('sent','failed','deferred','expired')")} | journaled_ids(db)


# --- 1. one round trip a message -----------------------------------------------------------
def test_a_flush_announces_each_next_message_after_the_data(tmp_path):
    with PipeServer() as srv:
        box = Outbox(tmp_path / "o.sqlite3")
        queued = fill(box, 5)
        report = make_run(box, smtp_profile(srv)).run()
        srv.wait_idle()
    assert (report.sent, report.deferred, report.failed) == (5, 0, 0)
    assert srv.bodies == [raw for _, raw in queued]  # each once, in order, exactly its content
    # the last has no next message
    assert srv.announced() == [True, True, True, True, False]
    assert srv.connections == 1 and srv.quits == [1] and srv.aborted == []
    assert srv.verbs().count("MAIL") == 5 and "RSET" not in srv.verbs()
    assert all(box.get(i).state == "sent" and box.get(i).last_reply.startswith("250 2.0.0 Ok: queued as Q")
               for i, _ in queued)
    assert [box.get(i).last_reply for i, _ in queued] == [f"250 2.0.0 Ok: queued as Q{k}" for k in range(5)]
    box.close()


def test_without_pipelining_nothing_is_announced(tmp_path):
    with PipeServer(pipelining=False) as srv:
        box = Outbox(tmp_path / "o.sqlite3")
        queued = fill(box, 5)
        report = make_run(box, smtp_profile(srv)).run()
        srv.wait_idle()
    assert report.sent == 5
    assert srv.bodies == [raw for _, raw in queued]
    # each MAIL FROM only after the reply to the previous dot (the server waited WAIT for it)
    assert srv.announced() == [False] * 5
    assert [d["next"] for d in srv.dots] == [None] * 5
    assert all(box.get(i).state == "sent" for i, _ in queued)
    box.close()


# --- 2. the crash guarantee ----------------------------------------------------------------
def test_each_result_is_committed_before_the_next_data_with_announcing(tmp_path):
    path = tmp_path / "o.sqlite3"
    with PipeServer(at_data=lambda n: committed_ids(path)) as srv:
        box = Outbox(path)
        queued = fill(box, 5)
        report = make_run(box, smtp_profile(srv)).run()
        srv.wait_idle()
    assert report.sent == 5 and srv.announced()[1:] == [True, True, True, False]
    ids = [i for i, _ in queued]
    # at the first line of message k's data: exactly the k before it committed
    assert srv.at_data_seen == [set(ids[:k]) for k in range(5)]
    assert srv.bodies == [raw for _, raw in queued]
    box.close()


# --- 3. data refused with the next envelope on the wire -----------------------------------
def test_a_refused_data_with_the_next_envelope_announced_sends_no_rset(tmp_path):
    refusal = "554 5.7.1 Message refused by policy"
    with PipeServer(dot_replies={1: refusal}) as srv:
        box = Outbox(tmp_path / "o.sqlite3")
        queued = fill(box, 5)
        report = make_run(box, smtp_profile(srv)).run()
        srv.wait_idle()
    assert (report.sent, report.failed, report.deferred) == (4, 1, 0)
    ids = [i for i, _ in queued]
    failed = box.get(ids[1])
    assert failed.state == "failed" and refusal in failed.last_reply, failed.last_reply
    assert failed.failed_recipients and refusal in failed.failed_recipients[RCPT]
    assert [box.get(i).state for i in ids] == ["sent", "failed", "sent", "sent", "sent"]
    assert srv.announced()[1] is True  # message 3's envelope was on the wire when message 2 was refused
    # message 2's data was received (and refused); the others exactly as queued, once each
    assert srv.bodies == [raw for _, raw in queued]
    assert not any(line.strip().upper() == b"RSET" for body in srv.bodies for line in body.split(b"\r\n"))
    assert "RSET" not in srv.verbs()  # none needed after the reply to the final dot
    assert srv.connections == 1 and srv.aborted == []
    box.close()


@pytest.mark.parametrize("reply, outcome", [("451 4.7.1 Try again later", "deferred"),
                                             ("421 4.4.2 Closing connection", "deferred")])
def test_a_4xx_data_reply_with_the_next_envelope_announced(tmp_path, reply, outcome):
    with PipeServer(dot_replies={1: reply}) as srv:
        box = Outbox(tmp_path / "o.sqlite3")
        queued = fill(box, 4)
        report = make_run(box, smtp_profile(srv)).run()
        srv.wait_idle()
    ids = [i for i, _ in queued]
    assert (report.sent, report.deferred) == (3, 1)
    assert [box.get(i).state for i in ids] == ["sent", outcome, "sent", "sent"]
    assert reply in box.get(ids[1]).last_reply
    assert srv.announced()[1] is True and srv.bodies == [raw for _, raw in queued]
    assert "RSET" not in srv.verbs()
    if reply.startswith("421"):  # the server closed: the announced message went again on a new connection
        assert srv.connections == 2 and srv.verbs().count("MAIL") == 4  # the server never read the announced one
    else:
        assert srv.connections == 1 and srv.verbs().count("MAIL") == 4 and srv.aborted == []


def test_an_announced_message_refused_at_rcpt_fails_alone(tmp_path):
    with PipeServer(rcpt_replies={"nobody@example.org": "550 5.1.1 No such user"}) as srv:
        box = Outbox(tmp_path / "o.sqlite3")
        raws = [message(0), message(1), message(2, "nobody@example.org"), message(3), message(4)]
        ids = [box.enqueue(raw, SENDER, ["nobody@example.org" if k == 2 else RCPT]) for k, raw in enumerate(raws)]
        report = make_run(box, smtp_profile(srv)).run()
        srv.wait_idle()
    assert (report.sent, report.failed) == (4, 1)
    assert [box.get(i).state for i in ids] == ["sent", "sent", "failed", "sent", "sent"]
    assert "550 5.1.1 No such user" in box.get(ids[2]).last_reply
    # message 3's envelope was announced after message 2's data and refused: no data for it
    assert srv.bodies == [raws[k] for k in (0, 1, 3, 4)]
    assert srv.announced()[1] is True and srv.connections == 1 and srv.aborted == []
    assert srv.quits == [1]


def test_a_result_that_cannot_be_committed_sends_none_of_the_announced_data(tmp_path):
    path = tmp_path / "o.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5)

    def lock_after_third(index: int) -> None:
        if index == 2:  # message 3's result will have to wait: the flush commits it before message 4's data
            holder.execute("BEGIN IMMEDIATE")

    block_side_files(path)  # the result must go to the locked database
    box = Outbox(path, timeout=0.3)
    queued = fill(box, 5)
    with PipeServer(on_dot=lock_after_third) as srv:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            make_run(box, smtp_profile(srv)).run()
        srv.wait_idle()
        holder.execute("ROLLBACK")
        holder.close()
    ids = [i for i, _ in queued]
    assert srv.announced()[2] is True  # message 4's envelope followed message 3's data
    assert srv.bodies == [raw for _, raw in queued[:3]]  # none of message 4's data
    assert srv.quits == [] and len(srv.aborted) == 1 and srv.aborted[0][2] == []
    states = [box.get(i).state for i in ids]
    assert states[:2] == ["sent", "sent"] and states[2] == "sending"  # the one that may go out twice
    assert set(states[3:]) <= {"queued", "sending"}  # given back, or (the lock still held) once the lease ends
    box.clock = lambda: time.time() + 3600  # the dead flush's lease runs out
    with PipeServer() as again:
        report = make_run(box, smtp_profile(again)).run()
        again.wait_idle()
    assert report.sent == 3 and again.bodies == [raw for _, raw in queued[2:]]  # message 3 again, then 4 and 5
    assert all(box.get(i).state == "sent" for i in ids)
    box.close()


# --- 4. a stop after an announce -----------------------------------------------------------
def test_a_stop_after_an_announce_drops_the_connection_and_gives_the_message_back(tmp_path):
    holder: dict[str, FlushRun] = {}
    with PipeServer() as srv:
        box = Outbox(tmp_path / "o.sqlite3")
        queued = fill(box, 5)
        # true right after message 2's result
        run = holder["run"] = make_run(box, smtp_profile(srv), stop=lambda: holder["run"].report.sent >= 2)
        report = run.run()
        srv.wait_idle()
    ids = [i for i, _ in queued]
    assert report.stopped and report.sent == 2
    assert srv.announced()[-1] is True  # message 3's envelope followed message 2's dot
    assert len(srv.dots) == 2 and srv.bodies == [queued[0][1], queued[1][1]]  # message 3: no data, no final dot
    assert srv.verbs().count("MAIL") == 3
    assert srv.quits == []  # dropped, not QUIT: the server discards the transaction
    assert len(srv.aborted) == 1 and srv.aborted[0][1] in ("envelope", "data")
    assert srv.aborted[0][2] == []  # not one line of data for the announced transaction (a QUIT would be one)
    assert [box.get(i).state for i in ids[:2]] == ["sent", "sent"]
    third = box.get(ids[2])
    assert (third.state, third.attempts, third.last_reply) == ("queued", 0, None)
    assert all(box.get(i).state == "queued" for i in ids[3:])
    box.close()


def test_close_after_an_announce_drops_and_another_message_reconnects():
    with PipeServer() as srv:
        t = SmtpTransport(smtp_profile(srv), None)
        t.open()
        r = t.send(message(0), SENDER, [RCPT], then=(message(1), SENDER, [RCPT]))
        assert r.reply == "250 2.0.0 Ok: queued as Q0"
        # not the announced message: the announced transaction cannot be taken back, so a new connection
        r = t.send(message(2), SENDER, ["other@example.org"], then=(message(3), SENDER, [RCPT]))
        assert r.reply == "250 2.0.0 Ok: queued as Q1"
        t.close()  # message 3 announced: dropped, no QUIT
        srv.wait_idle()
    assert srv.bodies == [message(0), message(2)]
    assert srv.announced() == [True, True]
    assert srv.connections == 2 and srv.quits == []
    assert sorted(n for n, _, _ in srv.aborted) == [1, 2]
    assert [lines for _, _, lines in srv.aborted] == [[], []]  # no data, no QUIT taken as data


# --- 5. where nothing may be announced ----------------------------------------------------
@pytest.mark.parametrize("where", ["profile", "settings"])
def test_a_rate_limit_announces_nothing(tmp_path, where):
    with PipeServer() as srv:
        box = Outbox(tmp_path / "o.sqlite3")
        queued = fill(box, 4)
        if where == "profile":
            run = make_run(box, smtp_profile(srv, rate_limit_per_minute=6000))
        else:
            run = make_run(box, smtp_profile(srv), policy=FlushPolicy(retention_days=0, rate_limit_per_minute=6000))
        report = run.run()
        srv.wait_idle()
    assert report.sent == 4 and srv.bodies == [raw for _, raw in queued]
    assert srv.announced() == [False] * 4
    box.close()


def test_several_connections_each_announce_their_own_next(tmp_path):
    # each lane takes its next message before sending the current one (when one is claimed
    # already) and announces it on its own connection; the last of each connection is not
    with PipeServer() as srv:
        box = Outbox(tmp_path / "o.sqlite3")
        queued = fill(box, 12)
        report = make_run(box, smtp_profile(srv, max_connections=2), connections=2).run()
        srv.wait_idle()
    assert report.sent == 12 and srv.connections == 2
    assert sorted(srv.bodies) == sorted(raw for _, raw in queued)  # each exactly once
    announced = srv.announced()
    assert announced.count(False) >= 2 and announced.count(True) >= 1
    assert srv.aborted == [] and len(srv.quits) == 2  # both connections ended with QUIT, none dropped
    assert all(box.get(i).state == "sent" for i, _ in queued)
    box.close()


def test_nothing_is_announced_across_profiles(tmp_path):
    with PipeServer() as a, PipeServer() as b:
        box = Outbox(tmp_path / "o.sqlite3")
        # one claim: a0 a1 a2 b3 b4 b5 a6
        order = [("a", 0), ("a", 1), ("a", 2), ("b", 3), ("b", 4), ("b", 5), ("a", 6)]
        ids = {k: box.enqueue(message(k), SENDER, [RCPT], p) for p, k in order}
        report = make_run(box, {"a": smtp_profile(a, "a"), "b": smtp_profile(b, "b")}).run()
        a.wait_idle()
        b.wait_idle()
    assert report.sent == 7
    assert a.bodies == [message(k) for k in (0, 1, 2, 6)] and b.bodies == [message(k) for k in (3, 4, 5)]
    # a0 announces a1, a1 announces a2; a2's next is b3,
    # another session: not announced; b4 announces b5; b5's next is a6
    assert a.announced()[1:] == [True, False, False]
    assert b.announced()[1:] == [True, False]
    assert a.aborted == [] and b.aborted == [] and a.quits == [1] and b.quits == [1]
    assert all(box.get(i).state == "sent" for i in ids.values())
    box.close()


def test_limit_and_claim_ends_are_not_announced_across(tmp_path):
    with PipeServer() as srv:
        box = Outbox(tmp_path / "o.sqlite3")
        queued = fill(box, 9)
        report = make_run(box, smtp_profile(srv), limit=4).run()
        srv.wait_idle()
        assert report.sent == 4 and srv.announced()[1:] == [True, True, False]  # the 4th is the last --limit allows
        assert srv.verbs().count("MAIL") == 4 and srv.quits == [1] and srv.aborted == []
        report = make_run(box, smtp_profile(srv), claim_size=3).run()  # claims of 3: 5 6 7 | 8 9
        srv.wait_idle()
    assert report.sent == 5 and srv.announced()[5:] == [True, False, True, False]
    assert srv.bodies == [raw for _, raw in queued]
    assert all(box.get(i).state == "sent" for i, _ in queued)
    box.close()


def test_a_non_ascii_next_message_is_not_announced(tmp_path):
    utf8 = "From: app@example.com\r\nTo: user@example.org\r\nSubject: caf\u00e9\r\nMessage-ID: <u@test.example>\r\n\r\nna\u00efve\r\n"
    with PipeServer() as srv:
        box = Outbox(tmp_path / "o.sqlite3")
        box.enqueue(message(0), SENDER, [RCPT])
        box.enqueue(utf8.encode(), SENDER, [RCPT])
        box.enqueue(message(2), SENDER, [RCPT])
        report = make_run(box, smtp_profile(srv)).run()
        srv.wait_idle()
    assert report.sent == 3
    assert srv.bodies == [message(0), utf8.encode(), message(2)]
    assert srv.announced() == [False, True, False]  # the 8-bit one goes its usual way; it announces the next
    mails = [line for _, line in srv.commands if line.upper().startswith("MAIL FROM")]
    assert "BODY=8BITMIME" in mails[1]
    box.close()


# --- 6. the transcript ---------------------------------------------------------------------
def test_the_transcript_shows_the_announced_commands_as_lines_after_the_data():
    recorder = TranscriptRecorder()
    with PipeServer() as srv:
        t = SmtpTransport(smtp_profile(srv), None, recorder=recorder)
        t.open()
        t.send(message(0), SENDER, [RCPT], then=(message(1), SENDER, ["second@example.org"]))
        t.send(message(1), SENDER, ["second@example.org"])
        t.close()
        srv.wait_idle()
    assert srv.bodies == [message(0), message(1)] and srv.announced() == [True, False] and srv.quits == [1]
    client = [line for d, line, _ in recorder.lines if d == "C"]
    assert all("\r" not in line and "\n" not in line for line in client)
    first_data = client.index("Subject: pipeline 0")
    dot = client.index(".", first_data)
    body = [line[1:] if line.startswith(".") else line for line in client[client.index("DATA") + 1:dot]]
    assert "\r\n".join(body) + "\r\n" == message(0).decode()  # the data, line by line (dot-stuffed as sent)
    size = len(message(1))
    assert client[dot + 1:dot + 4] == [f"MAIL FROM:<{SENDER}> SIZE={size}", "RCPT TO:<second@example.org>", "DATA"]
    assert client[dot + 4] == "From: app@example.com"  # message 1's data next: its envelope is not written twice
    assert sum(1 for line in client if line.startswith(f"MAIL FROM:<{SENDER}>")) == 2
    assert client[-1].upper() == "QUIT"


# --- 7. LMTP -------------------------------------------------------------------------------
def test_an_lmtp_flush_announces_nothing(tmp_path):
    with PipeServer(lmtp=True) as srv:
        box = Outbox(tmp_path / "o.sqlite3")
        queued = []
        for k in range(3):
            raw = message(k)
            queued.append((box.enqueue(raw, SENDER, [RCPT, "second@example.org"]), raw))
        report = make_run(box, lmtp_profile(srv)).run()
        srv.wait_idle()
    assert report.sent == 3
    assert srv.verbs()[0] == "LHLO" and srv.verbs().count("MAIL") == 3
    assert srv.bodies == [raw for _, raw in queued]
    assert srv.announced() == [False, False, False]
    assert all(box.get(i).state == "sent" for i, _ in queued)
    box.close()


def test_an_lmtp_transport_ignores_then():
    with PipeServer(lmtp=True) as srv:
        t = LmtpTransport(lmtp_profile(srv), None)
        t.open()
        assert t.announces_next is False
        t.send(message(0), SENDER, [RCPT], then=(message(1), SENDER, [RCPT]))
        t.send(message(1), SENDER, [RCPT])
        t.close()
        srv.wait_idle()
    assert srv.bodies == [message(0), message(1)] and srv.announced() == [False, False] and srv.quits == [1]


# --- a connection's first message announces the second too ---------------------------------
def test_the_first_message_of_a_connection_announces_the_second(tmp_path):
    with PipeServer() as srv:
        box = Outbox(tmp_path / "o.sqlite3")
        fill(box, 5)
        report = make_run(box, smtp_profile(srv)).run()
        srv.wait_idle()
    assert report.sent == 5
    assert srv.announced() == [True, True, True, True, False]  # 4 of 5: one round trip a message
    box.close()


def test_a_next_message_that_will_expire_untried_is_not_announced(tmp_path):
    now = [time.time() - 3 * 86400]  # queued three days ago; max_retry_age is two
    box = Outbox(tmp_path / "o.sqlite3", clock=lambda: now[0])
    ids = [box.enqueue(message(k, "later@example.org" if k == 3 else RCPT), SENDER,
                       ["later@example.org" if k == 3 else RCPT]) for k in range(4)]
    with PipeServer(rcpt_replies={"later@example.org": "451 4.3.0 Try again later"}) as first:
        make_run(box, smtp_profile(first), ids=[ids[3]]).run()  # message 4 deferred then
        first.wait_idle()
    assert box.get(ids[3]).state == "deferred" and box.get(ids[3]).attempts == 1
    now[0] = time.time()
    with PipeServer() as srv:
        report = make_run(box, smtp_profile(srv)).run()  # order: 1 2 3, then 4 (retried later, due now)
        srv.wait_idle()
    assert report.sent == 3 and report.expired == 1
    assert box.get(ids[3]).state == "expired"
    assert srv.bodies == [message(k) for k in range(3)]
    assert srv.announced()[1:] == [True, False]  # message 3 did not announce the one that expired untried
    assert srv.quits == [1] and srv.aborted == [] and srv.verbs().count("MAIL") == 3
    box.close()


def test_an_announced_message_with_a_bcc_header_goes_on_the_same_connection(tmp_path):
    with_bcc = (f"From: {SENDER}\r\nTo: {RCPT}\r\nBcc: hidden@example.org\r\nSubject: bcc\r\n"
                "Message-ID: <bcc@test.example>\r\n\r\nbody\r\n").encode()
    without = with_bcc.replace(b"Bcc: hidden@example.org\r\n", b"")
    with PipeServer() as srv:
        t = SmtpTransport(smtp_profile(srv), None)
        t.open()
        t.send(message(0), SENDER, [RCPT], then=(with_bcc, SENDER, [RCPT, "hidden@example.org"]))
        t.send(with_bcc, SENDER, [RCPT, "hidden@example.org"])
        t.close()
        srv.wait_idle()
    assert srv.bodies == [message(0), without]  # the announced SIZE matched the message without its Bcc
    assert srv.announced() == [True, False] and srv.connections == 1 and srv.quits == [1]
    mails = [line for _, line in srv.commands if line.startswith("MAIL FROM")]
    assert mails[1] == f"MAIL FROM:<{SENDER}> SIZE={len(without)}"


@pytest.mark.parametrize("pipelining", [
    False,
    True,
])
def test_a_server_that_hangs_up_after_refusing_the_data_costs_the_next_message_nothing(tmp_path, pipelining):
    refusal = "554 5.7.1 Message rejected as spam"
    with PipeServer(pipelining=pipelining, dot_replies={1: refusal}, close_after_refusal=True) as srv:
        box = Outbox(tmp_path / "o.sqlite3")
        queued = fill(box, 4)
        report = make_run(box, smtp_profile(srv)).run()
        srv.wait_idle()
    ids = [i for i, _ in queued]
    assert box.get(ids[1]).state == "failed" and refusal in box.get(ids[1]).last_reply
    assert srv.bodies[:2] == [queued[0][1], queued[1][1]]
    # message 3 never reached the server on the first connection: it goes on a second one, now
    assert [box.get(i).state for i in ids] == ["sent", "failed", "sent", "sent"], box.get(ids[2]).last_reply
    assert (report.sent, report.failed, report.deferred) == (3, 1, 0) and srv.connections == 2
    box.close()


# --- 7b. LMTP against Dovecot, through a relay that sees the wire --------------------------
class WireRelay:
    """A TCP relay on 127.0.0.1 to (host, port) that logs what goes each way, in order:
    ("C", bytes) from the client, ("S", bytes) from the server."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.events: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.closing = False
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> "WireRelay":
        self.acceptor.start()
        return self

    def __exit__(self, *exc) -> None:
        self.closing = True
        self.acceptor.join(5)
        self.sock.close()
        for t in self.threads:
            t.join(5)

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.sock.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            client.settimeout(None)
            server = socket.create_connection(self.target, timeout=5)
            server.settimeout(None)
            for src, dst, tag in ((client, server, "C"), (server, client, "S")):
                t = threading.Thread(target=self._pump, args=(src, dst, tag), daemon=True)
                self.threads.append(t)
                t.start()

    def _pump(self, src: socket.socket, dst: socket.socket, tag: str) -> None:
        try:
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                with self.lock:
                    self.events.append((tag, chunk))
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def client_bursts(self) -> list[bytes]:
        """What the client sent between two server replies."""
        bursts: list[bytes] = []
        last = None
        for tag, chunk in self.events:
            if tag == "C":
                if last == "C":
                    bursts[-1] += chunk
                else:
                    bursts.append(chunk)
            last = tag
        return bursts


@pytest.mark.integration
def test_an_lmtp_flush_to_dovecot_announces_nothing(tmp_path, dovecot):  # noqa: F811 - the fixture
    subjects = [f"pipeline-next-{k}-{time.time_ns()}" for k in range(3)]
    with WireRelay(dovecot.host, dovecot.port) as relay:
        box = Outbox(tmp_path / "o.sqlite3")
        ids = [box.enqueue((f"From: {SENDER}\r\nTo: {BOB}\r\nSubject: {s}\r\nMessage-ID: <{s}@test.example>\r\n\r\n"
                            ".a line with a leading dot\r\nbody\r\n").encode(), SENDER, [BOB]) for s in subjects]
        profile = ResolvedProfile("store", {"type": "lmtp", "host": "127.0.0.1", "port": relay.port,
                                            "from_address": SENDER, "timeout": 10}, {}, ["store"])
        report = make_run(box, profile).run()
    assert report.sent == 3 and all(box.get(i).state == "sent" for i in ids)
    bursts = relay.client_bursts()
    assert any(b"PIPELINING" in chunk.upper() for tag, chunk in relay.events if tag == "S")  # Dovecot offers it
    ends = [b for b in bursts if b.endswith(b"\r\n.\r\n") or b"\r\n.\r\n" in b]
    assert len(ends) == 3
    # each final dot is the end of what the client sent before Dovecot's replies: no MAIL FROM after it
    assert all(b"MAIL FROM" not in b.split(b"\r\n.\r\n", 1)[1].upper() for b in ends), ends
    assert sum(b.upper().count(b"MAIL FROM") for b in bursts) == 3
    delivered = dovecot.delivered(BOB)
    for s in subjects:
        assert sum(1 for m in delivered if f"Subject: {s}".encode() in m) == 1
    box.close()


def test_queue_flush_vv_shows_the_announced_commands_after_the_dot(cli, isolated_env, tmp_path):
    from smtpserver import write_profiles

    with PipeServer() as srv:
        write_profiles(isolated_env, {"relay": dict(smtp_profile(srv).values)}, default="relay")
        outbox = tmp_path / "o.sqlite3"
        with Outbox(outbox) as box:
            queued = fill(box, 3)
        r = cli("-vv", "queue", "flush", "--outbox", str(outbox))
        srv.wait_idle()
    assert r.exit_code == 0, r.output
    assert srv.bodies == [raw for _, raw in queued] and srv.announced()[1:] == [True, False]
    talk = [line[len("mailctl: "):] for line in r.stderr.splitlines() if line.startswith(("mailctl: C:", "mailctl: S:"))]
    dots = [k for k, t in enumerate(talk) if t == "C: ."]
    assert len(dots) == 3
    size = len(queued[2][1])
    # message 2's dot, then message 3's envelope, each a line of its own, before the server's replies
    assert talk[dots[1] + 1:dots[1] + 5] == [f"C: MAIL FROM:<{SENDER}> SIZE={size}", f"C: RCPT TO:<{RCPT}>", "C: DATA",
                                            "S: 250 2.0.0 Ok: queued as Q1"]
    assert sum(1 for t in talk if t.startswith(f"C: MAIL FROM:<{SENDER}>")) == 3


def test_each_result_is_committed_before_the_next_data_on_both_backends(outbox_factory):
    box = outbox_factory()
    checker = outbox_factory()  # another handle: what a crash would leave
    check_lock = threading.Lock()
    sqlite = outbox_factory.backend == "sqlite"

    def committed(index: int) -> set[int]:
        with check_lock:
            done = {int(i) for (i,) in checker.conn.execute(
                "SELECT id FROM messages WHERE state IN ('sent','failed','deferred','expired')")}
            return done | journaled_ids(checker.path) if sqlite else done

    queued = fill(box, 5)
    with PipeServer(at_data=committed) as srv:
        report = make_run(box, smtp_profile(srv)).run()
        srv.wait_idle()
    ids = [i for i, _ in queued]
    assert report.sent == 5 and srv.announced()[1:] == [True, True, True, False]
    assert srv.at_data_seen == [set(ids[:k]) for k in range(5)]
    assert srv.bodies == [raw for _, raw in queued]
    assert all(box.get(i).state == "sent" for i in ids)
    checker.close()
    box.close()
