"""Pure formatters: an event (as a routed notification) in, a channel payload out."""

from notifier.delivery.formatters.slack import SlackMessage, format_slack
from notifier.delivery.formatters.webhook import format_webhook, webhook_body

__all__ = ["SlackMessage", "format_slack", "format_webhook", "webhook_body"]
