"""What the benchmark's processes share: CPU and memory of this process, the poll window, the report,
and the simulator in a process of its own.

Every client process (:mod:`bench.notifier_proc`, :mod:`bench.baseline_proc`) measures itself with
``resource.getrusage(RUSAGE_SELF)`` (all its threads) around its measured loop only, and prints one JSON
object as the last line of its stdout for :mod:`bench.compare` to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

#: The steady poll window, as the notifier asks it: from the last poll minus ``poll.skew`` (default 300 s)
#: to now plus ``max(skew, 60 s)``. The baselines ask [now - SKEW, now + SKEW] on every poll.
SKEW = timedelta(seconds=300)
#: Page size of every client (the notifier's ``api.page_size`` default).
PAGE_SIZE = 100
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds() -> float:
    """User + system CPU of this process (every thread) so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mib() -> float:
    """Peak resident set size of this process (``ru_maxrss``, KiB on Linux), in MiB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def current_rss_mib() -> float | None:
    """Resident set size now (Linux ``/proc/self/statm``), in MiB; None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def window(now: datetime | None = None) -> tuple[datetime, datetime]:
    moment = now or datetime.now(UTC)
    return moment - SKEW, moment + SKEW


def no_proxies() -> None:
    """Everything here is on loopback: no proxy from the environment may intervene.

    The variables are removed, not overridden with ``NO_PROXY``: a client may (the notifier does) skip
    its per-request proxy lookup when no ``*_proxy`` variable is set at all.
    """
    for name in (*PROXY_VARIABLES, "NO_PROXY", "no_proxy"):
        os.environ.pop(name, None)


def per_thousand(cpu: float, polls: int) -> float | None:
    return round(cpu / polls * 1000, 4) if polls else None


def emit(report: dict[str, Any]) -> None:
    """The process's report: one JSON line, last on stdout."""
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


def resolve_loop(name: str) -> str:
    """``auto``: uvloop when it is installed — what ``dcs-notifier run`` uses — else asyncio's own."""
    if name != "auto":
        return name
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_async(main: Callable[[], Coroutine[Any, Any, T]], loop: str = "auto") -> T:
    """Run ``main()`` on uvloop (``loop="uvloop"``, or ``"auto"`` when installed) or asyncio's own loop."""
    if resolve_loop(loop) == "uvloop":
        import uvloop  # type: ignore[import-not-found,unused-ignore]

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main())
    return asyncio.run(main())


@dataclass
class SimProcess:
    """A running ``bench.sim_server`` process: its base URL, and its stdin/stdout command channel."""

    proc: asyncio.subprocess.Process
    base_url: str

    async def command(self, line: str) -> Any:
        """Send one command line, read its one-line JSON answer."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        answer = await self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the simulator process ended (exit code {self.proc.returncode})")
        return json.loads(answer)

    async def stats(self) -> dict[str, float]:
        data: dict[str, float] = await self.command("stats")
        return data


@contextlib.asynccontextmanager
async def simulator(
    instances: int,
    history: int,
    start_timeout: float = 300.0,
    *,
    module: Sequence[str] = ("bench.sim_server",),
) -> AsyncIterator[SimProcess]:
    """``bench.sim_server`` (or ``module``: a module and its options, serving the same way) in a process of
    its own, stopped (stdin closed) on exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *module,
        "--instances",
        str(instances),
        "--history",
        str(history),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
        limit=2**26,  # the `changes` answer is one long line
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), start_timeout)
        if not line.startswith(b"http://"):
            raise RuntimeError(f"the simulator process did not start (exit code {await proc.wait()})")
        yield SimProcess(proc, line.decode().strip())
    finally:
        if proc.returncode is None:
            assert proc.stdin is not None
            proc.stdin.close()  # the server stops when its stdin closes
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
