"""Slack messages of several notifications at once (pure): a group (a burst of one kind of event), a
group card as it moves on ("12 of 40 succeeded, 28 running"), its thread replies, and a catch-up digest.

They reuse :mod:`notifier.delivery.formatters.slack`'s pieces (escaping, limits, emoji), and an event's own
summary with "N instances" in place of the instance's name, so a group reads like the event it stands for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from slack_sdk.models.blocks import (
    Block,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from notifier.delivery.cards import Group, card_key
from notifier.delivery.formatters.slack import (
    EVENT_EMOJI,
    FALLBACK_TEXT_MAX,
    HEADER_MAX,
    SECTION_TEXT_MAX,
    SlackMessage,
    clip,
    code,
    escape,
    mentions_text,
    slack_date,
    value,
)
from notifier.pipeline.events import CLOUD_EYE_WORDS, Event, EventType, InstanceRef, Notification

#: How a member stands, in the group card's count.
STATE_WORDS: Final[dict[str, str]] = {
    "task.started": "running",
    "task.updated": "running",
    "task.succeeded": "succeeded",
    "task.failed": "failed",
    "task.stuck": "stuck",
    "poller.unhealthy": "failing",
    "poller.recovered": "recovered",
}
#: Listed first in a group card's count and in a digest: what needs a human.
URGENT: Final = ("task.failed", "task.stuck", "poller.unhealthy", "instance.failover", "node.abnormal")
#: Members listed one per line in a group message (the rest are counted).
LINES: Final = 30


def _emoji(type_value: str) -> str:
    try:
        return EVENT_EMOJI[EventType(type_value)]
    except (KeyError, ValueError):
        return ":bell:"


def what_of(event: Event) -> str:
    """What a group of events like ``event`` is about, in words: the task, or the kind of event."""
    if event.task is not None:
        return event.task.display_name
    if event.type in (EventType.POLLER_UNHEALTHY, EventType.POLLER_RECOVERED):
        return "Polling"
    return CLOUD_EYE_WORDS.get(event.type) or event.type.value


def _as_many(event: Event, n: int) -> str:
    """The event's summary with ``n instances`` where its instance's name is."""
    many = InstanceRef.of(event.instance.id, f"{n} instance{'' if n == 1 else 's'}", {})
    return event.model_copy(update={"instance": many}).summary


def latest(notifications: Sequence[Notification]) -> list[Notification]:
    """One notification per card (task, instance's health): its latest, in the order cards first came
    (a group by ``project`` alone may hold a task's start and its end: one member, not two)."""
    found: dict[str, Notification] = {}
    for n in notifications:
        found[card_key(n.event)] = n
    return list(found.values())


def _member_line(n: Notification) -> str:
    """One member: its instance, and its task's status (a poller problem is said once, for the group)."""
    event = n.event
    line = f"{_emoji(event.type.value)} {value(event.instance.name, 100)} ({code(event.instance.id, 100)})"
    if event.task is not None:
        line += f" · {code(event.task.status or 'unknown', 40)}"
    return line


def _lines(notifications: Sequence[Notification], limit: int) -> str:
    """A line per member, up to ``limit`` and the section's size, then how many more there are."""
    shown: list[str] = []
    size = 0
    for n in notifications[:limit]:
        line = _member_line(n)
        if size + len(line) + 1 > SECTION_TEXT_MAX - 40:  # room left for the count of the rest
            break
        shown.append(line)
        size += len(line) + 1
    if len(shown) < len(notifications):
        shown.append(f"… and {len(notifications) - len(shown)} more")
    return "\n".join(shown)


def _problem(notifications: Sequence[Notification]) -> str:
    """What a group of poller events fails with: one member's message (they share the cause)."""
    problem = next((n.event.problem for n in notifications if n.event.problem is not None), None)
    return "" if problem is None else clip(f"*Error (one of them):* {value(problem.message, 1000)}", 1500)


def _mentions(notifications: Sequence[Notification]) -> str:
    """The members' mentions, each once, fitted as a lone notification's are."""
    seen: dict[str, None] = {}
    for n in notifications:
        seen.update(dict.fromkeys(n.mentions))
    return mentions_text(seen)


def _message(headline: str, body: str, context: str, mentions: str) -> SlackMessage:
    blocks: list[Block] = [HeaderBlock(text=PlainTextObject(text=clip(headline, HEADER_MAX), emoji=True))]
    if mentions:
        blocks.append(SectionBlock(text=MarkdownTextObject(text=mentions)))
    if body:
        blocks.append(SectionBlock(text=MarkdownTextObject(text=body)))
    blocks.append(DividerBlock())
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text=clip(context, 2000))]))
    text = clip(escape(headline), FALLBACK_TEXT_MAX)
    return SlackMessage(text=f"{mentions} {text}" if mentions else text, blocks=[b.to_dict() for b in blocks])


def _context(notifications: Sequence[Notification]) -> str:
    first = notifications[0]
    parts = [f"{len(notifications)} events"]
    if first.rule:
        parts.append(f"Rule *{value(first.rule, 200)}*")
    parts.append(f"Project {code(first.event.project_id, 100)}")
    return " · ".join(parts)


def format_group(notifications: Sequence[Notification], *, mention: bool = True) -> SlackMessage:
    """One message for a burst of events of one kind: what happened on how many instances, and which."""
    members = latest(notifications)
    first = members[0].event
    headline = f"{_emoji(first.type.value)} {_as_many(first, len(members))}"
    body = "\n\n".join(t for t in (_problem(members), _lines(members, LINES)) if t)
    return _message(
        headline,
        clip(body, SECTION_TEXT_MAX),
        _context(notifications),
        _mentions(notifications) if mention else "",
    )


def group_headline(group: Group) -> str:
    """The count a group card shows: ``Master/standby switchover on 40 instances: 12 of 40 succeeded,
    28 running`` — what needs a human first."""
    counts = Counter(m.state.value for m in group.members.values())
    n = len(group.members)
    parts: list[str] = []
    if any(s.startswith("task.") for s in counts):
        parts.append(f"{counts.get('task.succeeded', 0)} of {n} succeeded")
    for state in sorted(counts, key=lambda s: (s not in URGENT, s)):
        if state == "task.succeeded":
            continue
        word = STATE_WORDS.get(state, state)
        parts.append(f"{counts[state]} {word}")
    worst = next((s for s in URGENT if counts.get(s)), None)
    emoji = _emoji(worst) if worst else (":white_check_mark:" if counts.get("task.succeeded") == n else "")
    return f"{emoji} {group.what} on {n} instances: {', '.join(parts)}".strip()


def format_group_card(
    group: Group, notifications: Sequence[Notification], *, mention: bool = False
) -> SlackMessage:
    """A group card: posted with the mentions of its first members (``mention``), rewritten by
    ``chat.update`` without them (later mentions go in the thread reply)."""
    rows = sorted(group.members.values(), key=lambda m: (m.state.value not in URGENT, m.instance))
    lines = [
        f"{_emoji(m.state.value)} {value(m.instance, 100)} · {STATE_WORDS.get(m.state.value, m.state.value)}"
        for m in rows[:LINES]
    ]
    if len(rows) > LINES:
        lines.append(f"… and {len(rows) - LINES} more")
    body = clip("\n".join(lines), SECTION_TEXT_MAX)
    mentions = _mentions(notifications) if mention else ""
    return _message(group_headline(group), body, _context(notifications), mentions)


def format_group_reply(notifications: Sequence[Notification], when: datetime) -> SlackMessage:
    """The thread reply under a group card: what these members did, in one line (mentions first)."""
    members = latest(notifications)
    first = members[0].event

    def name(n: Notification) -> str:
        note = n.event.stuck_note  # a task announced stuck: its end says for how long
        return value(n.event.instance.name, 60) + (f" ({note})" if note else "")

    names = ", ".join(name(n) for n in members[:10])
    more = f" and {len(members) - 10} more" if len(members) > 10 else ""
    line = clip(
        f"{_emoji(first.type.value)} {value(_as_many(first, len(members)), 300)}: {names}{more} · "
        f"{slack_date(when)}",
        SECTION_TEXT_MAX,
    )
    mentions = _mentions(notifications)
    blocks = [SectionBlock(text=MarkdownTextObject(text=t)).to_dict() for t in (mentions, line) if t]
    return SlackMessage(text=f"{mentions} {line}" if mentions else line, blocks=blocks)


def format_digest(notifications: Sequence[Notification], lines: int = LINES) -> SlackMessage:
    """One message for a backlog that waited (the daemon, Redis or the channel was away): counts by type
    and task, the failures and the tasks still running first, then a line per instance up to ``lines``."""
    events = [n.event for n in notifications]
    start, end = min(e.detected_at for e in events), max(e.detected_at for e in events)
    headline = f":clipboard: {len(events)} notifications held up from {start:%H:%M} to {end:%H:%M} UTC"
    kinds = Counter((e.type.value, e.task.display_name if e.task is not None else "") for e in events)
    order = sorted(kinds, key=lambda k: (k[0] not in URGENT, k[0] not in ("task.started", "task.updated"), k))
    counts = [
        f"{_emoji(t)} {kinds[(t, what)]} × {t}" + (f" ({value(what, 80)})" if what else "")
        for t, what in order
    ]
    latest: dict[str, Notification] = {}  # per instance, its latest event
    for n in notifications:
        latest[f"{n.event.project_id}/{n.event.instance.id}"] = n
    ranked = sorted(
        latest.values(),
        key=lambda n: (
            n.event.type.value not in URGENT,
            n.event.type.value not in ("task.started", "task.updated"),
            n.event.instance.name,
        ),
    )
    body = "*By kind*\n" + "\n".join(counts) + "\n\n*Latest per instance*\n" + _lines(ranked, lines)
    context = f"Digest of {len(events)} events · delivered together after a delay"
    return _message(headline, clip(body, SECTION_TEXT_MAX), context, _mentions(notifications))
