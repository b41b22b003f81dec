"""Secrets from a profile's secret_command: its stdout (without the final newline) is the
secret. The command runs through the shell, with MAILCTL_PROFILE and MAILCTL_SECRET_KIND set
so one command can serve several kinds; it does not see other profiles' MAILCTL_SECRET_*
variables. Read-only. Only commands that need the secret run it: `profile show` and `profile
lint` report "command configured, not run"."""

from __future__ import annotations

import os
import signal
import subprocess

from mailctl.errors import ConfigError
from mailctl.secrets.base import KINDS, check_kind

# Kinds a secret_command answers for: the profile's own credential. Tokens mailctl writes
# itself (oauth_tokens) go to the keyring.
COMMAND_KINDS = ("password", "client_secret", "service_account_key", "access_token", "proxy_password")
NOT_RUN = "command configured, not run"


def child_environment(profile: str, kind: str, environ=None) -> dict[str, str]:
    """The command's environment: ours without MAILCTL_SECRET_* (other profiles' secrets),
    except the variables of this profile, plus MAILCTL_PROFILE and MAILCTL_SECRET_KIND."""
    from mailctl.secrets.env import env_var_name

    source = os.environ if environ is None else environ
    own = {env_var_name(profile, k) for k in KINDS}
    env = {k: v for k, v in source.items() if not k.upper().startswith("MAILCTL_SECRET_") or k.upper() in own}
    env.update(MAILCTL_PROFILE=profile, MAILCTL_SECRET_KIND=kind)
    return env


class CommandStore:
    name = "secret_command"
    writable = False

    def __init__(self, command: str, *, timeout: float = 30.0) -> None:
        self.command = command
        self.timeout = timeout

    def answers(self, kind: str) -> bool:
        """Whether get() would run the command for this kind."""
        return bool(self.command) and check_kind(kind) in COMMAND_KINDS

    def get(self, profile: str, kind: str) -> str | None:
        if not self.answers(kind):
            return None
        posix = os.name == "posix"
        try:
            proc = subprocess.Popen(
                self.command, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=child_environment(profile, kind), start_new_session=posix,
            )
        except OSError as exc:
            raise ConfigError(f"profile {profile!r}: secret_command could not run ({exc.strerror})") from None
        try:
            out, _err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            # The whole process group: a shell's children would keep the pipes open.
            try:
                os.killpg(proc.pid, signal.SIGKILL) if posix else proc.kill()
            except OSError:
                pass
            proc.communicate()
            raise ConfigError(
                f"profile {profile!r}: secret_command did not finish within {self.timeout:g}s",
                hint="check the command by running it yourself (it must not wait for input)",
            ) from None
        if proc.returncode != 0:
            # stderr is not repeated: a failing password manager may echo what it was given.
            raise ConfigError(
                f"profile {profile!r}: secret_command exited with status {proc.returncode}",
                hint="run the command yourself to see why, or fix it with: mailctl profile edit "
                f"{profile} --secret-command '...'",
            )
        try:
            value = out.decode("utf-8", errors="strict") if out else ""
        except UnicodeDecodeError:
            # never echo the bytes: they may be the secret
            raise ConfigError(
                f"profile {profile!r}: secret_command printed something that is not UTF-8 text",
                hint="the command must print the secret as UTF-8 text on stdout (binary keys: base64-encode them)",
            ) from None
        if value.endswith("\r\n"):
            value = value[:-2]
        elif value.endswith("\n"):
            value = value[:-1]
        return value or None

    def set(self, profile: str, kind: str, value: str) -> None:
        raise ConfigError(f"profile {profile!r} reads its secret from secret_command; store it where that command reads it")

    def delete(self, profile: str, kind: str) -> bool:
        return False
