"""A clock a test moves: what waits on it (a rate limiter's sleeps) moves it instead of sleeping."""

from __future__ import annotations

import asyncio


class TestClock:
    __test__ = False  # not a test class, whatever its name

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)
