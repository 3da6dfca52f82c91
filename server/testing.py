"""A private redis-server on a free loopback port, for the tests and the benchmark suite alike.

Never touches a Redis it was not given: each one listens on a port of its own, with its own
directory, and is killed at the end.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server on a free loopback port (the suite's and the tests'): start, stop
    (kill) and start again on the same port, cleanup at the end. `extra` are more server flags."""

    def __init__(self, *extra: str):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="sr-redis-")
        self.extra = extra
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server), "
                               "or pass --redis-url / --addr")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--protected-mode", "no",
             "--maxclients", "10000", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # a child process: nothing to await but its port
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisCluster:
    """A private Redis Cluster on free loopback ports: `primaries` shards of one primary and
    `replicas` replicas each (redis-server --cluster-enabled yes, then redis-cli --cluster
    create). Each node's bus port is chosen free too (it defaults to port + 10000, past 65535
    for a high port). `url` names three nodes as seeds; start, kill a node, cleanup."""

    def __init__(self, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 2000,
                 extra: tuple[str, ...] = ()):
        self.primaries = primaries
        self.replicas = replicas
        self.nodes = [RedisServer("--cluster-enabled", "yes", "--cluster-config-file",
                                  "nodes.conf", "--cluster-node-timeout", str(node_timeout_ms),
                                  "--cluster-port", str(free_port()), *extra)
                      for _ in range(primaries * (1 + replicas))]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (apt-get install redis-tools)")
        if len(self.nodes) == 1:  # redis-cli creates 3 primaries at least: one by hand
            self.command(self.nodes[0].port, "CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        else:
            subprocess.run([cli, "--cluster", "create",
                            *[f"127.0.0.1:{n.port}" for n in self.nodes],
                            "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                           check=True, capture_output=True, timeout=60)
        self.wait_ready()

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def command(self, port: int, *args: str) -> str:
        """One command on one node, by redis-cli (no client library needed)."""
        done = subprocess.run([shutil.which("redis-cli") or "redis-cli", "-p", str(port),
                               *args], check=True, capture_output=True, text=True, timeout=10)
        return done.stdout

    def topology(self, port: int | None = None) -> list[dict]:
        """CLUSTER NODES as seen by a live node: id, port, role, master id, slots, failed."""
        ask = port or next(n.port for n in self.nodes if n.proc and n.proc.poll() is None)
        rows = []
        for line in self.command(ask, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if len(fields) < 8:
                continue
            flags = fields[2].split(",")
            rows.append({"id": fields[0], "port": int(fields[1].split(":")[1].split("@")[0]),
                         "role": "master" if "master" in flags else "replica",
                         "master": fields[3], "failed": "fail" in flags,
                         "slots": fields[8:]})
        return rows

    def primary_ports(self) -> list[int]:
        return sorted(r["port"] for r in self.topology()
                      if r["role"] == "master" and r["slots"] and not r["failed"])

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Every live node says cluster_state:ok and every live replica is in sync."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if all(self._ready(n.port) for n in self.nodes
                       if n.proc and n.proc.poll() is None):
                    return
            except subprocess.SubprocessError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis cluster not ready after {timeout}s")
            time.sleep(0.1)  # child processes: nothing to await but their state

    def _ready(self, port: int) -> bool:
        if "cluster_state:ok" not in self.command(port, "CLUSTER", "INFO"):
            return False
        rows = [r for r in self.topology(port) if not r["failed"]]
        live = sum(1 for n in self.nodes if n.proc and n.proc.poll() is None)
        if len(rows) != live or sum(r["role"] == "replica" for r in rows) < min(
                self.primaries * self.replicas, live - self.primaries):
            return False  # replicas not attached yet (just after create, all are masters)
        replication = self.command(port, "INFO", "replication")
        return "role:master" in replication or "master_link_status:up" in replication

    def kill(self, port: int) -> None:
        self.node(port).stop()

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()

    def __enter__(self) -> "RedisCluster":
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


class SentinelSet:
    """A Sentinel deployment on free loopback ports, for the tests and the failover benchmark: one
    primary, `replicas` replicas and 3 sentinels (`sentinel monitor NAME 127.0.0.1 PORT 2`, down
    after 1 s). `url` is the registry's REDIS_URL. `kill_primary()` SIGKILLs the primary and
    `wait_promoted()` returns the replica the sentinels promoted; everything is killed by pid in
    `cleanup()`."""

    SENTINELS = 3

    def __init__(self, name: str = "registry", replicas: int = 1, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 2000):
        self.name = name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        fast_sync = ("--repl-diskless-sync-delay", "0")
        first = RedisServer(*fast_sync)
        self.nodes = [first] + [RedisServer(*fast_sync, "--replicaof", "127.0.0.1",
                                            str(first.port)) for _ in range(replicas)]
        self.sentinel_ports = [free_port() for _ in range(self.SENTINELS)]
        self.dir = tempfile.mkdtemp(prefix="sr-sentinel-")
        self.sentinels: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        where = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{where}/{self.name}/0"

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        self.wait_replicas(len(self.nodes) - 1, timeout)
        binary = shutil.which("redis-server")
        for i, port in enumerate(self.sentinel_ports):
            conf = f"{self.dir}/sentinel-{i}.conf"   # a sentinel rewrites its own file
            with open(conf, "w") as f:
                f.write(f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.dir}\n"
                        f"sentinel monitor {self.name} 127.0.0.1 {self.nodes[0].port} 2\n"
                        f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}\n"
                        f"sentinel failover-timeout {self.name} {self.failover_timeout_ms}\n"
                        f"sentinel parallel-syncs {self.name} 1\n")
            self.sentinels.append(subprocess.Popen(
                [binary, conf, "--sentinel"], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        # every sentinel knows the others (hello messages, every 2 s) and the replicas
        self.until(lambda: all(
            int(m["num-other-sentinels"]) == self.SENTINELS - 1
            and int(m["num-slaves"]) == len(self.nodes) - 1
            for m in (self._sentinel(port).sentinel_master(self.name)
                      for port in self.sentinel_ports)), timeout, "sentinels ready")

    def _sentinel(self, port: int):
        import redis
        return redis.Redis(port=port, socket_timeout=1, decode_responses=True)

    def sentinel_client(self):
        """A client of the first sentinel (SENTINEL commands)."""
        return self._sentinel(self.sentinel_ports[0])

    def node_client(self, node: RedisServer):
        import redis
        return redis.Redis(port=node.port, socket_timeout=1, decode_responses=True)

    def until(self, condition, timeout: float, what: str):
        """Polls `condition` (other processes' state: there is no event to await)."""
        import redis
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = condition()
                if value:
                    return value
            except (redis.RedisError, OSError, KeyError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"sentinel set: {what} not reached within {timeout}s")

    def primary(self) -> RedisServer:
        """The node the sentinels name as primary."""
        import redis
        for port in self.sentinel_ports:
            try:
                _, at = self._sentinel(port).sentinel_get_master_addr_by_name(self.name)
            except (redis.RedisError, OSError, TypeError):
                continue
            return next(node for node in self.nodes if node.port == int(at))
        raise RuntimeError("no sentinel answers")

    def replicas(self) -> list[RedisServer]:
        primary = self.primary()
        return [node for node in self.nodes if node is not primary]

    def wait_replicas(self, count: int, timeout: float = 30.0) -> None:
        """Until the primary has `count` replicas online (synchronised)."""
        def online():
            info = self.node_client(self.primary() if self.sentinels else self.nodes[0]).info(
                "replication")
            return info.get("role") == "master" and sum(
                1 for key, value in info.items()
                if key.startswith("slave") and isinstance(value, dict)
                and value.get("state") == "online") >= count
        self.until(online, timeout, f"{count} replica(s) online")

    def kill_primary(self) -> RedisServer:
        node = self.primary()
        node.stop()  # SIGKILL
        return node

    def wait_promoted(self, old: RedisServer, timeout: float = 30.0) -> RedisServer:
        """The replica the sentinels promoted after `old` died, once it takes writes."""
        def promoted():
            node = self.primary()
            return node if node is not old and self.node_client(node).info(
                "replication").get("role") == "master" else None
        return self.until(promoted, timeout, "a replica promoted")

    def cleanup(self) -> None:
        for proc in self.sentinels:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for node in self.nodes:
            node.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)
