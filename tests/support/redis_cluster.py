"""A real local Redis Cluster (3 masters) and a real Sentinel setup, for tests.

Every process is a ``redis-server`` of ours on free loopback ports (never 6379): the cluster is three
``--cluster-enabled yes`` servers joined with ``redis-cli --cluster create``; the Sentinel setup is one
master plus one ``redis-server <conf> --sentinel`` watching it with quorum 1 (Debian ships no separate
``redis-sentinel`` binary on every install, and ``--sentinel`` is the same program).
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from tests.support.redis_server import RedisServer, free_port


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition with a deadline (not synchronisation by sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.exceptions.RedisError):
            if check():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed (Debian: apt-get install redis-server redis-tools)")
    return path


class _Process:
    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class RedisClusterServers:
    """Three cluster-enabled masters on free loopback ports, joined into one cluster (no replicas)."""

    def __init__(self, data_dir: Path, masters: int = 3) -> None:
        self.data_dir = data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ports = [free_port() for _ in range(masters)]
        self.processes: list[_Process] = []

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming every node (any one would do as a seed)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self, timeout: float = 30.0) -> None:
        server = _binary("redis-server")
        for port in self.ports:
            node_dir = self.data_dir / str(port)
            node_dir.mkdir(exist_ok=True)
            args = [
                server,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--protected-mode", "yes",
                "--dir", str(node_dir),
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node_dir / "nodes.conf"),
                "--cluster-port", str(free_port()),
                "--cluster-node-timeout", "5000",
                "--save", "",
                "--appendonly", "no",
                "--logfile", str(node_dir / "redis.log"),
            ]  # fmt: skip
            self.processes.append(_Process(args, node_dir / "redis.log"))
        for port, proc in zip(self.ports, self.processes, strict=True):
            _wait(functools.partial(self._ping, port, proc), timeout, f"cluster node on port {port}")
        create = subprocess.run(
            [
                _binary("redis-cli"), "--cluster", "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas", "0", "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )  # fmt: skip
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{create.stdout}\n{create.stderr}")
        for port in self.ports:
            _wait(functools.partial(self._state_ok, port), timeout, f"cluster_state:ok on port {port}")

    def _ping(self, port: int, proc: _Process) -> bool:
        proc.check_alive()
        with redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5) as c:
            return bool(c.ping())

    def _state_ok(self, port: int) -> bool:
        with redis.Redis(host="127.0.0.1", port=port, decode_responses=True) as c:
            info = c.execute_command("CLUSTER INFO")  # parsed by redis-py into a dict
            return (
                info.get("cluster_state") == "ok"
                and int(info.get("cluster_known_nodes", 0)) == len(self.ports)
                and int(info.get("cluster_slots_ok", 0)) == 16384
            )

    def flush(self) -> None:
        """Empty every master (the cluster itself stays formed)."""
        for port in self.ports:
            with redis.Redis(host="127.0.0.1", port=port) as c:
                c.flushall()

    def keys_by_node(self) -> dict[int, set[str]]:
        """The keys each master holds (asked of each node directly): port -> keys."""
        out: dict[int, set[str]] = {}
        for port in self.ports:
            with redis.Redis(host="127.0.0.1", port=port, decode_responses=True) as c:
                out[port] = {str(k) for k in c.scan_iter(count=1000)}
        return out

    def stop(self) -> None:
        for proc in self.processes:
            proc.stop()
        self.processes = []


def _start_sentinel(data_dir: Path, port: int, service: str, master_port: int, **settings: int) -> _Process:
    """``redis-server <conf> --sentinel`` on ``port`` watching ``service`` (quorum 1), with ``settings``
    as ``sentinel <name> <service> <value>`` lines (``down_after_milliseconds=5000``)."""
    conf = data_dir / "sentinel.conf"  # the Sentinel rewrites it: a file of its own
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        "protected-mode yes",
        f"dir {data_dir}",
        f"logfile {data_dir / 'sentinel.log'}",
        f"sentinel monitor {service} 127.0.0.1 {master_port} 1",
        *(f"sentinel {name.replace('_', '-')} {service} {value}" for name, value in settings.items()),
    ]
    conf.write_text("\n".join([*lines, ""]))
    return _Process([_binary("redis-server"), str(conf), "--sentinel"], data_dir / "sentinel.log")


class RedisSentinelServers:
    """One master and one Sentinel (quorum 1) watching it as ``service``."""

    def __init__(self, data_dir: Path, service: str = "notifier-master") -> None:
        self.data_dir = data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.service = service
        self.master = RedisServer(data_dir / "master", persistence=False)
        self.sentinel_port = free_port()
        self.sentinel: _Process | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.service}/0"

    def start(self, timeout: float = 30.0) -> None:
        self.master.start()
        self.sentinel = _start_sentinel(
            self.data_dir, self.sentinel_port, self.service, self.master.port, down_after_milliseconds=5000
        )
        sentinel = self.sentinel

        def knows_master() -> bool:
            sentinel.check_alive()
            with redis.Redis(host="127.0.0.1", port=self.sentinel_port, decode_responses=True) as c:
                addr = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                return list(addr or []) == ["127.0.0.1", str(self.master.port)]

        _wait(knows_master, timeout, f"the sentinel on port {self.sentinel_port} to know its master")

    def flush(self) -> None:
        with redis.Redis(host="127.0.0.1", port=self.master.port) as c:
            c.flushall()

    def stop(self) -> None:
        if self.sentinel is not None:
            self.sentinel.stop()
            self.sentinel = None
        self.master.stop()


class RedisSentinelFailoverServers:
    """A master, one replica of it and one Sentinel (quorum 1) quick to fail over, for failover tests.

    Every process is the test's own (never shared: the test kills the master). The Sentinel takes a master
    down after ``down_after_ms`` without answers and promotes the replica; ``kill_master()`` SIGKILLs it.

    ``down_after_ms`` is 1500, not 1000: the Sentinel pings every ``min(down_after, 1000)`` ms, and with
    1000 it often (about 5 failovers in 12) marked the *new* master down for ~100 ms about 1 s after
    ``+switch-master`` (its fresh link had not had a PONG yet) and tried a second failover. A client
    connecting in that window gets "No master found".
    """

    def __init__(
        self,
        data_dir: Path,
        service: str = "notifier-failover",
        *,
        down_after_ms: int = 1500,
        failover_timeout_ms: int = 3000,
    ) -> None:
        self.data_dir = data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.service = service
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.master_port = free_port()
        self.replica_port = free_port()
        self.sentinel_port = free_port()
        self.master: _Process | None = None
        self.replica: _Process | None = None
        self.sentinel: _Process | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.service}/0"

    def _server(self, name: str, port: int, *extra: str) -> _Process:
        node_dir = self.data_dir / name
        node_dir.mkdir(exist_ok=True)
        args = [
            _binary("redis-server"),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--dir", str(node_dir),
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(node_dir / "redis.log"),
            *extra,
        ]  # fmt: skip
        return _Process(args, node_dir / "redis.log")

    @staticmethod
    def _client(port: int) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=port, decode_responses=True, socket_connect_timeout=0.5, socket_timeout=2
        )

    def start(self, timeout: float = 30.0) -> None:
        # No 5 s wait (the default) before the diskless full sync of the replica.
        self.master = self._server("master", self.master_port, "--repl-diskless-sync-delay", "0")
        self.replica = self._server(
            "replica", self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port)
        )
        for port, proc in ((self.master_port, self.master), (self.replica_port, self.replica)):
            _wait(functools.partial(self._ping, port, proc), timeout, f"redis-server on port {port}")
        # In sync before the Sentinel starts: its first INFO of the master then lists the replica.
        _wait(self.replica_in_sync, timeout, f"the replica on port {self.replica_port} to be in sync")
        self.sentinel = _start_sentinel(
            self.data_dir,
            self.sentinel_port,
            self.service,
            self.master_port,
            down_after_milliseconds=self.down_after_ms,
            failover_timeout=self.failover_timeout_ms,
            parallel_syncs=1,
        )
        _wait(self._sentinel_knows_both, timeout, f"the sentinel on port {self.sentinel_port} to know both")

    def _ping(self, port: int, proc: _Process) -> bool:
        proc.check_alive()
        with self._client(port) as c:
            return bool(c.ping())

    @staticmethod
    def _info(port: int) -> dict[str, str]:
        """``INFO replication`` (parsed by redis-py), every value as text."""
        with RedisSentinelFailoverServers._client(port) as c:
            info = c.execute_command("INFO", "replication")
        return {str(k): str(v) for k, v in info.items()}

    def replica_in_sync(self) -> bool:
        """The replica's link to the master is up (its initial sync is done)."""
        info = self._info(self.replica_port)
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    def master_offset(self) -> int:
        """The master's replication offset (everything it has written so far)."""
        return int(self._info(self.master_port)["master_repl_offset"])

    def replica_offset(self) -> int:
        """How much of the master's replication stream the replica has processed."""
        return int(self._info(self.replica_port)["slave_repl_offset"])

    def sentinel_master(self) -> tuple[str, int] | None:
        """The master's address as the Sentinel reports it (``SENTINEL GET-MASTER-ADDR-BY-NAME``)."""
        with self._client(self.sentinel_port) as c:
            addr = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        if not addr:
            return None
        host, port = addr
        return str(host), int(port)

    def _sentinel_knows_both(self) -> bool:
        assert self.sentinel is not None
        self.sentinel.check_alive()
        if self.sentinel_master() != ("127.0.0.1", self.master_port):
            return False
        with self._client(self.sentinel_port) as c:
            replicas = c.sentinel_slaves(self.service)
        return any(
            int(r.get("port", 0)) == self.replica_port
            and r.get("is_slave")
            and not r.get("is_disconnected")
            and not r.get("is_sdown")
            and r.get("master-link-status") == "ok"
            for r in replicas
        )

    def promoted(self) -> bool:
        """The Sentinel names the former replica as the master, and it answers as one."""
        if self.sentinel_master() != ("127.0.0.1", self.replica_port):
            return False
        return self._info(self.replica_port).get("role") == "master"

    def kill_master(self) -> None:
        """SIGKILL the master (no shutdown, no last writes) and reap it."""
        assert self.master is not None
        self.master.proc.kill()
        self.master.proc.wait()

    def stop(self) -> None:
        for name in ("sentinel", "replica", "master"):
            proc: _Process | None = getattr(self, name)
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.stop()
                setattr(self, name, None)
