"""``dcs-notifier run`` as a service: the daemon, the operator's listener, and reloads.

A reload (SIGHUP, or ``dcs-notifier reload`` through Redis) re-reads the config file. A new config that
does not load is refused — the reason logged, the running one kept. A valid one replaces the daemon as a
stop and a start do, within the process: sends in flight finish and are acknowledged, then a daemon
built on the new config (instances, rules, channels, intervals, credentials) starts from what Redis
holds. Nothing lives only in memory that a restart loses: the state and the outbox are untouched, an
added instance is baselined, a removed channel's queue stays in its stream. The listener and the
metrics outlive the swap (counters do not restart from zero); the replica keeps its name
(``{hostname}-{pid}``, or ``scaling.replica``), so its pending entries and leases stay its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from notifier.app import Daemon
from notifier.config.models import Config
from notifier.errors import ConfigError, StoreError
from notifier.ops.http import OpsListener
from notifier.ops.metrics import Metrics

log = logging.getLogger(__name__)

#: Seconds between two reads of ``{p}:reload`` (``dcs-notifier reload``).
RELOAD_CHECK = 2.0


class Service:
    """Runs daemons one after the other: one per config, until stopped."""

    def __init__(
        self,
        config: Config,
        load: Callable[[], Config],
        *,
        on_config: Callable[[Config], None] | None = None,
        on_start: Callable[[Daemon], None] | None = None,
    ) -> None:
        self.config = config
        self._load = load
        self._on_config = on_config
        self._on_start = on_start
        self.metrics = Metrics()
        self.daemon: Daemon | None = None
        self.listener = OpsListener(self.metrics, lambda: self.daemon)
        self._next: Config | None = None
        self._stopping = False
        self._reloads_seen: int | None = None
        #: How many reloads took effect (for the log and tests).
        self.reloads = 0

    def request_stop(self) -> None:
        self._stopping = True
        self._next = None
        if self.daemon is not None:
            self.daemon.request_stop()

    def request_reload(self, why: str) -> None:
        """Re-read the config file; swap the daemon if it loads, else keep the running one."""
        if self._stopping:
            return
        try:
            new = self._load()
        except ConfigError as exc:
            log.error("reload (%s) refused, the running config is kept: %s", why, exc)
            return
        except OSError as exc:
            log.error("reload (%s) refused, the running config is kept: cannot read it: %s", why, exc)
            return
        if new == (self._next or self.config):
            log.info("reload (%s): the config file has not changed", why)
            return
        log.warning("reload (%s): the new config is valid; the daemon restarts on it", why)
        self._next = new
        if self.daemon is not None:
            self.daemon.request_stop()

    async def _listen(self, config: Config) -> None:
        address = config.http.address
        if address is not None:
            await self.listener.start(*address)

    async def run(self) -> None:
        """Serve until stopped. Raises :class:`~notifier.store.leases.DaemonConflict` like
        :meth:`Daemon.run`, and OSError when the listener cannot bind at start."""
        await self._listen(self.config)
        try:
            while not self._stopping:
                async with Daemon(self.config, metrics=self.metrics) as daemon:
                    self.daemon = daemon
                    if self._on_start is not None:
                        self._on_start(daemon)
                    watch = asyncio.create_task(self._watch_reloads(daemon), name="reload-requests")
                    try:
                        await daemon.run()
                    finally:
                        self.daemon = None
                        watch.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await watch
                new, self._next = self._next, None
                if new is None or self._stopping:
                    return
                if new.http.listen != self.config.http.listen:
                    try:
                        await self.listener.move(new.http.address)
                    except OSError as exc:
                        log.error("reload refused, the running config is kept: %s", exc)
                        continue  # the daemon starts again on the config it ran
                self.config = new
                self.reloads += 1
                if self._on_config is not None:
                    self._on_config(self.config)
                log.info("reload: running on the new config")
        finally:
            await self.listener.stop()

    async def _watch_reloads(self, daemon: Daemon) -> None:
        """Reload when ``dcs-notifier reload`` bumped ``{p}:reload`` since this process last looked."""
        while True:
            with contextlib.suppress(StoreError):  # Redis away: logged by the store; asked again
                latest = await daemon.store.reloads.latest()
                if self._reloads_seen is None:
                    self._reloads_seen = latest
                elif latest != self._reloads_seen:
                    self._reloads_seen = latest
                    self.request_reload("dcs-notifier reload")
            await asyncio.sleep(RELOAD_CHECK)  # a period, not synchronisation
