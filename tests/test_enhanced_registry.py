"""Every reply gets a cause (issue #15): a reply whose enhanced status code no specific entry
knows gets the IANA registry's meaning of that code (exact X.Y.Z, else its subject, else its
class) and a fix for its class, with the exit code of its class. One reply per class and
subject is scripted on a real aiosmtpd server and run through `mailctl test send`."""

from __future__ import annotations

import json
import subprocess
import sys
from fnmatch import fnmatchcase

import pytest

from mailctl.errors import ExitCode
from mailctl.knowledge import enhanced_status as registry
from mailctl.knowledge.smtp import CLASS_FIXES, KNOWLEDGE, Reply, explain, registry_exit_code

from smtpserver import USER, smtp_server, write_profiles


# --- the registry as data ------------------------------------------------------------------
def test_lookup_exact_subject_and_class():
    s = registry.lookup("5.7.1")
    assert (s.registered, s.title, s.reference) == (True, "Delivery not authorized, message refused", "RFC 3463")
    assert s.describe() == "5.7.1 Delivery not authorized, message refused (RFC 3463)"
    s = registry.lookup("4.7.99")  # not registered: the subject's meaning
    assert not s.registered and s.meaning.startswith("Security or Policy Status") and "99" in s.meaning
    s = registry.lookup("5.9.2")  # no such subject: the class
    assert s.subject_title is None and s.meaning.startswith("Permanent Failure")
    for bad in ("", None, "3.1.1", "5.7", "5.7.1.2", "x.7.1", "5.7.1000", "5..1"):
        assert registry.lookup(bad) is None, bad
    assert registry.lookup("5.07.001").code == "5.7.1"  # leading zeros: the same code


@pytest.mark.parametrize(
    "rfc,codes",
    [
        ("RFC 7372", [(7, d) for d in range(20, 27)]),  # the email authentication failures
        ("RFC 4954", [(7, 8), (7, 9), (7, 11), (7, 12), (5, 6)]),
        ("RFC 5248", [(7, 10), (7, 13), (7, 14)]),
        ("RFC 7505", [(1, 10), (7, 27)]),
        ("RFC 6531", [(6, 7), (6, 8), (6, 9), (6, 10)]),
        ("RFC 6710", [(3, 6), (7, 15), (7, 16)]),
        ("RFC 7293", [(7, 17), (7, 18), (7, 19)]),
        ("RFC 8617", [(7, 29)]),
        ("RFC 8689", [(7, 30)]),
    ],
)
def test_the_updates_of_rfc_3463_are_registered(rfc, codes):
    for code in codes:
        assert registry.DETAILS[code][1] == rfc, (code, registry.DETAILS[code])


def test_the_entries_checked_against_the_iana_registry():
    """IANA's smtp-enhanced-status-codes registry (records X.6.8-X.6.10, X.7.27-X.7.30): X.6.10
    has no sample text of its own, only "This is a duplicate of X.6.8 and is thus deprecated.";
    X.7.28 cites draft-levine-mailbomb-header (J. Levine), no RFC."""
    assert registry.DETAILS[(6, 10)] == (
        "Deprecated: a duplicate of X.6.8 (UTF-8 string reply is required, but not permitted by the SMTP client)",
        "RFC 6531")
    assert registry.DETAILS[(6, 10)][0].endswith(f"({registry.DETAILS[(6, 8)][0]})")
    assert registry.DETAILS[(7, 28)] == ("Mail flood detected", "draft-levine-mailbomb-header")
    assert registry.lookup("4.7.28").describe() == "4.7.28 Mail flood detected (draft-levine-mailbomb-header)"
    assert registry.DETAILS[(7, 27)] == ("Sender address has null MX", "RFC 7505")


def test_rfc_3463_codes_are_all_there():
    """RFC 3463 section 3 enumerates these detail codes per subject (X.s.0 up to the number)."""
    last = {0: 0, 1: 8, 2: 4, 3: 5, 4: 7, 5: 5, 6: 5, 7: 7}
    for subject, top in last.items():
        for detail in range(top + 1):
            assert (subject, detail) in registry.DETAILS, f"X.{subject}.{detail}"
            assert registry.DETAILS[(subject, detail)][1] == "RFC 3463"
    assert set(registry.SUBJECTS) == set(range(8)) and set(registry.CLASSES) == {2, 4, 5}


def test_every_registered_code_explains_with_its_title():
    for (subject, detail), (title, reference) in registry.DETAILS.items():
        for klass, stage in ((4, "rcpt"), (5, "data")):
            code = f"{klass}.{subject}.{detail}"
            e = explain(Reply(klass * 100 + 50, f"{code} zzz", stage=stage))
            if not e.id.startswith("registry-"):  # a specific entry is made for this very code (5.3.4, 4.2.2 ...)
                entry = next(k for k in KNOWLEDGE if k.id == e.id)
                assert any(fnmatchcase(code, g) for g in entry.enhanced), (code, e.id)
                continue
            assert e.id == f"registry-{code}"
            assert f'"{title}"' in e.cause and reference in e.cause
            assert e.status == f"{code} {title} ({reference})"
            want = CLASS_FIXES[(5, subject)] if klass == 5 else CLASS_FIXES.get((4, subject), CLASS_FIXES[(4, None)])
            assert e.fix == want.replace("{profile}", "NAME")


def test_class_exit_codes():
    assert registry_exit_code(4, 7, "mail") == ExitCode.TEMPFAIL
    assert registry_exit_code(4, 1, "rcpt") == ExitCode.TEMPFAIL
    for stage in ("banner", "ehlo", "starttls", "auth", "mail"):
        assert registry_exit_code(5, 7, stage) == ExitCode.NOPERM  # a policy refusal of the sender
    assert registry_exit_code(5, 7, "rcpt") is None  # of a recipient: the stage's code (1)
    assert registry_exit_code(5, 1, "mail") is None


def test_the_reply_code_decides_when_the_two_codes_disagree():
    e = explain(Reply(550, "4.6.1 odd server", stage="data"))  # permanent, whatever the 4.x.x says
    assert e.id == "registry-4.6.1" and "permanently" in e.cause and e.exit_code is None
    assert e.fix == CLASS_FIXES[(5, 6)]
    assert explain(Reply(451, "5.6.1 odd server", stage="data")).exit_code == ExitCode.TEMPFAIL


def test_success_and_plain_replies():
    assert explain(Reply(250, "2.0.0 Ok", stage="data")) is None
    e = explain(Reply(550, "nope", stage="rcpt"))  # no enhanced code at all: the generic fallback
    assert e.id == "smtp-generic-5xx" and e.status is None and "550 Requested action not taken" in e.cause
    e = explain(Reply(451, "later", stage="rcpt"))
    assert e.id == "smtp-generic-4xx" and "451 Requested action aborted" in e.cause
    # a specific entry still carries the registry's meaning of its code
    e = explain(Reply(550, "5.1.1 <x@example.com>: Recipient address rejected: User unknown", stage="rcpt"))
    assert e.id == "unknown-recipient" and e.status == "5.1.1 Bad destination mailbox address (RFC 3463)"


def test_an_exception_with_a_text_code_is_explained_without_error():
    """Exceptions carry a `code` of their own (the transport's ReplyTooLong: the reply's first
    digits as text); only an integer is an SMTP reply code."""

    class Odd(Exception):
        code = "250"

    assert explain(Odd("cut off"), stage="ehlo") is None


def test_the_registry_is_loaded_only_for_replies():
    """explain() of an exception (no reply) never imports the registry module: startup and
    connect failures stay import-light."""
    code = (
        "import sys\n"
        "from mailctl.knowledge.smtp import explain\n"
        "explain(ConnectionRefusedError(111, 'refused'), stage='connect')\n"
        "assert 'mailctl.knowledge.enhanced_status' not in sys.modules\n"
        "from mailctl.knowledge.smtp import Reply\n"
        "assert explain(Reply(550, '5.6.3 x', stage='data')).id == 'registry-5.6.3'\n"
        "assert 'mailctl.knowledge.enhanced_status' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- one scripted reply per class and subject, on a real server ------------------------------
CASES = [
    # (stage, reply the server sends, explanation id, exit code of mailctl test send)
    ("mail", "451 4.0.0 Try again later", "registry-4.0.0", 75),
    ("rcpt", "450 4.1.0 <bob@example.com>: address problem", "registry-4.1.0", 75),
    ("rcpt", "452 4.2.4 Mailing list expansion problem", "registry-4.2.4", 75),
    ("mail", "451 4.3.5 System incorrectly configured", "registry-4.3.5", 75),
    ("rcpt", "451 4.4.3 Directory server failure", "registry-4.4.3", 75),
    ("rcpt", "452 4.5.3 Error: too many recipients", "registry-4.5.3", 75),
    ("data", "451 4.6.0 Content conversion failed", "registry-4.6.0", 75),
    ("rcpt", "450 4.7.25 Client host rejected: cannot find your hostname, [127.0.0.1]", "registry-4.7.25", 75),
    ("data", "554 5.0.0 Unspecified", "registry-5.0.0", 1),
    ("rcpt", "550 5.1.6 Destination mailbox has moved", "registry-5.1.6", 1),
    ("rcpt", "552 5.2.2 <bob@example.com>: Recipient mailbox full", "registry-5.2.2", 1),
    ("data", "554 5.3.3 Feature not supported", "registry-5.3.3", 1),
    ("rcpt", "554 5.4.6 Routing loop detected", "registry-5.4.6", 1),
    ("mail", "555 5.5.4 Unsupported option: SMTPUTF8", "registry-5.5.4", 1),
    ("data", "554 5.6.0 Message content refused", "registry-5.6.0", 1),
    ("mail", "550 5.7.0 Policy refusal", "registry-5.7.0", 77),  # the sender: 77
    ("rcpt", "550 5.7.27 Sender address has null MX", "registry-5.7.27", 1),  # at RCPT: the stage's code
    ("banner", "554 5.7.0 Go away", "registry-5.7.0", 77),
    ("banner", "554 5.3.2 System not accepting network messages", "registry-5.3.2", 69),
    ("rcpt", "550 5.1.99 Site-specific address problem", "registry-5.1.x", 1),
    ("rcpt", "550 5.9.1 Something new", "registry-5.x.x", 1),
]


@pytest.mark.parametrize("stage,reply,ident,exit_code", CASES, ids=[c[2] + "-" + c[0] for c in CASES])
def test_registry_explains_a_real_reply(cli, isolated_env, stage, reply, ident, exit_code):
    profile = {"type": "smtp", "host": "127.0.0.1", "security": "none", "auth": "none", "timeout": 3, "from_address": USER}
    with smtp_server(script={stage: reply}) as srv:
        write_profiles(isolated_env, {"kb": dict(profile, port=srv.port)})
        res = cli("test", "send", "--to", "bob@example.com", "--json")
        data = json.loads(res.stdout)
        assert data["failed_stage"] == stage and res.exit_code == exit_code == data["exit_code"], (res.exit_code, data["stages"])
        explanation = data["explanation"]
        assert explanation["id"] == ident
        status = registry.lookup(reply.split()[1])
        assert explanation["status"] == status.describe()
        assert f'"{status.meaning}"' in explanation["cause"]
        human = cli("test", "send", "--to", "bob@example.com")
    assert f"cause: The server refused it {'for now' if reply[0] == '4' else 'permanently'}: {status.code}" in human.stdout
    assert human.exit_code == exit_code
