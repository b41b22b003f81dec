"""build_message / envelope / message_bytes: the contract the outbox and `send` rely on."""

from __future__ import annotations

import email
from email import policy

import pytest

from mailctl.errors import ConfigError, ExitCode, NotFoundError, ValidationError
from mailctl.message import build_message, envelope, message_bytes, strip_bcc
from mailctl.profiles.model import ResolvedProfile


def prof(**values):
    base = {"type": "smtp", "host": "h", "from_address": "ops@example.com", "sender_name": "Operations"}
    base.update(values)
    return ResolvedProfile("p", base, {}, ["p"])


def parse(raw: bytes):
    return email.message_from_bytes(raw, policy=policy.default)


def test_headers_from_profile_and_signature():
    msg = build_message(prof(reply_to="help@example.com", signature="Ops team\nexample.com"), {}, to=["bob@example.net"], subject="Hi", body="Hello")
    assert msg["From"] == "Operations <ops@example.com>"
    assert msg["Reply-To"] == "help@example.com"
    assert msg["Date"] and msg["Message-ID"].endswith("@example.com>")
    assert msg.get_content() == "Hello\n-- \nOps team\nexample.com\n"


def test_explicit_from_and_reply_to_override_profile():
    msg = build_message(prof(reply_to="help@example.com"), {}, to="bob@example.net", subject="s", body="b", from_address="Boss <boss@example.com>", reply_to="r@example.com")
    assert msg["From"] == "Boss <boss@example.com>" and msg["Reply-To"] == "r@example.com"


def test_force_postmaster_keeps_sender_in_reply_to():
    msg = build_message(prof(), {"force_postmaster": True, "postmaster": "postmaster@example.com"}, to=["bob@example.net"], subject="s", body="b")
    assert msg["From"] == "Operations <postmaster@example.com>"
    assert msg["Reply-To"] == "Operations <ops@example.com>"
    assert envelope(msg)[0] == "postmaster@example.com"
    with pytest.raises(ConfigError):
        build_message(prof(), {"force_postmaster": True, "postmaster": ""}, to=["b@example.net"], subject="s", body="b")


@pytest.mark.parametrize("field", ["subject", "to", "from_address", "reply_to"])
@pytest.mark.parametrize("brk", ["\r\n", "\n", "\r"])
def test_crlf_in_header_values_is_65(field, brk):
    kwargs = {"to": ["bob@example.net"], "subject": "s", "body": "b"}
    value = f"x@example.com{brk}Bcc: victim@example.org"
    if field == "to":
        kwargs["to"] = [value]
    elif field == "subject":
        kwargs["subject"] = "hi" + brk + "Bcc: victim@example.org"
    else:
        kwargs[field] = value
    with pytest.raises(ValidationError) as info:
        build_message(prof(), {}, **kwargs)
    assert info.value.exit_code == ExitCode.DATAERR


def test_crlf_in_profile_sender_name_is_65():
    with pytest.raises(ValidationError):
        build_message(prof(sender_name="A\nBcc: x@example.org"), {}, to=["b@example.net"], subject="s", body="b")


def test_envelope_includes_cc_bcc_and_bytes_strip_bcc():
    msg = build_message(prof(), {}, to=["A <a@example.net>", "b@example.net"], cc=["c@example.net"], bcc=["hidden@example.org", "a@example.net"], subject="s", body="b")
    sender, rcpts = envelope(msg)
    assert sender == "ops@example.com"
    assert rcpts == ["a@example.net", "b@example.net", "c@example.net", "hidden@example.org"]
    raw = message_bytes(msg)
    assert b"hidden@example.org" not in raw and b"\r\n" in raw
    assert "Bcc" in msg  # the object keeps it for envelope()
    assert parse(raw)["Cc"] == "c@example.net"


def test_strip_bcc_on_raw_bytes():
    raw = b"From: a@x\r\nBcc: h@y,\r\n k@z\r\nTo: b@x\r\n\r\nBcc: in body stays\r\n"
    assert strip_bcc(raw) == b"From: a@x\r\nTo: b@x\r\n\r\nBcc: in body stays\r\n"
    assert strip_bcc(b"From: a@x\r\n\r\nbody") == b"From: a@x\r\n\r\nbody"


def test_attachments(tmp_path):
    f = tmp_path / "data.pdf"
    f.write_bytes(b"%PDF-1.4 binary \x00\x01")
    msg = build_message(prof(), {}, to=["b@example.net"], subject="s", body="see", attachments=[f])
    parsed = parse(message_bytes(msg))
    parts = list(parsed.iter_attachments())
    assert parts[0].get_filename() == "data.pdf" and parts[0].get_content_type() == "application/pdf"
    assert parts[0].get_content() == b"%PDF-1.4 binary \x00\x01"
    with pytest.raises(NotFoundError):
        build_message(prof(), {}, to=["b@example.net"], subject="s", body="b", attachments=[tmp_path / "missing.txt"])


def test_no_sender_and_bad_addresses():
    with pytest.raises(ConfigError):
        build_message(prof(from_address=""), {}, to=["b@example.net"], subject="s", body="b")
    assert build_message(prof(from_address="", username="u@example.com"), {}, to=["b@example.net"], subject="s", body="b")["From"] == "Operations <u@example.com>"
    with pytest.raises(ValidationError):
        build_message(prof(), {}, to=["not an address"], subject="s", body="b")
    with pytest.raises(ValidationError):
        build_message(prof(), {}, to=[], subject="s", body="b")


def test_unicode_subject_and_body_roundtrip():
    msg = build_message(prof(sender_name="Équipe Ops"), {}, to=["b@example.net"], subject="Résumé ✓", body="Grüße")
    parsed = parse(message_bytes(msg))
    assert parsed["Subject"] == "Résumé ✓" and parsed.get_content().startswith("Grüße")
    assert parsed["From"].addresses[0].display_name == "Équipe Ops"


def test_a_signature_that_starts_with_the_delimiter_gets_no_second_one():
    """profiles.example.toml writes signature = "-- \nExample Ltd": one delimiter line only (#17)."""
    for signature in ("-- \nExample Ltd operations", "--\nExample Ltd operations", "Example Ltd operations"):
        body = build_message(prof(signature=signature), {}, to=["bob@example.net"], subject="s", body="Hello").get_content()
        assert body == "Hello\n-- \nExample Ltd operations\n", signature
    kept = build_message(prof(signature="--- a rule\nme"), {}, to=["b@example.net"], subject="s", body="x").get_content()
    assert kept == "x\n-- \n--- a rule\nme\n"  # only an exact delimiter line is dropped
