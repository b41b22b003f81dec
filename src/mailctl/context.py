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
    profile_source: str = "-p"  # how profile_name was given: "-p" or "$MAILCTL_PROFILE"
    _said: set = field(default_factory=set, repr=False)  # -v lines already shown (said once)

    # --- mailctl -v / -vv: the event sink ---------------------------------------------------
    def verbose(self, level: int, text: str) -> None:
        """One -v line on stderr, `mailctl: TEXT`, shown from -v (level 1) or -vv (level 2);
        --quiet wins, stdout (--json) is never touched. Domain code gets it as `trace`."""
        self.output.debug(f"mailctl: {text}", level=level)

    @property
    def trace(self) -> Callable[[int, str], None] | None:
        """The sink as a plain callable for domain code (no typer/rich there), or None when
        nothing would be shown, so the domain skips the work of describing."""
        out = self.output
        return self.verbose if out.verbose and not out.quiet else None

    def say_once(self, level: int, text: str) -> None:
        """verbose(), but a line already shown in this run is not repeated (a flush resolves
        the same secret for each connection)."""
        if text not in self._said:
            self._said.add(text)
            self.verbose(level, text)

    def explain_profile(self, doc, resolved, *, named_by: str | None = None, by_sender: list[str] | None = None) -> None:
        """`mailctl: profile NAME (why)`: named_by when a name was given ("-p", "the PROFILE
        argument"), else the sender's choice (profiles.resolve.profile_for_sender's on_choice),
        else the default's reason."""
        if self.trace is None:
            return
        from mailctl.profiles.resolve import default_reason

        why = named_by or (by_sender[0] if by_sender else default_reason(doc, resolved))
        self.say_once(1, f"profile {resolved.name} ({why})")

    def named_by(self, argument: str | None = None, what: str = "the PROFILE argument") -> str | None:
        """How the profile name was given: the command's own argument, else -p /
        $MAILCTL_PROFILE, else None (the sender or the default chooses)."""
        if argument:
            return what
        return self.profile_source if self.profile_name else None

    def explain_outbox(self, outbox_override: str | None, settings) -> None:
        """`mailctl: outbox PATH (why)`, the location as open_outbox() finds it (a URL without
        its password)."""
        if self.trace is None:
            return
        from mailctl.outbox.locate import display, outbox_location

        location, why = outbox_location(outbox_override, settings)
        self.say_once(1, f"outbox {display(location)} ({why})")

    def _secret_used(self, profile: str, kind: str, source: str) -> None:
        self.say_once(1, f"secret {kind} for profile {profile} from {source}")

    @cached_property
    def config_lookup(self) -> paths.ConfigLookup:
        """Which profiles file is in use and why ($MAILCTL_CONFIG / --config, user, system)."""
        lookup = paths.find_config(self.config_override)
        if self.trace is not None:
            self.say_once(1, f"config {lookup.path} ({lookup.reason})")
        return lookup

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

        resolver = default_resolver()
        if self.trace is not None:
            resolver.observer = self._secret_used
        return resolver

    def use_json(self, local_flag: bool = False) -> bool:
        return bool(local_flag or self.output.json_mode)
