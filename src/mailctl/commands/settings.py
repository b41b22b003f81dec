"""`mailctl settings show|set|unset`: the [settings] table of the profiles file (outbox
policy: sending_enabled, retries, retention, rate limits, postmaster)."""

from __future__ import annotations

from typing import Annotated

import typer

from mailctl.commands._common import JsonOpt, app_context
from mailctl.profiles import operations as ops

settings_app = typer.Typer(
    help="Show and change the [settings] table of the profiles file (sending_enabled, retries, retention, rate limits).",
    no_args_is_help=True,
)


def register(app: typer.Typer, name: str) -> None:
    app.add_typer(settings_app, name=name)


def _complete_key(incomplete: str) -> list[str]:
    from mailctl.profiles.model import SETTINGS_FIELDS

    return [f.name for f in SETTINGS_FIELDS if f.name.startswith(incomplete)]


KeyArg = Annotated[str, typer.Argument(metavar="KEY", help="A setting (see: mailctl settings show).", autocompletion=_complete_key)]


def _shown(value) -> str:
    return "true" if value is True else "false" if value is False else str(value)


@settings_app.command("show")
def show(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Every setting: its value, and whether the file sets it or it is the default."""
    actx = app_context(ctx)
    data = ops.show_settings(actx.store)
    if actx.use_json(json_):
        actx.output.json(data)
        return
    actx.output.table(
        ("setting", "value", "from", "meaning"),
        [(k, _shown(v), data["origin"][k], data["help"][k]) for k, v in data["settings"].items()],
        title=f"[settings] in {data['file']}",
    )


@settings_app.command("set")
def set_(
    ctx: typer.Context,
    key: KeyArg,
    value: Annotated[str, typer.Argument(metavar="VALUE", help="The new value (true/false, a number, a duration like 2d).")],
    json_: JsonOpt = False,
) -> None:
    """Set KEY to VALUE, e.g. `mailctl settings set sending_enabled false`."""
    actx = app_context(ctx)
    result = ops.set_setting(actx.store, key, value)
    if actx.use_json(json_):
        actx.output.json(result)
    else:
        actx.output.info(f"{result['key']} = {_shown(result['value'])} (in {result['file']}).")


@settings_app.command("unset")
def unset(ctx: typer.Context, key: KeyArg, json_: JsonOpt = False) -> None:
    """Remove KEY from the file: the default applies again."""
    actx = app_context(ctx)
    result = ops.unset_setting(actx.store, key)
    if actx.use_json(json_):
        actx.output.json(result)
    else:
        actx.output.info(f"{result['key']} is the default again ({_shown(result['value'])}).")
