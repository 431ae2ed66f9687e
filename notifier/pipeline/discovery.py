"""Discovery: which instances of a project are watched, from ``GET /v2/{project_id}/instances``.

:func:`select` is pure: the raw instance list in, the watched instances out (with their tags as
labels). :class:`Discovery` applies one listing to the fleet (the scheduler lists each discovering
project every ``discovery.interval``): new instances are added (and baselined, so no flood), instances
filtered out are dropped silently, and instances gone from the list are confirmed deleted (404
``DCS.3022``, or absent from two listings in a row) before ``instance.removed`` is announced.

The same listing carries each instance's DCS maintenance window (``maintain_begin``/``maintain_end``),
kept on its record (:class:`~notifier.pipeline.events.InstanceRef`). Projects that name their instances
instead of discovering them are listed every ``discovery.interval`` too, for the windows only
(:meth:`Discovery.refresh_windows`; ``discovery.maintenance_windows: false`` turns it off): one call per
project per interval, never per poll.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from notifier.config.models import InstanceFilter, ProjectSpec
from notifier.errors import DcsApiError, Failure, StoreError
from notifier.pipeline.events import InstanceRef
from notifier.pipeline.health import Subject
from notifier.pipeline.instance import InstancePoller
from notifier.pipeline.time_intervals import MaintenanceWindow, maintenance_window
from notifier.pipeline.watch import Fleet, Target, Watch

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Listing:
    """One listing of a project: every instance id the API returned, and those to watch."""

    listed: frozenset[str]
    watched: dict[str, InstanceRef] = field(default_factory=dict)


def tags_of(raw: Mapping[str, Any]) -> dict[str, str]:
    """Instance tags as a dict, from Huawei's ``[{"key": k, "value": v}]`` (or a plain mapping)."""
    tags = raw.get("tags")
    if isinstance(tags, Mapping):
        return {str(k): "" if v is None else str(v) for k, v in tags.items()}
    out: dict[str, str] = {}
    if isinstance(tags, list):
        for tag in tags:
            if isinstance(tag, Mapping) and isinstance(tag.get("key"), str):
                value = tag.get("value")
                out[tag["key"]] = "" if value is None else str(value)
    return out


def window_of(raw: Mapping[str, Any]) -> MaintenanceWindow | None:
    """The instance's maintenance window as the instance list reports it (None: absent or unreadable)."""
    return maintenance_window(raw.get("maintain_begin"), raw.get("maintain_end"))


def _any(patterns: Iterable[str], *values: str) -> bool:
    return any(fnmatchcase(v, p) for p in patterns for v in values if v)


def matches(instance_id: str, name: str, status: str, tags: Mapping[str, str], f: InstanceFilter) -> bool:
    """Whether an instance passes the project's filter (every given filter must match)."""
    if not _any(f.names, name, instance_id):
        return False
    if _any(f.exclude, name, instance_id):
        return False
    if f.statuses and status.upper() not in {s.upper() for s in f.statuses}:
        return False
    return all(k in tags and (v == "*" or tags[k] == v) for k, v in f.tags.items())


def select(instances: Iterable[Mapping[str, Any]], spec: ProjectSpec) -> Listing:
    """The instances of one listing that ``spec`` watches, with labels = project labels + tags.

    Instances named in the config are watched whatever the filter says, with their configured name and
    labels (the tags are added under them).
    """
    configured = {i.id: i for i in spec.instances}
    listed: set[str] = set()
    watched: dict[str, InstanceRef] = {}
    for raw in instances:
        iid = raw.get("instance_id")
        if not isinstance(iid, str) or not iid:
            continue
        listed.add(iid)
        name = str(raw.get("name") or iid)
        tags = tags_of(raw)
        known = configured.get(iid)
        window = window_of(raw)
        if known is not None:
            watched[iid] = InstanceRef.of(iid, known.name, {**spec.labels, **tags, **known.labels}, window)
        elif matches(iid, name, str(raw.get("status") or ""), tags, spec.filter):
            watched[iid] = InstanceRef.of(iid, name, {**spec.labels, **tags}, window)
    return Listing(listed=frozenset(listed), watched=watched)


def listing_subject(spec: ProjectSpec) -> Subject:
    """The health subject of a project's instance listing (``poller.*`` events name it as the instance)."""
    ref = InstanceRef(
        id=f"instances-of:{spec.project_id}", name=f"the instance list of project {spec.project_id}"
    )
    return Subject(f"{spec.project_id}/~discovery", spec.project_id, spec.region, ref)


class Discovery:
    """Lists discovering projects' instances and applies each listing to the fleet."""

    def __init__(self, fleet: Fleet, instances: InstancePoller) -> None:
        self.fleet = fleet
        self.instances = instances
        self._reported: dict[str, tuple[object, ...]] = {}  # project id → last error logged

    def lists(self, spec: ProjectSpec) -> bool:
        """Whether ``spec``'s instance list is read every ``discovery.interval``: to discover, or for the
        maintenance windows of the instances it names."""
        return spec.discover or (bool(spec.instances) and self.fleet.config.discovery.maintenance_windows)

    async def discover(self, spec: ProjectSpec) -> bool:
        """List ``spec``'s instances and update the fleet; False when the listing failed. A project that
        does not discover has only its instances' maintenance windows updated."""
        if not spec.discover:
            return await self.refresh_windows(spec)
        fleet = self.fleet
        subject = listing_subject(spec)
        try:
            raw = await fleet.clients[spec.project_id].list_instances()
        except DcsApiError as exc:
            fleet.metrics.polled("discovery", exc.reason.value)
            fingerprint = Failure.of(exc).fingerprint
            if self._reported.get(spec.project_id) != fingerprint:
                self._reported[spec.project_id] = fingerprint
                log.error("discovery of project %s (%s) failed: %s", spec.project_id, spec.account, exc)
            # A project whose instance list keeps failing is watched by nobody: that is ops' business.
            await fleet.announce(subject.key, fleet.health.failed(subject, exc))
            return False
        fleet.metrics.polled("discovery")
        if self._reported.pop(spec.project_id, None) is not None:
            log.info("discovery of project %s recovered", spec.project_id)
        await fleet.announce(subject.key, fleet.health.succeeded(subject))
        await self.apply(spec, raw)
        return True

    async def apply(self, spec: ProjectSpec, raw: Iterable[Mapping[str, Any]]) -> None:
        """Apply one listing of ``spec``'s instances (the API's raw dicts) to the fleet."""
        fleet = self.fleet
        listing = select(raw, spec)
        configured = {i.id for i in spec.instances}
        for inst in listing.watched.values():
            target = Target(spec, inst, discovered=inst.id not in configured)
            w = fleet.get(target.key)
            if w is None:
                log.info("discovered instance %s (%s) in project %s", inst.name, inst.id, spec.project_id)
                fleet.add(target)
            else:
                if w.target != target:
                    fleet.add(target)
                w.unlisted = 0
        for w in fleet:
            target = w.target
            if target.project.project_id != spec.project_id or not target.discovered:
                continue
            if target.instance.id in listing.watched:
                continue
            if target.instance.id in listing.listed:
                await fleet.close_health(target.key)
                log.info(
                    "instance %s no longer matches the discovery filter; not watched", target.instance.name
                )
                fleet.retire(target.key)
                continue
            if not fleet.owns(target.key):
                continue  # the replica that owns it decides whether it was deleted
            w.unlisted += 1
            if w.unlisted == 1:
                fleet.wake(target.key)  # confirm at once: its tasks answer 404 DCS.3022 if it was deleted
            else:
                await self._gone_from_list(w)
        fleet.check_rate()

    async def refresh_windows(self, spec: ProjectSpec) -> bool:
        """List a project that names its instances, for their maintenance windows; False when the listing
        failed. A failure is logged (when it starts or changes) and counted, and is no one's health: the
        tasks are still polled, and messages say nothing of the window until it is known."""
        fleet = self.fleet
        try:
            raw = await fleet.clients[spec.project_id].list_instances()
        except DcsApiError as exc:
            fleet.metrics.polled("discovery", exc.reason.value)
            fingerprint = Failure.of(exc).fingerprint
            if self._reported.get(spec.project_id) != fingerprint:
                self._reported[spec.project_id] = fingerprint
                log.warning(
                    "the instance list of project %s (%s), read for maintenance windows, failed: %s "
                    "(windows unknown until it works; discovery.maintenance_windows: false stops asking)",
                    spec.project_id,
                    spec.account,
                    exc,
                )
            return False
        fleet.metrics.polled("discovery")
        if self._reported.pop(spec.project_id, None) is not None:
            log.info("the instance list of project %s can be read again", spec.project_id)
        self.apply_windows(spec, raw)
        return True

    def apply_windows(self, spec: ProjectSpec, raw: Iterable[Mapping[str, Any]]) -> None:
        """Keep each watched instance's window from one listing of ``spec`` on its record (a record is
        replaced only when its window changed; instances not listed keep theirs)."""
        fleet = self.fleet
        for item in raw:
            iid = item.get("instance_id")
            w = fleet.get(f"{spec.project_id}/{iid}") if isinstance(iid, str) and iid else None
            if w is None:
                continue
            window, inst = window_of(item), w.target.instance
            if window != inst.maintenance_window:
                if inst.maintenance_window is not None:
                    shown = window.label if window is not None else "unknown"
                    log.info("maintenance window of %s (%s) is now %s", inst.name, inst.id, shown)
                fleet.add(dataclasses.replace(w.target, instance=inst.with_window(window)))

    async def _gone_from_list(self, w: Watch) -> None:
        target = w.target
        try:
            previous = await self.fleet.store.snapshots.load(target.project.project_id, target.instance.id)
        except StoreError:
            return
        if previous is None:
            await self.instances.deleted_unseen(target)
            return
        await self.instances.instance_gone(w, previous, None)
