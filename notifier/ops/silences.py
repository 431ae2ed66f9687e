"""``dcs-notifier silence add|list|expire|log``: silences set, shown and ended from any host with the config.

The arguments are checked before Redis is asked anything: a matcher of an unknown field, an empty value,
an event type or channel that does not exist, a duration that is not one, a silence that would already
be over — each refused with exit 2 and a message naming what is wrong. Redis that cannot be read or
written is exit 1. What a silence is and how it matches: :mod:`notifier.delivery.silences`; where it is
kept: :mod:`notifier.store.silences`.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from notifier.config.durations import parse_duration
from notifier.config.models import Config
from notifier.delivery.silences import (
    AUTHOR_MAX,
    COMMENT_MAX,
    MatcherError,
    Silence,
    new_id,
    parse_matcher,
    parse_time,
)
from notifier.errors import StoreError
from notifier.ops.status import ago
from notifier.store.connect import Store, open_store
from notifier.store.silences import Held

#: The longest silence ``--for`` takes (a longer one is a config change, not a silence).
FOR_MAX: Final = 365 * 86_400.0
JSON_VERSION: Final = 1

Say = Callable[[str], None]


def add_silence_parser(
    sub: Any, add_common: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    """The ``silence`` command and its actions, under the CLI's subparsers ``sub``."""
    p: argparse.ArgumentParser = sub.add_parser(
        "silence", help="hold notifications back for a while: add, list, expire, log"
    )
    add_common(p)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser(
        "add",
        help="silence the notifications every --match matches, for a while",
        description="Matchers: FIELD=GLOB or FIELD!=GLOB over instance (id or name), project, region, "
        "type (event type), task (task name; EXTEND = ChangeInstanceSpec), channel, labels.NAME, "
        "problem (a poller problem's reason). Globs: * ? [...].",
    )
    add_common(q)
    q.add_argument(
        "--match",
        "-m",
        action="append",
        required=True,
        metavar="FIELD=GLOB",
        help="e.g. instance=orders-*, task=EXTEND, type!=task.failed, labels.env=prod (all must match)",
    )
    q.add_argument(
        "--for", dest="duration", required=True, metavar="DURATION", help="how long: 2h, 30m, 1h30m, 7200"
    )
    q.add_argument("--comment", required=True, help="why (shown with every message it concerns)")
    q.add_argument("--author", help="who (default: $USER)")
    q.add_argument("--start", metavar="ISO", help="when it starts, ISO 8601 (default: now; no zone: UTC)")
    q.add_argument("--json", action="store_true", help="print the silence as JSON")
    q = actions.add_parser("list", help="silences in effect and to come (--all: also those ended lately)")
    add_common(q)
    q.add_argument("--all", action="store_true", help="also silences that ended (kept 7 days)")
    q.add_argument("--json", action="store_true", help="print as JSON")
    q = actions.add_parser("expire", help="end a silence now")
    add_common(q)
    q.add_argument("id", metavar="ID", help="the silence's id (from 'silence list')")
    q.add_argument("--author", help="who ends it (default: $USER)")
    q = actions.add_parser("log", help="what silences held back, newest first")
    add_common(q)
    q.add_argument("id", nargs="?", metavar="ID", help="only what this silence held back")
    q.add_argument("--limit", type=int, default=100, help="at most this many (default 100; 0: all kept)")
    q.add_argument("--json", action="store_true", help="print as JSON")
    return p


def _user(given: str | None) -> str:
    return (given or os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown").strip()


def _utc(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _relative(when: datetime, now: datetime) -> str:
    seconds = (when - now).total_seconds()
    return f"in {ago(seconds)}" if seconds >= 0 else f"{ago(-seconds)} ago"


def _one_line(text: str) -> bool:
    return not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in text)


def build_silence(config: Config, args: argparse.Namespace, now: datetime) -> Silence:
    """The silence ``silence add`` asks for; ValueError naming what is wrong (exit 2)."""
    matchers = []
    for text in args.match:
        matchers.append(parse_matcher(text, channels=config.channels))  # MatcherError is a ValueError
    try:
        seconds = parse_duration(args.duration)
    except ValueError as exc:
        raise ValueError(f"--for: {exc}") from None
    if not 0 < seconds <= FOR_MAX:
        raise ValueError(f"--for: {args.duration!r} must be more than 0 and at most 365 days")
    starts = now
    if args.start:
        try:
            starts = parse_time(args.start)
        except ValueError as exc:
            raise ValueError(f"--start: {exc}") from None
    ends = starts + timedelta(seconds=seconds)
    if ends <= now:
        raise ValueError(f"--start {args.start} --for {args.duration}: the silence would already be over")
    comment = args.comment.strip()
    if not comment:
        raise ValueError("--comment: say why (it is shown with every message of a task it held back)")
    if len(comment) > COMMENT_MAX or not _one_line(comment):
        raise ValueError(f"--comment: one line of at most {COMMENT_MAX} characters")
    author = _user(args.author)
    if not author or len(author) > AUTHOR_MAX or not _one_line(author):
        raise ValueError(f"--author: one line of 1 to {AUTHOR_MAX} characters")
    return Silence(new_id(), tuple(matchers), starts, ends, comment, author, now)


def _listed(silence: Silence, now: datetime, held: int) -> dict[str, Any]:
    return {**silence.to_dict(), "state": silence.state(now), "held": held}


def _json(out: Say, data: dict[str, Any]) -> None:
    """Print JSON line by line (each line escaped as every output line is: still the same JSON, as
    json.dumps leaves no raw control character in a string)."""
    for line in json.dumps(data, ensure_ascii=False, indent=2).splitlines():
        out(line)


def _held_line(h: Held) -> str:
    try:
        when = _utc(parse_time(h.at)) if h.at else "?"
    except ValueError:
        when = h.at
    return f"{when}  {h.silence}  {h.channel}  {h.type}  {h.summary}  [{h.event_id}]"


async def silence_command(config: Config, args: argparse.Namespace, out: Say, err: Say) -> int:
    """Run ``silence ACTION``; the exit status."""
    now = datetime.now(UTC)
    silence: Silence | None = None
    if args.action == "add":
        try:
            silence = build_silence(config, args, now)
        except (MatcherError, ValueError) as exc:
            err(f"error: {exc}")
            return 2
    if args.action == "log" and args.limit < 0:
        err("error: --limit: 0 or more")
        return 2
    store = open_store(config)
    try:
        return await _run(config, store, args, now, silence, out, err)
    except StoreError as exc:
        err(f"error: {exc}")
        return 1
    finally:
        await store.aclose()


async def _run(
    config: Config,
    store: Store,
    args: argparse.Namespace,
    now: datetime,
    silence: Silence | None,
    out: Say,
    err: Say,
) -> int:
    silences = store.silences
    channels = list(config.channels)
    if silence is not None:
        silence = await silences.add(silence)
        if args.json:
            _json(out, {"version": JSON_VERSION, **_listed(silence, now, 0)})
            return 0
        matchers = " ".join(str(m) for m in silence.matchers)
        out(
            f"silence {silence.id} added: {matchers}, from {_utc(silence.starts_at)} until "
            f"{_utc(silence.ends_at)} ({_relative(silence.ends_at, now)}), by {silence.author}: "
            f"{silence.comment}"
        )
        out(f"end it early with: dcs-notifier silence expire {silence.id}")
        return 0
    if args.action == "list":
        found = [s for s in await silences.load(now, prune=False) if args.all or s.state(now) != "expired"]
        counts: dict[str, int] = {}
        for h in await silences.held(limit=None, channels=channels) if found else ():
            counts[h.silence] = counts.get(h.silence, 0) + 1
        if args.json:
            listed = [_listed(s, now, counts.get(s.id, 0)) for s in found]
            _json(out, {"version": JSON_VERSION, "silences": listed})
            return 0
        rows = [["ID", "STATE", "STARTS", "ENDS", "HELD", "BY", "MATCHERS", "COMMENT"]]
        for s in found:
            ends = f"{_utc(s.ends_at)} ({_relative(s.ends_at, now)})"
            by = s.author + (f", ended by {s.expired_by}" if s.expired_by else "")
            matchers = " ".join(str(m) for m in s.matchers)
            n_held = str(counts.get(s.id, 0))
            rows.append([s.id, s.state(now), _utc(s.starts_at), ends, n_held, by, matchers, s.comment])
        if found:
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
            for r in rows:
                out("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
        what = "silence(s)" if args.all else "silence(s) in effect or to come"
        err(f"{len(found)} {what}" + ("" if args.all else "; --all also shows those ended lately"))
        return 0
    if args.action == "expire":
        before = await silences.get(args.id)
        if before is None:
            err(f"error: no silence {args.id!r} (dcs-notifier silence list --all shows them)")
            return 1
        if before.state(now) == "expired":
            out(f"silence {before.id} had already ended at {_utc(before.ends_at)}")
            return 0
        ended = await silences.expire(args.id, _user(args.author), now)
        assert ended is not None
        out(
            f"silence {ended.id} expired by {ended.expired_by} "
            "(notifications from now on are delivered; its log stays: dcs-notifier silence log "
            f"{ended.id})"
        )
        return 0
    # log
    held = await silences.held(silence_id=args.id, limit=args.limit or None, channels=channels)
    if args.json:
        _json(out, {"version": JSON_VERSION, "held": [h.to_dict() for h in held]})
        return 0
    for h in held:
        out(_held_line(h))
    err(f"{len(held)} notification(s) held back" + (f" by silence {args.id}" if args.id else ""))
    return 0
