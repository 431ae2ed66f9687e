"""Pure formatters: an event (as a routed notification) in, a channel payload out."""

from notifier.formatters.slack import SlackMessage, format_slack
from notifier.formatters.webhook import format_webhook, webhook_body

__all__ = ["SlackMessage", "format_slack", "format_webhook", "webhook_body"]
