"""`mailctl auth login | status | logout | token`: OAuth sign-in that works over SSH.

The flows live in mailctl.oauth; this module parses options and renders (instructions and the
countdown on stderr, results on stdout, JSON Lines with --json for login)."""

from __future__ import annotations

import sys
from typing import Annotated, Any, Optional

import typer

from mailctl.commands._common import JsonLinesOpt, JsonOpt, ProfileArg, app_context
from mailctl.errors import ExitCode

auth_app = typer.Typer(
    help="OAuth sign-in for Microsoft 365, Google and any OAuth 2.0 server (device code, paste/loopback, client credentials, service accounts).",
    no_args_is_help=True,
)


def register(app: typer.Typer, name: str) -> None:
    app.add_typer(auth_app, name=name)


def _load(ctx: typer.Context, name: Optional[str]):
    from mailctl.profiles.resolve import resolve_profile

    app = app_context(ctx)
    return app, resolve_profile(app.store.load(), name or app.profile_name)


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class TerminalUI:
    """Talks to the person signing in: instructions on stderr (or JSON lines on stdout), a
    countdown when stderr is a terminal, pasted addresses from stdin."""

    def __init__(self, output, json_mode: bool, profile: str) -> None:
        self.out = output
        self.json = json_mode
        self.profile = profile
        self.countdown = not json_mode and _isatty(output.stderr)
        self.read_line = sys.stdin.readline

    def _event(self, **data: Any) -> None:
        self.out.json_lines([data])

    def device_code(self, *, verification_uri: str, user_code: str, message: str, expires_in: float) -> None:
        if self.json:
            return self._event(event="device_code", profile=self.profile, verification_uri=verification_uri,
                               user_code=user_code, expires_in=int(expires_in), message=message)
        self.out.stderr.write(f"{message}\nThe code is valid for {_clock(expires_in)} minutes. Press Ctrl-C to cancel.\n")
        self.out.stderr.flush()

    def authorization_url(self, *, url: str, redirect_uri: str, port: int | None, listening: bool, note: str | None, wait: bool) -> None:
        if self.json:
            return self._event(event="authorization_url", profile=self.profile, authorization_url=url,
                               redirect_uri=redirect_uri, listening=listening, waiting=wait)
        lines = ["Open this address in a browser on any machine and sign in:", "", f"  {url}", ""]
        if wait:
            if listening:
                lines.append(f"If that browser runs on another machine, forward the port first: ssh -L {port}:127.0.0.1:{port} THIS-HOST")
            if note:
                lines.append(note)
            lines.append("Or paste here the address the browser ends on (http://localhost..., even if the page does not load), then press Enter:")
        else:
            lines.append("The browser ends on an http://localhost... address (the page may not load). Finish with:")
            lines.append(f"  mailctl auth login {self.profile} --redirect-url 'THAT-ADDRESS'")
        self.out.stderr.write("\n".join(lines) + "\n")
        self.out.stderr.flush()

    def rejected(self, line: str) -> None:
        # Never echo the line: it might be a secret typed at the wrong prompt.
        self.out.stderr.write("\nThat is not the address the browser ended on; paste the whole http://localhost...?state=...&code=... address:\n")
        self.out.stderr.flush()

    def tick(self, seconds_left: float) -> None:
        if self.countdown:
            self.out.stderr.write(f"\rWaiting for the sign-in: {_clock(seconds_left)} left (Ctrl-C cancels) ")
            self.out.stderr.flush()

    def done(self) -> None:
        if self.countdown:
            self.out.stderr.write("\r\033[K")
            self.out.stderr.flush()

    def open_browser(self, url: str) -> bool:
        import webbrowser

        try:
            return bool(webbrowser.open(url))
        except Exception:  # no browser: the URL is printed anyway
            return False


def _read_file(path: str) -> str:
    from mailctl.errors import NotFoundError

    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise NotFoundError(f"cannot read {path}: {exc.strerror or exc}") from None


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@auth_app.command("login")
def login(
    ctx: typer.Context,
    profile: ProfileArg = None,
    flow: Annotated[Optional[str], typer.Option("--flow", metavar="FLOW", help="Google and generic: paste (default without a browser), browser, device (generic: the default when device_authorization_url is set and no browser opens). Microsoft: device.")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Paste flow for scripts (Google, generic): print the URL and exit; finish with --redirect-url.")] = False,
    redirect_url: Annotated[Optional[str], typer.Option("--redirect-url", metavar="URL", help="Finish a --no-wait sign-in with the address the browser ended on.")] = None,
    port: Annotated[Optional[int], typer.Option("--port", min=1, max=65535, help="Loopback port for the redirect (fixed, for ssh -L).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=1, max=86400, help="Seconds to wait for the redirect.")] = 600,
    client_secret_stdin: Annotated[bool, typer.Option("--client-secret-stdin", help="Read the OAuth client secret (first line of stdin) and store it in the keyring first.")] = False,
    service_account_key: Annotated[Optional[str], typer.Option("--service-account-key", metavar="FILE", help="Google service account key JSON to store in the keyring first ('-' reads stdin).")] = None,
    json_: JsonLinesOpt = False,
) -> None:
    """Sign in and store the tokens (Microsoft: device code; Google and generic: paste/loopback, browser or device; app-only profiles: check the credentials)."""
    from mailctl.errors import UsageError
    from mailctl.oauth import flows

    app, prof = _load(ctx, profile)
    if client_secret_stdin:
        secret = sys.stdin.readline().strip()
        if not secret:
            raise UsageError("--client-secret-stdin: stdin was empty")
        app.secrets.store(prof.name, "client_secret", secret)
    if service_account_key:
        from mailctl.oauth.google import check_service_account_key

        text = sys.stdin.read() if service_account_key == "-" else _read_file(service_account_key)
        app.secrets.store(prof.name, "service_account_key", check_service_account_key(text))
    use_json = app.use_json(json_)
    ui = TerminalUI(app.output, use_json, prof.name)
    if client_secret_stdin or service_account_key == "-":
        ui.read_line = None  # stdin carried the secret
    try:
        result = flows.login(prof, app.secrets, ui, flow=flow, no_wait=no_wait, redirect_url=redirect_url, port=port, timeout=timeout)
    except KeyboardInterrupt:
        ui.done()
        app.output.stderr.write("\nSign-in cancelled; nothing was stored.\n")
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    ui.done()
    if use_json:
        return app.output.json_lines([{"event": "pending" if result.get("pending") else "signed_in", **result}])
    if result.get("pending"):
        return
    who = result.get("account") or "the app"
    expiry = result.get("access_token_expires_at") or "unknown"
    app.output.line(f"Profile {prof.name}: signed in as {who} ({result['provider']}, {result['flow']}); access token valid until {expiry}.")
    app.output.line("Refresh token stored: tokens renew on their own." if result.get("refresh_token") else "No refresh token (app-only or none issued).")
    for warning in result.get("warnings") or []:
        app.output.warn(warning)


@auth_app.command("status")
def status(
    ctx: typer.Context,
    profile: ProfileArg = None,
    no_check: Annotated[bool, typer.Option("--no-check", help="Only read what is stored; do not contact the identity provider.")] = False,
    check: Annotated[bool, typer.Option("--check", help="Also try the access token at the mail server (SMTP AUTH, or the Graph/EWS request of `test connect`); one it rejects is refreshed.")] = False,
    json_: JsonLinesOpt = False,
) -> None:
    """Whether each OAuth profile has access: account, scopes, token expiry, refresh token age, warnings. Exit 77 when a login is needed."""
    from mailctl.errors import UsageError
    from mailctl.oauth import flows

    if check and no_check:
        raise UsageError("--check and --no-check contradict each other", hint="give one of them")
    app = app_context(ctx)
    name = profile or app.profile_name
    if name:
        profiles = [_load(ctx, name)[1]]
    else:
        profiles = flows.oauth_profiles(app.store.load())
    rows = [flows.status(p, app.secrets, check=not no_check) for p in profiles]
    if check:
        for prof, row in zip(profiles, rows):
            if row["access"]:
                _with_server_check(row, _try_at_server(prof, app.secrets))
    needs = any(r["needs_login"] for r in rows)
    if app.use_json(json_):
        app.output.json_lines(rows)  # a listing: one status per profile (docs/json.md)
    elif not rows:
        app.output.info("No OAuth profiles (auth = oauth, client-credentials or service-account).")
    for row in rows if not app.use_json(json_) else []:
        _render_status(app.output, row)
    if needs:
        raise typer.Exit(int(ExitCode.NOPERM))
    codes = [r["error_exit_code"] for r in rows if r.get("error_exit_code")]
    if codes:
        raise typer.Exit(codes[0])


def _try_at_server(prof, secrets) -> dict[str, Any]:
    """Use the token as a send would: SMTP AUTH (then QUIT), or the harmless request of `test
    connect` for Graph and EWS. A token the server rejects is refreshed once and tried again
    by the transport itself; oauth.forced_refreshes() tells whether that happened. The
    identity provider alone cannot know that a server dropped a token early."""
    from mailctl.diagnostics.probe import probe
    from mailctl.errors import AuthError
    from mailctl.oauth import forced_refreshes, get_access_token

    quit_after = "auth" if prof.type == "smtp" else None
    with forced_refreshes() as refreshed:
        report = probe(prof, secrets, quit_after=quit_after, transcript=False)
        result: dict[str, Any] = {"server": report.server or report.target or None, "tried": True, "accepted": report.ok,
                                  "refreshed": False, "needs_login": False, "error": None, "hint": None}
        if _rejected(report) and not refreshed:
            # the server rejected the token and the transport could not refresh it (`test
            # connect`'s Graph/EWS request does not try; an SMTP refresh that failed): try here
            try:
                get_access_token(prof, secrets, force_refresh=True)
            except AuthError as exc:  # the refresh token is dead too
                why = exc.message.removeprefix(f"profile {prof.name!r}: ")
                result.update(accepted=False, needs_login=True, error=why, hint=exc.hint, exit_code=int(exc.exit_code))
                return result
            report = probe(prof, secrets, quit_after=quit_after, transcript=False)
    result.update(accepted=report.ok, refreshed=bool(refreshed))
    failed = report.failed_stage
    if report.ok:
        return result
    error = failed.error if failed else report.error
    hint = (failed.explanation.fix if failed and failed.explanation else None) or report.hint
    result.update(tried=_rejected(report), error=error, hint=hint, exit_code=failed.exit_code if failed else report.exit_code)
    return result


def _rejected(report) -> bool:
    """The server answered and refused the credentials (not: could not be reached)."""
    failed = report.failed_stage
    return failed is not None and failed.name in ("auth", "request", "response") and failed.exit_code == int(ExitCode.NOPERM)


def _with_server_check(row: dict[str, Any], result: dict[str, Any]) -> None:
    """Fold the server's verdict into a status row: rejected even after a refresh means no access."""
    row["server_check"] = result
    if result["accepted"]:
        if result["refreshed"]:
            row["warnings"].append(f"{result['server']} rejected the stored access token; a new one was fetched and accepted")
        return
    if result["needs_login"]:
        row.update(access=False, needs_login=True, error=f"{result['server']} rejected the access token, and {result['error']}",
                   hint=result["hint"])
    elif result["tried"]:
        row.update(access=False, error=f"{result['server']} rejects the access token, even a fresh one: {result['error']}",
                   hint=result["hint"], error_exit_code=result["exit_code"])
    else:
        row["warnings"].append(f"the token could not be tried at the mail server: {result['error']}")


def _render_status(out, row: dict) -> None:
    state = "yes" if row["access"] else ("NEEDS LOGIN" if row["needs_login"] else ("no" if row.get("server_check") else "unknown"))
    out.line(f"{row['profile']} ({row['provider']}, {row.get('flow') or row.get('auth')})")
    out.line(f"  access:               {state}")
    out.line(f"  account:              {row.get('account') or '-'}")
    out.line(f"  scopes:               {' '.join(row.get('scopes') or []) or '-'}")
    out.line(f"  access token expires: {row.get('access_token_expires_at') or '-'}")
    if row.get("refresh_token"):
        age = row.get("refresh_token_age_days")
        out.line(f"  refresh token:        present" + (f", {age:g} days since last renewal" if age is not None else ""))
    else:
        out.line("  refresh token:        none")
    checked = row.get("server_check")
    if checked and checked["accepted"]:
        out.line(f"  mail server:          accepted the token ({checked['server']})")
    if row.get("error"):
        out.line(f"  problem:              {row['error']}")
    if row.get("hint"):
        out.line(f"  hint:                 {row['hint']}")
    for warning in row.get("warnings") or []:
        out.line(f"  warning:              {warning}")


@auth_app.command("logout")
def logout(
    ctx: typer.Context,
    profile: ProfileArg = None,
    local_only: Annotated[bool, typer.Option("--local-only", help="Google, generic: remove the tokens here without revoking them.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Remove the profile's stored tokens; for Google, and generic profiles with revocation_url, also revoke them (unless --local-only)."""
    from mailctl.oauth import flows

    app, prof = _load(ctx, profile)
    result = flows.logout(prof, app.secrets, revoke=not local_only)
    if app.use_json(json_):
        return app.output.json(result)
    if not result["removed"]:
        app.output.line(f"Profile {prof.name}: no tokens were stored.")
    else:
        where = "Google" if result.get("provider") == "google" else "the authorization server"
        app.output.line(f"Profile {prof.name}: tokens removed" + (f" and revoked at {where}." if result.get("revoked") else "."))
    for key in ("warning", "note"):
        if result.get(key):
            app.output.warn(result[key])


@auth_app.command("token")
def token(
    ctx: typer.Context,
    profile: ProfileArg = None,
    force_refresh: Annotated[bool, typer.Option("--force-refresh", help="Get a new access token even if the stored one is still valid.")] = False,
    no_check: Annotated[bool, typer.Option("--no-check", help="Print the stored token without trying it at the mail server first.")] = False,
) -> None:
    """Print a fresh access token and nothing else (for msmtp's passwordeval or scripts). The token is first tried at the mail server (SMTP AUTH, a Graph/EWS request) and refreshed if the server rejects it."""
    from mailctl.errors import AuthError
    from mailctl.oauth import get_access_token

    app, prof = _load(ctx, profile)
    value = get_access_token(prof, app.secrets, force_refresh=force_refresh)
    if not (no_check or force_refresh):
        result = _try_at_server(prof, app.secrets)
        if result["needs_login"]:
            raise AuthError(f"profile {prof.name!r}: {result['server']} rejected the access token, and {result['error']}",
                            hint=result["hint"])
        if not result["accepted"] and result["tried"]:
            raise AuthError(f"profile {prof.name!r}: {result['server']} rejects the access token, even a fresh one: {result['error']}",
                            hint=result["hint"] or f"run: mailctl auth login {prof.name}")
        if not result["accepted"]:
            app.output.warn(f"the token was not tried at the mail server ({result['error']}); printing it anyway")
        value = get_access_token(prof, app.secrets)  # a new one when the server rejected the stored one
    app.output.line(value)
