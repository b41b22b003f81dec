"""The HTTP plumbing shared by the Graph, EWS and Gmail API transports: one requests.Session
per transport built from the profile (proxy, ca_file, tls_verify, timeout), and a request
helper that honours 429/503 Retry-After within bounds.

The session has trust_env = False: REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE would otherwise
silently replace the profile's CA bundle (../shared/PROVIDERS.md). Proxies from the
environment (HTTPS_PROXY, NO_PROXY) are still honoured when the profile sets none.

requests is imported inside functions so that `mailctl --help` never loads it."""

from __future__ import annotations

import email.utils
import os
import re
import ssl
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote, urlsplit, urlunsplit

from mailctl.errors import ConfigError, TemporaryFailure, UnavailableError

RETRY_STATUSES = (429, 503)
DEFAULT_MAX_ATTEMPTS = 4
DEFAULT_MAX_WAIT = 60.0  # longest single Retry-After we sleep through; longer -> defer


@dataclass
class TlsSettings:
    """What `verify=` a request gets, and a temporary bundle to delete afterwards."""

    verify: bool | str
    temp_bundle: str | None = None

    def cleanup(self) -> None:
        if self.temp_bundle:
            try:
                os.unlink(self.temp_bundle)
            except OSError:
                pass
            self.temp_bundle = None


def _system_bundle() -> str | None:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            return candidate
    try:
        import certifi

        return certifi.where()
    except ImportError:  # pragma: no cover - requests depends on certifi
        return None


def tls_settings(profile) -> TlsSettings:
    """verify=False when tls_verify is off; with ca_file, a bundle of the system CAs plus the
    profile's (ca_file is an *extra* CA, DESIGN.md); otherwise the system CAs."""
    if not profile.values.get("tls_verify", True):
        return TlsSettings(False)
    ca_file = profile.values.get("ca_file") or ""
    if not ca_file:
        return TlsSettings(_system_bundle() or True)
    ca_path = os.path.expanduser(ca_file)
    try:
        with open(ca_path, "rb") as fh:
            extra = fh.read()
    except OSError as exc:
        raise ConfigError(
            f"profile {profile.name!r}: cannot read ca_file {ca_file}: {exc.strerror or exc}",
            hint=f"fix the path with: mailctl profile edit {profile.name} --ca-file PATH",
        ) from None
    if b"-----BEGIN CERTIFICATE-----" not in extra:
        raise ConfigError(
            f"profile {profile.name!r}: ca_file {ca_file} holds no PEM certificate",
            hint="ca_file must be a PEM bundle (-----BEGIN CERTIFICATE----- ...)",
        )
    parts = []
    system = _system_bundle()
    if system:
        with open(system, "rb") as fh:
            parts.append(fh.read())
    parts.append(extra)
    fd, path = tempfile.mkstemp(prefix="mailctl-http-ca-", suffix=".pem")
    with os.fdopen(fd, "wb") as fh:
        fh.write(b"\n".join(parts))
    return TlsSettings(path, temp_bundle=path)


def proxy_url(profile, secrets=None) -> str:
    """The profile's proxy URL with the password from the secret store filled in."""
    proxy = profile.values.get("proxy") or ""
    if not proxy:
        return ""
    parts = urlsplit(proxy)
    if parts.username and not parts.password and secrets is not None:
        password = secrets.get(profile, "proxy_password")
        if password:
            host = parts.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            netloc = f"{quote(parts.username, safe='')}:{quote(password, safe='')}@{host}"
            if parts.port:
                netloc += f":{parts.port}"
            proxy = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    if proxy.startswith("socks5://"):
        # socks5h: let the proxy resolve names (the usual reason to use one).
        proxy = "socks5h://" + proxy[len("socks5://"):]
    return proxy


def proxies_for(profile, secrets=None, url: str | None = None) -> dict[str, str]:
    proxy = proxy_url(profile, secrets)
    if proxy:
        return {"http": proxy, "https": proxy}
    if url:
        import requests.utils

        return dict(requests.utils.get_environ_proxies(url))
    return {}


def redact_url(url: str) -> str:
    """A URL without credentials, for messages."""
    parts = urlsplit(url)
    if parts.password or parts.username:
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return url


def build_session(profile, secrets=None, *, base_url: str | None = None):
    """A requests.Session for this profile; close it with close_session()."""
    import requests

    session = requests.Session()
    session.trust_env = False
    tls = tls_settings(profile)
    session.verify = tls.verify
    session.proxies.update(proxies_for(profile, secrets, base_url))
    session.headers["User-Agent"] = user_agent()
    session.mailctl_tls = tls  # type: ignore[attr-defined]
    session.mailctl_timeout = float(profile.values.get("timeout") or 30)  # type: ignore[attr-defined]
    return session


def close_session(session) -> None:
    if session is None:
        return
    try:
        session.close()
    finally:
        tls = getattr(session, "mailctl_tls", None)
        if tls is not None:
            tls.cleanup()


class SessionTransport:
    """Lifecycle shared by the HTTP API transports (graph, gmail-api): one requests session
    for the profile's endpoint (proxy, CA bundle) and one bearer token, both made on open()
    and reused for every message until close(). Subclasses set self.profile, self.secrets,
    self.endpoint, self.session = None, self._token = None, and define _fetch_token()."""

    def __enter__(self):
        try:
            self.open()
        except BaseException:
            self.close()  # __exit__ will not run: drop the session and its temporary CA bundle
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        if self.session is None:
            self.session = build_session(self.profile, self.secrets, base_url=self.endpoint)
        if self._token is None:
            self._fetch_token()

    def close(self) -> None:
        close_session(self.session)
        self.session = None

    def _fetch_token(self, force_refresh: bool = False) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def user_agent() -> str:
    from mailctl import __version__

    return f"mailctl/{__version__}"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class RetryPolicy:
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_wait: float = DEFAULT_MAX_WAIT  # one Retry-After longer than this: give up, defer
    max_total: float = 120.0  # all waits of one request together
    sleep: Callable[[float], None] = time.sleep


def request(
    session,
    method: str,
    url: str,
    *,
    retry: RetryPolicy | None = None,
    on_retry: Callable[[int, float, Any], None] | None = None,
    **kwargs: Any,
):
    """session.request() that maps transport failures to mailctl errors and waits out 429/503
    within `retry`'s bounds. Returns the last response (the caller judges its status)."""
    import requests

    retry = retry or RetryPolicy()
    kwargs.setdefault("timeout", getattr(session, "mailctl_timeout", 30.0))
    waited = 0.0
    attempt = 0
    while True:
        attempt += 1
        try:
            with warnings.catch_warnings():
                if session.verify is False:  # tls_verify = false was the user's explicit choice
                    warnings.simplefilter("ignore")
                response = session.request(method, url, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise UnavailableError(
                f"TLS handshake with {_host(url)} failed: {_reason(exc)}",
                hint="check the server certificate; for a private CA set ca_file in the profile "
                "(tls_verify = false only for testing)",
            ) from exc
        except requests.exceptions.ProxyError as exc:
            raise UnavailableError(
                f"proxy refused or failed the connection to {_host(url)}: {_reason(exc)}",
                hint="check the profile's proxy URL and the proxy password (secret kind proxy_password)",
            ) from exc
        except requests.exceptions.ConnectTimeout as exc:
            raise UnavailableError(
                f"timed out connecting to {_host(url)}",
                hint="check the network, a firewall or the profile's proxy; raise timeout if the link is slow",
            ) from exc
        except requests.exceptions.ReadTimeout as exc:
            raise TemporaryFailure(
                f"{_host(url)} did not answer within {kwargs['timeout']:g} s",
                hint="the request may still have been processed; raise the profile's timeout",
            ) from exc
        except requests.exceptions.ConnectionError as exc:
            raise UnavailableError(
                f"cannot connect to {_host(url)}: {_reason(exc)}",
                hint="check the host name, DNS, the network and the profile's proxy",
            ) from exc
        if response.status_code not in RETRY_STATUSES or attempt >= retry.max_attempts:
            return response
        delay = parse_retry_after(response.headers.get("Retry-After"))
        if delay is None:
            delay = min(2.0 ** (attempt - 1), retry.max_wait)
        if delay > retry.max_wait or waited + delay > retry.max_total:
            return response  # too long to wait here: the caller reports a temporary failure
        if on_retry is not None:
            on_retry(attempt, delay, response)
        response.close()
        retry.sleep(delay)
        waited += delay


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2] or url


def _reason(exc: BaseException) -> str:
    """The innermost useful reason of a requests/urllib3 exception, without URLs or secrets."""
    seen = exc
    text = str(exc)
    for _ in range(6):
        inner = getattr(seen, "reason", None) or (seen.args[0] if getattr(seen, "args", None) else None)
        if isinstance(inner, BaseException) and inner is not seen:
            seen = inner
            text = str(inner)
            continue
        break
    if isinstance(seen, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in text:
        if "CERTIFICATE_VERIFY_FAILED" in text:
            detail = text.split("certificate verify failed:", 1)[-1].split(")")[0].strip(" :")
            return f"certificate verify failed: {detail}" if detail else "certificate verify failed"
    return tidy_reason(text)


def tidy_reason(text: str) -> str:
    """A urllib3/requests failure text without pool and object reprs or URLs."""
    # urllib3 puts "HTTPSConnectionPool(host=..., port=...): Max retries exceeded ..." first.
    if "Max retries exceeded" in text and "(Caused by" in text:
        text = text.split("(Caused by", 1)[1].rstrip(")")
    text = text.replace("NewConnectionError(", "").strip()
    text = re.sub(r"\w*Connection(?:Pool)?\(host='[^']*', port=\d+\):\s*", "", text)
    text = re.sub(r"^\('Unable to connect to proxy', [\"']?(.*?)[\"']?\)+$", r"unable to connect to the proxy: \1", text)
    text = text.strip(" \"'")
    while text.endswith(")") and text.count(")") > text.count("("):
        text = text[:-1].rstrip(" \"'")
    if ": " in text and text.startswith("<"):
        text = text.split(": ", 1)[1]
    return text[:300]


def bearer_token(profile, secrets, *, force_refresh: bool = False) -> tuple[str, bool]:
    """(access token, is_static) for an OAuth profile.

    A static token stored as the secret kind `access_token` wins when auth = oauth (handy for
    tokens minted elsewhere, and for tests); it cannot be refreshed. Otherwise the token comes
    from mailctl.oauth.get_access_token (delegated cache or client credentials)."""
    from mailctl.errors import AuthError

    auth = profile.values.get("auth") or "oauth"
    if auth in ("oauth", "") and secrets is not None:
        static = secrets.get(profile, "access_token")
        if static:
            return static.strip(), True
    try:
        from mailctl.oauth import get_access_token  # type: ignore[attr-defined]
    except ImportError:
        raise AuthError(
            f"profile {profile.name!r}: no access token available",
            hint=f"run: mailctl auth login {profile.name}",
        ) from None
    return get_access_token(profile, secrets, force_refresh=force_refresh), False
