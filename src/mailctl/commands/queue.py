"""`mailctl queue ...`: parse, call mailctl.outbox, render."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import Annotated, List, Optional

import typer

from mailctl.commands._common import JsonOpt, OutboxOpt, app_context, complete_profile_name
from mailctl.errors import ExitCode, UsageError

queue_app = typer.Typer(
    help="The outbox: queue mail, flush it (cron), list, hold, release, retry, delete, purge, stats.",
    no_args_is_help=True,
)

IdsArg = Annotated[Optional[List[int]], typer.Argument(metavar="[ID]...", help="Queue ids.", show_default=False)]
AllOpt = Annotated[bool, typer.Option("--all", help="Every message this applies to.")]


def register(app: typer.Typer, name: str) -> None:
    app.add_typer(queue_app, name=name)


def open_outbox(ctx: typer.Context, path: str | None, *, synchronous: str = "FULL"):
    from mailctl.outbox import Outbox

    return Outbox(path, clock=app_context(ctx).clock, synchronous=synchronous)


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S")


# --- putting mail in ------------------------------------------------------------------
@queue_app.command("add")
def add(
    ctx: typer.Context,
    profile: Annotated[Optional[str], typer.Argument(help="Profile to send with (default: the default profile at flush time).", autocompletion=complete_profile_name)] = None,
    sender: Annotated[Optional[str], typer.Option("--from", "-f", metavar="ADDR", help="Envelope sender (default: Sender or From header).")] = None,
    to: Annotated[Optional[List[str]], typer.Option("--to", metavar="ADDR", help="Envelope recipient (repeatable; default: To, Cc and Bcc headers).")] = None,
    hold: Annotated[bool, typer.Option("--hold", help="Queue it held: nothing sends it until `queue release`.")] = False,
    outbox: OutboxOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Queue a complete RFC 5322 message read from stdin."""
    from mailctl.outbox.envelope import envelope_from_headers, parse_message, strip_bcc_bytes, to_crlf

    app = app_context(ctx)
    raw = sys.stdin.buffer.read()
    if not raw.strip():
        raise UsageError("no message on stdin", hint="pipe a complete message: mailctl queue add < message.eml")
    raw = to_crlf(raw)
    msg = parse_message(raw)
    env_sender, env_rcpts = envelope_from_headers(msg) if not to else ("", [])
    if sender is None and to:
        from mailctl.outbox.envelope import header_addresses

        env_sender = (header_addresses(msg, "Sender") or header_addresses(msg, "From") or [""])[0]
    profile = profile or app.profile_name
    if profile is not None:
        from mailctl.profiles.resolve import resolve_profile

        resolve_profile(app.store.load(), profile)  # refuse an unknown profile now, not at flush time
    with open_outbox(ctx, outbox) as box:
        queue_id = box.enqueue(strip_bcc_bytes(raw), sender if sender is not None else env_sender,
                               list(to) if to else env_rcpts, profile, hold=hold)
        info = box.get(queue_id)
    if app.use_json(json_):
        app.output.json(info.to_dict())
    else:
        app.output.line(str(queue_id))
        app.output.info(f"Queued as {queue_id} ({info.state}) for {', '.join(info.recipients)}.")


# --- flushing ---------------------------------------------------------------------------
@queue_app.command("flush")
def flush_cmd(
    ctx: typer.Context,
    profile: Annotated[Optional[str], typer.Option("--profile", "-p", help="Only messages for this profile.", autocompletion=complete_profile_name)] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="At most this many delivery attempts.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be sent; send nothing, change nothing.")] = False,
    lease: Annotated[float, typer.Option("--lease", min=1, help="Seconds a claimed message stays ours after our last commit (a killed flush's messages are retried after this).")] = 600.0,
    outbox: OutboxOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Deliver due messages (run it from cron). Exit 0: nothing left to retry; 75: messages
    remain deferred; 1: some failed permanently or expired."""
    from mailctl.outbox.flush import FlushOptions
    from mailctl.outbox.service import profile_flush

    app = app_context(ctx)
    doc = app.store.load()
    options = FlushOptions(profile=profile, limit=limit, dry_run=dry_run, lease_seconds=lease)
    as_json = app.use_json(json_)
    # delivery results need not wait for the disk: one lost on power failure means at worst
    # that message is sent again, never that a message is lost (enqueues stay FULL)
    with open_outbox(ctx, outbox, synchronous="NORMAL") as box:
        with _ProgressBar(app, enabled=not as_json and not dry_run) as bar:
            report = profile_flush(box, doc, app.secrets, options, progress=bar.update)
    if as_json:
        app.output.json(report.to_dict())
    else:
        _render_flush(app, report)
    raise typer.Exit(int(report.exit_code))


class _ProgressBar:
    """A rich progress bar on stderr when it is a terminal; the engine reports through update()."""

    def __init__(self, app, *, enabled: bool) -> None:
        self.app = app
        self.progress = None
        self.task = None
        try:
            tty = sys.stderr.isatty()
        except (AttributeError, ValueError):
            tty = False
        self.enabled = enabled and tty and not app.output.quiet

    def __enter__(self) -> "_ProgressBar":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, event: str, **data) -> None:
        if not self.enabled:
            return
        if event == "start" and data.get("total"):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), console=self.app.output.err_console(), transient=True)
            self.task = self.progress.add_task("Sending", total=data["total"])
            self.progress.start()
        elif self.progress is None:
            return
        elif event == "message":
            self.progress.update(self.task, advance=1, description="Sending")
        elif event == "wait":
            self.progress.update(self.task, description=f"Waiting {data['seconds']:.0f}s ({data['reason']})")


def _render_flush(app, report) -> None:
    out = app.output
    if report.dry_run:
        if not report.sending_enabled:
            out.info("Note: sending is disabled (settings: sending_enabled = false); a real flush would send nothing.")
        out.table(
            ["ID", "PROFILE", "STATE", "TRIES", "RECIPIENTS", "SUBJECT"],
            [(m["id"], m["profile"] or "", m["state"], m["attempts"], ", ".join(m["recipients"]), m["subject"] or "")
             for m in report.would_send],
            title=None,
        )
        out.info(f"Dry run: {len(report.would_send)} message(s) would be sent; nothing was sent or changed.")
        return
    if not report.sending_enabled:
        out.info(f"Sending is disabled (settings: sending_enabled = false): nothing sent; {report.due} message(s) due "
                 "wait in the outbox. Enable with: mailctl profile settings sending_enabled true")
        return
    if report.problems:
        out.table(["ID", "OUTCOME", "PROFILE", "NEXT TRY", "REPLY"],
                  [(p.id, p.outcome, p.profile or "", _when(p.next_attempt_at), p.reply) for p in report.problems])
    for name, message in report.profile_errors.items():
        out.warn(f"profile {name}: {message}")
    rem = report.remaining
    # the summary is a message (stderr, silenced by -q) so a quiet cron job mails only problems
    out.info(
        f"Sent {report.sent}, deferred {report.deferred}, failed {report.failed}, expired {report.expired}"
        + (f", reclaimed {report.reclaimed}" if report.reclaimed else "")
        + (f", purged {report.purged}" if report.purged else "")
        + f" in {report.duration:.1f}s. Outbox now: {rem.get('queued', 0)} queued, {rem.get('deferred', 0)} deferred,"
        f" {rem.get('held', 0)} held, {rem.get('sending', 0)} sending."
    )


# --- looking -----------------------------------------------------------------------------
@queue_app.command("list")
def list_cmd(
    ctx: typer.Context,
    state: Annotated[Optional[List[str]], typer.Option("--state", "-s", help="Only this state (repeatable): queued, sending, sent, deferred, failed, expired, held.")] = None,
    profile: Annotated[Optional[str], typer.Option("--profile", "-p", help="Only messages queued for this profile.", autocompletion=complete_profile_name)] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="At most this many rows.")] = None,
    outbox: OutboxOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="JSON Lines: one object per message (ignore unknown fields).")] = False,
) -> None:
    """List queued messages (JSON Lines with --json)."""
    app = app_context(ctx)
    states = [s for v in (state or []) for s in v.split(",") if s]
    with open_outbox(ctx, outbox) as box:
        rows = box.list(states=states or None, profile=profile, limit=limit)
        if app.use_json(json_):
            app.output.json_lines(r.to_dict() for r in rows)
            return
        app.output.table(
            ["ID", "STATE", "QUEUED", "TRIES", "PROFILE", "FROM", "TO", "SUBJECT", "LAST REPLY"],
            [(r.id, r.state, _when(r.created_at), r.attempts, r.profile or "", r.sender,
              ", ".join(r.recipients), r.subject or "", r.last_reply or "") for r in rows],
        )


@queue_app.command("show")
def show(
    ctx: typer.Context,
    message_id: Annotated[int, typer.Argument(metavar="ID", help="Queue id.")],
    raw: Annotated[bool, typer.Option("--raw", help="Print the whole message as queued.")] = False,
    outbox: OutboxOpt = None,
    json_: JsonOpt = False,
) -> None:
    """A message's envelope, headers and every delivery attempt."""
    from mailctl.outbox.envelope import parse_message

    app = app_context(ctx)
    with open_outbox(ctx, outbox) as box:
        info = box.get(message_id, with_raw=True)
    if raw:
        sys.stdout.buffer.write(info.raw or b"")
        sys.stdout.flush()
        return
    head = (info.raw or b"").split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    if app.use_json(json_):
        data = info.to_dict()
        data["headers"] = [[k, str(v)] for k, v in parse_message(info.raw or b"").items()]
        app.output.json(data)
        return
    out = app.output
    for label, value in [
        ("ID", info.id), ("State", info.state), ("Profile", info.profile or "(default)"), ("Queued", _when(info.created_at)),
        ("Envelope from", info.sender or "<>"), ("Envelope to", ", ".join(info.recipients)), ("Size", f"{info.size} bytes"),
        ("Attempts", info.attempts),
        ("Next attempt", _when(info.next_attempt_at) if info.state in ("queued", "deferred") else ""),
        ("Last reply", info.last_reply or ""),
    ]:
        out.line(f"{label + ':':<15}{value}")
    out.line("")
    out.line(head)
    out.line("")
    if info.attempt_log:
        out.table(["WHEN", "OUTCOME", "SERVER", "SECONDS", "REPLY"],
                  [(a["at"], a["outcome"], a["server"] or "", "" if a["duration"] is None else a["duration"], a["reply"] or "")
                   for a in info.attempt_log])
    else:
        out.line("No delivery attempts yet.")


@queue_app.command("stats")
def stats(
    ctx: typer.Context,
    top: Annotated[int, typer.Option("--top", min=1, help="Recipient domains to show.")] = 20,
    outbox: OutboxOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Counts by state, and pending recipients by domain and age (like Postfix's qshape)."""
    app = app_context(ctx)
    with open_outbox(ctx, outbox) as box:
        data = box.stats(top=top)
    if app.use_json(json_):
        app.output.json(data)
        return
    out = app.output
    out.table(["STATE", "MESSAGES"], [*data["by_state"].items(), ("total", data["total"])])
    out.line("")
    buckets = data["age_buckets"]
    rows = [("TOTAL", sum(data["by_age"].values()), *data["by_age"].values())]
    rows += [(d["domain"], d["total"], *d["by_age"].values()) for d in data["by_domain"]]
    out.table(["DOMAIN (pending recipients)", "T", *buckets], rows)
    if data["domains_total"] > len(data["by_domain"]):
        out.info(f"{data['domains_total'] - len(data['by_domain'])} more domain(s); use --top or --json.")


# --- managing ----------------------------------------------------------------------------
def _targets(ids: list[int] | None, all_: bool) -> list[int] | None:
    if all_ and ids:
        raise UsageError("give queue ids or --all, not both")
    if not all_ and not ids:
        raise UsageError("give one or more queue ids, or --all")
    return None if all_ else list(ids)


def _change(ctx: typer.Context, action: str, verb: str, ids, all_: bool, outbox, json_: bool) -> None:
    app = app_context(ctx)
    target = _targets(ids, all_)
    with open_outbox(ctx, outbox) as box:
        changed = getattr(box, action)(target)
    if app.use_json(json_):
        app.output.json({"action": action, "ids": changed, "count": len(changed)})
    else:
        app.output.info(f"{verb} {len(changed)} message(s)" + (f": {', '.join(map(str, changed[:20]))}" + (" ..." if len(changed) > 20 else "") if changed else "."))


@queue_app.command("hold")
def hold(ctx: typer.Context, ids: IdsArg = None, all_: AllOpt = False, outbox: OutboxOpt = None, json_: JsonOpt = False) -> None:
    """Keep queued/deferred messages from being sent until released (e.g. across maintenance)."""
    _change(ctx, "hold", "Held", ids, all_, outbox, json_)


@queue_app.command("release")
def release(ctx: typer.Context, ids: IdsArg = None, all_: AllOpt = False, outbox: OutboxOpt = None, json_: JsonOpt = False) -> None:
    """Make held messages due again (the retry-age clock restarts)."""
    _change(ctx, "release", "Released", ids, all_, outbox, json_)


@queue_app.command("retry")
def retry(ctx: typer.Context, ids: IdsArg = None, all_: AllOpt = False, outbox: OutboxOpt = None, json_: JsonOpt = False) -> None:
    """Make deferred, failed or expired messages due now."""
    _change(ctx, "retry", "Requeued", ids, all_, outbox, json_)


@queue_app.command("delete")
def delete(ctx: typer.Context, ids: IdsArg = None, all_: AllOpt = False, outbox: OutboxOpt = None, json_: JsonOpt = False) -> None:
    """Remove messages from the outbox for good."""
    _change(ctx, "delete", "Deleted", ids, all_, outbox, json_)


@queue_app.command("purge")
def purge(
    ctx: typer.Context,
    older_than: Annotated[Optional[str], typer.Option("--older-than", metavar="DURATION", help="Finished more than this long ago, e.g. 30d (default: retention_days).")] = None,
    state: Annotated[Optional[List[str]], typer.Option("--state", "-s", help="sent, failed or expired (repeatable; default all three).")] = None,
    outbox: OutboxOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Delete finished messages (sent, failed, expired) and their attempt logs."""
    from mailctl.outbox.store import FINISHED_STATES
    from mailctl.profiles.model import parse_duration

    app = app_context(ctx)
    if older_than is None:
        seconds = float(app.store.load().settings().get("retention_days") or 0) * 86400.0
    else:
        seconds = parse_duration(older_than)
    states = [s for v in (state or []) for s in v.split(",") if s] or list(FINISHED_STATES)
    with open_outbox(ctx, outbox) as box:
        count = box.purge(seconds, states)
    if app.use_json(json_):
        app.output.json({"purged": count, "older_than_seconds": seconds, "states": states})
    else:
        app.output.info(f"Purged {count} message(s) ({', '.join(states)}) finished more than {seconds / 86400:g} day(s) ago.")
