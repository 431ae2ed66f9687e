"""Async client of the DCS List Background Tasks API: signing, paging, windows, typed errors.

Each call is authenticated by a credential provider (``notifier.dcs.credentials``: AK/SK signing,
temporary credentials, files, IAM tokens), passes the process's politeness gate (``notifier.dcs.limits``:
concurrency per region, an adaptive rate limit per endpoint), reads every page of the window, and turns
anything but a good answer into a :class:`~notifier.errors.DcsApiError` that names the instance, the
HTTP status, the Huawei error code and message, and the ``X-Request-Id``. The client does not retry:
the poller decides when to ask again, from the error's reason.

Requests go over the :class:`~notifier.net.session.Http` it is given (one long-lived aiohttp session for
the cloud side: TLS policy and proxy decided once, see :mod:`notifier.net.session`). The poller's GETs
are lean: URL and headers built from strings made once per instance, the body read raw and parsed
with orjson, and an answer byte-for-byte the same as the last one not parsed at all (``unchanged=``).
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from pydantic import ValidationError
from yarl import URL

from notifier.dcs.credentials import AkSkCredentials, CredentialProvider
from notifier.dcs.limits import ApiGate
from notifier.dcs.models import ApiErrorBody, Task, TaskList, format_query_time
from notifier.dcs.signer import canonical_query
from notifier.errors import CredentialsError, DcsApiError, Reason
from notifier.net import USER_AGENT
from notifier.net.errors import describe_client_error
from notifier.net.headers import parse_retry_after
from notifier.net.session import Http, make_http

log = logging.getLogger(__name__)

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
MAX_PAGES = 1000
#: An answer bigger than this (decoded) fails: a page of 100 tasks is about 50 KB.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
_MAX_ERROR_TEXT = 300


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


class DcsClient:
    """One project's DCS endpoint. Share one instance across all polls; close it with ``aclose()``.

    Give either ``credentials`` (any :class:`CredentialProvider`) or ``ak``/``sk`` (permanent AK/SK).
    Clients of one process share ``http`` (session, TLS policy, proxy:
    :func:`~notifier.net.session.make_http`; credential providers that call IAM use it too) and ``gate``
    (politeness). Without ``http`` the client makes its own on first use, verifying TLS against the
    system store, and closes it in ``aclose()``.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        project_id: str,
        credentials: CredentialProvider | None = None,
        ak: str | None = None,
        sk: str | None = None,
        region: str = "",
        timeout: float = 10.0,
        page_size: int = 100,
        max_tasks: int = 10_000,
        max_concurrency: int = 16,
        http: Http | None = None,
        gate: ApiGate | None = None,
    ) -> None:
        self._endpoint = endpoint.rstrip("/")
        split = urlsplit(self._endpoint)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"DCS endpoint must be an http(s) URL, got {self._endpoint!r}")
        if credentials is None:
            if not ak or not sk:
                raise ValueError("DcsClient needs credentials, or ak and sk")
            credentials = AkSkCredentials(ak, sk)
        self._host = split.netloc
        #: ``host:port`` as errors name the endpoint (never the URL: its query carries a signature).
        self._name = split.netloc.rpartition("@")[2]
        self._project_id = project_id
        self._credentials = credentials
        self._region = region or split.hostname
        self._timeout = timeout
        self._client_timeout = aiohttp.ClientTimeout(total=timeout)
        self._page_size = page_size
        self._max_tasks = max_tasks
        self._gate = gate or ApiGate(
            max_concurrency=max_concurrency, region_concurrency=max_concurrency, rate=1e6, min_rate=1e6
        )
        self._http = http
        self._own_http = http is None
        #: ``ssl=`` of every request (the endpoint's TLS decision), taken from the Http on first use.
        self._ssl: ssl.SSLContext | bool | None = None
        # The same for every request: a header HTTP/1.1 cannot carry is a mistake found once, not per poll.
        self._base_headers = {
            "Content-Type": "application/json",
            "Host": self._host,
            "User-Agent": USER_AGENT,
            "X-Project-Id": self._project_id,
        }
        self._header_problem = _header_problem(self._base_headers)
        #: The API's clock minus ours, in seconds, from the ``Date`` of its answers (None: not seen yet).
        self.clock_offset: float | None = None
        #: ``endpoint + /v2/{project_id}/instances/``: a task list's URL is this, the instance id, ``/tasks?``
        #: (made per poll, not kept per instance: the client holds nothing of an instance between polls).
        self._instances_url = f"{self._endpoint}/v2/{quote(self._project_id, safe='')}/instances/"
        self._next_date_check = 0.0

    @property
    def project_id(self) -> str:
        return self._project_id

    def has_headroom(self) -> bool:
        """Whether the endpoint's rate limit has room for a request now (extra polls are made only
        then, so that they never delay the polls every instance is due)."""
        return self._gate.has_headroom(self._region, self._host)

    @property
    def credentials(self) -> CredentialProvider:
        return self._credentials

    def __repr__(self) -> str:
        return f"<DcsClient {self._endpoint} project={self._project_id}>"

    async def aclose(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> DcsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _get_http(self) -> tuple[Http, ssl.SSLContext | bool]:
        """The session, and the ``ssl=`` of this endpoint's requests (decided once)."""
        if self._http is None:
            self._http = make_http()
        if self._ssl is None:
            self._ssl = self._http.ssl_for(self._endpoint)
        return self._http, self._ssl

    async def list_tasks(self, instance_id: str, start: datetime, end: datetime) -> list[Task]:
        """Every task created in [start, end] (UTC), all pages read, duplicates across pages dropped."""
        answer = await self.poll_tasks(instance_id, start, end)
        assert answer.tasks is not None
        return answer.tasks

    async def poll_tasks(
        self, instance_id: str, start: datetime, end: datetime, *, unchanged: bytes | None = None
    ) -> TaskAnswer:
        """Like :meth:`list_tasks`, for the poller's hot path.

        ``unchanged`` is the ``digest`` of the previous answer: when this answer is the same single
        page, byte for byte, it is not parsed at all and ``tasks`` is None ("nothing changed").
        """
        prefix = f"{self._instances_url}{quote(instance_id, safe='')}/tasks?"
        end_time, start_time = format_query_time(end), format_query_time(start)
        seen: dict[str, Task] = {}
        offset = 0
        digest: bytes | None = None
        for number in range(MAX_PAGES):
            # The canonical query (keys sorted, values digits: nothing to escape), built directly.
            query = f"end_time={end_time}&limit={self._page_size}&offset={offset}&start_time={start_time}"
            raw, request_id = await self._get_raw(instance_id, prefix + query)
            if number == 0:
                digest = hashlib.blake2b(raw, digest_size=16).digest()
                if digest == unchanged:
                    return TaskAnswer(None, digest)
            page = parse_tasks_page(self._decode(instance_id, raw, request_id), instance_id, request_id)
            if page.task_count > self._max_tasks:
                # Refused before fetching it: a lying count must not cost the endpoint's whole budget (and
                # as no page is read past the count, no poll holds more than max_tasks tasks).
                raise DcsApiError(
                    instance_id,
                    Reason.INVALID_RESPONSE,
                    f"{page.task_count:,} tasks in one poll window, more than poll.max_tasks "
                    f"({self._max_tasks:,}): not fetched (raise poll.max_tasks if that is real)",
                    http_status=200,
                    request_id=request_id,
                )
            before = len(seen)
            for task in page.tasks:
                seen.setdefault(task.id, task)
            offset += len(page.tasks)
            # The end: the count is reached, or a page brought no task not seen already (an API
            # that repeats a page would otherwise be asked for the same page until MAX_PAGES).
            if len(seen) == before or offset >= page.task_count:
                # Only a one-page answer can be recognised again by its bytes.
                return TaskAnswer(list(seen.values()), digest if number == 0 else None)
        raise DcsApiError(
            instance_id,
            Reason.INVALID_RESPONSE,
            f"more than {MAX_PAGES} pages of tasks; the answer never ends",
        )

    async def list_instances(self, limit: int = 1000) -> list[dict[str, Any]]:
        """``GET /v2/{project_id}/instances``: every instance of the project (raw dicts)."""
        path = f"/v2/{quote(self._project_id, safe='')}/instances"
        out: list[dict[str, Any]] = []
        offset = 0
        for _ in range(MAX_PAGES):
            body = await self._get_json("-", path, [("offset", str(offset)), ("limit", str(limit))])
            items = body.get("instances") or []
            if not isinstance(items, list):
                raise DcsApiError("-", Reason.INVALID_RESPONSE, "'instances' is not a list")
            out.extend(i for i in items if isinstance(i, dict))
            offset += len(items)
            total = body.get("instance_num")
            if not items or not isinstance(total, int | str) or offset >= int(total):
                break
        return out

    async def _get_json(
        self, instance_id: str, path: str, params: Sequence[tuple[str, str]]
    ) -> dict[str, Any]:
        query = canonical_query(params)
        raw, request_id = await self._get_raw(instance_id, f"{self._endpoint}{path}?{query}")
        return self._decode(instance_id, raw, request_id)

    async def _get_raw(self, instance_id: str, url: str) -> tuple[bytes, str | None]:
        """The body of a 200 answer (and its request id), retried once after a 401 with fresh credentials.

        ``url``'s query must be canonical (:func:`~notifier.dcs.signer.canonical_query`): it is signed and
        sent as it is.
        """
        try:
            raw, request_id = await self._send(instance_id, url)
        except DcsApiError as exc:
            rejected = exc.sent_headers
            exc.sent_headers = None
            # A rejected IAM token or a rotated credentials file: the provider may have fresh ones.
            if exc.http_status != 401 or not self._credentials.invalidate(self._project_id, rejected):
                raise
            raw, request_id = await self._send(instance_id, url)
        return raw, request_id

    @staticmethod
    def _decode(instance_id: str, raw: bytes, request_id: str | None) -> dict[str, Any]:
        try:
            body = json_loads(raw)
        except (ValueError, RecursionError):
            snippet = raw[:80].decode("utf-8", "replace")
            raise DcsApiError(
                instance_id,
                Reason.INVALID_RESPONSE,
                f"HTTP 200 with a body that is not JSON: {snippet!r}",
                http_status=200,
                request_id=request_id,
            ) from None
        if not isinstance(body, dict):
            raise DcsApiError(
                instance_id,
                Reason.INVALID_RESPONSE,
                f"expected a JSON object, got {type(body).__name__}",
                http_status=200,
                request_id=request_id,
            )
        return body

    async def _send(self, instance_id: str, url: str) -> tuple[bytes, str | None]:
        """One request through the gate: the body of a 200, or a DcsApiError."""
        http, ssl_arg = self._get_http()
        if self._header_problem is not None:  # asking again will not help
            problem = f"cannot send the request: {self._header_problem}"
            raise DcsApiError(instance_id, Reason.CLIENT_ERROR, problem)
        limiter = self._gate.limiter(self._host)
        try:
            async with self._gate.slot(self._region, self._host):
                # Authenticated as late as possible: a request that waited for its slot is not stale.
                headers = await self._credentials.apply(
                    "GET", url, self._base_headers, b"", project_id=self._project_id, http=http
                )
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
        except CredentialsError as exc:
            raise DcsApiError(instance_id, exc.reason, str(exc)) from None
        except TimeoutError:  # aiohttp's own timeouts are TimeoutErrors too
            raise DcsApiError(instance_id, Reason.TIMEOUT, f"no answer within {self._timeout:g} s") from None
        except _TooLarge as exc:
            raise DcsApiError(instance_id, Reason.CONNECTION, str(exc)) from None
        except aiohttp.ClientError as exc:  # described by the endpoint's host, never the URL
            message = describe_client_error(exc, self._name, http.tls.hint)
            raise DcsApiError(instance_id, Reason.CONNECTION, message) from None
        except ValueError as exc:  # a request that cannot be sent as it is: asking again will not help
            raise DcsApiError(instance_id, Reason.CLIENT_ERROR, f"cannot send the request: {exc}") from None
        request_id = answer_headers.get("X-Request-Id")
        if status == 200:
            limiter.on_success()
            if time.monotonic() >= self._next_date_check:
                self._observe_date(answer_headers.get("Date"))
            return raw, request_id
        error = self._http_error(instance_id, status, raw, request_id, answer_headers)
        if error.reason is Reason.RATE_LIMITED:
            limiter.on_throttled()
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
        self, instance_id: str, status: int, raw: bytes, request_id: str | None, headers: Mapping[str, str]
    ) -> DcsApiError:
        code: str | None = None
        msg: str | None = None
        try:
            body = ApiErrorBody.model_validate_json(raw)
            code, msg = body.error_code, body.error_msg
        except ValidationError:
            pass
        if not msg:
            text = raw[:_MAX_ERROR_TEXT].decode("utf-8", "replace").strip()
            msg = text or "(empty body)"
        return DcsApiError(
            instance_id,
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


@dataclass(frozen=True, slots=True)
class TaskAnswer:
    """One poll's answer: the tasks (None: the very same answer as ``unchanged``) and its digest."""

    tasks: list[Task] | None
    #: A digest of a one-page answer (None when the answer took several pages).
    digest: bytes | None


def parse_tasks_page(body: dict[str, Any], instance_id: str, request_id: str | None = None) -> TaskList:
    """Validate one page; a malformed page is an INVALID_RESPONSE error naming the bad field.

    Whatever goes wrong while reading an answer is that instance's invalid answer, never an exception
    out of its poll (or anyone else's).
    """
    try:
        return TaskList.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        message = f"malformed task list at {loc}: {first['msg']}"
    except Exception as exc:  # a validator tripping on an input nothing foresaw
        message = f"unreadable task list ({type(exc).__name__}: {str(exc)[:_MAX_ERROR_TEXT]})"
    raise DcsApiError(
        instance_id, Reason.INVALID_RESPONSE, message, http_status=200, request_id=request_id
    ) from None
