"""What the suite runs against: `service-registry serve` processes it starts (several on one port,
SHARE_PORT) on a private redis-server (server/testing.py), or a remote deployment (`--addr`,
optionally `--redis-url` for the Redis-side measurements), plus the echo server (the gRPC
ceiling).

Never touches a Redis it was not given: the local redis-server listens on a free port.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import grpc
import psutil

from server.testing import free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ServerGroup:
    """`service-registry serve` (or the echo server) in `count` processes sharing one port."""
    kind: str                       # "registry" or "echo"
    port: int
    procs: list = field(default_factory=list)
    metrics_ports: list = field(default_factory=list)
    logs: list = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def output(self) -> str:
        return "\n".join(Path(log).read_text(errors="replace")[-3000:] for log in self.logs)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.logs:
            Path(log).unlink(missing_ok=True)


def start_servers(kind: str, count: int, redis_url: str = "", **env) -> ServerGroup:
    group = ServerGroup(kind, free_port())
    for _ in range(count):
        log = tempfile.NamedTemporaryFile(prefix=f"sr-bench-{kind}-", suffix=".log",
                                          delete=False)
        group.logs.append(log.name)
        if kind == "echo":
            cmd = [sys.executable, "-m", "benchmarks.echo", "--port", str(group.port)]
            child_env = dict(os.environ)
        else:
            metrics_port = free_port()
            group.metrics_ports.append(metrics_port)
            cmd = [sys.executable, "-m", "cli.main", "serve"]
            child_env = {**os.environ, "REDIS_URL": redis_url,
                         "SERVICE_REGISTRY_HOST": "127.0.0.1",
                         "SERVICE_REGISTRY_PORT": str(group.port),
                         "METRICS_PORT": str(metrics_port), "LOG_LEVEL": "WARNING",
                         "HEARTBEAT_TIMEOUT": "3600",
                         "SHARE_PORT": "true" if count > 1 else "false",  # on purpose
                         **{k: str(v) for k, v in env.items()}}
        group.procs.append(subprocess.Popen(cmd, cwd=ROOT, env=child_env, stdout=log,
                                            stderr=subprocess.STDOUT))
    return group


async def wait_serving(address: str, group: ServerGroup | None = None,
                       timeout: float = 30.0) -> None:
    """Until the health service says SERVING (the echo server: until a channel is ready)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if group is not None and any(p.poll() is not None for p in group.procs):
            raise RuntimeError(f"{group.kind} server exited at start:\n{group.output()}")
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                await asyncio.wait_for(channel.channel_ready(), 1.0)
                if group is not None and group.kind == "echo":
                    return
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except (asyncio.TimeoutError, grpc.aio.AioRpcError):
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"server at {address} not SERVING after {timeout}s"
                       + (f":\n{group.output()}" if group else ""))


async def start_group(kind: str, count: int, redis_url: str = "", **env) -> ServerGroup:
    group = start_servers(kind, count, redis_url, **env)
    try:
        await wait_serving(group.address, group)
        if count > 1:  # each process binds on its own; give the later ones a moment
            await asyncio.sleep(0.5)
    except BaseException:
        group.stop()
        raise
    return group


def redis_address(url: str) -> tuple[str, int, str | None, bool]:
    """(host, port, password, tls) of a redis:// or rediss:// URL."""
    parsed = urlparse(url)
    return (parsed.hostname or "127.0.0.1", parsed.port or 6379, parsed.password,
            parsed.scheme == "rediss")


class CpuMeter:
    """CPU seconds of a set of local processes, and of the whole machine, over a window."""

    def __init__(self, pids=()):
        self.procs = []
        for pid in pids:
            try:
                self.procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        self.start()

    def _proc_seconds(self) -> float:
        total = 0.0
        for proc in self.procs:
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.p0 = self._proc_seconds()
        m = psutil.cpu_times()
        self.m0 = m.user + m.system + getattr(m, "nice", 0) + getattr(m, "irq", 0) \
            + getattr(m, "softirq", 0)

    def stop(self) -> tuple[float, float]:
        """(cores used by the processes, cores busy on the machine) since start()."""
        dt = max(time.monotonic() - self.t0, 1e-6)
        m = psutil.cpu_times()
        m1 = m.user + m.system + getattr(m, "nice", 0) + getattr(m, "irq", 0) \
            + getattr(m, "softirq", 0)
        return (self._proc_seconds() - self.p0) / dt, (m1 - self.m0) / dt
