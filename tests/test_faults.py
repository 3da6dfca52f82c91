"""Store resets (issue 11, defects 1 and 2): Redis restarted without its data (and, the other
side, with `--appendonly yes`), or flushed. Open watches are told, the client's watch() lists
again by itself, resumes from a revision of the old store are refused, and the namespace set
follows what Redis holds."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from neural_hive_integration.clients import AgentInfo
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from redis.exceptions import ConnectionError as RedisConnectionError

from conftest import running_registry
from server import keys
from test_registry import register_request
from test_watch import open_watch, take_until

TIMEOUT = 15
AOF = ("--appendonly", "yes", "--appendfsync", "always")
GONE = (pb.DEREGISTERED, pb.EXPIRED, pb.EVICTED)


class View:
    """What a watch() caller holds: agent ids, rebuilt from each (re)snapshot."""

    def __init__(self, client, **watch):
        self.agents: set[str] = set()
        self.resyncs: list[str] = []
        self.changed = asyncio.Event()
        self._task = asyncio.create_task(self._follow(client, watch))

    def _resync(self, reason: str) -> None:
        self.resyncs.append(reason)
        self.agents.clear()

    async def _follow(self, client, watch) -> None:
        async for event in client.watch(on_resync=self._resync, **watch):
            if event.type in GONE:
                self.agents.discard(event.agent.agent_id)
            elif event.agent.agent_id:
                self.agents.add(event.agent.agent_id)
            self.changed.set()

    async def until(self, predicate, what: str) -> None:
        async def wait():
            while not predicate():
                self.changed.clear()
                await self.changed.wait()
        try:
            await asyncio.wait_for(wait(), TIMEOUT)
        except asyncio.TimeoutError:
            raise AssertionError(f"{what}: view {sorted(self.agents)}, resyncs "
                                 f"{self.resyncs}") from None

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def read_until_error(stream) -> grpc.aio.AioRpcError:
    """Reads a WatchAgents stream until it ends with an error, and returns that error."""
    async def read():
        async for _ in stream:
            pass
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(read(), TIMEOUT)
    return info.value


async def restart(proc) -> None:
    proc.stop()  # SIGKILL: nothing is saved but what persistence already wrote
    proc.start()


async def test_an_open_watch_is_told_when_redis_restarts_without_its_data(redis_factory):
    proc = redis_factory()
    async with running_registry("redis", proc) as reg:
        for name in ("a1", "a2"):
            await reg.stub.Register(register_request(agent_id=name))
        view = View(reg.client)
        await view.until(lambda: len(view.agents) == 2, "first snapshot")
        stream, _, _ = await open_watch(reg.stub)
        await restart(proc)
        await reg.client.register_agent(AgentInfo(agent_id="b1", capabilities=["python"]))

        error = await read_until_error(stream)
        assert error.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "store was reset" in error.details() and "re-list" in error.details()
        # the client re-listed by itself and said so; its view is what the store holds
        await view.until(lambda: view.agents == {"default/b1"}, "view after the reset")
        assert view.resyncs and "store was reset" in view.resyncs[0]
        await view.close()


async def test_with_persistence_a_restart_is_no_reset_and_watches_carry_on(redis_factory):
    proc = redis_factory(*AOF)
    async with running_registry("redis", proc) as reg:
        for name in ("a1", "a2"):
            await reg.stub.Register(register_request(agent_id=name))
        view = View(reg.client)
        await view.until(lambda: len(view.agents) == 2, "first snapshot")
        await restart(proc)
        await reg.client.register_agent(AgentInfo(agent_id="b1", capabilities=["python"]))
        await view.until(lambda: len(view.agents) == 3, "the registration after the restart")
        assert view.agents == {"default/a1", "default/a2", "default/b1"}
        assert view.resyncs == []
        await view.close()


async def test_a_flushed_store_ends_open_watches(registry):
    """The embedded store too: its sweeper notices the reset."""
    await registry.stub.Register(register_request(agent_id="a1"))
    stream, _, _ = await open_watch(registry.stub)
    await registry.redis.flushall()
    await registry.stub.Register(register_request(agent_id="b1"))
    error = await read_until_error(stream)
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "store was reset" in error.details()


async def test_resuming_from_a_revision_of_the_old_store_is_refused(registry):
    await registry.stub.Register(register_request(agent_id="a1"))
    stream, _, _ = await open_watch(registry.stub)
    await registry.stub.Heartbeat(pb.HeartbeatRequest(agent_id="default/a1", status=pb.DEGRADED))
    old = (await take_until(stream, lambda ev: ev[-1].type == pb.STATUS_CHANGED))[-1].revision
    stream.cancel()
    await registry.redis.flushall()
    await asyncio.sleep(0.002)  # the new log's ids must come after `old` (a millisecond clock)
    for name in ("b1", "b2"):
        await registry.stub.Register(register_request(agent_id=name))
    error = await read_until_error(registry.stub.WatchAgents(pb.WatchRequest(
        since_revision=old)))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "store was reset" in error.details()


async def test_the_namespace_set_follows_what_redis_holds_after_a_reset(redis_factory):
    """A server process started after the reset finds the agents registered since."""
    proc = redis_factory()
    async with running_registry("redis", proc) as first:
        await first.stub.Register(register_request(agent_id="a1", namespace="alpha"))
        await restart(proc)
        await first.client.register_agent(AgentInfo(agent_id="a2", namespace="alpha",
                                                    capabilities=["python"]))
        async with running_registry("redis", proc) as second:
            found = await second.stub.DiscoverAgents(pb.DiscoverRequest(capabilities=["python"]))
            assert [a.agent_id for a in found.agents] == ["alpha/a2"]
            stats = await second.stub.GetStats(pb.StatsRequest())
            assert [(ns.namespace, ns.agents) for ns in stats.namespaces] == [("alpha", 1)]


async def test_a_server_start_finds_namespaces_missing_from_the_set(redis_proc):
    """A store written while the set was kept per process (or damaged) lacks namespaces that
    hold agents: a starting server finds them in what Redis holds."""
    async with running_registry("redis", redis_proc) as first:
        await first.stub.Register(register_request(agent_id="a1", namespace="lost"))
        await first.redis.delete(keys.NAMESPACES, keys.DUE)
    async with running_registry("redis", redis_proc) as second:
        found = await second.stub.DiscoverAgents(pb.DiscoverRequest(capabilities=["python"]))
        assert [a.agent_id for a in found.agents] == ["lost/a1"]
        assert await second.redis.zrange(keys.DUE, 0, -1) == ["lost"]


@pytest.mark.settings(sweep_interval=0.05)
async def test_a_register_whose_namespace_write_fails_is_scheduled_by_the_sweeper(
        redis_registry, monkeypatch):
    """Redis goes away between the register script and the write of the namespace set and
    schedule (keys outside the namespace's slot): the Register, which happened, succeeds, and
    the sweeper writes what is missing once Redis answers, so the namespace is not left out of
    Discover without a namespace, GetStats and the sweeper's schedule."""
    store = redis_registry.server.store
    real = store._add_namespace
    failures = []

    async def lost_connection(namespace, deadline_ms):
        if not failures:
            failures.append(namespace)
            raise RedisConnectionError("Connection closed by server.")
        await real(namespace, deadline_ms)

    monkeypatch.setattr(store, "_add_namespace", lost_connection)
    reply = await redis_registry.stub.Register(register_request(agent_id="a1",
                                                                namespace="gap"))
    assert failures == ["gap"] and reply.agent_id == "gap/a1"
    deadline = asyncio.get_running_loop().time() + 10
    while "gap" not in await redis_registry.redis.smembers(keys.NAMESPACES):
        assert asyncio.get_running_loop().time() < deadline, "the sweeper never wrote it"
        await asyncio.sleep(0.05)  # the sweeper's next pass (every 50 ms here)
    assert await redis_registry.redis.zscore(keys.DUE, "gap") is not None
    found = await redis_registry.stub.DiscoverAgents(pb.DiscoverRequest(capabilities=["python"]))
    assert [a.agent_id for a in found.agents] == ["gap/a1"]
