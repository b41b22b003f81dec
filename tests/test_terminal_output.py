"""Data that reaches the operator's terminal (queued subjects, profile fields, DNS TXT data,
server replies) shows its control characters visibly; JSON stays exact."""

from __future__ import annotations

import io
import json

import pytest

from dnsserver import LocalDNS, txt
from mailctl.output import Output, visible, visible_cell

CONTROLS = ("\x1b", "\x07", "\x00", "\x9b", "\x08", "\r")
SUBJECT_WORD = "=?utf-8?q?hi=1B]0;pwned=07=1B[2J=00end?="
SUBJECT = "hi\x1b]0;pwned\x07\x1b[2J\x00end"
RAW = f"From: a@example.com\nTo: b@example.org\nSubject: {SUBJECT_WORD}\nX-Raw: a\x1b[31mred\x08\n\nbody\n"


def raw_controls(text: str) -> list[str]:
    return [c for c in CONTROLS if c in text]


def test_visible_escapes_c0_c1_and_del():
    assert visible("a\x1b]0;x\x07b") == "a\\x1b]0;x\\x07b"
    assert visible("tab\tand\nlines\r\nend\rx\x7f\x9b") == "tab\tand\nlines\nend\\rx\\x7f\\x9b"
    assert visible_cell("two\nlines\tand\x00") == "two\\nlines\\tand\\x00"
    assert visible("plain ünïcode ✓") == "plain ünïcode ✓"


def test_queue_list_and_show_render_a_hostile_subject_visibly(cli, isolated_env):
    assert cli("queue", "add", input=RAW).exit_code == 0
    r = cli("queue", "list")
    assert r.exit_code == 0
    assert not raw_controls(r.stdout), repr(r.stdout)
    assert "hi\\x1b]0;pwned\\x07\\x1b[2J\\x00end" in r.stdout
    r = cli("queue", "show", "1")
    assert not raw_controls(r.stdout), repr(r.stdout)
    assert "X-Raw: a\\x1b[31mred\\x08" in r.stdout
    # JSON stays exact
    [row] = [json.loads(line) for line in cli("queue", "list", "--json").stdout.splitlines()]
    assert row["subject"] == SUBJECT
    data = json.loads(cli("queue", "show", "1", "--json").stdout)
    assert ["X-Raw", "a\x1b[31mred\x08"] in data["headers"]


def test_profile_show_and_list_render_controls_visibly(cli, isolated_env, tmp_path):
    (isolated_env / "profiles.toml").write_text(
        'schema_version = 1\n[profiles.p]\ntype = "file"\nmaildir = "/tmp/m\\u001b[2J\\u0007"\n'
        'description = "ops\\u001b]0;owned\\u0007 relay\\u0000"\nsender_name = "Ops\\u009b31m"\n')
    r = cli("profile", "show", "p")
    assert r.exit_code == 0, r.output
    assert not raw_controls(r.stdout), repr(r.stdout)
    assert "ops\\x1b]0;owned\\x07 relay\\x00" in r.stdout and "Ops\\x9b31m" in r.stdout
    r = cli("profile", "list")
    assert r.exit_code == 0 and not raw_controls(r.stdout), repr(r.stdout)
    assert "/tmp/m\\x1b[2J\\x07" in r.stdout
    r = cli("profile", "show", "p", "--json")
    assert not raw_controls(r.stdout), repr(r.stdout)  # JSON escapes them (C1 too), exactly
    data = json.loads(r.stdout)
    assert data["values"]["description"] == "ops\x1b]0;owned\x07 relay\x00"
    assert data["values"]["sender_name"] == "Ops\x9b31m"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_rich_tables_on_a_terminal_escape_and_take_no_markup():
    out = FakeTerminal()
    Output(stdout=out).table(("a", "b"), [("x\x1b[2Jy", "[red]not red[/] [/]"), ("\x07", None)], title="t\x1b")
    text = out.getvalue()
    assert not raw_controls(text.replace("\x1b[", "")) and "\x1b[2J" not in text and "\x07" not in text
    assert "x\\x1b[2Jy" in text and "[red]not red[/] [/]" in text and "t\\x1b" in text


def test_messages_on_stderr_are_escaped(cli, isolated_env):
    err = io.StringIO()
    out = Output(stderr=err)
    out.info("a\x1b]0;t\x07")
    out.warn("b\x1b[2J")
    out.error("c\x00", hint="d\x9b")
    assert not raw_controls(err.getvalue())
    # the CLI boundary's Error:/Hint: lines too (a file's text inside an error message)
    (isolated_env / "profiles.toml").write_text('schema_version = 1\ndefault = "x\\u001b[2J"\n')
    r = cli("profile", "list")
    assert r.exit_code == 78 and not raw_controls(r.stderr) and "\\x1b[2J" in r.stderr, repr(r.stderr)


@pytest.fixture(scope="module")
def hostile_dns():
    server = LocalDNS([
        txt("ctl.test", "v=spf1 ip4:192.0.2.1 \x1b]0;pwned\x07 -all"),
        txt("_dmarc.ctl.test", "v=DMARC1; p=none; rua=mailto:x@ctl.test\x1b[2J\x00"),
    ]).start()
    yield server
    server.stop()


def test_dns_check_renders_txt_data_visibly(cli, hostile_dns):
    r = cli("dns", "check", "ctl.test", "--nameserver", hostile_dns.address, "--selector", "s1")
    assert r.exit_code in (0, 1), r.output
    assert not raw_controls(r.stdout + r.stderr), repr(r.stdout)
    assert "\\x1b]0;pwned\\x07" in r.stdout
    r = cli("dns", "check-spf", "ctl.test", "--nameserver", hostile_dns.address, "--json")
    assert "\x1b]0;pwned\x07" in json.loads(r.stdout)["checks"]["spf"]["record"]
