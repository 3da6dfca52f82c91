"""Expiry: EXPIRED soon after the deadline, by keyspace events or by the sweeper alone, among
many live agents, and exactly once with several server processes racing to reap."""
from __future__ import annotations

import asyncio
import collections

import grpc
import pytest
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc

from conftest import running_registry
from server import keys, metrics
from server.keys import EVENT_FIELDS as EF
from test_registry import register_request
from test_watch import open_watch, take_until

LIVE_AGENTS = 2000
DEAD_AGENTS = 50
# Lateness bounds here are loose on purpose (tests stay deterministic on a busy machine); the
# benchmark suite's expiry storm measures the real figure against HEARTBEAT_TIMEOUT + 1 s.
LATE_MS = 5000


def lateness_ms(event: pb.WatchEvent) -> int:
    """How long after its deadline an agent was reaped, both times from Redis's clock."""
    return int(event.revision.split("-")[0]) - event.agent.expires_at_unix_ms


async def register_many(stub, names, **kw) -> None:
    for chunk in range(0, len(names), 100):
        await asyncio.gather(*(stub.Register(register_request(agent_id=n, **kw))
                               for n in names[chunk:chunk + 100]))


async def expired_events(stream, count: int) -> list[pb.WatchEvent]:
    events = await take_until(stream, lambda ev: sum(e.type == pb.EXPIRED for e in ev) == count)
    return [e for e in events if e.type == pb.EXPIRED]


@pytest.mark.settings(heartbeat_timeout=1.0, sweep_interval=10)
async def test_keyspace_events_reap_without_waiting_for_the_sweeper(redis_registry):
    reg = redis_registry
    before = metrics.EXPIRED.labels("keyspace_event")._value.get()
    stream, _, _ = await open_watch(reg.stub)
    await register_many(reg.stub, [f"d{i}" for i in range(5)])
    expired = await expired_events(stream, 5)
    stream.cancel()
    # all five reaped by their `expired` events, long before the sweeper's next pass (10 s)
    assert metrics.EXPIRED.labels("keyspace_event")._value.get() - before == 5
    assert max(lateness_ms(e) for e in expired) < LATE_MS
    config = await reg.redis.config_get("notify-keyspace-events")
    assert {"E", "x"} <= set(config["notify-keyspace-events"])  # the server turned them on


@pytest.mark.parametrize("keyspace_events", [True, False], ids=["events+sweeper", "sweeper-only"])
async def test_dead_agents_among_many_live_ones_expire_within_a_second(redis_proc,
                                                                       keyspace_events):
    """2,000 live agents (60 s leases) and 50 that stop at once (1 s leases). With keyspace
    events off, nobody is subscribed: the sweeper alone must catch every expiry, within a few
    sweeps (Redis's own active expiry would take tens of seconds here)."""
    async with running_registry("redis", redis_proc, sweep_interval=10,
                                expiry_events=False) as live, \
            running_registry("redis", redis_proc, heartbeat_timeout=1.0, sweep_interval=0.1,
                             expiry_events=keyspace_events) as short:
        await register_many(live.stub, [f"live{i:04d}" for i in range(LIVE_AGENTS)],
                            capabilities=["py", "go", "tf"])
        stream, snapshot, _ = await open_watch(short.stub, filters={"zone": "dead"})
        await register_many(short.stub, [f"dead{i:02d}" for i in range(DEAD_AGENTS)],
                            metadata={"zone": "dead"})
        expired = await expired_events(stream, DEAD_AGENTS)
        stream.cancel()
        lateness = sorted(lateness_ms(e) for e in expired)
        assert lateness[-1] < LATE_MS, lateness
        assert sorted(e.agent.agent_id for e in expired) == [
            f"default/dead{i:02d}" for i in range(DEAD_AGENTS)]
        stats = await live.stub.GetStats(pb.StatsRequest(namespace="default"))
        assert stats.namespaces[0].agents == LIVE_AGENTS


async def test_three_server_processes_log_one_expired_event_per_agent(redis_proc,
                                                                      server_processes):
    servers = [await server_processes(redis_proc.url, HEARTBEAT_TIMEOUT="1",
                                      SWEEP_INTERVAL="0.02") for _ in range(3)]
    names = [f"a{i:02d}" for i in range(30)]
    async with grpc.aio.insecure_channel(servers[0].address) as c0, \
            grpc.aio.insecure_channel(servers[1].address) as c1:
        await register_many(pb_grpc.ServiceRegistryStub(c0), names)
        stream, _, revision = await open_watch(pb_grpc.ServiceRegistryStub(c1))
        # expiries before the watch started are in the log up to its revision
        redis = redis_proc.client()
        log_key = keys.namespace("default").log

        async def expired_in_log(until="+"):
            return [f[EF["agent"]] for _, f in await redis.xrange(log_key, max=until)
                    if f[EF["type"]] == str(pb.EXPIRED)]
        remaining = len(names) - len(await expired_in_log(revision))
        if remaining:
            await expired_events(stream, remaining)
        stream.cancel()
        per_agent = collections.Counter(await expired_in_log())
        await redis.aclose()
    assert per_agent == {n: 1 for n in names}
