"""The configuration examples in the README and config.example.yaml load as written."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from notifier.cli import build_parser
from notifier.config.load import load_config, parse_config
from notifier.config.models import FileCredentialsConfig, IamCredentialsConfig

ROOT = Path(__file__).resolve().parent.parent
ENV = {
    "CLOUD_SDK_AK": "AKEXAMPLE",
    "CLOUD_SDK_SK": "SKEXAMPLE",
    "PROD_AK": "AKPROD",
    "PROD_SK": "SKPROD",
    "OTHER_AK": "AKOTHER",
    "OTHER_SK": "SKOTHER",
    "IAM_PASSWORD": "pw-EXAMPLE",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/x",
    "SLACK_BOT_TOKEN": "xoxb-EXAMPLE",
    "AUDIT_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
}


README = (ROOT / "README.md").read_text()


def yaml_blocks(text: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.S)


def test_readme_fleet_example_loads() -> None:
    [fleet] = [b for b in yaml_blocks((ROOT / "README.md").read_text()) if "discover: true" in b]
    config = parse_config(
        fleet + 'channels: {ops: {type: webhook, url: "https://ops.example.com/h"}}\n', "README", ENV
    )
    specs = config.projects()
    assert [s.account for s in specs] == ["prod", "prod", "staging", "audit"]
    assert specs[1].endpoint == "https://dcs.ap-southeast-1.myhuaweicloud.com"
    assert specs[0].filter.tags == {"env": "prod", "team": "*"}
    assert isinstance(specs[2].credentials, FileCredentialsConfig)
    assert not isinstance(specs[3].credentials, IamCredentialsConfig)  # the project's own AK/SK win
    assert isinstance(config.cloud[2].credentials, IamCredentialsConfig)


def test_readme_single_project_example_loads() -> None:
    [single] = [
        b for b in yaml_blocks((ROOT / "README.md").read_text()) if "project_id:" in b and "discover" not in b
    ]
    single = single.replace('"whsec_..."', '"${AUDIT_WEBHOOK_SECRET}"')  # the README leaves the secret out
    config = parse_config(single, "README", ENV)
    assert [i.name for i in config.instances] == ["orders-cache"]
    # Copied as it is, it talks to Huawei Cloud, not to a simulator on this machine.
    assert [spec.endpoint for spec in config.projects()] == ["https://dcs.cn-north-4.myhuaweicloud.com"]


def test_config_example_loads() -> None:
    config = load_config(ROOT / "config.example.yaml", ENV)
    assert config.projects()
    # After `pip install`, a Redis on this machine; under compose, the one compose starts.
    assert config.redis.url.get_secret_value() == "redis://127.0.0.1:6379/0"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    url = compose["services"]["notifier"]["environment"]["REDIS_URL"]
    composed = load_config(ROOT / "config.example.yaml", {**ENV, "REDIS_URL": url})
    assert composed.redis.url.get_secret_value() == "redis://redis:6379/0"


def test_every_command_the_readme_shows_parses() -> None:
    commands = re.findall(
        r"^(?:docker compose run --rm notifier|dcs-notifier) ([^#`\n]*?)\s*(?:#|$)", README, re.M
    )
    commands += re.findall(r"^\| `((?:once|check-config|send-test|run|health)[^`]*)` \|", README, re.M)
    assert len(commands) >= 10
    parser = build_parser()
    for command in commands:
        parser.parse_args(
            command.replace("CHANNEL", "oncall").split()
        )  # exits (failing the test) on an unknown command or option
