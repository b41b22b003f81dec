"""The LMTP transport (RFC 2033): local delivery into a mail store such as Dovecot's.

LMTP is SMTP with two differences, and this class is SmtpTransport with them:

* the client says LHLO instead of EHLO (and there is no HELO to fall back to);
* after the message data the server replies once for every recipient it accepted at RCPT
  TO, in order: some may get the message and others not. Those refusals are reported exactly
  like RCPT TO refusals (SendResult.refused; every recipient refused: a DeliveryError with
  `refused`), so `send`, `queue flush` (the partial-refusal rule: retry only the 4xx ones) and
  `test send` treat them alike. When the connection ends half-way through those replies, the
  recipients that had their reply keep it and the others count as a temporary refusal (421),
  so a retry does not deliver twice to the ones already done.

The server is `host` and `port` (default 24, security none), or a Unix socket
(`socket_path`, e.g. /var/run/dovecot/lmtp). Everything else (TLS, AUTH, the probing
options, bounds and deadlines on every reply, the stages `mailctl test` times) is SmtpTransport's.
"""

from __future__ import annotations

import dataclasses
import re
import smtplib
import socket
import time
from dataclasses import dataclass
from typing import Any, Sequence

from mailctl.addresses import envelope_address
from mailctl.errors import ConfigError, DeliveryError, MailctlError, UnavailableError
from mailctl.message import strip_bcc
from mailctl.transports.base import SendResult, Stage, StageInfo
from mailctl.transports.smtp import (
    RecordingSmtpSession,
    Server,
    SmtpSession,
    SmtpTransport,
    _decode,
    _describe_data,
    _describe_rcpt,
    queue_id_of,
)

LMTP_PORT = 24  # RFC 2033 section 5: not 25, so that LMTP is never mistaken for SMTP


class _Lhlo:
    """LHLO for EHLO. LMTP has no HELO (RFC 2033 section 4.1): a refused LHLO stands."""

    ehlo_msg = "lhlo"
    _lhlo_reply: tuple[int, bytes] = (0, b"")

    def ehlo(self, name: str = ""):
        self._lhlo_reply = super().ehlo(name)  # type: ignore[misc]
        return self._lhlo_reply

    def helo(self, name: str = ""):  # noqa: ARG002 - smtplib's signature
        return self._lhlo_reply


class LmtpSession(_Lhlo, SmtpSession):
    pass


class RecordingLmtpSession(_Lhlo, RecordingSmtpSession):
    pass


@dataclass(frozen=True)
class UnixServer(Server):
    """An LMTP server on a Unix socket: `host` is the socket's path."""

    @property
    def address(self) -> str:
        return f"unix:{self.host}"


class LmtpTransport(SmtpTransport):
    name = "lmtp"
    announces_next = False  # one reply per recipient after the data: one message at a time
    session_class = LmtpSession
    recording_session_class = RecordingLmtpSession

    def __init__(self, profile, secrets, **options: Any) -> None:
        super().__init__(_with_lmtp_defaults(profile), secrets, **options)
        path = profile.get("socket_path")
        if path:
            if self.source_address:
                raise ConfigError(f"profile {profile.name!r} (lmtp): source_address does not apply to a Unix socket",
                                  hint="drop source_address, or connect over TCP (host and port)")
            self.servers[0] = UnixServer(str(_expand(path)), 0)
        self.data_replies: dict[str, str] = {}  # the last message's reply for each recipient
        self._rcpt_refused: dict[str, str] = {}
        self._data_refused: dict[str, str] = {}
        self._accepted: list[str] = []

    # --- connecting: TCP as SMTP does, or a Unix socket ---------------------------------------
    def resolve(self, server: Server) -> list[tuple]:
        if isinstance(server, UnixServer):
            return [(socket.AF_UNIX, socket.SOCK_STREAM, 0, "", (server.host,))]
        return super().resolve(server)

    def connect(self, server: Server, addrs: list[tuple] | None = None) -> None:
        if not isinstance(server, UnixServer):
            return super().connect(server, addrs)
        self.server = server
        self.encrypted = False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(server.host)
        except OSError as exc:
            sock.close()
            what = "timed out" if isinstance(exc, (TimeoutError, socket.timeout)) else (exc.strerror or str(exc))
            err = UnavailableError(f"cannot connect to {server.address}: {what}")
            raise self._error(err, "connect", exc, server=server) from exc
        cls = self.recording_session_class if self.recorder is not None else self.session_class
        session = cls(local_hostname=self.ehlo_name, timeout=self.timeout, recorder=self.recorder)
        session.attach(sock, "localhost")
        self.session = session
        if self.recorder is not None:
            self.recorder.add("*", f"connected to {server.address}")

    def _describe_peer(self) -> StageInfo:
        if isinstance(self.server, UnixServer):
            return StageInfo(self.server.address, {"peer": self.server.address})
        return super()._describe_peer()

    # --- the transaction: one reply per accepted recipient after the data ----------------------
    def send(self, raw: bytes, sender: str, recipients: list[str], **kwargs: Any) -> SendResult:
        """SmtpTransport.send, with the refusals after the data added to the RCPT ones."""
        self.data_replies = {}
        self._data_refused = {}
        result = super().send(raw, sender, recipients, **kwargs)
        if self._data_refused:
            result.refused = {**result.refused, **self._data_refused}
        result.queue_id = lmtp_queue_id(result.reply)
        return result

    def rcpt_to(self, recipients: list[str]) -> dict[str, str]:
        refused = super().rcpt_to(recipients)
        self._rcpt_refused = refused
        self._accepted = [r for r in (envelope_address(a) for a in recipients) if r not in refused]
        return refused

    def send_data(self, raw: bytes) -> tuple[int, str]:
        """DATA, the message, a reply per recipient accepted by rcpt_to()."""
        raw = self._for_wire(raw)
        try:
            code, resp = self.session.docmd("DATA")
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise self._lost("data", exc) from exc
        if code != 354:
            raise self._fail_message("data", code, resp, "DATA")
        return self._write_data(raw, self._accepted, self._rcpt_refused)

    def _data_reply(self, recipients: Sequence[str], refused: dict[str, str] | None) -> tuple[int, str]:
        """RFC 2033 section 4.2: one reply for each accepted recipient, in RCPT TO order.
        Returns the first success; the refused ones go to _data_refused (raised together
        with the RCPT refusals when none succeeded)."""
        refused = refused or {}
        accepted = [r for r in recipients if r not in refused] if refused else list(recipients)
        replies: dict[str, tuple[int, str]] = {}
        lost: BaseException | None = None
        read = 0  # replies read: one per accepted RCPT TO, a recipient given twice included
        for rcpt in accepted:
            try:
                code, resp = self.session.getreply()
            except (smtplib.SMTPServerDisconnected, OSError) as exc:
                lost = exc
                break
            read += 1
            replies[rcpt] = (code, self.redactor.redact(_decode(resp)).replace("\n", " "))
        if lost is not None and not any(code == 250 for code, _ in replies.values()):
            raise self._lost("data", lost) from lost
        if lost is not None:  # delivered to some: the rest are retried, not the ones done
            self._drop()
            for rcpt in accepted[read:]:
                replies[rcpt] = (421, f"4.4.2 connection lost before the server's reply for this recipient ({lost})")
        self.data_replies = {r: f"{c} {t}" for r, (c, t) in replies.items()}
        delivered = [(c, t) for c, t in replies.values() if c == 250]
        failed = {r: f"{c} {t}" for r, (c, t) in replies.items() if c != 250}
        self._data_refused = failed
        if not delivered:
            raise self._all_refused_at_data(replies, refused)
        return delivered[0]

    def _all_refused_at_data(self, replies: dict[str, tuple[int, str]], refused: dict[str, str]) -> MailctlError:
        rcpt, (code, text) = next(iter(replies.items()))
        err = self._reply_error("data", code, text, what=f"the message for <{rcpt}>")
        if isinstance(err, DeliveryError) and any(c < 500 for c, _ in replies.values()):
            err.permanent = False
        err.refused = {**refused, **{r: f"{c} {t}" for r, (c, t) in replies.items()}}
        return err

    # --- the stages `mailctl test send` times: DATA shows every recipient's reply --------------
    def _message_stages(self, server: Server, message):
        address, alt = server.address, server.alternate
        raw = strip_bcc(message.raw)
        sender, recipients = message.sender, message.recipients
        self._data_refused = {}
        yield Stage("mail", lambda: self.mail_from(sender, raw, recipients),
                    lambda v: StageInfo(f"{v[0]} {v[1]}", {"sender": sender}), address, alternate=alt)
        refused = yield Stage("rcpt", lambda: self.rcpt_to(recipients), lambda r: _describe_rcpt(recipients, r), address,
                              alternate=alt)
        yield Stage("data", lambda: self.send_data(raw), lambda v: self._describe_lmtp_data(server, v, refused or {}),
                    address, alternate=alt)

    def _describe_lmtp_data(self, server: Server, value, refused: dict[str, str]) -> StageInfo:
        info = _describe_data(server, value, {**refused, **self._data_refused})
        info.data["queue_id"] = info.facts["result"]["queue_id"] = lmtp_queue_id(info.facts["result"]["reply"])
        info.data["recipients"] = dict(self.data_replies)
        if self._data_refused:
            info.detail += f" ({len(self.data_replies) - len(self._data_refused)} of {len(self.data_replies)} delivered)"
        return info

    def probe_settings(self) -> dict[str, Any]:
        settings = super().probe_settings()
        settings["protocol"] = "lmtp"
        return settings


# Dovecot: "250 2.0.0 <bob@example.com> ZcgvJoG3DmuDDwAAg+zDdQ Saved"; the <...> is the recipient
_DOVECOT_ID = re.compile(r"<[^<>]*>\s+([A-Za-z0-9+/=._-]{6,})\s+Saved\b")


def lmtp_queue_id(reply: str) -> str | None:
    """The delivery id in an LMTP server's reply: Dovecot's session id, else what SMTP
    servers write (queue_id_of), but never the recipient that an LMTP reply echoes in <>."""
    m = _DOVECOT_ID.search(reply or "")
    if m:
        return m.group(1)
    found = queue_id_of(reply or "")
    return None if found and f"<{found}>" in reply and "@" in found else found


def _expand(path: str):
    from pathlib import Path

    return Path(path).expanduser()


def _with_lmtp_defaults(profile):
    """The profile as SmtpTransport reads it: security none and port 24 unless set, and a
    socket_path standing in for host."""
    values = dict(profile.values)
    if not values.get("security"):
        values["security"] = "none"
    if not values.get("port"):
        values["port"] = LMTP_PORT
    if values.get("socket_path") and not values.get("host"):
        values["host"] = "localhost"
    if not values.get("host"):
        raise ConfigError(f"profile {profile.name!r} (lmtp): missing required field host (or socket_path)",
                          hint=f"set one: mailctl profile edit {profile.name} --socket-path /var/run/dovecot/lmtp "
                               "(or --host HOST --port 24)")
    try:
        return dataclasses.replace(profile, values=values)
    except TypeError:  # pragma: no cover - a profile that is not a dataclass
        return profile


__all__ = ["LmtpTransport", "LMTP_PORT"]
