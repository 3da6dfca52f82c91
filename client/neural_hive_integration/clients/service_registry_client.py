"""Asyncio client for the Service Registry.

Retries UNAVAILABLE with exponential backoff, re-registers an agent whose lease expired when it
heartbeats again, and resumes watches from the last revision after a disconnect.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator

import grpc

from ..proto_stubs import service_registry_pb2 as pb
from ..proto_stubs import service_registry_pb2_grpc as pb_grpc

_log = logging.getLogger("neural_hive_integration.service_registry")

if TYPE_CHECKING:
    from .keepalive import KeepAlive, LostHandler, NotificationHandler, Telemetry, \
        _KeepAliveGroup

# Every unary call is safe to resend (ids are chosen before the call, scripts are idempotent;
# a notification may arrive twice, as documented). CANCELLED comes from a draining server.
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
# A watch that ends with these resumes from its last revision.
_WATCH_RESUMABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
# gRPC's own reconnect backoff reaches 120 s; a keep-alive must be back well within a lease.
_CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 2000)]


class RegistryError(Exception):
    """A call failed; `code` is the gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.details = message


class WatchCompacted(RegistryError):
    """The watch's revision is no longer in the log: list again, then watch from there."""


def _enum_value(enum, value, what: str) -> int:
    if isinstance(value, int):
        return value
    if not value:
        return 0
    try:
        return enum.Value(str(value).upper())
    except ValueError:
        raise ValueError(f"unknown {what}: {value!r}") from None


def _enum_name(enum, value: int) -> str:
    return enum.Name(value).lower() if value else ""


@dataclass
class AgentInfo:
    """An agent as the contract README's client snippets describe it. `namespace`, `cluster`
    and `version` fall back to the same keys in `metadata` when empty."""
    agent_id: str = ""
    agent_type: str = "worker"
    capabilities: list[str] = field(default_factory=list)
    endpoint: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    namespace: str = ""
    cluster: str = ""
    version: str = ""
    status: str = ""
    telemetry: dict[str, float] = field(default_factory=dict)
    registered_at_unix_ms: int = 0
    last_heartbeat_unix_ms: int = 0
    expires_at_unix_ms: int = 0
    agent_card: str = ""    # A2A Agent Card JSON (README "A2A Agent Cards")

    def to_register_request(self) -> pb.RegisterRequest:
        meta = {k: str(v) for k, v in self.metadata.items()}
        return pb.RegisterRequest(
            agent_type=_enum_value(pb.AgentType, self.agent_type, "agent_type"),
            capabilities=list(self.capabilities), metadata=meta,
            namespace=self.namespace or meta.get("namespace", ""),
            cluster=self.cluster or meta.get("cluster", ""),
            version=self.version or meta.get("version", ""),
            endpoint=self.endpoint, agent_id=self.agent_id, agent_card=self.agent_card)

    @classmethod
    def from_proto(cls, a: pb.AgentInfo) -> "AgentInfo":
        t = a.telemetry
        return cls(agent_id=a.agent_id, agent_type=_enum_name(pb.AgentType, a.agent_type),
                   capabilities=list(a.capabilities), endpoint=a.endpoint,
                   metadata=dict(a.metadata), namespace=a.namespace, cluster=a.cluster,
                   version=a.version, status=_enum_name(pb.AgentStatus, a.status),
                   telemetry={"success_rate": t.success_rate,
                              "avg_duration_ms": t.avg_duration_ms,
                              "total_executions": t.total_executions,
                              "failed_executions": t.failed_executions},
                   registered_at_unix_ms=a.registered_at_unix_ms,
                   last_heartbeat_unix_ms=a.last_heartbeat_unix_ms,
                   expires_at_unix_ms=a.expires_at_unix_ms, agent_card=a.agent_card)


@dataclass
class HealthStatus:
    """A heartbeat: `status` ("healthy", "degraded", "unhealthy" or "" to let the server
    derive it) and `metrics` with success_rate, avg_duration_ms, total_executions and
    failed_executions. `last_heartbeat` is informational: the server uses its own clock."""
    status: str = ""
    last_heartbeat: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    def to_heartbeat_request(self, agent_id: str, acks=()) -> pb.HeartbeatRequest:
        request = pb.HeartbeatRequest(
            agent_id=agent_id, status=_enum_value(pb.AgentStatus, self.status, "status"),
            ack_notification_ids=list(acks))
        if self.metrics:
            m = self.metrics
            request.telemetry.CopyFrom(pb.AgentTelemetry(
                success_rate=float(m.get("success_rate", 0.0)),
                avg_duration_ms=float(m.get("avg_duration_ms", 0.0)),
                total_executions=int(m.get("total_executions", 0)),
                failed_executions=int(m.get("failed_executions", 0))))
        return request


@dataclass
class HeartbeatResult:
    status: str
    expires_at_unix_ms: int
    notifications: list[pb.Notification]
    reregistered: bool = False


class ServiceRegistryClient:
    """Client for one registry address. Use as `async with ServiceRegistryClient(...)`.

    token: bearer token (or SERVICE_REGISTRY_TOKEN); root_certificates / certificate_chain /
    private_key: PEM bytes for TLS and mutual TLS (tls=True with none uses system roots).
    keepalive_transport: "batch" (HeartbeatBatch per tick, the default: it measured cheaper) or
    "stream" (one HeartbeatStream) for the agents of keep_alive().
    """

    def __init__(self, host: str | None = None, port: int | None = None, *,
                 token: str | None = None, tls: bool = False,
                 root_certificates: bytes | None = None, private_key: bytes | None = None,
                 certificate_chain: bytes | None = None, timeout: float = 10.0,
                 retries: int = 5, backoff: float = 0.1, max_backoff: float = 2.0,
                 namespace: str = "", keepalive_transport: str = "batch"):
        self.host = host or os.environ.get("SERVICE_REGISTRY_HOST", "localhost")
        self.port = int(port or os.environ.get("SERVICE_REGISTRY_PORT", 50051))
        self.token = token if token is not None else os.environ.get("SERVICE_REGISTRY_TOKEN")
        self.tls = tls or bool(root_certificates or certificate_chain)
        self._tls_files = (root_certificates, private_key, certificate_chain)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.namespace = namespace
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.ServiceRegistryStub | None = None
        self._registered: dict[str, AgentInfo] = {}  # for re-registering after expiry
        self._pending_acks: dict[str, list[str]] = {}
        self.keepalive_transport = keepalive_transport
        self._keepalive: _KeepAliveGroup | None = None

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def stub(self) -> pb_grpc.ServiceRegistryStub:
        if self._stub is None:
            target = f"{self.host}:{self.port}"
            if self.tls:
                roots, key, chain = self._tls_files
                creds = grpc.ssl_channel_credentials(roots, key, chain)
                self._channel = grpc.aio.secure_channel(target, creds, options=_CHANNEL_OPTIONS)
            else:
                self._channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
            self._stub = pb_grpc.ServiceRegistryStub(self._channel)
        return self._stub

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        return (("authorization", f"Bearer {self.token}"),) if self.token else None

    async def _call(self, method: str, request):
        """A unary call, retried with backoff while the server answers UNAVAILABLE."""
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return await getattr(self.stub, method)(request, timeout=self.timeout,
                                                        metadata=self._metadata())
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _RETRYABLE or attempt == self.retries:
                    raise RegistryError(exc.code(), exc.details() or "") from None
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.max_backoff)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Stops every keep-alive (deregistering those with deregister=True), then closes."""
        if self._keepalive is not None:
            await self._keepalive.close()
            self._keepalive = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    async def __aenter__(self) -> "ServiceRegistryClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- agents -----------------------------------------------------------------------------
    async def register_agent(self, agent: AgentInfo) -> str:
        """Registers (or re-registers) `agent`, sets agent.agent_id and returns it. The id is
        chosen here when empty, so a retried call cannot register the agent twice."""
        return (await self._register(agent)).agent_id

    async def _register(self, agent: AgentInfo) -> pb.RegisterResponse:
        request = agent.to_register_request()
        if not request.agent_id:
            request.agent_id = secrets.token_hex(8)
        reply = await self._call("Register", request)
        agent.agent_id = reply.agent_id
        agent.namespace = reply.agent.namespace
        self._registered[reply.agent_id] = agent
        return reply

    async def update_health(self, agent_id: str, health: HealthStatus) -> HeartbeatResult:
        """Heartbeats; if the agent expired (NOT_FOUND) and was registered through this
        client, registers it again under the same id and heartbeats once more. Notifications
        returned by the previous heartbeat are acknowledged with this one.

        For an agent under keep_alive(), `health` becomes what its keep-alive sends, and this
        beat goes out at once with the keep-alive's next batch."""
        if self._keepalive is not None and agent_id in self._keepalive:
            return await self._keepalive.update_health(agent_id, health)
        acks = self._pending_acks.pop(agent_id, [])
        request = health.to_heartbeat_request(agent_id, acks)
        reregistered = False
        try:
            reply = await self._call("Heartbeat", request)
        except RegistryError as exc:
            agent = self._registered.get(agent_id)
            if exc.code != grpc.StatusCode.NOT_FOUND or agent is None:
                raise
            await self.register_agent(agent)
            reregistered = True
            reply = await self._call("Heartbeat", request)
        if reply.notifications:
            self._pending_acks[agent_id] = [n.notification_id for n in reply.notifications]
        return HeartbeatResult(status=_enum_name(pb.AgentStatus, reply.status),
                               expires_at_unix_ms=reply.expires_at_unix_ms,
                               notifications=list(reply.notifications),
                               reregistered=reregistered)

    async def deregister_agent(self, agent_id: str) -> bool:
        """True if the agent was registered; deregistering twice is not an error. Stops its
        keep-alive, if any."""
        if self._keepalive is not None and agent_id in self._keepalive:
            await self._keepalive.agents[agent_id].stop(deregister=False)
        self._registered.pop(agent_id, None)
        self._pending_acks.pop(agent_id, None)
        reply = await self._call("Deregister", pb.DeregisterRequest(agent_id=agent_id))
        return reply.removed

    async def get_agent(self, agent_id: str) -> AgentInfo | None:
        try:
            reply = await self._call("GetAgent", pb.GetAgentRequest(agent_id=agent_id))
        except RegistryError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return AgentInfo.from_proto(reply.agent)

    async def discover_agents(self, capabilities, filters: dict | None = None,
                              max_results: int = 10, namespace: str = "",
                              balanced: bool = False) -> list[AgentInfo]:
        """Agents with every capability, matching `filters`, healthiest first; with
        balanced=True a weighted random pick instead (spreads callers over the fleet)."""
        reply = await self._call("DiscoverAgents", pb.DiscoverRequest(
            capabilities=list(capabilities),
            filters={k: str(v) for k, v in (filters or {}).items()},
            max_results=max_results, namespace=namespace or self.namespace,
            selection=pb.BALANCED if balanced else pb.RANKED))
        return [AgentInfo.from_proto(a) for a in reply.agents]

    async def list_agents(self, agent_type: str | int = "", namespace: str = "",
                          filters: dict | None = None, capability: str = "",
                          page_size: int = 100, page_token: str = ""
                          ) -> tuple[list[AgentInfo], str]:
        """One page and the token of the next ("" after the last page)."""
        reply = await self._call("ListAgents", pb.ListAgentsRequest(
            agent_type=_enum_value(pb.AgentType, agent_type, "agent_type"),
            namespace=namespace or self.namespace, page_size=page_size, page_token=page_token,
            filters={k: str(v) for k, v in (filters or {}).items()}, capability=capability))
        return [AgentInfo.from_proto(a) for a in reply.agents], reply.next_page_token

    async def iter_agents(self, **kwargs) -> AsyncIterator[AgentInfo]:
        """Every agent matching list_agents' arguments, page after page."""
        token = ""
        while True:
            agents, token = await self.list_agents(page_token=token, **kwargs)
            for agent in agents:
                yield agent
            if not token:
                return

    async def notify_agent(self, agent_id: str, kind: str, payload: str = "") -> str:
        reply = await self._call("NotifyAgent", pb.NotifyRequest(agent_id=agent_id, kind=kind,
                                                                  payload=payload))
        return reply.notification_id

    async def evict_agents(self, agent_ids, reason: str = "") -> list[str]:
        reply = await self._call("EvictAgents", pb.EvictRequest(agent_ids=list(agent_ids),
                                                                 reason=reason))
        return list(reply.evicted_ids)

    async def get_stats(self, namespace: str = "") -> pb.StatsResponse:
        return await self._call("GetStats", pb.StatsRequest(namespace=namespace))

    # -- keep-alive -------------------------------------------------------------------------
    def keep_alive(self, agent: AgentInfo | str, *, telemetry: Telemetry = None,
                   interval: float | None = None, deregister: bool = False,
                   on_notification: NotificationHandler | None = None,
                   on_lost: LostHandler | None = None,
                   reregister_evicted: bool = True) -> KeepAlive:
        """Heartbeats `agent` in the background until stopped, the client is closed, or the
        agent is deregistered; see keepalive.py and the README's "Keeping agents alive".

        agent: an AgentInfo (registered first unless this client registered it) or the id of
        a registered agent. telemetry: a HealthStatus, or a callable returning one, read at
        each beat. interval: seconds between beats (default: a third of the server's heartbeat
        timeout, with jitter). deregister: remove the agent when the keep-alive stops.
        on_notification(n): each notification once, acknowledged after it returns (else use
        `async for n in ka.notifications()`). on_lost(AgentLost): the agent was found gone;
        called before it is registered again. reregister_evicted=False: an evicted agent is
        not registered again; the keep-alive ends with AgentEvicted.

        Use `ka = await client.keep_alive(...)` (returns after the first beat) or
        `async with client.keep_alive(...) as ka:` (stops on exit)."""
        from .keepalive import KeepAlive
        return KeepAlive(self, agent, telemetry=telemetry, interval=interval,
                         deregister=deregister, on_notification=on_notification,
                         on_lost=on_lost, reregister_evicted=reregister_evicted)

    def _keepalive_group(self) -> _KeepAliveGroup:
        if self._keepalive is None:
            from .keepalive import _KeepAliveGroup
            self._keepalive = _KeepAliveGroup(self, self.keepalive_transport)
        return self._keepalive

    # -- watch ------------------------------------------------------------------------------
    async def watch(self, namespace: str = "", *, capability: str = "",
                    agent_type: str | int = "", filters: dict | None = None,
                    since_revision: str = "", snapshot: bool = True, agent_id: str = "",
                    on_resync=None) -> AsyncIterator[pb.WatchEvent]:
        """Yields WatchEvents forever. Without since_revision it starts with a snapshot (unless
        snapshot=False). After a disconnect it resumes from the last revision it saw, so no
        event is lost or repeated. Raises WatchCompacted when the since_revision given is no
        longer in the log. When a watch under way can no longer resume (the store was reset,
        or its revision was trimmed), it re-lists by itself: it logs a warning, calls
        `on_resync(reason)` if given, and sends a fresh snapshot (SNAPSHOT events, then
        SNAPSHOT_END) that replaces everything seen before."""
        revision = since_revision
        delay = self.backoff
        started = False  # an event arrived: from now on OUT_OF_RANGE means resynchronise
        while True:
            request = pb.WatchRequest(
                namespace=namespace or self.namespace, capability=capability,
                agent_type=_enum_value(pb.AgentType, agent_type, "agent_type"),
                filters={k: str(v) for k, v in (filters or {}).items()},
                since_revision=revision, skip_snapshot=bool(revision) or not snapshot,
                agent_id=agent_id)
            call = self.stub.WatchAgents(request, metadata=self._metadata())
            got_event = False
            try:
                async for event in call:
                    delay = self.backoff
                    started = got_event = True
                    if event.revision and event.type != pb.SNAPSHOT:
                        revision = event.revision
                    yield event
                return  # the server ended the stream without an error
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.OUT_OF_RANGE:
                    if not started:
                        raise WatchCompacted(code, exc.details() or "") from None
                    _log.warning("watch: %s; listing again", exc.details())
                    if on_resync is not None:
                        on_resync(exc.details() or "")
                    # a fresh snapshot next; `started` stays: only the caller's own
                    # since_revision, refused at once, raises WatchCompacted
                    revision, snapshot = "", True
                    if got_event:
                        continue  # at once; a resync refused again waits like a reconnection
                elif code not in _WATCH_RESUMABLE:
                    raise RegistryError(code, exc.details() or "") from None
            finally:
                call.cancel()
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.max_backoff)
