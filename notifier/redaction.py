"""Keeping secrets out of text: the one home of every redaction helper.

Logs, errors and printed configs meet URLs (a Slack webhook URL is a credential, a proxy URL may hold a
password, a signed request URL holds a signature) and secret values (tokens, keys, passwords). Here:

* :func:`redact_url` — a URL reduced to what is safe to show: scheme, host and explicit port;
* :func:`mask_redis_url` — a Redis URL as written, its credentials masked (shown whole: its hosts, db and
  options are what an operator checks);
* :func:`mask` — known secret values replaced by ``****``;
* :func:`scrub` — both at once over text from outside (an exception, an answer): secrets masked, every
  URL redacted, in linear time and capped at :data:`MESSAGE_LIMIT` characters;
* :func:`url_passwords` — the passwords a URL holds, to be masked wherever they are quoted alone;
* :func:`safe_cut` / :func:`cut_note` — cutting a long text without leaving a piece of a secret behind.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final
from urllib.parse import parse_qsl, unquote, unquote_plus, urlencode, urlsplit

#: Characters of outside text kept in a log line or an error (the rest is cut, with a note saying how much).
MESSAGE_LIMIT: Final = 16 * 1024
#: What a masked secret becomes.
MASK: Final = "****"
#: Header names that carry credentials (matched anywhere in the name, case-insensitively).
_SECRET_HEADER = re.compile(r"auth|token|secret|key|pass|cookie|session|signature|credential", re.I)
#: The scheme is bounded (real ones are short), which keeps matching linear: an unbounded one made the
#: engine try every start position of a long run of letters against all the rest of it.
URL_RE: Final = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]{0,31}://[^\s'\"<>()\]\[,]+")
#: Query parameters of a Redis URL that are credentials.
_SECRET_QUERY_KEYS: Final = frozenset({"password", "username", "user", "sentinel_password"})
#: Those of them that are passwords.
_PASSWORD_QUERY_KEYS: Final = frozenset({"password", "sentinel_password"})
#: A chain of overlapping secrets longer than this makes a cut give up and keep nothing (never met).
_MAX_CUT_MOVES: Final = 16


def redact_url(url: object, *, path: bool = True) -> str:
    """``https://hooks.slack.com/services/T/B/X`` → ``https://hooks.slack.com/…``: safe to log.

    Only the scheme, the host and an explicit port are kept: never user info, path, query or fragment.
    ``path=False`` leaves out the ``/…`` that says a path was dropped (for a proxy or an endpoint, which
    are named by their origin).
    """
    try:
        parts = urlsplit(str(url))
        host, port = parts.hostname, parts.port
    except ValueError:
        return "<invalid url>"
    if not parts.scheme or not host:
        return "<redacted>"
    shown = f"[{host}]" if ":" in host else host
    if port is not None:
        shown = f"{shown}:{port}"
    return f"{parts.scheme}://{shown}/…" if path else f"{parts.scheme}://{shown}"


def mask_redis_url(url: str) -> str:
    """A Redis URL without its credentials: user info and ``password=`` query values become ``****``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = urlencode(
        [(k, MASK if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in parse_qsl(parts.query)],
        safe="*",
    )
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def url_passwords(url: str) -> set[str]:
    """The passwords a URL holds (its user info's, ``password=`` and ``sentinel_password=`` values), as
    written and decoded: each may be quoted alone, without the URL around it. None for any other text."""
    try:
        parts = urlsplit(url)
        password = parts.password if parts.netloc else None
    except ValueError:
        return set()
    found = {password, unquote(password)} if password else set()
    for pair in parts.query.split("&"):
        key, _, value = pair.partition("=")
        if value and unquote_plus(key).lower() in _PASSWORD_QUERY_KEYS:
            found |= {value, unquote_plus(value)}
    return found


def mask(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every one of ``secrets`` (longest first, as given) replaced by ``****``."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, MASK)
    return text


def longest_first(secrets: Iterable[str]) -> list[str]:
    """The distinct non-empty ``secrets``, longest first: a secret holding another is replaced whole."""
    return sorted({s for s in secrets if s}, key=len, reverse=True)


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


def scrub(text: str, secrets: Iterable[str] = (), *, limit: int | None = MESSAGE_LIMIT) -> str:
    """Remove secrets from text meant for errors/logs: every URL becomes ``scheme://host/…``.

    Linear in the text scanned, which is at most ``limit`` characters (``None``: all of it); a longer
    text is cut first, never inside a secret (:func:`safe_cut`), with a note of how much was cut. A
    secret that is itself a URL is shown redacted, any other as ``****``.
    """
    ordered = longest_first(secrets)
    cut = len(text) if limit is None or len(text) <= limit else safe_cut(text, limit, ordered)
    kept = text[:cut]
    for secret in ordered:
        if secret in kept:
            kept = kept.replace(secret, redact_url(secret) if URL_RE.fullmatch(secret) else MASK)
    kept = URL_RE.sub(lambda m: redact_url(m.group(0)), kept)
    return kept + cut_note(len(text) - cut) if cut < len(text) else kept


def secret_header(name: str) -> bool:
    """Whether a configured header's value is a credential, judged by its name (``X-Team`` is not)."""
    return _SECRET_HEADER.search(name) is not None
