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

from mailctl.addresses import check_address, parse_address_list
from mailctl.errors import ConfigError, NotFoundError, ValidationError

SIGNATURE_SEPARATOR = "-- "  # RFC 3676 signature delimiter ("-- " on its own line)
_BCC_LINE_RE = re.compile(rb"(?im)^bcc:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*\r?\n")
# what str.splitlines() breaks at (the email package folds header values there, so any of
# them in a value is a header injection), NUL and the other C0 controls but TAB
_HEADER_BREAK_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


def _no_crlf(field: str, value: str) -> str:
    bad = _HEADER_BREAK_RE.search(value)
    if bad:
        char = bad.group()
        what = {"\r": "CR", "\n": "LF", "\x00": "NUL"}.get(char, f"U+{ord(char):04X}")
        raise ValidationError(
            f"{field}: a header value must not contain line breaks or control characters (found {what})",
            field=field,
            hint="header injection guard: pass the value on one line",
        )
    return value


def check_header_value(field: str, value: str) -> str:
    """The header-injection guard for a value that goes into a header (ValidationError, 65,
    naming the field): no CR, LF, U+2028/U+2029/U+0085 or other line breaks, no NUL."""
    return _no_crlf(field, value)


def to_crlf(raw: bytes) -> bytes:
    """Every line end as CRLF: bare LF and bare CR become CRLF. SMTP needs CRLF, and a bare CR
    or LF next to a '.' must never reach DATA (a server that ends lines there would see the
    end of the message early: SMTP smuggling). Clean input comes back as it is, after three
    byte counts."""
    lf = raw.count(b"\n")
    if lf == raw.count(b"\r") == raw.count(b"\r\n"):
        return raw
    return raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def wire_bytes(raw: bytes) -> bytes:
    """Raw message bytes as they may be queued and sent: no NUL (ValidationError, 65), line
    ends CRLF (to_crlf)."""
    nul = raw.find(b"\x00")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise ValidationError(
            f"the message contains a NUL byte (line {line}): NUL is not allowed in mail",
            field="message",
            hint="send binary data as a MIME attachment (base64), or remove the NUL bytes",
        )
    return to_crlf(raw)


def format_mailbox(name: str, addr: str) -> str:
    """'Name <addr>' (or addr) for a header; unlike email.utils.formataddr it takes a
    non-ASCII (SMTPUTF8) address."""
    if not name:
        return addr
    if addr.isascii():
        return formataddr((name, addr))
    if re.search(r'[()<>\[\]:;@\\,."]', name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{addr}>"


def postmaster_address(settings: Mapping[str, Any] | None) -> str | None:
    """With [settings] force_postmaster, the postmaster address every message is sent from
    (None without it); ConfigError (78) when it is missing or not an address."""
    settings = settings or {}
    if not settings.get("force_postmaster"):
        return None
    postmaster = str(settings.get("postmaster") or "").strip()
    if not postmaster:
        raise ConfigError(
            "settings: force_postmaster is true but postmaster is empty",
            hint="set [settings] postmaster = \"postmaster@your-domain\" in the profiles file",
        )
    found = parse_address_list(postmaster)
    try:
        if len(found) != 1:
            raise ValidationError("settings.postmaster: expected one address", field="postmaster")
        _no_crlf("postmaster", postmaster)
        return check_address(found[0][1], "settings.postmaster")
    except ValidationError as exc:
        raise ConfigError(exc.message, hint="set [settings] postmaster to one address, e.g. postmaster@your-domain") from None


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
        found = parse_address_list(value)
        if not found and value.strip():
            raise ValidationError(f"{field}: {value!r} is not an email address", field=field,
                                  hint="give a full address such as user@example.com")
        for name, addr in found:
            out.append(format_mailbox(name, check_address(addr, field)))
    return out


def _addr_spec(value: str) -> str:
    return parseaddr(value)[1]


def _domain(addr: str) -> str:
    return addr.rpartition("@")[2] or "localhost"


def append_signature(text: str, signature: str) -> str:
    """The body with the profile's signature after an RFC 3676 delimiter line ("-- ").
    A signature that already begins with the delimiter (as the example file writes it, or
    "--" without the trailing space, which editors strip) gets no second one."""
    if not signature:
        return text
    if text and not text.endswith("\n"):
        text += "\n"
    first, _, rest = signature.partition("\n")
    if first.rstrip(" \r") == SIGNATURE_SEPARATOR.rstrip():
        signature = rest  # the delimiter is written below, in its exact form
    body = signature if signature.endswith("\n") or not signature else signature + "\n"
    return text + f"{SIGNATURE_SEPARATOR}\n" + body


def _read_file(path: Path, what: str, field: str) -> bytes:
    """A file's bytes, or the one-line error naming it: 66 when missing or unreadable, 65 for
    a directory."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ValidationError(f"{what} is a directory: {path}", field=field) from None
    except PermissionError:
        raise NotFoundError(f"{what} not readable (permission denied): {path}") from None


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
    found = parse_address_list(sender)
    if len(found) != 1:
        raise ValidationError(f"from: {sender!r} is not one email address", field="from",
                              hint="give a full address such as user@example.com")
    from_name, from_addr = found[0][0], check_address(found[0][1], "from")
    from_name = from_name or sender_name

    explicit_reply_to = reply_to or _value(profile, "reply_to")
    reply_to_list = _split_addresses("reply_to", explicit_reply_to) if explicit_reply_to else []

    postmaster = postmaster_address(settings)
    if postmaster is not None:
        if not reply_to_list:  # replies still reach the real sender
            reply_to_list = [format_mailbox(from_name, from_addr)]
        from_addr = postmaster

    to_list = _split_addresses("to", to)
    cc_list = _split_addresses("cc", cc)
    bcc_list = _split_addresses("bcc", bcc)
    if not (to_list or cc_list or bcc_list):
        raise ValidationError("no recipients: give at least one --to", field="to")

    msg = EmailMessage()
    msg["From"] = format_mailbox(from_name, from_addr)
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

    text = append_signature(body or "", _value(profile, "signature"))
    if "\x00" in text:  # NUL may not go on the wire as it is: quoted-printable carries it as =00
        msg.set_content(text, cte="quoted-printable")
    else:
        msg.set_content(text)

    for item in attachments:
        path = Path(item).expanduser()
        data = _read_file(path, "attachment", "attach")
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
    if _has_utf8_address(msg):  # the SMTP policy would turn the address into an (invalid) encoded-word
        return to_crlf(msg.as_bytes(policy=email_policy.SMTPUTF8))
    try:
        return to_crlf(msg.as_bytes(policy=email_policy.SMTP))
    except UnicodeEncodeError:
        return to_crlf(msg.as_bytes(policy=email_policy.SMTPUTF8))


def _has_utf8_address(msg: EmailMessage) -> bool:
    for name in ("From", "Sender", "To", "Cc", "Reply-To"):
        for value in msg.get_all(name, []):
            if str(value).isascii():
                continue
            for addr in getattr(value, "addresses", ()):
                if not addr.addr_spec.isascii():
                    return True
    return False


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


# --- a complete message from a file (swaks' --data) -----------------------------------------
def message_from_file(path: str, profile: Any, *, to: Sequence[str], from_address: str | None = None) -> tuple[bytes, str, list[str]]:
    """(raw bytes, envelope sender, recipients) for a message file sent as it is ('-': stdin).
    The envelope comes from `to` and `from_address` (else the profile's from_address), never
    from the file's headers. NotFoundError (66) for a missing file; ValidationError (65) for
    NUL bytes, a file with no header, or a bad address."""
    import sys

    if path == "-":
        data = sys.stdin.buffer.read()
    else:
        data = _read_file(Path(path).expanduser(), "--data: message file", "data")
    raw = wire_bytes(data)
    first = raw.split(b"\r\n", 1)[0]
    if not raw.strip() or b":" not in first or first[:1] in (b" ", b"\t"):
        raise ValidationError(f"--data {path}: not a message (it must begin with a header line 'Name: value')",
                              field="data", hint="give a complete RFC 5322 message: headers, an empty line, the body")
    sender = from_address or _value(profile, "from_address") or (_value(profile, "username") if "@" in _value(profile, "username") else "")
    if not sender:
        name = getattr(profile, "name", "?")
        raise ConfigError(f"profile {name!r} has no from_address", hint="pass --from ADDR for the envelope sender")
    found = parse_address_list(_no_crlf("from", sender))
    if len(found) != 1:
        raise ValidationError(f"from: {sender!r} is not one email address", field="from")
    recipients = [_addr_spec(a) for a in _split_addresses("to", to)]
    return raw, check_address(found[0][1], "from"), list(dict.fromkeys(recipients))


# --- extra headers (swaks' --header) ---------------------------------------------------------
_FIELD_NAME_RE = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable ASCII but ':'


def parse_header_option(text: str, option: str = "--header") -> tuple[str, str]:
    """'Name: value' -> (name, value); ValidationError (65) naming the option when the name is
    not a header field name or the value holds a line break."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not _FIELD_NAME_RE.fullmatch(name):
        raise ValidationError(f"{option}: {text!r} is not 'Name: value' (a header name is printable ASCII without spaces or ':')",
                              field=option, hint=f'e.g. {option} "X-Test: 1"')
    return name, _no_crlf(f"{option} {name}", value)


def set_headers(raw: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
    """The message (CRLF line ends) with these headers set, as swaks' --header does: every
    header of the same name is removed (with its continuation lines) and the given ones go at
    the top, in the order given (one name given twice: both kept). A non-ASCII value is
    RFC 2047-encoded. The envelope does not change (a To: header adds no recipient)."""
    if not headers:
        return raw
    from email.header import Header

    names = {name.lower() for name, _ in headers}
    end = raw.find(b"\r\n\r\n")
    head, body = (raw, b"") if end < 0 else (raw[:end + 2], raw[end + 2:])
    kept: list[bytes] = []
    dropping = False
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower() in names
        if not dropping:
            kept.append(line)
    new = []
    for name, value in headers:
        shown = value if value.isascii() else Header(value, "utf-8", header_name=name).encode()
        new.append(f"{name}: {shown}\r\n".encode("ascii"))
    return b"".join(new + kept) + body


# --- 8BITMIME downgrade ------------------------------------------------------------------
_SEVEN_BIT_CTES = ("", "7bit", "8bit", "binary")


def seven_bit(raw: bytes) -> bytes:
    """The message for a server that does not offer 8BITMIME (RFC 6152): every body part with
    8-bit bytes re-encoded, text as quoted-printable and the rest as base64 (what Postfix's
    8BITMIME downgrade does). Headers, structure and 7-bit parts stay as they were; a message
    without MIME headers becomes text/plain (charset utf-8 when it decodes so, else
    unknown-8bit). Line ends CRLF."""
    import email
    from email import policy as _policy
    from email.generator import BytesGenerator
    from io import BytesIO

    msg = email.message_from_bytes(raw, policy=_policy.compat32)
    changed = False
    for part in msg.walk():
        cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        if part.is_multipart():
            if cte in ("8bit", "binary"):  # a container holds only encoded parts now
                part.replace_header("Content-Transfer-Encoding", "7bit")
            continue
        if cte not in _SEVEN_BIT_CTES:
            continue  # quoted-printable, base64: 7-bit already
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes) or data.isascii():
            continue
        _reencode(part, data, cte)
        changed = True
    if not changed:
        return to_crlf(raw)
    out = BytesIO()
    BytesGenerator(out, mangle_from_=False, maxheaderlen=0, policy=_policy.compat32.clone(linesep="\r\n")).flatten(msg)
    return to_crlf(out.getvalue())


def _reencode(part: Any, data: bytes, cte: str) -> None:
    import base64
    from email import quoprimime

    if "Content-Type" not in part:  # not MIME: say what it is, so the encoding means something
        try:
            data.decode("utf-8")
            charset = "utf-8"
        except UnicodeDecodeError:
            charset = "unknown-8bit"
        if "MIME-Version" not in part:
            part["MIME-Version"] = "1.0"
        part["Content-Type"] = f"text/plain; charset={charset}"
    if part.get_content_maintype() == "text":
        encoded, name = quoprimime.body_encode(data.decode("latin-1")), "quoted-printable"  # byte for byte
    else:
        encoded, name = base64.encodebytes(data).decode("ascii"), "base64"
    part.set_payload(encoded)
    if cte:
        part.replace_header("Content-Transfer-Encoding", name)
    else:
        part["Content-Transfer-Encoding"] = name


__all__ = ["build_message", "envelope", "message_bytes", "strip_bcc", "to_crlf", "wire_bytes", "format_mailbox",
           "postmaster_address", "check_header_value", "seven_bit", "set_headers", "parse_header_option",
           "message_from_file"]
