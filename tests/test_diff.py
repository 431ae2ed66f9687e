from __future__ import annotations

from datetime import timedelta

from notifier.pipeline.diff import DiffContext, SeenTask, Snapshot, diff
from notifier.pipeline.events import EventType, event_id
from tests.factories import INSTANCE, T0, task

GRACE = timedelta(minutes=15)


def ctx(now_offset: float = 60) -> DiffContext:
    now = T0 + timedelta(seconds=now_offset)
    return DiffContext("p", "cn-north-4", INSTANCE, now, GRACE, now - timedelta(days=1))


def seen(status: str, created=T0, updated=None) -> SeenTask:  # type: ignore[no-untyped-def]
    return SeenTask(status=status, updated_at=updated, created_at=created)


def test_baseline_announces_in_progress_and_recent_finished_only() -> None:
    tasks = [
        task("running", status="RUNNING"),
        task("recent", status="SUCCESS", updated=T0 + timedelta(seconds=10)),
        task("recent-fail", status="FAILED", updated=T0 + timedelta(seconds=20)),
        task("old", status="SUCCESS", created=T0 - timedelta(hours=2), updated=T0 - timedelta(hours=2)),
    ]
    result = diff(None, tasks, ctx())
    # Same created_at: ordered by task id.
    assert [(e.type, e.task.id) for e in result.events] == [
        (EventType.SUCCEEDED, "recent"),
        (EventType.FAILED, "recent-fail"),
        (EventType.STARTED, "running"),
    ]
    assert set(result.upserts) == {"running", "recent", "recent-fail", "old"}
    assert result.baseline_at == T0 + timedelta(seconds=60)


def test_unchanged_list_gives_nothing_and_writes_nothing() -> None:
    t = task("a", status="RUNNING")
    snap = Snapshot(baseline_at=T0, tasks={"a": seen("RUNNING")})
    result = diff(snap, [t], ctx())
    assert result.events == []
    assert not result.changed


def test_start_then_finish() -> None:
    snap = Snapshot(baseline_at=T0 - timedelta(hours=1), tasks={})
    started = diff(snap, [task("sw", status="RUNNING")], ctx())
    assert [e.type for e in started.events] == [EventType.STARTED]
    snap2 = Snapshot(baseline_at=snap.baseline_at, tasks=started.upserts)
    done = diff(snap2, [task("sw", status="SUCCESS", updated=T0 + timedelta(seconds=30))], ctx(90))
    assert [(e.type, e.previous_status) for e in done.events] == [(EventType.SUCCEEDED, "RUNNING")]
    assert done.events[0].task.duration_seconds == 30.0
    assert done.events[0].id == event_id(INSTANCE.id, "sw", EventType.SUCCEEDED, "SUCCESS")


def test_status_changes_map_to_event_types() -> None:
    snap = Snapshot(
        baseline_at=T0,
        tasks={
            "w": seen("WAITING"),
            "f": seen("EXECUTING"),
            "x": seen("FAIL", updated=T0),
            "u": seen("RUNNING"),
        },
    )
    tasks = [
        task("w", status="EXECUTING"),
        task("f", status="ERROR", updated=T0 + timedelta(seconds=5)),
        task("x", status="FAILED", updated=T0),
        task("u", status="SOMETHING_NEW"),
    ]
    types = {e.task.id: e.type for e in diff(snap, tasks, ctx()).events}
    assert types == {
        "w": EventType.UPDATED,
        "f": EventType.FAILED,
        "x": EventType.UPDATED,  # FAIL -> FAILED is the same outcome: not a second failure
        "u": EventType.UPDATED,  # unknown status passes through as in progress
    }


def test_new_task_first_seen_finished_is_announced_with_its_outcome() -> None:
    snap = Snapshot(baseline_at=T0 - timedelta(hours=1), tasks={})
    result = diff(snap, [task("q", status="FAIL", updated=T0 + timedelta(seconds=3))], ctx())
    assert [e.type for e in result.events] == [EventType.FAILED]


def test_task_older_than_baseline_grace_appearing_later_is_silent() -> None:
    snap = Snapshot(baseline_at=T0, tasks={})
    old = task("old", status="SUCCESS", created=T0 - timedelta(hours=3), updated=T0 - timedelta(hours=3))
    result = diff(snap, [old], ctx())
    assert result.events == []
    assert "old" in result.upserts


def test_tasks_that_left_the_window_are_forgotten_but_recent_missing_ones_kept() -> None:
    snap = Snapshot(
        baseline_at=T0,
        tasks={"ancient": seen("SUCCESS", created=T0 - timedelta(days=2)), "recent": seen("SUCCESS")},
    )
    result = diff(snap, [], ctx())
    assert result.removals == ["ancient"]
    assert result.events == []


def test_event_ids_are_deterministic_and_distinct() -> None:
    a = event_id("i", "t", EventType.STARTED, "RUNNING")
    assert a == event_id("i", "t", EventType.STARTED, "RUNNING")
    assert a != event_id("i", "t", EventType.UPDATED, "RUNNING")
    assert a.startswith("evt_") and len(a) == 36
