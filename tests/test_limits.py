"""AimdRateLimiter and ApiGate, on simulated time: no test waits on the wall clock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from notifier.dcs.limits import AimdRateLimiter, ApiGate


class FakeTime:
    """A clock and a sleep on simulated time.

    ``auto=True``: ``sleep(s)`` moves the clock on by ``s`` at once (one sleeper at a time, which is
    how the limiter sleeps). ``auto=False``: sleepers wait until the test calls :meth:`advance`.
    """

    def __init__(self, *, auto: bool = True, start: float = 1000.0) -> None:
        self.now = start
        self.auto = auto
        self.sleeps: list[float] = []
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._changed = asyncio.Condition()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.auto:
            self.now += seconds
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, fut))
        async with self._changed:
            self._changed.notify_all()
        await fut

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [(t, f) for t, f in self._sleepers if t <= self.now + 1e-12]
        self._sleepers = [(t, f) for t, f in self._sleepers if t > self.now + 1e-12]
        for _, fut in due:
            if not fut.done():
                fut.set_result(None)

    @property
    def sleeping(self) -> int:
        return sum(1 for _, f in self._sleepers if not f.done())

    async def until_sleeping(self, n: int = 1) -> None:
        """Return once ``n`` coroutines are blocked in :meth:`sleep`."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.sleeping >= n)


def limiter(t: FakeTime, rate: float, **kwargs: float) -> AimdRateLimiter:
    return AimdRateLimiter(rate, clock=t.clock, sleep=t.sleep, **kwargs)  # type: ignore[arg-type]


async def settle() -> None:
    """Let every runnable task run until it blocks (zero-length yields, not a timed wait)."""
    for _ in range(50):
        await asyncio.sleep(0)


# --- pacing and fairness ---------------------------------------------------------------------------


async def test_acquires_are_spaced_one_over_rate_apart() -> None:
    t = FakeTime()
    lim = limiter(t, 5.0)
    start = t.now
    times = []
    for _ in range(11):
        await lim.acquire()
        times.append(t.now - start)
    assert times == pytest.approx([i * 0.2 for i in range(11)])
    # never more than `rate` grants in any half-open 1 s window
    assert max(sum(1 for x in times if s <= x < s + 1.0 - 1e-9) for s in times) == 5
    assert lim.granted == 11


async def test_concurrent_acquirers_are_served_in_arrival_order_and_paced() -> None:
    t = FakeTime()
    lim = limiter(t, 4.0)
    start = t.now
    served: list[tuple[int, float]] = []

    async def worker(i: int) -> None:
        await lim.acquire()
        served.append((i, t.now - start))

    await asyncio.gather(*(worker(i) for i in range(8)))
    assert [i for i, _ in served] == list(range(8))
    assert [at for _, at in served] == pytest.approx([i * 0.25 for i in range(8)])


async def test_late_arrival_does_not_overtake_the_queue() -> None:
    t = FakeTime(auto=False)
    lim = limiter(t, 1.0)
    order: list[str] = []

    async def worker(name: str) -> None:
        await lim.acquire()
        order.append(name)

    await lim.acquire()  # empties the bucket
    first = asyncio.create_task(worker("first"))
    second = asyncio.create_task(worker("second"))
    await t.until_sleeping(1)  # "first" waits for the next token, "second" queues behind it
    late = asyncio.create_task(worker("late"))
    await settle()
    t.advance(1.0)
    await settle()
    assert order == ["first"]
    t.advance(1.0)
    await settle()
    t.advance(1.0)
    await asyncio.gather(first, second, late)
    assert order == ["first", "second", "late"]


async def test_burst_lets_a_few_through_at_once_then_paces() -> None:
    t = FakeTime()
    lim = limiter(t, 2.0, burst=3.0)
    start = t.now
    times = []
    for _ in range(5):
        await lim.acquire()
        times.append(t.now - start)
    assert times == pytest.approx([0.0, 0.0, 0.0, 0.5, 1.0])


async def test_cancelled_waiter_neither_takes_a_token_nor_blocks_the_queue() -> None:
    t = FakeTime(auto=False)
    lim = limiter(t, 1.0)
    await lim.acquire()
    doomed = asyncio.create_task(lim.acquire())
    await t.until_sleeping(1)
    behind = asyncio.create_task(lim.acquire())
    await settle()
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    await t.until_sleeping(1)  # "behind" is now the head, waiting for the same token
    t.advance(1.0)
    await behind
    assert lim.granted == 2


# --- AIMD ------------------------------------------------------------------------------------------


async def test_a_burst_of_throttles_halves_the_rate_once(caplog: pytest.LogCaptureFixture) -> None:
    t = FakeTime()
    lim = AimdRateLimiter(10.0, clock=t.clock, sleep=t.sleep, name="dcs.example:443")
    with caplog.at_level(logging.WARNING, logger="notifier.dcs.limits"):
        cuts = [lim.on_throttled() for _ in range(10)]
    assert cuts == [True] + [False] * 9
    assert lim.rate == pytest.approx(5.0)
    assert (lim.throttles, lim.decreases) == (10, 1)
    warnings = [r for r in caplog.records if r.name == "notifier.dcs.limits"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "dcs.example:443" in warnings[0].getMessage()
    assert "to 5 requests/s" in warnings[0].getMessage()


async def test_throttle_after_the_cooldown_cuts_again() -> None:
    t = FakeTime()
    lim = limiter(t, 10.0)
    lim.on_throttled()
    t.advance(0.9)  # cooldown is max(1 s, 1 / 5 per s)
    assert lim.on_throttled() is False
    t.advance(0.1)
    assert lim.on_throttled() is True
    assert lim.rate == pytest.approx(2.5)


async def test_cooldown_is_the_time_of_one_request_at_the_new_rate() -> None:
    t = FakeTime()
    lim = limiter(t, 1.0, min_rate=0.1)
    lim.on_throttled()  # -> 0.5/s: one request takes 2 s
    t.advance(1.9)
    assert lim.on_throttled() is False
    t.advance(0.1)
    assert lim.on_throttled() is True
    assert lim.rate == pytest.approx(0.25)


async def test_rate_never_falls_below_min_rate(caplog: pytest.LogCaptureFixture) -> None:
    t = FakeTime()
    lim = limiter(t, 8.0, min_rate=0.5)
    with caplog.at_level(logging.WARNING, logger="notifier.dcs.limits"):
        for _ in range(10):
            lim.on_throttled()
            t.advance(10.0)
    assert lim.rate == 0.5
    assert "floor" in caplog.records[-1].getMessage()


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="min_rate <= rate"):
        AimdRateLimiter(0.1, min_rate=0.2)
    with pytest.raises(ValueError, match="decrease"):
        AimdRateLimiter(1.0, decrease=1.0)
    with pytest.raises(ValueError, match="min_rate <= rate"):
        ApiGate(max_concurrency=1, region_concurrency=1, rate=5.0, min_rate=1.0, max_rate=2.0)


async def test_successes_recover_the_rate_additively_up_to_max_rate() -> None:
    t = FakeTime()
    lim = limiter(t, 10.0)  # max_rate = 10, increase = 0.5/s per second of successful traffic
    lim.on_throttled()
    assert lim.rate == pytest.approx(5.0)
    seen = []
    for _ in range(14):
        t.advance(1.0)
        lim.on_success()
        seen.append(lim.rate)
    assert seen[:5] == pytest.approx([5.5, 6.0, 6.5, 7.0, 7.5])
    assert seen[9:] == [10.0] * 5


async def test_explicit_max_rate_and_increase() -> None:
    t = FakeTime()
    lim = limiter(t, 2.0, max_rate=4.0, increase_per_second=1.0)
    t.advance(1.0)
    lim.on_success()
    assert lim.rate == pytest.approx(3.0)
    t.advance(1.0)
    lim.on_success()
    t.advance(1.0)
    lim.on_success()
    assert lim.rate == 4.0


async def test_a_success_after_a_long_idle_spell_does_not_jump_to_max() -> None:
    t = FakeTime()
    lim = limiter(t, 10.0)
    lim.on_throttled()
    t.advance(3600.0)
    lim.on_success()
    assert lim.rate == pytest.approx(5.5)  # one capped second of credit, not an hour


async def test_a_cut_slows_the_very_next_grant() -> None:
    t = FakeTime()
    lim = limiter(t, 4.0)
    start = t.now
    await lim.acquire()
    await lim.acquire()
    assert t.now - start == pytest.approx(0.25)
    lim.on_throttled()  # 4 -> 2 per s
    await lim.acquire()
    assert t.now - start == pytest.approx(0.75)


# --- pause (Retry-After) ---------------------------------------------------------------------------


async def test_pause_holds_the_next_grant() -> None:
    t = FakeTime()
    lim = limiter(t, 10.0)
    start = t.now
    await lim.acquire()
    lim.pause(3.0)
    lim.pause(1.0)  # a shorter pause does not cut a longer one short
    lim.pause(-5.0)
    await lim.acquire()
    assert t.now - start == pytest.approx(3.0)
    await lim.acquire()
    assert t.now - start == pytest.approx(3.1)


async def test_pause_applies_to_a_waiter_already_queued() -> None:
    t = FakeTime(auto=False)
    lim = limiter(t, 1.0)
    await lim.acquire()
    waiter = asyncio.create_task(lim.acquire())
    await t.until_sleeping(1)
    lim.pause(5.0)
    t.advance(1.0)  # its token is there, but the pause is not over
    await t.until_sleeping(1)
    assert not waiter.done()
    t.advance(4.0)
    await waiter
    assert lim.granted == 2


# --- ApiGate ---------------------------------------------------------------------------------------


class Crowd:
    """Tasks that enter ``gate.slot`` and stay inside until released; no timed waits."""

    def __init__(self, gate: ApiGate) -> None:
        self.gate = gate
        self.inside: list[str] = []
        self.release = asyncio.Event()
        self._changed = asyncio.Condition()

    async def call(self, region: str, host: str = "dcs.example:443") -> None:
        async with self.gate.slot(region, host):
            self.inside.append(region)
            async with self._changed:
                self._changed.notify_all()
            await self.release.wait()

    async def until(self, pred: Callable[[], bool]) -> None:
        async with self._changed:
            await self._changed.wait_for(pred)


def gate(t: FakeTime, *, max_concurrency: int, region_concurrency: int) -> ApiGate:
    return ApiGate(
        max_concurrency=max_concurrency,
        region_concurrency=region_concurrency,
        rate=1000.0,
        min_rate=1.0,
        clock=t.clock,
        sleep=t.sleep,
    )


async def test_gate_caps_calls_in_flight_per_region() -> None:
    g = gate(FakeTime(), max_concurrency=10, region_concurrency=2)
    crowd = Crowd(g)
    tasks = [asyncio.create_task(crowd.call("ap-southeast-1")) for _ in range(5)]
    tasks.append(asyncio.create_task(crowd.call("eu-west-101")))
    await crowd.until(lambda: len(crowd.inside) == 3)
    await settle()
    assert sorted(crowd.inside) == ["ap-southeast-1", "ap-southeast-1", "eu-west-101"]
    assert g.in_flight("ap-southeast-1") == 2
    assert g.in_flight("eu-west-101") == 1
    crowd.release.set()
    await asyncio.gather(*tasks)
    assert len(crowd.inside) == 6
    assert g.max_in_flight_by_region == {"ap-southeast-1": 2, "eu-west-101": 1}
    assert g.in_flight_total == 0


async def test_gate_caps_calls_in_flight_overall() -> None:
    g = gate(FakeTime(), max_concurrency=3, region_concurrency=2)
    crowd = Crowd(g)
    regions = ["r1", "r2", "r3", "r4"]
    tasks = [asyncio.create_task(crowd.call(r)) for r in regions for _ in range(2)]
    await crowd.until(lambda: len(crowd.inside) == 3)
    await settle()
    assert len(crowd.inside) == 3
    assert g.in_flight_total == 3
    crowd.release.set()
    await asyncio.gather(*tasks)
    assert len(crowd.inside) == 8
    assert g.max_in_flight == 3


async def test_calls_queued_on_a_busy_region_hold_no_global_slot() -> None:
    g = gate(FakeTime(), max_concurrency=2, region_concurrency=1)
    crowd = Crowd(g)
    busy = [asyncio.create_task(crowd.call("busy")) for _ in range(4)]
    await crowd.until(lambda: len(crowd.inside) == 1)
    other = asyncio.create_task(crowd.call("other"))
    await crowd.until(lambda: "other" in crowd.inside)  # got the second global slot
    assert g.in_flight("busy") == 1
    crowd.release.set()
    await asyncio.gather(*busy, other)


async def test_gate_shares_one_limiter_per_endpoint_and_counts_throttles() -> None:
    t = FakeTime()
    g = ApiGate(max_concurrency=4, region_concurrency=4, rate=2.0, min_rate=0.5, clock=t.clock, sleep=t.sleep)
    a = g.limiter("dcs.ap-southeast-1.example:443")
    assert g.limiter("dcs.ap-southeast-1.example:443") is a
    assert g.limiter("dcs.eu-west-101.example:443") is not a
    start = t.now
    for i in range(3):
        async with g.slot("ap-southeast-1", "dcs.ap-southeast-1.example:443") as lim:
            assert lim is a
            if i == 0:  # three answers throttled together: one cut
                for _ in range(3):
                    lim.on_throttled()
    assert t.now - start == pytest.approx(2.0)  # paced at 1/s after the cut
    assert g.throttles("dcs.ap-southeast-1.example:443") == 3
    assert g.throttles("dcs.eu-west-101.example:443") == 0
    assert g.throttles("never-used") == 0
    assert a.rate == pytest.approx(1.0)
    assert set(g.limiters) == {"dcs.ap-southeast-1.example:443", "dcs.eu-west-101.example:443"}


async def test_slot_is_released_when_the_call_fails() -> None:
    g = gate(FakeTime(), max_concurrency=1, region_concurrency=1)
    with pytest.raises(RuntimeError):
        async with g.slot("r1", "h"):
            raise RuntimeError("boom")
    assert g.in_flight("r1") == 0
    async with g.slot("r1", "h"):
        assert g.in_flight("r1") == 1


async def test_a_throttle_settles_the_rate_under_the_measured_throughput_for_a_while() -> None:
    t = FakeTime()
    lim = limiter(t, 40.0, increase_per_second=2.0)
    for _ in range(60):  # the server accepted 20 calls per second for 3 s
        t.advance(0.05)
        lim.on_success()
    assert lim.on_throttled()
    assert lim.rate == pytest.approx(0.9 * 20, rel=0.05)  # not halved to 20, nor kept at 40
    for _ in range(200):  # 20 s of successes: up to the measured limit, never past it
        t.advance(0.1)
        lim.on_success()
    assert 0.9 * 20 < lim.rate <= 20.0 * 1.05
    for _ in range(200):  # 30 s without a throttle: the limit may have moved, probing resumes
        t.advance(0.1)
        lim.on_success()
    assert lim.rate > 21.0
