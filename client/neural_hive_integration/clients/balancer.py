"""Client-side load balancing: pick an agent per request without asking the registry.

A Balancer keeps the candidates of one Discover query (capabilities, filters, namespace) and
refreshes them when the namespace's change log says something relevant changed (a watch), and
every `refresh_interval` seconds for telemetry (heartbeats that only update telemetry log
nothing). `pick()` uses two random choices: of two random candidates, the one with fewer of
this process's requests in flight per unit of weight (the success rate the agent reports,
lowered for degraded and unhealthy agents), as Envoy's least-request balancer does. A caller
that picks on every request costs the registry nothing per request.

    async with Balancer(client, ["python"]) as balancer:
        async with balancer.use() as agent:
            await call(agent.endpoint)
"""
from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter

from ..proto_stubs import service_registry_pb2 as pb
from .service_registry_client import (AgentInfo, RegistryError, ServiceRegistryClient,
                                      WatchCompacted)

_STATUS_FACTOR = {"healthy": 1.0, "degraded": 0.5, "unhealthy": 0.05}
# Log entries that may change the candidates (PROGRESS and NOTIFICATION do not).
_CHANGES = {pb.REGISTERED, pb.UPDATED, pb.STATUS_CHANGED, pb.DEREGISTERED, pb.EXPIRED,
            pb.EVICTED}


def weight(agent: AgentInfo) -> float:
    t = agent.telemetry
    rate = t.get("success_rate", 0.0) if t.get("total_executions", 0) else 1.0
    return max(rate * _STATUS_FACTOR.get(agent.status, 0.05), 1e-3)


class Balancer:
    def __init__(self, client: ServiceRegistryClient, capabilities, *,
                 filters: dict | None = None, namespace: str = "", candidates: int = 100,
                 refresh_interval: float = 30.0, debounce: float = 0.1,
                 rng: random.Random | None = None):
        self.client = client
        self.capabilities = list(capabilities)
        self.filters = dict(filters or {})
        self.namespace = namespace or client.namespace or "default"
        self.candidates = candidates
        self.refresh_interval = refresh_interval
        self.debounce = debounce
        self.rng = rng or random.Random()
        self.agents: list[AgentInfo] = []
        self.in_flight: Counter[str] = Counter()
        self.refreshes = 0
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> "Balancer":
        """Loads the candidates and starts following changes. The revision is read before the
        first Discover and the watch resumes from it, so no change falls in between."""
        revision = await self._revision()
        await self.refresh()
        self._tasks = [asyncio.create_task(self._watch(revision)),
                       asyncio.create_task(self._refresher())]
        return self

    async def refresh(self) -> None:
        self.agents = await self.client.discover_agents(
            self.capabilities, self.filters, max_results=self.candidates,
            namespace=self.namespace)
        self.refreshes += 1

    def pick(self) -> AgentInfo:
        """Two random choices; raises LookupError when no agent matches."""
        agents = self.agents
        if not agents:
            raise LookupError("no agent matches the balancer's query")
        if len(agents) == 1:
            return agents[0]
        a, b = self.rng.sample(agents, 2)
        cost_a = (self.in_flight[a.agent_id] + 1) / weight(a)
        cost_b = (self.in_flight[b.agent_id] + 1) / weight(b)
        return a if cost_a <= cost_b else b

    @contextlib.asynccontextmanager
    async def use(self):
        """A picked agent, counted as in flight until the block ends."""
        agent = self.pick()
        self.in_flight[agent.agent_id] += 1
        try:
            yield agent
        finally:
            self.in_flight[agent.agent_id] -= 1
            if self.in_flight[agent.agent_id] <= 0:
                del self.in_flight[agent.agent_id]

    async def _revision(self) -> str:
        stats = await self.client.get_stats(self.namespace)
        return stats.namespaces[0].revision if stats.namespaces else ""

    async def _watch(self, revision: str) -> None:
        while True:
            events = self.client.watch(
                self.namespace, capability=self.capabilities[0] if self.capabilities else "",
                filters=self.filters, since_revision=revision, snapshot=False)
            try:
                async for event in events:
                    if event.type in _CHANGES:
                        self._changed.set()
                return
            except WatchCompacted:  # missed changes: refresh and follow from now
                revision = await self._revision()
                self._changed.set()

    async def _refresher(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._changed.wait(), self.refresh_interval)
                await asyncio.sleep(self.debounce)  # one refresh for a burst of changes
            except asyncio.TimeoutError:
                pass
            self._changed.clear()
            try:
                await self.refresh()
            except RegistryError:
                pass  # keep the last candidates; the next change or interval retries

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, RegistryError):
                await task
        self._tasks = []

    async def __aenter__(self) -> "Balancer":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()
