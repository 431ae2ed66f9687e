"""Cloud Eye's event answers as the notifier reads them (issue 13's source, unit by unit)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from notifier.cloudeye.models import (
    OTHER_EVENT,
    EventsPage,
    event_type_of,
    parse_content,
    parse_detail_page,
    parse_ms,
)

# ListEventDetail's answer as the CES v1 reference shows it (fields paraphrased in ../shared/CES-NOTES.md).
DETAIL: dict[str, Any] = {
    "event_name": "masterStandbyFailover",
    "event_type": "EVENT.SYS",
    "event_users": ["SYSTEM"],
    "event_sources": ["SYS.DCS"],
    "event_info": [
        {
            "event_id": "ev1606302402256R6doP5YeZ",
            "event_name": "masterStandbyFailover",
            "event_source": "SYS.DCS",
            "time": 1606302402256,
            "detail": {
                "content": '{"node": "192.168.0.12", "old_master": "node-1", "new_master": "node-2"}',
                "group_id": "",
                "resource_id": "5560df16-cebf-4473-95c4-d1b573c16e79",
                "resource_name": "orders-cache",
                "event_state": "incident",
                "event_level": "Major",
                "event_user": "SYSTEM",
                "event_type": "EVENT.SYS",
                "dimensions": [{"name": "dcs_instance_id", "value": "5560df16-cebf-4473-95c4-d1b573c16e79"}],
            },
        }
    ],
    "meta_data": {"total": 1},
}


def test_every_dcs_event_name_of_the_issue_has_its_type_and_others_are_cloudeye_events() -> None:
    assert event_type_of("masterStandbyFailover") == "instance.failover"
    assert event_type_of("masterStandbySwitchover") == "instance.switchover"
    assert event_type_of("redisNodeStatusAbnormal") == event_type_of("memcachedInstanceStatusAbnormal")
    assert event_type_of("redisNodeStatusNormal") == "node.recovered"
    assert event_type_of("nodeRestarted") == event_type_of("instanceNodeAbnormalRestart") == "node.restarted"
    assert event_type_of("instanceBackupFailure") == "backup.failed"
    assert (event_type_of("migrateSyncDataFail"), event_type_of("migrationFullResync")) == (
        "migration.failed",
        "migration.resync",
    )
    assert event_type_of("scriptsStopped") == event_type_of("somethingNew") == OTHER_EVENT
    assert event_type_of("memcachedMasterStandbyFailover") == OTHER_EVENT  # not in the issue's table


def test_an_occurrence_is_read_whole_and_its_payload_parses_the_content() -> None:
    page = parse_detail_page(DETAIL)
    assert page.total == 1 and page.unreadable == []
    [o] = page.occurrences
    assert o.type == "instance.failover" and o.instance_id == "5560df16-cebf-4473-95c4-d1b573c16e79"
    assert o.time == datetime(2020, 11, 25, 11, 6, 42, 256000, tzinfo=UTC)
    assert o.info().model_dump() == {
        "event_id": "ev1606302402256R6doP5YeZ",
        "event_name": "masterStandbyFailover",
        "event_source": "SYS.DCS",
        "level": "Major",
        "state": "incident",
        "time": datetime(2020, 11, 25, 11, 6, 42, 256000, tzinfo=UTC),
        "resource_id": "5560df16-cebf-4473-95c4-d1b573c16e79",
        "resource_name": "orders-cache",
        "user": "SYSTEM",
        "content": {"node": "192.168.0.12", "old_master": "node-1", "new_master": "node-2"},
    }


def test_one_malformed_occurrence_does_not_hide_the_rest_of_its_page() -> None:
    good = DETAIL["event_info"][0]
    body = {
        "event_info": [{**good, "time": "soon"}, {**good, "event_id": ""}, {**good, "detail": None}, good],
        "meta_data": {"total": "4"},
    }
    page = parse_detail_page(body)
    assert page.total == 4 and len(page.occurrences) == 1
    assert [u.split(":")[0] for u in page.unreadable] == [
        "event_info[0].time",
        "event_info[1].event_id",
        "event_info[2].detail",
    ]


@pytest.mark.parametrize("body", [{"event_info": {}}, {"event_info": [], "meta_data": {"total": "many"}}])
def test_an_answer_that_is_no_detail_page_is_a_value_error(body: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"'event_info' is not a list|'meta_data\.total' is not a number"):
        parse_detail_page(body)


def test_a_resource_without_an_id_is_found_by_its_dimension_or_is_none() -> None:
    detail = {**DETAIL["event_info"][0]["detail"], "resource_id": ""}
    [o] = parse_detail_page({"event_info": [{**DETAIL["event_info"][0], "detail": detail}]}).occurrences
    assert o.instance_id == "5560df16-cebf-4473-95c4-d1b573c16e79"
    [o] = parse_detail_page({"event_info": [{**DETAIL["event_info"][0], "detail": {}}]}).occurrences
    assert o.instance_id is None and o.info().content is None


def test_list_events_aggregates_and_their_times() -> None:
    page = EventsPage.model_validate(
        {
            "events": [
                {
                    "event_name": "masterStandbyFailover",
                    "event_type": "EVENT.SYS",
                    "event_count": 2,
                    "latest_occur_time": "1606302402256",
                    "latest_event_source": "SYS.DCS",
                }
            ],
            "meta_data": {"total": 1},
        }
    )
    [agg] = page.events
    assert agg.event_count == 2 and agg.latest_occur_time == parse_ms(1606302402256)


@pytest.mark.parametrize("raw", [True, "soon", 1e300, [1]])
def test_a_time_that_is_not_epoch_milliseconds_is_refused(raw: object) -> None:
    with pytest.raises(ValueError, match="not a time in epoch milliseconds"):
        parse_ms(raw)


def test_content_is_json_where_it_is_json_else_the_string() -> None:
    assert parse_content('{"a": 1}') == {"a": 1}
    assert parse_content("master node 10.0.0.3 failed") == "master node 10.0.0.3 failed"
    assert parse_content(None) is None
