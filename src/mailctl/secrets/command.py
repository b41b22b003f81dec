"""Secrets from a profile's secret_command: its stdout (without the final newline) is the
secret. The command runs through the shell, with MAILCTL_PROFILE and MAILCTL_SECRET_KIND set
so one command can serve several kinds. Read-only."""

from __future__ import annotations

import os
import subprocess

from mailctl.errors import ConfigError
from mailctl.secrets.base import check_kind

# Kinds a secret_command answers for: the profile's own credential. Tokens mailctl writes
# itself (oauth_tokens) go to the keyring.
COMMAND_KINDS = ("password", "client_secret", "service_account_key", "access_token", "proxy_password")


class CommandStore:
    name = "secret_command"
    writable = False

    def __init__(self, command: str, *, timeout: float = 30.0) -> None:
        self.command = command
        self.timeout = timeout

    def get(self, profile: str, kind: str) -> str | None:
        if check_kind(kind) not in COMMAND_KINDS or not self.command:
            return None
        env = dict(os.environ, MAILCTL_PROFILE=profile, MAILCTL_SECRET_KIND=kind)
        try:
            proc = subprocess.run(
                self.command, shell=True, capture_output=True, timeout=self.timeout, env=env, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            raise ConfigError(
                f"profile {profile!r}: secret_command did not finish within {self.timeout:g}s",
                hint="check the command by running it yourself (it must not wait for input)",
            ) from None
        except OSError as exc:
            raise ConfigError(f"profile {profile!r}: secret_command could not run ({exc.strerror})") from None
        if proc.returncode != 0:
            # stderr is not repeated: a failing password manager may echo what it was given.
            raise ConfigError(
                f"profile {profile!r}: secret_command exited with status {proc.returncode}",
                hint="run the command yourself to see why, or fix it with: mailctl profile edit "
                f"{profile} --secret-command '...'",
            )
        value = proc.stdout.decode("utf-8", errors="strict") if proc.stdout else ""
        if value.endswith("\r\n"):
            value = value[:-2]
        elif value.endswith("\n"):
            value = value[:-1]
        return value or None

    def set(self, profile: str, kind: str, value: str) -> None:
        raise ConfigError(f"profile {profile!r} reads its secret from secret_command; store it where that command reads it")

    def delete(self, profile: str, kind: str) -> bool:
        return False
