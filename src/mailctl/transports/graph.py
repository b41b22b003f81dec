"""Microsoft Graph sendMail transport.

Routes, chosen per message:
- MIME (default): POST {graph}/v1.0/{me|users/UPN}/sendMail, Content-Type text/plain, body =
  base64 of the exact message mailctl built. Exchange saves a copy in Sent Items (the MIME
  route cannot carry saveToSentItems).
- Large (message over MIME_LIMIT): a draft created from the message without its attachments,
  attachments added (POST for small ones, an upload session for large ones), then /send.
  Needs Mail.ReadWrite as well as Mail.Send; the copy is saved in Sent Items.
- JSON (save_to_sent_items = false): the message converted to Graph's JSON shape with
  saveToSentItems false. Exchange re-renders it: only X- headers survive.

Delegated tokens (auth = oauth) send as /me; app-only tokens (auth = client-credentials) as
/users/{username}. 429/503 Retry-After is honoured within bounds (mailctl.net.http.request)."""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import json
import time
from typing import Any, Callable
from urllib.parse import quote

from mailctl.knowledge.http import KnownFailure, explain_graph
from mailctl.errors import (
    AuthError,
    DeliveryError,
    ExitCode,
    MailctlError,
    ProtocolError,
    ValidationError,
)
from mailctl.net.http import RetryPolicy, request
from mailctl.profiles.presets import graph_endpoint
from mailctl.transports.http_stages import HttpStaged
from mailctl.transports.base import SendResult
from mailctl.transports.http import SessionTransport, bearer_token

# sendMail and message-create requests are limited to 4 MB; base64 grows by 4/3, so stay a
# little under 3 MiB of MIME (3,000,000 bytes -> 4,000,000 bytes of base64).
MIME_LIMIT = 3_000_000
SMALL_ATTACHMENT_LIMIT = 3 * 1024 * 1024  # above this, attachments go through an upload session
MAX_ATTACHMENT = 150 * 1024 * 1024  # upload session limit per attachment
UPLOAD_CHUNK = 320 * 1024 * 10  # chunks must be multiples of 320 KiB (and under 4 MiB)

Trace = Callable[[str, str, float], None]  # (stage, detail, seconds)


class GraphTransport(HttpStaged, SessionTransport):
    name = "graph"

    @property
    def target(self) -> str:
        """What `mailctl test` names in its header (stages: transports/http_stages.py)."""
        return self.endpoint

    def __init__(self, profile, secrets, *, retry: RetryPolicy | None = None, trace: Trace | None = None, **options: Any):
        self.profile = profile
        self.secrets = secrets
        self.retry = retry or RetryPolicy()
        self.trace = trace
        self.options = options
        self.endpoint = graph_endpoint(profile.values.get("cloud"), profile.values.get("graph_endpoint"))
        self.auth = profile.values.get("auth") or "oauth"
        self.app_only = self.auth == "client-credentials"
        self.session = None
        self._token: str | None = None
        self._static_token = False
        self.last_route: str | None = None  # mime | upload-session | json

    @property
    def mailbox_path(self) -> str:
        mailbox = self.profile.values.get("mailbox") or ""
        if mailbox:  # a shared mailbox (delegated: Mail.Send.Shared) or the one app-only acts on
            return f"/v1.0/users/{quote(mailbox, safe='@')}"
        if self.app_only:
            upn = self.profile.values.get("username") or ""
            if not upn:
                raise MailctlError(
                    f"profile {self.profile.name!r}: app-only Graph sends need the mailbox (mailbox or username)",
                    hint=f"mailctl profile edit {self.profile.name} --mailbox MAILBOX@DOMAIN (or --username)",
                    exit_code=ExitCode.CONFIG,
                )
            return f"/v1.0/users/{quote(upn, safe='@')}"
        return "/v1.0/me"

    @property
    def server(self) -> str:
        return self.endpoint

    # --- sending --------------------------------------------------------------
    def send(self, raw: bytes, sender: str, recipients: list[str]) -> SendResult:
        self.open()
        started = time.monotonic()
        raw = with_envelope_recipients(raw, recipients)
        if not self.profile.values.get("save_to_sent_items", True):
            route, reply = "json", self._send_json(raw, recipients)
        elif len(raw) > MIME_LIMIT:
            route, reply = "upload-session", self._send_large(raw)
        else:
            route, reply = "mime", self._send_mime(raw)
        self.last_route = route
        return SendResult(server=self.endpoint, reply=reply, duration=time.monotonic() - started)

    def _send_mime(self, raw: bytes) -> str:
        url = f"{self.endpoint}{self.mailbox_path}/sendMail"
        response = self._call("POST", url, stage="sendMail", data=base64.b64encode(raw),
                              headers={"Content-Type": "text/plain"})
        return _reply_text(response)

    def _send_json(self, raw: bytes, recipients: list[str]) -> str:
        message = mime_to_graph_json(raw)
        payload = json.dumps({"message": message, "saveToSentItems": False}).encode()
        if len(payload) > 4 * 1024 * 1024:
            raise ValidationError(
                f"message too large ({len(raw)} bytes) for Graph sendMail with save_to_sent_items = false",
                hint="set save_to_sent_items = true (large messages then go through a draft and an upload session)",
            )
        url = f"{self.endpoint}{self.mailbox_path}/sendMail"
        response = self._call("POST", url, stage="sendMail", data=payload,
                              headers={"Content-Type": "application/json"})
        return _reply_text(response)

    def save_draft(self, raw: bytes, sender: str, recipients: list[str]) -> SendResult:
        """Create the message, unsent, in the mailbox's Drafts folder (POST /messages: what seed
        004 calls the permission to create a draft). Large attachments go up as for sending."""
        self.open()
        started = time.monotonic()
        draft_id = self._create_draft(with_envelope_recipients(raw, recipients))[1]
        self.last_route = "draft"
        return SendResult(server=self.endpoint, reply=f"saved in Drafts (id {draft_id})", duration=time.monotonic() - started)

    def _send_large(self, raw: bytes) -> str:
        draft_url = self._create_draft(raw)[0]
        try:
            response = self._call("POST", f"{draft_url}/send", stage="send", data=b"")
        except BaseException:
            self._delete_draft(draft_url)
            raise
        return _reply_text(response)

    def _create_draft(self, raw: bytes) -> tuple[str, str]:
        """A draft of `raw` (its attachments uploaded one by one when the whole is over the MIME
        limit); returns its URL and id. A draft left half-made is deleted."""
        attachments: list[dict] = []
        if len(raw) > MIME_LIMIT:
            raw, attachments = split_attachments(raw)
            self._check_sizes(raw, attachments)
        base = f"{self.endpoint}{self.mailbox_path}"
        response = self._call("POST", f"{base}/messages", stage="draft", data=base64.b64encode(raw),
                              headers={"Content-Type": "text/plain"})
        draft_id = _json(response).get("id")
        if not draft_id:
            raise ProtocolError("Graph created the draft but returned no id", hint="report this with MAILCTL_DEBUG=1")
        draft_url = f"{base}/messages/{quote(draft_id, safe='')}"
        try:
            for att in attachments:
                self._attach(draft_url, att)
        except BaseException:
            self._delete_draft(draft_url)
            raise
        return draft_url, draft_id

    @staticmethod
    def _check_sizes(stripped: bytes, attachments: list[dict]) -> None:
        for att in attachments:
            if len(att["content"]) > MAX_ATTACHMENT:
                raise ValidationError(
                    f"attachment {att['name']!r} is {len(att['content'])} bytes; Graph accepts at most {MAX_ATTACHMENT}",
                    hint="send it by another route (a link to shared storage)",
                )
        if len(stripped) > MIME_LIMIT:
            raise ValidationError(
                f"the message without its attachments is still {len(stripped)} bytes; Graph accepts at most about {MIME_LIMIT}",
                hint="shorten the body or move inline content into attachments",
            )

    def _attach(self, draft_url: str, att: dict) -> None:
        if len(att["content"]) >= SMALL_ATTACHMENT_LIMIT:
            self._upload(draft_url, att)
            return
        body = {
            "@odata.type": "#microsoft.graph.fileAttachment",
            "name": att["name"],
            "contentType": att["content_type"],
            "contentBytes": base64.b64encode(att["content"]).decode(),
            "isInline": att["is_inline"],
        }
        if att["content_id"]:
            body["contentId"] = att["content_id"]
        self._call("POST", f"{draft_url}/attachments", stage="attachment", json=body)

    def _delete_draft(self, draft_url: str) -> None:
        try:
            self._call("DELETE", draft_url, stage="cleanup")
        except MailctlError:
            pass

    def _upload(self, draft_url: str, att: dict) -> None:
        item = {
            "attachmentType": "file",
            "name": att["name"],
            "size": len(att["content"]),
            "contentType": att["content_type"],
            "isInline": att["is_inline"],
        }
        if att["content_id"]:
            item["contentId"] = att["content_id"]
        response = self._call("POST", f"{draft_url}/attachments/createUploadSession", stage="upload-session",
                              json={"AttachmentItem": item})
        upload_url = _json(response).get("uploadUrl")
        if not upload_url:
            raise ProtocolError("Graph returned no uploadUrl for the upload session", hint="report this with MAILCTL_DEBUG=1")
        content = att["content"]
        total = len(content)
        start = 0
        while start < total:
            chunk = content[start:start + UPLOAD_CHUNK]
            end = start + len(chunk) - 1
            t0 = time.monotonic()
            # The upload URL carries its own authorisation: sending the bearer token gets a 401.
            response = request(self.session, "PUT", upload_url, retry=self.retry, data=chunk, headers={
                "Content-Range": f"bytes {start}-{end}/{total}",
                "Content-Type": "application/octet-stream",
            })
            self._emit("upload", f"PUT bytes {start}-{end}/{total} -> {response.status_code}", time.monotonic() - t0)
            if response.status_code >= 400:
                raise self._error(response, stage="upload")
            start = end + 1

    # --- HTTP -----------------------------------------------------------------
    def _fetch_token(self, force_refresh: bool = False) -> None:
        t0 = time.monotonic()
        self._token, self._static_token = bearer_token(self.profile, self.secrets, force_refresh=force_refresh)
        self._emit("token", "static access_token secret" if self._static_token else f"{self.auth} token", time.monotonic() - t0)

    def _call(self, method: str, url: str, *, stage: str, headers: dict | None = None, **kwargs: Any):
        response = self._authorized(method, url, stage=stage, headers=headers, **kwargs)
        if response.status_code >= 400:
            raise self._error(response, stage=stage)
        return response

    def _authorized(self, method: str, url: str, *, stage: str, headers: dict | None = None, **kwargs: Any):
        """The request with the bearer token; a 401 gets a fresh token (force_refresh) and one
        more try, since a cached token may have been revoked or expired early (not for a static
        access_token secret, which cannot be refreshed). Returns the response, whatever its
        status: sending (_call) and the probe's mailbox lookup (probe_mailbox) judge it."""
        refreshed = False
        while True:
            hdrs = {"Authorization": f"Bearer {self._token}", **(headers or {})}
            t0 = time.monotonic()
            response = request(self.session, method, url, retry=self.retry, headers=hdrs,
                               on_retry=self._on_retry, **kwargs)
            self._emit(stage, f"{method} {_path(url, self.endpoint)} -> {response.status_code}", time.monotonic() - t0)
            if response.status_code == 401 and not refreshed and not self._static_token:
                refreshed = True
                self._fetch_token(force_refresh=True)
                continue
            return response

    def _on_retry(self, attempt: int, delay: float, response) -> None:
        self._emit("retry", f"HTTP {response.status_code}: waiting {delay:g} s (Retry-After) before attempt {attempt + 1}", 0.0)

    def _emit(self, stage: str, detail: str, seconds: float) -> None:
        if self.trace is not None:
            self.trace(stage, detail, seconds)

    def _error(self, response, *, stage: str) -> MailctlError:
        return graph_error(response, server=self.endpoint, stage=stage, static_token=self._static_token,
                           profile_name=self.profile.name)


# --- errors -------------------------------------------------------------------
def graph_error(response, *, server: str, stage: str, static_token: bool = False, profile_name: str = "PROFILE") -> MailctlError:
    """A mailctl error for a Graph error reply, with the knowledge base's hint and exit code."""
    err = _graph_error(response, server=server, stage=stage, static_token=static_token, profile_name=profile_name)
    # What diagnostics' knowledge base matches on (Facts.http_status / error_code).
    err.http_status = response.status_code
    err.error_code = _error_body(response)[0]
    err.stage = stage
    return err


def _graph_error(response, *, server: str, stage: str, static_token: bool, profile_name: str) -> MailctlError:
    status = response.status_code
    code, text = _error_body(response)
    known: KnownFailure | None = explain_graph(code, status)
    label = code or f"HTTP {status}"
    meaning = known.meaning if known else "request failed"
    message = f"Graph {stage} failed: {status} {label}: {text or meaning}"
    hint = known.hint.replace("PROFILE", profile_name) if known else None
    if status == 401 and static_token:
        hint = (f"the stored access_token secret was rejected (expired?); store a fresh one or remove it "
                f"and run: mailctl auth login {profile_name}")
    if status in (429, 503) or (known and not known.permanent):
        retry_after = response.headers.get("Retry-After")
        if retry_after:
            message += f" (Retry-After: {retry_after})"
        return DeliveryError(message, permanent=False, code=status, enhanced=code, text=text, server=server,
                             stage=stage, hint=hint)
    if known and known.auth:
        return AuthError(message, hint=hint, exit_code=known.exit_code)
    exit_code = known.exit_code if known else ExitCode.PROBLEMS
    return DeliveryError(message, permanent=True, code=status, enhanced=code, text=text, server=server,
                         stage=stage, hint=hint, exit_code=exit_code)


def _error_body(response) -> tuple[str | None, str]:
    try:
        data = response.json()
    except ValueError:
        return None, (response.text or "").strip()[:300]
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return err.get("code"), str(err.get("message") or "")[:500]
    return None, ""


def _json(response) -> dict:
    try:
        data = response.json()
    except ValueError:
        raise ProtocolError(f"Graph answered {response.status_code} without JSON", hint="check graph_endpoint") from None
    return data if isinstance(data, dict) else {}


def _reply_text(response) -> str:
    request_id = response.headers.get("request-id") or response.headers.get("client-request-id")
    text = f"{response.status_code} {response.reason or ''}".strip()
    return f"{text} (request-id {request_id})" if request_id else text


def _path(url: str, endpoint: str) -> str:
    if url.startswith(endpoint):
        return url[len(endpoint):]
    return url.split("?", 1)[0]  # upload URLs carry a token in the query


# --- MIME helpers ---------------------------------------------------------------
def with_envelope_recipients(raw: bytes, recipients: list[str]) -> bytes:
    """Graph and EWS take recipients from the MIME headers, SMTP from the envelope. Envelope
    recipients missing from To/Cc/Bcc are added as a Bcc header (Exchange strips Bcc when it
    sends), so the same recipients get the message as over SMTP."""
    if not recipients:
        return raw
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    present = {addr.lower() for _, addr in email.utils.getaddresses(
        [v for h in ("To", "Cc", "Bcc") for v in (msg.get_all(h) or [])])}
    missing = [r for r in recipients if r.lower() not in present]
    if not missing:
        return raw
    header_end = raw.find(b"\r\n\r\n")
    sep = b"\r\n"
    if header_end < 0:
        header_end = raw.find(b"\n\n")
        sep = b"\n"
    if header_end < 0:
        return raw + b"\r\nBcc: " + ", ".join(missing).encode() + b"\r\n"
    return raw[:header_end] + sep + b"Bcc: " + ", ".join(missing).encode("utf-8") + raw[header_end:]


def split_attachments(raw: bytes) -> tuple[bytes, list[dict]]:
    """(message without its attachments, attachments) for the draft + upload session route."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    attachments: list[dict] = []

    def walk(part) -> None:
        if not part.is_multipart():
            return
        kept = []
        for child in part.get_payload():
            if not child.is_multipart() and _is_attachment(child):
                content = child.get_payload(decode=True) or b""
                cid = (child.get("Content-ID") or "").strip().strip("<>")
                attachments.append({
                    "name": child.get_filename() or "attachment",
                    "content_type": child.get_content_type(),
                    "content": content,
                    "is_inline": child.get_content_disposition() == "inline",
                    "content_id": cid or None,
                })
            else:
                walk(child)
                kept.append(child)
        part.set_payload(kept)

    walk(msg)
    return msg.as_bytes(policy=email.policy.SMTP), attachments


def _is_attachment(part) -> bool:
    disposition = part.get_content_disposition()
    if disposition == "attachment":
        return True
    return disposition == "inline" and bool(part.get_filename()) and part.get_content_maintype() != "text"


def mime_to_graph_json(raw: bytes) -> dict:
    """The message in Graph's JSON shape (for saveToSentItems = false)."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)

    def addrs(header: str) -> list[dict]:
        return [{"emailAddress": ({"address": a, "name": n} if n else {"address": a})}
                for n, a in email.utils.getaddresses([str(v) for v in msg.get_all(header) or []]) if a]

    body_part = msg.get_body(preferencelist=("html", "plain"))
    body = {"contentType": "text", "content": ""}
    if body_part is not None:
        body = {"contentType": "html" if body_part.get_content_subtype() == "html" else "text",
                "content": body_part.get_content()}
    out: dict[str, Any] = {
        "subject": str(msg.get("Subject", "")),
        "body": body,
        "toRecipients": addrs("To"),
        "ccRecipients": addrs("Cc"),
        "bccRecipients": addrs("Bcc"),
    }
    sender = addrs("From")
    if sender:
        out["from"] = sender[0]
    reply_to = addrs("Reply-To")
    if reply_to:
        out["replyTo"] = reply_to
    if msg.get("Message-ID"):
        out["internetMessageId"] = str(msg["Message-ID"]).strip()
    custom = [{"name": k, "value": str(v)} for k, v in msg.items() if k.lower().startswith("x-")]
    if custom:
        out["internetMessageHeaders"] = custom
    attachments = []
    for part in msg.iter_attachments():
        if part.is_multipart():
            continue
        att = {
            "@odata.type": "#microsoft.graph.fileAttachment",
            "name": part.get_filename() or "attachment",
            "contentType": part.get_content_type(),
            "contentBytes": base64.b64encode(part.get_payload(decode=True) or b"").decode(),
        }
        if part.get_content_disposition() == "inline":
            att["isInline"] = True
            cid = (part.get("Content-ID") or "").strip().strip("<>")
            if cid:
                att["contentId"] = cid
        attachments.append(att)
    if attachments:
        out["attachments"] = attachments
    return out


# Used by diagnostics: GET the mailbox (Graph answers the same auth and mailbox errors).
def probe_mailbox(transport: GraphTransport):
    """GET {mailbox} -> (status, detail). Needs User.Read (delegated) or User.Read.All; a 403
    here is reported as a warning by diagnostics, not as a failure of sendMail."""
    url = f"{transport.endpoint}{transport.mailbox_path}"
    # a 401 refreshes the token once and tries again, as sending does (GraphTransport._authorized)
    return transport._authorized("GET", url, stage="mailbox", params={"$select": "mail,userPrincipalName"})


__all__ = ["GraphTransport", "graph_error", "with_envelope_recipients", "split_attachments", "mime_to_graph_json"]
