"""`mailctl config`: which profiles file, outbox and data dir are in use, and why."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from mailctl.commands._common import JsonOpt, OutboxOpt, app_context


def register(app: typer.Typer, name: str) -> None:
    app.command(name)(config)


def config(ctx: typer.Context, outbox: OutboxOpt = None, json_: JsonOpt = False) -> None:
    """Show which profiles file, outbox and data dir are in use and why (the lookup order:
    --config / $MAILCTL_CONFIG, the user file, the system file). Exit 78 when the profiles
    file in use cannot be read (a named file that does not exist, malformed TOML)."""
    from mailctl.errors import MailctlError

    actx = app_context(ctx)
    data = actx.locations(outbox)
    problem: Optional[MailctlError] = None
    try:
        doc = actx.store.load()
        data["profiles"].update(count=len(doc.profile_names()), default=doc.default)
    except MailctlError as exc:
        problem = exc
        data["profiles"].update(error=exc.message, hint=exc.hint)
    if actx.use_json(json_):
        actx.output.json(data, exit_code=0 if problem is None else int(problem.exit_code))
    else:
        _render(actx.output, data)
    if problem is not None:
        raise typer.Exit(int(problem.exit_code))


def _render(out, data: dict) -> None:
    prof = data["profiles"]
    state = "" if prof["exists"] else " (does not exist)"
    rows = [("profiles", prof["path"] + state, prof["reason"])]
    if "count" in prof:
        default = f", default {prof['default']}" if prof.get("default") else ""
        rows.append(("", f"{prof['count']} profile(s){default}", ""))
    for item in prof["searched"]:
        rows.append(("", f"looked at {item['path']}", f"{item['what']}: {'found' if item['exists'] else 'not found'}"))
    for key, label in (("outbox", "outbox"), ("data_dir", "data dir"), ("maildir", "local maildir")):
        rows.append((label, data[key]["path"], data[key]["reason"]))
    out.table(("what", "path", "why"), rows)
    if prof.get("error"):
        out.error(prof["error"], prof.get("hint"))
