"""Assembles and runs the server: gRPC services, health, metrics, expiry and shutdown."""
from __future__ import annotations

import asyncio
import logging
import signal
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc

from . import keys, metrics
from .auth import Auth, TokensFileError
from .config import Settings
from .expiry import Reaper
from .service import RegistryService
from .store import Store
from .tls import ServerTLS, TLSError, is_loopback
from .watch import Watches

log = logging.getLogger("service_registry")

SERVICE_NAME = "service_registry.ServiceRegistry"
# A health service name that is SERVING while the process runs, whatever Redis does: for
# liveness probes (restarting the server does not bring Redis back). The readiness name is "".
LIVENESS_SERVICE = "liveness"
HEALTH_PROBE_INTERVAL = 1.0
GAUGE_INTERVAL = 5.0


class Server:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = Store(settings)
        self.watches = Watches(settings, self.store)
        self.reaper = Reaper(settings, self.store)
        self.health = health.aio.HealthServicer()
        self.auth = Auth(settings.tokens_file)     # TokensFileError: bad file
        self.tls = ServerTLS.from_settings(settings)  # TLSError: unusable certificate files
        self.service = RegistryService(settings, self.store, self.watches, self.auth,
                                       on_unavailable=self._mark_unavailable)
        self.grpc = grpc.aio.server(
            interceptors=[self.auth.interceptor()] if self.auth.enabled else None,
            options=[
                ("grpc.so_reuseport", 1),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ])
        pb_grpc.add_ServiceRegistryServicer_to_server(self.service, self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        self.port = 0
        self._serving = None
        self._draining = False
        self._tasks: list[asyncio.Task] = []
        self._stopped = asyncio.Event()

    async def start(self) -> int:
        if self.tls:
            self.port = self.grpc.add_secure_port(self.settings.address, self.tls.credentials())
        else:
            self.port = self.grpc.add_insecure_port(self.settings.address)
        if not self.port:
            raise RuntimeError(f"cannot listen on {self.settings.address}")
        self._log_security()
        log.info("store: %s", self.store.describe())
        if self.store.embedded:
            log.warning("STORE IS EMBEDDED, NOT PERSISTED: agents live only in this process; "
                        "set REDIS_URL to use Redis")
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self._probe()
        self.reaper.start(listen=self.settings.expiry_events and not self.store.embedded)
        self._tasks.append(asyncio.create_task(self._health_forever(), name="health-probe"))
        self._tasks.append(asyncio.create_task(self._gauges_forever(), name="agent-gauges"))
        await self.grpc.start()
        metrics.serve(self.settings.host, self.settings.metrics_port)
        log.info("serving gRPC on %s:%d (heartbeat timeout %ss)", self.settings.host, self.port,
                 self.settings.heartbeat_timeout)
        return self.port

    def _log_security(self) -> None:
        where = self.settings.address
        if self.tls:
            log.info("tls: %s on %s", self.tls.describe(), where)
        elif is_loopback(self.settings.host):
            log.info("tls: off (plaintext on loopback %s)", where)
        else:
            log.warning("PLAINTEXT gRPC on non-loopback address %s: traffic and bearer tokens "
                        "can be read on the network; set TLS_CERT and TLS_KEY", where)
        if self.auth.enabled:
            log.info("auth: on, %s", self.auth.describe())
            if not self.auth.tokens:
                log.warning("auth: the tokens file lists no token: every call is refused")
        else:
            log.warning("AUTHENTICATION IS OFF: anyone who reaches %s may register, evict and "
                        "notify agents; set TOKENS_FILE to require tokens", where)

    def reload(self) -> None:
        """SIGHUP: read the tokens file and the TLS files again."""
        log.info("SIGHUP: reloading tokens%s", " and certificates" if self.tls else "")
        self.auth.reload()
        if self.tls:
            self.tls.reload()

    async def _set_serving(self, serving: bool) -> None:
        if serving == self._serving or (serving and self._draining):
            return
        self._serving = serving
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)
        if serving:
            log.info("redis reachable: SERVING")
        elif self._draining:
            log.info("draining: NOT_SERVING")
        else:
            log.warning("redis unreachable: NOT_SERVING")

    def _mark_unavailable(self) -> None:
        if self._serving:
            asyncio.get_running_loop().create_task(self._set_serving(False))

    async def _probe(self) -> None:
        # (the expiry listener re-enables keyspace events itself when Redis comes back)
        await self._set_serving(await self.store.ping())

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
        """Drain: NOT_SERVING, end watches (clients resume elsewhere), refuse new calls, give
        in-flight ones `grace` seconds (then they are cancelled with UNAVAILABLE), stop the
        sweeper, close Redis."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.settings.shutdown_grace if grace is None else grace
        self._draining = True  # the health probe must not turn SERVING again
        await cancel_tasks(self._tasks)
        self._serving = None
        await self._set_serving(False)
        watchers = sum(len(feed.watchers) for feed in self.watches.feeds.values())
        self.watches.close("server is shutting down; resume from your last revision elsewhere")
        log.info("draining: NOT_SERVING, %d watch stream(s) told to resume elsewhere "
                 "(UNAVAILABLE), in-flight calls have %ss", watchers, grace)
        await self.grpc.stop(grace)
        log.info("draining: gRPC stopped")
        await cancel_tasks(getattr(self.reaper, "_tasks", ()))
        await self.reaper.stop()
        await self.store.close()
        log.info("draining: expiry sweeper stopped, redis connection closed")

    async def wait(self) -> None:
        await self._stopped.wait()
        await self.grpc.wait_for_termination()


async def cancel_tasks(tasks, timeout: float = 5.0) -> None:
    """Cancels background tasks and waits for them to end. A cancel that lands while redis-py
    sets up a connection is sometimes swallowed (redis/redis-py#2551: the command completes
    and the task goes on), so a task still running is cancelled again."""
    pending = {task for task in tasks if not task.done()}
    deadline = time.monotonic() + timeout
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
        if pending and time.monotonic() > deadline:
            log.warning("background task(s) did not stop: %s",
                        ", ".join(task.get_name() for task in pending))
            return


async def run(settings: Settings) -> None:
    try:
        server = Server(settings)
    except (TokensFileError, TLSError) as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(2) from None
    await server.start()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def on_stop_signal(sig: signal.Signals) -> None:
        if not stopping.is_set():
            log.info("%s: shutting down (grace %ss)", sig.name, settings.shutdown_grace)
            stopping.set()
        else:  # a second signal: no more grace
            log.warning("%s again: cancelling in-flight calls now", sig.name)
            loop.create_task(server.grpc.stop(0))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    await stopping.wait()
    await server.stop()
    log.info("stopped")
