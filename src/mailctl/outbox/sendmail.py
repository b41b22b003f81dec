"""sendmail(8) compatibility: the command-line conventions of /usr/sbin/sendmail as programs
and cron's MAILTO use them, and the header fixes an MTA's pickup makes (Postfix cleanup adds
From, Date and Message-ID when they are missing)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from mailctl.errors import ExitCode, UsageError, ValidationError

if TYPE_CHECKING:
    from mailctl.outbox.service import SendOutcome

# options that take a value, as separate word or glued (-fADDR)
_WITH_VALUE = {"f", "r", "F", "B", "N", "R", "V", "X", "C", "L", "h", "q"}

# The options parse_sendmail_args acts on, as `mailctl sendmail --help` and the man page list
# them (one aligned table with --help); the rest of sendmail(8)'s are accepted and ignored.
HELP_OPTIONS: tuple[tuple[str, str], ...] = (
    ("-t", "Also take recipients from the To, Cc and Bcc headers (Bcc is removed)."),
    ("-i, -oi", "A line with a single '.' does not end the message."),
    ("-f, -r ADDR", "Envelope sender: a bare name gets the From domain (-f root); -f '<>' or -f '' is the "
                    "null sender (default: Sender/From, else the profile's)."),
    ("-F NAME", "Full name for the From header added when the message has none (default: the profile's "
                "sender_name)."),
    ("-odq", "Only queue; the next `mailctl queue flush` sends it (default: try once now)."),
)
HELP_USAGE = "[-t] [-i] [-f ADDR] [-F NAME] [-odq] [--] [RECIPIENT]... < MESSAGE"


@dataclass
class SendmailOptions:
    read_headers: bool = False  # -t
    dot_ends: bool = True  # without -i / -oi a line '.' ends the message
    sender: str | None = None  # -f / -r as given (None: not given; '' or '<>': the null sender)
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
                value = rest.strip()
                if value.startswith("<") and value.endswith(">"):
                    value = value[1:-1].strip()  # -f '<>' is the null sender, -f '<a@b>' is a@b
                opts.sender = value
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
    only queued or deferred for a retry, when delivering it now met a configuration problem
    (it is safely queued: a caller that retried would queue it twice), and when some of its
    recipients were refused for good (named on stderr, kept in the queue as partly failed);
    1 when the server rejected it (failed, expired)."""
    return ExitCode.PROBLEMS if outcome.outcome in ("failed", "expired") else ExitCode.OK


def read_until_dot(data: bytes) -> bytes:
    """Classic sendmail input: without -i, a line holding a single '.' ends the message. Lines
    end at LF (or CRLF) only: a bare CR ends no line, so 'a\\r.\\rb' is one line."""
    out = []
    for line in data.split(b"\n"):
        if line.rstrip(b"\r") == b".":
            break
        out.append(line)
    return b"\n".join(out)


def prepare_sendmail_message(data: bytes, opts: SendmailOptions, doc: Any, profile_name: str | None, *,
                             on_choice: Callable[[str], None] | None = None) -> tuple[bytes, str, list[str], str | None]:
    """-> (raw CRLF bytes with Bcc removed and missing From/Date/Message-ID added, envelope
    sender, recipients, the profile to send with: the one named, else the one the -f sender or
    the From address chooses (profiles.resolve.profile_for_sender), else None for the default). Every address is checked (ValidationError, 65, naming
    it); a NUL in the message is refused (65); line ends become CRLF (bare CR too). on_choice
    hears why the sender chose the profile (mailctl -v)."""
    from email.utils import formatdate, make_msgid

    from mailctl.addresses import check_address, is_address
    from mailctl.message import check_header_value, format_mailbox, postmaster_address, wire_bytes
    from mailctl.outbox.envelope import header_mailboxes, parse_message, raw_header_values, set_from, strip_bcc_bytes
    from mailctl.profiles.resolve import profile_for_sender, resolve_profile

    if opts.dot_ends:
        data = read_until_dot(data)
    if not data.strip():
        raise ValidationError("sendmail: empty message on stdin")
    raw = wire_bytes(data)
    if b"\r\n\r\n" not in raw and not raw.startswith(b"\r\n"):
        # headers only, or a bare body: treat a first line without a colon as body
        first = raw.split(b"\r\n", 1)[0]
        raw = raw + b"\r\n" if b":" in first else b"\r\n" + raw
    msg = parse_message(raw)
    profile_name = profile_for_sender(doc, profile_name, [opts.sender or ""] + [a for _h, _n, a in header_mailboxes(msg, "From")],
                                      on_choice=on_choice)
    profile = resolve_profile(doc, profile_name)
    postmaster = postmaster_address(doc.settings())

    recipients = _recipients(opts, msg)

    from_boxes = [(name, addr) for _h, name, addr in header_mailboxes(msg, "From")]
    header_from = next((check_address(a) for _n, a in from_boxes if is_address(a)), None)
    own = next((check_address(a) for a in (profile.get("from_address"), profile.get("username")) if a and is_address(a)), None)
    # Postfix qualifies a bare name with myorigin; ours is the From domain (the message's, else the profile's)
    from_domain = (header_from or own or "").rpartition("@")[2]

    sender = _envelope_sender(opts, msg, profile.name, header_from or own or "", from_domain)

    extra: list[bytes] = []
    full_name = check_header_value("sendmail -F", opts.full_name or "") or str(profile.get("sender_name") or "")
    full_name = check_header_value("sender_name", full_name)
    if postmaster is not None:
        # [settings] force_postmaster: From (and, but for the null sender, MAIL FROM) is the
        # postmaster; Reply-To keeps the real sender, as `mailctl send` does
        if sender:
            sender = postmaster
        if from_boxes:
            name, addr = from_boxes[0]
            reply_to = format_mailbox(name, header_from) if header_from else None
            raw = set_from(raw, format_mailbox(name, postmaster), reply_to)
    if not from_boxes:
        addr = postmaster or sender or own or ""
        if addr:
            extra.append(f"From: {format_mailbox(full_name, addr)}\r\n".encode("utf-8"))
    if not raw_header_values(msg, "Date"):
        extra.append(f"Date: {formatdate(localtime=True)}\r\n".encode())
    if not raw_header_values(msg, "Message-ID"):
        domain = (sender or header_from or own or "localhost").rpartition("@")[2] or "localhost"
        extra.append(f"Message-ID: {make_msgid(domain=domain)}\r\n".encode())
    raw = b"".join(extra) + strip_bcc_bytes(raw)
    return raw, sender, recipients, profile_name


def _recipients(opts: SendmailOptions, msg) -> list[str]:
    """The arguments' addresses, and with -t the To/Cc/Bcc headers', each checked, once each."""
    from mailctl.addresses import check_address, parse_address_list
    from mailctl.outbox.envelope import header_addresses

    recipients: list[str] = []
    for arg in opts.recipients:
        found = parse_address_list(arg) if arg.strip() else []
        if not found and arg.strip():
            found = [("", arg)]
        recipients += [check_address(addr, "sendmail recipient") for _name, addr in found]
    if opts.read_headers:
        recipients += header_addresses(msg, "To", "Cc", "Bcc")
    recipients = list(dict.fromkeys(recipients))
    if not recipients:
        raise ValidationError("sendmail: no recipients", hint="give recipients as arguments, or -t to read To/Cc/Bcc")
    return recipients


def _envelope_sender(opts: SendmailOptions, msg, profile_name: str, fallback: str, from_domain: str) -> str:
    """-f '<>' / -f '': the null sender; -f ADDR (a bare name qualified with the From domain);
    else the Sender header, the From header or the profile's address (`fallback`)."""
    from mailctl.addresses import check_address, is_null_sender
    from mailctl.outbox.envelope import header_addresses

    if opts.sender is not None and is_null_sender(opts.sender):
        return ""  # the null sender (bounces, DSNs)
    if opts.sender is not None:
        value = opts.sender
        if "@" not in value:
            if not from_domain:
                raise ValidationError(
                    f"sendmail -f {value!r}: a bare name needs a domain, and neither the message's From nor the "
                    f"profile {profile_name!r} has one", field="sender",
                    hint=f"give -f user@domain, or set one: mailctl profile edit {profile_name} --from-address ADDR")
            value = f"{value}@{from_domain}"
        return check_address(value, "sendmail -f")
    return (header_addresses(msg, "Sender") or [None])[0] or fallback
