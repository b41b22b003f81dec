"""What a sign-in produced (no tokens: those stay in the secret store)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoginResult:
    profile: str
    provider: str
    flow: str
    account: str | None
    scopes: list[str]
    expires_at: float | None
    refresh_token: bool
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile, "provider": self.provider, "flow": self.flow, "account": self.account,
            "scopes": self.scopes, "access_token_expires_at": _iso(self.expires_at),
            "refresh_token": self.refresh_token, "warnings": self.warnings,
        }


def _iso(ts: float | None) -> str | None:
    if not ts:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")
