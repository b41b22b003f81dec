"""Known Microsoft Graph and Exchange Web Services failures: what they mean, what to do, and
which exit code they deserve. Used by the graph/ews transports to build their errors and by
diagnostics to explain a reply; the SMTP knowledge base can import GRAPH_ERRORS/EWS_ERRORS.

Sources: ../shared/PROVIDERS.md, Microsoft's Graph and EWS error references, exchangelib's
errors module (every EWS ResponseCode is an exception class of the same name)."""

from __future__ import annotations

from dataclasses import dataclass

from mailctl.errors import ExitCode


@dataclass(frozen=True)
class KnownFailure:
    code: str
    meaning: str
    hint: str
    exit_code: ExitCode
    permanent: bool = True  # False: retrying later can help (outbox defers)
    auth: bool = False  # an authentication/authorization failure rather than a message one


_GRANT_MAIL_SEND = (
    "delegated (auth = oauth): the app registration needs the Mail.Send delegated permission, consented; "
    "app-only (auth = client-credentials): the Mail.Send application permission with admin consent, and an "
    "application access policy (New-ApplicationAccessPolicy) must include this mailbox"
)

GRAPH_ERRORS: dict[str, KnownFailure] = {
    k.code: k
    for k in (
        KnownFailure(
            "ErrorSendAsDenied",
            "the mailbox is not allowed to send as the message's From address",
            "send From the mailbox's own address, or have an Exchange admin grant Send As "
            "(Add-RecipientPermission -AccessRights SendAs) or Send on Behalf",
            ExitCode.NOPERM,
        ),
        KnownFailure(
            "MailboxNotEnabledForRESTAPI",
            "the user has no Exchange Online mailbox Graph can reach (no licence, inactive, soft-deleted or on-premises)",
            "give the user an Exchange Online licence; for an on-premises mailbox use an ews or smtp profile",
            ExitCode.CONFIG,
        ),
        KnownFailure("ErrorAccessDenied", "access to the mailbox was denied", _GRANT_MAIL_SEND, ExitCode.NOPERM, auth=True),
        KnownFailure(
            "Authorization_RequestDenied",
            "the token lacks the permission this request needs",
            _GRANT_MAIL_SEND,
            ExitCode.NOPERM,
            auth=True,
        ),
        KnownFailure(
            "InvalidAuthenticationToken",
            "Graph rejected the access token (expired, for another resource, or from another national cloud)",
            "run: mailctl auth login PROFILE; check the profile's cloud matches the tenant (tokens do not cross clouds)",
            ExitCode.NOPERM,
            auth=True,
        ),
        KnownFailure(
            "ErrorMimeContentInvalidBase64String",
            "the request body was not valid base64 of a MIME message",
            "Graph wants the whole RFC 5322 message base64-encoded with Content-Type: text/plain; "
            "this should not happen with mailctl's own messages: report it with MAILCTL_DEBUG=1",
            ExitCode.DATAERR,
        ),
        KnownFailure(
            "ErrorMimeContentInvalid",
            "Exchange could not parse the MIME message",
            "check the message (headers, encoding); `mailctl send --queue ...` keeps the message and `mailctl queue show ID --raw` shows exactly what would be sent",
            ExitCode.DATAERR,
        ),
        KnownFailure(
            "ErrorInvalidRecipients",
            "at least one recipient address is invalid",
            "check the To/Cc/Bcc addresses",
            ExitCode.PROBLEMS,
        ),
        KnownFailure(
            "ErrorMessageSizeExceeded",
            "the message is larger than the mailbox's send limit",
            "send smaller attachments or ask the Exchange admin to raise MaxSendSize",
            ExitCode.DATAERR,
        ),
        KnownFailure(
            "ErrorQuotaExceeded",
            "the mailbox is over its storage quota",
            "free space in the mailbox (Sent Items, Deleted Items) or set save_to_sent_items = false",
            ExitCode.TEMPFAIL,
            permanent=False,
        ),
        KnownFailure(
            "ErrorSubmissionQuotaExceeded",
            "the mailbox exceeded its sending quota (recipients per day or messages per minute)",
            "wait and send again; the outbox retries later",
            ExitCode.TEMPFAIL,
            permanent=False,
        ),
        KnownFailure(
            "ErrorInvalidUser",
            "the mailbox in the URL does not exist",
            "check the profile's username (the mailbox UPN for app-only sends)",
            ExitCode.NOINPUT,
        ),
        KnownFailure(
            "ResourceNotFound",
            "the user or mailbox in the URL was not found",
            "check the profile's username (the mailbox UPN for app-only sends) and tenant_id",
            ExitCode.NOINPUT,
        ),
        KnownFailure(
            "ErrorItemNotFound",
            "the mailbox or draft was not found",
            "check the profile's username (the mailbox UPN for app-only sends)",
            ExitCode.NOINPUT,
        ),
        KnownFailure(
            "ApplicationThrottled",
            "Graph throttled this application",
            "send more slowly (rate_limit_per_minute); the outbox retries later",
            ExitCode.TEMPFAIL,
            permanent=False,
        ),
        KnownFailure(
            "TooManyRequests",
            "Graph throttled the mailbox (about 4 concurrent requests, 30 messages a minute)",
            "send more slowly (rate_limit_per_minute); the outbox retries later",
            ExitCode.TEMPFAIL,
            permanent=False,
        ),
    )
}

EWS_ERRORS: dict[str, KnownFailure] = {
    k.code: k
    for k in (
        KnownFailure(
            "ErrorAccessDenied",
            "Exchange denied access to the mailbox",
            "check the account has rights on the mailbox (FullAccess / Send As); for OAuth the token needs "
            "EWS.AccessAsUser.All (delegated) or full_access_as_app (app-only)",
            ExitCode.NOPERM,
            auth=True,
        ),
        KnownFailure(
            "ErrorInvalidRecipients",
            "at least one recipient address is invalid",
            "check the To/Cc/Bcc addresses",
            ExitCode.PROBLEMS,
        ),
        KnownFailure(
            "ErrorSendAsDenied",
            "the account is not allowed to send as the message's From address",
            "send From the mailbox's own address, or grant Send As (Add-ADPermission / Add-RecipientPermission)",
            ExitCode.NOPERM,
        ),
        KnownFailure(
            "ErrorImpersonateUserDenied",
            "the service account may not impersonate this mailbox",
            "grant the ApplicationImpersonation role (New-ManagementRoleAssignment) or use delegate access",
            ExitCode.NOPERM,
            auth=True,
        ),
        KnownFailure(
            "ErrorNonExistentMailbox",
            "the mailbox does not exist on this server",
            "check the profile's username (primary SMTP address of the mailbox)",
            ExitCode.NOINPUT,
        ),
        KnownFailure(
            "ErrorMimeContentInvalid",
            "Exchange could not parse the MIME message",
            "check the message (headers, encoding)",
            ExitCode.DATAERR,
        ),
        KnownFailure(
            "ErrorMimeContentConversionFailed",
            "Exchange could not convert the MIME message",
            "check the message (headers, encoding, attachments)",
            ExitCode.DATAERR,
        ),
        KnownFailure(
            "ErrorMessageSizeExceeded",
            "the message is larger than the server's send limit",
            "send smaller attachments or ask the Exchange admin to raise MaxSendSize / maxAllowedContentLength",
            ExitCode.DATAERR,
        ),
        KnownFailure(
            "ErrorQuotaExceeded",
            "the mailbox is over its storage quota",
            "free space in the mailbox or set save_to_sent_items = false",
            ExitCode.TEMPFAIL,
            permanent=False,
        ),
        KnownFailure(
            "ErrorServerBusy",
            "Exchange is throttling this account (EWS throttling policy)",
            "send more slowly (rate_limit_per_minute); the outbox retries later",
            ExitCode.TEMPFAIL,
            permanent=False,
        ),
        KnownFailure(
            "ErrorMailboxStoreUnavailable",
            "the mailbox database is not available",
            "try again later",
            ExitCode.TEMPFAIL,
            permanent=False,
        ),
        KnownFailure(
            "ErrorMailboxMoveInProgress",
            "the mailbox is being moved",
            "try again later",
            ExitCode.TEMPFAIL,
            permanent=False,
        ),
        KnownFailure(
            "ErrorInternalServerTransientError",
            "Exchange reported a transient internal error",
            "try again later",
            ExitCode.TEMPFAIL,
            permanent=False,
        ),
        KnownFailure(
            "ErrorInvalidSchemaVersionForMailboxVersion",
            "the EWS schema version does not match the mailbox's server version",
            "report the server version (Exchange build) with the error",
            ExitCode.PROTOCOL,
        ),
    )
}

# What an HTTP status means when the body names no known error code.
HTTP_STATUS: dict[int, KnownFailure] = {
    400: KnownFailure("HTTP 400", "the server rejected the request", "see the error text", ExitCode.PROBLEMS),
    401: KnownFailure(
        "HTTP 401",
        "the credentials or token were rejected",
        "for OAuth run: mailctl auth login PROFILE; for a password, store it again with "
        "mailctl profile edit PROFILE --password-stdin",
        ExitCode.NOPERM,
        auth=True,
    ),
    403: KnownFailure("HTTP 403", "access denied", _GRANT_MAIL_SEND, ExitCode.NOPERM, auth=True),
    404: KnownFailure(
        "HTTP 404",
        "the URL or mailbox was not found",
        "check graph_endpoint / ews_url and the profile's username",
        ExitCode.NOINPUT,
    ),
    413: KnownFailure(
        "HTTP 413",
        "the request is too large for the server",
        "send smaller attachments",
        ExitCode.DATAERR,
    ),
    429: KnownFailure(
        "HTTP 429",
        "throttled: too many requests",
        "send more slowly (rate_limit_per_minute); the outbox retries later",
        ExitCode.TEMPFAIL,
        permanent=False,
    ),
    503: KnownFailure(
        "HTTP 503",
        "the service is unavailable or throttling",
        "try again later; the outbox retries",
        ExitCode.TEMPFAIL,
        permanent=False,
    ),
}


def explain_graph(code: str | None, status: int | None = None) -> KnownFailure | None:
    """The known failure for a Graph error code, else for the HTTP status."""
    if code and code in GRAPH_ERRORS:
        return GRAPH_ERRORS[code]
    return explain_status(status)


def explain_ews(code: str | None, status: int | None = None) -> KnownFailure | None:
    if code and code in EWS_ERRORS:
        return EWS_ERRORS[code]
    return explain_status(status)


def explain_status(status: int | None) -> KnownFailure | None:
    if status is None:
        return None
    if status in HTTP_STATUS:
        return HTTP_STATUS[status]
    if 500 <= status < 600:
        return KnownFailure(f"HTTP {status}", "server error", "try again later; the outbox retries", ExitCode.TEMPFAIL, permanent=False)
    if 400 <= status < 500:
        return HTTP_STATUS[400]
    return None


# --- the shared knowledge base (knowledge/smtp.py) ------------------------------
GRAPH_STAGES = ("sendMail", "draft", "attachment", "upload-session", "upload", "send", "cleanup", "request", "mailbox")
EWS_STAGES = ("CreateItem", "GetFolder", "autodiscover")
_registered = False


def knowledge_entries() -> list:
    """GRAPH_ERRORS and EWS_ERRORS as entries of knowledge.smtp (matched on the API error
    code and the stage, so ErrorAccessDenied gets the Graph or the EWS hint as appropriate)."""
    from mailctl.knowledge import smtp as kb

    entries = []
    for prefix, table, stages in (("graph", GRAPH_ERRORS, GRAPH_STAGES), ("ews", EWS_ERRORS, EWS_STAGES)):
        for code, known in table.items():
            entries.append(kb.KnownFailure(
                f"{prefix}-{code}",
                known.meaning[0].upper() + known.meaning[1:] + ".",
                known.hint.replace("PROFILE", "{profile}"),
                known.exit_code,
                error_codes=(code,),
                stages=stages,
                source="Microsoft Graph" if prefix == "graph" else "Exchange Web Services",
            ))
    return entries


def register_with_knowledge_base() -> None:
    """Add the Graph/EWS entries to knowledge.smtp once per process.

    Not called automatically: transports/http_stages.py explains Graph/EWS failures from the
    tables above directly, and docs/smtp.md's test requires every registered id to be listed
    there (these are documented in docs/graph-ews.md)."""
    global _registered
    if _registered:
        return
    from mailctl.knowledge import smtp as kb

    for entry in knowledge_entries():
        if not any(e.id == entry.id for e in kb.KNOWLEDGE):
            kb.register(entry)
    _registered = True
