"""ServiceRegistryClient.keep_alive(): background heartbeats shared by a process's agents, and
what happens when an agent is found gone or the server goes away.

Tests marked `integration` use only the gRPC API and run against SERVICE_REGISTRY_HOST/PORT when
set (tests/integration_target.py); the others need a server the test controls.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
import uuid

import grpc
import pytest
from neural_hive_integration.clients import (AgentEvicted, AgentInfo, AgentLost, HealthStatus,
                                             RegistryError, ServiceRegistryClient)
from neural_hive_integration.clients import keepalive
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from prometheus_client import REGISTRY

from conftest import ROOT

integration = pytest.mark.integration


def new_agent(**kw) -> AgentInfo:
    """An agent in a namespace of its own test (so an external server's other agents do not
    matter)."""
    base = dict(namespace=f"ka-{uuid.uuid4().hex[:10]}", agent_type="worker",
                capabilities=["python"], endpoint="w:1")
    base.update(kw)
    return AgentInfo(**base)


def health(rate: float, status: str = "") -> HealthStatus:
    return HealthStatus(status=status, metrics={"success_rate": rate, "avg_duration_ms": 5.0,
                                                "total_executions": 100,
                                                "failed_executions": round(100 * (1 - rate))})


async def until(ka, predicate, timeout: float = 15.0) -> None:
    """Awaits the keep-alive's state changes until `predicate()` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out waiting on {ka}: lost={ka.lost} "
                                 f"last_error={ka.last_error}")
        try:
            await asyncio.wait_for(ka.changed(), remaining)
        except asyncio.TimeoutError:
            pass


async def assert_inbox_empty(registry, agent_id: str) -> None:
    """Every notification was acknowledged: a plain heartbeat gets none back."""
    raw = await registry.stub.Heartbeat(pb.HeartbeatRequest(agent_id=agent_id))
    assert list(raw.notifications) == []


_tasks_before: set[asyncio.Task] = set()


@pytest.fixture(autouse=True)
async def _note_tasks():
    """Tasks already running (the loop is shared by the session) are not this test's."""
    _tasks_before.clear()
    _tasks_before.update(asyncio.all_tasks())
    yield


def keepalive_tasks() -> list[str]:
    """The keep-alive tasks this test left running."""
    return [t.get_name() for t in asyncio.all_tasks() - _tasks_before
            if t.get_name().startswith("keepalive")]


@pytest.fixture
async def client(registry):
    """A client of the test's registry, closed after the test."""
    c = registry.new_client()
    yield c
    await c.close()


@pytest.fixture(params=["batch", "stream"])
def transport(request) -> str:
    return request.param


# -- the keep-alive ---------------------------------------------------------------------------

@integration
async def test_keep_alive_renews_the_lease_with_fresh_telemetry(registry, transport):
    client = registry.new_client(keepalive_transport=transport)
    rates = iter([0.99, 0.98, 0.97, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6])
    agent = new_agent()
    ka = await client.keep_alive(agent, telemetry=lambda: health(next(rates)), interval=0.2)
    assert agent.agent_id and ka.beats >= 1
    first = (await client.get_agent(agent.agent_id)).expires_at_unix_ms
    while ka.beats < 4:
        await ka.next_beat()
    seen = await client.get_agent(agent.agent_id)
    assert seen.expires_at_unix_ms > first
    assert seen.telemetry["success_rate"] == 0.6 and seen.status == "degraded"
    await ka.stop()
    await client.close()


@pytest.mark.settings(heartbeat_timeout=1.5)
async def test_interval_is_a_third_of_the_heartbeat_timeout_with_jitter(registry, client):
    """Default interval from the server's heartbeat_timeout_ms; each beat comes 85-100% of it
    after the last, drawn per call, so processes started together drift apart."""
    ka = await client.keep_alive(new_agent())
    assert ka.interval == pytest.approx(0.5)
    loop = asyncio.get_running_loop()
    gaps = []
    for _ in range(3):
        await ka.next_beat()
        gaps.append(ka.next_due - loop.time())
    assert all(0.4 <= gap <= 0.5 for gap in gaps), gaps
    assert len(set(gaps)) == 3


async def test_agents_of_one_client_share_a_few_batch_calls(registry, client):
    """200 agents: each tick is one HeartbeatBatch call (chunks of 250), never a unary call per
    agent."""
    def count(operation: str) -> float:
        return REGISTRY.get_sample_value("service_registry_latency_seconds_count",
                                         {"operation": operation, "outcome": "ok"}) or 0.0

    agents = [new_agent(namespace="ka-share") for _ in range(200)]
    for agent in agents:
        await client.register_agent(agent)
    unary, batch = count("heartbeat"), count("heartbeat_batch")
    handles = [client.keep_alive(a, interval=0.3) for a in agents]
    for ka in handles:
        await ka
    while min(ka.beats for ka in handles) < 4:
        await handles[0].next_beat()
    beats = sum(ka.beats for ka in handles)
    calls = count("heartbeat_batch") - batch
    assert count("heartbeat") == unary
    assert beats >= 800 and calls <= beats / 50, (beats, calls)


async def test_a_failing_telemetry_callable_still_renews_the_lease(registry, client):
    calls = []

    def telemetry() -> HealthStatus:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("sensor down")
        return health(0.7)

    agent = new_agent()
    ka = await client.keep_alive(agent, telemetry=telemetry, interval=0.1)
    before = ka.expires_at_unix_ms
    await ka.next_beat()
    await ka.next_beat()
    assert ka.expires_at_unix_ms > before and ka.failures == 0
    seen = await client.get_agent(agent.agent_id)
    assert seen.status == "degraded" and seen.telemetry["success_rate"] == 0.7  # kept


@integration
async def test_update_health_beats_now_and_changes_what_later_beats_send(registry, client):
    agent = new_agent()
    ka = await client.keep_alive(agent, telemetry=health(0.99), interval=0.2)
    result = await client.update_health(agent.agent_id, health(0.3))
    assert result.status == "unhealthy"
    for _ in range(2):
        await ka.next_beat()
    seen = await client.get_agent(agent.agent_id)
    assert seen.status == "unhealthy" and seen.telemetry["success_rate"] == 0.3


# -- notifications ----------------------------------------------------------------------------

@integration
async def test_notifications_reach_the_callback_once_and_are_acknowledged(registry, client):
    got: list[pb.Notification] = []
    agent = new_agent()
    ka = await client.keep_alive(agent, interval=0.1, on_notification=got.append)
    ids = [await client.notify_agent(agent.agent_id, "drain", str(i)) for i in range(3)]
    await until(ka, lambda: len(got) >= 3)
    for _ in range(3):  # beats after delivery carry the acknowledgements
        await ka.next_beat()
    assert [n.notification_id for n in got] == ids
    assert [n.payload for n in got] == ["0", "1", "2"]
    await ka.stop()
    await assert_inbox_empty(registry, agent.agent_id)


@integration
async def test_notifications_as_an_async_iterator(registry, client):
    agent = new_agent()
    ka = await client.keep_alive(agent, interval=0.1)
    nid = await client.notify_agent(agent.agent_id, "reload", "{}")
    async for n in ka.notifications():
        assert (n.notification_id, n.kind) == (nid, "reload")
        break
    await ka.next_beat()
    await ka.next_beat()
    await ka.stop()
    await assert_inbox_empty(registry, agent.agent_id)


async def test_a_failing_callback_gets_the_notification_again(registry, client):
    calls: list[str] = []

    def handler(n: pb.Notification) -> None:
        calls.append(n.notification_id)
        if len(calls) == 1:
            raise RuntimeError("not now")

    agent = new_agent()
    ka = await client.keep_alive(agent, interval=0.1, on_notification=handler)
    nid = await client.notify_agent(agent.agent_id, "job", "x")
    await until(ka, lambda: len(calls) >= 2)
    assert calls == [nid, nid]


# -- agents found gone ------------------------------------------------------------------------

@integration
async def test_evicted_agent_is_told_the_reason_then_registered_again(registry, transport):
    client = registry.new_client(keepalive_transport=transport)
    agent = new_agent()
    present_when_told: list[bool] = []

    async def on_lost(lost: AgentLost) -> None:
        present_when_told.append(await client.get_agent(lost.agent_id) is not None)

    ka = await client.keep_alive(agent, interval=0.1, on_lost=on_lost)
    assert await client.evict_agents([agent.agent_id], reason="disk full") == [agent.agent_id]
    await until(ka, lambda: ka.reregistrations == 1)
    assert [(x.cause, x.reason) for x in ka.lost] == [("evicted", "disk full")]
    assert present_when_told == [False]  # told before it was registered again
    again = await client.get_agent(agent.agent_id)
    assert again.endpoint == "w:1" and again.capabilities == ["python"]
    await ka.next_beat()
    assert not ka.done
    await client.close()


@integration
async def test_evicted_agent_can_stay_evicted(registry, client):
    agent = new_agent()
    ka = await client.keep_alive(agent, interval=0.1, reregister_evicted=False)
    await client.evict_agents([agent.agent_id], reason="decommissioned")
    with pytest.raises(AgentEvicted) as info:
        await asyncio.wait_for(ka.wait(), 15)
    assert info.value.lost.reason == "decommissioned" and "decommissioned" in str(info.value)
    assert await client.get_agent(agent.agent_id) is None
    assert keepalive_tasks() == []


@pytest.mark.settings(heartbeat_timeout=0.4)
async def test_expired_agent_is_registered_again(registry, client):
    """A beat that comes too late (interval over the timeout) finds the agent expired."""
    agent = new_agent()
    ka = await client.keep_alive(agent, interval=0.7)
    await until(ka, lambda: ka.reregistrations >= 1)
    assert ka.lost[0].cause == "expired"
    result = await ka.next_beat()  # the beat right after the registration
    assert result.reregistered and result.status == "healthy"


async def test_store_reset_registers_the_agents_again(registry, client):
    agents = [new_agent(namespace="ka-reset") for _ in range(3)]
    handles = [await client.keep_alive(a, interval=0.1) for a in agents]
    await registry.redis.flushall()
    for ka in handles:
        await until(ka, lambda: ka.reregistrations >= 1)
        assert ka.lost[0].cause == "unknown"
    for agent in agents:
        assert (await client.get_agent(agent.agent_id)).endpoint == "w:1"


@integration
async def test_deregistered_elsewhere_ends_the_keep_alive(registry):
    client, other = registry.new_client(), registry.new_client()
    agent = new_agent()
    ka = await client.keep_alive(agent, interval=0.1)
    assert await other.deregister_agent(agent.agent_id)
    await asyncio.wait_for(ka.wait(), 15)  # ends without an error
    assert ka.lost[0].cause == "deregistered" and ka.reregistrations == 0
    assert await client.get_agent(agent.agent_id) is None
    await client.close()
    await other.close()


@integration
async def test_deregister_agent_stops_its_keep_alive(registry, client):
    agent = new_agent()
    ka = await client.keep_alive(agent, interval=0.05)
    assert await client.deregister_agent(agent.agent_id)
    assert ka.done and keepalive_tasks() == []
    assert await client.get_agent(agent.agent_id) is None


@integration
async def test_keep_alive_of_an_unknown_id_fails(registry, client):
    with pytest.raises(RegistryError) as info:
        await client.keep_alive("ka-none/ghost", interval=0.1)
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ValueError):
        client.keep_alive(new_agent(), interval=0)


# -- stopping ---------------------------------------------------------------------------------

@integration
async def test_context_manager_stops_and_deregisters(registry, client):
    agent = new_agent()
    async with client.keep_alive(agent, interval=0.05, deregister=True) as ka:
        await ka.next_beat()
        assert await client.get_agent(agent.agent_id) is not None
    assert ka.done and keepalive_tasks() == []
    assert await client.get_agent(agent.agent_id) is None


@integration
async def test_closing_the_client_while_a_keep_alive_starts(registry):
    client = registry.new_client()
    ka = client.keep_alive(new_agent(), interval=0.05)
    await client.close()
    assert ka.done and keepalive_tasks() == []
    with pytest.raises(RegistryError):
        await ka


@integration
async def test_keep_alive_by_id_of_an_agent_registered_before(registry, client):
    agent = new_agent()
    aid = await registry.client.register_agent(agent)  # another client registered it
    ka = await client.keep_alive(aid, telemetry=health(0.95), interval=0.1)
    await ka.stop(deregister=True)
    assert await client.get_agent(aid) is None


def test_stopping_leaves_no_pending_task(tmp_path):
    """A program that stops one keep-alive, leaves others to client.close() and exits: no
    'Task was destroyed but it is pending', no 'never awaited', nothing on stderr."""
    script = tmp_path / "agent.py"
    script.write_text(textwrap.dedent("""
        import asyncio, logging, sys
        sys.path.insert(0, sys.argv[1])
        from conftest import running_registry
        from neural_hive_integration.clients import AgentInfo, HealthStatus

        async def main():
            async with running_registry("embedded", None, heartbeat_timeout=0.6) as reg:
                async with reg.new_client() as client:
                    kas = [await client.keep_alive(AgentInfo(capabilities=["x"]),
                                                   deregister=True) for _ in range(3)]
                    await kas[0].next_beat()
                    await kas[0].stop()
                    await client.notify_agent(kas[1].agent_id, "k", "p")
                    await kas[1].next_beat()
                ids = [ka.agent_id for ka in kas]
                left = await reg.new_client().get_agent(ids[2])
                print("left", left)

        logging.basicConfig(level=logging.WARNING)
        asyncio.run(main())
    """))
    proc = subprocess.run([sys.executable, "-X", "dev", "-W", "error::RuntimeWarning",
                           str(script), str(ROOT / "tests")], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={"SERVICE_REGISTRY_LOG_LEVEL": "ERROR",
                                                     "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "left None" in proc.stdout  # deregister=True also applies when the client closes
    noise = [line for line in proc.stderr.splitlines()
             if "destroyed" in line or "never awaited" in line or "Traceback" in line
             or "Exception" in line]
    assert noise == [], proc.stderr


# -- the server goes away ---------------------------------------------------------------------

RECONNECT_CAP_S = 2.0 * 1.2  # service_registry_client's max_reconnect_backoff_ms, with jitter


@pytest.mark.parametrize("how,via", [("kill", "batch"), ("drain", "batch"), ("kill", "stream")])
async def test_lease_is_renewed_after_the_server_comes_back(redis_proc, server_processes, how,
                                                            via):
    """The only server process dies (or drains on SIGTERM) and starts again on the same port:
    the keep-alive retries with backoff and renews the lease before it runs out, so the agent
    is never re-registered."""
    server = await server_processes(redis_proc.url, HEARTBEAT_TIMEOUT=10, SHUTDOWN_GRACE=1)
    host, port = server.address.split(":")
    client = ServiceRegistryClient(host, int(port), retries=1, backoff=0.05,
                                   keepalive_transport=via)
    agent = new_agent()
    ka = await client.keep_alive(agent)
    assert ka.interval == pytest.approx(10 / 3)
    before = await client.get_agent(agent.agent_id)
    await ka.next_beat()
    if how == "kill":
        server.kill()
    else:
        await asyncio.to_thread(server.terminate)
    await until(ka, lambda: ka.failures >= 1)
    assert ka.last_error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    await server.start()
    back = time.monotonic()
    beats = ka.beats
    await until(ka, lambda: ka.beats > beats)
    # within the keep-alive's backoff cap (half the interval) plus the channel's reconnect
    # backoff cap (the client's grpc.max_reconnect_backoff_ms, 2 s, +20% jitter) and slack
    assert time.monotonic() - back < ka.interval / 2 + RECONNECT_CAP_S + 0.5
    assert ka.reregistrations == 0 and ka.lost == []  # the lease never ran out
    after = await client.get_agent(agent.agent_id)
    assert after.registered_at_unix_ms == before.registered_at_unix_ms
    await client.close()


@pytest.mark.settings(heartbeat_timeout=1.0)
async def test_redis_outage_then_recovery(redis_registry):
    """Redis goes away (the server answers UNAVAILABLE) and comes back empty: the keep-alive
    retries, then finds the agent gone and registers it again."""
    reg = redis_registry
    client = reg.new_client(retries=0, backoff=0.02)
    agent = new_agent()
    ka = await client.keep_alive(agent)
    reg.redis_proc.stop()
    await until(ka, lambda: ka.failures >= 2)
    assert ka.last_error.code == grpc.StatusCode.UNAVAILABLE
    reg.redis_proc.start()
    await until(ka, lambda: ka.reregistrations >= 1)
    assert (await client.get_agent(agent.agent_id)).endpoint == "w:1"
    await client.close()


def test_backoff_grows_with_jitter_and_stays_under_half_the_interval():
    group = keepalive._KeepAliveGroup.__new__(keepalive._KeepAliveGroup)
    group.client = ServiceRegistryClient("127.0.0.1", 1, backoff=0.1, max_backoff=2.0)
    agent = type("A", (), {"interval": 1.0})()
    delays = []
    for failures in range(8):
        group.failures = failures
        delays.append(group._backoff(agent))
    assert delays[0] <= 0.1 and max(delays) <= 0.5
    assert delays[3] > delays[0]
