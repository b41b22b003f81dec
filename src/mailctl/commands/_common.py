"""Options and helpers shared by command modules (Annotated aliases, context access)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from mailctl.context import AppContext

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (docs/json.md; an error too).")]
JsonLinesOpt = Annotated[bool, typer.Option("--json", help="JSON Lines on stdout: one object per record (docs/json.md; ignore unknown fields).")]
"""--json of a listing (profile list, profile lint, auth status, queue list): JSON Lines."""
OutboxOpt = Annotated[
    Optional[str],
    typer.Option("--outbox", metavar="PATH", help="Outbox file (default: $MAILCTL_OUTBOX, else the data dir)."),
]


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


# The profile argument in its variants (the help text differs with what the command does with
# the default; README's reference is generated from it).
ProfileArg = Annotated[
    Optional[str],
    typer.Argument(help="Profile (default: --profile or the default profile).", autocompletion=complete_profile_name, show_default=False),
]
"""An optional profile, defaulting to --profile or the default one (auth)."""
TestProfileArg = Annotated[
    Optional[str],
    typer.Argument(help="Profile to test (default: --profile, the default profile, or the built-in local profile).", autocompletion=complete_profile_name, show_default=False),
]
"""An optional profile that may also be the built-in local profile (test connect/send)."""
ProfileNameArg = Annotated[str, typer.Argument(metavar="NAME", help="Profile name.", autocompletion=complete_profile_name)]
"""A required name of an existing profile (profile show/edit/delete...)."""
