"""The one small interface every channel kind plugs in behind.

A channel formats a :class:`~notifier.pipeline.events.Notification` with its (pure) formatter and sends it
once. It never retries by itself: on failure it raises :class:`~notifier.errors.DeliveryError` saying
whether the failure is retryable, and the delivery loop (``notifier.delivery.worker``) owns backoff and
retries.

A channel that keeps living cards (``living_cards``: Slack with a bot token) is given the card the
notification belongs to, if one was posted, and returns the card it posted or updated; the delivery loop
keeps it in Redis with the acknowledgement. Every call a send makes to the service waits for the
channel's pace (:meth:`Channel.pace`): the delivery loop paces the first, the channel any further one.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Sequence
from typing import ClassVar

from notifier.delivery.cards import Card, Group, tracks
from notifier.errors import DeliveryError, Reason
from notifier.pipeline.events import Event, Notification


class Channel(abc.ABC):
    """A configured destination (a Slack webhook, a bot token + channel, a generic webhook...)."""

    #: The ``type`` key in the config file that selects this kind.
    kind: ClassVar[str]

    #: Whether :meth:`send` takes and returns living cards.
    living_cards: bool = False
    #: A chat channel without cards: a switchover that is part of a running task is told as a line of
    #: the task's next message (see :func:`notifier.delivery.cards.holds`); :meth:`send` is given the
    #: task's record (its notes) and returns it as the message left it.
    notes_in_next: bool = False

    def __init__(self, name: str, *, rate: float | None = None) -> None:
        self.name = name
        #: At most this many calls per second to the service (posts and updates alike); None = no limit.
        self.rate = rate
        self._next_call = 0.0

    async def pace(self) -> None:
        """Wait until the next call to the service keeps within ``rate``."""
        if self.rate is None:
            return
        now = time.monotonic()
        wait = self._next_call - now
        if wait > 0:
            await asyncio.sleep(wait)  # pacing, not synchronisation: at most 1/rate seconds
        self._next_call = max(now, self._next_call) + 1.0 / self.rate

    def keeps_record(self, event: Event) -> bool:
        """Whether delivering ``event`` reads and writes its card record (see :attr:`notes_in_next`)."""
        return self.living_cards or (self.notes_in_next and tracks(event))

    @abc.abstractmethod
    async def send(self, notification: Notification, card: Card | None = None) -> Card | None:
        """Deliver one notification, or raise ``DeliveryError``. Must not retry. A channel with
        ``living_cards`` updates ``card`` (or posts a new one) and returns it; one with ``notes_in_next``
        tells ``card``'s notes and returns the record the message leaves; others return None."""

    async def send_many(
        self, kind: str, notifications: Sequence[Notification], group: Group | None = None
    ) -> Group | None:
        """Deliver several notifications as one message — ``kind`` ``group`` (a burst of one kind of
        event; ``group``: its card, where the channel keeps one) or ``digest`` (a backlog that waited) — or
        raise ``DeliveryError``. Returns the group card the message left (channels with cards)."""
        raise DeliveryError(
            self.name, False, Reason.INTERNAL, f"channel kind {self.kind} cannot send a {kind}"
        )

    #: Whether people read it (chat): its notifications are grouped by default (README, Grouping).
    chat: bool = False

    async def refresh(self, notifications: Sequence[Notification], card: Card | Group) -> Card | Group | None:
        """Rewrite ``card`` to show the latest of ``notifications`` (a group card: all of them) without a
        word in the channel (their news was told in a digest); the card as it then is, None when
        nothing was changed."""
        return None

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most channels hold no resources
        """Release connections. Safe to call more than once."""

    def __repr__(self) -> str:
        # Never the URL or token: those are secrets.
        return f"<{type(self).__name__} {self.name!r}>"
