"""Building RFC 5322 messages for a profile, and the envelope and bytes a transport sends.

    msg = build_message(profile, settings, to=["bob@example.com"], subject="Hi", body="...")
    sender, recipients = envelope(msg)      # recipients include Cc and Bcc
    raw = message_bytes(msg)                # CRLF, Bcc header removed

The Bcc header stays on the EmailMessage (so envelope() can read it) and is stripped from the
bytes: never pass msg.as_bytes() to a transport."""

from __future__ import annotations

import mimetypes
import re
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import formataddr, format_datetime, getaddresses, localtime, make_msgid, parseaddr
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mailctl.errors import ConfigError, NotFoundError, ValidationError

SIGNATURE_SEPARATOR = "-- "  # RFC 3676 signature delimiter ("-- " on its own line)
_ADDR_RE = re.compile(r"^[^@\s<>(),;:\"]+@[^@\s<>(),;:\"]+$")
_BCC_LINE_RE = re.compile(rb"(?im)^bcc:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*\r?\n")


def _no_crlf(field: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValidationError(
            f"{field}: a header value must not contain line breaks (CR or LF)",
            field=field,
            hint="header injection guard: pass the value on one line",
        )
    return value


def _value(profile: Any, key: str) -> str:
    if profile is None:
        return ""
    getter = getattr(profile, "get", None)
    value = getter(key) if getter else None
    return value or ""


def _split_addresses(field: str, values: Iterable[str] | str) -> list[str]:
    """Each value may be 'a@x', 'Name <a@x>' or a comma-separated list of those."""
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for value in values:
        _no_crlf(field, value)
        for name, addr in getaddresses([value]):
            if not addr and not name:
                continue
            if not _ADDR_RE.match(addr or ""):
                raise ValidationError(f"{field}: not an email address: {value!r}", field=field)
            out.append(formataddr((name, addr)) if name else addr)
    return out


def _addr_spec(value: str) -> str:
    return parseaddr(value)[1]


def _domain(addr: str) -> str:
    return addr.rpartition("@")[2] or "localhost"


def build_message(
    profile: Any,
    settings: Mapping[str, Any] | None,
    *,
    to: Sequence[str] | str,
    subject: str,
    body: str,
    cc: Sequence[str] = (),
    bcc: Sequence[str] = (),
    attachments: Sequence[str | Path] = (),
    from_address: str | None = None,
    reply_to: str | None = None,
) -> EmailMessage:
    """A complete message for `profile` (a ResolvedProfile) under the [settings] table.

    From: from_address (or the profile's) with the profile's sender_name. With
    settings.force_postmaster, From is the postmaster and Reply-To keeps the original sender.
    The profile's signature is appended to the text body. Raises ValidationError (65) for a
    header value with CR/LF or an invalid address, NotFoundError (66) for a missing attachment,
    ConfigError (78) when there is no sender address at all."""
    settings = settings or {}
    subject = _no_crlf("subject", subject or "")
    sender_name = _no_crlf("sender_name", _value(profile, "sender_name"))

    sender = from_address or _value(profile, "from_address")
    if not sender and "@" in _value(profile, "username"):
        sender = _value(profile, "username")
    if not sender:
        name = getattr(profile, "name", "?")
        raise ConfigError(
            f"profile {name!r} has no from_address",
            hint=f"pass --from ADDR or set it: mailctl profile edit {name} --from-address ADDR",
        )
    _no_crlf("from", sender)
    from_name, from_addr = parseaddr(sender)
    if not _ADDR_RE.match(from_addr or ""):
        raise ValidationError(f"from: not an email address: {sender!r}", field="from")
    from_name = from_name or sender_name

    explicit_reply_to = reply_to or _value(profile, "reply_to")
    reply_to_list = _split_addresses("reply_to", explicit_reply_to) if explicit_reply_to else []

    if settings.get("force_postmaster"):
        postmaster = settings.get("postmaster") or ""
        if not postmaster:
            raise ConfigError(
                "settings: force_postmaster is true but postmaster is empty",
                hint="set [settings] postmaster = \"postmaster@your-domain\" in the profiles file",
            )
        _no_crlf("postmaster", postmaster)
        if not reply_to_list:  # replies still reach the real sender
            reply_to_list = [formataddr((from_name, from_addr)) if from_name else from_addr]
        from_addr = _addr_spec(postmaster) or postmaster

    to_list = _split_addresses("to", to)
    cc_list = _split_addresses("cc", cc)
    bcc_list = _split_addresses("bcc", bcc)
    if not (to_list or cc_list or bcc_list):
        raise ValidationError("no recipients: give at least one --to", field="to")

    msg = EmailMessage()
    msg["From"] = formataddr((from_name, from_addr)) if from_name else from_addr
    if to_list:
        msg["To"] = ", ".join(to_list)
    if cc_list:
        msg["Cc"] = ", ".join(cc_list)
    if bcc_list:
        msg["Bcc"] = ", ".join(bcc_list)
    if reply_to_list:
        msg["Reply-To"] = ", ".join(reply_to_list)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(localtime())
    msg["Message-ID"] = make_msgid(domain=_domain(from_addr))
    msg["MIME-Version"] = "1.0"

    text = body or ""
    signature = _value(profile, "signature")
    if signature:
        if text and not text.endswith("\n"):
            text += "\n"
        text += f"{SIGNATURE_SEPARATOR}\n{signature}\n"
    msg.set_content(text)

    for item in attachments:
        path = Path(item).expanduser()
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"attachment not found: {path}") from None
        except IsADirectoryError:
            raise ValidationError(f"attachment is a directory: {path}", field="attach") from None
        except PermissionError:
            raise NotFoundError(f"attachment not readable (permission denied): {path}") from None
        ctype, encoding = mimetypes.guess_type(path.name)
        if ctype is None or encoding is not None:
            ctype = "application/octet-stream"
        maintype, _, subtype = ctype.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=path.name)
    return msg


def envelope(msg: EmailMessage) -> tuple[str, list[str]]:
    """(envelope sender, recipients): the From address and every To, Cc and Bcc address,
    de-duplicated in order."""
    sender = _addr_spec(str(msg.get("From", "")))
    seen: set[str] = set()
    recipients: list[str] = []
    for header in ("To", "Cc", "Bcc"):
        for value in msg.get_all(header, []):
            for _name, addr in getaddresses([str(value)]):
                key = addr.lower()
                if addr and key not in seen:
                    seen.add(key)
                    recipients.append(addr)
    return sender, recipients


def message_bytes(msg: EmailMessage) -> bytes:
    """The bytes to send: CRLF line ends, Bcc removed (SMTPUTF8 policy when an address is not ASCII)."""
    if "Bcc" in msg:
        import copy

        msg = copy.copy(msg)
        del msg["Bcc"]
    try:
        return msg.as_bytes(policy=email_policy.SMTP)
    except UnicodeEncodeError:
        return msg.as_bytes(policy=email_policy.SMTPUTF8)


def strip_bcc(raw: bytes) -> bytes:
    """Remove any Bcc header from raw message bytes (a guard in the transports; cheap when absent)."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    head = raw if end < 0 else raw[:end + 2]
    if b"bcc:" not in head.lower():
        return raw
    new_head = _BCC_LINE_RE.sub(b"", head)
    return new_head if end < 0 else new_head + raw[end + 2:]


__all__ = ["build_message", "envelope", "message_bytes", "strip_bcc"]
