"""Staged probes for the HTTP transports (graph, ews): `test connect` / `test send` as data.

Stages, each timed: token (or credentials) -> connect -> tls -> request -> response.
`--quit-after token|connect|tls` stops after that stage (any SMTP stage name: before the request).
- token: the OAuth access token (delegated cache, client credentials or a stored static
  token) or, for EWS basic auth, where the password comes from. Never the value.
- connect / tls: a TCP connection and a TLS handshake to the API host with the profile's
  verification settings (ca_file, tls_verify), showing the protocol, cipher and certificate.
  Through a proxy these are folded into the request.
- request / response: `test connect` makes a harmless authenticated request (Graph: GET the
  mailbox; EWS: GetFolder Sent Items); `test send` sends the message (Graph sendMail / EWS
  CreateItem) and shows the reply.

Returns the same ProbeReport as the SMTP probe, with the same exit-code rules: the failing
stage's error decides the exit code; nothing secret ever appears in a detail."""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any, Callable
from urllib.parse import urlsplit

from mailctl.diagnostics.http_knowledge import explain_ews, explain_graph
from mailctl.diagnostics.knowledge import Explanation, explain
from mailctl.diagnostics.probe import ProbeMessage, ProbeReport, StageResult, describe_certificate
from mailctl.errors import ExitCode, MailctlError, UnavailableError

HTTP_TYPES = ("graph", "ews")
# --quit-after: token stops after the credentials, connect before TLS; these (and the SMTP
# stage names, for a profile switched from SMTP) stop before the API request
_BEFORE_REQUEST = ("token", "resolve", "connect", "tls", "banner", "ehlo", "starttls", "auth")


class _Stop(Exception):
    def __init__(self, err: MailctlError) -> None:
        super().__init__(err.message)
        self.err = err


def probe_http(profile, secrets, *, message: ProbeMessage | None = None, quit_after: str | None = None) -> ProbeReport:
    if profile.type == "graph":
        from mailctl.transports.graph import GraphTransport

        transport = GraphTransport(profile, secrets)
        target = transport.endpoint
    else:
        from mailctl.transports.ews import EwsTransport

        transport = EwsTransport(profile, secrets)
        target = transport.url or "autodiscover"
    start = time.perf_counter()
    report = ProbeReport(profile.name, profile.type, target, settings=_settings(profile, transport))
    warnings = list(_warnings(profile))
    report.settings["warnings"] = warnings
    for text in warnings:
        report.stages.append(StageResult("lint", "ok", 0.0, target, f"warning: {text}"))

    def run(name: str, fn: Callable[[], Any], describe: Callable[[Any], tuple[str, dict]] | None = None) -> Any:
        t0 = time.perf_counter()
        try:
            value = fn()
        except MailctlError as err:
            report.stages.append(StageResult(
                name, "failed", time.perf_counter() - t0, report.target, error=err.message,
                explanation=_explain(profile, err, name), exit_code=int(err.exit_code), data=_reply_data(err),
            ))
            raise _Stop(err) from err
        detail, data = describe(value) if describe else ("", {})
        report.stages.append(StageResult(name, "ok", time.perf_counter() - t0, report.target, detail, data))
        return value

    try:
        try:
            _credentials_stage(run, profile, secrets, transport)
            url = transport.endpoint if profile.type == "graph" else transport.url
            if url and quit_after != "token":
                _tls_stages(run, report, profile, secrets, url, stop_after_connect=quit_after == "connect")
            if quit_after in _BEFORE_REQUEST:
                report.server = target
            elif profile.type == "graph":
                _graph_request(run, report, transport, message)
            else:
                _ews_request(run, report, transport, message)
        finally:
            transport.close()
    except _Stop as stop:
        report.exit_code = int(stop.err.exit_code)
        report.error = stop.err.message
        report.hint = stop.err.hint
        failed = report.failed_stage
        if failed and failed.explanation and not report.hint:
            report.hint = failed.explanation.fix
    report.duration = time.perf_counter() - start
    return report


# --- stages -----------------------------------------------------------------------------
def _credentials_stage(run, profile, secrets, transport) -> None:
    auth = profile.values.get("auth") or ("password" if profile.type == "ews" else "oauth")
    if profile.type == "ews" and auth == "password":
        def password() -> str:
            secrets.require(profile, "password")
            return secrets.lookup(profile, "password")[1] or "secret store"

        run("credentials", password, lambda where: (f"password for {profile.values.get('username') or transport.mailbox} from {where}", {"auth": "password", "source": where}))
        return

    def token() -> tuple[bool, float]:
        from mailctl.transports.http import bearer_token

        value, static = bearer_token(profile, secrets)
        return static, len(value)

    def describe(v) -> tuple[str, dict]:
        static, _length = v
        kind = "static access_token secret" if static else (
            "client credentials (app-only)" if auth == "client-credentials" else "delegated token from `auth login`")
        return f"{kind}; token acquired (not shown)", {"auth": auth, "static": static}

    run("token", token, describe)


def _tls_stages(run, report: ProbeReport, profile, secrets, url: str, *, stop_after_connect: bool = False) -> None:
    from mailctl.transports.http import proxies_for, redact_url, tls_settings

    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxies = proxies_for(profile, secrets, url)
    proxy = proxies.get(parts.scheme) or proxies.get("https")
    if proxy:
        report.stages.append(StageResult("connect", "skipped", 0.0, f"{host}:{port}", f"through the proxy {redact_url(proxy)}: checked by the request"))
        return
    timeout = float(profile.values.get("timeout") or 30)

    def connect() -> socket.socket:
        try:
            return socket.create_connection((host, port), timeout=timeout)
        except socket.gaierror as exc:
            raise UnavailableError(f"cannot resolve {host}: {exc.strerror or exc}", hint="check the URL's host name and DNS") from exc
        except OSError as exc:
            raise UnavailableError(f"cannot connect to {host}:{port}: {exc.strerror or exc}",
                                   hint="check the URL, the network, a firewall, or set a proxy in the profile") from exc

    sock = run("connect", connect, lambda s: (f"{s.getpeername()[0]}:{s.getpeername()[1]}", {"peer": f"{s.getpeername()[0]}:{s.getpeername()[1]}"}))
    if stop_after_connect:
        sock.close()
        return
    if parts.scheme != "https":
        sock.close()
        report.stages.append(StageResult("tls", "skipped", 0.0, f"{host}:{port}", "http:// URL: the connection is NOT encrypted"))
        return
    tls = tls_settings(profile)

    def handshake() -> ssl.SSLSocket:
        if tls.verify is False:
            ctx = ssl._create_unverified_context()
        else:
            ctx = ssl.create_default_context(cafile=tls.verify if isinstance(tls.verify, str) else None)
        ctx.set_alpn_protocols(["http/1.1"])
        try:
            return ctx.wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            report.certificates = _unverified_chain(host, port, timeout)
            report.tls = {"version": None, "cipher": None, "bits": None,
                          "verification": f"FAILED: {exc.verify_message or exc.reason}"}
            raise UnavailableError(
                f"TLS handshake with {host}:{port} failed: certificate verify failed: {exc.verify_message or exc.reason}",
                hint="check the server certificate; for a private CA set ca_file in the profile (tls_verify = false only for testing)",
            ) from exc
        except (ssl.SSLError, OSError) as exc:
            raise UnavailableError(f"TLS handshake with {host}:{port} failed: {exc}", hint="check that the URL's port speaks HTTPS") from exc

    def describe(tsock: ssl.SSLSocket) -> tuple[str, dict]:
        cipher = tsock.cipher() or ("", "", 0)
        if tls.verify is False:
            verification = "NOT verified (tls_verify = false)"
        elif profile.values.get("ca_file"):
            verification = f"ok: chain verified (system store + ca_file {profile.values.get('ca_file')}), host name matches"
        else:
            verification = "ok: chain verified (system store), host name matches"
        info = {"version": tsock.version(), "cipher": cipher[0], "bits": cipher[2], "verification": verification}
        report.tls = info
        der = tsock.getpeercert(binary_form=True)
        report.certificates = [describe_certificate(der)] if der else []
        return f"{info['version']} {info['cipher']}; {verification}", dict(info)

    try:
        tsock = run("tls", handshake, describe)
        tsock.close()
    finally:
        tls.cleanup()
        try:
            sock.close()
        except OSError:
            pass


def _unverified_chain(host: str, port: int, timeout: float) -> list[dict[str, Any]]:
    """After a verification failure: fetch the certificate without verifying, only to show it."""
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 10.0)) as raw:
            with ssl._create_unverified_context().wrap_socket(raw, server_hostname=host) as tsock:
                der = tsock.getpeercert(binary_form=True)
        return [describe_certificate(der)] if der else []
    except Exception:
        return []


def _exchange(run, report: ProbeReport, profile, request_detail: str, fn: Callable[[], Any],
              describe: Callable[[Any], tuple[str, dict]]) -> Any:
    """`request` times the HTTP exchange; `response` judges the reply. A server that answered
    with an error passes `request` and fails `response` (with the API error code); a request
    that got no answer (connection, TLS, proxy) fails `request`."""
    t0 = time.perf_counter()
    try:
        value, err = fn(), None
    except MailctlError as exc:
        value, err = None, exc
    duration = time.perf_counter() - t0
    answered = err is not None and (getattr(err, "http_status", None) is not None or getattr(err, "error_code", None))
    if err is not None and not answered:
        report.stages.append(StageResult("request", "failed", duration, report.target, request_detail, error=err.message,
                                         explanation=_explain(profile, err, "request"), exit_code=int(err.exit_code),
                                         data=_reply_data(err)))
        raise _Stop(err)
    if err is not None:
        status = getattr(err, "http_status", None)
        report.stages.append(StageResult("request", "ok", duration, report.target,
                                         request_detail + (f" -> HTTP {status}" if status else " -> answered")))
        report.stages.append(StageResult("response", "failed", 0.0, report.target, error=err.message,
                                         explanation=_explain(profile, err, "response"), exit_code=int(err.exit_code),
                                         data=_reply_data(err)))
        raise _Stop(err)
    report.stages.append(StageResult("request", "ok", duration, report.target, request_detail))
    return run("response", lambda: value, describe)


def _graph_request(run, report: ProbeReport, transport, message: ProbeMessage | None) -> None:
    transport.open()  # the token was checked by the token stage; this builds the HTTPS session
    detail = _graph_request_detail(transport, message)
    if message is None:
        from mailctl.transports.graph import graph_error, probe_mailbox

        def lookup():
            response = probe_mailbox(transport)
            if response.status_code >= 400 and response.status_code != 403:
                # 403 only says the token may not read the user object (User.Read); sendMail may still work.
                raise graph_error(response, server=transport.endpoint, stage="mailbox", profile_name=transport.profile.name)
            return response

        _exchange(run, report, transport.profile, detail, lookup, lambda r: _describe_mailbox(transport, r))
        report.server = transport.endpoint
        return
    result = _exchange(run, report, transport.profile, detail,
                       lambda: transport.send(message.raw, message.sender, message.recipients),
                       lambda r: (f"{r.reply} via the {transport.last_route} route", {"route": transport.last_route, "reply": r.reply}))
    report.server = result.server
    report.result = {"server": result.server, "reply": result.reply, "queue_id": None, "refused": {}, "used_alternate": False,
                     "route": transport.last_route}


def _graph_request_detail(transport, message: ProbeMessage | None) -> str:
    if message is None:
        return f"GET {transport.mailbox_path} (Authorization: Bearer [redacted])"
    return (f"POST {transport.mailbox_path}/sendMail, {len(message.raw)} bytes of MIME "
            f"for {len(message.recipients)} recipient(s) (Authorization: Bearer [redacted])")


def _describe_mailbox(transport, response) -> tuple[str, dict]:
    if response.status_code == 403:
        return ("token accepted; reading the mailbox needs User.Read / User.Read.All (403): sendMail rights "
                "are checked only by `test send`", {"status": 403})
    try:
        data = response.json()
    except ValueError:
        data = {}
    who = data.get("mail") or data.get("userPrincipalName") or "?"
    return f"{response.status_code} OK: mailbox {who}", {"status": response.status_code, "mailbox": who}


def _ews_request(run, report: ProbeReport, transport, message: ProbeMessage | None) -> None:
    try:
        transport.open()  # builds the exchangelib account: no network unless autodiscover
    except MailctlError as err:
        report.stages.append(StageResult("request", "failed", 0.0, report.target, error=err.message,
                                         explanation=_explain(transport.profile, err, "request"), exit_code=int(err.exit_code)))
        raise _Stop(err) from err
    who = f"as {transport.mailbox} ({transport.auth})"
    if message is None:
        _exchange(run, report, transport.profile, f"GetFolder sentitems {who}", transport.check,
                  lambda name: (f"NoError: folder {name!r}", {"folder": name}))
        report.server = transport.url
        return
    disposition = "SendAndSaveCopy" if transport.profile.values.get("save_to_sent_items", True) else "SendOnly"
    result = _exchange(run, report, transport.profile,
                       f"CreateItem {disposition}, {len(message.raw)} bytes of MIME {who}",
                       lambda: transport.send(message.raw, message.sender, message.recipients),
                       lambda r: (r.reply, {"reply": r.reply}))
    report.server = result.server
    report.result = {"server": result.server, "reply": result.reply, "queue_id": None, "refused": {}, "used_alternate": False}


# --- helpers -----------------------------------------------------------------------------
def _settings(profile, transport) -> dict[str, Any]:
    from mailctl.transports.http import redact_url

    values = profile.values
    out: dict[str, Any] = {
        "auth": values.get("auth") or None,
        "username": values.get("username") or None,
        "proxy": redact_url(values["proxy"]) if values.get("proxy") else None,
        "ca_file": values.get("ca_file") or None,
        "tls_verify": values.get("tls_verify", True),
        "save_to_sent_items": values.get("save_to_sent_items", True),
    }
    if profile.type == "graph":
        out["cloud"] = values.get("cloud") or "global"
        out["endpoint"] = transport.endpoint
    else:
        out["ews_url"] = transport.url or None
        out["autodiscover"] = bool(values.get("autodiscover"))
    return out


def _warnings(profile) -> list[str]:
    if profile.type != "ews":
        return []
    from mailctl.transports.ews import lint_warnings

    return lint_warnings(profile)


def _explain(profile, err: MailctlError, stage: str) -> Explanation | None:
    code = getattr(err, "error_code", None)
    status = getattr(err, "http_status", None)
    known = explain_graph(code, status) if profile.type == "graph" else explain_ews(code, status)
    if known is not None and (code or status):
        return Explanation(f"{profile.type}-{known.code}", known.meaning[0].upper() + known.meaning[1:] + ".",
                           (err.hint or known.hint).replace("PROFILE", profile.name), known.exit_code)
    host = urlsplit(profile.values.get("graph_endpoint") or profile.values.get("ews_url") or "").hostname
    return explain(err, stage=stage, context={"profile": profile.name, "host": host, "port": 443})


def _reply_data(err: MailctlError) -> dict[str, Any]:
    data = {}
    for key in ("http_status", "error_code", "code", "enhanced", "text"):
        value = getattr(err, key, None)
        if value not in (None, ""):
            data[key] = value
    return data


__all__ = ["probe_http", "HTTP_TYPES", "ExitCode"]
