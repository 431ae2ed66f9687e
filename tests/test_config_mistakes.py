"""Issue 10: configs that validated and then crashed (a duration of 1e12 or .inf), and YAML keys given twice
(the last one silently won). Each is now refused by `check-config` and at start, exit 2, naming the key."""

from __future__ import annotations

import asyncio
import os
import sys
import typing
from pathlib import Path

import annotated_types
import pytest
from pydantic import BaseModel

from notifier.config.env import require_credentials
from notifier.config.load import parse_config
from notifier.config.models import Config
from notifier.errors import ConfigError

BASE = """
cloud: {project_id: p1, ak: AKEXAMPLE, sk: SKEXAMPLE, endpoint: "http://127.0.0.1:9"}
instances: [{id: i-1}]
channels:
  audit: {type: webhook, url: "http://127.0.0.1:9/hook"}
  oncall: {type: slack, webhook_url: "http://127.0.0.1:9/services/T/B/X"}
"""

#: Every duration of the config (section, key), with a value inside its bounds for the section to load.
DURATIONS = [
    ("poll", "interval"),
    ("poll", "baseline_grace"),
    ("poll", "window"),
    ("poll", "skew"),
    ("poll", "recheck"),
    ("api", "timeout"),
    ("discovery", "interval"),
    ("discovery", "removed_ttl"),
    ("health", "after"),
    ("delivery", "max_age"),
    ("delivery", "backoff_initial"),
    ("delivery", "backoff_max"),
    ("delivery", "stop_timeout"),
    ("delivery", "claim_idle"),
    ("scaling", "lease_ttl"),
]


@pytest.mark.parametrize("value", ["1e12", ".inf", ".nan", "-.inf"])
@pytest.mark.parametrize(("section", "key"), DURATIONS)
def test_every_duration_has_a_documented_maximum(section: str, key: str, value: str) -> None:
    """Before: `poll.window: 1e12` passed check-config, then every poll raised OverflowError; `.inf`
    crashed at start or exited 1 with an ExceptionGroup."""
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + f"{section}: {{{key}: {value}}}\n", "config.yaml", {})
    assert f"  {section}.{key}: " in str(info.value)


def _models(annotation: object) -> typing.Iterator[type[BaseModel]]:
    """The models an annotation holds, however deep (lists, dicts, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _models(arg)


def _floats(model: type[BaseModel], where: str) -> typing.Iterator[tuple[str, list[object]]]:
    for name, field in model.model_fields.items():
        for inner in _models(field.annotation):
            yield from _floats(inner, f"{where}.{name}")
        if field.annotation is float or float in typing.get_args(field.annotation):
            yield f"{where}.{name}({model.__name__})", list(field.metadata)


def test_no_number_of_the_config_is_unbounded() -> None:
    """Every float setting, in every section and channel kind, has an upper bound (a new one cannot be
    added without one)."""
    found = dict(_floats(Config, "config"))
    assert {"config.poll.window(PollConfig)", "config.channels.rate(SlackChannelConfig)"} <= set(found)
    unbounded = [name for name, meta in found.items() if not any(
        isinstance(m, annotated_types.Le | annotated_types.Lt) for m in meta)]  # fmt: skip
    assert unbounded == []


async def test_check_config_refuses_an_overflowing_window_with_exit_2(tmp_path: Path) -> None:
    """And an unknown key, in the same run: every problem is an error, said once, naming file and key."""
    path = tmp_path / "config.yaml"
    path.write_text(BASE + "poll: {window: 1e12, intervall: 3}\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notifier.cli", "check-config", "--config", str(path),
        env={"PATH": os.environ.get("PATH", "")}, stdout=-1, stderr=-1,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 2
    assert f"{path}: invalid configuration" in err.decode()
    assert "poll.window: Input should be less than or equal to 2592000" in err.decode()
    assert err.decode().splitlines() == [
        f"error: {path}: invalid configuration (2 problems):",
        "  poll.window: Input should be less than or equal to 2592000",
        "  unknown key `intervall` in poll; did you mean `interval`?",
    ]
    assert out == b""


# -- keys given twice -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            BASE.replace(
                '  oncall: {type: slack, webhook_url: "http://127.0.0.1:9/services/T/B/X"}\n',
                '  oncall: {type: slack, webhook_url: "http://127.0.0.1:9/services/T/B/X"}\n'
                '  audit: {type: webhook, url: "http://127.0.0.1:9/other"}\n',
            ),
            "line 7, column 3: not valid YAML: duplicate key 'audit': set on line 5 and again on line 7",
        ),
        (
            BASE + "poll: {interval: 30}\nredis: {key_prefix: x}\npoll: {interval: 5}\n",
            "line 9, column 1: not valid YAML: duplicate key 'poll': set on line 7 and again on line 9",
        ),
        (
            BASE + "poll: {interval: 30, interval: 5}\n",
            "line 7, column 22: not valid YAML: duplicate key 'interval': set on line 7 and again on line 7",
        ),
    ],
)
def test_a_key_given_twice_is_an_error_naming_both(text: str, message: str) -> None:
    """Before: PyYAML kept the last one silently (a second channel or `poll:` replaced the first)."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.yaml", {})
    assert str(info.value) == f"config.yaml: {message} (keep one)"


def test_keys_merged_from_an_anchor_may_be_overridden() -> None:
    text = BASE + "x-poll: &poll {interval: 30, jitter: 0.2}\npoll: {<<: *poll, interval: 5}\n"
    with pytest.raises(ConfigError, match="x-poll"):  # an unknown top-level key, not a duplicate
        parse_config(text, "config.yaml", {})
    text = BASE.replace("instances: [{id: i-1}]", "instances: [{<<: {id: i-0, name: base}, id: i-1}]")
    cfg = parse_config(text, "config.yaml", {})
    assert [(i.id, i.name) for i in cfg.instances] == [("i-1", "base")]


# -- mistakes a new user makes: said in the words of the file (issue 11, §6) -------------------------------


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    """The lines of the one error a config gets, after its header naming the file."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.yaml", env or {})
    header, *lines = str(info.value).splitlines()
    assert header.startswith("config.yaml: ")
    return [line.removeprefix("  ") for line in lines]


@pytest.mark.parametrize(
    ("change", "line"),
    [
        (
            ("instances:", "poll: {intervall: 3}\ninstances:"),
            "unknown key `intervall` in poll; did you mean `interval`?",
        ),
        (
            ('webhook_url: "http://127.0.0.1:9/services/T/B/X"}', 'token: xoxb-1, chanel: "#ops"}'),
            "unknown key `chanel` in channels.oncall; did you mean `channel`?",
        ),
        (
            ("cloud: {", "cloud: {regoin: cn-north-4, "),
            "unknown key `regoin` in cloud; did you mean `region`?",
        ),
        (("instances:", "instance:"), "unknown key `instance` at the top level; did you mean `instances`?"),
        (
            ("[{id: i-1}]", "[{id: i-1, lables: {}}]"),
            "unknown key `lables` in instances.0; did you mean `labels`?",
        ),
        (
            ("ak: AKEXAMPLE, sk: SKEXAMPLE", "credentials: {domain: d, user: u, pasword: p}"),
            "unknown key `pasword` in cloud.credentials; did you mean `password`?",
        ),
        (
            ("{type: webhook, url", "{type: webhook, headrs: {X-Team: db}, url"),
            "unknown key `headrs` in channels.audit; did you mean `headers`?",
        ),
    ],
)
def test_an_unknown_key_is_named_with_a_suggestion(change: tuple[str, str], line: str) -> None:
    """Before: `poll.intervall: Extra inputs are not permitted` (and `channels.oncall.slack.chanel`)."""
    text = BASE.replace(*change)
    assert text != BASE
    found = problems(text)
    assert line in found
    assert not any("Extra inputs" in p for p in found)


@pytest.mark.parametrize("section", ["api", "poll", "discovery", "health", "redis", "delivery", "scaling"])
def test_every_section_suggests_its_keys(section: str) -> None:
    """A misspelt first key of each section: no section answers "Extra inputs are not permitted"."""
    key = next(iter(Config.model_fields[section].annotation.model_fields))  # type: ignore[union-attr]
    assert problems(BASE + f"{section}: {{{key}s: 1}}\n") == [
        f"unknown key `{key}s` in {section}; did you mean `{key}`?"
    ]


@pytest.mark.parametrize(
    ("change", "line"),
    [
        (  # pydantic: channels.oncall.slack.timeout (the union's tag in the path)
            ('"http://127.0.0.1:9/services/T/B/X"}', '"http://127.0.0.1:9/services/T/B/X", timeout: 0}'),
            "channels.oncall.timeout: Input should be greater than 0",
        ),
        (  # pydantic: Input tag 'webhok' found using 'type' does not match any of the expected tags
            ("{type: webhook,", "{type: webhok,"),
            "channels.audit.type: unknown type 'webhok'; did you mean 'webhook'? (known: slack, webhook)",
        ),
        (  # pydantic: Unable to extract tag using discriminator 'type'
            ("{type: webhook, ", "{"),
            "channels.audit.type: Field required: one of slack, webhook",
        ),
        (  # pydantic: cloud.0.credentials.iam.user
            ("ak: AKEXAMPLE, sk: SKEXAMPLE", 'credentials: {domain: d, user: "", password: p}'),
            "cloud.credentials.user: String should have at least 1 character",
        ),
        (  # pydantic: two errors, one per member of the union (str-enum[EventType], literal['*'])
            ("instances:", "rules: [{name: r, events: [task.faild], channels: [audit]}]\ninstances:"),
            "rules.0.events.0: unknown event 'task.faild'; did you mean 'task.failed'? (events: task.started, "
            "task.succeeded, task.failed, task.updated, task.stuck, instance.removed, poller.unhealthy, "
            "poller.recovered, "
            "instance.failover, instance.switchover, node.abnormal, node.recovered, node.restarted, backup.failed, "
            "migration.failed, migration.resync, cloudeye.event, or * for all)",
        ),
        (
            ("instances:", "rules: [{name: r, channels: [oncal]}]\ninstances:"),
            "rules.0.channels: unknown channel 'oncal'; did you mean 'oncall'? (known: audit, oncall)",
        ),
    ],
)
def test_error_paths_name_the_keys_as_written(change: tuple[str, str], line: str) -> None:
    text = BASE.replace(*change)
    assert text != BASE
    assert problems(text) == [line]


def test_every_problem_is_reported_at_once() -> None:
    """The short form's own problems and the validation's, in one error."""
    text = (
        BASE.replace("cloud: {", "cloud: {timeout: 5, regoin: x, ") + "api: {timeout: 5}\npoll: {jitter: 2}\n"
    )
    assert problems(text) == [
        "cloud.timeout and api.timeout are both set: keep one (api.timeout)",
        "unknown key `regoin` in cloud; did you mean `region`?",
        "poll.jitter: Input should be less than or equal to 0.5",
    ]


def test_every_missing_environment_variable_at_once_with_where_it_is_used() -> None:
    text = BASE.replace("AKEXAMPLE", '"${CLOUD_SDK_AK}"').replace("SKEXAMPLE", '"${CLOUD_SDK_SK}"')
    text = text.replace('"http://127.0.0.1:9/hook"', '"${AUDIT_URL}"').replace("/T/B/X", "/${SLACK_PATH}")
    text += "redis: {url: '${REDIS_URL:-redis://127.0.0.1:7/0}', key_prefix: '${CLOUD_SDK_SK}'}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.yaml", {"CLOUD_SDK_AK": "AK"})
    assert str(info.value).splitlines() == [
        "config.yaml: 3 environment variables are not set (export, or write ${VAR:-default} in the file):",
        "  CLOUD_SDK_SK: used at cloud.sk, redis.key_prefix",
        "  AUDIT_URL: used at channels.audit.url",
        "  SLACK_PATH: used at channels.oncall.webhook_url",
    ]


def test_missing_credentials_name_the_file_and_the_key() -> None:
    config = parse_config(
        BASE.replace("ak: AKEXAMPLE, sk: SKEXAMPLE, ", "ak: AKEXAMPLE, "), "config.yaml", {}
    )
    with pytest.raises(ConfigError) as info:
        require_credentials(config)
    assert str(info.value).splitlines() == [
        "config.yaml: invalid configuration (1 problem):",
        "  cloud.sk: no credentials for project p1; set them in the config or the environment variables "
        "CLOUD_SDK_AK/CLOUD_SDK_SK",
    ]


def test_a_secret_pasted_as_a_key_is_cut_short() -> None:
    webhook = "https://hooks.slack.com/services/T0/B0/sekrit-token-0001"
    text = BASE.replace('webhook_url: "http://127.0.0.1:9/services/T/B/X"', f'"{webhook}": x')
    found = problems(text)
    assert "unknown key `https://hooks.slack.com/services/T0/B...` in channels.oncall" in found[-1]
    assert not any("sekrit" in p for p in found)
