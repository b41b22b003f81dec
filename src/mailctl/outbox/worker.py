"""The queue worker: a long-running flush (`mailctl queue worker`).

A worker runs rounds: one `FlushRun` (flush.py) per round, with the settings of the moment
(the enable switch, rate limits, batches and the retention purge apply to every round), then
waits for mail to send: on PostgreSQL it wakes at once when mail is queued, released or
retried (LISTEN/NOTIFY, PgOutbox.wait_for_mail) or when the next deferred message falls due;
on SQLite it looks every second (Outbox.wait_for_mail: a new id, or a message that became
due); either way it starts a round at least every `interval`.

Signals (installed by `Worker.run()` in the main thread):

* SIGTERM, SIGINT: stop. The message in flight is finished and its result committed, the
  other claimed rows are given back at once (no waiting for a lease), the transports are
  closed, and the worker returns 0.
* SIGHUP: read the profiles file again (settings, profiles) before the next round; a file
  that does not load is reported and the previous configuration is kept.

`--concurrency N` runs N lanes, each a thread with its own outbox handle and transports,
claiming disjoint rows like N flushes would. A lane whose outbox fails (a dropped database
connection, a locked file) closes it and opens it again before the next round; after
`max_failures` failed rounds in a row the worker stops and returns the error (exit non-zero,
for systemd's Restart=on-failure). Nothing is lost either way: what the lane held is claimed
again (on PostgreSQL at once, as its session is gone).

Everything it says goes through an `EventLog`: one line per event on stderr, `key=value`
text (with a syslog priority prefix when stderr is the journal) or JSON. No typer here: the
command (commands/queue.py) only parses its options and builds a Worker."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, TextIO

from mailctl.errors import ExitCode, MailctlError
from mailctl.outbox.flush import DEFAULT_LEASE, FlushOptions, FlushPolicy, FlushReport, FlushRun, SharedRateLimits

DEFAULT_INTERVAL = 20.0
MAX_FAILURES = 5  # rounds in a row whose outbox failed before the worker gives up
_PRIORITY = {"debug": 7, "info": 6, "notice": 5, "warning": 4, "error": 3}


@dataclass
class WorkerOptions:
    interval: float = DEFAULT_INTERVAL  # longest wait between two rounds
    profile: str | None = None  # only this profile's mail (and unassigned mail, for the default)
    concurrency: int = 1  # lanes: parallel flushes in this process
    connections: int = 1  # sessions per profile within each lane's round (FlushOptions.connections)
    hold_backlog: bool | None = None  # None: the hold_backlog_at_start setting
    lease_seconds: float = DEFAULT_LEASE
    max_failures: int = MAX_FAILURES
    poll: float = 1.0  # SQLite: how often a wait looks for new mail
    # rows a lane claims at a time: few, so that the lanes and the other workers share a burst
    # (a flush claims 100); a claim is one short transaction, ~1 % of a message's cost
    claim_size: int = 10


@dataclass
class WorkerConfig:
    """What a SIGHUP reloads: the policy from [settings] and how to reach the profiles."""

    policy: FlushPolicy
    resolve: Callable[[str | None], Any]
    open_transport: Callable[[Any], Any]
    settings: dict[str, Any]


class EventLog:
    """One line per event. text: `event key=value ...` (values with spaces quoted), prefixed
    with `<N>` (the syslog priority journald reads) when stderr is the journal, else with the
    time; json: one object a line with time, level, event and the fields. quiet: warnings
    and errors only."""

    def __init__(self, stream: TextIO | None = None, fmt: str = "text", *, journald: bool | None = None,
                 quiet: bool = False) -> None:
        if fmt not in ("text", "json"):
            raise ValueError(fmt)
        self.stream = stream
        self.fmt = fmt
        self.quiet = quiet  # only warnings and errors (mailctl -q)
        self.journald = bool(os.environ.get("JOURNAL_STREAM")) if journald is None else journald
        # re-entrant: a signal handler that logs may run while this thread is inside a write
        self.lock = threading.RLock()

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        if self.quiet and _PRIORITY.get(level, 6) > _PRIORITY["warning"]:
            return
        fields = {k: v for k, v in fields.items() if v is not None}
        if self.fmt == "json":
            stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
            line = json.dumps({"time": stamp, "level": level, "event": event, **fields}, default=str)
        else:
            text = " ".join([event] + [f"{k}={_logfmt(v)}" for k, v in fields.items()])
            if self.journald:
                line = f"<{_PRIORITY.get(level, 6)}>{text}"
            else:
                line = f"{datetime.now().astimezone().isoformat(timespec='seconds')} {level} {text}"
        stream = self.stream or sys.stderr
        with self.lock:
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):  # a closed stderr must not stop the worker
                pass


def _logfmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        value = round(value, 3)
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    text = str(value).replace("\r", " ").replace("\n", " ")
    if text == "" or any(c in text for c in ' "=\\'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


class Worker:
    """Rounds of flushes until asked to stop; see the module docstring.

    `open_store()` opens a new handle on the outbox (one per lane, again after a failure);
    `load_config()` reads the profiles file (at start and on SIGHUP)."""

    def __init__(self, open_store: Callable[[], Any], load_config: Callable[[], WorkerConfig],
                 options: WorkerOptions | None = None, *, log: Callable[..., None] | None = None,
                 location: str = "") -> None:
        self.open_store = open_store
        self.load_config = load_config
        self.options = options or WorkerOptions()
        self.log = log or EventLog()
        self.location = location
        self.started_at = time.time()
        self._stop = threading.Event()
        self._reload_asked = 0  # SIGHUPs so far
        self._reloaded = 0  # SIGHUPs applied
        self._config_lock = threading.Lock()
        self._config: WorkerConfig | None = None
        self.fatal: MailctlError | None = None
        self.stop_reason: str | None = None
        self.totals = {"rounds": 0, "sent": 0, "deferred": 0, "failed": 0, "expired": 0}
        # lanes share their rate limiters, so N lanes together keep the limits (reset by a reload)
        self.shared_limits = SharedRateLimits() if self.options.concurrency > 1 else None

    # control ---------------------------------------------------------------------------
    def request_stop(self, reason: str = "stop") -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()

    def request_reload(self) -> None:
        self._reload_asked += 1

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _interrupted(self) -> bool:
        """A wait ends on a stop or a reload request."""
        return self._stop.is_set() or self._reload_asked != self._reloaded

    def config(self) -> WorkerConfig:
        """The configuration for the next round, read again after a SIGHUP."""
        with self._config_lock:
            asked = self._reload_asked
            if self._config is None:
                self._config = self.load_config()
            elif asked != self._reloaded:
                try:
                    self._config = self.load_config()
                    if self.shared_limits is not None:
                        self.shared_limits = SharedRateLimits()
                    self.log("reload", "notice", sending_enabled=self._config.policy.sending_enabled)
                except MailctlError as exc:
                    self.log("reload-failed", "error", error=exc.message, hint=exc.hint,
                             note="keeping the previous configuration")
            self._reloaded = asked
            return self._config

    # the run ---------------------------------------------------------------------------
    def run(self, *, signals: bool = True) -> int:
        """Run until a stop signal (exit 0) or too many failed rounds (the error's exit code)."""
        restore = self.install_signal_handlers() if signals else (lambda: None)
        try:
            config = self.config()  # a broken profiles file at start: the error, exit 78
            self.open_store().close()  # an outbox that cannot be opened at all: its error now
            opts = self.options
            self.log("start", backend=_backend(self.location), outbox=self.location, interval=opts.interval,
                     concurrency=opts.concurrency, connections=opts.connections if opts.connections > 1 else None,
                     profile=opts.profile or "(all)", pid=os.getpid(),
                     sending_enabled=config.policy.sending_enabled)
            self.hold_backlog(config)
            if opts.concurrency <= 1:
                self.lane(0)
            else:
                lanes = [threading.Thread(target=self.lane, args=(k,), name=f"mailctl-worker-{k}", daemon=True)
                         for k in range(opts.concurrency)]
                for t in lanes:
                    t.start()
                while any(t.is_alive() for t in lanes):  # joined in slices: signals run in this thread
                    for t in lanes:
                        t.join(0.2)
        finally:
            restore()
        t = self.totals
        if self.fatal is not None:
            self.log("exit", "error", error=self.fatal.message, exit_code=int(self.fatal.exit_code), **t)
            return int(self.fatal.exit_code)
        self.log("stopped", "notice", reason=self.stop_reason, **t)
        return int(ExitCode.OK)

    def install_signal_handlers(self) -> Callable[[], None]:
        """SIGTERM/SIGINT stop, SIGHUP reloads; returns a function that puts the old ones back."""
        previous: dict[int, Any] = {}

        def on_stop(signum, frame):
            name = signal.Signals(signum).name
            if not self.stopping:
                self.log("stopping", "notice", signal=name,
                         note="finishing the message in flight; the other claimed messages go back")
            self.request_stop(name)

        def on_hup(signum, frame):
            self.request_reload()

        for sig, handler in ((signal.SIGTERM, on_stop), (signal.SIGINT, on_stop), (getattr(signal, "SIGHUP", None), on_hup)):
            if sig is not None:
                previous[sig] = signal.signal(sig, handler)

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def hold_backlog(self, config: WorkerConfig) -> None:
        """--hold-backlog / hold_backlog_at_start: what was queued before the start is held."""
        hold = self.options.hold_backlog
        if hold is None:
            hold = bool(config.settings.get("hold_backlog_at_start", False))
        if not hold:
            return
        store = self.open_store()
        try:
            held = store.hold_queued_before(self.started_at)
        finally:
            store.close()
        self.log("backlog-held", "notice", count=len(held),
                 first=held[0] if held else None, last=held[-1] if held else None,
                 hint="release it with: mailctl queue release --all" if held else None)

    def lane(self, k: int) -> None:
        """One lane: rounds and waits until a stop, reopening the outbox after a failure."""
        lane = k if self.options.concurrency > 1 else None
        store = None
        failures = 0
        last: dict[str, Any] = {}
        try:
            while not self.stopping:
                try:
                    config = self.config()
                    if store is None:
                        store = self.open_store()
                        if failures:
                            self.log("reconnected", "notice", lane=lane, outbox=self.location)
                    since_id, since = store.latest_id(), store.clock()
                    report = self.round(store, config)
                    failures = 0
                    self.report_round(report, config, lane, last)
                    if self.stopping:
                        break
                    # mail queued during the round (newer than `since`) ends the wait at once
                    store.wait_for_mail(self.options.interval, since_id=since_id, since=since,
                                        stop=self._interrupted, poll=self.options.poll)
                except Exception as exc:  # the outbox failed (connection dropped, file locked...)
                    failures += 1
                    err = self.describe(exc, store)
                    store = _close_quietly(store)
                    if failures >= self.options.max_failures:
                        self.log("failed", "error", lane=lane, error=err.message, failures=failures)
                        self.fatal = self.fatal or err
                        self.request_stop("failure")
                        break
                    delay = min(30.0, 2.0 ** (failures - 1))
                    self.log("round-failed", "error", lane=lane, error=err.message, hint=err.hint,
                             retry_in=delay, failures=failures)
                    self._stop.wait(delay)
        finally:
            _close_quietly(store)

    def round(self, store: Any, config: WorkerConfig) -> FlushReport:
        options = FlushOptions(profile=self.options.profile, lease_seconds=self.options.lease_seconds,
                               claim_size=self.options.claim_size, connections=self.options.connections)
        run = FlushRun(store, policy=config.policy, resolve=config.resolve, open_transport=config.open_transport,
                       options=options, stop=lambda: self.stopping, sleep=time.sleep,
                       shared_limits=self.shared_limits)
        report = run.run()
        t = self.totals
        t["rounds"] += 1
        for key in ("sent", "deferred", "failed", "expired"):
            t[key] += getattr(report, key)
        return report

    def report_round(self, report: FlushReport, config: WorkerConfig, lane: int | None, last: dict[str, Any]) -> None:
        """A line for a round that did something; a problem once, until it changes."""
        if not report.sending_enabled:
            if last.get("disabled") != report.due:
                self.log("sending-disabled", "warning", lane=lane, due=report.due,
                         hint="mailctl settings set sending_enabled true, then reload the worker (SIGHUP)")
            last["disabled"] = report.due
            return
        last.pop("disabled", None)
        rem = report.remaining
        if report.attempted or report.expired or report.purged or report.reclaimed or report.stopped:
            self.log("round", "info", lane=lane, sent=report.sent, deferred=report.deferred, failed=report.failed,
                     expired=report.expired, partially_failed=report.partially_failed or None,
                     reclaimed=report.reclaimed or None, purged=report.purged or None,
                     stopped=True if report.stopped else None, duration=report.duration,
                     queued=rem.get("queued", 0), waiting=rem.get("deferred", 0), held=rem.get("held", 0))
        if report.connections_capped and report.connections_capped != last.get("capped"):
            for name, most in report.connections_capped.items():
                self.log("connections-capped", "notice", lane=lane, profile=name, connections=most,
                         asked=self.options.connections, note="the profile's max_connections")
        last["capped"] = dict(report.connections_capped) or last.get("capped")
        problems = {name: err.message for name, err in report.config_errors.items()}
        problems.update({f"{name} (server)": msg for name, msg in report.profile_errors.items()})
        if problems != last.get("problems"):
            for name, err in report.config_errors.items():
                self.log("profile-problem", "error", lane=lane, profile=name, error=err.message, hint=err.hint,
                         left=report.left, note="its messages stay queued as they were")
            for name, msg in report.profile_errors.items():
                self.log("profile-unavailable", "warning", lane=lane, profile=name, error=msg)
        last["problems"] = problems

    @staticmethod
    def describe(exc: BaseException, store: Any) -> MailctlError:
        if isinstance(exc, MailctlError):
            return exc
        describe = getattr(store, "describe_error", None)
        err = describe(exc) if describe is not None else None
        if err is None:
            from mailctl.errors import TemporaryFailure

            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            err = TemporaryFailure(f"outbox: {type(exc).__name__}: {text}".rstrip(": "))
        return err


def _backend(location: str) -> str:
    from mailctl.outbox.locate import is_postgres_url

    return "postgresql" if is_postgres_url(location) else "sqlite"


def _close_quietly(store: Any) -> None:
    if store is not None:
        try:
            store.close()
        except Exception:  # a broken connection
            pass
    return None


def config_from_profiles(doc: Any, secrets: Any, trace: Callable[[int, str], None] | None = None) -> WorkerConfig:
    """A WorkerConfig from a loaded profiles document (what `mailctl queue worker` reloads).
    trace: mailctl -v / -vv, as `queue flush` has it (service.profile_flush): each profile
    used and why, the timings and at level 2 the redacted transcript."""
    from mailctl.outbox.service import _resolver
    from mailctl.transports.traced import traced_transport

    settings = dict(doc.settings())
    return WorkerConfig(
        policy=FlushPolicy.from_settings(settings),
        resolve=_resolver(doc, trace),
        open_transport=lambda profile: traced_transport(profile, secrets, trace),
        settings=settings,
    )
