"""The operator's listener (``http.listen``), on aiohttp's web server:

* ``GET /metrics`` — Prometheus text format, written by prometheus-client (:mod:`notifier.ops.metrics`);
  what only Redis knows (outbox depth and age, dead letters) is read first, at most every
  :data:`~notifier.ops.metrics.STORE_CACHE` seconds, in a bounded number of calls;
* ``GET /healthz`` — liveness of this process: it answers (the event loop runs) and the scheduler made
  progress lately (a hung replica is restarted, not left holding its shards);
* ``GET /readyz`` — readiness: a config is running, Redis answers, and this replica polled
  successfully lately (or has nothing to poll: no shard yet while joining). 503 and a JSON body saying
  why otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from notifier.errors import StoreError
from notifier.ops.metrics import Metrics, StoreFigures
from notifier.redaction import scrub
from notifier.store.outbox import entry_age

if TYPE_CHECKING:
    from notifier.app import Daemon

log = logging.getLogger(__name__)

#: Seconds a readiness probe waits for Redis's PING.
PING_TIMEOUT = 2.0
#: Seconds a scrape waits for Redis's figures; beyond, the last ones are served (Prometheus gives up
#: on a scrape after 10 s by default, and a hung Redis must not take the other figures with it).
STORE_READ_TIMEOUT = 2.0
#: Seconds between two looks for outbox streams of channels no longer in the config (a SCAN).
ORPHANS_EVERY = 60.0


async def read_store_figures(daemon: Daemon, orphans: list[str]) -> StoreFigures:
    """Outbox depth and age, dead letters per channel: a few pipelined calls whatever the backlog; the
    config's channels and ``orphans`` (streams of channels no longer in it, still holding entries)."""
    store = daemon.store
    channels = list(daemon.config.channels) + [c for c in orphans if c not in daemon.config.channels]
    backlogs = await store.outbox.backlogs(channels)
    total, by_channel = await store.dead_letters.counts(channels=channels)
    if by_channel is None:  # too many to count per channel at a bounded cost: the total alone
        by_channel = {"(all)": total}
    now = time.time()
    return StoreFigures(
        pending={c: b.depth for c, b in backlogs.items()},
        oldest_age={c: entry_age(b.oldest_id, now) for c, b in backlogs.items()},
        dead=by_channel,
        read_at=time.monotonic(),
    )


class OpsListener:
    """Serves the three endpoints for whichever daemon runs now (it changes on a reload)."""

    def __init__(self, metrics: Metrics, daemon: Callable[[], Daemon | None]) -> None:
        self.metrics = metrics
        self._daemon = daemon
        self._runner: web.AppRunner | None = None
        self._refreshing = asyncio.Lock()
        self._orphans: list[str] = []
        self._orphans_at = -ORPHANS_EVERY
        #: The address bound (host, port), once started.
        self.bound: tuple[str, int] | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        return app

    async def start(self, host: str, port: int) -> None:
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(
                exc.errno, f"cannot listen on {host}:{port} (http.listen): {exc.strerror}"
            ) from None
        self._runner = runner
        addresses = runner.addresses  # the port taken, when asked for port 0
        self.bound = (host, int(addresses[0][1]) if addresses else port)
        log.info("serving /metrics, /healthz and /readyz on http://%s:%d", host, self.bound[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.bound = None

    async def move(self, address: tuple[str, int] | None) -> None:
        """Listen on ``address`` instead (None: not at all). The new address is bound before the old one
        is given up: when it cannot be, OSError, and the listener stays where it was."""
        old, bound = self._runner, self.bound
        if address is None:
            await self.stop()
            return
        self._runner = None
        try:
            await self.start(*address)
        except OSError:
            self._runner, self.bound = old, bound
            if old is None or bound is None or bound[1] != address[1]:
                raise
            # The same port on another address (127.0.0.1 → 0.0.0.0): only free once the old one is.
            await self.stop()
            try:
                await self.start(*address)
            except OSError:
                await self.start(*bound)
                raise
            return
        if old is not None:
            await old.cleanup()

    async def metrics_page(self, request: web.Request) -> web.Response:
        daemon = self._daemon()
        if daemon is not None and self.metrics.store_stale():
            async with self._refreshing:  # concurrent scrapes share one reading
                if self.metrics.store_stale():
                    # Redis away or hung (counted and logged by the store): the last figures stay.
                    with contextlib.suppress(StoreError, TimeoutError):
                        self.metrics.store = await asyncio.wait_for(
                            self._read_figures(daemon), STORE_READ_TIMEOUT
                        )
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _read_figures(self, daemon: Daemon) -> StoreFigures:
        loop = asyncio.get_running_loop()
        if loop.time() - self._orphans_at >= ORPHANS_EVERY:
            self._orphans = sorted(await daemon.store.outbox.orphans(daemon.config.channels))
            self._orphans_at = loop.time()
        return await read_store_figures(daemon, self._orphans)

    async def healthz(self, request: web.Request) -> web.Response:
        daemon = self._daemon()
        if daemon is None:  # between two configs (a reload): alive
            return web.json_response({"alive": True, "why": "reloading the config"})
        late = daemon.overdue()
        body: dict[str, Any] = {"alive": late <= 0}
        if late > 0:
            body["why"] = f"the scheduler is {late:.0f} s late for a step it scheduled: hung"
        return web.json_response(body, status=200 if late <= 0 else 503)

    async def readyz(self, request: web.Request) -> web.Response:
        daemon = self._daemon()
        if daemon is None:
            return web.json_response({"ready": False, "reasons": ["reloading the config"]}, status=503)
        reasons: list[str] = []
        try:
            await asyncio.wait_for(daemon.store.redis.ping(), PING_TIMEOUT)
        except Exception as exc:  # whatever the client raises, the answer is "not ready, and why"
            why = str(exc) or type(exc).__name__
            reasons.append(f"Redis does not answer: {scrub(why, daemon.config.secret_values())}")
        if not daemon.polls_lately():
            owned = daemon.instances().owned
            last = daemon.metrics.last_ok
            since = (
                "no poll has succeeded yet"
                if last is None
                else f"the last successful poll was {time.time() - last:.0f} s ago"
            )
            if owned:
                reasons.append(f"{owned} instance(s) to poll and {since}")
            for why in daemon.sources_failing():  # nothing polled, and the listings fail too
                reasons.append(f"{why}; {since}")
        body: dict[str, Any] = {"ready": not reasons}
        if reasons:
            body["reasons"] = reasons
        return web.json_response(body, status=503 if reasons else 200)
