"""The ServiceRegistry gRPC servicer: each RPC validates, runs one Lua script, maps the reply.

RPC -> script: Register -> register.lua, Heartbeat/HeartbeatStream/HeartbeatBatch ->
heartbeat.lua, Deregister/EvictAgents -> deregister.lua, GetAgent -> get.lua, DiscoverAgents ->
discover.lua, ListAgents -> list.lua, NotifyAgent -> notify.lua, GetStats -> stats.lua,
WatchAgents -> the change log through watch.py.
"""
from __future__ import annotations

import base64
import binascii
import json
import random
import secrets
import time

import grpc
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc

from . import agent_card, balance, convert, errors, keys, metrics, validation
from .auth import Auth, Scope
from .coalesce import HeartbeatPipeline
from .config import Settings
from .errors import RpcError
from .expiry import outage_quiet_ms
from .keys import AGENT_CARD_ARG
from .store import Store
from .validation import MAX_REASON_LEN, AgentRef, InvalidArgument
from .watch import Watches

# Bounds on one discover.lua call, so a large or selective Discover never holds Redis for long
# (about 1 ms): candidates examined (~0.4 us each) and records returned (~7 us each).
DISCOVER_BUDGET = 1500
DISCOVER_BATCH = 50
MAX_NOTIFICATIONS_PER_HEARTBEAT = 16
LAST_AGENT_REMOVED = 2   # deregister.lua: the namespace has no agent left


def new_agent_name() -> str:
    return secrets.token_hex(8)


class RegistryService(pb_grpc.ServiceRegistryServicer):
    def __init__(self, settings: Settings, store: Store, watches: Watches, auth: Auth,
                 on_unavailable=None):
        self.settings = settings
        self.store = store
        self.scripts = store.scripts
        self.watches = watches
        self.auth = auth
        self.on_unavailable = on_unavailable or (lambda: None)
        self._hb_static = (str(settings.heartbeat_timeout_ms), str(settings.log_max_events))
        self._thresholds = (repr(settings.unhealthy_below), repr(settings.degraded_below))
        self._quiet = str(outage_quiet_ms(settings))
        # real Redis only: the embedded store has no socket to pipeline on
        self._hb_pipeline = (None if store.embedded
                             else HeartbeatPipeline(store.redis, store.scripts.heartbeat))

    def _redis_down(self):
        self.on_unavailable()

    # -- Register ---------------------------------------------------------------------------
    @errors.unary("register", on_unavailable=_redis_down)
    async def Register(self, request, context):
        # A full "namespace/name" id names its namespace; `namespace`, if also set, must agree.
        ref = (validation.agent_ref(request.agent_id, request.namespace) if request.agent_id
               else AgentRef(validation.namespace(request.namespace), new_agent_name()))
        ns = ref.namespace
        owner = self.auth.check(context, Scope.AGENT, ns)
        # With an Agent Card, agent_type defaults to WORKER and the card fills in the rest.
        card = agent_card.parse(request.agent_card, list(request.capabilities)) \
            if request.agent_card else None
        agent_type = validation.agent_type(request.agent_type or (pb.WORKER if card else 0))
        status = validation.status(request.status) or pb.HEALTHY
        caps = validation.capabilities(request.capabilities)
        meta = validation.metadata(request.metadata)
        endpoint = validation.endpoint(request.endpoint or (card.endpoint if card else ""))
        cluster = validation.short_text(request.cluster, "cluster")
        version = validation.short_text(request.version or (card.version if card else ""),
                                        "version")
        if card:
            caps = sorted(set(caps) | set(card.capabilities))
        k, name = ref.keys, ref.name
        args = [k.prefix, name, *self._hb_static, agent_type, status, ",".join(caps), endpoint,
                cluster, version, owner, self._quiet]
        for key, value in meta.items():
            args += (key, value)
        if card:
            args += (AGENT_CARD_ARG, card.json)
        _, flat, first = await self.scripts.register(
            keys=[k.log, k.deadlines, k.agent(name), k.lease(name)], args=args)
        agent = convert.from_flat(ns, name, flat)
        if first:  # the namespace's first or soonest lease: keys in other slots, after it
            await self.store.agent_created(ns, agent.expires_at_unix_ms)
        return pb.RegisterResponse(agent_id=ref.agent_id, agent=agent,
                                   heartbeat_timeout_ms=self.settings.heartbeat_timeout_ms)

    # -- Heartbeat (unary, keep-alive stream, batch) ----------------------------------------
    def _heartbeat_call(self, request, owner_of, client=None):
        """The heartbeat.lua call for one request. Returns (ref, awaitable): a future of the
        call coalesced with concurrent heartbeats into one pipeline (coalesce.py), or a
        coroutine on the embedded store or when `client` (a pipeline) is given."""
        ref = validation.agent_ref(request.agent_id)
        owner = owner_of(ref.namespace)
        status = validation.status(request.status)
        has_telemetry = request.HasField("telemetry")
        telemetry = (validation.telemetry(request.telemetry) if has_telemetry
                     else ("0", "0", "0", "0"))
        if len(request.ack_notification_ids) > validation.MAX_ACKS:
            raise InvalidArgument(f"ack_notification_ids: at most {validation.MAX_ACKS}")
        for nid in request.ack_notification_ids:
            validation.stream_id(nid, "ack_notification_ids")
        k, name = ref.keys, ref.name
        keys = (k.log, k.deadlines, k.agent(name), k.lease(name), k.inbox(name))
        args = (k.prefix, name, *self._hb_static, status, "1" if has_telemetry else "0",
                *telemetry, *self._thresholds, owner, MAX_NOTIFICATIONS_PER_HEARTBEAT,
                self._quiet, *request.ack_notification_ids)
        if client is None and self._hb_pipeline is not None:
            return ref, self._hb_pipeline.call(keys, args)
        return ref, self.scripts.heartbeat(keys=keys, args=args, client=client)

    def _heartbeat_reply(self, ref: AgentRef, reply) -> pb.HeartbeatResponse:
        status, deadline, *pending = reply
        return pb.HeartbeatResponse(
            agent_id=ref.agent_id, status=int(status), expires_at_unix_ms=int(deadline),
            notifications=[convert.notification(ref.agent_id, n) for n in pending])

    def _owner_checker(self, context):
        return lambda ns: self.auth.check(context, Scope.AGENT, ns)

    @errors.unary("heartbeat", on_unavailable=_redis_down)
    async def Heartbeat(self, request, context):
        ref, call = self._heartbeat_call(request, self._owner_checker(context))
        return self._heartbeat_reply(ref, await call)

    @errors.streaming("heartbeat_stream")
    async def HeartbeatStream(self, request_iterator, context):
        """One heartbeat at a time per stream, replies in request order; concurrent streams
        share the heartbeat pipeline. (Reading a stream ahead to run several of its heartbeats
        at once cost more CPU per heartbeat than it saved: see benchmarks/RESULTS.md.)"""
        owner_of = self._owner_checker(context)
        async for request in request_iterator:
            yield await self._heartbeat_item(request, owner_of)

    async def _heartbeat_item(self, request, owner_of) -> pb.HeartbeatResponse:
        """One heartbeat whose failure is reported in the response instead of the call."""
        start = time.perf_counter()
        try:
            ref, call = self._heartbeat_call(request, owner_of)
            reply = self._heartbeat_reply(ref, await call)
        except Exception as exc:  # noqa: BLE001 - reported per item
            return _failed_heartbeat(request, exc)
        errors.metrics.observe("heartbeat", "ok", time.perf_counter() - start)
        return reply

    @errors.unary("heartbeat_batch", on_unavailable=_redis_down)
    async def HeartbeatBatch(self, request, context):
        if len(request.heartbeats) > validation.MAX_BATCH:
            raise InvalidArgument(f"heartbeats: {len(request.heartbeats)} given, "
                                  f"at most {validation.MAX_BATCH}")
        owner_of = self._owner_checker(context)
        results: list[pb.HeartbeatResponse | None] = [None] * len(request.heartbeats)
        queued, calls = [], []
        # On Redis the calls join the heartbeat pipeline (one write per few hundred items,
        # shared with concurrent heartbeats); on the embedded store, one redis-py pipeline.
        pipe = self.store.redis.pipeline(transaction=False) if self.store.embedded else None
        for i, hb in enumerate(request.heartbeats):
            try:
                ref, call = self._heartbeat_call(hb, owner_of, client=pipe)
                if pipe is not None:
                    await call  # queues the command on the pipeline
                queued.append((i, ref))
                calls.append(call)
            except Exception as exc:  # noqa: BLE001
                results[i] = _failed_heartbeat(hb, exc)
        if pipe is not None:
            async with pipe:
                replies = await pipe.execute(raise_on_error=False) if queued else []
        else:
            replies = []
            for call in calls:  # every future is awaited, so none leaves an unread error
                try:
                    replies.append(await call)
                except Exception as exc:  # noqa: BLE001
                    replies.append(exc)
        down, ok = None, 0
        for (i, ref), reply in zip(queued, replies):
            if isinstance(reply, Exception):
                if isinstance(reply, errors.REDIS_DOWN):
                    down = reply
                    continue
                results[i] = _failed_heartbeat(request.heartbeats[i], reply)
            else:
                results[i] = self._heartbeat_reply(ref, reply)
                ok += 1
        if down is not None:
            raise down
        # Counted once per call; the latency is the call's ("heartbeat_batch").
        errors.metrics.HEARTBEAT.labels("ok").inc(ok)
        return pb.HeartbeatBatchResponse(results=results)

    # -- Deregister / Evict -----------------------------------------------------------------
    def _deregister_call(self, ref: AgentRef, event: str, reason: str, owner: str, client=None):
        k, name = ref.keys, ref.name
        return self.scripts.deregister(
            keys=[k.log, k.deadlines, k.agent(name)],
            args=[k.prefix, name, self.settings.log_max_events, event, reason, owner],
            client=client)

    @errors.unary("deregister", on_unavailable=_redis_down)
    async def Deregister(self, request, context):
        ref = validation.agent_ref(request.agent_id)
        owner = self.auth.check(context, Scope.AGENT, ref.namespace)
        removed = await self._deregister_call(ref, "deregistered", "", owner)
        if removed == LAST_AGENT_REMOVED:
            await self.store.forget_if_empty(ref.namespace)
        return pb.DeregisterResponse(removed=bool(removed))

    @errors.unary("evict", on_unavailable=_redis_down)
    async def EvictAgents(self, request, context):
        if not request.agent_ids:
            raise InvalidArgument("agent_ids: at least one is required")
        if len(request.agent_ids) > validation.MAX_EVICT_IDS:
            raise InvalidArgument(f"agent_ids: at most {validation.MAX_EVICT_IDS} per call")
        if len(request.reason) > MAX_REASON_LEN:
            raise InvalidArgument(f"reason: longer than {MAX_REASON_LEN} characters")
        refs = [validation.agent_ref(a, field=f"agent_ids[{i}]")
                for i, a in enumerate(request.agent_ids)]
        for ns in {r.namespace for r in refs}:
            self.auth.check(context, Scope.OPERATOR, ns)
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for ref in refs:
                await self._deregister_call(ref, "evicted", request.reason, "", client=pipe)
            removed = await pipe.execute()
        for ns in {r.namespace for r, n in zip(refs, removed) if n == LAST_AGENT_REMOVED}:
            await self.store.forget_if_empty(ns)
        return pb.EvictResponse(evicted_ids=[r.agent_id for r, n in zip(refs, removed) if n])

    # -- Reads ------------------------------------------------------------------------------
    @errors.unary("get", on_unavailable=_redis_down)
    async def GetAgent(self, request, context):
        ref = validation.agent_ref(request.agent_id)
        self.auth.check(context, Scope.READ, ref.namespace)
        flat = await self.scripts.get(keys=[ref.keys.agent(ref.name)])
        if not flat:
            raise RpcError(grpc.StatusCode.NOT_FOUND,
                           f"agent_id: {ref.agent_id} is not registered or has expired")
        return pb.GetAgentResponse(agent=convert.from_flat(ref.namespace, ref.name, flat))

    @errors.unary("discover", on_unavailable=_redis_down)
    async def DiscoverAgents(self, request, context):
        caps = validation.capabilities(request.capabilities)
        filters = validation.filters(request.filters)
        wanted = validation.bounded_count(request.max_results, "max_results",
                                          validation.DEFAULT_MAX_RESULTS,
                                          validation.MAX_MAX_RESULTS)
        balanced = validation.selection(request.selection) == pb.BALANCED
        if request.namespace and filters.namespace and request.namespace != filters.namespace:
            raise InvalidArgument("namespace: differs from filters['namespace']")
        namespaces = await self._readable_namespaces(context, request.namespace or filters.namespace)
        if len(namespaces) > 1 and caps:
            namespaces = await self._namespaces_with(namespaces, caps[0])
        if balanced:
            agents = await self._discover_balanced(namespaces, caps, filters.as_json(), wanted)
        else:
            found = []
            for ns in namespaces:
                found += await self._discover_in(ns, caps, filters.as_json(), wanted)
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
            found += await self._discover_in(ns, caps, filters_json, balance.window(wanted),
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

    async def _namespaces_with(self, namespaces: list[str], capability: str) -> list[str]:
        """Those of `namespaces` with an agent having `capability`: one pipelined ZCARD each,
        one round trip, so a Discover across namespaces runs its script only where it can
        find something."""
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for ns in namespaces:
                pipe.zcard(keys.namespace(ns).capability(capability))
            counts = await pipe.execute()
        return [ns for ns, n in zip(namespaces, counts) if n]

    async def _discover_in(self, ns: str, caps: list[str], filters_json: str, wanted: int,
                           origin: float = 0.0, runs: int = 1):
        """(score, AgentInfo) of `wanted` matches in one namespace, in bounded calls: the best,
        or the first of each of `runs` segments of the health order rotated to `origin` (0..1)
        (see discover.lua)."""
        k = validation.AgentRef(ns, "_").keys
        zsets = [k.capability(c) for c in caps] or [k.health]
        found, seen = [], set()
        offsets, driver = [0] * runs, 0
        while len(found) < wanted and any(o >= 0 for o in offsets):
            active = sum(o >= 0 for o in offsets)
            need = -(-(wanted - len(found)) // active)  # per run still walking
            reply = await self.scripts.discover(
                keys=zsets, args=[k.prefix, min(need, DISCOVER_BATCH), ",".join(map(str, offsets)),
                                  DISCOVER_BUDGET, driver, filters_json, repr(origin), runs])
            offsets, driver = [int(o) for o in str(reply[0]).split(",")], int(reply[1])
            # Calls see the index at different moments: an agent re-scored in between may
            # show up twice.
            for score, name, flat in zip(reply[2::3], reply[3::3], reply[4::3]):
                if name not in seen:
                    seen.add(name)
                    found.append((float(score), convert.from_flat(ns, name, flat)))
        return found

    @errors.unary("list", on_unavailable=_redis_down)
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
        current, after = _decode_page_token(request.page_token, types)
        k = validation.AgentRef(ns, "_").keys
        cap_key = k.capability(capability) if capability else ""
        agents, budget = [], page_size
        while budget > 0 and current is not None:
            last, examined, *matches = await self.scripts.list(
                keys=[k.agent_type(current)],
                args=[k.prefix, after, budget, filters.as_json(), cap_key])
            agents += [convert.from_flat(ns, name, flat)
                       for name, flat in zip(matches[::2], matches[1::2])]
            budget -= int(examined)
            if last:
                after = last
            else:  # this type is exhausted: go on with the next one
                later = [t for t in types if t > current]
                current, after = (later[0] if later else None), ""
        token = _encode_page_token(current, after) if current is not None else ""
        return pb.ListAgentsResponse(agents=agents, next_page_token=token)

    @errors.unary("stats", on_unavailable=_redis_down)
    async def GetStats(self, request, context):
        result = []
        for ns in await self._readable_namespaces(context, request.namespace):
            k = validation.AgentRef(ns, "_").keys
            total, counts, revision = await self.scripts.stats(keys=[k.counts, k.health, k.log])
            counts = convert.record(counts)
            result.append(pb.NamespaceStats(
                namespace=ns, agents=int(total), revision=revision,
                by_type={validation.AGENT_TYPES[t]: int(counts.get(f"t:{t}", 0))
                         for t in validation.AGENT_TYPES},
                by_status={validation.STATUSES[s]: int(counts.get(f"s:{s}", 0))
                           for s in validation.STATUSES}))
        return pb.StatsResponse(namespaces=result)

    # -- Notify and Watch -------------------------------------------------------------------
    @errors.unary("notify", on_unavailable=_redis_down)
    async def NotifyAgent(self, request, context):
        ref = validation.agent_ref(request.agent_id)
        self.auth.check(context, Scope.OPERATOR, ref.namespace)
        if not request.kind or len(request.kind) > validation.MAX_NOTIFY_KIND_LEN:
            raise InvalidArgument(f"kind: required, at most {validation.MAX_NOTIFY_KIND_LEN} "
                                  "characters")
        size = len(request.payload.encode())
        if size > validation.MAX_NOTIFY_PAYLOAD_BYTES:
            raise InvalidArgument(f"payload: {size} bytes, at most "
                                  f"{validation.MAX_NOTIFY_PAYLOAD_BYTES}")
        k, name = ref.keys, ref.name
        nid = await self.scripts.notify(
            keys=[k.log, k.agent(name), k.inbox(name)],
            args=[k.prefix, name, self.settings.log_max_events, request.kind, request.payload,
                  self.settings.inbox_capacity])
        return pb.NotifyResponse(notification_id=nid)

    @errors.streaming("watch")
    async def WatchAgents(self, request, context):
        # watching one agent by its full id needs no namespace field
        ns = (validation.agent_ref(request.agent_id, request.namespace).namespace
              if request.agent_id else validation.namespace(request.namespace))
        self.auth.check(context, Scope.READ, ns)
        async for event in self.watches.watch(ns, request, context):
            yield event


def _failed_heartbeat(request, exc: Exception) -> pb.HeartbeatResponse:
    code, message = errors.status_of(exc)
    errors.metrics.observe("heartbeat", errors.outcome_of(code), 0.0)
    return pb.HeartbeatResponse(agent_id=request.agent_id, error_code=code.value[0],
                                error_message=message)


def _encode_page_token(agent_type: int, after: str) -> str:
    raw = json.dumps([agent_type, after], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_page_token(token: str, types: list[int]) -> tuple[int, str]:
    """Only a token this server could have written: an int type (not True, not 1.0: both
    equal 1 in Python) among `types`, a valid agent name or "", in the canonical encoding."""
    if not token:
        return types[0], ""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        agent_type, after = json.loads(raw)
        if (type(agent_type) is int and agent_type in types and isinstance(after, str)
                and (after == "" or validation.agent_name(after, "page_token"))
                and _encode_page_token(agent_type, after) == token):
            return agent_type, after
    except (ValueError, TypeError, binascii.Error):
        pass
    raise InvalidArgument("page_token: not a token from a previous ListAgents reply with the "
                          "same agent_type")
