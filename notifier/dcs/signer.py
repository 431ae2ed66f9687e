"""Huawei Cloud AK/SK request signing (``SDK-HMAC-SHA256``), as ``huaweicloudsdkcore`` does it.

Canonical request::

    METHOD \\n URI/ \\n QUERY \\n name:value\\n... \\n signed;header;names \\n hex(sha256(body))

* URI: the path, un-escaped, split on ``/``, each segment percent-encoded (only ``A-Za-z0-9_.-~`` kept),
  with a trailing ``/`` that is not sent on the wire.
* QUERY: ``(key, value)`` pairs sorted by raw key then raw value, each part encoded the same way.
* Signed headers: every header whose name has no ``_``, lower-cased and sorted; values trimmed.
* String to sign: ``SDK-HMAC-SHA256\\n{X-Sdk-Date}\\n{hex(sha256(canonical request))}``.

The secret key never appears in a return value, a repr or an exception message.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from urllib.parse import parse_qsl, quote, unquote, urlsplit

ALGORITHM = "SDK-HMAC-SHA256"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
HEADER_DATE = "X-Sdk-Date"
HEADER_AUTHORIZATION = "Authorization"
HEADER_CONTENT_SHA256 = "X-Sdk-Content-Sha256"
HEADER_SECURITY_TOKEN = "X-Security-Token"  # noqa: S105 (a header name)
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()

QueryParams = Mapping[str, str] | Sequence[tuple[str, str]]

_AUTH_RE = re.compile(
    r"^SDK-HMAC-SHA256\s+Access=(?P<ak>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),"
    r"\s*Signature=(?P<sig>[0-9a-fA-F]+)\s*$"
)


def _encode(text: str) -> str:
    return quote(text, safe="~")


def _pairs(params: QueryParams) -> list[tuple[str, str]]:
    if isinstance(params, Mapping):
        return [(str(k), str(v)) for k, v in params.items()]
    return [(str(k), str(v)) for k, v in params]


def canonical_query(params: QueryParams) -> str:
    """The canonical query string; also the exact query to send so the URL matches what was signed."""
    return "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(_pairs(params)))


#: A path made of unreserved characters only: its canonical form is itself (the common case, ids are
#: UUIDs). Not a cache keyed by path: that would keep every instance ever polled.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9\-._~/]*")


def canonical_uri(path: str) -> str:
    """The path as signed: each segment un-escaped then re-encoded, with a trailing ``/``."""
    if _PLAIN_PATH.fullmatch(path):
        return path if path.endswith("/") else path + "/"
    encoded = "/".join(_encode(segment) for segment in unquote(path).split("/"))
    return encoded if encoded.endswith("/") else encoded + "/"


def signed_header_names(headers: Iterable[str]) -> list[str]:
    """Lower-cased, sorted names of the headers that get signed (names with ``_`` are skipped)."""
    return sorted(name.lower() for name in headers if "_" not in name)


def _payload_hash(headers: Mapping[str, str], body: bytes) -> str:
    if not body:
        return EMPTY_BODY_SHA256
    declared = _get(headers, HEADER_CONTENT_SHA256)
    return declared if declared else hashlib.sha256(body).hexdigest()


def _get(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def canonical_request(
    method: str,
    path: str,
    query: QueryParams,
    headers: Mapping[str, str],
    signed: Sequence[str],
    body: bytes,
) -> str:
    """The canonical request over ``signed`` (lower-case names, in order) header names."""
    return _canonical(method, canonical_uri(path), canonical_query(query), headers, signed, body)


def _canonical(
    method: str, uri: str, query: str, headers: Mapping[str, str], signed: Sequence[str], body: bytes
) -> str:
    values = {key.lower(): str(value).strip() for key, value in headers.items()}
    lines = "".join(f"{name}:{values.get(name, '')}\n" for name in signed)
    return "\n".join([method.upper(), uri, query, lines, ";".join(signed), _payload_hash(headers, body)])


def _split_url(url: str) -> tuple[str, str, str]:
    """``(netloc, path, query)`` of an absolute URL; the common form without urlsplit()'s cost."""
    scheme_end = url.find("://")
    if scheme_end <= 0 or "#" in url:
        parts = urlsplit(url)
        return parts.netloc, parts.path, parts.query
    rest, _, query = url[scheme_end + 3 :].partition("?")
    netloc, slash, path = rest.partition("/")
    return netloc, slash + path, query


@functools.lru_cache(maxsize=4)
def _sdk_date(epoch_second: int) -> str:
    return datetime.fromtimestamp(epoch_second, UTC).strftime(DATE_FORMAT)


def string_to_sign(canonical: str, sdk_date: str) -> str:
    return f"{ALGORITHM}\n{sdk_date}\n{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}"


def _signature(sk: str, to_sign: str) -> str:
    return hmac.new(sk.encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def sign(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes = b"",
    *,
    ak: str,
    sk: str,
    now: datetime | None = None,
    security_token: str | None = None,
    query_is_canonical: bool = False,
) -> dict[str, str]:
    """Return a new header dict: ``headers`` (values trimmed) + ``X-Sdk-Date`` + ``Authorization``.

    ``url`` is the full URL including its query string; send the query as :func:`canonical_query` builds
    it. ``Host`` is added from the URL when absent; an ``X-Sdk-Date`` already in ``headers`` is kept.
    A non-JSON ``Content-Type`` makes the payload unsigned, as the official SDK does.
    ``security_token`` (temporary credentials) is sent and signed as ``X-Security-Token``, replacing any
    such header in ``headers``, as the official SDK does.
    """
    if not ak or not sk:
        raise ValueError("ak and sk are required")
    if security_token is not None and not security_token:
        raise ValueError("security_token must not be empty")
    netloc, path, raw_query = _split_url(url)
    out = {key: str(value).strip() for key, value in headers.items()}
    if security_token is not None:
        out = {key: value for key, value in out.items() if key.lower() != HEADER_SECURITY_TOKEN.lower()}
        out[HEADER_SECURITY_TOKEN] = security_token.strip()
    content_type = _get(out, "Content-Type")
    if content_type and not content_type.startswith(("application/json", "application/bson")):
        out[HEADER_CONTENT_SHA256] = UNSIGNED_PAYLOAD
    sdk_date = _get(out, HEADER_DATE)
    if sdk_date is None:
        sdk_date = _sdk_date(int((now or datetime.now(UTC)).timestamp()))
        out[HEADER_DATE] = sdk_date
    if _get(out, "Host") is None:
        out["Host"] = netloc
    signed = signed_header_names(out)
    # The client sends the query exactly as canonical_query() built it: no need to parse and rebuild it.
    query = raw_query if query_is_canonical else canonical_query(parse_qsl(raw_query, keep_blank_values=True))
    canonical = _canonical(method, canonical_uri(path or "/"), query, out, signed, body)
    signature = _signature(sk, string_to_sign(canonical, sdk_date))
    out[HEADER_AUTHORIZATION] = (
        f"{ALGORITHM} Access={ak}, SignedHeaders={';'.join(signed)}, Signature={signature}"
    )
    return out


class SignatureProblem(StrEnum):
    MISSING = "missing"  # no Authorization or X-Sdk-Date header
    MALFORMED = "malformed"  # unparseable Authorization / date, or a signed header absent
    UNKNOWN_AK = "unknown_ak"
    MISMATCH = "mismatch"  # wrong SK or tampered request
    EXPIRED = "expired"  # X-Sdk-Date outside the allowed clock skew


class SignatureError(Exception):
    """Verification failed; ``problem`` says why. Never carries the secret key."""

    def __init__(self, problem: SignatureProblem, message: str) -> None:
        super().__init__(message)
        self.problem = problem


@dataclass(frozen=True, slots=True)
class VerifiedRequest:
    ak: str
    signed_headers: tuple[str, ...]
    signed_at: datetime


def verify(
    method: str,
    path: str,
    query_pairs: QueryParams,
    headers: Mapping[str, str],
    body: bytes,
    lookup_sk: Callable[[str], str | None],
    *,
    now: datetime | None = None,
    max_skew: timedelta | None = None,
) -> VerifiedRequest:
    """Check a received request's signature; raise :class:`SignatureError` when it does not hold.

    ``path`` is the request path without query (escaped or not), ``query_pairs`` the decoded query.
    The clock skew is checked only when ``max_skew`` is given (against ``now``, default: wall clock).
    """
    auth = _get(headers, HEADER_AUTHORIZATION)
    sdk_date = _get(headers, HEADER_DATE)
    if not auth or not sdk_date:
        raise SignatureError(SignatureProblem.MISSING, "missing Authorization or X-Sdk-Date header")
    match = _AUTH_RE.match(auth.strip())
    if match is None:
        raise SignatureError(SignatureProblem.MALFORMED, "malformed Authorization header")
    try:
        signed_at = datetime.strptime(sdk_date.strip(), DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise SignatureError(SignatureProblem.MALFORMED, "malformed X-Sdk-Date header") from None
    signed = tuple(match["signed"].split(";"))
    present = {key.lower() for key in headers}
    if any(name not in present for name in signed) or "host" not in signed:
        raise SignatureError(SignatureProblem.MALFORMED, "a signed header is missing")
    ak = match["ak"]
    sk = lookup_sk(ak)
    if not sk:
        raise SignatureError(SignatureProblem.UNKNOWN_AK, "unknown access key")
    if max_skew is not None:
        current = (now or datetime.now(UTC)).astimezone(UTC)
        if abs(current - signed_at) > max_skew:
            raise SignatureError(SignatureProblem.EXPIRED, "X-Sdk-Date is outside the allowed clock skew")
    canonical = canonical_request(method, path, query_pairs, headers, signed, body)
    expected = _signature(sk, string_to_sign(canonical, sdk_date.strip()))
    if not hmac.compare_digest(expected, match["sig"].lower()):
        raise SignatureError(SignatureProblem.MISMATCH, "signature does not match")
    return VerifiedRequest(ak=ak, signed_headers=signed, signed_at=signed_at)
