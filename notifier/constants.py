"""The whole Redis schema of dcs-notifier, in one place.

Every key starts with the configured prefix (``redis.key_prefix``, default ``dcsn``), so several
deployments can share one Redis database. ``{p}`` below is that prefix.

``{p}:snap:{project_id}:{instance_id}`` — HASH, no TTL.
    What was last seen of each task of one instance: field = task id, value = compact JSON
    ``{"s": status, "u": updated_at, "c": created_at}`` (ISO 8601, "" when unknown). Reserved fields:
    ``~meta`` holds ``{"baseline_at": ISO 8601, "removed_at": ISO 8601 (once instance.removed was
    announced)}``; ``~polled`` the time of the last successful poll (written with a commit, or
    pipelined with a read at most every minute), where a restarted daemon starts its next window. A
    hash without ``~meta`` means "never seen" and triggers a baseline (also after a Redis restart
    that lost its data). Read with one round trip per poll; written only when something changed, in
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

``{p}:dead`` — STREAM, capped at ~10,000 entries (MAXLEN ~).
    Dead letters: notifications a channel refused permanently. Fields: ``n`` (the Notification JSON),
    ``k``, ``channel``, ``error``, ``attempts``, ``failed_at``.

``{p}:heartbeat`` — STRING (ISO 8601), TTL 3 × poll interval + 10 s. Written every few seconds while
    some poll succeeded within the last 3 intervals; ``dcs-notifier health`` checks that it exists.
"""

from __future__ import annotations

DEFAULT_PREFIX = "dcsn"
META_FIELD = "~meta"
POLLED_FIELD = "~polled"
DELIVERED_TTL_SECONDS = 7 * 24 * 3600
DEAD_LETTER_MAXLEN = 10_000


class Keys:
    """Builds every Redis key name from one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix

    def snapshot(self, project_id: str, instance_id: str) -> str:
        return f"{self.prefix}:snap:{project_id}:{instance_id}"

    def outbox(self, channel: str) -> str:
        return f"{self.prefix}:outbox:{channel}"

    @property
    def group(self) -> str:
        return f"{self.prefix}-delivery"

    def delivered(self, channel: str, event_id: str) -> str:
        return f"{self.prefix}:delivered:{channel}:{event_id}"

    def attempts(self, channel: str) -> str:
        return f"{self.prefix}:attempts:{channel}"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def health(self) -> str:
        return f"{self.prefix}:health"

    @property
    def heartbeat(self) -> str:
        return f"{self.prefix}:heartbeat"
