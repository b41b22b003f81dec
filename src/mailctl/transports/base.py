"""The Transport protocol and the name -> class registry."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from mailctl.errors import ConfigError


@dataclass
class SendResult:
    server: str  # host:port, URL or path that took the message
    reply: str = ""  # the final reply (e.g. "250 2.0.0 Ok: queued as 4Xyz")
    queue_id: str | None = None
    refused: dict[str, str] = field(default_factory=dict)  # recipient -> reply, for partial refusals
    used_alternate: bool = False
    duration: float = 0.0
    location: str | None = None  # file transport: where the message was written

    def to_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "reply": self.reply,
            "queue_id": self.queue_id,
            "refused": dict(self.refused),
            "used_alternate": self.used_alternate,
            "duration": round(self.duration, 6),
            "location": self.location,
        }


class Transport(Protocol):
    """Opened once, reused for many messages (the outbox sends a batch over one connection).

    send() raises mailctl.errors.DeliveryError (permanent or temporary), AuthError,
    UnavailableError (cannot reach any server), ProtocolError, ConfigError."""

    name: str

    def open(self) -> None: ...

    def send(self, raw: bytes, sender: str, recipients: list[str]) -> SendResult: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Transport": ...

    def __exit__(self, *exc: object) -> None: ...


# name -> "module:Class"; modules load only when a profile of that type is used.
_REGISTRY: dict[str, str] = {
    "smtp": "mailctl.transports.smtp:SmtpTransport",
    "file": "mailctl.transports.file:FileTransport",
    "graph": "mailctl.transports.graph:GraphTransport",
    "ews": "mailctl.transports.ews:EwsTransport",
    "gmail-api": "mailctl.transports.gmail_api:GmailApiTransport",
}


def register_transport(name: str, target: str) -> None:
    _REGISTRY[name] = target


def get_transport_class(name: str):
    target = _REGISTRY.get(name)
    if target is None:
        raise ConfigError(f"unknown transport type {name!r}", hint=f"type must be one of: {', '.join(_REGISTRY)}")
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ConfigError(f"transport {name!r} is not available in this version of mailctl") from None
        raise
    return getattr(module, cls_name)


def open_transport(profile, secrets, **options: Any) -> Transport:
    """A transport instance for a ResolvedProfile (not yet connected; use it as a context manager)."""
    cls = get_transport_class(profile.type)
    return cls(profile, secrets, **options)
