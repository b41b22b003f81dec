"""`mailctl test connect` and `mailctl test send`: staged diagnostics of a profile.

The work happens in mailctl.diagnostics.probe; this module parses options and renders."""

# No `from __future__ import annotations` here: Typer reads each command's signature with
# get_type_hints() three times, which evaluates string annotations anew each time (~5 ms per
# command built; the module is on every `mailctl send` / `mailctl test` path).

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


# swaks' and msmtp's probing options (docs/smtp.md, "Probing options")
AuthMechanismOpt = Annotated[Optional[str], typer.Option("--auth-mechanism", metavar="MECH", help="Use this AUTH mechanism (PLAIN, LOGIN, CRAM-MD5, XOAUTH2) instead of the best one offered; one the server does not offer fails (exit 77) naming those it does.")]
EhloOpt = Annotated[Optional[str], typer.Option("--ehlo", metavar="NAME", help="Name to send in EHLO (default: the profile's ehlo_name, else this machine's name).")]
SourceAddressOpt = Annotated[Optional[str], typer.Option("--source-address", metavar="IP", help="Connect from this local IP address (default: the profile's source_address, else the system's choice).")]
HeaderOpt = Annotated[List[str], typer.Option("--header", metavar="'NAME: VALUE'", help="Set a header (repeat for more); it replaces a header of that name. The envelope does not change.")]


def _with_session_options(prof, auth_mechanism: Optional[str], ehlo: Optional[str], source_address: Optional[str]):
    """The profile with --auth-mechanism / --ehlo / --source-address in place of its
    auth_mechanism / ehlo_name / source_address (checked by the profile model; a bad value is
    a usage error naming the option)."""
    from mailctl.errors import UsageError, ValidationError
    from mailctl.profiles.model import validate_field

    given = {"auth_mechanism": ("--auth-mechanism", auth_mechanism), "ehlo_name": ("--ehlo", ehlo),
             "source_address": ("--source-address", source_address)}
    values = dict(prof.values)
    for field, (option, value) in given.items():
        if value is None:
            continue
        if prof.type not in ("smtp", "lmtp"):
            raise UsageError(f"{option} applies to smtp and lmtp profiles; profile {prof.name!r} is {prof.type}")
        try:
            values[field] = validate_field(field, value)
        except ValidationError as exc:
            raise UsageError(f"{option}: {exc.message.split(': ', 1)[-1]}", hint=exc.hint) from None
    if values == prof.values:
        return prof
    import dataclasses

    return dataclasses.replace(prof, values=values, origin={**prof.origin, **{f: "command line" for f, (_o, v) in given.items() if v is not None}})


def _quit_after_callback(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    from mailctl.diagnostics.probe import QUIT_AFTER_CHOICES

    if value.lower() not in QUIT_AFTER_CHOICES:
        raise typer.BadParameter(f"expected one of: {', '.join(QUIT_AFTER_CHOICES)}")
    return value.lower() if value else None


def _complete_stage(incomplete: str) -> list[str]:
    """--quit-after of `test send`: the stages it stops after (shell completion, and the static scripts)."""
    from mailctl.diagnostics.probe import QUIT_AFTER_CHOICES

    return [s for s in QUIT_AFTER_CHOICES if s.startswith(incomplete)]


def _complete_connect_stage(incomplete: str) -> list[str]:
    """--quit-after of `test connect`: the stages a connection test reaches (no mail, rcpt, data)."""
    return [s for s in _complete_stage(incomplete) if s not in ("mail", "rcpt", "data")]


def _prefetch_tls(prof, quit_after: Optional[str]) -> None:
    """Have the TLS context built in the background while the probe gets going (the CA store
    loads meanwhile: mailctl.transports.prefetch_tls), unless the probe stops before TLS."""
    if quit_after in ("resolve", "connect", "banner", "ehlo"):
        return
    from mailctl.transports import prefetch_tls

    prefetch_tls(prof)


def _load(ctx: typer.Context, name: Optional[str]):
    from mailctl.profiles.resolve import check_complete, implicit_local, resolve_profile

    app = app_context(ctx)
    doc = app.store.load()
    named_by = app.named_by(name)  # for -v
    name = name or app.profile_name
    # Only the tests fall back to the built-in local profile (the Quick start), and say so.
    profile = resolve_profile(doc, name, allow_builtin_local=True)
    app.explain_profile(doc, profile, named_by=named_by)
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
        typer.Option("--quit-after", metavar="STAGE", callback=_quit_after_callback, autocompletion=_complete_connect_stage, help="Stop after this stage. SMTP: resolve, connect, tls, banner, ehlo, starttls, auth. Graph/EWS: secret, token, connect, tls (stops before the API request)."),
    ] = None,
    auth_mechanism: AuthMechanismOpt = None,
    ehlo: EhloOpt = None,
    source_address: SourceAddressOpt = None,
    transcript: TranscriptOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Connect step by step (resolve, connect, banner, EHLO, STARTTLS, EHLO, AUTH, QUIT): timings, TLS and certificate, capabilities."""
    app, _doc, prof = _load(ctx, profile)
    prof = _with_session_options(prof, auth_mechanism, ehlo, source_address)
    _prefetch_tls(prof, quit_after)
    from mailctl.diagnostics.probe import probe

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
    header: HeaderOpt = [],  # noqa: B006
    data: Annotated[Optional[str], typer.Option("--data", metavar="FILE", help="Send this complete message (RFC 5322, '-' for stdin) instead of a test message; --to and --from (or the profile's from_address) make the envelope.")] = None,
    quit_after: Annotated[
        Optional[str],
        typer.Option("--quit-after", metavar="STAGE", callback=_quit_after_callback, autocompletion=_complete_stage, help="Stop after this stage. SMTP: resolve, connect, tls, banner, ehlo, starttls, auth, mail, rcpt. Graph/EWS: secret, token, connect, tls (nothing is sent)."),
    ] = None,
    auth_mechanism: AuthMechanismOpt = None,
    ehlo: EhloOpt = None,
    source_address: SourceAddressOpt = None,
    transcript: TranscriptOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Send a test message through every stage, then MAIL FROM, RCPT TO, DATA; show the server's final reply and queue id."""
    from datetime import datetime

    from mailctl.errors import UsageError

    if not to:
        raise UsageError("give a recipient with --to ADDR", hint="e.g. mailctl test send --to you@example.com")
    headers: list[tuple[str, str]] = []
    if header:  # checked before the profile, as always; without any, mailctl.message loads while the TLS context builds
        from mailctl.message import parse_header_option

        headers = [parse_header_option(h) for h in header]
    if data is not None and (subject is not None or body is not None or attach):
        raise UsageError("--data sends a complete message: --subject, --body and --attach do not go with it",
                         hint="put them in the message file, or add headers with --header")
    app, doc, prof = _load(ctx, profile)
    prof = _with_session_options(prof, auth_mechanism, ehlo, source_address)
    _prefetch_tls(prof, quit_after)
    from mailctl.diagnostics.probe import ProbeMessage, probe
    from mailctl.message import build_message, envelope, message_bytes, message_from_file, set_headers

    if data is not None:
        raw, sender, recipients = message_from_file(data, prof, to=to, from_address=from_)
        report = probe(prof, app.secrets, message=ProbeMessage(set_headers(raw, headers), sender, recipients),
                       quit_after=quit_after, transcript=transcript)
        _finish(app, report, json_=json_, transcript=transcript)
        return
    stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %z")
    msg = build_message(
        prof,
        doc.settings(),
        to=to,
        subject=subject if subject is not None else f"mailctl test message ({prof.name})",
        body=body if body is not None else _test_body(prof, stamp),
        attachments=attach,
        from_address=from_,
    )
    sender, recipients = envelope(msg)
    report = probe(prof, app.secrets, message=ProbeMessage(set_headers(message_bytes(msg), headers), sender, recipients),
                   quit_after=quit_after, transcript=transcript)
    _finish(app, report, json_=json_, transcript=transcript)


def _test_body(prof, stamp: str) -> str:
    """The default body of `test send`: what sent it (seed 003: host, port, type, user), so
    whoever receives it can tell which profile and settings work."""
    from mailctl import __version__
    from mailctl.profiles.model import DEFAULT_PORTS

    values = prof.values
    rows = [("Profile", prof.name), ("Type", prof.type)]
    if prof.type in ("smtp", "lmtp"):
        security = values.get("security") or "starttls"
        rows += [("Host", values.get("host") or ""), ("Port", values.get("port") or DEFAULT_PORTS.get(security, 25)),
                 ("Security", security)]
    else:
        rows.append(("Server", prof.server or ""))
    rows += [("User", values.get("username") or "(none)"),
             ("Time", stamp), ("mailctl", __version__)]
    width = max(len(k) for k, _ in rows) + 1
    table = "".join(f"  {k + ':':<{width}} {v}\n" for k, v in rows)
    return f"This is a test message sent by `mailctl test send` through profile {prof.name!r}.\n\n{table}"


# --- rendering -----------------------------------------------------------------------------
_MARK = {"ok": "ok", "failed": "FAILED", "skipped": "skip"}


def _finish(app, report, *, json_: bool, transcript: bool) -> None:
    out = app.output
    json_out = app.use_json(json_)
    if json_out:
        out.json(report.to_dict(transcript=transcript))
    else:
        _render(out, report, transcript)
    if report.exit_code:
        out.error(report.error or "test failed", report.hint)
        raise typer.Exit(report.exit_code)


def _render(out, report, transcript: bool) -> None:
    """The report as text. Every error is printed once: the last failed stage's error and its
    fix are the Error and Hint lines at the end (stderr, _finish), so its stage shows the cause
    (and a fix only where it differs from the hint)."""
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
    _render_stages(add, report)
    _render_client(add, report.client)
    _render_tls(add, report)
    _render_capabilities(add, report.capabilities)
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


def _render_stages(add, report) -> None:
    width = max((len(s.name) for s in report.stages), default=5)
    last_failed = report.failed_stage
    for stage in report.stages:
        ms = f"{stage.duration * 1000:8.1f} ms" if stage.status != "skipped" else " " * 11
        if stage.status != "failed":
            text = stage.detail
        elif stage is last_failed and stage.error == report.error:
            text = stage.detail or "(the error is below)"  # printed once, as the Error line
        else:
            text = stage.error or ""
        add(f"  {_MARK[stage.status]:<6} {stage.name:<{width}} {ms}  {text}".rstrip())
        if stage.status == "failed" and stage.explanation:
            add(f"         cause: {stage.explanation.cause}")
            if not (stage is last_failed and stage.explanation.fix == report.hint):  # else: the Hint line
                add(f"         fix:   {stage.explanation.fix}")
        elif stage.status == "failed" and stage.detail and text != stage.detail:
            add(f"         {stage.detail}")


def _render_client(add, client) -> None:
    """Where the connection came from and, when the server's EHLO reply shows it, the address
    the server saw: what a mail admin allow-lists."""
    if not client or not client.get("local"):
        return
    add("")
    if client.get("proxy"):
        add(f"Connected from: {client['local']} to the proxy {client['proxy']} (the server sees the proxy's address)")
    else:
        add(f"Connected from: {client['local']} (this machine's local address)")
    if client.get("seen_by_server"):
        add(f"Server saw:     {client['seen_by_server']} (in its EHLO reply): the address to allow-list")


def _render_tls(add, report) -> None:
    if report.tls:
        add("")
        tls = report.tls
        if tls.get("version"):
            add(f"TLS: {tls['version']}" + (f", {tls['cipher']} ({tls['bits']} bits)" if tls.get("cipher") else ""))
        verification = tls["verification"]
        # a refused handshake: its error is printed once, at the end
        if str(verification).startswith("FAILED"):
            # an old server's version (tls.version) was refused, else its certificate
            verification = "FAILED (the error is below)" if tls.get("version") else "FAILED (the certificate shown below was refused)"
        add(f"Verification: {verification}")
    for i, cert in enumerate(report.certificates):
        add(_cert_title(i, len(report.certificates)))
        if cert.get("unreadable"):  # OpenSSL took it, cryptography cannot read it
            add(f"  cannot be read: {cert['unreadable']}")
            add(f"  SHA-256:   {cert['sha256']}")
            continue
        add(f"  subject:   {cert['subject']}")
        if cert["san"]:
            add(f"  SAN:       {', '.join(cert['san'])}")
        add(f"  issuer:    {cert['issuer']}" + ("  (self-signed)" if cert["self_signed"] else ""))
        if cert.get("not_yet_valid"):
            add(f"  not before: {cert['not_before']} (NOT YET VALID)")
        left = f"EXPIRED {-cert['days_left']} days ago" if cert["expired"] else f"{cert['days_left']} days left"
        add(f"  not after: {cert['not_after']} ({left})")
        if cert.get("key"):
            bits = f" {cert['key_bits']} bits" if cert.get("key_bits") and not str(cert["key"]).startswith("EC") else ""
            add(f"  key:       {cert['key']}{bits}" + (f", signed with {cert['signature_hash']}" if cert.get("signature_hash") else ""))
        add(f"  SHA-256:   {cert['sha256']}")


def _render_capabilities(add, caps) -> None:
    """The capabilities of the last EHLO, as it said them (after STARTTLS: the second EHLO)."""
    if not caps:
        return
    add("")
    add("Capabilities (EHLO after STARTTLS):" if caps.get("after_starttls") else "Capabilities:")
    size = caps.get("size")
    add(f"  SIZE:       {size if size is not None else 'not advertised'}")
    add(f"  AUTH:       {' '.join(caps['auth']) if caps['auth'] else 'not offered on this connection'}")
    for key in ("starttls", "pipelining", "smtputf8", "8bitmime", "chunking"):
        value = "yes" if caps.get(key) else "no"
        if key == "starttls" and not caps.get(key) and caps.get("starttls_before_tls"):
            value = "no (offered before TLS, used)"
        add(f"  {key.upper() + ':':<11} {value}")


def _cert_title(index: int, total: int) -> str:
    if total == 1:
        return "Certificate:"
    return "Certificate (server):" if index == 0 else f"Certificate (chain #{index}):"
