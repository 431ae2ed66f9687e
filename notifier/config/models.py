"""The configuration's models: every section, its defaults, bounds and checks (pydantic).

This module only says what a valid config is, in the fleet form; reading the file is
:mod:`notifier.config.load`. Secrets (AK/SK, tokens, webhook URLs, webhook secrets, a Redis URL with a
password) are ``SecretStr`` so they never show in a repr, a log line or ``check-config`` output.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from notifier.config.durations import parse_duration
from notifier.config.redis_url import RedisTarget, parse_redis_url
from notifier.config.source import Loc, SourceMap, did_you_mean
from notifier.dcs.models import SWITCHING_TASKS
from notifier.delivery.channels import ChannelConfig
from notifier.logsetup import LogFormat
from notifier.net.session import check_proxy_url
from notifier.net.tls import CaBundle, check_host_entry
from notifier.pipeline.events import EventType
from notifier.pipeline.time_intervals import (
    Maintenance,
    TimeInterval,
    parse_days_of_month,
    parse_location,
    parse_months,
    parse_time_range,
    parse_weekdays,
    parse_years,
)
from notifier.redaction import secret_header, url_passwords
from notifier.store.keys import DEFAULT_PREFIX, DELIVERED_TTL_SECONDS


class AtKey(ValueError):
    """A model's own check about one of its keys: pydantic places a model's errors at the model, so the
    key (relative to the model) travels with the error and the error message names it."""

    def __init__(self, key: Loc, message: str) -> None:
        super().__init__(f"{'.'.join(map(str, key))}: {message}")
        self.key = key
        self.message = message


class _Model(BaseModel):
    # hide_input_in_errors: a raw ValidationError never quotes what was written (an SK, a proxy password).
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


HOUR = 3600.0
DAY = 86_400.0


#: A duration setting: seconds, or a number with a unit (``90s``, ``30m``, ``2h``, ``7d``).
Duration = Annotated[float, BeforeValidator(parse_duration)]


def seconds(default: float, *, le: float, ge: float | None = None, description: str | None = None) -> Any:
    """A duration setting: finite, above 0 (or ``ge``), at most ``le`` — its documented maximum.

    Every duration has a maximum: an unbounded one (``1e12``, ``.inf``) validates and then overflows the
    date arithmetic of every poll.
    """
    if ge is None:
        return Field(default=default, gt=0, le=le, allow_inf_nan=False, description=description)
    return Field(default=default, ge=ge, le=le, allow_inf_nan=False, description=description)


_URL = re.compile(r"^https?://[^/\s]+")


def _url_or_none(v: str | None, example: str) -> str | None:
    if v is None or v == "":
        return None
    if not _URL.match(v):
        raise ValueError(f"must be an http:// or https:// URL, e.g. {example}")
    return v.rstrip("/")


class AkSkCredentialsConfig(_Model):
    """Permanent AK/SK, or temporary AK/SK with their security token (``X-Security-Token``, signed).

    Left out, ``ak``/``sk`` come from the environment variables CLOUD_SDK_AK/CLOUD_SDK_SK.
    """

    type: Literal["aksk"] = "aksk"
    ak: SecretStr | None = None
    sk: SecretStr | None = None
    security_token: SecretStr | None = None


class FileCredentialsConfig(_Model):
    """AK/SK (and a security token) read from a file, re-read whenever the file changes.

    JSON or YAML (``ak``, ``sk``, ``security_token``; or Huawei's temporary-credential shape
    ``{"credential": {"access", "secret", "securitytoken"}}``), or the console's ``credentials.csv``.
    """

    type: Literal["file"] = "file"
    path: Path


class IamCredentialsConfig(_Model):
    """An IAM user: a project-scoped token (``X-Auth-Token``) is obtained and refreshed before it expires."""

    type: Literal["iam"] = "iam"
    domain: str = Field(min_length=1, description="the account (domain) name")
    user: str = Field(min_length=1)
    password: SecretStr
    #: Default: ``https://iam.{region}.myhuaweicloud.com`` of each project's region.
    iam_endpoint: str | None = None
    #: Get a new token this many seconds before the current one expires (tokens last 24 h).
    refresh_before: Duration = Field(default=3600.0, ge=0, le=72_000, allow_inf_nan=False)

    @field_validator("iam_endpoint")
    @classmethod
    def _iam_url(cls, v: str | None) -> str | None:
        return _url_or_none(v, "https://iam.cn-north-4.myhuaweicloud.com")

    def endpoint_for(self, region: str) -> str:
        return self.iam_endpoint or f"https://iam.{region}.myhuaweicloud.com"


CredentialsConfig = Annotated[
    AkSkCredentialsConfig | FileCredentialsConfig | IamCredentialsConfig, Field(discriminator="type")
]


def _infer_credentials_type(value: Any) -> Any:
    """``type`` may be left out when the keys say which kind is meant."""
    if isinstance(value, dict) and "type" not in value:
        if "path" in value:
            return {"type": "file", **value}
        if "password" in value or "user" in value:
            return {"type": "iam", **value}
        return {"type": "aksk", **value}
    return value


class InstanceConfig(_Model):
    id: str = Field(min_length=1)
    name: str = ""
    labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _default_name(self) -> InstanceConfig:
        if not self.name:
            object.__setattr__(self, "name", self.id)
        return self


class InstanceFilter(_Model):
    """Which discovered instances are watched. Every given filter must match."""

    #: Glob patterns (``orders-*``) on the instance name or id; an instance must match one.
    names: list[str] = Field(default_factory=lambda: ["*"])
    #: Glob patterns on the name or id; an instance matching one is not watched.
    exclude: list[str] = Field(default_factory=list)
    #: Instance statuses (RUNNING, EXTENDING...) to watch; empty: any status.
    statuses: list[str] = Field(default_factory=list)
    #: Tags the instance must carry; a value of ``*`` only requires the key.
    tags: dict[str, str] = Field(default_factory=dict)


class ProjectConfig(_Model):
    project_id: str = Field(min_length=1)
    #: Default: the account's region.
    region: str | None = Field(default=None, min_length=1)
    #: Default: ``https://dcs.{region}.myhuaweicloud.com``.
    endpoint: str | None = None
    #: Cloud Eye's. Default: ``https://ces.{region}.myhuaweicloud.com``.
    ces_endpoint: str | None = None
    #: Default: the account's credentials.
    credentials: CredentialsConfig | None = None
    #: List the project's instances (``GET /v2/{project_id}/instances``) instead of naming them.
    #: Default: the account's ``discover``.
    discover: bool | None = None
    #: Default: the account's ``filter``.
    filter: InstanceFilter | None = None
    instances: list[InstanceConfig] = Field(default_factory=list)
    #: Labels every instance of this project carries (discovered instances add their tags).
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("credentials", mode="before")
    @classmethod
    def _credentials_type(cls, v: Any) -> Any:
        return _infer_credentials_type(v)

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_url(cls, v: str | None) -> str | None:
        return _url_or_none(v, "https://dcs.cn-north-4.myhuaweicloud.com")

    @field_validator("ces_endpoint")
    @classmethod
    def _ces_endpoint_is_url(cls, v: str | None) -> str | None:
        return _url_or_none(v, "https://ces.cn-north-4.myhuaweicloud.com")


class AccountConfig(_Model):
    name: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]+$")
    region: str = Field(default="cn-north-4", min_length=1)
    credentials: CredentialsConfig = Field(default_factory=AkSkCredentialsConfig)
    #: Defaults for every project of the account (each project may say otherwise).
    discover: bool = False
    filter: InstanceFilter = Field(default_factory=InstanceFilter)
    projects: list[ProjectConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _something_to_watch(self) -> AccountConfig:
        for p, project in enumerate(self.projects):
            discover = self.discover if project.discover is None else project.discover
            if not discover and not project.instances:
                raise AtKey(("projects", p), "nothing to watch: list instances, or set discover: true")
        return self

    @field_validator("credentials", mode="before")
    @classmethod
    def _credentials_type(cls, v: Any) -> Any:
        return _infer_credentials_type(v)


@dataclass(frozen=True, slots=True)
class ProjectSpec:
    """One project as the poller sees it: account, region, endpoint and credentials resolved."""

    account: str
    region: str
    project_id: str
    endpoint: str
    ces_endpoint: str
    credentials: AkSkCredentialsConfig | FileCredentialsConfig | IamCredentialsConfig
    discover: bool
    filter: InstanceFilter
    instances: tuple[InstanceConfig, ...]
    labels: Mapping[str, str]
    #: Where this project sits in the config file, for error messages (``cloud.0.projects.1``).
    where: str

    @property
    def host(self) -> str:
        return self.endpoint.split("://", 1)[1].split("/", 1)[0]


class ApiConfig(_Model):
    """How the DCS (and IAM) APIs are called: timeouts, paging, politeness, TLS and proxy."""

    timeout: Duration = seconds(10.0, le=300)
    page_size: int = Field(default=100, ge=1, le=1000)
    #: At most this many API calls at once, over all projects and regions...
    max_concurrency: int = Field(default=16, ge=1, le=1024)
    #: ...and at most this many at once to one region.
    region_concurrency: int = Field(default=8, ge=1, le=1024)
    #: Requests per second to one endpoint at most (a token bucket); lowered on 429 and raised back (AIMD).
    rate_limit: float = Field(default=20.0, gt=0, le=1_000_000, allow_inf_nan=False)
    #: The rate never drops below this, however often the API throttles.
    min_rate: float = Field(default=0.2, ge=0.001, le=1_000_000, allow_inf_nan=False)
    #: A PEM file of CA certificates trusted in addition to the system's.
    ca_bundle: CaBundle | None = None
    #: Endpoints (URLs or host[:port]) whose TLS certificate is NOT verified. Empty by default.
    insecure_endpoints: list[str] = Field(default_factory=list)
    #: An HTTP(S) proxy URL; default: HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment.
    proxy: SecretStr | None = None

    @field_validator("insecure_endpoints")
    @classmethod
    def _endpoints_parse(cls, v: list[str]) -> list[str]:
        for entry in v:
            check_host_entry(entry)
        return v

    @field_validator("proxy")
    @classmethod
    def _proxy_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            check_proxy_url(v.get_secret_value())  # as a channel's proxy: its message never quotes the URL
        return v

    @model_validator(mode="after")
    def _min_rate(self) -> ApiConfig:
        if self.min_rate > self.rate_limit:
            raise ValueError("min_rate must not exceed rate_limit")
        return self


class DiscoveryConfig(_Model):
    #: List each discovering project's instances this often (seconds).
    interval: Duration = seconds(300.0, le=DAY)
    #: A deleted instance's state is kept this long (seconds) after ``instance.removed``, then dropped.
    removed_ttl: Duration = seconds(7 * DAY, ge=1, le=365 * DAY)
    #: Also list, every ``interval``, the projects that name their instances (not discovering), for each
    #: instance's DCS maintenance window (needs ``dcs:instance:list``); false: their windows stay unknown.
    maintenance_windows: bool = True


class CloudEyeConfig(_Model):
    """Cloud Eye events (``SYS.DCS``: automatic failovers, abnormal nodes...) beside the background tasks."""

    enabled: bool = False
    #: Seconds between two polls of one project's events.
    interval: Duration = seconds(30.0, le=DAY)
    #: Each window reaches back this long before the end of the last successful one (Cloud Eye may record
    #: an event late); seen event ids are remembered at least this long.
    overlap: Duration = seconds(600.0, ge=0, le=DAY)
    #: ``SYS.DCS`` event names to watch; ``*``: all.
    events: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    #: A ``masterStandbySwitchover`` this close (seconds) to a task of the instance that switches over
    #: (running then, or started or ended this close to it) is part of that task, not an alert of its own.
    correlation_window: Duration = seconds(300.0, ge=0, le=HOUR)
    #: Task names that switch the master over on the way (the switchover then belongs to them). The
    #: documented ones by default; a restart's task name, if it has one, is unconfirmed: add it once seen.
    switching_tasks: list[str] = Field(default_factory=lambda: sorted(SWITCHING_TASKS), min_length=1)

    def watches(self, event_name: str) -> bool:
        return "*" in self.events or event_name in self.events


class HealthConfig(_Model):
    """``poller.unhealthy`` once polling an instance has failed this long; ``poller.recovered`` after."""

    after: Duration = seconds(300.0, le=7 * DAY, description="seconds of continuous failure")
    #: Channels that get poller health events in addition to what the rules route there.
    channels: list[str] = Field(default_factory=list)


class PollConfig(_Model):
    interval: Duration = seconds(30.0, le=DAY)
    baseline_grace: Duration = seconds(900.0, ge=0, le=7 * DAY)
    #: How far back the first poll of an instance looks (seconds); later polls ask only for what is new.
    window: Duration = seconds(DAY, le=30 * DAY)
    #: Margin for clock skew between us and the API: each window starts this long before the last poll.
    skew: Duration = seconds(300.0, ge=0, le=DAY)
    #: Each poll is scheduled ``interval`` ± this fraction, so instances do not poll in lock-step.
    jitter: float = Field(default=0.1, ge=0, le=0.5)
    #: After a rejected credential or a missing instance, ask again only this often (seconds).
    recheck: Duration = seconds(300.0, le=DAY)
    #: A poll refuses an answer that counts more tasks than this in its window (see README, Politeness).
    max_tasks: int = Field(default=10_000, ge=1, le=1_000_000)
    #: An instance with a task in progress is polled this often (seconds), while its endpoint's rate limit
    #: has room; 0 = every ``interval`` like the others. Never more often than ``interval``.
    active_interval: Duration = seconds(5.0, ge=0, le=DAY)

    @property
    def active_every(self) -> float:
        """Seconds between polls of an instance with a task in progress (the default shortened to
        ``interval`` when that is shorter)."""
        return min(self.active_interval or self.interval, self.interval)


class RedisConfig(_Model):
    #: One server (``redis://``, ``rediss://``, ``unix://``), a Redis Cluster (``redis+cluster://``) or a
    #: Sentinel-managed master (``redis+sentinel://.../service_name[/db]``); see :func:`parse_redis_url`.
    url: SecretStr = SecretStr("redis://localhost:6379/0")
    key_prefix: str = Field(default=DEFAULT_PREFIX, pattern=r"^[A-Za-z0-9_.-]+$")

    @field_validator("url")
    @classmethod
    def _redis_url(cls, v: SecretStr) -> SecretStr:
        parse_redis_url(v.get_secret_value())  # ValueError: the message names the form, never the URL
        return v

    @property
    def target(self) -> RedisTarget:
        return parse_redis_url(self.url.get_secret_value())


class DeliveryConfig(_Model):
    #: Give up (dead letter) after this many failed attempts at one notification...
    max_attempts: int = Field(default=10, ge=1, le=10_000)
    #: ...or once it has waited this many seconds since it was queued.
    #: At most the notification log's 7 days: an older entry could be sent again once its log expired.
    max_age: Duration = seconds(DAY, le=DELIVERED_TTL_SECONDS)
    backoff_initial: Duration = seconds(1.0, le=HOUR)
    backoff_max: Duration = seconds(60.0, le=HOUR)
    #: ``dcs-notifier once`` tries a failing notification at most this many times, then leaves it queued.
    once_attempts: int = Field(default=3, ge=1, le=100)
    #: On SIGTERM, sends in flight get this long to finish before they are abandoned (and stay queued).
    stop_timeout: Duration = seconds(10.0, le=HOUR)
    #: This daemon's name in the Redis consumer group. Fixed by default, so that a restarted daemon (a new
    #: container, another host) resumes its own unacknowledged entries at once.
    consumer: str = Field(default="dcs-notifier", min_length=1)
    #: Entries another consumer left pending this long (seconds) are taken over.
    claim_idle: Duration = seconds(60.0, le=DAY)
    #: Entries read at a time; they stay claimed until sent, so keep batch / rate well under claim_idle.
    batch: int = Field(default=10, ge=1, le=1000)
    #: On chat channels, events of one group (``group_by``) reaching a channel within this many seconds
    #: are one message, unless their rule says otherwise (``group_wait``); 0: no grouping by default.
    group_wait: Duration = seconds(10.0, ge=0, le=HOUR)
    #: On a chat channel with cards, members of a group that arrive this long after its card was posted
    #: or last grew join that card (a burst detected over a whole poll cycle stays one card); 0: never.
    group_interval: Duration = seconds(300.0, ge=0, le=DAY)


def _known_event(value: Any) -> Any:
    """One clear message for an unknown event type (the union's two errors would say it twice)."""
    known = [e.value for e in EventType]
    if isinstance(value, str) and value != "*" and value not in known:
        hint = did_you_mean(value, known, quote=repr)
        raise ValueError(f"unknown event {value!r}{hint} (events: {', '.join(known)}, or * for all)")
    return value


EventPattern = Annotated[EventType | Literal["*"], BeforeValidator(_known_event)]

#: What a group of events may share (``group_by``).
GROUP_FIELDS = ("project", "region", "type", "task", "problem")


def _group_field(value: Any) -> Any:
    if (
        isinstance(value, str)
        and value not in GROUP_FIELDS
        and not (value.startswith("labels.") and len(value) > len("labels."))
    ):
        hint = did_you_mean(value, GROUP_FIELDS, quote=repr)
        raise ValueError(f"cannot group by {value!r}{hint} ({', '.join(GROUP_FIELDS)}, or labels.<name>)")
    return value


GroupField = Annotated[str, BeforeValidator(_group_field)]

#: Slack's mention syntax: a user (``<@U0123ABCD>``), a user group (``<!subteam^S0123ABCD>``, optionally
#: with its ``|@handle`` label) or a special mention (``<!here>``, ``<!channel>``, ``<!everyone>``).
_MENTION = re.compile(
    r"<(?:@[UW][A-Z0-9]{2,32}|!subteam\^S[A-Z0-9]{2,32}(?:\|@?[\w.-]{1,80})?|!here|!channel|!everyone)>"
)


def _mention(value: Any) -> Any:
    if isinstance(value, str) and not _MENTION.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a Slack mention: write <@U0123ABCD> (a user id), <!subteam^S0123ABCD> "
            "(a user group id), <!here>, <!channel> or <!everyone>"
        )
    return value


Mention = Annotated[str, BeforeValidator(_mention)]
#: A rule's mentions together (Slack shows them in a section block of their own, at most 3,000 characters).
MENTIONS_MAX = 1000
#: Which events of a rule carry its mentions when ``mention_on`` is not given: those that need a human.
DEFAULT_MENTION_ON: tuple[EventType, ...] = (EventType.FAILED, EventType.POLLER_UNHEALTHY, EventType.STUCK)


def _spans(parse: Any) -> Any:
    """A list of ranges as written (``monday:friday``), each checked by ``parse``; kept as written (so
    ``check-config --show`` shows them so), read again by :meth:`TimeIntervalConfig.compiled`."""

    def check(value: Any) -> Any:
        if isinstance(value, list):
            for item in value:
                parse(item)
            return [str(item) for item in value]
        return value

    return BeforeValidator(check)


class TimeRangeConfig(_Model):
    """``{start_time: "09:00", end_time: "17:00"}``: end exclusive, ``24:00`` the end of the day."""

    start_time: str
    end_time: str

    @model_validator(mode="after")
    def _ordered(self) -> TimeRangeConfig:
        parse_time_range(self.start_time, self.end_time)
        return self


class TimeIntervalConfig(_Model):
    """One of a named interval's ``time_intervals``, as Alertmanager writes it: every field optional, each
    a list of ranges; the interval contains a moment when every field given has a range that does."""

    times: list[TimeRangeConfig] | None = Field(default=None, min_length=1)
    weekdays: Annotated[list[str] | None, _spans(parse_weekdays)] = Field(default=None, min_length=1)
    days_of_month: Annotated[list[str] | None, _spans(parse_days_of_month)] = Field(
        default=None, min_length=1
    )
    months: Annotated[list[str] | None, _spans(parse_months)] = Field(default=None, min_length=1)
    years: Annotated[list[str] | None, _spans(parse_years)] = Field(default=None, min_length=1)
    #: An IANA time zone (``Europe/Berlin``), ``UTC`` (the default) or ``Local`` (the host's).
    location: str = "UTC"

    @field_validator("location")
    @classmethod
    def _zone(cls, v: str) -> str:
        parse_location(v)
        return v.strip()

    def compiled(self) -> TimeInterval:
        def spans(items: list[str] | None, parse: Any) -> Any:
            return None if items is None else tuple(parse(i) for i in items)

        times = (
            None
            if self.times is None
            else tuple(parse_time_range(t.start_time, t.end_time) for t in self.times)
        )
        return TimeInterval(
            times=times,
            weekdays=spans(self.weekdays, parse_weekdays),
            days_of_month=spans(self.days_of_month, parse_days_of_month),
            months=spans(self.months, parse_months),
            years=spans(self.years, parse_years),
            location=parse_location(self.location),
        )


class NamedTimeIntervalConfig(_Model):
    """A name rules use (``mute_time_intervals``, ``active_time_intervals``): active while one of its
    ``time_intervals`` contains the moment."""

    name: str = Field(min_length=1)
    time_intervals: list[TimeIntervalConfig] = Field(min_length=1)


class RuleConfig(_Model):
    name: str = Field(min_length=1)
    tasks: list[str] = Field(default_factory=lambda: ["*"])
    events: list[EventPattern] = Field(default_factory=lambda: list[EventType | Literal["*"]](["*"]))
    instances: list[str] = Field(default_factory=lambda: ["*"], description="instance ids or names")
    labels: dict[str, str] = Field(default_factory=dict, description="all must match")
    channels: list[str] = Field(min_length=1)
    #: Slack mentions (config only, never from API data) put in the messages of ``mention_on`` events.
    mention: list[Mention] = Field(default_factory=list, max_length=50)
    mention_on: list[EventPattern] = Field(
        default_factory=lambda: list[EventType | Literal["*"]](DEFAULT_MENTION_ON)
    )
    #: Events of one group reaching a channel within ``group_wait`` are one message (README, Grouping):
    #: the fields a group shares. None: project, type and task (poller health: project, type and cause).
    group_by: list[GroupField] | None = None
    #: None: ``delivery.group_wait`` (10 s) on chat channels, no grouping on generic webhooks (machines
    #: want events); a value applies to every channel of the rule, webhooks included; 0: never grouped.
    group_wait: Duration | None = Field(default=None, ge=0, le=HOUR)
    #: Names of ``time_intervals``: the rule sends nothing while one of them is active (at the event's
    #: detection)...
    mute_time_intervals: list[str] = Field(default_factory=list)
    #: ...and, when given, sends only while one of these is.
    active_time_intervals: list[str] = Field(default_factory=list)
    #: Only events whose change started ``inside`` (or ``outside``) the instance's DCS maintenance
    #: window; an event whose window is not known matches neither.
    maintenance: Maintenance | None = None
    #: The named intervals, read by :meth:`Config._cross_checks` (None: not resolved yet).
    _mute: tuple[TimeInterval, ...] | None = PrivateAttr(default=None)
    _active: tuple[TimeInterval, ...] | None = PrivateAttr(default=None)

    @field_validator("mention")
    @classmethod
    def _mentions_fit(cls, v: list[str]) -> list[str]:
        size = len(" ".join(v))
        if size > MENTIONS_MAX:
            raise ValueError(
                f"the mentions take {size} characters, more than {MENTIONS_MAX}: mention a user group "
                "(<!subteam^S…>) instead of its members"
            )
        return v

    def mentions_for(self, event_type: EventType) -> list[str]:
        """The mentions this rule adds to a notification of ``event_type``."""
        if self.mention and ("*" in self.mention_on or event_type in self.mention_on):
            return self.mention
        return []

    def resolve_intervals(self, named: Mapping[str, tuple[TimeInterval, ...]]) -> None:
        """Take the intervals this rule names from ``named`` (every name checked to be there)."""
        self._mute = tuple(i for n in self.mute_time_intervals for i in named[n])
        self._active = tuple(i for n in self.active_time_intervals for i in named[n])

    def _resolved(self, which: tuple[TimeInterval, ...] | None, names: list[str]) -> tuple[TimeInterval, ...]:
        if which is None:
            if names:  # a rule made alone: its names mean nothing without the config's time_intervals
                raise RuntimeError(
                    f"rule {self.name!r}: time intervals not resolved (validate it in a Config)"
                )
            return ()
        return which

    @property
    def mute_intervals(self) -> tuple[TimeInterval, ...]:
        """Every interval of the rule's ``mute_time_intervals``."""
        return self._resolved(self._mute, self.mute_time_intervals)

    @property
    def active_intervals(self) -> tuple[TimeInterval, ...]:
        """Every interval of the rule's ``active_time_intervals`` (empty: not restricted)."""
        return self._resolved(self._active, self.active_time_intervals)


class DigestConfig(_Model):
    """After an outage, a backlog of more than ``after`` notifications older than ``age`` is one digest."""

    #: More than this many old notifications waiting in a channel make a digest; 0: never.
    after: int = Field(default=20, ge=0, le=100_000)
    age: Duration = seconds(600.0, le=7 * DAY)
    #: Generic webhooks too (by default they get every event: machines want events).
    webhooks: bool = False


class ScalingConfig(_Model):
    """Several ``dcs-notifier run`` replicas sharing one Redis split the fleet (see notifier.store.leases)."""

    enabled: bool = False
    #: This replica's name (membership, leases, delivery consumer). Default: ``{hostname}-{pid}``.
    replica: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]+$")
    #: The fleet is split into this many shards, each leased to one replica.
    shards: int = Field(default=256, ge=1, le=65_536)
    #: Seconds a lease lasts without renewal (renewed every third of it). At least ``poll.interval``.
    lease_ttl: Duration = seconds(30.0, le=DAY)


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


class LoggingConfig(_Model):
    """What the daemon's log looks like; ``--log-format`` and ``--log-level`` say otherwise for one run."""

    #: ``text``: one line per record; ``json``: one JSON object per line (README, Logs).
    format: LogFormat = "text"
    level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_upper)] = "INFO"


def split_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9464`` for IPv6) as (host, port); ValueError naming what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port (e.g. 127.0.0.1:9464), got {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host:
        raise ValueError(f"no host in {value!r}: say 127.0.0.1:PORT (this host) or 0.0.0.0:PORT (all)")
    return host, int(port)


class HttpConfig(_Model):
    """The operator's listener: ``/metrics``, ``/healthz`` and ``/readyz`` (README, Operations)."""

    #: ``host:port``; empty: no listener. Port 0 takes a free port (logged).
    listen: str = ""

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        value = value.strip()
        if value:
            split_listen(value)
        return value

    @property
    def address(self) -> tuple[str, int] | None:
        return split_listen(self.listen) if self.listen else None


#: The stuck-task watchdog's limits by task name (``default``: every other name); keys a config gives
#: replace these one by one (README, Stuck tasks). Huawei documents a switchover's interruption (up to
#: 30 s) and a spec change's read-only minutes (up to 30 for a type change), not the tasks' durations.
DEFAULT_WATCHDOG: Mapping[str, float] = {
    "default": 30 * 60.0,
    "masterStandbySwapJob": 5 * 60.0,
    "EXTEND": 2 * HOUR,
}
#: A watchdog limit: 0 = never stuck; at most 7 days (a task in progress is followed that long).
WatchdogLimit = Annotated[
    float, BeforeValidator(parse_duration), Field(ge=0, le=7 * DAY, allow_inf_nan=False)
]


def _watchdog(given: dict[str, float]) -> dict[str, float]:
    """``watchdog`` as the config gives it, over the defaults; one key per kind of task."""
    # Imported here: the rules import this module (EXTEND and ChangeInstanceSpec have one home there).
    from notifier.dcs.models import TASK_DISPLAY_NAMES
    from notifier.pipeline.rules import canonical_task

    known = ["default", *TASK_DISPLAY_NAMES]
    kinds: dict[str, str] = {}
    for name in given:
        # Any name the API may report is taken; one this close to a known name is a typo (never matched).
        close = [] if name in known else difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        if close:
            raise AtKey(
                (name,), f"unknown task name {name!r}; did you mean {close[0]!r}? (names are case-sensitive)"
            )
        kind = canonical_task(name)
        if kind in kinds:
            raise AtKey((name,), f"{kinds[kind]} and {name} are the same kind of task: give one of them")
        kinds[kind] = name
    merged = {k: v for k, v in DEFAULT_WATCHDOG.items() if canonical_task(k) not in kinds}
    merged.update(given)
    return merged


class Config(_Model):
    """The whole file, in the fleet form (:mod:`notifier.config.load` rewrites the short form into it)."""

    cloud: list[AccountConfig] = Field(min_length=1)
    api: ApiConfig = Field(default_factory=ApiConfig)
    poll: PollConfig = Field(default_factory=PollConfig)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    cloud_eye: CloudEyeConfig = Field(default_factory=CloudEyeConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    channels: dict[str, ChannelConfig] = Field(min_length=1)
    rules: list[RuleConfig] = Field(default_factory=list)
    #: Named time intervals rules mute or activate themselves with (Alertmanager's ``time_intervals``).
    time_intervals: list[NamedTimeIntervalConfig] = Field(default_factory=list)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    digest: DigestConfig = Field(default_factory=DigestConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    #: How long a task may stay in progress before ``task.stuck``, by task name or ``default`` (seconds).
    watchdog: Annotated[dict[str, WatchdogLimit], AfterValidator(_watchdog)] = Field(
        default_factory=lambda: dict(DEFAULT_WATCHDOG)
    )
    _source: SourceMap = PrivateAttr(default_factory=SourceMap)

    @property
    def source(self) -> SourceMap:
        """The file this config came from, and where its keys are written there."""
        return self._source

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> Config:
        source = (info.context or {}).get("source")
        if isinstance(source, SourceMap):
            self._source = source  # before the checks: their messages name keys as the file writes them
        accounts = [a.name for a in self.cloud]
        dupes = sorted({a for a in accounts if accounts.count(a) > 1})
        if dupes:
            raise AtKey(("cloud",), f"duplicate account name {', '.join(dupes)} (give each a name)")
        seen: dict[str, str] = {}
        for a, account in enumerate(self.cloud):
            for p, project in enumerate(account.projects):
                at: Loc = ("cloud", a, "projects", p)
                if project.project_id in seen:
                    raise AtKey(
                        (*at, "project_id"),
                        f"project {project.project_id} is already listed at {seen[project.project_id]}",
                    )
                seen[project.project_id] = self.source.key(at)
                ids = [i.id for i in project.instances]
                dupes = sorted({i for i in ids if ids.count(i) > 1})
                if dupes:
                    raise AtKey((*at, "instances"), f"duplicate id {', '.join(dupes)}")
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise AtKey(("rules",), f"duplicate rule name {', '.join(dupes)}")
        for i, rule in enumerate(self.rules):
            for ch in rule.channels:
                if ch not in self.channels:
                    raise AtKey(("rules", i, "channels"), self._unknown_channel(ch))
        self._check_time_intervals()
        poll = self.poll
        if "active_interval" in poll.model_fields_set and poll.active_interval > poll.interval:
            raise AtKey(
                ("poll", "active_interval"),
                f"{self.poll.active_interval:g} s is longer than poll.interval ({self.poll.interval:g} s): "
                "an instance with a task in progress is polled more often, not less (0 turns it off)",
            )
        if self.scaling.enabled and self.scaling.lease_ttl < self.poll.interval:
            raise AtKey(
                ("scaling", "lease_ttl"),
                f"{self.scaling.lease_ttl:g} s must be at least poll.interval ({self.poll.interval:g} s): "
                "a replica taking over must not poll within an interval",
            )
        for ch in self.health.channels:
            if ch not in self.channels:
                raise AtKey(("health", "channels"), self._unknown_channel(ch))
        for name in self.channels:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise AtKey(("channels", name), "a channel name may only hold letters, digits, '_', '.', '-'")
        return self

    def _check_time_intervals(self) -> None:
        """Interval names are unique, every name a rule gives is defined; each rule gets its intervals."""
        names = [t.name for t in self.time_intervals]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise AtKey(("time_intervals",), f"duplicate time interval name {', '.join(dupes)}")
        named = {t.name: tuple(i.compiled() for i in t.time_intervals) for t in self.time_intervals}
        known = sorted(named)
        for i, rule in enumerate(self.rules):
            for key in ("mute_time_intervals", "active_time_intervals"):
                for name in getattr(rule, key):
                    if name not in named:
                        hint = did_you_mean(name, known, quote=repr)
                        listed = (
                            f"known: {', '.join(known)}" if known else "none is defined under time_intervals"
                        )
                        raise AtKey(
                            ("rules", i, key),
                            f"rule {rule.name!r} names unknown time interval {name!r}{hint} ({listed})",
                        )
            rule.resolve_intervals(named)

    def _unknown_channel(self, name: str) -> str:
        known = sorted(self.channels)
        return f"unknown channel {name!r}{did_you_mean(name, known, quote=repr)} (known: {', '.join(known)})"

    def projects(self) -> list[ProjectSpec]:
        """Every project of every account, with region, endpoint and credentials resolved."""
        out: list[ProjectSpec] = []
        for a, account in enumerate(self.cloud):
            for p, project in enumerate(account.projects):
                region = project.region or account.region
                out.append(
                    ProjectSpec(
                        account=account.name,
                        region=region,
                        project_id=project.project_id,
                        endpoint=project.endpoint or f"https://dcs.{region}.myhuaweicloud.com",
                        ces_endpoint=project.ces_endpoint or f"https://ces.{region}.myhuaweicloud.com",
                        credentials=project.credentials or account.credentials,
                        discover=account.discover if project.discover is None else project.discover,
                        filter=project.filter or account.filter,
                        instances=tuple(project.instances),
                        labels=dict(project.labels),
                        where=self.source.key(("cloud", a, "projects", p)),
                    )
                )
        return out

    @property
    def instances(self) -> list[InstanceConfig]:
        """Every instance named in the config (discovered ones are not known until the API is asked)."""
        return [i for spec in self.projects() for i in spec.instances]

    def secret_values(self) -> list[str]:
        """Every secret string in the config, for the log redaction safety net: each secret value, the
        passwords of the URLs among them, and the values of headers named like a credential."""
        found: list[str] = []

        def walk(obj: Any) -> None:
            if isinstance(obj, SecretStr):
                v = obj.get_secret_value()
                # A URL's password may also be quoted alone (by a library's error, say).
                found.extend(s for s in (v, *url_passwords(v)) if len(s) >= 4)
            elif isinstance(obj, BaseModel):
                for name in type(obj).model_fields:
                    walk(getattr(obj, name))
                # A channel's headers are plain text; those named like a credential are secrets.
                headers = getattr(obj, "headers", None)
                if isinstance(headers, dict):
                    found.extend(v for k, v in headers.items() if secret_header(k) and len(v) >= 4)
            elif isinstance(obj, dict):
                for v in obj.values():
                    walk(v)
            elif isinstance(obj, list | tuple):
                for v in obj:
                    walk(v)

        walk(self)
        return found
