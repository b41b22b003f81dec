"""sendmail(8) compatibility: the command-line conventions of /usr/sbin/sendmail as programs
and cron's MAILTO use them, and the header fixes an MTA's pickup makes (Postfix cleanup adds
From, Date and Message-ID when they are missing)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mailctl.errors import ExitCode, UsageError, ValidationError

if TYPE_CHECKING:
    from mailctl.outbox.service import SendOutcome

# options that take a value, as separate word or glued (-fADDR)
_WITH_VALUE = {"f", "r", "F", "B", "N", "R", "V", "X", "C", "L", "h", "q"}


@dataclass
class SendmailOptions:
    read_headers: bool = False  # -t
    dot_ends: bool = True  # without -i / -oi a line '.' ends the message
    sender: str | None = None  # -f / -r
    full_name: str | None = None  # -F
    queue_only: bool = False  # -odq
    recipients: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def parse_sendmail_args(args: list[str]) -> SendmailOptions:
    opts = SendmailOptions()
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            opts.recipients += args[i:]
            break
        if not arg.startswith("-") or arg == "-":
            opts.recipients.append(arg)
            continue
        flag, rest = arg[1:2], arg[2:]
        if flag in _WITH_VALUE:
            if not rest:
                if i >= len(args):
                    raise UsageError(f"sendmail: option -{flag} needs a value")
                rest = args[i]
                i += 1
            if flag in ("f", "r"):
                opts.sender = rest.strip().strip("<>").strip()
            elif flag == "F":
                opts.full_name = rest
            else:
                opts.ignored.append(f"-{flag}{rest}")
        elif flag == "t":
            opts.read_headers = True
        elif flag == "i":
            opts.dot_ends = False
        elif flag == "o":
            if rest == "i":
                opts.dot_ends = False
            elif rest in ("dq", "dd"):
                opts.queue_only = True
            else:
                opts.ignored.append(arg)  # -oem, -odi, -odb, -oXvalue ...
        elif flag == "b":
            if rest in ("m", ""):
                continue
            raise UsageError(f"sendmail: mode -b{rest} is not supported",
                             hint="mailctl sendmail only accepts mail (-bm); see `mailctl queue list` for the queue")
        elif flag in ("v", "U", "n", "m", "e", "G", "A", "d"):
            opts.ignored.append(arg)
        else:
            raise UsageError(f"sendmail: unknown option {arg}", hint="run: mailctl sendmail --help")
    return opts


def sendmail_exit_code(outcome: SendOutcome) -> ExitCode:
    """sendmail(8)'s exit status: a message accepted for delivery is success, also when it is
    only queued or deferred for a retry; 1 when the server rejected it (failed, expired)."""
    return ExitCode.PROBLEMS if outcome.outcome in ("failed", "expired") else ExitCode.OK


def read_until_dot(data: bytes) -> bytes:
    """Classic sendmail input: without -i, a line holding a single '.' ends the message."""
    out = []
    for line in data.splitlines(keepends=True):
        if line.rstrip(b"\r\n") == b".":
            break
        out.append(line)
    return b"".join(out)


def prepare_sendmail_message(data: bytes, opts: SendmailOptions, doc: Any, profile_name: str | None) -> tuple[bytes, str, list[str], str]:
    """-> (raw CRLF bytes with Bcc removed and missing From/Date/Message-ID added, envelope
    sender, recipients, profile name)."""
    from email.utils import formataddr, formatdate, make_msgid

    from mailctl.outbox.envelope import header_addresses, parse_message, strip_bcc_bytes, to_crlf
    from mailctl.profiles.resolve import resolve_profile

    if opts.dot_ends:
        data = read_until_dot(data)
    if not data.strip():
        raise ValidationError("sendmail: empty message on stdin")
    raw = to_crlf(data)
    if b"\r\n\r\n" not in raw and not raw.startswith(b"\r\n"):
        # headers only, or a bare body: treat a first line without a colon as body
        first = raw.split(b"\r\n", 1)[0]
        raw = raw + b"\r\n" if b":" in first else b"\r\n" + raw
    msg = parse_message(raw)
    profile = resolve_profile(doc, profile_name)

    recipients = [r for r in opts.recipients if r]
    if opts.read_headers:
        recipients += header_addresses(msg, "To", "Cc", "Bcc")
    recipients = list(dict.fromkeys(recipients))
    if not recipients:
        raise ValidationError("sendmail: no recipients", hint="give recipients as arguments, or -t to read To/Cc/Bcc")

    header_from = (header_addresses(msg, "Sender") or header_addresses(msg, "From") or [None])[0]
    sender = opts.sender or header_from or profile.get("from_address") or profile.get("username") or ""
    if sender and "@" not in sender:
        sender = ""  # a bare login name (cron's MAILTO from user root) is not a usable address

    extra: list[bytes] = []
    if msg.get("From") is None:
        addr = sender or profile.get("from_address") or ""
        if addr:
            extra.append(f"From: {formataddr((opts.full_name or '', addr))}\r\n".encode())
    if msg.get("Date") is None:
        extra.append(f"Date: {formatdate(localtime=True)}\r\n".encode())
    if msg.get("Message-ID") is None:
        domain = (sender or "localhost").rpartition("@")[2] or "localhost"
        extra.append(f"Message-ID: {make_msgid(domain=domain)}\r\n".encode())
    raw = b"".join(extra) + strip_bcc_bytes(raw)
    return raw, sender, recipients, profile.name
