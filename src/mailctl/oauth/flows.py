"""Sign-in orchestration for `mailctl auth`: pick the provider's flow, talk to the user
through a small UI object the command supplies (it renders; this module never prints)."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Protocol

from mailctl.errors import UsageError
from mailctl.oauth.scopes import app_only, provider_of, uses_oauth

GOOGLE_FLOWS = ("paste", "browser", "device")  # the generic provider's too
MICROSOFT_FLOWS = ("device",)


class LoginUI(Protocol):
    def device_code(self, *, verification_uri: str, user_code: str, message: str, expires_in: float) -> None: ...
    def authorization_url(self, *, url: str, redirect_uri: str, port: int | None, listening: bool, note: str | None, wait: bool) -> None: ...
    def tick(self, seconds_left: float) -> None: ...
    def open_browser(self, url: str) -> bool: ...
    read_line: Callable[[], str] | None


def browser_available(environ=None, platform: str | None = None) -> bool:
    """Can a browser open on this machine? Not over SSH, not without a display on Unix."""
    env = os.environ if environ is None else environ
    platform = platform or sys.platform
    if env.get("SSH_CONNECTION") or env.get("SSH_TTY"):
        return False
    if platform.startswith(("win", "darwin")):
        return True
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def oauth_profiles(doc) -> list:
    from mailctl.profiles.resolve import resolve_profile

    out = []
    for name in doc.profile_names():
        try:
            profile = resolve_profile(doc, name)
        except Exception:  # a broken profile is reported by `profile show`, not here
            continue
        if uses_oauth(profile):
            out.append(profile)
    return out


def login(
    profile,
    secrets,
    ui: LoginUI,
    *,
    flow: str | None = None,
    no_wait: bool = False,
    redirect_url: str | None = None,
    port: int | None = None,
    timeout: float = 600,
) -> dict[str, Any]:
    """Sign in (or, for app-only profiles, check the app credentials) and store the tokens.
    Returns the result as a dict; KeyboardInterrupt propagates with nothing stored."""
    if not uses_oauth(profile):
        raise UsageError(
            f"profile {profile.name!r} uses auth={profile.values.get('auth') or 'none'}, not OAuth",
            hint=f"switch it: mailctl profile edit {profile.name} --auth oauth",
        )
    provider = provider_of(profile)
    if provider == "microsoft":
        return _microsoft(profile, secrets, ui, flow=flow, no_wait=no_wait, redirect_url=redirect_url)
    if provider == "generic":
        return _generic(profile, secrets, ui, flow=flow, no_wait=no_wait, redirect_url=redirect_url, port=port, timeout=timeout)
    return _google(profile, secrets, ui, flow=flow, no_wait=no_wait, redirect_url=redirect_url, port=port, timeout=timeout)


def _microsoft(profile, secrets, ui, *, flow, no_wait, redirect_url) -> dict[str, Any]:
    from mailctl.oauth import microsoft

    if app_only(profile):
        return microsoft.login_client_credentials(profile, secrets).to_dict()
    if flow not in (None, "device") or no_wait or redirect_url:
        raise UsageError(
            "Microsoft sign-in uses the device code flow (--flow device): it works on a headless server",
            hint=f"run: mailctl auth login {profile.name}",
        )
    return _device(microsoft.start_device_login(profile, secrets), microsoft.finish_device_login, ui)


def _google(profile, secrets, ui, *, flow, no_wait, redirect_url, port, timeout) -> dict[str, Any]:
    from mailctl.oauth import google

    if profile.values.get("auth") == "service-account":
        return google.login_service_account(profile, secrets).to_dict()
    if redirect_url:
        pending = google.load_pending(profile, secrets)
        result = google.complete_login(pending, redirect_url)
        google.clear_pending(profile)
        return result.to_dict()
    flow = flow or ("browser" if browser_available() else "paste")
    if flow not in GOOGLE_FLOWS:
        raise UsageError(f"unknown flow {flow!r} for Google: use one of {', '.join(GOOGLE_FLOWS)}")
    if flow == "device":
        return _device(google.start_device_login(profile, secrets), google.finish_device_login, ui)
    return _code_flow(google, google.start_loopback_login(profile, secrets, port=port, listen=not no_wait, flow_name=flow),
                      ui, flow=flow, no_wait=no_wait, timeout=timeout)


def _generic(profile, secrets, ui, *, flow, no_wait, redirect_url, port, timeout) -> dict[str, Any]:
    """Any OAuth 2.0 server: the code flow (paste / browser) or the device flow."""
    from mailctl.oauth import generic, loopback

    generic.check_auth(profile)
    if redirect_url:
        result = generic.complete_login(generic.load_pending(profile, secrets), redirect_url)
        loopback.clear_pending(profile)
        return result.to_dict()
    flow = flow or ("paste" if no_wait else generic.default_flow(profile, browser_available()))
    if flow not in GOOGLE_FLOWS:
        raise UsageError(f"unknown flow {flow!r}: use one of {', '.join(GOOGLE_FLOWS)}")
    if flow == "device" and no_wait:
        raise UsageError("--no-wait is for the paste flow; the device flow waits for the sign-in",
                         hint=f"run: mailctl auth login {profile.name} --flow device")
    if flow == "device":
        return _device(generic.start_device_login(profile, secrets), generic.finish_device_login, ui)
    return _code_flow(generic, generic.start_code_login(profile, secrets, port=port, listen=not no_wait, flow_name=flow),
                      ui, flow=flow, no_wait=no_wait, timeout=timeout)


def _device(pending, finish, ui) -> dict[str, Any]:
    import time

    ui.device_code(verification_uri=pending.verification_uri, user_code=pending.user_code, message=pending.message,
                   expires_in=max(0.0, pending.expires_at - time.time()))
    return finish(pending, on_tick=ui.tick).to_dict()


def _code_flow(module, pending, ui, *, flow: str, no_wait: bool, timeout: float) -> dict[str, Any]:
    """The authorization-code flow after the URL is built: --no-wait keeps the pending sign-in
    for --redirect-url; otherwise wait for the listener or a pasted address."""
    profile = pending.profile
    if no_wait:
        module.save_pending(pending)
        ui.authorization_url(url=pending.authorization_url, redirect_uri=pending.redirect_uri, port=pending.port,
                             listening=False, note=None, wait=False)
        return {"profile": profile.name, "provider": provider_of(profile), "flow": "paste", "pending": True,
                "redirect_uri": pending.redirect_uri,
                "next": f"mailctl auth login {profile.name} --redirect-url '{pending.redirect_uri}...'"}
    if flow == "browser":
        ui.open_browser(pending.authorization_url)  # not opened: the URL is shown; pasting still works
    ui.authorization_url(url=pending.authorization_url, redirect_uri=pending.redirect_uri, port=pending.port,
                         listening=pending.listener is not None, note=pending.listen_error, wait=True)
    final = module.wait_for_redirect(pending, read_line=ui.read_line, timeout=timeout, on_tick=ui.tick,
                                     on_rejected=getattr(ui, "rejected", None))
    return module.complete_login(pending, final).to_dict()


def status(profile, secrets, *, check: bool = True) -> dict[str, Any]:
    if provider_of(profile) == "generic":
        from mailctl.oauth import generic

        return generic.status(profile, secrets, check=check)
    if provider_of(profile) == "google":
        from mailctl.oauth import google

        return google.status(profile, secrets, check=check)
    from mailctl.oauth import microsoft

    return microsoft.status(profile, secrets, check=check)


def logout(profile, secrets, *, revoke: bool = True) -> dict[str, Any]:
    if provider_of(profile) == "generic":
        from mailctl.oauth import generic

        return generic.logout(profile, secrets, revoke=revoke)
    if provider_of(profile) == "google":
        from mailctl.oauth import google

        return google.logout(profile, secrets, revoke=revoke)
    from mailctl.oauth import microsoft

    return microsoft.logout(profile, secrets)
