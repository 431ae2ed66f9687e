"""The config as ``check-config`` shows it: a short verdict, or the resolved config with secrets masked.

Only secrets are masked: AK/SK, tokens, passwords, webhook URLs and secrets, a Redis URL's credentials and
header values whose name says they are credentials (``Authorization``, ``X-Api-Key``…). A plain header such
as ``X-Team: db`` is shown as written, so that what is checked is what will be sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from notifier.config.models import Config
from notifier.delivery.channels import masked_config
from notifier.redaction import MASK, mask_redis_url, redact_url


def _short_masks(value: Any) -> Any:
    # SecretStr fields dump as "**********": shown as the one mask used everywhere else.
    if isinstance(value, dict):
        return {k: _short_masks(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_short_masks(v) for v in value]
    return MASK if value == "**********" else value


def masked(config: Config) -> dict[str, Any]:
    """The resolved config as plain data (``check-config --show``), every secret replaced by ``****``."""
    data: dict[str, Any] = _short_masks(config.model_dump(mode="json", exclude={"channels"}))
    data["projects"] = [
        {
            "account": spec.account,
            "region": spec.region,
            "project_id": spec.project_id,
            "endpoint": spec.endpoint,
            "credentials": spec.credentials.type,
            "instances": "discovered" if spec.discover else len(spec.instances),
        }
        for spec in config.projects()
    ]
    data["redis"]["url"] = mask_redis_url(config.redis.url.get_secret_value())
    if config.api.proxy is not None:  # shown as a channel's proxy is: its origin, without credentials
        data["api"]["proxy"] = redact_url(config.api.proxy.get_secret_value(), path=False)
    data["channels"] = {name: masked_config(cfg) for name, cfg in config.channels.items()}
    return data


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass(frozen=True)
class ConfigVerdict:
    """What ``check-config`` says by default: the config in a few lines, then its warnings."""

    lines: list[str]
    warnings: list[str] = field(default_factory=list)


def verdict(config: Config) -> ConfigVerdict:
    """A summary of a valid config, and what looks like a mistake without being an error."""
    specs = config.projects()
    named = sum(len(s.instances) for s in specs)
    discovering = sum(1 for s in specs if s.discover)
    regions = sorted({s.region for s in specs})
    lines = [
        f"{_plural(len(specs), 'project')} in {_plural(len(config.cloud), 'account')} "
        f"(region {', '.join(regions)}): {_plural(named, 'instance')} named, {discovering} discovering",
        f"{_plural(len(config.channels), 'channel')}: "
        + ", ".join(f"{name} ({cfg.type})" for name, cfg in config.channels.items()),
        (
            f"{_plural(len(config.rules), 'rule')}: " + ", ".join(r.name for r in config.rules)
            if config.rules
            else "no rules: every event goes to every channel"
        ),
        f"redis: {mask_redis_url(config.redis.url.get_secret_value())} "
        f"(key prefix {config.redis.key_prefix})",
    ]
    ce = config.cloud_eye
    if ce.enabled:
        names = "every SYS.DCS event" if "*" in ce.events else ", ".join(ce.events)
        lines.append(
            f"Cloud Eye: {names}, every {ce.interval:g} s per project (windows overlap {ce.overlap:g} s)"
        )
    if config.time_intervals:
        lines.append(
            f"{_plural(len(config.time_intervals), 'time interval')}: "
            + ", ".join(t.name for t in config.time_intervals)
        )
    warnings: list[str] = []
    named_by_rules = {n for r in config.rules for n in (*r.mute_time_intervals, *r.active_time_intervals)}
    warnings.extend(
        f"time_intervals.{i}: no rule names {t.name!r}"
        for i, t in enumerate(config.time_intervals)
        if t.name not in named_by_rules
    )
    if config.rules:
        used = {ch for r in config.rules for ch in r.channels} | set(config.health.channels)
        warnings.extend(
            f"channels.{name}: no rule sends to this channel" for name in config.channels if name not in used
        )
    return ConfigVerdict(lines, warnings)
