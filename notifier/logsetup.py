"""Logging set-up: the one formatter every record passes through, and the last line of defence in it.

Modules never log a secret on purpose; the formatter additionally

* replaces every secret value of the loaded config (AK/SK, tokens, webhook URLs and secrets) with ``****``;
* escapes control characters (CR, LF, the other C0 and C1 controls, DEL, U+2028/U+2029) in what a record
  says, so that no value from outside (an API's ``error_msg``, an answer's body) can start a line that
  looks like a record of its own; a traceback stays on several lines, each marked as a continuation
  (:data:`CONTINUATION`);
* cuts a message longer than :data:`~notifier.redaction.MESSAGE_LIMIT` (a traceback longer than
  :data:`TRACE_LIMIT`) and says how much was cut. The cut is made before redaction, so the work is
  bounded whatever the size, and is moved to the start of any secret it would split: no piece of a
  secret is ever left behind.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Final

from notifier.redaction import MESSAGE_LIMIT, cut_note, longest_first, mask, safe_cut

LOG_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
#: Characters of a traceback (or stack) kept under a record.
TRACE_LIMIT: Final = 64 * 1024
#: What starts every line of a record after its first: no record starts like this.
CONTINUATION: Final = "  | "

_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPES: Final[dict[int, str]] = {
    code: _NAMED.get(chr(code), f"\\x{code:02x}") for code in (*range(0x20), *range(0x7F, 0xA0))
} | {0x2028: "\\u2028", 0x2029: "\\u2029"}


def escape_controls(text: str) -> str:
    r"""``text`` on one line: control characters as ``\n``, ``\r``, ``\t``, ``\xNN`` or ``\u2028``.

    Backslashes are left alone, so escaping twice changes nothing.
    """
    return text.translate(_ESCAPES)


class RedactingFormatter(logging.Formatter):
    """Masks secrets, escapes control characters and caps sizes in every record (see the module doc)."""

    def __init__(self, fmt: str = LOG_FORMAT, secrets: Iterable[str] = ()) -> None:
        super().__init__(fmt)
        # Longest first, so that a secret containing another is replaced whole.
        self.secrets = longest_first(secrets)
        self._escaped_secrets = longest_first({escape_controls(s) for s in self.secrets} - set(self.secrets))

    def _clean(self, text: str, limit: int) -> str:
        """Cut (at a safe place), then mask: before escaping, so a secret holding a newline is found."""
        cut = safe_cut(text, limit, self.secrets) if len(text) > limit else len(text)
        kept = mask(text[:cut], self.secrets)
        return kept + cut_note(len(text) - cut) if cut < len(text) else kept

    def format(self, record: logging.LogRecord) -> str:
        record.message = self._clean(record.getMessage(), MESSAGE_LIMIT)
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        text = escape_controls(self.formatMessage(record))
        blocks: list[str] = []
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            blocks.append(record.exc_text)
        if record.stack_info:
            blocks.append(self.formatStack(record.stack_info))
        for block in blocks:
            for line in self._clean(block, TRACE_LIMIT).split("\n"):
                text += "\n" + CONTINUATION + escape_controls(line)
        # Last line of defence: a secret, as it is or as escaped, wherever it ended up.
        return mask(mask(text, self.secrets), self._escaped_secrets)


def configure_logging(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(LOG_FORMAT, secrets))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log and slack-sdk's debug output may echo URLs: keep them quiet.
    for noisy in ("aiohttp.access", "slack_sdk"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
