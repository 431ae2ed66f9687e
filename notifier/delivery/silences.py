"""Silences: notifications held back for a while by matchers an operator set (``dcs-notifier silence``).

Pure: what a silence is, how its matchers are read from the command line and from Redis, whether one
matches a notification, and whether it is in effect at a given time. Where silences are kept, and how
a held-back notification is acknowledged and logged, is :mod:`notifier.store.silences`; they are applied
where notifications are delivered (:class:`notifier.delivery.worker.Deliverer`), so a silence added while
notifications wait in the outbox applies to them too.

A silence matches a notification when every matcher matches (``field=glob``, or ``field!=glob`` for
its negation). The fields are those rules route by, and a few more:

* ``instance``: the instance's id or its configured name (``!=``: neither matches);
* ``project``, ``region``, ``channel``, ``type`` (the event type, ``task.started``...);
* ``task``: the task's name as the API reports it; ``EXTEND`` and ``ChangeInstanceSpec`` name the same
  kind, as in rules (:func:`notifier.pipeline.rules.canonical_task`);
* ``labels.<name>``: the instance's label;
* ``problem``: a poller problem's reason (``auth``, ``timeout``...; ``poller.*`` events).

Globs are :func:`fnmatch.fnmatchcase`'s (``*``, ``?``, ``[...]``), case-sensitive. A field the event
does not have (``task`` of a ``poller.unhealthy``) is the empty string: ``task=*`` matches it,
``task=EXTEND`` does not, ``task!=EXTEND`` does.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from difflib import get_close_matches
from fnmatch import fnmatchcase
from typing import Final, Literal

from notifier.pipeline.events import EventType, Notification, SilenceNote
from notifier.pipeline.rules import canonical_task

#: The fields a matcher may name (``labels.<name>`` besides), in the order a refusal lists them.
FIELDS: Final = ("instance", "project", "region", "type", "task", "channel", "labels.<name>", "problem")
_PLAIN_FIELDS: Final = frozenset(f for f in FIELDS if not f.endswith(">"))
LABEL_PREFIX: Final = "labels."
#: A comment (and an author) longer than this is refused: a silence is read on one screen.
COMMENT_MAX: Final = 500
AUTHOR_MAX: Final = 100
#: A glob longer than this is refused (a matcher is typed by a person).
PATTERN_MAX: Final = 300
_GLOB: Final = re.compile(r"[*?\[]")
_MATCHER: Final = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.\-/]*)\s*(!=|=)(.*)$", re.DOTALL)

State = Literal["active", "pending", "expired"]


class MatcherError(ValueError):
    """A matcher that cannot be used; the message names it and says what is wrong."""


@dataclass(frozen=True, slots=True)
class Matcher:
    """``field=pattern`` (or ``field!=pattern`` when ``negate``)."""

    field: str
    pattern: str
    negate: bool = False

    def __str__(self) -> str:
        return f"{self.field}{'!=' if self.negate else '='}{self.pattern}"

    def matches(self, notification: Notification) -> bool:
        found = any(_glob(value, self.pattern, self.field) for value in _values(self.field, notification))
        return found != self.negate


def _glob(value: str, pattern: str, field: str) -> bool:
    if fnmatchcase(value, pattern):
        return True
    # EXTEND and ChangeInstanceSpec name the same kind of task, whichever is written.
    return field == "task" and fnmatchcase(canonical_task(value), canonical_task(pattern))


def _values(field: str, notification: Notification) -> tuple[str, ...]:
    """What a field is for a notification (an instance has two names: its id and its configured name)."""
    event = notification.event
    if field == "instance":
        return (event.instance.id, event.instance.name)
    if field.startswith(LABEL_PREFIX):
        return (event.instance.labels.get(field[len(LABEL_PREFIX) :], ""),)
    value = {
        "project": event.project_id,
        "region": event.region,
        "type": event.type.value,
        "task": event.task.name if event.task is not None else "",
        "channel": notification.channel,
        "problem": event.problem.reason if event.problem is not None else "",
    }.get(field)
    return ("",) if value is None else (value,)


def parse_matcher(text: str, *, channels: Iterable[str] | None = None) -> Matcher:
    """A matcher as written on the command line (``instance=orders-*``, ``task!=EXTEND``).

    Refused (MatcherError): no ``=``, an unknown field (the known ones are named), an empty pattern (an
    unset shell variable would otherwise silence everything with ``!=``), an event type that does not
    exist, and — when ``channels`` (the config's) are given — a channel that is not one of them. A glob
    is not checked against the known values (``type=task.*`` is fine)."""
    found = _MATCHER.match(text)
    if found is None:
        raise MatcherError(
            f"{text!r} is not a matcher: write FIELD=GLOB or FIELD!=GLOB, e.g. instance=orders-*"
        )
    field, op, pattern = found.group(1), found.group(2), found.group(3).strip()
    where = f"matcher {text!r}"
    if field not in _PLAIN_FIELDS and not (field.startswith(LABEL_PREFIX) and len(field) > len(LABEL_PREFIX)):
        hint = get_close_matches(field, [*_PLAIN_FIELDS, "labels"], n=1)
        guess = f"; did you mean {hint[0]!r}?" if hint else ""
        raise MatcherError(f"{where}: unknown field {field!r}{guess} (known: {', '.join(FIELDS)})")
    if not pattern:
        raise MatcherError(f"{where}: empty value (to match anything, write {field}=*)")
    if len(pattern) > PATTERN_MAX:
        raise MatcherError(f"{where}: value longer than {PATTERN_MAX} characters")
    if any(ch in pattern for ch in "\r\n\x00"):
        raise MatcherError(f"{where}: the value holds a line break or a NUL")
    if not _GLOB.search(pattern):
        if field == "type":
            _known(where, pattern, [t.value for t in EventType], "event type")
        if field == "channel" and channels is not None:
            _known(where, pattern, sorted(channels), "channel")
    return Matcher(field, pattern, op == "!=")


def _known(where: str, value: str, known: list[str], what: str) -> None:
    if value in known:
        return
    hint = get_close_matches(value, known, n=1)
    guess = f"; did you mean {hint[0]!r}?" if hint else ""
    raise MatcherError(f"{where}: unknown {what} {value!r}{guess} (known: {', '.join(known)})")


def new_id() -> str:
    """A short, readable silence id: 8 hex digits (a collision is checked for where it is stored)."""
    return secrets.token_hex(4)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """An ISO 8601 time (``2026-12-02T08:00:00Z``, ``2026-12-02 08:00+01:00``); without a zone, UTC."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time (e.g. 2026-12-02T08:00:00Z)") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Silence:
    """A silence: its matchers, when it is in effect (``starts_at`` ≤ now < ``ends_at``), and who set
    it and why. ``expired_by`` names who ended it early (``silence expire``)."""

    id: str
    matchers: tuple[Matcher, ...]
    starts_at: datetime
    ends_at: datetime
    comment: str
    author: str
    created_at: datetime
    expired_by: str | None = None

    def state(self, now: datetime) -> State:
        if now >= self.ends_at:
            return "expired"
        return "pending" if now < self.starts_at else "active"

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at

    def matches(self, notification: Notification) -> bool:
        return bool(self.matchers) and all(m.matches(notification) for m in self.matchers)

    def note(self, notification: Notification) -> SilenceNote:
        """What a task's later messages tell of this silence holding ``notification`` back."""
        return SilenceNote(id=self.id, comment=self.comment, type=notification.event.type.value)

    def to_dict(self) -> dict[str, object]:
        """The silence as stored in Redis and printed by ``silence list --json``."""
        return {
            "id": self.id,
            "matchers": [str(m) for m in self.matchers],
            "starts_at": _iso(self.starts_at),
            "ends_at": _iso(self.ends_at),
            "comment": self.comment,
            "author": self.author,
            "created_at": _iso(self.created_at),
            "expired_by": self.expired_by,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Silence:
        """A stored silence; ValueError when it is not one (or names a field this version does not
        know: it is then never applied, rather than applied without that matcher)."""
        data = json.loads(raw)
        if not isinstance(data, Mapping):
            raise ValueError("not a JSON object")
        raw_matchers = data.get("matchers")
        if not isinstance(raw_matchers, list) or not raw_matchers:
            raise ValueError("no matchers")
        matchers = tuple(parse_matcher(str(m)) for m in raw_matchers)
        expired_by = data.get("expired_by")
        return cls(
            id=str(data["id"]),
            matchers=matchers,
            starts_at=parse_time(str(data["starts_at"])),
            ends_at=parse_time(str(data["ends_at"])),
            comment=str(data.get("comment", "")),
            author=str(data.get("author", "")),
            created_at=parse_time(str(data.get("created_at") or data["starts_at"])),
            expired_by=None if expired_by is None else str(expired_by),
        )


def first_match(silences: Iterable[Silence], notification: Notification, now: datetime) -> Silence | None:
    """The silence in effect at ``now`` that holds ``notification`` back (the one ending last, so the
    log names the silence that would have held it longest), or None."""
    found = [s for s in silences if s.active(now) and s.matches(notification)]
    return max(found, key=lambda s: (s.ends_at, s.id)) if found else None


def marks_task(notification: Notification) -> bool:
    """Whether a held-back notification is kept in its task's card record, for the task's later messages:
    a task's own event (a Cloud Eye event during a task is not the task's news)."""
    event = notification.event
    return event.task is not None and event.cloud_eye is None
