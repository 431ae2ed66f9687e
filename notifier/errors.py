"""Typed errors, raised at the edge where they arise and classified there as retryable or not.

No error message built here carries a secret: channel errors name the channel, never its URL or token,
and DCS errors name the instance, HTTP status, Huawei error code and request id — never the AK/SK.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

#: How much of an unexpected exception's text a report keeps.
MAX_FAILURE_TEXT = 300


class NotifierError(Exception):
    """Base of every error dcs-notifier raises on purpose."""


class ConfigError(NotifierError):
    """The configuration file is missing, unreadable or invalid."""


class Reason(enum.StrEnum):
    """Why a call to the outside failed; also a metric label."""

    CLIENT_ERROR = "client_error"
    AUTH = "auth"
    NOT_FOUND = "not_found"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    INVALID_RESPONSE = "invalid_response"
    INTERNAL = "internal"


#: The 404 code of an instance that does not exist (any more): ``instance.removed``, not a polling
#: problem. Any other 404 (a wrong endpoint path, a proxy) is one.
INSTANCE_GONE = "DCS.3022"


class DcsApiError(NotifierError):
    """A List Background Tasks call for one instance failed."""

    def __init__(
        self,
        instance_id: str,
        reason: Reason,
        message: str,
        *,
        http_status: int | None = None,
        error_code: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        service: str = "DCS",
    ) -> None:
        self.instance_id = instance_id
        self.reason = reason
        self.http_status = http_status
        self.error_code = error_code
        self.request_id = request_id
        self.retry_after = retry_after
        self.message = message
        #: The headers a rejected (401) request carried; the client clears it at once (never logged).
        self.sent_headers: Mapping[str, str] | None = None
        # A DCS error is about an instance; another API's (Cloud Eye) names its own subject.
        about = f"instance {instance_id}" if service == "DCS" else instance_id
        parts = [f"{service} API error for {about}"]
        if http_status is not None:
            parts.append(f"HTTP {http_status}")
        if error_code:
            parts.append(error_code)
        text = ", ".join(parts) + f": {message}"
        if request_id:
            text += f" (X-Request-Id {request_id})"
        super().__init__(text)

    @property
    def retryable(self) -> bool:
        """Worth trying again soon: throttling, server errors, timeouts, broken connections."""
        return self.reason in {Reason.RATE_LIMITED, Reason.SERVER_ERROR, Reason.TIMEOUT, Reason.CONNECTION}


@dataclass(frozen=True, slots=True)
class Failure:
    """What a report needs of a failed poll — never the exception itself, whose traceback would keep
    every frame it passed through alive (a pager's frames hold the pages read so far)."""

    reason: Reason
    #: The whole line, as the exception said it (instance, status, code, message, request id).
    text: str
    #: The cause alone (``error_msg``, or the exception's text).
    message: str
    http_status: int | None = None
    error_code: str | None = None
    request_id: str | None = None

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        """The failure an exception stands for; one that is not a :class:`DcsApiError` is INTERNAL."""
        if isinstance(exc, DcsApiError):
            return cls(exc.reason, str(exc), exc.message, exc.http_status, exc.error_code, exc.request_id)
        if isinstance(exc, NotifierError):  # one of ours: its message says it all
            return cls(Reason.INTERNAL, str(exc)[:MAX_FAILURE_TEXT], str(exc)[:MAX_FAILURE_TEXT])
        detail = str(exc)[:MAX_FAILURE_TEXT]
        text = f"unexpected {type(exc).__name__}" + (f": {detail}" if detail else "")
        return cls(Reason.INTERNAL, text, text)

    @property
    def fingerprint(self) -> tuple[object, ...]:
        """What makes two failures "the same" for reporting (the request id differs every time)."""
        return (self.reason, self.http_status, self.error_code, self.message)


class DeliveryError(NotifierError):
    """A channel did not accept a notification. Channels raise it; only the delivery loop retries."""

    def __init__(
        self, channel: str, retryable: bool, reason: Reason, message: str, *, retry_after: float | None = None
    ) -> None:
        self.channel = channel
        self.retryable = retryable
        self.reason = reason
        self.retry_after = retry_after
        self.message = message
        kind = "retryable" if retryable else "permanent"
        super().__init__(f"channel {channel!r}: {message} ({kind}, {reason.value})")


class StoreError(NotifierError):
    """Redis could not be reached or refused an operation; no state was advanced."""


class CorruptStateError(StoreError):
    """What Redis holds for one instance cannot be read (a key of the wrong type, a field that is not
    the JSON this version writes): that instance's failure, not an outage."""


class CredentialsError(NotifierError):
    """Credentials could not be obtained: a credentials file, or an IAM token request, failed.

    ``source`` says where (``credentials file /path``, ``IAM iam.host as user@domain``); ``reason`` is AUTH
    for rejected or invalid credentials, CONNECTION/TIMEOUT/SERVER_ERROR/RATE_LIMITED for an IAM endpoint
    that cannot answer now, INVALID_RESPONSE for a bad IAM answer and CLIENT_ERROR for an unreadable or
    malformed credentials file. Neither ``source`` nor ``message`` ever carries a secret.
    """

    RETRYABLE_REASONS = frozenset(
        {Reason.RATE_LIMITED, Reason.SERVER_ERROR, Reason.TIMEOUT, Reason.CONNECTION}
    )

    def __init__(
        self,
        source: str,
        reason: Reason,
        message: str,
        *,
        retryable: bool | None = None,
        http_status: int | None = None,
    ) -> None:
        self.source = source
        self.reason = reason
        self.message = message
        self.http_status = http_status
        if retryable is None:
            retryable = reason in self.RETRYABLE_REASONS
        self.retryable = retryable
        kind = "retryable" if retryable else "permanent"
        super().__init__(f"credentials from {source}: {message} ({kind}, {reason.value})")
