"""The HTTP every channel shares: its settings, its session, and what to make of an answer (or of none).

:func:`channel_http` is the only way a channel gets a session (an :class:`~notifier.net.session.Http` from
the one factory, :func:`~notifier.net.session.make_http`; slack-sdk's clients are handed its session too),
so whatever a receiver does, every channel kind meets it the same way:

* **Proxies and private CAs.** The environment's ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` apply;
  a channel's ``proxy:`` overrides them and its ``ca_bundle:`` is trusted in addition to the system's
  CAs (:class:`HttpChannelConfig`). An untrusted certificate is an error naming the channel and the key
  that fixes it.

* **No redirects.** A 3xx is refused at once by a session middleware (it wraps each hop, so it covers
  slack-sdk's calls, which let aiohttp follow redirects): :class:`RedirectRefused`, a permanent failure
  naming the status, never the target. Following one would deliver the message somewhere else and
  count it as delivered.
* **Bounded answers.** Responses are :class:`CappedResponse`: ``read()``, and so ``text()`` and
  ``json()``, refuse an answer announcing more than :data:`MAX_ANSWER_BYTES` at once, and stop reading
  one that grows past it (a gzip bomb too: decompressed bytes count), closing the connection.
* **Unreadable answers say so** with :class:`AnswerUnreadable`, which carries the HTTP status: a 2xx is
  then "accepted, answer unreadable" (sending again would duplicate the message), any other status is
  classified by the status alone.

Also here: classifying statuses and failures into :class:`~notifier.errors.DeliveryError`. ``Retry-After``
is read by :func:`notifier.net.headers.parse_retry_after`, secrets scrubbed by :mod:`notifier.redaction`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
from aiohttp.typedefs import DEFAULT_JSON_DECODER, JSONDecoder
from pydantic import BaseModel, Field, SecretStr, field_validator

from notifier.errors import ConfigError, DeliveryError, Reason
from notifier.net.errors import describe_client_error
from notifier.net.headers import parse_retry_after
from notifier.net.session import Http, check_proxy_url, make_http
from notifier.net.tls import CaBundle, ca_hint
from notifier.redaction import scrub

#: The most of an answer any channel reads. Slack's answers are a few KB.
MAX_ANSWER_BYTES: Final = 1024 * 1024


# --- settings every HTTP channel has -------------------------------------------------------------------


class HttpChannelConfig(BaseModel):
    """How a channel reaches its receiver: per-request timeout, proxy, extra trusted CAs."""

    timeout: float = Field(default=10.0, gt=0, le=300)
    #: An HTTP(S) proxy URL for this channel; default: HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the
    #: environment.
    proxy: SecretStr | None = None
    #: A PEM file of CA certificates trusted in addition to the system's (a receiver with a private CA).
    ca_bundle: CaBundle | None = None

    @field_validator("proxy")
    @classmethod
    def _proxy_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            check_proxy_url(v.get_secret_value())  # its message never quotes the URL
        return v


# --- what a receiver answered --------------------------------------------------------------------------


class AnswerError(aiohttp.ClientResponseError):
    """An answer a channel will not use; ``status`` is its HTTP status. Its text never holds the URL."""

    def __init__(self, response: aiohttp.ClientResponse, problem: str) -> None:
        super().__init__(
            response.request_info,
            response.history,
            status=response.status,
            message=problem,
            headers=response.headers,
        )
        self.problem = problem

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.problem}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.problem!r})"


class RedirectRefused(AnswerError):
    """The receiver answered with a redirect (3xx); it is not followed."""


class AnswerUnreadable(AnswerError):
    """The answer's body is too large, or not text, or not JSON."""


class CappedResponse(aiohttp.ClientResponse):
    """A response that reads at most :data:`MAX_ANSWER_BYTES` of body (``read``, ``text``, ``json``)."""

    async def read(self) -> bytes:
        if self._body is None:
            self._body = await self._read_capped()
        return await super().read()

    async def _read_capped(self) -> bytes:
        announced = self.content_length
        try:
            if announced is not None and announced > MAX_ANSWER_BYTES:
                raise AnswerUnreadable(
                    self,
                    f"answer of {announced} bytes announced, more than the {MAX_ANSWER_BYTES} bytes read",
                )
            chunks: list[bytes] = []
            size = 0
            while chunk := await self.content.readany():
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise AnswerUnreadable(self, f"answer longer than {MAX_ANSWER_BYTES} bytes")
                chunks.append(chunk)
        except BaseException:
            self.close()  # the rest is never read: the connection cannot be reused
            raise
        return b"".join(chunks)

    async def text(self, encoding: str | None = None, errors: str = "strict") -> str:
        try:
            return await super().text(encoding, errors)
        except (UnicodeDecodeError, LookupError):
            raise AnswerUnreadable(self, "answer is not text in its charset (UTF-8 unless said)") from None

    async def json(
        self,
        *,
        encoding: str | None = None,
        loads: JSONDecoder = DEFAULT_JSON_DECODER,
        content_type: str | None = "application/json",
    ) -> Any:
        # A wrong Content-Type still raises aiohttp's ContentTypeError: slack-sdk takes it for "no JSON here".
        try:
            return await super().json(encoding=encoding, loads=loads, content_type=content_type)
        except (ValueError, LookupError):  # JSONDecodeError, UnicodeDecodeError, unknown charset
            raise AnswerUnreadable(self, "answer is not JSON") from None


@dataclass
class AnswerSeen:
    """The status line of the last answer received while :func:`watch_answers` is active."""

    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


_SEEN: ContextVar[AnswerSeen | None] = ContextVar("notifier_channels_answer_seen", default=None)


@contextmanager
def watch_answers() -> Iterator[AnswerSeen]:
    """Record the status of answers received in this block: when a client library fails on an answer
    without saying what the status was (slack-sdk on an unexpected body), the channel still knows."""
    seen = AnswerSeen()
    token = _SEEN.set(seen)
    try:
        yield seen
    finally:
        _SEEN.reset(token)


async def _refuse_redirects(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    response = await handler(request)
    seen = _SEEN.get()
    if seen is not None:
        seen.status, seen.headers = response.status, response.headers
    if 300 <= response.status < 400:
        response.close()  # aiohttp follows a redirect after this returns: raising is what stops it
        raise RedirectRefused(response, "unexpected redirect, not followed")
    return response


def channel_http(name: str, config: HttpChannelConfig) -> Http:
    """The session of channel ``name``: its timeout per request, capped answers, no redirects, its proxy
    (else the environment's) and CA bundle. Call it inside the running event loop.

    The settings were checked when the config was loaded; a CA bundle gone since (rotated away) fails
    this send with a retryable error naming the key, not a ConfigError the worker would take for a bug.
    """
    try:
        return make_http(
            setting=f"channels.{name}",
            ca_bundle=config.ca_bundle,
            proxy=config.proxy.get_secret_value() if config.proxy else None,
            timeout=config.timeout,
            response_class=CappedResponse,
            middlewares=(_refuse_redirects,),
        )
    except ConfigError as exc:
        raise DeliveryError(name, True, Reason.CONNECTION, str(exc)) from None


# --- classifying failures ------------------------------------------------------------------------------


def check_http_url(url: str, what: str) -> None:
    """Raise ``ValueError`` (without echoing the URL: it may be a secret) unless ``url`` is http(s)://host."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a malformed port
    except ValueError:
        raise ValueError(f"{what} is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{what} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"{what} has no host")


def classify_http_status(status: int) -> tuple[bool, Reason]:
    """(retryable, reason) of an HTTP error status."""
    if status == 429:
        return True, Reason.RATE_LIMITED
    if status == 408:
        return True, Reason.TIMEOUT
    if status >= 500:
        return True, Reason.SERVER_ERROR
    if status in (401, 403):
        return False, Reason.AUTH
    if status in (404, 410):
        return False, Reason.NOT_FOUND
    return False, Reason.CLIENT_ERROR


def redirect_error(channel: str, status: int) -> DeliveryError:
    """A redirect is never followed: the message would go elsewhere and count as delivered."""
    return DeliveryError(
        channel, False, Reason.CLIENT_ERROR, f"unexpected redirect (HTTP {status}), not followed"
    )


def http_error(
    channel: str, status: int, retry_after: str | None, detail: str | None = None
) -> DeliveryError:
    """A ``DeliveryError`` for a non-2xx answer."""
    if 300 <= status < 400:
        return redirect_error(channel, status)
    retryable, reason = classify_http_status(status)
    message = f"HTTP {status}" + (f" {detail}" if detail else "")
    return DeliveryError(
        channel,
        retryable,
        reason,
        message,
        retry_after=parse_retry_after(retry_after) if retryable else None,
    )


def describe_exception(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """``ClientConnectorError: Cannot connect to host …`` with URLs and secrets scrubbed."""
    detail = scrub(str(exc), secrets)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


#: Failures on the way to the receiver that say more than "could not connect".
_NETWORK_PATH_ERRORS: Final = (
    aiohttp.ClientConnectorCertificateError,
    aiohttp.ClientSSLError,
    aiohttp.ClientProxyConnectionError,
    aiohttp.ClientHttpProxyError,
)


def receiver_host(url: str) -> str:
    """``host:port`` of a receiver's URL as errors name it (no user info, path or query)."""
    parts = urlsplit(url)
    return _hostport(parts.hostname, parts.port)


def _hostport(host: str | None, port: int | None) -> str:
    if not host:
        return "the receiver"
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def _host_of(exc: BaseException) -> str:
    """``host:port`` a failed request was for, as far as the exception says (never its URL)."""
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        url = exc.request_info.real_url
        host, port = url.host, url.port
    elif isinstance(exc, aiohttp.ClientConnectorError):
        host, port = exc.host, exc.port
    else:
        return "the receiver"
    return _hostport(host, port)


def transport_error(
    channel: str, exc: BaseException, secrets: Iterable[str] = (), *, host: str | None = None
) -> DeliveryError:
    """Classify a failure to get a usable answer: timeouts and broken connections are retryable, a
    redirect is refused for good, an unreadable answer counts by its status (a 2xx one is the channel's to
    judge first: the message was accepted). ``host``: the receiver's ``host:port``, for TLS and proxy
    failures (the exception may name only the proxy)."""
    if isinstance(exc, RedirectRefused):
        return redirect_error(channel, exc.status)
    if isinstance(exc, AnswerError):
        retry_after = exc.headers.get("Retry-After") if exc.headers else None
        return http_error(channel, exc.status, retry_after, f"({exc.problem})")
    if isinstance(exc, TimeoutError):
        return DeliveryError(channel, True, Reason.TIMEOUT, f"timed out ({type(exc).__name__})")
    if isinstance(exc, _NETWORK_PATH_ERRORS):
        # TLS and proxy trouble, named by host (and by the key that fixes an untrusted certificate).
        message = describe_client_error(exc, host or _host_of(exc), ca_hint(f"channels.{channel}"))
        return DeliveryError(channel, True, Reason.CONNECTION, message)
    if isinstance(exc, aiohttp.ClientConnectionError | OSError):
        return DeliveryError(channel, True, Reason.CONNECTION, describe_exception(exc, secrets))
    return DeliveryError(channel, False, Reason.INVALID_RESPONSE, describe_exception(exc, secrets))
