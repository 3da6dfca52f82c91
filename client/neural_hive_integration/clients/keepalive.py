"""Background keep-alive: `ServiceRegistryClient.keep_alive()` heartbeats agents until stopped.

Every agent kept alive by one client shares one `_KeepAliveGroup`: agents whose beats fall due
together go out in one HeartbeatBatch call (up to CHUNK heartbeats, at most MAX_IN_FLIGHT calls at
once), so a process hosting 200 agents costs the server a few calls per interval, not 200. A
HeartbeatStream transport is there too; it measured more costly (benchmarks/RESULTS.md).

Failures: an item answered NOT_FOUND makes the group read the namespace's change log from a
revision at which the agent was alive, to tell why it is gone (EXPIRED, EVICTED with a reason,
DEREGISTERED), tells the agent (`on_lost`), then registers it again under the same id with the
same spec; a deregistered agent (and, on request, an evicted one) stops instead. A failed call
(UNAVAILABLE, a draining server, a lost connection) is retried with exponential backoff and
jitter, capped well under the agent's interval so that the lease is renewed soon after the server
is back.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Generator, Union

import grpc

from ..proto_stubs import service_registry_pb2 as pb
from .service_registry_client import (AgentInfo, HealthStatus, HeartbeatResult, RegistryError,
                                      _enum_name)

if TYPE_CHECKING:
    from .service_registry_client import ServiceRegistryClient

log = logging.getLogger("neural_hive_integration.keepalive")

Telemetry = Union[HealthStatus, Callable[[], HealthStatus], None]
NotificationHandler = Callable[[pb.Notification], Union[None, Awaitable[None]]]
LostHandler = Callable[["AgentLost"], Union[None, Awaitable[None]]]

SERVICE = "/service_registry.ServiceRegistry/"
CHUNK = 250            # heartbeats per HeartbeatBatch call (the server allows 1000)
MAX_IN_FLIGHT = 4      # concurrent calls of one group (the server pipelines them into Redis)
INTERVAL_SHARE = 1 / 3  # default interval: this share of the server's heartbeat timeout
JITTER = (0.85, 1.0)   # a new tick comes interval x uniform(JITTER) after the beat that made it
COALESCE = 0.1         # an agent due within this share of its interval joins an earlier send
# seconds (at most; a quarter of the interval) new agents gather for a first send
FIRST_BEAT = 0.1
CHECKPOINT_AGE = 30.0  # seconds between refreshes of a namespace's change-log revision
LOOKUP_TIMEOUT = 10.0  # bound on reading the change log to tell why an agent is gone
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
              grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
              grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED}
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_REMOVALS = {pb.EXPIRED: "expired", pb.EVICTED: "evicted", pb.DEREGISTERED: "deregistered"}


@dataclass(frozen=True)
class AgentLost:
    """Why a kept-alive agent was found gone. `cause`: "expired", "evicted" (with the
    operator's `reason`), "deregistered", or "unknown" (no record left: the store was reset or
    the change log compacted). `revision` is the removal's in the change log."""
    agent_id: str
    cause: str
    reason: str = ""
    revision: str = ""


class AgentEvicted(RegistryError):
    """An operator evicted the agent and keep_alive(reregister_evicted=False) was asked."""

    def __init__(self, lost: AgentLost):
        super().__init__(grpc.StatusCode.NOT_FOUND,
                         f"{lost.agent_id} was evicted: {lost.reason or 'no reason given'}")
        self.lost = lost


def _revision_key(revision: str) -> tuple[int, int]:
    ms, _, seq = revision.partition("-")
    return (int(ms or 0), int(seq or 0))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _status_error(exc: grpc.aio.AioRpcError) -> RegistryError:
    return RegistryError(exc.code(), exc.details() or "")


def _spawn(tasks: set[asyncio.Task[Any]], coro: Awaitable[Any], what: str) -> asyncio.Task[Any]:
    """A task named keepalive:<what>, kept in `tasks` until done (so stop() can end it)."""
    task = asyncio.ensure_future(coro)
    task.set_name(f"keepalive:{what}")
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task


async def _maybe_await(value: object) -> None:
    if inspect.isawaitable(value):
        await value


class _BatchTransport:
    """One HeartbeatBatch call per chunk. The request is assembled from each agent's cached
    HeartbeatRequest bytes (field 1, repeated), so an unchanged beat costs no serialization."""

    def __init__(self, client: ServiceRegistryClient):
        client.stub  # opens the channel
        assert client._channel is not None
        self.call = client._channel.unary_unary(
            SERVICE + "HeartbeatBatch", response_deserializer=pb.HeartbeatBatchResponse.FromString)
        self.metadata = client._metadata()

    async def send(self, requests: list[bytes], timeout: float) -> list[pb.HeartbeatResponse]:
        body = b"".join(b"\x0a" + _varint(len(r)) + r for r in requests)
        try:
            reply = await self.call(body, timeout=timeout, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            raise _status_error(exc) from None
        return list(reply.results)

    async def close(self) -> None:
        pass


class _StreamTransport:
    """All heartbeats on one HeartbeatStream; the server answers in request order, so replies
    are matched to requests first in, first out. A broken stream fails what is pending and is
    opened again by the next send."""

    def __init__(self, client: ServiceRegistryClient):
        client.stub
        assert client._channel is not None
        self.method = client._channel.stream_stream(
            SERVICE + "HeartbeatStream", response_deserializer=pb.HeartbeatResponse.FromString)
        self.metadata = client._metadata()
        self.call: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.pending: deque[asyncio.Future[pb.HeartbeatResponse]] = deque()
        self.lock = asyncio.Lock()

    async def send(self, requests: list[bytes], timeout: float) -> list[pb.HeartbeatResponse]:
        loop = asyncio.get_running_loop()
        futures = []
        async with self.lock:
            if self.call is None:
                self.call = self.method(metadata=self.metadata)
                self.reader = asyncio.ensure_future(self._read(self.call))
            call = self.call
            try:
                for request in requests:
                    future: asyncio.Future[pb.HeartbeatResponse] = loop.create_future()
                    self.pending.append(future)
                    futures.append(future)
                    await call.write(request)
            except Exception as exc:  # noqa: BLE001 - any failure to write breaks the stream
                self._broken(call, exc)
        try:
            return list(await asyncio.wait_for(asyncio.gather(*futures), timeout))
        except asyncio.TimeoutError:
            self._broken(call, RegistryError(grpc.StatusCode.DEADLINE_EXCEEDED, "stream stalled"))
            raise RegistryError(grpc.StatusCode.DEADLINE_EXCEEDED, "stream stalled") from None

    async def _read(self, call: Any) -> None:
        try:
            async for reply in call:
                if self.pending:
                    future = self.pending.popleft()
                    if not future.done():
                        future.set_result(reply)
            self._broken(call, RegistryError(grpc.StatusCode.UNAVAILABLE, "stream ended"))
        except grpc.aio.AioRpcError as exc:
            self._broken(call, exc)

    def _broken(self, call: Any, exc: BaseException) -> None:
        if call is not self.call:
            return
        error = _status_error(exc) if isinstance(exc, grpc.aio.AioRpcError) else (
            exc if isinstance(exc, RegistryError)
            else RegistryError(grpc.StatusCode.UNAVAILABLE, str(exc)))
        self.call = None
        call.cancel()
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        if self.call is not None:
            self._broken(self.call, RegistryError(grpc.StatusCode.CANCELLED, "closed"))
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)


TRANSPORTS: dict[str, type[_BatchTransport] | type[_StreamTransport]] = {
    "batch": _BatchTransport, "stream": _StreamTransport}


class KeepAlive:
    """The keep-alive of one agent (from `ServiceRegistryClient.keep_alive`).

    `await ka` waits for the first accepted heartbeat; `async with client.keep_alive(...) as ka`
    does too, and stops it on exit. `await ka.wait()` returns when it ends (stopped, client
    closed, agent deregistered) and raises what ended it otherwise: AgentEvicted, or a
    RegistryError such as PERMISSION_DENIED.
    """

    def __init__(self, client: ServiceRegistryClient, agent: AgentInfo | str, *,
                 telemetry: Telemetry, interval: float | None, deregister: bool,
                 on_notification: NotificationHandler | None, on_lost: LostHandler | None,
                 reregister_evicted: bool):
        if interval is not None and not interval > 0:
            raise ValueError(f"interval: must be positive, got {interval!r}")
        self.client = client
        self._spec = agent
        self.agent: AgentInfo | None = None if isinstance(agent, str) else agent
        self.agent_id = agent if isinstance(agent, str) else agent.agent_id
        self.telemetry: Telemetry = telemetry
        self.interval = interval or 0.0
        self.deregister_on_stop = deregister
        self.on_notification = on_notification
        self.on_lost = on_lost
        self.reregister_evicted = reregister_evicted
        # observable state
        self.beats = 0                  # heartbeats the server accepted
        self.failures = 0               # failed attempts since the last accepted heartbeat
        self.reregistrations = 0
        self.last_error: RegistryError | None = None
        self.lost: list[AgentLost] = []
        self.status = ""
        self.expires_at_unix_ms = 0
        # scheduling, owned by the group
        self.namespace = ""
        self.since = ""                 # a change-log revision at which the agent was alive
        self.next_due = 0.0
        self.busy = False
        self.forced = False
        self.removed = False
        self.registered = False
        self.pending_loss: AgentLost | None = None
        self.acks: list[str] = []
        self.sent_acks: list[str] = []
        self.seen: set[str] = set()
        self.waiters: list[asyncio.Future[HeartbeatResult]] = []
        self.sent_waiters: list[asyncio.Future[HeartbeatResult]] = []
        self._cache: tuple[object, bytes] | None = None
        self._reregistered = False
        self._queue: asyncio.Queue[pb.Notification] = asyncio.Queue()
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._first_beat: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.reregistering: asyncio.Task[None] | None = None
        self.group = client._keepalive_group()
        self.group.handles.add(self)  # so that client.close() stops it even while it starts
        self._spawn(self._start(), "start")
        if on_notification is not None:
            self._spawn(self._deliver(), "notifications")

    def __repr__(self) -> str:
        return f"<KeepAlive {self.agent_id or '(registering)'} beats={self.beats}>"

    # -- public -----------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._ended.done()

    def __await__(self) -> Generator[Any, None, KeepAlive]:
        return self._started().__await__()

    async def _started(self) -> KeepAlive:
        await asyncio.wait([self._first_beat, self._ended], return_when=asyncio.FIRST_COMPLETED)
        if not self._first_beat.done():
            self._ended.result()  # raises what ended it
            raise RegistryError(grpc.StatusCode.CANCELLED, "keep-alive stopped before it began")
        return self

    async def __aenter__(self) -> KeepAlive:
        try:
            return await self._started()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self, deregister: bool | None = None) -> None:
        """Stops heartbeating; with deregister (default: keep_alive's `deregister`) the agent
        is removed from the registry too. Leaves no task behind."""
        deregister = self.deregister_on_stop if deregister is None else deregister
        await self.group.discard(self)
        if self.reregistering is not None:
            await asyncio.gather(self.reregistering, return_exceptions=True)
        self._end(None)
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.gather(*[t for t in self._tasks if t is not asyncio.current_task()],
                             return_exceptions=True)
        if deregister and self.registered:
            await self.client.deregister_agent(self.agent_id)

    async def wait(self) -> None:
        await asyncio.shield(self._ended)

    async def next_beat(self) -> HeartbeatResult:
        """The result of the next heartbeat sent from now on."""
        future: asyncio.Future[HeartbeatResult] = asyncio.get_running_loop().create_future()
        self.waiters.append(future)
        self._check_ended(future)
        return await future

    def changed(self) -> asyncio.Future[None]:
        """Resolves at the next change of state (a beat, a failure, a loss, the end):
        `await ka.changed()`. Taken when called, so no change in between is missed."""
        return asyncio.shield(self._changed)

    async def notifications(self) -> AsyncIterator[pb.Notification]:
        """Notifications for this agent, each once, acknowledged with the next beat after it
        was handed out. Ends when the keep-alive ends."""
        if self.on_notification is not None:
            raise RuntimeError("notifications go to on_notification; iterate or pass a callback")
        while not self.done or not self._queue.empty():
            get = asyncio.ensure_future(self._queue.get())
            waiting: list[asyncio.Future[Any]] = [get, self._ended]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                await asyncio.gather(get, return_exceptions=True)
                if self._queue.empty():
                    return
                continue
            notification = get.result()
            self._ack(notification.notification_id)
            yield notification

    # -- internals --------------------------------------------------------------------------
    def _spawn(self, coro: Awaitable[Any], what: str) -> asyncio.Task[Any]:
        return _spawn(self._tasks, coro, what)

    def _check_ended(self, future: asyncio.Future[Any]) -> None:
        if self.done and not future.done():
            exc = self._ended.exception() if not self._ended.cancelled() else None
            future.set_exception(exc or RegistryError(grpc.StatusCode.CANCELLED,
                                                      "keep-alive stopped"))

    def _signal(self) -> None:
        self._changed.set_result(None)
        self._changed = asyncio.get_running_loop().create_future()

    def _end(self, error: BaseException | None) -> None:
        if self._ended.done():
            return
        if error is None:
            self._ended.set_result(None)
        else:
            self._ended.set_exception(error)
            self._ended.exception()  # retrieved: an unawaited keep-alive logs nothing itself
        for future in self.waiters + self.sent_waiters:
            self._check_ended(future)
        self.waiters, self.sent_waiters = [], []
        self.group.handles.discard(self)
        self._signal()

    async def _start(self) -> None:
        try:
            await self._resolve()
            await self.group.add(self)
        except Exception as exc:  # noqa: BLE001 - reported through wait() and await
            self._end(exc if isinstance(exc, RegistryError) else
                      RegistryError(grpc.StatusCode.UNKNOWN, repr(exc)))

    async def _resolve(self) -> None:
        """The agent's spec, id, namespace and interval; registers it when this client has not."""
        client = self.client
        spec = self._spec
        timeout_ms = 0
        known = client._registered.get(self.agent_id) if self.agent_id else None
        if isinstance(spec, str) or known is spec:
            reply = await client._call("GetAgent", pb.GetAgentRequest(agent_id=self.agent_id))
            record = reply.agent
            self.agent = known or AgentInfo.from_proto(record)
            self.agent_id = record.agent_id
            timeout_ms = record.expires_at_unix_ms - record.last_heartbeat_unix_ms
        else:
            registered = await client._register(spec)
            self.agent, self.agent_id = spec, registered.agent_id
            timeout_ms = registered.heartbeat_timeout_ms
        self.namespace = self.agent_id.split("/", 1)[0]
        self.registered = True
        if not self.interval:
            self.interval = max(timeout_ms * INTERVAL_SHARE / 1000.0, 0.05)

    def _request(self) -> bytes:
        """This beat's HeartbeatRequest, serialized (cached while telemetry does not change)."""
        source = self.telemetry
        try:
            health = source() if callable(source) else source
        except Exception:
            log.exception("telemetry callable of %s failed; beating without telemetry",
                          self.agent_id)
            health = None
        health = health if health is not None else HealthStatus()
        self.sent_acks = list(self.acks)
        key = (health.status, tuple(sorted(health.metrics.items())))
        if self._cache is not None and self._cache[0] == key and not self.sent_acks:
            return self._cache[1]
        data: bytes = health.to_heartbeat_request(self.agent_id, self.sent_acks) \
            .SerializeToString()
        if not self.sent_acks:
            self._cache = (key, data)
        return data

    def _accepted(self, reply: pb.HeartbeatResponse) -> HeartbeatResult:
        self.beats += 1
        self.failures = 0
        self.pending_loss = None
        self.status = _enum_name(pb.AgentStatus, reply.status)
        self.expires_at_unix_ms = reply.expires_at_unix_ms
        acked = set(self.sent_acks)
        self.acks = [a for a in self.acks if a not in acked]
        self.seen -= acked
        self.sent_acks = []
        for n in reply.notifications:
            if n.notification_id not in self.seen:
                self.seen.add(n.notification_id)
                self._queue.put_nowait(n)
        result = HeartbeatResult(status=self.status, expires_at_unix_ms=reply.expires_at_unix_ms,
                                 notifications=list(reply.notifications),
                                 reregistered=self._reregistered)
        self._reregistered = False
        for future in self.sent_waiters:
            if not future.done():
                future.set_result(result)
        self.sent_waiters = []
        if not self._first_beat.done():
            self._first_beat.set_result(None)
        self._signal()
        return result

    def _failed(self, error: RegistryError) -> None:
        self.failures += 1
        self.last_error = error
        self.sent_acks = []
        self.waiters = self.sent_waiters + self.waiters
        self.sent_waiters = []
        self._signal()

    def _ack(self, notification_id: str) -> None:
        self.acks.append(notification_id)

    async def _deliver(self) -> None:
        assert self.on_notification is not None
        while True:
            notification = await self._queue.get()
            try:
                await _maybe_await(self.on_notification(notification))
            except Exception:
                log.exception("on_notification failed for %s; it will be delivered again",
                              self.agent_id)
                self.seen.discard(notification.notification_id)
                continue
            self._ack(notification.notification_id)

    async def _lost(self, lost: AgentLost) -> None:
        """Tells the caller, then registers the agent again or ends the keep-alive."""
        if self.pending_loss is None:
            self.lost.append(lost)
            self.pending_loss = lost
            if self.on_lost is not None:
                try:
                    await _maybe_await(self.on_lost(lost))
                except Exception:
                    log.exception("on_lost failed for %s", self.agent_id)
            self._signal()
        if lost.cause == "deregistered" or self.removed:
            self._end(None)
            return
        if lost.cause == "evicted" and not self.reregister_evicted:
            self._end(AgentEvicted(lost))
            return
        assert self.agent is not None
        await self.client._register(self.agent)
        self.reregistrations += 1
        self._reregistered = True
        self._signal()


class _KeepAliveGroup:
    """Schedules the beats of every agent a client keeps alive and sends those due together."""

    def __init__(self, client: ServiceRegistryClient, transport: str = "batch"):
        if transport not in TRANSPORTS:
            raise ValueError(f"keepalive_transport: {transport!r}, "
                             f"choose from {sorted(TRANSPORTS)}")
        self.client = client
        self.transport_name = transport
        self.transport: _BatchTransport | _StreamTransport | None = None
        self.agents: dict[str, KeepAlive] = {}   # being kept alive
        self.handles: set[KeepAlive] = set()     # not ended yet, starting ones too
        self.wake = asyncio.Event()
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.loop_task: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.failures = 0
        self.checkpoints: dict[str, tuple[str, float]] = {}  # namespace -> (revision, taken at)
        self.ticks: dict[float, float] = {}  # interval -> time of the next shared beat

    def __contains__(self, agent_id: str) -> bool:
        return agent_id in self.agents

    def _spawn(self, coro: Awaitable[Any], what: str) -> asyncio.Task[Any]:
        return _spawn(self.tasks, coro, what)

    async def add(self, agent: KeepAlive) -> None:
        other = self.agents.get(agent.agent_id)
        if other is not None and other is not agent:
            agent._end(RegistryError(grpc.StatusCode.ALREADY_EXISTS,
                                     f"{agent.agent_id} is already kept alive by this client"))
            return
        agent.since = await self._checkpoint(agent.namespace)
        if agent.removed:
            return
        # agents started together share their first send, and from then on their schedule
        loop = asyncio.get_running_loop()
        agent.next_due = loop.time() + min(FIRST_BEAT, agent.interval * 0.25)
        self.agents[agent.agent_id] = agent
        if self.transport is None:
            self.transport = TRANSPORTS[self.transport_name](self.client)
        if self.loop_task is None or self.loop_task.done():
            self.loop_task = asyncio.ensure_future(self._run())
            self.loop_task.set_name("keepalive:group")
        self.wake.set()

    async def discard(self, agent: KeepAlive) -> None:
        """Removes the agent; the last one out stops the group's tasks and its stream."""
        agent.removed = True
        if self.agents.get(agent.agent_id) is agent:
            del self.agents[agent.agent_id]
        self.wake.set()
        if not self.agents:
            await self.shutdown()

    async def update_health(self, agent_id: str, health: HealthStatus) -> HeartbeatResult:
        """Makes `health` what the agent's beats send, and beats at once."""
        agent = self.agents[agent_id]
        agent.telemetry = health
        future: asyncio.Future[HeartbeatResult] = asyncio.get_running_loop().create_future()
        agent.waiters.append(future)
        self.force(agent_id)
        return await future

    def force(self, agent_id: str) -> None:
        agent = self.agents[agent_id]
        agent.forced = True
        if not agent.busy:
            agent.next_due = 0.0
        self.wake.set()

    async def shutdown(self) -> None:
        tasks = [t for t in (self.loop_task, *self.tasks) if t is not None and not t.done()
                 and t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.loop_task = None
        if self.transport is not None:
            await self.transport.close()
            self.transport = None

    async def close(self) -> None:
        """At client close: every keep-alive stops (deregistering those that asked to)."""
        for agent in list(self.handles):
            try:
                await agent.stop()
            except RegistryError as exc:
                log.warning("deregistering %s at close failed: %s", agent.agent_id, exc)
        await self.shutdown()

    async def _checkpoint(self, namespace: str) -> str:
        """A recent change-log revision of the namespace (GetStats), refreshed when old."""
        loop = asyncio.get_running_loop()
        cached = self.checkpoints.get(namespace)
        if cached is not None and loop.time() - cached[1] < CHECKPOINT_AGE:
            return cached[0]
        taken = loop.time()
        reply = await self.client._call("GetStats", pb.StatsRequest(namespace=namespace))
        revision = reply.namespaces[0].revision if reply.namespaces else ""
        self.checkpoints[namespace] = (revision, taken)
        return revision

    # -- the schedule -----------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.agents:
            now = loop.time()
            idle = [a for a in self.agents.values() if not a.busy]
            # once one agent is due, those due a little later go along
            due = [a for a in idle if a.next_due <= now + COALESCE * a.interval] \
                if any(a.next_due <= now for a in idle) else []
            if not due:
                self.wake.clear()
                wait = min((a.next_due for a in idle), default=now + 3600.0) - now
                try:
                    await asyncio.wait_for(self.wake.wait(), max(wait, 0.0))
                except asyncio.TimeoutError:
                    pass
                continue
            stale = {a.namespace for a in due
                     if now - self.checkpoints.get(a.namespace, ("", -1e9))[1] > CHECKPOINT_AGE}
            for namespace in stale:
                self.checkpoints[namespace] = (self.checkpoints.get(namespace, ("", 0.0))[0], now)
                self._spawn(self._refresh(namespace), "checkpoint")
            for start in range(0, len(due), CHUNK):
                await self.slots.acquire()
                chunk = [a for a in due[start:start + CHUNK] if not a.removed]
                for agent in chunk:
                    agent.busy = True
                self._spawn(self._send(chunk), "send")

    async def _refresh(self, namespace: str) -> None:
        self.checkpoints.pop(namespace, None)
        try:
            await self._checkpoint(namespace)
        except RegistryError as exc:
            log.debug("checkpoint of %s failed: %s", namespace, exc)

    def _next_tick(self, interval: float, now: float) -> float:
        """The next beat of an agent beaten at `now`: the tick its interval's agents already
        share if it is 0.5 to 1 interval away, else a new one (jittered, so that processes
        started together drift apart). Agents started at different moments thus converge on one
        send per interval."""
        tick = self.ticks.get(interval)
        if tick is None or not now + interval * 0.5 <= tick <= now + interval:
            tick = now + interval * random.uniform(*JITTER)
            self.ticks[interval] = tick
        return tick

    def _backoff(self, agent: KeepAlive) -> float:
        """Exponential in the group's consecutive failures, with jitter, capped at half the
        agent's interval (and the client's max_backoff): the lease is renewed soon after the
        server is back."""
        c = self.client
        cap = min(c.max_backoff, agent.interval / 2)
        delay = min(c.backoff * 2.0 ** min(self.failures, 16), cap)
        return delay * random.uniform(0.5, 1.0)

    async def _send(self, chunk: list[KeepAlive]) -> None:
        loop = asyncio.get_running_loop()
        lost: list[KeepAlive] = []
        try:
            if not chunk:
                return
            requests = []
            for agent in chunk:
                agent.forced = False
                agent.sent_waiters, agent.waiters = agent.sent_waiters + agent.waiters, []
                requests.append(agent._request())
            sent_at = loop.time()
            timeout = min(self.client.timeout, max(min(a.interval for a in chunk), 1.0))
            assert self.transport is not None
            try:
                replies = await self.transport.send(requests, timeout)
            except RegistryError as exc:
                self._call_failed(chunk, exc)
                return
            self.failures = 0
            now = loop.time()
            for agent, reply in zip(chunk, replies):
                if agent.removed:
                    continue
                code = _CODES.get(reply.error_code, grpc.StatusCode.UNKNOWN)
                if code == grpc.StatusCode.OK:
                    agent._accepted(reply)
                    agent.next_due = 0.0 if agent.forced else self._next_tick(agent.interval, now)
                    checkpoint = self.checkpoints.get(agent.namespace)
                    if checkpoint is not None and checkpoint[0] and checkpoint[1] <= sent_at:
                        agent.since = checkpoint[0]
                elif code == grpc.StatusCode.NOT_FOUND:
                    lost.append(agent)
                elif code in _TRANSIENT:
                    agent._failed(RegistryError(code, reply.error_message))
                    agent.next_due = now + self._backoff(agent)
                else:
                    agent._failed(RegistryError(code, reply.error_message))
                    agent._end(agent.last_error)
                    await self.discard(agent)
                agent.busy = agent in lost
        finally:
            for agent in chunk:
                if agent not in lost:
                    agent.busy = False
            self.slots.release()
            self.wake.set()
        if lost:
            self._spawn(self._recover(lost), "recover")

    def _call_failed(self, chunk: list[KeepAlive], error: RegistryError) -> None:
        now = asyncio.get_running_loop().time()
        fatal = error.code not in _TRANSIENT
        if not fatal:
            self.failures += 1
        for agent in chunk:
            agent._failed(error)
            if fatal:
                agent._end(error)
                agent.removed = True
                self.agents.pop(agent.agent_id, None)
            else:
                agent.next_due = now + self._backoff(agent)

    # -- agents found gone ------------------------------------------------------------------
    async def _recover(self, agents: list[KeepAlive]) -> None:
        by_namespace: dict[str, list[KeepAlive]] = {}
        for agent in agents:
            by_namespace.setdefault(agent.namespace, []).append(agent)
        for namespace, group in by_namespace.items():
            known = [a for a in group if a.pending_loss is not None]
            causes = await self._why_gone(namespace, [a for a in group if a not in known])
            for agent in group:
                lost = agent.pending_loss or causes[agent.agent_id]
                agent.reregistering = self._spawn(self._reregister(agent, lost), "reregister")

    async def _reregister(self, agent: KeepAlive, lost: AgentLost) -> None:
        loop = asyncio.get_running_loop()
        registered = False
        try:
            await agent._lost(lost)
            registered = True
        except RegistryError as exc:
            agent._failed(exc)
            if exc.code not in _TRANSIENT:
                agent._end(exc)
        finally:
            agent.reregistering = None
            if agent.done:
                await self.discard(agent)
            else:
                # registered again: beat at once; else try again after a pause
                agent.next_due = 0.0 if registered else loop.time() + self._backoff(agent)
                agent.busy = False
                self.wake.set()

    async def _why_gone(self, namespace: str, agents: list[KeepAlive]) -> dict[str, AgentLost]:
        """The last removal event of each agent in the namespace's change log, read from a
        revision at which all were alive up to the current one (one watch for all of them)."""
        causes = {a.agent_id: AgentLost(a.agent_id, "unknown") for a in agents}
        if not agents:
            return causes
        try:
            reply = await self.client._call("GetStats", pb.StatsRequest(namespace=namespace))
            now = reply.namespaces[0].revision if reply.namespaces else ""
            since = min((a.since for a in agents), key=lambda r: _revision_key(r or "0-0"))
            if not now or _revision_key(now) <= _revision_key(since or "0-0"):
                return causes  # nothing logged since: the store was reset
            await asyncio.wait_for(self._read_removals(namespace, since or "0-0", now, causes),
                                   LOOKUP_TIMEOUT)
        except (RegistryError, asyncio.TimeoutError) as exc:
            log.info("could not tell why agents of %s are gone: %r", namespace, exc)
        return causes

    async def _read_removals(self, namespace: str, since: str, until: str,
                             causes: dict[str, AgentLost]) -> None:
        until_key = _revision_key(until)
        call = self.client.stub.WatchAgents(
            pb.WatchRequest(namespace=namespace, since_revision=since, skip_snapshot=True),
            metadata=self.client._metadata())
        try:
            async for event in call:
                if event.type in _REMOVALS and event.agent.agent_id in causes:
                    causes[event.agent.agent_id] = AgentLost(
                        event.agent.agent_id, _REMOVALS[event.type], event.reason,
                        event.revision)
                if event.revision and _revision_key(event.revision) >= until_key:
                    return
        except grpc.aio.AioRpcError as exc:
            raise _status_error(exc) from None
        finally:
            call.cancel()
