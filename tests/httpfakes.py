"""Local HTTPS servers on 127.0.0.1 (trustme certificates) that speak enough of the Microsoft
Graph and Exchange Web Services wire protocols for mailctl's transports, recording every
request so tests can assert exactly what mailctl sent.

    with FakeHTTPS(ca) as srv:
        srv.on("POST", r"/v1.0/me/sendMail", Reply(202))
        ... srv.requests[0].body ...
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Union
from xml.sax.saxutils import escape


@dataclass
class Recorded:
    method: str
    path: str  # without the query
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def json(self):
        return json.loads(self.body)


@dataclass
class Reply:
    status: int
    body: Union[bytes, str, dict, None] = None
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        body = self.body
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode("utf-8")
            headers.setdefault("Content-Type", "text/xml; charset=utf-8" if body.lstrip().startswith(b"<") else "text/plain")
        return body or b"", headers


Responder = Union[Reply, Callable[[Recorded], Reply]]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        rec = Recorded(self.command, path, query, {k.lower(): v for k, v in self.headers.items()}, body)
        fake = self.server.fake
        with fake.lock:
            fake.requests.append(rec)
        reply = fake.dispatch(rec)
        data, headers = reply.encoded()
        self.send_response(reply.status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: "FakeHTTPS"

    def handle_error(self, request, client_address):  # TLS failures from clients that distrust us
        pass


class FakeHTTPS:
    """An HTTPS server on 127.0.0.1 with a certificate from `ca` (a trustme.CA)."""

    def __init__(self, ca, *, hostname: str = "127.0.0.1"):
        self.ca = ca
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        self._routes: list[tuple[str, re.Pattern, list[Responder]]] = []
        cert = ca.issue_cert(hostname, "localhost")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True, do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.port = self._server.server_address[1]
        self.base_url = f"https://127.0.0.1:{self.port}"

    def __enter__(self) -> "FakeHTTPS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def on(self, method: str, pattern: str, *responders: Responder) -> "FakeHTTPS":
        """Answer METHOD requests whose path fully matches `pattern`; several responders are
        used in turn, the last one repeats. Later routes take precedence."""
        self._routes.insert(0, (method.upper(), re.compile(pattern), list(responders)))
        return self

    def dispatch(self, rec: Recorded) -> Reply:
        for method, pattern, responders in self._routes:
            if method == rec.method and pattern.fullmatch(rec.path):
                with self.lock:
                    responder = responders.pop(0) if len(responders) > 1 else responders[0]
                return responder(rec) if callable(responder) else responder
        return Reply(404, {"error": {"code": "NoRoute", "message": f"no fake route for {rec.method} {rec.path}"}})

    def find(self, method: str, pattern: str) -> list[Recorded]:
        rx = re.compile(pattern)
        return [r for r in self.requests if r.method == method and rx.fullmatch(r.path)]


# --- Microsoft Graph ------------------------------------------------------------
def graph_error(status: int, code: str, message: str, headers: dict | None = None) -> Reply:
    """An error shaped like Graph's: {"error": {"code", "message", "innerError": {...}}}."""
    return Reply(
        status,
        {
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "date": "2026-11-21T10:00:00",
                    "request-id": "5f0e5b8e-0000-4000-8000-000000000001",
                    "client-request-id": "5f0e5b8e-0000-4000-8000-000000000001",
                },
            }
        },
        headers or {},
    )


ACCEPTED = Reply(202, b"", {"request-id": "8a1c6f2e-1111-4222-8333-944455556666"})


def graph_fake(srv: FakeHTTPS) -> FakeHTTPS:
    """Default Graph routes: sendMail 202, drafts, attachments, upload sessions, send."""
    srv.on("POST", r"/v1.0/(me|users/[^/]+)/sendMail", ACCEPTED)
    srv.on("POST", r"/v1.0/(me|users/[^/]+)/messages", Reply(201, {"id": "AAMkAGI2TG93AAA="}))
    srv.on("POST", r"/v1.0/(me|users/[^/]+)/messages/[^/]+/attachments", Reply(201, {"id": "AAMkATT1"}))
    srv.on("POST", r"/v1.0/(me|users/[^/]+)/messages/[^/]+/attachments/createUploadSession",
           lambda rec: Reply(201, {
               "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph.uploadSession",
               "uploadUrl": f"{srv.base_url}/upload/session1?authtoken=UPLOADSECRET",
               "expirationDateTime": "2026-11-21T12:00:00Z",
               "nextExpectedRanges": ["0-"],
           }))
    srv.on("PUT", r"/upload/[^/]+", _upload_chunk)
    srv.on("POST", r"/v1.0/(me|users/[^/]+)/messages/[^/]+/send", ACCEPTED)
    srv.on("DELETE", r"/v1.0/(me|users/[^/]+)/messages/[^/]+", Reply(204))
    srv.on("GET", r"/v1.0/(me|users/[^/]+)", Reply(200, {"mail": "ops@example.com", "userPrincipalName": "ops@example.com"}))
    return srv


def _upload_chunk(rec: Recorded) -> Reply:
    m = re.match(r"bytes (\d+)-(\d+)/(\d+)", rec.headers.get("content-range", ""))
    if not m or "authorization" in rec.headers:
        return Reply(401 if "authorization" in rec.headers else 400, {"error": {"code": "InvalidRequest", "message": "bad chunk"}})
    start, end, total = map(int, m.groups())
    if len(rec.body) != end - start + 1:
        return Reply(400, {"error": {"code": "InvalidRequest", "message": "length mismatch"}})
    if end + 1 == total:
        return Reply(201, b"", {"Location": "https://graph.example/attachment/1"})
    return Reply(200, {"expirationDateTime": "2026-11-21T12:00:00Z", "nextExpectedRanges": [f"{end + 1}-"]})


def decoded_mime(rec: Recorded) -> bytes:
    """The MIME message inside a Graph text/plain request body."""
    return base64.b64decode(rec.body, validate=True)


# --- Exchange Web Services ------------------------------------------------------
SOAP_NS = 'xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"'
M_NS = "http://schemas.microsoft.com/exchange/services/2006/messages"
T_NS = "http://schemas.microsoft.com/exchange/services/2006/types"

SERVER_VERSION = (
    '<h:ServerVersionInfo MajorVersion="15" MinorVersion="1" MajorBuildNumber="2507" MinorBuildNumber="39" '
    'Version="V2017_07_11" xmlns:h="http://schemas.microsoft.com/exchange/services/2006/types" '
    'xmlns="http://schemas.microsoft.com/exchange/services/2006/types" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema"/>'
)


def soap_envelope(body: str) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f"<s:Envelope {SOAP_NS}><s:Header>{SERVER_VERSION}</s:Header>"
        '<s:Body xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">'
        f"{body}</s:Body></s:Envelope>"
    )


def create_item_ok() -> Reply:
    """CreateItem with MessageDisposition SendAndSaveCopy/SendOnly: Success, NoError, empty Items."""
    return Reply(200, soap_envelope(
        f'<m:CreateItemResponse xmlns:m="{M_NS}" xmlns:t="{T_NS}"><m:ResponseMessages>'
        '<m:CreateItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
        "<m:Items /></m:CreateItemResponseMessage></m:ResponseMessages></m:CreateItemResponse>"
    ), {"Content-Type": "text/xml; charset=utf-8"})


def create_item_error(code: str, text: str) -> Reply:
    """A ResponseMessage error, as Exchange sends for ErrorInvalidRecipients, ErrorAccessDenied..."""
    return Reply(200, soap_envelope(
        f'<m:CreateItemResponse xmlns:m="{M_NS}" xmlns:t="{T_NS}"><m:ResponseMessages>'
        f'<m:CreateItemResponseMessage ResponseClass="Error"><m:MessageText>{escape(text)}</m:MessageText>'
        f"<m:ResponseCode>{code}</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>"
        "<m:Items /></m:CreateItemResponseMessage></m:ResponseMessages></m:CreateItemResponse>"
    ), {"Content-Type": "text/xml; charset=utf-8"})


def soap_fault(code: str, text: str, status: int = 500) -> Reply:
    """A SOAP fault (HTTP 500), as Exchange sends for ErrorNonExistentMailbox,
    ErrorImpersonateUserDenied, ErrorServerBusy..."""
    return Reply(status, (
        '<?xml version="1.0" encoding="utf-8"?>'
        f"<s:Envelope {SOAP_NS}><s:Body><s:Fault>"
        f'<faultcode xmlns:a="{T_NS}">a:{code}</faultcode>'
        f'<faultstring xml:lang="en-US">{escape(text)}</faultstring><detail>'
        f'<e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">{code}</e:ResponseCode>'
        f'<e:Message xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">{escape(text)}</e:Message>'
        "</detail></s:Fault></s:Body></s:Envelope>"
    ), {"Content-Type": "text/xml; charset=utf-8"})


def ews_fake(srv: FakeHTTPS, *, path: str = "/EWS/Exchange.asmx", basic: tuple[str, str] | None = None,
             bearer: str | None = None, create_item: Responder | None = None) -> FakeHTTPS:
    """An EWS endpoint. Unauthenticated requests get 401 with WWW-Authenticate (as IIS sends),
    wrong credentials 401; CreateItem answers with `create_item` (default: success)."""
    create = create_item or create_item_ok()
    expected = set()
    if basic:
        expected.add("Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode())
    if bearer:
        expected.add(f"Bearer {bearer}")

    def handle(rec: Recorded) -> Reply:
        auth = rec.headers.get("authorization")
        if expected and auth not in expected:
            return Reply(401, b"", {"WWW-Authenticate": 'Basic realm="mail.example.com"' if basic else "Bearer",
                                    "X-MS-Diagnostics": "4000000;reason=\"credentials rejected\""} if basic or bearer else {})
        op = soap_operation(rec.body)
        if op == "CreateItem":
            return create(rec) if callable(create) else create
        return soap_fault("ErrorInvalidRequest", f"The fake does not implement {op}.")

    srv.on("POST", path, handle)
    return srv


def soap_operation(body: bytes) -> str | None:
    """The first element name inside soap:Body (CreateItem, GetFolder, ...)."""
    m = re.search(rb"<(?:\w+:)?Body[^>]*>\s*<(?:\w+:)?(\w+)", body)
    return m.group(1).decode() if m else None


def soap_mime_content(body: bytes) -> bytes:
    m = re.search(rb"<(?:\w+:)?MimeContent[^>]*>([^<]*)</(?:\w+:)?MimeContent>", body)
    assert m, "no MimeContent in the request"
    return base64.b64decode(m.group(1))


# --- an HTTP CONNECT proxy ------------------------------------------------------
class ConnectProxy:
    """A plain HTTP proxy on 127.0.0.1 that only does CONNECT tunnels, recording the targets
    (and the Proxy-Authorization header) it was asked for."""

    def __init__(self, *, require_auth: str | None = None):
        import socket

        self.targets: list[str] = []
        self.auth_headers: list[str | None] = []
        self.require_auth = require_auth
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "ConnectProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client) -> None:
        import select
        import socket

        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(4096)
            if not chunk:
                client.close()
                return
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        method, target, _ = head[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        self.targets.append(target)
        self.auth_headers.append(headers.get("proxy-authorization"))
        if self.require_auth and headers.get("proxy-authorization") != self.require_auth:
            client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n")
            client.close()
            return
        if method != "CONNECT":
            client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            client.close()
            return
        host, _, port = target.rpartition(":")
        upstream = socket.create_connection((host, int(port)))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        socks = [client, upstream]
        try:
            while True:
                readable, _, _ = select.select(socks, [], [], 5)
                if not readable:
                    break
                for s in readable:
                    buf = s.recv(65536)
                    if not buf:
                        return
                    (upstream if s is client else client).sendall(buf)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()
