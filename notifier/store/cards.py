"""Where living cards are kept (``{p}:card:{channel}:{card_key}``, see :mod:`notifier.store.keys`)."""

from __future__ import annotations

from typing import Any

from notifier.delivery.cards import Card
from notifier.store.keys import DELIVERED_TTL_SECONDS
from notifier.store.link import Link


class Cards:
    """Reads and writes the card of a (channel, card key)."""

    def __init__(self, link: Link) -> None:
        self.link = link

    async def get(self, channel: str, card_key: str) -> Card | None:
        """The card kept for ``card_key`` on ``channel``; None when there is none (or it is unreadable:
        the next notification then posts a new card)."""
        async with self.link.op("read of a card"):
            raw = await self.link.redis.get(self.link.keys.card(channel, card_key))
        return None if raw is None else Card.from_json(raw)

    def queue_put(self, pipe: Any, channel: str, card_key: str, card: Card) -> None:
        """Queue the write of a card in ``pipe`` (kept as long as the notification log)."""
        pipe.set(self.link.keys.card(channel, card_key), card.to_json(), ex=DELIVERED_TTL_SECONDS)

    async def put(self, channel: str, card_key: str, card: Card) -> None:
        async with self.link.op("write of a card"):
            await self.link.redis.set(
                self.link.keys.card(channel, card_key), card.to_json(), ex=DELIVERED_TTL_SECONDS
            )
