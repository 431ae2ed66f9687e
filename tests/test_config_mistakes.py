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

from notifier.config.models import Config, parse_config
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
    path = tmp_path / "config.yaml"
    path.write_text(BASE + "poll: {window: 1e12}\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notifier.cli", "check-config", "--config", str(path),
        env={"PATH": os.environ.get("PATH", "")}, stdout=-1, stderr=-1,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert f"{path}: invalid configuration" in err.decode()
    assert "poll.window: Input should be less than or equal to 2592000" in err.decode()


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
