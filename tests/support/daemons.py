"""Running the daemon inside a test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping

from notifier.app import Daemon
from notifier.config.models import Config
from notifier.ops.service import Service
from tests.support.wait import until


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


@contextlib.asynccontextmanager
async def serving(service: Service) -> AsyncIterator[int]:
    """``service.run()`` (the daemon behind its listener) in the background; yields the listener's port."""
    task = asyncio.create_task(service.run())
    try:
        await until(lambda: service.listener.bound is not None or task.done(), 10, "the listener")
        if task.done():
            task.result()
        assert service.listener.bound is not None
        yield service.listener.bound[1]
    finally:
        service.request_stop()
        await asyncio.wait_for(task, 20)


@contextlib.asynccontextmanager
async def cli_run(
    env: Mapping[str, str], *args: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, list[str]]]:
    """``python -m notifier.cli --log-level INFO run`` (or ``args``) with ``env`` (PATH added), its stderr
    collected line by line as it comes; SIGTERM and awaited on exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notifier.cli", "--log-level", "INFO", *(args or ("run",)),
        env={"PATH": os.environ.get("PATH", ""), **env},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    log: list[str] = []

    async def read() -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            log.append(line.decode())

    reader = asyncio.create_task(read())
    try:
        yield proc, log
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
        await asyncio.wait_for(reader, 10)


def cli_env(sim_url: object, redis_url: str, **more: str) -> dict[str, str]:
    """The environment of a ``dcs-notifier`` subprocess against the simulator (the conftest's AK/SK in
    ``CLOUD_SDK_AK``/``CLOUD_SDK_SK``) and a test's Redis, plus ``more``."""
    from tests.conftest import AK, SK

    return {
        "PATH": os.environ.get("PATH", ""),
        "SIM_URL": str(sim_url),
        "CLOUD_SDK_AK": AK,
        "CLOUD_SDK_SK": SK,
        "REDIS_URL": redis_url,
        **more,
    }
