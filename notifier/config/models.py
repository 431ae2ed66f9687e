"""Configuration: a YAML file with ``${VAR}`` interpolation, validated by pydantic.

Every error names the file and the key (``config.yaml: channels.oncall.webhook_url: ...``). Secrets
(AK/SK, tokens, webhook URLs, webhook secrets, a Redis URL with a password) are ``SecretStr`` so they
never show in a repr, a log line or ``check-config`` output.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, unquote

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from notifier.delivery.channels import ChannelConfig
from notifier.errors import ConfigError
from notifier.pipeline.events import EventType
from notifier.store.keys import DEFAULT_PREFIX, DELIVERED_TTL_SECONDS

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Environment(BaseSettings):
    """What the process environment may set (Huawei's own samples use CLOUD_SDK_AK / CLOUD_SDK_SK)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    config_path: Path | None = Field(default=None, validation_alias="DCS_NOTIFIER_CONFIG")
    cloud_sdk_ak: SecretStr | None = Field(default=None, validation_alias="CLOUD_SDK_AK")
    cloud_sdk_sk: SecretStr | None = Field(default=None, validation_alias="CLOUD_SDK_SK")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


HOUR = 3600.0
DAY = 86_400.0


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


class AkSkCredentials(_Model):
    """Permanent AK/SK, or temporary AK/SK with their security token (``X-Security-Token``, signed).

    Left out, ``ak``/``sk`` come from the environment variables CLOUD_SDK_AK/CLOUD_SDK_SK.
    """

    type: Literal["aksk"] = "aksk"
    ak: SecretStr | None = None
    sk: SecretStr | None = None
    security_token: SecretStr | None = None


class FileCredentials(_Model):
    """AK/SK (and a security token) read from a file, re-read whenever the file changes.

    JSON or YAML (``ak``, ``sk``, ``security_token``; or Huawei's temporary-credential shape
    ``{"credential": {"access", "secret", "securitytoken"}}``), or the console's ``credentials.csv``.
    """

    type: Literal["file"] = "file"
    path: Path


class IamCredentials(_Model):
    """An IAM user: a project-scoped token (``X-Auth-Token``) is obtained and refreshed before it expires."""

    type: Literal["iam"] = "iam"
    domain: str = Field(min_length=1, description="the account (domain) name")
    user: str = Field(min_length=1)
    password: SecretStr
    #: Default: ``https://iam.{region}.myhuaweicloud.com`` of each project's region.
    iam_endpoint: str | None = None
    #: Get a new token this many seconds before the current one expires (tokens last 24 h).
    refresh_before: float = Field(default=3600.0, ge=0, le=72_000, allow_inf_nan=False)

    @field_validator("iam_endpoint")
    @classmethod
    def _iam_url(cls, v: str | None) -> str | None:
        return _url_or_none(v, "https://iam.cn-north-4.myhuaweicloud.com")

    def endpoint_for(self, region: str) -> str:
        return self.iam_endpoint or f"https://iam.{region}.myhuaweicloud.com"


CredentialsConfig = Annotated[AkSkCredentials | FileCredentials | IamCredentials, Field(discriminator="type")]


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


class AccountConfig(_Model):
    name: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]+$")
    region: str = Field(default="cn-north-4", min_length=1)
    credentials: CredentialsConfig = Field(default_factory=AkSkCredentials)
    #: Defaults for every project of the account (each project may say otherwise).
    discover: bool = False
    filter: InstanceFilter = Field(default_factory=InstanceFilter)
    projects: list[ProjectConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _something_to_watch(self) -> AccountConfig:
        for p, project in enumerate(self.projects):
            discover = self.discover if project.discover is None else project.discover
            if not discover and not project.instances:
                raise ValueError(f"projects.{p}: nothing to watch: list instances, or set discover: true")
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
    credentials: AkSkCredentials | FileCredentials | IamCredentials
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

    timeout: float = seconds(10.0, le=300)
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
    ca_bundle: Path | None = None
    #: Endpoints (URLs or host[:port]) whose TLS certificate is NOT verified. Empty by default.
    insecure_endpoints: list[str] = Field(default_factory=list)
    #: An HTTP(S) proxy URL; default: HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment.
    proxy: SecretStr | None = None

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle_readable(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"{v}: no such file (a PEM file of CA certificates)")
        return v

    @field_validator("insecure_endpoints")
    @classmethod
    def _endpoints_parse(cls, v: list[str]) -> list[str]:
        from notifier.net.session import check_host_entry

        for entry in v:
            check_host_entry(entry)
        return v

    @model_validator(mode="after")
    def _min_rate(self) -> ApiConfig:
        if self.min_rate > self.rate_limit:
            raise ValueError("min_rate must not exceed rate_limit")
        return self


class DiscoveryConfig(_Model):
    #: List each discovering project's instances this often (seconds).
    interval: float = seconds(300.0, le=DAY)
    #: A deleted instance's state is kept this long (seconds) after ``instance.removed``, then dropped.
    removed_ttl: float = seconds(7 * DAY, ge=1, le=365 * DAY)


class HealthConfig(_Model):
    """``poller.unhealthy`` once polling an instance has failed this long; ``poller.recovered`` after."""

    after: float = seconds(300.0, le=7 * DAY, description="seconds of continuous failure")
    #: Channels that get poller health events in addition to what the rules route there.
    channels: list[str] = Field(default_factory=list)


class PollConfig(_Model):
    interval: float = seconds(30.0, le=DAY)
    baseline_grace: float = seconds(900.0, ge=0, le=7 * DAY)
    #: How far back the first poll of an instance looks (seconds); later polls ask only for what is new.
    window: float = seconds(DAY, le=30 * DAY)
    #: Margin for clock skew between us and the API: each window starts this long before the last poll.
    skew: float = seconds(300.0, ge=0, le=DAY)
    #: Each poll is scheduled ``interval`` ± this fraction, so instances do not poll in lock-step.
    jitter: float = Field(default=0.1, ge=0, le=0.5)
    #: After a rejected credential or a missing instance, ask again only this often (seconds).
    recheck: float = seconds(300.0, le=DAY)
    #: A poll refuses an answer that counts more tasks than this in its window (see README, Politeness).
    max_tasks: int = Field(default=10_000, ge=1, le=1_000_000)


@dataclass(frozen=True)
class RedisTarget:
    """What ``redis.url`` names: a standalone server, a Redis Cluster, or a Sentinel-managed master."""

    mode: Literal["standalone", "cluster", "sentinel"]
    url: str = ""  # standalone: the URL itself, as redis-py reads it
    nodes: tuple[tuple[str, int], ...] = ()  # cluster: seed nodes; sentinel: the sentinels
    tls: bool = False
    username: str | None = None
    password: str | None = None  # of the data nodes (cluster nodes, or the Sentinel's master)
    service: str = ""  # sentinel: the monitored master's name
    db: int = 0
    sentinel_password: str | None = None  # sentinel: when the sentinels themselves require one


_SENTINEL_QUERY = ("sentinel_password",)
_REDIS_SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+cluster",
    "rediss+cluster",
    "redis+sentinel",
    "rediss+sentinel",
)


def _host_port(item: str, scheme: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; the message never repeats the URL (it may hold a password)."""
    if item.startswith("["):
        host, sep, rest = item[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        ok = bool(sep) and rest.startswith(":")
    else:
        host, _, port = item.rpartition(":")
        ok = ":" in item
    if not ok or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{scheme}:// URLs list host:port pairs separated by commas (each with its port)")
    return host, int(port)


def parse_redis_url(url: str) -> RedisTarget:
    """Read ``redis.url``: ``redis://``, ``rediss://``, ``unix://`` (standalone, as redis-py reads them),
    ``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster://`` with TLS), or
    ``redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]`` (``rediss+sentinel://``).

    Errors name the expected form, never the URL (it may hold a password).
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _REDIS_SCHEMES:
        raise ValueError(
            "must start with redis://, rediss://, unix:// (one server), redis+cluster:// or "
            "rediss+cluster:// (a Redis Cluster), redis+sentinel:// or rediss+sentinel:// (Sentinel)"
        )
    if scheme in ("redis", "rediss", "unix"):
        return RedisTarget(mode="standalone", url=url)
    mode: Literal["cluster", "sentinel"] = "cluster" if scheme.endswith("cluster") else "sentinel"
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts = netloc
    username: str | None = None
    password: str | None = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    if not hosts:
        raise ValueError(f"{scheme}:// needs at least one host:port")
    nodes = tuple(_host_port(h.strip(), scheme) for h in hosts.split(","))
    params = parse_qs(query, keep_blank_values=True)
    allowed = _SENTINEL_QUERY if mode == "sentinel" else ()
    unknown = sorted(set(params) - set(allowed))
    if unknown or fragment:
        what = ", ".join(unknown) or "a #fragment"
        known = f" (known: {', '.join(allowed)})" if allowed else ""
        raise ValueError(f"{scheme}:// URLs take no {what}{known}")
    tls = scheme.startswith("rediss")
    if mode == "cluster":
        if path.strip("/") not in ("", "0"):
            raise ValueError(f"{scheme}:// URLs take no database number: a Redis Cluster has only db 0")
        return RedisTarget(mode="cluster", nodes=nodes, tls=tls, username=username, password=password)
    parts = [unquote(p) for p in path.split("/")] if path else []
    if parts and parts[-1] == "":
        parts.pop()
    if not parts or not parts[0] or len(parts) > 2:
        raise ValueError(f"{scheme}:// URLs end with /service_name or /service_name/db (the master's name)")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise ValueError(f"{scheme}:// URLs end with /service_name/db, db a number")
        db = int(parts[1])
    sentinel_pw = params.get("sentinel_password", [None])[-1]
    return RedisTarget(
        mode="sentinel",
        nodes=nodes,
        tls=tls,
        username=username,
        password=password,
        service=parts[0],
        db=db,
        sentinel_password=sentinel_pw or None,
    )


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
    max_age: float = seconds(DAY, le=DELIVERED_TTL_SECONDS)
    backoff_initial: float = seconds(1.0, le=HOUR)
    backoff_max: float = seconds(60.0, le=HOUR)
    #: ``dcs-notifier once`` tries a failing notification at most this many times, then leaves it queued.
    once_attempts: int = Field(default=3, ge=1, le=100)
    #: On SIGTERM, sends in flight get this long to finish before they are abandoned (and stay queued).
    stop_timeout: float = seconds(10.0, le=HOUR)
    #: This daemon's name in the Redis consumer group. Fixed by default, so that a restarted daemon (a new
    #: container, another host) resumes its own unacknowledged entries at once.
    consumer: str = Field(default="dcs-notifier", min_length=1)
    #: Entries another consumer left pending this long (seconds) are taken over.
    claim_idle: float = seconds(60.0, le=DAY)
    #: Entries read at a time; they stay claimed until sent, so keep batch / rate well under claim_idle.
    batch: int = Field(default=10, ge=1, le=1000)


class RuleConfig(_Model):
    name: str = Field(min_length=1)
    tasks: list[str] = Field(default_factory=lambda: ["*"])
    events: list[EventType | Literal["*"]] = Field(
        default_factory=lambda: list[EventType | Literal["*"]](["*"])
    )
    instances: list[str] = Field(default_factory=lambda: ["*"], description="instance ids or names")
    labels: dict[str, str] = Field(default_factory=dict, description="all must match")
    channels: list[str] = Field(min_length=1)


#: Keys of the single-project form of ``cloud`` (``cloud: {region, project_id, ak, sk}`` + ``instances``).
_LEGACY_API_KEYS = ("timeout", "page_size", "max_concurrency")


def _from_single_project_form(data: dict[str, Any]) -> dict[str, Any]:
    """``cloud: {region, endpoint, project_id, ak, sk, ...}`` + top-level ``instances`` → the account list."""
    cloud = dict(data["cloud"])
    out = {k: v for k, v in data.items() if k not in ("cloud", "instances")}
    api = dict(out.get("api") or {})
    for key in _LEGACY_API_KEYS:
        if key in cloud:
            if key in api:
                raise ValueError(f"cloud.{key} and api.{key} are both set: keep one (api.{key})")
            api[key] = cloud.pop(key)
    if api:
        out["api"] = api
    credentials = {k: cloud.pop(k) for k in ("ak", "sk", "security_token") if k in cloud}
    project: dict[str, Any] = {"instances": data.get("instances") or []}
    for key in ("project_id", "endpoint"):
        if key in cloud:
            project[key] = cloud.pop(key)
    account: dict[str, Any] = {**cloud, "projects": [project]}
    if credentials:
        account["credentials"] = {"type": "aksk", **credentials}
    out["cloud"] = [account]
    out["single_project_form"] = True
    return out


#: Error locations of the single-project form, translated back to what the user wrote (first match wins).
_SINGLE_FORM_LOCATIONS = [
    ("cloud.0.projects.0.instances", "instances"),
    ("cloud.0.projects.0.project_id", "cloud.project_id"),
    ("cloud.0.projects.0.endpoint", "cloud.endpoint"),
    ("cloud.0.projects.0", "instances"),
    ("cloud.0.credentials.aksk", "cloud"),
    ("cloud.0.credentials", "cloud"),
    ("cloud.0", "cloud"),
]


def _location_translator(raw: Mapping[str, Any]) -> Callable[[str], str]:
    """Error locations in the words of the file: ``cloud.0.projects.0.project_id`` → ``cloud.project_id``."""
    cloud = raw.get("cloud")
    table: list[tuple[str, str]] = []
    if isinstance(cloud, dict) and "projects" not in cloud:
        table = [
            *_SINGLE_FORM_LOCATIONS,
            *((f"api.{k}", f"cloud.{k}") for k in _LEGACY_API_KEYS if k in cloud),
        ]
    elif isinstance(cloud, dict):
        table = [("cloud.0", "cloud")]  # one account written as a mapping

    def translate(loc: str) -> str:
        for old, new in table:
            if loc == old or loc.startswith(old + "."):
                return new + loc[len(old) :]
        return loc

    return translate


class ScalingConfig(_Model):
    """Several ``dcs-notifier run`` replicas sharing one Redis split the fleet (see notifier.store.leases)."""

    enabled: bool = False
    #: This replica's name (membership, leases, delivery consumer). Default: ``{hostname}-{pid}``.
    replica: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]+$")
    #: The fleet is split into this many shards, each leased to one replica.
    shards: int = Field(default=256, ge=1, le=65_536)
    #: Seconds a lease lasts without renewal (renewed every third of it). At least ``poll.interval``.
    lease_ttl: float = seconds(30.0, le=DAY)


class Config(_Model):
    #: One or more accounts. The single-project form (``cloud: {project_id, ...}`` + ``instances``) loads too.
    cloud: list[AccountConfig] = Field(min_length=1)
    api: ApiConfig = Field(default_factory=ApiConfig)
    poll: PollConfig = Field(default_factory=PollConfig)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    channels: dict[str, ChannelConfig] = Field(min_length=1)
    rules: list[RuleConfig] = Field(default_factory=list)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    #: Set when the file used the single-project form (error messages then use its key names).
    single_project_form: bool = Field(default=False, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _accounts(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "single_project_form" in data:
            raise ValueError("single_project_form: Extra inputs are not permitted")
        cloud = data.get("cloud")
        if isinstance(cloud, dict) and "projects" not in cloud:
            return _from_single_project_form(data)
        if isinstance(cloud, dict):
            data = {**data, "cloud": [cloud]}
        if "instances" in data:
            raise ValueError(
                "instances: with accounts and projects in cloud, list instances under "
                "cloud.N.projects.N.instances (or use discover: true)"
            )
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        accounts = [a.name for a in self.cloud]
        dupes = sorted({a for a in accounts if accounts.count(a) > 1})
        if dupes:
            raise ValueError(f"cloud: duplicate account name {', '.join(dupes)} (give each a name)")
        seen: dict[str, str] = {}
        for spec in self.projects():
            if spec.project_id in seen:
                raise ValueError(
                    f"{spec.where}.project_id: project {spec.project_id} "
                    f"is already listed at {seen[spec.project_id]}"
                )
            seen[spec.project_id] = spec.where
            ids = [i.id for i in spec.instances]
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                where = "instances" if self.single_project_form else f"{spec.where}.instances"
                raise ValueError(f"{where}: duplicate id {', '.join(dupes)}")
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rules: duplicate rule name {', '.join(dupes)}")
        known = ", ".join(sorted(self.channels))
        for i, rule in enumerate(self.rules):
            for ch in rule.channels:
                if ch not in self.channels:
                    raise ValueError(f"rules.{i}.channels: unknown channel {ch!r} (known: {known})")
        if self.scaling.enabled and self.scaling.lease_ttl < self.poll.interval:
            raise ValueError(
                f"scaling.lease_ttl ({self.scaling.lease_ttl:g} s) must be at least poll.interval "
                f"({self.poll.interval:g} s): a replica taking over must not poll within an interval"
            )
        for ch in self.health.channels:
            if ch not in self.channels:
                raise ValueError(f"health.channels: unknown channel {ch!r} (known: {known})")
        for name in self.channels:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(
                    f"channels.{name}: a channel name may only hold letters, digits, '_', '.', '-'"
                )
        return self

    def projects(self) -> list[ProjectSpec]:
        """Every project of every account, with region, endpoint and credentials resolved."""
        out: list[ProjectSpec] = []
        for a, account in enumerate(self.cloud):
            for p, project in enumerate(account.projects):
                region = project.region or account.region
                where = "cloud" if self.single_project_form else f"cloud.{a}.projects.{p}"
                out.append(
                    ProjectSpec(
                        account=account.name,
                        region=region,
                        project_id=project.project_id,
                        endpoint=project.endpoint or f"https://dcs.{region}.myhuaweicloud.com",
                        credentials=project.credentials or account.credentials,
                        discover=account.discover if project.discover is None else project.discover,
                        filter=project.filter or account.filter,
                        instances=tuple(project.instances),
                        labels=dict(project.labels),
                        where=where,
                    )
                )
        return out

    @property
    def instances(self) -> list[InstanceConfig]:
        """Every instance named in the config (discovered ones are not known until the API is asked)."""
        return [i for spec in self.projects() for i in spec.instances]

    def with_env_credentials(self, env: Environment) -> Config:
        """Fill AK/SK from CLOUD_SDK_AK / CLOUD_SDK_SK wherever AK/SK credentials leave them out."""

        def fill(c: Any) -> Any:
            if isinstance(c, AkSkCredentials):
                return c.model_copy(update={"ak": c.ak or env.cloud_sdk_ak, "sk": c.sk or env.cloud_sdk_sk})
            return c

        accounts = [
            a.model_copy(
                update={
                    "credentials": fill(a.credentials),
                    "projects": [
                        p.model_copy(update={"credentials": fill(p.credentials)}) for p in a.projects
                    ],
                }
            )
            for a in self.cloud
        ]
        return self.model_copy(update={"cloud": accounts})


def interpolate(value: Any, environ: Mapping[str, str], path: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML tree."""
    if isinstance(value, dict):
        return {k: interpolate(v, environ, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ, f"{path}.{i}") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{path or '<root>'}: environment variable {name} is not set")

    return _VAR.sub(repl, value)


_RELATIVE_KEY = re.compile(r"^(projects\.\d+): (.*)$", re.S)


def _format_validation_error(source: str, exc: ValidationError, translate: Callable[[str], str] = str) -> str:
    lines = [f"{source}: invalid configuration ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        relative = _RELATIVE_KEY.match(msg) if err["type"] == "value_error" and loc else None
        if relative:  # a model's own check naming one of its keys: "projects.1: ..."
            loc, msg = f"{loc}.{relative.group(1)}", relative.group(2)
        loc = translate(loc)
        lines.append(f"  {loc}: {msg}" if loc else f"  {msg}")
    return "\n".join(lines)


_MERGE = "tag:yaml.org,2002:merge"


def _refuse_duplicate_keys(document: yaml.Node | None) -> None:
    """Raise when a key is given twice in one mapping: PyYAML keeps the last silently, so a second
    ``poll:`` or channel would replace the first without a word.

    Checked on the composed document, as written: once constructed, keys merged in with ``<<`` (which
    may be overridden on purpose) can no longer be told from keys written twice.
    """
    seen: set[int] = set()
    stack = [document] if document is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:  # an alias: the same node again
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], yaml.Node] = {}
            for key, value in node.value:
                stack.append(value)
                if key.tag == _MERGE or not isinstance(key, yaml.ScalarNode):
                    continue
                earlier = first.setdefault((key.tag, key.value), key)
                if earlier is not key:
                    shown = repr(key.value) if len(key.value) <= 60 else repr(key.value[:57] + "...")
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {shown}: set on line {earlier.start_mark.line + 1} "
                        f"and again on line {key.start_mark.line + 1} (keep one)",
                        key.start_mark,
                    )


def parse_config(text: str, source: str = "<config>", environ: Mapping[str, str] | None = None) -> Config:
    """Parse YAML text into a validated Config; raises ConfigError naming ``source`` and the key."""
    env_map = dict(os.environ if environ is None else environ)
    try:
        _refuse_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}:{where}: not valid YAML: {problem}") from None
    if raw is None:
        raise ConfigError(f"{source}: the file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys (cloud, instances, ...)")
    try:
        resolved = interpolate(raw, env_map)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        config = Config.model_validate(resolved)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc, _location_translator(resolved))) from None
    try:
        env = Environment.model_validate(env_map)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error("environment", exc)) from None
    return config.with_env_credentials(env)


def load_config(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the config from ``path``, or from $DCS_NOTIFIER_CONFIG, or ``./config.yaml``."""
    env_map = dict(os.environ if environ is None else environ)
    if path is None:
        path = env_map.get("DCS_NOTIFIER_CONFIG") or "config.yaml"
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{p}: config file not found (pass --config PATH or set DCS_NOTIFIER_CONFIG)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc}") from None
    return parse_config(text, str(p), env_map)


def credential_problems(config: Config) -> list[str]:
    """What is missing from the credentials, one line per project, naming where to put it."""
    problems = []
    for a, account in enumerate(config.cloud):
        for p, project in enumerate(account.projects):
            c = project.credentials or account.credentials
            if not isinstance(c, AkSkCredentials) or (c.ak is not None and c.sk is not None):
                continue
            missing = "/".join(n for n, v in (("ak", c.ak), ("sk", c.sk)) if v is None)
            if config.single_project_form:
                where = "cloud"
            elif project.credentials is not None:
                where = f"cloud.{a}.projects.{p}.credentials"
            else:
                where = f"cloud.{a}.credentials"
            problems.append(
                f"{where}.{missing}: no credentials for project {project.project_id}; set them in the config "
                "or the environment variables CLOUD_SDK_AK/CLOUD_SDK_SK"
            )
    return problems


def require_credentials(config: Config) -> None:
    """Raise a ConfigError when some project has no usable credentials."""
    problems = credential_problems(config)
    if problems:
        raise ConfigError("; ".join(dict.fromkeys(problems)))


def secret_values(config: Config) -> list[str]:
    """Every secret string in the config, for the log redaction safety net."""
    found: list[str] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, SecretStr):
            v = obj.get_secret_value()
            if len(v) >= 4:
                found.append(v)
        elif isinstance(obj, BaseModel):
            for name in type(obj).model_fields:
                walk(getattr(obj, name))
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list | tuple):
            for v in obj:
                walk(v)

    walk(config)
    return found
