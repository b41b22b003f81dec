"""Secrets from the environment: MAILCTL_SECRET_<PROFILE>_<KIND> (upper-cased). Read-only."""

from __future__ import annotations

import os
from typing import Mapping

from mailctl.errors import ConfigError
from mailctl.secrets.base import check_kind


def env_var_name(profile: str, kind: str) -> str:
    return f"MAILCTL_SECRET_{profile}_{kind}".upper()


class EnvStore:
    name = "environment"
    writable = False

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ

    @property
    def environ(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    def get(self, profile: str, kind: str) -> str | None:
        value = self.environ.get(env_var_name(profile, check_kind(kind)))
        return value if value else None

    def set(self, profile: str, kind: str, value: str) -> None:
        raise ConfigError(
            f"cannot store a secret in the environment; export {env_var_name(profile, kind)} yourself",
        )

    def delete(self, profile: str, kind: str) -> bool:
        return False
