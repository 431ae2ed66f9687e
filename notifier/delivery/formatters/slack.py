"""Pure Slack formatter: a notification in, a Block Kit message out.

The message answers at a glance: what happened (in words), on which instance, with what outcome, who started
it, when, how long it took and what changed. Every value that comes from the API is escaped for mrkdwn and
clipped so that Block Kit limits hold whatever the API sends. No clock is read: the same notification always
gives the same message.

Three shapes: :func:`format_slack` — the message of one event, which is also a living card's first post;
:func:`format_card` — the card as ``chat.update`` rewrites it (no mention: an edit pings nobody);
:func:`format_reply` — the short thread reply saying what changed and when. Mentions come from the config's
rules only (checked there) and are the only unescaped mrkdwn in a message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

from slack_sdk.models.blocks import (
    Block,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from notifier.dcs.models import Outcome, Task, TaskDetails
from notifier.pipeline.events import CloudEyeInfo, Event, EventType, Notification, SilenceNote

# Block Kit limits (https://docs.slack.dev/reference/block-kit/blocks).
HEADER_MAX: Final = 150
SECTION_TEXT_MAX: Final = 3000
FIELD_TEXT_MAX: Final = 2000
FIELDS_MAX: Final = 10
CONTEXT_TEXT_MAX: Final = 2000
#: Slack truncates notification text long before this; keep the fallback short (mentions come before it).
FALLBACK_TEXT_MAX: Final = 1000
#: One API value never takes more than this in a message.
VALUE_MAX: Final = 300

ELLIPSIS: Final = "…"

EVENT_EMOJI: Final[dict[EventType, str]] = {
    EventType.STARTED: ":arrows_counterclockwise:",
    EventType.SUCCEEDED: ":white_check_mark:",
    EventType.FAILED: ":x:",
    EventType.UPDATED: ":information_source:",
    EventType.STUCK: ":alarm_clock:",
    EventType.INSTANCE_REMOVED: ":wastebasket:",
    EventType.POLLER_UNHEALTHY: ":rotating_light:",
    EventType.POLLER_RECOVERED: ":large_green_circle:",
    EventType.INSTANCE_FAILOVER: ":rotating_light:",
    EventType.INSTANCE_SWITCHOVER: ":twisted_rightwards_arrows:",
    EventType.NODE_ABNORMAL: ":warning:",
    EventType.NODE_RECOVERED: ":large_green_circle:",
    EventType.NODE_RESTARTED: ":arrows_counterclockwise:",
    EventType.BACKUP_FAILED: ":x:",
    EventType.MIGRATION_FAILED: ":x:",
    EventType.MIGRATION_RESYNC: ":repeat:",
    EventType.CLOUDEYE_EVENT: ":eye:",
}

OUTCOME_EMOJI: Final[dict[Outcome, str]] = {
    Outcome.IN_PROGRESS: ":hourglass_flowing_sand:",
    Outcome.SUCCEEDED: ":white_check_mark:",
    Outcome.FAILED: ":x:",
}


@dataclass(frozen=True, slots=True)
class SlackMessage:
    """What is posted: ``text`` is the notification/fallback text, ``blocks`` the Block Kit layout."""

    text: str
    blocks: list[dict[str, Any]]


def escape(value: object) -> str:
    """Escape the three characters mrkdwn gives a meaning to (``&``, ``<``, ``>``)."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters, ending in ``…``, never inside an ``&amp;`` entity."""
    if len(text) <= limit:
        return text
    cut = text[: limit - len(ELLIPSIS)]
    amp = cut.rfind("&", max(0, len(cut) - 5))
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + ELLIPSIS


def value(raw: object, limit: int = VALUE_MAX) -> str:
    """An API value, made safe for mrkdwn and short."""
    return clip(escape(raw), limit)


def code(raw: object, limit: int = VALUE_MAX) -> str:
    """An identifier shown as inline code (unless it contains a backtick, which would break the span)."""
    text = value(raw, limit)
    return text if "`" in text else f"`{text}`"


def format_duration(seconds: float) -> str:
    """``4 s``, ``3 min 12 s``, ``2 h 5 min``, ``1 d 3 h``; under half a second is ``< 1 s``."""
    if 0 < seconds < 0.5:
        return "< 1 s"
    total = round(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        parts = [(days, "d"), (hours, "h")]
    elif hours:
        parts = [(hours, "h"), (minutes, "min")]
    elif minutes:
        parts = [(minutes, "min"), (secs, "s")]
    else:
        return f"{secs} s"
    return " ".join(f"{n} {unit}" for n, unit in parts if n)


def slack_date(when: datetime) -> str:
    """Slack date formatting (shown in the reader's time zone) with a UTC fallback."""
    utc = when.astimezone(UTC)
    fallback = utc.strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"<!date^{int(utc.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


def _change(label: str, old: object, new: object, *, unit: str = "", as_code: bool = False) -> str | None:
    """``*Capacity:* 0.125 GB → 0.25 GB``; ``None`` when neither side is known or nothing changed."""
    if old is None and new is None:
        return None
    render = code if as_code else value

    def side(v: object) -> str:
        return f"{render(v)}{unit}"

    if old is None:
        return f"*{label}:* {side(new)}"
    if new is None:
        return f"*{label}:* was {side(old)}"
    if old == new:
        return None
    return f"*{label}:* {side(old)} → {side(new)}"


def _yes_no(flag: bool) -> str:
    return "enabled" if flag else "disabled"


def detail_lines(details: TaskDetails) -> list[str]:
    """One mrkdwn line per fact the details carry, changes first."""
    d = details
    lines = [
        _change("Capacity", d.old_capacity, d.new_capacity, unit=" GB"),
        _change("Spec", d.old_resource_spec_code, d.new_resource_spec_code, as_code=True),
        _change("Replicas", d.old_replica_num, d.new_replica_num),
        _change("Port", d.old_port, d.new_port),
        _change("Cache mode", d.old_cache_mode, d.new_cache_mode),
        _change("Cache type", d.old_cache_type, d.new_cache_type),
    ]
    if d.enable_public_ip is not None:
        lines.append(f"*Public access:* {_yes_no(d.enable_public_ip)}")
    if d.public_ip_address:
        lines.append(f"*Public IP:* {code(d.public_ip_address)}")
    if d.public_ip_id:
        lines.append(f"*EIP id:* {code(d.public_ip_id)}")
    if d.enable_ssl is not None:
        lines.append(f"*SSL:* {_yes_no(d.enable_ssl)}")
    if d.group_name:
        lines.append(f"*Whitelist group:* {value(d.group_name)}")
    if d.replica_ip or d.replica_az:
        where = f" in {value(d.replica_az)}" if d.replica_az else ""
        lines.append(f"*Replica:* {code(d.replica_ip) if d.replica_ip else 'unknown IP'}{where}")
    if d.node_name:
        lines.append(f"*Node:* {value(d.node_name)}")
    if d.source_ip or d.target_ip:
        src = code(d.source_ip) if d.source_ip else "?"
        dst = code(d.target_ip) if d.target_ip else "?"
        lines.append(f"*Source → target IP:* {src} → {dst}")
    if d.account_name:
        lines.append(f"*Account:* {value(d.account_name)}")
    if d.rename_commands:
        lines.append(f"*Renamed commands:* {value(', '.join(d.rename_commands))}")
    if d.updated_config_length:
        lines.append(f"*Parameters changed:* {d.updated_config_length}")
    if d.is_only_adjust_charging:
        lines.append("*Billing change only:* yes")
    for key, extra in sorted((d.model_extra or {}).items()):
        if extra not in (None, "", [], {}):
            lines.append(f"*{value(key, 60)}:* {value(extra)}")
    return [line for line in lines if line is not None]


def _status_field(event: Event, task: Task) -> str:
    status = code(task.status or "unknown", 100)
    emoji = OUTCOME_EMOJI[task.outcome]
    if event.type is EventType.UPDATED:
        before = code(event.previous_status or "unknown", 100)
        return f"*Status*\n{emoji} {before} → {status}"
    return f"*Status*\n{emoji} {status}"


def console_url(event: Event) -> str:
    """The instance's page in Huawei Cloud's console. (The URL's form is unconfirmed: taken from the
    console as it was seen, not from a documented contract.)"""
    region, instance = quote(event.region, safe=""), quote(event.instance.id, safe="")
    return (
        f"https://console.huaweicloud.com/dcs/?region={region}#/dcs/manager/dcsDetail?instanceId={instance}"
    )


def _instance_fields(event: Event) -> list[str]:
    """Fields of an ``instance.*`` / ``poller.*`` event: the instance, and what fails."""
    instance = event.instance
    fields = [f"*Instance*\n{value(instance.name)} ({code(instance.id, 100)})"]
    problem = event.problem
    if problem is not None:
        what = value(problem.reason, 100)
        if problem.http_status is not None:
            what += f", HTTP {problem.http_status}"
        if problem.error_code:
            what += f" {code(problem.error_code, 100)}"
        fields.append(f"*Problem*\n{what}")
        fields.append(f"*Failing since*\n{slack_date(problem.since)}")
    ce = event.cloud_eye
    if ce is not None:  # what Cloud Eye said: automatic, which node, when
        fields.append(
            f"*Cloud Eye event*\n{code(ce.event_name, 100)}"
            + (f" ({value(ce.level, 30)})" if ce.level else "")
        )
        fields.append(f"*When*\n{slack_date(ce.time)}")
        if ce.user:
            fields.append(f"*By*\n{value(ce.user, 100)}")
        if isinstance(ce.content, dict):
            facts = ", ".join(f"{value(k, 40)}: {value(v, 100)}" for k, v in list(ce.content.items())[:6])
            fields.append(f"*Details*\n{facts}")
        elif ce.content:
            fields.append(f"*Details*\n{value(ce.content, 500)}")
        fields.append(f"*Console*\n<{console_url(event)}|open the instance>")
    fields.extend(_maintenance_field(event))
    fields.append(f"*Region*\n{value(event.region, 100)}")
    return [clip(f, FIELD_TEXT_MAX) for f in fields[:FIELDS_MAX]]


def maintenance_text(event: Event) -> str | None:
    """``inside (18:00–19:00 UTC)``, or ``:warning: outside (…)`` — a change begun outside its instance's
    DCS maintenance window is worth a second look; None when the window is not known."""
    window = event.instance.maintenance_window
    if event.maintenance is None or window is None:
        return None
    if event.maintenance == "inside":
        return f"inside ({window.label})"
    return f":warning: outside ({window.label})"


def _maintenance_field(event: Event) -> list[str]:
    text = maintenance_text(event)
    return [] if text is None else [f"*Maintenance window*\n{text}"]


def _fields(event: Event, task: Task) -> list[str]:
    instance = event.instance
    what = value(task.display_name)
    if task.name and task.display_name != task.name:
        what += f" ({code(task.name, 100)})"
    fields = [
        f"*Instance*\n{value(instance.name)} ({code(instance.id, 100)})",
        f"*Task*\n{what}",
        _status_field(event, task),
    ]
    if task.user_name:
        fields.append(f"*Started by*\n{value(task.user_name)}")
    if task.created_at is not None:
        fields.append(f"*Started at*\n{slack_date(task.created_at)}")
    if task.duration_seconds is not None:
        fields.append(f"*Duration*\n{format_duration(task.duration_seconds)}")
    elif task.outcome is not Outcome.IN_PROGRESS and task.updated_at is not None:
        fields.append(f"*Finished at*\n{slack_date(task.updated_at)}")
    if event.stuck_since is not None:  # announced stuck (the watchdog): since when, and for how long
        fields.append(f"*Stuck*\nsince {slack_date(event.stuck_since)}, {event.stuck_note}")
    fields.extend(_maintenance_field(event))
    fields.append(f"*Region*\n{value(event.region, 100)}")
    return [clip(f, FIELD_TEXT_MAX) for f in fields[:FIELDS_MAX]]


def _context(notification: Notification) -> str:
    event = notification.event
    parts = []
    if notification.rule:
        parts.append(f"Rule *{value(notification.rule, 200)}*")
    parts.append(f"Event {code(event.id, 100)} ({event.type.value})")
    if event.task is not None:
        parts.append(f"Task {code(event.task.id, 100)}")
    parts.append(f"Project {code(event.project_id, 100)}")
    return clip(" · ".join(parts), CONTEXT_TEXT_MAX)


def _mentions(notification: Notification) -> str:
    return mentions_text(notification.mentions)


def mentions_text(mentions: Iterable[str]) -> str:
    """The rules' mentions, as written in the config (validated there: Slack's own syntax only, at most
    MENTIONS_MAX characters per rule); several rules' together are cut between two mentions, never inside
    one, to fit their own section block."""
    out: list[str] = []
    size = 0
    for m in mentions:
        size += len(m) + (1 if out else 0)
        if size > SECTION_TEXT_MAX:
            break
        out.append(m)
    return " ".join(out)


def _note_line(note: CloudEyeInfo) -> str:
    """One line of what Cloud Eye said during a task (a switchover told with the task's message)."""
    line = f"• Cloud Eye {code(note.event_name, 100)} at {slack_date(note.time)}"
    if note.resource_name:
        line += f" on {value(note.resource_name, 100)}"
    if isinstance(note.content, dict) and note.content:
        facts = [f"{value(k, 40)}: {value(v, 100)}" for k, v in list(note.content.items())[:4]]
        line += f" ({', '.join(facts)})"
    return line


def silenced_line(note: SilenceNote) -> str:
    """What a task's message says of a silence that held back an earlier notification of the task."""
    why = f"silence {code(note.id, 40)}" + (f": {value(note.comment, 500)}" if note.comment else "")
    if note.type == EventType.STARTED.value:
        return f":mute: Started while silenced ({why})"
    return f":mute: Earlier news of this task was silenced ({code(note.type, 40)}, {why})"


def format_slack(
    notification: Notification, *, mention: bool = True, notes: Sequence[CloudEyeInfo] = ()
) -> SlackMessage:
    """Render one notification as a Slack message (pure, deterministic); with its mentions unless
    ``mention`` is false, and ``notes`` — what Cloud Eye said during the task since its last message
    (a channel without cards) — in a section of their own."""
    event = notification.event
    emoji = EVENT_EMOJI[event.type]
    headline = f"{emoji} {event.summary}"
    mentions = _mentions(notification) if mention else ""

    task = event.task
    fields = _instance_fields(event) if task is None else _fields(event, task)
    blocks: list[Block] = [HeaderBlock(text=PlainTextObject(text=clip(headline, HEADER_MAX), emoji=True))]
    if mentions:
        blocks.append(SectionBlock(text=MarkdownTextObject(text=mentions)))
    blocks.append(SectionBlock(fields=[MarkdownTextObject(text=f) for f in fields]))
    if task is not None and task.details is not None:
        lines = detail_lines(task.details)
        if lines:
            text = clip("\n".join(lines), SECTION_TEXT_MAX)
            blocks.append(SectionBlock(text=MarkdownTextObject(text=text)))
    if event.problem is not None:
        text = clip(f"*Error:* {value(event.problem.message, 1000)}", SECTION_TEXT_MAX)
        blocks.append(SectionBlock(text=MarkdownTextObject(text=text)))
    if notification.silenced is not None:
        text = clip(silenced_line(notification.silenced), SECTION_TEXT_MAX)
        blocks.append(SectionBlock(text=MarkdownTextObject(text=text)))
    if notes:
        lines = ["*Also during this task:*", *(_note_line(note) for note in notes)]
        blocks.append(SectionBlock(text=MarkdownTextObject(text=clip("\n".join(lines), SECTION_TEXT_MAX))))
    blocks.append(DividerBlock())
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text=_context(notification))]))

    text = clip(f"{emoji} {escape(event.summary)}", FALLBACK_TEXT_MAX)
    return SlackMessage(
        text=f"{mentions} {text}" if mentions else text,
        blocks=[block.to_dict() for block in blocks],
    )


def format_card(notification: Notification) -> SlackMessage:
    """A living card as ``chat.update`` rewrites it: the latest event's message, without mentions."""
    return format_slack(notification, mention=False)


def _when(event: Event) -> datetime:
    task = event.task
    if task is not None and task.outcome is not Outcome.IN_PROGRESS and task.updated_at is not None:
        return task.updated_at
    return event.detected_at


def format_reply(notification: Notification) -> SlackMessage:
    """The thread reply under a card: what changed and when, in one line (mentions first)."""
    event = notification.event
    parts = [f"{EVENT_EMOJI[event.type]} {value(event.summary, 500)}", slack_date(_when(event))]
    task = event.task
    if task is not None and task.outcome is not Outcome.IN_PROGRESS and task.duration_seconds is not None:
        parts.append(f"took {format_duration(task.duration_seconds)}")
    if event.problem is not None:
        parts.append(value(event.problem.message, 500))
    if event.stuck_note is not None and event.type is not EventType.STUCK:  # (task.stuck's summary says it)
        parts.append(event.stuck_note)
    line = clip(" · ".join(parts), SECTION_TEXT_MAX)
    mentions = _mentions(notification)
    blocks = [SectionBlock(text=MarkdownTextObject(text=t)).to_dict() for t in (mentions, line) if t]
    return SlackMessage(text=f"{mentions} {line}" if mentions else line, blocks=blocks)
