"""Internationalised mail (issue #15 item 4) against aiosmtpd in-process: non-ASCII local parts
go out with SMTPUTF8 when the server offers it and fail clearly (naming SMTPUTF8, RFC 6531's
553 5.6.7) when it does not, as a whole or per recipient; domains always go out in IDNA; 8-bit
bodies are re-encoded (quoted-printable / base64) for a server without 8BITMIME. Both send
paths are covered: one command at a time (`test send`, a server without PIPELINING) and
pipelined (RFC 2920)."""

from __future__ import annotations

import contextlib
import email
import email.policy
import json

import pytest
from aiosmtpd.controller import Controller

from mailctl.errors import DeliveryError
from mailctl.message import seven_bit
from mailctl.profiles.model import ResolvedProfile
from mailctl.transports.smtp import SmtpTransport

from smtpserver import RecordingHandler, ScriptedSMTP, free_port, write_profiles

SENDER = "app@example.com"
UTF8_RCPT = "jörg@example.net"
IDNA_RCPT = "ops@bücher.example"


class EhloHandler(RecordingHandler):
    """Records every message and every RCPT TO it saw; edits its EHLO reply: adds PIPELINING
    (aiosmtpd 1.4 reads pipelined commands but does not advertise it), drops 8BITMIME."""

    def __init__(self, *, pipelining: bool = False, eightbit: bool = True):
        super().__init__()
        self.pipelining, self.eightbit = pipelining, eightbit
        self.rcpts_seen: list[str] = []
        self.mails_seen: list[str] = []

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        responses = await super().handle_EHLO(server, session, envelope, hostname, responses)
        if not self.eightbit:
            responses = [r for r in responses if "8BITMIME" not in r]
        if self.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.mails_seen.append(address)
        return await super().handle_MAIL(server, session, envelope, address, mail_options)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.rcpts_seen.append(address)
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


class _Controller(Controller):
    def factory(self):
        return ScriptedSMTP(self.handler, **self.SMTP_kwargs)


@contextlib.contextmanager
def server(*, smtputf8: bool, pipelining: bool = False, eightbit: bool = True):
    handler = EhloHandler(pipelining=pipelining, eightbit=eightbit)
    port = free_port()
    controller = _Controller(handler, hostname="127.0.0.1", port=port, server_hostname="mail.test",
                             enable_SMTPUTF8=smtputf8)
    controller.start()
    try:
        handler.port = port
        yield handler
    finally:
        controller.stop()


def profile(port: int) -> ResolvedProfile:
    return ResolvedProfile("intl", {"type": "smtp", "host": "127.0.0.1", "port": port, "security": "none", "auth": "none",
                                    "timeout": 5, "from_address": SENDER}, {}, ["intl"])


def write(isolated_env, port: int) -> None:
    write_profiles(isolated_env, {"intl": {"type": "smtp", "host": "127.0.0.1", "port": port, "security": "none",
                                           "auth": "none", "timeout": 5, "from_address": SENDER}})


RAW = (f"From: {SENDER}\r\nTo: someone@example.net\r\nSubject: intl\r\n\r\nplain body\r\n").encode()


# --- SMTPUTF8 --------------------------------------------------------------------------------
def test_issue_reproduction_test_send_to_a_non_ascii_recipient_without_smtputf8(cli, isolated_env):
    """The issue's report: `unexpected UnicodeEncodeError ... this is a bug`."""
    with server(smtputf8=False) as srv:
        write(isolated_env, srv.port)
        r = cli("test", "send", "--to", UTF8_RCPT)
    assert r.exit_code == 1, r.output
    assert "SMTPUTF8" in r.output and UTF8_RCPT in r.output
    assert "UnicodeEncodeError" not in r.output and "bug" not in r.output and "Traceback" not in r.output
    assert srv.rcpts_seen == [] and srv.messages == []  # nothing of it went to the server


def test_test_send_json_names_the_failure(cli, isolated_env):
    with server(smtputf8=False) as srv:
        write(isolated_env, srv.port)
        r = cli("test", "send", "--to", UTF8_RCPT, "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == 1 and data["failed_stage"] == "rcpt"
    rcpt = next(s for s in data["stages"] if s["stage"] == "rcpt")
    assert rcpt["data"]["code"] == 553 and rcpt["data"]["enhanced"] == "5.6.7"
    assert rcpt["data"]["failure_id"] == "smtputf8-not-offered" and UTF8_RCPT in rcpt["data"]["refused"]


def test_a_non_ascii_sender_without_smtputf8_is_refused_before_mail_from(cli, isolated_env):
    with server(smtputf8=False) as srv:
        write(isolated_env, srv.port)
        r = cli("test", "send", "--from", "ü@ë.test", "--to", "ops@example.org", "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == 1 and data["failed_stage"] == "mail", r.output
    assert "SMTPUTF8" in data["error"] and "ü@xn--cda.test" in data["error"]
    assert srv.mails_seen == []


def test_mixed_recipients_without_smtputf8_go_to_the_ascii_ones(cli, isolated_env):
    """One recipient that needs SMTPUTF8 is refused like a RCPT refusal; the others get it."""
    with server(smtputf8=False) as srv:
        write(isolated_env, srv.port)
        r = cli("test", "send", "--to", "ok@example.net", "--to", UTF8_RCPT, "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == 1, r.output  # a partial refusal is a problem found, as `send` says
    assert data["result"]["refused"][UTF8_RCPT].startswith("553 5.6.7 ") and "SMTPUTF8" in data["result"]["refused"][UTF8_RCPT]
    assert srv.rcpts_seen == ["ok@example.net"] and srv.messages[0]["to"] == ["ok@example.net"]


def test_mailctl_send_records_the_recipient_as_failed(cli, isolated_env):
    """Through the outbox: sent to the ASCII recipient, the other refused for good (5.6.7)."""
    with server(smtputf8=False) as srv:
        write(isolated_env, srv.port)
        r = cli("send", "--to", "ok@example.net", "--to", UTF8_RCPT, "--subject", "s", "--body", "b", "--json")
    data = json.loads(r.stdout)
    assert data["outcome"] == "sent", r.output
    assert list(data["failed_recipients"]) == [UTF8_RCPT] and "SMTPUTF8" in data["failed_recipients"][UTF8_RCPT]
    assert srv.messages[0]["to"] == ["ok@example.net"]


@pytest.mark.parametrize("pipelining", [False, True])
def test_with_smtputf8_the_local_part_goes_as_it_is_and_the_domain_in_idna(pipelining):
    with server(smtputf8=True, pipelining=pipelining) as srv, SmtpTransport(profile(srv.port), None) as t:
        result = t.send(RAW, "ü@ë.test", [UTF8_RCPT, "zoë@bücher.example"])
    assert result.refused == {}
    [got] = srv.messages
    assert got["from"] == "ü@xn--cda.test" and got["to"] == [UTF8_RCPT, "zoë@xn--bcher-kva.example"]
    assert "SMTPUTF8" in got["options"]


@pytest.mark.parametrize("pipelining", [False, True])
def test_an_idna_domain_alone_needs_no_smtputf8(pipelining):
    with server(smtputf8=False, pipelining=pipelining) as srv, SmtpTransport(profile(srv.port), None) as t:
        t.send(RAW, SENDER, [IDNA_RCPT])
    [got] = srv.messages
    assert got["to"] == ["ops@xn--bcher-kva.example"] and "SMTPUTF8" not in got["options"]


@pytest.mark.parametrize("pipelining", [False, True])
def test_transport_partial_and_total_refusal_without_smtputf8(pipelining):
    with server(smtputf8=False, pipelining=pipelining) as srv, SmtpTransport(profile(srv.port), None) as t:
        result = t.send(RAW, SENDER, [UTF8_RCPT, "ok@example.net"])
        assert list(result.refused) == [UTF8_RCPT] and result.refused[UTF8_RCPT].startswith("553 5.6.7")
        with pytest.raises(DeliveryError) as err:
            t.send(RAW, SENDER, [UTF8_RCPT])
        assert err.value.permanent is True and err.value.code == 553 and err.value.stage == "rcpt"
        assert "SMTPUTF8" in err.value.message and set(err.value.refused) == {UTF8_RCPT}
        t.send(RAW, SENDER, ["after@example.net"])  # the session is still good
    assert [m["to"] for m in srv.messages] == [["ok@example.net"], ["after@example.net"]]
    assert UTF8_RCPT not in srv.rcpts_seen


# --- 8BITMIME ---------------------------------------------------------------------------------
BODY = "Grüße aus Köln, ½ € — naïve\n"


@pytest.mark.parametrize("pipelining", [False, True])
def test_an_8bit_body_is_re_encoded_for_a_server_without_8bitmime(cli, isolated_env, pipelining):
    with server(smtputf8=False, eightbit=False, pipelining=pipelining) as srv:
        write(isolated_env, srv.port)
        r = cli("send", "--to", "ok@example.net", "--subject", "Grüße", "--body", BODY)
        assert r.exit_code == 0, r.output
    [got] = srv.messages
    data = got["data"]
    assert data.isascii() and "BODY=8BITMIME" not in got["options"]
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert msg.get_content().replace("\r\n", "\n") == BODY and str(msg["Subject"]) == "Grüße"


def test_with_8bitmime_the_body_goes_as_it_is(cli, isolated_env):
    with server(smtputf8=False) as srv:
        write(isolated_env, srv.port)
        assert cli("send", "--to", "ok@example.net", "--subject", "s", "--body", BODY).exit_code == 0
    [got] = srv.messages
    assert "BODY=8BITMIME" in got["options"] and BODY.encode() in got["data"].replace(b"\r\n", b"\n")


def test_test_send_transcript_says_the_body_was_re_encoded(cli, isolated_env):
    with server(smtputf8=False, eightbit=False) as srv:
        write(isolated_env, srv.port)
        r = cli("test", "send", "--to", "ok@example.net", "--body", BODY, "--transcript")
    assert r.exit_code == 0, r.output
    assert "does not offer 8BITMIME" in r.stdout and "Content-Transfer-Encoding: quoted-printable" in r.stdout
    assert srv.messages[0]["data"].isascii()


def test_seven_bit_keeps_headers_and_7bit_parts_and_encodes_binary_as_base64():
    raw = (b"From: a@example.com\r\nX-Folded: one\r\n two\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=\"BB\"\r\n\r\n--BB\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + "héllo\r\n.dot".encode() +
           b"\r\n--BB\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n\xff\xfe\x00\x01"
           b"\r\n--BB\r\nContent-Type: text/plain\r\n\r\nascii part\r\n--BB--\r\n")
    out = seven_bit(raw)
    assert out.isascii() and out.startswith(b"From: a@example.com\r\nX-Folded: one\r\n two\r\n")
    parts = [p for p in email.message_from_bytes(out, policy=email.policy.default).walk() if not p.is_multipart()]
    assert [p["Content-Transfer-Encoding"] for p in parts] == ["quoted-printable", "base64", None]
    assert parts[0].get_content() == "héllo\r\n.dot" and parts[1].get_content() == b"\xff\xfe\x00\x01"
    assert parts[2].get_content() == "ascii part\r\n" or parts[2].get_content() == "ascii part"
    assert b"\r\n" in out and b"\n" not in out.replace(b"\r\n", b"")
    assert seven_bit(RAW) == RAW  # nothing 8-bit: untouched


def test_seven_bit_gives_a_non_mime_message_a_content_type():
    out = seven_bit("Subject: s\r\n\r\nnon-MIME caf\u00e9\r\n".encode())
    msg = email.message_from_bytes(out, policy=email.policy.default)
    assert out.isascii() and msg.get_content_type() == "text/plain" and msg.get_content_charset() == "utf-8"
    assert msg.get_content() == "non-MIME café\r\n" or msg.get_content() == "non-MIME café\n"


@pytest.mark.parametrize("pipelining", [False, True])
def test_utf8_headers_ask_for_smtputf8_when_offered(pipelining):
    """RFC 6532 headers (raw UTF-8, as a program may hand to sendmail) with an ASCII envelope."""
    raw = f"From: {SENDER}\r\nTo: Jörg <jorg@example.net>\r\nSubject: Grüße\r\n\r\nascii body\r\n".encode()
    with server(smtputf8=True, pipelining=pipelining) as srv, SmtpTransport(profile(srv.port), None) as t:
        t.send(raw, SENDER, ["jorg@example.net"])
        t.send(RAW.replace(b"plain body", "Körper".encode()), SENDER, ["jorg@example.net"])  # 8-bit body only
    first, second = srv.messages
    assert "SMTPUTF8" in first["options"] and "BODY=8BITMIME" in first["options"]
    assert "SMTPUTF8" not in second["options"] and "BODY=8BITMIME" in second["options"]


@pytest.mark.parametrize("address, envelope, needs", [
    ("ops@example.com", "ops@example.com", False),
    ("ops@bücher.example", "ops@xn--bcher-kva.example", False),  # IDNA: no SMTPUTF8 needed
    ("jörg@example.net", "jörg@example.net", True),
    ("ü@ë.test", "ü@xn--cda.test", True),
    ('"a@ü"@example.com', '"a@ü"@example.com', True),  # the local part is what counts, @ inside quotes too
])
def test_envelope_address_and_needs_smtputf8(address, envelope, needs):
    from mailctl.addresses import envelope_address, needs_smtputf8

    assert envelope_address(address) == envelope
    assert needs_smtputf8(envelope_address(address)) is needs


def test_envelope_address_checks_what_it_converts():
    from mailctl.addresses import envelope_address
    from mailctl.errors import ValidationError

    with pytest.raises(ValidationError) as err:
        envelope_address("jörg@bad_domäin", "recipient")
    assert "recipient" in err.value.message
