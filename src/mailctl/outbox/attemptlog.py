"""One line per delivery attempt, msmtp's logfile idea: `[settings] attempt_log` = "stderr",
"syslog" (facility mail, ident mailctl) or an absolute file path (appended, mode 0600: it
names addresses; one write a line, so several processes can share the file). Empty: off.

    2026-05-09T10:30:00+00:00 attempt id=42 profile=relay server=smtp.example.com:587 tls=TLSv1.3
      auth=PLAIN from=app@example.com recipients=user@example.org size=1532 outcome=sent
      reply="250 2.0.0 Ok: queued as 4Xyz" duration=0.084

(one line). The flush (flush.py) calls AttemptLog.record() for every result it commits:
sent, deferred, failed and expired, whether from `queue flush`, `queue worker`, `send` or
`sendmail`. The message's bytes never go there, only its size."""

from __future__ import annotations

import os
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from mailctl.errors import ConfigError

_LEVEL = {"sent": "info", "deferred": "warning", "failed": "error", "expired": "error"}
_PRIORITY = {"info": 6, "warning": 4, "error": 3}


def _value(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        value = round(value, 3)
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    text = str(value).replace("\r", " ").replace("\n", " ")
    if any(c in text for c in ' "=\\'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def transport_security(transport: Any, profile: Any) -> tuple[str, str]:
    """(tls, auth) of a session: the TLS version and the SASL mechanism when the transport is
    open and says (SMTP), else what the profile asks for (security, auth)."""
    tls = auth = ""
    if transport is not None:
        if getattr(transport, "encrypted", False):
            sock = getattr(getattr(transport, "session", None), "sock", None)
            try:
                tls = (sock.version() or "on") if sock is not None and hasattr(sock, "version") else "on"
            except Exception:  # a socket that closed meanwhile
                tls = "on"
        elif getattr(transport, "security", None) is not None:
            tls = "off"
        auth = getattr(transport, "auth_mechanism", None) or ""
    values = getattr(profile, "values", None) or {}
    if not tls:
        security = values.get("security")
        kind = values.get("type") or "smtp"
        tls = ({"none": "off"}.get(security, security) if kind == "smtp" and security
               else "https" if kind in ("graph", "ews", "gmail-api", "gmail_api") else "")
    if not auth:
        auth = str(values.get("auth") or "")
        if auth == "none":
            auth = "off"
    return tls, auth


class AttemptLog:
    """Where the attempt lines go (see the module docstring)."""

    def __init__(self, target: str) -> None:
        self.target = target.strip()
        self.lock = threading.Lock()
        self._syslog: Any = None
        if self.target in ("stderr", "syslog"):
            if self.target == "syslog":
                try:
                    import syslog
                except ImportError:  # Windows
                    raise ConfigError("attempt_log = \"syslog\": there is no syslog on this system",
                                      hint="use \"stderr\" or a file path") from None
                syslog.openlog("mailctl", syslog.LOG_PID, syslog.LOG_MAIL)
                self._syslog = syslog
            return
        path = Path(self.target).expanduser()
        if not path.is_absolute():
            raise ConfigError(f"attempt_log = {self.target!r}: not stderr, syslog or an absolute file path",
                              hint="mailctl settings set attempt_log /var/log/mailctl/attempts.log")
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"attempt_log {path}: {exc.strerror or exc}",
                              hint="the file (or its directory) must be writable by this user") from None
        self.fd = fd

    def close(self) -> None:
        if getattr(self, "fd", None) is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None

    def record(self, *, id: int, profile: str | None, server: str | None, tls: str, auth: str, sender: str,
               recipients: Sequence[str], size: int, outcome: str, reply: str, duration: float | None) -> None:
        fields = [("id", id), ("profile", profile), ("server", server), ("tls", tls), ("auth", auth),
                  ("from", sender or "<>"), ("recipients", list(recipients)), ("size", size), ("outcome", outcome),
                  ("reply", reply), ("duration", duration)]
        text = "attempt " + " ".join(f"{k}={_value(v)}" for k, v in fields)
        level = _LEVEL.get(outcome, "info")
        try:
            if self._syslog is not None:
                self._syslog.syslog(_PRIORITY[level] | self._syslog.LOG_MAIL, text)
                return
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            if self.target == "stderr":
                line = (f"<{_PRIORITY[level]}>{text}" if os.environ.get("JOURNAL_STREAM") else f"{stamp} {text}")
                with self.lock:
                    sys.stderr.write(line + "\n")
                    sys.stderr.flush()
                return
            if self.fd is not None:
                os.write(self.fd, f"{stamp} {text}\n".encode("utf-8", "replace"))  # O_APPEND: one write, one line
        except (OSError, ValueError):  # a log that cannot be written must not stop a delivery
            pass
