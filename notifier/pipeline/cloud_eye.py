"""Cloud Eye as a second source: what happened to an instance (an automatic failover, a node gone
abnormal, a failed backup) beside what people did to it (its background tasks).

Per project that has watched instances, every ``cloud_eye.interval``: ``ListEvents`` says which
``SYS.DCS`` names fired in the window (one call when nothing happens), ``ListEventDetail`` lists each one's
occurrences (all pages). A window starts ``cloud_eye.overlap`` before the end of the last one read whole —
Cloud Eye may record an event late (how late is unconfirmed) — and the event ids already handled are kept
in Redis, so an event seen in two windows, by a restarted daemon or by another replica, is announced once.
Occurrences of instances not watched (not named, or filtered out by discovery) are recorded as handled
and not announced. The first poll of a project is a baseline: only events within ``poll.baseline_grace``
are read (announced), older ones never asked for. A failing Cloud Eye is the health subject
``cloud-eye:{project_id}`` (``poller.unhealthy`` after ``health.after``), and task polling goes on.

A ``masterStandbySwitchover`` within ``cloud_eye.correlation_window`` of a task of the instance that
switches over (a master/standby swap, a spec change) is part of that task: the event carries the task
(its card's thread tells it; it is no alert of its own). A channel without cards tells it as a line of
the task's next message when the task still runs and that channel gets its end (``Notification.folds``;
see :func:`notifier.delivery.cards.holds`), else as a message of its own that names the task. The
instance's tasks are asked for then (one DCS call per such switchover); when that call fails, the
switchover is an alert of its own rather than lost.
(Which restart task names switch over is unconfirmed: restarts are not tied yet.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta

from notifier.cloudeye.client import CloudEyeClient
from notifier.cloudeye.models import Occurrence
from notifier.config.models import CloudEyeConfig, ProjectSpec
from notifier.dcs.models import SWITCHING_TASKS, Outcome, Task
from notifier.errors import DcsApiError, Failure, StoreError
from notifier.pipeline.events import Event, EventType, InstanceRef, Notification, event_id
from notifier.pipeline.health import Subject
from notifier.pipeline.watch import Fleet

log = logging.getLogger(__name__)

#: How far before a switchover a task it is part of may have started (a spec change takes a while).
TASKS_LOOK_BACK = timedelta(hours=6)


def subject_of(spec: ProjectSpec) -> Subject:
    """The health subject of a project's Cloud Eye events (``poller.*`` events name it as the instance)."""
    ref = InstanceRef(
        id=f"cloud-eye:{spec.project_id}", name=f"Cloud Eye events of project {spec.project_id}"
    )
    return Subject(f"{spec.project_id}/~cloud-eye", spec.project_id, spec.region, ref)


def to_event(
    o: Occurrence, spec: ProjectSpec, instance: InstanceRef, now: datetime, task: Task | None = None
) -> Event:
    """The event of one occurrence; its id is made of Cloud Eye's ``event_id`` (the same every time)."""
    return Event(
        id=event_id(instance.id, o.event_id, o.type, "cloud-eye"),
        type=o.type,
        project_id=spec.project_id,
        region=spec.region,
        instance=instance,
        task=task,
        detected_at=now,
        cloud_eye=o.info(),
    )


def switching_task(
    tasks: list[Task],
    when: datetime,
    now: datetime,
    window: timedelta,
    names: Collection[str] = SWITCHING_TASKS,
) -> Task | None:
    """The task a switchover at ``when`` is part of: one named in ``names`` (that switches over) running
    at that time (or starting or ending within ``window`` of it); the latest started if several."""
    found: list[Task] = []
    for t in tasks:
        if t.name not in names or t.created_at is None:
            continue
        end = t.updated_at if t.outcome is not Outcome.IN_PROGRESS and t.updated_at else now
        if t.created_at - window <= when <= end + window:
            found.append(t)
    return max(found, key=lambda t: t.created_at or when) if found else None


class CloudEyePoller:
    """Polls Cloud Eye for every project the config watches (``cloud_eye.enabled``)."""

    def __init__(
        self,
        fleet: Fleet,
        clients: Mapping[str, CloudEyeClient],
        config: CloudEyeConfig,
        *,
        baseline_grace: float,
        clock: Callable[[], datetime],
    ) -> None:
        self.fleet = fleet
        self.clients = clients
        self.config = config
        self._grace = timedelta(seconds=baseline_grace)
        self._overlap = timedelta(seconds=config.overlap)
        self._switching = frozenset(config.switching_tasks)
        self._clock = clock
        self._reported: dict[str, tuple[object, ...]] = {}  # project id → the failure last logged

    async def _task_of(
        self, spec: ProjectSpec, instance_id: str, o: Occurrence, now: datetime
    ) -> Task | None:
        """The task a switchover is part of, asked of the DCS API; None for other events, or when none is."""
        window = timedelta(seconds=self.config.correlation_window)
        client = self.fleet.clients.get(spec.project_id)
        if o.type is not EventType.INSTANCE_SWITCHOVER or not window or client is None:
            return None
        try:
            tasks = await client.list_tasks(instance_id, o.time - TASKS_LOOK_BACK, now + timedelta(minutes=1))
        except DcsApiError as exc:
            log.info(
                "switchover %s on %s: its tasks could not be read (%s); told on its own",
                o.event_id,
                instance_id,
                exc,
            )
            return None
        return switching_task(tasks, o.time, now, window, self._switching)

    def _route(self, event: Event) -> list[Notification]:
        """The event's notifications; one that is part of a task still running is marked ``folds`` for
        the channels that get the task's end whichever it is (a channel without cards tells it with the
        task's next message there; the end is sure to come, as the task runs)."""
        found = self.fleet.route(event)
        task = event.task
        if task is None or task.outcome is not Outcome.IN_PROGRESS:
            return found
        ends = [
            {n.channel for n in self.fleet.route(event.model_copy(update={"type": end, "cloud_eye": None}))}
            for end in (EventType.SUCCEEDED, EventType.FAILED)
        ]
        both = ends[0] & ends[1]
        return [n.model_copy(update={"folds": True}) if n.channel in both else n for n in found]

    def owns(self, spec: ProjectSpec) -> bool:
        """Whether this replica polls the project's Cloud Eye (always, without scaling)."""
        return self.fleet.owns(subject_of(spec).key)

    async def poll(self, spec: ProjectSpec) -> list[Event]:
        """Read one window of the project's events and announce what is new; the events announced."""
        if not self.fleet.watches_project(spec.project_id):
            return []  # nothing watched there (yet: discovery may add some): no call, the window waits
        client = self.clients[spec.project_id]
        subject = subject_of(spec)
        store = self.fleet.store.cloud_eye
        now = self._clock()
        try:
            until = await store.until(spec.project_id)
            start = now - self._grace if until is None else min(until, now) - self._overlap
            found: list[Occurrence] = []
            for fired in await client.fired(start, now):
                if self.config.watches(fired.event_name):
                    occurrences, unreadable = await client.occurrences(fired.event_name, start, now)
                    found.extend(occurrences)
                    for why in unreadable:  # the rest of the page is read; what could not be is said
                        log.warning(
                            "Cloud Eye of project %s: an unreadable occurrence: %s", spec.project_id, why
                        )
            fresh = {o.event_id: o for o in found}
            for eid in await store.seen(spec.project_id, list(fresh)):
                del fresh[eid]
            events: list[Event] = []
            for o in fresh.values():
                w = self.fleet.get(f"{spec.project_id}/{o.instance_id}") if o.instance_id else None
                if w is not None:  # an instance not watched: handled, not announced
                    task = await self._task_of(spec, w.target.instance.id, o, now)
                    events.append(to_event(o, spec, w.target.instance, now, task))
            notifications: list[Notification] = [n for ev in events for n in self._route(ev)]
            await store.commit(
                spec.project_id,
                {eid: o.time for eid, o in fresh.items()},
                notifications,
                until=now,
                forget_before=start,
            )
        except DcsApiError as exc:
            self.fleet.metrics.polled("cloud_eye", exc.reason.value)
            fingerprint = Failure.of(exc).fingerprint
            if self._reported.get(spec.project_id) != fingerprint:
                self._reported[spec.project_id] = fingerprint
                log.error("Cloud Eye events of project %s (%s): %s", spec.project_id, spec.account, exc)
            await self.fleet.announce(subject.key, self.fleet.health.failed(subject, exc))
            return []
        except StoreError:
            self.fleet.metrics.polled("cloud_eye", "redis")
            return []  # Redis's problems are logged once per episode by the store; the window is read again
        self.fleet.metrics.polled("cloud_eye")
        self.fleet.metrics.queued(ev.type for ev in events)
        if self._reported.pop(spec.project_id, None) is not None:
            log.info("Cloud Eye events of project %s: polling works again", spec.project_id)
        await self.fleet.announce(subject.key, self.fleet.health.succeeded(subject))
        for ev in events:
            log.info("Cloud Eye: %s (%s)", ev.summary, ev.id)
        return events
