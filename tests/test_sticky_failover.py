"""Sticky failover (seed 002): `failover = "sticky"` keeps using the alternate server after a
failover until `mailctl profile failback NAME` (or a reconfigured profile); the default
per-connection mode tries the primary first every time. Real servers: aiosmtpd for the
alternate, a closed loopback port for the primary that is down."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest

from mailctl.profiles import failover


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MAILCTL_HOME", str(tmp_path))
    return tmp_path


# --- the remembered state ---------------------------------------------------------------------
def test_remember_then_forget(home):
    assert failover.active_server("p", "a:25", "b:25") is None
    first = failover.remember("p", "a:25", "b:25", "connection refused")
    again = failover.remember("p", "a:25", "b:25", "timed out")
    assert again.since == first.since and again.reason == "connection refused"  # the first failover counts
    active = failover.active_server("p", "a:25", "b:25")
    assert active is not None and active.server == "b:25" and active.primary == "a:25"
    assert oct(os.stat(failover.state_path()).st_mode & 0o777) == "0o600"
    dropped = failover.forget("p")
    assert dropped is not None and dropped.server == "b:25"
    assert failover.active_server("p", "a:25", "b:25") is None and failover.forget("p") is None


def test_a_reconfigured_profile_starts_on_its_primary(home):
    failover.remember("p", "a:25", "b:25")
    assert failover.active_server("p", "a:587", "b:25") is None  # port changed
    assert failover.active_server("p", "a:25", "c:25") is None  # another alternate
    assert failover.active_server("q", "a:25", "b:25") is None  # another profile


def test_a_damaged_state_file_means_the_primary(home):
    path = failover.state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    assert failover.active_server("p", "a:25", "b:25") is None
    failover.remember("p", "a:25", "b:25")  # and it is replaced by a good one
    assert json.loads(path.read_text())["p"]["server"] == "b:25"


def _remember_many(home: str, name: str) -> None:
    os.environ["MAILCTL_HOME"] = home
    for i in range(40):
        failover.remember(f"{name}{i}", "a:25", "b:25")


def test_concurrent_writers_lose_nothing(home):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_remember_many, args=(str(home), n)) for n in "xyz"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert len(failover.all_active()) == 120


# --- through the real transport: a primary that is down, then back ------------------------------
import contextlib  # noqa: E402

from smtpserver import RecordingHandler, ScriptedController, free_port, smtp_server, write_profiles  # noqa: E402


@contextlib.contextmanager
def plain_server_on(port: int):
    """An aiosmtpd on a chosen port (the primary coming back where it was)."""
    handler = RecordingHandler()
    controller = ScriptedController(handler, hostname="127.0.0.1", port=port, server_hostname="primary.test",
                                    ident="primary ESMTP")
    controller.start()
    try:
        yield handler
    finally:
        controller.stop()


def _profiles(home, primary_port: int, alternate_port: int, mode: str) -> None:
    write_profiles(home, {"relay": {"type": "smtp", "host": "127.0.0.1", "port": primary_port, "security": "none",
                                    "auth": "none", "from_address": "ops@example.com", "timeout": 5,
                                    "alternate_host": "localhost", "alternate_port": alternate_port,
                                    "failover": mode}})


def _send(cli, subject: str):
    res = cli("send", "--to", "bob@example.org", "--subject", subject, "--body", "x", "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_sticky_keeps_the_alternate_until_failback(cli, isolated_env):
    primary_port = free_port()  # nothing listens: the primary is down
    with smtp_server(auth=False) as alternate:
        _profiles(isolated_env, primary_port, alternate.port, "sticky")
        assert _send(cli, "one")["server"] == f"localhost:{alternate.port}"
        shown = cli("profile", "show", "relay")
        assert "active server" in shown.stdout and f"localhost:{alternate.port}" in shown.stdout, shown.output
        assert json.loads(cli("profile", "show", "relay", "--json").stdout)["active_server"]["server"] == f"localhost:{alternate.port}"
        stats = cli("queue", "stats")
        assert f"profile relay sends through the alternate localhost:{alternate.port}" in stats.stderr, stats.output
        [active] = json.loads(cli("queue", "stats", "--json").stdout)["failover"]
        assert active["profile"] == "relay" and active["primary"] == f"127.0.0.1:{primary_port}"
        assert active["since_at"].endswith("Z")
        with plain_server_on(primary_port) as primary:  # the primary is back: sticky stays on the alternate
            assert _send(cli, "two")["server"] == f"localhost:{alternate.port}"
            assert len(alternate.messages) == 2 and primary.messages == []
            probe = cli("test", "connect", "relay", "--json")
            assert "sticky: using the alternate" in json.loads(probe.stdout)["settings"]["failover"]
            back = cli("profile", "failback", "relay")
            assert back.exit_code == 0 and f"back on the primary 127.0.0.1:{primary_port}" in back.stderr
            assert _send(cli, "three")["server"] == f"127.0.0.1:{primary_port}"
            assert len(primary.messages) == 1
        again = cli("profile", "failback", "relay")
        assert again.exit_code == 0 and "already on the primary" in again.stderr


def test_per_connection_tries_the_primary_every_time(cli, isolated_env):
    primary_port = free_port()
    with smtp_server(auth=False) as alternate:
        _profiles(isolated_env, primary_port, alternate.port, "per-connection")
        assert _send(cli, "one")["server"] == f"localhost:{alternate.port}"
        assert not failover.state_path().exists()
        with plain_server_on(primary_port) as primary:
            assert _send(cli, "two")["server"] == f"127.0.0.1:{primary_port}"
            assert len(primary.messages) == 1
        assert "active server" not in cli("profile", "show", "relay").stdout
        assert json.loads(cli("queue", "stats", "--json").stdout)["failover"] == []


def test_sticky_goes_back_to_the_primary_when_the_alternate_fails(cli, isolated_env):
    primary_port, alternate_port = free_port(), free_port()
    _profiles(isolated_env, primary_port, alternate_port, "sticky")
    failover.remember("relay", f"127.0.0.1:{primary_port}", f"localhost:{alternate_port}", "earlier outage")
    with plain_server_on(primary_port) as primary:  # the alternate is down now, the primary up
        assert _send(cli, "one")["server"] == f"127.0.0.1:{primary_port}"
        assert len(primary.messages) == 1
    assert failover.all_active() == {}


def test_failback_without_an_alternate_says_so(cli, isolated_env):
    write_profiles(isolated_env, {"solo": {"type": "smtp", "host": "127.0.0.1", "port": 2525, "security": "none",
                                           "auth": "none", "from_address": "ops@example.com"}})
    res = cli("profile", "failback", "solo")
    assert res.exit_code == 78 and "alternate_host" in res.stderr


def test_failover_mode_is_validated(cli, isolated_env):
    _profiles(isolated_env, 2525, 2526, "always")
    res = cli("send", "--to", "bob@example.org", "--subject", "s", "--body", "x")
    assert res.exit_code in (65, 78) and "failover" in res.stderr
