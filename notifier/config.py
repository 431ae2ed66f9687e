"""Configuration: a YAML file with ``${VAR}`` interpolation, validated by pydantic.

Every error names the file and the key (``config.yaml: channels.oncall.webhook_url: ...``). Secrets
(AK/SK, tokens, webhook URLs, webhook secrets, a Redis URL with a password) are ``SecretStr`` so they
never show in a repr, a log line or ``check-config`` output.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

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

from notifier.channels import ChannelConfig
from notifier.constants import DEFAULT_PREFIX
from notifier.errors import ConfigError
from notifier.events import EventType

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Environment(BaseSettings):
    """What the process environment may set (Huawei's own samples use CLOUD_SDK_AK / CLOUD_SDK_SK)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    config_path: Path | None = Field(default=None, validation_alias="DCS_NOTIFIER_CONFIG")
    cloud_sdk_ak: SecretStr | None = Field(default=None, validation_alias="CLOUD_SDK_AK")
    cloud_sdk_sk: SecretStr | None = Field(default=None, validation_alias="CLOUD_SDK_SK")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CloudConfig(_Model):
    region: str = Field(default="cn-north-4", min_length=1)
    endpoint: str | None = None
    project_id: str = Field(min_length=1)
    ak: SecretStr | None = None
    sk: SecretStr | None = None
    timeout: float = Field(default=10.0, gt=0, le=300)
    page_size: int = Field(default=100, ge=1, le=1000)
    max_concurrency: int = Field(default=16, ge=1, le=256)

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(
                "must be an http:// or https:// URL, e.g. https://dcs.cn-north-4.myhuaweicloud.com"
            )
        return v.rstrip("/")

    @property
    def endpoint_url(self) -> str:
        return self.endpoint or f"https://dcs.{self.region}.myhuaweicloud.com"


class InstanceConfig(_Model):
    id: str = Field(min_length=1)
    name: str = ""
    labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _default_name(self) -> InstanceConfig:
        if not self.name:
            object.__setattr__(self, "name", self.id)
        return self


class PollConfig(_Model):
    interval: float = Field(default=30.0, gt=0)
    baseline_grace: float = Field(default=900.0, ge=0)
    window: float = Field(default=86_400.0, gt=0, description="how far back each poll looks, seconds")


class RedisConfig(_Model):
    url: SecretStr = SecretStr("redis://localhost:6379/0")
    key_prefix: str = Field(default=DEFAULT_PREFIX, pattern=r"^[A-Za-z0-9_.-]+$")

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v


class DeliveryConfig(_Model):
    #: Give up (dead letter) after this many failed attempts at one notification...
    max_attempts: int = Field(default=10, ge=1, le=10_000)
    #: ...or once it has waited this many seconds since it was queued.
    max_age: float = Field(default=86_400.0, gt=0)
    backoff_initial: float = Field(default=1.0, gt=0)
    backoff_max: float = Field(default=60.0, gt=0)
    #: ``dcs-notifier once`` tries a failing notification at most this many times, then leaves it queued.
    once_attempts: int = Field(default=3, ge=1)
    #: On SIGTERM, sends in flight get this long to finish before they are abandoned (and stay queued).
    stop_timeout: float = Field(default=10.0, gt=0)
    #: This daemon's name in the Redis consumer group. Fixed by default, so that a restarted daemon (a new
    #: container, another host) resumes its own unacknowledged entries at once.
    consumer: str = Field(default="dcs-notifier", min_length=1)
    #: Entries another consumer left pending this long (seconds) are taken over.
    claim_idle: float = Field(default=60.0, gt=0)
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


class Config(_Model):
    cloud: CloudConfig
    instances: list[InstanceConfig] = Field(min_length=1)
    poll: PollConfig = Field(default_factory=PollConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    channels: dict[str, ChannelConfig] = Field(min_length=1)
    rules: list[RuleConfig] = Field(default_factory=list)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        ids = [i.id for i in self.instances]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"instances: duplicate id {', '.join(dupes)}")
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rules: duplicate rule name {', '.join(dupes)}")
        for i, rule in enumerate(self.rules):
            for ch in rule.channels:
                if ch not in self.channels:
                    known = ", ".join(sorted(self.channels))
                    raise ValueError(f"rules.{i}.channels: unknown channel {ch!r} (known: {known})")
        for name in self.channels:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(
                    f"channels.{name}: a channel name may only hold letters, digits, '_', '.', '-'"
                )
        return self

    def with_env_credentials(self, env: Environment) -> Config:
        """Fill AK/SK from CLOUD_SDK_AK / CLOUD_SDK_SK where the file leaves them out."""
        ak = self.cloud.ak or env.cloud_sdk_ak
        sk = self.cloud.sk or env.cloud_sdk_sk
        return self.model_copy(update={"cloud": self.cloud.model_copy(update={"ak": ak, "sk": sk})})


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


def _format_validation_error(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: invalid configuration ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_config(text: str, source: str = "<config>", environ: Mapping[str, str] | None = None) -> Config:
    """Parse YAML text into a validated Config; raises ConfigError naming ``source`` and the key."""
    env_map = dict(os.environ if environ is None else environ)
    try:
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
        raise ConfigError(_format_validation_error(source, exc)) from None
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


def require_credentials(config: Config) -> tuple[str, str]:
    """The AK/SK pair, or a ConfigError saying where to put them."""
    if config.cloud.ak is None or config.cloud.sk is None:
        missing = " and ".join(n for n, v in (("ak", config.cloud.ak), ("sk", config.cloud.sk)) if v is None)
        raise ConfigError(
            f"cloud.{missing}: no credentials; set cloud.ak/cloud.sk in the config "
            "or the environment variables CLOUD_SDK_AK/CLOUD_SDK_SK"
        )
    return config.cloud.ak.get_secret_value(), config.cloud.sk.get_secret_value()


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
