"""Staged probes: `test connect` and `test send` as data.

probe(profile, secrets, message=None, quit_after=None) looks the profile's transport up in the
registry and drives its plan of named stages (transports.base: Stage, drive), timing each and
stopping after --quit-after. It returns a ProbeReport (diagnostics.report): every stage with its
result, the TLS session and the certificate, the server's capabilities, the redacted
transcript, the knowledge base's explanation of a failure, and the exit code (docs/smtp.md has
the table). It never raises for a failure of the server: the failure is part of the report.

The sequence of stages, failover to an alternate server and what each stage says belong to
the transport; a transport registered from outside that declares stages() (StagedTransport)
gets `mailctl test` for free."""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

from mailctl.diagnostics.report import ProbeMessage, ProbeReport, StageResult, reply_data
from mailctl.errors import ConfigError, ExitCode, MailctlError, UsageError
from mailctl.transports.base import Failover, Reached, Stage, StageInfo, TranscriptRecorder, drive, get_transport_class

__all__ = ["ProbeMessage", "ProbeReport", "StageResult", "probe", "QUIT_AFTER_CHOICES", "SMTP_STAGES", "HTTP_QUIT_AFTER"]

SMTP_STAGES = ("resolve", "connect", "tls", "banner", "ehlo", "starttls", "ehlo_tls", "secret", "auth", "mail", "rcpt", "data", "quit")
QUIT_AFTER_CHOICES = ("resolve", "connect", "tls", "banner", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "secret", "token")
# Graph/EWS stages one can stop after; the SMTP names stop an HTTP probe before its request.
HTTP_QUIT_AFTER = ("secret", "token", "connect", "tls")

# "run `mailctl test connect NAME --transcript`": advice to run a probe again, which should
# name the probe that is running (a test send is run again as a test send, with its --to)
_RERUN = re.compile(r"`mailctl test (connect|send) (\S+?)( --transcript)?`")


def for_this_probe(text: str | None, sending: bool) -> str | None:
    """`text` with its advice to re-run a probe naming this one: `test send` hints speak of
    test send, `test connect` hints of test connect."""
    if not text or "`mailctl test " not in text:
        return text
    want = "send" if sending else "connect"

    def rerun(m: re.Match[str]) -> str:
        if m.group(1) == want:
            return m.group(0)
        words = ["mailctl", "test", want, m.group(2)] + (["--to", "ADDR"] if sending else []) + (["--transcript"] if m.group(3) else [])
        return "`" + " ".join(words) + "`"  # (joined: not a command line of its own for test_hint_commands)

    return _RERUN.sub(rerun, text)


def probe(profile, secrets, *, message: ProbeMessage | None = None, quit_after: str | None = None, transcript: bool = True) -> ProbeReport:
    try:
        cls = get_transport_class(profile.type)
    except ConfigError:
        cls = None
    if not callable(getattr(cls, "stages", None)):
        report = ProbeReport(profile.name, profile.type, profile.server)
        report.exit_code = int(ExitCode.CONFIG)
        report.error = f"`test` supports smtp, file, graph and ews profiles; profile {profile.name!r} is {profile.type}"
        report.hint = "use `mailctl send` to try this transport"
        return report
    if quit_after == "token" and not getattr(cls, "has_token_stage", False):
        raise UsageError("--quit-after token: only graph and ews profiles have a token stage",
                         hint="for an SMTP profile stop after the login with --quit-after auth")
    if quit_after == "secret" and not getattr(cls, "has_secret_stage", False):  # would run on to the end
        raise UsageError("--quit-after secret: only graph and ews profiles stop after their secret stage",
                         hint="for an SMTP profile stop after the login with --quit-after auth")
    recorder = TranscriptRecorder() if getattr(cls, "records_transcript", False) else None
    report = _Runner(cls(profile, secrets, recorder=recorder), profile, message).run(quit_after)
    report.transcript = recorder.to_list() if transcript and recorder is not None else None
    return report


class _Runner:
    """Times a transport's stages into a ProbeReport."""

    def __init__(self, transport, profile, message: ProbeMessage | None) -> None:
        self.transport = transport
        self.profile = profile
        self.message = message
        self.report = ProbeReport(profile.name, profile.type, transport.target, settings=transport.probe_settings())
        self.failed: set[int] = set()  # ids of the errors a stage raised (and were recorded)

    def run(self, quit_after: str | None) -> ProbeReport:
        report, start = self.report, time.perf_counter()
        plan = self.transport.stages(self.message)
        try:
            stopped = drive(plan, self._stage, on_event=self._event, stop_after=quit_after)
            if stopped is not None and report.server is None:
                report.server, report.used_alternate = stopped.server, stopped.alternate
            self._judge_result()
        except MailctlError as err:
            if id(err) not in self.failed:  # raised before any stage: proxy URL, ca_file...
                from mailctl.knowledge.smtp import explain  # failures only: a probe that passes does not load it

                report.stages.append(StageResult("config", "failed", 0.0, report.target, error=err.message,
                                                 explanation=explain(err), exit_code=int(err.exit_code)))
            self._fail(err)
        finally:
            self._close()
        report.duration = time.perf_counter() - start
        return report

    def _stage(self, stage: Stage) -> Any:
        report = self.report
        if stage.run is None:
            report.stages.append(StageResult(stage.name, "skipped", 0.0, stage.server, stage.skipped))
            return None
        t0 = time.perf_counter()
        try:
            value = stage.run()
        except MailctlError as err:
            duration = time.perf_counter() - t0
            if stage.explain is not None:
                explanation = stage.explain(err)
            else:
                from mailctl.knowledge.smtp import explain  # failures only (see run())

                explanation = err.explanation or explain(err, context=self._context(stage))
            explanation = self._for_this_probe(explanation)
            report.stages.append(StageResult(stage.name, "failed", duration, stage.server, stage.detail, error=err.message,
                                             explanation=explanation, exit_code=int(err.exit_code), data=reply_data(err)))
            self.failed.add(id(err))
            if stage.on_failure is not None:
                self._apply(stage.on_failure(err))
            raise
        info = stage.describe(value) if stage.describe is not None else StageInfo()
        if stage.hidden:
            return value
        report.stages.append(StageResult(stage.name, info.status, time.perf_counter() - t0, stage.server, info.detail, info.data))
        self._apply(info.facts)
        return value

    def _context(self, stage: Stage) -> dict[str, Any]:
        host, _, port = stage.server.rpartition(":")
        return {"profile": self.profile.name, "host": host.strip("[]"), "port": int(port) if port.isdigit() else port}

    def _event(self, event) -> None:
        if isinstance(event, Failover) and self.report.stages:
            self.report.stages[-1].detail = event.detail
        elif isinstance(event, Reached):
            self.report.server, self.report.used_alternate = event.server, event.alternate

    def _apply(self, facts: dict[str, Any]) -> None:
        for key, value in facts.items():
            setattr(self.report, key, value)

    def _judge_result(self) -> None:
        """A message some recipients refused is a problem found (exit 1), as `send` says."""
        report = self.report
        refused = (report.result or {}).get("refused")
        if refused and self.message is not None:
            report.exit_code = int(ExitCode.PROBLEMS)
            report.error = f"{len(refused)} of {len(self.message.recipients)} recipients refused"

    def _for_this_probe(self, explanation):
        sending = self.message is not None
        if explanation is None or not hasattr(explanation, "fix"):
            return explanation
        return dataclasses.replace(explanation, cause=for_this_probe(explanation.cause, sending),
                                   fix=for_this_probe(explanation.fix, sending))

    def _fail(self, err: MailctlError) -> None:
        report = self.report
        report.exit_code = int(err.exit_code)
        report.error = err.message
        report.hint = for_this_probe(err.hint, self.message is not None)
        failed = report.failed_stage
        if failed and failed.explanation and not report.hint:
            report.hint = failed.explanation.fix

    def _close(self) -> None:
        closing = self.transport.closing_stage()
        if closing is None:
            return
        try:
            self._stage(closing)
        except MailctlError:  # pragma: no cover - closing never raises for a server's failure
            pass
