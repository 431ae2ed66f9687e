"""Asking running daemons to reload their config from any host (``{p}:reload``, see
:mod:`notifier.store.keys`): a counter that ``dcs-notifier reload`` bumps and every daemon watches."""

from __future__ import annotations

from notifier.store.link import Link


class ReloadRequests:
    def __init__(self, link: Link) -> None:
        self.link = link

    async def ask(self) -> int:
        """Ask every daemon of this prefix to reload; the new request number."""
        async with self.link.op("reload request"):
            return int(await self.link.redis.incr(self.link.keys.reload))

    async def latest(self) -> int:
        """The number of the latest request (0: none ever)."""
        async with self.link.op("read of reload requests"):
            value = await self.link.redis.get(self.link.keys.reload)
        try:
            return int(value or 0)
        except ValueError:
            return 0  # not one of ours: the next request writes a number again
