"""Channel kinds, their config models, and building a channel from its config.

A new kind plugs in by adding its config model to :data:`ChannelConfig` and its class to :data:`REGISTRY`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

from notifier.delivery.channels.base import Channel
from notifier.delivery.channels.slack import SlackChannel, SlackChannelConfig, masked_slack_config
from notifier.delivery.channels.webhook import WebhookChannel, WebhookChannelConfig, masked_webhook_config

#: The ``channels.<name>`` entry of the config file, selected by its ``type`` key.
ChannelConfig = Annotated[SlackChannelConfig | WebhookChannelConfig, Field(discriminator="type")]

#: ``type`` → channel class. Each class takes ``(name, config)``.
REGISTRY: dict[str, type[Channel]] = {
    SlackChannel.kind: SlackChannel,
    WebhookChannel.kind: WebhookChannel,
}


def build_channel(name: str, config: BaseModel) -> Channel:
    """The channel a config entry describes (``config.type`` picks the kind from :data:`REGISTRY`)."""
    kind = getattr(config, "type", None)
    cls = REGISTRY.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"channel {name!r}: unknown channel type {kind!r}")
    channel: Channel = cls(name, config)  # type: ignore[call-arg,arg-type]
    return channel


def masked_config(config: BaseModel) -> dict[str, Any]:
    """A channel config safe to print (``check-config``): URLs reduced to their host, secrets as ``****``."""
    if isinstance(config, SlackChannelConfig):
        return masked_slack_config(config)
    if isinstance(config, WebhookChannelConfig):
        return masked_webhook_config(config)
    # Unknown kind: show only non-secret-looking scalars.
    return {"type": getattr(config, "type", None)}


__all__ = [
    "REGISTRY",
    "Channel",
    "ChannelConfig",
    "SlackChannel",
    "SlackChannelConfig",
    "WebhookChannel",
    "WebhookChannelConfig",
    "build_channel",
    "masked_config",
]
