"""A Redis Cluster primary killed (SIGKILL) under a steady load of registers and heartbeats:
its replica is promoted, and both server processes keep serving every namespace without a
restart; a watcher following the dead primary's namespace ends with the state a fresh List
shows (nothing missed, nothing invented). The cluster of this module is its own: the test
kills one of its nodes."""
from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from neural_hive_integration.clients import ServiceRegistryClient
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from server import keys
from server.testing import RedisCluster
from test_cluster import shard_of, spread
from test_registry import register_request
from test_watch import take, take_until

DOWN_FOR = 30.0   # longest the killed shard's namespace may refuse writes (node timeout 2 s)


@pytest.fixture(scope="module")
def cluster():
    with RedisCluster(primaries=3, replicas=1) as nodes:
        yield nodes


class Watcher:
    """A client-library watch folded into a state (agent id -> status): it resumes after a
    cut and re-lists by itself when it cannot (its revision is not in the promoted log)."""

    def __init__(self, client: ServiceRegistryClient, namespace: str):
        self.state: dict[str, int] = {}
        self.staged: dict[str, int] | None = None
        self.resyncs = 0
        self.revision = ""
        self.task = asyncio.create_task(self._run(client, namespace))

    def _resync(self, reason: str) -> None:
        self.resyncs += 1

    async def _run(self, client, namespace) -> None:
        async for event in client.watch(namespace, on_resync=self._resync):
            if event.type == pb.SNAPSHOT:
                if self.staged is None:
                    self.staged = {}
                self.staged[event.agent.agent_id] = event.agent.status
            elif event.type == pb.SNAPSHOT_END:
                self.state, self.staged = self.staged or {}, None
            elif event.type in (pb.REGISTERED, pb.UPDATED, pb.STATUS_CHANGED):
                self.state[event.agent.agent_id] = event.agent.status
            elif event.type in (pb.DEREGISTERED, pb.EVICTED, pb.EXPIRED):
                self.state.pop(event.agent.agent_id, None)
            if event.revision and event.type != pb.SNAPSHOT:
                self.revision = event.revision


async def listed(stub, namespace: str) -> dict[str, int]:
    reply = await stub.ListAgents(pb.ListAgentsRequest(namespace=namespace, page_size=1000))
    return {a.agent_id: a.status for a in reply.agents}


async def test_a_killed_primary_is_followed_without_a_restart(cluster, server_processes):
    a = await server_processes(cluster.url)
    b = await server_processes(cluster.url)
    probe = AsyncRedisCluster(host="127.0.0.1", port=cluster.nodes[0].port,
                              decode_responses=True)
    await probe.initialize()
    spaces = spread(probe, 1)
    victim_ns = spaces[0]
    victim = int(shard_of(probe, victim_ns).rsplit(":", 1)[1])
    await probe.aclose()

    async with grpc.aio.insecure_channel(a.address) as ca, \
            grpc.aio.insecure_channel(b.address) as cb, \
            ServiceRegistryClient("127.0.0.1", a.port, retries=0) as watch_client:
        stubs = [pb_grpc.ServiceRegistryStub(ca), pb_grpc.ServiceRegistryStub(cb)]
        watcher = Watcher(watch_client, victim_ns)
        acknowledged: list[str] = []
        codes: set = set()      # of the calls that failed
        failed = 0
        counter = 0

        async def load(stub) -> None:
            """Registers and heartbeats in every namespace, one round after the other."""
            nonlocal failed, counter
            while True:
                counter += 1
                round_ids = [f"{ns}/r{counter}" for ns in spaces]
                replies = await asyncio.gather(*(stub.Register(register_request(
                    agent_id=x, namespace=x.split("/")[0])) for x in round_ids),
                    return_exceptions=True)
                for x, r in zip(round_ids, replies):
                    if isinstance(r, Exception):
                        failed += 1
                        codes.add(r.code())
                    else:
                        acknowledged.append(x)
                try:
                    beats = await stub.HeartbeatBatch(pb.HeartbeatBatchRequest(
                        heartbeats=[pb.HeartbeatRequest(agent_id=x, status=pb.DEGRADED)
                                    for x in acknowledged[-30:]]))
                    failed += sum(bool(r.error_code) for r in beats.results)
                    codes.update(grpc.StatusCode.UNAVAILABLE for r in beats.results
                                 if r.error_code == grpc.StatusCode.UNAVAILABLE.value[0])
                    codes.update("other" for r in beats.results if r.error_code and
                                 r.error_code != grpc.StatusCode.UNAVAILABLE.value[0])
                except grpc.aio.AioRpcError as exc:
                    failed += 1
                    codes.add(exc.code())
                await asyncio.sleep(0.02)

        loads = [asyncio.create_task(load(s)) for s in stubs]
        try:
            await asyncio.sleep(1.0)
            before = len(acknowledged)
            assert before and not failed
            cluster.kill(victim)   # SIGKILL
            killed_at = time.monotonic()
            # both servers write to the dead shard's namespace again once its replica leads
            while True:
                assert time.monotonic() - killed_at < DOWN_FOR, "no write after the failover"
                try:
                    for i, stub in enumerate(stubs):
                        await stub.Register(register_request(agent_id=f"{victim_ns}/probe{i}",
                                                             namespace=victim_ns))
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, \
                        f"{exc.details()}\n{a.output()[-4000:]}\n{b.output()[-4000:]}"
                    await asyncio.sleep(0.1)
            recovered_after = time.monotonic() - killed_at
            await asyncio.sleep(1.0)   # load goes on after the promotion
            assert not any(task.done() for task in loads)  # the load went on throughout
        finally:
            for task in loads:
                task.cancel()
        # what failed meanwhile failed as a client retries: UNAVAILABLE, nothing else
        assert codes <= {grpc.StatusCode.UNAVAILABLE}, \
            f"{codes}\n{a.output()[-4000:]}\n{b.output()[-4000:]}"
        assert victim not in cluster.primary_ports()
        # the other shards never stopped; every server answers in every namespace
        for stub in stubs:
            for ns in spaces:
                reply = await stub.Register(register_request(agent_id=f"{ns}/final",
                                                             namespace=ns))
                assert reply.agent_id == f"{ns}/final"
        # the watcher converges on what List says
        truth = await listed(stubs[1], victim_ns)
        deadline = time.monotonic() + 15
        while watcher.state != truth and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            truth = await listed(stubs[1], victim_ns)
        watcher.task.cancel()
        assert watcher.state == truth
        print(f"failover: first write {recovered_after:.2f}s after the kill, {failed} calls "
              f"failed meanwhile, watcher resynchronised {watcher.resyncs} time(s)")


@pytest.fixture
def fresh_cluster():
    with RedisCluster(primaries=3, replicas=1) as nodes:
        yield nodes


async def test_a_register_while_the_schedule_shard_fails_over_still_expires(
        fresh_cluster, server_processes):
    """The sweeper's schedule (sr:due) and the namespace set live on one shard. While it fails
    over, a Register in a namespace of another shard succeeds (its agent is written); the
    server puts the namespace on the schedule once it can, so the agent, left without
    heartbeats, still expires, by the sweeper alone (keyspace events off)."""
    cluster = fresh_cluster
    server = await server_processes(cluster.url, HEARTBEAT_TIMEOUT=2, EXPIRY_EVENTS="false")
    probe = AsyncRedisCluster(host="127.0.0.1", port=cluster.nodes[0].port,
                              decode_responses=True)
    await probe.initialize()
    schedule = {probe.get_node_from_key(k).name for k in (keys.DUE, keys.NAMESPACES)}
    ns = next(n for n in spread(probe, 1) if shard_of(probe, n) not in schedule)
    victim = int(probe.get_node_from_key(keys.DUE).port)
    await probe.aclose()
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ServiceRegistryStub(channel)
        watch = stub.WatchAgents(pb.WatchRequest(namespace=ns))
        assert (await take(watch, 1))[0].type == pb.SNAPSHOT_END
        cluster.kill(victim)
        reply = await stub.Register(register_request(agent_id=f"{ns}/orphan", namespace=ns),
                                    timeout=20)
        assert reply.agent_id == f"{ns}/orphan"
        events = await take_until(watch, lambda ev: any(e.type == pb.EXPIRED for e in ev),
                                  timeout=30)
        watch.cancel()
    assert [(e.type, e.agent.agent_id) for e in events if e.type != pb.PROGRESS] == [
        (pb.REGISTERED, f"{ns}/orphan"), (pb.EXPIRED, f"{ns}/orphan")]
    assert "retried by the sweeper" in server.output()  # the schedule's shard was down
