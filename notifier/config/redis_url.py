"""``redis.url``: one server, a Redis Cluster or a Sentinel-managed master, read from one URL.

Errors name the expected form, never the URL (it may hold a password).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, unquote


@dataclass(frozen=True)
class RedisTarget:
    """What ``redis.url`` names: a standalone server, a Redis Cluster, or a Sentinel-managed master."""

    mode: Literal["standalone", "cluster", "sentinel"]
    url: str = ""  # standalone: the URL itself, as redis-py reads it
    nodes: tuple[tuple[str, int], ...] = ()  # cluster: seed nodes; sentinel: the sentinels
    tls: bool = False
    username: str | None = None
    password: str | None = None  # of the data nodes (cluster nodes, or the Sentinel's master)
    service: str = ""  # sentinel: the monitored master's name
    db: int = 0
    sentinel_password: str | None = None  # sentinel: when the sentinels themselves require one


_SENTINEL_QUERY = ("sentinel_password",)
_REDIS_SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+cluster",
    "rediss+cluster",
    "redis+sentinel",
    "rediss+sentinel",
)


def _host_port(item: str, scheme: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; the message never repeats the URL (it may hold a password)."""
    if item.startswith("["):
        host, sep, rest = item[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        ok = bool(sep) and rest.startswith(":")
    else:
        host, _, port = item.rpartition(":")
        ok = ":" in item
    if not ok or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{scheme}:// URLs list host:port pairs separated by commas (each with its port)")
    return host, int(port)


def parse_redis_url(url: str) -> RedisTarget:
    """Read ``redis.url``: ``redis://``, ``rediss://``, ``unix://`` (standalone, as redis-py reads them),
    ``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster://`` with TLS), or
    ``redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]`` (``rediss+sentinel://``).

    Errors name the expected form, never the URL (it may hold a password).
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _REDIS_SCHEMES:
        raise ValueError(
            "must start with redis://, rediss://, unix:// (one server), redis+cluster:// or "
            "rediss+cluster:// (a Redis Cluster), redis+sentinel:// or rediss+sentinel:// (Sentinel)"
        )
    if scheme in ("redis", "rediss", "unix"):
        return RedisTarget(mode="standalone", url=url)
    mode: Literal["cluster", "sentinel"] = "cluster" if scheme.endswith("cluster") else "sentinel"
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts = netloc
    username: str | None = None
    password: str | None = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    if not hosts:
        raise ValueError(f"{scheme}:// needs at least one host:port")
    nodes = tuple(_host_port(h.strip(), scheme) for h in hosts.split(","))
    params = parse_qs(query, keep_blank_values=True)
    allowed = _SENTINEL_QUERY if mode == "sentinel" else ()
    unknown = sorted(set(params) - set(allowed))
    if unknown or fragment:
        what = ", ".join(unknown) or "a #fragment"
        known = f" (known: {', '.join(allowed)})" if allowed else ""
        raise ValueError(f"{scheme}:// URLs take no {what}{known}")
    tls = scheme.startswith("rediss")
    if mode == "cluster":
        if path.strip("/") not in ("", "0"):
            raise ValueError(f"{scheme}:// URLs take no database number: a Redis Cluster has only db 0")
        return RedisTarget(mode="cluster", nodes=nodes, tls=tls, username=username, password=password)
    parts = [unquote(p) for p in path.split("/")] if path else []
    if parts and parts[-1] == "":
        parts.pop()
    if not parts or not parts[0] or len(parts) > 2:
        raise ValueError(f"{scheme}:// URLs end with /service_name or /service_name/db (the master's name)")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise ValueError(f"{scheme}:// URLs end with /service_name/db, db a number")
        db = int(parts[1])
    sentinel_pw = params.get("sentinel_password", [None])[-1]
    return RedisTarget(
        mode="sentinel",
        nodes=nodes,
        tls=tls,
        username=username,
        password=password,
        service=parts[0],
        db=db,
        sentinel_password=sentinel_pw or None,
    )
