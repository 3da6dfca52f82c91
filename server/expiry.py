"""Expiry: reaps agents whose lease deadline has passed, logging one EXPIRED event each.

Two triggers run reap.lua: Redis's `expired` keyspace events for lease keys (fast, but late
and lossy, see REDIS-FACTS.md), and a sweeper over each namespace's deadline zset every
SWEEP_INTERVAL seconds (the safety net that catches everything). reap.lua checks the deadline
itself, so any number of processes and triggers may race: each agent expires exactly once.
"""
from __future__ import annotations

import asyncio
import logging

from . import keys, metrics
from .config import Settings
from .errors import REDIS_DOWN
from .store import Store
from .tasks import cancel_tasks

log = logging.getLogger("service_registry")

REAP_BATCH = 200          # agents per reap.lua call: bounds each call's Redis time
SUBSCRIBE_RETRY = 1.0


class Reaper:
    def __init__(self, settings: Settings, store: Store):
        self.settings = settings
        self.store = store
        self._tasks: list[asyncio.Task] = []
        self.maxlen = str(settings.log_max_events)

    def start(self, listen: bool) -> None:
        self._tasks.append(asyncio.create_task(self._sweep_forever(), name="expiry-sweeper"))
        if listen:
            self._tasks.append(asyncio.create_task(self._listen_forever(), name="expiry-events"))

    async def stop(self) -> None:
        await cancel_tasks(self._tasks)
        self._tasks.clear()

    async def reap(self, namespace: str, name: str = "") -> int:
        k = keys.namespace(namespace)
        return int(await self.store.scripts.reap(
            keys=[k.log, k.deadlines], args=[k.prefix, self.maxlen, REAP_BATCH, name]))

    async def sweep(self) -> int:
        """One pass over every namespace; returns the number of agents reaped."""
        total = 0
        for ns in await self.store.namespaces():
            while True:
                n = await self.reap(ns)
                total += n
                if n < REAP_BATCH:
                    break
        if total:
            metrics.EXPIRED.labels("sweeper").inc(total)
        return total

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except REDIS_DOWN:
                pass  # health reports the outage; the next pass catches up
            except Exception:  # noqa: BLE001 - the sweeper must survive anything
                log.exception("expiry sweep failed")
            await asyncio.sleep(self.settings.sweep_interval)

    async def _listen_forever(self) -> None:
        """Reaps on `expired` events for lease keys; resubscribes after Redis comes back."""
        while True:
            client = self.store.client(socket_timeout=None)
            try:
                await self.store.enable_expiry_events()
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await pubsub.psubscribe("__keyevent@*__:expired")
                async for message in pubsub.listen():
                    parsed = keys.parse_lease_key(message.get("data") or "")
                    if parsed and await self.reap(*parsed):
                        metrics.EXPIRED.labels("keyspace_event").inc()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.debug("expiry event listener: %s; resubscribing", exc)
            finally:
                await client.aclose()
            await asyncio.sleep(SUBSCRIBE_RETRY)
