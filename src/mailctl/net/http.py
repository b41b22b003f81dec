"""The one requests session factory, and what every HTTP caller shares: the request helper that
honours 429/503 Retry-After within bounds, and redaction of URLs and failure reasons.

new_session(values, profile, user_agent=...) builds a requests.Session for one profile:
- trust_env is off: REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE would otherwise silently replace the
  profile's CA bundle; `verify` comes from mailctl.net.tls (system CAs, system + ca_file, or
  False).
- proxies: the profile's proxy for every request; without one, the environment's (HTTPS_PROXY,
  HTTP_PROXY, ALL_PROXY) with NO_PROXY applied to each request's URL, as requests itself does.
- a default timeout on every request (the profile's `timeout`, else 30 s) and a User-Agent.
- close() also removes the session's temporary CA bundle.

requests and urllib3 are imported inside functions so that `mailctl --help` never loads them."""

from __future__ import annotations

import email.utils
import re
import ssl
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

from mailctl.errors import TemporaryFailure, UnavailableError
from mailctl.net.tls import RequestsVerify, tls_config

DEFAULT_TIMEOUT = 30.0
RETRY_STATUSES = (429, 503)
DEFAULT_MAX_ATTEMPTS = 4
DEFAULT_MAX_WAIT = 60.0  # longest single Retry-After we sleep through; longer -> defer

_session_class = None


def _mailctl_session_class():
    """requests.Session with mailctl's defaults; defined on first use (requests is heavy)."""
    global _session_class
    if _session_class is not None:
        return _session_class
    import requests
    from requests.utils import should_bypass_proxies

    class MailctlSession(requests.Session):
        """A requests.Session that applies its default timeout and (for proxies from the
        environment) NO_PROXY to every request, and drops its CA bundle on close()."""

        tls: RequestsVerify | None = None
        default_timeout: float = DEFAULT_TIMEOUT
        explicit_proxy: str = ""  # the profile's proxy URL; "" when proxies come from the environment
        no_proxy: str | None = None  # NO_PROXY of the environment, when its proxies are used

        def request(self, method, url, *args, **kwargs):
            if len(args) < 7:  # else timeout came positionally (params, data, headers, cookies, files, auth, timeout)
                kwargs.setdefault("timeout", self.default_timeout)
            if "proxies" not in kwargs and self._bypass(url):
                kwargs["proxies"] = {key: None for key in self.proxies}  # None drops the session's
            return super().request(method, url, *args, **kwargs)

        def _bypass(self, url) -> bool:
            if self.explicit_proxy or not self.proxies:
                return False
            return bool(should_bypass_proxies(str(url), no_proxy=self.no_proxy))

        def proxies_for(self, url: str | None) -> dict[str, str]:
            """The proxies a request to `url` uses (for code that sends through its own
            sessions, like exchangelib). Without a URL: only the profile's proxy."""
            if self.explicit_proxy:
                return {"http": self.explicit_proxy, "https": self.explicit_proxy}
            if not url or self._bypass(url):
                return {}
            return dict(self.proxies)

        def close(self) -> None:
            try:
                super().close()
            finally:
                if self.tls is not None:
                    self.tls.cleanup()

    _session_class = MailctlSession
    return MailctlSession


def environment_proxies() -> tuple[dict[str, str], str | None]:
    """(scheme -> proxy URL, NO_PROXY) from the environment (and the OS settings urllib reads)."""
    import urllib.request

    proxies = dict(urllib.request.getproxies())
    no_proxy = proxies.pop("no", None)
    return proxies, no_proxy


def proxies_for(proxy: str, url: str | None) -> dict[str, str]:
    """The proxies a request to `url` uses: the given proxy URL for everything; without one, the
    environment's unless NO_PROXY covers the URL; {} without a URL (nothing to decide on)."""
    if proxy:
        return {"http": proxy, "https": proxy}
    if not url:
        return {}
    from requests.utils import should_bypass_proxies

    proxies, no_proxy = environment_proxies()
    if not proxies or should_bypass_proxies(url, no_proxy=no_proxy):
        return {}
    return proxies


def new_session(values: Mapping[str, Any], profile: str = "", *, user_agent: str, proxy: str | None = None,
                shared_ca_bundle: bool = False, check_pem: bool = True):
    """A requests.Session for one profile (see the module docstring); close it when done.

    values: the profile's values (tls_verify, ca_file, proxy, timeout); profile: its name.
    proxy: the proxy URL to use, already with its password (net.proxy.requests_proxy_url);
    None takes the profile's `proxy` as written; "" (or no proxy) uses the environment's.
    shared_ca_bundle / check_pem: see net.tls.TlsConfig.requests_verify."""
    session = _mailctl_session_class()()
    session.trust_env = False
    tls = tls_config(values, profile).requests_verify(shared=shared_ca_bundle, check_pem=check_pem)
    session.tls = tls
    session.verify = tls.verify
    session.default_timeout = float(values.get("timeout") or DEFAULT_TIMEOUT)
    proxy = (values.get("proxy") or "") if proxy is None else proxy
    if proxy:
        session.explicit_proxy = proxy
        session.proxies = {"http": proxy, "https": proxy}
    else:
        session.proxies, session.no_proxy = environment_proxies()
    session.headers["User-Agent"] = user_agent
    return session


def close_session(session) -> None:
    """Close a session from new_session() (None is fine), removing its temporary CA bundle."""
    if session is not None:
        session.close()


def redact_url(url: str) -> str:
    """A URL without credentials, for messages."""
    parts = urlsplit(url)
    if parts.password or parts.username:
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return url


# --- requests with Retry-After ---------------------------------------------------------
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
    kwargs.setdefault("timeout", getattr(session, "default_timeout", DEFAULT_TIMEOUT))
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
                f"TLS handshake with {_host(url)} failed: {failure_reason(exc)}",
                hint="check the server certificate; for a private CA set ca_file in the profile "
                "(tls_verify = false only for testing)",
            ) from exc
        except requests.exceptions.ProxyError as exc:
            raise UnavailableError(
                f"proxy refused or failed the connection to {_host(url)}: {failure_reason(exc)}",
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
                f"cannot connect to {_host(url)}: {failure_reason(exc)}",
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


# --- failure reasons -----------------------------------------------------------------
def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2] or url


def failure_reason(exc: BaseException) -> str:
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
