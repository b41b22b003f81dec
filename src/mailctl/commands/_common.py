"""Options and helpers shared by command modules (Annotated aliases, context access)."""

from __future__ import annotations

from typing import Annotated

import typer

from mailctl.context import AppContext

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


def app_context(ctx: typer.Context) -> AppContext:
    """The AppContext from the root callback (or a fresh one when a command runs alone)."""
    root = ctx.find_root()
    if not isinstance(root.obj, AppContext):
        root.obj = AppContext()
    return root.obj


def complete_profile_name(incomplete: str) -> list[str]:
    """Dynamic shell completion of profile names (reads the profiles file, never secrets)."""
    try:
        from mailctl.profiles.store import ProfileStore
        from mailctl.paths import config_path

        names = ProfileStore(config_path()).load().profile_names()
    except Exception:  # completion must never fail loudly
        return []
    return [n for n in names if n.startswith(incomplete)]
