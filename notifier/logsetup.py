"""Logging set-up: the formatters every record passes through, and the last line of defence in them.

Modules never log a secret on purpose; both formatters (``text``, the default, and ``json``, one JSON
object per line: ``logging.format`` or ``--log-format``) additionally

* replace every secret value of the loaded config (AK/SK, tokens, passwords, webhook URLs and secrets)
  with ``****``;
* escape control characters (CR, LF, the other C0 and C1 controls, DEL, U+2028/U+2029) in what a record
  says, so that no value from outside (an API's ``error_msg``, an answer's body) can start a line that
  looks like a record of its own; in ``text`` a traceback stays on several lines, each marked as a
  continuation (:data:`CONTINUATION`); in ``json`` it is the ``exc`` field of the record's one line;
* cut a message longer than :data:`~notifier.redaction.MESSAGE_LIMIT` (a traceback longer than
  :data:`TRACE_LIMIT`) and say how much was cut. The cut is made before redaction, so the work is
  bounded whatever the size, and is moved to the start of any secret it would split: no piece of a
  secret is ever left behind.

A JSON line has the keys ``ts`` (ISO 8601, UTC), ``level``, ``logger`` and ``msg``, then those of
:data:`CONTEXT_FIELDS` the record carries (given with ``extra=``, or bound to the context with
:func:`bind`), then ``exc`` and ``stack`` when it has them.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Final, Literal, TypeAlias

from notifier.redaction import MESSAGE_LIMIT, cut_note, longest_first, mask, safe_cut

LogFormat: TypeAlias = Literal["text", "json"]
LOG_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
#: Characters of a traceback (or stack) kept under a record.
TRACE_LIMIT: Final = 64 * 1024
#: What starts every line of a record after its first: no record starts like this.
CONTINUATION: Final = "  | "
#: What a JSON line says of a record, when the record carries it (``extra=``, or :func:`bind`).
CONTEXT_FIELDS: Final = ("instance", "project", "channel", "event_id", "reason", "replica")

_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPES: Final[dict[int, str]] = {
    code: _NAMED.get(chr(code), f"\\x{code:02x}") for code in (*range(0x20), *range(0x7F, 0xA0))
} | {0x2028: "\\u2028", 0x2029: "\\u2029"}
#: What ``json.dumps(..., ensure_ascii=False)`` leaves as it is but some readers take for a line break
#: (NEL, U+2028, U+2029) or a control (DEL, C1): written as JSON escapes, so a line stays one line for all.
_JSON_ESCAPES: Final[dict[int, str]] = {
    code: f"\\u{code:04x}" for code in (*range(0x7F, 0xA0), 0x2028, 0x2029)
}
#: Fields bound to the current context (and the tasks it starts afterwards): see :func:`bind`.
_bound: ContextVar[Mapping[str, str]] = ContextVar("notifier_log_fields", default=MappingProxyType({}))


def escape_controls(text: str) -> str:
    r"""``text`` on one line: control characters as ``\n``, ``\r``, ``\t``, ``\xNN`` or ``\u2028``.

    Backslashes are left alone, so escaping twice changes nothing.
    """
    return text.translate(_ESCAPES)


def bind(**fields: str | None) -> None:
    """Give every record logged from now on in this context, and in the tasks it starts afterwards, these
    :data:`CONTEXT_FIELDS` (``None`` removes one); a record's own (``extra=``) win. The daemon binds
    ``replica`` when scaling is on."""
    merged = {**_bound.get(), **fields}
    _bound.set({k: v for k, v in merged.items() if v is not None})


class RedactingFormatter(logging.Formatter):
    """The ``text`` format: masks secrets, escapes control characters and caps sizes in every record (see
    the module doc). Its subclasses change how a record is laid out, never how it is cleaned."""

    def __init__(self, fmt: str = LOG_FORMAT, secrets: Iterable[str] = ()) -> None:
        super().__init__(fmt)
        # Longest first, so that a secret containing another is replaced whole.
        self.secrets = longest_first(secrets)
        self._escaped_secrets = longest_first({self._escape(s) for s in self.secrets} - set(self.secrets))

    @staticmethod
    def _escape(text: str) -> str:
        """``text`` as this format writes it out (for :meth:`_redacted`, a secret as it may end up there)."""
        return escape_controls(text)

    def _clean(self, text: str, limit: int) -> str:
        """Cut (at a safe place), then mask: before escaping, so a secret holding a newline is found."""
        cut = safe_cut(text, limit, self.secrets) if len(text) > limit else len(text)
        kept = mask(text[:cut], self.secrets)
        return kept + cut_note(len(text) - cut) if cut < len(text) else kept

    def _redacted(self, out: str) -> str:
        """Last line of defence: a secret, as it is or as escaped, wherever it ended up in ``out``."""
        return mask(mask(out, self.secrets), self._escaped_secrets)

    def _traces(self, record: logging.LogRecord) -> tuple[str | None, str | None]:
        """The record's traceback and stack, each cut and masked (``None``: it has none)."""
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        exc = self._clean(record.exc_text, TRACE_LIMIT) if record.exc_text else None
        stack = self._clean(self.formatStack(record.stack_info), TRACE_LIMIT) if record.stack_info else None
        return exc, stack

    def format(self, record: logging.LogRecord) -> str:
        record.message = self._clean(record.getMessage(), MESSAGE_LIMIT)
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        text = escape_controls(self.formatMessage(record))
        for block in self._traces(record):
            for line in block.split("\n") if block is not None else ():
                text += "\n" + CONTINUATION + escape_controls(line)
        return self._redacted(text)


class JsonFormatter(RedactingFormatter):
    """The ``json`` format: one JSON object per line (see the module doc), cleaned as ``text`` is."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(LOG_FORMAT, secrets)

    @staticmethod
    def _escape(text: str) -> str:
        return json.dumps(text, ensure_ascii=False)[1:-1].translate(_JSON_ESCAPES)

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname,
            "logger": self._clean(record.name, MESSAGE_LIMIT),
            "msg": self._clean(record.getMessage(), MESSAGE_LIMIT),
        }
        bound = _bound.get()
        for key in CONTEXT_FIELDS:
            value = record.__dict__.get(key, bound.get(key))
            if value is not None:
                entry[key] = self._clean(str(value), MESSAGE_LIMIT)
        exc, stack = self._traces(record)
        if exc is not None:
            entry["exc"] = exc
        if stack is not None:
            entry["stack"] = stack
        line = json.dumps(entry, ensure_ascii=False).translate(_JSON_ESCAPES)
        safe = self._redacted(line)
        if safe != line and not _is_json(safe):
            # Only a secret shaped like JSON syntax (quotes, a comma) can span two fields: mask it all the
            # same, and say so in a line that still parses.
            withheld = {"ts": entry["ts"], "level": entry["level"], "logger": __name__}
            safe = json.dumps(withheld | {"msg": "[record withheld: a secret spanned its fields]"})
        return safe


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def configure_logging(level: str = "INFO", secrets: Iterable[str] = (), fmt: LogFormat = "text") -> None:
    """Every record to stderr, through the ``text`` or ``json`` formatter, masking ``secrets``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(secrets) if fmt == "json" else RedactingFormatter(LOG_FORMAT, secrets))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log and slack-sdk's debug output may echo URLs: keep them quiet.
    for noisy in ("aiohttp.access", "slack_sdk"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
