"""Credential providers against real HTTP servers on 127.0.0.1: a signature-verifying DCS stand-in and an
IAM stand-in. No mocks of HTTP clients, no sleeps; time moves by a manual clock."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import web
from yarl import URL

from notifier.dcs.credentials import (
    AkSkCredentials,
    CredentialProvider,
    FileCredentials,
    IamPasswordCredentials,
)
from notifier.dcs.signer import SignatureError, canonical_query, verify
from notifier.errors import CredentialsError, Reason
from notifier.net.session import Http, make_http

PROJECT = "a4d31cb63d724fdc8ec96e3a41e47f71"
OTHER_PROJECT = "0b6c1f0e2d7a4c5e9f8a7b6c5d4e3f21"
AK_A = "HPUAEXAMPLEAKAAAA0001"
SK_A = "skA-s3cr3t/Key+0123456789abcdefXYZ"
AK_B = "QTWBEXAMPLEAKBBBB0002"
SK_B = "skB-s3cr3t/Key+fedcba9876543210QRS"
AK_TMP = "TMPXEXAMPLEAKTEMP0003"
SK_TMP = "skT-s3cr3t/Key+temporary000000000"
SECURITY_TOKEN = "gQpjbi1ub3J0aC00-SECURITY/TOKEN+value=="
DOMAIN = "acme-domain"
USER = "dcs-watcher"
PASSWORD = "Pa55-w0rd!-never-shown"
IAM_TOKEN_PREFIX = "MIIEiam-subject-token-"
EXPIRES = "2026-11-29T03:15:00.000000Z"
START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
KEYS = {AK_A: SK_A, AK_B: SK_B, AK_TMP: SK_TMP}
SECRETS = (SK_A, SK_B, SK_TMP, SECURITY_TOKEN, PASSWORD, IAM_TOKEN_PREFIX)
LOGGER = "notifier.dcs.credentials"


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test: whatever was logged (at any level) carries no secret."""
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        text = record.getMessage()
        assert not any(secret in text for secret in SECRETS), text


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked into {text!r}"


def access_of(headers: dict[str, str]) -> str:
    return headers["Authorization"].split("Access=", 1)[1].split(",", 1)[0]


class ManualClock:
    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


class Server:
    """An aiohttp.web application on 127.0.0.1, port 0."""

    def __init__(self, app: web.Application) -> None:
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        self.url = ""
        self.running = False

    async def start(self) -> Server:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self.running = True
        return self

    async def stop(self) -> None:
        if self.running:
            self.running = False
            await self._runner.cleanup()


@dataclass
class IamStandIn:
    """``POST /v3/auth/tokens``: password auth, project scope, 24 h tokens from the manual clock."""

    clock: ManualClock
    mode: str = "ok"
    lifetime: timedelta = timedelta(hours=24)
    posts: int = 0
    projects: list[str] = field(default_factory=list)
    valid_tokens: set[str] = field(default_factory=set)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.posts += 1
        if request.query.get("nocatalog") != "true":
            return web.json_response({"error": {"code": 400, "message": "nocatalog"}}, status=400)
        if self.mode == "hang":
            await self.release.wait()
        if self.mode == "500":
            return web.json_response(
                {"error": {"code": 500, "message": "IAM is having a bad day", "title": "Internal"}},
                status=500,
            )
        body = await request.json()
        identity = body["auth"]["identity"]
        user = identity["password"]["user"]
        project = body["auth"]["scope"]["project"]["id"]
        self.projects.append(project)
        if identity["methods"] != ["password"] or (
            user["name"],
            user["password"],
            user["domain"]["name"],
        ) != (
            USER,
            PASSWORD,
            DOMAIN,
        ):
            return web.json_response(
                {
                    "error": {
                        "code": 401,
                        "message": "The username or password is wrong.",
                        "title": "Unauthorized",
                    }
                },
                status=401,
            )
        if self.mode == "forbidden":
            return web.json_response(
                {"error_code": "IAM.0002", "error_msg": "The user has no access to the project"}, status=403
            )
        token = f"{IAM_TOKEN_PREFIX}{self.posts}-{project}"
        expires = (self.clock() + self.lifetime).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if self.mode == "bad-expiry":
            expires = "tomorrow-ish"
        payload: dict[str, Any] = {"token": {"expires_at": expires, "methods": ["password"]}}
        if self.mode == "no-expiry":
            payload = {"token": {}}
        headers = {} if self.mode == "no-header" else {"X-Subject-Token": token}
        self.valid_tokens.add(token)
        return web.json_response(payload, status=201, headers=headers)


def dcs_app(iam: IamStandIn | None = None) -> web.Application:
    """A DCS stand-in: verifies AK/SK signatures with ``signer.verify``, or IAM tokens the stand-in issued."""

    async def handle(request: web.Request) -> web.Response:
        headers = dict(request.headers)
        token = request.headers.get("X-Auth-Token")
        if token is not None:
            ok = iam is not None and token in iam.valid_tokens
            return web.json_response({"token_ok": ok}, status=200 if ok else 401)
        query = parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True)
        try:
            result = verify("GET", request.rel_url.raw_path, query, headers, b"", KEYS.get)
        except SignatureError as exc:
            return web.json_response({"problem": str(exc.problem)}, status=401)
        return web.json_response(
            {
                "ak": result.ak,
                "signed": list(result.signed_headers),
                "token_ok": request.headers.get("X-Security-Token") == SECURITY_TOKEN,
            }
        )

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return app


@pytest.fixture
async def session() -> AsyncIterator[Http]:
    async with make_http() as http:
        yield http


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def iam(clock: ManualClock) -> AsyncIterator[tuple[IamStandIn, Server]]:
    stand_in = IamStandIn(clock)
    app = web.Application()
    app.router.add_post("/v3/auth/tokens", stand_in.handle)
    server = await Server(app).start()
    yield stand_in, server
    stand_in.release.set()
    await server.stop()


@pytest.fixture
async def dcs(iam: tuple[IamStandIn, Server]) -> AsyncIterator[Server]:
    server = await Server(dcs_app(iam[0])).start()
    yield server
    await server.stop()


async def call(
    provider: CredentialProvider, dcs: Server, session: Http, project: str = PROJECT
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Authenticate a DCS-like GET with ``provider`` and send it: (status, JSON answer, headers sent)."""
    path = f"/v2/{project}/instances/5560df16-cebf-4473-95c4-d1b573c16e79/tasks"
    query = canonical_query([("offset", "0"), ("limit", "100"), ("start_time", "20240101000000")])
    url = f"{dcs.url}{path}?{query}"
    base = {
        "Content-Type": "application/json",
        "Host": URL(dcs.url).raw_authority,
        "User-Agent": "dcs-notifier/0.1",
        "X-Project-Id": project,
    }
    headers = await provider.apply("GET", url, base, b"", project_id=project, http=session)
    async with session.session.get(URL(url, encoded=True), headers=headers) as resp:
        return resp.status, await resp.json(), headers


# --- AK/SK --------------------------------------------------------------------------------------------------


async def test_aksk_signature_verified_by_server(dcs: Server, session: Http) -> None:
    provider = AkSkCredentials(AK_A, SK_A)
    status, answer, headers = await call(provider, dcs, session)
    assert status == 200, answer
    assert answer["ak"] == AK_A
    assert "x-security-token" not in answer["signed"]
    assert "X-Security-Token" not in headers
    assert headers["X-Project-Id"] == PROJECT
    provider.invalidate(PROJECT)  # nothing cached: still signs the same way
    assert (await call(provider, dcs, session))[0] == 200


async def test_temporary_aksk_adds_signed_security_token(dcs: Server, session: Http) -> None:
    provider = AkSkCredentials(AK_TMP, SK_TMP, security_token=SECURITY_TOKEN)
    status, answer, headers = await call(provider, dcs, session)
    assert status == 200, answer
    assert answer["ak"] == AK_TMP
    assert answer["token_ok"] is True
    assert "x-security-token" in answer["signed"]
    assert headers["X-Security-Token"] == SECURITY_TOKEN
    assert provider.temporary


def test_aksk_requires_both_keys_without_leaking() -> None:
    for ak, sk in ((AK_A, ""), ("", SK_A)):
        with pytest.raises(ValueError, match="required") as excinfo:
            AkSkCredentials(ak, sk)
        assert_no_secret(str(excinfo.value), repr(excinfo.value))


# --- credentials file ---------------------------------------------------------------------------------------

NESTED_TEMP = {
    "credential": {
        "access": AK_TMP,
        "secret": SK_TMP,
        "securitytoken": SECURITY_TOKEN,
        "expires_at": EXPIRES,
    }
}

FILE_FORMATS = {
    "json": ("creds.json", json.dumps({"ak": AK_A, "sk": SK_A}), AK_A, False),
    "json-temporary": (
        "creds.json",
        json.dumps({"ak": AK_TMP, "sk": SK_TMP, "security_token": SECURITY_TOKEN}),
        AK_TMP,
        True,
    ),
    "yaml": ("creds.yaml", f"# rotated by vault-agent\nak: {AK_A}\nsk: '{SK_A}'\n", AK_A, False),
    "yaml-temporary": (
        "creds.yml",
        f"ak: {AK_TMP}\nsk: '{SK_TMP}'\nsecurity_token: '{SECURITY_TOKEN}'\n",
        AK_TMP,
        True,
    ),
    "huawei-temporary-nested": ("temp.json", json.dumps(NESTED_TEMP), AK_TMP, True),
    "huawei-temporary-flat": ("temp.json", json.dumps(NESTED_TEMP["credential"]), AK_TMP, True),
    "huawei-temporary-yaml": (
        "temp",
        f"credential:\n  access: {AK_TMP}\n  secret: '{SK_TMP}'\n"
        f"  securitytoken: '{SECURITY_TOKEN}'\n  expires_at: '{EXPIRES}'\n",
        AK_TMP,
        True,
    ),
    "console-csv": (
        "credentials.csv",
        f"User Name,Access Key Id,Secret Access Key\r\nalice,{AK_A},{SK_A}\r\n",
        AK_A,
        False,
    ),
    "console-csv-bom-no-suffix": (
        "credentials",
        f'\ufeffUser Name,Access Key Id,Secret Access Key\n"alice",{AK_A},{SK_A}\n\n',
        AK_A,
        False,
    ),
}


@pytest.mark.parametrize("fmt", list(FILE_FORMATS))
async def test_file_formats(fmt: str, tmp_path: Path, dcs: Server, session: Http) -> None:
    name, text, ak, temporary = FILE_FORMATS[fmt]
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    provider = FileCredentials(path, clock=lambda: START)
    status, answer, headers = await call(provider, dcs, session)
    assert status == 200, answer
    assert answer["ak"] == ak
    assert answer["token_ok"] is temporary
    assert ("X-Security-Token" in headers) is temporary
    if fmt.startswith("huawei"):
        assert provider.expires_at == datetime(2026, 11, 29, 3, 15, tzinfo=UTC)
    assert str(path) in provider.describe()
    assert ak[:4] in provider.describe()


def write_json(path: Path, ak: str, sk: str) -> None:
    path.write_text(json.dumps({"ak": ak, "sk": sk}), encoding="utf-8")


def rotation_logs(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


async def test_file_rotation_by_atomic_rename(
    tmp_path: Path, dcs: Server, session: Http, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "creds.json"
    write_json(path, AK_A, SK_A)
    provider = FileCredentials(path)
    _, answer, headers = await call(provider, dcs, session)
    assert access_of(headers) == AK_A == answer["ak"]
    inode = path.stat().st_ino
    staging = tmp_path / "creds.json.new"
    write_json(staging, AK_B, SK_B)
    os.replace(staging, path)
    assert path.stat().st_ino != inode
    status, answer, headers = await call(provider, dcs, session)
    assert status == 200, answer
    assert access_of(headers) == AK_B == answer["ak"]
    await call(provider, dcs, session)
    rotated = [m for m in rotation_logs(caplog, logging.INFO) if "rotated" in m]
    assert len(rotated) == 1
    assert AK_B[:4] in rotated[0] and str(path) in rotated[0]
    assert AK_B not in rotated[0]


async def test_file_rotation_by_in_place_rewrite(tmp_path: Path, dcs: Server, session: Http) -> None:
    path = tmp_path / "creds.yaml"
    path.write_text(f"ak: {AK_A}\nsk: '{SK_A}'\n", encoding="utf-8")
    provider = FileCredentials(path)
    _, _, headers = await call(provider, dcs, session)
    assert access_of(headers) == AK_A
    inode = path.stat().st_ino
    with path.open("w", encoding="utf-8") as handle:  # truncate + write: same inode, new size
        handle.write(f"# rotated\nak: {AK_B}\nsk: '{SK_B}'\n")
    assert path.stat().st_ino == inode
    status, answer, headers = await call(provider, dcs, session)
    assert status == 200, answer
    assert access_of(headers) == AK_B == answer["ak"]


async def test_broken_rewrite_keeps_old_credentials_and_logs_one_error(
    tmp_path: Path, dcs: Server, session: Http, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "creds.json"
    write_json(path, AK_A, SK_A)
    provider = FileCredentials(path)
    await call(provider, dcs, session)
    path.write_text(f'{{"ak": "{AK_B}", "sk": "{SK_B}', encoding="utf-8")  # half-written
    for _ in range(3):
        status, answer, headers = await call(provider, dcs, session)
        assert status == 200 and access_of(headers) == AK_A == answer["ak"]
    errors = rotation_logs(caplog, logging.ERROR)
    assert len(errors) == 1, errors
    assert str(path) in errors[0] and "JSON" in errors[0]
    # A different problem is reported once too.
    path.unlink()
    for _ in range(2):
        assert access_of((await call(provider, dcs, session))[2]) == AK_A
    errors = rotation_logs(caplog, logging.ERROR)
    assert len(errors) == 2 and "does not exist" in errors[1] and str(path) in errors[1]
    # Fixed: the new credentials are used.
    write_json(path, AK_B, SK_B)
    status, answer, headers = await call(provider, dcs, session)
    assert status == 200 and access_of(headers) == AK_B
    assert len(rotation_logs(caplog, logging.ERROR)) == 2


async def test_missing_file_at_start_raises_naming_the_path(tmp_path: Path, session: Http) -> None:
    path = tmp_path / "nowhere" / "creds.json"
    provider = FileCredentials(path)
    with pytest.raises(CredentialsError) as excinfo:
        await provider.apply("GET", "http://127.0.0.1:1/v2/p", {}, b"", project_id=PROJECT, http=session)
    error = excinfo.value
    assert str(path) in str(error)
    assert error.reason is Reason.CLIENT_ERROR
    assert error.retryable is False
    assert "does not exist" in error.message
    # The file appears later: the next apply() uses it, no restart needed.
    path.parent.mkdir()
    write_json(path, AK_A, SK_A)
    headers = await provider.apply(
        "GET", "http://127.0.0.1:1/v2/p", {}, b"", project_id=PROJECT, http=session
    )
    assert access_of(headers) == AK_A


BAD_FILES = {
    "empty": ("c.json", "  \n", "empty"),
    "not-a-mapping": ("c.yaml", f"- {AK_A}\n- {SK_A}\n", "mapping"),
    "bare-secret": ("c.txt", SK_A, "mapping"),
    "no-sk": ("c.json", json.dumps({"ak": AK_A}), "secret key"),
    "sk-not-a-string": ("c.yaml", f"ak: {AK_A}\nsk: 12345\n", "string"),
    "invalid-yaml-next-to-secret": ("c.yaml", f"ak: {AK_A}\nsk: '{SK_A}'\n  - [oops\n", "YAML"),
    "invalid-json-after-secret": ("c.json", f'{{"sk": "{SK_A}" "ak": 1}}', "JSON"),
    "bad-expiry": ("c.json", json.dumps({**NESTED_TEMP["credential"], "expires_at": "soon"}), "ISO 8601"),
    "csv-two-rows": (
        "c.csv",
        f"User Name,Access Key Id,Secret Access Key\na,{AK_A},{SK_A}\nb,{AK_B},{SK_B}\n",
        "rows",
    ),
    "csv-short-row": ("c.csv", f"User Name,Access Key Id,Secret Access Key\n{AK_A},{SK_A}\n", "fields"),
    "csv-wrong-header": ("c.csv", f"name,key,secret\na,{AK_A},{SK_A}\n", "header"),
    "binary": ("c.json", "\udcff", "UTF-8"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
async def test_bad_file_at_start_raises_without_quoting_it(case: str, tmp_path: Path, session: Http) -> None:
    name, text, problem = BAD_FILES[case]
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    provider = FileCredentials(path)
    with pytest.raises(CredentialsError) as excinfo:
        await provider.apply("GET", "http://127.0.0.1:1/v2/p", {}, b"", project_id=PROJECT, http=session)
    error = excinfo.value
    assert error.reason is Reason.CLIENT_ERROR and error.retryable is False
    assert str(path) in str(error)
    assert problem in error.message
    assert_no_secret(str(error), repr(error), error.message)
    assert AK_A not in str(error)


async def test_invalidate_forces_a_reread_even_with_unchanged_stat(tmp_path: Path, session: Http) -> None:
    path = tmp_path / "creds.json"
    write_json(path, AK_A, SK_A)
    provider = FileCredentials(path)
    url = "http://127.0.0.1:1/v2/p/instances?limit=1"
    assert access_of(await provider.apply("GET", url, {}, b"", project_id=PROJECT, http=session)) == AK_A
    before = path.stat()
    write_json(path, AK_B, SK_B)  # same length as A's
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )
    assert access_of(await provider.apply("GET", url, {}, b"", project_id=PROJECT, http=session)) == AK_A
    provider.invalidate(PROJECT)
    assert access_of(await provider.apply("GET", url, {}, b"", project_id=PROJECT, http=session)) == AK_B


async def test_expired_temporary_file_is_used_and_warned_about(
    tmp_path: Path, session: Http, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "temp.json"
    path.write_text(json.dumps(NESTED_TEMP), encoding="utf-8")
    provider = FileCredentials(path, clock=lambda: datetime(2027, 1, 1, tzinfo=UTC))
    headers = await provider.apply("GET", "http://127.0.0.1:1/", {}, b"", project_id=PROJECT, http=session)
    assert access_of(headers) == AK_TMP
    warnings = rotation_logs(caplog, logging.WARNING)
    assert len(warnings) == 1 and "expired" in warnings[0] and str(path) in warnings[0]


# --- IAM password → token -----------------------------------------------------------------------------------


def iam_provider(server: Server, clock: ManualClock, **kwargs: Any) -> IamPasswordCredentials:
    return IamPasswordCredentials(
        server.url, DOMAIN, USER, kwargs.pop("password", PASSWORD), clock=clock, **kwargs
    )


async def test_iam_token_fetched_once_and_cached(
    iam: tuple[IamStandIn, Server], dcs: Server, clock: ManualClock, session: Http
) -> None:
    stand_in, server = iam
    provider = iam_provider(server, clock)
    for _ in range(3):
        status, answer, headers = await call(provider, dcs, session)
        assert status == 200 and answer["token_ok"] is True
    assert stand_in.posts == 1
    assert stand_in.projects == [PROJECT]
    assert headers["X-Auth-Token"].startswith(IAM_TOKEN_PREFIX)
    assert "Authorization" not in headers and "X-Sdk-Date" not in headers
    assert headers["X-Project-Id"] == PROJECT  # the given headers are kept


async def test_iam_concurrent_applies_cause_one_post(
    iam: tuple[IamStandIn, Server], clock: ManualClock, session: Http
) -> None:
    stand_in, server = iam
    provider = iam_provider(server, clock)
    results = await asyncio.gather(
        *(
            provider.apply(
                "GET", f"{server.url}/x", {"X-Project-Id": PROJECT}, b"", project_id=PROJECT, http=session
            )
            for _ in range(20)
        )
    )
    assert stand_in.posts == 1
    assert len({r["X-Auth-Token"] for r in results}) == 1


async def test_iam_token_per_project(
    iam: tuple[IamStandIn, Server], dcs: Server, clock: ManualClock, session: Http
) -> None:
    stand_in, server = iam
    provider = iam_provider(server, clock)
    first = (await call(provider, dcs, session, PROJECT))[2]["X-Auth-Token"]
    second = (await call(provider, dcs, session, OTHER_PROJECT))[2]["X-Auth-Token"]
    assert first != second
    assert stand_in.projects == [PROJECT, OTHER_PROJECT]
    await call(provider, dcs, session, PROJECT)
    assert stand_in.posts == 2


async def test_iam_refresh_before_expiry(
    iam: tuple[IamStandIn, Server], dcs: Server, clock: ManualClock, session: Http
) -> None:
    stand_in, server = iam
    provider = iam_provider(server, clock, refresh_before=timedelta(hours=1))
    first = (await call(provider, dcs, session))[2]["X-Auth-Token"]
    clock.advance(timedelta(hours=23) - timedelta(seconds=1))
    assert (await call(provider, dcs, session))[2]["X-Auth-Token"] == first
    assert stand_in.posts == 1
    clock.advance(timedelta(seconds=1))  # expires_at - refresh_before
    status, answer, headers = await call(provider, dcs, session)
    assert status == 200 and answer["token_ok"] is True
    assert headers["X-Auth-Token"] != first
    assert stand_in.posts == 2


async def test_iam_refresh_failure_keeps_the_still_valid_token(
    iam: tuple[IamStandIn, Server],
    clock: ManualClock,
    session: Http,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stand_in, server = iam
    provider = iam_provider(server, clock, retry_refresh_after=timedelta(minutes=1))

    async def apply() -> dict[str, str]:
        return await provider.apply("GET", server.url, {}, b"", project_id=PROJECT, http=session)

    first = (await apply())["X-Auth-Token"]
    clock.advance(timedelta(hours=23, minutes=30))
    stand_in.mode = "500"
    assert (await apply())["X-Auth-Token"] == first
    assert (await apply())["X-Auth-Token"] == first  # no new attempt within retry_refresh_after
    assert stand_in.posts == 2
    assert any("could not refresh" in m for m in rotation_logs(caplog, logging.WARNING))
    clock.advance(timedelta(minutes=1))
    assert (await apply())["X-Auth-Token"] == first
    assert stand_in.posts == 3
    clock.advance(timedelta(minutes=30))  # now past expires_at
    with pytest.raises(CredentialsError) as excinfo:
        await apply()
    assert excinfo.value.reason is Reason.SERVER_ERROR and excinfo.value.retryable


async def test_iam_wrong_password_is_auth_not_retryable(
    iam: tuple[IamStandIn, Server], clock: ManualClock, session: Http
) -> None:
    stand_in, server = iam
    wrong = "Wr0ng-" + PASSWORD
    provider = iam_provider(server, clock, password=wrong, auth_retry_after=timedelta(minutes=5))
    with pytest.raises(CredentialsError) as excinfo:
        await provider.apply("GET", server.url, {}, b"", project_id=PROJECT, http=session)
    error = excinfo.value
    assert error.reason is Reason.AUTH and error.retryable is False and error.http_status == 401
    assert f"IAM rejected user {USER} in domain {DOMAIN} for project {PROJECT}" in error.message
    assert "The username or password is wrong." in error.message
    host = URL(server.url).raw_authority
    assert host in str(error) and f"{USER}@{DOMAIN}" in str(error)
    for text in (str(error), repr(error), error.message, repr(error.args)):
        assert wrong not in text and PASSWORD not in text
    # No new login attempt for a while (IAM locks users out), then one again.
    with pytest.raises(CredentialsError):
        await provider.apply("GET", server.url, {}, b"", project_id=PROJECT, http=session)
    assert stand_in.posts == 1
    clock.advance(timedelta(minutes=5))
    with pytest.raises(CredentialsError):
        await provider.apply("GET", server.url, {}, b"", project_id=PROJECT, http=session)
    assert stand_in.posts == 2


async def test_iam_forbidden_with_error_code_body(
    iam: tuple[IamStandIn, Server], clock: ManualClock, session: Http
) -> None:
    stand_in, server = iam
    stand_in.mode = "forbidden"
    provider = iam_provider(server, clock)
    with pytest.raises(CredentialsError) as excinfo:
        await provider.apply("GET", server.url, {}, b"", project_id=PROJECT, http=session)
    error = excinfo.value
    assert error.reason is Reason.AUTH and not error.retryable and error.http_status == 403
    assert "IAM.0002: The user has no access to the project" in error.message


async def test_iam_server_error_is_retryable_and_not_cached(
    iam: tuple[IamStandIn, Server], clock: ManualClock, session: Http
) -> None:
    stand_in, server = iam
    stand_in.mode = "500"
    provider = iam_provider(server, clock)
    with pytest.raises(CredentialsError) as excinfo:
        await provider.apply("GET", server.url, {}, b"", project_id=PROJECT, http=session)
    error = excinfo.value
    assert error.reason is Reason.SERVER_ERROR and error.retryable and error.http_status == 500
    assert "IAM is having a bad day" in error.message
    stand_in.mode = "ok"
    headers = await provider.apply("GET", server.url, {}, b"", project_id=PROJECT, http=session)
    assert headers["X-Auth-Token"].startswith(IAM_TOKEN_PREFIX)
    assert stand_in.posts == 2


async def test_iam_concurrent_callers_share_one_failure(
    iam: tuple[IamStandIn, Server], clock: ManualClock, session: Http
) -> None:
    stand_in, server = iam
    stand_in.mode = "500"
    provider = iam_provider(server, clock)
    results = await asyncio.gather(
        *(provider.apply("GET", server.url, {}, b"", project_id=PROJECT, http=session) for _ in range(20)),
        return_exceptions=True,
    )
    assert stand_in.posts == 1
    assert all(isinstance(r, CredentialsError) and r.reason is Reason.SERVER_ERROR for r in results)


async def test_iam_stopped_is_connection_error(
    iam: tuple[IamStandIn, Server], clock: ManualClock, session: Http
) -> None:
    _, server = iam
    provider = iam_provider(server, clock)
    await server.stop()
    with pytest.raises(CredentialsError) as excinfo:
        await provider.apply("GET", server.url, {}, b"", project_id=PROJECT, http=session)
    error = excinfo.value
    assert error.reason is Reason.CONNECTION and error.retryable
    assert URL(server.url).raw_authority in str(error)
    assert_no_secret(str(error))


async def test_iam_timeout(iam: tuple[IamStandIn, Server], clock: ManualClock, session: Http) -> None:
    stand_in, server = iam
    stand_in.mode = "hang"
    provider = iam_provider(server, clock, timeout=0.2)
    with pytest.raises(CredentialsError) as excinfo:
        await provider.apply("GET", server.url, {}, b"", project_id=PROJECT, http=session)
    assert excinfo.value.reason is Reason.TIMEOUT and excinfo.value.retryable
    assert "0.2 s" in excinfo.value.message


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        ("no-header", "X-Subject-Token"),
        ("bad-expiry", "tomorrow-ish"),
        ("no-expiry", "expires_at"),
    ],
)
async def test_iam_invalid_responses(
    mode: str,
    problem: str,
    iam: tuple[IamStandIn, Server],
    clock: ManualClock,
    session: Http,
) -> None:
    stand_in, server = iam
    stand_in.mode = mode
    provider = iam_provider(server, clock)
    with pytest.raises(CredentialsError) as excinfo:
        await provider.apply("GET", server.url, {}, b"", project_id=PROJECT, http=session)
    error = excinfo.value
    assert error.reason is Reason.INVALID_RESPONSE and not error.retryable
    assert problem in error.message
    assert_no_secret(str(error))


async def test_iam_invalidate_after_401_fetches_a_new_token(
    iam: tuple[IamStandIn, Server], dcs: Server, clock: ManualClock, session: Http
) -> None:
    """The client's loop: a 401 from the API → invalidate(project) → apply() again → a new POST."""
    stand_in, server = iam
    provider = iam_provider(server, clock)
    assert (await call(provider, dcs, session))[0] == 200
    stand_in.valid_tokens.clear()  # the token was revoked
    status, _, old = await call(provider, dcs, session)
    assert status == 401 and stand_in.posts == 1
    provider.invalidate(PROJECT)
    status, answer, new = await call(provider, dcs, session)
    assert status == 200 and answer["token_ok"] is True
    assert new["X-Auth-Token"] != old["X-Auth-Token"]
    assert stand_in.posts == 2


def test_iam_rejects_a_bad_endpoint_without_the_password() -> None:
    with pytest.raises(ValueError, match="http") as excinfo:
        IamPasswordCredentials("iam.example.com", DOMAIN, USER, PASSWORD)
    assert_no_secret(str(excinfo.value))


# --- nothing secret in repr/str/describe --------------------------------------------------------------------


async def test_repr_str_describe_never_contain_secrets(
    tmp_path: Path, iam: tuple[IamStandIn, Server], clock: ManualClock, session: Http
) -> None:
    _, server = iam
    path = tmp_path / "temp.json"
    path.write_text(json.dumps(NESTED_TEMP), encoding="utf-8")
    file_provider = FileCredentials(path, clock=lambda: START)
    iam_creds = iam_provider(server, clock)
    providers: list[tuple[CredentialProvider, str]] = [
        (AkSkCredentials(AK_A, SK_A), f"AK/SK {AK_A[:4]}"),
        (AkSkCredentials(AK_TMP, SK_TMP, SECURITY_TOKEN), f"temporary AK/SK {AK_TMP[:4]}"),
        (file_provider, str(path)),
        (iam_creds, f"{USER}@{DOMAIN}"),
    ]
    for provider, _ in providers:  # also after use: loaded file, cached token
        await provider.apply("GET", f"{server.url}/", {}, b"", project_id=PROJECT, http=session)
    assert f"temporary AK/SK {AK_TMP[:4]}" in file_provider.describe()
    for provider, expected in providers:
        texts = (repr(provider), str(provider), provider.describe(), f"{provider!r} {provider}")
        assert_no_secret(*texts)
        assert expected in provider.describe()
        for ak in (AK_A, AK_TMP):
            assert ak not in provider.describe()
