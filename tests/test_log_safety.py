"""What reaches a log line from outside: scrubbed in linear time, capped, and unable to forge a record.

No timed assertions: the adversarial inputs below take many minutes with a quadratic scrubber, so a
regression fails through pytest-timeout, and pass in milliseconds otherwise.
"""

from __future__ import annotations

import io
import logging
import re

import pytest

from notifier.logsetup import LOG_FORMAT, RedactingFormatter, configure_logging, escape_controls
from notifier.redaction import MESSAGE_LIMIT, scrub

TOKEN = "xoxb-1111-2222-s3cr3tT0k3nValue"
WEBHOOK_PATH = "T0SECRET/B0SECRET/s3cr3tW3bh00kPathValue"
WEBHOOK_URL = f"https://hooks.slack.com/services/{WEBHOOK_PATH}"
SECRETS = [WEBHOOK_URL, WEBHOOK_PATH, TOKEN]
#: How a record starts: "2024-01-01 00:00:00,000 LEVEL ...".
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
FORGED = "2025-01-01 00:00:00,000 INFO    notifier.delivery.worker: delivered dcs.task.succeeded to oncall"
CUT_NOTE = re.compile(r"\[(\d+) characters cut\]")


def fragments(secret: str, size: int = 5) -> list[str]:
    """Every piece of ``secret`` of ``size`` characters: none may appear in a scrubbed text."""
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


def assert_no_fragment(text: str, *secrets: str) -> None:
    for secret in secrets:
        for piece in fragments(secret):
            assert piece not in text, f"{piece!r} of a secret survived in {text[-120:]!r}"


# --- the scrubber: linear time, capped ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "a" * 1_000_000,  # a run of letters: every position looks like the start of a scheme
        "a1+.-" * 200_000,  # every character a scheme may hold
        ("x" * 5000 + ":/") * 200,  # near misses of "://"
    ],
    ids=["letters", "scheme-chars", "near-misses"],
)
def test_scrubbing_megabytes_of_adversarial_text_takes_linear_time(text: str) -> None:
    assert scrub(text, SECRETS, limit=None) == text  # nothing to redact, all of it scanned
    huge = text * 8
    capped = scrub(huge, SECRETS)  # as logs and errors use it: only the first MESSAGE_LIMIT characters
    assert len(capped) < MESSAGE_LIMIT + 100
    [cut] = CUT_NOTE.findall(capped)
    assert int(cut) == len(huge) - MESSAGE_LIMIT


def test_scrub_still_redacts_urls_and_secrets() -> None:
    text = f"POST {WEBHOOK_URL} failed; token {TOKEN}; see https://example.com/a/b?c=d, then http://x:81"
    assert scrub(text, SECRETS) == (
        "POST https://hooks.slack.com/… failed; token ****; see https://example.com/…, then http://x:81/…"
    )
    # A scheme longer than any real one is still caught: its last characters are taken for the scheme.
    long_scheme = "z" * 200 + "://host/" + WEBHOOK_PATH
    assert_no_fragment(scrub(long_scheme, ()), WEBHOOK_PATH)


@pytest.mark.parametrize("secret", [TOKEN, WEBHOOK_PATH, WEBHOOK_URL])
def test_a_cut_never_leaves_part_of_a_secret(secret: str) -> None:
    """Wherever the cap falls in a secret, none of it is left: the cut moves before it."""
    limit = 1000
    for offset in range(1, len(secret)):
        start = limit - offset  # the secret straddles the cap by ``offset`` characters
        text = "." * start + secret + " " + "." * 2000
        out = scrub(text, SECRETS, limit=limit)
        assert CUT_NOTE.search(out), out[-80:]
        assert_no_fragment(out, WEBHOOK_PATH, TOKEN)


def test_a_cut_through_an_unknown_url_leaves_only_its_host() -> None:
    """A URL the scrubber does not know as a secret, cut anywhere: what is kept is still redacted."""
    path = "services/T0OTHER/B0OTHER/an0therS3cretPathValue"
    url = f"https://hooks.example.net/{path}"
    limit = 500
    for offset in range(1, len(url)):
        text = "-" * (limit - offset) + url + " tail" + "-" * 1000
        out = scrub(text, (), limit=limit)
        assert_no_fragment(out, path)


# --- the log formatter: one line per record, escaped, redacted, capped -------------------------------------


def format_record(
    formatter: logging.Formatter, msg: str, *args: object, exc: BaseException | None = None
) -> str:
    exc_info = None if exc is None else (type(exc), exc, exc.__traceback__)
    record = logging.LogRecord("notifier.dcs.client", logging.WARNING, __file__, 1, msg, args, exc_info)
    return formatter.format(record)


def test_escape_controls() -> None:
    assert escape_controls("a\nb\rc\td\x00e\x1bf\x7fg\x85h\x9fi\u2028j\u2029k") == (
        "a\\nb\\rc\\td\\x00e\\x1bf\\x7fg\\x85h\\x9fi\\u2028j\\u2029k"
    )
    assert escape_controls("plain text, ünïcödé, C:\\path") == "plain text, ünïcödé, C:\\path"
    every_control = "".join(chr(c) for c in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029])
    escaped = escape_controls(every_control)
    assert escaped.isprintable()
    assert len(escaped.splitlines()) == 1


def test_a_forged_line_in_a_value_stays_in_its_record() -> None:
    formatter = RedactingFormatter(LOG_FORMAT, SECRETS)
    error_msg = f"bad request\n{FORGED}\r\n{FORGED}\u2028{FORGED}\x85{FORGED}"
    out = format_record(formatter, "poll of %s failed: %s", "orders-cache", error_msg)
    assert len(out.splitlines()) == 1, out
    assert RECORD_START.match(out)
    assert f"bad request\\n{FORGED}\\r\\n{FORGED}\\u2028{FORGED}\\x85{FORGED}" in out


def test_traceback_lines_cannot_pass_for_records() -> None:
    formatter = RedactingFormatter(LOG_FORMAT, SECRETS)
    try:
        raise ValueError(f"DCS said: no\n{FORGED}\n  indented\x1b[2J")
    except ValueError as exc:
        out = format_record(formatter, "poll failed: %s", f"x\n{FORGED}", exc=exc)
    first, *rest = out.split("\n")
    assert RECORD_START.match(first)
    assert "Traceback (most recent call last):" in rest[0]  # still readable...
    assert any("ValueError: DCS said: no" in line for line in rest)
    for line in rest:  # ...but no continuation line can be taken for a record
        assert line.startswith("  | "), line
        assert not RECORD_START.match(line)
        assert line.isprintable(), line
    assert any(line == f"  | {FORGED}" for line in rest)  # the forged text is there, marked as a continuation


def test_secrets_are_masked_even_when_they_hold_escaped_characters() -> None:
    odd = "s3cr3t\nwith\x1bcontrols\u2028inside"
    formatter = RedactingFormatter(LOG_FORMAT, [*SECRETS, odd])
    out = format_record(formatter, "token %s and url %s and odd %s", TOKEN, WEBHOOK_URL, odd)
    assert out.count("****") == 3
    assert odd not in out
    assert escape_controls(odd) not in out
    assert_no_fragment(out, TOKEN, WEBHOOK_PATH)


def test_long_messages_are_capped_without_leaving_part_of_a_secret() -> None:
    formatter = RedactingFormatter(LOG_FORMAT, SECRETS)
    for offset in (1, 7, len(TOKEN) - 1):
        message = "." * (MESSAGE_LIMIT - offset) + TOKEN + "." * 1_000_000
        out = format_record(formatter, "%s", message)
        assert len(out) < MESSAGE_LIMIT + 200
        [cut] = CUT_NOTE.findall(out)
        assert int(cut) == len(message) - (MESSAGE_LIMIT - offset)
        assert_no_fragment(out, TOKEN)


@pytest.mark.usefixtures("restore_root_logging")
def test_configured_logging_writes_one_line_per_record() -> None:
    stream = io.StringIO()
    configure_logging("INFO", SECRETS)
    [handler] = logging.getLogger().handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    log = logging.getLogger("notifier.dcs.client")
    log.warning("DCS API error for instance %s: %s", "orders", f"DCS.4999 {TOKEN}\n{FORGED}")
    log.info("big answer: %s", "a" * 3_000_000)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert all(RECORD_START.match(line) for line in lines)
    assert f"DCS.4999 ****\\n{FORGED}" in lines[0]
    assert len(lines[1]) < MESSAGE_LIMIT + 200
    assert CUT_NOTE.search(lines[1])
