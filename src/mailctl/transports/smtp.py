"""The SMTP transport (smtplib underneath).

One connection serves many send() calls. open() walks the stages that diagnostics also time
one by one: resolve -> connect -> (implicit TLS) -> banner -> EHLO -> STARTTLS -> EHLO -> AUTH.
Rules: certificates are verified (system store plus ca_file, or a SHA-256 pin), TLS >= 1.2; a
configured STARTTLS that is not offered is an error, never a plaintext fallback; AUTH is never
sent unencrypted unless allow_insecure_auth. When the primary server cannot be reached (DNS,
connect, TLS handshake, no greeting) the alternate server is tried.

Every failure is a MailctlError carrying `stage`, `server` and a hint from the knowledge base
(mailctl.knowledge.smtp), with the low-level exception as __cause__.

Hostile or broken servers: every reply is bounded (MAX_REPLY_LINES lines, MAX_REPLY_BYTES bytes,
MAX_LINE_BYTES a line) and has a deadline (`timeout` for the whole stage, or for each reply of
the message stages) that a server sending a byte at a time cannot stretch. Every secret the
transport sends is masked (transports.base.Redactor) in any server text it turns into an error,
a stage detail or a SendResult."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import errno
import functools
import hmac
import re
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from mailctl.errors import (
    AuthError,
    ConfigError,
    DeliveryError,
    ExitCode,
    MailctlError,
    ProtocolError,
    UnavailableError,
)
from mailctl.addresses import envelope_address, needs_smtputf8
from mailctl.message import strip_bcc
from mailctl.oauth import oauthbearer_string, xoauth2_string
from mailctl.profiles.failover import active_for, address as server_address
from mailctl.net.tls import (
    OLD_PROTOCOL_REASONS,
    fingerprint_of,
    format_fingerprint,
    normalise_fingerprint,
    socket_context,
    version_probe_context,
)
from mailctl.transports.base import (
    Failover,
    Reached,
    Redactor,
    SendResult,
    Stage,
    StageInfo,
    TranscriptRecorder,
    drive,
    run_untimed,
)

# Exit codes per stage when the knowledge base has nothing more specific (docs/smtp.md).
_STAGE_5XX_EXIT = {
    "banner": ExitCode.UNAVAILABLE,
    "ehlo": ExitCode.PROTOCOL,
    "ehlo_tls": ExitCode.PROTOCOL,
    "starttls": ExitCode.PROTOCOL,
    "auth": ExitCode.NOPERM,
    "mail": ExitCode.PROBLEMS,
    "rcpt": ExitCode.PROBLEMS,
    "data": ExitCode.PROBLEMS,
}
_QUEUE_ID_RES = (
    re.compile(r"queued as ([A-Za-z0-9._:@+-]+)", re.I),
    re.compile(r"\bid=([A-Za-z0-9._:@+-]+)", re.I),
    re.compile(r"OK\s+\d+\s+(\S+)\s+-\s+gsmtp", re.I),  # Gmail: 250 2.0.0 OK  1700000000 x1-2.3 - gsmtp
    re.compile(r"<([^<>\s]+@[^<>\s]+)>"),  # Microsoft 365: 250 2.0.0 OK <msgid@host> [Hostname=...]
)


# what a stage's reply is called in messages ("sent more than 100 lines in its EHLO reply")
_REPLY_NAMES = {
    "banner": "greeting", "ehlo": "EHLO reply", "ehlo_tls": "EHLO reply", "starttls": "STARTTLS reply",
    "auth": "AUTH reply", "mail": "MAIL FROM reply", "rcpt": "RCPT TO reply", "data": "DATA reply", "quit": "QUIT reply",
}
# what a stage's command is called in messages ("during EHLO after STARTTLS"); else its name in capitals
_COMMAND_NAMES = {"ehlo_tls": "EHLO after STARTTLS"}

_QUEUE_ID_HINT = re.compile(r"queued as|id=|gsmtp|<", re.I)
_LEADING_DOT = re.compile(rb"(?m)^\.")  # dot-stuffing (RFC 5321 4.5.2), as smtplib's data()
# whether a line after the first begins with a dot: the regex engine scans for the LF faster
# than `b"\n." in raw` does (a third less time on a 1 KB message)
_LINE_DOT = re.compile(rb"\n\.")
# A plain ASCII addr-spec (dot-atom@domain): smtplib.quoteaddr() would give "<addr>" after an
# email.utils.parseaddr() that costs more than the rest of a pipelined envelope.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                            r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*")


_SMTPUTF8_TEXT = ("the address's local part is not ASCII, which needs SMTPUTF8 (RFC 6531), and {server} "
                  "does not offer SMTPUTF8; mailctl did not send it")


def _header_block(raw: bytes) -> bytes:
    """The message's header lines (all of it when there is no empty line)."""
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[:end]


_QUOTED: dict[str, str] = {}  # _quote_address's answers: a flush quotes the same few addresses again and again
_QUOTED_MAX = 1024


def _quote_address(address: str) -> str:
    """<address> for MAIL FROM / RCPT TO, as smtplib.quoteaddr() quotes it."""
    quoted = _QUOTED.get(address)
    if quoted is None:
        quoted = f"<{address}>" if _PLAIN_ADDRESS.fullmatch(address) else smtplib.quoteaddr(address)
        if len(_QUOTED) >= _QUOTED_MAX:  # bounded: many different addresses just quote each time
            _QUOTED.clear()
        _QUOTED[address] = quoted
    return quoted


def _may_hold_queue_id(reply_text: str) -> bool:
    """_QUEUE_ID_HINT.search(): for ASCII text (case folding is ASCII's then), its words
    looked for in the text's lower() at a fraction of the regex's cost."""
    if reply_text.isascii():
        lower = reply_text.lower()
        return "queued as" in lower or "id=" in lower or "gsmtp" in lower or "<" in lower
    return _QUEUE_ID_HINT.search(reply_text) is not None


def queue_id_of(reply_text: str) -> str | None:
    if not reply_text or not _may_hold_queue_id(reply_text):  # one scan on the hot path
        return None
    for pattern in _QUEUE_ID_RES:
        m = pattern.search(reply_text)
        if m:
            return m.group(1)
    return None


def _decode(resp: bytes | str) -> str:
    return resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)


def split_reply(resp: bytes | str) -> tuple[str | None, str]:
    """Reply text -> (enhanced status code or None, text without it; lines joined by a space)."""
    from mailctl.knowledge.smtp import split_enhanced

    lines = _decode(resp).splitlines() or [""]
    enhanced, first = split_enhanced(lines[0])
    rest = []
    for line in lines[1:]:
        e, t = split_enhanced(line)
        rest.append(t if e == enhanced else line.strip())
    return enhanced, " ".join([first] + rest).strip()


def _reply_code(code: bytes) -> int:
    """A reply line's first three bytes as smtplib reads them: int(), -1 when no number;
    remembered in _CODES when written as three digits (a dict look-up is cheaper than int())."""
    try:
        number = int(code)
    except ValueError:
        return -1
    if len(code) == 3 and code.isdigit():
        _CODES[code] = number
    return number


def _pipelined_stage(index: int, count: int) -> str:
    """The stage of the index-th of a pipelined envelope's `count` replies."""
    return "mail" if index == 0 else "data" if index == count - 1 else "rcpt"


def _hint_for(err: BaseException, context: dict[str, Any]):
    from mailctl.knowledge.smtp import explain

    return explain(err, context=context)


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    alternate: bool = False

    @functools.cached_property  # named in every SendResult: worked out once (frozen: never stale)
    def address(self) -> str:
        return server_address(self.host, self.port)


# Bounds on one server reply (docs/smtp.md, "Hostile and broken servers"). A real EHLO reply has
# a dozen or two lines; smtplib's own limit on one line is 8192 bytes.
MAX_REPLY_LINES = 100
MAX_REPLY_BYTES = 64 * 1024
MAX_LINE_BYTES = 8192
# The socket timeout may exceed what is left of a deadline by this much before it is cut down
# (so a reply that comes at once costs no settimeout() call).
_DEADLINE_SLACK = 0.05
# reply codes written as three digits -> int(code), filled as they come (at most 1000)
_CODES: dict[bytes, int] = {}
_RECV_SIZE = 8192  # as much as the buffered reader smtplib reads replies with takes a time
_monotonic = time.monotonic


class ReplyTooLong(smtplib.SMTPServerDisconnected):
    """A reply went past a bound (MAX_REPLY_LINES, MAX_REPLY_BYTES, MAX_LINE_BYTES); the session
    closed the connection. `what` says which ("more than 100 lines"); `lines` holds the reply
    lines read so far (texts without the code, bounded)."""

    def __init__(self, what: str, lines: list[bytes], code: bytes = b""):
        super().__init__(f"the server sent {what} in one reply")
        self.what = what
        self.lines = lines
        self.code = code.decode("ascii", "replace")


class ReplyTimeout(smtplib.SMTPServerDisconnected, TimeoutError):
    """The reply's deadline passed before it was complete; the session closed the connection.
    `received`: bytes of the reply that had come (0: no answer at all); `waited`: seconds
    since the reply (or the stage whose deadline it had) began."""

    def __init__(self, received: int, lines: list[bytes], code: bytes = b"", waited: float = 0.0):
        super().__init__("timed out")
        self.received = received
        self.lines = lines
        self.code = code.decode("ascii", "replace")
        self.waited = waited


class _ReplyBuffer:
    """What the session has received and not parsed yet: one buffer that each recv appends
    to, so that replies that came together (a pipelined envelope's, after the reply to the
    data) are taken from it without a call per line. `received` counts the bytes read for
    the reply being read (ReplyTimeout says whether anything came). It stands where
    smtplib keeps its file (session.file): None makes a new one, close() drops the data."""

    __slots__ = ("data", "pos", "received")

    def __init__(self) -> None:
        self.data = b""
        self.pos = 0  # where the unparsed part of `data` begins
        self.received = 0

    def close(self) -> None:
        self.data = b""
        self.pos = 0


class SmtpSession(smtplib.SMTP):
    """smtplib.SMTP whose socket we create (resolve, proxy, TCP_NODELAY, implicit TLS) and
    whose replies are bounded and have a deadline (getreply); the rest of the hot path (send,
    the commands) is smtplib's own. RecordingSmtpSession adds the transcript."""

    recorder: TranscriptRecorder | None = None
    # The deadline (time.monotonic()) of the stage in progress, set by the transport for the
    # connection stages; None: each reply gets `timeout` seconds from when it is awaited.
    deadline: float | None = None
    reply_deadline = 0.0  # the deadline of the reply being read
    read_timeout = 0.0  # the socket's timeout as last set

    def __init__(self, *, local_hostname: str, timeout: float, recorder: TranscriptRecorder | None = None):
        self.in_auth = False
        super().__init__(host="", port=0, local_hostname=local_hostname, timeout=timeout)

    def attach(self, sock: socket.socket, host: str) -> None:
        self.sock = sock
        self.file = None
        self._host = host
        self.read_timeout = sock.gettimeout() or 0.0

    def set_timeout(self, seconds: float) -> None:
        """The socket timeout for what comes next (a TLS handshake, the next command)."""
        if self.sock is not None:
            self.sock.settimeout(seconds)
        self.read_timeout = seconds

    # Work to do while the server prepares its next reply (see SmtpTransport.send): run once,
    # after the command went out and before the reply is read.
    before_next_reply: Callable[[], None] | None = None

    def getreply(self):
        """smtplib's getreply with bounds: at most MAX_REPLY_LINES lines of MAX_LINE_BYTES and
        MAX_REPLY_BYTES in all (ReplyTooLong), complete by the deadline (ReplyTimeout). A
        one-line reply already received (each of a pipelined envelope's) is taken from the
        buffer at once: no clock read, no recv."""
        hook = self.before_next_reply
        if hook is not None:
            self.before_next_reply = None
            hook()
        buf = self.file
        if buf is None:
            buf = self.file = _ReplyBuffer()
        data, pos = buf.data, buf.pos
        started = pos == len(data)
        if started:  # nothing received ahead (the reply to the data, say)
            data = self._receive_first(buf)
            pos = 0
        end = data.find(b"\n", pos, pos + MAX_LINE_BYTES)
        if end >= 0:
            line = data[pos:end + 1]
            if line[3:4] != b"-":  # the last line of its reply (the loop below would stop there too)
                buf.pos = end + 1
                code = line[:3]
                errcode = _CODES.get(code)
                if errcode is None:
                    errcode = _reply_code(code)
                if self.read_timeout != self.timeout:
                    self.set_timeout(self.timeout)
                return errcode, line[4:].strip(b" \t\r\n")
        return self._read_reply(buf, started)

    def getreplies(self, count: int, replies: list[tuple[int, bytes]]) -> None:
        """`count` replies, in order, into `replies`; a 421 ends them (the server closes the
        channel: nothing more will come). As getreply() for each, but the one-line replies
        already received (a pipelined envelope's come together) are taken in one go; a
        recorded session goes reply by reply (the transcript shows each)."""
        buf = self.file
        if buf is not None and self.before_next_reply is None and self.recorder is None:
            data, pos = buf.data, buf.pos
            taken = 0
            while taken < count:
                end = data.find(b"\n", pos, pos + MAX_LINE_BYTES)
                if end < 0:
                    break
                line = data[pos:end + 1]
                if line[3:4] == b"-":  # a reply of several lines: getreply()
                    break
                pos = end + 1
                code = line[:3]
                errcode = _CODES.get(code)
                if errcode is None:
                    errcode = _reply_code(code)
                replies.append((errcode, line[4:].strip(b" \t\r\n")))
                taken += 1
                if errcode == 421:
                    count = taken
            if taken:
                buf.pos = pos
                if self.read_timeout != self.timeout:
                    self.set_timeout(self.timeout)
                if count == taken:
                    return
                count -= taken
        getreply = self.getreply
        for _ in range(count):
            reply = getreply()
            replies.append(reply)
            if reply[0] == 421:
                break

    def _receive_first(self, buf: _ReplyBuffer) -> bytes:
        """The first bytes of a reply when none had come (into `buf`, alone), its deadline
        set; no bytes at all: the session closed, SMTPServerDisconnected or ReplyTimeout."""
        sock = self.sock
        try:
            if self.deadline is None and sock is not None and self.read_timeout == self.timeout:
                # the reply has all of its `timeout` ahead: its first read needs no cut (_recv)
                self.reply_deadline = _monotonic() + self.timeout
                buf.received = 0
                data = sock.recv(_RECV_SIZE)
                buf.received = len(data)
            else:
                self._start_reply(buf)
                data = self._recv(buf)
        except OSError as exc:
            raise self._read_failed(exc, buf, [], b"") from exc
        if not data:
            self.close()
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        buf.data, buf.pos = data, 0
        return data

    def _start_reply(self, buf: _ReplyBuffer) -> None:
        """The reply's deadline: its stage's, or `timeout` from now."""
        deadline = self.deadline
        self.reply_deadline = deadline if deadline is not None else _monotonic() + self.timeout
        buf.received = 0

    def _read_failed(self, exc: OSError, buf: _ReplyBuffer, resp: list[bytes], code: bytes) -> smtplib.SMTPServerDisconnected:
        """What a failed read of a reply raises, the session closed: ReplyTimeout when the
        deadline passed, else SMTPServerDisconnected."""
        if isinstance(exc, TimeoutError):
            received = buf.received
            # the reply (or its stage) began `timeout` before its deadline: no clock read on the hot path
            waited = _monotonic() - (self.reply_deadline - self.timeout)
            self.close()
            return ReplyTimeout(received, resp, code, waited)
        self.close()
        return smtplib.SMTPServerDisconnected("Connection unexpectedly closed: " + str(exc))

    def _read_reply(self, buf: _ReplyBuffer, started: bool = False) -> tuple[int, bytes]:
        """getreply line by line, receiving as needed (what used to be readline over a
        buffered socket reader, with the same bounds and deadline). started: getreply
        began the reply (its deadline set, its first bytes received)."""
        if not started:
            self._start_reply(buf)
        resp: list[bytes] = []
        size = 0
        code = b""
        while True:
            try:
                line = self._read_line(buf)
            except OSError as exc:
                raise self._read_failed(exc, buf, resp, code) from exc
            if not line:
                self.close()
                raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
            size += len(line)
            if len(line) > MAX_LINE_BYTES or size > MAX_REPLY_BYTES:
                self.close()
                what = f"a line longer than {MAX_LINE_BYTES} bytes" if len(line) > MAX_LINE_BYTES else f"more than {MAX_REPLY_BYTES} bytes"
                raise ReplyTooLong(what, resp, code)
            resp.append(line[4:].strip(b" \t\r\n"))
            code = line[:3]
            try:
                errcode = int(code)
            except ValueError:
                errcode = -1
                break
            if line[3:4] != b"-":
                break
            if len(resp) >= MAX_REPLY_LINES:
                self.close()
                raise ReplyTooLong(f"more than {MAX_REPLY_LINES} lines", resp, code)
        if self.read_timeout != self.timeout:  # cut down for a slow reply: whole again
            self.set_timeout(self.timeout)
        return errcode, b"\n".join(resp)

    def _read_line(self, buf: _ReplyBuffer) -> bytes:
        """The next line with its LF, as readline(MAX_LINE_BYTES + 1) gives it: at most
        MAX_LINE_BYTES + 1 bytes (more: the first that many, without the LF); at the end of
        the stream what is left, b"" when nothing is."""
        limit = MAX_LINE_BYTES + 1
        while True:
            data, pos = buf.data, buf.pos
            end = data.find(b"\n", pos, pos + limit)
            if end >= 0:
                take = end + 1
            elif len(data) - pos >= limit:
                take = pos + limit
            else:
                chunk = self._recv(buf)
                if chunk:
                    buf.data = data[pos:] + chunk
                    buf.pos = 0
                    continue
                take = len(data)
            buf.pos = take
            return data[pos:take]

    def _recv(self, buf: _ReplyBuffer) -> bytes:
        """One recv, the socket timeout first cut down to what is left of the reply's
        deadline, so that a server sending a byte at a time cannot stretch it."""
        sock = self.sock
        if sock is None:
            raise smtplib.SMTPServerDisconnected("please run connect() first")
        left = self.reply_deadline - _monotonic()
        if left < self.read_timeout - _DEADLINE_SLACK:
            if left <= 0:
                raise TimeoutError("timed out")
            sock.settimeout(left)
            self.read_timeout = left
        chunk = sock.recv(_RECV_SIZE)
        buf.received += len(chunk)
        return chunk

    def reset_ehlo(self) -> None:
        self.file = None
        self.helo_resp = None
        self.ehlo_resp = None
        self.esmtp_features = {}
        self.does_esmtp = False

    AUTH_MAX_CHALLENGES = 5  # smtplib's limit: a server that keeps challenging is looping

    def auth(self, mechanism: str, authobject: Callable[..., str | None], *, initial_response_ok: bool = True) -> tuple[int, bytes]:
        """smtplib's auth, but each response is sent UTF-8 encoded, not ASCII: RFC 4616 makes
        PLAIN's authzid/authcid/passwd UTF-8, and LOGIN (no standard) is UTF-8 to Dovecot,
        Cyrus SASL and Exchange. smtplib's own raises UnicodeEncodeError on a password with
        an umlaut. The ASCII XOAUTH2/OAUTHBEARER payloads encode to the same bytes."""
        mechanism = mechanism.upper()
        initial_response = authobject() if initial_response_ok else None
        if initial_response is not None:
            code, resp = self.docmd("AUTH", f"{mechanism} {self._b64_utf8(initial_response)}")
            self._auth_challenge_count = 1
        else:
            code, resp = self.docmd("AUTH", mechanism)
            self._auth_challenge_count = 0
        while code == 334:  # a challenge: answer it, at most AUTH_MAX_CHALLENGES times
            self._auth_challenge_count += 1
            challenge = base64.decodebytes(resp)
            code, resp = self.docmd(self._b64_utf8(authobject(challenge)))
            if self._auth_challenge_count > self.AUTH_MAX_CHALLENGES:
                raise smtplib.SMTPException("Server AUTH mechanism infinite loop")
        if code in (235, 503):
            return code, resp
        raise smtplib.SMTPAuthenticationError(code, resp)

    @staticmethod
    def _b64_utf8(response: str) -> str:
        """An AUTH response as sent: its UTF-8 bytes in base64, on one line."""
        return base64.b64encode(response.encode("utf-8")).decode("ascii")

    def auth_cram_md5(self, challenge: bytes | None = None) -> str | None:
        """smtplib's CRAM-MD5 with the password's UTF-8 bytes as the HMAC key (smtplib's
        takes only ASCII); the user name goes UTF-8 encoded by auth()."""
        if challenge is None:  # CRAM-MD5 has no initial response
            return None
        return self.user + " " + hmac.HMAC(self.password.encode("utf-8"), challenge, "md5").hexdigest()


class RecordingSmtpSession(SmtpSession):
    """A session that records the conversation (test connect/send --transcript)."""

    def __init__(self, *, local_hostname: str, timeout: float, recorder: TranscriptRecorder | None = None):
        super().__init__(local_hostname=local_hostname, timeout=timeout)
        self.recorder = recorder

    def send(self, s):  # noqa: D401 - smtplib hook
        self._record_client(s)
        super().send(s)

    def _record_client(self, s) -> None:
        if isinstance(s, bytes):  # the message body after DATA
            text = s.decode("utf-8", "replace")
            lines = text.split("\r\n")
            if lines and lines[-1] == "":
                lines.pop()
            shown = lines[:40]
            for line in shown:
                self.recorder.add("C", line)
            if len(lines) > len(shown):
                self.recorder.add("*", f"... {len(lines) - len(shown)} more lines of the message ({len(s)} bytes in all)")
            return
        line = s.rstrip("\r\n")
        if self.in_auth:
            words = line.split(" ", 2)
            if len(words) >= 2 and words[0].upper() == "AUTH":
                line = f"AUTH {words[1]}" + (f" {TranscriptRecorder.REDACTED}" if len(words) > 2 else "")
            else:
                line = TranscriptRecorder.REDACTED
        self.recorder.add("C", line)

    def getreply(self):
        try:
            code, msg = super().getreply()
        except (ReplyTooLong, ReplyTimeout) as exc:
            for text in exc.lines[:5]:
                self.recorder.add("S", f"{exc.code}-{_decode(text)}")
            more = f" after {len(exc.lines)} lines" if exc.lines else ""
            if isinstance(exc, ReplyTooLong):
                why = f"more than the bounds allow ({exc.what})"
            else:
                why = f"not complete by the deadline ({exc.received} bytes came)" if exc.received else "no reply by the deadline"
            self.recorder.add("*", f"reply cut off{more}: {why}; connection closed")
            raise
        lines = _decode(msg).split("\n")
        for i, line in enumerate(lines):
            sep = "-" if i < len(lines) - 1 else " "
            self.recorder.add("S", f"{code}{sep}{line}")
        return code, msg


def make_tls_context(profile) -> tuple[ssl.SSLContext, str]:
    """(context, how the peer is verified: 'system', 'ca_file', 'fingerprint', 'none'), from
    the one TLS builder (mailctl.net.tls). A pin is checked right after the handshake."""
    return socket_context(getattr(profile, "values", profile), getattr(profile, "name", ""))


def default_ehlo_name() -> str:
    # smtplib's default is socket.getfqdn(), which can block on reverse DNS for seconds.
    name = socket.gethostname() or "localhost"
    if not re.match(r"^[A-Za-z0-9.-]+$", name):
        name = "localhost"
    return name


def _oauth_token(profile, secrets, *, force_refresh: bool = False) -> str:
    """A bearer token for XOAUTH2 / OAUTHBEARER: a stored static access_token when there is one
    and no refresh is asked for; otherwise from mailctl.oauth (delegated cache, client
    credentials, a service account or a generic OAuth 2.0 server)."""
    from mailctl.oauth import get_access_token

    static = secrets.get(profile, "access_token") if secrets is not None else None
    if static and not force_refresh:
        return static
    return get_access_token(profile, secrets, force_refresh=force_refresh)


# AUTH mechanisms for auth = password, best first; a bearer token (auth = oauth,
# client-credentials, service-account) goes over XOAUTH2, else OAUTHBEARER (RFC 7628)
PASSWORD_MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")
TOKEN_MECHANISMS = ("XOAUTH2", "OAUTHBEARER")


def check_auth_mechanism(name: str, auth: str, field: str = "auth_mechanism") -> str:
    """An AUTH mechanism (upper-cased) that can carry `auth`; ConfigError (78) naming the
    field and the mechanisms that can."""
    mech = name.strip().upper()
    usable = PASSWORD_MECHANISMS if auth == "password" else TOKEN_MECHANISMS
    if mech not in usable:
        raise ConfigError(f"{field}: AUTH {mech} cannot carry auth = {auth}",
                          hint=f"for auth = {auth} use one of: {', '.join(usable)}")
    return mech


class SmtpTransport:
    name = "smtp"
    records_transcript = True  # the constructor takes recorder= (test connect/send --transcript)
    session_class: type[SmtpSession] = SmtpSession  # LMTP: sessions that say LHLO
    recording_session_class: type[SmtpSession] = RecordingSmtpSession
    # Set on the copy that takes a second look at a refused certificate or an old TLS server
    # (it never diagnoses further itself).
    second_look = False
    _fetched_secret: str | None = None  # fetched by the "secret" stage, used once by authenticate()
    secret_source = ""  # where the secret came from ("keyring:corp", "env:corp", "OAuth token")
    _refused: dict[str, Any] | None = None  # what a refused TLS handshake showed (chain, problem, version)
    _client: dict[str, Any] | None = None  # the local address, and the one the server saw (EHLO reply)
    # send(then=...): the next message's MAIL FROM, RCPT TO and DATA may follow this one's
    # end of data in the same write (RFC 2920; Postfix's smtp client does the same); LMTP,
    # whose data gets one reply per recipient, does not
    announces_next = True
    # the envelope sent after the last message's data, its replies not read yet:
    # (sender, recipients, size of the data); None when the wire holds no such thing
    _announced: tuple[str, tuple[str, ...], int] | None = None
    # the last message announced, as given and without its Bcc (strip_bcc once a message)
    _stripped: tuple[bytes, bytes] | None = None

    def __init__(self, profile, secrets, *, recorder: TranscriptRecorder | None = None, **options: Any) -> None:
        self.profile = profile
        self.secrets = secrets
        self.recorder = recorder
        # every secret sent is masked in every server text shown, logged or stored (one
        # Redactor, shared with the transcript)
        self.redactor = recorder.redactor if recorder is not None else Redactor()
        self.options = options
        host = profile.get("host")
        if not host:
            raise ConfigError(
                f"profile {profile.name!r} (smtp): missing required field host",
                hint=f"set it with: mailctl profile edit {profile.name} --host HOST",
            )
        self.security = profile.get("security") or "starttls"
        port = int(profile.get("port") or {"starttls": 587, "tls": 465}.get(self.security, 25))
        self.timeout = float(profile.get("timeout") or 30)
        self.ehlo_name = profile.get("ehlo_name") or default_ehlo_name()
        self.auth_method = profile.get("auth") or ("password" if profile.get("username") else "none")
        # swaks' --auth / msmtp's `auth MECH`: one mechanism, or None for the best one offered
        self.auth_choice = (check_auth_mechanism(profile.get("auth_mechanism"), self.auth_method)
                            if profile.get("auth_mechanism") and self.auth_method != "none" else None)
        # msmtp's source_ip / swaks' --local-interface: bind the client end before connecting
        self.source_address = profile.get("source_address") or None
        # 8BITMIME downgrade (message.seven_bit) of the message being sent: (original, re-encoded)
        self._downgraded: tuple[bytes, bytes] | None = None
        if self.source_address and profile.get("proxy"):
            raise ConfigError(f"profile {profile.name!r}: source_address and proxy do not go together "
                              "(the proxy makes the connection)", hint="drop one of them")
        self.servers = [Server(host, port)]
        alt = profile.get("alternate_host")
        if alt:
            self.servers.append(Server(alt, int(profile.get("alternate_port") or port), True))
        self._tls_ctx: ssl.SSLContext | None = None
        self.tls_mode = ""
        self.session: SmtpSession | None = None
        self.server: Server | None = None
        self.encrypted = False
        self.authenticated_as: str | None = None
        self.auth_mechanism: str | None = None
        self.attempts: list[dict[str, Any]] = []  # failed servers before the one that worked
        self._proxy = None

    # --- helpers -----------------------------------------------------------------------
    def _context(self, server: Server | None = None) -> dict[str, Any]:
        server = server or self.server or self.servers[0]
        return {"profile": self.profile.name, "host": server.host, "port": server.port}

    def _error(self, err: MailctlError, stage: str, cause: BaseException | None = None, failure_id: str | None = None, server: Server | None = None) -> MailctlError:
        """Annotate an error with stage/server, a knowledge-base hint and exit code."""
        server = server or self.server or self.servers[0]
        err.stage = stage
        err.server = server.address
        if failure_id:
            err.failure_id = failure_id
        if cause is not None and err.__cause__ is None:
            err.__cause__ = cause
        explanation = _hint_for(err, self._context(server))
        if explanation is not None:
            err.explanation = explanation
            if not err.hint:
                err.hint = explanation.fix
            if explanation.exit_code is not None:
                err.exit_code = explanation.exit_code
        return err

    def _reply_error(self, stage: str, code: int, resp: bytes | str, *, what: str) -> MailctlError:
        enhanced, text = split_reply(self.redactor.redact(_decode(resp)))
        server = self.server or self.servers[0]
        reply = " ".join(p for p in (str(code), enhanced or "", text) if p)
        message = f"{what} refused by {server.address}: {reply}"
        permanent = code >= 500
        if stage == "auth" and permanent:
            err: MailctlError = AuthError(message)
            err.code, err.enhanced, err.text, err.permanent = code, enhanced, text, True
        elif stage in ("ehlo", "ehlo_tls", "starttls") and permanent and code != 421:
            err = ProtocolError(message)
            err.code, err.enhanced, err.text, err.permanent = code, enhanced, text, True
        else:
            err = DeliveryError(
                message,
                permanent=permanent,
                code=code,
                enhanced=enhanced,
                text=text,
                server=server.address,
                stage=stage,
                exit_code=_STAGE_5XX_EXIT.get(stage, ExitCode.PROBLEMS) if permanent else ExitCode.TEMPFAIL,
            )
        return self._error(err, stage)

    def _lost(self, stage: str, exc: BaseException) -> MailctlError:
        """The session ended in the middle of a stage: the connection was lost, or the server
        broke a bound (a reply too long: ProtocolError, 76) or a deadline (75, as a lost
        connection)."""
        self._drop()
        server = self.server or self.servers[0]
        if isinstance(exc, ReplyTooLong):
            return self._too_long(stage, exc)
        failure = None
        if isinstance(exc, ReplyTimeout) and exc.received:
            msg = (f"{server.address} did not complete its {_REPLY_NAMES.get(stage, stage.upper() + ' reply')} within "
                   f"{self.timeout:g}s (it had sent {exc.received} bytes of it, too slowly)")
            failure = "reply-too-slow"
        elif isinstance(exc, (TimeoutError, socket.timeout)):
            waited = exc.waited if isinstance(exc, ReplyTimeout) else self.timeout
            msg = (f"{server.address} did not answer within {self.timeout:g}s during "
                   f"{_COMMAND_NAMES.get(stage, stage.upper())} (timed out after {waited:.1f} s)")
            err = DeliveryError(msg, permanent=False, server=server.address, stage=stage, exit_code=ExitCode.TEMPFAIL)
            return self._timed_out(self._error(err, stage, exc), stage, waited)
        else:
            msg = f"connection to {server.address} lost during {_COMMAND_NAMES.get(stage, stage.upper())}: {self.redactor.redact(str(exc))}"
        err = DeliveryError(msg, permanent=False, server=server.address, stage=stage, exit_code=ExitCode.TEMPFAIL)
        return self._error(err, stage, exc, failure_id=failure)

    # --- exact explanations (mailctl.knowledge.tls): what was seen, not what usually happens ---
    def _explained(self, err: MailctlError, explanation) -> MailctlError:
        """Replace the knowledge base's general explanation by an exact one (same id); its
        fix becomes the hint. The exit code stays the error's."""
        err.explanation = dataclasses.replace(explanation, exit_code=err.exit_code)
        err.hint = explanation.fix
        return err

    def _timed_out(self, err: MailctlError, stage: str, waited: float) -> MailctlError:
        from mailctl.knowledge.tls import timeout_explanation

        server = self.server or self.servers[0]
        return self._explained(err, timeout_explanation(stage, waited, self.timeout, self._context(server)))

    def _pin_mismatch(self, server: Server, stage: str, der: bytes, got: str, want: str) -> None:
        """The pinned certificate is not the one shown: both fingerprints, and the certificate."""
        from mailctl.knowledge.tls import pin_mismatch_explanation
        from mailctl.net.certs import peer_chain

        chain = peer_chain(self.session.sock) or [der]
        self._drop()
        got_text = format_fingerprint(bytes.fromhex(got))
        want_text = format_fingerprint(bytes.fromhex(want)) if want and len(want) % 2 == 0 else want
        err = UnavailableError(f"TLS certificate of {server.address} does not match the pinned fingerprint "
                               f"(got SHA-256 {got_text}, pinned {want_text})")
        err = self._error(err, stage, failure_id="tls-fingerprint-mismatch")
        self._refused = {"chain": chain}
        raise self._explained(err, pin_mismatch_explanation(got_text, want_text, self._context(server)))

    def _refused_certificate(self, server: Server, err: MailctlError, exc: ssl.SSLCertVerificationError) -> None:
        """A certificate failed verification: fetch it again without verifying (a second
        connection; nothing but EHLO/STARTTLS is sent) and say exactly why it was refused."""
        if self.second_look:
            return
        from mailctl.knowledge.tls import certificate_explanation
        from mailctl.net.certs import certificate_problem

        _version, chain = self._second_look(server)
        self._refused = {"chain": chain}
        if not chain:
            return
        ca_file = str(self.profile.get("ca_file") or "") if self.tls_mode == "ca_file" else ""
        problem = certificate_problem(exc.verify_code, exc.verify_message or "", chain, server.host, ca_file=ca_file)
        self._refused["problem"] = problem.to_dict()
        self._explained(err, certificate_explanation(problem.to_dict(), self._context(server)))

    def _old_protocol(self, server: Server, err: MailctlError) -> None:
        """The handshake failed: find out whether the server speaks only TLS 1.0/1.1 (or only
        weak TLS) with a handshake that allows them (closed at once, nothing sent) and say so.
        When that fails too, the error stays as it is."""
        if self.second_look:
            return
        from mailctl.knowledge.tls import old_protocol_explanation, weak_tls_explanation

        version, chain, cipher = self._second_look(server, version_probe_context(), with_cipher=True)
        if not version:
            return
        self._refused = {"chain": chain, "version": version}
        if version in ("TLSv1.2", "TLSv1.3"):  # the version was fine: what it needed was weak
            err.message = f"{err.message} (the server completes a handshake only with weak settings: {cipher})"
            err.args = (err.message,)
            self._explained(err, weak_tls_explanation(version, cipher, self._context(server)))
            return
        err.message = f"{err.message} (the server offers only {version}; mailctl requires TLS 1.2 or newer)"
        err.args = (err.message,)
        self._explained(err, old_protocol_explanation(version, self._context(server)))


    def _too_long(self, stage: str, exc: ReplyTooLong) -> MailctlError:
        self._drop()
        server = self.server or self.servers[0]
        err = ProtocolError(f"{server.address} sent {exc.what} in its {_REPLY_NAMES.get(stage, stage.upper() + ' reply')} "
                            f"(mailctl reads at most {MAX_REPLY_LINES} lines, {MAX_REPLY_BYTES // 1024} KiB); gave up on the connection")
        return self._error(err, stage, exc, failure_id="reply-too-long")

    def proxy_spec(self):
        if self._proxy is None and self.profile.get("proxy"):
            from mailctl.net.proxy import parse_proxy

            url = self.profile.get("proxy")
            password = self.secrets.get(self.profile, "proxy_password") if self.secrets is not None else None
            self._proxy = parse_proxy(url, password)
            self.redactor.add(password)
            if password and self._proxy.username is not None:  # HTTP CONNECT sends it as Basic base64(user:password)
                self.redactor.add(f"{self._proxy.username}:{password}")
        return self._proxy

    @property
    def tls_context(self) -> ssl.SSLContext:
        if self._tls_ctx is None:
            self._tls_ctx, self.tls_mode = make_tls_context(self.profile)
        return self._tls_ctx

    # --- stages (diagnostics time these one by one) ---------------------------------------
    def resolve(self, server: Server) -> list[tuple]:
        """getaddrinfo for the server (skipped by callers when a proxy resolves), within the
        stage's deadline (net.lookup): glibc's resolver would wait out its own timeouts (5 s a
        try, per nameserver) past a short `timeout`. No answer in time is 69, as a connect
        timeout is, so the alternate server is tried."""
        from mailctl.net.lookup import MAX_PENDING, LookupTimeout, resolve

        try:
            return resolve(server.host, server.port, timeout=self.timeout, type=socket.SOCK_STREAM)
        except LookupTimeout as exc:
            from mailctl.knowledge.smtp import Explanation

            busy = f"; {MAX_PENDING} earlier lookups are still pending" if exc.busy else ""
            err = UnavailableError(f"cannot resolve {server.host} within {self.timeout:g}s: no answer from the resolver "
                                   f"(waited {exc.waited:.1f} s{busy})")
            err = self._error(err, "resolve", exc, server=server)
            raise self._explained(err, Explanation(
                "timeout", f"The DNS lookup of {server.host} got no answer within {self.timeout:g} s: the nameservers "
                "this machine uses (/etc/resolv.conf) are slow, unreachable or not answering for this name.",
                f"Check DNS with `getent hosts {server.host}` and the nameservers in /etc/resolv.conf; raise the timeout "
                f"if DNS is slow here: mailctl profile edit {self.profile.name} --timeout 60.", ExitCode.UNAVAILABLE)) from exc
        except socket.gaierror as exc:
            err = UnavailableError(f"cannot resolve {server.host}: {exc.strerror or exc}")
            raise self._error(err, "resolve", exc, server=server) from exc

    def connect(self, server: Server, addrs: list[tuple] | None = None) -> None:
        """TCP connection (direct or through the proxy); sets self.session. Resolving here (no
        staged addresses), the lookup and the connect share one deadline of `timeout`."""
        self.server = server
        self.encrypted = False
        proxy = self.proxy_spec()
        try:
            if proxy is not None:
                from mailctl.net.proxy import connect_via_proxy

                sock = connect_via_proxy(proxy, server.host, server.port, self.timeout)
            else:
                deadline = time.monotonic() + self.timeout
                if addrs is None:
                    addrs = self.resolve(server)
                sock = self._connect_first(addrs, deadline)
        except MailctlError as err:
            raise self._error(err, "connect", server=server)
        except OSError as exc:
            timed_out = isinstance(exc, (TimeoutError, socket.timeout))
            what = f"timed out after {self.timeout:g}s" if timed_out else (exc.strerror or str(exc))
            err = self._error(UnavailableError(f"cannot connect to {server.address}: {what}"), "connect", exc, server=server)
            if timed_out:
                self._timed_out(err, "connect", self.timeout)
            raise err from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        sock.settimeout(self.timeout)
        cls = self.recording_session_class if self.recorder is not None else self.session_class
        session = cls(local_hostname=self.ehlo_name, timeout=self.timeout, recorder=self.recorder)
        session.attach(sock, server.host)
        self.session = session
        if self.recorder is not None:
            peer = ""
            try:
                peer = " ({}:{})".format(*sock.getpeername()[:2])
            except OSError:
                pass
            via = f" via {proxy.display}" if proxy is not None else ""
            self.recorder.add("*", f"connected to {server.address}{peer}{via}")

    def _connect_first(self, addrs: list[tuple], deadline: float) -> socket.socket:
        last: OSError | None = None
        if self.source_address:
            addrs = self._source_family(addrs)
        for family, socktype, proto, _canon, sockaddr in addrs:
            sock = socket.socket(family, socktype, proto)
            if self.source_address:
                self._bind_source(sock)
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                last = exc
                if time.monotonic() >= deadline:
                    break
        raise last or OSError("no address to connect to")

    def _source_family(self, addrs: list[tuple]) -> list[tuple]:
        """The server's addresses of the source address's family (an IPv4 source cannot reach
        an IPv6 address); ConfigError when there is none."""
        family = socket.AF_INET6 if ":" in self.source_address else socket.AF_INET
        same = [a for a in addrs if a[0] == family]
        if not same:
            kind = "IPv6" if family == socket.AF_INET6 else "IPv4"
            raise ConfigError(f"source_address {self.source_address} is {kind}, but {self.server.host} has no {kind} address",
                              hint="give a source address of the server's family, or none")
        return same

    def _bind_source(self, sock: socket.socket) -> None:
        """Bind the client end to source_address (any port) before connecting; ConfigError
        when it is not an address of this machine."""
        try:
            sock.bind((self.source_address, 0))
        except OSError as exc:
            sock.close()
            why = "it is not an address of this machine" if exc.errno == errno.EADDRNOTAVAIL else (exc.strerror or str(exc))
            raise ConfigError(f"source_address {self.source_address}: cannot send from it: {why}",
                              hint="give one of this machine's addresses (ip -brief address), or none") from exc

    def tls_handshake(self, stage: str = "tls") -> None:
        """Wrap the socket in TLS (implicit TLS at connect, or after STARTTLS's 220). A refused
        certificate or an old server gets a second look (_refused_certificate, _old_protocol)
        so that the error says exactly what is wrong."""
        session = self.session
        server = self.server
        started = _monotonic()
        self._refused = None
        try:
            session.sock = self.tls_context.wrap_socket(session.sock, server_hostname=server.host)
        except ssl.SSLCertVerificationError as exc:
            self._drop()
            err = UnavailableError(f"TLS certificate of {server.address} not accepted: {exc.verify_message or exc.reason}")
            err = self._error(err, stage, exc)
            self._refused_certificate(server, err, exc)
            raise err from exc
        except ssl.SSLError as exc:
            self._drop()
            err = UnavailableError(f"TLS handshake with {server.address} failed: {exc.reason or exc}")
            err = self._error(err, stage, exc)
            # a plaintext port answers TLS with SMTP; anything else may be an old or weak server
            # (an alert, or a server that just closes: UNEXPECTED_EOF_WHILE_READING)
            if exc.reason in OLD_PROTOCOL_REASONS or getattr(err.explanation, "id", "") != "tls-to-plaintext-port":
                self._old_protocol(server, err)
            raise err from exc
        except (OSError, EOFError) as exc:
            self._drop()
            timed_out = isinstance(exc, (TimeoutError, socket.timeout))
            waited = _monotonic() - started
            what = f"no answer within {self.timeout:g}s (waited {waited:.1f} s)" if timed_out else str(exc) or type(exc).__name__
            err = self._error(UnavailableError(f"TLS handshake with {server.address} failed: {what}"), stage, exc)
            if timed_out:
                self._timed_out(err, stage, waited)
            raise err from exc
        session.file = None
        if self.tls_mode == "fingerprint":
            der = session.sock.getpeercert(binary_form=True) or b""
            got = fingerprint_of(der)
            want = normalise_fingerprint(self.profile.get("tls_fingerprint"))
            if got != want:
                self._pin_mismatch(server, stage, der, got, want)
        self.encrypted = True
        if self.recorder is not None:
            s = session.sock
            self.recorder.add("*", f"TLS established: {s.version()} {s.cipher()[0]} (verification: {self.tls_mode})")

    def banner(self) -> tuple[int, str]:
        started = _monotonic()
        try:
            code, msg = self.session.getreply()  # one reply: its deadline is the stage's
        except ReplyTooLong as exc:
            raise self._too_long("banner", exc) from exc
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            self._drop()
            server = self.server
            failure = None
            waited = _monotonic() - started
            timed_out = isinstance(exc, (TimeoutError, socket.timeout))  # ReplyTimeout too: it timed out, it did not close
            if isinstance(exc, ReplyTimeout) and exc.received:
                what = (f"no complete greeting from {server.address} within {self.timeout:g}s "
                        f"(it had sent {exc.received} bytes of it, too slowly)")
                failure = "reply-too-slow"
            elif timed_out:
                what = f"no greeting from {server.address} within {self.timeout:g}s (timed out after {waited:.1f} s; the connection stayed open)"
            else:
                what = f"{server.address} closed the connection {waited:.1f} s after accepting it, without a greeting"
            err = self._error(UnavailableError(what), "banner", exc, failure_id=failure)
            if timed_out and failure is None:
                self._timed_out(err, "banner", waited)
            raise err from exc
        if code != 220:
            err = self._reply_error("banner", code, msg, what="session")
            self._drop()
            raise err
        return code, self.redactor.redact(_decode(msg))

    def ehlo(self, stage: str = "ehlo") -> tuple[int, str]:
        """EHLO (HELO when refused). stage: "ehlo_tls" for the EHLO sent after STARTTLS, so
        that its failure (a timeout, a lost connection, a refusal) names that stage."""
        session = self.session
        session.deadline = _monotonic() + self.timeout  # EHLO (and HELO) within `timeout`
        try:
            code, msg = session.ehlo(self.ehlo_name)
            if 500 <= code < 600:  # a server without ESMTP: fall back to HELO
                code, msg = session.helo(self.ehlo_name)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise self._lost(stage, exc) from exc
        finally:
            session.deadline = None
        if code != 250:
            err = self._reply_error(stage, code, msg, what="EHLO after STARTTLS" if stage == "ehlo_tls" else "EHLO")
            self._drop()
            raise err
        return code, self.redactor.redact(_decode(msg))

    def starttls(self) -> tuple[int, str]:
        session = self.session
        if not session.has_extn("starttls"):
            self._drop()
            err = ProtocolError(f"{self.server.address} does not offer STARTTLS (security = starttls); not sending anything in plaintext")
            raise self._error(err, "starttls", failure_id="starttls-not-offered")
        deadline = session.deadline = _monotonic() + self.timeout  # the reply and the handshake
        try:
            code, msg = session.docmd("STARTTLS")
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise self._lost("starttls", exc) from exc
        finally:
            session.deadline = None
        if code != 220:
            err = self._reply_error("starttls", code, msg, what="STARTTLS")
            self._drop()
            raise err
        session.set_timeout(max(deadline - _monotonic(), 0.001))  # the handshake in what is left
        self.tls_handshake(stage="starttls")
        session.set_timeout(self.timeout)
        session.reset_ehlo()
        return code, self.redactor.redact(_decode(msg))

    def auth_mechanisms(self) -> list[str]:
        if self.session is None or not self.session.has_extn("auth"):
            return []
        return self.session.esmtp_features.get("auth", "").upper().split()

    def authenticate(self) -> str | None:
        """AUTH as the profile says; returns the mechanism used (None for auth = none)."""
        method = self.auth_method
        if method == "none":
            return None
        allow_insecure = self.profile.get("allow_insecure_auth", False)
        if isinstance(allow_insecure, str):
            allow_insecure = allow_insecure.lower() in ("true", "1", "yes", "on")
        if not self.encrypted and not allow_insecure:
            self._drop()
            err = ConfigError(
                f"refusing to send credentials to {self.server.address} over an unencrypted connection (security = {self.security})"
            )
            raise self._error(err, "auth", failure_id="auth-plaintext-refused")
        username = self.profile.get("username") or ""
        if not username:
            err = ConfigError(f"profile {self.profile.name!r}: auth = {method} needs a username")
            err.hint = f"set it with: mailctl profile edit {self.profile.name} --username USER"
            raise self._error(err, "auth")
        try:
            self._check_sendable(username, "username", "in the profile")
        except ConfigError as err:
            raise self._error(err, "auth")
        offered = self.auth_mechanisms()
        if self.auth_choice is not None:
            mech = self._chosen_mechanism(offered)
        elif method == "password":
            mech = next((m for m in PASSWORD_MECHANISMS if m in offered), None)
        else:  # oauth, client-credentials, service-account: a bearer token over XOAUTH2, else OAUTHBEARER (RFC 7628)
            mech = next((m for m in TOKEN_MECHANISMS if m in offered), None)
        if mech is None:
            if not offered:
                detail = "offers no AUTH" + (" before STARTTLS" if not self.encrypted else "")
                failure = "auth-not-offered"
            else:
                detail = f"offers AUTH {' '.join(offered)}, none usable for auth = {method}"
                failure = "auth-mechanism-unsupported"
            err = ProtocolError(f"{self.server.address} {detail}")
            raise self._error(err, "auth", failure_id=failure)
        try:
            secret = self._credential(method)
        except MailctlError as err:
            raise self._error(err, "auth")
        session = self.session
        try:
            try:
                self._auth_once(session, mech, username, secret)
            except smtplib.SMTPAuthenticationError as exc:
                if mech in TOKEN_MECHANISMS and exc.smtp_code == 535:
                    if self.recorder is not None:
                        self.recorder.add("*", "token refused; refreshing it once and retrying AUTH")
                    try:
                        secret = self._credential(method, force_refresh=True)
                    except MailctlError:
                        raise exc from None
                    self._auth_once(session, mech, username, secret)
                else:
                    raise
        except smtplib.SMTPAuthenticationError as exc:
            err = self._reply_error("auth", exc.smtp_code, exc.smtp_error, what=f"AUTH {mech} as {username}")
            raise err from self._masked(exc)
        except smtplib.SMTPResponseException as exc:  # pragma: no cover - unusual replies
            raise self._reply_error("auth", exc.smtp_code, exc.smtp_error, what=f"AUTH {mech}") from self._masked(exc)
        except smtplib.SMTPServerDisconnected as exc:
            raise self._lost("auth", exc) from exc
        except (smtplib.SMTPException, binascii.Error) as exc:  # endless 334 challenges (smtplib stops), one not base64
            self._drop()
            what = "a challenge that is not base64" if isinstance(exc, binascii.Error) else "one challenge after another"
            err = ProtocolError(f"{self.server.address} answered AUTH {mech} with {what}; gave up")
            raise self._error(err, "auth") from None  # smtplib's message repeats the server's reply unmasked
        except OSError as exc:
            raise self._lost("auth", exc) from exc
        finally:
            session.user = session.password = None
        self.authenticated_as = username
        self.auth_mechanism = mech
        return mech

    def _chosen_mechanism(self, offered: list[str]) -> str:
        """The mechanism auth_mechanism (--auth-mechanism) asks for, when the server offers it;
        otherwise an AuthError (77: the login cannot happen as asked) naming what it offers."""
        choice = self.auth_choice
        if choice in offered:
            return choice
        what = f"offers AUTH {' '.join(offered)}" if offered else "offers no AUTH" + ("" if self.encrypted else " before STARTTLS")
        err = AuthError(f"{self.server.address} does not offer AUTH {choice} (auth_mechanism): it {what}",
                        hint=(f"pick one it offers (--auth-mechanism {offered[0]}, or auth_mechanism in the profile), "
                              "or leave it out to use the best one offered") if offered
                        else "leave auth_mechanism out, or check security: servers offer AUTH only after STARTTLS")
        raise self._error(err, "auth", failure_id="auth-mechanism-not-offered")

    def _credential(self, method: str, *, force_refresh: bool = False) -> str:
        """The password or token for AUTH: the one the "secret" stage fetched (once), else
        fetched now. secret_source says where it came from (never the value)."""
        fetched = self._fetched_secret
        if fetched is not None and not force_refresh:
            self._fetched_secret = None
            return fetched
        if method == "password":
            lookup = getattr(self.secrets, "lookup", None)
            value, where = lookup(self.profile, "password") if lookup is not None else (None, None)
            if value is None:
                value = self.secrets.require(self.profile, "password")  # raises: not stored
            self.secret_source = f"password from {where}" if where else "password"
            self._check_sendable(value, "password", f"from {where}" if where else "as stored")
        else:
            value = _oauth_token(self.profile, self.secrets, force_refresh=force_refresh)
            self.secret_source = "OAuth access token" + (" (refreshed)" if force_refresh else "")
            self._check_sendable(value, "OAuth access token", "from the token cache or endpoint")
        self.redactor.add(value)
        return value

    def _check_sendable(self, value: str, field: str, where: str) -> None:
        """AUTH sends credentials UTF-8 encoded (SmtpSession.auth). A value with no UTF-8 form
        (a lone surrogate: bytes that were not UTF-8, read from the environment or a keyring),
        or with a NUL (AUTH PLAIN's separator: RFC 4616 excludes it), is a ConfigError naming
        the field, never a UnicodeEncodeError or a garbled login. The value is not shown."""
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            problem = f"character {exc.start + 1} has no UTF-8 form, so AUTH cannot send it"
        else:
            if "\0" not in value:
                return
            problem = f"character {value.index(chr(0)) + 1} is NUL, which AUTH cannot carry"
        err = ConfigError(f"profile {self.profile.name!r}: the {field} ({where}) is not valid text: {problem}")
        name = self.profile.name
        err.hint = {"password": f"store it again as UTF-8 text: mailctl profile edit {name} --password-stdin",
                    "username": f"set it again as UTF-8 text: mailctl profile edit {name} --username USER"}.get(
                        field, f"sign in again: mailctl auth login {name}")
        raise err

    def fetch_secret(self) -> str:
        """The "secret" stage: fetch the password or token before AUTH, so that a slow keyring,
        secret_command or token endpoint is timed as itself and not as the server's AUTH."""
        try:
            self._fetched_secret = self._credential(self.auth_method)
        except MailctlError as err:
            raise self._error(err, "secret")
        return self.secret_source

    def _masked(self, exc: smtplib.SMTPResponseException) -> smtplib.SMTPResponseException:
        """A reply exception with the secrets masked, kept as __cause__ instead of the original
        (which a MAILCTL_DEBUG traceback would show)."""
        cls = smtplib.SMTPAuthenticationError if isinstance(exc, smtplib.SMTPAuthenticationError) else smtplib.SMTPResponseException
        return cls(exc.smtp_code, self.redactor.redact(_decode(exc.smtp_error)).encode("utf-8"))

    def _auth_once(self, session: SmtpSession, mech: str, username: str, secret: str) -> None:
        """One AUTH exchange (the command and its challenges) within `timeout`. Every form of
        the credentials it sends is masked from then on (Redactor)."""
        redactor = self.redactor
        session.in_auth = True
        session.deadline = _monotonic() + self.timeout
        try:
            if mech == "XOAUTH2":
                payload = xoauth2_string(username, secret)
                redactor.add(payload)
                redactor.add(f"n,a={username},\x01auth=Bearer {secret}\x01\x01")  # OAUTHBEARER's form of the token
                # On failure Google sends a 334 with a JSON error; the answer is an empty line.
                session.auth("XOAUTH2", lambda challenge=None: payload if challenge is None else "", initial_response_ok=True)
            elif mech == "OAUTHBEARER":
                server = self.server
                payload = oauthbearer_string(username, secret, host=server.host, port=server.port)
                redactor.add(payload)
                # RFC 7628 3.2.3: a failure comes as a 334 with a JSON status; the answer is one ^A.
                session.auth("OAUTHBEARER", lambda challenge=None: payload if challenge is None else "\x01", initial_response_ok=True)
            else:
                session.user, session.password = username, secret
                redactor.add(f"\0{username}\0{secret}")  # AUTH PLAIN
                redactor.add(username, plain=False)  # AUTH LOGIN sends the user name in base64 on its own
                fn = {"PLAIN": session.auth_plain, "LOGIN": session.auth_login, "CRAM-MD5": session.auth_cram_md5}[mech]
                session.auth(mech, fn, initial_response_ok=mech != "CRAM-MD5")
        finally:
            session.in_auth = False
            session.deadline = None

    def quit(self) -> tuple[int, str] | None:
        session = self.session
        self.session = None
        if session is None:
            return None
        try:
            if session.sock is None:
                return None
            code, msg = session.quit()
            return code, self.redactor.redact(_decode(msg))
        except (smtplib.SMTPException, OSError):
            try:
                session.close()
            except OSError:
                pass
            return None

    def _drop(self) -> None:
        session = self.session
        self.session = None
        self.encrypted = False
        self._announced = None
        if session is not None:
            try:
                session.close()
            except OSError:
                pass

    # --- the session as a plan of stages (transports.base.drive) --------------------------
    @property
    def target(self) -> str:
        return self.servers[0].address

    def probe_settings(self) -> dict[str, Any]:
        return {
            "security": self.security,
            "auth": self.auth_method,
            "username": self.profile.get("username") or None,
            "ehlo_name": self.ehlo_name,
            "auth_mechanism": self.auth_choice,
            "source_address": self.source_address,
            "timeout": self.timeout,
            "proxy": self._proxy_display(),
            "alternate": self.servers[1].address if len(self.servers) > 1 else None,
            "failover": self._failover_display(),
        }

    def _failover_display(self) -> str | None:
        """"sticky: using the alternate X since ..." / the mode; None without an alternate."""
        if len(self.servers) < 2:
            return None
        if not self._sticky():
            return "per-connection"
        active = active_for(self.profile)
        if active is None:
            return "sticky (on the primary)"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(active.since))
        return f"sticky: using the alternate {active.server} since {since} (mailctl profile failback {self.profile.name})"

    def _proxy_display(self) -> str | None:
        try:
            proxy = self.proxy_spec()
        except MailctlError:  # reported by the plan's first step, as a configuration error
            return None
        return proxy.display if proxy is not None else None

    def stages(self, message=None, *, combine_failures: bool = False):
        """The session as named stages: resolve, connect, tls, banner, ehlo, starttls,
        ehlo_tls (per server, failing over to the alternate when one cannot be reached), then
        secret (the password or token, fetched on its own so that AUTH times the server alone)
        and auth, and with a message (sender, recipients, raw) mail, rcpt and data.

        combine_failures: when every server fails, raise the primary's error with all the
        failures in its message (open()); otherwise the last server's error (test)."""
        self.proxy_spec()  # a bad proxy URL is a configuration error before any stage
        self.attempts = []
        failures: list[MailctlError] = []
        order = self._server_order()
        for index, server in enumerate(order):
            try:
                yield from self._connection_stages(server)
                break
            except UnavailableError as err:  # cannot reach this one: DNS, connect, TLS, greeting
                failures.append(err)
                self.attempts.append({"server": server.address, "stage": err.stage, "error": err.message})
                self._drop()
                if index + 1 == len(order):
                    if not combine_failures:
                        raise
                    first = failures[0]
                    if len(failures) > 1:  # say what happened on every server; the hint is the primary's
                        first.message = "; ".join(f.message for f in failures)
                        first.args = (first.message,)
                    raise first from None
                following = order[index + 1]
                yield Failover(f"failing over to the {'alternate' if following.alternate else 'primary'} server {following.address}")
        self._note_reached(server, failures)
        yield Reached(server.address, server.alternate)
        address = server.address
        if self.auth_method == "none":
            yield Stage("auth", server=address, skipped="auth = none", alternate=server.alternate)
        else:
            yield Stage("secret", self.fetch_secret, lambda where: StageInfo(where, {"source": where}), address,
                        stop_names=(), alternate=server.alternate)
            yield Stage("auth", self.authenticate, self._describe_auth, address, alternate=server.alternate)
        if message is not None:
            yield from self._message_stages(server, message)

    def _server_order(self) -> list[Server]:
        """Primary first; with failover = "sticky" and the alternate remembered as the active
        server (mailctl.profiles.failover), the alternate first, the primary after it."""
        if not self._sticky() or active_for(self.profile) is None:
            return list(self.servers)
        primary, alternate = self.servers
        return [alternate, primary]

    def _sticky(self) -> bool:
        return len(self.servers) > 1 and self.profile.get("failover") == "sticky"

    def _note_reached(self, server: Server, failures: list[MailctlError]) -> None:
        """Sticky: the alternate reached is remembered; the primary reached after the
        remembered alternate failed ends the record (back on the primary)."""
        if not self._sticky():
            return
        from mailctl.profiles import failover

        primary, alternate = self.servers
        if server.alternate:
            failover.remember(self.profile.name, primary.address, alternate.address, failures[0].message if failures else "")
        elif failures:
            failover.forget(self.profile.name)

    def _connection_stages(self, server: Server):
        address, alt = server.address, server.alternate
        proxy = self.proxy_spec()
        if proxy is not None:
            why = f"resolved by the proxy {proxy.display}" if proxy.scheme != "socks5" else "resolved when connecting through the proxy"
            addrs = yield Stage("resolve", server=address, skipped=why, alternate=alt)
        else:
            addrs = yield Stage("resolve", lambda: self.resolve(server), _describe_addrs, address, alternate=alt)
        implicit = self.security == "tls"
        yield Stage("connect", lambda: self.connect(server, addrs), lambda _v: self._describe_peer(), address,
                    stop_names=() if implicit else ("connect",) if self.security == "starttls" else ("connect", "tls"),
                    alternate=alt)
        if implicit:
            yield Stage("tls", self.tls_handshake, lambda _v: self._describe_tls(), address, stop_names=("tls", "connect"),
                        on_failure=lambda err: self._failed_certificate_facts(server, err), alternate=alt)
        yield Stage("banner", self.banner, _describe_banner, address, alternate=alt)
        caps: dict[str, Any] = {}
        yield Stage("ehlo", self.ehlo, lambda _v: self._describe_caps(caps), address, alternate=alt)
        if self.security == "starttls":
            yield Stage("starttls", self.starttls, lambda _v: self._describe_tls(), address, stop_names=(),
                        on_failure=lambda err: self._failed_certificate_facts(server, err), alternate=alt)
            yield Stage("ehlo_tls", lambda: self.ehlo("ehlo_tls"), lambda _v: self._describe_caps(caps), address, stop_names=("starttls", "tls"),
                        alternate=alt)
        else:
            why = "security = tls (implicit TLS)" if implicit else "security = none: the connection is NOT encrypted"
            yield Stage("starttls", server=address, skipped=why, alternate=alt)

    def _message_stages(self, server: Server, message):
        address, alt = server.address, server.alternate
        raw = strip_bcc(message.raw)
        sender, recipients = message.sender, message.recipients
        yield Stage("mail", lambda: self.mail_from(sender, raw, recipients),
                    lambda v: StageInfo(f"{v[0]} {v[1]}", {"sender": sender}), address, alternate=alt)
        refused = yield Stage("rcpt", lambda: self.rcpt_to(recipients), lambda r: _describe_rcpt(recipients, r), address,
                              alternate=alt)
        yield Stage("data", lambda: self.send_data(raw), lambda v: _describe_data(server, v, refused or {}), address,
                    alternate=alt)

    def closing_stage(self) -> Stage | None:
        if self.session is None:
            return None
        server = self.server
        return Stage("quit", self.quit, _describe_quit, server.address if server else "")

    def handshake(self, server: Server) -> None:
        """Everything up to (not including) AUTH on one server, untimed."""
        drive(self._connection_stages(server), run_untimed)

    def open(self) -> None:
        if self.session is not None:
            return
        try:
            drive(self.stages(combine_failures=True), run_untimed)
        except BaseException:
            self._drop()
            raise

    # --- what each stage says (test connect/send) ------------------------------------------
    def _describe_peer(self) -> StageInfo:
        """The peer, and the local address the connection came from (what a mail admin
        allow-lists; through a proxy, the proxy's address is what the server sees)."""
        sock = self.session.sock
        try:
            peer = sock.getpeername()
            text = f"{peer[0]}:{peer[1]}"
        except (OSError, AttributeError):
            text = ""
        try:
            here = sock.getsockname()
            local = f"[{here[0]}]:{here[1]}" if ":" in here[0] else f"{here[0]}:{here[1]}"
        except (OSError, AttributeError, TypeError, IndexError):
            local = ""
        proxy = self.proxy_spec()
        self._client = {"local": local or None, "proxy": proxy.display if proxy is not None else None, "seen_by_server": None}
        facts = {"client": dict(self._client)}
        if proxy is not None:
            return StageInfo(f"through {proxy.display}" + (f", from {local}" if local else ""),
                             {"proxy": proxy.display, "peer": text, "local": local}, facts)
        return StageInfo(text + (f" from {local}" if local else ""), {"peer": text, "local": local}, facts)

    def _verification_text(self) -> str:
        mode = self.tls_mode
        if mode == "fingerprint":
            return "ok: certificate matches the pinned SHA-256 fingerprint"
        if mode == "none":
            return "NOT verified (tls_verify = false)"
        if mode == "ca_file":
            return f"ok: chain verified (system store + ca_file {self.profile.get('ca_file')}), host name matches"
        return "ok: chain verified (system store), host name matches"

    def _describe_tls(self) -> StageInfo:
        from mailctl.net.certs import describe_shown, peer_chain

        sock = self.session.sock
        cipher = sock.cipher() or ("", "", 0)
        info = {"version": sock.version(), "cipher": cipher[0], "bits": cipher[2], "verification": self._verification_text()}
        certificates = [describe_shown(der) for der in peer_chain(sock)]
        return StageInfo(f"{info['version']} {info['cipher']}; {info['verification']}", dict(info),
                         {"tls": info, "certificates": certificates})

    def _describe_caps(self, before_tls: dict[str, Any]) -> StageInfo:
        """What this EHLO said (after STARTTLS: the second EHLO, which no longer offers
        STARTTLS); `before_tls` keeps the first EHLO's capabilities for the report's note."""
        caps = capabilities_of(self.session)
        if before_tls and self.encrypted and self.security == "starttls":
            caps["after_starttls"] = True
            caps["starttls_before_tls"] = bool(before_tls.get("starttls"))
        else:
            before_tls.clear()
            before_tls.update(caps)
        facts: dict[str, Any] = {"capabilities": caps}
        seen = seen_address(self.session)
        if seen and self._client is not None:
            self._client["seen_by_server"] = seen
            facts["client"] = dict(self._client)
        names = []
        if caps.get("size") is not None:
            names.append(f"SIZE {caps['size']}")
        if caps["auth"]:
            names.append("AUTH " + " ".join(caps["auth"]))
        names += [k.upper() for k in ("starttls", "pipelining", "smtputf8", "8bitmime", "chunking") if caps.get(k)]
        return StageInfo(", ".join(names), {"capabilities": {k: v for k, v in caps.items() if k != "all"}}, facts)

    def _describe_auth(self, mech) -> StageInfo:
        return StageInfo(f"authenticated as {self.authenticated_as} with {mech}",
                         {"mechanism": mech, "username": self.authenticated_as})

    def _failed_certificate_facts(self, server: Server, err: MailctlError) -> dict[str, Any]:
        """After a refused handshake: the certificate the server showed (fetched again without
        verifying when the handshake itself did not show it; tls_handshake keeps it in
        self._refused), why it was refused, and the TLS version an old server speaks."""
        refused = self._refused or {}
        if not refused and not isinstance(err.__cause__, ssl.SSLCertVerificationError):
            return {}
        from mailctl.net.certs import describe_shown

        chain = refused.get("chain")
        if chain is None:
            chain = self._unverified_chain(server)
        if not chain and not refused.get("version"):
            return {}
        tls = {"version": refused.get("version"), "cipher": None, "bits": None, "verification": f"FAILED: {err.message}"}
        if refused.get("problem"):
            tls["problem"] = refused["problem"]
        return {"certificates": [describe_shown(der) for der in chain or []], "tls": tls}

    def _unverified_chain(self, server: Server) -> list[bytes]:
        return self._second_look(server)[1]

    def _second_look(self, server: Server, context: ssl.SSLContext | None = None, *, with_cipher: bool = False):
        """(TLS version, the peer's chain[, cipher]) of a second connection that does not
        verify (or uses `context`), to describe what a refused handshake was shown; it sends
        nothing but EHLO and STARTTLS, and is closed at once. (None, []) when it fails too."""
        from mailctl.net.certs import peer_chain

        values = dict(self.profile.values)
        values.update({"tls_verify": False, "tls_fingerprint": "", "auth": "none"})
        try:
            copy = dataclasses.replace(self.profile, values=values)
        except TypeError:  # pragma: no cover - not a dataclass
            return None, []
        transport = SmtpTransport(copy, self.secrets)
        transport.second_look = True
        transport.timeout = min(transport.timeout, 10.0)
        if context is not None:
            transport._tls_ctx, transport.tls_mode = context, "none"
        try:
            transport.connect(server, None if transport.proxy_spec() else transport.resolve(server))
            if transport.security == "tls":
                transport.tls_handshake()
            else:
                transport.banner()
                transport.ehlo()
                transport.starttls()
            sock = transport.session.sock
            if with_cipher:
                return sock.version(), peer_chain(sock), (sock.cipher() or ("?",))[0]
            return sock.version(), peer_chain(sock)
        except Exception:
            return (None, [], None) if with_cipher else (None, [])
        finally:
            transport._drop()

    # --- internationalised mail (RFC 6531 SMTPUTF8, RFC 6152 8BITMIME) ----------------------
    def _smtputf8(self) -> bool:
        return self.session.does_esmtp and self.session.has_extn("smtputf8")

    def _utf8_envelope(self, sender: str, recipients: list[str]) -> tuple[str, list[str], dict[str, str]]:
        """The envelope with IDNA domains, and the recipients that cannot be sent to (a
        non-ASCII local part to a server without SMTPUTF8), as refusals. Raises when the
        sender cannot go, or no recipient can (nothing is sent then)."""
        sender = self._utf8_sender(sender) if not sender.isascii() else sender
        sendable, unsendable = self._utf8_recipients(recipients)
        return sender, sendable, unsendable

    def _utf8_sender(self, sender: str) -> str:
        sender = envelope_address(sender, "sender")
        if needs_smtputf8(sender) and not self._smtputf8():
            raise self._needs_smtputf8("mail", [sender], sender=True)
        return sender

    def _utf8_recipients(self, recipients: list[str], *, reset: bool = False) -> tuple[list[str], dict[str, str]]:
        """(the recipients to send RCPT TO for, domains in IDNA; those that need SMTPUTF8 the
        server does not offer -> the refusal shown). All of them unsendable: raises (after
        RSET, with reset=True: MAIL FROM was accepted)."""
        recipients = [envelope_address(r, "recipient") for r in recipients]
        if self._smtputf8():
            return recipients, {}
        bad = [r for r in recipients if needs_smtputf8(r)]
        if not bad:
            return recipients, {}
        if len(bad) == len(recipients):
            err = self._needs_smtputf8("rcpt", bad)
            if reset:
                self._reset_transaction()
            raise err
        refusal = f"553 5.6.7 {_SMTPUTF8_TEXT.format(server=self.server.address)}"
        return [r for r in recipients if r not in bad], {r: refusal for r in bad}

    def _needs_smtputf8(self, stage: str, addresses: list[str], *, sender: bool = False) -> MailctlError:
        """Mail that cannot be sent as it is: a permanent DeliveryError (exit 1, the message
        fails at once instead of being retried until it expires) naming SMTPUTF8."""
        server = self.server or self.servers[0]
        text = _SMTPUTF8_TEXT.format(server=server.address)
        who = "the sender " if sender else ""
        err = DeliveryError(f"not sent to {server.address}: {who}{', '.join(addresses)}: {text}", permanent=True,
                            code=553, enhanced="5.6.7", text=text, server=server.address, stage=stage,
                            exit_code=ExitCode.PROBLEMS)
        err.failure_id = "smtputf8-not-offered"
        err.hint = "send from/to an ASCII address, or through a server that offers SMTPUTF8"
        if not sender:
            err.refused = {a: f"553 5.6.7 {text}" for a in addresses}
        return err

    def _reset_transaction(self) -> None:
        """RSET after MAIL FROM when the transaction cannot go on; drop a connection that cannot."""
        try:
            self.session.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()

    def _for_wire(self, raw: bytes) -> bytes:
        """The message as this server can take it: with 8-bit bytes and no 8BITMIME offered,
        re-encoded to 7 bits (message.seven_bit); the result is kept for the stages of the
        same message (MAIL FROM's SIZE, then DATA)."""
        if raw.isascii():
            return raw
        session = self.session
        if session.does_esmtp and session.has_extn("8bitmime"):
            return raw
        cached = self._downgraded
        if cached is not None and (cached[0] is raw or cached[1] is raw):
            return cached[1]
        from mailctl.message import seven_bit

        out = seven_bit(raw)
        self._downgraded = (raw, out)
        if self.recorder is not None and out != raw:
            self.recorder.add("*", f"{self.server.address} does not offer 8BITMIME: the 8-bit parts of the message "
                                   "re-encoded (quoted-printable / base64)")
        return out

    def _mail_options(self, sender: str, raw: bytes, recipients: list[str]) -> list[str]:
        """The MAIL FROM parameters the server's extensions call for (SIZE, BODY, SMTPUTF8).
        SMTPUTF8 (RFC 6531): for an address with a non-ASCII local part, or UTF-8 in the
        message's headers (RFC 6532); an IDNA domain alone needs none."""
        session = self.session
        opts: list[str] = []
        if session.does_esmtp:
            features = session.esmtp_features  # has_extn(name) without its lower() per name
            if "size" in features:
                opts.append(f"SIZE={len(raw)}")
            eightbit = not raw.isascii()
            if eightbit and "8bitmime" in features:
                opts.append("BODY=8BITMIME")
            if "smtputf8" in features and (
                    (not (sender.isascii() and all(map(str.isascii, recipients)))
                     and (needs_smtputf8(sender) or any(map(needs_smtputf8, recipients))))
                    or (eightbit and not _header_block(raw).isascii())):
                opts.append("SMTPUTF8")
        return opts

    def mail_from(self, sender: str, raw: bytes, recipients: list[str],
                  while_waiting: Callable[[], None] | None = None) -> tuple[int, str]:
        session = self.session
        if not sender.isascii():
            sender = self._utf8_sender(sender)
        raw = self._for_wire(raw)
        opts = self._mail_options(sender, raw, recipients)
        session.before_next_reply = while_waiting
        try:
            code, resp = session.mail(sender, opts)
        except smtplib.SMTPNotSupportedError as exc:
            raise self._error(ProtocolError(f"{self.server.address}: {exc}"), "mail", exc) from exc
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise self._lost("mail", exc) from exc
        finally:
            session.before_next_reply = None
        if code != 250:
            raise self._fail_message("mail", code, resp, f"MAIL FROM:<{sender}>")
        return code, self.redactor.redact(_decode(resp))

    def rcpt_to(self, recipients: list[str]) -> dict[str, str]:
        """RCPT TO for each recipient; returns the refused ones (raises when all are refused)."""
        session = self.session
        refused: dict[str, tuple[int, bytes]] = {}
        unsendable: dict[str, str] = {}
        if not all(map(str.isascii, recipients)):
            recipients, unsendable = self._utf8_recipients(recipients, reset=True)
        try:
            for rcpt in recipients:
                code, resp = session.rcpt(rcpt)
                if code not in (250, 251):
                    refused[rcpt] = (code, resp)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise self._lost("rcpt", exc) from exc
        try:
            shown = self._judge_refusals(recipients, refused)
        except MailctlError as err:
            if unsendable:
                err.refused = {**unsendable, **(err.refused or {})}
            raise
        return {**unsendable, **shown} if unsendable else shown

    def _judge_refusals(self, recipients: list[str], refused: dict[str, tuple[int, bytes]], *,
                        data_open: bool = False) -> dict[str, str]:
        """The refused recipients, as shown (masked); raises when every recipient was refused
        (a DeliveryError with the refused map; 4xx among them: not permanent). data_open: the
        server answered a pipelined DATA with 354 (see _give_up)."""
        if not refused:
            return {}
        shown = {r: self.redactor.redact(f"{c} {_decode(m)}".replace("\n", " ")) for r, (c, m) in refused.items()}
        if len(refused) == len(recipients):
            first_rcpt, (code, resp) = next(iter(refused.items()))
            err = self._give_up("rcpt", code, resp, f"RCPT TO:<{first_rcpt}>", data_open)
            if any(c < 500 for c, _ in refused.values()) and isinstance(err, DeliveryError):
                err.permanent = False
            err.refused = shown
            raise err
        return shown

    def _give_up(self, stage: str, code: int, resp, what: str, data_open: bool = False) -> MailctlError:
        """The error for a refused command of the transaction (_fail_message: RSET after it, or
        a drop after a 421). data_open: the server answered DATA with 354 although the
        transaction failed (a pipelined DATA after a refused MAIL or all RCPTs refused); it now
        takes whatever comes as message data, so no RSET: the connection is dropped and nothing
        of the message is sent."""
        if data_open:
            err = self._reply_error(stage, code, resp, what=what)
            self._drop()
            return err
        return self._fail_message(stage, code, resp, what)

    def _write_commands(self, commands: list[str]) -> None:
        """Several commands in one write (RFC 2920 pipelining); a transcript shows each."""
        session = self.session
        if isinstance(session, RecordingSmtpSession):
            for line in commands:
                session._record_client(line)
        # smtplib's send (encodes with the session's command_encoding; OSError: disconnected)
        smtplib.SMTP.send(session, "".join(commands))

    def _write_data(self, raw: bytes, recipients: Sequence[str] = (), refused: dict[str, str] | None = None,
                    then: tuple[bytes, str, list[str]] | None = None) -> tuple[int, str]:
        """The message data after DATA's 354 (dot-stuffed, ended by CRLF.CRLF, as smtplib's
        data() sends it) and the final reply. recipients / refused (the RCPT TO refusals): for
        LMTP, which replies once per accepted recipient. `then` (see send()): the next
        message's envelope goes out in the same write, after the final dot."""
        session = self.session
        data = _LEADING_DOT.sub(b"..", raw) if (raw[:1] == b"." or _LINE_DOT.search(raw) is not None) else raw
        end = b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n"
        announced, commands = self._next_envelope(then) if then is not None else (None, [])
        try:
            if commands:
                if isinstance(session, RecordingSmtpSession):
                    session._record_client(data + end)
                    for line in commands:
                        session._record_client(line)
                smtplib.SMTP.send(session, b"".join((data, end, "".join(commands).encode("ascii"))))
                self._announced = announced
            else:
                session.send(data + end)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise self._lost("data", exc) from exc
        return self._data_reply(recipients, refused)

    def _next_envelope(self, then: tuple[bytes, str, list[str]]) -> tuple[tuple[str, tuple[str, ...], int] | None, list[str]]:
        """The commands that announce the next message (MAIL FROM, RCPT TO, DATA) and what
        send() will check them against; none when that message needs anything but plain ASCII
        commands (SMTPUTF8, IDNA, a re-encoding: it goes its usual way)."""
        given, sender, recipients = then
        if not recipients or not (sender.isascii() and all(map(str.isascii, recipients))):
            return None, []
        raw = strip_bcc(given)
        if not raw.isascii():
            return None, []
        self._stripped = (given, raw)  # send() of that message strips it no more
        return (sender, tuple(recipients), len(raw)), self._envelope(sender, raw, recipients)

    def _envelope(self, sender: str, raw: bytes, recipients: list[str]) -> list[str]:
        """MAIL FROM (with the parameters the server's extensions call for), every RCPT TO and
        DATA: the commands of one pipelined write."""
        opts = self._mail_options(sender, raw, recipients)
        params = (" " + " ".join(opts)) if opts else ""
        commands = [f"MAIL FROM:{_quote_address(sender)}{params}\r\n"]
        for rcpt in recipients:
            commands.append(f"RCPT TO:{_quote_address(rcpt)}\r\n")
        commands.append("DATA\r\n")
        if "SMTPUTF8" in opts:
            self.session.command_encoding = "utf-8"  # as smtplib's mail() does (rset() undoes it)
        return commands

    def _data_reply(self, recipients: Sequence[str], refused: dict[str, str] | None) -> tuple[int, str]:
        """The server's reply to the message data (LMTP: one per recipient, LmtpTransport)."""
        try:
            code, resp = self.session.getreply()
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise self._lost("data", exc) from exc
        if code != 250:
            if self._announced is not None and code != 421:
                # the next envelope is on the wire (maybe in DATA mode already): an RSET would
                # be taken as its data; after the reply to the final dot none is needed
                raise self._reply_error("data", code, resp, what="DATA")
            raise self._fail_message("data", code, resp, "DATA")
        return code, self.redactor.redact(resp.decode("utf-8", "replace"))

    def _write_envelope(self, sender: str, raw: bytes, recipients: list[str]) -> None:
        try:
            self._write_commands(self._envelope(sender, raw, recipients))  # non-ASCII without SMTPUTF8: UnicodeEncodeError, nothing sent
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise self._lost("mail", exc) from exc

    def _send_pipelined(self, raw: bytes, sender: str, recipients: list[str],
                        while_waiting: Callable[[], None] | None,
                        then: tuple[bytes, str, list[str]] | None = None) -> tuple[dict[str, str], int, str]:
        """RFC 2920: MAIL FROM, every RCPT TO and DATA in one write, then their replies in
        order (one round trip for the envelope instead of 2 + len(recipients)); the data only
        after DATA's 354 and when MAIL and at least one RCPT were accepted. `while_waiting`
        runs once the commands are on the wire, before any reply is read and before any data
        is sent; if it raises, the connection is dropped (the server may be waiting for data
        after a 354) and nothing of this message goes out. Returns (refused, code, text)."""
        announced, self._announced = self._announced, None
        if announced is not None and announced != (sender, tuple(recipients), len(raw)):
            # another message than the one announced after the last data (never, from the
            # outbox's flush): its transaction cannot be taken back, so a new connection
            self._drop()
            self.open()
            announced = None
        if announced is None:
            self._write_envelope(sender, raw, recipients)
        if while_waiting is not None:
            try:
                while_waiting()
            except BaseException:
                self._drop()
                raise
        count = len(recipients) + 2  # MAIL FROM, each RCPT TO, DATA
        replies: list[tuple[int, bytes]] = []
        try:
            self.session.getreplies(count, replies)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            if announced is None or replies:
                raise self._lost(_pipelined_stage(len(replies), count), exc) from exc
            # the server hung up before answering the envelope announced after the last data
            # (it refused that data and closed, say): nothing of this message went out, so
            # once more, on a new connection, as without pipelining
            self._drop()
            self.open()
            self._write_envelope(sender, raw, recipients)
            try:
                self.session.getreplies(count, replies)
            except (smtplib.SMTPServerDisconnected, OSError) as again:
                raise self._lost(_pipelined_stage(len(replies), count), again) from again
        code, resp = replies[0]
        if code == 421 or (code != 250 and len(replies) < count):
            raise self._fail_message("mail", code, resp, f"MAIL FROM:<{sender}>")
        if len(replies) < count:  # a 421 to an RCPT or to DATA
            index = len(replies) - 1
            code, resp = replies[index]
            stage = _pipelined_stage(index, count)
            what = f"RCPT TO:<{recipients[index - 1]}>" if stage == "rcpt" else "DATA"
            raise self._fail_message(stage, code, resp, what)
        data_code, data_resp = replies[-1]
        data_open = data_code == 354
        if code != 250:
            raise self._give_up("mail", code, resp, f"MAIL FROM:<{sender}>", data_open)
        refused = {}
        for rcpt, reply in zip(recipients, replies[1:-1]):
            if reply[0] not in (250, 251):
                refused[rcpt] = reply
        shown = self._judge_refusals(recipients, refused, data_open=data_open) if refused else {}  # all refused: raises
        if not data_open:
            raise self._fail_message("data", data_code, data_resp, "DATA")
        code, text = self._write_data(raw, recipients, shown, then if self.announces_next else None)
        return shown, code, text

    def send_data(self, raw: bytes) -> tuple[int, str]:
        raw = self._for_wire(raw)
        try:
            code, resp = self.session.data(raw)
        except smtplib.SMTPResponseException as exc:  # a non-354 answer to DATA
            raise self._fail_message("data", exc.smtp_code, exc.smtp_error, "DATA") from self._masked(exc)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise self._lost("data", exc) from exc
        if code != 250:
            raise self._fail_message("data", code, resp, "DATA")
        return code, self.redactor.redact(_decode(resp))

    # send() takes while_waiting (see below)
    overlaps_work = True

    def send(self, raw: bytes, sender: str, recipients: list[str], *,
             while_waiting: Callable[[], None] | None = None,
             then: tuple[bytes, str, list[str]] | None = None) -> SendResult:
        """Deliver one message. When the server advertises PIPELINING (RFC 2920), MAIL FROM,
        every RCPT TO and DATA go out in one write and their replies are read in order
        (_send_pipelined); otherwise one command at a time. `while_waiting` runs once, after
        this message's first commands went out and before their replies are read, so the
        caller's bookkeeping (the outbox commits the previous message's result) overlaps the
        server's work instead of adding to it. It runs before any of this message's data is
        sent; if it raises, nothing of this message is delivered and the exception propagates.
        `then` (raw, sender, recipients): the message the caller sends next on this connection,
        whatever this one's outcome; with PIPELINING its MAIL FROM, RCPT TO and DATA follow this
        message's final dot in the same write, so a message costs one round trip, not two.
        Its data still goes out only in that next send(), after its `while_waiting`; a
        connection closed before then is dropped (no QUIT), and the server discards the
        transaction it never got the data of."""
        if self.session is None:
            self.open()
        start = time.perf_counter()
        stripped = self._stripped
        raw = stripped[1] if stripped is not None and stripped[0] == raw else strip_bcc(raw)
        session = self.session
        unsendable = None
        if not (sender.isascii() and all(map(str.isascii, recipients))):
            sender, recipients, unsendable = self._utf8_envelope(sender, recipients)  # raises when nothing can go
        if not raw.isascii():  # (ASCII goes as it is)
            raw = self._for_wire(raw)
        try:
            if session.does_esmtp and "pipelining" in session.esmtp_features:
                refused, code, text = self._send_pipelined(raw, sender, recipients, while_waiting, then)
            else:
                self.mail_from(sender, raw, recipients, while_waiting)
                refused = self.rcpt_to(recipients)
                code, text = self.send_data(raw)
        except MailctlError as err:
            if unsendable and err.refused:  # every other recipient refused too
                err.refused = {**unsendable, **err.refused}
            raise
        if unsendable:
            refused = {**unsendable, **refused}
        return SendResult(
            server=self.server.address,
            reply=f"{code} {text}".replace("\n", " "),
            queue_id=queue_id_of(text),
            refused=refused,
            used_alternate=self.server.alternate,
            duration=time.perf_counter() - start,
        )

    def _fail_message(self, stage: str, code: int, resp, what: str) -> MailctlError:
        err = self._reply_error(stage, code, resp, what=what)
        if code == 421:
            self._drop()  # 421: the server closes the channel
        else:
            try:
                self.session.rset()
            except (smtplib.SMTPException, OSError):
                self._drop()
        return err

    def close(self) -> None:
        if self._announced is not None:  # a transaction waits for data that will not come
            self._drop()
            return
        self.quit()

    def __enter__(self) -> "SmtpTransport":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


CAPABILITY_KEYS = ("size", "auth", "pipelining", "smtputf8", "8bitmime", "starttls", "chunking", "dsn", "enhancedstatuscodes")


def capabilities_of(session) -> dict[str, Any]:
    features = dict(session.esmtp_features)
    caps: dict[str, Any] = {}
    if "size" in features:
        size = features["size"].strip()
        caps["size"] = int(size) if size.isdigit() else size or None
    caps["auth"] = features.get("auth", "").upper().split() if "auth" in features else []
    for key in ("pipelining", "smtputf8", "8bitmime", "starttls", "chunking", "dsn", "enhancedstatuscodes"):
        caps[key] = key in features
    caps["all"] = {k: v for k, v in features.items()}
    return caps


_SEEN_ADDRESS = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]")


def seen_address(session) -> str | None:
    """The client address the server's EHLO reply shows ('250-mx Hello [203.0.113.7]', Gmail's
    'at your service, [203.0.113.7]'): the address that server saw, NAT and proxies included.
    None when the first line names none (Postfix does not)."""
    import ipaddress

    resp = getattr(session, "ehlo_resp", None) or getattr(session, "helo_resp", None) or b""
    first = _decode(resp).split("\n", 1)[0]
    for match in _SEEN_ADDRESS.finditer(first):
        try:
            return str(ipaddress.ip_address(match.group(1)))
        except ValueError:
            continue
    return None


def _describe_addrs(addrs) -> StageInfo:
    seen: list[str] = []
    for *_rest, sockaddr in addrs:
        if sockaddr[0] not in seen:
            seen.append(sockaddr[0])
    return StageInfo(", ".join(seen), {"addresses": seen})


def _describe_banner(value) -> StageInfo:
    code, text = value
    return StageInfo(f"{code} {text}".replace("\n", " "), {"code": code, "text": text})


def _describe_rcpt(recipients: list[str], refused: dict[str, str]) -> StageInfo:
    if refused:
        detail = f"{len(recipients) - len(refused)} accepted, {len(refused)} refused"
    else:
        detail = f"{len(recipients)} accepted"
    return StageInfo(detail, {"recipients": recipients, "refused": refused})


def _describe_data(server: Server, value, refused: dict[str, str]) -> StageInfo:
    code, text = value
    result = {
        "server": server.address,
        "reply": f"{code} {text}".replace("\n", " "),
        "queue_id": queue_id_of(text),
        "refused": refused,
        "used_alternate": server.alternate,
    }
    return StageInfo(f"{code} {text}".replace("\n", " "), {"code": code, "text": text, "queue_id": queue_id_of(text)},
                     {"result": result})


def _describe_quit(reply) -> StageInfo:
    if not reply:
        return StageInfo("connection closed", status="skipped")
    return StageInfo(f"{reply[0]} {_decode(reply[1])}")
