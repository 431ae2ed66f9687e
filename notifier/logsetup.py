"""Logging set-up, with a last line of defence against leaking secrets.

Modules never log a secret on purpose; this formatter additionally replaces every secret value of the
loaded config (AK/SK, tokens, webhook URLs and secrets) with ``****`` in whatever reaches a handler.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable


class RedactingFormatter(logging.Formatter):
    def __init__(self, fmt: str, secrets: Iterable[str] = ()) -> None:
        super().__init__(fmt)
        # Longest first, so that a secret containing another is replaced whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for s in self.secrets:
            if s in text:
                text = text.replace(s, "****")
        return text


def configure_logging(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", secrets))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log and slack-sdk's debug output may echo URLs: keep them quiet.
    for noisy in ("aiohttp.access", "slack_sdk"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
