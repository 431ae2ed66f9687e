from __future__ import annotations

from pathlib import Path

import pytest

from notifier.config import (
    AkSkCredentials,
    Config,
    load_config,
    parse_config,
    require_credentials,
    secret_values,
)
from notifier.errors import ConfigError

ISSUE_EXAMPLE = """
cloud: {region: cn-north-4, endpoint: "http://127.0.0.1:8080", project_id: "p1", ak: "${CLOUD_SDK_AK}", sk: "${CLOUD_SDK_SK}"}
instances: [{id: "5560df16-cebf", name: orders-cache, labels: {env: prod}}]
poll: {interval: 30, baseline_grace: 900}
redis: {url: "redis://localhost:6379/0"}
channels:
  oncall: {type: slack, webhook_url: "${SLACK_WEBHOOK_URL}"}
  bot: {type: slack, token: "xoxb-123-secret", channel: "#ops"}
  audit:  {type: webhook, url: "https://audit.example.com/hook", secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", headers: {X-Team: db}}
rules:
  - {name: switchovers, tasks: [masterStandbySwapJob], events: [task.started, task.succeeded, task.failed], channels: [oncall, audit]}
  - {name: everything, tasks: ["*"], channels: [audit]}
"""
def aksk(cfg: Config) -> tuple[str, str]:
    creds = cfg.projects()[0].credentials
    assert isinstance(creds, AkSkCredentials) and creds.ak is not None and creds.sk is not None
    return creds.ak.get_secret_value(), creds.sk.get_secret_value()


ENV = {
    "CLOUD_SDK_AK": "AKEXAMPLE123",
    "CLOUD_SDK_SK": "SKEXAMPLEsecret456",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/sekrit",
}


def test_issue_example_loads_as_written() -> None:
    cfg = parse_config(ISSUE_EXAMPLE, "config.yaml", ENV)
    assert cfg.projects()[0].endpoint == "http://127.0.0.1:8080"
    assert aksk(cfg) == ("AKEXAMPLE123", "SKEXAMPLEsecret456")
    assert cfg.instances[0].labels == {"env": "prod"}
    assert [r.name for r in cfg.rules] == ["switchovers", "everything"]
    assert cfg.poll.interval == 30 and cfg.poll.baseline_grace == 900
    secrets = secret_values(cfg)
    for s in (
        "AKEXAMPLE123",
        "SKEXAMPLEsecret456",
        "https://hooks.slack.com/services/T0/B0/sekrit",
        "xoxb-123-secret",
    ):
        assert s in secrets
    # No secret in the repr of the whole config.
    text = repr(cfg)
    assert "SKEXAMPLEsecret456" not in text and "sekrit" not in text and "xoxb-123-secret" not in text


def test_endpoint_defaults_from_region_and_credentials_from_env() -> None:
    text = (
        ISSUE_EXAMPLE.replace('endpoint: "http://127.0.0.1:8080", ', "")
        .replace('ak: "${CLOUD_SDK_AK}", sk: "${CLOUD_SDK_SK}"', "region: ap-southeast-1")
        .replace("region: cn-north-4, ", "")
    )
    cfg = parse_config(text, "c.yaml", ENV)
    assert cfg.projects()[0].endpoint == "https://dcs.ap-southeast-1.myhuaweicloud.com"
    assert aksk(cfg) == ("AKEXAMPLE123", "SKEXAMPLEsecret456")


def test_missing_env_var_names_file_and_key() -> None:
    env = {k: v for k, v in ENV.items() if k != "SLACK_WEBHOOK_URL"}
    with pytest.raises(
        ConfigError,
        match=r"config\.yaml: channels\.oncall\.webhook_url: environment variable "
        r"SLACK_WEBHOOK_URL is not set",
    ):
        parse_config(ISSUE_EXAMPLE, "config.yaml", env)


def test_default_in_interpolation() -> None:
    text = ISSUE_EXAMPLE.replace("redis://localhost:6379/0", "${REDIS_URL:-redis://127.0.0.1:7000/1}")
    assert parse_config(text, "c", ENV).redis.url.get_secret_value() == "redis://127.0.0.1:7000/1"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("interval: 30", "interval: -1"), r"poll\.interval: Input should be greater than 0"),
        (
            ("channels: [oncall, audit]", "channels: [oncall, nope]"),
            r"rules\.0\.channels: unknown channel 'nope'",
        ),
        (("{type: slack, webhook_url", "{type: carrier-pigeon, webhook_url"), r"channels\.oncall: "),
        (('project_id: "p1"', 'project_id: ""'), r"cloud\.project_id"),
        (("poll: {", "poll: {intervall: 3, "), r"poll\.intervall: Extra inputs are not permitted"),
        (("events: [task.started,", "events: [task.begun,"), r"rules\.0\.events\.0"),
    ],
)
def test_invalid_values_name_the_key(change: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_config(ISSUE_EXAMPLE.replace(*change), "config.yaml", ENV)
    assert str(info.value).startswith("config.yaml: invalid configuration")
    assert "SKEXAMPLEsecret456" not in str(info.value)


def test_broken_yaml_names_line(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("cloud: {region: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: line \d+, column \d+: not valid YAML"):
        load_config(p, ENV)


def test_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found .*DCS_NOTIFIER_CONFIG"):
        load_config(tmp_path / "nope.yaml", ENV)


def test_config_path_from_environment(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(ISSUE_EXAMPLE)
    cfg = load_config(None, {**ENV, "DCS_NOTIFIER_CONFIG": str(p)})
    assert cfg.projects()[0].project_id == "p1"


def test_missing_credentials_message() -> None:
    cfg = parse_config(
        ISSUE_EXAMPLE.replace('ak: "${CLOUD_SDK_AK}", sk: "${CLOUD_SDK_SK}"', "ak: AK1"),
        "c",
        {"SLACK_WEBHOOK_URL": ENV["SLACK_WEBHOOK_URL"]},
    )
    with pytest.raises(ConfigError, match=r"cloud\.sk: no credentials.*CLOUD_SDK_SK"):
        require_credentials(cfg)
