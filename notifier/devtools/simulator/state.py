"""In-memory state of the DCS simulator and its deterministic control API (no HTTP here)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from notifier.dcs.models import Outcome, TaskDetails, classify_status, format_api_time, parse_api_time
from notifier.devtools.simulator.answers import ces_error_body, error_body
from notifier.devtools.simulator.cloud_eye import (
    CES_EVENT_DETAIL_ROUTE,
    CES_EVENTS_ROUTE,
    DCS_DIMENSION,
    DCS_EVENT_SOURCE,
    CloudEyeEvent,
    CloudEyeStore,
    content_text,
)

Clock = Callable[[], datetime]
DEFAULT_USER_ID = "d53977d1adfb49c5b025ba7d33a13fd7"
DEFAULT_USER_NAME = "dcs_ops"
IAM_TOKENS_PATH = "/v3/auth/tokens"
#: Route names of the APIs subject to faults, authentication and rate limits, and the API each belongs to.
ROUTE_APIS: dict[str, str] = {
    "tasks": "dcs",
    "instances": "dcs",
    CES_EVENTS_ROUTE: "ces",
    CES_EVENT_DETAIL_ROUTE: "ces",
}
FAULT_APIS = ("dcs", "ces", "any")
#: An instance's maintenance window when none is given (``maintain_begin``/``maintain_end``, UTC): the
#: default the v2 "create instance" docs state (a 1-hour window from 18:00 UTC; CES-NOTES §3). What the
#: real instance list says for an instance created without a window is unconfirmed.
DEFAULT_MAINTAIN_BEGIN = "18:00:00"
DEFAULT_MAINTAIN_END = "19:00:00"


def wall_clock() -> datetime:
    return datetime.now(UTC)


class ManualClock:
    """A clock tests move by hand: ``clock()`` returns the current instant, ``advance()`` moves it."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = (start or datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)).astimezone(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


class SkewedClock:
    """The wall clock shifted by a fixed ``offset`` (a service whose clock runs ahead or behind)."""

    def __init__(self, offset: timedelta) -> None:
        self.offset = offset

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.offset!r})"


@dataclass(frozen=True)
class Fault:
    """What to answer instead of the normal response.

    ``body is None`` means "answer normally" (after ``delay`` seconds); otherwise ``status``/``body``/
    ``headers`` are sent as they are, after ``delay``.
    """

    status: int = 200
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0

    @classmethod
    def error(cls, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Fault:
        body = json.dumps(error_body(code, message)).encode()
        return cls(status, body, {"Content-Type": "application/json", **(headers or {})})

    @classmethod
    def throttled(cls, retry_after: int | None = 1) -> Fault:
        """API gateway throttling: 429 ``APIG.0308``, with ``Retry-After`` when given."""
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        return cls.error(429, "APIG.0308", "The throttling threshold has been reached.", headers)

    @classmethod
    def server_error(cls, status: int = 500, code: str = "DCS.5000") -> Fault:
        return cls.error(status, code, "Internal service error.")

    @classmethod
    def busy(cls) -> Fault:
        return cls.error(400, "DCS.4026", "The system is busy. Please try again later.")

    @classmethod
    def malformed_json(cls) -> Fault:
        """HTTP 200 with a truncated JSON body."""
        return cls(200, b'{"task_count": 1, "tasks": [{"id": "', {"Content-Type": "application/json"})

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Answer normally, but only after ``seconds`` (to trigger client timeouts)."""
        return cls(delay=seconds)

    @classmethod
    def ces_error(
        cls, status: int, code: str, details: str, headers: Mapping[str, str] | None = None
    ) -> Fault:
        """A Cloud Eye v1 error: ``{"http_code": "<status>", "message": {"details": ..., "code": ...}}``."""
        body = json.dumps(ces_error_body(status, code, details)).encode()
        return cls(status, body, {"Content-Type": "application/json", **(headers or {})})


@dataclass
class PendingFault:
    fault: Fault
    remaining: int
    instance_id: str | None  # None: every API request (of ``api``)
    api: str = "dcs"  # "dcs", "ces" or "any"
    route: str | None = None  # one route only ("tasks", "instances", "ces_events", "ces_event_detail")

    def applies_to(self, instance_id: str | None, route: str | None) -> bool:
        api = ROUTE_APIS.get(route or "tasks", "dcs")
        return (
            self.api in ("any", api)
            and (self.route is None or self.route == (route or "tasks"))
            and (self.instance_id is None or self.instance_id == instance_id)
        )


class TokenBucket:
    """A token bucket on a caller-given monotonic time; a changed (rate, burst) refills it."""

    def __init__(self) -> None:
        self.tokens = 0.0
        self.at = 0.0
        self.config: tuple[float, float] | None = None

    def take(self, now: float, rate: float | None, burst: float | None) -> bool:
        """True when a request may pass (always, with no rate)."""
        if rate is None or burst is None:
            return True
        if (rate, burst) != self.config:
            self.config, self.tokens, self.at = (rate, burst), burst, now
        self.tokens = min(burst, self.tokens + max(0.0, now - self.at) * rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


SECRET_HEADERS = frozenset({"x-auth-token", "x-security-token", "x-subject-token"})


@dataclass
class RecordedRequest:
    """One request as received (never its body); ``at`` is ``time.monotonic()`` at arrival.

    The repr hides the values of token headers (``X-Auth-Token``, ``X-Security-Token``).
    """

    method: str
    path: str
    query_pairs: list[tuple[str, str]]
    headers: dict[str, str] = field(repr=False)
    instance_id: str | None
    status: int | None = None
    at: float = field(default_factory=time.monotonic)
    project_id: str | None = None
    route: str | None = None  # the matched route's name (None: no route matched)

    @property
    def query(self) -> dict[str, str]:
        return dict(self.query_pairs)

    @property
    def safe_headers(self) -> dict[str, str]:
        """The headers with token values replaced by ``***``."""
        return {k: "***" if k.lower() in SECRET_HEADERS else v for k, v in self.headers.items()}

    def __repr__(self) -> str:
        return (
            f"RecordedRequest(method={self.method!r}, path={self.path!r}, query_pairs={self.query_pairs!r}, "
            f"headers={self.safe_headers!r}, instance_id={self.instance_id!r}, status={self.status!r}, "
            f"at={self.at!r})"
        )


@dataclass(frozen=True)
class TemporaryCredentials:
    """An AK/SK pair that is only valid with its security token (``X-Security-Token``, signed)."""

    ak: str
    sk: str = field(repr=False)
    security_token: str = field(repr=False)
    project_ids: frozenset[str]
    expires_at: datetime | None = None


@dataclass(frozen=True)
class IamUser:
    domain: str
    name: str
    password: str = field(repr=False)
    project_ids: frozenset[str]


@dataclass(frozen=True)
class IamToken:
    """What an issued IAM token stands for (the token itself is only the key it is stored under)."""

    domain: str
    user_name: str
    project_id: str
    issued_at: datetime
    expires_at: datetime


@dataclass
class SimInstance:
    instance_id: str
    name: str
    status: str = "RUNNING"
    engine: str = "Redis"
    engine_version: str = "6.0"
    spec_code: str = "redis.ha.xu1.tiny.r2.128"
    capacity_gb: float = 0.125
    ip: str = "192.168.0.10"
    port: int = 6379
    az_codes: list[str] = field(default_factory=lambda: ["az1"])
    extra: dict[str, Any] = field(default_factory=dict)
    project_id: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    #: ``HH:mm:ss`` in UTC, as the instance list gives them; None leaves the key out.
    maintain_begin: str | None = DEFAULT_MAINTAIN_BEGIN
    maintain_end: str | None = DEFAULT_MAINTAIN_END

    def to_api(self) -> dict[str, Any]:
        whole = int(self.capacity_gb)
        data: dict[str, Any] = {
            "instance_id": self.instance_id,
            "name": self.name,
            "status": self.status,
            "engine": self.engine,
            "engine_version": self.engine_version,
            "spec_code": self.spec_code,
            "capacity": whole,
            "capacity_minor": "" if self.capacity_gb == whole else format(self.capacity_gb, "g"),
            "max_memory": round(self.capacity_gb * 1024),
            "ip": self.ip,
            "port": self.port,
            "az_codes": list(self.az_codes),
        }
        if self.tags:  # Huawei's shape; absent when the instance has no tags
            data["tags"] = [{"key": key, "value": value} for key, value in self.tags.items()]
        for key in ("maintain_begin", "maintain_end"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        data.update(self.extra)
        return data


@dataclass
class SimTask:
    seq: int
    fields: dict[str, Any]  # exactly what is served, timestamps already formatted
    created: datetime | None  # parsed created_at, for ordering and time filters

    @property
    def id(self) -> str:
        return str(self.fields.get("id", ""))


class SimulatorState:
    """Projects, credentials, instances, tasks, faults and the request log.

    Every method is synchronous and deterministic.
    """

    def __init__(
        self,
        *,
        project_id: str,
        credentials: Mapping[str, str],
        clock: Clock = wall_clock,
        task_count_as_string: bool = False,
        omit_unfinished_updated_at: bool = False,
    ) -> None:
        self.project_id = project_id
        self._projects: dict[str, dict[str, str]] = {project_id: {}}
        self._temporary: dict[str, TemporaryCredentials] = {}
        self._iam_users: dict[tuple[str, str], IamUser] = {}
        self._iam_tokens: dict[str, IamToken] = {}
        self.iam_token_ttl = timedelta(hours=24)
        self.clock = clock
        self.task_count_as_string = task_count_as_string
        self.omit_unfinished_updated_at = omit_unfinished_updated_at
        #: A hostile API: answer this ``task_count`` whatever the list holds (None: the truth)...
        self.claimed_task_count: int | None = None
        #: ...and serve the first page for every ``offset``.
        self.ignore_offset = False
        self.instances: dict[str, SimInstance] = {}
        self.tasks: dict[str, list[SimTask]] = {}
        self.requests: list[RecordedRequest] = []
        self.faults: list[PendingFault] = []
        self._seq = 0
        self._changed = asyncio.Event()
        #: Cloud Eye's events (see :meth:`add_cloud_eye_event`); ``cloud_eye.seed`` makes the event ids.
        self.cloud_eye = CloudEyeStore()
        self.set_credentials(credentials)

    def __repr__(self) -> str:  # never show the secret keys
        return (
            f"<{type(self).__name__} project_id={self.project_id!r} projects={len(self._projects)} "
            f"instances={len(self.instances)}>"
        )

    # --- projects and credentials -------------------------------------------------------------------

    @property
    def project_ids(self) -> list[str]:
        """The known projects, the primary one first."""
        return list(self._projects)

    def _check_sk(self, ak: str, sk: str, *, ignore_project: str | None = None) -> None:
        """An AK stands for one secret key everywhere: refuse a second, different one."""
        if not ak or not sk:
            raise ValueError("access keys and secret keys must be non-empty")
        if ak in self._temporary:
            raise ValueError(f"access key {ak!r} is already temporary credentials")
        for project_id, credentials in self._projects.items():
            if project_id != ignore_project and credentials.get(ak, sk) != sk:
                raise ValueError(f"access key {ak!r} already has another secret key (project {project_id!r})")

    def add_project(self, project_id: str, credentials: Mapping[str, str] | None = None) -> None:
        """Add a project (if new) and AK→SK pairs valid for that project only (merged with its others)."""
        if not project_id:
            raise ValueError("project_id must be non-empty")
        for ak, sk in (credentials or {}).items():
            self._check_sk(ak, sk)
        self._projects.setdefault(project_id, {}).update(credentials or {})
        self.notify()

    def set_credentials(self, credentials: Mapping[str, str]) -> None:
        """Replace the primary project's AK→SK pairs."""
        for ak, sk in credentials.items():
            self._check_sk(ak, sk, ignore_project=self.project_id)
        self._projects[self.project_id] = dict(credentials)

    def revoke(self, ak: str) -> None:
        """Remove ``ak`` from every project (and its temporary credentials): it is then unknown."""
        for credentials in self._projects.values():
            credentials.pop(ak, None)
        self._temporary.pop(ak, None)
        self.notify()

    def lookup_sk(self, ak: str) -> str | None:
        """The secret key of ``ak`` in any project (permanent or temporary); the project is checked apart."""
        for credentials in self._projects.values():
            sk = credentials.get(ak)
            if sk is not None:
                return sk
        temporary = self._temporary.get(ak)
        return temporary.sk if temporary is not None else None

    def projects_of(self, ak: str) -> frozenset[str]:
        """The projects ``ak`` is valid for (empty: unknown access key)."""
        temporary = self._temporary.get(ak)
        if temporary is not None:
            return temporary.project_ids
        return frozenset(pid for pid, credentials in self._projects.items() if ak in credentials)

    def temporary_credentials(self, ak: str) -> TemporaryCredentials | None:
        return self._temporary.get(ak)

    def add_temporary_credentials(
        self,
        ak: str,
        sk: str,
        security_token: str,
        *,
        project_ids: Sequence[str] | None = None,
        expires_at: datetime | None = None,
    ) -> None:
        """Temporary AK/SK (as from STS): requests must carry ``X-Security-Token``, signed.

        ``project_ids`` None: the primary project. ``expires_at`` is compared with the simulator clock.
        """
        if not security_token:
            raise ValueError("security_token must be non-empty")
        if isinstance(project_ids, str):
            raise TypeError("project_ids is a sequence of project ids, not one string")
        if self.projects_of(ak) and ak not in self._temporary:
            raise ValueError(f"access key {ak!r} is already permanent credentials")
        if not ak or not sk:
            raise ValueError("access keys and secret keys must be non-empty")
        pids = frozenset([self.project_id] if project_ids is None else project_ids)
        for pid in pids:
            self._projects.setdefault(pid, {})
        self._temporary[ak] = TemporaryCredentials(ak, sk, security_token, pids, expires_at)
        self.notify()

    # --- IAM users and tokens -----------------------------------------------------------------------

    def add_iam_user(
        self, domain: str, name: str, password: str, project_ids: Sequence[str] | None = None
    ) -> None:
        """An IAM user (password method) who may get tokens scoped to ``project_ids`` (None: primary)."""
        if isinstance(project_ids, str):
            raise TypeError("project_ids is a sequence of project ids, not one string")
        pids = frozenset([self.project_id] if project_ids is None else project_ids)
        for pid in pids:
            self._projects.setdefault(pid, {})
        self._iam_users[(domain, name)] = IamUser(domain, name, password, pids)
        self.notify()

    def check_iam_user(self, domain: str, name: str, password: str) -> IamUser | None:
        user = self._iam_users.get((domain, name))
        if user is None or not hmac.compare_digest(user.password.encode(), password.encode()):
            return None
        return user

    def issue_iam_token(self, user: IamUser, project_id: str) -> tuple[str, IamToken]:
        """A new opaque token for ``user`` scoped to ``project_id``, valid ``iam_token_ttl`` from now."""
        issued = self.clock().astimezone(UTC)
        token = IamToken(user.domain, user.name, project_id, issued, issued + self.iam_token_ttl)
        value = "MII" + secrets.token_urlsafe(96)
        self._iam_tokens[value] = token
        self.notify()
        return value, token

    def iam_token(self, value: str) -> IamToken | None:
        """What token ``value`` stands for (None: never issued or revoked); expiry is not checked here."""
        return self._iam_tokens.get(value)

    def revoke_iam_tokens(self) -> None:
        """Every token issued so far becomes invalid."""
        self._iam_tokens.clear()
        self.notify()

    @property
    def iam_requests(self) -> list[RecordedRequest]:
        """Recorded IAM token requests (``POST /v3/auth/tokens``), whatever their outcome."""
        return [r for r in self.requests if r.path == IAM_TOKENS_PATH]

    # --- change notification ------------------------------------------------------------------------

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        """Wait until ``predicate()`` holds, re-checked on each request or state change.

        Raises ``TimeoutError`` when it does not hold within ``within`` seconds.
        """
        try:
            async with asyncio.timeout(within):
                while not predicate():
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"condition not met within {within} s") from None

    # --- instances ----------------------------------------------------------------------------------

    def add_instance(
        self,
        instance_id: str,
        name: str,
        *,
        project_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        **attrs: Any,
    ) -> SimInstance:
        """Add (or replace) an instance of ``project_id`` (default: the primary project).

        ``attrs`` are other :class:`SimInstance` fields. Its tasks are kept when it is replaced.
        """
        pid = project_id or self.project_id
        self._projects.setdefault(pid, {})
        instance = SimInstance(instance_id, name, **attrs, project_id=pid, tags=dict(tags or {}))
        self.instances[instance_id] = instance
        self.tasks.setdefault(instance_id, [])
        self.notify()
        return instance

    def set_instance(self, instance_id: str, **changes: Any) -> SimInstance:
        """Change fields of an existing instance (``status``, ``name``, ``tags``, ``project_id``…)."""
        instance = self.instances.get(instance_id)
        if instance is None:
            raise KeyError(f"unknown instance {instance_id!r}")
        names = {f.name for f in dataclasses.fields(SimInstance)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"unknown SimInstance fields: {', '.join(unknown)}")
        if changes.get("instance_id", instance_id) != instance_id:
            raise ValueError("the instance id cannot change (remove it and add another)")
        if "tags" in changes:
            changes["tags"] = dict(changes["tags"] or {})
        if changes.get("project_id"):
            self._projects.setdefault(changes["project_id"], {})
        elif "project_id" in changes:
            changes["project_id"] = self.project_id
        for key, value in changes.items():
            setattr(instance, key, value)
        self.notify()
        return instance

    def remove_instance(self, instance_id: str) -> None:
        """Delete an instance and its tasks: gone from listings, its tasks URL answers 404 DCS.3022."""
        if instance_id not in self.instances:
            raise KeyError(f"unknown instance {instance_id!r}")
        del self.instances[instance_id]
        self.tasks.pop(instance_id, None)
        self.notify()

    def instances_of(self, project_id: str) -> list[SimInstance]:
        """The instances of one project, in insertion order."""
        return [i for i in self.instances.values() if i.project_id == project_id]

    def _instance_tasks(self, instance_id: str) -> list[SimTask]:
        if instance_id not in self.instances:
            raise KeyError(f"unknown instance {instance_id!r}")
        return self.tasks[instance_id]

    # --- tasks --------------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def start_task(
        self,
        instance_id: str,
        name: str,
        *,
        details: Mapping[str, Any] | TaskDetails | None = None,
        user_name: str = DEFAULT_USER_NAME,
        user_id: str = DEFAULT_USER_ID,
        status: str = "RUNNING",
        created_at: datetime | None = None,
        params: str | None = None,
        enable_show: bool = False,
        task_id: str | None = None,
    ) -> str:
        """Start a task (newest first in listings); returns its id (deterministic)."""
        tasks = self._instance_tasks(instance_id)
        seq = self._next_seq()
        tid = task_id or hashlib.sha256(f"{instance_id}:{seq}".encode()).hexdigest()[:32]
        created = (created_at or self.clock()).astimezone(UTC)
        fields: dict[str, Any] = {"id": tid, "name": name, "user_name": user_name, "user_id": user_id}
        if params is not None:
            fields["params"] = params
        if isinstance(details, TaskDetails):
            details = details.model_dump(mode="json", exclude_none=True)
        if details:
            fields["details"] = dict(details)
        fields.update({"enable_show": enable_show, "status": status, "created_at": format_api_time(created)})
        if not self.omit_unfinished_updated_at:
            fields["updated_at"] = ""
        tasks.append(SimTask(seq, fields, created))
        if classify_status(status) is not Outcome.IN_PROGRESS:
            self.set_status(instance_id, tid, status)
        self.notify()
        return tid

    def add_raw_task(self, instance_id: str, task: Mapping[str, Any]) -> str:
        """Serve ``task`` verbatim (unknown fields, odd values); ``created_at`` orders it when parseable."""
        try:
            created = parse_api_time(task.get("created_at"))
        except ValueError:
            created = None
        self._instance_tasks(instance_id).append(SimTask(self._next_seq(), dict(task), created))
        self.notify()
        return str(task.get("id", ""))

    def get_task(self, instance_id: str, task_id: str) -> dict[str, Any]:
        """A copy of the task as served."""
        return dict(self._find(instance_id, task_id).fields)

    def _find(self, instance_id: str, task_id: str) -> SimTask:
        for task in self._instance_tasks(instance_id):
            if task.id == task_id:
                return task
        raise KeyError(f"unknown task {task_id!r} on instance {instance_id!r}")

    def set_status(
        self, instance_id: str, task_id: str, status: str, updated_at: datetime | None = None
    ) -> None:
        """Change a task's status; a final status (SUCCESS, FAILED…) stamps ``updated_at`` (default: now)."""
        task = self._find(instance_id, task_id)
        task.fields["status"] = status
        if updated_at is None and classify_status(status) is not Outcome.IN_PROGRESS:
            updated_at = self.clock()
        if updated_at is not None:
            task.fields["updated_at"] = format_api_time(updated_at)
        self.notify()

    def finish_task(
        self, instance_id: str, task_id: str, status: str = "SUCCESS", updated_at: datetime | None = None
    ) -> None:
        self.set_status(instance_id, task_id, status, updated_at or self.clock())

    def remove_task(self, instance_id: str, task_id: str) -> None:
        self._instance_tasks(instance_id).remove(self._find(instance_id, task_id))
        self.notify()

    def list_tasks(
        self, instance_id: str, start: datetime | None = None, end: datetime | None = None
    ) -> list[dict[str, Any]]:
        """All matching tasks as served, newest first (``end`` inclusive to the second)."""
        picked = []
        for task in self._instance_tasks(instance_id):
            if start is not None and (task.created is None or task.created < start):
                continue
            if end is not None and (task.created is None or task.created >= end + timedelta(seconds=1)):
                continue
            picked.append(task)
        oldest = datetime.min.replace(tzinfo=UTC)
        picked.sort(key=lambda t: (t.created or oldest, t.seq), reverse=True)
        return [dict(t.fields) for t in picked]

    # --- faults -------------------------------------------------------------------------------------

    def inject(
        self,
        fault: Fault,
        *,
        times: int = 1,
        instance_id: str | None = None,
        api: str | None = None,
        route: str | None = None,
    ) -> None:
        """The next ``times`` API requests (for ``instance_id``'s tasks, or any) get ``fault``; FIFO.

        ``api`` picks the requests: ``"dcs"`` (the default: List Background Tasks and List Instances),
        ``"ces"`` (Cloud Eye's ListEvents and ListEventDetail) or ``"any"``; ``route`` narrows it to one
        route (``"tasks"``, ``"instances"``, ``"ces_events"``, ``"ces_event_detail"``) and, without
        ``api``, implies its API. IAM's token route is never faulted.
        """
        if times < 1:
            raise ValueError("times must be >= 1")
        if route is not None and route not in ROUTE_APIS:
            raise ValueError(f"unknown route {route!r}: one of {', '.join(ROUTE_APIS)}")
        chosen = api or (ROUTE_APIS[route] if route is not None else "dcs")
        if chosen not in FAULT_APIS:
            raise ValueError(f"unknown api {chosen!r}: one of {', '.join(FAULT_APIS)}")
        if route is not None and chosen not in ("any", ROUTE_APIS[route]):
            raise ValueError(f"route {route!r} is not part of api {chosen!r}")
        if instance_id is not None and chosen == "ces":
            raise ValueError("Cloud Eye requests name no instance: instance_id cannot select them")
        self.faults.append(PendingFault(fault, times, instance_id, chosen, route))

    def clear_faults(self) -> None:
        self.faults.clear()

    def take_fault(self, instance_id: str | None, route: str | None = None) -> Fault | None:
        """The first pending fault for a request to ``route`` (None: tasks) about ``instance_id``."""
        for pending in self.faults:
            if pending.applies_to(instance_id, route):
                pending.remaining -= 1
                if pending.remaining == 0:
                    self.faults.remove(pending)
                return pending.fault
        return None

    # --- request log --------------------------------------------------------------------------------

    def task_requests(self, instance_id: str | None = None) -> list[RecordedRequest]:
        """Recorded List Background Tasks requests (of one instance, or all)."""
        return [
            r
            for r in self.requests
            if r.path.endswith("/tasks")
            and r.route not in (CES_EVENTS_ROUTE, CES_EVENT_DETAIL_ROUTE)
            and (instance_id is None or r.instance_id == instance_id)
        ]

    def ces_requests(
        self, route: str | None = None, *, event_name: str | None = None
    ) -> list[RecordedRequest]:
        """Recorded Cloud Eye requests, whatever their outcome.

        ``route``: ``"ces_events"`` (ListEvents) or ``"ces_event_detail"`` (ListEventDetail); ``event_name``:
        only ListEventDetail requests for that name.
        """
        routes = (CES_EVENTS_ROUTE, CES_EVENT_DETAIL_ROUTE) if route is None else (route,)
        picked = [r for r in self.requests if r.route in routes]
        if event_name is not None:
            suffix = "/event/" + event_name
            picked = [r for r in picked if r.route == CES_EVENT_DETAIL_ROUTE and r.path.endswith(suffix)]
        return picked

    # --- Cloud Eye events ---------------------------------------------------------------------------

    def add_cloud_eye_event(
        self,
        event_name: str = "masterStandbyFailover",
        *,
        project_id: str | None = None,
        resource_id: str = "",
        resource_name: str | None = None,
        time: datetime | None = None,
        level: str = "Major",
        state: str = "incident",
        content: Mapping[str, Any] | str | None = None,
        event_id: str | None = None,
        visible_at: datetime | None = None,
        event_source: str = DCS_EVENT_SOURCE,
        event_type: str = "EVENT.SYS",
        sub_event_type: str | None = None,
        user: str = "",
        group_id: str = "",
        dimensions: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    ) -> str:
        """Record a Cloud Eye event occurrence; returns its ``event_id``.

        ``time`` (default: now, by the simulator's ``clock``) is when it happened; ``visible_at`` (default:
        now) when Cloud Eye has recorded it: before that the event APIs do not list it, so an old ``time``
        with a later ``visible_at`` is a *late* event. ``project_id`` defaults to the project of the
        instance ``resource_id`` (else the primary project), ``resource_name`` to that instance's name.
        ``content`` is served as ``detail.content``: a mapping as compact JSON, a string as it is.
        ``sub_event_type`` defaults to ``SUB_EVENT.OPS`` (``SUB_EVENT.CUSTOM`` for ``EVENT.CUSTOM``);
        ``dimensions`` to ``dcs_instance_id`` = ``resource_id`` for a ``SYS.DCS`` event with a resource.
        ``event_id`` (default: ``ev`` + ``visible_at`` in ms + 10 letters/digits, deterministic from
        ``cloud_eye.seed`` and a counter) is not checked for uniqueness: a test may serve one twice.
        """
        now = self.clock().astimezone(UTC)
        happened = (time or now).astimezone(UTC)
        recorded = (visible_at or now).astimezone(UTC)
        instance = self.instances.get(resource_id) if resource_id else None
        pid = project_id or (instance.project_id if instance is not None else self.project_id)
        if dimensions is None:
            pairs: tuple[tuple[str, str], ...] = ()
            if resource_id and event_source == DCS_EVENT_SOURCE:
                pairs = ((DCS_DIMENSION, resource_id),)
        elif isinstance(dimensions, Mapping):
            pairs = tuple((str(k), str(v)) for k, v in dimensions.items())
        else:
            pairs = tuple((str(k), str(v)) for k, v in dimensions)
        if sub_event_type is None:
            sub_event_type = "SUB_EVENT.CUSTOM" if event_type == "EVENT.CUSTOM" else "SUB_EVENT.OPS"
        event = CloudEyeEvent(
            event_id=event_id or self.cloud_eye.next_event_id(recorded),
            project_id=pid,
            event_name=event_name,
            time=happened,
            visible_at=recorded,
            event_source=event_source,
            event_type=event_type,
            sub_event_type=sub_event_type,
            resource_id=resource_id,
            resource_name=resource_name if resource_name is not None else (instance.name if instance else ""),
            level=level,
            state=state,
            user=user,
            content=content_text(content),
            group_id=group_id,
            dimensions=pairs,
            seq=self._next_seq(),
        )
        self.cloud_eye.events.append(event)
        self.notify()
        return event.event_id

    def cloud_eye_events(self, project_id: str | None = None) -> list[CloudEyeEvent]:
        """Every recorded event (of one project, or all), visible yet or not, in the order added."""
        events = self.cloud_eye.events
        return list(events) if project_id is None else [e for e in events if e.project_id == project_id]

    def remove_cloud_eye_event(self, event_id: str) -> None:
        """Forget every occurrence with ``event_id``; KeyError when there is none."""
        kept = [e for e in self.cloud_eye.events if e.event_id != event_id]
        if len(kept) == len(self.cloud_eye.events):
            raise KeyError(f"unknown Cloud Eye event {event_id!r}")
        self.cloud_eye.events = kept
        self.notify()

    def clear_cloud_eye_events(self, project_id: str | None = None) -> None:
        """Forget the events (of one project, or all)."""
        if project_id is None:
            self.cloud_eye.events = []
        else:
            self.cloud_eye.events = [e for e in self.cloud_eye.events if e.project_id != project_id]
        self.notify()
