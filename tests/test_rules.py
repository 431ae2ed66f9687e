from __future__ import annotations

from notifier.config.models import RuleConfig
from notifier.pipeline.events import EventType
from notifier.pipeline.rules import route
from tests.factories import event, poller_event, removed_event, task

CHANNELS = ["oncall", "audit", "lab"]
RULES = [
    RuleConfig(
        name="switchovers",
        tasks=["masterStandbySwapJob"],
        events=[EventType.STARTED, EventType.SUCCEEDED, EventType.FAILED],
        channels=["oncall", "audit"],
    ),
    RuleConfig(name="prod-scale", tasks=["ChangeInstanceSpec"], labels={"env": "prod"}, channels=["oncall"]),
    RuleConfig(name="by-name", instances=["other-cache"], channels=["lab"]),
    RuleConfig(name="everything", tasks=["*"], channels=["audit"]),
]


def routes(ev):  # type: ignore[no-untyped-def]
    return [(n.channel, n.rule) for n in route(ev, RULES, CHANNELS)]


def test_switchover_goes_to_oncall_and_audit_once_each() -> None:
    assert routes(event(EventType.STARTED)) == [("oncall", "switchovers"), ("audit", "switchovers")]


def test_updated_switchover_only_matches_catch_all() -> None:
    assert routes(event(EventType.UPDATED)) == [("audit", "everything")]


def test_extend_matches_its_alias_and_label() -> None:
    ev = event(EventType.STARTED, task(name="EXTEND"))
    assert routes(ev) == [("oncall", "prod-scale"), ("audit", "everything")]


def test_instance_filter_by_id_or_name() -> None:
    ev = event(EventType.STARTED, task(name="AddWhitelist"))
    assert ("lab", "by-name") not in routes(ev)
    rules = [RuleConfig(name="by-id", instances=[ev.instance.id], channels=["lab"])]
    assert [(n.channel, n.rule) for n in route(ev, rules, CHANNELS)] == [("lab", "by-id")]


def test_no_rules_means_every_channel() -> None:
    assert [(n.channel, n.rule) for n in route(event(), [], CHANNELS)] == [(c, None) for c in CHANNELS]


# --- events without a task; poller health --------------------------------------------------------------

HEALTH = ["ops"]


def routes_with_health(ev, rules=RULES, health=HEALTH):  # type: ignore[no-untyped-def]
    return [(n.channel, n.rule) for n in route(ev, rules, CHANNELS + HEALTH, health)]


def test_instance_removed_only_matches_rules_for_every_task() -> None:
    assert routes(removed_event()) == [("audit", "everything")]
    rules = [
        RuleConfig(name="task-list", tasks=["masterStandbySwapJob", "EXTEND"], channels=["oncall"]),
        RuleConfig(name="alias", tasks=["ChangeInstanceSpec"], channels=["oncall"]),
        RuleConfig(name="removals", events=[EventType.INSTANCE_REMOVED], channels=["lab"]),
        RuleConfig(name="starts", events=[EventType.STARTED], channels=["oncall"]),
        RuleConfig(
            name="prod", tasks=["*"], instances=["orders-cache"], labels={"env": "prod"}, channels=["audit"]
        ),
        RuleConfig(name="staging", labels={"env": "staging"}, channels=["oncall"]),
    ]
    assert [(n.channel, n.rule) for n in route(removed_event(), rules, CHANNELS)] == [
        ("lab", "removals"),
        ("audit", "prod"),
    ]


def test_instance_removed_does_not_go_to_health_channels() -> None:
    assert routes_with_health(removed_event()) == [("audit", "everything")]


def test_poller_unhealthy_also_goes_to_health_channels() -> None:
    ev = poller_event(EventType.POLLER_UNHEALTHY)
    assert routes_with_health(ev) == [("audit", "everything"), ("ops", "health")]
    # Without health channels: only what the rules say.
    assert routes(ev) == [("audit", "everything")]


def test_poller_recovered_also_goes_to_health_channels() -> None:
    ev = poller_event(EventType.POLLER_RECOVERED)
    assert routes_with_health(ev) == [("audit", "everything"), ("ops", "health")]


def test_health_channel_not_duplicated_when_a_rule_sends_there() -> None:
    ev = poller_event()
    rules = [
        RuleConfig(
            name="poller",
            events=[EventType.POLLER_UNHEALTHY, EventType.POLLER_RECOVERED],
            channels=["ops", "lab"],
        ),
        RuleConfig(name="everything", channels=["ops", "audit"]),
    ]
    assert routes_with_health(ev, rules) == [("ops", "poller"), ("lab", "poller"), ("audit", "everything")]
    assert routes_with_health(ev, RULES, ["audit", "ops"]) == [("audit", "everything"), ("ops", "health")]


def test_poller_event_with_task_rules_only_reaches_health_channels() -> None:
    rules = [RuleConfig(name="switchovers", tasks=["masterStandbySwapJob"], channels=["oncall"])]
    assert routes_with_health(poller_event(), rules) == [("ops", "health")]


def test_task_events_never_go_to_health_channels() -> None:
    for type_ in (EventType.STARTED, EventType.SUCCEEDED, EventType.FAILED, EventType.UPDATED):
        assert ("ops", "health") not in routes_with_health(event(type_))
    assert routes_with_health(event(EventType.UPDATED), []) == [(c, None) for c in CHANNELS + HEALTH]


def test_no_rules_means_every_channel_for_events_without_a_task() -> None:
    everyone = [(c, None) for c in CHANNELS]
    assert [(n.channel, n.rule) for n in route(removed_event(), [], CHANNELS)] == everyone
    assert [(n.channel, n.rule) for n in route(poller_event(), [], CHANNELS)] == everyone
    # A health channel already among them keeps rule None; one that is not is added, credited to "health".
    assert [(n.channel, n.rule) for n in route(poller_event(), [], CHANNELS, ["audit"])] == everyone
    assert routes_with_health(poller_event(), []) == [(c, None) for c in CHANNELS + HEALTH]
    assert [(n.channel, n.rule) for n in route(poller_event(), [], ["oncall"], ["ops"])] == [
        ("oncall", None),
        ("ops", "health"),
    ]


def test_notifications_carry_the_event_and_a_per_channel_key() -> None:
    ev = poller_event()
    notes = route(ev, RULES, CHANNELS, HEALTH)
    assert all(n.event is ev for n in notes)
    assert [n.key for n in notes] == [f"{ev.id}:audit", f"{ev.id}:ops"]
