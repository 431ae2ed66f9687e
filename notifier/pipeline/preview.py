"""The dry run (``dcs-notifier once --dry-run``): what a poll would send where, sending nothing.

It runs the pure pieces of the pipeline — the DCS client's ``poll_tasks``, :func:`diff` and
:func:`route` — and stops before the outbox: no notification is queued or sent, and Redis is only read
(one HGETALL per instance: the stored snapshot), never written. When Redis cannot be reached, every
instance is previewed as its first poll (a baseline: tasks in progress and those finished within
``poll.baseline_grace`` are announced, older ones would be recorded silently), and the preview says so.
So a first trial from a laptop shows what the daemon would post without posting recent history
anywhere.

Not previewed: ``poller.*`` health events and ``instance.removed`` (they follow from failures over time
and from state the daemon keeps); a poll that fails is reported as it fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis.exceptions

from notifier.config.models import Config, ProjectSpec
from notifier.dcs.cloud import Cloud
from notifier.errors import DcsApiError
from notifier.pipeline.diff import DiffContext, Snapshot, diff
from notifier.pipeline.discovery import select, window_of
from notifier.pipeline.events import Event, InstanceRef, Notification
from notifier.pipeline.instance import MIN_END_MARGIN, advance, query_start, utcnow
from notifier.pipeline.rules import route
from notifier.pipeline.watchdog import Limits, stuck
from notifier.store.connect import Store

#: How long the dry run waits for Redis to answer before it previews without stored state.
REDIS_WAIT_SECONDS = 3.0


@dataclass
class InstancePreview:
    project: ProjectSpec
    instance: InstanceRef
    #: True when no stored state was used: the poll is previewed as a baseline.
    baseline: bool = False
    events: list[Event] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    error: Exception | None = None


@dataclass
class Preview:
    instances: list[InstancePreview] = field(default_factory=list)
    #: Why stored state could not be read (Redis unreachable), or None when it was.
    redis_problem: str | None = None
    #: Projects whose instance list could not be read (``discover: true``): their named instances only.
    discovery_errors: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        out = list(self.discovery_errors)
        out.extend(f"poll {p.instance.name} ({p.instance.id}): {p.error}" for p in self.instances if p.error)
        return out


async def _reachable(store: Store) -> str | None:
    """None when Redis answers a PING in time, else why not (without the URL: it may hold a password)."""
    try:
        await asyncio.wait_for(store.redis.ping(), REDIS_WAIT_SECONDS)
    except TimeoutError:
        return f"no answer within {REDIS_WAIT_SECONDS:g} s"
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


async def _targets(config: Config, cloud: Cloud, preview: Preview) -> list[tuple[ProjectSpec, InstanceRef]]:
    """Every instance a daemon would watch now: the named ones, and what discovery lists."""
    targets: list[tuple[ProjectSpec, InstanceRef]] = []
    for spec in config.projects():
        instances = {i.id: InstanceRef.of(i.id, i.name, i.labels) for i in spec.instances}
        if spec.discover:
            try:
                listing = select(await cloud.clients[spec.project_id].list_instances(), spec)
            except DcsApiError as exc:
                preview.discovery_errors.append(f"discovery of project {spec.project_id}: {exc}")
            else:
                instances.update(listing.watched)
        elif instances and config.discovery.maintenance_windows:
            try:  # the windows of the named instances, as the daemon reads them
                raw = await cloud.clients[spec.project_id].list_instances()
            except DcsApiError:
                pass  # their windows stay unknown; the preview goes on (the daemon logs the failure)
            else:
                for item in raw:
                    ref = instances.get(str(item.get("instance_id")))
                    if ref is not None:
                        instances[ref.id] = ref.with_window(window_of(item))
        targets.extend((spec, inst) for inst in instances.values())
    return targets


async def preview(config: Config, store: Store | None, *, clock: Callable[[], datetime] = utcnow) -> Preview:
    """Poll every instance once and route what the diff finds; send and write nothing.

    ``store`` is read for the stored snapshots (never written); None, or a Redis that does not answer,
    previews every instance as a baseline.
    """
    result = Preview()
    if store is None:
        result.redis_problem = "no Redis given"
    else:
        result.redis_problem = await _reachable(store)
    reader = store if result.redis_problem is None else None
    window = timedelta(seconds=config.poll.window)
    grace = timedelta(seconds=config.poll.baseline_grace)
    skew = timedelta(seconds=config.poll.skew)
    channels = list(config.channels)
    limits = Limits.of(config.watchdog)
    cloud = Cloud(config)
    try:
        targets = await _targets(config, cloud, result)

        async def one(spec: ProjectSpec, inst: InstanceRef) -> InstancePreview:
            out = InstancePreview(spec, inst)
            try:
                previous: Snapshot | None = None
                if reader is not None:
                    previous = await reader.snapshots.load(spec.project_id, inst.id)  # a read: no touch
                out.baseline = previous is None
                now = clock()
                start = query_start(previous, None, now, window=window, skew=skew)
                answer = await cloud.clients[spec.project_id].poll_tasks(
                    inst.id, start, now + max(skew, MIN_END_MARGIN)
                )
                assert answer.tasks is not None  # no previous digest given: always parsed
                ctx = DiffContext(
                    project_id=spec.project_id,
                    region=spec.region,
                    instance=inst,
                    now=now,
                    baseline_grace=grace,
                    window_start=start,
                    next_window_start=now - skew,
                )
                result = diff(previous, answer.tasks, ctx)
                advanced = advance(previous, result, now)
                out.events = [*result.events, *stuck(advanced, answer.tasks, limits, ctx).events]
                out.notifications = [
                    n for ev in out.events for n in route(ev, config.rules, channels, config.health.channels)
                ]
            except Exception as exc:  # that instance's failure, as in the daemon; the others go on
                out.error = exc
            return out

        # The cloud's gate bounds the calls in flight; this bounds the coroutines waiting for it.
        limit = asyncio.Semaphore(config.api.max_concurrency)

        async def bounded(spec: ProjectSpec, inst: InstanceRef) -> InstancePreview:
            async with limit:
                return await one(spec, inst)

        result.instances = list(await asyncio.gather(*(bounded(s, i) for s, i in targets)))
    finally:
        await cloud.aclose()
    return result
