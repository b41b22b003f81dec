"""The Gmail API transport (users.messages.send, media upload) against a local HTTPS fake.
(Named test_graph_* so it runs with the other HTTP-transport tests.)"""

from __future__ import annotations

import keyring
import pytest

from httpfakes import FakeHTTPS, Reply
from idp import ca_pem, trust_ca, write_profiles, resolved  # noqa: F401
from mailctl.errors import AuthError, DeliveryError, ExitCode
from mailctl.message import build_message, envelope, message_bytes
from mailctl.secrets import default_resolver
from mailctl.transports.gmail_api import GmailApiTransport
from mailctl.net.http import RetryPolicy

TOKEN = "ya29.gmail-token-SECRET-555"
SEND = r"/upload/gmail/v1/users/me/messages/send"


@pytest.fixture
def gmail(trust_ca):
    with FakeHTTPS(trust_ca) as srv:
        srv.on("POST", SEND, Reply(200, {"id": "18c1f0a2b3c4d5e6", "threadId": "18c1f0a2b3c4d5e6", "labelIds": ["SENT"]}))
        yield srv


@pytest.fixture
def profile(isolated_env, ca_pem):
    keyring.set_password("mailctl", "gm/access_token", TOKEN)
    write_profiles(isolated_env, {"gm": {"type": "gmail-api", "provider": "gmail", "auth": "oauth", "client_id": "1234-test.apps.googleusercontent.com",
                                         "username": "me@gmail.example", "from_address": "me@gmail.example", "ca_file": ca_pem}})
    return resolved(isolated_env, "gm")


def build(profile, **kw):
    msg = build_message(profile, {}, to=["bob@example.org"], subject="Via Gmail API", body="hi\n", **kw)
    sender, rcpts = envelope(msg)
    return message_bytes(msg), sender, rcpts


def test_send_uploads_the_exact_message(profile, gmail):
    raw, sender, rcpts = build(profile)
    with GmailApiTransport(profile, default_resolver(), endpoint=gmail.base_url) as t:
        result = t.send(raw, sender, rcpts)
    [req] = gmail.requests
    assert req.path == SEND and req.query == "uploadType=media"
    assert req.headers["authorization"] == f"Bearer {TOKEN}" and req.headers["content-type"] == "message/rfc822"
    assert req.body == raw
    assert result.queue_id == "18c1f0a2b3c4d5e6" and TOKEN not in result.reply


@pytest.mark.parametrize("reply, cls, exit_code", [
    (Reply(403, {"error": {"code": 403, "message": "Request had insufficient authentication scopes.",
                           "errors": [{"message": "Insufficient Permission", "domain": "global", "reason": "insufficientPermissions"}],
                           "status": "PERMISSION_DENIED"}}), AuthError, ExitCode.NOPERM),
    (Reply(429, {"error": {"code": 429, "message": "User-rate limit exceeded.",
                           "errors": [{"reason": "userRateLimitExceeded"}], "status": "RESOURCE_EXHAUSTED"}},
           {"Retry-After": "600"}), DeliveryError, ExitCode.TEMPFAIL),
    (Reply(400, {"error": {"code": 400, "message": "Invalid To header", "errors": [{"reason": "invalidArgument"}],
                           "status": "INVALID_ARGUMENT"}}), DeliveryError, ExitCode.PROBLEMS),
])
def test_errors(profile, gmail, reply, cls, exit_code):
    gmail.on("POST", SEND, reply)
    raw, sender, rcpts = build(profile)
    with pytest.raises(cls) as exc:
        with GmailApiTransport(profile, default_resolver(), endpoint=gmail.base_url, retry=RetryPolicy(sleep=lambda s: None)) as t:
            t.send(raw, sender, rcpts)
    assert exc.value.exit_code == exit_code and TOKEN not in exc.value.message + (exc.value.hint or "")
