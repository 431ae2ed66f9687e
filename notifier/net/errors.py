"""Failed HTTP calls in a few words for an operator: the host, the cause, what fixes it — never a URL.

A request URL can carry a signature, a webhook URL is a credential and a proxy URL may hold a password:
every message here names hosts (``name:port``) only.
"""

from __future__ import annotations

import errno
import socket

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from notifier.net.tls import ca_hint

_ERRNO_TEXT = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ETIMEDOUT: "connection timed out",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ECONNABORTED: "connection aborted",
}
_API_HINT = ca_hint("api")


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


def _untrusted(host: str, cert_err: object, hint: str) -> str:
    detail = getattr(cert_err, "verify_message", None) or getattr(cert_err, "reason", None)
    why = f": {detail}" if isinstance(detail, str) and detail else ""
    return f"TLS certificate of {host} not trusted{why} ({hint})"


def _handshake_failed(host: str, err: object) -> str:
    reason = getattr(err, "reason", None) or type(err).__name__
    return f"TLS handshake with {host} failed ({reason})"


def describe_client_error(exc: aiohttp.ClientError, host: str, hint: str = _API_HINT) -> str:
    """One line for an operator about a failed call to ``host`` (``name:port``), without any URL.

    Certificate problems say what fixes them (``hint``: :attr:`TlsPolicy.hint`); connection problems
    name the host (or the proxy) and the cause. Nothing from the request URL, its query or a proxy URL
    is quoted.
    """
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return _untrusted(host, exc.certificate_error, hint)
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
        if isinstance(exc.__cause__, HttpProcessingError):  # aiohttp could not parse the answer
            return f"{host} sent a malformed HTTP answer"
        return f"{host} answered HTTP {exc.status}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"{host} sent a malformed or truncated body"
    if isinstance(exc, aiohttp.InvalidURL):
        return f"invalid URL (of the request, or of the proxy it goes through) for {host}"
    if isinstance(exc, aiohttp.ClientOSError):
        return f"connection to {host} failed ({_os_reason(exc)})"
    return f"request to {host} failed ({type(exc).__name__})"
