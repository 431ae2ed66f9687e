"""The whole Redis schema of dcs-notifier, in one place.

Every key starts with the configured prefix (``redis.key_prefix``, default ``dcsn``), so several
deployments can share one Redis database. ``{p}`` below is that prefix. The names below are those of
one server or a Sentinel-managed master; a Redis Cluster uses hash-tagged names (last section).

Who writes what (modules of :mod:`notifier.store`): ``snap`` and ``epoch`` — ``snapshots``; ``health`` —
``health``; ``outbox``, ``delivered``, ``attempts`` — ``outbox`` (which also buries entries in ``dead``);
``card`` — ``cards`` (written with an acknowledgement by ``outbox``); ``ces`` — ``cloud_eye``;
``dead`` — ``dead_letters``;
``heartbeat`` — ``heartbeat``; ``daemon``, ``replicas``, ``lease`` — ``leases``; ``silences`` —
``silences`` (whose held-back notifications ``outbox`` acknowledges into ``silence-log``).

``{p}:snap:{project_id}:{instance_id}`` — HASH, no TTL.
    What was last seen of each task of one instance: field = task id, value = compact JSON
    ``{"s": status, "u": updated_at, "c": created_at}`` (ISO 8601, "" when unknown), ``"n": name``, and
    ``"k": stuck_at`` once ``task.stuck`` was announced (when it crossed its watchdog limit; written in
    the MULTI/EXEC of that event's outbox entries; absent in state written before). Reserved fields:
    ``~meta`` holds ``{"baseline_at": ISO 8601, "removed_at": ISO 8601 (once instance.removed was
    announced)}``; ``~polled`` the time of a successful poll (written with a commit, or pipelined
    with a read at most every minute), where a restarted daemon starts its next window. A hash
    without ``~meta`` means "never seen" and triggers a baseline (also after a Redis restart that
    lost its data). Read once when the process starts polling the instance (afterwards it keeps what
    it committed: an unchanged poll makes no Redis call); written only when something changed, in
    the same MULTI/EXEC as the outbox entries that change causes. A removed instance's hash gets a
    TTL of ``discovery.removed_ttl``.

``{p}:health`` — HASH, no TTL.
    Instances announced as ``poller.unhealthy`` and not yet recovered: field ``{project_id}/{instance_id}``,
    value the PollProblem JSON (reason, message, code, since). Written in the same MULTI/EXEC as the
    outbox entries of the announcement, so it is made exactly once.

``{p}:outbox:{channel}`` — STREAM, trimmed by delivery (XDEL after XACK).
    The transactional outbox, one stream per channel so that a dead channel never delays another.
    Entry fields: ``n`` = the Notification as JSON (event + channel + rule), ``k`` = its key
    ``{event_id}:{channel}``. Read through consumer group ``{p}-delivery`` (XREADGROUP); an entry
    stays pending until the channel accepted it; pending entries idle longer than
    ``delivery.claim_idle`` seconds are taken over from a dead consumer with XAUTOCLAIM.

``{p}:delivered:{channel}:{event_id}`` — STRING "1", TTL 7 days (DELIVERED_TTL_SECONDS).
    The notification log: written in the same MULTI/EXEC as the XACK, checked before every send, so
    an entry re-read after a crash between send and ack is not sent twice.

``{p}:attempts:{channel}`` — HASH, no TTL (fields removed with their entry).
    Failed send attempts per outbox entry id, so that giving up after ``delivery.max_attempts``
    survives restarts. Removed in the same MULTI/EXEC that acknowledges or dead-letters the entry.

``{p}:card:{channel}:{card_key}`` — STRING, TTL 7 days (DELIVERED_TTL_SECONDS), renewed by every update.
    A living card (Slack bot channels): ``{"c": channel id, "ts": message ts, "open": bool}`` of the
    message that shows one task (``card_key`` = ``{project_id}/{instance_id}/task/{task_id}``) or one
    instance's health (``.../instance``), see :mod:`notifier.delivery.cards`. On a channel without cards
    (a Slack incoming webhook), the same record without ``c``/``ts`` for a task that switches over, with
    ``notes``: Cloud Eye switchovers held for the task's next message there. Written in the same
    MULTI/EXEC as the XACK of the notification that posted or updated it (by the dead-letter replay,
    just before the dead letter is resolved).
``{p}:ces:{project_id}:until`` — STRING (ISO 8601), no TTL.
    The end of the last Cloud Eye window of the project read whole (``cloud_eye.enabled``): the next window
    starts ``cloud_eye.overlap`` before it; none means the next poll is a baseline.
``{p}:ces:{project_id}:seen`` — ZSET, no TTL (trimmed by every commit).
    Cloud Eye event ids already handled (announced or ignored), score = the event's time (epoch ms);
    those older than the window a commit read are removed by it. Written in the same MULTI/EXEC as the
    ``until`` and the outbox entries the new events cause (see ``cloud_eye``).
``{p}:dead`` — STREAM, capped at ~10,000 entries (MAXLEN ~).
    Dead letters: notifications a channel refused permanently. Fields: ``n`` (the Notification JSON),
    ``k``, ``channel``, ``error``, ``attempts``, ``failed_at``.

``{p}:silences`` — HASH, no TTL (entries pruned SILENCE_RETENTION_SECONDS after they end).
    Silences (``dcs-notifier silence add``): field = the silence id (8 hex digits), value = JSON
    ``{"id", "matchers": ["instance=orders-*", "task!=EXTEND", ...], "starts_at", "ends_at", "comment",
    "author", "created_at", "expired_by": null | name}`` (times ISO 8601 UTC). In effect while
    ``starts_at`` ≤ now < ``ends_at``; ``silence expire`` sets ``ends_at`` to now. Read whole by every
    delivering process at most once a second (a cache: never one call per notification), which also
    removes (HDEL) those ended more than the retention ago; kept that long after they end so that
    ``silence list --all`` and ``silence log`` can still say what they were.

``{p}:silence-log`` — STREAM, capped at ~10,000 entries (MAXLEN ~).
    What silences held back: one entry per notification, written in the same MULTI/EXEC as its
    acknowledgement (and its notification log, so a replay does not send it): ``silence`` (id),
    ``event_id``, ``type``, ``summary``, ``instance`` (id), ``instance_name``, ``project``, ``task``
    (id, "" for none), ``channel``, ``at`` (ISO 8601). A held-back task event also marks the task's
    ``card`` record on that channel (``sil``), so the task's later messages say it was silenced.

``{p}:heartbeat`` — STRING (ISO 8601), TTL 3 × poll interval + 10 s. Written every few seconds while
    some poll succeeded within the last 3 intervals; ``dcs-notifier health`` checks that it exists.

``{p}:polls`` — HASH, TTL 10 minutes (renewed by every write).
    When each instance was last polled successfully: field ``{project_id}/{instance_id}``, value ISO 8601.
    Written by the replica that polls it, for all its instances in one pipelined write a minute (not
    per poll); read by ``dcs-notifier status``. (``~polled`` in the snapshot moves only with a change.)

``{p}:reload`` — STRING (an integer), no TTL.
    Bumped (INCR) by ``dcs-notifier reload``; every running daemon and replica of this prefix reads it
    every few seconds and, when it changed, re-reads its config file (as SIGHUP does).

``{p}:epoch`` — STRING (ISO 8601 of when it was written and a random token), no TTL.
    Written by ``dcs-notifier run`` (and every replica) when missing. A running daemon reads it every few
    seconds: gone, or another token than it saw, Redis has lost its data (FLUSHALL, a restart without
    persistence, an eviction), and every instance is polled at once, writing back first the state the
    daemon holds in memory instead of being baselined again by the next start (which would announce
    again what was delivered).

``{p}:daemon`` — STRING (``scaling.enabled: false`` only), TTL 3 × the heartbeat period (at least 3 s).
    The name (``{hostname}-{pid}-{random}``) of the one daemon running this config; renewed by it alone.
    A second daemon started on the same Redis and prefix refuses to start (two would send every
    notification twice); one that finds it held by a killed predecessor waits for it to expire. Replicas
    with ``scaling.enabled`` do not join while it is held.

``{p}:replicas`` — ZSET (``scaling.enabled`` only), TTL 10 × ``scaling.lease_ttl``.
    Live replicas: member = replica name, score = when its membership expires (ms since the epoch).

``{p}:lease:{shard}`` — STRING (``scaling.enabled`` only), TTL ``scaling.lease_ttl``.
    The replica holding the shard's lease (see :mod:`notifier.store.leases`); renewed by its holder only.

Redis Cluster (``redis.url: redis+cluster://...``; ``Keys(prefix, cluster=True)``)
---------------------------------------------------------------------------------
Keys one MULTI/EXEC touches must share a hash slot, so a cluster's keys carry hash tags (``{...}``,
literally in the name): everything of one channel is in the channel's slot, and each instance's state
in its own::

    {p}:snap:{{project_id}:{instance_id}}    e.g. dcsn:snap:{a4d3...:5560...}
    {p}:outbox:{{channel}}                   e.g. dcsn:outbox:{audit}
    {p}:delivered:{{channel}}:{event_id}     e.g. dcsn:delivered:{audit}:evt_4f78...
    {p}:attempts:{{channel}}                 e.g. dcsn:attempts:{audit}
    {p}:card:{{channel}}:{card_key}          e.g. dcsn:card:{oncall}:a4d3.../5560.../task/7f1c...
    {p}:ces:{{project_id}}:until, …:seen    one slot per project: its Cloud Eye state
    {p}:dead:{{channel}}                     one dead-letter stream per channel (not one {p}:dead)
    {p}:silence-log:{{channel}}              one silence log per channel (not one {p}:silence-log)
    {p}:silences                            unchanged (single key)
    {p}:health, {p}:heartbeat, {p}:epoch    unchanged (single keys)
    {p}:daemon                              unchanged (single key)
    {p}:replicas, {p}:lease:{shard}         unchanged (single keys)

Types, fields and TTLs are as above. One server and Sentinel keep the untagged names (no migration).
Delivery's transactions (acknowledge + notification log, dead-lettering, attempts, replay/resolve of
dead letters) stay atomic: their keys share the channel's tag. The writes that span an instance's
state and the outboxes of several channels — a commit, ``instance.removed``, a ``poller.*``
announcement with ``{p}:health`` — cannot be one transaction on a cluster: the outbox entries are
written first (pipelined per node), then the state change (one MULTI/EXEC in its own slot). A crash
or failure in between leaves the entries queued without the state change; the next poll sees the old
state, queues the same events again with the same deterministic event ids, and delivery's notification
log (``delivered:{channel}:{event_id}``, checked before every send) drops the repeats. So on a cluster
nothing is lost and repeats are dropped by id, instead of "both or neither". (Events whose id is not
deterministic across attempts — ``instance.removed``, whose id includes its detection time, and a
``poller.unhealthy`` re-announced after a restart — may then be announced twice, with different ids.)
"""

from __future__ import annotations

DEFAULT_PREFIX = "dcsn"
META_FIELD = "~meta"
POLLED_FIELD = "~polled"
DELIVERED_TTL_SECONDS = 7 * 24 * 3600
DEAD_LETTER_MAXLEN = 10_000
SILENCE_LOG_MAXLEN = 10_000
#: How long a silence is kept after it ended (as long as the card records that may name it).
SILENCE_RETENTION_SECONDS = DELIVERED_TTL_SECONDS


class Keys:
    """Builds every Redis key name from one prefix.

    ``cluster=True`` adds the hash tags a Redis Cluster needs (see the module docstring); standalone and
    Sentinel deployments keep the untagged names, so switching this code in needs no data migration.
    """

    def __init__(self, prefix: str = DEFAULT_PREFIX, cluster: bool = False) -> None:
        self.prefix = prefix
        self.cluster = cluster

    def _tag(self, value: str) -> str:
        return f"{{{value}}}" if self.cluster else value

    def snapshot(self, project_id: str, instance_id: str) -> str:
        return f"{self.prefix}:snap:{self._tag(f'{project_id}:{instance_id}')}"

    def snapshot_ids(self, key: str) -> tuple[str, str] | None:
        """``(project_id, instance_id)`` of a snapshot hash's key, or None when ``key`` is not one."""
        head = f"{self.prefix}:snap:"
        if not key.startswith(head):
            return None
        rest = key[len(head) :]
        if self.cluster:
            if not (rest.startswith("{") and rest.endswith("}")):
                return None
            rest = rest[1:-1]
        project_id, _, instance_id = rest.partition(":")
        if not project_id or not instance_id or any(c in rest for c in "{}"):
            return None
        return project_id, instance_id

    def outbox(self, channel: str) -> str:
        return f"{self.prefix}:outbox:{self._tag(channel)}"

    def outbox_channel(self, key: str) -> str | None:
        """The channel of an outbox stream's key, or None when ``key`` is not one."""
        return self._channel_of(key, f"{self.prefix}:outbox:")

    @property
    def group(self) -> str:
        return f"{self.prefix}-delivery"

    def delivered(self, channel: str, event_id: str) -> str:
        return f"{self.prefix}:delivered:{self._tag(channel)}:{event_id}"

    def card(self, channel: str, card_key: str) -> str:
        return f"{self.prefix}:card:{self._tag(channel)}:{card_key}"

    def ces_until(self, project_id: str) -> str:
        return f"{self.prefix}:ces:{self._tag(project_id)}:until"

    def ces_seen(self, project_id: str) -> str:
        return f"{self.prefix}:ces:{self._tag(project_id)}:seen"

    def attempts(self, channel: str) -> str:
        return f"{self.prefix}:attempts:{self._tag(channel)}"

    @property
    def dead_letters(self) -> str:
        """The one dead-letter stream of a standalone deployment (a cluster has one per channel)."""
        return f"{self.prefix}:dead"

    def dead(self, channel: str) -> str:
        """The dead-letter stream a channel's refused notifications go to."""
        return f"{self.prefix}:dead:{self._tag(channel)}" if self.cluster else self.dead_letters

    def dead_channel(self, key: str) -> str | None:
        """The channel of a per-channel dead-letter stream's key (cluster), or None."""
        return self._channel_of(key, f"{self.prefix}:dead:")

    @property
    def silences(self) -> str:
        return f"{self.prefix}:silences"

    def silence_log(self, channel: str) -> str:
        """The silence log a channel's held-back notifications are recorded in (one per channel on a
        cluster, in the channel's slot: written with the acknowledgement)."""
        base = f"{self.prefix}:silence-log"
        return f"{base}:{self._tag(channel)}" if self.cluster else base

    def silence_log_channel(self, key: str) -> str | None:
        """The channel of a per-channel silence log's key (cluster), or None."""
        return self._channel_of(key, f"{self.prefix}:silence-log:")

    def _channel_of(self, key: str, head: str) -> str | None:
        if not key.startswith(head):
            return None
        rest = key[len(head) :]
        if self.cluster:
            if not (rest.startswith("{") and rest.endswith("}")) or len(rest) < 3:
                return None
            rest = rest[1:-1]
        return rest if rest and not any(c in rest for c in "{}:") else None

    @property
    def health(self) -> str:
        return f"{self.prefix}:health"

    @property
    def heartbeat(self) -> str:
        return f"{self.prefix}:heartbeat"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"

    @property
    def polls(self) -> str:
        return f"{self.prefix}:polls"

    @property
    def reload(self) -> str:
        return f"{self.prefix}:reload"

    @property
    def daemon(self) -> str:
        return f"{self.prefix}:daemon"

    @property
    def replicas(self) -> str:
        return f"{self.prefix}:replicas"

    def lease(self, shard: int) -> str:
        return f"{self.prefix}:lease:{shard}"
