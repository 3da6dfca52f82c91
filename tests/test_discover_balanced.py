"""BALANCED Discover (server/balance.py, the random origin of discover.lua) and the client's
Balancer, on real Redis and the embedded store."""
from __future__ import annotations

import asyncio
import random
from collections import Counter

import grpc
import pytest
from neural_hive_integration.clients.balancer import Balancer
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

from server import balance, registry_store

NOW = 10_000_000


def register(name, caps=("py",), **kw) -> pb.RegisterRequest:
    return pb.RegisterRequest(agent_type=pb.WORKER, capabilities=list(caps), agent_id=name, **kw)


async def fleet(stub, count, caps=("py",), prefix="a"):
    names = [f"{prefix}{i:03d}" for i in range(count)]
    for name in names:
        await stub.Register(register(name, caps))
    return names


async def report(stub, name, rate, avg=10.0, status=pb.AGENT_STATUS_UNSPECIFIED):
    await stub.Heartbeat(pb.HeartbeatRequest(
        agent_id=f"default/{name}", status=status,
        telemetry=pb.AgentTelemetry(success_rate=rate, avg_duration_ms=avg,
                                    total_executions=1000)))


async def picks(stub, calls, **request):
    counts = Counter()
    for _ in range(calls):
        reply = await stub.DiscoverAgents(pb.DiscoverRequest(selection=pb.BALANCED, **request))
        counts.update(a.agent_id.split("/")[1] for a in reply.agents)
    return counts


# -- the weights and the weighted sample, without a server ------------------------------------

def agent(rate=1.0, avg=10.0, executions=100, age_ms=60_000, status=pb.HEALTHY):
    return pb.AgentInfo(status=status, registered_at_unix_ms=NOW - age_ms,
                        telemetry=pb.AgentTelemetry(success_rate=rate, avg_duration_ms=avg,
                                                    total_executions=executions))


def test_weight_follows_success_rate_duration_and_status():
    w = balance.weights([agent(1.0), agent(0.5), agent(1.0, avg=30.0),
                         agent(1.0, status=pb.DEGRADED)], NOW)
    assert w[1] == pytest.approx(w[0] / 2)
    assert w[2] < w[0] / 2  # three times slower than the others
    assert w[3] == pytest.approx(w[0] / 2)


def test_new_agents_and_agents_without_telemetry_get_the_average_weight():
    measured = [agent(1.0), agent(0.5)]
    w = balance.weights(measured + [agent(0.01, age_ms=1000), agent(executions=0)], NOW)
    assert w[2] == pytest.approx((w[0] + w[1]) / 2)  # warming up: its 1% is not trusted yet
    assert w[3] == pytest.approx((w[0] + w[1]) / 2)
    assert balance.weights([agent(executions=0)], NOW) == [1.0]


def test_pick_draws_in_proportion_to_weight_without_replacement():
    rng = random.Random(7)
    agents = [agent(1.0), agent(1.0), agent(0.5), agent(0.5)]
    counts = Counter()
    for _ in range(4000):
        first, second = balance.pick(agents, 2, NOW, rng=rng)
        assert first is not second
        counts[[id(a) for a in agents].index(id(first))] += 1
    # first draw: weights 1, 1, .5, .5 -> 1/3, 1/3, 1/6, 1/6
    assert counts[0] / 4000 == pytest.approx(1 / 3, abs=0.03)
    assert counts[2] / 4000 == pytest.approx(1 / 6, abs=0.03)


# -- through the server -----------------------------------------------------------------------

async def good_and_poor(stub, count):
    """`count` agents at success rate 0.9 and `count` at 0.45, all reported HEALTHY (a
    derived status would make 0.45 UNHEALTHY, weighted down much more)."""
    good = await fleet(stub, count, prefix="g")
    poor = await fleet(stub, count, prefix="p")
    for names, rate in ((good, 0.9), (poor, 0.45)):
        for name in names:
            await report(stub, name, rate, status=pb.HEALTHY)
    return good, poor


async def test_new_agents_get_the_average_weight_while_warming_up(registry):
    """Default warm-up (30 s): freshly registered agents reporting half the success rate are
    not judged yet, so they get as many picks as the others."""
    _, poor = await good_and_poor(registry.stub, 5)
    counts = await picks(registry.stub, 400, capabilities=["py"], max_results=1)
    assert sum(counts[n] for n in poor) / 400 == pytest.approx(0.5, abs=0.1)


async def test_default_selection_stays_ranked(registry):
    await fleet(registry.stub, 5)
    for name, rate in (("a000", 0.6), ("a001", 0.99), ("a002", 0.9)):
        await report(registry.stub, name, rate)
    plain = await registry.stub.DiscoverAgents(pb.DiscoverRequest(capabilities=["py"]))
    ranked = await registry.stub.DiscoverAgents(pb.DiscoverRequest(capabilities=["py"],
                                                                   selection=pb.RANKED))
    order = [a.agent_id for a in plain.agents]
    assert order == [a.agent_id for a in ranked.agents]
    assert order[:2] == ["default/a003", "default/a004"]  # no executions yet: fully healthy
    assert order[2:] == ["default/a001", "default/a002", "default/a000"]


async def test_balanced_spreads_max_results_1_over_equal_agents(registry):
    names = await fleet(registry.stub, 20)
    counts = await picks(registry.stub, 400, capabilities=["py"], max_results=1)
    assert set(counts) == set(names)            # ranked would give one agent 400 times
    assert max(counts.values()) <= 2.5 * 400 / 20


async def test_balanced_returns_distinct_matching_agents(registry):
    await fleet(registry.stub, 30, caps=("py", "tf"))
    await fleet(registry.stub, 30, caps=("py",), prefix="p")
    for _ in range(20):
        reply = await registry.stub.DiscoverAgents(pb.DiscoverRequest(
            capabilities=["tf", "py"], max_results=5, selection=pb.BALANCED))
        ids = [a.agent_id for a in reply.agents]
        assert len(ids) == 5 == len(set(ids))
        assert all(a.agent_id.split("/")[1].startswith("a") for a in reply.agents)


@pytest.mark.settings(balance_warmup=0)
async def test_balanced_gives_less_to_agents_with_half_the_success_rate(registry):
    good, _ = await good_and_poor(registry.stub, 10)
    counts = await picks(registry.stub, 600, capabilities=["py"], max_results=1)
    share_good = sum(counts[n] for n in good) / 600
    assert share_good == pytest.approx(2 / 3, abs=0.08)


async def test_balanced_wraps_around_past_the_end_of_the_health_order(registry, monkeypatch):
    """A tiny scan budget: several script calls per Discover, and a match before the random
    origin is still found by wrapping around."""
    monkeypatch.setattr(registry_store, "DISCOVER_BUDGET", 3)
    await fleet(registry.stub, 12, prefix="n")
    await registry.stub.Register(register("rare", ("py", "rare")))
    await registry.stub.Register(register("rare2", ("py", "rare")))
    counts = await picks(registry.stub, 12, capabilities=["py", "rare"], max_results=2)
    assert counts == {"rare": 12, "rare2": 12}


async def test_balanced_respects_filters(registry):
    await fleet(registry.stub, 10)
    await registry.stub.Register(register("eu1", metadata={"zone": "eu"}))
    await registry.stub.Register(register("eu2", metadata={"zone": "eu"}))
    counts = await picks(registry.stub, 10, capabilities=["py"], filters={"zone": "eu"},
                         max_results=3)
    assert counts == {"eu1": 10, "eu2": 10}


async def test_unknown_selection_mode_is_invalid_argument(registry):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await registry.stub.DiscoverAgents(pb.DiscoverRequest(capabilities=["py"], selection=9))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "selection" in info.value.details()


async def test_client_discover_balanced(registry):
    names = await fleet(registry.stub, 10)
    seen = set()
    for _ in range(60):
        [found] = await registry.client.discover_agents(["py"], max_results=1, balanced=True)
        seen.add(found.agent_id.split("/")[1])
    assert len(seen) >= 5 and seen <= set(names)


# -- the client's Balancer --------------------------------------------------------------------

async def test_balancer_spreads_picks_and_prefers_idle_agents(registry):
    await fleet(registry.stub, 4)
    async with Balancer(registry.client, ["py"], rng=random.Random(3)) as balancer:
        counts = Counter(balancer.pick().agent_id for _ in range(400))
        assert len(counts) == 4 and max(counts.values()) < 200
        refreshes = balancer.refreshes
        async with balancer.use() as busy:
            # two random choices never pick the busy agent over an idle, equally good one
            for _ in range(50):
                assert balancer.pick().agent_id != busy.agent_id
        assert balancer.refreshes == refreshes  # picking asks the registry nothing


async def test_balancer_follows_registrations_and_departures(registry):
    await fleet(registry.stub, 2)
    async with Balancer(registry.client, ["py"], debounce=0.01) as balancer:
        assert {a.agent_id for a in balancer.agents} == {"default/a000", "default/a001"}
        await registry.stub.Register(register("late"))
        await registry.stub.Deregister(pb.DeregisterRequest(agent_id="default/a000"))
        await _until(lambda: {a.agent_id for a in balancer.agents}
                     == {"default/a001", "default/late"})


async def test_balancer_with_no_candidates_raises_lookup_error(registry):
    async with Balancer(registry.client, ["nothing"]) as balancer:
        with pytest.raises(LookupError):
            balancer.pick()


async def _until(condition, timeout=5.0):
    """Polls a condition the Balancer's background refresh makes true (no event to await)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)
