"""When a moment is inside: Alertmanager's ``time_intervals``, and DCS maintenance windows. Pure, no clock.

**Time intervals** keep Alertmanager's meaning (its ``timeinterval`` package), so a config written for one
reads the same here: each field of an interval is optional and the interval contains a moment when every
field given matches; a field matches when one of its ranges does. Ranges are inclusive (``monday:friday``,
``1:5``, ``january:march``, ``2026:2027``) except ``times``, whose ``end_time`` is exclusive (``24:00`` is the
end of the day). Weekdays run Sunday (0) to Saturday (6), so ``saturday:sunday`` is refused as Alertmanager
refuses it. A negative day of the month counts from its end (``-1`` the last day); a day the month does not
have is skipped. Everything is read in the interval's ``location`` (an IANA zone via :mod:`zoneinfo`; UTC
by default; ``Local`` the host's), so ``09:00`` in ``Europe/Berlin`` follows daylight saving time.

**Maintenance windows** are what DCS reports per instance (``maintain_begin``/``maintain_end`` in its
instance list, ``HH:mm:ss`` in UTC — CES-NOTES §3): a daily window, begin inclusive, end exclusive, which
wraps midnight when it ends before it begins (``22:00:00``–``02:00:00``). Unconfirmed: that every instance
(Memcached, older ones) is listed with both fields, and that a window never wraps midnight in practice
(the v2 docs offer one-hour slots starting on the hour); a window missing or unreadable is "not known",
never guessed. (Legacy v1 docs show 02:00–06:00 without saying UTC: only the v2 list is read.)
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from notifier.config.source import did_you_mean

#: Alertmanager's numbering: Sunday is 0.
WEEKDAYS: Final = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
MONTHS: Final = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
MINUTES_PER_DAY: Final = 1440
SECONDS_PER_DAY: Final = 86_400
#: ``location: Local`` — the host's own zone, as in Alertmanager.
LOCAL: Final = "Local"

#: Where a change started relative to its instance's maintenance window.
Maintenance = Literal["inside", "outside"]

_CLOCK = re.compile(r"^(?:([01]\d|2[0-3]):([0-5]\d)|(24):(00))$")


@dataclass(frozen=True, slots=True)
class Span:
    """An inclusive range of integers (weekdays, days of the month, months, years)."""

    begin: int
    end: int


@dataclass(frozen=True, slots=True)
class TimeRange:
    """Minutes of the day: ``start`` inclusive, ``end`` exclusive (at most 1440, the end of the day)."""

    start: int
    end: int


def _bounds(text: str) -> tuple[str, str]:
    parts = text.strip().lower().split(":")
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    raise ValueError(f"{text!r} is not a range: write one value or two joined by a colon (first:last)")


def _about(original: str, word: str) -> str:
    """The start of a message about ``word`` of the range ``original`` (once when they are the same)."""
    return f"{word!r}" if original.strip().lower() == word else f"{original!r}: {word!r}"


def _as_text(value: object, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"expected {what} as text, e.g. '1:5'")
    return str(value)


def parse_clock(value: object, key: str) -> int:
    """``HH:MM`` (``00:00`` to ``23:59``, or ``24:00``) as minutes of the day."""
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected HH:MM in quotes (e.g. '09:00'), got {value!r}")
    m = _CLOCK.match(value.strip())
    if m is None:
        raise ValueError(f"{key}: {value!r} is not a time of day: HH:MM from 00:00 to 23:59, or 24:00")
    hours, minutes = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    return int(hours) * 60 + int(minutes)


def parse_time_range(start: object, end: object) -> TimeRange:
    """``start_time``/``end_time`` as a :class:`TimeRange`; one that ends before it starts is refused."""
    first, last = parse_clock(start, "start_time"), parse_clock(end, "end_time")
    if first >= last:
        raise ValueError(
            f"start_time {start} must be before end_time {end}: a range does not wrap midnight; "
            f"write two: {start}–24:00 and 00:00–{end}"
        )
    return TimeRange(first, last)


def _weekday(word: str, original: str) -> int:
    if word in WEEKDAYS:
        return WEEKDAYS.index(word)
    hint = did_you_mean(word, WEEKDAYS, quote=repr)
    raise ValueError(f"{_about(original, word)} is not a weekday{hint} (sunday … saturday, or a range)")


def parse_weekdays(value: object) -> Span:
    """``monday:friday`` or ``saturday`` (any case). Weeks run Sunday to Saturday, as in Alertmanager."""
    text = _as_text(value, "a weekday or a range of weekdays")
    first, last = _bounds(text)
    span = Span(_weekday(first, text), _weekday(last, text))
    if span.begin > span.end:
        head = first if first == "saturday" else f"{first}:saturday"
        tail = last if last == "sunday" else f"sunday:{last}"
        raise ValueError(
            f"{text!r}: weekday ranges run from Sunday to Saturday (as in Alertmanager); "
            f"write two: '{head}' and '{tail}'"
        )
    return span


def _int(word: str, original: str, what: str) -> int:
    try:
        return int(word)
    except ValueError:
        raise ValueError(f"{_about(original, word)} is not {what}") from None


def parse_days_of_month(value: object) -> Span:
    """``1:5``, ``-1`` (the last day), ``-7:-1``; as Alertmanager checks them."""
    text = _as_text(value, "a day of the month or a range of days")
    first, last = _bounds(text)
    span = Span(_int(first, text, "a day of the month"), _int(last, text, "a day of the month"))
    for day in (span.begin, span.end):
        if day == 0 or not -31 <= day <= 31:
            raise ValueError(
                f"{text!r}: {day} is not a day of the month (1 to 31, or -1 to -31 from the end)"
            )
    if span.begin < 0 < span.end:
        raise ValueError(f"{text!r}: a range that starts from the end of the month must end there too")
    # As Alertmanager: a range always empty even in a 28-day month is a mistake.
    if (28 + span.begin if span.begin < 0 else span.begin) > (28 + span.end if span.end < 0 else span.end):
        raise ValueError(f"{text!r}: the last day is before the first")
    return span


def _month(word: str, original: str) -> int:
    if word in MONTHS:
        return MONTHS.index(word) + 1
    if word.isdigit() and 1 <= int(word) <= 12:
        return int(word)
    hint = did_you_mean(word, MONTHS, quote=repr)
    raise ValueError(f"{_about(original, word)} is not a month{hint} (january … december, or 1 … 12)")


def parse_months(value: object) -> Span:
    """``january:march``, ``12``, ``may``."""
    text = _as_text(value, "a month or a range of months")
    first, last = _bounds(text)
    span = Span(_month(first, text), _month(last, text))
    if span.begin > span.end:
        raise ValueError(f"{text!r}: the last month is before the first (a range does not wrap the year)")
    return span


def parse_years(value: object) -> Span:
    """``2026:2027``, ``2026``."""
    text = _as_text(value, "a year or a range of years")
    first, last = _bounds(text)
    span = Span(_int(first, text, "a year"), _int(last, text, "a year"))
    for year in (span.begin, span.end):
        if not 1 <= year <= 9999:
            raise ValueError(f"{text!r}: {year} is not a year (1 to 9999)")
    if span.begin > span.end:
        raise ValueError(f"{text!r}: the last year is before the first")
    return span


@functools.lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def parse_location(value: object) -> tzinfo | None:
    """An IANA zone (``Europe/Berlin``), ``UTC``, or ``Local`` (the host's zone: None)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a time zone name, e.g. 'Europe/Berlin', 'UTC' or 'Local'")
    name = value.strip()
    if name == LOCAL:
        return None
    if name.upper() == "UTC":
        return UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        known = _zones()
        if not known:  # the host has no zone database at all: say so, not "unknown zone"
            raise ValueError(
                f"unknown time zone {name!r}: this host has no time zone database "
                "(install the tzdata package, system or Python)"
            ) from None
        hint = did_you_mean(name, known, quote=repr)
        raise ValueError(f"unknown time zone {name!r}{hint} (an IANA name such as 'Europe/Berlin')") from None


def _days_in_month(year: int, month: int) -> int:
    following = datetime(year + month // 12, month % 12 + 1, 1)
    return (following - datetime(year, month, 1)).days


def _day_matches(spans: tuple[Span, ...], year: int, month: int, day: int) -> bool:
    """Alertmanager's reading: negative days count from the end; a first day the month lacks skips the
    range; the last day is cut to the month."""
    size = _days_in_month(year, month)
    for span in spans:
        begin = size + span.begin + 1 if span.begin < 0 else span.begin
        end = size + span.end + 1 if span.end < 0 else span.end
        if begin > size:
            continue
        if max(begin, -size) <= day <= min(end, size):
            return True
    return False


def _in(spans: tuple[Span, ...], n: int) -> bool:
    return any(s.begin <= n <= s.end for s in spans)


@dataclass(frozen=True, slots=True)
class TimeInterval:
    """One entry of a named interval's ``time_intervals``: None for a field not given (matches any)."""

    times: tuple[TimeRange, ...] | None = None
    weekdays: tuple[Span, ...] | None = None
    days_of_month: tuple[Span, ...] | None = None
    months: tuple[Span, ...] | None = None
    years: tuple[Span, ...] | None = None
    #: None: the host's zone (``Local``).
    location: tzinfo | None = UTC

    def contains(self, when: datetime) -> bool:
        """Whether ``when`` (aware; a naive one is taken as UTC) is inside this interval."""
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        t = when.astimezone(self.location)
        if self.times is not None:
            minute = t.hour * 60 + t.minute
            if not any(r.start <= minute < r.end for r in self.times):
                return False
        if self.days_of_month is not None and not _day_matches(self.days_of_month, t.year, t.month, t.day):
            return False
        if self.months is not None and not _in(self.months, t.month):
            return False
        if self.weekdays is not None and not _in(self.weekdays, (t.weekday() + 1) % 7):
            return False
        return self.years is None or _in(self.years, t.year)


def any_contains(intervals: Iterable[TimeInterval], when: datetime) -> bool:
    """Whether one of ``intervals`` contains ``when`` (a named interval is active)."""
    return any(i.contains(when) for i in intervals)


# -- DCS maintenance windows -------------------------------------------------------------------------

_HMS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?$")


def _hms(seconds: int, *, short: bool) -> str:
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}" if short and not s else f"{h:02d}:{m:02d}:{s:02d}"


class MaintenanceWindow(BaseModel):
    """An instance's daily DCS maintenance window in UTC, as seconds after midnight: ``begin`` inclusive,
    ``end`` exclusive; it wraps midnight when ``end`` is not after ``begin``."""

    model_config = ConfigDict(frozen=True)

    begin: int = Field(ge=0, lt=SECONDS_PER_DAY)
    end: int = Field(ge=0, lt=SECONDS_PER_DAY)

    def contains(self, when: datetime) -> bool:
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        t = when.astimezone(UTC)
        s = t.hour * 3600 + t.minute * 60 + t.second
        if self.begin < self.end:
            return self.begin <= s < self.end
        return s >= self.begin or s < self.end

    def placement(self, when: datetime) -> Maintenance:
        return "inside" if self.contains(when) else "outside"

    @property
    def begin_text(self) -> str:
        """``18:00:00``: the API's own form (the webhook's ``data.maintenance.window.begin``)."""
        return _hms(self.begin, short=False)

    @property
    def end_text(self) -> str:
        return _hms(self.end, short=False)

    @property
    def label(self) -> str:
        """``18:00–19:00 UTC``, as a person reads it (seconds only when the window has some)."""
        return f"{_hms(self.begin, short=True)}–{_hms(self.end, short=True)} UTC"


def _seconds(value: object) -> int | None:
    if not isinstance(value, str):
        return None
    m = _HMS.match(value.strip())
    if m is None:
        return None
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3) or 0)


@functools.lru_cache(maxsize=256)
def _window(begin: int, end: int) -> MaintenanceWindow:
    # Shared: a fleet has a handful of distinct windows, and every watched instance's record holds one.
    return MaintenanceWindow(begin=begin, end=end)


def maintenance_window(begin: object, end: object) -> MaintenanceWindow | None:
    """The window an instance list reports (``maintain_begin``, ``maintain_end``); None when either is
    missing or unreadable, or both are equal (a window of no length, or of the whole day: not one DCS
    documents — the window is then unknown rather than guessed)."""
    first, last = _seconds(begin), _seconds(end)
    if first is None or last is None or first == last:
        return None
    return _window(first, last)


def placement(window: MaintenanceWindow | None, when: datetime) -> Maintenance | None:
    """Whether ``when`` is inside ``window``; None when the window is not known."""
    return None if window is None else window.placement(when)
