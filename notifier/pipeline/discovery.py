"""Discovery: which instances of a project are watched, from ``GET /v2/{project_id}/instances``.

:func:`select` is pure: the raw instance list in, the watched instances out (with their tags as
labels). The poller lists each discovering project every ``discovery.interval`` and applies the result:
new instances are added (and baselined, so no flood), instances filtered out are dropped silently, and
instances gone from the list are confirmed deleted (404 ``DCS.3022``, or absent from two listings in a
row) before ``instance.removed`` is announced.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from notifier.config.models import InstanceConfig, InstanceFilter, ProjectSpec


@dataclass(frozen=True, slots=True)
class Listing:
    """One listing of a project: every instance id the API returned, and those to watch."""

    listed: frozenset[str]
    watched: dict[str, InstanceConfig] = field(default_factory=dict)


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
    watched: dict[str, InstanceConfig] = {}
    for raw in instances:
        iid = raw.get("instance_id")
        if not isinstance(iid, str) or not iid:
            continue
        listed.add(iid)
        name = str(raw.get("name") or iid)
        tags = tags_of(raw)
        known = configured.get(iid)
        if known is not None:
            watched[iid] = known.model_copy(update={"labels": {**spec.labels, **tags, **known.labels}})
        elif matches(iid, name, str(raw.get("status") or ""), tags, spec.filter):
            watched[iid] = InstanceConfig(id=iid, name=name, labels={**spec.labels, **tags})
    return Listing(listed=frozenset(listed), watched=watched)
