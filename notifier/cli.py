"""The ``dcs-notifier`` command line: run, once, check-config, send-test, demo.

Exit codes: 0 success; 1 a poll or delivery failed (``once``, ``send-test``); 2 the configuration is
invalid; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import yaml

from notifier.app import Daemon, freeze_startup_heap, open_store
from notifier.config.models import Config, InstanceConfig, credential_problems, load_config, secret_values
from notifier.dcs.cloud import Cloud
from notifier.dcs.models import Task, format_api_time
from notifier.delivery.channels import Channel, build_channel, masked_config
from notifier.delivery.worker import send_with_retries
from notifier.errors import ConfigError, DcsApiError, StateStoreError
from notifier.logsetup import configure_logging, escape_controls
from notifier.pipeline.discovery import tags_of
from notifier.pipeline.events import Event, EventType, InstanceRef, Notification, event_id
from notifier.store.leases import DaemonConflict
from notifier.store.state import DeadLetter, StateStore

log = logging.getLogger("notifier")


def say(text: str, *, err: bool = False) -> None:
    """Print one line that may carry values from outside (an API's messages, task names, tags): escaped
    like the logs, so that none can start a line of its own."""
    print(escape_controls(text), file=sys.stderr if err else sys.stdout)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", "-c", metavar="PATH", help="config file (default: $DCS_NOTIFIER_CONFIG or ./config.yaml)"
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcs-notifier",
        description="Watch Huawei Cloud DCS background tasks and notify Slack and signed webhooks.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("run", help="run the daemon until SIGTERM/SIGINT")
    _add_common(p)
    p = sub.add_parser("once", help="poll every instance once, deliver, exit non-zero if anything failed")
    _add_common(p)
    p = sub.add_parser("check-config", help="validate the config and print it with secrets masked")
    _add_common(p)
    p = sub.add_parser("send-test", help="send a test notification to one channel")
    _add_common(p)
    p.add_argument("channel", metavar="CHANNEL", help="a channel name from the config")
    p = sub.add_parser(
        "list-instances", help="list the project's DCS instances, as config 'instances:' lines"
    )
    _add_common(p)
    p = sub.add_parser("health", help="exit 0 if a daemon of this config is alive (recent heartbeat), else 1")
    _add_common(p)
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
    p = sub.add_parser("demo", help="run against the built-in simulator and local Slack/webhook stand-ins")
    p.add_argument("--redis-url", help="use this Redis instead of the embedded in-process store")
    p.add_argument("--duration", type=float, default=30.0, help="seconds to run (default 30)")
    p.add_argument("--speed", type=float, default=1.0, help="play the scenario this many times faster")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def _load(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    configure_logging(args.log_level, secret_values(config))
    return config


def mask_redis_url(url: str) -> str:
    """A Redis URL without its credentials: user info and ``password=`` query values become ``****``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "****@" + netloc.rsplit("@", 1)[1]
    query = urlencode(
        [
            (k, "****" if k.lower() in ("password", "username", "user", "sentinel_password") else v)
            for k, v in parse_qsl(parts.query)
        ],
        safe="*",
    )
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def _short_masks(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _short_masks(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_short_masks(v) for v in value]
    return "****" if value == "**********" else value


def masked(config: Config) -> dict[str, Any]:
    """The resolved config as plain data, every secret replaced by ``****``."""
    # SecretStr fields (AK/SK, tokens, passwords, the proxy URL) dump as "**********": shown as "****".
    data: dict[str, Any] = _short_masks(config.model_dump(mode="json", exclude={"channels"}))
    data["projects"] = [
        {
            "account": spec.account,
            "region": spec.region,
            "project_id": spec.project_id,
            "endpoint": spec.endpoint,
            "credentials": spec.credentials.type,
            "instances": "discovered" if spec.discover else len(spec.instances),
        }
        for spec in config.projects()
    ]
    data["redis"]["url"] = mask_redis_url(config.redis.url.get_secret_value())
    data["channels"] = {name: masked_config(cfg) for name, cfg in config.channels.items()}
    return data


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    print(yaml.safe_dump(masked(config), sort_keys=False, allow_unicode=True), end="")
    problems = credential_problems(config)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if problems:
        return 2
    print("config OK", file=sys.stderr)
    return 0


def _install_stop_handlers(daemon: Daemon) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_stop)


def run_fast(main: Coroutine[Any, Any, int]) -> int:
    """Run the daemon on uvloop when it is installed (a faster event loop), else on asyncio's own."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency on Linux and macOS
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def _run(config: Config) -> int:
    async with Daemon(config) as daemon:
        _install_stop_handlers(daemon)
        freeze_startup_heap(config.poll.interval)
        try:
            await daemon.run()
        except DaemonConflict as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
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


def test_notification(config: Config, channel: str, now: datetime) -> Notification:
    """A realistic, clearly marked test event: a switchover that just succeeded."""
    spec = config.projects()[0]
    inst = spec.instances[0] if spec.instances else InstanceConfig(id="dcs-notifier-test", name="test")
    task = Task.model_validate(
        {
            "id": f"dcs-notifier-test-{int(now.timestamp())}",
            "name": "masterStandbySwapJob",
            "status": "SUCCESS",
            "user_name": "dcs-notifier send-test",
            "created_at": format_api_time(now - timedelta(seconds=4)),
            "updated_at": format_api_time(now),
        }
    )
    event = Event(
        id=event_id(inst.id, task.id, EventType.SUCCEEDED, task.status),
        type=EventType.SUCCEEDED,
        project_id=spec.project_id,
        region=spec.region,
        instance=InstanceRef(id=inst.id, name=inst.name, labels=inst.labels),
        task=task,
        previous_status="RUNNING",
        detected_at=now,
    )
    return Notification(event=event, channel=channel, rule="send-test")


async def _send_test(config: Config, channel_name: str) -> int:
    if channel_name not in config.channels:
        known = ", ".join(sorted(config.channels))
        print(f"unknown channel {channel_name!r} (known: {known})", file=sys.stderr)
        return 2
    channel = build_channel(channel_name, config.channels[channel_name])
    notification = test_notification(config, channel_name, datetime.now(UTC))
    try:
        # The same retry loop as real deliveries, without the outbox.
        error = await send_with_retries(channel, notification, config.delivery, asyncio.Event())
    finally:
        await channel.aclose()
    if error is not None:
        say(f"FAILED {error}", err=True)
        return 1
    print(f"test notification {notification.event.id} delivered to {channel_name}")
    return 0


async def _list_instances(config: Config) -> int:
    cloud = Cloud(config)
    failed = 0
    try:
        for spec in config.projects():
            try:
                instances = await cloud.clients[spec.project_id].list_instances()
            except DcsApiError as exc:
                say(f"error: project {spec.project_id}: {exc}", err=True)
                failed += 1
                continue
            print(f"# account {spec.account}, region {spec.region}, project {spec.project_id}")
            print("instances:")
            for inst in instances:
                details = ", ".join(
                    str(inst[k]) for k in ("status", "engine", "engine_version", "spec_code") if inst.get(k)
                )
                tags = tags_of(inst)
                if tags:
                    details += " tags " + ", ".join(f"{k}={v}" for k, v in sorted(tags.items()))
                name = json.dumps(inst.get("name", ""))
                say(f'  - {{id: "{inst.get("instance_id")}", name: {name}}}  # {details}')
    finally:
        await cloud.aclose()
    return 1 if failed else 0


async def _health(config: Config) -> int:
    store = open_store(config)
    try:
        beat = await store.last_heartbeat()
    except StateStoreError as exc:
        say(f"unhealthy: {exc}", err=True)
        return 1
    finally:
        await store.redis.aclose()
    if beat is None:
        print("unhealthy: no recent heartbeat (is the daemon running?)", file=sys.stderr)
        return 1
    print(f"healthy: last heartbeat {beat}")
    return 0


async def _replay(config: Config, store: StateStore, letters: list[DeadLetter]) -> int:
    """Deliver dead letters directly (not through the outbox, so never racing a running daemon).

    Delivered → logged as delivered and removed; refused again for a retryable reason → re-queued
    for the daemon; refused for good → left in dead letters, with the reason printed.
    """
    failed = 0
    built: dict[str, Channel] = {}
    policy = config.delivery.model_copy(update={"max_attempts": config.delivery.once_attempts})
    try:
        for d in letters:
            n = d.notification
            if n is None:
                print(f"{d.entry_id}: unreadable, cannot be replayed (purge it)", file=sys.stderr)
                failed += 1
                continue
            if d.channel not in config.channels:
                print(
                    f"{d.entry_id}: channel {d.channel!r} is no longer in the config; kept", file=sys.stderr
                )
                failed += 1
                continue
            if d.channel not in built:
                built[d.channel] = build_channel(d.channel, config.channels[d.channel])
            channel = built[d.channel]
            error = await send_with_retries(channel, n, policy, asyncio.Event())
            if channel.rate:
                await asyncio.sleep(1.0 / channel.rate)  # the channel's pace between replayed messages
            if error is None:
                await store.resolve_dead(d)
                print(f"{d.entry_id}: delivered to {d.channel}")
            elif error.retryable:
                await store.requeue_dead([d])
                say(f"{d.entry_id}: {d.channel} still failing ({error}); re-queued for the daemon")
            else:
                failed += 1
                say(f"{d.entry_id}: refused again by {d.channel}: {error}; kept", err=True)
    finally:
        for ch in built.values():
            await ch.aclose()
    return 1 if failed else 0


async def _dead_letters(config: Config, args: argparse.Namespace) -> int:
    store = open_store(config)
    # On a Redis Cluster each channel has its own dead-letter stream: the config's channels, plus any
    # other stream the store finds (a SCAN of every primary), e.g. of a channel since removed.
    channels = list(config.channels)
    try:
        if args.action == "list":
            letters = await store.dead_letters(channels=channels)
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
            print(f"purged {await store.purge_dead(channels=channels)} dead letter(s)")
            return 0
        if not args.ids and not args.all:
            print(
                "name the dead letters to replay (ids from 'dead-letters list') or pass --all",
                file=sys.stderr,
            )
            return 2
        letters = await store.select_dead(None if args.all else args.ids, channels=channels)
        if args.no_deliver:
            print(
                f"re-queued {len(await store.requeue_dead(letters))} dead letter(s); the daemon delivers them"
            )
            return 0
        return await _replay(config, store, letters)
    except StateStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.redis.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from notifier.devtools.demo import run_demo

            configure_logging(args.log_level)
            return asyncio.run(run_demo(redis_url=args.redis_url, duration=args.duration, speed=args.speed))
        if args.command == "check-config":
            return cmd_check_config(args)
        config = _load(args)
        if args.command == "run":
            return run_fast(_run(config))
        if args.command == "once":
            return run_fast(_once(config))
        if args.command == "send-test":
            return asyncio.run(_send_test(config, args.channel))
        if args.command == "list-instances":
            return asyncio.run(_list_instances(config))
        if args.command == "health":
            return asyncio.run(_health(config))
        if args.command == "dead-letters":
            return asyncio.run(_dead_letters(config, args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
