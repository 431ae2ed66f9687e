"""Living cards: one chat message per task (or per instance's health), updated in place as it changes.

Pure: which card an event belongs to, whether it starts a new one, whether it ends it, and whether its
thread reply is also shown in the channel. Where a card is kept is :mod:`notifier.store.cards`; how it
is posted and updated, the channel's business (:mod:`notifier.delivery.channels.slack`).

Cards are kept per (channel, card key):

* a task's events share the card ``{project_id}/{instance_id}/task/{task_id}``;
* an instance's ``poller.unhealthy``, ``poller.recovered`` and ``instance.removed`` share the card
  ``{project_id}/{instance_id}/instance``: the recovery (or the removal) updates the card of the
  failure, and the next failure after a recovery starts a new card;
* Cloud Eye's ``node.abnormal`` and ``node.recovered`` share ``.../node`` the same way; every other
  Cloud Eye event (a failover...) is a card of its own, ``.../cloud-eye/{event_id}``.

A chat channel without cards (a Slack incoming webhook) keeps the same record, without a message, for
each task (:func:`tracks`): a Cloud Eye switchover that is part of such a task, read while
the task's end is still to come there, is kept in it as a note (:func:`holds`), and the task's next
message there shows it. Both live in the one outbox stream of the channel, read in order, so whether
the end came first is never a race.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from notifier.pipeline.events import CloudEyeInfo, Event, EventType, Notification, SilenceNote

#: Events whose thread reply is also posted to the channel (``reply_broadcast``): what needs a human.
BROADCAST: Final = frozenset(
    {EventType.FAILED, EventType.POLLER_UNHEALTHY, EventType.NODE_ABNORMAL, EventType.STUCK}
)
#: Events after which the card's story is over: a later event of the same key starts a new card when
#: it is one of REOPENS (a new episode), else updates this one.
CLOSES: Final = frozenset(
    {
        EventType.SUCCEEDED,
        EventType.FAILED,
        EventType.POLLER_RECOVERED,
        EventType.INSTANCE_REMOVED,
        EventType.NODE_RECOVERED,
    }
)
REOPENS: Final = frozenset({EventType.POLLER_UNHEALTHY, EventType.NODE_ABNORMAL})
#: Cloud Eye's events that share one card per instance (the others are one card each).
NODE_EVENTS: Final = frozenset({EventType.NODE_ABNORMAL, EventType.NODE_RECOVERED})


@dataclass(frozen=True, slots=True)
class Card:
    """A posted card: the channel **id** the chat service answered with, the message's ``ts``, whether
    its story is still going on, and the :func:`stamp` of the event it shows. On a channel without cards
    ``channel_id`` and ``ts`` are empty, and ``notes`` holds what the task's next message there tells too."""

    channel_id: str = ""
    ts: str = ""
    open: bool = True
    shown: float = 0.0
    notes: tuple[CloudEyeInfo, ...] = ()
    #: The group card (:class:`Group`) this card's events are told on, if they came in a burst.
    group: str = ""
    #: A notification of this task a silence held back here (:func:`with_silence`); the task's later
    #: messages say so ("Started while silenced ...").
    silenced: SilenceNote | None = None

    def to_json(self) -> str:
        data: dict[str, object] = {"c": self.channel_id, "ts": self.ts, "open": self.open, "at": self.shown}
        if self.group:
            data["g"] = self.group
        if self.notes:
            data["notes"] = [note.model_dump(mode="json") for note in self.notes]
        if self.silenced is not None:
            data["sil"] = self.silenced.model_dump(mode="json")
        return json.dumps(data, separators=(",", ":"))

    def shows_later_than(self, event: Event) -> bool:
        """Whether the card shows a later event than ``event`` (a replayed dead letter): the card is then
        not rewritten back to an older state; only its thread says what happened."""
        return self.shown > stamp(event)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Card | None:
        """The card a stored value describes; None when it is not one (it is then posted anew)."""
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        channel_id, ts, is_open, shown = data.get("c"), data.get("ts"), data.get("open", True), data.get("at")
        if not isinstance(channel_id, str) or not isinstance(ts, str) or bool(channel_id) != bool(ts):
            return None
        shown = float(shown) if isinstance(shown, int | float) and not isinstance(shown, bool) else 0.0
        notes: list[CloudEyeInfo] = []
        raw_notes = data.get("notes")
        for note in raw_notes if isinstance(raw_notes, list) else ():
            try:
                notes.append(CloudEyeInfo.model_validate(note))
            except ValueError:
                continue  # an unreadable note is not told; the rest are
        group = data.get("g")
        card = cls(channel_id, ts, is_open is not False, shown, tuple(notes))
        card = dataclasses.replace(card, group=group) if isinstance(group, str) and group else card
        try:  # written by a version with silences; an unreadable one is not told
            silenced = SilenceNote.model_validate(data["sil"]) if "sil" in data else None
        except ValueError:
            silenced = None
        return dataclasses.replace(card, silenced=silenced) if silenced is not None else card


def stamp(event: Event) -> float:
    """When what ``event`` shows happened (epoch seconds), on a clock every replica shares where there is
    one: the API's for a task (its ``updated_at``, else ``created_at``), else when it was detected."""
    task = event.task
    if task is not None:
        when = task.updated_at or task.created_at
        if when is not None:
            return when.timestamp()
    return event.detected_at.timestamp()


def card_key(event: Event) -> str:
    """The card an event belongs to (per channel)."""
    where = f"{event.project_id}/{event.instance.id}"
    if event.task is not None:
        return f"{where}/task/{event.task.id}"
    if event.type in NODE_EVENTS:
        return f"{where}/node"
    if event.cloud_eye is not None:
        return f"{where}/cloud-eye/{event.cloud_eye.event_id}"
    return f"{where}/instance"


def edits_card(event: Event) -> bool:
    """Whether ``event`` rewrites its card: a Cloud Eye event that is part of a task (a switchover
    during the task) is only told in the task's thread."""
    return event.cloud_eye is None or event.task is None


def needs_new_card(event: Event, card: Card | None) -> bool:
    """Whether ``event`` is posted as a new card rather than an update of ``card``."""
    return card is None or not card.ts or (not card.open and event.type in REOPENS)


def tracks(event: Event) -> bool:
    """Whether a channel without cards keeps a record of ``event``'s task (any task: which ones switch
    over is the config's ``cloud_eye.switching_tasks``)."""
    return event.task is not None


def holds(notification: Notification, card: Card | None) -> bool:
    """Whether a channel without cards keeps ``notification`` (a switchover during a running task) as a
    note for the task's next message, rather than sending it on its own: not once the task's end was
    told there (the switchover then is a message of its own, as a part of that task, not an alert)."""
    return notification.folds and notification.event.cloud_eye is not None and (card is None or card.open)


def with_note(card: Card | None, event: Event) -> Card:
    """``card`` (or a new record) keeping ``event``'s Cloud Eye facts for the task's next message."""
    card = card or Card()
    info = event.cloud_eye
    if info is None or any(note.event_id == info.event_id for note in card.notes):
        return card
    return Card(card.channel_id, card.ts, card.open, card.shown, (*card.notes, info), silenced=card.silenced)


def after(event: Event, card: Card) -> Card:
    """``card`` once ``event`` has been shown on it (unchanged if it already showed a later one); its
    notes were told with it."""
    if card.shows_later_than(event):
        return Card(card.channel_id, card.ts, card.open, card.shown, silenced=card.silenced)
    return Card(card.channel_id, card.ts, event.type not in CLOSES, stamp(event), silenced=card.silenced)


def with_silence(card: Card | None, note: SilenceNote) -> Card:
    """``card`` (or a new record, on any channel) keeping that a silence held back a notification of its
    task: the first one held back is kept (it says whether the task started while silenced)."""
    card = card or Card()
    return card if card.silenced is not None else dataclasses.replace(card, silenced=note)


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a group card: its instance, and the latest event told of it."""

    instance: str
    state: EventType


@dataclass(frozen=True, slots=True)
class Group:
    """A group card: one chat message for a burst of events of one kind (40 switchovers...), updated as
    its members move on ("12 of 40 succeeded, 28 running"). Kept under the card key ``group/{id}``;
    each member's own card record points to it (:attr:`Card.group`)."""

    id: str
    channel_id: str
    ts: str
    #: What the members are, in words ("Master/standby switchover").
    what: str
    #: Member card key → its state, in the order they joined.
    members: dict[str, Member]

    @property
    def key(self) -> str:
        return group_card_key(self.id)

    def to_json(self) -> str:
        members = {k: [m.instance, m.state.value] for k, m in self.members.items()}
        data = {"id": self.id, "c": self.channel_id, "ts": self.ts, "what": self.what, "m": members}
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Group | None:
        try:
            data = json.loads(raw)
            members = {str(k): Member(str(v[0]), EventType(v[1])) for k, v in dict(data["m"]).items()}
            return cls(str(data["id"]), str(data["c"]), str(data["ts"]), str(data["what"]), members)
        except (ValueError, KeyError, TypeError, IndexError):
            return None  # unreadable: the members' next events are told as a new group

    def moved(self, events: Sequence[Event]) -> Group:
        """The group once ``events`` (of its members, or joining it) are told on it."""
        members = dict(self.members)
        for event in events:
            members[card_key(event)] = Member(event.instance.name, event.type)
        return dataclasses.replace(self, members=members)


def group_card_key(group_id: str) -> str:
    return f"group/{group_id}"


def member_card(group: Group, event: Event) -> Card:
    """A member's own record once its event is told on ``group``'s card."""
    return Card(group.channel_id, group.ts, event.type not in CLOSES, stamp(event), group=group.id)
