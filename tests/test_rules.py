from __future__ import annotations

from notifier.config import RuleConfig
from notifier.events import EventType
from notifier.rules import route
from tests.factories import event, task

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
