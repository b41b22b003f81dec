"""The IANA "Simple Mail Transfer Protocol (SMTP) Enhanced Status Codes" registry as data.

RFC 3463 defines the codes (class.subject.detail); RFC 5248 made them an IANA registry, and
later RFCs registered more detail codes (RFC 3886, 4468, 4954, 6531, 6710, 7293, 7372, 7505,
8617, 8689), and X.7.28 was registered from an Internet-Draft (draft-levine-mailbomb-header);
titles are the registry's "Sample Text" (X.6.10 has none: it is deprecated). The SMTP reply codes themselves (RFC 5321, with 521/556 from RFC 7504 and the
AUTH replies of RFC 4954) are here too, for replies that carry no enhanced code.

Plain dicts of tuples, no parsing at import: `knowledge.smtp.explain()` falls back on these
when no specific entry knows a reply, so every `X.Y.Z` gets its registered meaning.
docs/smtp.md's registry table is generated from this module."""

from __future__ import annotations

from typing import NamedTuple

# class -> (title, what it means for the sender)
CLASSES: dict[int, tuple[str, str]] = {
    2: ("Success", "the action was completed"),
    4: ("Persistent Transient Failure", "the message is valid and a later retry may succeed"),
    5: ("Permanent Failure", "resending the same message will not succeed until something changes"),
}

# subject -> (title, description), RFC 3463 section 3
SUBJECTS: dict[int, tuple[str, str]] = {
    0: ("Other or Undefined Status", "no particular subject"),
    1: ("Addressing Status", "an address (the sender's or a recipient's syntax or validity)"),
    2: ("Mailbox Status", "the recipient's mailbox (it exists, but cannot take the message)"),
    3: ("Mail System Status", "the receiving mail system (it normally accepts mail, but not this now)"),
    4: ("Network and Routing Status", "the network or routing between the mail systems"),
    5: ("Mail Delivery Protocol Status", "the SMTP conversation (a command, its syntax or arguments)"),
    6: ("Message Content or Media Status", "the message's content (media type, conversion or encoding)"),
    7: ("Security or Policy Status", "a security or policy check (permission, authentication, encryption)"),
}

# (subject, detail) -> (title, reference). Titles as registered with IANA.
DETAILS: dict[tuple[int, int], tuple[str, str]] = {
    (0, 0): ("Other undefined Status", "RFC 3463"),
    (1, 0): ("Other address status", "RFC 3463"),
    (1, 1): ("Bad destination mailbox address", "RFC 3463"),
    (1, 2): ("Bad destination system address", "RFC 3463"),
    (1, 3): ("Bad destination mailbox address syntax", "RFC 3463"),
    (1, 4): ("Destination mailbox address ambiguous", "RFC 3463"),
    (1, 5): ("Destination address valid", "RFC 3463"),
    (1, 6): ("Destination mailbox has moved, No forwarding address", "RFC 3463"),
    (1, 7): ("Bad sender's mailbox address syntax", "RFC 3463"),
    (1, 8): ("Bad sender's system address", "RFC 3463"),
    (1, 9): ("Message relayed to non-compliant mailer", "RFC 3886"),
    (1, 10): ("Recipient address has null MX", "RFC 7505"),
    (2, 0): ("Other or undefined mailbox status", "RFC 3463"),
    (2, 1): ("Mailbox disabled, not accepting messages", "RFC 3463"),
    (2, 2): ("Mailbox full", "RFC 3463"),
    (2, 3): ("Message length exceeds administrative limit", "RFC 3463"),
    (2, 4): ("Mailing list expansion problem", "RFC 3463"),
    (3, 0): ("Other or undefined mail system status", "RFC 3463"),
    (3, 1): ("Mail system full", "RFC 3463"),
    (3, 2): ("System not accepting network messages", "RFC 3463"),
    (3, 3): ("System not capable of selected features", "RFC 3463"),
    (3, 4): ("Message too big for system", "RFC 3463"),
    (3, 5): ("System incorrectly configured", "RFC 3463"),
    (3, 6): ("Requested priority was changed", "RFC 6710"),
    (4, 0): ("Other or undefined network or routing status", "RFC 3463"),
    (4, 1): ("No answer from host", "RFC 3463"),
    (4, 2): ("Bad connection", "RFC 3463"),
    (4, 3): ("Directory server failure", "RFC 3463"),
    (4, 4): ("Unable to route", "RFC 3463"),
    (4, 5): ("Mail system congestion", "RFC 3463"),
    (4, 6): ("Routing loop detected", "RFC 3463"),
    (4, 7): ("Delivery time expired", "RFC 3463"),
    (5, 0): ("Other or undefined protocol status", "RFC 3463"),
    (5, 1): ("Invalid command", "RFC 3463"),
    (5, 2): ("Syntax error", "RFC 3463"),
    (5, 3): ("Too many recipients", "RFC 3463"),
    (5, 4): ("Invalid command arguments", "RFC 3463"),
    (5, 5): ("Wrong protocol version", "RFC 3463"),
    (5, 6): ("Authentication Exchange line is too long", "RFC 4954"),
    (6, 0): ("Other or undefined media error", "RFC 3463"),
    (6, 1): ("Media not supported", "RFC 3463"),
    (6, 2): ("Conversion required and prohibited", "RFC 3463"),
    (6, 3): ("Conversion required but not supported", "RFC 3463"),
    (6, 4): ("Conversion with loss performed", "RFC 3463"),
    (6, 5): ("Conversion Failed", "RFC 3463"),
    (6, 6): ("Message content not available", "RFC 4468"),
    (6, 7): ("Non-ASCII addresses not permitted for that sender/recipient", "RFC 6531"),
    (6, 8): ("UTF-8 string reply is required, but not permitted by the SMTP client", "RFC 6531"),
    (6, 9): ("UTF-8 header message cannot be transferred to one or more recipients, so the message must be rejected", "RFC 6531"),
    (6, 10): ("Deprecated: a duplicate of X.6.8 (UTF-8 string reply is required, but not permitted by the SMTP client)", "RFC 6531"),
    (7, 0): ("Other or undefined security status", "RFC 3463"),
    (7, 1): ("Delivery not authorized, message refused", "RFC 3463"),
    (7, 2): ("Mailing list expansion prohibited", "RFC 3463"),
    (7, 3): ("Security conversion required but not possible", "RFC 3463"),
    (7, 4): ("Security features not supported", "RFC 3463"),
    (7, 5): ("Cryptographic failure", "RFC 3463"),
    (7, 6): ("Cryptographic algorithm not supported", "RFC 3463"),
    (7, 7): ("Message integrity failure", "RFC 3463"),
    (7, 8): ("Authentication credentials invalid", "RFC 4954"),
    (7, 9): ("Authentication mechanism is too weak", "RFC 4954"),
    (7, 10): ("Encryption Needed", "RFC 5248"),
    (7, 11): ("Encryption required for requested authentication mechanism", "RFC 4954"),
    (7, 12): ("A password transition is needed", "RFC 4954"),
    (7, 13): ("User Account Disabled", "RFC 5248"),
    (7, 14): ("Trust relationship required", "RFC 5248"),
    (7, 15): ("Priority Level is too low", "RFC 6710"),
    (7, 16): ("Message is too big for the specified priority", "RFC 6710"),
    (7, 17): ("Mailbox owner has changed", "RFC 7293"),
    (7, 18): ("Domain owner has changed", "RFC 7293"),
    (7, 19): ("RRVS test cannot be completed", "RFC 7293"),
    (7, 20): ("No passing DKIM signature found", "RFC 7372"),
    (7, 21): ("No acceptable DKIM signature found", "RFC 7372"),
    (7, 22): ("No valid author-matched DKIM signature found", "RFC 7372"),
    (7, 23): ("SPF validation failed", "RFC 7372"),
    (7, 24): ("SPF validation error", "RFC 7372"),
    (7, 25): ("Reverse DNS validation failed", "RFC 7372"),
    (7, 26): ("Multiple authentication checks failed", "RFC 7372"),
    (7, 27): ("Sender address has null MX", "RFC 7505"),
    (7, 28): ("Mail flood detected", "draft-levine-mailbomb-header"),  # registered from the draft, not an RFC
    (7, 29): ("ARC validation failure", "RFC 8617"),
    (7, 30): ("REQUIRETLS support required", "RFC 8689"),
}

# SMTP reply codes (RFC 5321 section 4.2; 521 and 556 RFC 7504; the AUTH codes RFC 4954)
REPLY_CODES: dict[int, str] = {
    421: "Service not available, closing transmission channel",
    432: "A password transition is needed",
    450: "Requested mail action not taken: mailbox unavailable",
    451: "Requested action aborted: local error in processing",
    452: "Requested action not taken: insufficient system storage",
    454: "Temporary authentication failure (or TLS not available)",
    455: "Server unable to accommodate parameters",
    500: "Syntax error, command unrecognized",
    501: "Syntax error in parameters or arguments",
    502: "Command not implemented",
    503: "Bad sequence of commands",
    504: "Command parameter not implemented",
    521: "Host does not accept mail",
    530: "Authentication required",
    534: "Authentication mechanism is too weak",
    535: "Authentication credentials invalid",
    538: "Encryption required for requested authentication mechanism",
    550: "Requested action not taken: mailbox unavailable",
    551: "User not local",
    552: "Requested mail action aborted: exceeded storage allocation",
    553: "Requested action not taken: mailbox name not allowed",
    554: "Transaction failed",
    555: "MAIL FROM/RCPT TO parameters not recognized or not implemented",
    556: "Domain does not accept mail",
}


class Status(NamedTuple):
    """What the registry says about one enhanced status code."""

    code: str  # as given, "5.7.1"
    klass: int
    subject: int
    detail: int
    class_title: str
    subject_title: str | None  # None: a subject the registry does not define
    title: str | None  # None: a detail code that is not registered
    reference: str | None

    @property
    def meaning(self) -> str:
        """The most specific registered meaning: the detail's title, else the subject's."""
        if self.title:
            return self.title
        if self.subject_title:
            return f"{self.subject_title} (detail {self.detail} is not registered)"
        return f"{self.class_title} (subject {self.subject} is not registered)"

    @property
    def registered(self) -> bool:
        return self.title is not None

    def describe(self) -> str:
        """'5.7.1 Delivery not authorized, message refused (RFC 3463)'."""
        ref = f" ({self.reference})" if self.reference else ""
        return f"{self.code} {self.meaning}{ref}"


def lookup(code: str | None) -> Status | None:
    """The registry's view of 'X.Y.Z': exact code, else its subject, else its class; None
    for something that is not an enhanced status code of class 2, 4 or 5."""
    if not code:
        return None
    parts = code.split(".")
    if len(parts) != 3 or not all(p.isdigit() and 0 < len(p) <= 3 for p in parts):
        return None
    klass, subject, detail = (int(p) for p in parts)
    if klass not in CLASSES:
        return None
    entry = DETAILS.get((subject, detail))
    subject_entry = SUBJECTS.get(subject)
    return Status(
        code=f"{klass}.{subject}.{detail}",
        klass=klass,
        subject=subject,
        detail=detail,
        class_title=CLASSES[klass][0],
        subject_title=subject_entry[0] if subject_entry else None,
        title=entry[0] if entry else None,
        reference=entry[1] if entry else ("RFC 3463" if subject_entry else None),
    )


def reply_meaning(code: int | None) -> str | None:
    """RFC 5321's meaning of a basic reply code (550 -> 'Requested action not taken: ...')."""
    return REPLY_CODES.get(code) if code is not None else None
