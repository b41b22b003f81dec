"""Issue #17: the profile chosen by the sender, as msmtp chooses an account by `from`. Without
-p, `sendmail` and `send` take the profile whose from_address is the envelope sender (-f) or the
From address, else one whose from_match glob matches it, else the default. Three real aiosmtpd
servers on 127.0.0.1: the test sees which server got the mail."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mailctl.outbox import Outbox

sys.path.insert(0, str(Path(__file__).parent))
from outbox_smtp import RecordingHandler, SmtpServer  # noqa: E402


@pytest.fixture
def servers(isolated_env):
    """work (from_address work@corp.example), home (from_match *@home.example, *@family.example),
    corpwide (from_match *@corp.example, listed first), fallback (the default)."""
    srvs = {name: SmtpServer(RecordingHandler()) for name in ("corpwide", "work", "home", "fallback")}
    for s in srvs.values():
        s.__enter__()
    def table(name: str, sender: str, extra: str = "") -> str:
        return srvs[name].profile_toml(name).replace("app@example.com", sender) + extra + "\n"

    text = 'schema_version = 1\ndefault = "fallback"\n\n'
    text += table("corpwide", "relay@corp.example", 'from_match = ["*@corp.example"]\n')
    text += table("work", "work@corp.example")
    text += table("home", "me@home.example", 'from_match = ["*@home.example", "*@FAMILY.example"]\n')
    text += table("fallback", "app@example.com")
    (isolated_env / "profiles.toml").write_text(text)
    yield srvs
    for s in srvs.values():
        s.__exit__(None, None, None)


def got(servers) -> dict[str, int]:
    return {name: len(s.handler.messages) for name, s in servers.items() if s.handler.messages}


def queued_profiles(home) -> list:
    with Outbox(home / "data" / "outbox.sqlite3") as box:
        return [m.profile for m in box.list()]


def test_sendmail_from_header_matching_a_glob_picks_that_profile(cli, servers, isolated_env):
    r = cli("sendmail", "-t", input="From: Kid <kid@family.example>\nTo: ops@example.org\nSubject: s\n\nx\n")
    assert r.exit_code == 0, r.output
    assert got(servers) == {"home": 1}  # the pattern is matched without regard to case
    assert queued_profiles(isolated_env) == ["home"]  # pinned: a later flush uses the same profile


def test_exact_from_address_beats_an_earlier_glob(cli, servers):
    r = cli("sendmail", "-t", input="From: work@corp.example\nTo: ops@example.org\n\nx\n")
    assert r.exit_code == 0, r.output
    assert got(servers) == {"work": 1}
    r = cli("sendmail", "-t", input="From: someone@corp.example\nTo: ops@example.org\n\nx\n")
    assert got(servers) == {"work": 1, "corpwide": 1}


def test_envelope_sender_comes_before_the_from_header(cli, servers):
    r = cli("sendmail", "-f", "WORK@corp.example", "-t", input="From: me@home.example\nTo: ops@example.org\n\nx\n")
    assert r.exit_code == 0, r.output
    assert got(servers) == {"work": 1}
    assert servers["work"].handler.messages[0]["from"] == "WORK@corp.example"


def test_no_match_uses_the_default_and_leaves_the_row_unpinned(cli, servers, isolated_env):
    r = cli("sendmail", "-i", "ops@example.org", input="From: stranger@else.example\nSubject: s\n\nx\n")
    assert r.exit_code == 0, r.output
    assert got(servers) == {"fallback": 1}
    assert queued_profiles(isolated_env) == [None]


def test_a_named_profile_wins_over_the_sender(cli, servers):
    r = cli("-p", "fallback", "sendmail", "-t", input="From: me@home.example\nTo: ops@example.org\n\nx\n")
    assert r.exit_code == 0, r.output
    assert got(servers) == {"fallback": 1}


def test_send_from_picks_the_profile(cli, servers):
    r = cli("send", "--from", "Me <me@home.example>", "--to", "ops@example.org", "--subject", "s", "--body", "b", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["profile"] == "home"
    assert got(servers) == {"home": 1}
    r = cli("send", "--to", "ops@example.org", "--subject", "s", "--body", "b")
    assert r.exit_code == 0, r.output
    assert got(servers) == {"home": 1, "fallback": 1}  # no --from: the default, never a guess


def test_a_broken_profile_is_skipped_when_choosing(cli, servers, isolated_env):
    path = isolated_env / "profiles.toml"
    path.write_text(path.read_text() + '\n[profiles.orphan]\ninherits = "nowhere"\nfrom_match = ["*@family.example"]\n')
    r = cli("sendmail", "-t", input="From: kid@family.example\nTo: ops@example.org\n\nx\n")
    assert r.exit_code == 0, r.output
    assert got(servers) == {"home": 1}


def test_from_match_from_the_command_line_and_its_validation(cli, isolated_env):
    (isolated_env / "profiles.toml").write_text('schema_version = 1\n[profiles.a]\nhost = "mail.example.com"\nauth = "none"\n')
    r = cli("profile", "edit", "a", "--from-match", "*@a.example, ops-*@b.example")
    assert r.exit_code == 0, r.output
    data = json.loads(cli("profile", "show", "a", "--json").stdout)
    assert data["values"]["from_match"] == ["*@a.example", "ops-*@b.example"]
    (isolated_env / "profiles.toml").write_text('schema_version = 1\n[profiles.a]\nhost = "m.example"\nfrom_match = ["a b@x"]\n')
    r = cli("profile", "show", "a")
    assert r.exit_code in (65, 78) and "from_match" in r.stderr
