"""Transports: one class per kind of server, registered by name like extensions are.

    transport = open_transport(profile, secrets)   # ResolvedProfile, SecretResolver
    with transport:
        result = transport.send(raw_bytes, sender, recipients)

Heavy libraries (msal, exchangelib, requests) are imported inside the transport modules'
functions, never at import time of this package."""

from __future__ import annotations

from mailctl.transports.base import (SendResult, Transport, get_transport_class, open_transport, prefetch_tls, register_transport,
                                     save_draft)

__all__ = ["SendResult", "Transport", "open_transport", "register_transport", "get_transport_class", "save_draft",
           "prefetch_tls"]
