"""Async client of the DCS List Background Tasks API (and the instance list): paging, windows.

Every request goes through the project's :class:`~notifier.dcs.endpoint.ApiEndpoint` (credentials,
the politeness gate, the session, typed errors naming the instance); this module reads every page of a
window into tasks. The client does not retry: the poller decides when to ask again, from the error's
reason. The poller's GETs are lean: URLs built from strings made once, the body read raw and parsed with
orjson, and an answer byte-for-byte the same as the last one not parsed at all (``unchanged=``).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from pydantic import ValidationError

from notifier.dcs.credentials import AkSkCredentials, CredentialProvider
from notifier.dcs.endpoint import MAX_ERROR_TEXT, ApiEndpoint
from notifier.dcs.limits import ApiGate
from notifier.dcs.models import Task, TaskList, format_query_time
from notifier.errors import DcsApiError, Reason
from notifier.net.session import Http

log = logging.getLogger(__name__)

MAX_PAGES = 1000


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
        if credentials is None:
            if not ak or not sk:
                raise ValueError("DcsClient needs credentials, or ak and sk")
            credentials = AkSkCredentials(ak, sk)
        gate = gate or ApiGate(
            max_concurrency=max_concurrency, region_concurrency=max_concurrency, rate=1e6, min_rate=1e6
        )
        self._api = ApiEndpoint(
            endpoint=endpoint,
            project_id=project_id,
            credentials=credentials,
            region=region,
            timeout=timeout,
            http=http,
            gate=gate,
        )
        self._page_size = page_size
        self._max_tasks = max_tasks
        #: ``endpoint + /v2/{project_id}/instances/``: a task list's URL is this, the instance id, ``/tasks?``
        #: (made per poll, not kept per instance: the client holds nothing of an instance between polls).
        self._instances_url = f"{self._api.base_url}/v2/{quote(project_id, safe='')}/instances/"

    @property
    def project_id(self) -> str:
        return self._api.project_id

    @property
    def credentials(self) -> CredentialProvider:
        return self._api.credentials

    @property
    def clock_offset(self) -> float | None:
        """The API's clock minus ours, in seconds, from the ``Date`` of its answers (None: not seen yet)."""
        return self._api.clock_offset

    def has_headroom(self) -> bool:
        """Whether calls to the endpoint keep up: extra polls are made only then, so that they never
        delay the polls every instance is due."""
        return self._api.has_headroom()

    def __repr__(self) -> str:
        return f"<DcsClient {self._api.base_url} project={self.project_id}>"

    async def aclose(self) -> None:
        await self._api.aclose()

    async def __aenter__(self) -> DcsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

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
            raw, request_id = await self._api.get_raw(instance_id, prefix + query, source="tasks")
            if number == 0:
                digest = hashlib.blake2b(raw, digest_size=16).digest()
                if digest == unchanged:
                    return TaskAnswer(None, digest)
            page = parse_tasks_page(self._api.decode(instance_id, raw, request_id), instance_id, request_id)
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
        path = f"/v2/{quote(self.project_id, safe='')}/instances"
        out: list[dict[str, Any]] = []
        offset = 0
        for _ in range(MAX_PAGES):
            page = [("offset", str(offset)), ("limit", str(limit))]
            body = await self._api.get_json("-", path, page, source="discovery")
            items = body.get("instances") or []
            if not isinstance(items, list):
                raise DcsApiError("-", Reason.INVALID_RESPONSE, "'instances' is not a list")
            out.extend(i for i in items if isinstance(i, dict))
            offset += len(items)
            total = body.get("instance_num")
            if not items or not isinstance(total, int | str) or offset >= int(total):
                break
        return out


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
        message = f"unreadable task list ({type(exc).__name__}: {str(exc)[:MAX_ERROR_TEXT]})"
    raise DcsApiError(
        instance_id, Reason.INVALID_RESPONSE, message, http_status=200, request_id=request_id
    ) from None
