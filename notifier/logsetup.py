"""Logging set-up: the one formatter every record passes through, and the last line of defence in it.

Modules never log a secret on purpose; the formatter additionally

* replaces every secret value of the loaded config (AK/SK, tokens, webhook URLs and secrets) with ``****``;
* escapes control characters (CR, LF, the other C0 and C1 controls, DEL, U+2028/U+2029) in what a record
  says, so that no value from outside (an API's ``error_msg``, an answer's body) can start a line that
  looks like a record of its own; a traceback stays on several lines, each marked as a continuation
  (:data:`CONTINUATION`);
* cuts a message longer than :data:`MESSAGE_LIMIT` (a traceback longer than :data:`TRACE_LIMIT`) and says
  how much was cut. The cut is made before redaction, so the work is bounded whatever the size, and is
  moved to the start of any secret it would split: no piece of a secret is ever left behind.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Sequence
from typing import Final

LOG_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
#: Characters of a message kept in a log line (the rest is cut, with a note saying how much).
MESSAGE_LIMIT: Final = 16 * 1024
#: Characters of a traceback (or stack) kept under a record.
TRACE_LIMIT: Final = 64 * 1024
#: What starts every line of a record after its first: no record starts like this.
CONTINUATION: Final = "  | "

_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPES: Final[dict[int, str]] = {
    code: _NAMED.get(chr(code), f"\\x{code:02x}") for code in (*range(0x20), *range(0x7F, 0xA0))
} | {0x2028: "\\u2028", 0x2029: "\\u2029"}
#: A chain of overlapping secrets longer than this makes a cut give up and keep nothing (never met).
_MAX_CUT_MOVES: Final = 16


def escape_controls(text: str) -> str:
    r"""``text`` on one line: control characters as ``\n``, ``\r``, ``\t``, ``\xNN`` or ``\u2028``.

    Backslashes are left alone, so escaping twice changes nothing.
    """
    return text.translate(_ESCAPES)


def safe_cut(text: str, limit: int, secrets: Sequence[str]) -> int:
    """Where to cut ``text`` to keep at most ``limit`` characters without splitting any of ``secrets``.

    Cutting before redacting keeps the work bounded, but a secret straddling the cut would leave its
    first characters behind, unrecognisable to the redaction: the cut moves to the start of such a
    secret. (A URL cut in two needs no care: what is kept of it is still a URL, and redacted whole.)
    """
    cut = min(limit, len(text))
    for _ in range(_MAX_CUT_MOVES):
        moved = cut
        for secret in secrets:
            size = len(secret)
            if size > 1:
                # Only an occurrence starting before the cut and ending after it fits in this range.
                start = text.find(secret, max(0, cut - size + 1), cut + size - 1)
                if start != -1:
                    moved = min(moved, start)
        if moved == cut:
            return cut
        cut = moved
    return 0


def cut_note(dropped: int) -> str:
    return f" … [{dropped} characters cut]"


def mask(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every one of ``secrets`` (longest first, as given) replaced by ``****``."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "****")
    return text


class RedactingFormatter(logging.Formatter):
    """Masks secrets, escapes control characters and caps sizes in every record (see the module doc)."""

    def __init__(self, fmt: str = LOG_FORMAT, secrets: Iterable[str] = ()) -> None:
        super().__init__(fmt)
        # Longest first, so that a secret containing another is replaced whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        escaped = {escape_controls(s) for s in self.secrets} - set(self.secrets)
        self._escaped_secrets = sorted(escaped, key=len, reverse=True)

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
