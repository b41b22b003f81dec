"""The SMTP envelope of a finished message: who it is from (MAIL FROM) and to (RCPT TO), read
from its headers the way `sendmail -t` does. Building messages is mailctl.message's job; this
only reads them."""

from __future__ import annotations

from email import policy
from email.message import Message
from email.parser import BytesParser
from email.utils import getaddresses

from mailctl.errors import ValidationError


def parse_message(raw: bytes) -> Message:
    """Raw bytes -> EmailMessage (headers decoded leniently; the bytes themselves are kept)."""
    return BytesParser(policy=policy.default).parsebytes(raw)


def header_addresses(msg: Message, *names: str) -> list[str]:
    values: list[str] = []
    for name in names:
        values += [str(v) for v in (msg.get_all(name) or [])]
    seen: dict[str, None] = {}
    for _display, addr in getaddresses(values):
        addr = addr.strip()
        if addr and "@" in addr:
            seen.setdefault(addr, None)
    return list(seen)


def envelope_from_headers(msg: Message, *, resent: bool = True) -> tuple[str, list[str]]:
    """(sender, recipients) from Sender/From and To/Cc/Bcc (Resent-* when present, RFC 5322 3.6.6)."""
    if resent and any(msg.get(h) is not None for h in ("Resent-To", "Resent-Cc", "Resent-Bcc")):
        rcpts = header_addresses(msg, "Resent-To", "Resent-Cc", "Resent-Bcc")
        senders = header_addresses(msg, "Resent-Sender") or header_addresses(msg, "Resent-From")
    else:
        rcpts = header_addresses(msg, "To", "Cc", "Bcc")
        senders = []
    if not senders:
        senders = header_addresses(msg, "Sender") or header_addresses(msg, "From")
    if not rcpts:
        raise ValidationError("the message has no recipients in To, Cc or Bcc",
                              hint="add a To: header, or give the recipients as arguments")
    return (senders[0] if senders else ""), rcpts


def message_bytes(msg: Message, *, strip_bcc: bool = True) -> bytes:
    """The message as CRLF bytes for the wire; Bcc headers removed (recipients stay in the envelope)."""
    if strip_bcc and (msg.get("Bcc") is not None or msg.get("Resent-Bcc") is not None):
        import copy

        msg = copy.copy(msg)
        del msg["Bcc"]
        del msg["Resent-Bcc"]
    pol = getattr(msg, "policy", None)
    if pol is None or pol is policy.compat32:
        return msg.as_bytes(policy=policy.compat32.clone(linesep="\r\n"))
    return msg.as_bytes(policy=pol.clone(linesep="\r\n"))


def strip_bcc_bytes(raw: bytes) -> bytes:
    """Drop Bcc (and Resent-Bcc) header fields, including folded lines, from raw bytes without
    re-serialising the rest (signatures and exact bytes survive)."""
    end = raw.find(b"\r\n\r\n")
    sep = 4
    if end < 0:
        end, sep = raw.find(b"\n\n"), 2
    if end < 0:
        head, body = raw, b""
    else:
        head, body = raw[:end + sep // 2], raw[end + sep // 2:]
    out, skipping = [], False
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        lower = line.lower()
        skipping = lower.startswith(b"bcc:") or lower.startswith(b"resent-bcc:")
        if not skipping:
            out.append(line)
    return b"".join(out) + body


def to_crlf(raw: bytes) -> bytes:
    """Bare LF line ends -> CRLF (SMTP needs CRLF; programs piping to sendmail write LF)."""
    if b"\n" not in raw.replace(b"\r\n", b""):
        return raw
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
