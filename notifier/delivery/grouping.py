"""Grouping and catch-up digests: which outbox entries of a channel go out together (pure).

Delivery reads a channel's entries in stream order; :func:`plan` cuts them into *units*, each sent as one
message and acknowledged as one:

* a **digest**, first, when more than ``digest.after`` of them tell of changes older than ``digest.age``
  (queued that long ago, or changes that long past: the daemon, Redis or the channel was away): one
  message counting them all;
* a **group**: entries of one group key (:func:`group_key`: by default project, event type and task name;
  poller health by project, type and cause) whose first member was queued less than ``group_wait``
  before them. A group is sent once its first member has waited ``group_wait`` (later units wait
  behind it, so the channel's order holds); a group of one is sent as a lone notification;
* a **single** entry otherwise (``group_wait`` 0, or a generic webhook whose rule did not ask).

An entry never joins a group placed before another unit holding an earlier event of its own card (the
same task, the same instance's health): a task's "succeeded" never overtakes its "started".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from notifier.config.models import DigestConfig, RuleConfig
from notifier.delivery.cards import card_key, stamp
from notifier.pipeline.events import Event, EventType, Notification
from notifier.pipeline.rules import canonical_task
from notifier.store.outbox import OutboxEntry, entry_time

DEFAULT_GROUP_BY: Final = ("project", "type", "task")
#: Poller health groups by its cause: 500 instances behind one revoked AK are one message.
HEALTH_GROUP_BY: Final = ("project", "type", "problem")
#: At most this many entries are read for one pass of a channel that groups (and in one group).
GATHER_MAX: Final = 2000
#: At most this many events in one POST of a generic webhook (a group, a digest): a receiver refuses a
#: body too large for it (HTTP 413) for good, which would dead-letter them all.
WEBHOOK_BATCH_MAX: Final = 100


def group_wait(rule: RuleConfig | None, chat: bool, default: float) -> float:
    """How long the entries of ``rule`` wait for the rest of their group on a channel (``chat``: read by
    people; ``default``: ``delivery.group_wait``) — 0 when they are not grouped."""
    if rule is not None and rule.group_wait is not None:
        return rule.group_wait
    return default if chat else 0.0


def _field(event: Event, name: str) -> str:
    if name == "project":
        return event.project_id
    if name == "region":
        return event.region
    if name == "type":
        return event.type.value
    if name == "task":
        return canonical_task(event.task.name) if event.task is not None else ""
    if name == "problem":
        p = event.problem
        return f"{p.reason}:{p.error_code or p.http_status or ''}" if p is not None else ""
    return event.instance.labels.get(name.removeprefix("labels."), "")


def group_key(notification: Notification, rule: RuleConfig | None) -> tuple[str, ...]:
    """What the members of a group share (the rule's ``group_by``, or the default)."""
    event = notification.event
    by: Sequence[str]
    if rule is not None and rule.group_by is not None:
        by = rule.group_by
    elif event.type in (EventType.POLLER_UNHEALTHY, EventType.POLLER_RECOVERED):
        by = HEALTH_GROUP_BY
    else:
        by = DEFAULT_GROUP_BY
    return (notification.rule or "", *(f"{name}={_field(event, name)}" for name in by))


@dataclass
class Unit:
    """Entries sent as one message: ``kind`` single, group or digest."""

    kind: str
    entries: list[OutboxEntry]
    key: tuple[str, ...] = ()
    #: When the unit may be sent (epoch seconds): a group waits for its members.
    ready_at: float = 0.0


#: Events the API dates (a task's start, its end): older than their queueing after an absence. A task's
#: other news (stuck, a status seen changing) happens when it is seen: a stuck task is always "old" by
#: its ``created_at``, and must be announced, not folded into a digest.
DATED_BY_THE_API: Final = frozenset({EventType.STARTED, EventType.SUCCEEDED, EventType.FAILED})


def _age(entry: OutboxEntry, now: float) -> float:
    """How long ago what the entry tells happened: since it was queued, or since the change itself when
    the API dates it and that is older (a daemon back from an hour away finds an hour of changes)."""
    written = entry_time(entry.entry_id)
    happened = written if written is not None else now
    event = entry.notification.event
    if event.type in DATED_BY_THE_API:
        happened = min(stamp(event), happened)
    return max(0.0, now - happened)


def plan(
    entries: Sequence[OutboxEntry],
    *,
    rules: Mapping[str, RuleConfig],
    chat: bool,
    digest: DigestConfig,
    now: float,
    default_wait: float = 10.0,
) -> list[Unit]:
    """The units ``entries`` (one channel's, in stream order) are sent as, in order."""
    units: list[Unit] = []
    rest = list(entries)
    most = GATHER_MAX if chat else WEBHOOK_BATCH_MAX
    if digest.after and (chat or digest.webhooks):
        old = [e for e in rest if _age(e, now) > digest.age]
        if len(old) > digest.after:
            units.extend(Unit("digest", old[i : i + most]) for i in range(0, len(old), most))
            rest = [e for e in rest if _age(e, now) <= digest.age]
    last_of_key: dict[tuple[str, ...], int] = {}
    where_card: dict[str, int] = {}  # card key → the last unit holding an event of that card
    for entry in rest:
        n = entry.notification
        rule = rules.get(n.rule or "")
        wait = group_wait(rule, chat, default_wait)
        card = card_key(n.event)
        written = entry_time(entry.entry_id) or now
        if wait > 0:
            key = group_key(n, rule)
            at = last_of_key.get(key)
            if at is not None:
                unit = units[at]
                first = entry_time(unit.entries[0].entry_id) or now
                behind = where_card.get(card, -1)
                if written < first + wait and behind <= at and len(unit.entries) < most:
                    unit.entries.append(entry)
                    where_card[card] = at
                    continue
            units.append(Unit("group", [entry], key, written + wait))
            last_of_key[key] = len(units) - 1
        else:
            units.append(Unit("single", [entry]))
        where_card[card] = len(units) - 1
    for unit in units:  # a group of one is a lone notification (its key kept: it may join its burst)
        if unit.kind == "group" and len(unit.entries) == 1:
            unit.kind = "single" if unit.ready_at <= now else "group"
    return units
