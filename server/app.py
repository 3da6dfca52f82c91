"""Assembles and runs the server: gRPC services, health, metrics, expiry and shutdown."""
from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc

from . import keys, metrics
from .auth import Auth
from .config import Settings
from .expiry import Reaper
from .service import RegistryService
from .store import Store
from .watch import Watches

log = logging.getLogger("service_registry")

SERVICE_NAME = "service_registry.ServiceRegistry"
HEALTH_PROBE_INTERVAL = 1.0
GAUGE_INTERVAL = 5.0


class Server:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = Store(settings)
        self.watches = Watches(settings, self.store)
        self.reaper = Reaper(settings, self.store)
        self.health = health.aio.HealthServicer()
        self.service = RegistryService(settings, self.store, self.watches, Auth(),
                                       on_unavailable=self._mark_unavailable)
        self.grpc = grpc.aio.server(options=[
            ("grpc.so_reuseport", 1),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ])
        pb_grpc.add_ServiceRegistryServicer_to_server(self.service, self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        self.port = 0
        self._serving = None
        self._tasks: list[asyncio.Task] = []
        self._stopped = asyncio.Event()

    async def start(self) -> int:
        self.port = self.grpc.add_insecure_port(self.settings.address)
        if not self.port:
            raise RuntimeError(f"cannot listen on {self.settings.address}")
        log.info("store: %s", self.store.describe())
        if self.store.embedded:
            log.warning("STORE IS EMBEDDED, NOT PERSISTED: agents live only in this process; "
                        "set REDIS_URL to use Redis")
        await self._probe()
        self.reaper.start(listen=not self.store.embedded)
        self._tasks.append(asyncio.create_task(self._health_forever(), name="health-probe"))
        self._tasks.append(asyncio.create_task(self._gauges_forever(), name="agent-gauges"))
        await self.grpc.start()
        metrics.serve(self.settings.host, self.settings.metrics_port)
        log.info("serving gRPC on %s:%d (heartbeat timeout %ss)", self.settings.host, self.port,
                 self.settings.heartbeat_timeout)
        return self.port

    async def _set_serving(self, serving: bool) -> None:
        if serving == self._serving:
            return
        self._serving = serving
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)
        if serving:
            log.info("redis reachable: SERVING")
        else:
            log.warning("redis unreachable: NOT_SERVING")

    def _mark_unavailable(self) -> None:
        if self._serving:
            asyncio.get_running_loop().create_task(self._set_serving(False))

    async def _probe(self) -> None:
        ok = await self.store.ping()
        if ok and not self._serving and not self.store.embedded:
            await self.store.enable_expiry_events()  # lost when Redis restarts
        await self._set_serving(ok)

    async def _health_forever(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_PROBE_INTERVAL)
            await self._probe()

    async def _gauges_forever(self) -> None:
        while True:
            try:
                for ns in await self.store.namespaces():
                    count = await self.store.redis.zcard(keys.namespace(ns).health)
                    metrics.AGENTS.labels(ns).set(count)
            except Exception:  # noqa: BLE001 - a gauge is best effort
                pass
            await asyncio.sleep(GAUGE_INTERVAL)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, end watches (clients resume elsewhere), finish in-flight calls."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._serving = None
        await self._set_serving(False)
        self.watches.close("server is shutting down; resume from your last revision elsewhere")
        await self.grpc.stop(self.settings.shutdown_grace if grace is None else grace)
        await self.reaper.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()

    async def wait(self) -> None:
        await self._stopped.wait()
        await self.grpc.wait_for_termination()


async def run(settings: Settings) -> None:
    server = Server(settings)
    await server.start()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("shutting down (grace %ss)", settings.shutdown_grace)
    await server.stop()
    log.info("stopped")
