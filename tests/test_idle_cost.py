"""Idle cost bounded by the work that exists (issue 11, defect 5): a namespace whose last agent
left is forgotten (namespace set, sweeper schedule, gauges), whether it left by Deregister,
EvictAgents or expiry, and a namespace with agents stays known. The CPU and commands/s figures
are a benchmark (benchmarks/namespace_spray.py), not a timed test."""
from __future__ import annotations

import asyncio

import pytest
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

from server import keys
from test_registry import register_request
from test_watch import open_watch, take_until

SPRAY = 30


async def known(registry) -> tuple[set[str], set[str]]:
    """(namespace set, namespaces on the sweeper's schedule)."""
    return (set(await registry.redis.smembers(keys.NAMESPACES)),
            set(await registry.redis.zrange(keys.DUE, 0, -1)))


async def test_namespaces_used_once_are_forgotten(registry):
    await registry.stub.Register(register_request(agent_id="stay", namespace="live"))
    for i in range(SPRAY):
        reply = await registry.stub.Register(register_request(agent_id="a", namespace=f"ns{i}"))
        if i % 2:
            await registry.stub.Deregister(pb.DeregisterRequest(agent_id=reply.agent_id))
        else:
            await registry.stub.EvictAgents(pb.EvictRequest(agent_ids=[reply.agent_id]))
    assert await known(registry) == ({"live"}, {"live"})
    stats = await registry.stub.GetStats(pb.StatsRequest())
    assert [ns.namespace for ns in stats.namespaces] == ["live"]
    # a forgotten namespace comes back with its next agent
    await registry.stub.Register(register_request(agent_id="b", namespace="ns3"))
    assert await known(registry) == ({"live", "ns3"}, {"live", "ns3"})


@pytest.mark.settings(heartbeat_timeout=0.5, sweep_interval=0.05)
async def test_a_namespace_whose_agents_expired_is_forgotten(registry):
    stream, _, _ = await open_watch(registry.stub, namespace="brief")
    await registry.stub.Register(register_request(agent_id="a", namespace="brief"))
    await take_until(stream, lambda ev: ev[-1].type == pb.EXPIRED)
    stream.cancel()
    for _ in range(100):  # the sweeper forgets it on its visit right after the reap
        if await known(registry) == (set(), set()):
            break
        await asyncio.sleep(0.05)
    assert await known(registry) == (set(), set())
    # nothing of its outage bookkeeping stays behind either
    k = keys.namespace("brief")
    assert not await registry.redis.exists(k.active, k.gap, k.deadlines)


async def test_discover_across_namespaces_finds_agents_only_where_they_are(registry):
    for ns, caps in (("n1", ["py"]), ("n2", ["go"]), ("n3", ["py", "go"])):
        await registry.stub.Register(register_request(agent_id="a", namespace=ns,
                                                      capabilities=caps))
    found = await registry.stub.DiscoverAgents(pb.DiscoverRequest(capabilities=["py", "go"]))
    assert [a.agent_id for a in found.agents] == ["n3/a"]
    found = await registry.stub.DiscoverAgents(pb.DiscoverRequest(capabilities=["go"]))
    assert sorted(a.agent_id for a in found.agents) == ["n2/a", "n3/a"]


WATCHED = 300


async def test_watches_of_many_namespaces_share_a_few_redis_connections(redis_registry):
    reg = redis_registry
    streams = [(await open_watch(reg.stub, namespace=f"w{i}"))[0] for i in range(WATCHED)]
    connections = len(await reg.redis.client_list())
    assert connections < 40, connections  # one XREAD per 256 namespaces, not one per namespace
    await asyncio.gather(*(reg.stub.Register(register_request(agent_id="a", namespace=f"w{i}"))
                           for i in range(WATCHED)))
    for i, stream in enumerate(streams):
        events = await take_until(stream, lambda ev: ev[-1].type == pb.REGISTERED)
        assert events[-1].agent.agent_id == f"w{i}/a"
        stream.cancel()
