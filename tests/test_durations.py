"""Issue 15, durations: everywhere in the config a duration is seconds or a number with a unit."""

from __future__ import annotations

import pytest

from notifier.config.durations import format_duration_setting, parse_duration
from notifier.config.load import parse_config
from notifier.errors import ConfigError

BASE = """
cloud: {endpoint: "http://127.0.0.1:1", project_id: p, ak: a, sk: b}
instances: [{id: i1}]
redis: {url: "redis://127.0.0.1:1/0"}
channels: {a: {type: webhook, url: "http://127.0.0.1:2/"}}
"""


@pytest.mark.parametrize(
    ("written", "seconds"),
    [(300, 300.0), ("300", 300.0), ("0.5", 0.5), ("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0),
     ("7d", 604_800.0), ("1w", 604_800.0), ("1h30m", 5400.0), ("500ms", 0.5), (" 2h ", 7200.0)],
)  # fmt: skip
def test_a_duration_is_seconds_or_carries_a_unit(written: object, seconds: float) -> None:
    assert parse_duration(written) == seconds


@pytest.mark.parametrize("bad", ["", "abc", "30x", "30m1h", "1h1h", "inf", "nan", "1 h 2", True, None, [1]])
def test_anything_else_is_refused_saying_what_is_accepted(bad: object) -> None:
    with pytest.raises(ValueError, match=r"duration|largest first"):
        parse_duration(bad)


def test_every_duration_key_of_the_config_takes_units_and_plain_seconds_still_work() -> None:
    text = BASE + "poll: {interval: 30s, baseline_grace: 15m, window: 1d, active_interval: 5}\n"
    text += "delivery: {max_age: 2h, backoff_initial: 500ms, claim_idle: 90}\n"
    config = parse_config(text, "d.yaml", {})
    assert (config.poll.interval, config.poll.baseline_grace, config.poll.window) == (30, 900, 86_400)
    assert (config.poll.active_interval, config.delivery.max_age) == (5, 7200)
    assert (config.delivery.backoff_initial, config.delivery.claim_idle) == (0.5, 90)


def test_a_wrong_duration_names_the_key_and_the_forms_accepted() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + "poll: {interval: 30x}\n", "d.yaml", {})
    assert "poll.interval: '30x' is not a duration" in str(caught.value)
    assert "30m" in str(caught.value)
    with pytest.raises(ConfigError, match=r"poll\.interval"):
        parse_config(BASE + "poll: {interval: 0s}\n", "d.yaml", {})  # the bounds still apply


def test_a_duration_is_shown_as_simply_as_it_can_be_written() -> None:
    assert [format_duration_setting(s) for s in (1800, 90, 7200, 0.5, 604_800)] == [
        "30m", "90s", "2h", "0.5s", "1w"
    ]  # fmt: skip
