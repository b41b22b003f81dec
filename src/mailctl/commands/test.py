"""`mailctl test connect` and `mailctl test send`: staged diagnostics of a profile.

The work happens in mailctl.diagnostics.probe; this module parses options and renders."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from mailctl.commands._common import JsonOpt, TestProfileArg, app_context

test_app = typer.Typer(
    help="Diagnose a profile: connect step by step, or send a test message (exit codes per stage: see docs/smtp.md).",
    no_args_is_help=True,
)

TranscriptOpt = Annotated[bool, typer.Option("--transcript", help="Print the SMTP conversation (credentials and tokens redacted).")]


def register(app: typer.Typer, name: str) -> None:
    app.add_typer(test_app, name=name)


def _quit_after_callback(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    from mailctl.diagnostics.probe import QUIT_AFTER_CHOICES

    if value.lower() not in QUIT_AFTER_CHOICES:
        raise typer.BadParameter(f"expected one of: {', '.join(QUIT_AFTER_CHOICES)}")
    return value.lower() if value else None


def _load(ctx: typer.Context, name: Optional[str]):
    from mailctl.profiles.resolve import check_complete, implicit_local, resolve_profile

    app = app_context(ctx)
    doc = app.store.load()
    name = name or app.profile_name
    # Only the tests fall back to the built-in local profile (the Quick start), and say so.
    profile = resolve_profile(doc, name, allow_builtin_local=True)
    if implicit_local(doc, name):
        app.output.info(f"Note: no profile configured (looked at {app.config_lookup.searched_text()}); "
                        f"testing the built-in local profile, which delivers into {profile.values['maildir']}.")
    check_complete(profile)
    return app, doc, profile


@test_app.command("connect")
def connect(
    ctx: typer.Context,
    profile: TestProfileArg = None,
    quit_after: Annotated[
        Optional[str],
        typer.Option("--quit-after", metavar="STAGE", callback=_quit_after_callback, help="Stop after this stage. SMTP: resolve, connect, tls, banner, ehlo, starttls, auth. Graph/EWS: token, connect, tls (stops before the API request)."),
    ] = None,
    transcript: TranscriptOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Connect step by step (resolve, connect, banner, EHLO, STARTTLS, EHLO, AUTH, QUIT): timings, TLS and certificate, capabilities."""
    from mailctl.diagnostics.probe import probe

    app, _doc, prof = _load(ctx, profile)
    report = probe(prof, app.secrets, quit_after=quit_after, transcript=transcript)
    _finish(app, report, json_=json_, transcript=transcript)


@test_app.command("send")
def send(
    ctx: typer.Context,
    profile: TestProfileArg = None,
    to: Annotated[List[str], typer.Option("--to", metavar="ADDR", help="Recipient (repeat for more).")] = [],  # noqa: B006 - Typer idiom
    from_: Annotated[Optional[str], typer.Option("--from", metavar="ADDR", help="Sender (default: the profile's from_address).")] = None,
    subject: Annotated[Optional[str], typer.Option("--subject", help="Subject (default: a test subject naming the profile).")] = None,
    body: Annotated[Optional[str], typer.Option("--body", help="Text body (default: a short test text).")] = None,
    attach: Annotated[List[str], typer.Option("--attach", metavar="FILE", help="Attach a file (repeat for more).")] = [],  # noqa: B006
    quit_after: Annotated[
        Optional[str],
        typer.Option("--quit-after", metavar="STAGE", callback=_quit_after_callback, help="Stop after this stage. SMTP: resolve, connect, tls, banner, ehlo, starttls, auth, mail, rcpt. Graph/EWS: token, connect, tls (nothing is sent)."),
    ] = None,
    transcript: TranscriptOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Send a test message through every stage, then MAIL FROM, RCPT TO, DATA; show the server's final reply and queue id."""
    from datetime import datetime

    from mailctl.diagnostics.probe import ProbeMessage, probe
    from mailctl.errors import UsageError
    from mailctl.message import build_message, envelope, message_bytes

    if not to:
        raise UsageError("give a recipient with --to ADDR", hint="e.g. mailctl test send --to you@example.com")
    app, doc, prof = _load(ctx, profile)
    stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %z")
    msg = build_message(
        prof,
        doc.settings(),
        to=to,
        subject=subject if subject is not None else f"mailctl test message ({prof.name})",
        body=body if body is not None else f"This is a test message sent by `mailctl test send` through profile {prof.name!r} at {stamp}.\n",
        attachments=attach,
        from_address=from_,
    )
    sender, recipients = envelope(msg)
    report = probe(prof, app.secrets, message=ProbeMessage(message_bytes(msg), sender, recipients), quit_after=quit_after, transcript=transcript)
    _finish(app, report, json_=json_, transcript=transcript)


# --- rendering -----------------------------------------------------------------------------
_MARK = {"ok": "ok", "failed": "FAILED", "skipped": "skip"}


def _finish(app, report, *, json_: bool, transcript: bool) -> None:
    out = app.output
    if app.use_json(json_):
        out.json(report.to_dict(transcript=transcript))
    else:
        _render(out, report, transcript)
    if report.exit_code:
        out.error(report.error or "test failed", report.hint)
        raise typer.Exit(report.exit_code)


def _render(out, report, transcript: bool) -> None:
    lines: list[str] = []
    add = lines.append
    settings = report.settings
    if report.type == "smtp":
        extra = f" (alternate {settings['alternate']})" if settings.get("alternate") else ""
        via = f" via {settings['proxy']}" if settings.get("proxy") else ""
        add(f"Profile {report.profile}: {report.target}{extra}{via}, security {settings['security']}, auth {settings['auth']}")
    else:
        add(f"Profile {report.profile} ({report.type}): {report.target}")
    if transcript and report.transcript:
        add("")
        add("Transcript:")
        for row in report.transcript:
            add(f"  {row['dir']}: {row['line']}")
    add("")
    width = max((len(s.name) for s in report.stages), default=5)
    for stage in report.stages:
        ms = f"{stage.duration * 1000:8.1f} ms" if stage.status != "skipped" else " " * 11
        text = stage.error if stage.status == "failed" else stage.detail
        add(f"  {_MARK[stage.status]:<6} {stage.name:<{width}} {ms}  {text}".rstrip())
        if stage.status == "failed" and stage.explanation:
            add(f"         cause: {stage.explanation.cause}")
            add(f"         fix:   {stage.explanation.fix}")
        elif stage.status == "failed" and stage.detail:
            add(f"         {stage.detail}")
    if report.tls:
        add("")
        tls = report.tls
        if tls.get("version"):
            add(f"TLS: {tls['version']}, {tls['cipher']} ({tls['bits']} bits)")
        add(f"Verification: {tls['verification']}")
    for i, cert in enumerate(report.certificates):
        add(_cert_title(i, len(report.certificates)))
        add(f"  subject:   {cert['subject']}")
        if cert["san"]:
            add(f"  SAN:       {', '.join(cert['san'])}")
        add(f"  issuer:    {cert['issuer']}" + ("  (self-signed)" if cert["self_signed"] else ""))
        left = f"EXPIRED {-cert['days_left']} days ago" if cert["expired"] else f"{cert['days_left']} days left"
        add(f"  not after: {cert['not_after']} ({left})")
        add(f"  SHA-256:   {cert['sha256']}")
    caps = report.capabilities
    if caps:
        add("")
        add("Capabilities:")
        size = caps.get("size")
        add(f"  SIZE:       {size if size is not None else 'not advertised'}")
        add(f"  AUTH:       {' '.join(caps['auth']) if caps['auth'] else 'not offered on this connection'}")
        for key in ("starttls", "pipelining", "smtputf8", "8bitmime", "chunking"):
            add(f"  {key.upper() + ':':<11} {'yes' if caps.get(key) else 'no'}")
    if report.result:
        res = report.result
        add("")
        if res.get("location"):
            add(f"Delivered to the Maildir: {res['location']}")
        else:
            alt = " (the alternate server)" if res.get("used_alternate") else ""
            add(f"Accepted by {res['server']}{alt}: {res['reply']}")
            if res.get("queue_id"):
                add(f"Queue id: {res['queue_id']}")
            for rcpt, reply in (res.get("refused") or {}).items():
                add(f"Refused: {rcpt}: {reply}")
    elif report.ok and report.type == "smtp":
        add("")
        add(f"OK: {report.server}" + (" (the alternate server)" if report.used_alternate else "") + f" in {report.duration * 1000:.0f} ms")
    for line in lines:
        out.line(line)


def _cert_title(index: int, total: int) -> str:
    if total == 1:
        return "Certificate:"
    return "Certificate (server):" if index == 0 else f"Certificate (chain #{index}):"
