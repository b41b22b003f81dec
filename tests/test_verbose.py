"""`mailctl -v` / `-vv` (issue #18): -v says on stderr which files are used, which profile and
why, which secret store answered, the outbox and the timings; -vv adds the redacted SMTP
transcript. Against a real aiosmtpd server with STARTTLS and AUTH; the password never shows,
--json's stdout is unchanged, --quiet wins."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from smtpserver import PASSWORD, USER, assert_no_secret, make_pki, smtp_server, store_secret, write_profiles  # noqa: E402

from idp import USER as IDP_USER, ca_pem, idp, ms_profile, trust_ca  # noqa: E402,F401  (fixtures)

TIMING = re.compile(r"^mailctl: connected to 127\.0\.0\.1:\d+ in \d+ ms$", re.M)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def server(pki):
    with smtp_server(cert=pki.good) as srv:
        yield srv


def smtp(srv, pki, **extra) -> dict:
    """A STARTTLS profile with password AUTH for the test server (127.0.0.1, verified by the test CA)."""
    values = {"type": "smtp", "host": "127.0.0.1", "port": srv.port, "security": "starttls", "auth": "password",
              "username": USER, "ca_file": str(pki.ca_file), "from_address": USER, "timeout": 10}
    values.update(extra)
    return values


@pytest.fixture
def corp(isolated_env, server, pki):
    """Two profiles: `home` (the default) and `corp` (claims *@corp.example by from_match)."""
    write_profiles(isolated_env, {
        "home": smtp(server, pki),
        "corp": smtp(server, pki, from_address="it@corp.example", from_match=["*@corp.example"]),
    }, default="home")
    store_secret("home", "password", PASSWORD)
    store_secret("corp", "password", PASSWORD)
    return isolated_env


def send(cli, *pre: str, args: tuple[str, ...] = ()):
    return cli(*pre, "send", *args, "--to", "bob@example.org", "-s", "verbose", "-b", "hello")


def mailctl_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mailctl: ")]


def test_v_send_names_config_default_profile_secret_outbox_and_timings(cli, corp, server):
    res = send(cli, "-v")
    assert res.exit_code == 0, res.output
    err = res.stderr
    assert f"mailctl: config {corp / 'profiles.toml'} (the user file ($MAILCTL_HOME))" in err
    assert "mailctl: profile home (the default profile)" in err
    assert re.search(r"^mailctl: secret password for profile home from keyring \(.*MemoryKeyring\)$", err, re.M), err
    assert f"mailctl: outbox {corp / 'data' / 'outbox.sqlite3'} (in the data dir)" in err
    assert TIMING.search(err), err
    assert re.search(r"^mailctl: sent in \d+ ms$", err, re.M), err
    assert re.search(r"^mailctl: closed 127\.0\.0\.1:\d+: 1 message, total \d+ ms$", err, re.M), err
    assert not any(line.startswith(("mailctl: C:", "mailctl: S:")) for line in err.splitlines())  # that is -vv
    assert "Sent via" in err and len(server.messages) == 1
    assert_no_secret(res.stdout, err)


def test_without_v_nothing_is_added(cli, corp, server):
    res = send(cli)
    assert res.exit_code == 0, res.output
    assert mailctl_lines(res.stderr) == [] and "Sent via" in res.stderr


def test_profile_named_by_p_env_and_the_argument(cli, corp, server):
    by_flag = send(cli, "-v", "-p", "corp")
    assert by_flag.exit_code == 0, by_flag.output
    assert "mailctl: profile corp (-p)" in by_flag.stderr
    by_env = cli("-v", "send", "--to", "bob@example.org", "-b", "x", env={"MAILCTL_PROFILE": "corp"})
    assert by_env.exit_code == 0, by_env.output
    assert "mailctl: profile corp ($MAILCTL_PROFILE)" in by_env.stderr
    by_arg = send(cli, "-v", args=("corp",))
    assert by_arg.exit_code == 0, by_arg.output
    assert "mailctl: profile corp (the PROFILE argument)" in by_arg.stderr
    assert "mailctl: secret password for profile corp from keyring" in by_arg.stderr


def test_profile_chosen_by_sender(cli, corp, server):
    res = send(cli, "-v", args=("--from", "ops@corp.example"))
    assert res.exit_code == 0, res.output
    assert "mailctl: profile corp (chosen by sender ops@corp.example matching from_match *@corp.example)" in res.stderr
    own = send(cli, "-v", args=("--from", "IT@corp.example"))
    assert "mailctl: profile corp (chosen by sender it@corp.example, its from_address)" in own.stderr
    assert [m["from"] for m in server.messages][-2:] == ["ops@corp.example", "IT@corp.example"]


def test_vv_adds_the_redacted_transcript(cli, corp, server):
    res = send(cli, "-vv")
    assert res.exit_code == 0, res.output
    lines = mailctl_lines(res.stderr)
    talk = [line[len("mailctl: "):] for line in lines if line.startswith(("mailctl: C:", "mailctl: S:"))]
    assert any(re.fullmatch(r"C: ehlo \S+", t, re.I) for t in talk), talk
    assert "C: STARTTLS" in [t.upper() for t in talk]
    assert "C: AUTH PLAIN [redacted]" in talk
    data = next(i for i, t in enumerate(talk) if t.upper() == "C: DATA")
    after = talk[data + 1:]
    end = after.index("C: .")
    assert after[end + 1].startswith("S: 250 "), after  # the server's 250 for DATA
    assert "C: Subject: verbose" in after
    # the -v lines are there too, and the transcript comes as it happens: before "sent in"
    assert "mailctl: profile home (the default profile)" in lines
    sent = next(i for i, line in enumerate(lines) if line.startswith("mailctl: sent in"))
    assert lines.index("mailctl: " + after[end + 1]) < sent
    assert_no_secret(res.stdout, res.stderr)


def test_json_stdout_is_unchanged_and_quiet_wins(cli, corp, server):
    plain = send(cli, "--json")
    loud = send(cli, "-vv", "--json")
    assert plain.exit_code == loud.exit_code == 0, loud.output
    a, b = json.loads(plain.stdout), json.loads(loud.stdout)  # one object each: nothing else on stdout
    assert a.keys() == b.keys() and a["outcome"] == b["outcome"] == "sent" and a["profile"] == b["profile"]
    assert "mailctl:" not in loud.stdout and mailctl_lines(loud.stderr)
    quiet = send(cli, "-q", "-vv")
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr
    assert len(server.messages) == 3


def test_secret_from_the_environment_and_secret_command(cli, isolated_env, server, pki, memory_keyring):
    write_profiles(isolated_env, {"env": smtp(server, pki), "cmd": smtp(server, pki, secret_command=f"printf %s '{PASSWORD}'")},
                   default="env")
    res = cli("-v", "send", "--to", "bob@example.org", "-b", "x", env={"MAILCTL_SECRET_ENV_PASSWORD": PASSWORD})
    assert res.exit_code == 0, res.output
    assert "mailctl: secret password for profile env from environment ($MAILCTL_SECRET_ENV_PASSWORD)" in res.stderr
    res = send(cli, "-v", "-p", "cmd")
    assert res.exit_code == 0, res.output
    assert "mailctl: secret password for profile cmd from secret_command" in res.stderr
    assert_no_secret(res.stdout, res.stderr)


def test_inherited_secret_names_the_profile_it_is_stored_for(cli, isolated_env, server, pki):
    write_profiles(isolated_env, {"base": smtp(server, pki), "child": {"inherits": "base"}}, default="child")
    store_secret("base", "password", PASSWORD)
    res = send(cli, "-v")
    assert res.exit_code == 0, res.output
    assert "mailctl: profile child (the default profile)" in res.stderr
    assert "for profile child from keyring" in res.stderr and "stored for profile 'base' (inherited)" in res.stderr


def test_sendmail_global_v_before_the_subcommand(cli, corp, server):
    msg = "From: Ops <ops@corp.example>\nTo: bob@example.org\nSubject: cron\n\nbody\n"
    res = cli("-vv", "sendmail", "-t", input=msg)
    assert res.exit_code == 0, res.output
    assert "mailctl: profile corp (chosen by sender ops@corp.example matching from_match *@corp.example)" in res.stderr
    assert "mailctl: secret password for profile corp from keyring" in res.stderr
    assert TIMING.search(res.stderr) and "mailctl: C: AUTH PLAIN [redacted]" in res.stderr
    assert_no_secret(res.stdout, res.stderr)
    # sendmail's own -v (after the subcommand) is sendmail's, ignored by design
    own = cli("sendmail", "-v", "-t", input=msg)
    assert own.exit_code == 0 and mailctl_lines(own.stderr) == [], own.stderr
    assert len(server.messages) == 2


def test_queue_flush_v_says_each_profile_and_why(cli, corp, server):
    msg = f"From: {USER}\nTo: a@example.org\nSubject: queued\n\nbody\n"
    assert cli("queue", "add", input=msg).exit_code == 0
    assert cli("queue", "add", "corp", input=msg).exit_code == 0
    res = cli("-v", "queue", "flush")
    assert res.exit_code == 0, res.output
    err = res.stderr
    assert "mailctl: profile home (the default profile)" in err
    assert "mailctl: profile corp (named when the message was queued)" in err
    assert "mailctl: outbox " in err and "(in the data dir)" in err
    assert "secret password for profile home from keyring" in err and "secret password for profile corp from keyring" in err
    assert len(TIMING.findall(err)) == 2 and err.count("mailctl: sent in") == 2
    assert len(server.messages) == 2
    assert_no_secret(res.stdout, err)


def test_test_connect_v_adds_files_profile_and_secret_source(cli, corp, server):
    res = cli("-v", "test", "connect", "corp")
    assert res.exit_code == 0, res.output
    assert "mailctl: config " in res.stderr and "mailctl: profile corp (the PROFILE argument)" in res.stderr
    assert "mailctl: secret password for profile corp from keyring" in res.stderr
    plain = cli("test", "connect", "corp")
    assert "mailctl:" not in res.stdout and len(plain.stdout.splitlines()) == len(res.stdout.splitlines())
    assert mailctl_lines(plain.stderr) == []
    assert_no_secret(res.stdout, res.stderr)


def test_profile_list_and_show_name_the_file(cli, corp):
    listed = cli("-v", "profile", "list", "--json")
    assert listed.exit_code == 0
    assert mailctl_lines(listed.stderr) == [f"mailctl: config {corp / 'profiles.toml'} (the user file ($MAILCTL_HOME))"]
    assert listed.stdout == cli("profile", "list", "--json").stdout
    shown = cli("-v", "--config", str(corp / "profiles.toml"), "profile", "show", "corp")
    assert shown.exit_code == 0 and f"mailctl: config {corp / 'profiles.toml'} (named by --config)" in shown.stderr
    assert_no_secret(shown.stdout, shown.stderr)


def test_auth_token_v_names_the_token_store(cli, isolated_env, idp, ca_pem, memory_keyring):  # noqa: F811
    write_profiles(isolated_env, {"m": ms_profile(idp, ca_pem)}, default="m")
    idp.device_script = ["approve"]
    assert cli("auth", "login", "m").exit_code == 0
    res = cli("-v", "auth", "token", "m", "--no-check")
    assert res.exit_code == 0, res.output
    assert re.search(r"^mailctl: secret oauth_tokens for profile m from keyring \(.*MemoryKeyring\)$", res.stderr, re.M), res.stderr
    assert idp.check_access_token(res.stdout.strip(), IDP_USER)
    secrets = set(idp.access_tokens) | set(idp.refresh_tokens)
    assert secrets and not any(s in res.stderr for s in secrets)


def test_vv_graph_send_shows_its_http_steps_without_the_token(cli, isolated_env, trust_ca):  # noqa: F811
    import keyring

    from httpfakes import FakeHTTPS, graph_fake
    from idp import CLIENT_ID, TENANT

    token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.verbose-token-SECRET-42"
    with FakeHTTPS(trust_ca) as srv:
        graph_fake(srv)
        keyring.set_password("mailctl", "g/access_token", token)
        ca = isolated_env / "ca.pem"
        trust_ca.cert_pem.write_to_path(str(ca))
        write_profiles(isolated_env, {"g": {"type": "graph", "auth": "oauth", "username": "ops@example.com",
                                            "from_address": "ops@example.com", "tenant_id": TENANT, "client_id": CLIENT_ID,
                                            "graph_endpoint": srv.base_url, "ca_file": str(ca)}}, default="g")
        res = cli("-vv", "send", "--to", "bob@example.org", "-b", "hello", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["outcome"] == "sent"
    err = res.stderr
    assert "mailctl: profile g (the default profile)" in err
    assert "mailctl: secret access_token for profile g from keyring" in err
    assert re.search(r"^mailctl: sendMail: POST /v1\.0/me/sendMail -> 202 \(\d+ ms\)$", err, re.M), err
    assert re.search(r"^mailctl: sent in \d+ ms$", err, re.M), err
    assert token not in res.stdout + err


def test_v_says_how_long_a_failed_connection_took(cli, isolated_env, pki):
    from smtpserver import closed_port

    port = closed_port()
    write_profiles(isolated_env, {"down": {"type": "smtp", "host": "127.0.0.1", "port": port, "security": "starttls",
                                           "ca_file": str(pki.ca_file), "from_address": USER, "timeout": 5}},
                   default="down")
    res = send(cli, "-v")
    assert res.exit_code == 75, res.output  # deferred: stays queued
    assert re.search(rf"^mailctl: connecting to 127\.0\.0\.1:{port} failed after \d+ ms$", res.stderr, re.M), res.stderr
    assert "mailctl: sent in" not in res.stderr
