"""``dcs-notifier status``: one screen for a person, read from Redis only (so it works from any host).

:func:`gather_status` reads what the daemon (or its replicas) recorded in Redis into a :class:`Status`;
:func:`render_text` turns it into the screen; ``status --json`` prints ``Status`` as JSON (the shape is
documented on the models below and versioned by ``Status.version``).

What is read, all of it bounded and pipelined (see :mod:`notifier.store.keys` for the keys):

* the instances: the config's, and those a SCAN finds a snapshot hash of (discovered instances); each
  snapshot whole (HGETALL: one entry per task of the poll window) for its ``~polled`` time and the tasks
  in progress; ``{p}:polls`` (HMGET) for when each was last polled;
* ``{p}:health`` (instances announced unhealthy), ``{p}:heartbeat``, ``{p}:daemon`` or, with
  ``scaling.enabled``, ``{p}:replicas`` and every ``{p}:lease:{shard}``;
* per channel: XLEN, the XPENDING summary, HLEN of the attempts and the id of the first outbox entry;
  XLEN of the dead letters (their contents only to count them per channel, up to 1,000 on one server);
* with ``cloud_eye.enabled``, each project's ``{p}:ces:{project_id}:until``.
* the silences (``{p}:silences``, one HGETALL): those in effect and to come.

Nothing is written. Secrets never appear: the Redis URL is shown masked, and every text that came from
outside (a poll problem's message) is masked with the config's secret values.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel

from notifier.config.models import Config
from notifier.dcs.models import Outcome, classify_status, display_name
from notifier.delivery.silences import Silence
from notifier.errors import CorruptStateError
from notifier.pipeline.diff import Snapshot
from notifier.pipeline.events import PollProblem
from notifier.redaction import mask, mask_redis_url
from notifier.store.connect import Store
from notifier.store.leases import daemon_name, lease_holders, members_until, shard_of
from notifier.store.outbox import Backlog, entry_time

#: The version of the ``--json`` shape: raised when a field changes meaning or goes (new fields may come).
STATUS_VERSION = 1
#: Keys looked at per SCAN call when looking for discovered instances' snapshots.
SCAN_COUNT = 1000
#: Tasks in progress listed per instance on the screen (``--json`` lists them all).
RUNNING_SHOWN = 10

InstanceState = Literal["ok", "unhealthy", "new", "removed", "unreadable"]


class ProblemStatus(BaseModel):
    """Why polling fails (``{p}:health``): since when, and what the API or the network said."""

    since: datetime
    reason: str
    message: str
    http_status: int | None = None
    error_code: str | None = None


class RunningTask(BaseModel):
    """A task whose last seen status is in progress."""

    id: str
    #: As the API names it (``masterStandbySwapJob``); None for state written before names were kept.
    name: str | None = None
    status: str
    created_at: datetime | None = None
    updated_at: datetime | None = None
    #: When it crossed its ``watchdog`` limit, once ``task.stuck`` was announced (None: not stuck, or not
    #: announced yet).
    stuck_since: datetime | None = None


class InstanceStatus(BaseModel):
    id: str
    #: The config's name; None for an instance known only from Redis (discovered: Redis keeps no name).
    name: str | None = None
    in_config: bool
    #: ok; unhealthy (announced ``poller.unhealthy``); new (no state yet: never polled, or not yet
    #: baselined); removed (``instance.removed`` announced); unreadable (its state in Redis is corrupt).
    state: InstanceState
    #: The last successful poll Redis knows of: the later of ``~polled`` (written with every change) and
    #: ``{p}:polls`` (recorded by the polling replica every minute), so it lags by a minute at most.
    last_poll_at: datetime | None = None
    last_poll_age_s: float | None = None
    baseline_at: datetime | None = None
    removed_at: datetime | None = None
    #: With ``scaling.enabled``: the instance's shard, and the replica holding its lease (None: nobody).
    shard: int | None = None
    #: Who polls it: the lease holder (scaling) or the single daemon's name; None: nobody does now.
    owner: str | None = None
    unhealthy: ProblemStatus | None = None
    running: list[RunningTask] = []
    #: Why the state is unreadable (``state: unreadable``).
    error: str | None = None


class CloudEyeStatus(BaseModel):
    """A project's Cloud Eye events (``cloud_eye.enabled``)."""

    #: The end of the last window read whole; None before the first (the next poll is a baseline).
    until: datetime | None = None
    until_age_s: float | None = None
    shard: int | None = None
    owner: str | None = None
    unhealthy: ProblemStatus | None = None


class ProjectStatus(BaseModel):
    project_id: str
    account: str | None = None
    region: str | None = None
    in_config: bool
    #: Listing the project's instances (``discover``) announced unhealthy.
    discovery_unhealthy: ProblemStatus | None = None
    cloud_eye: CloudEyeStatus | None = None
    instances: list[InstanceStatus] = []


class ChannelStatus(BaseModel):
    name: str
    #: slack / webhook; None for a channel no longer in the config.
    type: str | None = None
    in_config: bool
    #: Notifications not delivered yet (XLEN of the outbox).
    depth: int
    #: Of those, read by a consumer and not acknowledged yet (being sent, or waiting for a retry).
    pending: int
    #: Of those, with failed attempts counted.
    retrying: int
    #: When the oldest undelivered notification was queued, and how long ago.
    oldest_at: datetime | None = None
    oldest_age_s: float | None = None
    #: Pending entries by delivery consumer.
    consumers: dict[str, int] = {}
    #: Dead letters of this channel; None when they were too many to count per channel (over 1,000 on
    #: one Redis server, whose one stream mixes the channels: see ``dead_letters.total``).
    dead_letters: int | None = None


class ReplicaStatus(BaseModel):
    name: str
    #: When its membership expires unless renewed (None: it holds leases but left the membership).
    expires_at: datetime | None = None
    shards: list[int] = []


class ScalingStatus(BaseModel):
    enabled: bool
    #: ``scaling.shards`` of the config (None without scaling).
    shards: int | None = None
    replicas: list[ReplicaStatus] = []
    #: Shards no replica holds a lease of (their instances are not polled now).
    unheld_shards: list[int] = []


class DeadLetterTotals(BaseModel):
    total: int
    #: Whether ``channels[].dead_letters`` are counted per channel (a Redis Cluster, or up to 1,000 dead
    #: letters on one server) or not (None there).
    per_channel: bool


class RedisInfo(BaseModel):
    url: str  # credentials masked
    key_prefix: str


class SilenceStatus(BaseModel):
    """A silence in effect (``active``) or to come (``pending``): ``dcs-notifier silence list``."""

    id: str
    state: str
    matchers: list[str]
    starts_at: datetime
    ends_at: datetime
    author: str
    comment: str


class Status(BaseModel):
    """The whole screen. ``version`` changes when a field changes meaning or goes away."""

    version: int = STATUS_VERSION
    generated_at: datetime
    redis: RedisInfo
    heartbeat_at: datetime | None = None
    heartbeat_age_s: float | None = None
    #: The single daemon (``scaling.enabled: false``) holding ``{p}:daemon``; None: none runs.
    daemon: str | None = None
    scaling: ScalingStatus
    projects: list[ProjectStatus] = []
    channels: list[ChannelStatus] = []
    dead_letters: DeadLetterTotals
    #: Silences in effect or to come (``{p}:silences``).
    silences: list[SilenceStatus] = []


# -- gathering -----------------------------------------------------------------------------------


@dataclass
class Reads:
    """Everything read from Redis, before it is put together."""

    discovered: list[tuple[str, str]] = field(default_factory=list)
    snapshots: list[Snapshot | CorruptStateError | None] = field(default_factory=list)
    health: dict[str, PollProblem] = field(default_factory=dict)
    backlogs: dict[str, Backlog] = field(default_factory=dict)
    dead_total: int = 0
    dead_by_channel: dict[str, int] | None = None
    heartbeat: str | None = None
    daemon: str | None = None
    members: dict[str, float] = field(default_factory=dict)
    holders: dict[int, str] = field(default_factory=dict)
    ces_until: dict[str, datetime | None] = field(default_factory=dict)
    #: When each instance was last polled, as its replica records it every minute (``{p}:polls``).
    polls: dict[str, datetime] = field(default_factory=dict)
    silences: list[Silence] = field(default_factory=list)


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else round(max(0.0, (now - then).total_seconds()), 3)


def _entry_time(entry_id: str | None) -> datetime | None:
    written = entry_time(entry_id)
    try:
        return None if written is None else datetime.fromtimestamp(written, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _problem(p: PollProblem | None, secrets: list[str]) -> ProblemStatus | None:
    if p is None:
        return None
    return ProblemStatus(
        since=p.since,
        reason=mask(p.reason, secrets),
        message=mask(p.message, secrets),
        http_status=p.http_status,
        error_code=None if p.error_code is None else mask(p.error_code, secrets),
    )


async def _discover(store: Store) -> list[tuple[str, str]]:
    link = store.link
    found: set[tuple[str, str]] = set()
    async with link.op("scan for instance states"):
        async for key in link.scan(link.keys.snapshot("*", "*"), "hash", count=SCAN_COUNT):
            ids = link.keys.snapshot_ids(key)
            if ids is not None:
                found.add(ids)
    return sorted(found)


async def _read(config: Config, store: Store) -> Reads:
    configured = [(spec.project_id, inst.id) for spec in config.projects() for inst in spec.instances]
    listed = set(configured)
    out = Reads(discovered=[ids for ids in await _discover(store) if ids not in listed])
    link, keys = store.link, store.keys
    channels = list(config.channels)

    async def snapshots() -> None:
        out.snapshots = await store.snapshots.load_many(configured + out.discovered)

    async def polls() -> None:
        out.polls = await store.heartbeat.polls([f"{p}/{i}" for p, i in configured + out.discovered])

    async def health() -> None:
        out.health = await store.health.load()

    async def backlogs() -> None:
        # Streams of channels no longer in the config still hold what they held: shown, not hidden.
        gone = sorted(await store.outbox.orphans(channels))
        out.backlogs = await store.outbox.backlogs(channels + gone)

    async def dead() -> None:
        out.dead_total, out.dead_by_channel = await store.dead_letters.counts(channels=channels)

    async def heartbeat() -> None:
        out.heartbeat = await store.heartbeat.last()

    async def owners() -> None:
        async with link.op("read of the replicas and leases"):
            out.daemon = await daemon_name(link.redis, keys)
            out.members = await members_until(link.redis, keys)
            if config.scaling.enabled:
                out.holders = await lease_holders(link.redis, keys, config.scaling.shards)

    async def cloud_eye(project_id: str) -> None:
        out.ces_until[project_id] = await store.cloud_eye.until(project_id)

    async def silences() -> None:
        out.silences = await store.silences.load(prune=False)  # status writes nothing

    async with asyncio.TaskGroup() as tasks:  # one failure (Redis away) cancels the other reads
        for read in (snapshots, polls, health, backlogs, dead, heartbeat, owners, silences):
            tasks.create_task(read())
        if config.cloud_eye.enabled:
            for spec in config.projects():
                tasks.create_task(cloud_eye(spec.project_id))
    return out


def _instance(
    config: Config,
    read: Reads,
    now: datetime,
    secrets: list[str],
    ids: tuple[str, str],
    name: str | None,
    snap: Snapshot | CorruptStateError | None,
) -> InstanceStatus:
    project_id, instance_id = ids
    key = f"{project_id}/{instance_id}"
    shard, owner = _owner(config, read, key)
    out = InstanceStatus(
        id=instance_id,
        name=name,
        in_config=name is not None,
        state="new",
        shard=shard,
        owner=owner,
        unhealthy=_problem(read.health.get(key), secrets),
    )
    if isinstance(snap, CorruptStateError):
        out.state, out.error = "unreadable", mask(str(snap), secrets)
        return out
    if snap is not None:
        recorded = [t for t in (snap.polled_at, read.polls.get(key)) if t is not None]
        out.last_poll_at = max(recorded) if recorded else None
        out.last_poll_age_s = _age(now, out.last_poll_at)
        out.baseline_at, out.removed_at = snap.baseline_at, snap.removed_at
        running = [
            RunningTask(
                id=tid,
                name=seen.name or None,
                status=seen.status,
                created_at=seen.created_at,
                updated_at=seen.updated_at,
                stuck_since=seen.stuck_at,
            )
            for tid, seen in snap.tasks.items()
            if classify_status(seen.status) is Outcome.IN_PROGRESS
        ]
        far = datetime.max.replace(tzinfo=UTC)
        out.running = sorted(running, key=lambda t: (t.created_at or far, t.id))
        out.state = "ok"
    if out.removed_at is not None:
        out.state = "removed"
    elif out.unhealthy is not None:
        out.state = "unhealthy"
    return out


def _owner(config: Config, read: Reads, key: str) -> tuple[int | None, str | None]:
    if not config.scaling.enabled:
        return None, read.daemon
    shard = shard_of(key, config.scaling.shards)
    return shard, read.holders.get(shard)


def _scaling(config: Config, read: Reads) -> ScalingStatus:
    if not config.scaling.enabled:
        replicas = [
            ReplicaStatus(name=n, expires_at=datetime.fromtimestamp(t, UTC))
            for n, t in sorted(read.members.items())
        ]  # replicas of another config on the same prefix: they stop a daemon from starting
        return ScalingStatus(enabled=False, replicas=replicas)
    names = sorted(set(read.members) | set(read.holders.values()))
    replicas = []
    for name in names:
        until = read.members.get(name)
        replicas.append(
            ReplicaStatus(
                name=name,
                expires_at=None if until is None else datetime.fromtimestamp(until, UTC),
                shards=sorted(s for s, holder in read.holders.items() if holder == name),
            )
        )
    unheld = [s for s in range(config.scaling.shards) if s not in read.holders]
    return ScalingStatus(enabled=True, shards=config.scaling.shards, replicas=replicas, unheld_shards=unheld)


def _channels(config: Config, read: Reads, now: datetime) -> list[ChannelStatus]:
    extra = (set(read.dead_by_channel or {}) | set(read.backlogs)) - set(config.channels)
    names = list(config.channels) + sorted(extra)
    out: list[ChannelStatus] = []
    for name in names:
        backlog = read.backlogs.get(name)
        oldest = _entry_time(backlog.oldest_id if backlog else None)
        channel = config.channels.get(name)
        out.append(
            ChannelStatus(
                name=name,
                type=None if channel is None else channel.type,
                in_config=channel is not None,
                depth=backlog.depth if backlog else 0,
                pending=backlog.pending if backlog else 0,
                retrying=backlog.retrying if backlog else 0,
                oldest_at=oldest,
                oldest_age_s=_age(now, oldest),
                consumers=dict(backlog.consumers) if backlog else {},
                dead_letters=None if read.dead_by_channel is None else read.dead_by_channel.get(name, 0),
            )
        )
    return out


def assemble(config: Config, read: Reads, now: datetime) -> Status:
    """Put what was read together (pure)."""
    secrets = config.secret_values()
    specs = {spec.project_id: spec for spec in config.projects()}
    projects: dict[str, ProjectStatus] = {
        pid: ProjectStatus(project_id=pid, account=spec.account, region=spec.region, in_config=True)
        for pid, spec in specs.items()
    }
    names = {(spec.project_id, inst.id): inst.name for spec in specs.values() for inst in spec.instances}
    ids = list(names) + read.discovered
    seen: set[str] = set()
    for pair, snap in zip(ids, read.snapshots, strict=True):
        project = projects.setdefault(pair[0], ProjectStatus(project_id=pair[0], in_config=False))
        project.instances.append(_instance(config, read, now, secrets, pair, names.get(pair), snap))
        seen.add(f"{pair[0]}/{pair[1]}")
    for key in sorted(read.health):
        project_id, _, instance_id = key.partition("/")
        if key in seen or not instance_id:
            continue
        project = projects.setdefault(project_id, ProjectStatus(project_id=project_id, in_config=False))
        if instance_id == "~discovery":
            project.discovery_unhealthy = _problem(read.health[key], secrets)
        elif instance_id == "~cloud-eye":
            continue  # below, with the project's Cloud Eye state
        elif not instance_id.startswith("~"):  # unhealthy before it was ever baselined
            project.instances.append(
                _instance(config, read, now, secrets, (project_id, instance_id), None, None)
            )
    if config.cloud_eye.enabled:
        for pid in specs:
            key = f"{pid}/~cloud-eye"
            shard, owner = _owner(config, read, key)
            until = read.ces_until.get(pid)
            projects[pid].cloud_eye = CloudEyeStatus(
                until=until,
                until_age_s=_age(now, until),
                shard=shard,
                owner=owner,
                unhealthy=_problem(read.health.get(key), secrets),
            )
    beat = _parse_time(read.heartbeat)
    return Status(
        generated_at=now,
        redis=RedisInfo(
            url=mask_redis_url(config.redis.url.get_secret_value()), key_prefix=config.redis.key_prefix
        ),
        heartbeat_at=beat,
        heartbeat_age_s=_age(now, beat),
        daemon=read.daemon,
        scaling=_scaling(config, read),
        projects=list(projects.values()),
        channels=_channels(config, read, now),
        dead_letters=DeadLetterTotals(total=read.dead_total, per_channel=read.dead_by_channel is not None),
        silences=[
            SilenceStatus(
                id=s.id,
                state=s.state(now),
                matchers=[str(m) for m in s.matchers],
                starts_at=s.starts_at,
                ends_at=s.ends_at,
                author=mask(s.author, secrets),
                comment=mask(s.comment, secrets),
            )
            for s in read.silences
            if s.state(now) != "expired"
        ],
    )


async def gather_status(config: Config, store: Store, *, now: datetime | None = None) -> Status:
    """Read the status of ``config``'s deployment from Redis (raises StoreError when it cannot)."""
    read = await _read(config, store)
    return assemble(config, read, now or datetime.now(UTC))


# -- rendering -----------------------------------------------------------------------------------


def ago(seconds: float | None) -> str:
    """``4s``, ``3m12s``, ``2h05m``, ``3d04h``; ``-`` for None."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _when(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "-"
    value = value.astimezone(UTC)
    shown = value.strftime("%H:%M:%S" if value.date() == now.astimezone(UTC).date() else "%Y-%m-%d %H:%M:%S")
    return f"{shown} ({ago(_age(now, value))} ago)"


def _at(value: datetime, now: datetime) -> str:
    """A time to come, or past: ``08:39:27 (in 1h59m)``."""
    shown = value.astimezone(UTC).strftime(
        "%H:%M:%S" if value.astimezone(UTC).date() == now.astimezone(UTC).date() else "%Y-%m-%d %H:%M:%S"
    )
    seconds = (value - now).total_seconds()
    return f"{shown} (in {ago(seconds)})" if seconds >= 0 else f"{shown} ({ago(-seconds)} ago)"


def ranges(values: Iterable[int]) -> str:
    """``0-3, 7, 9-10``; ``none`` when empty."""
    out: list[str] = []
    items = sorted(values)
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        out.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ", ".join(out) or "none"


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return [indent + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _problem_line(p: ProblemStatus, now: datetime) -> str:
    code = "".join(f" {x}" for x in (f"HTTP {p.http_status}" if p.http_status else None, p.error_code) if x)
    return f"unhealthy since {_when(p.since, now)}: {p.reason}{code}: {p.message}"


def _owner_text(owner: str | None, shard: int | None, scaling: bool) -> str:
    who = owner or ("unheld" if scaling else "no daemon")
    return who if shard is None else f"{who} (shard {shard})"


def render_text(status: Status) -> str:
    """The screen of ``dcs-notifier status``."""
    now = status.generated_at
    lines = [
        f"dcs-notifier: status at {now.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S')} UTC",
        f"redis {status.redis.url}, key prefix {status.redis.key_prefix}",
        "heartbeat: "
        + (
            _when(status.heartbeat_at, now)
            if status.heartbeat_at
            else "none (no daemon has polled successfully lately)"
        ),
    ]
    scaling = status.scaling
    if scaling.enabled:
        lines.append(f"replicas: {len(scaling.replicas)} ({scaling.shards} shards)")
        if scaling.replicas:
            rows = [["REPLICA", "SHARDS", "MEMBERSHIP"]]
            for r in scaling.replicas:
                member = "left" if r.expires_at is None else f"until {r.expires_at.strftime('%H:%M:%S')}"
                rows.append([r.name, f"{len(r.shards)}: {ranges(r.shards)}", member])
            lines += _table(rows)
        if scaling.unheld_shards:
            lines.append(f"  unheld shards (not polled now): {ranges(scaling.unheld_shards)}")
    else:
        lines.append(f"daemon: {status.daemon or 'none running'}")
        if scaling.replicas:
            names = ", ".join(r.name for r in scaling.replicas)
            lines.append(f"  replicas with scaling.enabled also run on this prefix: {names}")
    for project in status.projects:
        where = ", ".join(
            x
            for x in (
                f"account {project.account}" if project.account else None,
                f"region {project.region}" if project.region else None,
                None if project.in_config else "not in the config",
            )
            if x
        )
        lines += ["", f"project {project.project_id}" + (f" ({where})" if where else "")]
        if project.discovery_unhealthy is not None:
            lines.append(f"  discovery {_problem_line(project.discovery_unhealthy, now)}")
        ce = project.cloud_eye
        if ce is not None:
            read = f"read up to {_when(ce.until, now)}" if ce.until else "not read yet (next poll: baseline)"
            lines.append(f"  cloud eye: {read}, owner {_owner_text(ce.owner, ce.shard, scaling.enabled)}")
            if ce.unhealthy is not None:
                lines.append(f"    {_problem_line(ce.unhealthy, now)}")
        if not project.instances:
            lines.append("  no instances known yet")
            continue
        rows = [["INSTANCE", "STATE", "LAST POLL", "OWNER", "RUNNING"]]
        details: dict[int, list[str]] = {}
        for n, inst in enumerate(project.instances):
            name = inst.id if inst.name is None or inst.name == inst.id else f"{inst.name} ({inst.id})"
            rows.append(
                [
                    name,
                    inst.state,
                    _when(inst.last_poll_at, now),
                    _owner_text(inst.owner, inst.shard, scaling.enabled),
                    str(len(inst.running)),
                ]
            )
            extra = [
                f"{display_name(t.name) if t.name else 'task'} {t.id} {t.status} "
                f"since {_when(t.created_at, now)}"
                + (f", STUCK since {_when(t.stuck_since, now)}" if t.stuck_since else "")
                for t in inst.running[:RUNNING_SHOWN]
            ]
            if len(inst.running) > RUNNING_SHOWN:
                extra.append(f"and {len(inst.running) - RUNNING_SHOWN} more task(s) in progress (--json)")
            if inst.unhealthy is not None:
                extra.append(_problem_line(inst.unhealthy, now))
            if inst.removed_at is not None:
                extra.append(f"removed (instance.removed announced) at {_when(inst.removed_at, now)}")
            if inst.error is not None:
                extra.append(inst.error)
            details[n] = extra
        table = _table(rows)
        lines.append(table[0])
        for n, line in enumerate(table[1:]):
            lines.append(line)
            lines += [f"      {x}" for x in details[n]]
    lines += ["", "channels"]
    rows = [["CHANNEL", "TYPE", "DEPTH", "PENDING", "RETRYING", "OLDEST", "DEAD LETTERS"]]
    for ch in status.channels:
        rows.append(
            [
                ch.name if ch.in_config else f"{ch.name} (not in config)",
                ch.type or "-",
                str(ch.depth),
                str(ch.pending),
                str(ch.retrying),
                ago(ch.oldest_age_s),
                "-" if ch.dead_letters is None else str(ch.dead_letters),
            ]
        )
    lines += _table(rows)
    dead = status.dead_letters
    scope = "" if dead.per_channel else " (all channels; 'dcs-notifier dead-letters list' shows whose)"
    lines.append(f"dead letters: {dead.total}{scope}")
    active = [s for s in status.silences if s.state == "active"]
    if status.silences:
        lines.append(f"silences: {len(active)} in effect, {len(status.silences) - len(active)} to come")
        for s in status.silences:
            until = f"until {_at(s.ends_at, now)}" if s.state == "active" else f"from {_at(s.starts_at, now)}"
            lines.append(f"  {s.id}  {until}  {' '.join(s.matchers)}  ({s.author}: {s.comment})")
    return "\n".join(lines) + "\n"
