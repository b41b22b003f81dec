"""Copying an outbox into another (`mailctl queue migrate --to`): SQLite to PostgreSQL and
back, or file to file. Ids, states, attempt counts and attempt logs are kept; it runs in
batches of whole messages (one transaction each in the destination) and is idempotent: run
again, it adds what is new and brings the destination's copies up to the source's state
(Outbox.import_batch). Messages only the destination has are left alone. Stop the flushes and
workers of the source first; a message one of them was sending comes over due again."""

from __future__ import annotations

from typing import Any, Callable

from mailctl.outbox.store import STATES


def copy_outbox(source: Any, dest: Any, *, batch: int = 500,
                progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Copy every message of `source` into `dest` (both open outboxes); returns the counts."""
    totals = {"messages": 0, "added": 0, "updated": 0, "unchanged": 0, "attempts": 0, "was_sending": 0}
    after = 0
    while True:
        messages, bodies, attempts = source.export_batch(after, batch)
        if not messages:
            break
        counts = dest.import_batch(messages, bodies, attempts)
        for key, value in counts.items():
            totals[key] += value
        totals["messages"] += len(messages)
        after = int(messages[-1]["id"])
        if progress is not None:
            progress(totals["messages"])
    src_counts, dst_counts = source.count_by_state(), dest.count_by_state()
    totals["source"] = {s: src_counts.get(s, 0) for s in STATES}
    totals["destination"] = {s: dst_counts.get(s, 0) for s in STATES}
    return totals
