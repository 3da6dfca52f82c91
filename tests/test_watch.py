"""WatchAgents and NotifyAgent: snapshots, resume without gaps, compaction, slow consumers."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from neural_hive_integration.clients import (AgentInfo, HealthStatus, ServiceRegistryClient,
                                              WatchCompacted)
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc

from server import keys
from server.keys import EVENT_FIELDS as EF
from test_registry import register_request

TIMEOUT = 30


async def take(stream, count: int, timeout: float = TIMEOUT) -> list[pb.WatchEvent]:
    """The next `count` events of a WatchAgents stream."""
    events = []

    async def read():
        async for event in stream:
            events.append(event)
            if len(events) == count:
                return
    await asyncio.wait_for(read(), timeout)
    return events


async def take_until(stream, done, timeout: float = TIMEOUT) -> list[pb.WatchEvent]:
    events = []

    async def read():
        async for event in stream:
            events.append(event)
            if done(events):
                return
    await asyncio.wait_for(read(), timeout)
    return events


async def open_watch(stub, **request):
    """Starts a watch and reads its snapshot, so the server has it in place before the test
    makes changes (a call's stream opens lazily, on its first read)."""
    stream = stub.WatchAgents(pb.WatchRequest(**request))
    snapshot = await take_until(stream, lambda ev: ev[-1].type == pb.SNAPSHOT_END)
    return stream, snapshot[:-1], snapshot[-1].revision


def changes(events):
    """(type, agent id) of the change events, leaving out progress and snapshot markers."""
    return [(e.type, e.agent.agent_id) for e in events
            if e.type not in (pb.PROGRESS, pb.SNAPSHOT, pb.SNAPSHOT_END)]


async def log_after(redis, revision: str, namespace: str = "default"):
    """Ground truth: (type, agent id) of every log entry after `revision`."""
    entries = await redis.xrange(keys.namespace(namespace).log, min=f"({revision}")
    return [(int(f[EF["type"]]), f"{namespace}/{f[EF['agent']]}") for _, f in entries]


async def status_flips(stub, agent_ids, count: int) -> None:
    """`count` STATUS_CHANGED events, 1000 per HeartbeatBatch call."""
    statuses = (pb.HEALTHY, pb.DEGRADED)
    done = 0
    while done < count:
        n = min(1000, count - done)
        beats = [pb.HeartbeatRequest(agent_id=agent_ids[(done + i) % len(agent_ids)],
                                     status=statuses[((done + i) // len(agent_ids) + 1) % 2])
                 for i in range(n)]
        reply = await stub.HeartbeatBatch(pb.HeartbeatBatchRequest(heartbeats=beats))
        assert not any(r.error_code for r in reply.results)
        done += n


async def test_snapshot_then_live_events_without_gap(registry):
    stub = registry.stub
    await stub.Register(register_request(agent_id="p1", capabilities=["py"]))
    await stub.Register(register_request(agent_id="p2", capabilities=["py", "go"]))
    await stub.Register(register_request(agent_id="g1", capabilities=["go"]))
    stream = stub.WatchAgents(pb.WatchRequest(capability="py"))
    head = await take(stream, 3)
    assert [e.type for e in head] == [pb.SNAPSHOT, pb.SNAPSHOT, pb.SNAPSHOT_END]
    assert sorted(e.agent.agent_id for e in head[:2]) == ["default/p1", "default/p2"]
    stats = await stub.GetStats(pb.StatsRequest(namespace="default"))
    assert head[2].revision == stats.namespaces[0].revision

    await stub.Register(register_request(agent_id="g2", capabilities=["go"]))  # not watched
    await stub.Register(register_request(agent_id="p3", capabilities=["py"]))
    await stub.Heartbeat(pb.HeartbeatRequest(agent_id="default/p1", status=pb.UNHEALTHY))
    await stub.Deregister(pb.DeregisterRequest(agent_id="default/p2"))
    await stub.EvictAgents(pb.EvictRequest(agent_ids=["default/p3"], reason="bad actor"))
    live = await take(stream, 4)
    assert changes(live) == [(pb.REGISTERED, "default/p3"), (pb.STATUS_CHANGED, "default/p1"),
                             (pb.DEREGISTERED, "default/p2"), (pb.EVICTED, "default/p3")]
    assert live[1].agent.status == pb.UNHEALTHY
    assert live[3].reason == "bad actor"
    revisions = [e.revision for e in live]
    assert revisions == sorted(revisions, key=lambda r: tuple(map(int, r.split("-"))))
    stream.cancel()


async def test_agent_leaving_a_filtered_view_is_reported(registry):
    stub = registry.stub
    await stub.Register(register_request(agent_id="a"))
    stream, _, _ = await open_watch(stub, filters={"status": "healthy"})
    await stub.Heartbeat(pb.HeartbeatRequest(agent_id="default/a", status=pb.UNHEALTHY))
    await stub.Heartbeat(pb.HeartbeatRequest(agent_id="default/a", status=pb.DEGRADED))
    await stub.Heartbeat(pb.HeartbeatRequest(agent_id="default/a", status=pb.HEALTHY))
    events = await take(stream, 2)
    # leaving (healthy -> unhealthy) and coming back (degraded -> healthy); the
    # unhealthy -> degraded change happens outside the view
    assert [(e.type, e.agent.status) for e in events] == [(pb.STATUS_CHANGED, pb.UNHEALTHY),
                                                          (pb.STATUS_CHANGED, pb.HEALTHY)]
    stream.cancel()


# The timeout leaves the 850 calls 5 s to finish before the first lease runs out (3 s was too
# little for the embedded store on a loaded machine)
@pytest.mark.settings(heartbeat_timeout=5.0, sweep_interval=0.05)
async def test_resume_receives_every_missed_change_exactly_once(registry):
    """1,000+ registrations, deregistrations and expiries while the watcher is away."""
    stub = registry.stub
    stream, _, _ = await open_watch(stub)
    await stub.Register(register_request(agent_id="first"))
    seen = await take(stream, 1)
    assert changes(seen) == [(pb.REGISTERED, "default/first")]
    stream.cancel()  # the watcher goes away

    names = [f"r{i:03d}" for i in range(500)]
    for chunk in range(0, 500, 50):
        await asyncio.gather(*(stub.Register(register_request(agent_id=n))
                               for n in names[chunk:chunk + 50]))
    for chunk in range(0, 350, 50):
        await asyncio.gather(*(stub.Deregister(pb.DeregisterRequest(agent_id=f"default/{n}"))
                               for n in names[chunk:chunk + 50]))
    # 'first' and the 150 others stop heartbeating and expire

    expected_expiries = 151
    resumed = registry.client.watch(since_revision=seen[0].revision)
    events = await take_until(resumed, lambda ev: sum(e.type == pb.EXPIRED for e in ev)
                              == expected_expiries)
    await resumed.aclose()
    got = changes(events)
    assert len(got) == 500 + 350 + expected_expiries
    assert got == await log_after(registry.redis, seen[0].revision)  # the log's order
    # 'first' may expire while the others are still being registered: compare as multisets
    assert sorted(got) == sorted([(pb.REGISTERED, f"default/{n}") for n in names]
                                 + [(pb.DEREGISTERED, f"default/{n}") for n in names[:350]]
                                 + [(pb.EXPIRED, f"default/{n}") for n in names[350:]]
                                 + [(pb.EXPIRED, "default/first")])


async def test_resume_on_another_server_after_a_kill(redis_proc, server_processes):
    a = await server_processes(redis_proc.url)
    b = await server_processes(redis_proc.url)
    async with grpc.aio.insecure_channel(a.address) as ca, \
            grpc.aio.insecure_channel(b.address) as cb:
        stub_a, stub_b = pb_grpc.ServiceRegistryStub(ca), pb_grpc.ServiceRegistryStub(cb)
        stream, _, _ = await open_watch(stub_a)
        await stub_a.Register(register_request(agent_id="before"))
        last = (await take(stream, 1))[0].revision

        a.kill()  # the server the watcher uses dies
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await take(stream, 1)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE

        names = [f"x{i:03d}" for i in range(300)]
        for chunk in range(0, 300, 50):
            await asyncio.gather(*(stub_b.Register(register_request(agent_id=n))
                                   for n in names[chunk:chunk + 50]))
        await asyncio.gather(*(stub_b.Deregister(pb.DeregisterRequest(agent_id=f"default/{n}"))
                               for n in names[:100]))
        resumed = stub_b.WatchAgents(pb.WatchRequest(since_revision=last))
        got = changes(await take(resumed, 400))
        resumed.cancel()
    redis = redis_proc.client()
    assert got == await log_after(redis, last)
    assert sorted(got[:300]) == [(pb.REGISTERED, f"default/{n}") for n in names]
    assert sorted(got[300:]) == [(pb.DEREGISTERED, f"default/{n}") for n in names[:100]]
    await redis.aclose()


async def test_watch_from_an_empty_log_keeps_every_event(registry):
    """The revision of an empty log ("0-0") stays valid while nothing is trimmed."""
    stream, snapshot, revision = await open_watch(registry.stub)
    stream.cancel()
    assert (snapshot, revision) == ([], "0-0")
    for name in ("a", "b"):
        await registry.stub.Register(register_request(agent_id=name))
    resumed = registry.stub.WatchAgents(pb.WatchRequest(since_revision=revision))
    assert changes(await take(resumed, 2)) == [(pb.REGISTERED, "default/a"),
                                               (pb.REGISTERED, "default/b")]
    resumed.cancel()


async def test_client_watch_resumes_by_itself_across_a_server_restart(redis_proc,
                                                                     server_processes):
    server = await server_processes(redis_proc.url)
    client = ServiceRegistryClient("127.0.0.1", server.port, backoff=0.05, max_backoff=0.2)
    events = client.watch()
    head = await take_until(events, lambda ev: ev[-1].type == pb.SNAPSHOT_END)
    assert [e.type for e in head] == [pb.SNAPSHOT_END]
    await client.register_agent(AgentInfo(agent_id="before", capabilities=["py"]))
    assert changes(await take(events, 1)) == [(pb.REGISTERED, "default/before")]

    server.kill()
    await server_processes(redis_proc.url, port=server.port)  # back on the same address
    for name in ("after-1", "after-2"):
        await client.register_agent(AgentInfo(agent_id=name, capabilities=["py"]))
    # no snapshot again, nothing repeated, nothing lost
    assert changes(await take(events, 2)) == [(pb.REGISTERED, "default/after-1"),
                                              (pb.REGISTERED, "default/after-2")]
    await events.aclose()
    await client.close()


async def test_watchers_share_one_redis_reader_per_namespace(redis_registry):
    reg = redis_registry
    before = len(await reg.redis.client_list())
    streams = [await open_watch(reg.stub, capability=f"c{i % 7}") for i in range(200)]
    during = len(await reg.redis.client_list())
    assert during - before <= 2  # the namespace's log reader (and nothing per watcher)
    await reg.stub.Register(register_request(agent_id="x", capabilities=["c3"]))
    got = await asyncio.gather(*(take(s, 1) for s, _, _ in streams[3::7]))
    assert {changes(g)[0] for g in got} == {(pb.REGISTERED, "default/x")}
    for stream, _, _ in streams:
        stream.cancel()


@pytest.mark.settings(log_max_events=1000)
async def test_trimmed_revision_is_out_of_range(registry):
    stub = registry.stub
    ids = [(await stub.Register(register_request(agent_id=f"a{i}"))).agent_id for i in range(10)]
    stream, _, _ = await open_watch(stub)
    await stub.Heartbeat(pb.HeartbeatRequest(agent_id=ids[0], status=pb.DEGRADED))
    old = (await take(stream, 1))[0].revision
    stream.cancel()
    await status_flips(stub, ids, 3000)
    length = await registry.redis.xlen(keys.namespace("default").log)
    assert length < 3000  # the log was trimmed, approximately to its limit

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await take(stub.WatchAgents(pb.WatchRequest(since_revision=old)), 1)
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "compacted, re-list" in info.value.details()
    with pytest.raises(WatchCompacted):
        async for _ in registry.client.watch(since_revision=old):
            pass

    with pytest.raises(grpc.aio.AioRpcError) as info:  # a revision from a reset store
        await take(stub.WatchAgents(pb.WatchRequest(since_revision="99999999999999-0")), 1)
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE


@pytest.mark.settings(watch_buffer=10)
async def test_slow_watcher_is_cut_off_and_can_resume(registry):
    stub = registry.stub
    ids = [(await stub.Register(register_request(agent_id=f"a{i}"))).agent_id for i in range(10)]
    stream, snapshot, _ = await open_watch(stub)
    assert len(snapshot) == 10  # from here on the watcher reads nothing for a while
    await stub.Heartbeat(pb.HeartbeatRequest(agent_id=ids[0], status=pb.DEGRADED))
    start = (await take(stream, 1))[0].revision
    await status_flips(stub, ids, 20000)

    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for event in stream:
            received.append(event)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "resume" in info.value.details()
    truth = await log_after(registry.redis, start)
    got = changes(received)
    assert got == truth[:len(got)] and len(got) < len(truth)  # a prefix: nothing skipped

    resumed = stub.WatchAgents(pb.WatchRequest(since_revision=received[-1].revision))
    rest = changes(await take(resumed, len(truth) - len(got)))
    resumed.cancel()
    assert got + rest == truth


@pytest.mark.settings(progress_interval=0.1)
async def test_idle_watch_gets_progress_with_current_revision(registry):
    await registry.stub.Register(register_request(agent_id="a"))
    await registry.stub.Register(register_request(agent_id="b", namespace="elsewhere"))
    stats = await registry.stub.GetStats(pb.StatsRequest(namespace="default"))
    stream = registry.stub.WatchAgents(pb.WatchRequest(skip_snapshot=True))
    events = await take(stream, 2)
    assert [e.type for e in events] == [pb.PROGRESS, pb.PROGRESS]
    assert events[0].revision == stats.namespaces[0].revision
    stream.cancel()


# -- notifications ----------------------------------------------------------------------------

async def test_notification_reaches_agent_by_heartbeat_and_watch_until_acked(registry):
    client = registry.client
    aid = await client.register_agent(AgentInfo(capabilities=["py"]))
    watch = registry.stub.WatchAgents(pb.WatchRequest(agent_id=aid))
    assert [e.type for e in await take(watch, 2)] == [pb.SNAPSHOT, pb.SNAPSHOT_END]

    nid = await client.notify_agent(aid, "drain", '{"by": "ops"}')
    event = (await take(watch, 1))[0]
    assert event.type == pb.NOTIFICATION
    assert (event.notification.notification_id, event.notification.kind,
            event.notification.payload) == (nid, "drain", '{"by": "ops"}')
    watch.cancel()

    first = await client.update_health(aid, HealthStatus(status="healthy"))
    again = await client.update_health(aid, HealthStatus(status="healthy"))  # acks the first
    third = await client.update_health(aid, HealthStatus(status="healthy"))
    assert [n.notification_id for n in first.notifications] == [nid]
    assert [n.kind for n in again.notifications] == []
    assert third.notifications == []


async def test_watch_one_agent_of_another_namespace_by_its_full_id(registry):
    aid = (await registry.stub.Register(register_request(namespace="team-x",
                                                         agent_id="w"))).agent_id
    stream = registry.stub.WatchAgents(pb.WatchRequest(agent_id=aid))  # no namespace field
    head = await take(stream, 2)
    assert [(e.type, e.agent.agent_id) for e in head] == [(pb.SNAPSHOT, "team-x/w"),
                                                          (pb.SNAPSHOT_END, "")]
    stream.cancel()


@pytest.mark.settings(inbox_capacity=3)
async def test_notify_errors(registry):
    stub = registry.stub
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.NotifyAgent(pb.NotifyRequest(agent_id="default/nobody", kind="k"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    aid = (await stub.Register(register_request())).agent_id
    for _ in range(3):
        await stub.NotifyAgent(pb.NotifyRequest(agent_id=aid, kind="k"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.NotifyAgent(pb.NotifyRequest(agent_id=aid, kind="k"))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    beat = await stub.Heartbeat(pb.HeartbeatRequest(agent_id=aid))
    await stub.Heartbeat(pb.HeartbeatRequest(
        agent_id=aid, ack_notification_ids=[n.notification_id for n in beat.notifications]))
    await stub.NotifyAgent(pb.NotifyRequest(agent_id=aid, kind="k"))  # room again


async def test_notification_survives_a_server_restart(redis_proc, server_processes):
    first = await server_processes(redis_proc.url)
    async with grpc.aio.insecure_channel(first.address) as channel:
        stub = pb_grpc.ServiceRegistryStub(channel)
        aid = (await stub.Register(register_request())).agent_id
        nid = (await stub.NotifyAgent(pb.NotifyRequest(agent_id=aid, kind="reload",
                                                       payload="v2"))).notification_id
    assert first.terminate() == 0
    second = await server_processes(redis_proc.url)
    async with grpc.aio.insecure_channel(second.address) as channel:
        stub = pb_grpc.ServiceRegistryStub(channel)
        beat = await stub.Heartbeat(pb.HeartbeatRequest(agent_id=aid))
    assert [(n.notification_id, n.kind, n.payload) for n in beat.notifications] == [
        (nid, "reload", "v2")]
