"""What an operator watches: the daemon's Prometheus metrics (``GET /metrics``), written by
``prometheus-client`` (the exposition format is its business, not ours).

Two kinds of figures:

* counted where they happen — polls, API calls, events, deliveries, Redis errors — through the few
  methods of :class:`Metrics` (a labelled child is looked up once and kept, so the per-poll cost is a
  dictionary lookup and an increment);
* read when scraped — what the process holds (instances, the rate limiters, leases) through a
  :class:`Live` view of the running daemon, and what only Redis knows (outbox depth and age, dead
  letters) from :class:`StoreFigures`, which the listener reads before each scrape, at most every
  ``STORE_CACHE`` seconds and with a bounded number of calls (see :mod:`notifier.ops.http`).

Labels have bounded cardinality: sources, outcomes, reasons, endpoints (hosts), channels, event types
and Redis operations are all finite sets; no series is ever labelled with an instance id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from notifier.errors import CorruptStateError, DcsApiError, Reason, StoreError

# The ``*_created`` series prometheus-client adds to every counter and histogram double the scrape for
# a figure nobody alerts on.
disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX = "dcs_notifier"
#: Seconds an outbox / dead-letter reading is served before Redis is asked again.
STORE_CACHE = 5.0

#: Seconds: API calls answer in tens of milliseconds to a few seconds (a timeout is 10 s by default).
API_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Seconds from detection to acceptance: a second or two normally, minutes when a receiver was away.
DELIVERY_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


def failure_reason(exc: BaseException) -> str:
    """The ``reason`` label of a failed poll: the API's :class:`~notifier.errors.Reason`, ``redis`` when
    Redis failed it, ``internal`` for anything else."""
    if isinstance(exc, DcsApiError):
        return exc.reason.value
    if isinstance(exc, StoreError) and not isinstance(exc, CorruptStateError):
        return "redis"
    return Reason.INTERNAL.value


def build_version() -> str:
    try:
        return version("dcs-notifier")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


@dataclass(frozen=True, slots=True)
class Instances:
    """Instances as this replica sees them."""

    watched: int = 0
    owned: int = 0
    unhealthy: int = 0


class Live(Protocol):
    """What the running daemon holds, read at scrape time."""

    def instances(self) -> Instances: ...

    def rate_limits(self) -> dict[str, float]:
        """Per endpoint host: the limiter's current rate (calls/s)."""
        ...

    def leases_held(self) -> int: ...


@dataclass(slots=True)
class StoreFigures:
    """What only Redis knows, per channel, as last read."""

    pending: dict[str, int] = field(default_factory=dict)
    oldest_age: dict[str, float] = field(default_factory=dict)
    dead: dict[str, int] = field(default_factory=dict)
    #: ``time.monotonic()`` of the reading (0: never read).
    read_at: float = 0.0


class _Scraped(Collector):
    """The figures read at scrape time (from :attr:`Metrics.live` and :attr:`Metrics.store`)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        live = m.live
        store = m.store
        instances = GaugeMetricFamily(
            f"{PREFIX}_instances",
            "Instances: watched (configured or discovered), owned by this replica, unhealthy (announced).",
            labels=["state"],
        )
        rate = GaugeMetricFamily(
            f"{PREFIX}_api_rate_limit",
            "The adaptive rate limiter's current rate per API endpoint (calls per second).",
            labels=["endpoint"],
        )
        leases = GaugeMetricFamily(f"{PREFIX}_leases_held", "Shard leases this replica holds.")
        last = GaugeMetricFamily(
            f"{PREFIX}_last_successful_poll_timestamp_seconds",
            "When a poll of this replica last succeeded (Unix time).",
        )
        if live is not None:
            counts = live.instances()
            instances.add_metric(["watched"], counts.watched)
            instances.add_metric(["owned"], counts.owned)
            instances.add_metric(["unhealthy"], counts.unhealthy)
            for host, calls_per_s in sorted(live.rate_limits().items()):
                rate.add_metric([host], calls_per_s)
            leases.add_metric([], live.leases_held())
        if m.last_ok is not None:
            last.add_metric([], m.last_ok)
        yield from (instances, rate, leases, last)
        pending = GaugeMetricFamily(
            f"{PREFIX}_outbox_pending",
            "Notifications in a channel's outbox not yet delivered.",
            labels=["channel"],
        )
        oldest = GaugeMetricFamily(
            f"{PREFIX}_outbox_oldest_age_seconds",
            "Age of the oldest notification waiting in a channel's outbox (0 when it is empty).",
            labels=["channel"],
        )
        dead = GaugeMetricFamily(
            f"{PREFIX}_dead_letters",
            "Notifications a channel refused or that were given up on, kept for replay.",
            labels=["channel"],
        )
        for channel, n in sorted(store.pending.items()):
            pending.add_metric([channel], n)
            oldest.add_metric([channel], store.oldest_age.get(channel, 0.0))
        for channel, n in sorted(store.dead.items()):
            dead.add_metric([channel], n)
        yield from (pending, oldest, dead)


class Metrics:
    """The daemon's metrics, in a registry of their own (one per process; tests make several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.polls = Counter(
            f"{PREFIX}_polls",
            "Polls by source (tasks, cloud_eye, discovery), outcome (ok, failed) and reason of a failure.",
            ["source", "outcome", "reason"],
            registry=r,
        )
        self.api_duration = Histogram(
            f"{PREFIX}_api_request_duration_seconds",
            "Duration of API requests (from sending to the whole answer read), by source and endpoint.",
            ["source", "endpoint"],
            buckets=API_BUCKETS,
            registry=r,
        )
        self.events = Counter(f"{PREFIX}_events", "Events found and queued, by type.", ["type"], registry=r)
        self.deliveries = Counter(
            f"{PREFIX}_deliveries",
            "Delivery attempts by channel and outcome (delivered, duplicate, held, failed, dead_lettered) "
            "and the reason of a failure.",
            ["channel", "outcome", "reason"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            f"{PREFIX}_delivery_latency_seconds",
            "From an event's detection to its acceptance by the channel.",
            ["channel"],
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )
        self.throttled = Counter(
            f"{PREFIX}_api_throttled",
            "Throttling signals (HTTP 429, throttling error codes) per API endpoint.",
            ["endpoint"],
            registry=r,
        )
        self.redis_errors = Counter(
            f"{PREFIX}_redis_errors", "Failed Redis operations, by operation.", ["op"], registry=r
        )
        build = Gauge(f"{PREFIX}_build_info", "The running version (always 1).", ["version"], registry=r)
        build.labels(build_version()).set(1)
        #: When a poll of tasks last succeeded (Unix time): kept here, it outlives a reload.
        self.last_ok: float | None = None
        #: The running daemon's view (set by it; None: figures read at scrape time are left out).
        self.live: Live | None = None
        self.store = StoreFigures()
        self._children: dict[tuple[object, ...], Callable[..., None]] = {}
        r.register(_Scraped(self))

    def _inc(self, counter: Counter, *labels: str) -> None:
        key = (id(counter), *labels)
        inc = self._children.get(key)
        if inc is None:
            inc = self._children[key] = counter.labels(*labels).inc
        inc()

    def _observe(self, histogram: Histogram, value: float, *labels: str) -> None:
        key = (id(histogram), *labels)
        observe = self._children.get(key)
        if observe is None:
            observe = self._children[key] = histogram.labels(*labels).observe
        observe(value)

    # -- counted where it happens --------------------------------------------------------------------

    def polled(self, source: str, reason: str | None = None) -> None:
        """A poll of ``source`` ended: ok (``reason`` None) or failed for ``reason``."""
        if reason is None:
            self._inc(self.polls, source, "ok", "")
            if source == "tasks":
                self.last_ok = time.time()
        else:
            self._inc(self.polls, source, "failed", reason)

    def api_request(self, source: str, endpoint: str, seconds: float) -> None:
        self._observe(self.api_duration, seconds, source, endpoint)

    def api_throttled(self, endpoint: str) -> None:
        self._inc(self.throttled, endpoint)

    def queued(self, types: Iterable[str]) -> None:
        """Events committed to the outbox (once each, whatever the channels)."""
        for t in types:
            self._inc(self.events, t)

    def delivery(self, channel: str, outcome: str, reason: str = "") -> None:
        self._inc(self.deliveries, channel, outcome, reason)

    def accepted(self, channel: str, detected_at: float) -> None:
        """A notification the channel accepted, detected at ``detected_at`` (epoch seconds)."""
        self._inc(self.deliveries, channel, "delivered", "")
        self._observe(self.delivery_latency, max(0.0, time.time() - detected_at), channel)

    def redis_error(self, op: str) -> None:
        self._inc(self.redis_errors, op)

    # -- read at scrape time ---------------------------------------------------------------------------

    def store_stale(self) -> bool:
        return time.monotonic() - self.store.read_at >= STORE_CACHE
