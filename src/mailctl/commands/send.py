"""`mailctl send` and `mailctl sendmail`: parse, hand the message to the outbox, render.

Both go through the outbox: the message is queued first, then (unless --queue / -odq, or
sending is disabled) tried once right away; a temporary failure leaves it for the next
`mailctl queue flush`."""

# No `from __future__ import annotations` here: Typer reads each command's signature with
# get_type_hints() three times, which evaluates string annotations anew each time (~5 ms per
# command built; the module is on every `mailctl send` / `mailctl test` path).

import sys
from typing import Annotated, List, Optional

import typer
from typer.core import TyperCommand

from mailctl.commands._common import JsonOpt, OutboxOpt, app_context, complete_profile_name
from mailctl.errors import UsageError


def register(app: typer.Typer, name: str) -> None:
    if name == "send":
        app.command("send")(send)
    elif name == "sendmail":
        app.command(
            "sendmail",
            context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": ["--help"]},
            add_help_option=True,
            cls=SendmailCommand,
        )(sendmail)
    else:  # pragma: no cover - registration table mistake
        raise ValueError(name)


def send(
    ctx: typer.Context,
    profile: Annotated[Optional[str], typer.Argument(help="Profile to send with (default: the default profile).", autocompletion=complete_profile_name)] = None,
    to: Annotated[Optional[List[str]], typer.Option("--to", "-t", metavar="ADDR", help="Recipient (repeatable, or comma-separated).")] = None,
    cc: Annotated[Optional[List[str]], typer.Option("--cc", metavar="ADDR", help="Cc recipient (repeatable).")] = None,
    bcc: Annotated[Optional[List[str]], typer.Option("--bcc", metavar="ADDR", help="Bcc recipient (repeatable).")] = None,
    subject: Annotated[str, typer.Option("--subject", "-s", help="Subject line.")] = "",
    body: Annotated[Optional[str], typer.Option("--body", "-b", help="Body text (default: read from stdin).")] = None,
    attach: Annotated[Optional[List[str]], typer.Option("--attach", "-a", metavar="FILE", help="Attach a file (repeatable).")] = None,
    from_address: Annotated[Optional[str], typer.Option("--from", metavar="ADDR", help="From address (default: the profile's).")] = None,
    reply_to: Annotated[Optional[str], typer.Option("--reply-to", metavar="ADDR", help="Reply-To address.")] = None,
    header: Annotated[Optional[List[str]], typer.Option("--header", metavar="'NAME: VALUE'", help="Set a header (repeatable); it replaces a header of that name. The recipients do not change.")] = None,
    queue: Annotated[bool, typer.Option("--queue", help="Only queue it; the next `mailctl queue flush` sends it.")] = False,
    draft: Annotated[bool, typer.Option("--draft", help="Graph and EWS: create it in the mailbox's Drafts folder instead of sending it (the outbox is not used).")] = False,
    outbox: OutboxOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Send a message now; on a temporary failure it stays queued for `queue flush`.
    Exit 0 sent (or queued with --queue, or saved with --draft), 75 queued for retry, 1 rejected by the server."""
    from mailctl.addresses import parse_address_list
    from mailctl.profiles.resolve import profile_for_sender, resolve_profile

    app = app_context(ctx)
    if not to and not cc and not bcc:
        raise UsageError("no recipients", hint="give at least one --to ADDR")
    if body is None:
        if app.output.stdin_is_terminal:
            raise UsageError("no body", hint="give --body TEXT or pipe the body on stdin")
        body = sys.stdin.read()
    doc = app.store.load()
    chosen: list[str] = []  # why the sender chose the profile, for -v
    name = profile_for_sender(doc, profile or app.profile_name, [a for _n, a in parse_address_list(from_address or "")],
                              on_choice=chosen.append)
    resolved = resolve_profile(doc, name)
    app.explain_profile(doc, resolved, named_by=app.named_by(profile), by_sender=chosen)
    if not queue and not draft and doc.settings().get("sending_enabled", True):
        from mailctl.transports import prefetch_tls

        prefetch_tls(resolved)  # the CA store loads while the rest (imports, outbox, connect) runs
    from mailctl.message import build_message, envelope, message_bytes, parse_header_option
    from mailctl.outbox import open_outbox
    from mailctl.outbox.service import submit

    msg = build_message(resolved, doc.settings(), to=to or [], subject=subject, body=body, cc=cc or [], bcc=bcc or [],
                        attachments=attach or [], from_address=from_address, reply_to=reply_to)
    sender, recipients = envelope(msg)
    for hname, hvalue in [parse_header_option(h) for h in header or []]:  # after envelope(): a To: header adds no recipient
        del msg[hname]
        msg[hname] = hvalue
    if draft:
        _save_draft(app, resolved, msg, sender, recipients, queue=queue, json_=json_)
        return
    app.explain_outbox(outbox, doc.settings())
    with open_outbox(outbox, settings=doc.settings(), clock=app.clock, synchronous="FULL") as box:
        outcome = submit(box, doc, app.secrets, message_bytes(msg), sender, recipients, name, queue_only=queue,
                         trace=app.trace)
    _finish(app, outcome, json_, str(msg["Message-ID"]))


def _save_draft(app, resolved, msg, sender: str, recipients: list[str], *, queue: bool, json_: bool) -> None:
    """--draft: straight to the mailbox's Drafts folder; nothing is queued, nothing is sent."""
    from mailctl.message import message_bytes
    from mailctl.transports import save_draft

    if queue:
        raise UsageError("--draft and --queue do not go together", hint="a draft is saved in the mailbox, not queued: drop one of them")
    result = save_draft(resolved, app.secrets, message_bytes(msg), sender, recipients)  # Bcc comes back from the envelope
    if app.use_json(json_):
        app.output.json({"outcome": "draft", "profile": resolved.name, "server": result.server, "reply": result.reply,
                         "message_id": str(msg["Message-ID"])})
    else:
        app.output.info(f"Saved as a draft via {result.server}: {result.reply}; nothing was sent.")


def _finish(app, outcome, json_: bool, message_id: str | None = None) -> None:
    """Render the outcome; its exit_code (decided in mailctl.outbox.service) is the exit status."""
    if app.use_json(json_):
        data = outcome.to_dict()
        data["message_id"] = message_id
        app.output.json(data, exit_code=int(outcome.exit_code))
    else:
        _render(app.output, outcome)
    if outcome.exit_code:
        raise typer.Exit(int(outcome.exit_code))


def _refused_list(failed: dict) -> str:
    return "; ".join(f"{rcpt} ({reply})" for rcpt, reply in failed.items())


def _render(out, outcome) -> None:
    if outcome.failed_recipients and outcome.outcome in ("sent", "deferred"):
        done = "sent to the other recipients" if outcome.outcome == "sent" else "the others wait for a retry"
        out.error(f"refused for good: {_refused_list(outcome.failed_recipients)}; {done}",
                  hint=f"kept in the outbox as {outcome.id} (partly failed); see: mailctl queue show {outcome.id}")
    elif outcome.outcome == "sent":
        out.info(f"Sent via {outcome.server or outcome.profile}: {outcome.reply}".rstrip(": "))
    elif outcome.outcome == "queued":
        out.line(str(outcome.id))
        if not outcome.sending_enabled:
            out.info(f"Sending is disabled (settings: sending_enabled = false): queued as {outcome.id}; "
                     "it goes out with the first flush after sending is enabled again.")
        else:
            out.info(f"Queued as {outcome.id}; the next `mailctl queue flush` sends it.")
    elif outcome.outcome == "deferred":
        out.error(f"temporary failure: {outcome.reply}", hint=f"queued as {outcome.id}; `mailctl queue flush` retries it")
    else:  # failed (5xx) or expired
        out.error(f"the server rejected the message: {outcome.reply}",
                  hint=f"kept in the outbox as {outcome.id} (failed); see: mailctl queue show {outcome.id}")


# --- sendmail -----------------------------------------------------------------------------
# its options are sendmail's, parsed by mailctl.outbox.sendmail: SendmailCommand lists them
SENDMAIL_HELP = """A sendmail-compatible entry for programs and cron's MAILTO.

`mailctl-sendmail` is the same as its own program: link it as /usr/sbin/sendmail, or point
cron's MAILER at it.

Other sendmail options (-oX, -B, -N, -R, -V, -X, -v, -bm, -odi, -odb) are accepted and ignored.

Exit 0 once the message is queued or sent (also when delivering it now fails on the
configuration: it stays queued, the reason goes to stderr); 1 if the server rejected it;
2 usage; 65 bad message or address; 78 configuration problem before it was queued."""


class SendmailCommand(TyperCommand):
    """`mailctl sendmail --help`: sendmail's own options (mailctl.outbox.sendmail.HELP_OPTIONS)
    in the one aligned Options table with --help, and sendmail's usage line."""

    def collect_usage_pieces(self, ctx):
        from mailctl.outbox.sendmail import HELP_USAGE

        return [HELP_USAGE]

    def option_records(self, ctx) -> list[tuple[str, str]]:
        """(option, help) rows: sendmail's, then Click's own (--help); the man page uses them too."""
        from mailctl.outbox.sendmail import HELP_OPTIONS

        own = [p.get_help_record(ctx) for p in self.get_params(ctx)]
        return list(HELP_OPTIONS) + [r for r in own if r]

    def format_options(self, ctx, formatter) -> None:
        with formatter.section("Options"):
            formatter.write_dl(self.option_records(ctx))


def sendmail(ctx: typer.Context) -> None:
    from mailctl.outbox import open_outbox
    from mailctl.outbox.sendmail import parse_sendmail_args, prepare_sendmail_message, sendmail_exit_code
    from mailctl.outbox.service import submit

    app = app_context(ctx)
    opts = parse_sendmail_args(list(ctx.args))
    doc = app.store.load()
    data = sys.stdin.buffer.read()
    chosen: list[str] = []  # why the sender chose the profile, for mailctl's own -v (before `sendmail`)
    raw, sender, recipients, profile_name = prepare_sendmail_message(data, opts, doc, app.profile_name,
                                                                     on_choice=chosen.append)
    if app.trace is not None:
        from mailctl.profiles.resolve import resolve_profile

        app.explain_profile(doc, resolve_profile(doc, profile_name), named_by=app.named_by(), by_sender=chosen)
        app.explain_outbox(None, doc.settings())
    with open_outbox(None, settings=doc.settings(), clock=app.clock, synchronous="FULL") as box:
        outcome = submit(box, doc, app.secrets, raw, sender, recipients, profile_name, queue_only=opts.queue_only,
                         accept_once_queued=True, trace=app.trace)
    if outcome.delivery_error is not None:
        # queued safely: exit 0 (a caller that retried would queue it twice), but say why it did not go out
        err = outcome.delivery_error
        app.output.warn(f"mailctl sendmail: queued as {outcome.id}, not delivered now: {err.message}")
        if err.hint:
            app.output.warn(f"to fix: {err.hint}; then run: mailctl queue flush")
    elif outcome.outcome in ("failed", "expired"):
        app.output.error(f"the server rejected the message: {outcome.reply}",
                         hint=f"kept in the outbox as {outcome.id}; see: mailctl queue show {outcome.id}")
    elif outcome.failed_recipients:
        app.output.warn(f"mailctl sendmail: refused for good: {_refused_list(outcome.failed_recipients)}"
                        f" (queued as {outcome.id}; see: mailctl queue show {outcome.id})")
    elif outcome.outcome == "deferred":
        app.output.info(f"mailctl sendmail: temporary failure ({outcome.reply}); queued as {outcome.id} for retry.")
    code = sendmail_exit_code(outcome)  # sendmail semantics: accepted for delivery is success
    if code:
        raise typer.Exit(int(code))


sendmail.__doc__ = SENDMAIL_HELP
