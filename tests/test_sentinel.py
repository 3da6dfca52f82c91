"""Redis Sentinel (issue 10, failover half): the registry on a Sentinel deployment (1 primary,
1 replica, 3 sentinels started here), the primary SIGKILLed under load, MIN_REPLICA_ACKS, a
watcher ahead of the promoted replica, and the configurations that stop the start."""
from __future__ import annotations

import asyncio
import itertools
import shutil
import time

import grpc
import pytest
from neural_hive_integration.clients import AgentInfo, HealthStatus
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc

from conftest import REDIS_SERVER, running_registry
from server import metrics
from server.testing import SentinelSet, free_port
from test_faults import View, read_until_error
from test_registry import expect_status, register_request
from test_startup import assert_refused_in_one_line, serve
from test_watch import open_watch, take_until

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="needs redis-server")
TIMEOUT = 30
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def sentinel_set():
    """One set for the scenarios that do not fail it over (each in a namespace of its own)."""
    deployment = SentinelSet()
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.cleanup()


@pytest.fixture
def failover_set():
    """A set of the test's own, to kill its primary."""
    made: list[SentinelSet] = []

    def make(**kw) -> SentinelSet:
        deployment = SentinelSet(**kw)
        made.append(deployment)
        deployment.start()
        return deployment
    yield make
    for deployment in made:
        deployment.cleanup()


async def listed(client, namespace: str) -> set[str]:
    return {agent.agent_id async for agent in client.iter_agents(namespace=namespace)}


# -- the core scenarios on Sentinel -----------------------------------------------------------

async def test_register_heartbeat_get_discover_and_list(sentinel_set):
    async with running_registry("sentinel", sentinel_set) as reg:
        ns = "core"
        ids = [await reg.client.register_agent(AgentInfo(
            agent_type="worker", capabilities=["python", f"gpu{i % 2}"], namespace=ns))
            for i in range(4)]
        result = await reg.client.update_health(ids[0], HealthStatus(status="degraded"))
        assert result.status == "degraded"
        assert (await reg.client.get_agent(ids[0])).status == "degraded"
        found = await reg.client.discover_agents(["python", "gpu1"], namespace=ns)
        assert {a.agent_id for a in found} == {ids[1], ids[3]}
        assert await listed(reg.client, ns) == set(ids)
        # the writes are on the primary the sentinels name, and replicated
        primary = sentinel_set.node_client(sentinel_set.primary())
        assert primary.info("replication")["role"] == "master"
        sentinel_set.wait_replicas(1)


async def test_notify_evict_and_deregister(sentinel_set):
    async with running_registry("sentinel", sentinel_set) as reg:
        ns = "inbox"
        a, b, c = [await reg.client.register_agent(AgentInfo(agent_type="worker", namespace=ns))
                   for _ in range(3)]
        sent = await reg.client.notify_agent(a, "reload", "now")
        beat = await reg.client.update_health(a, HealthStatus())
        assert [n.notification_id for n in beat.notifications] == [sent]
        assert await reg.client.evict_agents([b], reason="drain") == [b]
        assert await reg.client.deregister_agent(c)
        assert await listed(reg.client, ns) == {a}


async def test_watch_resumes_from_its_revision(sentinel_set):
    async with running_registry("sentinel", sentinel_set) as reg:
        ns = "watching"
        stream, _, _ = await open_watch(reg.stub, namespace=ns)
        await reg.stub.Register(register_request(agent_id="w1", namespace=ns))
        first = (await take_until(stream, lambda ev: ev[-1].type == pb.REGISTERED))[-1]
        stream.cancel()
        await reg.stub.Register(register_request(agent_id="w2", namespace=ns))
        resumed = reg.stub.WatchAgents(pb.WatchRequest(namespace=ns,
                                                       since_revision=first.revision))
        events = await take_until(resumed, lambda ev: ev[-1].type == pb.REGISTERED)
        resumed.cancel()
        assert [(e.type, e.agent.agent_id) for e in events] == [(pb.REGISTERED, f"{ns}/w2")]


async def test_expiry_by_keyspace_events_of_the_primary(sentinel_set):
    before = metrics.EXPIRED.labels("keyspace_event")._value.get()
    async with running_registry("sentinel", sentinel_set, heartbeat_timeout=1.0,
                                sweep_interval=10) as reg:
        ns = "expiring"
        stream, _, _ = await open_watch(reg.stub, namespace=ns)
        await reg.stub.Register(register_request(agent_id="e1", namespace=ns))
        expired = await take_until(stream, lambda ev: ev[-1].type == pb.EXPIRED)
        stream.cancel()
        assert expired[-1].agent.agent_id == f"{ns}/e1"
        # reaped by the primary's `expired` event, not by the sweeper (every 10 s)
        assert metrics.EXPIRED.labels("keyspace_event")._value.get() == before + 1


async def test_min_replica_acks_is_met_by_the_replica(sentinel_set):
    async with running_registry("sentinel", sentinel_set, min_replica_acks=1) as reg:
        agent = await reg.client.register_agent(AgentInfo(agent_type="worker", namespace="acked"))
        assert await reg.client.notify_agent(agent, "k")
        assert await reg.client.evict_agents([agent]) == [agent]


# -- MIN_REPLICA_ACKS and a read-only node, single Redis ----------------------------------------

@pytest.mark.settings(min_replica_acks=1)
async def test_min_replica_acks_without_a_replica_is_unavailable_naming_the_count(
        redis_registry):
    reg = redis_registry
    details = await expect_status(reg.stub.Register(register_request(agent_id="x1")),
                                  UNAVAILABLE, "0 of 1 replica", "MIN_REPLICA_ACKS")
    assert "may be lost" in details
    # heartbeats do not wait (the write above stands on the primary)
    await reg.stub.Heartbeat(pb.HeartbeatRequest(agent_id="default/x1"))
    for call in (lambda: reg.stub.NotifyAgent(pb.NotifyRequest(agent_id="default/x1",
                                                              kind="k")),
                 lambda: reg.stub.EvictAgents(pb.EvictRequest(agent_ids=["default/x1"])),
                 lambda: reg.stub.Deregister(pb.DeregisterRequest(agent_id="default/x1"))):
        await expect_status(call(), UNAVAILABLE, "0 of 1 replica")


def test_min_replica_acks_needs_redis():
    done = serve(MIN_REPLICA_ACKS="1")
    assert_refused_in_one_line(done, "MIN_REPLICA_ACKS", "needs REDIS_URL")


async def test_a_primary_demoted_to_replica_answers_unavailable_then_recovers(redis_factory):
    other, node = redis_factory(), redis_factory()
    async with running_registry("redis", node) as reg:
        await reg.stub.Register(register_request(agent_id="r1"))
        admin = node.client()
        await admin.replicaof("127.0.0.1", other.port)
        deadline = time.monotonic() + TIMEOUT   # its sync done (Redis has no event for it)
        while (await admin.info("replication")).get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the node never synchronised"
            await asyncio.sleep(0.05)
        await expect_status(reg.stub.Register(register_request(agent_id="r2")), UNAVAILABLE,
                            "read-only")
        await admin.replicaof("NO", "ONE")   # promoted again: no restart needed
        await reg.stub.Register(register_request(agent_id="r3"))
        await admin.aclose()


# -- configurations that stop the start ---------------------------------------------------------

def test_a_wrong_primary_name_stops_the_start(sentinel_set):
    url = sentinel_set.url.replace(f"/{sentinel_set.name}/", "/nosuch/")
    done = serve(REDIS_URL=url)
    line = assert_refused_in_one_line(done, "REDIS_URL", "no primary named 'nosuch'")
    assert repr(sentinel_set.name) in line  # what they do monitor


def test_unreachable_sentinels_stop_the_start():
    url = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/registry"
    done = serve(REDIS_URL=url)
    assert_refused_in_one_line(done, "REDIS_URL", "no sentinel answers")


# -- failover ----------------------------------------------------------------------------------

class Load:
    """Registers and heartbeats through each server (raw stubs, no retries) until stopped:
    every acknowledged Register is recorded, with the first success after the kill."""

    def __init__(self, addresses: list[str], namespace: str):
        self.namespace = namespace
        self.channels = [grpc.aio.insecure_channel(a) for a in addresses]
        self.acked: set[str] = set()
        self.failed: dict[str, int] = {}
        self.killed_at = 0.0
        self.after_kill: dict[int, float] = {}       # server index -> first write after the kill
        self.served_after = asyncio.Event()          # every server wrote after the kill
        self._ids = itertools.count()
        self._stop = False
        self._tasks = [asyncio.create_task(self._work(i, pb_grpc.ServiceRegistryStub(ch)))
                       for i, ch in enumerate(self.channels) for _ in range(2)]

    async def _work(self, server: int, stub) -> None:
        while not self._stop:
            name = f"a{next(self._ids)}"
            try:
                reply = await stub.Register(register_request(agent_id=name,
                                                             namespace=self.namespace),
                                            timeout=10)
                self.acked.add(reply.agent_id)
                await stub.Heartbeat(pb.HeartbeatRequest(agent_id=reply.agent_id), timeout=10)
                if self.killed_at and server not in self.after_kill:
                    self.after_kill[server] = time.monotonic() - self.killed_at
                    if len(self.after_kill) == len(self.channels):
                        self.served_after.set()
            except grpc.aio.AioRpcError as exc:
                self.failed[exc.code().name] = self.failed.get(exc.code().name, 0) + 1
                await asyncio.sleep(0.05)  # pacing while Redis fails over, not a wait for it

    async def stop(self) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)
        for channel in self.channels:
            await channel.close()


async def run_failover(deployment: SentinelSet, servers: list,
                       namespace: str) -> tuple[Load, set[str]]:
    """Load on `servers` and a watcher; SIGKILL of the primary; the load goes on until every
    server has written again; then the watcher must hold what a fresh List returns."""
    from neural_hive_integration.clients import ServiceRegistryClient
    client = ServiceRegistryClient("127.0.0.1", servers[0].port, retries=10, backoff=0.1)
    view = View(client, namespace=namespace)
    load = Load([s.address for s in servers], namespace)
    await view.until(lambda: len(view.agents) >= 20, "the watcher follows the load")
    old = deployment.kill_primary()
    load.killed_at = time.monotonic()
    await asyncio.wait_for(load.served_after.wait(), TIMEOUT)
    await asyncio.to_thread(deployment.wait_promoted, old)
    await load.stop()
    truth = await listed(client, namespace)
    await view.until(lambda: view.agents == truth, "the watcher's state equals a fresh List")
    await view.close()
    await client.close()
    return load, truth


async def test_servers_follow_the_new_primary_after_sigkill(failover_set, server_processes):
    deployment = failover_set()
    servers = [await server_processes(deployment.url) for _ in range(2)]
    load, _ = await run_failover(deployment, servers, "fo")
    # both processes write again on the promoted replica, without a restart
    assert max(load.after_kill.values()) < 20, load.after_kill
    assert all(s.proc.poll() is None for s in servers)
    assert set(load.failed) <= {"UNAVAILABLE", "NOT_FOUND"}, load.failed  # NOT_FOUND: a lost
    # Register's agent, heartbeated at once; nothing INTERNAL or UNKNOWN


async def test_with_min_replica_acks_no_acknowledged_register_is_lost(failover_set,
                                                                      server_processes):
    deployment = failover_set(replicas=2)   # the promoted one keeps a replica to ack writes
    servers = [await server_processes(deployment.url, MIN_REPLICA_ACKS=1) for _ in range(2)]
    load, listed_after = await run_failover(deployment, servers, "acked")
    assert load.acked and load.acked <= listed_after, sorted(load.acked - listed_after)[:5]
    assert set(load.failed) <= {"UNAVAILABLE"}, load.failed


async def test_a_watcher_ahead_of_the_promoted_replica_is_told_and_re_lists(failover_set):
    """The replica misses the last entries (cut off from the primary by hand, as a lagging
    replica would be), then is promoted: open watches and resumes from the lost revision get
    OUT_OF_RANGE, and the client's watch() lists again by itself."""
    deployment = failover_set()
    async with running_registry("sentinel", deployment) as reg:
        ns = "ahead"
        await reg.stub.Register(register_request(agent_id="kept", namespace=ns))
        deployment.wait_replicas(1)
        view = View(reg.client, namespace=ns)
        await view.until(lambda: view.agents == {f"{ns}/kept"}, "first snapshot")
        stream, _, _ = await open_watch(reg.stub, namespace=ns)
        replica = deployment.replicas()[0]
        deployment.node_client(replica).replicaof("NO", "ONE")   # it stops receiving writes
        await reg.stub.Register(register_request(agent_id="lost", namespace=ns))
        lost = (await take_until(stream, lambda ev: ev[-1].type == pb.REGISTERED))[-1]
        await view.until(lambda: f"{ns}/lost" in view.agents, "the watcher saw it")

        old = deployment.kill_primary()
        assert await asyncio.to_thread(deployment.wait_promoted, old) is replica
        error = await read_until_error(stream)
        assert error.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "store was reset" in error.details() and lost.revision in error.details()
        await view.until(lambda: view.agents == {f"{ns}/kept"}, "view after the failover")
        assert view.resyncs and "re-list" in view.resyncs[0]
        resumed = reg.stub.WatchAgents(pb.WatchRequest(namespace=ns,
                                                       since_revision=lost.revision))
        error = await read_until_error(resumed)
        assert error.code() == grpc.StatusCode.OUT_OF_RANGE and lost.revision in error.details()
        assert await listed(reg.client, ns) == {f"{ns}/kept"}
        await view.close()


async def test_expiry_events_follow_the_new_primary(failover_set):
    deployment = failover_set()
    async with running_registry("sentinel", deployment, heartbeat_timeout=1.5,
                                sweep_interval=10) as reg:
        old = deployment.kill_primary()
        new = await asyncio.to_thread(deployment.wait_promoted, old)
        admin = deployment.node_client(new)
        # the listener's psubscribe at the new primary (another process's state: polled)
        await asyncio.to_thread(deployment.until, lambda: admin.pubsub_numpat() >= 1, TIMEOUT,
                                "expiry listener subscribed at the new primary")
        ns = "after"
        stream, _, _ = await open_watch(reg.stub, namespace=ns)
        before = metrics.EXPIRED.labels("keyspace_event")._value.get()
        await reg.stub.Register(register_request(agent_id="e1", namespace=ns))
        expired = await take_until(stream, lambda ev: ev[-1].type == pb.EXPIRED
                                   and ev[-1].agent.agent_id == f"{ns}/e1")
        stream.cancel()
        assert expired
        assert metrics.EXPIRED.labels("keyspace_event")._value.get() > before
        config = admin.config_get("notify-keyspace-events")
        assert {"E", "x"} <= set(config["notify-keyspace-events"])


# -- the benchmark suite on a Sentinel URL -------------------------------------------------------

def test_bench_takes_a_sentinel_url(tmp_path, sentinel_set):
    """Redis-side figures (memory, redis-benchmark on the primary) through the server's own
    client for the URL; the numbers mean nothing here."""
    import json
    import subprocess
    import sys

    from conftest import ROOT
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "--tiny", "--no-install-tools",
         "--no-h2load", "--no-chart", "--server-procs", "1", "--loadgen-procs", "1",
         "--scenarios", "ceilings,register,memory", "--redis-url", sentinel_set.url,
         "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {r["scenario"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    assert results["register.storm"]["ops"] > 0 and results["register.storm"]["errors"] == 0
    assert results["memory.per_agent"]["extra"]["bytes_per_agent"] > 0
    if shutil.which("redis-benchmark"):
        assert results["ceiling.redis.P16"]["ops"] > 0


def test_readonly_maps_to_unavailable_not_internal():
    from redis.exceptions import ReadOnlyError

    from server.errors import status_of
    code, message = status_of(ReadOnlyError("You can't write against a read only replica."))
    assert code == UNAVAILABLE and "read-only" in message


@pytest.mark.parametrize("url, kind", [
    ("redis://h:1/0", "Connection"), ("rediss://h:1/0", "SSLConnection"),
    ("unix:///run/redis.sock?db=1", "UnixDomainSocketConnection")])
def test_each_single_node_scheme_keeps_its_transport_and_drops_demoted_connections(url, kind):
    from redis.asyncio import connection

    from server.config import Settings
    from server.store import Store
    cls = Store(Settings(redis_url=url)).redis.connection_pool.connection_class
    assert issubclass(cls, getattr(connection, kind))
    assert cls.read_response.__qualname__.startswith("_DemotionAware")


async def test_a_manual_failover_is_followed(failover_set):
    """SENTINEL FAILOVER: the old primary lives on as a replica (Sentinel makes it drop its
    clients). Writes and expiry events carry on at the new primary, and the watch ends equal to
    a fresh List. (Whatever the old primary wrote between the promotion and its own demotion, a
    reap say, is lost; a watcher that saw it re-lists: the forced failover does not wait.)"""
    deployment = failover_set()
    async with running_registry("sentinel", deployment, heartbeat_timeout=1.5,
                                sweep_interval=10) as reg:
        ns = "manual"
        client = reg.new_client(retries=30, backoff=0.1)
        view = View(client, namespace=ns)
        expired: set[str] = set()
        both_expired = asyncio.Event()

        async def expiries() -> None:
            async for event in client.watch(namespace=ns):  # SNAPSHOT_END: in place
                if event.type == pb.EXPIRED:
                    expired.add(event.agent.agent_id)
                    if expired >= {f"{ns}/before", f"{ns}/after"}:
                        both_expired.set()
        follower = asyncio.create_task(expiries())
        await client.register_agent(AgentInfo(agent_id=f"{ns}/before", agent_type="worker"))
        await view.until(lambda: f"{ns}/before" in view.agents, "the watcher follows")
        old = deployment.primary()
        deployment.sentinel_client().sentinel_failover(deployment.name)
        new = await asyncio.to_thread(deployment.wait_promoted, old)
        admin = deployment.node_client(new)
        await asyncio.to_thread(deployment.until, lambda: admin.pubsub_numpat() >= 1 and "x" in
                                admin.config_get("notify-keyspace-events")[
                                    "notify-keyspace-events"], TIMEOUT,
                                "expiry events on and subscribed at the new primary")
        before = metrics.EXPIRED.labels("keyspace_event")._value.get()
        await client.register_agent(AgentInfo(agent_id=f"{ns}/after", agent_type="worker"))
        # both leases (1.5 s, no heartbeats) run out at the new primary and expire there
        await asyncio.wait_for(both_expired.wait(), TIMEOUT)
        follower.cancel()
        assert [a async for a in client.iter_agents(namespace=ns)] == []
        await view.until(lambda: not view.agents, "the watch equals a fresh List")
        assert metrics.EXPIRED.labels("keyspace_event")._value.get() > before
        await view.close()
        await client.close()
