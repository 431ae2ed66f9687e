"""Running the daemon inside a test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from notifier.app import Daemon
from notifier.config.models import Config


@contextlib.asynccontextmanager
async def running(config: Config, stop_within: float = 15) -> AsyncIterator[Daemon]:
    """``Daemon(config).run()`` in the background; stopped, awaited (its error raised) and closed on exit."""
    daemon = Daemon(config)
    task = asyncio.create_task(daemon.run())
    try:
        yield daemon
    finally:
        daemon.request_stop()
        try:
            await asyncio.wait_for(task, stop_within)
        finally:
            await daemon.aclose()
