"""The ``dcs-notifier`` command line: arguments in, the pipeline's results printed.

Exit codes: 0 success; 1 a poll or delivery failed (``once``, ``send-test``, ``dead-letters``); 2 the
configuration is invalid (printed as ``error:``); 130 interrupted. The dev tools (``demo``) are imported
only when asked for: the daemon never loads them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from notifier.app import Daemon, freeze_startup_heap
from notifier.config.display import masked, verdict
from notifier.config.env import credential_problems
from notifier.config.load import load_config
from notifier.config.models import Config
from notifier.delivery.direct import Replay, replay, send_direct
from notifier.errors import ConfigError, DcsApiError, StoreError
from notifier.logsetup import configure_logging, escape_controls
from notifier.net import VERSION
from notifier.net.session import make_http
from notifier.ops.service import Service
from notifier.ops.silences import add_silence_parser, silence_command
from notifier.pipeline.inventory import instance_lists
from notifier.pipeline.preview import preview
from notifier.pipeline.sample import sample_notification
from notifier.redaction import mask_redis_url
from notifier.store.connect import Store, open_store
from notifier.store.dead_letters import DeadLetter
from notifier.store.leases import DaemonConflict

log = logging.getLogger("notifier")

#: Seconds `dcs-notifier health` waits for the listener's answer.
HEALTH_TIMEOUT = 5.0


def say(text: str, *, err: bool = False) -> None:
    """Print one line that may carry values from outside (an API's messages, task names, tags): escaped
    like the logs, so that none can start a line of its own."""
    print(escape_controls(text), file=sys.stderr if err else sys.stdout)


def _add_common(p: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--config``, ``--log-level`` and ``--log-format``, before the command (``top``) or after it. A
    command's parser has no defaults of its own: it must not reset what was given before the command."""
    p.add_argument(
        "--config",
        "-c",
        metavar="PATH",
        default=None if top else argparse.SUPPRESS,
        help="config file (default: $DCS_NOTIFIER_CONFIG or ./config.yaml)",
    )
    p.add_argument(
        "--log-level",
        default=None if top else argparse.SUPPRESS,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default: the config's logging.level (INFO)",
    )
    p.add_argument(
        "--log-format",
        default=None if top else argparse.SUPPRESS,
        choices=["text", "json"],
        help="text, or one JSON object per line (default: the config's logging.format, text)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcs-notifier",
        description="Watch Huawei Cloud DCS background tasks and notify Slack and signed webhooks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("run", help="run the daemon until SIGTERM/SIGINT")
    _add_common(p)
    p = sub.add_parser("once", help="poll every instance once, deliver, exit non-zero if anything failed")
    _add_common(p)
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be sent to which channel by which rule; send nothing, write nothing",
    )
    p = sub.add_parser("check-config", help="validate the config and print a short verdict")
    _add_common(p)
    p.add_argument("--show", action="store_true", help="also print the resolved config, secrets masked")
    p = sub.add_parser("send-test", help="send a test notification to one channel")
    _add_common(p)
    p.add_argument("channel", metavar="CHANNEL", help="a channel name from the config")
    p = sub.add_parser(
        "list-instances", help="list the project's DCS instances, as config 'instances:' lines"
    )
    _add_common(p)
    p = sub.add_parser(
        "health",
        help="exit 0 if this host's daemon is alive (its /healthz, with http.listen), else 1; without a "
        "listener: if some daemon of this config polls (its heartbeat)",
    )
    _add_common(p)
    p = sub.add_parser("reload", help="ask every running daemon of this config to re-read its config file")
    _add_common(p)
    p = sub.add_parser("status", help="instances, owners, running tasks, outboxes: read from Redis, any host")
    _add_common(p)
    p.add_argument("--json", action="store_true", help="print the status as JSON (see README, Operations)")
    p = sub.add_parser("dead-letters", help="list, replay or purge notifications that were given up on")
    _add_common(p)
    dl = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = dl.add_parser("list", help="show every dead letter")
    _add_common(q)
    q = dl.add_parser("replay", help="put dead letters back in their channel's outbox and deliver them")
    _add_common(q)
    q.add_argument(
        "ids",
        nargs="*",
        metavar="ID",
        help="dead-letter ids (from 'list'); CHANNEL/ID where one is ambiguous",
    )
    q.add_argument("--all", action="store_true", help="replay every dead letter")
    q.add_argument("--no-deliver", action="store_true", help="only re-queue; leave delivery to the daemon")
    q = dl.add_parser("purge", help="delete every dead letter")
    _add_common(q)
    add_silence_parser(sub, _add_common)
    p = sub.add_parser("demo", help="run against the built-in simulator and local Slack/webhook stand-ins")
    p.add_argument("--redis-url", help="use this Redis instead of the embedded in-process store")
    p.add_argument("--duration", type=float, default=30.0, help="seconds to run (default 30)")
    p.add_argument("--speed", type=float, default=1.0, help="play the scenario this many times faster")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("DCS_NOTIFIER_CONFIG") or "config.yaml")


def _load(args: argparse.Namespace) -> Config:
    config = load_config(_config_path(args))
    settings = config.logging
    configure_logging(
        args.log_level or settings.level, config.secret_values(), args.log_format or settings.format
    )
    return config


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.show:
        print(yaml.safe_dump(masked(config), sort_keys=False, allow_unicode=True), end="")
    problems = credential_problems(config)
    for problem in problems:
        print(f"error: {_config_path(args)}: {problem}", file=sys.stderr)
    if problems:
        return 2
    summary = verdict(config)
    out = sys.stderr if args.show else sys.stdout  # --show: stdout is the YAML alone
    print(f"{_config_path(args)}: OK", file=out)
    for line in summary.lines:
        print(f"  {line}", file=out)
    for warning in summary.warnings:
        print(f"warning: {warning}", file=out)
    print(f"{len(summary.warnings)} warning(s)", file=out)
    if not args.show:
        print("the resolved config, secrets masked: check-config --show", file=out)
    return 0


def run_fast(main: Coroutine[Any, Any, int]) -> int:
    """Run the daemon on uvloop when it is installed (a faster event loop), else on asyncio's own."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency on Linux and macOS
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def _run(config: Config, args: argparse.Namespace) -> int:
    def apply_logging(new: Config) -> None:  # the new config's secrets are masked too (and the old ones)
        secrets = {*config.secret_values(), *new.secret_values()}
        configure_logging(args.log_level or new.logging.level, secrets, args.log_format or new.logging.format)

    def started(daemon: Daemon) -> None:
        if service.reloads == 0:  # the first daemon's long-lived objects (see freeze_startup_heap)
            freeze_startup_heap(daemon.config.poll.interval)

    load = lambda: load_config(_config_path(args))  # noqa: E731 - re-read on every reload
    service = Service(config, load, on_config=apply_logging, on_start=started)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.request_stop)
    loop.add_signal_handler(signal.SIGHUP, service.request_reload, "SIGHUP")
    try:
        await service.run()
    except DaemonConflict as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


async def _reload(config: Config) -> int:
    store = open_store(config)
    try:
        n = await store.reloads.ask()
    except StoreError as exc:
        say(f"error: cannot ask for a reload: {exc}", err=True)
        return 1
    finally:
        await store.aclose()
    print(f"reload #{n} asked: every running daemon of this config re-reads its file within a few seconds")
    return 0


async def _once(config: Config) -> int:
    async with Daemon(config) as daemon:
        report = await daemon.once()
    events = sum(len(p.events) for p in report.polls)
    delivered = sum(r.delivered for r in report.deliveries.values())
    print(f"polled {len(report.polls)} instance(s): {events} event(s), {delivered} notification(s) delivered")
    for problem in report.problems:
        say(f"FAILED {problem}", err=True)
    return 1 if report.problems else 0


async def _dry_run(config: Config) -> int:
    store = open_store(config)
    try:
        result = await preview(config, store)
    finally:
        await store.aclose()
    if result.redis_problem is None:
        state = f"state read from {mask_redis_url(config.redis.url.get_secret_value())}"
    else:
        state = (
            f"Redis not reachable ({result.redis_problem}): every instance previewed as its first poll "
            "(a baseline: tasks in progress and those finished within poll.baseline_grace are announced)"
        )
    say(f"dry run: nothing is sent and nothing is written; {state}")
    for p in result.instances:
        if p.error is not None:
            continue
        first = " (first poll: baseline)" if p.baseline else ""
        say(f"{p.instance.name} ({p.instance.id}){first}: {len(p.events)} event(s)")
        for event in p.events:
            window = event.instance.maintenance_window
            where = ""
            if event.maintenance is not None and window is not None:
                where = f"  (started {event.maintenance} the maintenance window {window.label})"
            say(f"  {event.type.value}  {event.summary}  [{event.id}]{where}")
            sent = [n for n in p.notifications if n.event.id == event.id]
            if not sent:
                say("    → no channel (no rule matches)")
            for n in sent:
                say(
                    f"    → {n.channel}" + (f"  (rule {n.rule})" if n.rule else "  (no rules: every channel)")
                )
    events = sum(len(p.events) for p in result.instances)
    notifications = sum(len(p.notifications) for p in result.instances)
    print(
        f"dry run of {len(result.instances)} instance(s): {events} event(s), "
        f"{notifications} notification(s) would be sent; none was"
    )
    for problem in result.problems:
        say(f"FAILED {problem}", err=True)
    return 1 if result.problems else 0


async def _send_test(config: Config, channel_name: str) -> int:
    if channel_name not in config.channels:
        known = ", ".join(sorted(config.channels))
        print(f"error: unknown channel {channel_name!r} (known: {known})", file=sys.stderr)
        return 2
    notification = sample_notification(config, channel_name, datetime.now(UTC))
    error = await send_direct(config, notification)
    if error is not None:
        say(f"FAILED {error}", err=True)
        return 1
    print(f"test notification {notification.event.id} delivered to {channel_name}")
    return 0


async def _list_instances(config: Config) -> int:
    failed = 0
    async with contextlib.aclosing(instance_lists(config)) as projects:
        async for spec, listing in projects:
            if isinstance(listing, DcsApiError):
                say(f"error: project {spec.project_id}: {listing}", err=True)
                failed += 1
                continue
            print(f"# account {spec.account}, region {spec.region}, project {spec.project_id}")
            print("instances:")
            for inst in listing:
                details = ", ".join(inst.details)
                if inst.tags:
                    details += " tags " + ", ".join(f"{k}={v}" for k, v in sorted(inst.tags.items()))
                say(f'  - {{id: "{inst.id}", name: {json.dumps(inst.name)}}}  # {details}')
    return 1 if failed else 0


async def _health_of_listener(host: str, port: int) -> int:
    """This host's daemon, asked through its listener (``/healthz``)."""
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - listening on every interface: ask the loopback one
        host = "::1" if host == "::" else "127.0.0.1"
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        async with (
            make_http(setting="http", trust_env=False, timeout=HEALTH_TIMEOUT) as http,
            http.session.get(f"http://{where}/healthz", allow_redirects=False) as resp,
        ):
            status, body = resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        say(f"unhealthy: no answer from http://{where}/healthz ({type(exc).__name__}: {exc})", err=True)
        return 1
    if status != 200:
        say(f"unhealthy: http://{where}/healthz answered {status}: {body.strip()}", err=True)
        return 1
    print(f"healthy: {body.strip()}")
    return 0


async def _health(config: Config) -> int:
    address = config.http.address
    if address is not None and address[1] != 0:
        return await _health_of_listener(*address)
    if address is not None:  # port 0: the daemon took a free port this command cannot know
        say("note: http.listen has port 0; checking the fleet's heartbeat instead of this host's daemon")
    store = open_store(config)
    try:
        beat = await store.heartbeat.last()
    except StoreError as exc:
        say(f"unhealthy: {exc}", err=True)
        return 1
    finally:
        await store.aclose()
    if beat is None:
        print("unhealthy: no recent heartbeat (is the daemon running?)", file=sys.stderr)
        return 1
    print(f"healthy: last heartbeat {beat}")
    return 0


async def _status(config: Config, as_json: bool) -> int:
    from notifier.ops.status import gather_status, render_text

    store = open_store(config)
    try:
        status = await gather_status(config, store)
    except StoreError as exc:
        say(f"error: {exc}", err=True)
        return 1
    finally:
        await store.aclose()
    if as_json:
        print(status.model_dump_json(indent=2))
        return 0
    for line in render_text(status).splitlines():
        say(line)
    return 0


async def _replay(config: Config, store: Store, letters: list[DeadLetter]) -> int:
    failed = 0
    async with contextlib.aclosing(replay(config, store, letters)) as results:
        async for r in results:
            d = r.letter
            failed += r.kept
            match r.outcome:
                case Replay.DELIVERED:
                    print(f"{d.entry_id}: delivered to {d.channel}")
                case Replay.REQUEUED:
                    say(f"{d.entry_id}: {d.channel} still failing ({r.error}); re-queued for the daemon")
                case Replay.REFUSED:
                    say(f"{d.entry_id}: refused again by {d.channel}: {r.error}; kept", err=True)
                case Replay.UNREADABLE:
                    print(f"{d.entry_id}: unreadable, cannot be replayed (purge it)", file=sys.stderr)
                case Replay.NO_CHANNEL:
                    say(f"{d.entry_id}: channel {d.channel!r} is no longer in the config; kept", err=True)
    return 1 if failed else 0


async def _dead_letters(config: Config, args: argparse.Namespace) -> int:
    store = open_store(config)
    # On a Redis Cluster each channel has its own dead-letter stream: the config's channels, plus any
    # other stream the store finds (a SCAN of every primary), e.g. of a channel since removed.
    channels = list(config.channels)
    try:
        if args.action == "list":
            letters = await store.dead_letters.oldest(channels=channels)
            for d in letters:
                n = d.notification
                what = (
                    f"{n.event.type.value} {n.event.summary} [{n.event.id}]"
                    if n
                    else f"unreadable: {d.raw[:80]!r}"
                )
                say(f"{d.entry_id}  {d.channel}  {d.failed_at}  attempts={d.attempts}  {what}")
                say(f"    error: {d.error}")
            print(f"{len(letters)} dead letter(s)", file=sys.stderr)
            return 0
        if args.action == "purge":
            print(f"purged {await store.dead_letters.purge(channels=channels)} dead letter(s)")
            return 0
        if not args.ids and not args.all:
            print(
                "error: name the dead letters to replay (ids from 'dead-letters list') or pass --all",
                file=sys.stderr,
            )
            return 2
        letters = await store.dead_letters.select(None if args.all else args.ids, channels=channels)
        if args.no_deliver:
            requeued = await store.dead_letters.requeue(letters)
            print(f"re-queued {len(requeued)} dead letter(s); the daemon delivers them")
            return 0
        return await _replay(config, store, letters)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from notifier.devtools.demo import run_demo

            configure_logging(args.log_level, fmt=args.log_format or "text")
            return asyncio.run(run_demo(redis_url=args.redis_url, duration=args.duration, speed=args.speed))
        if args.command == "check-config":
            return cmd_check_config(args)
        config = _load(args)
        if args.command == "run":
            return run_fast(_run(config, args))
        if args.command == "once":
            return run_fast(_dry_run(config) if args.dry_run else _once(config))
        if args.command == "send-test":
            return asyncio.run(_send_test(config, args.channel))
        if args.command == "list-instances":
            return asyncio.run(_list_instances(config))
        if args.command == "health":
            return asyncio.run(_health(config))
        if args.command == "reload":
            return asyncio.run(_reload(config))
        if args.command == "status":
            return asyncio.run(_status(config, args.json))
        if args.command == "dead-letters":
            return asyncio.run(_dead_letters(config, args))
        if args.command == "silence":
            return asyncio.run(silence_command(config, args, say, lambda text: say(text, err=True)))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
