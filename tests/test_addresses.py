"""One address validator (mailctl.addresses, issue #12 item 6), used by `send`, `queue add`,
`sendmail`, the outbox's Python API and the profile fields: the same verdict everywhere, and
a bad address exits 65 naming it, never a traceback."""

from __future__ import annotations

import pytest

from mailctl.addresses import address_problem, check_address, check_sender, is_address, parse_address_list
from mailctl.errors import ExitCode, ValidationError

GOOD = {
    "user@example.org": "user@example.org",
    " user@example.org ": "user@example.org",
    "first.last+tag@sub.example.co.uk": "first.last+tag@sub.example.co.uk",
    "o'brien@example.ie": "o'brien@example.ie",
    '"john smith"@example.com': '"john smith"@example.com',
    '"a@b"@example.com': '"a@b"@example.com',
    "root@localhost": "root@localhost",
    "a@[192.0.2.1]": "a@[192.0.2.1]",
    "a@[IPv6:2001:db8::1]": "a@[IPv6:2001:db8::1]",
    "ü@ë.test": "ü@xn--cda.test",  # SMTPUTF8 local part kept, IDNA domain in ASCII
    "info@bücher.example": "info@xn--bcher-kva.example",
    "a..b@docomo.example": "a..b@docomo.example",  # accepted like Postfix does (older carriers' addresses)
}

BAD = {
    "not an address": "no @domain",
    "root": "no @domain",
    "a@": "domain after the @ is empty",
    "@example.org": "before the @ is empty",
    "a b@example.org": "' '",
    "a@exa mple.org": "only letters, digits",
    "a@-example.org": "only letters, digits",
    "a@example..org": "empty label",
    "a@example.org.": "empty label",
    "a@b@c.org": "'@'",
    "a@example.org\r\nRCPT TO:<evil@x>": "U+000D",
    "a@example.org\n": "U+000A",
    "a@exa\u2028mple.org": "U+2028",
    "a\x00b@example.org": "U+0000",
    "a@[300.1.1.1]": "address literal",
    "a@☃.example": "internationalised",
    "x" * 65 + "@example.org": "64 octets",
    "a@" + "b" * 64 + ".org": "63 characters",
    '"unclosed@example.org': "quoted",
}


@pytest.mark.parametrize("value, normalised", sorted(GOOD.items()))
def test_good_addresses(value, normalised):
    assert check_address(value) == normalised and is_address(value) and address_problem(value) is None


@pytest.mark.parametrize("value, why", sorted(BAD.items()))
def test_bad_addresses_say_why(value, why):
    with pytest.raises(ValidationError) as info:
        check_address(value, "recipient")
    err = info.value
    assert err.exit_code == ExitCode.DATAERR and err.field == "recipient"
    assert err.message.startswith(f"recipient: {value!r} is not an email address") and why in err.message
    assert not is_address(value)


def test_null_sender():
    assert check_sender("") == check_sender("<>") == check_sender(None) == ""
    assert check_sender("a@example.org") == "a@example.org"
    with pytest.raises(ValidationError):
        check_sender("a@")


def test_header_address_lists():
    assert parse_address_list('"Doe, John" <j@d.example>, b@y.example (Bob), team: c@z.example, d@w.example;') == [
        ("Doe, John", "j@d.example"), ("Bob", "b@y.example"), ("", "c@z.example"), ("", "d@w.example")]
    assert parse_address_list("undisclosed-recipients:;") == []
    assert parse_address_list("root (Cron Daemon)") == [("Cron Daemon", "root")]
    # what the stdlib's getaddresses turns into something else ('not', or nothing at all)
    assert parse_address_list("not an address") == [("", "not an address")]
    assert parse_address_list("a@") == [("", "a@")]


TRICKY = ["user@example.org", "a@", "not an address", "ü@ë.test", "a@exa mple.org", "a@b@c.org", "a@[192.0.2.1]",
          '"x y"@example.org', "a@-x.org", "root"]


@pytest.mark.parametrize("value", TRICKY)
def test_every_path_gives_the_same_verdict(value, tmp_path):
    """build_message (send), the outbox (queue add, sendmail, the Python API) and the profile
    fields accept exactly what the validator accepts."""
    from mailctl.message import build_message
    from mailctl.outbox import Outbox
    from mailctl.profiles.model import ResolvedProfile, validate_field

    def accepted(call) -> bool:
        try:
            call()
            return True
        except ValidationError as exc:
            assert exc.exit_code == ExitCode.DATAERR
            return False

    profile = ResolvedProfile("p", {"type": "smtp", "host": "h", "from_address": "ops@example.com"}, {}, ["p"])
    expected = is_address(value)
    assert accepted(lambda: build_message(profile, {}, to=[value], subject="s", body="b")) is expected
    assert accepted(lambda: build_message(profile, {}, to=["x@example.org"], subject="s", body="b",
                                          from_address=value)) is expected
    with Outbox(tmp_path / "o.sqlite3") as box:
        assert accepted(lambda: box.enqueue(b"Subject: s\r\n\r\nb\r\n", "app@example.com", [value])) is expected
        assert accepted(lambda: box.enqueue(b"Subject: s\r\n\r\nb\r\n", value, ["x@example.org"])) is expected
    assert accepted(lambda: validate_field("from_address", value)) is expected


@pytest.mark.parametrize("path", ["send", "queue add", "sendmail -t", "sendmail"])
def test_a_bad_address_exits_65_naming_it_on_every_command(cli, isolated_env, path):
    (isolated_env / "profiles.toml").write_text('schema_version = 1\ndefault = "local"\n')
    message = "From: app@example.com\nTo: a@\nSubject: s\n\nbody\n"
    if path == "send":
        r = cli("send", "--to", "a@", "--subject", "s", "--body", "b")
    elif path == "queue add":
        r = cli("queue", "add", input=message)  # used to crash with IndexError
    elif path == "sendmail -t":
        r = cli("sendmail", "-t", input=message)  # used to crash with IndexError
    else:
        r = cli("sendmail", "-i", "a@", input="Subject: s\n\nbody\n")
    assert r.exit_code == 65, r.output
    assert "'a@' is not an email address" in r.stderr and "Traceback" not in r.output and r.exception is None
    assert r.stderr.splitlines()[0].startswith("Error: ") and len(r.stderr.splitlines()) <= 2


def test_python_api_refuses_bad_addresses(tmp_path):
    from mailctl.outbox import enqueue

    with pytest.raises(ValidationError, match="'not an address' is not an email address"):
        enqueue(b"Subject: s\r\n\r\nb\r\n", "app@example.com", ["not an address"], path=tmp_path / "o.sqlite3")


def test_profile_fields_use_the_validator(cli, isolated_env):
    r = cli("profile", "add", "p", "--host", "smtp.example.com", "--from-address", "a@", "--no-secret")
    assert r.exit_code == 65 and "from_address" in r.stderr, r.output
    r = cli("profile", "add", "q", "--host", "smtp.example.com", "--from-address", "ü@ë.test", "--no-secret")
    assert r.exit_code == 0, r.output
