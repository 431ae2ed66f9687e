"""Politeness toward the DCS API: an adaptive (AIMD) rate limiter per endpoint and one gate per process.

:class:`AimdRateLimiter` is a token bucket whose refill rate adapts to the server: every successful
call raises it a little (additive increase, proportional to the time that passed), every throttling
answer (HTTP 429, ``DCS.4049`` …) cuts it by a factor (multiplicative decrease). Waiters are served
strictly in arrival order and paced evenly at the current rate.

:class:`ApiGate` puts the whole politeness policy of a process in one place: a global cap on calls in
flight, a cap per region, and one limiter per endpoint host. Every DCS call goes through
:meth:`ApiGate.slot`::

    async with gate.slot(region, endpoint_host) as limiter:
        try:
            body = await client.call(...)
        except DcsApiError as err:
            if err.reason is Reason.RATE_LIMITED:
                if err.retry_after:
                    limiter.pause(err.retry_after)
                limiter.on_throttled()
            raise
        limiter.on_success()

Time is read from an injectable ``clock`` and waited with an injectable ``sleep`` so that tests drive
the limiter on simulated time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from notifier.ops.metrics import Metrics

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

#: Slack for float rounding: 1 - _EPSILON tokens count as one, a pause with _EPSILON s left as over.
_EPSILON = 1e-9
#: Shortest cooldown between two decreases of the rate, in seconds.
_MIN_COOLDOWN = 1.0
#: Throughput is measured over this many seconds of successful calls.
_MEASURE_SECONDS = 2.0
#: After a throttle, the rate goes to this fraction of the throughput the server accepted...
_BELOW_CEILING = 0.9
#: ...rises ten times slower above it, and stays at or under that throughput (the server's limit, as
#: measured) until this many seconds pass without a throttle: then it probes for more again.
_PROBE_SLOWDOWN = 10.0
_CEILING_HOLD_SECONDS = 30.0


class AimdRateLimiter:
    """An async token bucket whose rate follows AIMD; fair (FIFO) and evenly paced.

    ``rate`` is in requests per second. With ``burst=1`` (the default) consecutive grants are spaced
    at least ``1 / rate`` apart, so no 1 s window holds more than about ``rate`` requests. Waiters are
    served one at a time in arrival order: the head of the queue waits for the next token while the
    others queue behind it, so a change of rate or a :meth:`pause` applies to everyone still waiting.
    """

    def __init__(
        self,
        rate: float,
        *,
        min_rate: float = 0.2,
        max_rate: float | None = None,
        increase_per_second: float | None = None,
        decrease: float = 0.5,
        burst: float = 1.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        name: str = "",
    ) -> None:
        max_rate = rate if max_rate is None else max_rate
        if min_rate <= 0:
            raise ValueError(f"min_rate must be > 0, got {min_rate}")
        if not min_rate <= rate <= max_rate:
            raise ValueError(f"need min_rate <= rate <= max_rate, got {min_rate}, {rate}, {max_rate}")
        if not 0 < decrease < 1:
            raise ValueError(f"decrease must be in (0, 1), got {decrease}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        increase = rate * 0.05 if increase_per_second is None else increase_per_second
        if increase < 0:
            raise ValueError(f"increase_per_second must be >= 0, got {increase}")
        self._rate = float(rate)
        self._min_rate = float(min_rate)
        self._max_rate = float(max_rate)
        self._increase = float(increase)
        self._decrease = float(decrease)
        self._burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self.name = name
        now = clock()
        self._tokens = self._burst
        self._refilled_at = now
        self._last_increase = now
        self._cooldown_until = now
        self._paused_until = now
        self._ceiling: float | None = None  # throughput accepted when last throttled
        self._ceiling_until = now
        self._successes: deque[float] = deque()
        self._started = now
        self._lock = asyncio.Lock()  # FIFO: only the head of the queue waits for a token
        #: Throttling signals received (every call of on_throttled) and rate cuts made (once per cooldown).
        self.throttles = 0
        self.decreases = 0
        self.granted = 0

    def __repr__(self) -> str:
        label = f" {self.name}" if self.name else ""
        bounds = f"min={self._min_rate:g} max={self._max_rate:g}"
        return f"<AimdRateLimiter{label} rate={self._rate:.3g}/s {bounds}>"

    @property
    def rate(self) -> float:
        """The current rate, in requests per second."""
        return self._rate

    @property
    def min_rate(self) -> float:
        return self._min_rate

    @property
    def max_rate(self) -> float:
        return self._max_rate

    def _refill(self, now: float) -> None:
        if now > self._refilled_at:
            self._tokens = min(self._burst, self._tokens + (now - self._refilled_at) * self._rate)
        self._refilled_at = max(self._refilled_at, now)

    def _set_rate(self, rate: float, now: float) -> None:
        self._refill(now)  # tokens accrued so far count at the old rate
        self._rate = rate

    async def acquire(self) -> None:
        """Wait for a token: in arrival order, at the current rate, and not before a pause ends."""
        if not self._lock.locked():  # nobody queued: take a token at once if there is one
            now = self._clock()
            self._refill(now)
            if self._tokens >= 1.0 - _EPSILON and self._paused_until - now <= _EPSILON:
                self._tokens -= 1.0
                self.granted += 1
                return
        async with self._lock:
            while True:
                now = self._clock()
                self._refill(now)
                paused = self._paused_until - now
                if self._tokens >= 1.0 - _EPSILON and paused <= _EPSILON:
                    break
                await self._sleep(max(paused, (1.0 - self._tokens) / self._rate))
            self._tokens -= 1.0
            self.granted += 1

    def on_success(self) -> None:
        """A call went through: raise the rate by ``increase_per_second`` per second since the last raise.

        The time counted is capped (at ``max(1 s, 2 / rate)``), so that a success after a long idle
        spell does not jump the rate straight to the maximum: the increase tracks busy time. Above 90 %
        of the rate that was last throttled, the rate rises ten times slower (it probes the limit
        carefully); past that rate without a throttle, the limit has moved and the rise is fast again.
        """
        now = self._clock()
        self._successes.append(now)
        while self._successes[0] < now - _MEASURE_SECONDS:
            self._successes.popleft()
        elapsed = min(max(0.0, now - self._last_increase), max(_MIN_COOLDOWN, 2.0 / self._rate))
        self._last_increase = now
        if self._rate < self._max_rate and elapsed > 0:
            step = self._increase * elapsed
            cap = self._max_rate
            if self._ceiling is not None and now < self._ceiling_until:
                cap = min(cap, self._ceiling)
                if self._rate >= _BELOW_CEILING * self._ceiling:
                    step /= _PROBE_SLOWDOWN
            self._set_rate(max(self._rate, min(cap, self._rate + step)), now)

    def on_throttled(self) -> bool:
        """The server asked us to slow down: cut the rate, at most once per cooldown.

        The cut goes to 90 % of the throughput the server accepted over the last 2 s (its limit, as
        measured), which then caps the rate for 30 s; with nothing accepted lately, the rate is
        multiplied by ``decrease``.

        Calls that were in flight together come back throttled together; they are one congestion
        signal, so after a cut further signals are ignored for a cooldown (the time one request takes
        at the new rate, at least 1 s). Returns whether this call cut the rate.
        """
        self.throttles += 1
        now = self._clock()
        if now < self._cooldown_until:
            return False
        old = self._rate
        new = max(self._min_rate, old * self._decrease)
        accepted = self._accepted(now)
        if accepted is not None:
            # What got through lately is the server's limit: settle just under it, not at half of it.
            self._ceiling = min(old, accepted)
            self._ceiling_until = now + _CEILING_HOLD_SECONDS
            new = max(self._min_rate, _BELOW_CEILING * self._ceiling)
        self._set_rate(new, now)
        self._cooldown_until = now + max(_MIN_COOLDOWN, 1.0 / new)
        self._last_increase = now  # recovery counts from the cut
        self.decreases += 1
        label = f" for {self.name}" if self.name else ""
        if new < old:
            log.warning("DCS API throttled%s: rate lowered from %.3g to %.3g requests/s", label, old, new)
        else:
            log.warning("DCS API throttled%s: rate stays at its floor of %.3g requests/s", label, new)
        return True

    def _accepted(self, now: float) -> float | None:
        """Successful calls per second over the last few seconds; None when there were none."""
        while self._successes and self._successes[0] < now - _MEASURE_SECONDS:
            self._successes.popleft()
        if not self._successes:
            return None
        return len(self._successes) / max(min(_MEASURE_SECONDS, now - self._started), 0.1)

    @property
    def paused(self) -> bool:
        """Whether a pause (a ``Retry-After``) is on."""
        return self._paused_until - self._clock() > _EPSILON

    def pause(self, seconds: float) -> None:
        """Grant no token before ``now + seconds`` (e.g. a ``Retry-After``); a longer pause wins."""
        if seconds > 0:
            self._paused_until = max(self._paused_until, self._clock() + seconds)


#: A region whose calls have queued this long without the queue emptying has no room for extra polls.
HEADROOM_WAIT = 1.0


class ApiGate:
    """The shared politeness policy of every DCS API call of one process.

    A call takes, in this order, a slot of its region (``region_concurrency``), a global slot
    (``max_concurrency``) and a token of its endpoint's :class:`AimdRateLimiter`. Taking the region
    slot first means a call queued behind a busy region never holds a global slot that another
    region could use.
    """

    def __init__(
        self,
        *,
        max_concurrency: int,
        region_concurrency: int,
        rate: float,
        min_rate: float,
        max_rate: float | None = None,
        increase_per_second: float | None = None,
        decrease: float = 0.5,
        burst: float = 1.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if max_concurrency < 1 or region_concurrency < 1:
            raise ValueError("max_concurrency and region_concurrency must be >= 1")
        self._region_concurrency = region_concurrency
        self._global = asyncio.Semaphore(max_concurrency)
        self._regions: dict[str, asyncio.Semaphore] = {}
        self._limiters: dict[str, AimdRateLimiter] = {}
        self._new_limiter = functools.partial(
            AimdRateLimiter,
            rate,
            min_rate=min_rate,
            max_rate=max_rate,
            increase_per_second=increase_per_second,
            decrease=decrease,
            burst=burst,
            clock=clock,
            sleep=sleep,
        )
        self._new_limiter()  # check the limiter parameters now rather than at the first call
        self._clock = clock
        self._in_flight: dict[str, int] = {}
        #: Calls of a region waiting for a slot or a token, and since when some have been waiting
        #: without the queue emptying (see has_headroom).
        self._queued: dict[str, int] = {}
        self._queued_since: dict[str, float] = {}
        #: Highest number of calls seen in flight at once, overall and per region (for tests/metrics).
        self.max_in_flight = 0
        self.max_in_flight_by_region: dict[str, int] = {}
        #: Where the calls' durations are counted (the daemon's metrics), if anywhere.
        self.metrics: Metrics | None = None

    def limiter(self, endpoint_host: str) -> AimdRateLimiter:
        """The rate limiter of one endpoint host (created on first use, then shared)."""
        limiter = self._limiters.get(endpoint_host)
        if limiter is None:
            limiter = self._new_limiter(name=endpoint_host)
            self._limiters[endpoint_host] = limiter
        return limiter

    def _region(self, region: str) -> asyncio.Semaphore:
        sem = self._regions.get(region)
        if sem is None:
            sem = self._regions[region] = asyncio.Semaphore(self._region_concurrency)
        return sem

    def has_headroom(self, region: str, endpoint_host: str) -> bool:
        """Whether calls to ``endpoint_host`` keep up: no pause is on, and its region's queue (calls
        waiting for a slot or a token) has emptied within the last HEADROOM_WAIT seconds. Polls due in the
        same tick queue for a few hundredths of a second; a queue that never empties means the rate limit
        or the API's latency is what paces the fleet, and extra polls would delay those due."""
        since = self._queued_since.get(region)
        if since is not None and self._clock() - since >= HEADROOM_WAIT:
            return False
        return not self.limiter(endpoint_host).paused

    def _queue(self, region: str) -> None:
        n = self._queued[region] = self._queued.get(region, 0) + 1
        if n == 1:
            self._queued_since[region] = self._clock()

    def _dequeue(self, region: str) -> None:
        n = self._queued[region] = self._queued[region] - 1
        if n == 0:
            del self._queued_since[region]

    def slot(self, region: str, endpoint_host: str) -> _Slot:
        """Hold a region slot, a global slot and one token of the endpoint for the length of one call.

        ``async with gate.slot(region, host) as limiter:`` — report the outcome with ``on_success()`` /
        ``on_throttled()`` (and ``pause(retry_after)``) before leaving the block.
        """
        return _Slot(self, region, self._region(region), self.limiter(endpoint_host))

    def _entered(self, region: str) -> None:
        self._in_flight[region] = n = self._in_flight.get(region, 0) + 1
        if n > self.max_in_flight_by_region.get(region, 0):
            self.max_in_flight_by_region[region] = n
        self.max_in_flight = max(self.max_in_flight, self.in_flight_total)

    def in_flight(self, region: str) -> int:
        """Calls of ``region`` inside :meth:`slot` right now."""
        return self._in_flight.get(region, 0)

    @property
    def in_flight_total(self) -> int:
        return sum(self._in_flight.values())

    def throttles(self, endpoint_host: str) -> int:
        """Throttling signals reported for ``endpoint_host`` (0 for an endpoint never used)."""
        limiter = self._limiters.get(endpoint_host)
        return 0 if limiter is None else limiter.throttles

    @property
    def limiters(self) -> dict[str, AimdRateLimiter]:
        """Every endpoint's limiter so far, by host (a copy)."""
        return dict(self._limiters)


class _Slot:
    """One call's hold on the gate (a plain class: cheaper than a generator-based context manager)."""

    __slots__ = ("_gate", "_limiter", "_region", "_region_sem")

    def __init__(
        self, gate: ApiGate, region: str, region_sem: asyncio.Semaphore, limiter: AimdRateLimiter
    ) -> None:
        self._gate = gate
        self._region = region
        self._region_sem = region_sem
        self._limiter = limiter

    async def __aenter__(self) -> AimdRateLimiter:
        gate = self._gate
        gate._queue(self._region)
        try:
            await self._region_sem.acquire()
            try:
                await gate._global.acquire()
                try:
                    await self._limiter.acquire()
                except BaseException:
                    gate._global.release()
                    raise
            except BaseException:
                self._region_sem.release()
                raise
        finally:
            gate._dequeue(self._region)
        gate._entered(self._region)
        return self._limiter

    async def __aexit__(self, *exc: object) -> None:
        self._gate._in_flight[self._region] -= 1
        self._gate._global.release()
        self._region_sem.release()
