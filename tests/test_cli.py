"""The real CLI as a subprocess, against the simulator, stand-ins and a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest
import redis
import yaml
from standardwebhooks.webhooks import Webhook

from notifier.cli import build_parser, main
from notifier.devtools.simulator import Simulator
from notifier.devtools.standins.slack import SlackStandIn
from notifier.devtools.standins.webhook import WebhookReceiver
from tests.conftest import AK, ORDERS, PROJECT_ID, SK, WEBHOOK_SECRET

CONFIG = f"""
cloud: {{endpoint: "${{SIM_URL}}", project_id: "{PROJECT_ID}"}}
instances: [{{id: "{ORDERS}", name: orders-cache, labels: {{env: prod}}}}]
poll: {{interval: 0.2}}
redis: {{url: "${{REDIS_URL}}", key_prefix: cli}}
channels:
  oncall: {{type: slack, webhook_url: "${{SLACK_WEBHOOK_URL}}"}}
  audit: {{type: webhook, url: "${{AUDIT_URL}}", secret: "{WEBHOOK_SECRET}"}}
delivery: {{max_attempts: 2, backoff_initial: 0.05, backoff_max: 0.1, group_wait: 0}}
"""


@dataclass
class Cli:
    config: Path
    env: dict[str, str]
    slack: SlackStandIn
    audit: WebhookReceiver

    async def start(self, *args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "notifier.cli", *args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip

    async def run(self, *args: str) -> tuple[int, str, str]:
        proc = await self.start(*args)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def cli_for(text: str, sim: Simulator, redis_url: str, tmp_path: Path) -> AsyncIterator[Cli]:
    """The CLI with config ``text``, the simulator, a Slack stand-in and a webhook receiver."""
    config = tmp_path / "config.yaml"
    config.write_text(text)
    async with SlackStandIn() as slack, WebhookReceiver(secret=WEBHOOK_SECRET) as audit:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "DCS_NOTIFIER_CONFIG": str(config),
            "SIM_URL": str(sim.base_url),
            "REDIS_URL": redis_url,
            "SLACK_WEBHOOK_URL": slack.webhook_url,
            "AUDIT_URL": audit.url,
            "CLOUD_SDK_AK": AK,
            "CLOUD_SDK_SK": SK,
        }
        yield Cli(config, env, slack, audit)


@pytest.fixture
async def cli(sim: Simulator, redis_url: str, tmp_path: Path) -> AsyncIterator[Cli]:
    async with cli_for(CONFIG, sim, redis_url, tmp_path) as c:
        yield c


async def test_once_delivers_signed_webhooks_a_third_party_verifies(cli: Cli, sim: Simulator) -> None:
    sim.start_task(ORDERS, "masterStandbySwapJob")
    code, out, err = await cli.run("once")
    assert code == 0, err
    assert "polled 1 instance(s): 1 event(s), 2 notification(s) delivered" in out
    [req] = cli.audit.requests
    payload = Webhook(WEBHOOK_SECRET).verify(req.body, dict(req.headers))
    assert payload["type"] == "task.started"
    assert payload["data"]["instance"]["name"] == "orders-cache"
    assert len(cli.slack.requests) == 1
    # Nothing new: exit 0, nothing sent.
    code, out, _ = await cli.run("once")
    assert code == 0
    assert "0 event(s)" in out


async def test_once_exits_non_zero_naming_what_failed(cli: Cli, sim: Simulator) -> None:
    sim.start_task(ORDERS, "masterStandbySwapJob")
    cli.env["CLOUD_SDK_SK"] = "wrong"
    code, _, err = await cli.run("once")
    assert code == 1
    assert (
        f"FAILED poll orders-cache ({ORDERS}): DCS API error for instance {ORDERS}, HTTP 401, DCS.1001" in err
    )
    assert SK not in err


async def test_config_flag_wins_over_the_environment(cli: Cli, tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(CONFIG.replace("name: orders-cache", "name: from-the-flag"))
    code, out, err = await cli.run("check-config", "--show", "--config", str(other))
    assert code == 0, err
    assert "name: from-the-flag" in out
    assert f"{other}: OK" in err


async def test_demo_on_the_embedded_store(cli: Cli) -> None:
    """What `make demo` runs: the CLI's demo with no --redis-url, at triple speed."""
    code, out, err = await cli.run("demo", "--duration", "6", "--speed", "3")
    assert code == 0, err
    assert "state in the embedded in-process store" in out
    assert "Master/standby switchover started on orders-cache" in out
    assert "Master/standby switchover succeeded on orders-cache" in out
    assert "SIGNATURE INVALID" not in out


async def test_check_config_masks_secrets(cli: Cli) -> None:
    cli.env["REDIS_URL"] += "?password=redis-sekrit"
    code, out, err = await cli.run("check-config", "--show")
    assert "redis-sekrit" not in out
    assert "password=****" in out
    assert code == 0, err
    for secret in (SK, AK, cli.slack.webhook_url, WEBHOOK_SECRET):
        assert secret not in out + err
    assert "ak: '****'" in out
    assert "http://127.0.0.1:" in out  # the host of the webhook URLs is shown


async def test_broken_config_is_exit_2_naming_file_and_key(cli: Cli) -> None:
    cli.config.write_text(CONFIG.replace("interval: 0.2", "interval: soon"))
    code, _, err = await cli.run("check-config")
    assert code == 2
    assert f"{cli.config}: invalid configuration" in err
    assert "poll.interval: 'soon' is not a duration" in err


async def test_list_instances_prints_config_lines(cli: Cli) -> None:
    code, out, err = await cli.run("list-instances")
    assert code == 0, err
    assert out.splitlines()[:2] == [
        f"# account default, region cn-north-4, project {PROJECT_ID}",
        "instances:",
    ]
    assert f'  - {{id: "{ORDERS}", name: "orders-cache"}}  # RUNNING, Redis' in out
    cli.env["CLOUD_SDK_SK"] = "wrong"
    code, _, err = await cli.run("list-instances")
    assert code == 1
    assert "HTTP 401, DCS.1001" in err


async def test_send_test(cli: Cli) -> None:
    code, out, err = await cli.run("send-test", "audit")
    assert code == 0, err
    assert "delivered to audit" in out
    [req] = cli.audit.requests
    assert json.loads(req.body)["data"]["rule"] == "send-test"
    code, _, err = await cli.run("send-test", "nope")
    assert code == 2
    assert "unknown channel 'nope' (known: audit, oncall)" in err


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_run_stops_cleanly_and_reports_health(
    cli: Cli, sim: Simulator, stop_signal: signal.Signals
) -> None:
    code, _, err = await cli.run("health")
    assert code == 1
    assert "no recent heartbeat" in err
    proc = await cli.start("run")
    try:
        await sim.wait_for(lambda: len(sim.task_requests(ORDERS)) >= 1, within=15)
        sim.start_task(ORDERS, "masterStandbySwapJob")
        await cli.audit.wait_for(1, timeout=15)
        await cli.slack.wait_for(1, timeout=15)
        code, out, _ = await cli.run("health")
        assert code == 0
        assert out.startswith("healthy: last heartbeat 20")
    finally:
        proc.send_signal(stop_signal)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()
    assert "dcs-notifier stopped" in err.decode()


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"dcs-notifier {version('dcs-notifier')}"


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "x.yaml", "--log-level", "DEBUG", "check-config"],
        ["check-config", "--config", "x.yaml", "--log-level", "DEBUG"],
        ["-c", "y.yaml", "check-config", "-c", "x.yaml", "--log-level", "DEBUG"],  # after the command wins
        ["--config", "x.yaml", "dead-letters", "list", "--log-level", "DEBUG"],
    ],
)
def test_config_and_log_level_go_before_or_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.config, args.log_level) == ("x.yaml", "DEBUG")


def test_without_options_the_defaults_hold() -> None:
    args = build_parser().parse_args(["check-config"])
    # The level and format are the config's logging.level and logging.format unless given.
    assert (args.config, args.log_level, args.log_format) == (None, None, None)
    assert build_parser().parse_args(["demo"]).log_level == "WARNING"


HEADERS = '    headers: {X-Team: db, Authorization: "Bearer tok-9f8e7d6c5b4a"}\n'


async def test_check_config_says_a_short_verdict_and_shows_on_request(cli: Cli) -> None:
    rules = "rules: [{name: switchovers, tasks: [masterStandbySwapJob], channels: [oncall]}]\n"
    cli.config.write_text(
        CONFIG.replace(
            'audit: {type: webhook, url: "${AUDIT_URL}", secret: "' + WEBHOOK_SECRET + '"}',
            'audit:\n    type: webhook\n    url: "${AUDIT_URL}"\n' + HEADERS,
        )
        + rules
    )
    code, out, err = await cli.run("check-config")
    assert code == 0, err
    assert out.splitlines() == [
        f"{cli.config}: OK",
        "  1 project in 1 account (region cn-north-4): 1 instance named, 0 discovering",
        "  2 channels: oncall (slack), audit (webhook)",
        "  1 rule: switchovers",
        f"  redis: {cli.env['REDIS_URL']} (key prefix cli)",
        "warning: channels.audit: no rule sends to this channel",
        "1 warning(s)",
        "the resolved config, secrets masked: check-config --show",
    ]
    code, out, err = await cli.run("check-config", "--show")
    assert code == 0, err
    shown = yaml.safe_load(out)  # stdout is the YAML alone; the verdict goes to stderr
    assert shown["channels"]["audit"]["headers"] == {"X-Team": "db", "Authorization": "****"}
    assert f"{cli.config}: OK" in err
    for secret in ("tok-9f8e7d6c5b4a", SK, AK, cli.slack.webhook_url):
        assert secret not in out + err


async def test_missing_credentials_are_an_error_not_a_warning(cli: Cli) -> None:
    del cli.env["CLOUD_SDK_SK"]
    code, out, err = await cli.run("check-config")
    assert code == 2
    assert err.startswith("error: ") and ": cloud.sk: no credentials for project" in err
    assert err.split(": cloud.sk")[0].removeprefix("error: ").endswith(".yaml")  # the file, then the key
    assert "warning" not in err + out


def redis_contents(url: str) -> dict[str, bytes | None]:
    with redis.Redis.from_url(url) as r:
        return {key.decode(): r.dump(key) for key in r.scan_iter()}


DRY_RUN_RULES = "rules: [{name: switchovers, tasks: [masterStandbySwapJob], channels: [oncall]}]\n"


async def test_dry_run_prints_what_would_go_where_and_changes_nothing(
    sim: Simulator, redis_url: str, tmp_path: Path
) -> None:
    async with cli_for(CONFIG + DRY_RUN_RULES, sim, redis_url, tmp_path) as cli:
        swap = sim.start_task(ORDERS, "masterStandbySwapJob")
        code, _, err = await cli.run("once")  # state in Redis: the switchover is known to be running
        assert code == 0, err
        sent = len(cli.slack.requests), len(cli.audit.requests)
        assert sent == (1, 0)
        sim.finish_task(ORDERS, swap)
        sim.start_task(ORDERS, "EXTEND")
        before = redis_contents(redis_url)
        polls = len(sim.task_requests(ORDERS))

        code, out, err = await cli.run("once", "--dry-run")

        assert code == 0, err
        assert len(sim.task_requests(ORDERS)) > polls  # it did poll
        assert "state read from redis://127.0.0.1:" in out
        assert f"orders-cache ({ORDERS}): 2 event(s)" in out  # not a baseline: the stored state was used
        lines = out.splitlines()
        succeeded = next(i for i, s in enumerate(lines) if "task.succeeded  Master/standby" in s)
        assert lines[succeeded + 1] == "    → oncall  (rule switchovers)"
        scale = next(i for i, s in enumerate(lines) if s.startswith("  task.started  Scale"))
        assert lines[scale + 1] == "    → no channel (no rule matches)"
        assert "1 event(s)" not in out
        assert "2 event(s), 1 notification(s) would be sent; none was" in out
        assert (len(cli.slack.requests), len(cli.audit.requests)) == sent
        assert redis_contents(redis_url) == before


async def test_dry_run_without_redis_previews_a_baseline(
    sim: Simulator, redis_url: str, tmp_path: Path
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    async with cli_for(CONFIG, sim, dead, tmp_path) as cli:
        sim.start_task(ORDERS, "masterStandbySwapJob")
        code, out, err = await cli.run("once", "--dry-run")
        assert code == 0, err
        assert "Redis not reachable" in out
        assert f"orders-cache ({ORDERS}) (first poll: baseline): 1 event(s)" in out
        assert "    → oncall  (no rules: every channel)" in out
        assert "    → audit  (no rules: every channel)" in out
        assert not cli.slack.requests
        assert not cli.audit.requests
    assert redis_contents(redis_url) == {}


async def test_the_daemon_never_imports_the_dev_tools(cli: Cli, sim: Simulator) -> None:
    """`dcs-notifier run` (what its console script runs) loads no simulator, stand-in or demo module."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-X", "importtime", "-c", "import sys; from notifier.cli import main; sys.exit(main())",
        "run", env=cli.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await sim.wait_for(lambda: len(sim.task_requests(ORDERS)) >= 1, within=15)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()[-2000:]
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in err.decode().splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    assert {"notifier.cli", "notifier.app"} <= imported  # the parse sees the daemon's modules
    assert sorted(m for m in imported if m.startswith("notifier.devtools")) == []
