"""Exchange Web Services transport (exchangelib).

The exact MIME message mailctl built is sent as the item's MimeContent with CreateItem
MessageDisposition SendAndSaveCopy (copy in Sent Items; SendOnly when save_to_sent_items is
false), so headers and attachments match what SMTP would send.

Authentication: auth = password (username + the stored password; exchangelib negotiates
NTLM/Basic/Digest from the server's 401), oauth (delegated token, EWS.AccessAsUser.All) or
client-credentials (app-only token, full_access_as_app, acting on the mailbox through
ExchangeImpersonation). The service URL comes from ews_url; autodiscover only when the
profile asks for it.

Lifecycle: the same as Graph and the Gmail API (transports.http.SessionTransport): open()
makes the credentials (the stored password, or the bearer token, fetched once) and the
profile's session (mailctl.net.http: verify/CA bundle, proxies, timeout), then the exchangelib
account; close() drops all of them. TLS and proxy: exchangelib sends through its own requests
sessions (trust_env on); mailctl gives its protocol an HTTPAdapter that forces the session's
verify and proxies on every request, so REQUESTS_CA_BUNDLE cannot override ca_file. Exchange Online blocks EWS from
October 2026 (profiles.presets.ews_warnings)."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable
from urllib.parse import urlsplit

from mailctl.knowledge.http import explain_ews
from mailctl.errors import (
    AuthError,
    ConfigError,
    DeliveryError,
    ExitCode,
    MailctlError,
    ProtocolError,
    TemporaryFailure,
    UnavailableError,
)
from mailctl.profiles.presets import ews_warnings
from mailctl.transports.http_stages import HttpStaged
from mailctl.transports.base import SendResult
from mailctl.transports.graph import with_envelope_recipients
from mailctl.transports.http import SessionTransport, bearer_token, user_agent

Trace = Callable[[str, str, float], None]
_autodiscover_lock = threading.Lock()


def _adapter_class(verify, proxies: dict[str, str]):
    from mailctl.net.http import deadline_adapter_class

    class MailctlEwsAdapter(deadline_adapter_class()):
        """Forces the profile's TLS verification and proxies onto every exchangelib request
        (and, as every mailctl session, looks host names up within the connect timeout)."""

        def send(self, request, stream=False, timeout=None, verify_=None, cert=None, proxies_=None, **kwargs):
            kwargs.pop("verify", None)
            kwargs.pop("proxies", None)
            if verify is False:  # tls_verify = false was the user's explicit choice: no warning spam
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return super().send(request, stream=stream, timeout=timeout, verify=False, cert=cert,
                                        proxies=dict(proxies))
            return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert,
                                proxies=dict(proxies))

    return MailctlEwsAdapter


class EwsTransport(HttpStaged, SessionTransport):
    name = "ews"

    @property
    def target(self) -> str:
        """What `mailctl test` names in its header (stages: transports/http_stages.py)."""
        return self.url or "autodiscover"

    def __init__(self, profile, secrets, *, trace: Trace | None = None, **options: Any):
        self.profile = profile
        self.secrets = secrets
        self.trace = trace
        self.options = options
        self.auth = profile.values.get("auth") or "password"
        self.url = profile.values.get("ews_url") or ""
        # the mailbox sent as: `mailbox`, else the login when it is an address, else From
        username = profile.values.get("username") or ""
        self.mailbox = (profile.values.get("mailbox") or (username if "@" in username else "")
                        or profile.values.get("from_address") or "")
        self.session = None  # mailctl.net.http session: verify, proxies, timeout for exchangelib
        self._token: str | None = None  # the bearer token; "" for auth = password
        self._credentials_made = None  # (exchangelib credentials, "delegate" | "impersonation")
        self.account = None
        self._protocol = None
        self._static_token = False
        self._refreshed = False  # one forced token refresh per transport

    @property
    def server(self) -> str:
        return self.url or "autodiscover"

    def warnings(self) -> list[str]:
        return ews_warnings(self.profile)

    # --- lifecycle ------------------------------------------------------------
    def open(self) -> None:
        if self.account is not None:
            return
        if not self.mailbox or "@" not in self.mailbox:
            raise ConfigError(
                f"profile {self.profile.name!r} (ews): no mailbox address to send as (mailbox, or a username "
                f"or from_address that is an SMTP address)",
                hint=f"mailctl profile edit {self.profile.name} --mailbox MAILBOX@DOMAIN",
            )
        from exchangelib import Account, Configuration, FailFast
        from exchangelib.account import DELEGATE, IMPERSONATION
        from exchangelib.protocol import CachingProtocol, Protocol
        from exchangelib.version import EXCHANGE_2013, Version

        if self._token is None:
            self._fetch_token()  # the credentials first: a missing password stops before any network
        super().open()  # the session (verify, proxies, timeout); no network yet
        credentials, access_type = self._credentials_made
        if not self.url:
            if not self.profile.values.get("autodiscover"):
                raise ConfigError(
                    f"profile {self.profile.name!r} (ews): missing required field ews_url",
                    hint=f"mailctl profile edit {self.profile.name} --ews-url https://HOST/EWS/Exchange.asmx (or --autodiscover)",
                )
            self.url = self._autodiscover(credentials)
        adapter = _adapter_class(self.session.verify, self.session.proxies_for(self.url))
        protocol_cls = type(Protocol)("MailctlEwsProtocol", (Protocol,), {
            "HTTP_ADAPTER_CLS": adapter, "TIMEOUT": self.session.default_timeout, "USERAGENT": user_agent(),
            "RETRY_WAIT": 1,
        })
        from exchangelib.credentials import BaseOAuth2Credentials

        config = Configuration(
            service_endpoint=self.url,
            credentials=credentials,
            # A fixed schema version skips exchangelib's version guessing round trips; Exchange2013
            # is understood by Exchange 2013, 2016, 2019 and Exchange Online.
            version=Version(build=EXCHANGE_2013),
            retry_policy=FailFast(),
            max_connections=1,
            **({"auth_type": "OAuth 2.0"} if isinstance(credentials, BaseOAuth2Credentials) else {}),
        )
        # Build our own protocol (not exchangelib's process-wide cache) so this profile's adapter
        # and credentials are used and nothing outlives close().
        protocol = protocol_cls.__new__(protocol_cls)
        protocol.__init__(config=config)
        t0 = time.monotonic()
        try:
            account = Account(
                primary_smtp_address=self.mailbox,
                config=config,
                autodiscover=False,
                access_type=IMPERSONATION if access_type == "impersonation" else DELEGATE,
                default_timezone=_utc(),
                locale="en_US",
            )
        except ValueError as exc:
            raise ConfigError(f"profile {self.profile.name!r} (ews): {exc}") from None
        finally:
            with CachingProtocol._protocol_cache_lock:
                CachingProtocol._protocol_cache.pop((config.service_endpoint, config.credentials), None)
        account.protocol = protocol
        self._protocol = protocol
        self.account = account
        self._emit("account", f"{self.mailbox} via {self.url} ({self.auth}, {access_type})", time.monotonic() - t0)

    def close(self) -> None:
        self._drop_account()
        self._credentials_made = None
        super().close()  # the session, its temporary CA bundle and the token

    def _drop_account(self) -> None:
        if self._protocol is not None:
            try:
                self._protocol.close()
            except Exception:  # closing must never mask the real outcome
                pass
        self._protocol = None
        self.account = None

    def _fetch_token(self, force_refresh: bool = False) -> None:
        self._credentials_made = self._credentials(force_refresh=force_refresh)

    def _credentials(self, *, force_refresh: bool = False):
        from exchangelib import Credentials, Identity, OAuth2AuthorizationCodeCredentials

        if self.auth == "password":
            password = self.secrets.require(self.profile, "password")
            # the login may be DOMAIN\\user or a UPN; the mailbox is self.mailbox
            self._token = ""  # nothing to fetch: the password is the credential
            return Credentials(self.profile.values.get("username") or self.mailbox, password), "delegate"
        if self.auth in ("oauth", "client-credentials"):
            t0 = time.monotonic()
            token, self._static_token = bearer_token(self.profile, self.secrets, force_refresh=force_refresh)
            self._token = token
            self._emit("token", "static access_token secret" if self._static_token else f"{self.auth} token",
                       time.monotonic() - t0)
            token_dict = {"access_token": token, "token_type": "Bearer"}
            if self.auth == "client-credentials":
                # App-only tokens act on a mailbox through ExchangeImpersonation + X-AnchorMailbox.
                return OAuth2AuthorizationCodeCredentials(
                    access_token=token_dict, identity=Identity(primary_smtp_address=self.mailbox)
                ), "impersonation"
            return OAuth2AuthorizationCodeCredentials(access_token=token_dict), "delegate"
        raise ConfigError(
            f"profile {self.profile.name!r} (ews): auth = {self.auth} is not supported for EWS",
            hint="use auth = password, oauth or client-credentials",
        )

    def _autodiscover(self, credentials) -> str:
        """The EWS URL by autodiscover (slow: several DNS and HTTPS probes)."""
        from exchangelib import Account
        from exchangelib.protocol import BaseProtocol

        t0 = time.monotonic()
        proxies = self.session.proxies_for(None)  # the profile's proxy only, as before
        with _autodiscover_lock:
            previous = BaseProtocol.HTTP_ADAPTER_CLS
            BaseProtocol.HTTP_ADAPTER_CLS = _adapter_class(self.session.verify, proxies)
            try:
                account = Account(primary_smtp_address=self.mailbox, credentials=credentials, autodiscover=True)
                url = account.protocol.service_endpoint
            except Exception as exc:
                raise self._map_error(exc, stage="autodiscover") from exc
            finally:
                BaseProtocol.HTTP_ADAPTER_CLS = previous
        self._emit("autodiscover", f"{self.mailbox} -> {url}", time.monotonic() - t0)
        return url

    # --- sending --------------------------------------------------------------
    def send(self, raw: bytes, sender: str, recipients: list[str]) -> SendResult:
        save = bool(self.profile.values.get("save_to_sent_items", True))
        disposition = "SendAndSaveCopy" if save else "SendOnly"
        return self._create(raw, recipients, disposition, f"NoError (CreateItem {disposition})")

    def save_draft(self, raw: bytes, sender: str, recipients: list[str]) -> SendResult:
        """Create the message, unsent, in the mailbox's Drafts folder (CreateItem SaveOnly)."""
        return self._create(raw, recipients, "SaveOnly", "saved in Drafts (CreateItem SaveOnly)")

    def _create(self, raw: bytes, recipients: list[str], disposition: str, reply: str) -> SendResult:
        self.open()
        raw = with_envelope_recipients(raw, recipients)
        t0 = time.monotonic()
        try:
            try:
                _create_item(self.account, raw, disposition=disposition)
            except Exception as exc:
                if not self._can_refresh(exc):
                    raise
                self._refresh_token()
                _create_item(self.account, raw, disposition=disposition)
        except Exception as exc:
            raise self._map_error(exc, stage="CreateItem") from exc
        duration = time.monotonic() - t0
        self._emit("CreateItem", f"MessageDisposition={disposition} -> NoError", duration)
        return SendResult(server=self.url, reply=reply, duration=duration)

    def check(self) -> str:
        """A harmless authenticated request for diagnostics: GetFolder on the Sent Items folder."""
        self.open()
        t0 = time.monotonic()
        try:
            folder = self.account.sent
        except Exception as exc:
            raise self._map_error(exc, stage="GetFolder") from exc
        self._emit("GetFolder", f"sentitems -> {getattr(folder, 'name', 'ok')}", time.monotonic() - t0)
        return str(getattr(folder, "name", "Sent Items"))

    def _can_refresh(self, exc: BaseException) -> bool:
        """A 401 with a token mailctl can renew (not a static access_token secret)."""
        if self.auth not in ("oauth", "client-credentials") or self._static_token or self._refreshed:
            return False
        from exchangelib.errors import TransportError, UnauthorizedError

        return isinstance(exc, UnauthorizedError) or (isinstance(exc, TransportError) and "401" in str(exc))

    def _refresh_token(self) -> None:
        """A fresh token (not the cached one) and an account built with it; the session stays."""
        self._refreshed = True
        self._drop_account()
        self._fetch_token(force_refresh=True)
        self.open()

    def _emit(self, stage: str, detail: str, seconds: float) -> None:
        if self.trace is not None:
            self.trace(stage, detail, seconds)

    # --- errors ---------------------------------------------------------------
    def _map_error(self, exc: BaseException, *, stage: str) -> MailctlError:
        return ews_error(exc, server=self.url or "autodiscover", stage=stage, profile_name=self.profile.name,
                         static_token=self._static_token, auth=self.auth)


_MIME_ONLY = None


def _mime_only_message_class():
    """A Message that serialises as <t:Message><t:MimeContent/></t:Message> only.

    exchangelib fills field defaults (Importance Normal, Sensitivity Normal,
    IsReadReceiptRequested false...) that Exchange would apply over the MIME headers, turning
    an Importance: high or Disposition-Notification-To header off."""
    global _MIME_ONLY
    if _MIME_ONLY is None:
        from exchangelib import Message

        class MimeOnlyMessage(Message):
            def to_xml(self, version):
                elem = super().to_xml(version=version)
                for child in list(elem):
                    if not str(child.tag).endswith("}MimeContent"):
                        elem.remove(child)
                return elem

        _MIME_ONLY = MimeOnlyMessage
    return _MIME_ONLY


def _create_item(account, raw: bytes, *, disposition: str) -> None:
    """One CreateItem request carrying only the MIME content.

    Message.send_and_save() would first look up the Sent Items folder (a GetFolder round trip);
    naming the distinguished folder (`sentitems`, or `drafts` for SaveOnly) directly saves it.
    SendOnly has no folder."""
    from exchangelib.items import SEND_TO_NONE
    from exchangelib.properties import DistinguishedFolderId, Mailbox
    from exchangelib.services import CreateItem

    folders = {"SendAndSaveCopy": "sentitems", "SaveOnly": "drafts", "SendOnly": None}
    message = _mime_only_message_class()(account=account, mime_content=raw)
    name = folders[disposition]
    folder = DistinguishedFolderId(id=name, mailbox=Mailbox(email_address=account.primary_smtp_address)) if name else None
    service = CreateItem(account=account)
    results = service._elems_to_objs(service._chunked_get_elements(
        service.get_payload,
        items=[message],
        folder=folder,
        message_disposition=disposition,
        send_meeting_invitations=SEND_TO_NONE,
    ))
    for result in results:
        if isinstance(result, Exception):
            raise result


def ews_error(exc: BaseException, *, server: str, stage: str, profile_name: str = "PROFILE",
              static_token: bool = False, auth: str = "password") -> MailctlError:
    """A mailctl error for an exchangelib exception (ResponseCode classes, transport errors)."""
    if isinstance(exc, MailctlError):
        return exc
    err = _ews_error(exc, server=server, stage=stage, profile_name=profile_name, static_token=static_token, auth=auth)
    name = type(exc).__name__
    err.error_code = name if name.startswith("Error") else None
    err.stage = stage
    if isinstance(err, AuthError) and err.error_code is None and "rejected the credentials" in err.message:
        err.http_status = 401
    err.__cause__ = exc  # diagnostics look at the exception chain; never shown to users
    return err


def _ews_error(exc: BaseException, *, server: str, stage: str, profile_name: str, static_token: bool,
               auth: str) -> MailctlError:
    import requests
    from exchangelib import errors as ex

    name = type(exc).__name__
    text = _exc_text(exc)
    if isinstance(exc, ex.UnauthorizedError) or (isinstance(exc, ex.TransportError) and "401" in text):
        hint = (f"store the password again: mailctl profile edit {profile_name} --password-stdin"
                if auth == "password" else f"run: mailctl auth login {profile_name}")
        if static_token:
            hint = "the stored access_token secret was rejected (expired?); store a fresh one or run: mailctl auth login " + profile_name
        return AuthError(f"EWS at {server} rejected the credentials ({auth}): {text}", hint=hint)
    if isinstance(exc, (ex.TransportError, requests.exceptions.RequestException, OSError)) and not isinstance(exc, ex.ResponseMessageError):
        if "SSL" in text or "CERTIFICATE" in text.upper() and "verify" in text.lower():
            return UnavailableError(
                f"TLS handshake with {_host(server)} failed: {_short_tls(text)}",
                hint="check the server certificate; for a private CA set ca_file in the profile",
            )
        if isinstance(exc, requests.exceptions.ReadTimeout) or "Read timed out" in text:
            return TemporaryFailure(f"EWS at {server} did not answer in time", hint="raise the profile's timeout")
        from mailctl.net.http import tidy_reason

        return UnavailableError(f"cannot reach EWS at {server}: {tidy_reason(text)}",
                                hint="check ews_url, DNS, the network and the profile's proxy")
    if isinstance(exc, ex.RateLimitError) or name in ("ErrorServerBusy",):
        known = explain_ews("ErrorServerBusy")
        return DeliveryError(f"EWS {stage} failed: ErrorServerBusy: {text}", permanent=False, enhanced="ErrorServerBusy",
                             text=text, server=server, stage=stage, hint=known.hint if known else None)
    if isinstance(exc, ex.ResponseMessageError) or name.startswith("Error"):
        known = explain_ews(name)
        message = f"EWS {stage} failed: {name}: {text}"
        if known is None:
            return DeliveryError(message, permanent=True, enhanced=name, text=text, server=server, stage=stage)
        hint = known.hint
        if not known.permanent:
            return DeliveryError(message, permanent=False, enhanced=name, text=text, server=server, stage=stage, hint=hint)
        if known.auth:
            return AuthError(message, hint=hint, exit_code=known.exit_code)
        return DeliveryError(message, permanent=True, enhanced=name, text=text, server=server, stage=stage, hint=hint,
                             exit_code=known.exit_code)
    if isinstance(exc, ex.EWSError):
        return ProtocolError(f"EWS {stage}: {name}: {text}", hint="run with MAILCTL_DEBUG=1 and report the reply")
    return ProtocolError(f"EWS {stage}: unexpected {name}: {text}", hint="run with MAILCTL_DEBUG=1 for details",
                         exit_code=ExitCode.PROTOCOL)


def _exc_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:400]


def _short_tls(text: str) -> str:
    if "certificate verify failed" in text:
        detail = text.split("certificate verify failed:", 1)[-1].split(")")[0].strip(" :")
        return f"certificate verify failed: {detail}" if detail else "certificate verify failed"
    return text[:200]


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


def _utc():
    from exchangelib import UTC

    return UTC
