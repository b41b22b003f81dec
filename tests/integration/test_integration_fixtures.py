"""Self-test of the integration fixtures with plain smtplib (no mailctl code): the services
behave as the mailctl tests assume."""

from __future__ import annotations

import smtplib
import ssl
import uuid
from email.message import EmailMessage
from email.utils import make_msgid

import pytest

pytestmark = pytest.mark.integration


def _message(server, subject: str, to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = server.username
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="mailctl.test")
    msg.set_content("fixture self-test\n")
    return msg


def test_starttls_auth_plain_delivers(postfix_server):
    ctx = ssl.create_default_context(cafile=str(postfix_server.ca_file))
    subject = f"fixture {uuid.uuid4()}"
    msg = _message(postfix_server, subject, postfix_server.accept)
    with smtplib.SMTP(postfix_server.host, postfix_server.port, local_hostname="client.test", timeout=10) as s:
        s.ehlo()
        assert not s.has_extn("auth"), "AUTH must not be offered before STARTTLS"
        s.starttls(context=ctx)
        s.ehlo()
        assert "PLAIN" in s.esmtp_features["auth"].upper()
        s.login(postfix_server.username, postfix_server.password)
        refused = s.send_message(msg)
        assert refused == {}
    got = postfix_server.by_subject(subject)
    assert got["Message-ID"] == msg["Message-ID"]
    assert got["From"] == postfix_server.username
    assert got["Delivered-To"] == postfix_server.accept


def test_wrong_password_is_535(postfix_server):
    ctx = ssl.create_default_context(cafile=str(postfix_server.ca_file))
    with smtplib.SMTP(postfix_server.host, postfix_server.port, timeout=10) as s:
        s.starttls(context=ctx)
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            s.login(postfix_server.username, "wrong-password")
    assert info.value.smtp_code == 535


def test_reject_and_defer_recipients(postfix_server):
    ctx = ssl.create_default_context(cafile=str(postfix_server.ca_file))
    with smtplib.SMTP(postfix_server.host, postfix_server.port, timeout=10) as s:
        s.starttls(context=ctx)
        s.login(postfix_server.username, postfix_server.password)
        s.mail(postfix_server.username)
        code, text = s.rcpt(postfix_server.reject)
        assert code == 550 and b"5.1.1" in text
        code, text = s.rcpt(postfix_server.defer)
        assert code == 450 and b"4.2.0" in text
        code, _ = s.rcpt(postfix_server.accept)
        assert code == 250
        s.rset()


def test_selfsigned_listener_is_not_trusted_by_the_ca(postfix_server):
    ep = postfix_server.selfsigned
    ctx = ssl.create_default_context(cafile=str(postfix_server.ca_file))
    with smtplib.SMTP(ep.host, ep.port, timeout=10) as s:
        with pytest.raises(ssl.SSLCertVerificationError):
            s.starttls(context=ctx)
    # ... while the certificate itself is fine once trusted explicitly.
    ctx = ssl.create_default_context(cafile=str(postfix_server.selfsigned_cert))
    with smtplib.SMTP(ep.host, ep.port, timeout=10) as s:
        s.starttls(context=ctx)
        der = s.sock.getpeercert(binary_form=True)
    import hashlib

    digest = hashlib.sha256(der).hexdigest().upper()
    assert postfix_server.selfsigned_fingerprint.replace(":", "") == digest


def test_auth_before_tls_refused_by_server(postfix_server):
    with smtplib.SMTP(postfix_server.host, postfix_server.port, timeout=10) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        assert not s.has_extn("auth")
        code, text = s.docmd("AUTH", "PLAIN AGFsaWNlQHRlc3QuZXhhbXBsZQB4")
        assert code == 503, (code, text)


def test_plainauth_listener_offers_auth_without_tls(postfix_server):
    ep = postfix_server.plainauth
    with smtplib.SMTP(ep.host, ep.port, timeout=10) as s:
        s.ehlo()
        assert not s.has_extn("starttls")
        assert s.has_extn("auth")


def test_notls_listener(postfix_server):
    ep = postfix_server.notls
    with smtplib.SMTP(ep.host, ep.port, timeout=10) as s:
        s.ehlo()
        assert not s.has_extn("starttls")
        assert not s.has_extn("auth")


def test_other_domains_never_relayed(postfix_server):
    with smtplib.SMTP(postfix_server.notls.host, postfix_server.notls.port, timeout=10) as s:
        s.mail("someone@test.example")
        code, text = s.rcpt("someone@example.com")
        assert code == 554 and b"Relay access denied" in text
