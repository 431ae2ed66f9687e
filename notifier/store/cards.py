"""Where living cards are kept (``{p}:card:{channel}:{card_key}``, see :mod:`notifier.store.keys`)."""

from __future__ import annotations

import hashlib
from typing import Any

from notifier.delivery.cards import Card, Group, group_card_key
from notifier.store.keys import DELIVERED_TTL_SECONDS
from notifier.store.link import Link


def burst_card_key(key: str) -> str:
    """Where a burst's group id is kept: ``burst/{digest of its group key}``."""
    return "burst/" + hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


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

    async def get_many(self, channel: str, card_keys: list[str]) -> list[Card | None]:
        """The cards of several keys, in one call."""
        if not card_keys:
            return []
        keys = [self.link.keys.card(channel, k) for k in card_keys]
        async with self.link.op("read of cards"):
            raws = await self.link.redis.mget(keys)
        return [None if raw is None else Card.from_json(raw) for raw in raws]

    async def get_group(self, channel: str, group_id: str) -> Group | None:
        """A group card (None when gone or unreadable: its members' next events make a new group)."""
        async with self.link.op("read of a card"):
            raw = await self.link.redis.get(self.link.keys.card(channel, group_card_key(group_id)))
        return None if raw is None else Group.from_json(raw)

    async def burst(self, channel: str, key: str) -> Group | None:
        """The group card a burst of ``key`` (a group key, as text) grew lately, if it is still there."""
        async with self.link.op("read of a card"):
            group_id = await self.link.redis.get(self.link.keys.card(channel, burst_card_key(key)))
        return None if group_id is None else await self.get_group(channel, str(group_id))

    def queue_burst(self, pipe: Any, channel: str, key: str, group_id: str, ttl: float) -> None:
        """Queue: the burst of ``key`` goes on growing ``group_id``'s card for ``ttl`` seconds."""
        pipe.set(self.link.keys.card(channel, burst_card_key(key)), group_id, px=max(1, int(ttl * 1000)))

    def queue_put(self, pipe: Any, channel: str, card_key: str, card: Card | Group) -> None:
        """Queue the write of a card in ``pipe`` (kept as long as the notification log)."""
        pipe.set(self.link.keys.card(channel, card_key), card.to_json(), ex=DELIVERED_TTL_SECONDS)

    async def put(self, channel: str, card_key: str, card: Card | Group) -> None:
        async with self.link.op("write of a card"):
            await self.link.redis.set(
                self.link.keys.card(channel, card_key), card.to_json(), ex=DELIVERED_TTL_SECONDS
            )
