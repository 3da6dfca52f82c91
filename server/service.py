"""The ServiceRegistry gRPC servicer: each RPC validates, authorizes, makes one storage
gateway call (registry_store.py, where each method names its Lua script) and builds the reply.

WatchAgents reads the change log through watch.py.
"""
from __future__ import annotations

import random
import secrets
import time

import grpc
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc

from . import agent_card, balance, errors, metrics, rpc_calls, validation
from .auth import Auth, Scope
from .config import Settings
from .errors import RpcError
from .registry_store import RegistryStore
from .store import Store
from .validation import AgentRef, InvalidArgument
from .watch import Watches


def new_agent_name() -> str:
    return secrets.token_hex(8)


class RegistryService(pb_grpc.ServiceRegistryServicer):
    def __init__(self, settings: Settings, store: Store, registry: RegistryStore,
                 watches: Watches, auth: Auth, on_unavailable=None):
        self.settings = settings
        self.store = store
        self.registry = registry
        self.watches = watches
        self.auth = auth
        self.on_unavailable = on_unavailable or (lambda: None)

    # -- Register ---------------------------------------------------------------------------
    @rpc_calls.unary("register")
    async def Register(self, request, context):
        # A full "namespace/name" id names its namespace; `namespace`, if also set, must agree.
        ref = (validation.agent_ref(request.agent_id, request.namespace) if request.agent_id
               else AgentRef(validation.namespace(request.namespace), new_agent_name()))
        owner = self.auth.check(context, Scope.AGENT, ref.namespace)
        card = (agent_card.parse(request.agent_card, list(request.capabilities))
                if request.agent_card else None)
        agent = await self.registry.register(ref, validation.agent_spec(request, card), owner)
        return pb.RegisterResponse(agent_id=ref.agent_id, agent=agent,
                                   heartbeat_timeout_ms=self.settings.heartbeat_timeout_ms)

    # -- Heartbeat (unary, keep-alive stream, batch): one gateway path ----------------------
    def _owner_checker(self, context):
        return lambda ns: self.auth.check(context, Scope.AGENT, ns)

    @rpc_calls.unary("heartbeat")
    async def Heartbeat(self, request, context):
        beat = validation.heartbeat(request)
        return await self.registry.heartbeat(beat, self._owner_checker(context)(beat.ref.namespace))

    @rpc_calls.streaming("heartbeat_stream")
    async def HeartbeatStream(self, request_iterator, context):
        """One heartbeat at a time per stream, replies in request order; concurrent streams
        share the heartbeat pipeline. (Reading a stream ahead to run several of its heartbeats
        at once cost more CPU per heartbeat than it saved: see benchmarks/RESULTS.md.)"""
        owner_of = self._owner_checker(context)
        async for request in request_iterator:
            start = time.perf_counter()
            try:
                beat = validation.heartbeat(request)
                reply = await self.registry.heartbeat(beat, owner_of(beat.ref.namespace))
            except Exception as exc:  # noqa: BLE001 - reported in the response
                yield _failed_heartbeat(request, exc)
                continue
            rpc_calls.item_ok("heartbeat", time.perf_counter() - start)
            yield reply

    @rpc_calls.unary("heartbeat_batch")
    async def HeartbeatBatch(self, request, context):
        validation.batch_size(request.heartbeats)
        owner_of = self._owner_checker(context)
        results: list[pb.HeartbeatResponse | None] = [None] * len(request.heartbeats)
        queued, beats = [], []
        for i, hb in enumerate(request.heartbeats):
            try:
                beat = validation.heartbeat(hb)
                beats.append((beat, owner_of(beat.ref.namespace)))
                queued.append(i)
            except Exception as exc:  # noqa: BLE001 - reported per item
                results[i] = _failed_heartbeat(hb, exc)
        replies = await self.registry.heartbeats(beats) if beats else []
        down = next((r for r in replies if isinstance(r, errors.REDIS_DOWN)), None)
        if down is not None:
            raise down
        for i, reply in zip(queued, replies):
            results[i] = (_failed_heartbeat(request.heartbeats[i], reply)
                          if isinstance(reply, Exception) else reply)
        # Counted once per call; the latency is the call's ("heartbeat_batch").
        rpc_calls.items_ok("heartbeat", sum(not isinstance(r, Exception) for r in replies))
        return pb.HeartbeatBatchResponse(results=results)

    # -- Deregister / Evict -----------------------------------------------------------------
    @rpc_calls.unary("deregister")
    async def Deregister(self, request, context):
        ref = validation.agent_ref(request.agent_id)
        owner = self.auth.check(context, Scope.AGENT, ref.namespace)
        return pb.DeregisterResponse(removed=await self.registry.deregister(ref, owner))

    @rpc_calls.unary("evict")
    async def EvictAgents(self, request, context):
        refs, reason = validation.eviction(request)
        for ns in {r.namespace for r in refs}:
            self.auth.check(context, Scope.OPERATOR, ns)
        evicted = await self.registry.evict(refs, reason)
        return pb.EvictResponse(evicted_ids=[r.agent_id for r in evicted])

    # -- Reads ------------------------------------------------------------------------------
    @rpc_calls.unary("get")
    async def GetAgent(self, request, context):
        ref = validation.agent_ref(request.agent_id)
        self.auth.check(context, Scope.READ, ref.namespace)
        agent = await self.registry.get(ref)
        if agent is None:
            raise RpcError(grpc.StatusCode.NOT_FOUND,
                           f"agent_id: {ref.agent_id} is not registered or has expired")
        return pb.GetAgentResponse(agent=agent)

    @rpc_calls.unary("discover")
    async def DiscoverAgents(self, request, context):
        caps = validation.capabilities(request.capabilities)
        filters = validation.filters(request.filters)
        wanted = validation.bounded_count(request.max_results, "max_results",
                                          validation.DEFAULT_MAX_RESULTS,
                                          validation.MAX_MAX_RESULTS)
        balanced = validation.selection(request.selection) == pb.BALANCED
        if request.namespace and filters.namespace and request.namespace != filters.namespace:
            raise InvalidArgument("namespace: differs from filters['namespace']")
        namespaces = await self._readable_namespaces(context,
                                                     request.namespace or filters.namespace)
        if len(namespaces) > 1 and caps:
            namespaces = await self.registry.namespaces_with(namespaces, caps[0])
        if balanced:
            agents = await self._discover_balanced(namespaces, caps, filters.as_json(), wanted)
        else:
            found = []
            for ns in namespaces:
                found += await self.registry.discover(ns, caps, filters.as_json(), wanted)
            if len(namespaces) > 1:
                found.sort(key=lambda item: (item[0], item[1].agent_id))
            agents = [agent for _, agent in found[:wanted]]
        if not agents:  # what "no healthy agent for a capability" alerts on (deploy/prometheus)
            metrics.DISCOVER_EMPTY.labels(request.namespace or filters.namespace or "*").inc()
        return pb.DiscoverResponse(agents=agents)

    async def _discover_balanced(self, namespaces, caps, filters_json: str, wanted: int):
        """A weighted pick among windows of matches from random origins (balance.py)."""
        found = []
        for ns in namespaces:
            found += await self.registry.discover(ns, caps, filters_json, balance.window(wanted),
                                             random.random(), balance.RUNS)
        return balance.pick([agent for _, agent in found], wanted, int(time.time() * 1000),
                            int(self.settings.balance_warmup * 1000))

    async def _readable_namespaces(self, context, chosen: str) -> list[str]:
        """The namespace asked for (the caller must be allowed to read it), or else every
        namespace the caller's token covers."""
        if chosen:
            ns = validation.namespace(chosen)
            self.auth.check(context, Scope.READ, ns)
            return [ns]
        return self.auth.readable(context, await self.store.namespaces())


    @rpc_calls.unary("list")
    async def ListAgents(self, request, context):
        ns = validation.namespace(request.namespace)
        self.auth.check(context, Scope.READ, ns)
        agent_type = validation.agent_type(request.agent_type, required=False)
        page_size = validation.bounded_count(request.page_size, "page_size",
                                             validation.DEFAULT_PAGE_SIZE,
                                             validation.MAX_PAGE_SIZE)
        filters = validation.filters(request.filters)
        if filters.namespace and filters.namespace != ns:
            raise InvalidArgument("filters['namespace']: differs from namespace")
        capability = (validation.capabilities([request.capability], "capability")[0]
                      if request.capability else "")
        types = [agent_type] if agent_type else sorted(validation.AGENT_TYPES)
        current, after = validation.page_token(request.page_token, types)
        agents, budget = [], page_size
        while budget > 0 and current is not None:
            page = await self.registry.list_page(ns, current, after, budget, filters.as_json(),
                                                 capability)
            agents += page.agents
            budget -= page.examined
            if page.last:
                after = page.last
            else:  # this type is exhausted: go on with the next one
                later = [t for t in types if t > current]
                current, after = (later[0] if later else None), ""
        token = validation.encode_page_token(current, after) if current is not None else ""
        return pb.ListAgentsResponse(agents=agents, next_page_token=token)

    @rpc_calls.unary("stats")
    async def GetStats(self, request, context):
        namespaces = await self._readable_namespaces(context, request.namespace)
        return pb.StatsResponse(namespaces=[await self.registry.stats(ns) for ns in namespaces])

    # -- Notify and Watch -------------------------------------------------------------------
    @rpc_calls.unary("notify")
    async def NotifyAgent(self, request, context):
        ref = validation.agent_ref(request.agent_id)
        self.auth.check(context, Scope.OPERATOR, ref.namespace)
        kind, payload = validation.notification(request)
        return pb.NotifyResponse(notification_id=await self.registry.notify(ref, kind, payload))

    @rpc_calls.streaming("watch")
    async def WatchAgents(self, request, context):
        # watching one agent by its full id needs no namespace field
        ns = (validation.agent_ref(request.agent_id, request.namespace).namespace
              if request.agent_id else validation.namespace(request.namespace))
        self.auth.check(context, Scope.READ, ns)
        async for event in self.watches.watch(ns, request, context):
            yield event


def _failed_heartbeat(request, exc: Exception) -> pb.HeartbeatResponse:
    code, message = rpc_calls.item_failed("heartbeat", exc)
    return pb.HeartbeatResponse(agent_id=request.agent_id, error_code=code.value[0],
                                error_message=message)
