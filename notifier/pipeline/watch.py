"""The watched instances: one record per instance (:class:`Watch`), held by one registry (:class:`Fleet`).

Everything the daemon keeps in memory about one watched instance lives in its :class:`Watch`; what
other parts keep per instance (the health tracker's streak) is dropped by :meth:`Fleet.retire` in the
same call, so an instance that comes and goes leaves nothing behind.
The fleet also announces ``poller.*`` health events (recorded in Redis with their outbox entries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from notifier.config.models import Config, InstanceConfig, ProjectSpec
from notifier.dcs.client import DcsClient
from notifier.dcs.models import Outcome, Task
from notifier.errors import StoreError
from notifier.ops.metrics import Metrics
from notifier.pipeline.diff import Snapshot
from notifier.pipeline.events import Event, EventType, InstanceRef, Notification
from notifier.pipeline.health import HealthTracker, Subject
from notifier.pipeline.rules import route
from notifier.pipeline.watchdog import Deadline, Limits, deadline
from notifier.store.connect import Store
from notifier.store.leases import ShardLeases

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Target:
    """One watched instance of one project."""

    project: ProjectSpec
    instance: InstanceRef
    discovered: bool = False
    #: ``{project_id}/{instance_id}``: the instance's name in the fleet, the leases and health (made once:
    #: it is asked for several times per poll).
    key: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.project.project_id}/{self.instance.id}")

    @property
    def subject(self) -> Subject:
        return Subject(self.key, self.project.project_id, self.project.region, self.instance)

    @classmethod
    def configured(cls, spec: ProjectSpec, inst: InstanceConfig) -> Target:
        """An instance named in the config."""
        return cls(spec, InstanceRef.of(inst.id, inst.name, inst.labels))


@dataclass(frozen=True, slots=True)
class Known:
    """What this process last wrote for an instance it owns, and the digest of the answer it came from."""

    snapshot: Snapshot
    digest: bytes | None
    #: Whether the answer listed a task in progress (the instance is then polled every
    #: ``poll.active_interval``); worked out once per answer that changed, not per poll. The answer, not
    #: the snapshot: a task the API stops listing stays in the snapshot, in progress, for days.
    active: bool = False
    #: When one of the tasks the answer listed in progress becomes stuck (``watchdog``), worked out once per
    #: answer that changed: an unchanged answer costs one comparison with it (None: nothing to watch).
    deadline: Deadline | None = None

    @classmethod
    def of(
        cls, snapshot: Snapshot, digest: bytes | None, listed: Sequence[Task], limits: Limits | None = None
    ) -> Known:
        """What to keep of an answer that changed: ``listed`` are its tasks (those in progress suffice)."""
        active = any(t.outcome is Outcome.IN_PROGRESS for t in listed)
        due = deadline(snapshot, listed, limits) if active and limits is not None else None
        return cls(snapshot, digest, active, due)


def release(waiter: asyncio.Future[None]) -> None:
    """End a wait (a no-op if it has ended already)."""
    if not waiter.done():
        waiter.set_result(None)


@dataclass(slots=True)
class Control:
    """A running instance's switches: ``wake`` cuts its wait short, ``retired`` ends its loop."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    retired: bool = False
    task: asyncio.Task[None] | None = None
    waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        """Cut the current wait short (or the next one, if it is not waiting)."""
        self.wake.set()
        if self.waiter is not None:
            release(self.waiter)


@dataclass(slots=True)
class Watch:
    """Everything kept in memory about one watched instance; :meth:`Fleet.retire` drops it whole."""

    target: Target
    #: The switches of its polling loop (a running daemon only).
    control: Control | None = None
    #: Its state as this process last committed it, while this process owns it (see Known).
    known: Known | None = None
    #: The state to write back when Redis has lost it (see Poller.restore).
    remembered: Snapshot | None = None
    #: When it was last polled successfully, and (monotonic) when that was last written as ``~polled``.
    last_polled: datetime | None = None
    touched: float = 0.0
    #: Failed polls in a row (backoff), and the failure last logged (logged again only when it changes).
    failures: int = 0
    reported: tuple[object, ...] | None = None
    #: Discovery listings in a row that did not list it.
    unlisted: int = 0
    #: Events found but not committed yet (Redis refused the commit), oldest first.
    uncommitted: Sequence[Event] = ()

    def forget_known(self) -> None:
        """Read the instance's state from Redis at its next poll, remembering what this process committed
        last, to write it back should Redis hold none then."""
        if self.known is not None:
            self.remembered, self.known = self.known.snapshot, None


class Fleet:
    """Every watched instance, by key ``{project_id}/{instance_id}``, and the health of each."""

    def __init__(
        self,
        config: Config,
        clients: Mapping[str, DcsClient],
        store: Store,
        health: HealthTracker,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.clients = clients
        self.store = store
        self.health = health
        configured = (Target.configured(spec, i) for spec in config.projects() for i in spec.instances)
        self._watches: dict[str, Watch] = {t.key: Watch(t) for t in configured}
        self._channels = list(config.channels)
        self._rate_warned: set[str] = set()
        #: With scaling.enabled, replicas share the fleet: an instance is polled while its shard is held.
        self.leases: ShardLeases | None = None
        #: Called with each watch added while the daemon runs (it starts the instance's polling loop).
        self.on_added: Callable[[Watch], None] | None = None

    def __iter__(self) -> Iterator[Watch]:
        return iter(list(self._watches.values()))

    def get(self, key: str) -> Watch | None:
        return self._watches.get(key)

    def current(self, w: Watch) -> bool:
        """Whether ``w`` is still watched (not retired while one of its polls was under way)."""
        return self._watches.get(w.target.key) is w

    def watches_project(self, project_id: str) -> bool:
        """Whether some instance of ``project_id`` is watched."""
        head = f"{project_id}/"
        return any(key.startswith(head) for key in self._watches)

    def owns(self, key: str) -> bool:
        """Whether this replica polls ``key`` now (always, without scaling)."""
        return self.leases is None or self.leases.owns(key)

    def add(self, target: Target) -> None:
        """Watch ``target`` (a running poller starts polling it within one interval)."""
        w = self._watches.get(target.key)
        if w is not None:
            w.target = target  # its labels or name may have changed; what it has learnt is kept
            return
        w = self._watches[target.key] = Watch(target)
        if self.on_added is not None:
            self.on_added(w)

    def retire(self, key: str) -> None:
        """Stop watching one instance (its state stays in Redis): everything kept of it goes, here and in
        the health tracker."""
        w = self._watches.pop(key, None)
        self.health.forget(key)
        if w is None:
            return
        if w.control is not None:
            w.control.retired = True
            w.control.set()

    def wake(self, key: str) -> None:
        w = self._watches.get(key)
        if w is not None and w.control is not None:
            w.control.set()

    # -- health ----------------------------------------------------------------------------------

    def route(self, event: Event) -> list[Notification]:
        return route(event, self.config.rules, self._channels, self.config.health.channels)

    async def announce(self, key: str, event: Event | None) -> None:
        """Record a ``poller.*`` event with its outbox entries; confirmed only once it is in Redis."""
        if event is None:
            return
        try:
            problem = event.problem if event.type is EventType.POLLER_UNHEALTHY else None
            await self.store.health.record(key, problem, self.route(event))
        except StoreError:
            return  # not confirmed: the next poll announces it again (same event id)
        self.metrics.queued((event.type,))
        self.health.confirm(event, key)
        level = logging.WARNING if event.type is EventType.POLLER_UNHEALTHY else logging.INFO
        log.log(level, "%s: %s", event.type.value, event.summary)

    async def close_health(self, key: str) -> None:
        """An instance no longer watched (deleted, filtered out) has no health episode open any more."""
        self.health.forget(key)
        if key in self.health.announced:
            with contextlib.suppress(StoreError):
                await self.store.health.record(key, None, [])
                self.health.announced.pop(key, None)

    async def load_health(self) -> None:
        """Which instances were announced unhealthy before a restart (so that recovery is announced)."""
        # Redis down at start: logged by the store; announcements resume when it returns.
        with contextlib.suppress(StoreError):
            self.health.announced.update(await self.store.health.load())

    def check_rate(self) -> None:
        """Warn when an endpoint's instances need more requests per second than ``api.rate_limit``."""
        per_host: dict[str, int] = {}
        for w in self._watches.values():
            host = w.target.project.host
            per_host[host] = per_host.get(host, 0) + 1
        limit, interval = self.config.api.rate_limit, self.config.poll.interval
        for host, count in sorted(per_host.items()):
            if count / interval > limit and host not in self._rate_warned:
                self._rate_warned.add(host)
                log.warning(
                    "%d instance(s) of %s polled every %g s need %.0f requests/s, more than api.rate_limit "
                    "(%g): they will be polled about every %.0f s; raise api.rate_limit if the API allows",
                    count,
                    host,
                    interval,
                    count / interval,
                    limit,
                    count / limit,
                )
