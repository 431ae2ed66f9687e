"""Discovery is pure: the API's instance list and a project's config in, the watched instances out."""

from __future__ import annotations

from typing import Any

import pytest

from notifier.config.models import AkSkCredentialsConfig, InstanceConfig, InstanceFilter, ProjectSpec
from notifier.pipeline.discovery import Listing, matches, select, tags_of
from notifier.pipeline.events import InstanceRef


def spec(
    *,
    names: list[str] | None = None,
    exclude: list[str] | None = None,
    statuses: list[str] | None = None,
    tags: dict[str, str] | None = None,
    instances: tuple[InstanceConfig, ...] = (),
    labels: dict[str, str] | None = None,
) -> ProjectSpec:
    return ProjectSpec(
        account="default",
        region="cn-north-4",
        project_id="p1",
        endpoint="https://dcs.cn-north-4.myhuaweicloud.com",
        ces_endpoint="https://ces.cn-north-4.myhuaweicloud.com",
        credentials=AkSkCredentialsConfig(),
        discover=True,
        filter=InstanceFilter(
            names=["*"] if names is None else names,
            exclude=exclude or [],
            statuses=statuses or [],
            tags=tags or {},
        ),
        instances=instances,
        labels=labels or {},
        where="cloud.0.projects.0",
    )


def raw(
    iid: str | None, name: str | None = None, status: str = "RUNNING", tags: Any = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"status": status}
    if iid is not None:
        out["instance_id"] = iid
    if name is not None:
        out["name"] = name
    if tags is not None:
        out["tags"] = tags
    return out


FLEET = [
    raw("i-1", "orders-cache", tags=[{"key": "team", "value": "payments"}, {"key": "env", "value": "prod"}]),
    raw("i-2", "orders-tmp", tags=[{"key": "team", "value": "payments"}]),
    raw("i-3", "sessions-cache", status="creating"),
    raw("i-4", None, status="RUNNING"),
    raw("orders-by-id", "", status="running"),
]


def watched(listing: Listing) -> dict[str, tuple[str, dict[str, str]]]:
    return {iid: (i.name, i.labels) for iid, i in listing.watched.items()}


def test_everything_is_watched_by_default_and_tags_become_labels() -> None:
    listing = select(FLEET, spec())
    assert listing.listed == frozenset({"i-1", "i-2", "i-3", "i-4", "orders-by-id"})
    assert watched(listing) == {
        "i-1": ("orders-cache", {"team": "payments", "env": "prod"}),
        "i-2": ("orders-tmp", {"team": "payments"}),
        "i-3": ("sessions-cache", {}),
        "i-4": ("i-4", {}),  # no name: the id
        "orders-by-id": ("orders-by-id", {}),
    }
    assert all(isinstance(i, InstanceRef) and i.id == iid for iid, i in listing.watched.items())


def test_name_globs_match_the_name_or_the_id() -> None:
    assert set(select(FLEET, spec(names=["orders-*"])).watched) == {"i-1", "i-2", "orders-by-id"}
    assert set(select(FLEET, spec(names=["i-3", "*-tmp"])).watched) == {"i-2", "i-3"}
    assert set(select(FLEET, spec(names=[])).watched) == set()
    # Globs are case-sensitive and anchored.
    assert set(select(FLEET, spec(names=["Orders-*", "cache"])).watched) == set()


def test_exclude_wins_over_names_and_matches_name_or_id() -> None:
    assert set(select(FLEET, spec(names=["orders-*"], exclude=["*-tmp"])).watched) == {"i-1", "orders-by-id"}
    assert set(select(FLEET, spec(exclude=["i-1", "i-3"])).watched) == {"i-2", "i-4", "orders-by-id"}


def test_statuses_are_case_insensitive() -> None:
    assert set(select(FLEET, spec(statuses=["running"])).watched) == {"i-1", "i-2", "i-4", "orders-by-id"}
    assert set(select(FLEET, spec(statuses=["CREATING", "Extending"])).watched) == {"i-3"}
    no_status = [{"instance_id": "i-9", "name": "x"}]
    assert select(no_status, spec(statuses=["RUNNING"])).watched == {}
    assert set(select(no_status, spec()).watched) == {"i-9"}


def test_tags_filter_values_and_star() -> None:
    assert set(select(FLEET, spec(tags={"team": "*"})).watched) == {"i-1", "i-2"}
    assert set(select(FLEET, spec(tags={"team": "payments", "env": "prod"})).watched) == {"i-1"}
    assert set(select(FLEET, spec(tags={"env": "staging"})).watched) == set()
    assert set(select(FLEET, spec(tags={"Team": "*"})).watched) == set()


def test_every_given_filter_must_match() -> None:
    s = spec(names=["*-cache", "i-2"], exclude=["sessions-*"], statuses=["RUNNING"], tags={"team": "*"})
    assert set(select(FLEET, s).watched) == {"i-1", "i-2"}


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (
            [{"key": "team", "value": "payments"}, {"key": "env", "value": "prod"}],
            {"team": "payments", "env": "prod"},
        ),
        ({"team": "payments", "tier": 1, "empty": None}, {"team": "payments", "tier": "1", "empty": ""}),
        (
            [{"key": "k", "value": None}, {"key": "n", "value": 3}, {"key": "nv"}],
            {"k": "", "n": "3", "nv": ""},
        ),
        (
            [
                "team=payments",
                None,
                7,
                {"value": "no key"},
                {"key": 5, "value": "x"},
                {"key": "ok", "value": "y"},
            ],
            {"ok": "y"},
        ),
        ([], {}),
        ({}, {}),
        (None, {}),
        ("team=payments", {}),
        (42, {}),
    ],
)
def test_tags_of_shapes_and_junk(tags: Any, expected: dict[str, str]) -> None:
    assert tags_of({} if tags is None else {"tags": tags}) == expected


def test_instances_without_an_id_are_skipped() -> None:
    listing = select(
        [
            {"name": "no-id", "status": "RUNNING"},
            {"instance_id": "", "name": "empty-id"},
            {"instance_id": None},
            {"instance_id": 12345, "name": "numeric-id"},
            {"instance_id": "i-ok", "name": "ok"},
        ],
        spec(),
    )
    assert listing.listed == frozenset({"i-ok"})
    assert set(listing.watched) == {"i-ok"}


def test_configured_instances_are_watched_whatever_the_filter() -> None:
    configured = (
        InstanceConfig(id="i-3", name="sessions", labels={"team": "web", "pager": "yes"}),
        InstanceConfig(id="i-gone"),  # configured, not listed: not in this listing
    )
    s = spec(names=["orders-*"], exclude=["i-3"], statuses=["RUNNING"], instances=configured)
    listing = select(FLEET, s)
    assert set(listing.watched) == {"i-1", "i-2", "i-3", "orders-by-id"}
    # The configured name wins over the API's; configured labels win over tags.
    tagged = [
        *FLEET[:2],
        raw(
            "i-3",
            "sessions-cache",
            "creating",
            [{"key": "team", "value": "ops"}, {"key": "az", "value": "az1"}],
        ),
    ]
    listing = select(tagged, s)
    assert listing.watched["i-3"] == InstanceRef(
        id="i-3", name="sessions", labels={"team": "web", "az": "az1", "pager": "yes"}
    )
    assert "i-gone" not in listing.listed and "i-gone" not in listing.watched


def test_project_labels_are_under_tags_and_configured_labels() -> None:
    configured = (InstanceConfig(id="i-2", name="tmp", labels={"env": "lab"}),)
    s = spec(labels={"env": "prod", "team": "unknown", "region": "north"}, instances=configured)
    listing = select(FLEET, s)
    assert listing.watched["i-1"].labels == {"env": "prod", "team": "payments", "region": "north"}
    assert listing.watched["i-2"].labels == {"env": "lab", "team": "payments", "region": "north"}
    assert listing.watched["i-3"].labels == {"env": "prod", "team": "unknown", "region": "north"}


def test_listed_holds_every_id_even_filtered_out() -> None:
    listing = select(FLEET, spec(names=["nothing-matches"]))
    assert listing.watched == {}
    assert listing.listed == frozenset({"i-1", "i-2", "i-3", "i-4", "orders-by-id"})
    assert select([], spec()) == Listing(listed=frozenset())


def test_select_does_not_change_the_configured_instances() -> None:
    configured = InstanceConfig(id="i-1", name="orders", labels={"x": "1"})
    s = spec(instances=(configured,), labels={"p": "1"})
    select(FLEET, s)
    assert configured.labels == {"x": "1"}
    assert s.labels == {"p": "1"}


def test_matches() -> None:
    f = InstanceFilter(names=["orders-*"], exclude=["*-tmp"], statuses=["RUNNING"], tags={"team": "*"})
    assert matches("i-1", "orders-cache", "running", {"team": ""}, f)
    assert not matches("i-1", "orders-cache", "running", {}, f)
    assert not matches("i-1", "orders-tmp", "RUNNING", {"team": "x"}, f)
    assert not matches("i-1", "orders-cache", "FROZEN", {"team": "x"}, f)
    assert matches("orders-1", "", "RUNNING", {"team": "x"}, f)  # an empty name: the id is matched
    assert matches("i", "n", "", {}, InstanceFilter())
