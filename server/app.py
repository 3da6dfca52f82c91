"""Assembles and runs the server: gRPC services, health, metrics, expiry and shutdown."""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc

from . import binding, metrics, rpc_calls, validation
from .auth import Auth, TokensFileError, refusing_handler
from .config import Settings
from .errors import RpcError
from .expiry import Reaper
from .http.app import HttpApp
from .registry_store import RegistryStore
from .service import RegistryService
from .store import Store
from .tasks import cancel_tasks
from .tls import ServerTLS, TLSError, is_loopback
from .watch import Watches

log = logging.getLogger("service_registry")

SERVICE_NAME = "service_registry.ServiceRegistry"
# A health service name that is SERVING while the process runs, whatever Redis does: for
# liveness probes (restarting the server does not bring Redis back). The readiness name is "".
LIVENESS_SERVICE = "liveness"
HEALTH_PROBE_INTERVAL = 1.0
GAUGE_INTERVAL = 5.0
# Draining refuses new calls with UNAVAILABLE (clients retry it) before gRPC is stopped: gRPC's
# stop fails calls that have arrived but wait for a handler with CANCELLED (grpc/grpc#41785),
# which clients do not retry. To know none waits, a health call is sent to the server over a
# private Unix socket: calls are handed to handlers in arrival order, so once it is answered
# every call that came before it has been refused. Repeated while calls keep coming, for at most
# DRAIN_REFUSE_MAX seconds (clients retry for a few seconds only). Without the socket: until no
# call has come for DRAIN_QUIET seconds.
DRAIN_REFUSE_MAX = 1.0
DRAIN_QUIET = 0.1
# A server process does not call gRPC's stop at all: it refuses new calls until the in-flight
# ones are done (or the grace is over), then exits, and the kernel closes every connection, so
# a call still queued in gRPC's core fails with UNAVAILABLE instead of CANCELLED. Replies just
# handed to gRPC get this long to reach the socket first; closing Redis gets at most as long.
DRAIN_FLUSH = 0.2


class Gate(grpc.aio.ServerInterceptor):
    """Runs before any ServiceRegistry handler (the health service is never gated): refuses
    new calls with UNAVAILABLE while the server drains, and calls without a valid token with
    UNAUTHENTICATED (before any request validation or Redis work). Scope and namespace are
    checked in the handler (Auth.check), which knows the namespace."""

    PREFIX = f"/{SERVICE_NAME}/"

    def __init__(self, auth: Auth):
        self.auth = auth
        self.draining = False
        self.refused = 0          # calls refused while draining
        self.last_refused = 0.0   # and when the last one was (monotonic)

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self.PREFIX):
            return handler
        if self.draining:
            self.refused += 1
            self.last_refused = time.monotonic()
            return refusing_handler(handler, RpcError(
                grpc.StatusCode.UNAVAILABLE, "server is shutting down; retry (another "
                "instance will answer)"))
        if self.auth.enabled:
            try:
                self.auth.identify(details.invocation_metadata)
            except RpcError as exc:
                return refusing_handler(handler, exc)
        return handler


class Health(health.aio.HealthServicer):
    """The gRPC health service, whose Watch streams end with UNAVAILABLE once the server drains
    (after sending NOT_SERVING): otherwise a watcher would hold the drain for the whole grace."""

    def __init__(self):
        super().__init__()
        self._statuses: dict[str, int] = {"": health_pb2.HealthCheckResponse.SERVING}
        self._changed: asyncio.Condition | None = None
        self.closing = False

    @property
    def changed(self) -> asyncio.Condition:
        if self._changed is None:  # created in the server's event loop
            self._changed = asyncio.Condition()
        return self._changed

    async def set(self, service: str, status) -> None:
        await super().set(service, status)
        async with self.changed:
            self._statuses[service] = status
            self.changed.notify_all()

    async def close(self) -> None:
        async with self.changed:
            self.closing = True
            self.changed.notify_all()

    async def Watch(self, request, context):
        unknown = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        last = None
        async with self.changed:
            while True:
                status = self._statuses.get(request.service, unknown)
                if status != last:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    last = status
                if self.closing:
                    break
                await self.changed.wait()
        await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")


class Server:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = Store(settings)
        self.registry = RegistryStore(settings, self.store)
        self.watches = Watches(settings, self.store, self.registry)
        self.reaper = Reaper(settings, self.store, self.registry)
        self.health = Health()
        self.auth = Auth(settings.tokens_file)     # TokensFileError: bad file
        self.tls = ServerTLS.from_settings(settings)  # TLSError: unusable certificate files
        self.service = RegistryService(settings, self.store, self.registry, self.watches,
                                       self.auth, on_unavailable=self._mark_unavailable)
        self.gate = Gate(self.auth)
        self.grpc = grpc.aio.server(
            interceptors=[self.gate],
            options=[
                # gRPC's default (1) lets a second server share the port unnoticed
                ("grpc.so_reuseport", int(settings.share_port)),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ])
        pb_grpc.add_ServiceRegistryServicer_to_server(self.service, self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        if settings.grpc_reflection:
            reflection.enable_server_reflection(
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc)
        self.http = HttpApp(settings, self.service, self.gate, self.tls,
                            ready=lambda: self._serving is True and not self._draining)
        self.port = 0
        self.http_port = 0        # the bound HTTP port (METRICS_PORT), 0 when off
        self._serving = None
        self._draining = False
        self._drain_dir = ""      # holds the Unix socket the drain checks itself through
        self._tasks: list[asyncio.Task] = []
        self._stopped = asyncio.Event()
        self._cut_short = asyncio.Event()
        self._exiting = False

    async def start(self) -> int:
        """Raises binding.StartupError (one line naming the setting) when it cannot listen, or
        the Redis deployment REDIS_URL names cannot be used at all."""
        binding.check(self.settings)
        await self.store.connect()  # the Redis deployment, checked before serving
        try:
            if self.tls:
                self.port = self.grpc.add_secure_port(self.settings.address,
                                                      self.tls.credentials())
            else:
                self.port = self.grpc.add_insecure_port(self.settings.address)
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise binding.StartupError(f"cannot listen on {self.settings.address} (check "
                                       "SERVICE_REGISTRY_HOST and SERVICE_REGISTRY_PORT)")
        self._add_drain_socket()
        self._log_security()
        log.info("store: %s", self.store.describe())
        if self.store.embedded:
            log.warning("STORE IS EMBEDDED, NOT PERSISTED: agents live only in this process; "
                        "set REDIS_URL to use Redis")
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        reachable = await self._probe()
        await self.reaper.start(listen=self.settings.expiry_events and not self.store.embedded,
                                wait=reachable)
        self._tasks.append(asyncio.create_task(self._health_forever(), name="health-probe"))
        self._tasks.append(asyncio.create_task(self._gauges_forever(), name="agent-gauges"))
        await self.grpc.start()
        try:
            self.http_port = await self.http.start()
        except OSError as exc:  # taken since binding.check looked
            raise binding.StartupError(
                f"METRICS_PORT {self.settings.metrics_port}: {exc.strerror}") from None
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

    def _add_drain_socket(self) -> None:
        """A Unix socket in a private (0700) directory, for the drain's own health calls."""
        try:
            self._drain_dir = tempfile.mkdtemp(prefix="service-registry-")
            if self.grpc.add_insecure_port(f"unix:{self._drain_path}"):
                return
        except (OSError, RuntimeError) as exc:
            log.info("drain: no private Unix socket (%s); draining waits for a quiet spell", exc)
        self._remove_drain_socket()

    @property
    def _drain_path(self) -> str:
        return os.path.join(self._drain_dir, "drain.sock")

    def _remove_drain_socket(self) -> None:
        if self._drain_dir:
            shutil.rmtree(self._drain_dir, ignore_errors=True)
            self._drain_dir = ""

    async def _refuse_until_settled(self, started: float, grace: float) -> None:
        """Lame duck: new calls get UNAVAILABLE until none waits for a handler (see above)."""
        until = started + min(grace, DRAIN_REFUSE_MAX)
        if self._drain_dir:
            async with grpc.aio.insecure_channel(f"unix:{self._drain_path}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                clean = 0  # consecutive checks that found nothing waiting ahead of them
                while clean < 2 and (left := until - time.monotonic()) > 0:
                    before = self.gate.refused
                    try:
                        await stub.Check(health_pb2.HealthCheckRequest(service=LIVENESS_SERVICE),
                                         timeout=left)
                    except grpc.aio.AioRpcError:
                        break
                    clean = clean + 1 if self.gate.refused == before else 0
            return
        while (now := time.monotonic()) < until and now < self.gate.last_refused + DRAIN_QUIET:
            await asyncio.sleep(min(until, self.gate.last_refused + DRAIN_QUIET) - now)

    def reload(self) -> None:
        """SIGHUP: read the tokens file and the TLS files again."""
        log.info("SIGHUP: reloading tokens%s", " and certificates" if self.tls else "")
        self.auth.reload()
        if self.tls:
            self.tls.reload()
            self.http.reload()

    async def _set_serving(self, serving: bool) -> None:
        if serving == self._serving or (serving and self._draining):
            return
        self._serving = serving
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)
        if serving:
            log.info("store reachable: SERVING")
        elif self._draining:
            log.info("draining: NOT_SERVING")
        else:
            log.warning("store (redis) unreachable: NOT_SERVING")

    def _mark_unavailable(self) -> None:
        if self._serving:
            asyncio.get_running_loop().create_task(self._set_serving(False))

    async def _probe(self) -> bool:
        # (the expiry listener re-enables keyspace events itself when Redis comes back)
        reachable = await self.store.ping()
        metrics.STORE_UP.set(1 if reachable else 0)
        await self._set_serving(reachable)
        return reachable

    async def _health_forever(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_PROBE_INTERVAL)
            await self._probe()

    async def _gauges_forever(self) -> None:
        """Agents per namespace and per namespace and status, for the namespaces that hold
        agents (one pipelined round trip); a namespace forgotten since (it has none left) loses
        its series."""
        shown: set[str] = set()
        while True:
            try:
                namespaces = await self.store.namespaces()
                for ns, (count, by_status) in zip(
                        namespaces, await self.registry.agent_counts(namespaces)):
                    metrics.AGENTS.labels(ns).set(count)
                    for name, n in by_status.items():
                        metrics.AGENTS_BY_STATUS.labels(ns, name).set(n)
                for ns in shown - set(namespaces):
                    metrics.AGENTS.remove(ns)
                    for name in validation.STATUSES.values():
                        metrics.AGENTS_BY_STATUS.remove(ns, name)
                shown = set(namespaces)
            except Exception:  # noqa: BLE001 - a gauge is best effort
                pass
            await asyncio.sleep(GAUGE_INTERVAL)

    async def stop(self, grace: float | None = None, exiting: bool = False) -> None:
        """Drain: NOT_SERVING, end watches (clients resume elsewhere), refuse new calls, give
        in-flight ones `grace` seconds, stop the sweeper, close Redis. `exiting` (a server
        process about to exit): gRPC is not stopped; once in-flight calls are done the caller
        exits and the closed connections fail anything left with UNAVAILABLE (see
        DRAIN_FLUSH). Otherwise gRPC's stop cancels what is left after the grace."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._exiting = exiting
        grace = self.settings.shutdown_grace if grace is None else grace
        self._draining = True  # the health probe must not turn SERVING again
        await cancel_tasks(self._tasks)
        self._serving = None
        await self._set_serving(False)
        started = time.monotonic()
        self.gate.last_refused = started
        self.gate.draining = True  # new calls: UNAVAILABLE, clients retry elsewhere
        watchers = sum(len(feed.watchers) for feed in self.watches.feeds.values())
        self.watches.close("server is shutting down; resume from your last revision elsewhere")
        await self.health.close()
        log.info("draining: NOT_SERVING, refusing new calls (UNAVAILABLE), %d watch stream(s) "
                 "told to resume elsewhere, in-flight calls have %ss", watchers, grace)
        if exiting:
            log.info("draining: stopping gRPC once in-flight calls end (%d now)",
                     rpc_calls.IN_FLIGHT.count)
            left = grace - (time.monotonic() - started)
            idle = asyncio.ensure_future(rpc_calls.IN_FLIGHT.idle())
            cut = asyncio.ensure_future(self._cut_short.wait())
            await asyncio.wait([idle, cut], timeout=max(0.0, left),
                               return_when=asyncio.FIRST_COMPLETED)
            idle.cancel()
            cut.cancel()
            log.info("draining: %d call(s) still in flight after %.1fs, %d new call(s) "
                     "refused", rpc_calls.IN_FLIGHT.count, time.monotonic() - started,
                     self.gate.refused)
            await self._close_store(DRAIN_FLUSH)
            self._remove_drain_socket()
            return
        await self._refuse_until_settled(started, grace)
        log.info("draining: %d new call(s) refused; stopping gRPC", self.gate.refused)
        await self.grpc.stop(max(0.0, grace - (time.monotonic() - started)))
        self._remove_drain_socket()
        log.info("draining: gRPC stopped after %.1fs", time.monotonic() - started)
        await self._close_store(None)

    def cut_short(self) -> None:
        """A second signal: in-flight calls get no more grace."""
        self._cut_short.set()
        if not self._exiting:
            asyncio.get_running_loop().create_task(self.grpc.stop(0))

    async def _close_http_and_store(self) -> None:
        await self.http.stop()
        await asyncio.gather(self.reaper.stop(), self.store.close())

    async def _close_store(self, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(self._close_http_and_store(), timeout)
            log.info("draining: HTTP port closed, expiry sweeper stopped, redis connection "
                     "closed")
        except asyncio.TimeoutError:
            log.info("draining: expiry sweeper and redis connection left to the exit")

    async def wait(self) -> None:
        await self._stopped.wait()
        await self.grpc.wait_for_termination()


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
            server.cut_short()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    await stopping.wait()
    await server.stop(exiting=True)
    await asyncio.sleep(DRAIN_FLUSH)  # replies handed to gRPC reach their sockets
    log.info("stopped")
    logging.shutdown()
    os._exit(0)  # gRPC is never stopped: the kernel closes its connections (see DRAIN_FLUSH)
