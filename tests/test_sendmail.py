"""`mailctl sendmail` / `mailctl-sendmail` as programs expect /usr/sbin/sendmail to behave
(issue #12 items 4, 6, 8 and 13): the envelope sender of -f, the null sender, -F and
sender_name, exit 0 once queued, force_postmaster, the installed entry point, addresses, NUL,
bare CR and LF, non-ASCII addresses. Real aiosmtpd servers on 127.0.0.1; `cli` runs the CLI
in-process, the entry point runs as its own process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keyring
import keyring.backends.fail
import pytest
from aiosmtpd.controller import Controller

from mailctl.outbox import Outbox

sys.path.insert(0, str(Path(__file__).parent))
from outbox_smtp import RecordingHandler, SmtpServer  # noqa: E402

CRON = "From: root (Cron Daemon)\nTo: ops@example.org\nSubject: Cron <root@host> backup\n\nbackup done\n"


class EnvelopeHandler(RecordingHandler):
    """Also keeps the MAIL FROM parameters (SMTPUTF8, BODY=8BITMIME)."""

    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        self.messages[-1]["mail_options"] = list(envelope.mail_options)
        return reply


def outbox(home) -> Outbox:
    return Outbox(home / "data" / "outbox.sqlite3")


def profiles(home, server: SmtpServer, settings: str = "", **extra) -> None:
    text = 'schema_version = 1\ndefault = "srv"\n'
    if settings:
        text += "\n[settings]\n" + settings + "\n"
    (home / "profiles.toml").write_text(text + "\n" + server.profile_toml("srv", **extra))


@pytest.fixture
def server(isolated_env):
    handler = EnvelopeHandler(perm_fail={"nobody@example.org"})
    with SmtpServer(handler) as srv:
        profiles(isolated_env, srv)
        yield srv


def smtputf8_server(offered: bool) -> SmtpServer:
    srv = SmtpServer(EnvelopeHandler())
    srv.controller = Controller(srv.handler, hostname="127.0.0.1", port=srv.port, data_size_limit=0,
                                ready_timeout=10, enable_SMTPUTF8=offered)
    return srv


# --- item 4: the envelope sender, -F, exit codes -----------------------------------------------
def test_cronie_invocation_sends_from_the_qualified_f_address(cli, server):
    # cronie: sendmail -FCronDaemon -i -odi -oem -oi -t -f root; -f root used to become MAIL FROM:<>
    r = cli("sendmail", "-FCronDaemon", "-i", "-odi", "-oem", "-oi", "-t", "-f", "root", input=CRON)
    assert r.exit_code == 0, r.output
    [got] = server.handler.messages
    assert got["from"] == "root@example.com"  # the From domain (the profile's: the header has none)
    assert got["to"] == ["ops@example.org"]


def test_f_bare_name_takes_the_domain_of_the_messages_from(cli, server):
    r = cli("sendmail", "-f", "bounce", "-i", "ops@example.org", input="From: Jobs <jobs@corp.example>\nSubject: s\n\nx\n")
    assert r.exit_code == 0, r.output
    assert server.handler.messages[0]["from"] == "bounce@corp.example"


@pytest.mark.parametrize("null", ["<>", ""])
def test_f_empty_or_angle_brackets_is_the_null_sender(cli, server, isolated_env, null):
    # -f '<>' used to become the profile's address
    r = cli("sendmail", "-f", null, "-i", "ops@example.org", input="Subject: bounce\n\nx\n")
    assert r.exit_code == 0, r.output
    [got] = server.handler.messages
    assert got["from"] in ("", "<>")
    with outbox(isolated_env) as box:
        assert [m.sender for m in box.list()] == [""]


def test_f_full_address_is_the_envelope_sender(cli, server):
    r = cli("sendmail", "-r", "<bounces@example.net>", "-t", input="From: app@example.com\nTo: ops@example.org\n\nx\n")
    assert r.exit_code == 0, r.output
    assert server.handler.messages[0]["from"] == "bounces@example.net"
    assert b"From: app@example.com" in server.handler.messages[0]["data"]  # the header stays


def test_F_and_sender_name_name_the_added_from(cli, isolated_env):
    with SmtpServer(EnvelopeHandler()) as srv:
        profiles(isolated_env, srv, sender_name="Ops Robot")
        assert cli("sendmail", "-F", "Backup Job", "-i", "ops@example.org", input="Subject: a\n\nx\n").exit_code == 0
        assert cli("sendmail", "-i", "ops@example.org", input="Subject: b\n\nx\n").exit_code == 0
        assert cli("sendmail", "-F", "Ignored", "-i", "ops@example.org", input="From: me@example.com\n\nx\n").exit_code == 0
        a, b, c = (m["data"] for m in srv.handler.messages)
    assert b"From: Backup Job <app@example.com>\r\n" in a
    assert b"From: Ops Robot <app@example.com>\r\n" in b
    assert b"From: me@example.com\r\n" in c and b"Ignored" not in c


def test_queued_but_not_deliverable_now_is_still_exit_0(cli, isolated_env):
    """No keyring (cron without D-Bus): the message is queued safely, so exit 0 and say why it
    did not go out (it used to exit 78, and callers that retry queued it twice)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from smtpserver import smtp_server

    with smtp_server(auth=True, auth_require_tls=False) as srv:
        (isolated_env / "profiles.toml").write_text(
            'schema_version = 1\ndefault = "srv"\n[profiles.srv]\ntype = "smtp"\nhost = "127.0.0.1"\n'
            f'port = {srv.port}\nsecurity = "none"\nauth = "password"\nusername = "alice@example.com"\n'
            'allow_insecure_auth = true\nfrom_address = "alice@example.com"\ntimeout = 10\n')
        keyring.set_keyring(keyring.backends.fail.Keyring())
        r = cli("sendmail", "-i", "ops@example.org", input="Subject: s\n\nx\n")
        assert r.exit_code == 0, r.output
        assert "queued as 1" in r.stderr and "keyring" in r.stderr and "Traceback" not in r.output
        assert srv.messages == []
    with outbox(isolated_env) as box:
        [info] = list(box.list())
    assert (info.state, info.attempts) == ("queued", 0)


def test_rejected_or_unqueueable_is_not_exit_0(cli, server):
    assert cli("sendmail", "-i", "nobody@example.org", input="Subject: s\n\nx\n").exit_code == 1
    assert cli("sendmail", "-i", "a@", input="Subject: s\n\nx\n").exit_code == 65


def test_force_postmaster_applies_to_sendmail_and_queue_add(cli, isolated_env):
    with SmtpServer(EnvelopeHandler()) as srv:
        profiles(isolated_env, srv, settings='force_postmaster = true\npostmaster = "postmaster@example.com"')
        r = cli("sendmail", "-i", "ops@example.org", input="From: App <app@example.com>\nSubject: s\n\nx\n")
        assert r.exit_code == 0, r.output
        r = cli("queue", "add", input="From: Job <job@example.com>\nTo: ops@example.org\nSubject: q\n\nx\n")
        assert r.exit_code == 0, r.output
        assert cli("queue", "flush").exit_code == 0
        r = cli("sendmail", "-f", "<>", "-i", "ops@example.org", input="From: App <app@example.com>\nSubject: n\n\nx\n")
        assert r.exit_code == 0, r.output
        a, q, n = srv.handler.messages
    assert a["from"] == q["from"] == "postmaster@example.com"
    assert b"From: App <postmaster@example.com>\r\n" in a["data"] and b"Reply-To: App <app@example.com>\r\n" in a["data"]
    assert b"From: Job <postmaster@example.com>\r\n" in q["data"] and b"Reply-To: Job <job@example.com>\r\n" in q["data"]
    assert b"app@example.com" not in a["data"].split(b"Reply-To")[0]
    assert n["from"] in ("", "<>")  # the null sender stays null


# --- the entry point -----------------------------------------------------------------------------
def _entry_point() -> list[str]:
    """The installed `mailctl-sendmail` program next to this interpreter (pip install -e .), or
    the function pyproject names for it."""
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'mailctl-sendmail = "mailctl.__main__:sendmail"' in text
    script = Path(sys.executable).with_name("mailctl-sendmail")
    if script.exists():
        return [str(script)]
    found = shutil.which("mailctl-sendmail")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from mailctl.__main__ import sendmail; sys.argv[0] = 'sendmail'; sendmail()"]


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCTL_")}
    env.update(MAILCTL_HOME=str(home), NO_COLOR="1", COLUMNS="100")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_mailctl_sendmail_program_delivers_like_sendmail(isolated_env, server, tmp_path):
    link = tmp_path / "sendmail"  # what an admin does: ln -s $(command -v mailctl-sendmail) /usr/sbin/sendmail
    cmd = _entry_point()
    if len(cmd) == 1:
        link.symlink_to(cmd[0])
        cmd = [str(link)]
    done = subprocess.run([*cmd, "-FCronDaemon", "-i", "-odi", "-oem", "-oi", "-t", "-f", "root"], input=CRON.encode(),
                          env=_env(isolated_env), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    [got] = server.handler.messages
    assert got["from"] == "root@example.com" and got["to"] == ["ops@example.org"]
    assert b"backup done" in got["data"]


def test_help_keeps_the_option_table(isolated_env):
    done = subprocess.run([*_entry_point(), "--help"], env=_env(isolated_env), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [line.strip() for line in done.stdout.splitlines()]
    # one aligned Options table with --help (mailctl.outbox.sendmail.HELP_OPTIONS)
    assert any(line.startswith("-t  ") and "Also take recipients from the To, Cc and Bcc headers" in line for line in lines)
    assert any(line.startswith("-i, -oi  ") and "A line with a single '.' does not end" in line for line in lines)
    assert any(line.startswith("-odq  ") and "Only queue; the next `mailctl queue flush` sends it" in line for line in lines)
    assert any(line.startswith("--help  ") for line in lines)


# --- item 6: addresses ---------------------------------------------------------------------------
@pytest.mark.parametrize("args, stdin, bad", [
    (["-i", "not an address"], "Subject: s\n\nx\n", "'not an address'"),
    (["-t"], "To: a@\nSubject: s\n\nx\n", "'a@'"),
    (["-t"], "To: ok@example.org, b@@example.org\n\nx\n", "'b@@example.org'"),
    (["-f", "x y@example.com", "-i", "ok@example.org"], "Subject: s\n\nx\n", "'x y@example.com'"),
])
def test_bad_addresses_exit_65_naming_them(cli, server, args, stdin, bad):
    r = cli("sendmail", *args, input=stdin)
    assert r.exit_code == 65, r.output
    assert bad in r.stderr and "Traceback" not in r.output and len(r.stderr.splitlines()) <= 2
    assert server.handler.messages == []


# --- item 8: non-ASCII addresses and header values -------------------------------------------------
def test_non_ascii_addresses_go_out_with_smtputf8_when_offered(cli, isolated_env):
    with smtputf8_server(True) as srv:
        profiles(isolated_env, srv)
        r = cli("sendmail", "-f", "ü@ë.test", "-i", "jörg@bücher.example", input="Subject: s\n\nx\n")
        assert r.exit_code == 0, r.output
        [got] = srv.handler.messages
    assert got["from"] == "ü@xn--cda.test" and got["to"] == ["jörg@xn--bcher-kva.example"]
    assert "SMTPUTF8" in got["mail_options"]


def test_non_ascii_address_to_a_server_without_smtputf8_is_a_clear_failure(cli, isolated_env):
    with smtputf8_server(False) as server:
        profiles(isolated_env, server)
        r = cli("sendmail", "-f", "ü@ë.test", "-i", "ops@example.org", input="Subject: s\n\nx\n")
        assert r.exit_code == 1, r.output
        assert "SMTPUTF8" in r.stderr and "UnicodeEncodeError" not in r.output and "Traceback" not in r.output
        r = cli("sendmail", "-i", "jörg@example.org", input="Subject: s\n\nx\n")
        assert r.exit_code == 1 and "SMTPUTF8" in r.stderr, r.output
        with outbox(isolated_env) as box:
            assert [m.state for m in box.list()] == ["failed", "failed"]  # not deferred until it expires
        # an IDNA domain alone needs nothing: it goes out in ASCII
        assert cli("sendmail", "-i", "ops@bücher.example", input="Subject: s\n\nx\n").exit_code == 0
        assert server.handler.messages[-1]["to"] == ["ops@xn--bcher-kva.example"]


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85"])
def test_unicode_line_separators_in_headers_are_the_injection_guards(cli, server, char):
    r = cli("sendmail", "-F", f"Job{char}Bcc: victim@example.org", "-i", "ops@example.org", input="Subject: s\n\nx\n")
    assert r.exit_code == 65 and "line breaks" in r.stderr, r.output
    r = cli("send", "--to", "ops@example.org", "--subject", f"hi{char}Bcc: victim@example.org", "--body", "x")
    assert r.exit_code == 65 and "subject" in r.stderr and "Traceback" not in r.output, r.output
    assert server.handler.messages == []


# --- item 13: line ends and NUL ------------------------------------------------------------------
BODIES = {"cr-dot-cr": b"a\r.\rb\r\n", "lf-dot-lf": b"a\n.\nb\n", "bare-cr": b"one\rtwo\r\n"}


def _clean(data: bytes) -> bool:
    """No bare CR and no bare LF anywhere."""
    return data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n")


@pytest.mark.parametrize("name", sorted(BODIES))
def test_queue_add_normalises_line_ends_before_data(cli, server, isolated_env, name):
    body = BODIES[name]
    raw = b"From: app@example.com\nTo: ops@example.org\nSubject: " + name.encode() + b"\n\n" + body
    r = cli("queue", "add", input=raw)
    assert r.exit_code == 0, r.output
    with outbox(isolated_env) as box:
        stored = box.get(int(r.stdout), with_raw=True).raw
    assert _clean(stored)  # already clean as stored
    assert cli("queue", "flush").exit_code == 0
    [got] = server.handler.messages
    assert _clean(got["data"]) and got["data"].endswith(b"\r\n")
    last = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")[-2]
    assert got["data"].rstrip(b"\r\n").endswith(last)  # the message did not end early


@pytest.mark.parametrize("name", sorted(BODIES))
def test_sendmail_i_normalises_line_ends_before_data(cli, server, name):
    body = BODIES[name]
    r = cli("sendmail", "-i", "ops@example.org", input=b"Subject: " + name.encode() + b"\n\n" + body)
    assert r.exit_code == 0, r.output
    [got] = server.handler.messages
    assert _clean(got["data"])
    assert got["data"].rstrip(b"\r\n").endswith(body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")[-2])


def test_without_i_a_bare_cr_ends_no_line(cli, server):
    # classic sendmail: a line '.' ends the input; 'a\r.\rb' has no such line (lines end at LF)
    r = cli("sendmail", "ops@example.org", input=b"Subject: s\n\na\r.\rb\n.\nnot sent\n")
    assert r.exit_code == 0, r.output
    [got] = server.handler.messages
    assert got["data"].endswith(b"a\r\n.\r\nb\r\n") and b"not sent" not in got["data"]


def test_nul_is_refused_naming_the_problem(cli, server, isolated_env, tmp_path):
    from mailctl.errors import ValidationError
    from mailctl.outbox import enqueue

    raw = b"From: app@example.com\nTo: ops@example.org\nSubject: s\n\nbin\x00ary\n"
    for r in (cli("queue", "add", input=raw), cli("sendmail", "-t", input=raw)):
        assert r.exit_code == 65 and "NUL" in r.stderr and "line 5" in r.stderr, r.output
    with pytest.raises(ValidationError, match="NUL"):
        enqueue(raw, "app@example.com", ["ops@example.org"], path=tmp_path / "api.sqlite3")
    assert server.handler.messages == []
    # `send` builds the message itself: a NUL in the body is carried as quoted-printable =00
    r = cli("send", "--to", "ops@example.org", "--subject", "s", "--json", input="bin\x00ary\n")
    assert r.exit_code == 0 and json.loads(r.stdout)["outcome"] == "sent", r.output
    [got] = server.handler.messages
    assert b"\x00" not in got["data"] and b"bin=00ary" in got["data"]
