"""The outbox as metrics for Prometheus: `mailctl queue stats --format openmetrics` (and
`--output FILE` for node_exporter's textfile collector). Gauges, all read from the outbox at
the moment (nothing is kept between runs):

* mailctl_outbox_messages{state}: messages by state (every state, zeros included);
* mailctl_outbox_partially_failed_messages / _recipients: sent or waiting, some recipients
  refused for good;
* mailctl_outbox_oldest_queued_age_seconds: the oldest message still to send (queued,
  deferred or sending; 0 when there is none), and ..._oldest_held_age_seconds;
* mailctl_outbox_attempts{outcome}: entries of the attempt log by outcome (they go when
  their message is purged), and mailctl_outbox_attempts_last_hour{outcome};
* mailctl_outbox_up: 1 (the outbox could be read).

The text is valid OpenMetrics (it ends with `# EOF`) and Prometheus text format 0.0.4
(which reads the `# EOF` line as a comment), so one output serves both."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from mailctl.outbox.store import ATTEMPT_OUTCOMES, STATES


def collect(box: Any) -> dict[str, Any]:
    now = box.clock()
    stats = box.stats(top=1)
    oldest = box.oldest_created(("queued", "deferred", "sending"))
    held = box.oldest_created(("held",))
    return {
        "messages": {s: stats["by_state"].get(s, 0) for s in STATES},
        "partially_failed_messages": stats.get("partially_failed", 0),
        "partially_failed_recipients": stats.get("partially_failed_recipients", 0),
        "oldest_queued_age_seconds": 0.0 if oldest is None else max(0.0, now - oldest),
        "oldest_held_age_seconds": 0.0 if held is None else max(0.0, now - held),
        "attempts": box.attempt_counts(),
        "attempts_last_hour": box.attempt_counts(now - 3600),
    }


def _gauge(lines: list[str], name: str, help_text: str, samples: list[tuple[str, float]], unit: str = "") -> None:
    lines.append(f"# TYPE {name} gauge")
    if unit:
        lines.append(f"# UNIT {name} {unit}")
    lines.append(f"# HELP {name} {help_text}")
    for labels, value in samples:
        number = f"{value:.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(int(value))
        lines.append(f"{name}{labels} {number}")


def render_openmetrics(data: dict[str, Any]) -> str:
    lines: list[str] = []
    _gauge(lines, "mailctl_outbox_up", "1: the outbox was read.", [("", 1)])
    _gauge(lines, "mailctl_outbox_messages", "Messages in the outbox by state.",
           [(f'{{state="{s}"}}', data["messages"].get(s, 0)) for s in STATES])
    _gauge(lines, "mailctl_outbox_partially_failed_messages",
           "Messages sent (or waiting) with some recipients refused for good.", [("", data["partially_failed_messages"])])
    _gauge(lines, "mailctl_outbox_partially_failed_recipients",
           "Recipients refused for good in partly failed messages.", [("", data["partially_failed_recipients"])])
    _gauge(lines, "mailctl_outbox_oldest_queued_age_seconds",
           "Age of the oldest message still to send (queued, deferred, sending); 0 when none.",
           [("", float(data["oldest_queued_age_seconds"]))], unit="seconds")
    _gauge(lines, "mailctl_outbox_oldest_held_age_seconds", "Age of the oldest held message; 0 when none.",
           [("", float(data["oldest_held_age_seconds"]))], unit="seconds")
    _gauge(lines, "mailctl_outbox_attempts", "Attempt log entries by outcome (removed when their message is purged).",
           [(f'{{outcome="{o}"}}', data["attempts"].get(o, 0)) for o in ATTEMPT_OUTCOMES])
    _gauge(lines, "mailctl_outbox_attempts_last_hour", "Attempt log entries of the last hour by outcome.",
           [(f'{{outcome="{o}"}}', data["attempts_last_hour"].get(o, 0)) for o in ATTEMPT_OUTCOMES])
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def write_atomically(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory and a rename,
    so a collector never reads half a file (node_exporter's textfile collector)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=str(target.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # metrics, no message content: the collector runs as another user
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
