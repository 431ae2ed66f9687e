"""HealthTracker is pure bookkeeping: poll outcomes in, at most one event per episode and kind out."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from notifier.errors import DcsApiError, Reason
from notifier.pipeline.events import Event, EventType, PollProblem, event_id
from notifier.pipeline.health import HealthTracker, Subject
from tests.factories import INSTANCE, PROJECT_ID, T0
from tests.factories import event as task_event

AFTER = 300.0
KEY = f"{PROJECT_ID}/{INSTANCE.id}"
SUBJECT = Subject(key=KEY, project_id=PROJECT_ID, region="cn-north-4", instance=INSTANCE)
UNHEALTHY_ID = "evt_7b7f6a46c13d4c4b8c25768db498f515"  # episode since T0 (08:00:00 UTC)
RECOVERED_ID = "evt_442eb69fd2f16830a1e0d8439142e90f"


class Clocks:
    """A monotonic clock (seconds) and a wall clock that move together."""

    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t

    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.t - 1000.0)

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


def tracker(clocks: Clocks, announced: dict[str, PollProblem] | None = None) -> HealthTracker:
    return HealthTracker(AFTER, announced=announced, monotonic=clocks.monotonic, clock=clocks.now)


def error(
    reason: Reason = Reason.SERVER_ERROR, request_id: str = "req-1", code: str = "DCS.5000"
) -> DcsApiError:
    return DcsApiError(INSTANCE.id, reason, "busy", http_status=503, error_code=code, request_id=request_id)


def unhealthy_after_threshold(h: HealthTracker, clocks: Clocks) -> Event:
    assert h.failed(SUBJECT, error()) is None
    clocks.advance(AFTER)
    unhealthy = h.failed(SUBJECT, error())
    assert unhealthy is not None
    return unhealthy


def test_no_event_before_after_seconds_of_continuous_failure(clocks: Clocks) -> None:
    h = tracker(clocks)
    assert h.failed(SUBJECT, error()) is None
    for _ in range(4):
        clocks.advance(60)
        assert h.failed(SUBJECT, error()) is None
    clocks.advance(59.75)  # 299.75 s after the first failure (binary fractions: exact)
    assert h.failed(SUBJECT, error()) is None
    clocks.advance(0.25)  # exactly `after`
    assert h.failed(SUBJECT, error()) is not None


def test_unhealthy_event_once_past_the_threshold(clocks: Clocks) -> None:
    h = tracker(clocks)
    unhealthy = unhealthy_after_threshold(h, clocks)
    assert unhealthy.type is EventType.POLLER_UNHEALTHY
    assert unhealthy.id == UNHEALTHY_ID
    assert unhealthy.task is None and unhealthy.previous_status is None
    assert (unhealthy.project_id, unhealthy.region, unhealthy.instance) == (
        PROJECT_ID,
        "cn-north-4",
        INSTANCE,
    )
    assert unhealthy.detected_at == T0 + timedelta(seconds=AFTER)
    assert unhealthy.problem == PollProblem(
        reason="server_error",
        message=f"DCS API error for instance {INSTANCE.id}, HTTP 503, DCS.5000: busy (X-Request-Id req-1)",
        http_status=503,
        error_code="DCS.5000",
        since=T0,
    )
    assert unhealthy.summary == "Cannot poll orders-cache: server_error DCS.5000"


def test_unhealthy_repeats_only_until_confirmed(clocks: Clocks) -> None:
    h = tracker(clocks)
    unhealthy = unhealthy_after_threshold(h, clocks)
    clocks.advance(30)
    again = h.failed(SUBJECT, error(request_id="req-2"))
    assert again is not None and again.id == unhealthy.id  # not yet recorded: the same announcement again
    assert again.problem is not None and again.problem.since == T0
    h.confirm(again, KEY)
    assert h.announced == {KEY: again.problem}
    for _ in range(10):
        clocks.advance(AFTER)
        assert h.failed(SUBJECT, error()) is None


def test_a_deleted_instance_is_not_a_health_problem_but_another_404_is(clocks: Clocks) -> None:
    h = tracker(clocks)
    assert h.failed(SUBJECT, error(Reason.NOT_FOUND, code="DCS.4001")) is None
    clocks.advance(AFTER)
    assert h.failed(SUBJECT, error(Reason.NOT_FOUND, code="DCS.4001")) is not None  # a wrong URL
    h = tracker(clocks)
    assert h.failed(SUBJECT, error(Reason.NOT_FOUND, code="DCS.3022")) is None
    clocks.advance(AFTER * 10)
    assert h.failed(SUBJECT, error(Reason.NOT_FOUND, code="DCS.3022")) is None
    # A DCS.3022 did not start the episode: the first real failure does.
    assert h.failed(SUBJECT, error()) is None
    clocks.advance(AFTER)
    assert h.failed(SUBJECT, error(Reason.NOT_FOUND, code="DCS.3022")) is None
    unhealthy = h.failed(SUBJECT, error())
    assert unhealthy is not None and unhealthy.problem is not None
    assert unhealthy.problem.since == T0 + timedelta(seconds=AFTER * 11)


@pytest.mark.parametrize(
    "reason", [r for r in Reason if r is not Reason.NOT_FOUND], ids=lambda r: str(r.value)
)
def test_every_other_reason_counts(clocks: Clocks, reason: Reason) -> None:
    h = tracker(clocks)
    assert h.failed(SUBJECT, error(reason)) is None
    clocks.advance(AFTER)
    unhealthy = h.failed(SUBJECT, error(reason))
    assert unhealthy is not None and unhealthy.problem is not None
    assert unhealthy.problem.reason == reason.value


def test_problem_reports_the_latest_error(clocks: Clocks) -> None:
    h = tracker(clocks)
    assert h.failed(SUBJECT, error(Reason.TIMEOUT)) is None
    clocks.advance(AFTER)
    denied = DcsApiError(INSTANCE.id, Reason.AUTH, "denied", http_status=401, error_code="APIGW.0301")
    unhealthy = h.failed(SUBJECT, denied)
    assert unhealthy is not None and unhealthy.problem is not None
    p = unhealthy.problem
    assert (p.reason, p.http_status, p.error_code, p.since) == ("auth", 401, "APIGW.0301", T0)
    assert unhealthy.summary == "Cannot poll orders-cache: auth APIGW.0301"


def test_success_without_announcement_is_nothing_and_ends_the_streak(clocks: Clocks) -> None:
    h = tracker(clocks)
    assert h.succeeded(SUBJECT) is None
    assert h.failed(SUBJECT, error()) is None
    clocks.advance(AFTER - 1)
    assert h.succeeded(SUBJECT) is None
    clocks.advance(1)
    assert h.failed(SUBJECT, error()) is None  # a new streak began
    clocks.advance(AFTER - 1)
    assert h.failed(SUBJECT, error()) is None
    # Announced but not confirmed: nothing was recorded, so nothing to recover from.
    clocks.advance(1)
    assert h.failed(SUBJECT, error()) is not None
    assert h.succeeded(SUBJECT) is None
    assert h.announced == {}


def test_recovered_after_confirm_with_the_same_since(clocks: Clocks) -> None:
    h = tracker(clocks)
    unhealthy = unhealthy_after_threshold(h, clocks)
    h.confirm(unhealthy, KEY)
    clocks.advance(1500)
    recovered = h.succeeded(SUBJECT)
    assert recovered is not None
    assert recovered.type is EventType.POLLER_RECOVERED
    assert recovered.problem == unhealthy.problem
    assert recovered.detected_at == T0 + timedelta(seconds=AFTER + 1500)
    assert recovered.summary == "Polling orders-cache works again"
    assert recovered.id == RECOVERED_ID != unhealthy.id
    # Not yet recorded: the next success says it again (same id); confirmed: nothing more.
    again = h.succeeded(SUBJECT)
    assert again is not None and again.id == recovered.id
    h.confirm(recovered, KEY)
    assert h.announced == {}
    assert h.succeeded(SUBJECT) is None


def test_ids_are_deterministic() -> None:
    assert event_id(INSTANCE.id, "", EventType.POLLER_UNHEALTHY, "2026-11-28T08:00:00+00:00") == UNHEALTHY_ID
    assert event_id(INSTANCE.id, "", EventType.POLLER_RECOVERED, "2026-11-28T08:00:00+00:00") == RECOVERED_ID
    # Another tracker (a restarted daemon) with the same episode gives the same ids, whatever its time zone.
    local = Clocks()
    h = HealthTracker(
        AFTER,
        monotonic=local.monotonic,
        clock=lambda: local.now().astimezone(timezone(timedelta(hours=8))),
    )
    unhealthy = unhealthy_after_threshold(h, local)
    assert unhealthy.id == UNHEALTHY_ID
    h.confirm(unhealthy, KEY)
    recovered = h.succeeded(SUBJECT)
    assert recovered is not None and recovered.id == RECOVERED_ID


def test_a_new_episode_after_recovery_gets_a_new_id(clocks: Clocks) -> None:
    h = tracker(clocks)
    first = unhealthy_after_threshold(h, clocks)
    h.confirm(first, KEY)
    recovered = h.succeeded(SUBJECT)
    assert recovered is not None
    h.confirm(recovered, KEY)
    clocks.advance(60)
    second = unhealthy_after_threshold(h, clocks)
    assert second.problem is not None and second.problem.since == T0 + timedelta(seconds=AFTER + 60)
    assert second.id == event_id(INSTANCE.id, "", EventType.POLLER_UNHEALTHY, "2026-11-28T08:06:00+00:00")
    assert len({first.id, recovered.id, second.id}) == 3
    h.confirm(second, KEY)
    again = h.succeeded(SUBJECT)
    assert again is not None and again.id not in (recovered.id, first.id, second.id)


def test_announced_loaded_at_construction(clocks: Clocks) -> None:
    since = T0 - timedelta(hours=2)
    loaded = PollProblem(reason="timeout", message="timed out", since=since)
    h = tracker(clocks, announced={KEY: loaded})
    # Still failing after a restart: already announced, so nothing (however long it goes on).
    assert h.failed(SUBJECT, error()) is None
    clocks.advance(AFTER * 3)
    assert h.failed(SUBJECT, error()) is None
    recovered = h.succeeded(SUBJECT)
    assert recovered is not None
    assert recovered.type is EventType.POLLER_RECOVERED
    assert recovered.problem == loaded
    assert recovered.id == event_id(INSTANCE.id, "", EventType.POLLER_RECOVERED, since.isoformat())


def test_announced_first_success_returns_recovered(clocks: Clocks) -> None:
    loaded = PollProblem(reason="auth", message="denied", since=T0)
    h = tracker(clocks, announced={KEY: loaded})
    recovered = h.succeeded(SUBJECT)
    assert recovered is not None and recovered.id == RECOVERED_ID


def test_subjects_are_independent(clocks: Clocks) -> None:
    other = Subject(
        key=f"{PROJECT_ID}/other",
        project_id=PROJECT_ID,
        region="cn-north-4",
        instance=INSTANCE.model_copy(update={"id": "other", "name": "other-cache"}),
    )
    h = tracker(clocks)
    assert h.failed(SUBJECT, error()) is None
    clocks.advance(AFTER - 1)
    assert h.failed(other, error()) is None
    clocks.advance(1)
    assert h.failed(SUBJECT, error()) is not None
    assert h.failed(other, error()) is None
    assert h.succeeded(other) is None
    assert h.failed(SUBJECT, error()) is not None


def test_forget_drops_the_streak(clocks: Clocks) -> None:
    h = tracker(clocks)
    assert h.failed(SUBJECT, error()) is None
    clocks.advance(AFTER - 1)
    h.forget(KEY)
    clocks.advance(1)
    assert h.failed(SUBJECT, error()) is None  # the streak starts again


def test_confirm_ignores_task_events(clocks: Clocks) -> None:
    h = tracker(clocks)
    h.confirm(task_event(), KEY)
    assert h.announced == {}
