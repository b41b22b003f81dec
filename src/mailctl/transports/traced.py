"""A transport as `mailctl -v` shows it: how long connecting, each message and the whole
session took (-v), and the conversation as it happens (-vv), redacted by the transport's own
Redactor (SMTP and LMTP record through a TranscriptRecorder; Graph, EWS and the Gmail API
report their HTTP steps through their `trace` hook).

The sink is a plain callable trace(level, text) (AppContext.verbose): nothing here knows
about terminals."""

from __future__ import annotations

import time
from typing import Any, Callable

from mailctl.transports.base import TranscriptRecorder, get_transport_class, open_transport

Trace = Callable[[int, str], None]
"""trace(level, text): level 1 for -v, 2 for -vv."""


class LiveTranscript(TranscriptRecorder):
    """A TranscriptRecorder that hands each line on at once (-vv) instead of keeping it: a
    flush of thousands of messages holds no transcript in memory. Lines are redacted before
    they leave, exactly as the stored transcript of `mailctl test --transcript` is."""

    def __init__(self, trace: Trace) -> None:
        super().__init__()
        self._trace = trace

    def add(self, direction: str, text: str) -> None:
        self._trace(2, f"{direction}: {self.redact(text)}")


def _ms(since: float) -> str:
    return f"{(time.perf_counter() - since) * 1000:.0f} ms"


class TimedTransport:
    """Wraps an unopened transport: says how long open(), each send() and the session took.
    Everything else (server, while_waiting, ...) is the wrapped transport's."""

    def __init__(self, inner: Any, trace: Trace) -> None:
        self._inner = inner
        self._trace = trace
        self._opened: float | None = None
        self._sent = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _where(self) -> str:
        server = getattr(getattr(self._inner, "server", None), "address", None)
        return str(server or getattr(self._inner, "target", None) or getattr(self._inner, "name", "the server"))

    def open(self) -> None:
        start = self._opened = time.perf_counter()
        try:
            self._inner.open()
        except BaseException:
            self._trace(1, f"connecting to {self._where()} failed after {_ms(start)}")
            raise
        self._trace(1, f"connected to {self._where()} in {_ms(start)}")

    def send(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            result = self._inner.send(*args, **kwargs)
        except BaseException:
            self._trace(1, f"sending to {self._where()} failed after {_ms(start)}")
            raise
        self._sent += 1
        self._trace(1, f"sent in {_ms(start)}")
        return result

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            if self._opened is not None:
                count = f"{self._sent} message{'s' if self._sent != 1 else ''}"
                self._trace(1, f"closed {self._where()}: {count}, total {_ms(self._opened)}")
                self._opened = None

    def __enter__(self) -> "TimedTransport":
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def traced_transport(profile: Any, secrets: Any, trace: Trace | None) -> Any:
    """open_transport(profile, secrets), timed and with its live transcript when `trace` is
    given; exactly open_transport's transport when it is None."""
    if trace is None:
        return open_transport(profile, secrets)
    cls = get_transport_class(profile.type)
    options: dict[str, Any] = {}
    if getattr(cls, "records_transcript", False):
        options["recorder"] = LiveTranscript(trace)
    elif _takes(cls, "trace"):  # Graph, EWS, Gmail API: (stage, detail, seconds)
        options["trace"] = lambda stage, detail, seconds: trace(2, f"{stage}: {detail} ({seconds * 1000:.0f} ms)")
    return TimedTransport(open_transport(profile, secrets, **options), trace)


def _takes(cls: type, name: str) -> bool:
    import inspect  # only under -v

    try:
        return name in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
