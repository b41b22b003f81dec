"""The SMTP envelope of a finished message: who it is from (MAIL FROM) and to (RCPT TO), read
from its headers the way `sendmail -t` does. Building messages is mailctl.message's job; this
only reads them."""

from __future__ import annotations

from email import policy
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser

from mailctl.addresses import check_address, parse_address_list
from mailctl.errors import ValidationError
from mailctl.message import to_crlf  # noqa: F401 - the outbox's callers take it from here


def parse_message(raw: bytes) -> Message:
    """Raw bytes -> EmailMessage (headers decoded leniently; the bytes themselves are kept)."""
    return BytesParser(policy=policy.default).parsebytes(raw)


def raw_header_values(msg: Message, *names: str) -> list[tuple[str, str]]:
    """(header name, value) of every field called one of `names`, as written (unfolded), not
    through the email package's header objects: those raise on some malformed addresses
    (``To: a@`` is an IndexError inside the stdlib)."""
    wanted = {n.lower() for n in names}
    out = []
    for name, value in msg.raw_items():
        if name.lower() in wanted:
            text = str(value)
            if not text.isascii():  # 8-bit (SMTPUTF8) header bytes come out surrogate-escaped
                text = text.encode("ascii", "surrogateescape").decode("utf-8", "replace")
            out.append((name, text.replace("\r\n", "").replace("\n", "")))
    return out


def header_mailboxes(msg: Message, *names: str) -> list[tuple[str, str, str]]:
    """(header, display name, address as written) for every mailbox in those headers, not validated."""
    return [(header, _decoded(display), addr) for header, value in raw_header_values(msg, *names)
            for display, addr in parse_address_list(value)]


def _decoded(display: str) -> str:
    """An RFC 2047 display name decoded (the addresses themselves are never encoded)."""
    if "=?" not in display:
        return display
    try:
        return str(make_header(decode_header(display)))
    except Exception:  # leave an undecodable name as it is
        return display


def header_addresses(msg: Message, *names: str) -> list[str]:
    """The addresses in those headers, validated (ValidationError, 65, naming the header and
    the address) and de-duplicated in order."""
    seen: dict[str, None] = {}
    for header, _display, addr in header_mailboxes(msg, *names):
        seen.setdefault(check_address(addr, f"{header} header"), None)
    return list(seen)


def _resent(msg: Message) -> bool:
    return bool(raw_header_values(msg, "Resent-To", "Resent-Cc", "Resent-Bcc"))


def envelope_recipients(msg: Message, *, resent: bool = True) -> list[str]:
    """To, Cc and Bcc (Resent-* when present, RFC 5322 3.6.6), validated (65 naming a bad one)."""
    if resent and _resent(msg):
        rcpts = header_addresses(msg, "Resent-To", "Resent-Cc", "Resent-Bcc")
    else:
        rcpts = header_addresses(msg, "To", "Cc", "Bcc")
    if not rcpts:
        raise ValidationError("the message has no recipients in To, Cc or Bcc",
                              hint="add a To: header, or give the recipients as arguments")
    return rcpts


def envelope_sender(msg: Message, *, resent: bool = True) -> str:
    """The Sender (or From) address, validated (65 naming a bad one); '' when there is none."""
    senders: list[str] = []
    if resent and _resent(msg):
        senders = header_addresses(msg, "Resent-Sender") or header_addresses(msg, "Resent-From")
    if not senders:
        senders = header_addresses(msg, "Sender") or header_addresses(msg, "From")
    return senders[0] if senders else ""


def envelope_from_headers(msg: Message, *, resent: bool = True) -> tuple[str, list[str]]:
    """(sender, recipients) from Sender/From and To/Cc/Bcc (Resent-* when present, RFC 5322 3.6.6)."""
    rcpts = envelope_recipients(msg, resent=resent)
    return envelope_sender(msg, resent=resent), rcpts


def set_from(raw: bytes, from_value: str, reply_to: str | None) -> bytes:
    """Raw bytes with the From field (folded lines too) replaced by `from_value`, or added when
    there is none, and `Reply-To: reply_to` added when given and the message has no Reply-To;
    the rest of the bytes stay as they are. For [settings] force_postmaster."""
    end = raw.find(b"\r\n\r\n")
    head, body = (raw, b"") if end < 0 else (raw[:end + 2], raw[end + 2:])
    lines = head.splitlines(keepends=True)
    out: list[bytes] = []
    skipping = False
    has_reply_to = False
    for line in lines:
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        lower = line.lower()
        has_reply_to = has_reply_to or lower.startswith(b"reply-to:")
        skipping = lower.startswith(b"from:")
        if not skipping:
            out.append(line)
    new = [f"From: {from_value}\r\n".encode("utf-8")]
    if reply_to and not has_reply_to:
        new.append(f"Reply-To: {reply_to}\r\n".encode("utf-8"))
    return b"".join(new + out) + body


def message_bytes(msg: Message, *, strip_bcc: bool = True) -> bytes:
    """The message as CRLF bytes for the wire; Bcc headers removed (recipients stay in the envelope)."""
    if strip_bcc and raw_header_values(msg, "Bcc", "Resent-Bcc"):
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




def prepare_queued_message(raw: bytes, sender: str | None, recipients: list[str] | None,
                           settings: dict | None) -> tuple[bytes, str, list[str]]:
    """A complete message as `queue add` takes it -> (bytes to queue, envelope sender,
    recipients): NUL refused and line ends made CRLF (mailctl.message.wire_bytes), the
    envelope from the arguments or else the headers, every address checked (65 naming it),
    [settings] force_postmaster applied (From and, but for the null sender, MAIL FROM become the
    postmaster; Reply-To keeps the real sender), Bcc removed."""
    from mailctl.addresses import check_sender, is_address
    from mailctl.message import format_mailbox, postmaster_address, wire_bytes

    raw = wire_bytes(raw)
    msg = parse_message(raw)
    rcpts = [check_address(r, "--to") for r in recipients] if recipients else envelope_recipients(msg)
    sender = envelope_sender(msg) if sender is None else check_sender(sender, "--from")
    postmaster = postmaster_address(settings)
    if postmaster is not None:
        boxes = header_mailboxes(msg, "From")
        name, addr = (boxes[0][1], boxes[0][2]) if boxes else ("", "")
        reply_to = format_mailbox(name, check_address(addr)) if is_address(addr) else None
        raw = set_from(raw, format_mailbox(name, postmaster), reply_to)
        if sender:
            sender = postmaster
    return strip_bcc_bytes(raw), sender, rcpts
