"""``dcs-notifier demo``: the whole pipeline on one machine, no cloud account needed.

Starts the DCS simulator playing the built-in scenario (a switchover, a scale-up, a whitelist change,
public access on, a failed port change), a local Slack stand-in and a local webhook receiver, and runs
the real daemon against them with the embedded config below. Each notification is printed as the
stand-ins receive it: the Slack channel as a person would see it (a new card in full, then its edits and
thread replies under it), the webhook with its signature verified.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import secrets
import signal
import sys
from collections import Counter
from typing import Any

import redis.asyncio as aioredis

from notifier.app import Daemon
from notifier.config.load import parse_config
from notifier.devtools.simulator import Scenario, Simulator, default_demo_scenario, install_instances
from notifier.devtools.simulator.scenario import AZ_FLEET
from notifier.devtools.standins import RecordedRequest
from notifier.devtools.standins.slack import Change, Message, SlackStandIn
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.store.connect import connect_redis

#: The embedded default config; ${...} are filled with the addresses of the local stand-ins, and
#: __INSTANCES__ with the scenario's instances (labelled by DEMO_LABELS, for the rules below).
DEMO_CONFIG = """
cloud:
  region: cn-north-4
  endpoint: "${SIM_URL}"
  ces_endpoint: "${SIM_URL}"
  project_id: demo-project
  ak: "${DEMO_AK}"
  sk: "${DEMO_SK}"
instances:
__INSTANCES__
poll: {interval: 1, baseline_grace: 900}
cloud_eye: {enabled: true, interval: 1}
redis: {url: "${DEMO_REDIS_URL}", key_prefix: "${DEMO_PREFIX}"}
channels:
  oncall: {type: slack, token: "${SLACK_TOKEN}", channel: "#oncall", base_url: "${SLACK_API}", rate: 10}
  audit: {type: webhook, url: "${WEBHOOK_URL}", secret: "${WEBHOOK_SECRET}", headers: {X-Team: db}}
rules:
  - {name: switchovers, tasks: [masterStandbySwapJob], events: [task.started, task.succeeded, task.failed],
     channels: [oncall, audit]}
  - {name: prod-changes, labels: {env: prod}, events: [task.started, task.succeeded, task.failed],
     channels: [oncall]}
  - {name: failures, events: [task.failed], channels: [oncall], mention: ["<!subteam^S0DBAONCALL>"]}
  - {name: failovers, events: [instance.failover, node.abnormal, node.recovered], channels: [oncall],
     mention: ["<!subteam^S0DBAONCALL>"], mention_on: [instance.failover, node.abnormal]}
  - {name: stuck, events: [task.stuck], channels: [oncall], mention: ["<!subteam^S0DBAONCALL>"]}
  - {name: everything, tasks: ["*"], channels: [audit]}
delivery: {max_attempts: 3, backoff_initial: 0.2, backoff_max: 2, group_wait: "${DEMO_GROUP_WAIT}"}
# Short limits, for the demo's short scenario (the defaults are minutes: README, Stuck tasks).
watchdog: {AddReplica: "${DEMO_STUCK_AFTER}"}
"""

DEMO_LABELS = {"orders-cache": "prod", "sessions-cache": "prod", "catalog-cache": "staging"} | {
    name: "prod" for _, name in AZ_FLEET
}


def demo_config_text(scenario: Scenario) -> str:
    lines = [
        f"  - {{id: {i.instance_id}, name: {i.name}, labels: {{env: {DEMO_LABELS.get(i.name, 'demo')}}}}}"
        for i in scenario.instances
    ]
    return DEMO_CONFIG.replace("__INSTANCES__", "\n".join(lines))


_MRKDWN = re.compile(r"<!date\^\d+\^[^|]*\|([^>]*)>|<([^|>]+)\|([^>]+)>|[*`]")
_EMOJI = {
    ":arrows_counterclockwise:": "🔄",
    ":hourglass_flowing_sand:": "⏳",
    ":white_check_mark:": "✅",
    ":x:": "❌",
    ":information_source:": "ℹ️",
    ":rotating_light:": "🚨",
    ":large_green_circle:": "🟢",
    ":warning:": "⚠️",
    ":twisted_rightwards_arrows:": "🔀",
    ":repeat:": "🔁",
    ":eye:": "👁",
    ":wastebasket:": "🗑",
}


def _plain(text: str) -> str:
    """Slack mrkdwn → terminal text (dates to their fallback, links to their label, no emphasis)."""

    def repl(m: re.Match[str]) -> str:
        return m.group(1) or m.group(3) or ""

    text = _MRKDWN.sub(repl, text).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    for code, char in _EMOJI.items():
        text = text.replace(code, char)
    return text


def render_slack(payload: Any) -> str:
    """A Slack Block Kit message as lines of text, as a person would read it in the channel."""
    lines: list[str] = []
    for block in payload.get("blocks", []) if isinstance(payload, dict) else []:
        kind = block.get("type")
        if kind == "header":
            lines.append(_plain(block["text"]["text"]))
        elif kind == "section":
            if block.get("text"):
                lines.extend("  " + _plain(line) for line in block["text"]["text"].splitlines())
            for f in block.get("fields", []):
                label, _, value = _plain(f["text"]).partition("\n")
                lines.append(f"  {label}: {value.replace(chr(10), ' ')}")
        elif kind == "context":
            lines.append("  " + " · ".join(_plain(e.get("text", "")) for e in block.get("elements", [])))
    if not lines and isinstance(payload, dict):
        lines.append(_plain(str(payload.get("text", ""))))
    return "\n".join(lines)


def _print(text: str) -> None:
    print(text, flush=True)


def _fields(blocks: list[Any] | None) -> dict[str, str]:
    """The fields of a Block Kit message's sections: label → value, as plain one-line text."""
    fields: dict[str, str] = {}
    for block in blocks or []:
        for f in block.get("fields", []) if block.get("type") == "section" else []:
            label, _, value = _plain(f.get("text", "")).partition("\n")
            fields[label] = value.replace("\n", " ")
    return fields


class SlackPrinter:
    """Prints a Slack channel as a person watching it would see it (the stand-in's ``on_change``): a new card
    once, in full; each ``chat.update`` as an edit of that card (what changed); each thread reply indented
    under its card. Works alike for incoming-webhook posts (every post a new card) and bot-token calls."""

    def __init__(self) -> None:
        self.numbers: dict[tuple[str, str], int] = {}
        self.counts: Counter[str] = Counter()

    def __call__(self, change: Change) -> None:
        m = change.message
        self.counts[change.kind] += 1
        if change.kind == "posted":
            number = self.numbers[m.channel, m.ts] = len(self.numbers) + 1
            first, *rest = render_slack(_payload(m.text, m.blocks)).split("\n")
            _print("\n".join([f"\n[slack → {change.channel_label}] {first}  (card {number})", *rest]))
            return
        card = self._card(m)
        if m.thread_ts is not None:
            lines = render_slack(_payload(m.text, m.blocks)).split("\n")
            if change.kind == "replied":
                also = " (also sent to the channel)" if m.reply_broadcast else ""
                head = f"    ↳ thread (card {card}): {lines[0]}{also}"
            elif change.kind == "updated":
                head = f"    ↳ ✎ thread reply (card {card}) now: {lines[0]}"
            else:
                head, lines = f"    ↳ ✗ thread reply (card {card}) deleted", [""]
            _print("\n".join([head, *("      " + line.strip() for line in lines[1:])]))
            return
        now = _fields(m.blocks)
        label = " · ".join(v.split(" (")[0] for k, v in now.items() if k in ("Instance", "Task") and v)
        header = render_slack(_payload(m.text, m.blocks)).split("\n")[0]
        title = f"card {card} ({label or header})"
        if change.kind == "deleted":
            _print(f"  ✗ {title} deleted" + (" by a person" if change.by == "person" else ""))
            return
        before = _fields(m.edits[-1].blocks) if m.edits else {}
        changed = [f"{k}: {v}" for k, v in now.items() if before.get(k) != v]
        _print(f"  ✎ {title} now: {header}" + (" — " + ", ".join(changed) if changed else ""))

    def _card(self, m: Message) -> int:
        key = (m.channel, m.thread_ts or m.ts)
        if key not in self.numbers:  # posted before the printer was listening
            self.numbers[key] = len(self.numbers) + 1
        return self.numbers[key]

    def summary(self) -> str:
        c = self.counts
        return (
            f"{c['posted']} Slack card(s), {c['updated']} edit(s), {c['replied']} thread repl(ies), "
            f"{c['deleted']} deletion(s)"
        )


def _payload(text: str, blocks: list[Any] | None) -> dict[str, Any]:
    return {"text": text, "blocks": blocks or []}


def _on_webhook(req: RecordedRequest) -> None:
    body = req.json if isinstance(req.json, dict) else {}
    data = body.get("data", {})
    check = "signature verified ✓" if req.verified else "SIGNATURE INVALID ✗"
    _print(
        f"\n[webhook → audit] {body.get('type')}  {data.get('summary')}\n"
        f"  webhook-id {req.headers.get('webhook-id')}  rule {data.get('rule')}  {check}"
    )


def _embedded_redis() -> aioredis.Redis:
    try:
        import fakeredis
    except ImportError:
        raise SystemExit(
            "the embedded store needs fakeredis: pip install 'dcs-notifier[demo]' (or pass --redis-url)"
        ) from None
    client: aioredis.Redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    return client


async def run_demo(redis_url: str | None = None, duration: float = 30.0, speed: float = 1.0) -> int:
    ak, sk = "DEMO" + secrets.token_hex(8).upper(), secrets.token_urlsafe(24)
    webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    scenario = default_demo_scenario()
    sim = Simulator(project_id="demo-project", credentials={ak: sk})
    install_instances(sim, scenario)
    printer = SlackPrinter()
    # The bot token's living cards land in the "#oncall" the config names (incoming-webhook posts would too).
    slack = SlackStandIn(webhook_channel="oncall", on_change=printer)
    receiver = WebhookReceiver(secret=webhook_secret, on_message=_on_webhook)
    async with sim, slack, receiver:
        env = {
            "SIM_URL": str(sim.base_url),
            "DEMO_AK": ak,
            "DEMO_SK": sk,
            "SLACK_TOKEN": "xoxb-demo-" + secrets.token_hex(8),
            "SLACK_API": slack.api_base_url,
            "WEBHOOK_URL": receiver.url,
            "WEBHOOK_SECRET": webhook_secret,
            "DEMO_REDIS_URL": redis_url or "redis://embedded/0",
            "DEMO_PREFIX": "dcsn-demo-" + secrets.token_hex(4),
            # Scenario seconds, played ``speed`` times faster: a group waits 2 of them for its members,
            # and the replica addition is stuck after 6.
            "DEMO_GROUP_WAIT": f"{2 / speed:.3g}",
            "DEMO_STUCK_AFTER": f"{6 / speed:.3g}",
        }
        config = parse_config(demo_config_text(scenario), "<embedded demo config>", env)
        client = connect_redis(redis_url) if redis_url else _embedded_redis()
        store = f"Redis at {redis_url.split('@')[-1]}" if redis_url else "the embedded in-process store"
        _print(
            f"dcs-notifier demo: DCS simulator on {env['SIM_URL']}, Slack stand-in and webhook receiver on "
            f"127.0.0.1, state in {store}.\nPlaying {len(scenario.steps)} task steps on "
            f"{len(scenario.instances)} instances for {duration:g} s (Ctrl-C to stop)..."
        )
        daemon = Daemon(config, redis_client=client)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, daemon.request_stop)
        loop.call_later(duration, daemon.request_stop)
        sim.play(scenario, speed=speed)
        try:
            await daemon.run()
        finally:
            await daemon.aclose()
            if redis_url:  # leave the user's Redis as it was
                keys = [k async for k in client.scan_iter(match=f"{env['DEMO_PREFIX']}*")]
                if keys:
                    await client.delete(*keys)
            await client.aclose()
    verified = sum(1 for r in receiver.requests if r.verified)
    _print(
        f"\nDone: {printer.summary()} in {len(slack.requests)} Slack request(s), "
        f"{len(receiver.requests)} webhook(s) "
        f"({verified} with a verified signature)."
    )
    return 0 if slack.requests and verified == len(receiver.requests) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(run_demo()))
