"""Fixtures: private redis-server processes on free loopback ports, and registry servers.

Never touches a Redis it did not start. `registry` runs each test on real Redis and on the
embedded store; tests that need real Redis behaviour use `redis_registry`.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from neural_hive_integration.clients import ServiceRegistryClient
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc

from integration_target import external_registry
from server.app import Server
from server.binding import StartupError
from server.config import Settings
from server.testing import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
REDIS_SERVER = shutil.which("redis-server")


class RedisProcess(RedisServer):
    """A redis-server of the test's own (see server/testing.py), with a client."""

    def start(self) -> None:
        if REDIS_SERVER is None:
            pytest.fail("redis-server is not installed (run `bash .ci/run` or apt-get install "
                        "redis-server)")
        super().start()

    def client(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(self.url, decode_responses=True)


@pytest.fixture
def redis_proc():
    proc = RedisProcess()
    proc.start()
    yield proc
    proc.cleanup()


@pytest.fixture
def redis_factory():
    """Starts extra redis-server processes on demand (e.g. with other settings)."""
    procs = []

    def make(*extra: str) -> RedisProcess:
        proc = RedisProcess(*extra)
        proc.start()
        procs.append(proc)
        return proc
    yield make
    for proc in procs:
        proc.cleanup()


def test_settings(**overrides) -> Settings:
    base = Settings(host="127.0.0.1", port=0, metrics_port=0, heartbeat_timeout=60.0,
                    shutdown_grace=1.0)
    return replace(base, **overrides)


class Registry:
    """A server running in the test's event loop, with a client and a raw stub."""

    def __init__(self, server: Server, kind: str, redis_proc: RedisProcess | None):
        self.server = server
        self.kind = kind
        self.redis_proc = redis_proc
        self.address = f"127.0.0.1:{server.port}"
        self.channel = grpc.aio.insecure_channel(self.address)
        self.stub = pb_grpc.ServiceRegistryStub(self.channel)
        self.client = ServiceRegistryClient("127.0.0.1", server.port, retries=2, backoff=0.05)

    @property
    def redis(self):
        return self.server.store.redis

    @property
    def embedded(self) -> bool:
        return self.kind == "embedded"

    def new_client(self, **kwargs) -> ServiceRegistryClient:
        return ServiceRegistryClient("127.0.0.1", self.server.port, **kwargs)

    async def close(self) -> None:
        await self.client.close()
        await self.channel.close()
        await self.server.stop(grace=0.5)


# metrics_port=FREE_PORT: a free port, chosen again when something else takes it between the
# choice and the bind (the server's own gRPC port 0, a client's ephemeral port)
FREE_PORT = "free"
PORT_ATTEMPTS = 5


async def started_server(settings: Settings, pick_metrics_port: bool) -> Server:
    for attempt in range(PORT_ATTEMPTS):
        if pick_metrics_port:
            settings = replace(settings, metrics_port=free_port())
        server = Server(settings)
        try:
            await server.start()
            return server
        except StartupError as exc:
            await server.stop(grace=0)
            if not pick_metrics_port or "METRICS_PORT" not in str(exc) \
                    or attempt == PORT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


@asynccontextmanager
async def running_registry(kind: str, redis_proc: RedisProcess | None = None, **overrides):
    pick = overrides.get("metrics_port") == FREE_PORT
    if pick:
        overrides["metrics_port"] = 0
    settings = test_settings(redis_url=redis_proc.url if redis_proc else "", **overrides)
    server = await started_server(settings, pick)
    registry = Registry(server, kind, redis_proc)
    try:
        yield registry
    finally:
        await registry.close()


@pytest.fixture(params=["redis", "embedded"])
async def registry(request):
    """The same scenario on real Redis and on the embedded store (tests marked `integration`:
    on the server of SERVICE_REGISTRY_HOST/PORT when set, see integration_target.py)."""
    external = external_registry(request)
    if external is not None:
        yield external
        await external.close()
        return
    proc = None
    if request.param == "redis":
        proc = RedisProcess()
        proc.start()
    overrides = getattr(request, "node").get_closest_marker("settings")
    try:
        async with running_registry(request.param, proc,
                                    **(overrides.kwargs if overrides else {})) as reg:
            yield reg
    finally:
        if proc:
            proc.cleanup()


@pytest.fixture
async def redis_registry(redis_proc, request):
    """Real Redis only, for what the embedded store cannot do (outages, keyspace events)."""
    overrides = request.node.get_closest_marker("settings")
    async with running_registry("redis", redis_proc,
                                **(overrides.kwargs if overrides else {})) as reg:
        yield reg


class ServerProcess:
    """`service-registry serve` in a child process, for restarts, kills and multi-process."""

    def __init__(self, redis_url: str, port: int | None = None, **env):
        self.port = port or free_port()
        self.env = {**os.environ, "REDIS_URL": redis_url, "SERVICE_REGISTRY_HOST": "127.0.0.1",
                    "SERVICE_REGISTRY_PORT": str(self.port), "METRICS_PORT": "0",
                    **{k: str(v) for k, v in env.items()}}
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="sr-server-", suffix=".log", delete=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve"], cwd=ROOT, env=self.env,
            stdout=self.log, stderr=subprocess.STDOUT)
        await wait_serving(self.address, proc=self.proc, log=self.log.name)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout=30)
        return self.proc.returncode if self.proc else 0

    def output(self) -> str:
        return Path(self.log.name).read_text()


async def wait_serving(address: str, timeout: float = 20.0, proc=None, log: str = "") -> None:
    """Waits for the gRPC health service to report SERVING (health Watch, no polling)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async def serving() -> None:
        while True:
            async with grpc.aio.insecure_channel(address) as channel:
                await channel.channel_ready()
                stream = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest())
                try:
                    async for reply in stream:
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            stream.cancel()
                            return
                except grpc.aio.AioRpcError:
                    # the connection broke while the server started: try again while it runs
                    if proc is not None and proc.poll() is not None:
                        raise

    try:
        await asyncio.wait_for(serving(), timeout)
    except grpc.aio.AioRpcError as exc:  # the server exited while starting
        output = Path(log).read_text() if log else ""
        raise AssertionError(f"server at {address} exited while starting ({exc.code().name}): "
                             f"{output[-3000:]}") from None
    except asyncio.TimeoutError:
        died = proc is not None and proc.poll() is not None
        output = Path(log).read_text() if log else ""
        raise TimeoutError(f"server at {address} not SERVING after {timeout}s"
                           f"{' (exited)' if died else ''}: {output[-2000:]}") from None


@pytest.fixture
def server_processes():
    procs: list[ServerProcess] = []

    async def start(redis_url: str, port: int | None = None, **env) -> ServerProcess:
        proc = ServerProcess(redis_url, port, **env)
        procs.append(proc)
        await proc.start()
        return proc
    yield start
    for proc in procs:
        proc.kill()
        Path(proc.log.name).unlink(missing_ok=True)


def pytest_configure(config):
    config.addinivalue_line("markers", "settings(**kw): server settings for the registry fixtures")
