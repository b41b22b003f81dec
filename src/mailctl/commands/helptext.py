"""The one-line help of a command, as every command list shows it (--help, the completion
scripts' descriptions, the man pages): its explicit short_help, else the first sentence of its
help whole. Click would cut that at ~45 characters with "..." (`hold  Keep queued/deferred
messages from being sent until released...`); the list wraps it instead. Kept apart from
mailctl.commands.reference so that --help loads only this."""

from __future__ import annotations

from typing import Any

__all__ = ["short_help", "format_commands"]


def short_help(cmd: Any) -> str:
    """The command's short help: its explicit short_help, else the first sentence of its help
    whole (Click would cut it at ~45 characters with "..."; the command list wraps it instead)."""
    if getattr(cmd, "short_help", None):
        return " ".join(cmd.short_help.split())
    text = (getattr(cmd, "help", None) or "").split("\n\n", 1)[0]
    words = [w for w in text.split() if w != "\b"]
    for i, word in enumerate(words):
        if word.endswith(".") and not word.endswith(("e.g.", "i.e.", "etc.")):
            return " ".join(words[: i + 1])
    return " ".join(words)


def format_commands(group: Any, ctx: Any, formatter: Any) -> None:
    """The "Commands:" section of a group's --help with short_help() for each command."""
    rows = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is not None and not getattr(cmd, "hidden", False):
            rows.append((name, short_help(cmd)))
    if rows:
        with formatter.section("Commands"):
            formatter.write_dl(rows)
