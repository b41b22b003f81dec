"""AppContext: everything a command needs from its environment, built once by the root
callback and passed down (tests build their own)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

from mailctl.output import Output
from mailctl import paths


@dataclass
class AppContext:
    output: Output = field(default_factory=Output)
    config_override: str | None = None
    profile_name: str | None = None
    clock: Callable[[], float] = time.time

    @property
    def config_path(self) -> Path:
        return paths.config_path(self.config_override)

    @cached_property
    def store(self):
        from mailctl.profiles.store import ProfileStore

        return ProfileStore(self.config_path)

    @cached_property
    def secrets(self):
        from mailctl.secrets import default_resolver

        return default_resolver()

    def use_json(self, local_flag: bool = False) -> bool:
        return bool(local_flag or self.output.json_mode)
