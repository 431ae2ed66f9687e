"""TLS policy, proxies and error wording for everything that talks to Huawei Cloud, and its aiohttp session.

The session serves IAM, and the DCS API when a proxy is in effect; otherwise the DCS GETs go over
:class:`notifier.dcs.transport.KeepAliveTransport`, which takes the same :class:`TlsPolicy`.

:func:`make_session` builds a :class:`aiohttp.ClientSession` that

* verifies TLS certificates against the system trust store (OpenSSL's defaults, so ``SSL_CERT_FILE``
  and ``SSL_CERT_DIR`` are honoured), plus the PEM bundle ``ca_bundle`` when one is configured;
* turns verification off only for the hosts listed in ``insecure_hosts`` — and only for requests
  that ask for it with ``ssl=ssl_for(session, url)`` (see below): every other host is verified;
* goes through ``proxy`` when one is given, else through ``HTTPS_PROXY`` / ``HTTP_PROXY`` from the
  environment, minus ``NO_PROXY`` (``trust_env``).

How a client must call it (every request)::

    session = make_session(ca_bundle=..., insecure_hosts=..., proxy=..., user_agent=USER_AGENT)
    async with session.get(url, ssl=ssl_for(session, url), allow_redirects=False) as resp:
        ...

``ssl_for`` returns the verifying context for a host that is not listed and ``False`` (no
verification) for one that is. A request made without ``ssl=`` is verified all the same (with the
CA bundle): forgetting it fails safe, as a certificate error for a listed host. Keep redirects off:
aiohttp would carry the ``ssl=`` of the first host over to the host a redirect points to.

No URL is ever logged or put into an error message here: a proxy URL can carry a password and a
request URL a signature. Name hosts with :func:`describe_client_error` / :func:`redact_url`.
"""

from __future__ import annotations

import errno
import functools
import logging
import socket
import ssl
import urllib.request
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from weakref import WeakKeyDictionary, WeakSet

import aiohttp
from yarl import URL

from notifier.errors import ConfigError

log = logging.getLogger(__name__)

#: What fixes an untrusted certificate (said in every such error).
_CA_HINT = "set api.ca_bundle, or list the endpoint in api.insecure_endpoints"

#: The TLS policy of each session made by make_session(), for ssl_for() and tls_policy().
_POLICIES: WeakKeyDictionary[aiohttp.ClientSession, TlsPolicy] = WeakKeyDictionary()
#: The sessions make_session() made that go through a proxy (configured, or from the environment).
_PROXIED: WeakSet[aiohttp.ClientSession] = WeakSet()


def _host_key(host: str, port: int | None) -> str:
    host = host.strip().strip("[]").rstrip(".").lower()
    return host if port is None else f"{host}:{port}"


def _parse_host_entry(entry: str) -> str:
    """``host``, ``host:port``, ``[v6]:port``, bare ``v6`` or a URL -> ``host`` or ``host:port``."""
    text = entry.strip()
    if not text:
        raise ConfigError("api.insecure_endpoints: empty entry")
    if "://" in text:
        url = URL(text)
        if not url.host:
            raise ConfigError("api.insecure_endpoints: an entry is a URL without a host")
        return _host_key(url.host, url.explicit_port)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:  # a name, an IPv4 address or a bare IPv6 address
        host, port = text, ""
    if port and not port.isdigit():
        raise ConfigError(f"api.insecure_endpoints: bad port in {text!r}")
    return _host_key(host, int(port) if port else None)


def check_host_entry(entry: str) -> None:
    """Raise ValueError when an ``api.insecure_endpoints`` entry cannot be understood (config checks)."""
    try:
        _parse_host_entry(entry)
    except (ConfigError, ValueError) as exc:
        raise ValueError(str(exc).removeprefix("api.insecure_endpoints: ")) from None


@dataclass(frozen=True)
class TlsPolicy:
    """Which certificates to trust, and which hosts not to verify at all."""

    context: ssl.SSLContext
    insecure_hosts: frozenset[str]

    @classmethod
    def build(cls, ca_bundle: Path | None = None, insecure_hosts: Collection[str] = ()) -> TlsPolicy:
        context = ssl.create_default_context()  # system store; SSL_CERT_FILE / SSL_CERT_DIR apply
        if ca_bundle is not None:
            try:
                context.load_verify_locations(cafile=str(ca_bundle))
            except FileNotFoundError:
                raise ConfigError(f"api.ca_bundle {ca_bundle}: no such file") from None
            except OSError as exc:
                if isinstance(exc, ssl.SSLError):
                    msg = f"api.ca_bundle {ca_bundle}: not a PEM file of CA certificates"
                else:
                    msg = f"api.ca_bundle {ca_bundle}: cannot read it ({exc.strerror or exc})"
                raise ConfigError(msg) from None
        return cls(context, frozenset(_parse_host_entry(h) for h in insecure_hosts))

    def verifies(self, host: str, port: int | None = None) -> bool:
        """Whether certificates of ``host`` (on ``port``) are verified."""
        if _host_key(host, None) in self.insecure_hosts:
            return False
        return port is None or _host_key(host, port) not in self.insecure_hosts

    def context_for(self, host: str, port: int | None = None) -> ssl.SSLContext:
        """The TLS context for ``host`` (on ``port``): the verifying one, or one that verifies nothing."""
        return self.context if self.verifies(host, port) else _unverified_context()

    def ssl_for(self, url: str | URL) -> ssl.SSLContext | bool:
        """The ``ssl=`` argument for a request to ``url``: the verifying context, or False."""
        u = url if isinstance(url, URL) else URL(url)
        if u.host is not None and not self.verifies(u.host, u.port):
            return False
        return self.context


@functools.cache
def _unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def redact_url(url: str | URL) -> str:
    """``scheme://host:port`` of a URL: no credentials, path or query (safe to log)."""
    u = url if isinstance(url, URL) else URL(url)
    if not u.host:
        return "(no host)"
    host = f"[{u.host}]" if ":" in u.host else u.host
    return f"{u.scheme}://{host}:{u.port}" if u.port is not None else f"{u.scheme}://{host}"


def _split_proxy(proxy: str) -> tuple[URL, str, str] | tuple[URL, None, None]:
    """The proxy URL without credentials (nor path or query), and the credentials apart."""
    try:
        url = URL(proxy)
    except (ValueError, TypeError):
        raise ConfigError("proxy: not a URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        # The URL itself may hold a password: name only its scheme.
        raise ConfigError(f"proxy: need an http:// or https:// URL with a host, got scheme {url.scheme!r}")
    bare = url.with_user(None).with_password(None).with_path("").with_query(None).with_fragment(None)
    if url.user is None and url.password is None:
        return bare, None, None
    return bare, url.user or "", url.password or ""


def _environment_has_proxies() -> bool:
    """Whether ``*_proxy`` variables name a proxy (``NO_PROXY`` alone names none)."""
    return any(scheme != "no" for scheme in urllib.request.getproxies())


def make_session(
    *,
    ca_bundle: Path | None = None,
    insecure_hosts: Collection[str] = (),
    proxy: str | None = None,
    trust_env: bool = True,
    user_agent: str,
    limit: int = 100,
) -> aiohttp.ClientSession:
    """A ClientSession for Huawei Cloud APIs. Call it inside the running event loop; close it when done.

    Pass ``ssl=ssl_for(session, url)`` on every request (see the module docstring).
    ``proxy`` overrides the environment's proxies (and ``NO_PROXY``); credentials in it are sent as
    ``Proxy-Authorization`` and kept out of every URL that aiohttp could put into an exception.
    """
    policy = TlsPolicy.build(ca_bundle, insecure_hosts)
    proxy_url, user, password = _split_proxy(proxy) if proxy else (None, None, None)
    # aiohttp looks the environment's proxies up on every request (about half the CPU of a poll): only
    # when some *_proxy variable is set is that worth it. They do not change while the process runs.
    trust_env = trust_env and proxy_url is None and _environment_has_proxies()
    proxy_auth: aiohttp.BasicAuth | None = None
    with warnings.catch_warnings():
        # aiohttp 3.13+ deprecates BasicAuth and proxy_auth (for aiohttp 4) in favour of per-request
        # proxy_headers. A session-wide proxy_auth is still the one way to authenticate both plain
        # requests and CONNECT tunnels of every request while keeping the password out of the proxy
        # URL, which aiohttp quotes in ClientHttpProxyError messages. (No await in this block.)
        warnings.filterwarnings(
            "ignore", message=r".*(BasicAuth|proxy_auth).* deprecated", category=DeprecationWarning
        )
        if user is not None and password is not None:
            proxy_auth = aiohttp.BasicAuth(user, password)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, ssl=policy.context),
            headers={"User-Agent": user_agent},
            proxy=proxy_url,
            proxy_auth=proxy_auth,
            trust_env=trust_env,
        )
    _POLICIES[session] = policy
    if proxy_url is not None or trust_env:
        _PROXIED.add(session)
    if policy.insecure_hosts:
        log.warning("TLS certificate verification is OFF for: %s", ", ".join(sorted(policy.insecure_hosts)))
    if proxy_url is not None:
        log.info(
            "HTTP proxy %s%s", redact_url(proxy_url), " (with credentials)" if proxy_auth is not None else ""
        )
    elif trust_env:
        log.debug("HTTP proxy: from the environment (HTTPS_PROXY / HTTP_PROXY / NO_PROXY), if set")
    return session


def ssl_for(session: aiohttp.ClientSession, url: str | URL) -> ssl.SSLContext | bool:
    """The ``ssl=`` argument for a request of ``session`` to ``url``.

    For a session not made by :func:`make_session`, True (aiohttp's default verification).
    """
    policy = _POLICIES.get(session)
    return True if policy is None else policy.ssl_for(url)


def tls_policy(session: aiohttp.ClientSession) -> TlsPolicy | None:
    """The TLS policy :func:`make_session` gave ``session`` (None for any other session)."""
    return _POLICIES.get(session)


def uses_proxy(session: aiohttp.ClientSession) -> bool:
    """Whether :func:`make_session` set ``session`` up to go through a proxy (``NO_PROXY`` aside)."""
    return session in _PROXIED


_ERRNO_TEXT = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ETIMEDOUT: "connection timed out",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ECONNABORTED: "connection aborted",
}


def _os_reason(err: OSError | None) -> str:
    """Why a connection failed, in a few words (``connection refused``, ``name not resolved``...)."""
    if err is None:
        return "unknown error"
    if isinstance(err, socket.gaierror):
        return "name not resolved"
    if err.errno in _ERRNO_TEXT:
        return _ERRNO_TEXT[err.errno]
    if isinstance(err, TimeoutError):
        return "connection timed out"
    return err.strerror or type(err).__name__


def _hostport(host: str | None, port: int | None) -> str:
    if not host:
        return "?"
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def describe_connect_error(err: OSError, host: str) -> str:
    """One line about a failed connection to ``host`` (``name:port``): TLS or socket, without any URL.

    The same words as :func:`describe_client_error` says of aiohttp's connection errors.
    """
    if isinstance(err, ssl.SSLCertVerificationError):
        return _untrusted(host, err)
    if isinstance(err, ssl.SSLError):
        return _handshake_failed(host, err)
    return f"cannot connect to {host} ({_os_reason(err)})"


def _untrusted(host: str, cert_err: object) -> str:
    detail = getattr(cert_err, "verify_message", None) or getattr(cert_err, "reason", None)
    why = f": {detail}" if isinstance(detail, str) and detail else ""
    return f"TLS certificate of {host} not trusted{why} ({_CA_HINT})"


def _handshake_failed(host: str, err: object) -> str:
    reason = getattr(err, "reason", None) or type(err).__name__
    return f"TLS handshake with {host} failed ({reason})"


def describe_client_error(exc: aiohttp.ClientError, host: str) -> str:
    """One line for an operator about a failed call to ``host`` (``name:port``), without any URL.

    Certificate problems point at the two settings that fix them; connection problems name the host
    (or the proxy) and the cause. Nothing from the request URL, its query or a proxy URL is quoted.
    """
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return _untrusted(host, exc.certificate_error)
    if isinstance(exc, aiohttp.ClientSSLError):
        return _handshake_failed(host, exc.os_error)
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        proxy = _hostport(exc.host, exc.port)
        return f"cannot connect to the HTTP proxy {proxy} ({_os_reason(exc.os_error)}) to reach {host}"
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        what = "proxy authentication required" if exc.status == 407 else f"HTTP {exc.status}"
        return f"the HTTP proxy refused the tunnel to {host} ({what})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {host} ({_os_reason(exc.os_error)})"
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return f"timed out talking to {host}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"{host} closed the connection before answering"
    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        return f"TLS certificate of {host} does not match the pinned fingerprint"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{host} answered HTTP {exc.status}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"{host} sent a malformed or truncated body"
    if isinstance(exc, aiohttp.InvalidURL):
        return f"invalid request URL for {host}"
    if isinstance(exc, aiohttp.ClientOSError):
        return f"connection to {host} failed ({_os_reason(exc)})"
    return f"request to {host} failed ({type(exc).__name__})"
