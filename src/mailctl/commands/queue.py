"""`mailctl queue ...`: parse, call mailctl.outbox, render."""

import sys
from datetime import datetime, timezone
from typing import Annotated, List, Optional

import typer

from mailctl.commands._common import JsonOpt, OutboxOpt, app_context, complete_profile_name
from mailctl.errors import UsageError
from mailctl.output import Col

queue_app = typer.Typer(
    help="The outbox: queue mail, flush it (cron), list, hold, release, retry, delete, purge, stats.",
    no_args_is_help=True,
)

IdsArg = Annotated[Optional[List[int]], typer.Argument(metavar="[ID]...", help="Queue ids.", show_default=False)]
AllOpt = Annotated[bool, typer.Option("--all", help="Every message this applies to.")]


def _complete_state(incomplete: str) -> list[str]:
    """--state of `queue list`: the outbox's states (shell completion, and the static scripts)."""
    from mailctl.outbox.store import STATES

    return [s for s in STATES if s.startswith(incomplete)]


def _complete_finished_state(incomplete: str) -> list[str]:
    """--state of `queue purge`: the finished states only."""
    from mailctl.outbox.store import FINISHED_STATES

    return [s for s in FINISHED_STATES if s.startswith(incomplete)]


def register(app: typer.Typer, name: str) -> None:
    app.add_typer(queue_app, name=name)


def open_outbox(ctx: typer.Context, path: str | None, *, synchronous: str = "FULL"):
    """The outbox of --outbox, $MAILCTL_OUTBOX, [settings] outbox or the data dir: an SQLite
    file or a postgresql:// database."""
    from mailctl.outbox import open_outbox as open_location

    app = app_context(ctx)
    return open_location(path, settings=app.store.load().settings(), clock=app.clock, synchronous=synchronous)


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
    from mailctl.outbox.envelope import prepare_queued_message

    app = app_context(ctx)
    raw = sys.stdin.buffer.read()
    if not raw.strip():
        raise UsageError("no message on stdin", hint="pipe a complete message: mailctl queue add < message.eml")
    profile = profile or app.profile_name
    doc = app.store.load()
    if profile is not None:
        from mailctl.profiles.resolve import resolve_profile

        resolve_profile(doc, profile)  # refuse an unknown profile now, not at flush time
    # NUL refused, CRLF line ends, addresses checked, Bcc removed, force_postmaster applied
    raw, env_sender, env_rcpts = prepare_queued_message(raw, sender, list(to) if to else None, doc.settings())
    with open_outbox(ctx, outbox) as box:
        queue_id = box.enqueue(raw, env_sender, env_rcpts, profile, hold=hold)
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
    connections: Annotated[int, typer.Option("--connections", min=1, max=64, help="Sessions per profile at once, each in its own thread; capped by the profile's max_connections (default 1).")] = 1,
    outbox: OutboxOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Deliver due messages (run it from cron). Exit 0: nothing left to retry; 75: messages
    remain deferred, or a SIGTERM stopped it after the messages in flight; 1: some failed
    permanently or expired."""
    from mailctl.outbox.flush import FlushOptions
    from mailctl.outbox.service import profile_flush

    app = app_context(ctx)
    doc = app.store.load()
    options = FlushOptions(profile=profile, limit=limit, dry_run=dry_run, lease_seconds=lease, connections=connections)
    as_json = app.use_json(json_)
    # delivery results need not wait for the disk: one lost on power failure means at worst
    # that message is sent again, never that a message is lost (enqueues stay FULL)
    with open_outbox(ctx, outbox, synchronous="NORMAL") as box:
        from mailctl.profiles.resolve import check_delivery_config
        check_delivery_config(doc, profile or app.profile_name, dry_run=dry_run)  # no config: 78, never local by accident
        app.explain_outbox(outbox, doc.settings())
        with _ProgressBar(app, enabled=not as_json and not dry_run) as bar, _TermStop() as stop:
            report = profile_flush(box, doc, app.secrets, options, progress=bar.update, trace=app.trace,
                                   stop=stop.asked)
    if report.stopped:
        app.output.info("Stopped by SIGTERM: the messages in flight were finished and recorded; "
                        "the rest stay queued for the next flush.")
    for name, most in report.connections_capped.items():
        app.output.info(f"Note: profile {name} allows {most} connection(s) at a time (max_connections = {most}), "
                        f"so --connections {connections} used {most}.")
    if as_json:
        app.output.json(report.to_dict())
    else:
        _render_flush(app, report)
    raise typer.Exit(int(report.exit_code))


@queue_app.command("worker")
def worker_cmd(
    ctx: typer.Context,
    interval: Annotated[str, typer.Option("--interval", metavar="DURATION", help="Longest wait between two rounds, e.g. 20s (new mail ends it: at once on PostgreSQL, within a second on SQLite).")] = "20s",
    profile: Annotated[Optional[str], typer.Option("--profile", "-p", help="Only messages for this profile.", autocompletion=complete_profile_name)] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=64, help="Parallel flushes (lanes) in this process, each with its own connections.")] = 1,
    connections: Annotated[int, typer.Option("--connections", min=1, max=64, help="Sessions per profile at once within each round (as queue flush --connections); capped by the profile's max_connections.")] = 1,
    hold_backlog: Annotated[Optional[bool], typer.Option("--hold-backlog/--no-hold-backlog", help="Hold what was queued before the start (queue release brings it back); new mail flows. Default: the hold_backlog_at_start setting.", show_default=False)] = None,
    lease: Annotated[float, typer.Option("--lease", min=1, help="Seconds a claimed message stays ours after our last commit.")] = 600.0,
    log_format: Annotated[str, typer.Option("--log-format", metavar="text|json", help="One line per event on stderr: text (key=value; syslog priorities under journald) or json.")] = "text",
    outbox: OutboxOpt = None,
) -> None:
    """Flush continuously (a systemd service): a round, a wait for new mail, a round...
    SIGTERM/SIGINT: finish the message in flight, give the rest back, exit 0. SIGHUP: read
    the profiles file again."""
    from mailctl.errors import ValidationError
    from mailctl.outbox import open_outbox as open_location
    from mailctl.outbox.locate import display, outbox_location
    from mailctl.outbox.worker import EventLog, Worker, WorkerOptions, config_from_profiles
    from mailctl.profiles.model import parse_duration
    from mailctl.profiles.resolve import check_delivery_config, resolve_profile

    app = app_context(ctx)
    if log_format not in ("text", "json"):
        raise UsageError(f"--log-format: {log_format!r} is not text or json")
    try:
        seconds = parse_duration(interval)
    except ValidationError as exc:
        raise UsageError(f"--interval: {exc.message}") from None
    if seconds <= 0:
        raise UsageError("--interval: must be more than 0s")
    doc = app.store.load()
    location, _why = outbox_location(outbox, doc.settings())
    check_delivery_config(doc, profile or app.profile_name)  # no configuration: 78, never local by accident
    if profile is not None:
        resolve_profile(doc, profile)  # an unknown profile: say so now, not at every round
    options = WorkerOptions(interval=seconds, profile=profile, concurrency=concurrency, hold_backlog=hold_backlog,
                            lease_seconds=lease, connections=connections)
    app.explain_outbox(outbox, doc.settings())  # -v: as queue flush says it
    trace = app.trace  # -v / -vv reach every round's flush, as they reach queue flush
    worker = Worker(lambda: open_location(location, clock=app.clock, synchronous="NORMAL"),
                    lambda: config_from_profiles(app.store.load(), app.secrets, trace), options,
                    log=EventLog(fmt=log_format, quiet=app.output.quiet), location=display(location))
    raise typer.Exit(worker.run())


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


class _TermStop:
    """SIGTERM during a flush (systemd stopping the unit, `timeout`, a shutdown): finish the
    messages in flight, record them, give the rest back, exit 75. A second SIGTERM is as the
    default (the dead-holder check then frees the claims at the next flush)."""

    def __init__(self) -> None:
        import threading

        self.event = threading.Event()
        self.previous = None

    def asked(self) -> bool:
        return self.event.is_set()

    def _on_term(self, signum, frame) -> None:
        import signal

        self.event.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def __enter__(self) -> "_TermStop":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._on_term)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


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
                 "wait in the outbox. Enable with: mailctl settings set sending_enabled true")
        return
    if report.problems:
        out.table([Col("ID", "keep"), Col("OUTCOME", "keep"), Col("PROFILE", "keep", drop=1), Col("NEXT TRY", "keep"),
                   Col("REPLY", "cut", min_width=20)],
                  [(p.id, p.outcome + (f", {len(p.failed_recipients)} failed" if p.failed_recipients and p.outcome != "failed" else ""),
                    p.profile or "", _when(p.next_attempt_at), p.reply) for p in report.problems])
    for name, message in report.profile_errors.items():
        out.warn(f"profile {name}: {message}")
    for name, err in report.config_errors.items():
        # once per profile, not per message: those messages were left as they were (exit 78)
        out.error(f"profile {name}: {err.message} (its messages stay queued as they were; nothing was tried)",
                  hint=err.hint)
    rem = report.remaining
    # the summary is a message (stderr, silenced by -q) so a quiet cron job mails only problems
    out.info(
        f"Sent {report.sent}, deferred {report.deferred}, failed {report.failed}, expired {report.expired}"
        + (f", partly failed {report.partially_failed}" if report.partially_failed else "")
        + (f", left untouched {report.left} (configuration)" if report.left else "")
        + (f", reclaimed {report.reclaimed}" if report.reclaimed else "")
        + (f", purged {report.purged}" if report.purged else "")
        + f" in {report.duration:.1f}s. Outbox now: {rem.get('queued', 0)} queued, {rem.get('deferred', 0)} deferred,"
        f" {rem.get('held', 0)} held, {rem.get('sending', 0)} sending."
    )


# --- looking -----------------------------------------------------------------------------
@queue_app.command("list")
def list_cmd(
    ctx: typer.Context,
    state: Annotated[Optional[List[str]], typer.Option("--state", "-s", help="Only this state (repeatable): queued, sending, sent, deferred, failed (also the partly failed), expired, held, or all. Default: the pending ones (queued, deferred, held, sending).", autocompletion=_complete_state)] = None,
    profile: Annotated[Optional[str], typer.Option("--profile", "-p", help="Only messages queued for this profile.", autocompletion=complete_profile_name)] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="At most this many rows, newest first (default: a screenful on a terminal, every one when piped).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every matching message, not a screenful.")] = False,
    outbox: OutboxOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="JSON Lines: one object per message (ignore unknown fields).")] = False,
) -> None:
    """List pending messages, newest first (finished ones with --state sent, failed, expired;
    JSON Lines with --json)."""
    from mailctl.outbox.store import FINISHED_STATES, PENDING_STATES, STATES

    app = app_context(ctx)
    states = [s for v in (state or []) for s in v.split(",") if s]
    if "all" in states:
        states = list(STATES)
    if any(s not in STATES for s in states):  # a choice the command line cannot accept: usage (2)
        raise UsageError(f"--state: unknown state {next(s for s in states if s not in STATES)!r}", hint="states: all, " + ", ".join(STATES))
    if all_ and limit is not None:
        raise UsageError("give --limit N or --all, not both")
    lines = app.output.terminal_lines
    if limit is None and not all_ and lines is not None:
        limit = max(5, lines - 4)  # a screenful: the header, the footer and the prompt stay in view
    chosen = states or list(PENDING_STATES)
    with open_outbox(ctx, outbox) as box:
        rows = list(box.list(states=chosen, profile=profile, limit=limit, newest_first=True))
        total = len(rows) if limit is None or len(rows) < limit else box.count_listed(states=chosen, profile=profile)
        finished = 0 if rows or states else sum(n for s, n in box.count_by_state().items() if s in FINISHED_STATES)
    if app.use_json(json_):
        app.output.json_lines(r.to_dict() for r in rows)
        left_out: list[str] = []
    else:
        left_out = _list_table(app, rows)
    _list_footer(app, len(rows), total, "" if states else "pending ", finished, left_out)


def _list_table(app, rows) -> list[str]:
    """queue list's table. On a terminal the recipients are the first and "+N" (all of them in
    show and --json) and narrow screens leave out PROFILE, TRIES, FROM and SUBJECT before an
    id, a date or an address wraps; a reply is cut with an ellipsis."""


    compact = app.output.is_terminal

    def to(r) -> str:
        if compact and len(r.recipients) > 1:
            return f"{r.recipients[0]} +{len(r.recipients) - 1}"
        return ", ".join(r.recipients)

    columns = [Col("ID", "keep"), Col("STATE", "keep"), Col("QUEUED", "keep"), Col("TRIES", "keep", drop=4),
               Col("PROFILE", "keep", drop=5), Col("FROM", "keep", drop=3), Col("TO", "keep"),
               Col("SUBJECT", "cut", drop=2), Col("LAST REPLY", "cut", drop=1)]
    return app.output.table(columns, [
        (r.id, r.display_state, _when(r.created_at), r.attempts, r.profile or "", r.sender or "<>", to(r),
         r.subject or "", r.last_reply or "") for r in rows])


def _list_footer(app, shown: int, total: int, what: str, finished: int, left_out: list[str]) -> None:
    """On stderr (silenced by -q): how many were not shown and how to see them."""
    out = app.output
    if total > shown:
        out.info(f"Newest {shown} of {total} {what}message(s) shown; {total - shown} more not shown "
                 "(--limit N for more, --all for every one).")
    elif not total and what:
        out.info("No pending messages." + (f" {finished} finished (sent, failed, expired): mailctl queue list --state sent"
                                            if finished else ""))
    if left_out:
        out.info(f"Not shown at this width: {', '.join(left_out)} (a wider terminal, queue show ID or --json has them).")


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
        ("ID", info.id), ("State", info.display_state), ("Profile", info.profile or "(default)"), ("Queued", _when(info.created_at)),
        ("Envelope from", info.sender or "<>"), ("Envelope to", ", ".join(info.recipients)), ("Size", f"{info.size} bytes"),
        ("Attempts", info.attempts),
        ("Next attempt", _when(info.next_attempt_at) if info.state in ("queued", "deferred") else ""),
        ("Last reply", info.last_reply or ""),
    ] + [("Refused", f"{rcpt}: {reply}") for rcpt, reply in info.failed_recipients.items()]:
        out.line(f"{label + ':':<15}{value}")
    out.line("")
    out.line(head)
    out.line("")
    if info.attempt_log:


        # here a reply is shown whole: wrapped, never cut
        out.table([Col("WHEN", "keep"), Col("OUTCOME", "keep"), Col("SERVER", "keep", drop=2),
                   Col("SECONDS", "keep", drop=1), Col("REPLY", "fold", min_width=20)],
                  [(a["at"], a["outcome"], a["server"] or "", "" if a["duration"] is None else a["duration"], a["reply"] or "")
                   for a in info.attempt_log])
    else:
        out.line("No delivery attempts yet.")


@queue_app.command("stats")
def stats(
    ctx: typer.Context,
    top: Annotated[int, typer.Option("--top", min=1, help="Recipient domains to show.")] = 20,
    format_: Annotated[str, typer.Option("--format", metavar="table|json|openmetrics", help="openmetrics: gauges for Prometheus (counts by state, oldest queued age, attempts by outcome).")] = "table",
    output: Annotated[Optional[str], typer.Option("--output", "-o", metavar="FILE", help="Write to FILE atomically instead of stdout (node_exporter's textfile collector: a .prom file).")] = None,
    outbox: OutboxOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Counts by state, and pending recipients by domain and age (like Postfix's qshape)."""
    app = app_context(ctx)
    if format_ not in ("table", "json", "openmetrics"):
        raise UsageError(f"--format: {format_!r} is not table, json or openmetrics")
    if format_ == "openmetrics":
        from mailctl.outbox.metrics import collect, render_openmetrics, write_atomically

        with open_outbox(ctx, outbox) as box:
            text = render_openmetrics(collect(box))
        if output:
            try:
                write_atomically(output, text)
            except OSError as exc:
                from mailctl.errors import ConfigError

                raise ConfigError(f"--output {output}: {exc.strerror or exc}",
                                  hint="the directory must exist and be writable") from None
        else:
            sys.stdout.write(text)
        return
    if output:
        raise UsageError("--output goes with --format openmetrics")
    with open_outbox(ctx, outbox) as box:
        data = box.stats(top=top)
    data["failover"] = _sticky_failovers(app)
    if app.use_json(json_) or format_ == "json":
        app.output.json(data)
        return
    out = app.output
    for active in data["failover"]:
        out.info(f"Sticky failover: profile {active['profile']} sends through the alternate {active['server']} "
                 f"(primary {active['primary']}); back with: mailctl profile failback {active['profile']}")
    out.table([Col("STATE", "keep"), Col("MESSAGES", "keep")], [*data["by_state"].items(), ("total", data["total"])]
              + ([("partly failed", f"{data['partially_failed']} ({data['partially_failed_recipients']} recipient(s) refused)")]
                 if data.get("partially_failed") else []))
    out.line("")
    buckets = data["age_buckets"]
    rows = [("TOTAL", sum(data["by_age"].values()), *data["by_age"].values())]
    rows += [(d["domain"], d["total"], *d["by_age"].values()) for d in data["by_domain"]]
    # domains and counts never wrap; on a narrow terminal the middle age buckets give way first
    # (the newest and the oldest say the most: is mail moving, is any stuck)
    middle = list(range(1, len(buckets) - 1))
    order = {b: len(middle) - rank for rank, b in enumerate(middle)}  # next to the newest goes first
    left_out = out.table([Col("DOMAIN", "keep"), Col("T", "keep"),
                          *[Col(b, "keep", drop=order.get(i, 0)) for i, b in enumerate(buckets)]],
                         rows, title="Pending recipients by domain and age")
    if left_out:
        out.info(f"Not shown at this width: the {', '.join(left_out)} columns (a wider terminal or --json has them).")
    if data["domains_total"] > len(data["by_domain"]):
        out.info(f"{data['domains_total'] - len(data['by_domain'])} more domain(s); use --top or --json.")


def _sticky_failovers(app) -> list[dict]:
    """Profiles on their alternate server (failover = "sticky"); none when the profiles file
    cannot be read (stats are about the outbox, which opened)."""
    from mailctl.errors import MailctlError
    from mailctl.profiles.failover import active_in

    try:
        return [a.to_dict() for a in active_in(app.store.load())]
    except MailctlError:
        return []


@queue_app.command("migrate")
def migrate_cmd(
    ctx: typer.Context,
    to: Annotated[str, typer.Option("--to", metavar="PATH|URL", help="The outbox to copy into: an SQLite file or a postgresql:// URL (created if need be).", show_default=False)],
    outbox: OutboxOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Copy this outbox into another (SQLite <-> PostgreSQL), keeping ids, states and attempt
    logs. Idempotent: run it again to bring over what changed. Stop flushes and workers first."""
    import os

    from mailctl.outbox import open_outbox as open_location
    from mailctl.outbox.locate import display, is_postgres_url, outbox_location
    from mailctl.outbox.transfer import copy_outbox

    app = app_context(ctx)
    settings = app.store.load().settings()
    source, _why = outbox_location(outbox, settings)
    dest, _why = outbox_location(to, settings)

    def same(a: str, b: str) -> bool:
        if is_postgres_url(a) or is_postgres_url(b):
            return a == b
        return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))

    if same(source, dest):
        raise UsageError(f"--to names the outbox being copied ({display(source)})",
                         hint="name the other outbox with --to, the source with --outbox")
    with open_location(source, clock=app.clock, synchronous="NORMAL") as src, \
            open_location(dest, clock=app.clock, synchronous="FULL") as dst:
        totals = copy_outbox(src, dst)
    totals = {"from": display(source), "to": display(dest), **totals}
    if app.use_json(json_):
        app.output.json(totals)
        return
    app.output.info(
        f"Copied {totals['messages']} message(s) from {totals['from']} to {totals['to']}: {totals['added']} added, "
        f"{totals['updated']} updated, {totals['unchanged']} already there; {totals['attempts']} attempt log entr(ies)"
        + (f"; {totals['was_sending']} were being sent and come over due again" if totals["was_sending"] else "") + ".")
    dst_counts = totals["destination"]
    app.output.info("Destination now: " + ", ".join(f"{n} {s}" for s, n in dst_counts.items() if n) + "."
                    if any(dst_counts.values()) else "Destination now: empty.")


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
    state: Annotated[Optional[List[str]], typer.Option("--state", "-s", help="sent, failed or expired (repeatable; default all three).", autocompletion=_complete_finished_state)] = None,
    vacuum: Annotated[Optional[bool], typer.Option("--vacuum/--no-vacuum", help="Give the freed space back to the file system (default: yes; an SQLite outbox created without incremental auto-vacuum is rewritten by VACUUM, which holds its write lock, only when a quarter of it is free and at most 256 MB remain). --vacuum: VACUUM whatever the size; --no-vacuum: keep the space for new mail.", show_default=False)] = None,
    outbox: OutboxOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Delete finished messages (sent, failed, expired) and their attempt logs, in short
    batches (flushes and enqueues go on meanwhile), then give the space back."""
    from mailctl.outbox.store import FINISHED_STATES
    from mailctl.profiles.model import parse_duration

    app = app_context(ctx)
    if older_than is None:
        seconds = float(app.store.load().settings().get("retention_days") or 0) * 86400.0
    else:
        seconds = parse_duration(older_than)
    states = [s for v in (state or []) for s in v.split(",") if s] or list(FINISHED_STATES)
    if any(s not in FINISHED_STATES for s in states):  # a choice the command line cannot accept: usage (2)
        bad = next(s for s in states if s not in FINISHED_STATES)
        raise UsageError(f"--state: purge removes only finished messages, not {bad!r}", hint="states: sent, failed, expired")
    # batches commit to the WAL (NORMAL): a power cut may bring back the last batch, to purge again
    with open_outbox(ctx, outbox, synchronous="NORMAL") as box:
        count = box.purge(seconds, states)
        space = box.reclaim_space(vacuum=vacuum) if count or vacuum else None
    if app.use_json(json_):
        app.output.json({"purged": count, "older_than_seconds": seconds, "states": states, "space": space})
        return
    app.output.info(f"Purged {count} message(s) ({', '.join(states)}) finished more than {seconds / 86400:g} day(s) ago.")
    if space is not None:
        _render_space(app, space)


def _render_space(app, space: dict) -> None:
    """What reclaim_space() did, in one or two lines on stderr."""
    def mb(n: int | None) -> str:
        return "?" if n is None else f"{n / 1e6:.1f} MB"

    how = {"incremental": "incremental vacuum", "vacuum": "VACUUM", "none": "nothing to do"}[space["method"]]
    app.output.info(f"Space: {mb(space['before_bytes'])} -> {mb(space['after_bytes'])} (freed {mb(space['freed_bytes'])};"
                    f" {how}).")
    if space.get("note"):
        app.output.info(f"Note: {space['note']}")
