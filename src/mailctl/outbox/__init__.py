"""The outbox: a queue that applications fill and `mailctl queue flush` empties; an SQLite
file on one host, or a PostgreSQL database (a postgresql:// URL) shared by many.

For applications::

    from mailctl.outbox import open_outbox

    with open_outbox() as box:                 # MAILCTL_OUTBOX, else the data dir (file or URL)
        box.enqueue(raw_bytes, "app@example.com", ["user@example.org"], profile="company")
        box.enqueue_message(email_message)     # envelope from its headers, Bcc stripped

    # or, one call:
    from mailctl.outbox import enqueue_message
    enqueue_message(msg, profile="company")

A cron job then runs `mailctl queue flush`. See docs/outbox.md.
"""

from __future__ import annotations

from email.message import Message
from typing import Sequence

from mailctl.outbox.backend import FlushStore
from mailctl.outbox.flush import (
    FlushOptions,
    FlushPolicy,
    FlushReport,
    FlushRun,
    backoff_delay,
    flush,
)
from mailctl.outbox.locate import open_outbox, outbox_location
from mailctl.outbox.store import FINISHED_STATES, PENDING_STATES, STATES, ClaimedMessage, MessageInfo, Outbox


def enqueue(raw: bytes, sender: str, recipients: Sequence[str], profile: str | None = None, *, path=None) -> int:
    """Queue raw bytes in the default outbox (or `path`); returns the queue id. Opens the file
    for this one message and syncs it to disk (synchronous=FULL); keep an Outbox open for many."""
    with open_outbox(path, synchronous="FULL") as box:
        return box.enqueue(raw, sender, recipients, profile)


def enqueue_message(msg: Message, profile: str | None = None, *, path=None, sender: str | None = None,
                    recipients: Sequence[str] | None = None) -> int:
    """Queue an email.message.EmailMessage in the default outbox (or `path`); returns the queue
    id. One message, synced to disk (synchronous=FULL), like enqueue()."""
    with open_outbox(path, synchronous="FULL") as box:
        return box.enqueue_message(msg, profile, sender=sender, recipients=recipients)


__all__ = [
    "Outbox", "MessageInfo", "ClaimedMessage", "STATES", "PENDING_STATES", "FINISHED_STATES",
    "enqueue", "enqueue_message", "flush", "FlushPolicy", "FlushOptions", "FlushReport", "backoff_delay",
    "FlushRun", "FlushStore", "open_outbox", "outbox_location",
]
