"""`mailctl completion show / install`: the static completion scripts (no Python per Tab),
rendered from the installed commands by mailctl.commands.shellscripts."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from mailctl.commands._common import JsonOpt, app_context
from mailctl.errors import UsageError

completion_app = typer.Typer(
    help="Shell completion for bash, zsh and fish that starts no Python on Tab: show it, or install it where the shell looks.",
    no_args_is_help=True,
)


def _complete_shell(incomplete: str) -> list[str]:
    from mailctl.commands.shellscripts import SHELLS

    return [s for s in SHELLS if s.startswith(incomplete)]


ShellOpt = Annotated[
    Optional[str],
    typer.Option("--shell", metavar="bash|zsh|fish", help="The shell (default: the one $SHELL names).", autocompletion=_complete_shell),
]


def register(app: typer.Typer, name: str) -> None:
    app.add_typer(completion_app, name=name)


def _shell(given: Optional[str]) -> str:
    """--shell, else the shell $SHELL names."""
    from mailctl.commands.shellscripts import SHELLS

    shell = given or os.path.basename(os.environ.get("SHELL", ""))
    if shell not in SHELLS:
        what = f"--shell {given!r}" if given else f"$SHELL ({os.environ.get('SHELL') or 'not set'})"
        raise UsageError(f"{what}: no completion for that shell", hint="give --shell bash, --shell zsh or --shell fish")
    return shell


def _script(ctx: typer.Context, shell: str) -> str:
    from mailctl.commands.shellscripts import render

    return render(ctx.find_root().command, shell)


@completion_app.command("show")
def show(ctx: typer.Context, shell: ShellOpt = None) -> None:
    """Print the completion script for the shell (to package it, or to source it by hand)."""
    out = app_context(ctx).output
    out.stdout.write(_script(ctx, _shell(shell)))
    out.stdout.flush()


@completion_app.command("install")
def install(ctx: typer.Context, shell: ShellOpt = None, json_: JsonOpt = False) -> None:
    """Write the completion script where the shell finds it on its own, and print that path;
    no rc file is edited. bash: bash-completion's user dir
    (~/.local/share/bash-completion/completions/mailctl); zsh:
    ~/.local/share/zsh/site-functions/_mailctl (that dir must be in $fpath); fish:
    ~/.config/fish/completions/mailctl.fish. Running it again rewrites the file only when the
    script changed (after an upgrade)."""
    from mailctl.commands.shellscripts import install_path, write_if_changed

    app = app_context(ctx)
    name = _shell(shell)
    path = install_path(name)
    written = write_if_changed(path, _script(ctx, name))
    if app.use_json(json_):
        app.output.json({"shell": name, "path": path, "changed": written})
        return
    app.output.line(path)
    app.output.info(f"{'Installed' if written else 'Already current:'} {name} completion for mailctl; it applies in new shells.")
    if name == "zsh":
        app.output.info(f"If {os.path.dirname(path)} is not in $fpath, add to ~/.zshrc before compinit: "
                        f"fpath=({os.path.dirname(path)} $fpath)")
    if name == "bash":
        app.output.info("It needs the bash-completion package (it loads scripts from that dir on first Tab).")
