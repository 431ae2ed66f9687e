"""The one small interface every channel kind plugs in behind.

A channel formats a :class:`~notifier.pipeline.events.Notification` with its (pure) formatter and sends it
once. It never retries by itself: on failure it raises :class:`~notifier.errors.DeliveryError` saying
whether the failure is retryable, and the delivery loop (``notifier.delivery.worker``) owns backoff and
retries.
"""

from __future__ import annotations

import abc
from typing import ClassVar

from notifier.pipeline.events import Notification


class Channel(abc.ABC):
    """A configured destination (a Slack webhook, a bot token + channel, a generic webhook...)."""

    #: The ``type`` key in the config file that selects this kind.
    kind: ClassVar[str]

    def __init__(self, name: str, *, rate: float | None = None) -> None:
        self.name = name
        #: At most this many messages per second (the delivery loop paces sends); None = no limit.
        self.rate = rate

    @abc.abstractmethod
    async def send(self, notification: Notification) -> None:
        """Deliver one notification, or raise ``DeliveryError``. Must not retry."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most channels hold no resources
        """Release connections. Safe to call more than once."""

    def __repr__(self) -> str:
        # Never the URL or token: those are secrets.
        return f"<{type(self).__name__} {self.name!r}>"
