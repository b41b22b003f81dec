"""A real Postfix configured the way production relays refuse (issue #15): every refusal gets
its own cause, not the generic "rejected permanently (5xx)", and the exit code of its class:
77 when the sender is refused (its login may not send as that From, it did not log in, its
client address or HELO name is refused, relaying denied, a sender access rule), 1 when a
recipient or the message is refused (recipient access, size limit), 75 when it is temporary
(greylisting, a deferring rule, connection and message rate limits).

The listeners are in integration_services.REFUSAL_LISTENERS: smtpd_sender_login_maps with
reject_sender_login_mismatch behind Dovecot SASL, check_client_access rejecting 127.0.0.1 in the
greeting (smtpd_delay_reject = no), reject_non_fqdn_helo_hostname, check_sender_access,
check_recipient_access (REJECT, postgrey's wording, a 450), reject_unauth_destination,
message_size_limit, smtpd_client_connection_count_limit and smtpd_client_message_rate_limit.
`mailctl send` goes through the outbox, whose exit status is 1 for any refusal for good and 75
for a deferral (DESIGN.md); `mailctl test send` / `test connect` report the class."""

from __future__ import annotations

import json
import socket
import time
import uuid
from typing import Iterator

import keyring
import pytest

from integration_services import (
    RefusalPostfix,
    postfix_skip_reason,
    running_refusal_postfix,
    write_profiles,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def refusals() -> Iterator[RefusalPostfix]:
    reason = postfix_skip_reason()
    if reason:
        pytest.skip(reason)
    for attempt in range(3):  # a port picked free may be taken before Postfix binds it
        services = running_refusal_postfix()
        try:
            server = services.__enter__()
        except RuntimeError:
            if attempt == 2:
                raise
            continue
        break
    try:
        yield server
    finally:
        services.__exit__(None, None, None)


def _profile(home, pf: RefusalPostfix, listener: str, *, login: bool = False, **values) -> None:
    profile = {"type": "smtp", "host": pf.host, "port": pf.ports[listener], "security": "none", "auth": "none",
               "from_address": pf.username, "timeout": 10}
    if login:
        profile.update(security="starttls", auth="password", username=pf.username, ca_file=str(pf.ca_file))
        keyring.set_password("mailctl", "pf/password", pf.password)
    profile.update(values)
    write_profiles(home, {"pf": profile})


def _test_send(cli, *args):
    """`mailctl test send` in JSON and for a human: (exit code, report, human stdout)."""
    res = cli("test", "send", "pf", *args, "--json")
    data = json.loads(res.stdout)
    human = cli("test", "send", "pf", *args)
    assert human.exit_code == res.exit_code
    return res.exit_code, data, human.stdout + human.stderr


def _assert_explained(data, output, *, stage, ident, exit_code, reply):
    assert data["failed_stage"] == stage, data["stages"]
    assert data["explanation"]["id"] == ident, data["explanation"]
    assert data["exit_code"] == exit_code
    failed = next(s for s in data["stages"] if s["stage"] == stage)
    assert reply in json.dumps(failed), failed  # Postfix's own reply, as it sent it
    assert "cause: " + data["explanation"]["cause"][:50] in output
    assert "rejected the command permanently" not in output  # not the generic fallback


def _password_hidden(pf, *texts):
    for text in texts:
        assert pf.password not in text


# --- refusals of the sender: 77 ------------------------------------------------------------
def test_sender_login_mismatch(refusals, cli, isolated_env):
    _profile(isolated_env, refusals, "senderlogin", login=True)
    code, data, out = _test_send(cli, "--from", refusals.not_owned, "--to", refusals.accept)
    assert code == 77
    _assert_explained(data, out, stage="rcpt", ident="sender-login-mismatch", exit_code=77,
                      reply=f"Sender address rejected: not owned by user {refusals.username}")
    assert "--from-address" in data["explanation"]["fix"]
    assert data["explanation"]["status"] == "5.7.1 Delivery not authorized, message refused (RFC 3463)"
    _password_hidden(refusals, out, json.dumps(data))
    # the same login sending as itself is accepted: the refusal is about the From, nothing else
    code, data, out = _test_send(cli, "--to", refusals.accept)
    assert code == 0, data["stages"]


def _settled_count(refusals, quiet: float = 0.6, limit: float = 10.0) -> int:
    """The delivered-message count once it has stopped changing for `quiet` seconds."""
    deadline = time.monotonic() + limit
    count, since = refusals.message_count(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = refusals.message_count()
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return count


def test_sender_login_mismatch_through_send(refusals, cli, isolated_env):
    _profile(isolated_env, refusals, "senderlogin", login=True)
    before = _settled_count(refusals)  # an earlier test's accepted message may still be on its way
    res = cli("send", "pf", "--from", refusals.not_owned, "--to", refusals.accept, "--subject",
              f"not owned {uuid.uuid4()}", "--body", "x")
    assert res.exit_code == 1, res.stdout + res.stderr  # the outbox: failed for good
    assert "not owned by user" in res.stderr
    time.sleep(0.5)
    assert refusals.message_count() == before


def test_sender_not_logged_in(refusals, cli, isolated_env):
    _profile(isolated_env, refusals, "senderlogin", security="starttls", ca_file=str(refusals.ca_file))
    code, data, out = _test_send(cli, "--to", refusals.accept)
    assert code == 77
    _assert_explained(data, out, stage="rcpt", ident="sender-not-logged-in", exit_code=77,
                      reply="Sender address rejected: not logged in")
    assert "--auth password" in data["explanation"]["fix"]


def test_client_host_rejected_in_the_greeting(refusals, cli, isolated_env):
    _profile(isolated_env, refusals, "clientdenied")
    res = cli("test", "connect", "pf", "--json")
    data = json.loads(res.stdout)
    assert res.exit_code == 77 == data["exit_code"]
    _assert_explained(data, cli("test", "connect", "pf").stdout, stage="banner", ident="client-host-rejected",
                      exit_code=77, reply="Client host rejected: Access denied")


def test_helo_name_rejected(refusals, cli, isolated_env):
    _profile(isolated_env, refusals, "helo", ehlo_name="localhost")
    code, data, out = _test_send(cli, "--to", refusals.accept)
    assert code == 77
    _assert_explained(data, out, stage="rcpt", ident="helo-rejected", exit_code=77,
                      reply="Helo command rejected: need fully-qualified hostname")
    assert "--ehlo-name" in data["explanation"]["fix"]
    _profile(isolated_env, refusals, "helo", ehlo_name=f"client.{refusals.domain}")  # what the fix says
    code, data, _ = _test_send(cli, "--to", refusals.accept)
    assert code == 0, data["stages"]


def test_sender_access_rejected(refusals, cli, isolated_env):
    _profile(isolated_env, refusals, "policy")
    code, data, out = _test_send(cli, "--from", refusals.blocked_sender, "--to", refusals.accept)
    assert code == 77
    _assert_explained(data, out, stage="rcpt", ident="sender-policy-rejected", exit_code=77,
                      reply="Sender address rejected: Access denied")


def test_relay_access_denied(refusals, cli, isolated_env):
    _profile(isolated_env, refusals, "policy")
    code, data, out = _test_send(cli, "--to", "someone@example.net")
    assert code == 77
    _assert_explained(data, out, stage="rcpt", ident="relay-denied", exit_code=77, reply="Relay access denied")
    res = cli("send", "pf", "--to", "someone@example.net", "--subject", "relay", "--body", "x")
    assert res.exit_code == 1 and "Relay access denied" in res.stderr, res.stderr


# --- refusals of a recipient or the message: 1 -----------------------------------------------
def test_recipient_access_rejected(refusals, cli, isolated_env):
    _profile(isolated_env, refusals, "policy")
    code, data, out = _test_send(cli, "--to", refusals.denied_rcpt)
    assert code == 1
    _assert_explained(data, out, stage="rcpt", ident="recipient-access-denied", exit_code=1,
                      reply="Recipient address rejected: Access denied")


def test_message_over_the_size_limit(refusals, cli, isolated_env):
    _profile(isolated_env, refusals, "small")
    body = "0123456789abcdef\n" * (refusals.size_limit // 8)  # twice the limit
    code, data, out = _test_send(cli, "--to", refusals.accept, "--body", body)
    assert code == 1
    stage = data["failed_stage"]
    assert stage in ("mail", "data")  # at MAIL when SIZE= was declared, else after the data
    _assert_explained(data, out, stage=stage, ident="message-too-big", exit_code=1, reply="5.3.4")
    res = cli("send", "pf", "--to", refusals.accept, "--subject", "big", "--body", body)
    assert res.exit_code == 1 and "552" in res.stderr, res.stderr
    code, data, _ = _test_send(cli, "--to", refusals.accept, "--body", "small enough")
    assert code == 0, data["stages"]


# --- temporary: 75 ------------------------------------------------------------------------------
def test_greylisted_as_postgrey_words_it(refusals, cli, isolated_env):
    _profile(isolated_env, refusals, "policy")
    code, data, out = _test_send(cli, "--to", refusals.grey_rcpt)
    assert code == 75
    _assert_explained(data, out, stage="rcpt", ident="greylisted", exit_code=75, reply="Greylisted, see http://postgrey")
    res = cli("send", "pf", "--to", refusals.grey_rcpt, "--subject", "grey", "--body", "x")
    assert res.exit_code == 75, res.stderr  # kept in the outbox for a retry


def test_deferring_access_rule_is_temporary(refusals, cli, isolated_env):
    """A 450 from check_recipient_access: Postfix's recipient-restriction entry, and because
    the reply is 4xx, exit 75; the registry names its 4.2.0."""
    _profile(isolated_env, refusals, "policy")
    code, data, out = _test_send(cli, "--to", refusals.defer_rcpt)
    assert code == 75
    _assert_explained(data, out, stage="rcpt", ident="recipient-access-denied", exit_code=75, reply="450 4.2.0")
    assert data["explanation"]["status"] == "4.2.0 Other or undefined mailbox status (RFC 3463)"


def test_connection_count_limit(refusals, cli, isolated_env):
    _profile(isolated_env, refusals, "conncount")
    with socket.create_connection((refusals.host, refusals.ports["conncount"]), timeout=5) as held:
        assert held.recv(512).startswith(b"220")  # this client's one allowed connection
        res = cli("test", "connect", "pf", "--json")
        data = json.loads(res.stdout)
        assert res.exit_code == 75, data["stages"]
        _assert_explained(data, cli("test", "connect", "pf").stdout, stage="banner", ident="connection-limit",
                          exit_code=75, reply="too many connections from 127.0.0.1")
    deadline = time.monotonic() + 10  # anvil counts the held connection as gone a moment after it closes
    while (res := cli("test", "connect", "pf")).exit_code != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert res.exit_code == 0, res.stdout


def test_message_rate_limit(refusals, cli, isolated_env):
    _profile(isolated_env, refusals, "msgrate")
    first = cli("test", "send", "pf", "--to", refusals.accept)
    assert first.exit_code == 0, first.stdout  # one message a minute from this client
    code, data, out = _test_send(cli, "--to", refusals.accept)
    assert code == 75
    _assert_explained(data, out, stage="mail", ident="message-rate-limit", exit_code=75,
                      reply="too much mail from 127.0.0.1")
