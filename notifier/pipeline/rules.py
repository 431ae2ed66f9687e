"""Rules route events to channels. Pure functions: event in, notifications out.

Every rule that matches contributes its channels; a channel gets an event once, credited to the
first rule (in file order) that sent it there. With no rules at all, every event goes to every
channel. A rule matches when each of its filters matches:

* ``tasks``: task names as the API reports them (``masterStandbySwapJob``, ``EXTEND``...) or ``*``;
  ``EXTEND`` and ``ChangeInstanceSpec`` name the same kind. Events without a task (``instance.removed``,
  ``poller.*``) only match ``*``.
* ``events``: event types (``task.started``...) or ``*``.
* ``instances``: instance ids or configured names, or ``*``.
* ``labels``: every given label must equal the instance's label.
* ``maintenance``: ``inside`` or ``outside`` the instance's DCS maintenance window (where the change
  started; an event whose window is not known matches neither).
* ``mute_time_intervals`` / ``active_time_intervals``: the rule does not match while one of its mute
  intervals is active, nor, when it has active intervals, while none of them is — at the event's
  detection (``at`` overrides it), so the same event always routes the same way.

A notification carries the ``mention`` of every matching rule that sends it to its channel, for the
event types of that rule's ``mention_on`` (each mention once, in file order).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from notifier.config.models import RuleConfig
from notifier.pipeline.events import Event, Notification
from notifier.pipeline.time_intervals import any_contains

_ALIASES = {"ChangeInstanceSpec": "EXTEND"}


def canonical_task(name: str) -> str:
    return _ALIASES.get(name, name)


def rule_active(rule: RuleConfig, at: datetime) -> bool:
    """Whether the rule sends at ``at``: none of its mute intervals active, one of its active intervals
    active (when it names any)."""
    if any_contains(rule.mute_intervals, at):
        return False
    active = rule.active_intervals
    return not active or any_contains(active, at)


def rule_matches(rule: RuleConfig, event: Event, at: datetime | None = None) -> bool:
    if "*" not in rule.tasks and (
        event.task is None or canonical_task(event.task.name) not in {canonical_task(t) for t in rule.tasks}
    ):
        return False
    if "*" not in rule.events and event.type not in rule.events:
        return False
    if (
        "*" not in rule.instances
        and event.instance.id not in rule.instances
        and event.instance.name not in (rule.instances)
    ):
        return False
    if rule.maintenance is not None and event.maintenance != rule.maintenance:
        return False
    if not all(event.instance.labels.get(k) == v for k, v in rule.labels.items()):
        return False
    return rule_active(rule, event.detected_at if at is None else at)


def route(
    event: Event,
    rules: Sequence[RuleConfig],
    channels: Sequence[str],
    health_channels: Sequence[str] = (),
    *,
    at: datetime | None = None,
) -> list[Notification]:
    """The notifications one event causes, one per channel, in a stable order.

    ``poller.*`` events also go to ``health_channels`` (``health.channels``, the ops channel). Rules'
    time intervals are read at ``at`` (default: the event's ``detected_at``).
    """
    chosen: dict[str, str | None] = {}
    mentions: dict[str, dict[str, None]] = {}
    if not rules:
        chosen = dict.fromkeys(channels)
    for rule in rules:
        if rule_matches(rule, event, at):
            wanted = rule.mentions_for(event.type)
            for ch in rule.channels:
                chosen.setdefault(ch, rule.name)
                if wanted:
                    mentions.setdefault(ch, {}).update(dict.fromkeys(wanted))
    if event.type.value.startswith("poller."):
        for ch in health_channels:
            chosen.setdefault(ch, "health")
    return [
        Notification(event=event, channel=ch, rule=name, mentions=tuple(mentions.get(ch, ())))
        for ch, name in chosen.items()
    ]
