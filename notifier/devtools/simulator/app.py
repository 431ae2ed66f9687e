"""The DCS simulator's HTTP side: an aiohttp app serving the List Background Tasks and List Instances APIs,
IAM's token API and Cloud Eye's two event APIs (ListEvents, ListEventDetail)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import TracebackType
from typing import Any, Literal

from aiohttp import web

from notifier.dcs.signer import SignatureError, SignatureProblem, verify
from notifier.devtools.simulator.answers import ApiError, CesError, GatewayError, error_body
from notifier.devtools.simulator.cloud_eye import (
    AUTH_FAILED,
    CES_EVENT_DETAIL_PATH,
    CES_EVENT_DETAIL_ROUTE,
    CES_EVENTS_PATH,
    CES_EVENTS_ROUTE,
    CES_ROUTES,
    event_detail_answer,
    list_events_answer,
)
from notifier.devtools.simulator.scenario import Scenario, Sleep, run_scenario
from notifier.devtools.simulator.state import (
    IAM_TOKENS_PATH,
    Clock,
    ManualClock,
    RecordedRequest,
    SimulatorState,
    TokenBucket,
    wall_clock,
)
from notifier.errors import INSTANCE_GONE

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TASKS_PATH = "/v2/{project_id}/instances/{instance_id}/tasks"
INSTANCES_PATH = "/v2/{project_id}/instances"
DCS_ROUTES = frozenset({"tasks", "instances"})  # route names subject to faults, auth and the rate limit
IAM_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
DEFAULT_LIMIT = 10
QUERY_TIME_FORMAT = "%Y%m%d%H%M%S"

_AUTH_ERRORS: dict[SignatureProblem, tuple[str, str]] = {
    SignatureProblem.MISSING: ("DCS.1003", "Authentication information is missing."),
    SignatureProblem.MALFORMED: ("DCS.1001", "Invalid authentication information: malformed signature."),
    SignatureProblem.UNKNOWN_AK: ("DCS.1001", "Invalid authentication information: unknown access key."),
    SignatureProblem.MISMATCH: ("DCS.1001", "Invalid authentication information: signature mismatch."),
    SignatureProblem.EXPIRED: ("DCS.1002", "The request has expired: X-Sdk-Date is out of range."),
}
_PROJECT_MISMATCH = ("DCS.1004", "The project ID does not match the token.")
_BAD_SECURITY_TOKEN = ("DCS.1001", "Invalid authentication information: the security token is invalid.")
_BAD_AUTH_TOKEN = ("DCS.1001", "Invalid authentication information: the token is invalid.")
_TOKEN_EXPIRED = ("DCS.1002", "The token has expired.")


def _unauthorized(code_message: tuple[str, str]) -> ApiError:
    return ApiError(401, *code_message)


class IamError(Exception):
    """An IAM-style error: ``{"error": {"code": status, "message": ..., "title": ...}}``."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message

    def response(self) -> web.Response:
        body = {"error": {"code": self.status, "message": self.message, "title": self.title}}
        return web.json_response(body, status=self.status)


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "DCS.4800", message)  # simulator's choice: the real 400 code is undocumented


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _bad_request(f"Invalid {name}: {raw!r} is not an integer.") from None
    if not low <= value <= high:
        raise _bad_request(f"Invalid {name}: must be between {low} and {high}.")
    return value


def _time_param(request: web.Request, *names: str) -> datetime | None:
    for name in names:
        raw = request.query.get(name)
        if raw:
            try:
                if len(raw) != 14 or not raw.isdigit():
                    raise ValueError
                return datetime.strptime(raw, QUERY_TIME_FORMAT).replace(tzinfo=UTC)
            except ValueError:
                raise _bad_request(f"Invalid {name}: expected yyyyMMddHHmmss.") from None
    return None


class Simulator(SimulatorState):
    """A faithful local stand-in for the DCS API, driven from Python.

    >>> async with Simulator(project_id="pid", credentials={"AK": "SK"}) as sim:
    ...     sim.add_instance("iid", "orders-cache")
    ...     task_id = sim.start_task("iid", "EXTEND", details={"old_capacity": "0.125"})
    ...     # sim.base_url → http://127.0.0.1:PORT

    Besides the DCS routes it serves IAM's ``POST /v3/auth/tokens`` (point the IAM endpoint at
    ``base_url``); DCS requests are authenticated by AK/SK signature or by ``X-Auth-Token``.

    Clocks: ``clock`` is the service's clock (task times, token expiry). Signatures' ``X-Sdk-Date`` is
    checked against ``gateway_clock`` (default: ``clock``), which also stamps every response's ``Date``
    header. A :class:`ManualClock` is hand-moved task time while clients sign with the wall clock, so with
    one and no ``gateway_clock`` the gateway uses the wall clock; pass ``gateway_clock=clock`` to check
    signatures against the manual clock.

    Rate limit: ``rate_limit`` requests per second over all DCS API requests (token bucket of
    ``rate_burst`` tokens, default ``max(1, rate_limit)``, on ``time.monotonic()``); over it, 429
    ``APIG.0308`` with ``Retry-After: rate_limit_retry_after`` when that is set. All three are settable.

    Cloud Eye (CES v1): ``GET /V1.0/{project_id}/events`` and ``GET /V1.0/{project_id}/event/{event_name}``
    on the same port (point ``ces_endpoint`` at ``base_url``), authenticated like the DCS routes, faulted
    with ``inject(..., api="ces")``, with a rate limit of their own (``ces_rate_limit``, ``ces_rate_burst``,
    ``ces_rate_limit_retry_after``; the same gateway answer). Events come from :meth:`add_cloud_eye_event`;
    see :mod:`notifier.devtools.simulator.cloud_eye` for what is unconfirmed. Authentication failures are
    401 ``ces.0015`` in Cloud Eye's error shape, or, with ``ces_auth_errors = "apig"``, the API gateway's
    ``APIG.0301``.
    """

    def __init__(
        self,
        *,
        project_id: str,
        credentials: Mapping[str, str],
        clock: Clock = wall_clock,
        task_count_as_string: bool = False,
        omit_unfinished_updated_at: bool = False,
        max_limit: int = 1000,
        max_clock_skew: timedelta | None = timedelta(minutes=15),
        verify_signatures: bool = True,
        gateway_clock: Clock | None = None,
        rate_limit: float | None = None,
        rate_burst: float | None = None,
        rate_limit_retry_after: int | None = None,
        ces_rate_limit: float | None = None,
        ces_rate_burst: float | None = None,
        ces_rate_limit_retry_after: int | None = None,
        ces_auth_errors: Literal["ces", "apig"] = "ces",
    ) -> None:
        super().__init__(
            project_id=project_id,
            credentials=credentials,
            clock=clock,
            task_count_as_string=task_count_as_string,
            omit_unfinished_updated_at=omit_unfinished_updated_at,
        )
        self.max_limit = max_limit
        self.max_clock_skew = max_clock_skew
        self.verify_signatures = verify_signatures
        self.gateway_clock = gateway_clock
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst
        self.rate_limit_retry_after = rate_limit_retry_after
        self.ces_rate_limit = ces_rate_limit
        self.ces_rate_burst = ces_rate_burst
        self.ces_rate_limit_retry_after = ces_rate_limit_retry_after
        #: How Cloud Eye routes answer an authentication failure: "ces" (ces.0015) or "apig" (APIG.0301).
        self.ces_auth_errors: Literal["ces", "apig"] = ces_auth_errors
        self._bucket = TokenBucket()
        self._ces_bucket = TokenBucket()
        self.base_url: str | None = None
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()

    # --- lifecycle ----------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get(TASKS_PATH, self._list_tasks, name="tasks")
        app.router.add_get(INSTANCES_PATH, self._list_instances, name="instances")
        app.router.add_post(IAM_TOKENS_PATH, self._issue_token, name="iam_tokens")
        app.router.add_get(CES_EVENTS_PATH, self._ces_list_events, name=CES_EVENTS_ROUTE)
        app.router.add_get(CES_EVENT_DETAIL_PATH, self._ces_event_detail, name=CES_EVENT_DETAIL_ROUTE)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: any free port); returns the base URL."""
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        self._closing = asyncio.Event()
        runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_port = runner.addresses[0][1]
        self.base_url = f"http://{host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        self._closing.set()  # releases delayed responses
        background = list(self._background)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background until it ends or :meth:`stop` cancels it."""

        async def run() -> Any:
            return await coro

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def play(
        self, scenario: Scenario, *, speed: float = 1.0, sleep: Sleep = asyncio.sleep, repeat: bool = False
    ) -> asyncio.Task[Any]:
        """Play ``scenario`` in the background (see :func:`run_scenario`); :meth:`stop` cancels it."""
        return self.spawn(run_scenario(self, scenario, speed=speed, sleep=sleep, repeat=repeat))

    # --- HTTP ---------------------------------------------------------------------------------------

    # --- clocks and rate limit -----------------------------------------------------------------------

    def gateway_now(self) -> datetime:
        """The instant signatures are checked against and ``Date`` headers show (see the class doc)."""
        if self.gateway_clock is not None:
            return self.gateway_clock().astimezone(UTC)
        if isinstance(self.clock, ManualClock):
            return wall_clock()
        return self.clock().astimezone(UTC)

    @property
    def effective_rate_burst(self) -> float | None:
        if self.rate_limit is None:
            return None
        return self.rate_burst if self.rate_burst is not None else max(1.0, self.rate_limit)

    @property
    def effective_ces_rate_burst(self) -> float | None:
        if self.ces_rate_limit is None:
            return None
        return self.ces_rate_burst if self.ces_rate_burst is not None else max(1.0, self.ces_rate_limit)

    def _take_rate_token(self, now: float) -> bool:
        """Token bucket: True when the request may pass. A changed configuration refills the bucket."""
        return self._bucket.take(now, self.rate_limit, self.effective_rate_burst)

    def _throttled(self) -> web.Response:
        return _throttled_response(self.rate_limit, self.rate_limit_retry_after)

    # --- HTTP ---------------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query_pairs=list(request.query.items()),
            headers=dict(request.headers),
            instance_id=request.match_info.get("instance_id"),
            at=time.monotonic(),
            project_id=request.match_info.get("project_id"),
            route=None if request.match_info.http_exception is not None else request.match_info.route.name,
        )
        self.requests.append(record)
        try:
            response = await self._dispatch(request, handler, record)
        except (ApiError, IamError) as exc:  # Cloud Eye's and the gateway's shapes are ApiErrors too
            response = exc.response()
        except web.HTTPException as exc:  # unknown route or method
            response = web.json_response(
                error_body("DCS.4001", f"The requested URL was not found: {exc.reason}."), status=exc.status
            )
        response.headers.setdefault("X-Request-Id", uuid.uuid4().hex)
        response.headers["Date"] = format_datetime(self.gateway_now(), usegmt=True)
        record.status = response.status
        self.notify()
        return response

    async def _dispatch(
        self, request: web.Request, handler: Handler, record: RecordedRequest
    ) -> web.StreamResponse:
        if request.match_info.http_exception is not None:  # no such route: 404/405, no fault, no auth
            return await handler(request)
        route = request.match_info.route.name
        if route in CES_ROUTES:
            if not self._ces_bucket.take(record.at, self.ces_rate_limit, self.effective_ces_rate_burst):
                return _throttled_response(self.ces_rate_limit, self.ces_rate_limit_retry_after)
        elif route in DCS_ROUTES:
            if not self._take_rate_token(record.at):
                return self._throttled()
        else:  # IAM: no rate limit, no faults
            return await handler(request)
        fault = self.take_fault(record.instance_id, route)
        if fault is not None and fault.delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), fault.delay)
        if fault is not None and fault.body is not None:
            return web.Response(status=fault.status, body=fault.body, headers=dict(fault.headers))
        if route in CES_ROUTES:
            await self._authenticate_ces(request)
        else:
            await self._authenticate(request)
        return await handler(request)

    async def _authenticate_ces(self, request: web.Request) -> None:
        """The DCS routes' authentication, its 401s in Cloud Eye's shape (or the API gateway's)."""
        try:
            await self._authenticate(request)
        except ApiError as exc:
            if self.ces_auth_errors == "apig":
                message = f"Incorrect IAM authentication information: {exc.message}"
                raise GatewayError(exc.status, "APIG.0301", message) from None
            raise CesError(exc.status, AUTH_FAILED, exc.message) from None

    async def _authenticate(self, request: web.Request) -> None:
        if not self.verify_signatures:
            return
        project_id = request.match_info["project_id"]
        header_project = request.headers.get("X-Project-Id")
        token = request.headers.get("X-Auth-Token")
        if token is not None and "Authorization" not in request.headers:
            allowed = frozenset([self._check_auth_token(token)])
        else:
            allowed = await self._check_signature(request)
        if project_id not in allowed or (header_project is not None and header_project != project_id):
            raise _unauthorized(_PROJECT_MISMATCH)

    def _check_auth_token(self, value: str) -> str:
        """The project an IAM token is scoped to; raises 401 when it is unknown or expired."""
        token = self.iam_token(value.strip())
        if token is None:
            raise _unauthorized(_BAD_AUTH_TOKEN)
        if self.clock().astimezone(UTC) >= token.expires_at:
            raise _unauthorized(_TOKEN_EXPIRED)
        return token.project_id

    async def _check_signature(self, request: web.Request) -> frozenset[str]:
        """Verify the AK/SK signature (and a temporary AK's security token); the AK's projects."""
        body = await request.read()
        try:
            verified = verify(
                request.method,
                request.rel_url.raw_path,
                list(request.query.items()),
                request.headers,
                body,
                self.lookup_sk,
                now=self.gateway_now(),
                max_skew=self.max_clock_skew,
            )
        except SignatureError as exc:
            raise _unauthorized(_AUTH_ERRORS[exc.problem]) from None
        temporary = self.temporary_credentials(verified.ak)
        if temporary is not None:
            sent = request.headers.get("X-Security-Token", "").strip()
            signed = "x-security-token" in verified.signed_headers
            if not signed or not hmac.compare_digest(sent.encode(), temporary.security_token.encode()):
                raise _unauthorized(_BAD_SECURITY_TOKEN)
            if temporary.expires_at is not None and self.clock() >= temporary.expires_at:
                raise _unauthorized(_TOKEN_EXPIRED)
        return self.projects_of(verified.ak)

    async def _list_tasks(self, request: web.Request) -> web.Response:
        instance_id = request.match_info["instance_id"]
        instance = self.instances.get(instance_id)
        if instance is None or instance.project_id != request.match_info["project_id"]:
            raise ApiError(404, INSTANCE_GONE, "instance does not exist")
        offset = _int_param(request, "offset", 0, 0, 2**31 - 1)
        limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, self.max_limit)
        start = _time_param(request, "start_time", "begin_time")
        end = _time_param(request, "end_time")
        tasks = self.list_tasks(instance_id, start, end)
        total = len(tasks) if self.claimed_task_count is None else self.claimed_task_count
        count: int | str = str(total) if self.task_count_as_string else total
        if self.ignore_offset:
            offset = 0
        return _json({"task_count": count, "tasks": tasks[offset : offset + limit]})

    async def _list_instances(self, request: web.Request) -> web.Response:
        offset = _int_param(request, "offset", 0, 0, 2**31 - 1)
        limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, 1000)
        name = request.query.get("name")
        status = request.query.get("status")
        picked = [
            instance
            for instance in self.instances_of(request.match_info["project_id"])
            if (not name or name in instance.name) and (not status or instance.status == status)
        ]
        page = [instance.to_api() for instance in picked[offset : offset + limit]]  # this page's only
        return _json({"instance_num": len(picked), "instances": page})

    async def _ces_list_events(self, request: web.Request) -> web.Response:
        events = self.cloud_eye.of_project(request.match_info["project_id"])
        return _json(list_events_answer(events, request.query, self.clock().astimezone(UTC)))

    async def _ces_event_detail(self, request: web.Request) -> web.Response:
        events = self.cloud_eye.of_project(request.match_info["project_id"])
        name = request.match_info["event_name"]
        return _json(event_detail_answer(events, name, request.query, self.clock().astimezone(UTC)))

    async def _issue_token(self, request: web.Request) -> web.Response:
        """IAM ``POST /v3/auth/tokens``, password method, project scope; the body is recorded nowhere."""
        domain, name, password, project_id = _parse_password_auth(await request.read())
        user = self.check_iam_user(domain, name, password)
        if user is None:
            raise IamError(401, "Unauthorized", "The username or password is wrong.")
        if project_id not in user.project_ids:
            raise IamError(403, "Forbidden", "You do not have permission to access the project.")
        value, token = self.issue_iam_token(user, project_id)
        body: dict[str, Any] = {
            "token": {
                "expires_at": token.expires_at.strftime(IAM_TIME_FORMAT),
                "issued_at": token.issued_at.strftime(IAM_TIME_FORMAT),
                "methods": ["password"],
                "project": {"id": project_id, "name": project_id},
                "user": {"name": user.name, "domain": {"name": user.domain}},
            }
        }
        if request.query.get("nocatalog", "").lower() != "true":
            body["token"]["catalog"] = []
        return web.json_response(body, status=201, headers={"X-Subject-Token": value})


def _parse_password_auth(raw: bytes) -> tuple[str, str, str, str]:
    """``(domain, user, password, project_id)`` from an IAM password-method body; 400 when malformed."""
    malformed = IamError(400, "Bad Request", "The request body is malformed.")
    try:
        data = json.loads(raw)
        auth = data["auth"]
        identity = auth["identity"]
        user = identity["password"]["user"]
        domain, name, password = user["domain"]["name"], user["name"], user["password"]
        project_id = auth["scope"]["project"]["id"]
        methods = identity["methods"]
    except (ValueError, KeyError, TypeError):
        raise malformed from None
    strings = (domain, name, password, project_id)
    if not isinstance(methods, list) or "password" not in methods:
        raise malformed
    if not all(isinstance(value, str) and value for value in strings):
        raise malformed
    return domain, name, password, project_id


def _throttled_response(rate_limit: float | None, retry_after: int | None) -> web.Response:
    """The API gateway's 429 ``APIG.0308`` (shared by the DCS and the Cloud Eye routes)."""
    limit = rate_limit or 0.0
    shown = str(int(limit)) if limit == int(limit) else format(limit, "g")
    message = "The throttling threshold has been reached: policy user over ratelimit"
    body = {"error_code": "APIG.0308", "error_msg": f"{message},limit:{shown},time:1 second"}
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return web.json_response(body, status=429, headers=headers)


def _json(data: Any) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), content_type="application/json")
