"""The probe is a timed runner over a transport's own stages (transports.base: Stage, drive).

A transport registered from outside gets `mailctl test` for free; the SMTP transport's plan
holds failover once, used untimed by open() and timed by the probe."""

from __future__ import annotations

import sys
import types

import pytest

from mailctl.diagnostics.probe import ProbeMessage, probe
from mailctl.errors import ExitCode, ProtocolError, UnavailableError
from mailctl.profiles.model import ResolvedProfile
from mailctl.secrets import default_resolver
from mailctl.transports import base
from mailctl.transports.base import Failover, Reached, Stage, StageInfo, drive, register_transport, run_untimed
from mailctl.transports.smtp import SmtpTransport

from smtpserver import USER, closed_port, smtp_server


class EchoTransport:
    """A transport that is not mailctl's: three stages, the middle one can be made to fail
    on the primary 'server' so that the plan fails over to the second."""

    name = "echo"

    def __init__(self, profile, secrets, **options):
        self.profile = profile
        self.fail_on = set(profile.values.get("fail_on", []))
        self.closed = []

    target = "echo://primary"

    def probe_settings(self):
        return {"mode": "echo"}

    def stages(self, message=None):
        for index, server in enumerate(("primary", "backup")):
            try:
                yield Stage("hello", lambda: f"hello {server}", lambda v: StageInfo(v, {"said": v}), server,
                            alternate=index > 0)
                yield Stage("check", lambda s=server: self._check(s), None, server, alternate=index > 0)
                break
            except UnavailableError:
                if index == 1:
                    raise
                yield Failover("trying the backup")
        yield Reached(server, index > 0)
        if message is not None:
            yield Stage("deliver", lambda: len(message.raw),
                        lambda n: StageInfo(f"{n} bytes", facts={"result": {"refused": {}, "size": n}}), server)

    def _check(self, server):
        if server in self.fail_on:
            raise UnavailableError(f"{server} is down")
        if "protocol" in self.fail_on:
            raise ProtocolError("bad reply")
        return server

    def closing_stage(self):
        return Stage("bye", lambda: None, lambda _v: StageInfo("closed"), "echo")


@pytest.fixture
def echo_registered(monkeypatch):
    module = types.ModuleType("mailctl_test_echo")
    module.EchoTransport = EchoTransport
    monkeypatch.setitem(sys.modules, "mailctl_test_echo", module)
    monkeypatch.setitem(base._REGISTRY, "echo", "mailctl_test_echo:EchoTransport")
    yield


def echo_profile(**values):
    return ResolvedProfile("e", {"type": "echo", **values}, {}, ["e"])


def test_a_registered_transport_gets_test_connect_for_free(echo_registered):
    report = probe(echo_profile(), None)
    assert report.ok and report.exit_code == 0
    assert [(s.name, s.status) for s in report.stages] == [("hello", "ok"), ("check", "ok"), ("bye", "ok")]
    assert report.stages[0].detail == "hello primary" and report.stages[0].data == {"said": "hello primary"}
    assert report.settings == {"mode": "echo"} and report.target == "echo://primary"
    assert report.server == "primary" and not report.used_alternate


def test_runner_records_failover_and_the_alternate(echo_registered):
    report = probe(echo_profile(fail_on=["primary"]), None)
    assert report.ok
    names = [(s.name, s.status, s.server) for s in report.stages]
    assert names == [("hello", "ok", "primary"), ("check", "failed", "primary"), ("hello", "ok", "backup"),
                     ("check", "ok", "backup"), ("bye", "ok", "echo")]
    assert report.stages[1].detail == "trying the backup"
    assert report.server == "backup" and report.used_alternate


def test_runner_stops_at_quit_after_and_reports_a_failure(echo_registered):
    report = probe(echo_profile(), None, quit_after="hello")
    assert [s.name for s in report.stages] == ["hello", "bye"]
    failed = probe(echo_profile(fail_on=["protocol"]), None)
    assert failed.exit_code == int(ExitCode.PROTOCOL) and failed.error == "bad reply"
    assert failed.failed_stage.name == "check"
    both_down = probe(echo_profile(fail_on=["primary", "backup"]), None)
    assert both_down.exit_code == int(ExitCode.UNAVAILABLE) and both_down.error == "backup is down"


def test_runner_takes_the_result_from_the_stage_facts(echo_registered):
    report = probe(echo_profile(), None, message=ProbeMessage(b"12345", "a@example.com", ["b@example.com"]))
    assert report.result == {"refused": {}, "size": 5}
    assert report.stages[-2].detail == "5 bytes"


def test_a_transport_without_stages_gets_a_clear_report(monkeypatch):
    class Plain:
        name = "plain"

    module = types.ModuleType("mailctl_test_plain")
    module.Plain = Plain
    monkeypatch.setitem(sys.modules, "mailctl_test_plain", module)
    register_transport("plain", "mailctl_test_plain:Plain")
    try:
        report = probe(ResolvedProfile("p", {"type": "plain"}, {}, ["p"]), None)
    finally:
        base._REGISTRY.pop("plain", None)
    assert report.exit_code == int(ExitCode.CONFIG) and "profile 'p' is plain" in report.error


def test_drive_throws_failures_back_into_the_plan():
    seen = []

    def boom():
        raise UnavailableError("x")

    def plan():
        try:
            yield Stage("a", boom)
        except UnavailableError as err:
            seen.append(err.message)
        value = yield Stage("b", lambda: 42)
        seen.append(value)

    assert drive(plan(), run_untimed) is None
    assert seen == ["x", 42]


def smtp_profile(**values):
    base_values = {"type": "smtp", "host": "127.0.0.1", "security": "none", "auth": "none", "timeout": 5, "from_address": USER}
    base_values.update(values)
    return ResolvedProfile("s", base_values, {}, ["s"])


def test_smtp_failover_once_in_the_transport_for_send_and_for_test():
    with smtp_server(security="none", auth=False) as srv:
        p = smtp_profile(port=closed_port(), alternate_host="127.0.0.1", alternate_port=srv.port)
        # untimed: open() fails over and remembers the failed primary
        t = SmtpTransport(p, default_resolver())
        with t:
            assert t.server.alternate and t.attempts[0]["stage"] == "connect"
        # timed: the probe shows the failed connect, the note, and the alternate's stages
        report = probe(p, default_resolver())
    assert report.ok and report.used_alternate and report.server == f"127.0.0.1:{srv.port}"
    connects = [s for s in report.stages if s.name == "connect"]
    assert [s.status for s in connects] == ["failed", "ok"]
    assert connects[0].detail == f"failing over to the alternate server 127.0.0.1:{srv.port}"


def test_smtp_open_combines_every_failure_but_test_shows_the_last():
    p = smtp_profile(port=closed_port(), alternate_host="127.0.0.1", alternate_port=closed_port())
    t = SmtpTransport(p, default_resolver())
    with pytest.raises(UnavailableError) as info:
        t.open()
    assert info.value.message.count("cannot connect") == 2
    report = probe(p, default_resolver())
    assert report.exit_code == int(ExitCode.UNAVAILABLE) and report.error.count("cannot connect") == 1
