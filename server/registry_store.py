"""The storage gateway: one typed method per Lua script, the only place that builds their KEYS
and ARGV (names from keys.py) and decodes their replies (convert.py).

Script -> method: register.lua -> register, heartbeat.lua -> heartbeat/heartbeats,
deregister.lua -> deregister/evict, get.lua -> get, discover.lua -> discover (in bounded calls
of discover_page), list.lua -> list_page, notify.lua -> notify, stats.lua -> stats, reap.lua ->
reap, due.lua -> due.
It also owns the heartbeat coalescer, the one difference of the embedded store (no socket to
pipeline on) and MIN_REPLICA_ACKS (`replicated`: WAIT after the write, on its connection). Keys
outside the namespaces' hash tags are Store's.

Every script is safe to resend (redis-py resends a command whose reply a dropped connection
lost, e.g. across a failover): register, heartbeat, deregister and reap find their own first
attempt's effect; the reads write nothing; notify is the one exception: a resent call may put
the message in the inbox twice (at-least-once delivery, as its header says).
"""
from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass

from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from redis.exceptions import NoScriptError

from . import convert, keys
from .coalesce import ClusterHeartbeatPipeline, HeartbeatPipeline, pack_command, send_pipelined
from .config import Settings
from .errors import NotReplicated
from .keys import AGENT_CARD_ARG
from .scripts import Scripts
from .store import Store
from .validation import AGENT_TYPES, STATUSES, AgentRef, AgentSpec, Beat

MAX_NOTIFICATIONS_PER_HEARTBEAT = 16
# Bounds on one discover.lua call, so a large or selective Discover never holds Redis for long
# (about 1 ms): candidates examined (~0.4 us each) and records returned (~7 us each).
DISCOVER_BUDGET = 1500
DISCOVER_BATCH = 50
LAST_AGENT_REMOVED = 2   # deregister.lua: the namespace has no agent left
NO_TELEMETRY = ("0", "0", "0", "0")
# MIN_REPLICA_ACKS: how long a write waits for its replicas (well within the 5 s socket timeout)
REPLICA_ACK_TIMEOUT_MS = 1000


def outage_quiet_ms(settings: Settings) -> int:
    """Silence (ms) in a namespace that counts as a registry outage, 0 = protection off. A
    running registry works in every namespace with agents at least every half timeout plus a
    sweep interval, so a heartbeat timeout plus a sweep interval leaves half a timeout spare."""
    if not settings.outage_protection:
        return 0
    return settings.heartbeat_timeout_ms + int(settings.sweep_interval * 1000)


@dataclass(frozen=True)
class Reaped:
    reaped: int
    moved: int
    earliest_ms: int    # earliest deadline left, -1 when the namespace has no agents
    now_ms: int         # Redis's clock
    outage_ms: int      # an outage recorded by this call, 0 = none


@dataclass(frozen=True)
class ListPage:
    last: str            # last name examined, "" when the type has no more
    examined: int
    agents: list[pb.AgentInfo]


@dataclass(frozen=True)
class DiscoverPage:
    offsets: list[int]   # per run, -1 = run done
    driver: int
    found: list[tuple[float, pb.AgentInfo]]


class RegistryStore:
    def __init__(self, settings: Settings, store: Store):
        self.store = store
        self.redis = store.redis
        self.scripts = Scripts(store.redis)
        self._timeout = str(settings.heartbeat_timeout_ms)
        self._maxlen = str(settings.log_max_events)
        self._thresholds = (repr(settings.unhealthy_below), repr(settings.degraded_below))
        self._quiet = str(outage_quiet_ms(settings))
        self._inbox_capacity = str(settings.inbox_capacity)
        self._min_acks = settings.min_replica_acks
        # real Redis only: the embedded store has no socket to pipeline on
        self._pipeline = None
        if store.cluster:  # one pipeline per primary
            self._pipeline = ClusterHeartbeatPipeline(store.redis, self.scripts.heartbeat)
        elif not store.embedded:
            self._pipeline = HeartbeatPipeline(store.redis, self.scripts.heartbeat)

    # -- writes -----------------------------------------------------------------------------
    async def register(self, ref: AgentRef, spec: AgentSpec, owner: str) -> pb.AgentInfo:
        k, name = keys.namespace(ref.namespace), ref.name
        args = [k.prefix, name, self._timeout, self._maxlen, spec.agent_type, spec.status,
                ",".join(spec.capabilities), spec.endpoint, spec.cluster, spec.version, owner,
                self._quiet]
        for key, value in spec.metadata.items():
            args += (key, value)
        if spec.card_json:
            args += (AGENT_CARD_ARG, spec.card_json)
        _, flat, first = await self._write(self.scripts.register, k.agent_script_keys(name),
                                           args)
        agent = convert.from_flat(ref.namespace, name, flat)
        if first:  # the namespace's first or soonest lease: keys in other slots, after it
            await self.store.agent_created(ref.namespace, agent.expires_at_unix_ms)
        return agent

    def _heartbeat_command(self, beat: Beat, owner: str):
        k, name = keys.namespace(beat.ref.namespace), beat.ref.name
        measured = beat.telemetry
        return (k.agent_script_keys(name),
                (k.prefix, name, self._timeout, self._maxlen, beat.status,
                 "0" if measured is None else "1", *(measured or NO_TELEMETRY), *self._thresholds,
                 owner, MAX_NOTIFICATIONS_PER_HEARTBEAT, self._quiet, *beat.acks))

    @staticmethod
    def _heartbeat_reply(ref: AgentRef, reply) -> pb.HeartbeatResponse:
        status, deadline, *pending = reply
        return pb.HeartbeatResponse(
            agent_id=ref.agent_id, status=int(status), expires_at_unix_ms=int(deadline),
            notifications=[convert.notification(ref.agent_id, n) for n in pending])

    async def heartbeat(self, beat: Beat, owner: str) -> pb.HeartbeatResponse:
        """One heartbeat; on Redis it joins concurrent ones in one pipelined write."""
        keys_, args = self._heartbeat_command(beat, owner)
        if self._pipeline is not None:
            reply = await self._pipeline.call(keys_, args)
        else:
            reply = await self.scripts.heartbeat(keys=keys_, args=args)
        return self._heartbeat_reply(beat.ref, reply)

    async def heartbeats(self, beats: list[tuple[Beat, str]]) -> list:
        """Many (beat, owner); per beat a HeartbeatResponse, or the exception of its call. On
        Redis the calls join the heartbeat pipeline (one write per few hundred, shared with
        concurrent heartbeats); on the embedded store, one redis-py pipeline."""
        commands = [self._heartbeat_command(beat, owner) for beat, owner in beats]
        if self._pipeline is not None:
            replies = []
            for future in [self._pipeline.call(keys_, args) for keys_, args in commands]:
                try:  # every future is awaited, so none leaves an unread error
                    replies.append(await future)
                except Exception as exc:  # noqa: BLE001 - reported per beat
                    replies.append(exc)
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys_, args in commands:
                    await self.scripts.heartbeat(keys=keys_, args=args, client=pipe)
                replies = await pipe.execute(raise_on_error=False) if commands else []
        return [reply if isinstance(reply, BaseException)
                else self._heartbeat_reply(beat.ref, reply)
                for (beat, _), reply in zip(beats, replies)]

    def _deregister_call(self, ref: AgentRef, event: str, reason: str, owner: str):
        k, name = keys.namespace(ref.namespace), ref.name
        return (self.scripts.deregister, k.agent_script_keys(name),
                [k.prefix, name, self._maxlen, event, reason, owner])

    async def deregister(self, ref: AgentRef, owner: str) -> bool:
        removed = await self._write(*self._deregister_call(ref, "deregistered", "", owner))
        if removed == LAST_AGENT_REMOVED:
            await self.store.forget_if_empty(ref.namespace)
        return bool(removed)

    async def evict(self, refs: list[AgentRef], reason: str) -> list[AgentRef]:
        """The agents of `refs` that were live and are now removed, in one round trip (on
        Redis Cluster, concurrent calls: redis-py 8.1 pipelines no EVALSHA there)."""
        calls = [self._deregister_call(ref, "evicted", reason, "") for ref in refs]
        if self._min_acks:
            removed = await self.replicated(calls)
        elif self.store.cluster:
            removed = await asyncio.gather(*(script(keys=keys_, args=args)
                                             for script, keys_, args in calls))
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for script, keys_, args in calls:
                    await script(keys=keys_, args=args, client=pipe)
                removed = await pipe.execute()
        for ns in {r.namespace for r, n in zip(refs, removed) if n == LAST_AGENT_REMOVED}:
            await self.store.forget_if_empty(ns)
        return [r for r, n in zip(refs, removed) if n]

    async def notify(self, ref: AgentRef, kind: str, payload: str) -> str:
        k, name = keys.namespace(ref.namespace), ref.name
        return await self._write(
            self.scripts.notify, k.agent_script_keys(name),
            [k.prefix, name, self._maxlen, kind, payload, self._inbox_capacity])

    async def _write(self, script, keys_: list[str], args: list):
        """One write script; with MIN_REPLICA_ACKS it answers once replicas have the write."""
        if not self._min_acks:
            return await script(keys=keys_, args=args)
        return (await self.replicated([(script, keys_, args)]))[0]

    async def replicated(self, calls: list[tuple], acks: int = 0,
                         timeout_ms: int = REPLICA_ACK_TIMEOUT_MS) -> list:
        """Runs the script calls [(script, keys, args)] pipelined on one connection, then
        `WAIT acks timeout_ms` (default MIN_REPLICA_ACKS) on that same connection: WAIT counts
        the replicas that acknowledged everything this connection wrote, and the replication
        stream is ordered, so that covers every call. Returns the scripts' replies; raises the
        first script error, or NotReplicated saying how many replicas acknowledged (the write
        stands on the primary). A script Redis lacks (NOSCRIPT: a promoted replica has an empty
        script cache) is loaded and that call alone sent again. Limit: a resent call that finds
        its work done (deregister of an agent already gone) writes nothing, and WAIT on a
        connection without writes counts the replicas connected, not those holding the first
        attempt's write."""
        acks = acks or self._min_acks
        replies: list = [None] * len(calls)
        acked: list = []
        for send, todo in self._write_connections(calls):
            for attempt in range(2):
                *got, waited = await send([calls[i] for i in todo], acks, timeout_ms)
                acked.append(waited)
                for i, reply in zip(todo, got):
                    replies[i] = reply
                todo = [i for i in todo if isinstance(replies[i], NoScriptError)]
                if not todo or attempt:
                    break
                for script in {calls[i][0].sha: calls[i][0] for i in todo}.values():
                    await self.redis.script_load(script.script)  # Cluster: on every primary
        for reply in (*replies, *acked):
            if isinstance(reply, Exception):
                raise reply
        if min(map(int, acked)) < acks:
            raise NotReplicated(min(map(int, acked)), acks, timeout_ms)
        return replies

    def _write_connections(self, calls: list[tuple]) -> list[tuple]:
        """[(send, indexes of the calls it takes)]: one Redis, one pipeline. Redis Cluster: one
        per primary of the calls' slots, since WAIT counts what its own connection wrote and
        redis-py 8.1's cluster pipeline takes no EVALSHA."""
        if not self.store.cluster:
            return [(self._send_pipelined, list(range(len(calls))))]
        by_node: dict[str, tuple] = {}
        for i, (_, keys_, _) in enumerate(calls):
            node = self.redis.get_node_from_key(keys_[0])
            by_node.setdefault(node.name, (functools.partial(self._send_on_node, node), []))
            by_node[node.name][1].append(i)
        return list(by_node.values())

    async def _send_pipelined(self, calls: list[tuple], acks: int, timeout_ms: int) -> list:
        async with self.redis.pipeline(transaction=False) as pipe:
            for script, keys_, args in calls:
                pipe.evalsha(script.sha, len(keys_), *keys_, *args)
            pipe.execute_command("WAIT", acks, timeout_ms)
            return await pipe.execute(raise_on_error=False)

    @staticmethod
    async def _send_on_node(node, calls: list[tuple], acks: int, timeout_ms: int) -> list:
        """On one connection of redis-py's own pool for that cluster node. A slot that moved
        meanwhile answers MOVED: UNAVAILABLE, and the caller's resend goes to the new owner."""
        commands = [pack_command(("EVALSHA", script.sha, len(keys_), *keys_, *args))
                    for script, keys_, args in calls]
        connection = node.acquire_connection()
        try:
            return await send_pipelined(
                connection, [*commands, pack_command(("WAIT", acks, timeout_ms))])
        finally:
            node.release(connection)

    # -- reads ------------------------------------------------------------------------------
    async def get(self, ref: AgentRef) -> pb.AgentInfo | None:
        flat = await self.scripts.get(keys=[keys.namespace(ref.namespace).agent(ref.name)])
        return convert.from_flat(ref.namespace, ref.name, flat) if flat else None

    async def discover(self, ns: str, caps: list[str], filters_json: str, wanted: int,
                       origin: float = 0.0, runs: int = 1) -> list[tuple[float, pb.AgentInfo]]:
        """(score, AgentInfo) of `wanted` matches in one namespace, in bounded calls: the best,
        or the first of each of `runs` segments of the health order rotated to `origin` (0..1)
        (see discover.lua)."""
        found, seen = [], set()
        offsets, driver = [0] * runs, 0
        while len(found) < wanted and any(o >= 0 for o in offsets):
            active = sum(o >= 0 for o in offsets)
            need = -(-(wanted - len(found)) // active)  # per run still walking
            page = await self.discover_page(ns, caps, filters_json, min(need, DISCOVER_BATCH),
                                            offsets, driver, DISCOVER_BUDGET, origin, runs)
            offsets, driver = page.offsets, page.driver
            # Calls see the index at different moments: an agent re-scored in between may
            # show up twice.
            for score, agent in page.found:
                if agent.agent_id not in seen:
                    seen.add(agent.agent_id)
                    found.append((score, agent))
        return found

    async def discover_page(self, ns: str, caps: list[str], filters_json: str, wanted: int,
                            offsets: list[int], driver: int, budget: int, origin: float,
                            runs: int) -> DiscoverPage:
        """One bounded discover.lua call (see its header for offsets, driver and runs)."""
        k = keys.namespace(ns)
        reply = await self.scripts.discover(
            keys=[k.capability(c) for c in caps] or [k.health],
            args=[k.prefix, wanted, ",".join(map(str, offsets)), budget, driver, filters_json,
                  repr(origin), runs])
        return DiscoverPage(
            [int(o) for o in str(reply[0]).split(",")], int(reply[1]),
            [(float(score), convert.from_flat(ns, name, flat))
             for score, name, flat in zip(reply[2::3], reply[3::3], reply[4::3])])

    async def list_page(self, ns: str, agent_type: int, after: str, count: int,
                        filters_json: str, capability: str = "") -> ListPage:
        """Up to `count` agents of one type examined, by name after `after`."""
        k = keys.namespace(ns)
        last, examined, *matches = await self.scripts.list(
            keys=[k.agent_type(agent_type), *([k.capability(capability)] if capability else [])],
            args=[k.prefix, after, count, filters_json])
        return ListPage(last, int(examined), [convert.from_flat(ns, name, flat)
                                              for name, flat in zip(matches[::2], matches[1::2])])

    async def stats(self, ns: str) -> pb.NamespaceStats:
        k = keys.namespace(ns)
        total, counts, revision = await self.scripts.stats(keys=[k.counts, k.health, k.log])
        counts = convert.record(counts)
        return pb.NamespaceStats(
            namespace=ns, agents=int(total), revision=revision,
            by_type={AGENT_TYPES[t]: int(counts.get(keys.type_count(t), 0)) for t in AGENT_TYPES},
            by_status={STATUSES[s]: int(counts.get(keys.status_count(s), 0)) for s in STATUSES})

    async def namespaces_with(self, namespaces: list[str], capability: str) -> list[str]:
        """Those of `namespaces` with an agent having `capability`: one pipelined ZCARD each,
        one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for ns in namespaces:
                pipe.zcard(keys.namespace(ns).capability(capability))
            counts = await pipe.execute()
        return [ns for ns, n in zip(namespaces, counts) if n]

    async def agent_counts(self, namespaces: list[str]) -> list[tuple[int, dict[str, int]]]:
        """Agents in each namespace, in all and by status name, one pipelined round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for ns in namespaces:
                pipe.zcard(keys.namespace(ns).health)
                pipe.hgetall(keys.namespace(ns).counts)
            replies = await pipe.execute()
        return [(int(total), {STATUSES[s]: int(counts.get(keys.status_count(s), 0))
                              for s in STATUSES})
                for total, counts in zip(replies[::2], replies[1::2])]

    # -- expiry -----------------------------------------------------------------------------
    async def reap(self, ns: str, name: str, limit: int) -> Reaped:
        """Reaps up to `limit` agents past their deadline (only `name`, if given)."""
        k = keys.namespace(ns)
        return Reaped(*(int(x) for x in await self.scripts.reap(
            keys=k.agent_script_keys(name) if name else k.script_keys,
            args=[k.prefix, self._maxlen, limit, name, self._quiet])))

    async def due(self, limit: int) -> list[str]:
        """Up to `limit` namespaces whose earliest deadline has come, by Redis's clock."""
        return await self.scripts.due(keys=[keys.DUE], args=[limit])
