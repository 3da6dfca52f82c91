"""The chunked ZMSCORE walk of discover.lua: the same results whatever the per-call budget, on
real Redis and the embedded store."""
from __future__ import annotations

import random

import pytest
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

from server import registry_store

CAPS = [f"c{i}" for i in range(6)]


async def populate(stub, n=60):
    rng = random.Random(5)
    members = {}
    for i in range(n):
        caps = rng.sample(CAPS, 3)
        name = f"a{i:03d}"
        members[name] = set(caps)
        await stub.Register(pb.RegisterRequest(agent_type=pb.WORKER, agent_id=name,
                                               capabilities=caps))
        await stub.Heartbeat(pb.HeartbeatRequest(
            agent_id=f"default/{name}", telemetry=pb.AgentTelemetry(
                success_rate=rng.choice((0.91, 0.95, 0.99, 1.0)), total_executions=10,
                avg_duration_ms=rng.choice((5.0, 10.0)))))
    return members


async def discover(stub, caps, max_results):
    reply = await stub.DiscoverAgents(pb.DiscoverRequest(capabilities=caps,
                                                         max_results=max_results))
    return [a.agent_id.split("/")[1] for a in reply.agents]


@pytest.mark.parametrize("caps", [["c0"], ["c0", "c1"], ["c0", "c1", "c2"]])
async def test_tiny_budgets_give_the_same_results_as_one_call(registry, monkeypatch, caps):
    members = await populate(registry.stub)
    matching = {name for name, have in members.items() if set(caps) <= have}
    for max_results in (1, 3, 1000):
        whole = await discover(registry.stub, caps, max_results)
        assert len(whole) == min(max_results, len(matching))
        assert set(whole) <= matching
        # many calls: chunks cut by the budget, calls ending mid-chunk at their batch of results
        for budget, batch in ((1, 50), (2, 50), (7, 50), (1500, 2), (7, 3)):
            monkeypatch.setattr(registry_store, "DISCOVER_BUDGET", budget)
            monkeypatch.setattr(registry_store, "DISCOVER_BATCH", batch)
            assert await discover(registry.stub, caps, max_results) == whole, (budget, batch)
            monkeypatch.undo()
    everything = await discover(registry.stub, caps, 1000)
    assert set(everything) == matching
