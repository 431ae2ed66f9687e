"""Issue 14: ``logging.format: json`` / ``--log-format json`` — one JSON object per line, with stable keys, the
context a record carries, its traceback as a field, and the same redaction and caps as the text format —
and a persistent Redis refusal logged once per episode, seen through the real daemon (``dcs-notifier run``
as a subprocess against the simulator, stand-ins and a redis-server of the test's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import io
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from logging import DEBUG, INFO, WARNING
from pathlib import Path
from typing import Any

import pytest
import redis

from notifier.cli import _load, build_parser
from notifier.config.load import parse_config
from notifier.devtools.simulator import Simulator
from notifier.devtools.standins.slack import SlackStandIn
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.logsetup import (
    LOG_FORMAT,
    JsonFormatter,
    RedactingFormatter,
    bind,
    configure_logging,
)
from notifier.redaction import MESSAGE_LIMIT
from tests.conftest import AK, ORDERS, PROJECT_ID, SK, WEBHOOK_SECRET
from tests.support.observe import polls_of
from tests.support.redis_server import RedisServer
from tests.support.wait import until

KEYS = ("ts", "level", "logger", "msg")

# Every kind of secret a config holds.
SECURITY_TOKEN = "sts-EXAMPLE-9c1f0b2e7d4a"
IAM_PASSWORD = "iam-pa55-EXAMPLE-w0rd"
SLACK_TOKEN = "xoxb-1111-2222-s3cr3tT0k3nValue"
WEBHOOK_PATH = "T0SECRET/B0SECRET/s3cr3tW3bh00kPathValue"
REDIS_PASSWORD = "r3dis-pa55-EXAMPLE"
PROXY_PASSWORD = "pr0xy-pa55-EXAMPLE"
AUTH_HEADER = "Bearer hdr-t0ken-EXAMPLE-77"

FLEET = f"""
cloud:
  - name: keys
    credentials: {{ak: "{AK}", sk: "{SK}", security_token: "{SECURITY_TOKEN}"}}
    projects: [{{project_id: p1, instances: [{{id: i1}}]}}]
  - name: iam
    credentials: {{type: iam, domain: acme, user: reader, password: "{IAM_PASSWORD}"}}
    projects: [{{project_id: p2, instances: [{{id: i2}}]}}]
api: {{proxy: "http://squid:{PROXY_PASSWORD}@proxy.example.com:3128"}}
redis: {{url: "redis://:{REDIS_PASSWORD}@127.0.0.1:1/0"}}
channels:
  bot: {{type: slack, token: "{SLACK_TOKEN}", channel: "#ops"}}
  hook: {{type: slack, webhook_url: "https://hooks.slack.com/services/{WEBHOOK_PATH}"}}
  audit:
    type: webhook
    url: "https://audit.example.com/hooks/aud1t-s3cret-path"
    secret: "{WEBHOOK_SECRET}"
    headers: {{Authorization: "{AUTH_HEADER}", X-Team: db}}
"""
#: What each kind is, as a log line may quote it.
SECRET_KINDS = {
    "ak": AK,
    "sk": SK,
    "security token": SECURITY_TOKEN,
    "iam password": IAM_PASSWORD,
    "slack token": SLACK_TOKEN,
    "slack webhook url": f"https://hooks.slack.com/services/{WEBHOOK_PATH}",
    "webhook url": "https://audit.example.com/hooks/aud1t-s3cret-path",
    "webhook secret": WEBHOOK_SECRET,
    "webhook header": AUTH_HEADER,
    "redis url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0",
    "redis password": REDIS_PASSWORD,
    "proxy password": PROXY_PASSWORD,
}


def capture(fmt: str, secrets: list[str], level: str = "DEBUG") -> io.StringIO:
    """configure_logging as the CLI calls it, writing to a string instead of stderr."""
    configure_logging(level, secrets, "json" if fmt == "json" else "text")
    [handler] = logging.getLogger().handlers
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    handler.setStream(stream)
    return stream


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as JSON: each must be one object with the stable keys."""
    assert text.endswith("\n")
    records = []
    for line in text.removesuffix("\n").split("\n"):
        record = json.loads(line)
        assert isinstance(record, dict) and all(isinstance(record.get(k), str) for k in KEYS), line
        records.append(record)
    # No reader splits a line anywhere else (str.splitlines also breaks at NEL, U+2028...).
    assert len(text.splitlines()) == len(records)
    return records


# -- the format ---------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("restore_root_logging")
def test_every_line_is_one_json_object_with_the_stable_keys_and_the_message_as_it_was() -> None:
    stream = capture("json", [])
    log = logging.getLogger("notifier.dcs.client")
    odd = 'DCS.4999 "quoted" \\ back\nslash\r\x1b[31m\x85 nel \u2028 ls \u2029 ps \x7f del; 订单缓存 ✓'
    before = datetime.now(UTC)
    log.warning("DCS API error for instance %s: %s", "orders", odd)
    log.info("plain")
    log.debug("%d%%", 5)
    records = json_lines(stream.getvalue())
    assert [(r["level"], r["logger"]) for r in records] == [
        ("WARNING", "notifier.dcs.client"),
        ("INFO", "notifier.dcs.client"),
        ("DEBUG", "notifier.dcs.client"),
    ]
    assert [r["msg"] for r in records] == [f"DCS API error for instance orders: {odd}", "plain", "5%"]
    assert all(list(r) == list(KEYS) for r in records)  # nothing else when the record carries nothing
    ts = records[0]["ts"]
    assert ts.endswith("Z") and len(ts) == len("2025-01-01T00:00:00.000Z")
    stamp = datetime.fromisoformat(ts)
    assert stamp.utcoffset() == timedelta(0)
    assert abs((stamp - before).total_seconds()) < 60
    assert stream.getvalue().isascii() is False  # readable: UTF-8 text stays as it is...
    for raw in ("\x85", "\u2028", "\u2029", "\x7f", "\x1b", "\r"):
        assert raw not in stream.getvalue()  # ...but nothing a reader could take for a line break


@pytest.mark.usefixtures("restore_root_logging")
def test_an_exception_and_a_stack_are_fields_of_the_records_one_line() -> None:
    stream = capture("json", [])
    log = logging.getLogger("notifier.delivery.worker")
    try:
        raise ValueError("boom\nwith a second line")
    except ValueError:
        log.exception("delivery worker for %s failed unexpectedly", "audit")
    log.info("where am I", stack_info=True)
    failed, stacked = json_lines(stream.getvalue())
    assert failed["msg"] == "delivery worker for audit failed unexpectedly"
    assert failed["level"] == "ERROR"
    assert failed["exc"].startswith("Traceback (most recent call last):\n")
    assert failed["exc"].endswith("ValueError: boom\nwith a second line")
    assert "stack" not in failed
    assert stacked["stack"].startswith("Stack (most recent call last):\n") and "exc" not in stacked


@pytest.mark.usefixtures("restore_root_logging")
def test_the_context_a_record_carries_extra_or_bound_is_a_key_of_its_own() -> None:
    stream = capture("json", [])
    log = logging.getLogger("notifier.delivery.worker")

    def in_a_replica() -> None:
        bind(replica="replica-a")
        log.info(
            "delivered",
            extra={"channel": "audit", "event_id": "e1", "instance": ORDERS, "project": PROJECT_ID},
        )
        log.error("poll failed", extra={"reason": "auth", "replica": "given"})  # the record's own wins
        bind(replica=None)
        log.info("no replica")

    contextvars.copy_context().run(in_a_replica)
    log.info("outside")
    delivered, failed, unbound, outside = json_lines(stream.getvalue())
    assert delivered == delivered | {
        "channel": "audit",
        "event_id": "e1",
        "instance": ORDERS,
        "project": PROJECT_ID,
        "replica": "replica-a",
    }
    assert list(delivered)[4:] == ["instance", "project", "channel", "event_id", "replica"]  # a fixed order
    assert (failed["reason"], failed["replica"]) == ("auth", "given")
    assert "replica" not in unbound and "replica" not in outside


def secrets_of_every_kind() -> list[str]:
    config = parse_config(FLEET, "fleet.yaml", {})
    secrets = config.secret_values()
    for kind, value in SECRET_KINDS.items():
        assert value in secrets, kind
    return secrets


@pytest.mark.usefixtures("restore_root_logging")
@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("kind", list(SECRET_KINDS))
def test_every_secret_kind_of_the_config_is_masked_in_both_formats(fmt: str, kind: str) -> None:
    secret = SECRET_KINDS[kind]
    stream = capture(fmt, secrets_of_every_kind())
    log = logging.getLogger("notifier.test")
    log.warning("as it is: %s", secret)
    log.warning("between lines:\n%s\r\n", secret)
    log.warning("in a URL: https://user:%s@example.com/path?x=%s", secret, secret)
    log.warning("in a context field", extra={"channel": secret, "reason": f"auth {secret}"})
    try:
        raise RuntimeError(f"refused {secret}")
    except RuntimeError:
        log.exception("failed with %r", secret)
    # A cut (the size cap) falling inside the secret moves before it: no piece of it is left.
    half = len(secret) // 2
    log.warning("%s", "." * (MESSAGE_LIMIT - half) + secret + "." * 100)
    out = stream.getvalue()
    assert secret not in out
    assert "." + secret[:half] not in out
    assert out.count("****") >= 6
    if fmt == "json":
        records = json_lines(out)
        assert len(records) == 6
        for record in records:
            for value in record.values():
                assert secret not in value
        assert records[3]["channel"] == "****"
        assert "characters cut]" in records[5]["msg"]
    else:
        assert len([line for line in out.split("\n") if line and not line.startswith("  | ")]) == 6


def test_a_secret_seen_only_once_escaped_or_spanning_two_fields_is_masked_and_the_line_still_parses() -> None:
    # A secret that holds what the JSON escape of a newline looks like, and a message holding a newline.
    escaped_like = "ab\\ncd-EXAMPLE"
    spanning = 'x", "inst'  # only JSON's own syntax between two fields makes it
    formatter = JsonFormatter([escaped_like, spanning])

    def line(msg: str, **extra: str) -> dict[str, Any]:
        record = logging.makeLogRecord({"name": "notifier.t", "levelname": "INFO", "msg": msg, **extra})
        text = formatter.format(record)
        assert escaped_like not in text and spanning not in text
        [parsed] = json_lines(text + "\n")
        return parsed

    assert line("seen: ab\ncd-EXAMPLE!")["msg"] == "seen: ****!"
    withheld = line("ends with x", instance="i1")
    assert withheld["msg"] == "[record withheld: a secret spanned its fields]"


def test_the_text_formatter_is_unchanged_one_line_per_record_with_continuations() -> None:
    formatter = RedactingFormatter(LOG_FORMAT, [SLACK_TOKEN])
    try:
        raise ValueError(f"x {SLACK_TOKEN}")
    except ValueError:
        record = logging.LogRecord("notifier", logging.ERROR, __file__, 1, "a\nb", None, sys.exc_info())
    text = formatter.format(record)
    first, *rest = text.split("\n")
    assert first.endswith("ERROR   notifier: a\\nb")
    assert rest and all(line.startswith("  | ") for line in rest)
    assert SLACK_TOKEN not in text and rest[-1] == "  | ValueError: x ****"


# -- choosing it: the config's logging section, the CLI's flags ---------------------------------------------


SMALL = f"""
cloud: {{project_id: p1, ak: "{AK}", sk: "{SK}"}}
instances: [{{id: i1}}]
channels: {{audit: {{type: webhook, url: "https://audit.example.com/h"}}}}
"""


def test_the_logging_section_defaults_to_text_at_info_and_refuses_an_unknown_format() -> None:
    assert parse_config(SMALL, "c.yaml", {}).logging.model_dump() == {"format": "text", "level": "INFO"}
    chosen = parse_config(SMALL + "logging: {format: json, level: debug}\n", "c.yaml", {})
    assert (chosen.logging.format, chosen.logging.level) == ("json", "DEBUG")
    with pytest.raises(Exception, match=r"logging\.format: Input should be 'text' or 'json'"):
        parse_config(SMALL + "logging: {format: jsn}\n", "c.yaml", {})


@pytest.mark.usefixtures("restore_root_logging")
@pytest.mark.parametrize(
    ("written", "argv", "expected"),
    [
        ("logging: {format: json, level: warning}\n", ["check-config"], (JsonFormatter, WARNING)),
        ("", ["--log-format", "json", "check-config"], (JsonFormatter, INFO)),
        ("logging: {format: json}\n", ["check-config", "--log-format", "text"], (RedactingFormatter, INFO)),
        ("logging: {level: ERROR}\n", ["--log-level", "DEBUG", "check-config"], (RedactingFormatter, DEBUG)),
    ],
    ids=["config", "flag", "flag-after-the-command-wins", "level-flag-wins"],
)
def test_the_flags_override_the_config(
    tmp_path: Path, written: str, argv: list[str], expected: tuple[type[logging.Formatter], int]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(SMALL + written)
    _load(build_parser().parse_args(["--config", str(path), *argv]))
    [handler] = logging.getLogger().handlers
    assert (type(handler.formatter), logging.getLogger().level) == expected


# -- the daemon ---------------------------------------------------------------------------------------------


class Running:
    """``dcs-notifier`` as a subprocess; its stderr collected line by line as it is written."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode())

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def records(self) -> list[dict[str, Any]]:
        return json_lines(self.text) if self.lines else []

    def messages(self, *words: str) -> list[str]:
        """The messages that mention any of ``words``."""
        return [r["msg"] for r in self.records() if any(w in r["msg"] for w in words)]


@contextlib.asynccontextmanager
async def dcs_notifier(config: Path, *args: str) -> AsyncIterator[Running]:
    env = {"PATH": os.environ.get("PATH", ""), "DCS_NOTIFIER_CONFIG": str(config), "NO_PROXY": "127.0.0.1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notifier.cli", *args, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, limit=1 << 20,
    )  # fmt: skip
    running = Running(proc)
    try:
        yield running
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
        await asyncio.wait_for(running.reader, 10)
    assert proc.returncode == 0, running.text[-2000:]


def admin(server: RedisServer, password: str | None = None) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, password=password, decode_responses=True)


GHOST = "0f0f0f0f-0000-4000-8000-00000000dead"
IAM_PROJECT = "b5e42dc7-4e0f-4a11-9c5d-7f3b2a1c0e99"
IAM_INSTANCE = "9a8b7c6d-1111-4222-8333-444455556666"
DEAD_PATH = "hooks/d3ad-s3cret-path-EXAMPLE"


async def test_dcs_notifier_run_with_log_format_json_writes_json_lines_only_with_context_and_no_secret(
    sim: Simulator, own_redis: RedisServer, audit: WebhookReceiver, tmp_path: Path
) -> None:
    sim.add_project(IAM_PROJECT)
    sim.add_instance(IAM_INSTANCE, "iam-cache", project_id=IAM_PROJECT)
    sim.add_iam_user("acme", "reader", IAM_PASSWORD, [IAM_PROJECT])
    with admin(own_redis) as r:
        r.config_set("requirepass", REDIS_PASSWORD)
    redis_url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{own_redis.port}/0"
    async with SlackStandIn(token=SLACK_TOKEN, webhook_path=WEBHOOK_PATH) as slack:
        text = f"""
cloud:
  - name: keys
    credentials: {{ak: "{AK}", sk: "{SK}"}}
    projects:
      - project_id: "{PROJECT_ID}"
        endpoint: "{sim.base_url}"
        instances: [{{id: "{ORDERS}", name: orders-cache}}, {{id: "{GHOST}", name: ghost-cache}}]
  - name: iam
    credentials: {{type: iam, domain: acme, user: reader, password: "{IAM_PASSWORD}",
                   iam_endpoint: "{sim.base_url}"}}
    projects:
      - {{project_id: "{IAM_PROJECT}", endpoint: "{sim.base_url}", instances: [{{id: "{IAM_INSTANCE}"}}]}}
poll: {{interval: 0.3}}
redis: {{url: "{redis_url}", key_prefix: j}}
scaling: {{enabled: true, replica: json-r1, shards: 4, lease_ttl: 1}}
channels:
  bot: {{type: slack, token: "{SLACK_TOKEN}", channel: "#ops", base_url: "{slack.api_base_url}", rate: 100}}
  hook: {{type: slack, webhook_url: "{slack.webhook_url}", rate: 100}}
  audit:
    type: webhook
    url: "{audit.url}"
    secret: "{WEBHOOK_SECRET}"
    headers: {{Authorization: "{AUTH_HEADER}"}}
  dead: {{type: webhook, url: "http://127.0.0.1:1/{DEAD_PATH}"}}
delivery: {{max_attempts: 2, backoff_initial: 0.05, backoff_max: 0.1}}
"""
        path = tmp_path / "json.yaml"
        path.write_text(text)
        secrets = parse_config(text, "json.yaml", {}).secret_values()
        async with dcs_notifier(path, "--log-format", "json", "run") as daemon:
            await polls_of(sim, ORDERS, 2, within=20)  # leases taken, baseline done
            tid = sim.start_task(ORDERS, "masterStandbySwapJob")
            await until(lambda: len(audit.payloads) >= 1, 20, "the task's start at the webhook")
            await until(lambda: len(slack.messages) >= 2, 20, "the start in both Slack channels")
            await until(lambda: bool(daemon.messages("to dead letters")), 20, "the dead channel giving up")
            await until(lambda: bool(daemon.messages("poll of ghost-cache failed")), 20, "the ghost")
    records = daemon.records()
    assert records, "the daemon logged nothing"
    assert all(r["replica"] == "json-r1" for r in records), [r for r in records if "replica" not in r][:3]
    [payload] = audit.payloads
    event_id = payload["data"]["event_id"]
    assert payload["data"]["task"]["id"] == tid
    delivered = {r["channel"]: r for r in records if r["msg"].startswith("delivered ")}
    assert set(delivered) == {"audit", "bot", "hook"}
    for line in delivered.values():
        assert (line["event_id"], line["instance"], line["level"]) == (event_id, ORDERS, "INFO")
        assert line["logger"] == "notifier.delivery.worker"
    [buried] = [r for r in records if "to dead letters" in r["msg"]]
    assert (buried["channel"], buried["event_id"], buried["level"]) == ("dead", event_id, "ERROR")
    [ghost] = [r for r in records if r["msg"].startswith("poll of ghost-cache failed")]
    assert (ghost["instance"], ghost["project"], ghost["reason"]) == (GHOST, PROJECT_ID, "not_found")
    out = daemon.text
    for secret in secrets:
        assert secret not in out, secret
    for secret in (REDIS_PASSWORD, DEAD_PATH, "d3ad-s3cret"):
        assert secret not in out


SIMPLE = f"""
cloud: {{endpoint: "${{SIM_URL}}", project_id: "{PROJECT_ID}", ak: "{AK}", sk: "{SK}"}}
instances: [{{id: "{ORDERS}", name: orders-cache}}]
poll: {{interval: 0.2, jitter: 0}}
redis: {{url: "${{REDIS_URL}}", key_prefix: o}}
channels: {{audit: {{type: webhook, url: "${{AUDIT_URL}}", secret: "{WEBHOOK_SECRET}"}}}}
delivery: {{backoff_initial: 0.05, backoff_max: 0.2}}
logging: {{format: json}}
"""


def refused(r: redis.Redis) -> int:
    """Error replies the server has sent (every refused command, every NOAUTH)."""
    stats: Mapping[str, Any] = r.info("stats")  # type: ignore[assignment]
    return int(stats["total_error_replies"])


@pytest.mark.parametrize(
    ("cause", "mentions", "ended"),
    [
        ("oom", ("OutOfMemoryError", "OOM", "maxmemory"), "Redis accepts commands again"),
        ("noauth", ("NOAUTH", "Authentication"), "Redis accepts commands again"),
    ],
)
async def test_a_persistent_redis_refusal_is_logged_once_when_it_starts_and_once_when_it_ends(
    sim: Simulator,
    own_redis: RedisServer,
    audit: WebhookReceiver,
    tmp_path: Path,
    cause: str,
    mentions: tuple[str, ...],
    ended: str,
) -> None:
    """Through ``dcs-notifier run`` with ``logging.format: json`` from the config: dozens of polls, heartbeats
    and delivery passes are refused, and the log says so twice in all."""
    path = tmp_path / "redis.yaml"
    text = SIMPLE.replace("${SIM_URL}", str(sim.base_url)).replace("${AUDIT_URL}", audit.url)
    path.write_text(text.replace("${REDIS_URL}", own_redis.url))
    with admin(own_redis) as r:
        async with dcs_notifier(path, "run") as daemon:
            await polls_of(sim, ORDERS, 2, within=20)
            before = refused(r)
            if cause == "oom":
                r.config_set("maxmemory-policy", "noeviction")
                r.config_set("maxmemory", 1)  # every write that may grow memory is refused
            else:
                r.config_set("requirepass", "now-with-a-password")
                r.client_kill_filter(_type="normal", skipme=True)  # every connection must log in again
            tid = sim.start_task(ORDERS, "masterStandbySwapJob")
            if cause == "oom":  # (without a password, a poll fails at its first Redis call, before the API)
                await polls_of(sim, ORDERS, 5, within=20)
            await until(lambda: refused(r) >= before + 30, 20, "30 refusals: many polls and passes")
            assert audit.payloads == []
            assert len(daemon.messages(*mentions)) == 1, daemon.messages(*mentions)
            if cause == "oom":
                r.config_set("maxmemory", 0)
            else:
                r.config_set("requirepass", "")
            await until(lambda: bool(daemon.messages(ended)), 20, "the end of the episode in the log")
            await until(lambda: len(audit.payloads) >= 1, 20, "the start, once Redis accepts it")
            await polls_of(sim, ORDERS, 5, within=20)
    [payload] = audit.payloads
    assert (payload["type"], payload["data"]["task"]["id"]) == ("task.started", tid)
    records = daemon.records()  # JSON lines only, as the config says
    ends = [r for r in records if ended in r["msg"]]
    complaints = [r for r in records if any(w in r["msg"] for w in mentions) and r not in ends]
    assert len(complaints) == 1, complaints
    assert complaints[0]["level"] == "ERROR" and complaints[0]["logger"] == "notifier.store.link"
    assert len(ends) == 1 and ends[0]["level"] == "INFO"
    assert [r for r in records if r["level"] in ("WARNING", "ERROR")] == complaints
    assert "now-with-a-password" not in daemon.text
