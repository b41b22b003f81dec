"""SMTP AUTH with a non-ASCII user name and password: PLAIN and LOGIN send them UTF-8 encoded
(RFC 4616; what Dovecot, Cyrus SASL and Exchange take for LOGIN), CRAM-MD5 keys its HMAC
with the password's UTF-8 bytes. Against real servers: aiosmtpd in-process over STARTTLS
(the handler compares the exact bytes it received) and a private Postfix with Dovecot SASL
(a passwd-file holding the UTF-8 password). A wrong non-ASCII password is the usual
auth failure (77, with its hint); a password with no UTF-8 form is a one-line ConfigError
(78) naming the field. No form of the secret (as is, base64 of its UTF-8 bytes, padded or
not, PLAIN's \\0user\\0pass) ever appears in stdout, stderr, --json or the transcript."""

from __future__ import annotations

import base64
import hmac
import json
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "integration"))
from smtpserver import RecordingHandler, make_pki, smtp_server, store_secret, write_profiles  # noqa: E402

from aiosmtpd.smtp import MISSING, AuthResult, LoginPassword, auth_mechanism  # noqa: E402

USER = "jürgen.müller@example.com"
PASSWORD = "pässwörd-Ω-密码"
WRONG = "fälsch-Ω-错误的密码"
MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")


def _b64(value: str) -> str:
    return base64.b64encode(value.encode("utf-8")).decode("ascii")


def secret_forms(password: str, user: str = USER) -> list[str]:
    """Every form of `password` AUTH may send or a server may echo: the value, the base64 of
    its UTF-8 bytes (LOGIN's second answer), PLAIN's \\0user\\0pass in base64, padded or not;
    and the Latin-1 base64 a wrong encoder would send, so a regression shows too."""
    forms = [password]
    for b64 in (_b64(password), _b64(f"\0{user}\0{password}"), base64.b64encode(password.encode("latin-1", "replace")).decode()):
        forms += [b64, b64.rstrip("=")]
    return forms


def assert_hidden(*texts: str, passwords=(PASSWORD, WRONG)) -> None:
    for password in passwords:
        for form in secret_forms(password):
            for i, text in enumerate(texts):
                assert form not in (text or ""), f"text #{i} holds a form of the secret ({form[:4]}...): {text[:400]!r}"


# --- aiosmtpd: the exact bytes ---------------------------------------------------------------
class Utf8Handler(RecordingHandler):
    """RecordingHandler with users given by their UTF-8 bytes, every AUTH's bytes kept in
    .received (mechanism, login bytes, password bytes or CRAM-MD5 response), and CRAM-MD5
    (RFC 2195) checked with HMAC-MD5 keyed by the stored password's UTF-8 bytes."""

    def __init__(self, users: dict[str, str], **kwargs):
        super().__init__(users=users, **kwargs)
        self.received: list[tuple[str, bytes, bytes]] = []

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        assert isinstance(auth_data, LoginPassword)
        self.received.append((mechanism, auth_data.login, auth_data.password))
        stored = {u.encode("utf-8"): p.encode("utf-8") for u, p in self.users.items()}
        ok = stored.get(auth_data.login) == auth_data.password
        self.attempts_auth.append((mechanism, ok))
        return AuthResult(success=ok, handled=False)

    @auth_mechanism("CRAM-MD5")
    async def auth_CRAM_MD5(self, server, args):
        challenge = f"<{uuid.uuid4().hex}@mail.test>".encode("ascii")
        answer = await server.challenge_auth(challenge)
        if answer is MISSING:
            return AuthResult(success=False)
        user, _, digest = answer.rpartition(b" ")
        self.received.append(("CRAM-MD5", user, answer))
        password = {u.encode("utf-8"): p.encode("utf-8") for u, p in self.users.items()}.get(user)
        ok = password is not None and hmac.compare_digest(digest, hmac.HMAC(password, challenge, "md5").hexdigest().encode())
        self.attempts_auth.append(("CRAM-MD5", ok))
        return AuthResult(success=ok, auth_data=user.decode("utf-8") if ok else None, handled=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def server(pki):
    handler = Utf8Handler(users={USER: PASSWORD})
    with smtp_server(cert=pki.good, handler=handler) as srv:
        yield srv


def _profiles(home, srv, pki, password: str, **extra) -> None:
    values = {"type": "smtp", "host": "127.0.0.1", "port": srv.port, "security": "starttls", "auth": "password",
              "username": USER, "ca_file": str(pki.ca_file), "from_address": "ops@example.com", "timeout": 10}
    values.update(extra)
    write_profiles(home, {"u": values})
    store_secret("u", "password", password)


@pytest.mark.parametrize("mech", MECHANISMS)
def test_connect_sends_utf8_bytes(cli, isolated_env, server, pki, mech):
    _profiles(isolated_env, server, pki, PASSWORD)
    res = cli("test", "connect", "u", "--auth-mechanism", mech, "--json", "--transcript")
    assert res.exit_code == 0, res.output + repr(res.exception)
    data = json.loads(res.stdout)
    assert {s["stage"]: s["status"] for s in data["stages"]}["auth"] == "ok"
    got_mech, login, answer = server.handler.received[-1]
    assert got_mech == mech and login == USER.encode("utf-8")
    if mech == "CRAM-MD5":
        assert answer.startswith(USER.encode("utf-8") + b" ") and len(answer.rpartition(b" ")[2]) == 32
    else:
        assert answer == PASSWORD.encode("utf-8")
    assert server.handler.attempts_auth[-1] == (mech, True)
    transcript = json.dumps(data["transcript"], ensure_ascii=False)
    assert f"AUTH {mech}" in transcript and "235" in transcript
    assert_hidden(res.stdout, res.stderr, transcript, json.dumps(data))
    if mech == "LOGIN":  # LOGIN sends the user name in base64 on its own: masked as well
        assert _b64(USER) not in res.stdout and _b64(USER).rstrip("=") not in res.stdout


@pytest.mark.parametrize("mech", MECHANISMS)
def test_send_delivers_with_utf8_password_and_vv_transcript_hides_it(cli, isolated_env, server, pki, mech):
    _profiles(isolated_env, server, pki, PASSWORD, auth_mechanism=mech)
    res = cli("-vv", "send", "--to", "bob@example.org", "-s", f"utf8 {mech}", "-b", "grüße")
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert len(server.messages) == 1 and server.messages[0]["auth"]
    lines = res.stderr.splitlines()
    assert any(line.startswith("mailctl: C: AUTH " + mech) for line in lines), res.stderr
    assert_hidden(res.stdout, res.stderr)


@pytest.mark.parametrize("mech", MECHANISMS)
def test_wrong_utf8_password_is_auth_failure_77_with_hint(cli, isolated_env, server, pki, mech):
    _profiles(isolated_env, server, pki, WRONG, auth_mechanism=mech)
    res = cli("test", "connect", "u", "--transcript")
    assert res.exit_code == 77, res.output + repr(res.exception)
    assert "535" in res.output and "Traceback" not in res.output and "UnicodeEncodeError" not in res.output
    assert "Hint:" in res.stderr and "--password-stdin" in res.output
    assert server.handler.attempts_auth[-1] == (mech, False)
    if mech != "CRAM-MD5":  # the server got the wrong password's UTF-8 bytes, not a mangled form
        assert server.handler.received[-1][2] == WRONG.encode("utf-8")
    assert_hidden(res.stdout, res.stderr)
    res = cli("test", "connect", "u", "--json")
    assert res.exit_code == 77 and json.loads(res.stdout)["failed_stage"] == "auth"
    assert_hidden(res.stdout, res.stderr)


@pytest.mark.parametrize("mech", ("PLAIN", "LOGIN"))
def test_echoed_utf8_credentials_are_redacted(cli, isolated_env, pki, mech):
    """A server that echoes what it got (base64 of the UTF-8 forms) in its refusal: each
    form is masked in the error, the --json and the transcript."""
    echo = f"535 5.7.8 refused {_b64(chr(0) + USER + chr(0) + PASSWORD)} user {_b64(USER)} pass {_b64(PASSWORD).rstrip('=')}"
    handler = Utf8Handler(users={USER: PASSWORD}, script={"auth": echo})
    with smtp_server(cert=pki.good, handler=handler) as srv:
        _profiles(isolated_env, srv, pki, PASSWORD, auth_mechanism=mech)
        res = cli("test", "connect", "u", "--json", "--transcript")
        text = cli("test", "connect", "u", "--transcript")
    assert res.exit_code == 77 and text.exit_code == 77, res.output + text.output
    assert "refused [redacted] user [redacted] pass [redacted]" in text.output
    assert "[redacted]" in res.stdout
    for out in (res.stdout, res.stderr, text.stdout, text.stderr):
        assert _b64(USER) not in out and _b64(USER).rstrip("=") not in out
    assert_hidden(res.stdout, res.stderr, text.stdout, text.stderr)


def test_xoauth2_with_utf8_user_name(cli, isolated_env, pki):
    """XOAUTH2's token is ASCII; a non-ASCII user name goes UTF-8 encoded, no crash."""
    token = "ya29.utf8-user-token-0123456789abcdef"
    handler = Utf8Handler(users={}, tokens={USER: token})
    with smtp_server(cert=pki.good, handler=handler) as srv:
        _profiles(isolated_env, srv, pki, PASSWORD, auth="oauth")
        store_secret("u", "access_token", token)
        res = cli("test", "send", "u", "--to", "bob@example.org", "--json", "--transcript")
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert handler.attempts_auth[-1] == ("XOAUTH2", True) and len(handler.messages) == 1
    payload = _b64(f"user={USER}\x01auth=Bearer {token}\x01\x01")
    for form in (token, payload, payload.rstrip("="), _b64(token)):
        assert form not in res.stdout and form not in res.stderr


def test_password_without_utf8_form_is_config_error_naming_field(cli, isolated_env, server, pki, monkeypatch):
    """Bytes that are not UTF-8 in the environment come to Python as lone surrogates: no
    UTF-8 form to send. A one-line ConfigError (78) naming the password, not a traceback."""
    _profiles(isolated_env, server, pki, PASSWORD)
    monkeypatch.setenv("MAILCTL_SECRET_U_PASSWORD", "p\udce4ss-latin1")
    res = cli("test", "connect", "u")
    assert res.exit_code == 78, res.output + repr(res.exception)
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "password" in errors[0] and "UTF-8" in errors[0], res.stderr
    assert "UnicodeEncodeError" not in res.output and "Traceback" not in res.output
    assert "ss-latin1" not in res.output
    assert not server.handler.received  # nothing was sent
    res = cli("send", "--to", "bob@example.org", "-s", "x", "-b", "y")
    assert res.exit_code == 78 and "UnicodeEncodeError" not in res.output, res.output
    assert not server.messages
    monkeypatch.delenv("MAILCTL_SECRET_U_PASSWORD")
    store_secret("u", "password", "pä\0ss")  # NUL: AUTH PLAIN's separator (a keyring can hold it)
    res = cli("test", "connect", "u", "--json")
    assert res.exit_code == 78 and "NUL" in json.loads(res.stdout)["error"], res.output
    assert not server.handler.received


@pytest.mark.parametrize("proxy", ["socks5://proxyuser@127.0.0.1:9", "http://proxyuser@127.0.0.1:9"])
def test_proxy_password_without_utf8_form_is_config_error(cli, isolated_env, server, pki, monkeypatch, proxy):
    """The proxy password goes out UTF-8 encoded too (SOCKS5 RFC 1929, CONNECT's Basic): one
    with no UTF-8 form is a one-line error naming proxy_password, before any connection."""
    _profiles(isolated_env, server, pki, PASSWORD, proxy=proxy)
    monkeypatch.setenv("MAILCTL_SECRET_U_PROXY_PASSWORD", "pr\udce4xy-latin1")
    res = cli("test", "connect", "u")
    assert res.exit_code == 78, res.output + repr(res.exception)
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "proxy_password" in errors[0] and "UTF-8" in errors[0], res.stderr
    assert "UnicodeEncodeError" not in res.output and "Traceback" not in res.output and "xy-latin1" not in res.output


def test_a_secret_read_from_bytes_that_are_not_utf8_is_still_masked():
    """The redactor masks the base64 of the bytes such a secret would go out as, never fails."""
    from mailctl.transports.base import Redactor

    value = "p\udce4ss-word-latin1"
    r = Redactor()
    r.add(value)
    wire = base64.b64encode(value.encode("utf-8", "surrogateescape")).decode()
    shown = r.redact(f"334 {wire} and {value}")
    assert wire not in shown and value not in shown and shown.startswith("334 ")


# --- Postfix + Dovecot SASL: a real SASL server ------------------------------------------------
@pytest.fixture(scope="module")
def dovecot_utf8():
    """A private Postfix + Dovecot (tests/integration/integration_services.py) whose Dovecot
    offers PLAIN, LOGIN and CRAM-MD5, takes any character in a user name, and holds a
    passwd-file with the UTF-8 password (`{PLAIN}pässwörd...`) for an ASCII and a
    non-ASCII user. Its own instance: the shared postfix_server fixture stays as it is."""
    import integration_services as services

    reason = services.postfix_skip_reason()
    if reason:
        pytest.skip(reason)
    original = services._write_dovecot

    def write_dovecot(root: Path, port: int) -> Path:
        conf = original(root, port)
        text = conf.read_text().replace("auth_mechanisms = plain login", "auth_mechanisms = plain login cram-md5\nauth_username_chars =")
        assert "cram-md5" in text
        conf.write_text(text)
        users = root / "dovecot" / "users"  # keeps its owner and mode (root:dovecot 0640)
        users.write_text(f"{services.USER}:{{PLAIN}}{PASSWORD}::::::\n{USER}:{{PLAIN}}{PASSWORD}::::::\n", encoding="utf-8")
        return conf

    services._write_dovecot = write_dovecot
    try:
        for attempt in range(3):  # ports picked free may be taken before Postfix binds them
            running = services.running_postfix()
            try:
                server = running.__enter__()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
    finally:
        services._write_dovecot = original
    try:
        yield server
    finally:
        running.__exit__(None, None, None)


def _dovecot_profile(home, server, user: str, password: str, mech: str) -> None:
    from integration_services import smtp_profile

    write_profiles(home, {"pf": smtp_profile(server, username=user, from_address=server.username, auth_mechanism=mech)})
    store_secret("pf", "password", password)


@pytest.mark.integration
@pytest.mark.parametrize("user", ["ascii", "utf8"])
@pytest.mark.parametrize("mech", MECHANISMS)
def test_dovecot_connect_and_send_with_utf8_password(cli, isolated_env, dovecot_utf8, mech, user):
    login = dovecot_utf8.username if user == "ascii" else USER
    _dovecot_profile(isolated_env, dovecot_utf8, login, PASSWORD, mech)
    res = cli("test", "connect", "pf", "--json", "--transcript")
    assert res.exit_code == 0, res.output + "\n" + dovecot_utf8.dovecot_log_text()[-2000:]
    assert_hidden(res.stdout, res.stderr)
    subject = f"utf8 auth {mech} {user} {uuid.uuid4()}"
    since = len(dovecot_utf8.log())
    res = cli("-vv", "send", "--to", dovecot_utf8.accept, "-s", subject, "-b", "grüße")
    assert res.exit_code == 0, res.output
    assert_hidden(res.stdout, res.stderr)
    dovecot_utf8.by_subject(subject)
    log = dovecot_utf8.wait_for_log(f"sasl_method={mech}", since=since)
    assert f"sasl_method={mech}, sasl_username={login}" in log, log[-2000:]  # Dovecot took this very user


@pytest.mark.integration
@pytest.mark.parametrize("mech", MECHANISMS)
def test_dovecot_wrong_utf8_password_is_77_with_hint(cli, isolated_env, dovecot_utf8, mech):
    _dovecot_profile(isolated_env, dovecot_utf8, USER, WRONG, mech)
    since = len(dovecot_utf8.log())
    res = cli("test", "send", "pf", "--to", dovecot_utf8.accept, "--subject", f"wrong {uuid.uuid4()}", "--transcript")
    assert res.exit_code == 77, res.output + repr(res.exception)
    assert "535" in res.output and "Hint:" in res.stderr and "--password-stdin" in res.output
    assert "UnicodeEncodeError" not in res.output and "Traceback" not in res.output
    assert_hidden(res.stdout, res.stderr)
    dovecot_utf8.wait_for_log(f"SASL {mech} authentication failed", since=since)
