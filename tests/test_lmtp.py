"""The LMTP transport (RFC 2033) against a real Dovecot LMTP server, over TCP and over a Unix
socket: LHLO, a reply per recipient after the data (Dovecot refuses an over-quota mailbox
there, with 552 5.2.2, while delivering to the others), and `send`, `queue flush`, `test
connect` and `test send` on an lmtp profile. A scripted raw server covers what Dovecot does
not do on demand: a connection lost between the recipients' replies.

Dovecot runs as a private instance (its own config, base_dir and Maildirs in a temporary
directory), started once for the module and stopped by PID; it needs root and the Debian
package dovecot-lmtpd (scripts/test installs it)."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import socket
import threading
from pathlib import Path

import pytest

from mailctl.errors import DeliveryError
from mailctl.profiles.model import ResolvedProfile
from mailctl.transports.lmtp import LmtpTransport

from integration.integration_services import (
    free_port,
    private_tempdir,
    spawn,
    start_watchdog,
    stop_pid,
    stop_watchdog,
    tail,
    wait_for_path,
)
from smtpserver import write_profiles

pytestmark = pytest.mark.integration

DOVECOT = "/usr/sbin/dovecot"
LMTP_BINARY = "/usr/lib/dovecot/lmtp"
DOMAIN = "lmtp.example"
BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"
FULL = f"full@{DOMAIN}"  # a mailbox over its quota: refused after the data, 552 5.2.2
NOBODY = f"nobody@{DOMAIN}"  # no such user: refused at RCPT TO, 550 5.1.1
SENDER = "app@example.com"

DOVECOT_LMTP_CONF = """\
# Private LMTP instance written by tests/test_lmtp.py
protocols = lmtp
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
instance_name = mailctl-lmtp-{port}
log_path = {root}/dovecot.log
ssl = no
first_valid_uid = 1
mail_privileged_group =
default_internal_user = dovecot
default_login_user = dovenull
mail_location = maildir:~/Maildir
mail_plugins = quota
plugin {{
  quota = maildir:User quota
}}
passdb {{
  driver = passwd-file
  args = {root}/users
}}
userdb {{
  driver = passwd-file
  args = {root}/users
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener {root}/lmtp.sock {{
    mode = 0666
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0600
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""


class DovecotLmtp:
    def __init__(self, root: Path, port: int):
        self.root, self.port, self.host = root, port, "127.0.0.1"
        self.socket_path = root / "lmtp.sock"

    def maildir(self, address: str) -> Path:
        return self.root / "home" / address / "Maildir"

    def delivered(self, address: str) -> list[bytes]:
        new = self.maildir(address) / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []

    def log(self) -> str:
        return tail(self.root / "dovecot.log", 60)


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "Dovecot's LMTP needs root (it writes the Maildirs as the mail user)"
    if not (os.path.exists(DOVECOT) and os.path.exists(LMTP_BINARY)):
        return "Debian package dovecot-lmtpd not installed (scripts/test installs it)"
    try:
        pwd.getpwnam("dovecot")
        pwd.getpwnam("dovenull")
    except KeyError:
        return "system users dovecot/dovenull missing: reinstall dovecot-core"
    return None


@pytest.fixture(scope="module")
def dovecot():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    root = private_tempdir("mailctl-lmtp-")
    uid, gid = pwd.getpwnam("dovecot").pw_uid, grp.getgrnam("dovecot").gr_gid
    home = root / "home"
    home.mkdir()
    os.chown(home, uid, gid)
    for sub in ("run", "state"):
        (root / sub).mkdir()
    users = [f"{BOB}:{{PLAIN}}x:{uid}:{gid}::{home}/{BOB}::",
             f"{CAROL}:{{PLAIN}}x:{uid}:{gid}::{home}/{CAROL}::",
             f"{FULL}:{{PLAIN}}x:{uid}:{gid}::{home}/{FULL}::userdb_quota_rule=*:storage=1B"]
    (root / "users").write_text("\n".join(users) + "\n")
    os.chmod(root / "users", 0o644)
    port = free_port()
    conf = root / "dovecot.conf"
    conf.write_text(DOVECOT_LMTP_CONF.format(root=root, port=port))
    proc = spawn([DOVECOT, "-F", "-c", str(conf)], stdin=open(os.devnull), stdout=open(root / "dovecot.out", "wb"),
                 stderr=open(root / "dovecot.out", "ab"))
    watchdog = start_watchdog([proc])
    try:
        try:
            wait_for_path(root / "lmtp.sock", 15, proc, "dovecot lmtp")
        except RuntimeError as exc:
            pytest.fail(f"{exc}\n{tail(root / 'dovecot.out')}\n{tail(root / 'dovecot.log')}")
        yield DovecotLmtp(root, port)
    finally:
        stop_watchdog(watchdog)
        stop_pid(proc)
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def lmtp_values(server: DovecotLmtp, *, unix: bool = False, **extra) -> dict:
    values = {"type": "lmtp", "from_address": SENDER, "timeout": 10}
    if unix:
        values["socket_path"] = str(server.socket_path)
    else:
        values.update(host=server.host, port=server.port)
    values.update(extra)
    return values


def transport(server: DovecotLmtp, **kw) -> LmtpTransport:
    return LmtpTransport(ResolvedProfile("store", lmtp_values(server, **kw), {}, ["store"]), None)


def raw_message(subject: str) -> bytes:
    return (f"From: {SENDER}\r\nTo: {BOB}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.com>\r\n\r\n"
            ".a line with a leading dot\r\nbody\r\n").encode()


# --- the transport ---------------------------------------------------------------------------
@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix-socket"])
def test_delivers_over_tcp_and_a_unix_socket(dovecot, unix):
    subject = f"lmtp-{'unix' if unix else 'tcp'}"
    with transport(dovecot, unix=unix) as t:
        result = t.send(raw_message(subject), SENDER, [BOB, CAROL])
    assert result.refused == {} and result.reply.startswith("250 2.0.0 <bob@")
    assert result.queue_id and result.queue_id in result.reply and "@" not in result.queue_id  # Dovecot's id, not the echo
    assert result.server == (f"unix:{dovecot.socket_path}" if unix else f"127.0.0.1:{dovecot.port}")
    for rcpt in (BOB, CAROL):
        got = [m for m in dovecot.delivered(rcpt) if f"Subject: {subject}".encode() in m]
        assert len(got) == 1 and b"\n.a line with a leading dot" in got[0]  # dot-stuffing undone by the server


@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix-socket"])
def test_a_refusal_after_the_data_is_per_recipient(dovecot, unix):
    """Dovecot accepts every RCPT, then refuses the over-quota mailbox after the data (552
    5.2.2): reported like a RCPT refusal, the others get the message."""
    subject = f"partial-{unix}"
    with transport(dovecot, unix=unix) as t:
        result = t.send(raw_message(subject), SENDER, [BOB, FULL, NOBODY])
        assert set(result.refused) == {FULL, NOBODY}
        assert result.refused[FULL].startswith("552 5.2.2") and result.refused[NOBODY].startswith("550 5.1.1")
        assert t.data_replies[BOB].startswith("250 ") and t.data_replies[FULL].startswith("552 ")
        # the session stays usable after a mixed DATA reply
        t.send(raw_message(subject + "-again"), SENDER, [BOB])
    assert any(f"Subject: {subject}".encode() in m for m in dovecot.delivered(BOB))
    assert any(f"Subject: {subject}-again".encode() in m for m in dovecot.delivered(BOB))
    assert not any(f"Subject: {subject}".encode() in m for m in dovecot.delivered(FULL))


def test_every_recipient_refused_after_the_data_is_a_delivery_error(dovecot):
    with transport(dovecot) as t:
        with pytest.raises(DeliveryError) as err:
            t.send(raw_message("all-refused"), SENDER, [FULL, NOBODY])
    e = err.value
    assert e.stage == "data" and e.code == 552 and e.permanent is True
    assert set(e.refused) == {FULL, NOBODY} and "Quota" in e.refused[FULL]


def test_without_pipelining_the_same_replies(dovecot, monkeypatch):
    """One command at a time (the path of a server without PIPELINING)."""
    with transport(dovecot) as t:
        t.session.esmtp_features.pop("pipelining", None)
        result = t.send(raw_message("no-pipelining"), SENDER, [BOB, FULL])
    assert list(result.refused) == [FULL] and result.refused[FULL].startswith("552 5.2.2")
    assert any(b"Subject: no-pipelining" in m for m in dovecot.delivered(BOB))


# --- the command line -----------------------------------------------------------------------
def test_mailctl_send_and_queue_flush_over_lmtp(cli, isolated_env, dovecot):
    write_profiles(isolated_env, {"store": lmtp_values(dovecot, unix=True)})
    r = cli("send", "--to", BOB, "--to", FULL, "--subject", "cli-send", "--body", "hello", "--json")
    data = json.loads(r.stdout)
    assert data["outcome"] == "sent", r.output
    assert list(data["failed_recipients"]) == [FULL] and "5.2.2" in data["failed_recipients"][FULL]
    assert any(b"Subject: cli-send" in m for m in dovecot.delivered(BOB))

    r = cli("send", "--queue", "--to", CAROL, "--subject", "cli-queued", "--body", "later")
    assert r.exit_code == 0, r.output
    r = cli("queue", "flush")
    assert r.exit_code == 0, r.output
    assert any(b"Subject: cli-queued" in m for m in dovecot.delivered(CAROL))


def test_test_connect_says_lhlo(cli, isolated_env, dovecot):
    write_profiles(isolated_env, {"store": lmtp_values(dovecot)})
    r = cli("test", "connect", "--transcript", "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == 0, r.output
    assert [s["stage"] for s in data["stages"] if s["status"] == "ok"] == ["resolve", "connect", "banner", "ehlo", "quit"]
    lines = [row["line"] for row in data["transcript"]]
    assert any(line.upper().startswith("LHLO ") for line in lines) and not any(line.upper().startswith("EHLO") for line in lines)
    assert data["capabilities"]["pipelining"] is True and data["settings"]["protocol"] == "lmtp"


def test_test_send_over_a_unix_socket_shows_each_recipients_reply(cli, isolated_env, dovecot):
    write_profiles(isolated_env, {"store": lmtp_values(dovecot, unix=True)})
    r = cli("test", "send", "--to", BOB, "--to", FULL, "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == 1, r.output  # a partial refusal is a problem found
    assert data["target"] == f"unix:{dovecot.socket_path}"
    stage = next(s for s in data["stages"] if s["stage"] == "data")
    assert stage["data"]["recipients"][BOB].startswith("250 ") and stage["data"]["recipients"][FULL].startswith("552 ")
    assert list(data["result"]["refused"]) == [FULL]
    assert data["result"]["queue_id"] and "@" not in data["result"]["queue_id"]


def test_missing_socket_is_unavailable(cli, isolated_env, tmp_path):
    write_profiles(isolated_env, {"store": {"type": "lmtp", "socket_path": str(tmp_path / "nothing.sock"), "from_address": SENDER}})
    r = cli("test", "connect", "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == 69 and data["failed_stage"] == "connect" and "nothing.sock" in data["error"]


def test_an_lmtp_profile_needs_a_host_or_a_socket(cli, isolated_env):
    write_profiles(isolated_env, {"store": {"type": "lmtp", "from_address": SENDER}})
    r = cli("send", "--to", BOB, "--subject", "s", "--body", "b")
    assert r.exit_code == 78 and "socket_path" in r.stderr and "Traceback" not in r.output


# --- a connection lost between the recipients' replies ----------------------------------------
@contextlib.contextmanager
def lmtp_that_hangs_up_after_the_first_reply():
    """A scripted LMTP server: accepts everything, answers the data for the first recipient
    only, then closes the connection."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            f = conn.makefile("rb")
            conn.sendall(b"220 scripted LMTP\r\n")
            while True:
                line = f.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb == b"LHLO":
                    conn.sendall(b"250-scripted\r\n250 8BITMIME\r\n")
                elif verb in (b"MAIL", b"RCPT"):
                    conn.sendall(b"250 2.1.0 OK\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go\r\n")
                    while f.readline() not in (b".\r\n", b""):
                        pass
                    conn.sendall(b"250 2.0.0 <first> Saved\r\n")
                    return  # and hang up before the second recipient's reply
                else:
                    conn.sendall(b"250 OK\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        srv.close()
        thread.join(5)


def test_a_connection_lost_between_replies_keeps_the_delivered_recipients():
    with lmtp_that_hangs_up_after_the_first_reply() as port:
        t = LmtpTransport(ResolvedProfile("s", {"type": "lmtp", "host": "127.0.0.1", "port": port, "timeout": 5}, {}, ["s"]), None)
        result = t.send(raw_message("lost"), SENDER, ["first@example.net", "second@example.net"])
        t.close()
    assert result.reply.startswith("250 2.0.0 <first>")
    assert list(result.refused) == ["second@example.net"] and result.refused["second@example.net"].startswith("421 4.4.2")


def test_an_lmtp_profile_resolves_to_port_24_without_encryption(cli, isolated_env):
    write_profiles(isolated_env, {"store": {"type": "lmtp", "host": "127.0.0.1", "from_address": SENDER}})
    r = cli("profile", "show", "store", "--json")
    assert r.exit_code == 0, r.output
    values = json.loads(r.stdout)["values"]
    assert (values["port"], values["security"], values["auth"]) == (24, "none", "none")


def test_a_recipient_given_twice_keeps_the_replies_in_step(dovecot):
    """One reply per accepted RCPT TO, a repeated one included: none is left unread for the
    next message (which would take it for its own)."""
    with transport(dovecot) as t:
        first = t.send(raw_message("twice"), SENDER, [BOB, BOB, FULL])
        second = t.send(raw_message("twice-next"), SENDER, [CAROL])
    assert list(first.refused) == [FULL] and second.refused == {} and "<carol@" in second.reply
    assert any(b"Subject: twice-next" in m for m in dovecot.delivered(CAROL))
