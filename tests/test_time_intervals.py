"""Issue 15: Alertmanager-style ``time_intervals`` and a rule's ``mute_time_intervals`` /
``active_time_intervals`` — the pure evaluation (zones and daylight saving time, negative days of the month,
exclusive ends, midnight), the config's refusals, and muting through the real daemon (in process and as
``python -m notifier.cli run``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from notifier.config.display import verdict
from notifier.config.load import parse_config
from notifier.config.models import RuleConfig
from notifier.devtools.simulator import Simulator
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.errors import ConfigError
from notifier.pipeline.events import EventType
from notifier.pipeline.rules import route, rule_matches
from notifier.pipeline.time_intervals import (
    Span,
    TimeInterval,
    TimeRange,
    parse_days_of_month,
    parse_location,
    parse_months,
    parse_time_range,
    parse_weekdays,
    parse_years,
)
from tests.conftest import AK, ORDERS, PROJECT_ID, SESSIONS, SK, WEBHOOK_SECRET
from tests.factories import event, task
from tests.support.daemons import running

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str) -> datetime:
    """An instant written in UTC (``2026-01-14 08:00``)."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def interval(**fields: Any) -> TimeInterval:
    """A time interval from the config's own words (``weekdays=["monday:friday"]``…), as a rule reads it."""
    parsers = {
        "weekdays": parse_weekdays,
        "days_of_month": parse_days_of_month,
        "months": parse_months,
        "years": parse_years,
    }
    kwargs: dict[str, Any] = {}
    for key, items in fields.items():
        if key == "times":
            kwargs["times"] = tuple(parse_time_range(a, b) for a, b in items)
        elif key == "location":
            kwargs["location"] = parse_location(items)
        else:
            kwargs[key] = tuple(parsers[key](i) for i in items)
    return TimeInterval(**kwargs)


# -- pure evaluation ----------------------------------------------------------------------------------


def test_weekdays_are_ranges_from_sunday_to_saturday_in_any_case() -> None:
    weekdays = interval(weekdays=["Monday:FRIDAY"])
    wednesday, saturday, sunday = at("2026-01-14 12:00"), at("2026-01-17 12:00"), at("2026-01-18 12:00")
    assert (wednesday.weekday(), saturday.weekday(), sunday.weekday()) == (2, 5, 6)
    assert weekdays.contains(wednesday) and not weekdays.contains(saturday)
    weekend = interval(weekdays=["saturday", "sunday"])
    assert weekend.contains(saturday) and weekend.contains(sunday) and not weekend.contains(wednesday)
    assert interval(weekdays=["sunday:saturday"]).contains(wednesday)  # the whole week
    assert parse_weekdays("sunday") == Span(0, 0)  # Alertmanager's numbering


def test_times_are_read_in_the_location_across_daylight_saving_time() -> None:
    office = interval(times=[("09:00", "17:00")], location="Europe/Berlin")
    # Winter: Berlin is UTC+1; summer: UTC+2. The same 09:00 is another UTC hour.
    assert office.contains(at("2026-01-14 08:00")) and not office.contains(at("2026-01-14 07:59"))
    assert office.contains(at("2026-07-15 07:00")) and not office.contains(at("2026-07-15 06:59"))
    assert office.contains(at("2026-07-15 14:59")) and not office.contains(at("2026-07-15 15:00"))
    # 2026-03-29, clocks go from 02:00 to 03:00 in Berlin: 02:00–03:00 never happens that night.
    skipped = interval(times=[("02:00", "03:00")], location="Europe/Berlin")
    assert not skipped.contains(at("2026-03-29 00:59")) and not skipped.contains(at("2026-03-29 01:00"))
    assert skipped.contains(at("2026-03-28 01:30"))  # the night before (CET): 02:30
    # The weekday too is the location's: Friday 23:30 UTC is Saturday 00:30 in Berlin.
    friday_night = at("2026-01-16 23:30")
    assert interval(weekdays=["saturday"], location="Europe/Berlin").contains(friday_night)
    assert not interval(weekdays=["saturday"]).contains(friday_night)  # UTC by default


def test_end_time_is_exclusive_and_24_00_is_the_end_of_the_day() -> None:
    day = interval(times=[("09:00", "17:00")])
    assert day.contains(at("2026-01-14 09:00")) and day.contains(at("2026-01-14 16:59:59"))
    assert not day.contains(at("2026-01-14 17:00"))
    late = interval(times=[("22:00", "24:00")])
    assert late.contains(at("2026-01-14 23:59:59")) and not late.contains(at("2026-01-15 00:00"))
    assert parse_time_range("00:00", "24:00") == TimeRange(0, 1440)


def test_a_night_across_midnight_is_two_ranges() -> None:
    night = interval(times=[("22:00", "24:00"), ("00:00", "06:00")])
    assert night.contains(at("2026-01-14 23:30")) and night.contains(at("2026-01-15 05:59"))
    assert not night.contains(at("2026-01-15 06:00")) and not night.contains(at("2026-01-14 21:59"))


def test_negative_days_of_the_month_count_from_its_end() -> None:
    last = interval(days_of_month=["-1"])
    assert last.contains(at("2026-02-28 10:00")) and not last.contains(at("2026-02-27 10:00"))
    assert last.contains(at("2024-02-29 10:00")) and not last.contains(at("2024-02-28 10:00"))  # leap year
    assert last.contains(at("2026-01-31 10:00"))
    last_week = interval(days_of_month=["-7:-1"])
    assert last_week.contains(at("2026-04-24 10:00")) and not last_week.contains(at("2026-04-23 10:00"))
    first_days = interval(days_of_month=["1:5"])
    assert first_days.contains(at("2026-03-05 10:00")) and not first_days.contains(at("2026-03-06 10:00"))
    # A range a month is too short for: its first day missing skips it, its last day is cut to the month.
    assert not interval(days_of_month=["29:31"]).contains(at("2026-02-28 10:00"))
    assert interval(days_of_month=["25:31"]).contains(at("2026-02-28 10:00"))


def test_months_and_years_by_name_or_number() -> None:
    quarter = interval(months=["january:march", "12"])
    assert quarter.contains(at("2026-02-10 10:00")) and quarter.contains(at("2026-12-10 10:00"))
    assert not quarter.contains(at("2026-04-01 00:00"))
    years = interval(years=["2026:2027"])
    assert years.contains(at("2027-12-31 23:59")) and not years.contains(at("2028-01-01 00:00"))


def test_every_given_field_must_match_and_an_empty_interval_matches_always() -> None:
    both = interval(weekdays=["monday:friday"], times=[("09:00", "17:00")], months=["january"])
    assert both.contains(at("2026-01-14 10:00"))
    assert not both.contains(at("2026-01-17 10:00"))  # a Saturday
    assert not both.contains(at("2026-01-14 18:00"))  # after hours
    assert not both.contains(at("2026-02-11 10:00"))  # February
    assert interval().contains(at("2026-01-14 10:00"))


def test_local_and_naive_times() -> None:
    here = interval(times=[("00:00", "12:00")], location="Local")
    now = datetime.now(UTC)
    assert here.contains(now) == (now.astimezone().hour < 12)
    assert interval(times=[("10:00", "11:00")]).contains(datetime(2026, 1, 14, 10, 30))  # naive: UTC


# -- config ---------------------------------------------------------------------------------------------

BASE = """
cloud: {project_id: p1, ak: AKEXAMPLE, sk: SKEXAMPLE, endpoint: "http://127.0.0.1:9"}
instances: [{id: i-1}]
channels:
  audit: {type: webhook, url: "http://127.0.0.1:9/hook"}
"""


def problems(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + text, "config.yaml", {})
    return str(info.value)


def test_the_alertmanager_shape_loads_and_rules_read_their_intervals() -> None:
    config = parse_config(
        BASE
        + """
time_intervals:
  - name: office-hours
    time_intervals:
      - times: [{start_time: 09:00, end_time: 17:00}]   # unquoted, as Alertmanager's examples write it
        weekdays: [monday:friday]
        days_of_month: [1:5, -1]
        months: [january:march, 12]
        years: [2026:2027]
        location: Europe/Berlin
  - name: weekend
    time_intervals: [{weekdays: [saturday, sunday]}]
rules:
  - {name: quiet-at-work, channels: [audit], mute_time_intervals: [office-hours, weekend]}
  - {name: only-weekends, channels: [audit], active_time_intervals: [weekend]}
""",
        "config.yaml",
        {},
    )
    office = config.time_intervals[0].time_intervals[0]
    assert office.times is not None and (office.times[0].start_time, office.times[0].end_time) == (
        "09:00",
        "17:00",
    )
    assert office.days_of_month == ["1:5", "-1"] and office.years == ["2026:2027"]
    muted, weekends = config.rules
    assert len(muted.mute_intervals) == 2
    [weekend] = weekends.active_intervals
    assert weekend.weekdays == (Span(6, 6), Span(0, 0))
    assert office.compiled().location == BERLIN
    assert "2 time intervals: office-hours, weekend" in verdict(config).lines


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "time_intervals: [{name: t, time_intervals: [{location: Europe/Berln}]}]",
            "time_intervals.0.time_intervals.0.location: unknown time zone 'Europe/Berln'; did you mean "
            "'Europe/Berlin'?",
        ),
        (
            "time_intervals: [{name: t, time_intervals: [{times: [{start_time: 18:00, end_time: 06:00}]}]}]",
            "time_intervals.0.time_intervals.0.times.0: start_time 18:00 must be before end_time 06:00: a "
            "range does not wrap midnight; write two: 18:00–24:00 and 00:00–06:00",
        ),
        (
            "time_intervals: [{name: t, time_intervals: [{times: [{start_time: '9:00', end_time: '17:00'}]}]}]",
            "'9:00' is not a time of day: HH:MM from 00:00 to 23:59, or 24:00",
        ),
        (
            "time_intervals: [{name: t, time_intervals: [{weekdays: [saturday:sunday]}]}]",
            "time_intervals.0.time_intervals.0.weekdays: 'saturday:sunday': weekday ranges run from Sunday "
            "to Saturday (as in Alertmanager); write two: 'saturday' and 'sunday'",
        ),
        (
            "time_intervals: [{name: t, time_intervals: [{weekdays: [mondya]}]}]",
            "'mondya' is not a weekday; did you mean 'monday'?",
        ),
        (
            "time_intervals: [{name: t, time_intervals: [{days_of_month: [0]}]}]",
            "0 is not a day of the month",
        ),
        (
            "time_intervals: [{name: t, time_intervals: [{days_of_month: ['32']}]}]",
            "32 is not a day of the month",
        ),
        (
            "time_intervals: [{name: t, time_intervals: [{days_of_month: ['-3:5']}]}]",
            "a range that starts from the end of the month must end there too",
        ),
        (
            "time_intervals: [{name: t, time_intervals: [{days_of_month: ['10:2']}]}]",
            "'10:2': the last day is before the first",
        ),
        (
            "time_intervals: [{name: t, time_intervals: [{months: [janury]}]}]",
            "'janury' is not a month; did you mean 'january'?",
        ),
        ("time_intervals: [{name: t, time_intervals: [{months: [13]}]}]", "'13' is not a month"),
        ("time_intervals: [{name: t, time_intervals: [{years: ['2027:2026']}]}]", "the last year is before"),
        (
            "time_intervals: [{name: t, time_intervals: [{weekdays: []}]}]",
            "time_intervals.0.time_intervals.0.weekdays",
        ),
        ("time_intervals: [{name: t, time_intervals: []}]", "time_intervals.0.time_intervals"),
        (
            "time_intervals: [{name: t, time_intervals: [{}]}, {name: t, time_intervals: [{}]}]",
            "time_intervals: duplicate time interval name t",
        ),
    ],
)
def test_a_wrong_time_interval_is_refused_naming_the_key(text: str, message: str) -> None:
    assert message in problems(text + "\n")


def test_a_rule_naming_an_unknown_interval_is_refused_naming_the_rule_and_the_known_ones() -> None:
    text = """
time_intervals:
  - {name: weekend, time_intervals: [{weekdays: [saturday, sunday]}]}
  - {name: nights, time_intervals: [{times: [{start_time: "00:00", end_time: "06:00"}]}]}
rules:
  - {name: scale, channels: [audit], mute_time_intervals: [weekedn]}
"""
    assert (
        "rules.0.mute_time_intervals: rule 'scale' names unknown time interval 'weekedn'; did you mean "
        "'weekend'? (known: nights, weekend)"
    ) in problems(text)
    alone = problems("rules: [{name: scale, channels: [audit], active_time_intervals: [weekend]}]\n")
    assert (
        "rules.0.active_time_intervals: rule 'scale' names unknown time interval 'weekend' "
        "(none is defined under time_intervals)"
    ) in alone


def test_an_unused_interval_is_a_warning() -> None:
    config = parse_config(BASE + "time_intervals: [{name: spare, time_intervals: [{}]}]\n", "c.yaml", {})
    assert "time_intervals.0: no rule names 'spare'" in verdict(config).warnings


# -- routing (pure) -----------------------------------------------------------------------------------


def rules_of(text: str) -> list[RuleConfig]:
    two_channels = BASE.replace(
        "  audit:", "  oncall: {type: webhook, url: 'http://127.0.0.1:9/o'}\n  audit:"
    )
    return parse_config(two_channels + text, "c.yaml", {}).rules


def test_a_muted_rule_does_not_route_and_another_rule_still_does() -> None:
    rules = rules_of(
        """
time_intervals:
  - {name: weekend, time_intervals: [{weekdays: [saturday, sunday]}]}
rules:
  - {name: quiet-weekends, channels: [oncall], mute_time_intervals: [weekend]}
  - {name: weekend-only, channels: [audit], active_time_intervals: [weekend]}
"""
    )
    ev = event(EventType.STARTED, task())  # detected on Saturday 2026-11-28
    assert ev.detected_at.weekday() == 5
    assert [(n.channel, n.rule) for n in route(ev, rules, ["oncall", "audit"])] == [("audit", "weekend-only")]
    monday = ev.detected_at + timedelta(days=2)
    assert [(n.channel, n.rule) for n in route(ev, rules, ["oncall", "audit"], at=monday)] == [
        ("oncall", "quiet-weekends")
    ]
    assert rule_matches(rules[0], ev, monday) and not rule_matches(rules[0], ev)


def test_a_rule_made_alone_with_interval_names_says_it_is_not_resolved() -> None:
    rule = RuleConfig(name="lonely", channels=["audit"], mute_time_intervals=["weekend"])
    with pytest.raises(RuntimeError, match="rule 'lonely': time intervals not resolved"):
        rule_matches(rule, event())


# -- through the daemon -------------------------------------------------------------------------------


def around_now(zone: str, minutes: int = 60) -> str:
    """``times`` covering ``minutes`` either side of now in ``zone`` (two ranges across midnight), as YAML."""
    now = datetime.now(ZoneInfo(zone))
    m = now.hour * 60 + now.minute
    start, end = m - minutes, m + minutes + 1

    def hhmm(n: int) -> str:
        return f"{n // 60:02d}:{n % 60:02d}"

    spans = [(max(start, 0), min(end, 1440))]
    if start < 0:
        spans.append((1440 + start, 1440))
    if end > 1440:
        spans.append((0, end - 1440))
    return ", ".join(f'{{start_time: "{hhmm(a)}", end_time: "{hhmm(b)}"}}' for a, b in spans)


def daemon_config(hooks: WebhookReceiver) -> str:
    this_year = datetime.now(UTC).year
    return f"""
cloud: {{endpoint: "${{SIM_URL}}", project_id: "{PROJECT_ID}", ak: {AK}, sk: {SK}}}
instances:
  - {{id: "{ORDERS}", name: orders-cache}}
  - {{id: "{SESSIONS}", name: sessions-cache}}
poll: {{interval: 0.3, baseline_grace: 900}}
discovery: {{interval: 0.3}}
redis: {{url: "${{REDIS_URL}}", key_prefix: ti}}
time_intervals:
  - name: now-in-tokyo
    time_intervals: [{{times: [{around_now("Asia/Tokyo")}], location: Asia/Tokyo}}]
  - name: long-ago
    time_intervals: [{{years: ["{this_year - 20}:{this_year - 10}"]}}]
channels:
  muted: {{type: webhook, url: "{hooks.base_url}/muted", secret: "{WEBHOOK_SECRET}"}}
  open: {{type: webhook, url: "{hooks.base_url}/open", secret: "{WEBHOOK_SECRET}"}}
  active: {{type: webhook, url: "{hooks.base_url}/active", secret: "{WEBHOOK_SECRET}"}}
  whitelists: {{type: webhook, url: "{hooks.base_url}/whitelists", secret: "{WEBHOOK_SECRET}"}}
rules:
  - {{name: muted-now, tasks: [EXTEND], channels: [muted], mute_time_intervals: [now-in-tokyo]}}
  - {{name: inactive-now, tasks: [EXTEND], channels: [whitelists], active_time_intervals: [long-ago]}}
  - {{name: active-now, tasks: [EXTEND], channels: [active], active_time_intervals: [now-in-tokyo]}}
  - {{name: everything, channels: [open]}}
  - {{name: whitelists, tasks: [AddWhitelist], channels: [whitelists, muted]}}
delivery: {{backoff_initial: 0.05, backoff_max: 0.2}}
"""


def delivered(hooks: WebhookReceiver, path: str) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in hooks.requests if r.path == path and 200 <= r.status < 300]


def kinds(hooks: WebhookReceiver, path: str) -> list[tuple[str, str]]:
    return [(p["type"], p["data"]["task"]["name"]) for p in delivered(hooks, path)]


async def test_a_rule_muted_by_a_time_interval_does_not_deliver_and_another_rule_still_does(
    sim: Simulator, redis_url: str
) -> None:
    async with WebhookReceiver(secret=WEBHOOK_SECRET) as hooks:
        env = {"SIM_URL": str(sim.base_url), "REDIS_URL": redis_url}
        async with running(parse_config(daemon_config(hooks), "ti.yaml", env)):
            sim.start_task(ORDERS, "EXTEND")
            await hooks.wait_for(2, timeout=10)  # open + active
            # Then a change that does go to the muted rule's channels: once it is there, anything the
            # muted rule had sent would have come before it (one outbox per channel, in order).
            sim.start_task(SESSIONS, "AddWhitelist")
            await hooks.wait_for(5, timeout=10)
        assert kinds(hooks, "/open") == [("task.started", "EXTEND"), ("task.started", "AddWhitelist")]
        assert kinds(hooks, "/active") == [("task.started", "EXTEND")]
        assert kinds(hooks, "/muted") == [("task.started", "AddWhitelist")]
        assert kinds(hooks, "/whitelists") == [("task.started", "AddWhitelist")]
        assert all(r.verified for r in hooks.requests)


async def test_dcs_notifier_run_mutes_a_rule_and_flags_a_change_outside_the_maintenance_window(
    sim: Simulator, redis_url: str, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    later = (now + timedelta(hours=2)).replace(second=0, microsecond=0)
    sim.set_instance(
        ORDERS, maintain_begin=f"{later:%H:%M}:00", maintain_end=f"{later + timedelta(hours=1):%H:%M}:00"
    )
    async with WebhookReceiver(secret=WEBHOOK_SECRET) as hooks:
        path = tmp_path / "ti.yaml"
        path.write_text(daemon_config(hooks))
        env = {
            "PATH": os.environ.get("PATH", ""),
            "SIM_URL": str(sim.base_url),
            "REDIS_URL": redis_url,
            "DCS_NOTIFIER_CONFIG": str(path),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "notifier.cli", "run", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            # Two listings: the first one's windows are applied before the second is asked for.
            await sim.wait_for(lambda: sum(r.route == "instances" for r in sim.requests) >= 2, within=15)
            sim.start_task(ORDERS, "EXTEND")
            await hooks.wait_for(2, timeout=15)
            sim.start_task(SESSIONS, "AddWhitelist")
            await hooks.wait_for(5, timeout=15)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert kinds(hooks, "/muted") == [("task.started", "AddWhitelist")]
        [extend, _] = delivered(hooks, "/open")
        window = {"begin": f"{later:%H:%M}:00", "end": f"{later + timedelta(hours=1):%H:%M}:00"}
        assert extend["data"]["maintenance"] == {"window": window, "started_inside": False}
