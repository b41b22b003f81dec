"""The one email address validator: every path that takes an address (`send`, `queue add`,
`sendmail`, the outbox's Python API, profile fields) checks it here.

An address is an RFC 5321 mailbox, `local-part@domain`:

* local part: a dot-string (letters, digits, ``!#$%&'*+-/=?^_`{|}~`` and dots; like Postfix,
  a dot may also lead, trail or repeat, as in older carriers' ``a..b@``) or a quoted string;
  non-ASCII letters are allowed (RFC 6531, SMTPUTF8); at most 64 octets;
* domain: LDH labels of at most 63 characters, 253 in all; an internationalised domain is
  converted to its ASCII form (IDNA, ``ë.test`` -> ``xn--cda.test``), so the envelope always
  carries an ASCII domain; or an address literal, ``[192.0.2.1]`` / ``[IPv6:2001:db8::1]``;
* no spaces outside quotes, no control characters, no line breaks; 254 octets in all.

`check_address()` returns the normalised address or raises ValidationError (exit 65) naming
the address and what is wrong with it. `envelope_address()` is the form for MAIL FROM / RCPT TO
(IDNA domain), and `needs_smtputf8()` says whether it can go there only with SMTPUTF8. `parse_address_list()` reads a header value
(``Name <a@x>, b@y (Bob), group: c@z;``) into (display name, address) pairs without the
stdlib's lossy fallbacks (``email.utils.getaddresses("not an address")`` is ``[('', 'not')]``).

A top-level module of the lowest layers: it imports nothing of mailctl's but errors.
"""

from __future__ import annotations

import re

from mailctl.errors import ValidationError

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# the common case, checked in one regex call: ASCII dot-atom @ LDH domain
_FAST = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*@{_LABEL}(?:\.{_LABEL})*")
# atext or any non-ASCII character (RFC 6531), written as its complement: the same set as
# [{_ATEXT}\u0080-\U0010ffff], but that range costs ~5 ms to compile in every process
_ATOM = re.compile(r"[^\x00-\x20\"(),.:;<>@\[\\\]\x7f]+")
_LABEL_RE = re.compile(rf"{_LABEL}")
# characters that end a line somewhere (str.splitlines), NUL and the other C0/C1 controls
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

HINT = "give a full address such as user@example.com"


def address_problem(value: object) -> str | None:
    """What is wrong with `value` as an address (None: nothing)."""
    return _check(value)[1]


def is_address(value: object) -> bool:
    return _check(value)[1] is None


def check_address(value: object, field: str = "address") -> str:
    """The address, normalised (surrounding blanks removed, domain in ASCII); raises
    ValidationError (65) naming `field` and the address."""
    addr, problem = _check(value)
    if problem is not None:
        raise ValidationError(f"{field}: {value!r} is not an email address: {problem}", field=field, hint=HINT)
    return addr


def check_sender(value: object, field: str = "sender") -> str:
    """An envelope sender: an address, or the null sender ('' or '<>', for bounces)."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "<>")):
        return ""
    return check_address(value, field)


def is_null_sender(value: str | None) -> bool:
    return value is not None and value.strip() in ("", "<>")


def needs_smtputf8(address: str) -> bool:
    """Whether the address can go into MAIL FROM / RCPT TO only with SMTPUTF8 (RFC 6531): its
    local part is not ASCII. A non-ASCII domain does not count: it has an ASCII form (IDNA,
    envelope_address())."""
    return not address.isascii() and not address.rpartition("@")[0].isascii()


def envelope_address(address: str, field: str = "address") -> str:
    """The address as it goes into the envelope: the domain in ASCII (IDNA), the local part
    as it is. ASCII addresses come back untouched, unchecked (the fast path of a transport);
    others are checked like check_address()."""
    if address.isascii():
        return address
    return check_address(address, field)


def _check(value: object) -> tuple[str, str | None]:
    if not isinstance(value, str):
        return "", f"expected text, got {type(value).__name__}"
    if _FAST.fullmatch(value):
        local, _, domain = value.rpartition("@")
        if len(local) <= 64 and len(domain) <= 253 and len(value) <= 254:
            return value, None
    bad = _CONTROL.search(value)
    if bad:
        return "", f"it contains the control character U+{ord(bad.group()):04X} (a line break, NUL ...)"
    addr = value.strip(" \t")
    if not addr:
        return "", "it is empty"
    if "@" not in addr:
        return "", "it has no @domain"
    local, _, domain = addr.rpartition("@")  # a quoted local part may hold an @; a domain never does
    problem = _local_problem(local)
    if problem:
        return "", problem
    domain, problem = _domain(domain)
    if problem:
        return "", problem
    addr = f"{local}@{domain}"
    if len(addr.encode("utf-8")) > 254:
        return "", "it is longer than 254 octets"
    return addr, None


def _local_problem(local: str) -> str | None:
    if not local:
        return "the part before the @ is empty"
    if len(local.encode("utf-8")) > 64:
        return "the part before the @ is longer than 64 octets"
    if local.startswith('"'):
        if len(local) < 2 or not local.endswith('"'):
            return "the quoted part before the @ is not closed"
        body, i = local[1:-1], 0
        while i < len(body):
            ch = body[i]
            if ch == "\\":
                if i + 1 >= len(body):
                    return "a backslash ends the quoted part before the @"
                i += 2
                continue
            if ch == '"':
                return "a double quote inside the quoted part before the @ must be escaped"
            i += 1
        return None
    # dots anywhere: RFC 5321 wants single inner dots only, but older addresses with '..' or a
    # trailing dot exist (Japanese mobile carriers'), and Postfix and Exim accept them
    if not _ATOM.fullmatch(local.replace(".", "")) and local.strip("."):
        ch = next(c for c in local if c != "." and not _ATOM.fullmatch(c))
        return f"the character {ch!r} is not allowed before the @ (outside quotes)"
    return None


def _domain(domain: str) -> tuple[str, str | None]:
    if not domain:
        return "", "the domain after the @ is empty"
    if domain.startswith("["):
        return _literal(domain)
    if not domain.isascii():
        try:
            domain = _idna(domain)
        except (UnicodeError, ValueError) as exc:
            return "", f"the domain {domain!r} is not a valid internationalised domain name ({exc})"
    if len(domain) > 253:
        return "", "the domain is longer than 253 characters"
    for label in domain.split("."):
        if not label:
            return "", f"the domain {domain!r} has an empty label ('..', or a dot at either end)"
        if not _LABEL_RE.fullmatch(label):
            if len(label) > 63:
                return "", f"the domain label {label[:20]!r}... is longer than 63 characters"
            return "", (f"the domain {domain!r} may hold only letters, digits and inner hyphens"
                        f" (not {label!r})")
    return domain, None


def _literal(domain: str) -> tuple[str, str | None]:
    import ipaddress

    if not domain.endswith("]"):
        return "", "the address literal after the @ is not closed with ]"
    inner = domain[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
    except ValueError:
        return "", f"{domain} is not an IPv4 or [IPv6:...] address literal"
    return domain, None


def _idna(domain: str) -> str:
    """U-labels -> A-labels (IDNA 2008 with UTS #46 mapping when the idna package is there,
    which requests brings; else the stdlib's IDNA 2003 codec)."""
    try:
        import idna
    except ImportError:  # pragma: no cover - requests depends on idna
        return domain.encode("idna").decode("ascii")
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(str(exc)) from None


# --- header values ---------------------------------------------------------------------------
def parse_address_list(value: str) -> list[tuple[str, str]]:
    """A header value (To, Cc, From ...) -> [(display name, address as written)], the
    addresses NOT validated (check_address each). Groups (``team: a@x, b@y;``) give their
    members; an empty group (``undisclosed-recipients:;``) gives nothing. ``a@x (Name)`` and
    ``Name <a@x>`` both give ('Name', 'a@x')."""
    out: list[tuple[str, str]] = []
    for item in _split_top(value):
        display, addr = _mailbox(item)
        if display or addr:
            out.append((display, addr))
    return out


def _split_top(value: str) -> list[str]:
    """Split at top-level commas (and group ':' / ';'), outside quotes, comments and <>."""
    items: list[str] = []
    buf: list[str] = []
    depth = 0  # comment nesting
    quoted = angle = False
    i = 0
    while i < len(value):
        ch = value[i]
        if quoted:
            buf.append(ch)
            if ch == "\\" and i + 1 < len(value):
                buf.append(value[i + 1])
                i += 1
            elif ch == '"':
                quoted = False
        elif depth:
            buf.append(ch)
            if ch == "\\" and i + 1 < len(value):
                buf.append(value[i + 1])
                i += 1
            elif ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
        elif ch == '"':
            quoted = True
            buf.append(ch)
        elif ch == "(":
            depth = 1
            buf.append(ch)
        elif ch == "<":
            angle = True
            buf.append(ch)
        elif ch == ">":
            angle = False
            buf.append(ch)
        elif ch in ",;" and not angle:
            items.append("".join(buf))
            buf = []
        elif ch == ":" and not angle:
            buf = []  # a group's display name: drop it, its members follow
        else:
            buf.append(ch)
        i += 1
    items.append("".join(buf))
    return [it.strip() for it in items if it.strip()]


def _mailbox(item: str) -> tuple[str, str]:
    comments: list[str] = []
    text: list[str] = []
    depth = 0
    quoted = False
    current: list[str] = []
    i = 0
    while i < len(item):
        ch = item[i]
        if depth:
            if ch == "\\" and i + 1 < len(item):
                current.append(item[i + 1])
                i += 2
                continue
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    comments.append("".join(current).strip())
                    current = []
                    i += 1
                    continue
            current.append(ch)
        elif ch == "(" and not quoted:
            depth = 1
        else:
            if ch == '"':
                quoted = not quoted
            elif ch == "\\" and quoted and i + 1 < len(item):
                text.append(ch)
                text.append(item[i + 1])
                i += 2
                continue
            text.append(ch)
        i += 1
    rest = "".join(text).strip()
    lt = _angle_start(rest)
    if lt >= 0:
        gt = rest.find(">", lt)
        addr = rest[lt + 1:gt if gt >= 0 else len(rest)].strip()
        if addr.startswith("@") and ":" in addr:  # an obsolete source route: @a,@b:user@c
            addr = addr.split(":", 1)[1]
        display = _unquote(rest[:lt].strip()) or " ".join(c for c in comments if c)
        return display, addr
    return " ".join(c for c in comments if c), rest


def _angle_start(text: str) -> int:
    quoted = False
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch == "<" and not quoted:
            return i
    return -1


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


__all__ = ["check_address", "check_sender", "is_address", "address_problem", "is_null_sender",
           "parse_address_list", "needs_smtputf8", "envelope_address", "HINT"]
