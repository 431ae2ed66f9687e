"""Where the DCS client's authentication comes from: AK/SK (permanent or temporary), a file, or IAM.

Every provider does one thing for the client: :meth:`CredentialProvider.apply` turns the headers of a
request into authenticated headers, either signed (``Authorization``, ``X-Sdk-Date`` and, for temporary
credentials, ``X-Security-Token``) or carrying an IAM token (``X-Auth-Token``). When the API answers
HTTP 401 the client calls :meth:`CredentialProvider.invalidate` and may try once more.

No secret key, password, token or security token ever appears in a repr, a str, a log line or an
exception message: the providers name themselves by kind, AK prefix, file path or ``user@domain``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
import yaml

from notifier.dcs.signer import sign
from notifier.errors import CredentialsError, Reason
from notifier.net.errors import describe_client_error
from notifier.net.session import Http
from notifier.redaction import mask

log = logging.getLogger(__name__)

HEADER_AUTH_TOKEN = "X-Auth-Token"  # noqa: S105 (a header name)
HEADER_SUBJECT_TOKEN = "X-Subject-Token"  # noqa: S105 (a header name)
#: A credentials file larger than this is not a credentials file.
MAX_FILE_BYTES = 64 * 1024
_MAX_ERROR_TEXT = 300
_MIN = datetime.min.replace(tzinfo=UTC)


def now_utc() -> datetime:
    return datetime.now(UTC)


def _ak_prefix(ak: str) -> str:
    return f"{ak[:4]}..."


class CredentialProvider(Protocol):
    """Authentication for DCS API requests. One instance serves every request of the process."""

    async def apply(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        project_id: str,
        http: Http,
    ) -> dict[str, str]:
        """Headers with authentication added: signed (Authorization, X-Sdk-Date, [X-Security-Token]) or
        X-Auth-Token. ``url`` is the full URL as sent, including the canonical query; ``http`` is the
        cloud side's session, for providers that call IAM."""
        ...

    def invalidate(self, project_id: str, rejected: Mapping[str, str] | None = None) -> bool:
        """The API rejected what apply() gave (HTTP 401; ``rejected``: the headers that were sent).

        Drops a cached token / re-reads a file. Returns whether the next apply() gives different
        credentials, i.e. whether trying again at once may help.
        """
        ...

    def describe(self) -> str:
        """Safe one-liner for logs: kind + AK's first 4 chars / file path / user@domain. Never a secret."""
        ...


# --- AK/SK ------------------------------------------------------------------------------------------------


class AkSkCredentials:
    """A permanent AK/SK pair, or temporary credentials (AK/SK + security token): requests are signed."""

    __slots__ = ("_ak", "_security_token", "_sk")

    def __init__(self, ak: str, sk: str, security_token: str | None = None) -> None:
        if not ak or not sk:
            raise ValueError("ak and sk are required")
        if security_token is not None and not security_token:
            raise ValueError("security_token must not be empty")
        self._ak = ak
        self._sk = sk
        self._security_token = security_token

    @property
    def ak(self) -> str:
        """The access key id (an identifier, not a secret)."""
        return self._ak

    @property
    def temporary(self) -> bool:
        return self._security_token is not None

    def _fields(self) -> tuple[str, str, str | None]:
        return (self._ak, self._sk, self._security_token)

    def sign(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes = b"",
        *,
        now: datetime | None = None,
        query_is_canonical: bool = False,
    ) -> dict[str, str]:
        """Synchronous signing (see :func:`notifier.dcs.signer.sign`)."""
        return sign(
            method,
            url,
            headers,
            body,
            ak=self._ak,
            sk=self._sk,
            now=now,
            security_token=self._security_token,
            query_is_canonical=query_is_canonical,
        )

    async def apply(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        project_id: str,
        http: Http,
    ) -> dict[str, str]:
        return self.sign(method, url, headers, body, query_is_canonical=True)  # the protocol's promise

    def invalidate(self, project_id: str, rejected: Mapping[str, str] | None = None) -> bool:
        """Nothing cached: fixed credentials stay what they are."""
        return False

    def describe(self) -> str:
        kind = "temporary AK/SK" if self.temporary else "AK/SK"
        return f"{kind} {_ak_prefix(self._ak)}"

    def __repr__(self) -> str:
        return f"<AkSkCredentials {self.describe()}>"

    def __str__(self) -> str:
        return self.describe()


# --- credentials file -------------------------------------------------------------------------------------

_AK_KEYS = ("ak", "access", "access_key", "access_key_id")
_SK_KEYS = ("sk", "secret", "secret_key", "secret_access_key")
_TOKEN_KEYS = ("security_token", "securitytoken")
_EXPIRES_KEYS = ("expires_at",)
_CSV_AK = "access key id"
_CSV_SK = "secret access key"


class _FileProblem(Exception):
    """What is wrong with a credentials file; the text never quotes the file's content."""


@dataclass(frozen=True, slots=True)
class _Parsed:
    credentials: AkSkCredentials
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class _Loaded:
    credentials: AkSkCredentials
    expires_at: datetime | None
    stat: tuple[int, int, int]


def _stat_key(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _os_problem(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _pick(mapping: Mapping[str, object], keys: tuple[str, ...], what: str, *, required: bool) -> str | None:
    for key in keys:
        if key in mapping and mapping[key] is not None:
            value = mapping[key]
            if not isinstance(value, str):
                raise _FileProblem(f"{key!r} must be a string (quote it), got {type(value).__name__}")
            value = value.strip()
            if not value:
                raise _FileProblem(f"{key!r} is empty")
            return value
    if required:
        raise _FileProblem(f"no {what} (expected one of the keys {', '.join(keys)})")
    return None


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise _FileProblem(f"expires_at {text[:40]!r} is not an ISO 8601 time") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _from_mapping(document: object) -> _Parsed:
    if not isinstance(document, Mapping):
        raise _FileProblem(f"expected a mapping of credentials, got {type(document).__name__}")
    mapping = {str(key).lower(): value for key, value in document.items()}
    nested = mapping.get("credential")
    if isinstance(nested, Mapping):
        mapping = {str(key).lower(): value for key, value in nested.items()}
    ak = _pick(mapping, _AK_KEYS, "access key", required=True)
    sk = _pick(mapping, _SK_KEYS, "secret key", required=True)
    token = _pick(mapping, _TOKEN_KEYS, "security token", required=False)
    expires = _pick(mapping, _EXPIRES_KEYS, "expiry", required=False)
    assert ak is not None and sk is not None
    return _Parsed(AkSkCredentials(ak, sk, token), _parse_time(expires) if expires else None)


def _from_csv(text: str) -> _Parsed:
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    header = [cell.strip().lower() for cell in rows[0]]
    if _CSV_AK not in header or _CSV_SK not in header:
        raise _FileProblem("CSV header has no 'Access Key Id' and 'Secret Access Key' columns")
    data = rows[1:]
    if len(data) != 1:
        raise _FileProblem(f"CSV has {len(data)} credential rows, expected one")
    row = data[0]
    if len(row) != len(header):
        raise _FileProblem(f"CSV row has {len(row)} fields, the header {len(header)}")
    ak, sk = row[header.index(_CSV_AK)].strip(), row[header.index(_CSV_SK)].strip()
    if not ak or not sk:
        raise _FileProblem("CSV row has an empty access key or secret key")
    return _Parsed(AkSkCredentials(ak, sk), None)


def _parse(data: bytes, *, csv_hint: bool) -> _Parsed:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _FileProblem("not UTF-8 text") from None
    stripped = text.strip()
    if not stripped:
        raise _FileProblem("the file is empty")
    first_line = stripped.splitlines()[0].lower()
    if csv_hint or (_CSV_AK in first_line and "," in first_line):
        return _from_csv(stripped)
    if stripped.startswith("{"):
        try:
            document = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise _FileProblem(f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
        return _from_mapping(document)
    try:
        document = yaml.safe_load(stripped)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise _FileProblem(f"not valid YAML{where}") from None
    return _from_mapping(document)


def _read(path: Path) -> _Loaded:
    try:
        with path.open("rb") as handle:
            stat = _stat_key(os.fstat(handle.fileno()))
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise _FileProblem("the file does not exist") from None
    except IsADirectoryError:
        raise _FileProblem("it is a directory") from None
    except OSError as exc:
        raise _FileProblem(f"cannot read it: {_os_problem(exc)}") from None
    if len(data) > MAX_FILE_BYTES:
        raise _FileProblem(f"larger than {MAX_FILE_BYTES // 1024} KiB: not a credentials file")
    parsed = _parse(data, csv_hint=path.suffix.lower() == ".csv")
    return _Loaded(parsed.credentials, parsed.expires_at, stat)


class FileCredentials:
    """AK/SK (optionally temporary) from a file that may be rewritten while the process runs.

    Every :meth:`apply` compares the file's ``(st_ino, st_mtime_ns, st_size)`` with what was loaded, so an
    atomic rename and an in-place rewrite are both picked up. A re-read that fails keeps the last good
    credentials and logs one error per distinct problem; with no good credentials ever, apply() raises
    :class:`~notifier.errors.CredentialsError` naming the file. The file is small and local: it is read
    synchronously.
    """

    def __init__(self, path: Path, *, clock: Callable[[], datetime] = now_utc) -> None:
        self._path = Path(path)
        self._clock = clock
        self._loaded: _Loaded | None = None
        self._force = False
        self._reported: set[str] = set()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def expires_at(self) -> datetime | None:
        """The expiry stated in the file for temporary credentials, if any."""
        return self._loaded.expires_at if self._loaded else None

    def current(self) -> AkSkCredentials:
        """The credentials to use now, re-reading the file if it changed (or after invalidate())."""
        loaded = self._loaded
        if loaded is not None and not self._force:
            try:
                stat = _stat_key(os.stat(self._path))
            except FileNotFoundError:
                return self._keep(loaded, "the file does not exist")
            except OSError as exc:
                return self._keep(loaded, f"cannot stat it: {_os_problem(exc)}")
            if stat == loaded.stat:
                return loaded.credentials
        return self._reload()

    def _reload(self) -> AkSkCredentials:
        previous = self._loaded
        try:
            loaded = _read(self._path)
        except _FileProblem as exc:
            if previous is None:
                raise CredentialsError(
                    f"credentials file {self._path}", Reason.CLIENT_ERROR, str(exc), retryable=False
                ) from None
            return self._keep(previous, str(exc))
        self._loaded = loaded
        self._force = False
        self._reported.clear()
        fresh = loaded.credentials
        if previous is None:
            log.info("loaded credentials from %s (%s)", self._path, fresh.describe())
        elif previous.credentials._fields() != fresh._fields():
            log.info("loaded rotated credentials from %s (%s)", self._path, fresh.describe())
        if loaded.expires_at is not None and loaded.expires_at <= self._clock():
            log.warning(
                "credentials in %s (%s) expired at %s; waiting for the file to be rewritten",
                self._path,
                fresh.describe(),
                loaded.expires_at.isoformat(),
            )
        return fresh

    def _keep(self, loaded: _Loaded, problem: str) -> AkSkCredentials:
        if problem not in self._reported:
            self._reported.add(problem)
            log.error(
                "credentials file %s: %s; still using the credentials loaded before (%s)",
                self._path,
                problem,
                loaded.credentials.describe(),
            )
        return loaded.credentials

    async def apply(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        project_id: str,
        http: Http,
    ) -> dict[str, str]:
        return self.current().sign(method, url, headers, body, query_is_canonical=True)

    def invalidate(self, project_id: str, rejected: Mapping[str, str] | None = None) -> bool:
        """Re-read the file now; True when it holds other credentials than those rejected."""
        before = self._loaded.credentials._fields() if self._loaded else None
        self._force = True
        try:
            return self.current()._fields() != before
        except CredentialsError:
            return False

    def describe(self) -> str:
        loaded = self._loaded
        suffix = f" ({loaded.credentials.describe()})" if loaded else ""
        return f"credentials file {self._path}{suffix}"

    def __repr__(self) -> str:
        return f"<FileCredentials {self.describe()}>"

    def __str__(self) -> str:
        return self.describe()


# --- IAM token from a password ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    value: str = field(repr=False)
    expires_at: datetime
    refresh_at: datetime
    fetched_at: datetime | None = None


#: After the API rejected a token, another rejected token of that project is dropped only this much later.
MIN_TOKEN_AGE = timedelta(minutes=1)


class IamPasswordCredentials:
    """A project-scoped IAM token obtained with an IAM user's password, sent as ``X-Auth-Token``.

    Tokens are cached per project and refreshed ``refresh_before`` their expiry (at the latest half-way
    through their life); one fetch at a time per project, and callers waiting on it share its outcome.
    When a refresh fails while the cached token is still valid, that token keeps being used (a new attempt
    at most every ``retry_refresh_after``). After IAM rejected the password no new attempt is made for
    ``auth_retry_after`` (IAM locks users out after repeated failures): the same error is raised.
    """

    def __init__(
        self,
        iam_endpoint: str,
        domain: str,
        user: str,
        password: str,
        *,
        refresh_before: timedelta = timedelta(hours=1),
        clock: Callable[[], datetime] = now_utc,
        timeout: float = 10,
        retry_refresh_after: timedelta = timedelta(minutes=1),
        auth_retry_after: timedelta = timedelta(minutes=5),
    ) -> None:
        endpoint = iam_endpoint.rstrip("/")
        endpoint = endpoint.removesuffix("/v3")
        split = urlsplit(endpoint)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"IAM endpoint must be an http(s) URL, got {endpoint!r}")
        if not domain or not user or not password:
            raise ValueError("domain, user and password are required")
        self._endpoint = endpoint
        self._host = split.netloc
        self._domain = domain
        self._user = user
        self._password = password
        self._refresh_before = refresh_before
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retry_refresh_after = retry_refresh_after
        self._auth_retry_after = auth_retry_after
        self._tokens: dict[str, _Token] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._attempts: dict[str, int] = {}
        self._last_error: dict[str, CredentialsError] = {}
        self._retry_at: dict[str, datetime] = {}
        self._dropped_at: dict[str, datetime] = {}

    @property
    def source(self) -> str:
        return f"IAM {self._host} as {self._user}@{self._domain}"

    def _now(self) -> datetime:
        moment = self._clock()
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment

    def _usable(self, project_id: str, now: datetime) -> _Token | None:
        token = self._tokens.get(project_id)
        if token is None or now >= token.expires_at:
            return None
        if now < token.refresh_at or now < self._retry_at.get(project_id, _MIN):
            return token
        return None

    async def token(self, project_id: str, http: Http) -> str:
        """The token for ``project_id`` (cached, refreshed when due). Never log it."""
        return (await self._token(project_id, http)).value

    async def _token(self, project_id: str, http: Http) -> _Token:
        if not project_id:
            raise ValueError("project_id is required")
        token = self._usable(project_id, self._now())
        if token is not None:
            return token
        seen = self._attempts.get(project_id, 0)
        lock = self._locks.setdefault(project_id, asyncio.Lock())
        async with lock:
            now = self._now()
            token = self._usable(project_id, now)
            if token is not None:
                return token
            error = self._last_error.get(project_id)
            if error is not None and (
                self._attempts.get(project_id, 0) != seen  # failed while this caller waited: share it
                or (not error.retryable and now < self._retry_at.get(project_id, _MIN))
            ):
                raise error.with_traceback(None)
            try:
                fresh = await self._fetch(project_id, http, now)
            except CredentialsError as exc:
                return self._failed(project_id, exc, now)
            self._attempts[project_id] = self._attempts.get(project_id, 0) + 1
            self._last_error.pop(project_id, None)
            self._retry_at.pop(project_id, None)
            self._tokens[project_id] = fresh
            return fresh

    def _failed(self, project_id: str, error: CredentialsError, now: datetime) -> _Token:
        self._attempts[project_id] = self._attempts.get(project_id, 0) + 1
        self._last_error[project_id] = error
        old = self._tokens.get(project_id)
        if old is not None and now < old.expires_at:
            self._retry_at[project_id] = now + self._retry_refresh_after
            log.warning(
                "%s: could not refresh the token of project %s, using the current one until %s: %s",
                self.source,
                project_id,
                old.expires_at.isoformat(),
                error.message,
            )
            return old
        self._tokens.pop(project_id, None)
        if not error.retryable:
            self._retry_at[project_id] = now + self._auth_retry_after
        raise error

    def _error(
        self, reason: Reason, message: str, *, retryable: bool | None = None, status: int | None = None
    ) -> CredentialsError:
        return CredentialsError(self.source, reason, message, retryable=retryable, http_status=status)

    def _redact(self, text: str) -> str:
        return mask(text, [self._password])

    async def _fetch(self, project_id: str, http: Http, now: datetime) -> _Token:
        payload = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": self._user,
                            "password": self._password,
                            "domain": {"name": self._domain},
                        }
                    },
                },
                "scope": {"project": {"id": project_id}},
            }
        }
        url = f"{self._endpoint}/v3/auth/tokens?nocatalog=true"
        try:
            async with http.session.post(
                url,
                json=payload,
                ssl=http.ssl_for(url),
                timeout=self._timeout,
                allow_redirects=False,
                raise_for_status=False,
            ) as resp:
                raw = await resp.read()
                status = resp.status
                subject = resp.headers.get(HEADER_SUBJECT_TOKEN, "").strip()
        except TimeoutError:
            raise self._error(
                Reason.TIMEOUT, f"IAM gave no answer within {self._timeout.total:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            # The exception text may carry the URL; name only the host.
            why = describe_client_error(exc, self._host, http.tls.hint)
            raise self._error(Reason.CONNECTION, f"cannot reach IAM: {why}") from None
        if status in (401, 403):
            raise self._error(
                Reason.AUTH,
                f"IAM rejected user {self._user} in domain {self._domain} for project {project_id}: "
                f"{self._iam_message(raw)} (HTTP {status})",
                retryable=False,
                status=status,
            )
        if status == 429 or status >= 500:
            reason = Reason.RATE_LIMITED if status == 429 else Reason.SERVER_ERROR
            raise self._error(
                reason, f"IAM answered HTTP {status}: {self._iam_message(raw)}", retryable=True, status=status
            )
        if not 200 <= status < 300:
            reason = Reason.CLIENT_ERROR if 400 <= status < 500 else Reason.INVALID_RESPONSE
            raise self._error(
                reason,
                f"IAM answered HTTP {status} for project {project_id}: {self._iam_message(raw)}",
                retryable=False,
                status=status,
            )
        if not subject:
            raise self._error(
                Reason.INVALID_RESPONSE,
                f"IAM answered HTTP {status} without an {HEADER_SUBJECT_TOKEN} header",
                retryable=False,
                status=status,
            )
        expires_at = self._expires_at(raw, status)
        lifetime = expires_at - now
        if lifetime <= timedelta(0):
            raise self._error(
                Reason.INVALID_RESPONSE,
                f"IAM returned a token that expired at {expires_at.isoformat()} "
                f"(local clock {now.isoformat()})",
                retryable=False,
                status=status,
            )
        refresh_at = expires_at - min(self._refresh_before, lifetime / 2)
        log.info(
            "%s: got a token for project %s, valid until %s",
            self.source,
            project_id,
            expires_at.isoformat(),
        )
        return _Token(subject, expires_at, refresh_at, fetched_at=now)

    def _expires_at(self, raw: bytes, status: int) -> datetime:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        token = body.get("token") if isinstance(body, dict) else None
        value = token.get("expires_at") if isinstance(token, dict) else None
        if not isinstance(value, str):
            raise self._error(
                Reason.INVALID_RESPONSE,
                f"IAM answered HTTP {status} without token.expires_at in its body",
                retryable=False,
                status=status,
            )
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise self._error(
                Reason.INVALID_RESPONSE,
                f"IAM answered HTTP {status} with token.expires_at {self._redact(value[:40])!r}, "
                "not an ISO 8601 time",
                retryable=False,
                status=status,
            ) from None
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

    def _iam_message(self, raw: bytes) -> str:
        message: str | None = None
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if isinstance(body, dict):
            error = body.get("error")
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                message = error["message"]
            elif isinstance(body.get("error_msg"), str):
                code = body.get("error_code")
                message = f"{code}: {body['error_msg']}" if isinstance(code, str) else body["error_msg"]
        if not message:
            message = raw[:_MAX_ERROR_TEXT].decode("utf-8", "replace").strip() or "(empty body)"
        return self._redact(message[:_MAX_ERROR_TEXT])

    async def apply(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        project_id: str,
        http: Http,
    ) -> dict[str, str]:
        token = await self._token(project_id, http)
        out = {key: value for key, value in headers.items() if key.lower() != HEADER_AUTH_TOKEN.lower()}
        out[HEADER_AUTH_TOKEN] = token.value
        return out

    def invalidate(self, project_id: str, rejected: Mapping[str, str] | None = None) -> bool:
        """Drop the project's token if it is the one rejected (a late 401 keeps a newer token).

        At most one token per minute and project is dropped this way: an API that rejects even fresh
        tokens must not make every poll ask IAM for a new one.
        """
        cached = self._tokens.get(project_id)
        if cached is None:
            return True
        sent = None
        if rejected is not None:
            sent = next((v for k, v in rejected.items() if k.lower() == HEADER_AUTH_TOKEN.lower()), None)
            if sent != cached.value:
                return True  # a newer token is already cached: try again with it
        now = self._now()
        last = self._dropped_at.get(project_id)
        if last is not None and now - last < MIN_TOKEN_AGE:
            return False
        self._dropped_at[project_id] = now
        del self._tokens[project_id]
        self._retry_at.pop(project_id, None)
        return True

    def describe(self) -> str:
        return f"IAM password {self._user}@{self._domain} via {self._host}"

    def __repr__(self) -> str:
        return f"<IamPasswordCredentials {self.describe()}>"

    def __str__(self) -> str:
        return self.describe()
