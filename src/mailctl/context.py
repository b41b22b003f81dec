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

    @cached_property
    def config_lookup(self) -> paths.ConfigLookup:
        """Which profiles file is in use and why ($MAILCTL_CONFIG / --config, user, system)."""
        return paths.find_config(self.config_override)

    @property
    def config_path(self) -> Path:
        return self.config_lookup.path

    @cached_property
    def store(self):
        from mailctl.profiles.store import ProfileStore

        return ProfileStore(self.config_path, lookup=self.config_lookup)

    def locations(self, outbox_override: str | None = None) -> dict:
        """What `mailctl config` prints: the files in use and why. The outbox as the commands
        open it (--outbox, $MAILCTL_OUTBOX, [settings] outbox, the data dir); a URL without
        its password."""
        from mailctl.errors import MailctlError
        from mailctl.outbox.locate import display, outbox_location

        try:
            settings = self.store.load().settings()
        except MailctlError:  # an unreadable profiles file is reported on its own line
            settings = {}
        try:
            location, why = outbox_location(outbox_override, settings)
            outbox = {"path": display(location), "reason": why}
        except MailctlError as err:
            outbox = {"path": None, "reason": err.message}
        return {
            "profiles": self.config_lookup.to_dict(),
            "outbox": outbox,
            "data_dir": {"path": str(paths.data_dir()), "reason": paths.data_dir_reason()},
            "maildir": {"path": str(paths.default_maildir()), "reason": "where the built-in local profile delivers"},
        }

    @cached_property
    def secrets(self):
        from mailctl.secrets import default_resolver

        return default_resolver()

    def use_json(self, local_flag: bool = False) -> bool:
        return bool(local_flag or self.output.json_mode)
