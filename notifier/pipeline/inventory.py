"""What the projects of a config hold: their instance lists, as ``dcs-notifier list-instances`` shows them."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

from notifier.config.models import Config, ProjectSpec
from notifier.dcs.cloud import Cloud
from notifier.errors import DcsApiError
from notifier.pipeline.discovery import tags_of

_DETAILS = ("status", "engine", "engine_version", "spec_code")


@dataclass(frozen=True)
class Listed:
    """One instance of a listing: what an ``instances:`` entry needs, and what helps recognise it."""

    id: str
    name: str
    details: list[str]
    tags: dict[str, str]


def listed(raw: Mapping[str, Any]) -> Listed:
    """One raw entry of ``GET /v2/{project_id}/instances``, read."""
    return Listed(
        id=str(raw.get("instance_id")),
        name=str(raw.get("name", "")),
        details=[str(raw[k]) for k in _DETAILS if raw.get(k)],
        tags=tags_of(raw),
    )


async def instance_lists(
    config: Config,
) -> AsyncGenerator[tuple[ProjectSpec, list[Listed] | DcsApiError], None]:
    """Every project of ``config`` with its instances, or the error its listing met, project by project."""
    cloud = Cloud(config)
    try:
        for spec in config.projects():
            try:
                raw = await cloud.clients[spec.project_id].list_instances()
            except DcsApiError as exc:
                yield spec, exc
                continue
            yield spec, [listed(r) for r in raw]
    finally:
        await cloud.aclose()
