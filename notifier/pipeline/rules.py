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

A notification carries the ``mention`` of every matching rule that sends it to its channel, for the
event types of that rule's ``mention_on`` (each mention once, in file order).
"""

from __future__ import annotations

from collections.abc import Sequence

from notifier.config.models import RuleConfig
from notifier.pipeline.events import Event, Notification

_ALIASES = {"ChangeInstanceSpec": "EXTEND"}


def _canonical_task(name: str) -> str:
    return _ALIASES.get(name, name)


def rule_matches(rule: RuleConfig, event: Event) -> bool:
    if "*" not in rule.tasks and (
        event.task is None or _canonical_task(event.task.name) not in {_canonical_task(t) for t in rule.tasks}
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
    return all(event.instance.labels.get(k) == v for k, v in rule.labels.items())


def route(
    event: Event,
    rules: Sequence[RuleConfig],
    channels: Sequence[str],
    health_channels: Sequence[str] = (),
) -> list[Notification]:
    """The notifications one event causes, one per channel, in a stable order.

    ``poller.*`` events also go to ``health_channels`` (``health.channels``, the ops channel).
    """
    chosen: dict[str, str | None] = {}
    mentions: dict[str, dict[str, None]] = {}
    if not rules:
        chosen = dict.fromkeys(channels)
    for rule in rules:
        if rule_matches(rule, event):
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
