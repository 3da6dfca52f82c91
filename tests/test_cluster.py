"""The registry on a Redis Cluster of 3 primaries and 3 replicas (REDIS_URL=redis+cluster://):
every script runs through the cluster client, a namespace lives on one shard and namespaces
spread over the shards, the heartbeat pipeline goes per shard and follows a slot that moves,
expiry events come from every primary, watches are served wherever their namespace lives, and
a cluster that cannot be used stops the start with one line.

One cluster serves the whole module (starting one takes seconds); each test uses namespaces of
its own, so none needs to flush it."""
from __future__ import annotations

import asyncio
import secrets

import grpc
import pytest
from neural_hive_integration.clients import AgentInfo, ServiceRegistryClient
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from conftest import running_registry
from server import keys, metrics
from server.keys import EVENT_FIELDS as EF
from server.scripts import Scripts
from server.testing import RedisCluster, free_port
from test_registry import register_request
from test_startup import assert_refused_in_one_line, serve
from test_watch import changes, open_watch, take, take_until

@pytest.fixture(scope="module")
def cluster():
    with RedisCluster(primaries=3, replicas=1) as nodes:
        yield nodes


def shard_of(redis, namespace: str) -> str:
    return redis.get_node_from_key(keys.namespace(namespace).log).name


def spread(redis, per_shard: int, prefix: str = "") -> list[str]:
    """Namespaces of this test, `per_shard` on each primary (a namespace's slot decides)."""
    prefix = prefix or f"t{secrets.token_hex(3)}-"
    by_shard: dict[str, list[str]] = {n.name: [] for n in redis.get_primaries()}
    i = 0
    while any(len(v) < per_shard for v in by_shard.values()):
        ns = f"{prefix}{i}"
        i += 1
        if len(by_shard[shard_of(redis, ns)]) < per_shard:
            by_shard[shard_of(redis, ns)].append(ns)
    return [ns for group in zip(*by_shard.values()) for ns in group]


async def log_of(redis, namespace: str, after: str = "0-0"):
    """(type, agent id) of the log entries after `after`, as `watched` shows events."""
    entries = await redis.xrange(keys.namespace(namespace).log, min=f"({after}")
    return [(int(f[EF["type"]]), f"{namespace}/{f[EF['agent']]}") for _, f in entries]


def watched(events):
    """(type, agent id) of change events, a notification's agent included."""
    return [(e.type, e.notification.agent_id if e.type == pb.NOTIFICATION else e.agent.agent_id)
            for e in events if e.type not in (pb.PROGRESS, pb.SNAPSHOT, pb.SNAPSHOT_END)]


async def test_every_script_runs_on_redis_cluster(cluster):
    r = AsyncRedisCluster(host="127.0.0.1", port=cluster.nodes[0].port, decode_responses=True)
    await r.initialize()
    scripts = Scripts(r)
    spaces = spread(r, 2)
    try:
        for ns in spaces:
            k = keys.namespace(ns)
            reply = await scripts.register(
                keys=k.agent_script_keys("w1"),
                args=[k.prefix, "w1", 60000, 1000, 1, 1, "py,tf", "e:1", "", "", "", 0, "zone",
                      "eu"])
            assert reply[0] == "registered"
            beat = await scripts.heartbeat(
                keys=k.agent_script_keys("w1"),
                args=[k.prefix, "w1", 60000, 1000, 3, 0, 0, 0, 0, 0, 0.5, 0.9, "", 16, 60000])
            assert beat[0] == 3
            found = await scripts.discover(keys=[k.capability("py"), k.capability("tf")],
                                           args=[k.prefix, 10, 0, 200, 0, "[]"])
            assert found[3] == "w1"
            listed = await scripts.list(keys=[k.agent_type(1)],
                                        args=[k.prefix, "", 10, "[]"])
            assert listed[2] == "w1"
            with_cap = await scripts.list(keys=[k.agent_type(1), k.capability("tf")],
                                          args=[k.prefix, "", 10, "[]"])
            assert with_cap[2] == "w1"
            assert await scripts.get(keys=[k.agent("w1")])
            assert await scripts.notify(keys=k.agent_script_keys("w1"),
                                        args=[k.prefix, "w1", 1000, "kind", "payload", 10])
            assert (await scripts.stats(keys=[k.counts, k.health, k.log]))[0] == 1
            assert (await scripts.reap(keys=k.script_keys,
                                       args=[k.prefix, 1000, 100, "", 60000]))[0] == 0
            assert await scripts.deregister(keys=k.agent_script_keys("w1"),
                                            args=[k.prefix, "w1", 1000, "evicted", "x",
                                                  ""]) == 2  # the last
        assert await scripts.due(keys=[keys.DUE], args=[10]) is not None
        # a namespace's keys, the agent's included, are one slot; the global keys one each
        k = keys.namespace(spaces[0])
        assert len({r.keyslot(x) for x in [*k.agent_script_keys("w1"), k.capability("py"),
                                           k.agent_type(1), k.counts, k.health]}) == 1
        # every namespace key in one slot, namespaces over every shard
        assert len({shard_of(r, ns) for ns in spaces}) == 3
    finally:
        await r.aclose()


async def test_core_scenarios_through_the_grpc_server_on_a_cluster(cluster):
    async with running_registry("cluster", cluster) as reg:
        stub, redis = reg.stub, reg.redis
        spaces = spread(redis, 1)   # one namespace on each shard
        cap = f"cap{secrets.token_hex(3)}"
        for ns in spaces:
            for name in ("a", "b"):
                await stub.Register(register_request(agent_id=f"{ns}/{name}", namespace=ns,
                                                     capabilities=[cap, "python"]))
        stream, snapshot, revision = await open_watch(stub, namespace=spaces[0])
        assert sorted(e.agent.agent_id for e in snapshot) == [f"{spaces[0]}/a",
                                                             f"{spaces[0]}/b"]

        # heartbeats: unary, stream and batch, on every shard
        for ns in spaces:
            reply = await stub.Heartbeat(pb.HeartbeatRequest(agent_id=f"{ns}/a",
                                                             status=pb.DEGRADED))
            assert reply.status == pb.DEGRADED
        beats = stub.HeartbeatStream(iter([pb.HeartbeatRequest(agent_id=f"{ns}/b",
                                                               status=pb.HEALTHY)
                                           for ns in spaces]))
        assert [r.agent_id async for r in beats] == [f"{ns}/b" for ns in spaces]
        batch = await stub.HeartbeatBatch(pb.HeartbeatBatchRequest(heartbeats=[
            pb.HeartbeatRequest(agent_id=f"{ns}/{n}", status=pb.HEALTHY)
            for ns in spaces for n in ("a", "b")] + [
            pb.HeartbeatRequest(agent_id=f"{spaces[1]}/nobody", status=pb.HEALTHY)]))
        not_found = grpc.StatusCode.NOT_FOUND.value[0]
        assert [r.error_code for r in batch.results] == [0] * 6 + [not_found]

        # discover in one namespace and across all (fan-out over the shards, merged)
        found = await stub.DiscoverAgents(pb.DiscoverRequest(capabilities=[cap],
                                                             namespace=spaces[2]))
        assert sorted(a.agent_id for a in found.agents) == [f"{spaces[2]}/a", f"{spaces[2]}/b"]
        everywhere = await stub.DiscoverAgents(pb.DiscoverRequest(capabilities=[cap],
                                                                  max_results=100))
        assert sorted(a.agent_id for a in everywhere.agents) == sorted(
            f"{ns}/{n}" for ns in spaces for n in ("a", "b"))
        listed = await stub.ListAgents(pb.ListAgentsRequest(namespace=spaces[1]))
        assert sorted(a.agent_id for a in listed.agents) == [f"{spaces[1]}/a", f"{spaces[1]}/b"]
        stats = await stub.GetStats(pb.StatsRequest())
        counts = {s.namespace: s.agents for s in stats.namespaces}
        assert all(counts[ns] == 2 for ns in spaces)

        # notify: the next heartbeat delivers it
        sent = await stub.NotifyAgent(pb.NotifyRequest(agent_id=f"{spaces[0]}/a", kind="drain",
                                                       payload="now"))
        beat = await stub.Heartbeat(pb.HeartbeatRequest(agent_id=f"{spaces[0]}/a",
                                                        status=pb.HEALTHY))
        assert [n.notification_id for n in beat.notifications] == [sent.notification_id]

        # evict across shards in one call
        evicted = await stub.EvictAgents(pb.EvictRequest(
            agent_ids=[f"{ns}/b" for ns in spaces], reason="maintenance"))
        assert sorted(evicted.evicted_ids) == sorted(f"{ns}/b" for ns in spaces)

        # the watch saw it all, live; a resumed watch gets exactly the same from the log
        live = await take_until(stream, lambda ev: any(e.type == pb.EVICTED for e in ev))
        stream.cancel()
        expected = await log_of(redis, spaces[0], revision)
        assert watched(live) == expected
        assert [t for t, _ in expected] == [pb.STATUS_CHANGED, pb.STATUS_CHANGED,
                                            pb.NOTIFICATION, pb.EVICTED]
        resumed = stub.WatchAgents(pb.WatchRequest(namespace=spaces[0],
                                                   since_revision=revision))
        assert watched(await take(resumed, len(expected))) == expected
        resumed.cancel()


async def test_expiry_events_come_from_every_primary(cluster):
    """The sweeper is all but off (one pass at start): each agent is reaped by the `expired`
    event of the primary holding its namespace, so every primary is subscribed."""
    async with running_registry("cluster", cluster, heartbeat_timeout=1.0,
                                sweep_interval=30) as reg:
        spaces = spread(reg.redis, 1)
        before = metrics.EXPIRED.labels("keyspace_event")._value.get()
        streams = [(await open_watch(reg.stub, namespace=ns))[0] for ns in spaces]
        for ns in spaces:
            await reg.stub.Register(register_request(agent_id=f"{ns}/x", namespace=ns))
        for ns, stream in zip(spaces, streams):
            events = await take_until(stream, lambda ev: any(e.type == pb.EXPIRED for e in ev),
                                      timeout=10)
            assert changes(events) == [(pb.REGISTERED, f"{ns}/x"), (pb.EXPIRED, f"{ns}/x")]
            stream.cancel()
        assert metrics.EXPIRED.labels("keyspace_event")._value.get() - before == 3


async def test_twelve_namespaces_over_three_shards_expire_once_each(cluster, server_processes):
    """Two server processes; agents in 12 namespaces (4 on each shard), a third of which stop
    heartbeating: each of those gets exactly one EXPIRED, within HEARTBEAT_TIMEOUT + 1 s, and
    the others none."""
    timeout = 2.0
    a = await server_processes(cluster.url, HEARTBEAT_TIMEOUT=timeout)
    b = await server_processes(cluster.url, HEARTBEAT_TIMEOUT=timeout)
    probe = AsyncRedisCluster.from_url(f"redis://127.0.0.1:{cluster.nodes[0].port}",
                                       decode_responses=True)
    await probe.initialize()
    spaces = spread(probe, 4)
    assert len({shard_of(probe, ns) for ns in spaces}) == 3
    await probe.aclose()
    async with grpc.aio.insecure_channel(a.address) as ca, \
            grpc.aio.insecure_channel(b.address) as cb:
        stubs = [pb_grpc.ServiceRegistryStub(ca), pb_grpc.ServiceRegistryStub(cb)]
        watches = [(ns, stubs[i % 2], (await open_watch(stubs[i % 2], namespace=ns))[0])
                   for i, ns in enumerate(spaces)]
        live = [f"{ns}/live{j}" for ns in spaces for j in range(2)]
        dead = [f"{ns}/dead" for ns in spaces]
        for i, agent_id in enumerate(live + dead):
            ns = agent_id.split("/")[0]
            await stubs[i % 2].Register(register_request(agent_id=agent_id, namespace=ns))

        async def keep_alive() -> None:
            while True:
                for i, stub in enumerate(stubs):
                    await stub.HeartbeatBatch(pb.HeartbeatBatchRequest(heartbeats=[
                        pb.HeartbeatRequest(agent_id=x, status=pb.HEALTHY)
                        for x in live[i::2]]))
                await asyncio.sleep(timeout / 4)
        beating = asyncio.create_task(keep_alive())
        try:
            for ns, _, stream in watches:
                events = await take_until(
                    stream, lambda ev: any(e.type == pb.EXPIRED for e in ev), timeout=15)
                stream.cancel()
                got = [(t, x) for t, x in changes(events) if t in (pb.REGISTERED, pb.EXPIRED)]
                assert sorted(got) == sorted([(pb.REGISTERED, f"{ns}/live0"),
                                              (pb.REGISTERED, f"{ns}/live1"),
                                              (pb.REGISTERED, f"{ns}/dead"),
                                              (pb.EXPIRED, f"{ns}/dead")])
                expired = next(e for e in events if e.type == pb.EXPIRED)
                late_ms = int(expired.revision.split("-")[0]) - expired.agent.expires_at_unix_ms
                assert late_ms < 1000, (ns, late_ms)
            await asyncio.sleep(timeout)  # the live ones stay, the dead ones stay dead once
        finally:
            beating.cancel()
        redis = AsyncRedisCluster(host="127.0.0.1", port=cluster.nodes[0].port,
                                  decode_responses=True)
        for ns in spaces:
            log = await log_of(redis, ns)
            assert [x for t, x in log if t == pb.EXPIRED] == [f"{ns}/dead"]
        await redis.aclose()


async def test_scripts_are_loaded_again_after_every_primary_lost_them(cluster):
    """A promoted replica starts with an empty script cache: SCRIPT FLUSH on every primary
    stands for it. Registers, unary and batched heartbeats (the per-primary pipelines) go on."""
    async with running_registry("cluster", cluster) as reg:
        stub = reg.stub
        spaces = spread(reg.redis, 1)
        for ns in spaces:
            await stub.Register(register_request(agent_id=f"{ns}/a", namespace=ns))
        for port in cluster.primary_ports():
            cluster.command(port, "SCRIPT", "FLUSH")
        batch = await stub.HeartbeatBatch(pb.HeartbeatBatchRequest(heartbeats=[
            pb.HeartbeatRequest(agent_id=f"{ns}/a", status=pb.HEALTHY) for ns in spaces]))
        assert [r.error_code for r in batch.results] == [0, 0, 0]
        for port in cluster.primary_ports():
            cluster.command(port, "SCRIPT", "FLUSH")
        for ns in spaces:
            await stub.Register(register_request(agent_id=f"{ns}/b", namespace=ns))
            reply = await stub.Heartbeat(pb.HeartbeatRequest(agent_id=f"{ns}/b",
                                                             status=pb.DEGRADED))
            assert reply.status == pb.DEGRADED


async def test_min_replica_acks_waits_for_each_shards_replica(cluster):
    """MIN_REPLICA_ACKS on a cluster: each write's WAIT runs on the connection that made it,
    on its slot's primary; one replica per shard meets 1 (also after the primaries lost their
    scripts, and for an eviction spanning every shard), 2 is UNAVAILABLE naming the count."""
    async with running_registry("cluster", cluster, min_replica_acks=1) as reg:
        stub = reg.stub
        spaces = spread(reg.redis, 1)
        ids = [(await stub.Register(register_request(agent_id=f"{ns}/a", namespace=ns))).agent_id
               for ns in spaces]
        for port in cluster.primary_ports():
            cluster.command(port, "SCRIPT", "FLUSH")
        note = await stub.NotifyAgent(pb.NotifyRequest(agent_id=ids[0], kind="k"))
        assert note.notification_id
        evicted = await stub.EvictAgents(pb.EvictRequest(agent_ids=ids, reason="test"))
        assert sorted(evicted.evicted_ids) == sorted(ids)
    async with running_registry("cluster", cluster, min_replica_acks=2) as reg:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await reg.stub.Register(register_request(agent_id=f"{spaces[1]}/b",
                                                     namespace=spaces[1]))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "only 1 of 2 replica(s) acknowledged" in info.value.details()
        # the write stands on the primary (the answer says it may be lost, not that it failed)
        assert (await reg.stub.GetAgent(pb.GetAgentRequest(agent_id=f"{spaces[1]}/b"))).agent


def _migrate_slot(cluster: RedisCluster, slot: int, dst_port: int) -> int:
    """Moves one hash slot, with its keys, to another primary (what resharding does)."""
    nodes = {r["port"]: r for r in cluster.topology()}
    src_port = next(p for p, r in nodes.items() if r["role"] == "master" and any(
        _covers(s, slot) for s in r["slots"]))
    src, dst = nodes[src_port]["id"], nodes[dst_port]["id"]
    cluster.command(dst_port, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", src)
    cluster.command(src_port, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", dst)
    # one MIGRATE for all its keys: the source moves them at once (a script meeting some keys
    # moved and others not would fail halfway: not every key a script touches is in its KEYS)
    batch = cluster.command(src_port, "CLUSTER", "GETKEYSINSLOT", str(slot), "100000").split()
    if batch:
        cluster.command(src_port, "MIGRATE", "127.0.0.1", str(dst_port), "", "0", "5000",
                        "KEYS", *batch)
    for port, row in nodes.items():
        if row["role"] == "master":
            cluster.command(port, "CLUSTER", "SETSLOT", str(slot), "NODE", dst)
    return src_port


def _covers(spec: str, slot: int) -> bool:
    if spec.startswith("["):
        return False
    low, _, high = spec.partition("-")
    return int(low) <= slot <= int(high or low)


async def test_heartbeats_and_watches_follow_a_slot_that_moves(cluster):
    """Resharding moves a namespace's slot to another primary while heartbeats flow and a
    watch is open: no heartbeat fails (the pipeline resends what was answered MOVED or ASK
    through the cluster client) and the watch goes on from the new primary."""
    async with running_registry("cluster", cluster) as reg:
        stub, redis = reg.stub, reg.redis
        ns = spread(redis, 1)[0]
        agents = [f"{ns}/m{i}" for i in range(50)]
        for agent_id in agents:
            await stub.Register(register_request(agent_id=agent_id, namespace=ns))
        stream, _, revision = await open_watch(stub, namespace=ns)
        slot = redis.keyslot(keys.namespace(ns).log)
        owner = shard_of(redis, ns)
        dst = next(n.port for n in redis.get_primaries() if n.name != owner)
        failures = []

        async def beat_forever():
            status = pb.HEALTHY
            while True:
                status = pb.DEGRADED if status == pb.HEALTHY else pb.HEALTHY
                replies = await asyncio.gather(*(stub.Heartbeat(pb.HeartbeatRequest(
                    agent_id=x, status=status)) for x in agents), return_exceptions=True)
                failures.extend(r for r in replies if isinstance(r, Exception))
        beating = asyncio.create_task(beat_forever())
        try:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(_migrate_slot, cluster, slot, dst)
            await asyncio.sleep(1.0)
        finally:
            beating.cancel()
        assert failures == []
        assert int(redis.get_node_from_key(keys.namespace(ns).log).port) == dst
        await stub.Register(register_request(agent_id=f"{ns}/after", namespace=ns))
        events = await take_until(stream, lambda ev: (pb.REGISTERED, f"{ns}/after")
                                  in changes(ev))
        stream.cancel()
        assert changes(events) == await log_of(redis, ns, revision)


async def test_a_thousand_watchers_and_a_heartbeat_storm_stay_within_connections(cluster):
    """1,000 watch streams (10 client channels) over 30 namespaces, then heartbeats in
    batches and unary calls, and registers, all at once: no MaxConnectionsError (the cluster
    client has no blocking pool), every call answered and every watcher served."""
    async with running_registry("cluster", cluster) as reg:
        stub = reg.stub
        spaces = spread(reg.redis, 10)
        agents = [f"{ns}/s{i}" for ns in spaces for i in range(20)]
        for chunk in range(0, len(agents), 200):
            await asyncio.gather(*(stub.Register(register_request(
                agent_id=x, namespace=x.split("/")[0])) for x in agents[chunk:chunk + 200]))
        channels = [grpc.aio.insecure_channel(reg.address) for _ in range(10)]
        streams = [pb_grpc.ServiceRegistryStub(channels[i % 10]).WatchAgents(
            pb.WatchRequest(namespace=spaces[i % len(spaces)], skip_snapshot=True))
            for i in range(1000)]
        # a stream opens on its first read; each gets the STATUS_CHANGED events below
        readers = [asyncio.ensure_future(take(s, 1, timeout=60)) for s in streams]
        await asyncio.sleep(1.0)
        # (more than ~1,000 concurrent unary calls on one channel end CANCELLED on a single
        # Redis as well: a gRPC limit, not this one; 400 at a time here)
        replies = await asyncio.gather(
            *(stub.HeartbeatBatch(pb.HeartbeatBatchRequest(heartbeats=[
                pb.HeartbeatRequest(agent_id=x, status=pb.DEGRADED) for x in agents]))
              for _ in range(5)),
            *(stub.Heartbeat(pb.HeartbeatRequest(agent_id=x, status=pb.UNHEALTHY))
              for x in agents[:300]),
            *(stub.Register(register_request(agent_id=f"{ns}/new{i}", namespace=ns))
              for ns in spaces for i in range(3)),
            return_exceptions=True)
        assert [r for r in replies if isinstance(r, Exception)] == []
        assert not any(r.error_code for batch in replies[:5] for r in batch.results)
        delivered = await asyncio.gather(*readers, return_exceptions=True)
        assert [d for d in delivered if isinstance(d, Exception)] == []
        for s in streams:
            s.cancel()
        for channel in channels:
            await channel.close()


# -- bad configuration: one line naming REDIS_URL, no traceback ---------------------------------

def test_unreachable_seed_nodes_stop_the_start():
    url = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    line = assert_refused_in_one_line(serve(REDIS_URL=url), "REDIS_URL")
    assert "no seed node" in line


def test_a_cluster_url_at_a_standalone_redis_stops_the_start(redis_proc):
    url = f"redis+cluster://127.0.0.1:{redis_proc.port}"
    assert_refused_in_one_line(serve(REDIS_URL=url), "REDIS_URL", "is not a Redis Cluster")


def test_a_single_node_url_at_a_cluster_node_stops_the_start(cluster):
    url = f"redis://127.0.0.1:{cluster.nodes[0].port}/0"
    assert_refused_in_one_line(serve(REDIS_URL=url), "REDIS_URL", "is a Redis Cluster node",
                               "redis+cluster://")


async def test_the_client_library_talks_to_a_cluster_backed_server(cluster):
    async with running_registry("cluster", cluster) as reg:
        ns = spread(reg.redis, 1)[1]
        async with ServiceRegistryClient("127.0.0.1", reg.server.port) as client:
            agent_id = await client.register_agent(AgentInfo(agent_type="worker",
                                                             namespace=ns,
                                                             capabilities=["go"]))
            assert (await client.get_agent(agent_id)).namespace == ns
