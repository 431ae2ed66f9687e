from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis

from notifier.devtools.simulator import Simulator
from notifier.devtools.standins.webhook import WebhookReceiver
from tests.support.loopback_http import (  # noqa: F401 - fixtures for the HTTP tests
    ca,
    ca_pem,
    no_proxy_env,
    proxy,
    serve,
)
from tests.support.redis_cluster import RedisClusterServers, RedisSentinelServers
from tests.support.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session, on a free port; each test gets it flushed."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), persistence=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A real local Redis Cluster (3 masters, no replicas) for the session, started on first use."""
    servers = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def redis_cluster(redis_cluster_servers: RedisClusterServers) -> RedisClusterServers:
    """The session's Redis Cluster, flushed for this test; ``.url`` is a ``redis+cluster://`` URL."""
    redis_cluster_servers.flush()
    return redis_cluster_servers


@pytest.fixture(scope="session")
def redis_sentinel_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinelServers]:
    """A master and a Sentinel watching it (quorum 1) for the session, started on first use."""
    servers = RedisSentinelServers(tmp_path_factory.mktemp("redis-sentinel"))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def redis_sentinel(redis_sentinel_servers: RedisSentinelServers) -> RedisSentinelServers:
    """The session's Sentinel setup, its master flushed for this test; ``.url`` is ``redis+sentinel://``."""
    redis_sentinel_servers.flush()
    return redis_sentinel_servers


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own (persistent, AOF), for tests that stop, kill or restart it."""
    server = RedisServer(tmp_path / "redis", persistence=True)
    server.start()
    yield server
    server.stop(kill=True)


PROJECT_ID = "a4d31cb6-3d72-4fdc-8ec9-6e3a41e47f71"
AK = "HPUAEXAMPLEAK0000001"
SK = "sk-EXAMPLE-7fQ2x9Lk3PzVb8Wn"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ORDERS = "5560df16-cebf-4473-95c4-d1b573c16e79"
SESSIONS = "7d1e0c2b-5a44-4e8e-9f3b-2a6c1d9e8f70"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """The project's DCS simulator on a free loopback port, with two instances."""
    simulator = Simulator(project_id=PROJECT_ID, credentials={AK: SK})
    simulator.add_instance(ORDERS, "orders-cache")
    simulator.add_instance(SESSIONS, "sessions-cache")
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def audit() -> AsyncIterator[WebhookReceiver]:
    """A webhook receiver on 127.0.0.1 that verifies signatures made with WEBHOOK_SECRET."""
    async with WebhookReceiver(secret=WEBHOOK_SECRET) as receiver:
        yield receiver


@pytest.fixture
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy variables: requests (under the official SDK) honours them, and the servers are on loopback."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session, for tests that call a simulated API themselves."""
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    """The root logger's handlers and level put back after a test that configures logging."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
