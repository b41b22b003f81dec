"""The guided `profile add` (issue #18): `python -m mailctl profile add NAME` under a real
pseudo-terminal, answered prompt by prompt, with a real aiosmtpd (STARTTLS, AUTH) for the
connection test and a file keyring the child writes and the test reads back. Without a
terminal, the flags behaviour and a hint naming the missing flag."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import sys
import time
from pathlib import Path

import pytest
import tomlkit

from file_keyring import ENV as KEYRING_ENV, read_entries
from smtpserver import PASSWORD, USER, RecordingHandler, make_pki, smtp_server, write_profiles

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="pseudo-terminals need POSIX")


class Terminal:
    """mailctl on the slave side of a pty (its controlling terminal, so getpass reads
    /dev/tty as it would for a person); expect() waits for text, answer() types a line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: nothing of pytest's may run here
            try:
                # as on a person's terminal: a runner started in the background may ignore
                # SIGINT, and an ignored signal stays ignored across exec
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.execve(sys.executable, [sys.executable, "-m", "mailctl", *args], env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.raw = b""
        self.seen = 0  # expect() looks only after what it matched before
        self.code: int | None = None

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8", "replace").replace("\r\n", "\n")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if not chunk:
            return False
        self.raw += chunk
        return True

    def expect(self, pattern: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            found = re.compile(pattern).search(self.text, self.seen)
            if found:
                self.seen = found.end()
                return found.group(0)
            if time.monotonic() > deadline or not self._read(min(0.5, max(0.0, deadline - time.monotonic()))):
                raise AssertionError(f"no {pattern!r} on the terminal; it shows:\n{self.text}")

    def answer(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")

    def key(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float = 60) -> int:
        """The exit code, reading the terminal meanwhile (the child killed past `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
                break
            if not self._read(0.2):
                time.sleep(0.05)  # the terminal is closed; the process is still exiting
        if self.code is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        while self._read(0.1):
            pass
        os.close(self.fd)
        if self.code is None:
            raise AssertionError(f"mailctl did not finish; the terminal shows:\n{self.text}")
        return self.code


@pytest.fixture
def term_env(isolated_env, tmp_path):
    keyring_file = tmp_path / "keyring.json"
    pki = make_pki(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCTL_")}
    env.update(MAILCTL_HOME=str(isolated_env), PYTHON_KEYRING_BACKEND="file_keyring.FileKeyring",
               PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               NO_COLOR="1", COLUMNS="200", TERM="dumb", SSL_CERT_FILE=str(pki.ca_file))
    env[KEYRING_ENV] = str(keyring_file)
    env.pop("SSL_CERT_DIR", None)
    return {"env": env, "keyring": keyring_file, "home": isolated_env, "pki": pki}


def start(term_env, *args: str) -> Terminal:
    return Terminal(["profile", "add", *args], term_env["env"])


def saved(home: Path) -> dict:
    path = home / "profiles.toml"
    return tomlkit.parse(path.read_text(encoding="utf-8")).unwrap() if path.exists() else {}


def answer_smtp_server(t: Terminal, port: int, *, bad_port: bool = False) -> None:
    """Transport, preset, host, security, port (a bad one first when asked), auth, login."""
    t.expect(r"Transport \(smtp, graph, ews, file, gmail-api, lmtp\) \[smtp\]: ")
    t.answer("")
    t.expect(r"Provider preset \(microsoft365, gmail, custom\) \[custom\]: ")
    t.answer("")
    t.expect(r"Server host: ")
    t.answer("127.0.0.1")
    t.expect(r"Security \(none, starttls, tls\) \[starttls\]: ")
    t.answer("")
    t.expect(r"Port \[587\]: ")
    if bad_port:
        t.answer("70000")
        t.expect(r"Error: port: expected a port number 1-65535 \(got 70000\)")
        t.expect(r"Port \[587\]: ")
        t.answer("smtp")
        t.expect(r"Error: port: expected a whole number \(got 'smtp'\)")
        t.expect(r"Port \[587\]: ")
    t.answer(str(port))
    t.expect(r"Authentication \(none, password, oauth, client-credentials\) \[password\]: ")
    t.answer("")
    t.expect(r"Login \(username\): ")
    t.answer(USER)


def type_secret(t: Terminal, secret: str) -> None:
    """The secret comes right after the login."""
    # the final space comes from getpass, after it turned echo off: only then is it safe to type
    t.expect(r"Password \(hidden; it goes to the keyring, not the file\): ")
    t.answer(secret)


def test_guided_smtp_profile_is_tested_then_saved_with_its_secret_in_the_keyring(term_env):
    with smtp_server(security="starttls", cert=term_env["pki"].good) as server:
        t = start(term_env, "work")
        t.expect(r"New profile 'work'\. Enter takes the \[default\]")
        answer_smtp_server(t, server.port, bad_port=True)
        type_secret(t, PASSWORD)
        t.expect(rf"From address \(Enter: none\) \[{re.escape(USER)}\]: ")
        t.answer("")
        t.expect(r"Profile work will be saved as:")
        t.expect(r"\(password: to the keyring, not shown\)")
        t.expect(r"Test the connection now\? \[Y/n\]: ")
        t.answer("")
        t.expect(r"ok\s+auth\s")
        t.expect(r"The connection works\.")
        t.expect(r"Added profile 'work' \(default\)\.")
        t.expect(r"Try it: mailctl test send work --to ADDR")
        assert t.wait() == 0, t.text
    assert ("PLAIN", True) in server.handler.attempts_auth or ("LOGIN", True) in server.handler.attempts_auth
    data = saved(term_env["home"])
    assert data["default"] == "work"
    # what the flags would have written: no provider = custom, no security = starttls (the default)
    assert data["profiles"]["work"] == {"type": "smtp", "host": "127.0.0.1", "port": server.port, "auth": "password",
                                        "username": USER, "from_address": USER}
    assert read_entries(term_env["keyring"]) == {"mailctl/work/password": PASSWORD}
    toml_text = (term_env["home"] / "profiles.toml").read_text(encoding="utf-8")
    assert PASSWORD not in toml_text
    assert PASSWORD not in t.text  # neither echoed nor shown in the summary or the test report


def test_declining_to_save_after_a_failed_test_saves_nothing(term_env):
    handler = RecordingHandler(users={USER: "the-real-password"})
    with smtp_server(security="starttls", cert=term_env["pki"].good, handler=handler) as server:
        t = start(term_env, "work")
        answer_smtp_server(t, server.port)
        type_secret(t, PASSWORD)
        t.expect(r"From address .*: ")
        t.answer("ops@example.com")
        t.expect(r"Test the connection now\? \[Y/n\]: ")
        t.answer("y")
        t.expect(r"FAILED\s+auth")
        t.expect(r"Error: .*")
        t.expect(r"Save anyway\? \[y/N\]: ")
        t.answer("")
        t.expect(r"Not saved: nothing was saved\.")
        assert t.wait() == 77, t.text  # the test's own exit code: authentication failed
    assert ("PLAIN", False) in handler.attempts_auth or ("LOGIN", False) in handler.attempts_auth
    assert saved(term_env["home"]).get("profiles", {}) == {}
    assert read_entries(term_env["keyring"]) == {}
    assert PASSWORD not in t.text


def test_saving_anyway_after_a_failed_test_keeps_profile_and_secret(term_env):
    with smtp_server(security="starttls", cert=term_env["pki"].good, handler=RecordingHandler(users={})) as server:
        t = start(term_env, "work")
        answer_smtp_server(t, server.port)
        type_secret(t, PASSWORD)
        t.expect(r"From address .*: ")
        t.answer("")
        t.expect(r"Test the connection now\? \[Y/n\]: ")
        t.answer("")
        t.expect(r"Save anyway\? \[y/N\]: ")
        t.answer("y")
        t.expect(r"Added profile 'work'")
        assert t.wait() == 0, t.text
    assert saved(term_env["home"])["profiles"]["work"]["host"] == "127.0.0.1"
    assert read_entries(term_env["keyring"]) == {"mailctl/work/password": PASSWORD}


def test_oauth_preset_fills_the_server_asks_no_secret_and_names_auth_login(term_env):
    t = start(term_env, "m365")
    t.expect(r"Transport .*\[smtp\]: ")
    t.answer("")
    t.expect(r"Provider preset .*\[custom\]: ")
    t.answer("microsoft365")
    t.expect(r"Server host \[smtp\.office365\.com\]: ")
    t.answer("")
    t.expect(r"Security .*\[starttls\]: ")
    t.answer("")
    t.expect(r"Port \[587\]: ")
    t.answer("")
    t.expect(r"Authentication .*\[oauth\]: ")
    t.answer("")
    t.expect(r"tenant id \(GUID or domain\): ")
    t.answer("not a tenant!")
    t.expect(r"Error: tenant_id: expected a tenant GUID or domain")
    t.expect(r"tenant id \(GUID or domain\): ")
    t.answer("contoso.onmicrosoft.com")
    t.expect(r"Application \(client\) id: ")
    t.answer("11111111-2222-3333-4444-555555555555")
    t.expect(r"Login \(username\): ")
    t.answer("ops@contoso.com")
    t.expect(r"From address .*\[ops@contoso\.com\]: ")
    t.answer("")
    t.expect(r"Added profile 'm365'")
    t.expect(r"Next: sign in, which stores its tokens in the keyring: mailctl auth login m365")
    assert t.wait() == 0, t.text
    assert "Password" not in t.text and "Test the connection" not in t.text
    assert saved(term_env["home"])["profiles"]["m365"] == {
        "type": "smtp", "provider": "microsoft365", "auth": "oauth", "tenant_id": "contoso.onmicrosoft.com",
        "client_id": "11111111-2222-3333-4444-555555555555", "username": "ops@contoso.com", "from_address": "ops@contoso.com"}
    assert read_entries(term_env["keyring"]) == {}


def test_flags_given_with_guided_are_not_asked_again(term_env):
    t = start(term_env, "box", "--guided", "--type", "file", "--from-address", "me@example.com")
    t.expect(r"Maildir to deliver into \[.*\]: ")
    t.answer(str(term_env["home"] / "Mail"))
    t.expect(r"Test the connection now\? \[Y/n\]: ")
    t.answer("n")
    t.expect(r"Added profile 'box'")
    assert t.wait() == 0, t.text
    assert "Transport" not in t.text and "From address" not in t.text
    assert saved(term_env["home"])["profiles"]["box"] == {"type": "file", "maildir": str(term_env["home"] / "Mail"),
                                                          "from_address": "me@example.com"}


def test_no_secret_skips_the_password_and_the_test_and_names_where_to_store_it(term_env):
    t = start(term_env, "relay", "--no-secret")
    t.expect(r"Transport .*: ")
    t.answer("")
    t.expect(r"Provider preset .*: ")
    t.answer("custom")
    t.expect(r"Server host: ")
    t.answer("relay.example.com")
    t.expect(r"Security .*: ")
    t.answer("none")
    t.expect(r"Port \[25\]: ")  # the port of the security just chosen
    t.answer("")
    t.expect(r"Authentication .*\[password\]: ")
    t.answer("")
    t.expect(r"Send the login over this unencrypted connection\? \[y/N\]: ")
    t.answer("y")
    t.expect(r"Login \(username\): ")
    t.answer("relay-user")
    t.expect(r"From address \(Enter: none\): ")  # a login that is no address is no default
    t.answer("")
    t.expect(r"Added profile 'relay'")
    t.expect(r"Next: store its password: mailctl profile edit relay --password-stdin")
    assert t.wait() == 0, t.text
    assert "Password (hidden" not in t.text and "Test the connection" not in t.text
    # port 25 is what security = none gives anyway, so it is not written
    assert saved(term_env["home"])["profiles"]["relay"] == {
        "type": "smtp", "host": "relay.example.com", "security": "none", "auth": "password",
        "allow_insecure_auth": True, "username": "relay-user"}
    assert read_entries(term_env["keyring"]) == {}


@pytest.mark.parametrize(("keys", "code", "message"), [
    (b"\x03", 130, r"Interrupted: nothing was saved\."),
    (b"\x04", 2, r"Error: the input ended at 'Server host'; nothing was saved"),
])
def test_ctrl_c_and_end_of_input_stop_with_nothing_saved(term_env, keys, code, message):
    t = start(term_env, "work")
    t.expect(r"Transport .*: ")
    t.answer("smtp")
    t.expect(r"Provider preset .*: ")
    t.answer("")
    t.expect(r"Server host: ")
    # a person's Ctrl-C never lands in the microseconds between the prompt's write and
    # input()'s read(), where CPython can miss a signal (it then waits for a line)
    time.sleep(0.3)
    for attempt in range(5):  # on a loaded machine the race can still be hit: press again, as a person would
        t.key(keys)
        try:
            t.expect(message, timeout=3 if keys == b"\x03" and attempt < 4 else 30)
            break
        except AssertionError:
            if keys != b"\x03" or attempt == 4:
                raise
    assert t.wait() == code, t.text
    assert not (term_env["home"] / "profiles.toml").exists()
    assert "Traceback" not in t.text


def test_an_existing_name_is_refused_before_any_question(term_env):
    write_profiles(term_env["home"], {"work": {"host": "mail.example.com"}})
    t = start(term_env, "work")
    t.expect(r"Error: profile 'work' already exists")
    assert t.wait() == 65, t.text
    assert "Transport" not in t.text


# --- without a terminal: the flags, and hints that name them ----------------------------------
def test_without_a_terminal_the_missing_flag_is_named_not_profile_edit(cli, isolated_env):
    res = cli("profile", "add", "work")
    assert res.exit_code == 78
    assert "missing required field host" in res.stderr
    assert "--host" in res.stderr and "profile edit" not in res.stderr
    assert "on a terminal, `mailctl profile add work` asks for each field" in res.stderr
    assert not (isolated_env / "profiles.toml").exists()


def test_without_a_terminal_a_missing_field_comes_before_the_secret(cli, isolated_env):
    # a login implies a password, but the missing host is what to fix first
    res = cli("profile", "add", "work", "--username", USER)
    assert res.exit_code == 78
    assert "--host" in res.stderr and "password" not in res.stderr.lower()
    res = cli("profile", "add", "work", "--host", "mail.example.com", "--username", USER)
    assert res.exit_code == 2
    assert "--password-stdin" in res.stderr
    assert not (isolated_env / "profiles.toml").exists()


def test_flags_still_work_without_a_terminal(cli, isolated_env, memory_keyring):
    res = cli("profile", "add", "work", "--host", "mail.example.com", "--username", USER, "--password-stdin",
              input=PASSWORD + "\n")
    assert res.exit_code == 0, res.output
    assert memory_keyring.entries[("mailctl", "work/password")] == PASSWORD
    assert PASSWORD not in (isolated_env / "profiles.toml").read_text(encoding="utf-8")


def test_guided_without_a_terminal_is_a_one_line_usage_error(cli, isolated_env):
    res = cli("profile", "add", "work", "--guided")
    assert res.exit_code == 2
    assert res.stderr.startswith("Error: --guided asks questions and needs a terminal")
    assert "Traceback" not in res.output
    assert not (isolated_env / "profiles.toml").exists()
