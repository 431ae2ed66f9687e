"""One project's endpoint of a Huawei Cloud API (DCS, and Cloud Eye): signed GETs through the gate.

What every call to an API endpoint of a project shares, whichever service it is: authenticated by a
credential provider (``notifier.dcs.credentials``: AK/SK signing, temporary credentials, files, IAM tokens,
retried once with fresh ones after a 401), paced by the process's politeness gate (``notifier.dcs.limits``:
concurrency per region, an adaptive rate limit per endpoint, ``Retry-After`` pauses), sent over the
:class:`~notifier.net.session.Http` it is given, the answer read raw with a size cap and parsed with
orjson, the API's clock measured from its ``Date``; anything but a good answer becomes a
:class:`~notifier.errors.DcsApiError` naming its subject (an instance), the HTTP status, the Huawei error
code and message, and the ``X-Request-Id`` — never the URL, whose query carries a signature.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from pydantic import ValidationError
from yarl import URL

from notifier.dcs.credentials import CredentialProvider
from notifier.dcs.limits import ApiGate
from notifier.dcs.models import ApiErrorBody
from notifier.dcs.signer import canonical_query
from notifier.errors import CredentialsError, DcsApiError, Reason
from notifier.net import USER_AGENT
from notifier.net.errors import describe_client_error
from notifier.net.headers import parse_retry_after
from notifier.net.session import Http, make_http

json_loads: Callable[[bytes], Any]
try:  # orjson when installed: several times faster on task lists
    from orjson import loads as json_loads
except ImportError:  # pragma: no cover - orjson is a dependency; the fallback keeps the client working
    from json import loads as json_loads

#: A ``Retry-After`` holds every request to the endpoint at most this long (the poller still waits
#: the whole of it before polling that instance again).
MAX_PAUSE_SECONDS = 120.0
#: How often the API's clock is measured from the ``Date`` header of an answer.
DATE_CHECK_SECONDS = 60.0
#: An answer bigger than this (decoded) fails: a page of 100 tasks is about 50 KB.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
MAX_ERROR_TEXT = 300


#: Huawei error codes that mean "busy / throttled, ask again later" whatever the HTTP status.
RETRY_LATER_CODES = frozenset({"DCS.4026", "DCS.4049", "APIG.0308", "APIGW.0308"})


def _reason_for_status(status: int, code: str | None = None) -> Reason:
    if status == 429 or code in RETRY_LATER_CODES:
        return Reason.RATE_LIMITED
    if status in (401, 403):
        return Reason.AUTH
    if status == 404:
        return Reason.NOT_FOUND
    if status >= 500:
        return Reason.SERVER_ERROR
    return Reason.CLIENT_ERROR


class ApiEndpoint:
    """One project's endpoint of one API. Shared by every call of its client; close it with ``aclose()``
    (which closes the Http only when the endpoint made its own)."""

    def __init__(
        self,
        *,
        endpoint: str,
        project_id: str,
        credentials: CredentialProvider,
        region: str,
        timeout: float,
        http: Http | None,
        gate: ApiGate,
        service: str = "DCS",
    ) -> None:
        #: The API's name in errors (``DCS API error for instance …``, ``Cloud Eye API error for …``).
        self.service = service
        self.base_url = endpoint.rstrip("/")
        split = urlsplit(self.base_url)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"{service} endpoint must be an http(s) URL, got {self.base_url!r}")
        self._host = split.netloc
        #: ``host:port`` as errors name the endpoint (never the URL: its query carries a signature).
        self._name = split.netloc.rpartition("@")[2]
        self.project_id = project_id
        self.credentials = credentials
        self._region = region or split.hostname
        self._timeout = timeout
        self._client_timeout = aiohttp.ClientTimeout(total=timeout)
        self._gate = gate
        self._http = http
        self._own_http = http is None
        #: ``ssl=`` of every request (the endpoint's TLS decision), taken from the Http on first use.
        self._ssl: ssl.SSLContext | bool | None = None
        # The same for every request: a header HTTP/1.1 cannot carry is a mistake found once, not per poll.
        self._base_headers = {
            "Content-Type": "application/json",
            "Host": self._host,
            "User-Agent": USER_AGENT,
            "X-Project-Id": self.project_id,
        }
        self._header_problem = _header_problem(self._base_headers)
        #: The API's clock minus ours, in seconds, from the ``Date`` of its answers (None: not seen yet).
        self.clock_offset: float | None = None
        self._next_date_check = 0.0

    def error(self, subject: str, reason: Reason, message: str, **details: Any) -> DcsApiError:
        """An error of this endpoint's API about ``subject``."""
        return DcsApiError(subject, reason, message, service=self.service, **details)

    def has_headroom(self) -> bool:
        """Whether calls to this endpoint keep up (see :meth:`ApiGate.has_headroom`)."""
        return self._gate.has_headroom(self._region, self._host)

    async def aclose(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    def _get_http(self) -> tuple[Http, ssl.SSLContext | bool]:
        """The session, and the ``ssl=`` of this endpoint's requests (decided once)."""
        if self._http is None:
            self._http = make_http()
        if self._ssl is None:
            self._ssl = self._http.ssl_for(self.base_url)
        return self._http, self._ssl

    async def get_json(
        self, subject: str, path: str, params: Sequence[tuple[str, str]], *, source: str
    ) -> dict[str, Any]:
        query = canonical_query(params)
        raw, request_id = await self.get_raw(subject, f"{self.base_url}{path}?{query}", source=source)
        return self.decode(subject, raw, request_id)

    async def get_raw(self, subject: str, url: str, *, source: str) -> tuple[bytes, str | None]:
        """The body of a 200 answer (and its request id), retried once after a 401 with fresh credentials.

        ``url``'s query must be canonical (:func:`~notifier.dcs.signer.canonical_query`): it is signed and
        sent as it is. ``source`` (``tasks``, ``discovery``, ``cloud_eye``) labels the call's duration.
        """
        try:
            raw, request_id = await self._send(subject, url, source)
        except DcsApiError as exc:
            rejected = exc.sent_headers
            exc.sent_headers = None
            # A rejected IAM token or a rotated credentials file: the provider may have fresh ones.
            if exc.http_status != 401 or not self.credentials.invalidate(self.project_id, rejected):
                raise
            raw, request_id = await self._send(subject, url, source)
        return raw, request_id

    def decode(self, subject: str, raw: bytes, request_id: str | None) -> dict[str, Any]:
        try:
            body = json_loads(raw)
        except (ValueError, RecursionError):
            snippet = raw[:80].decode("utf-8", "replace")
            raise self.error(
                subject,
                Reason.INVALID_RESPONSE,
                f"HTTP 200 with a body that is not JSON: {snippet!r}",
                http_status=200,
                request_id=request_id,
            ) from None
        if not isinstance(body, dict):
            raise self.error(
                subject,
                Reason.INVALID_RESPONSE,
                f"expected a JSON object, got {type(body).__name__}",
                http_status=200,
                request_id=request_id,
            )
        return body

    async def _send(self, subject: str, url: str, source: str) -> tuple[bytes, str | None]:
        """One request through the gate: the body of a 200, or a DcsApiError."""
        http, ssl_arg = self._get_http()
        if self._header_problem is not None:  # asking again will not help
            problem = f"cannot send the request: {self._header_problem}"
            raise self.error(subject, Reason.CLIENT_ERROR, problem)
        limiter = self._gate.limiter(self._host)
        try:
            async with self._gate.slot(self._region, self._host):
                # Authenticated as late as possible: a request that waited for its slot is not stale.
                headers = await self.credentials.apply(
                    "GET", url, self._base_headers, b"", project_id=self.project_id, http=http
                )
                sent = time.perf_counter()
                try:
                    async with http.session.get(
                        URL(url, encoded=True),  # sent exactly as signed
                        headers=headers,
                        ssl=ssl_arg,
                        timeout=self._client_timeout,
                        allow_redirects=False,  # a redirect would carry the signature (and ssl=) elsewhere
                    ) as resp:
                        status = resp.status
                        answer_headers = resp.headers
                        raw = await _read_capped(resp, self._name)
                finally:  # a call that timed out or failed took its time too
                    metrics = self._gate.metrics
                    if metrics is not None:
                        metrics.api_request(source, self._name, time.perf_counter() - sent)
        except CredentialsError as exc:
            raise self.error(subject, exc.reason, str(exc)) from None
        except TimeoutError:  # aiohttp's own timeouts are TimeoutErrors too
            raise self.error(subject, Reason.TIMEOUT, f"no answer within {self._timeout:g} s") from None
        except _TooLarge as exc:
            raise self.error(subject, Reason.CONNECTION, str(exc)) from None
        except aiohttp.ClientError as exc:  # described by the endpoint's host, never the URL
            message = describe_client_error(exc, self._name, http.tls.hint)
            raise self.error(subject, Reason.CONNECTION, message) from None
        except ValueError as exc:  # a request that cannot be sent as it is: asking again will not help
            raise self.error(subject, Reason.CLIENT_ERROR, f"cannot send the request: {exc}") from None
        request_id = answer_headers.get("X-Request-Id")
        if status == 200:
            limiter.on_success()
            if time.monotonic() >= self._next_date_check:
                self._observe_date(answer_headers.get("Date"))
            return raw, request_id
        error = self._http_error(subject, status, raw, request_id, answer_headers)
        if error.reason is Reason.RATE_LIMITED:
            limiter.on_throttled()
            if self._gate.metrics is not None:
                self._gate.metrics.api_throttled(self._name)
            if error.retry_after:
                limiter.pause(min(error.retry_after, MAX_PAUSE_SECONDS))
        elif status == 401:
            error.sent_headers = headers  # for invalidate(): which token was rejected
        raise error

    def _observe_date(self, value: str | None) -> None:
        """Measure the API's clock from a ``Date`` header (once a minute; it has 1 s resolution)."""
        self._next_date_check = time.monotonic() + DATE_CHECK_SECONDS
        if not value:
            return
        try:
            server = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return
        if server.tzinfo is None:
            return
        self.clock_offset = (server - datetime.now(UTC)).total_seconds()

    def _http_error(
        self, subject: str, status: int, raw: bytes, request_id: str | None, headers: Mapping[str, str]
    ) -> DcsApiError:
        code: str | None = None
        msg: str | None = None
        try:
            body = ApiErrorBody.model_validate_json(raw)
            code, msg = body.error_code, body.error_msg
        except ValidationError:
            pass
        if not msg:
            text = raw[:MAX_ERROR_TEXT].decode("utf-8", "replace").strip()
            msg = text or "(empty body)"
        return self.error(
            subject,
            _reason_for_status(status, code),
            msg,
            http_status=status,
            error_code=code,
            request_id=request_id,
            retry_after=parse_retry_after(headers.get("Retry-After")),
        )


class _TooLarge(Exception):
    """An answer past MAX_ANSWER_BYTES; the message names the endpoint's host."""


async def _read_capped(resp: aiohttp.ClientResponse, name: str) -> bytes:
    """The whole (decoded) body, at most MAX_ANSWER_BYTES of it: a hostile answer cannot fill memory."""
    size = resp.content_length
    if size is not None and size <= MAX_ANSWER_BYTES and "Content-Encoding" not in resp.headers:
        return await resp.read()  # the common case: framed, not compressed, one read
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_any():  # decoded (gzip, deflate) by aiohttp
        total += len(chunk)
        if total > MAX_ANSWER_BYTES:
            raise _TooLarge(f"{name} sent an answer larger than {MAX_ANSWER_BYTES >> 20} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


def _header_problem(headers: Mapping[str, str]) -> str | None:
    """Why ``headers`` cannot be sent over HTTP/1.1 (a line break, not Latin-1), or None."""
    for name, value in headers.items():
        if "\r" in value or "\n" in value:
            return f"header {name}: a line break in its value"
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            return "a header holds characters HTTP/1.1 cannot carry (not Latin-1)"
    return None
