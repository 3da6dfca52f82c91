"""No mass expiry caused by the registry's own outage (issue 11): every registry process is down
for twice the heartbeat timeout while Redis (and its lease TTLs) keeps running. On return
nothing is reaped; agents that stay silent expire about one timeout after the registry came
back; with OUTAGE_PROTECTION off, all of them expire at once, as before."""
from __future__ import annotations

import asyncio
import time

from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from prometheus_client import REGISTRY

from conftest import running_registry
from conftest import test_settings as settings_with
from server import keys
from server.registry_store import outage_quiet_ms
from server.scripts import Scripts
from test_expiry import register_many
from test_watch import open_watch, take_until

T = 1.0            # heartbeat timeout (s)
AGENTS = 20
SETTINGS = dict(heartbeat_timeout=T, sweep_interval=0.05)


def moved_total(namespace="default") -> float:
    return REGISTRY.get_sample_value("service_registry_outage_deadlines_moved_total",
                                     {"namespace": namespace}) or 0.0


async def outage(redis_proc, **settings):
    """Registers AGENTS agents, stops the registry for 2 T, starts it again. Returns the
    revision before the outage, the return time (ms) and the running registry (a context)."""
    async with running_registry("redis", redis_proc, **SETTINGS, **settings) as reg:
        names = [f"a{i:02d}" for i in range(AGENTS)]
        await register_many(reg.stub, names)
        stats = await reg.stub.GetStats(pb.StatsRequest(namespace="default"))
        revision = stats.namespaces[0].revision
    await asyncio.sleep(2 * T)  # the outage itself: no registry process runs
    return revision, int(time.time() * 1000)


async def events_since(stub, revision: str, expired: int):
    stream = stub.WatchAgents(pb.WatchRequest(since_revision=revision))
    events = await take_until(stream, lambda ev: sum(e.type == pb.EXPIRED for e in ev) == expired,
                              timeout=15)
    stream.cancel()
    return events


async def test_an_outage_of_twice_the_timeout_reaps_nothing_and_silent_agents_expire_later(
        redis_proc):
    before = moved_total()
    revision, returned_ms = await outage(redis_proc)
    async with running_registry("redis", redis_proc, **SETTINGS) as reg:
        # one agent heartbeats as soon as the registry is back: it was never gone
        reply = await reg.stub.Heartbeat(pb.HeartbeatRequest(agent_id="default/a00"))
        assert reply.expires_at_unix_ms > returned_ms
        events = await events_since(reg.stub, revision, AGENTS)
        notice = [e for e in events if e.type == pb.PROGRESS and e.reason]
        assert len(notice) == 1 and "registry outage" in notice[0].reason
        expired = [e for e in events if e.type == pb.EXPIRED]
        times = sorted(int(e.revision.split("-")[0]) for e in expired)
        # nothing reaped on return: each silent agent got its lease's remainder again
        assert times[0] >= returned_ms + T * 1000 / 2, (times[0] - returned_ms)
        assert times[-1] <= returned_ms + T * 1000 + 5000
        # a00 heartbeated after the return: it lived until the lease that heartbeat gave it
        a00 = [e for e in expired if e.agent.agent_id == "default/a00"]
        assert int(a00[0].revision.split("-")[0]) >= reply.expires_at_unix_ms
        assert moved_total() - before >= AGENTS - 1


async def test_without_outage_protection_every_agent_expires_on_return(redis_proc):
    revision, returned_ms = await outage(redis_proc, outage_protection=False)
    async with running_registry("redis", redis_proc, **SETTINGS, outage_protection=False) as reg:
        events = await events_since(reg.stub, revision, AGENTS)
        assert not [e for e in events if e.type == pb.PROGRESS and e.reason]
        times = [int(e.revision.split("-")[0]) for e in events if e.type == pb.EXPIRED]
        assert max(times) < returned_ms + T * 1000 / 2


async def test_a_namespace_whose_agents_die_while_the_registry_runs_is_reaped_on_time(
        redis_proc):
    """The protection is for the registry's silence, not the agents': with the registry up,
    the sweeper's visits keep the namespace active, so the last agent to die expires on time."""
    async with running_registry("redis", redis_proc, **SETTINGS) as reg:
        stream, _, _ = await open_watch(reg.stub)
        await reg.stub.Register(pb.RegisterRequest(agent_type=pb.WORKER, agent_id="only"))
        events = await take_until(stream, lambda ev: ev[-1].type == pb.EXPIRED, timeout=15)
        stream.cancel()
        expired = events[-1]
        assert int(expired.revision.split("-")[0]) - expired.agent.expires_at_unix_ms < 500
        assert not [e for e in events if e.type == pb.PROGRESS and e.reason]


async def test_a_lease_expiry_event_on_return_moves_the_deadline_too(redis_proc):
    """The fast trigger reaps by name (what the `expired` listener does on return): reap.lua
    applies the same rule, so it cannot reap an agent whose deadline fell inside the outage."""
    revision, _ = await outage(redis_proc)
    redis = redis_proc.client()
    try:
        k = keys.namespace("default")
        quiet = outage_quiet_ms(settings_with(**SETTINGS))
        reaped, moved, *_ = await Scripts(redis).reap(
            keys=k.agent_script_keys("a05"), args=[k.prefix, 100000, 200, "a05", quiet])
        assert (reaped, moved) == (0, 1)
        assert await redis.pttl(k.lease("a05")) > 0  # a new lease key for the moved deadline
    finally:
        await redis.aclose()
