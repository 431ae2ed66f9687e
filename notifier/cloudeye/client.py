"""Async client of Cloud Eye's event APIs (CES v1) for one project: which DCS events fired, and each one.

Requests go through the project's :class:`~notifier.dcs.endpoint.ApiEndpoint` of Cloud Eye — the same
credentials, politeness gate (its own rate limit: another host), session, TLS and proxy as the DCS API —
so every failure is a :class:`~notifier.errors.DcsApiError` (``Cloud Eye API error for …``) the poller
turns into health events as it does for tasks. The client does not retry. Pages are read to the end
(``start`` += what came, until ``meta_data.total``), bounded by MAX_PAGES.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote

from notifier.cloudeye.models import (
    DCS_SOURCE,
    EventAggregate,
    Occurrence,
    parse_detail_page,
    parse_events_page,
    to_ms,
)
from notifier.dcs.endpoint import ApiEndpoint
from notifier.errors import Reason

#: ``limit`` of a page: the most Cloud Eye gives.
PAGE_SIZE = 100
#: A listing that has not ended after this many pages is refused (an API repeating itself).
MAX_PAGES = 100
#: The event type of system events (as opposed to custom ones).
SYSTEM_EVENTS = "EVENT.SYS"


def window(start: datetime, end: datetime) -> list[tuple[str, str]]:
    """The query of a window of system events (the signer puts parameters in order)."""
    return [("event_type", SYSTEM_EVENTS), ("from", str(to_ms(start))), ("to", str(to_ms(end)))]


class CloudEyeClient:
    """One project's Cloud Eye endpoint. ``subject`` names it in errors (``cloud-eye:{project_id}``)."""

    def __init__(self, api: ApiEndpoint, *, page_size: int = PAGE_SIZE) -> None:
        self._api = api
        self._page_size = page_size
        project = quote(api.project_id, safe="")
        self._events_path = f"/V1.0/{project}/events"
        self._detail_path = f"/V1.0/{project}/event/"
        self.subject = f"cloud-eye:{api.project_id}"

    @property
    def project_id(self) -> str:
        return self._api.project_id

    def has_headroom(self) -> bool:
        return self._api.has_headroom()

    async def aclose(self) -> None:
        await self._api.aclose()

    async def fired(self, start: datetime, end: datetime) -> list[EventAggregate]:
        """The system event names that fired in [start, end] (``ListEvents``: one aggregate per name)."""
        out: list[EventAggregate] = []

        def read(body: dict[str, Any]) -> tuple[int, int]:
            page = parse_events_page(body)
            out.extend(page.events)
            return len(page.events), page.meta_data.total

        await self._read_pages("ListEvents", self._events_path, window(start, end), read)
        return out

    async def occurrences(
        self, event_name: str, start: datetime, end: datetime
    ) -> tuple[list[Occurrence], list[str]]:
        """Every ``SYS.DCS`` occurrence of ``event_name`` in [start, end] (``ListEventDetail``, all pages),
        and why any occurrence could not be read."""
        out: list[Occurrence] = []
        unreadable: list[str] = []

        def read(body: dict[str, Any]) -> tuple[int, int]:
            page = parse_detail_page(body)
            out.extend(page.occurrences)
            unreadable.extend(page.unreadable)
            return len(page.occurrences) + len(page.unreadable), page.total

        path = self._detail_path + quote(event_name, safe="")
        params = [("event_source", DCS_SOURCE), *window(start, end)]
        await self._read_pages("ListEventDetail", path, params, read)
        return out, unreadable

    async def _read_pages(
        self,
        call: str,
        path: str,
        params: list[tuple[str, str]],
        read: Callable[[dict[str, Any]], tuple[int, int]],
    ) -> None:
        """Ask for ``path`` page after page (``start`` advanced by what came) until ``read`` — which takes
        one answer and says how many items came and how many there are in all — says it is over."""
        offset = 0
        for _ in range(MAX_PAGES):
            page = [*params, ("limit", str(self._page_size)), ("start", str(offset))]
            body = await self._api.get_json(self.subject, path, page, source="cloud_eye")
            try:
                came, total = read(body)
            except ValueError as exc:
                raise self._api.error(
                    self.subject, Reason.INVALID_RESPONSE, f"{call}: {exc}", http_status=200
                ) from None
            offset += came
            if not came or offset >= total:
                return
        raise self._api.error(self.subject, Reason.INVALID_RESPONSE, f"{call} never ends", http_status=200)
