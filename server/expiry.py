"""Expiry: reaps agents whose lease deadline has passed, logging one EXPIRED event each.

Two triggers run reap.lua: Redis's `expired` keyspace events for lease keys (fast, but late:
Redis emits one only when it deletes the key, on access or in its sampling expire cycle; and
lossy: pub/sub drops it while no one is subscribed, replicas never emit it), and a sweeper
every SWEEP_INTERVAL seconds (the safety net that catches everything). reap.lua checks the
deadline itself, so any number of processes and triggers may race: each agent expires exactly
once.

The sweeper does not visit every namespace: a schedule (keys.DUE) holds, per namespace with
agents, a lower bound of its earliest deadline, and each pass visits only the namespaces due.
A visit reschedules the namespace at its earliest deadline, or half a timeout later at most
(each visit marks the registry active there, see OUTAGE below), and forgets an empty one.

Registry outages (README "No mass expiry after a registry outage"): a namespace in which no
registry process worked for longer than `outage_quiet_ms` had an outage; deadlines that fell
inside it are moved forward by its length once, instead of being reaped. reap.lua decides, so
keyspace events arriving on return cannot reap them either.
"""
from __future__ import annotations

import asyncio
import logging

from . import keys, metrics, redis_cluster
from .config import Settings
from .errors import REDIS_DOWN
from .registry_store import Reaped, RegistryStore
from .store import Store
from .tasks import cancel_tasks

log = logging.getLogger("service_registry")

REAP_BATCH = 200          # agents per reap.lua call: bounds each call's Redis time
DUE_BATCH = 500           # namespaces read from the schedule at once
SUBSCRIBE_RETRY = 1.0
SUBSCRIBE_WAIT = 5.0      # start waits this long for the `expired` subscription
TOPOLOGY_CHECK = 5.0      # Redis Cluster: seconds between looks at which nodes are primaries
EXPIRED_CHANNEL = "__keyevent@*__:expired"


class Reaper:
    def __init__(self, settings: Settings, store: Store, registry: RegistryStore):
        self.settings = settings
        self.store = store
        self.registry = registry
        self._tasks: list[asyncio.Task] = []
        self.revisit_ms = settings.heartbeat_timeout_ms // 2
        self._seeded = False
        self._listening = asyncio.Event()
        self._listener: asyncio.Task | None = None
        store.on_failover(self._primary_moved)

    async def start(self, listen: bool, wait: bool = True) -> None:
        """Starts the sweeper and, if `listen`, the event listener; with `wait` (Redis is up),
        returns once it is subscribed (bounded): a lease that runs out just after start is then
        reaped by its event, not left for the next sweep."""
        self._tasks.append(asyncio.create_task(self._sweep_forever(), name="expiry-sweeper"))
        if not listen:
            return
        self._listener = asyncio.create_task(self._listen_forever(), name="expiry-events")
        self._tasks.append(self._listener)
        if not wait:
            return
        try:
            await asyncio.wait_for(self._listening.wait(), SUBSCRIBE_WAIT)
        except asyncio.TimeoutError:
            log.warning("expiry events: not subscribed after %.0fs; the listener keeps trying "
                        "and the sweeper reaps meanwhile", SUBSCRIBE_WAIT)

    async def _primary_moved(self) -> None:
        """A failover (Store.check_reset noticed): keyspace events are emitted by the primary
        only, and their setting is per node. The listener subscribes again, at the new primary
        (which it turns the events on at), even if its old connection still stands."""
        if self._listener is None or self._listener not in self._tasks:
            return  # not listening, or stopping
        self._tasks.remove(self._listener)
        await cancel_tasks([self._listener])
        self._listener = asyncio.create_task(self._listen_forever(), name="expiry-events")
        self._tasks.append(self._listener)

    async def stop(self) -> None:
        await cancel_tasks(self._tasks)
        self._tasks.clear()

    async def reap(self, namespace: str, name: str = "") -> Reaped:
        result = await self.registry.reap(namespace, name, REAP_BATCH)
        if result.outage_ms:
            metrics.OUTAGES.labels(namespace).inc()
            log.warning("namespace %s: no registry process worked here for %.1fs (a registry "
                        "outage); lease deadlines inside it move forward by that much, once, "
                        "instead of expiring", namespace, result.outage_ms / 1000)
        if result.moved:
            metrics.OUTAGE_MOVED.labels(namespace).inc(result.moved)
            log.info("namespace %s: %d lease deadline(s) inside the registry outage moved "
                     "forward instead of expiring", namespace, result.moved)
        return result

    async def sweep(self) -> int:
        """One pass over the namespaces due; returns the number of agents reaped."""
        await self.store.check_reset()
        await self.store.schedule_missed()
        if not self._seeded:  # once per process: stores written by older versions too
            await self.store.rebuild_namespaces()
            self._seeded = True
        total = 0
        while True:
            due = await self.registry.due(DUE_BATCH)
            for ns in due:
                total += await self._visit(ns)
            if len(due) < DUE_BATCH:
                break
        if total:
            metrics.EXPIRED.labels("sweeper").inc(total)
        return total

    async def _visit(self, namespace: str) -> int:
        total = 0
        while True:
            result = await self.reap(namespace)
            total += result.reaped
            if result.reaped + result.moved < REAP_BATCH:
                break
        if result.earliest_ms < 0:
            await self.store.forget_if_empty(namespace)
        else:
            await self.store.schedule(namespace, min(result.earliest_ms,
                                                     result.now_ms + self.revisit_ms))
        return total

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except REDIS_DOWN:
                pass  # health reports the outage; the next pass catches up
            except Exception:
                log.exception("expiry sweep failed")
            await asyncio.sleep(self.settings.sweep_interval)

    async def _on_expired(self, message) -> None:
        parsed = keys.parse_lease_key(message.get("data") or "")
        if parsed and (await self.reap(*parsed)).reaped:
            metrics.EXPIRED.labels("keyspace_event").inc()

    async def _listen_forever(self) -> None:
        """Reaps on `expired` events for lease keys; resubscribes after Redis comes back."""
        if self.store.cluster:
            await self._listen_cluster_forever()
            return
        while True:
            client = self.store.client(socket_timeout=None)
            try:
                await self.store.enable_expiry_events()
                pubsub = client.pubsub()
                await pubsub.psubscribe(EXPIRED_CHANNEL)
                async for message in pubsub.listen():
                    if message["type"] == "psubscribe":  # Redis confirmed: events flow now
                        self._listening.set()
                        continue
                    await self._on_expired(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.debug("expiry event listener: %s; resubscribing", exc)
            finally:
                self._listening.clear()
                await client.aclose()
            await asyncio.sleep(SUBSCRIBE_RETRY)

    # -- Redis Cluster: events are local to each primary --------------------------------------
    async def _listen_cluster_forever(self) -> None:
        """One subscription per primary (replicas emit no events). The primaries are the ones
        redis-py's topology names; it is refreshed every TOPOLOGY_CHECK seconds and as soon as
        a subscription breaks or its node turns out not to be a primary (failover), so the
        promoted replica is subscribed within seconds. Listening is set while every primary's
        subscription is confirmed."""
        listeners: dict[str, asyncio.Task] = {}
        confirmed: set[str] = set()
        changed = asyncio.Event()
        cluster = self.store.redis
        try:
            while True:
                changed.clear()
                primaries = {node.name: node for node in cluster.get_primaries()}
                for name in set(listeners) - set(primaries):
                    listeners.pop(name).cancel()
                    confirmed.discard(name)
                for name, node in primaries.items():
                    task = listeners.get(name)
                    if task is None or task.done():
                        listeners[name] = asyncio.create_task(
                            self._listen_node(node, confirmed, changed),
                            name=f"expiry-events-{name}")
                if primaries and confirmed >= set(primaries):
                    self._listening.set()
                else:
                    self._listening.clear()
                try:
                    await asyncio.wait_for(changed.wait(), TOPOLOGY_CHECK)
                except asyncio.TimeoutError:
                    pass
                try:  # what the cluster says now (cheap: one CLUSTER SLOTS)
                    await cluster.nodes_manager.initialize()
                except Exception as exc:  # noqa: BLE001 - next round; the sweeper meanwhile
                    log.debug("expiry events: cluster topology refresh failed: %s", exc)
        finally:
            self._listening.clear()
            await cancel_tasks(list(listeners.values()))

    async def _listen_node(self, node, confirmed: set[str], changed: asyncio.Event) -> None:
        """Subscribes to `expired` on one primary until that fails or it is no longer one."""
        client = redis_cluster.node_client(node, self.store.target, None)
        try:
            await self.store.enable_expiry_events(client)
            role = await client.execute_command("ROLE")
            if role[0] == "master":  # else demoted: the topology refresh names the new one
                pubsub = client.pubsub()
                await pubsub.psubscribe(EXPIRED_CHANNEL)
                async for message in pubsub.listen():
                    if message["type"] == "psubscribe":
                        confirmed.add(node.name)
                        changed.set()
                        continue
                    await self._on_expired(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            log.debug("expiry events on %s: %s; resubscribing", node.name, exc)
        finally:
            confirmed.discard(node.name)
            await client.aclose()
        await asyncio.sleep(SUBSCRIBE_RETRY)  # then the supervisor starts it again
        changed.set()
