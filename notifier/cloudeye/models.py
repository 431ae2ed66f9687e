"""Pydantic models of Cloud Eye's (CES v1) event answers, and what each DCS event means.

Two calls (``../shared/CES-NOTES.md``): ``ListEvents`` (``GET /V1.0/{project_id}/events``) answers one
aggregate per event name that fired in the window — which names to ask about — and ``ListEventDetail``
(``GET /V1.0/{project_id}/event/{event_name}``) the occurrences of one name, paged with ``start``/``limit``.

Absorbed here: times are epoch milliseconds (numbers, or digits as strings); every field but an
occurrence's ``event_id``, ``event_name`` and ``time`` is optional; ``detail.content`` is often a JSON string
(parsed where it is JSON, kept as the string otherwise); unknown fields are ignored. Unconfirmed (CES-NOTES):
the sort order of ``event_info``, how late Cloud Eye may record a system event, and whether Huawei's public
cloud reports more ``SYS.DCS`` events than the list below (taken from Open Telekom Cloud's copy of the docs).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from notifier.pipeline.events import CloudEyeInfo, EventType

#: The event source of DCS events.
DCS_SOURCE: Final = "SYS.DCS"
#: ``SYS.DCS`` event names → the notifier's event types; any other name is ``cloudeye.event``.
EVENT_TYPES: Final[dict[str, EventType]] = {
    "masterStandbyFailover": EventType.INSTANCE_FAILOVER,
    "masterStandbySwitchover": EventType.INSTANCE_SWITCHOVER,
    "redisNodeStatusAbnormal": EventType.NODE_ABNORMAL,
    "memcachedInstanceStatusAbnormal": EventType.NODE_ABNORMAL,
    "redisNodeStatusNormal": EventType.NODE_RECOVERED,
    "memcachedInstanceStatusNormal": EventType.NODE_RECOVERED,
    "instanceNodeAbnormalRestart": EventType.NODE_RESTARTED,
    "nodeRestarted": EventType.NODE_RESTARTED,
    "instanceBackupFailure": EventType.BACKUP_FAILED,
    "migrateSyncDataFail": EventType.MIGRATION_FAILED,
    "migrationFullResync": EventType.MIGRATION_RESYNC,
}
OTHER_EVENT: Final = EventType.CLOUDEYE_EVENT


def event_type_of(event_name: str) -> EventType:
    """The notifier's event type of a ``SYS.DCS`` event name."""
    return EVENT_TYPES.get(event_name, OTHER_EVENT)


def to_ms(when: datetime) -> int:
    """A time as Cloud Eye writes times: epoch milliseconds."""
    return int(when.timestamp() * 1000)


def parse_ms(value: Any) -> datetime | None:
    """Epoch milliseconds (a number, or digits as a string) as a UTC datetime; None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a time in epoch milliseconds: {value!r}")
    try:
        ms = float(value)
        return datetime.fromtimestamp(ms / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"not a time in epoch milliseconds: {value!r}") from None


def parse_content(content: str | None) -> Any:
    """``detail.content``: the JSON it holds where it is JSON, else the string as it is."""
    if content is None:
        return None
    try:
        return json.loads(content)
    except ValueError:
        return content


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class MetaData(_Model):
    total: int = 0


class EventAggregate(_Model):
    """One event name that fired in the window (``ListEvents``)."""

    event_name: str = Field(min_length=1)
    event_type: str | None = None
    sub_event_type: str | None = None
    event_count: int = 0
    latest_occur_time: datetime | None = None
    latest_event_source: str | None = None

    @field_validator("latest_occur_time", mode="before")
    @classmethod
    def _time(cls, v: Any) -> datetime | None:
        return parse_ms(v)


class EventsPage(_Model):
    events: list[EventAggregate] = Field(default_factory=list)
    meta_data: MetaData = Field(default_factory=MetaData)


class Dimension(_Model):
    name: str = ""
    value: str = ""


class EventDetail(_Model):
    """``detail`` of one occurrence."""

    content: str | None = None
    group_id: str | None = None
    resource_id: str | None = None
    resource_name: str | None = None
    event_state: str | None = None
    event_level: str | None = None
    event_user: str | None = None
    event_type: str | None = None
    sub_event_type: str | None = None
    dimensions: list[Dimension] = Field(default_factory=list)

    @field_validator("content", mode="before")
    @classmethod
    def _content_text(cls, v: Any) -> Any:
        # Documented as a string (often of JSON); an object is kept as its JSON.
        return json.dumps(v, separators=(",", ":")) if isinstance(v, dict | list) else v


class Occurrence(_Model):
    """One occurrence of an event (``ListEventDetail``'s ``event_info``)."""

    event_id: str = Field(min_length=1)
    event_name: str = Field(min_length=1)
    event_source: str | None = None
    time: datetime
    detail: EventDetail = Field(default_factory=EventDetail)

    @field_validator("time", mode="before")
    @classmethod
    def _time(cls, v: Any) -> datetime:
        when = parse_ms(v)
        if when is None:
            raise ValueError("an occurrence without a time")
        return when

    @property
    def type(self) -> EventType:
        return event_type_of(self.event_name)

    @property
    def instance_id(self) -> str | None:
        """The DCS instance it is about: ``detail.resource_id``, else an ``instance_id`` dimension."""
        if self.detail.resource_id:
            return self.detail.resource_id
        for d in self.detail.dimensions:
            if d.name in ("instance_id", "dcs_instance_id") and d.value:
                return d.value
        return None

    def info(self) -> CloudEyeInfo:
        """What Cloud Eye said, as the event carries it (``content`` parsed)."""
        d = self.detail
        return CloudEyeInfo(
            event_id=self.event_id,
            event_name=self.event_name,
            event_source=self.event_source,
            level=d.event_level,
            state=d.event_state,
            time=self.time,
            resource_id=d.resource_id,
            resource_name=d.resource_name,
            user=d.event_user,
            content=parse_content(d.content),
        )


def parse_events_page(body: Mapping[str, Any]) -> EventsPage:
    """Read one ``ListEvents`` answer; ValueError naming the field when it is not one."""
    try:
        return EventsPage.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"malformed answer at {where}: {first['msg']}") from None


@dataclass(frozen=True, slots=True)
class DetailPage:
    """One page of ``ListEventDetail``: the occurrences that could be read, and why the others could not
    (one malformed occurrence must not hide the rest of the page)."""

    occurrences: list[Occurrence]
    total: int
    unreadable: list[str]


def parse_detail_page(body: Mapping[str, Any]) -> DetailPage:
    """Read one ``ListEventDetail`` answer; ValueError when it is not one at all."""
    items = body.get("event_info", [])
    if not isinstance(items, list):
        raise ValueError("'event_info' is not a list")
    try:
        total = MetaData.model_validate(body.get("meta_data") or {}).total
    except ValidationError:
        raise ValueError("'meta_data.total' is not a number") from None
    occurrences: list[Occurrence] = []
    unreadable: list[str] = []
    for n, item in enumerate(items):
        try:
            occurrences.append(Occurrence.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "the occurrence"
            unreadable.append(f"event_info[{n}].{where}: {first['msg']}")
    return DetailPage(occurrences, total, unreadable)
