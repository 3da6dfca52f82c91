"""Graceful shutdown: SIGTERM on a `service-registry serve` process under heartbeat load.

Every heartbeat either succeeds or gets UNAVAILABLE (which clients retry, elsewhere); watchers
are ended with UNAVAILABLE and resume on another process without missing an event; health turns
NOT_SERVING at the start of the drain and stays so; the process exits 0 with JSON logs."""
from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc

from server import keys

NS = "load"
AGENTS = 16
WATCHERS = 3
GRACE = 20.0         # the drain lasts until the test ends its keep-alive stream
WARM_UP = 10         # heartbeats each agent gets answered before SIGTERM
OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
LIVE = {pb.SNAPSHOT, pb.SNAPSHOT_END, pb.PROGRESS}  # not log entries


def heartbeat(agent: str, seq: int) -> pb.HeartbeatRequest:
    """seq goes into total_executions (to check what was applied) and flips the status, so
    every heartbeat writes a STATUS_CHANGED event to the log watchers follow."""
    return pb.HeartbeatRequest(
        agent_id=f"{NS}/{agent}", status=pb.HEALTHY if seq % 2 else pb.DEGRADED,
        telemetry=pb.AgentTelemetry(success_rate=1.0, total_executions=seq))


class Load:
    """One task per agent sending unary heartbeats back to back until one fails."""

    def __init__(self, stub):
        self.stub = stub
        self.outcomes: dict[str, list[tuple[int, grpc.StatusCode]]] = {}
        self.warm = asyncio.Event()
        self._warm_agents = set()

    async def run(self, agent: str) -> None:
        outcomes = self.outcomes.setdefault(agent, [])
        seq = 0
        while True:
            seq += 1
            try:
                await self.stub.Heartbeat(heartbeat(agent, seq), timeout=20)
                outcomes.append((seq, OK))
            except grpc.aio.AioRpcError as exc:
                outcomes.append((seq, exc.code()))
                return
            if seq == WARM_UP:
                self._warm_agents.add(agent)
                if len(self._warm_agents) == AGENTS:
                    self.warm.set()


async def follow_watch(stub, seen: list[str], ready: asyncio.Event) -> grpc.aio.AioRpcError:
    """Reads a WatchAgents stream to its end; returns the status it ended with."""
    call = stub.WatchAgents(pb.WatchRequest(namespace=NS))
    try:
        async for event in call:
            if event.type == pb.SNAPSHOT_END:
                seen.append(event.revision)  # where the live feed starts
                ready.set()
            elif event.type not in LIVE:
                seen.append(event.revision)
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the watch ended without a status")


async def follow_health(channel, statuses: list[int], serving: asyncio.Event) -> None:
    stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
    try:
        async for reply in stream:
            statuses.append(reply.status)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                serving.set()
    except grpc.aio.AioRpcError:
        pass


async def test_sigterm_under_heartbeat_load(redis_proc, server_processes):
    draining = await server_processes(redis_proc.url, SHUTDOWN_GRACE=GRACE, LOG_FORMAT="json")
    other = await server_processes(redis_proc.url)   # where clients resume
    redis = redis_proc.client()
    channel = grpc.aio.insecure_channel(draining.address)
    other_channel = grpc.aio.insecure_channel(other.address)
    try:
        stub, other_stub = pb_grpc.ServiceRegistryStub(channel), \
            pb_grpc.ServiceRegistryStub(other_channel)
        names = [f"agent-{i}" for i in range(AGENTS)]
        for name in names:
            await stub.Register(pb.RegisterRequest(agent_type=pb.WORKER, namespace=NS,
                                                   agent_id=name, capabilities=["load"]))

        # Watchers and a health watch on the process about to drain.
        seen = [[] for _ in range(WATCHERS)]
        ready = [asyncio.Event() for _ in range(WATCHERS)]
        watches = [asyncio.create_task(follow_watch(stub, seen[i], ready[i]))
                   for i in range(WATCHERS)]
        health_statuses, serving = [], asyncio.Event()
        health_task = asyncio.create_task(follow_health(channel, health_statuses, serving))
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready), serving.wait()), 10)

        # A keep-alive heartbeat stream left open across the SIGTERM: it holds the drain open
        # for the whole grace period, and is answered during it.
        stream_requests: asyncio.Queue = asyncio.Queue()

        async def requests():
            while (item := await stream_requests.get()) is not None:
                yield item
        keepalive = stub.HeartbeatStream(requests())
        await stream_requests.put(pb.HeartbeatRequest(agent_id=f"{NS}/{names[0]}"))
        assert (await keepalive.read()).error_code == 0

        load = Load(stub)
        load_tasks = [asyncio.create_task(load.run(name)) for name in names[1:]]
        load._warm_agents.add(names[0])  # heartbeats through the stream instead
        await asyncio.wait_for(load.warm.wait(), 30)

        draining.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*load_tasks), 30)   # each ends on its failure
        ended = await asyncio.wait_for(asyncio.gather(*watches), 30)

        # The stream opened before the drain still works during it, for longer than the
        # server's 1 s Redis probe interval (health must stay NOT_SERVING meanwhile) ...
        await wait_logged(draining, "stopping gRPC")
        for _ in range(3):
            await stream_requests.put(pb.HeartbeatRequest(agent_id=f"{NS}/{names[0]}"))
            assert (await keepalive.read()).error_code == 0
            await asyncio.sleep(0.5)  # the drain's length is the point here, not a sync
        # ... and once it ends, the drain is over and the process exits.
        await stream_requests.put(None)
        assert await keepalive.read() is grpc.aio.EOF
        code = await asyncio.to_thread(draining.proc.wait, 30)
        assert code == 0, draining.output()[-3000:]
        await health_task

        # 1. Every heartbeat succeeded or was refused with UNAVAILABLE.
        codes = Counter(code for outcomes in load.outcomes.values() for _, code in outcomes)
        assert set(codes) == {OK, UNAVAILABLE}, (codes, draining.output()[-1500:])
        assert codes[UNAVAILABLE] == AGENTS - 1   # the last call of each load task
        # ... and what succeeded was applied; the refused one at most (a client resends it).
        for name, outcomes in load.outcomes.items():
            agent = (await other_stub.GetAgent(pb.GetAgentRequest(agent_id=f"{NS}/{name}"))).agent
            last_ok, (failed, _) = outcomes[-2][0], outcomes[-1]
            assert agent.telemetry.total_executions in (last_ok, failed), name
            # The client's retry of the refused heartbeat succeeds on the other process.
            await other_stub.Heartbeat(heartbeat(name, failed))

        # 2. Watchers were told to resume elsewhere, and resuming there loses nothing.
        log_key = keys.namespace(NS).log
        for exc, revisions in zip(ended, seen):
            assert exc.code() == UNAVAILABLE and "resume" in exc.details(), exc
            start, last = revisions[0], revisions[-1]
            expected = [rev for rev, _ in await redis.xrange(log_key, min=f"({start}")]
            resumed = other_stub.WatchAgents(pb.WatchRequest(namespace=NS,
                                                             since_revision=last))
            while revisions[-1] != expected[-1]:
                event = await resumed.read()
                if event.type not in LIVE:
                    revisions.append(event.revision)
            resumed.cancel()
            assert revisions[1:] == expected

        # 3. Health: SERVING, then NOT_SERVING for the whole drain (the Redis probe kept
        # finding Redis up during the grace period and must not have turned it back).
        S, N = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        assert health_statuses[0] == S and N in health_statuses
        assert S not in health_statuses[health_statuses.index(N):], health_statuses

        # 4. One JSON object per log line, the drain steps among them.
        messages = [json.loads(line)["message"] for line in draining.output().splitlines()
                    if line.strip()]
        assert any("SIGTERM" in m for m in messages)
        assert any(f"{WATCHERS} watch stream(s)" in m for m in messages), messages
        assert messages[-1] == "stopped"
    finally:
        await channel.close()
        await other_channel.close()
        await redis.aclose()


async def wait_logged(server, text: str, timeout: float = 20.0) -> None:
    """Waits for a line of the child's log (the only signal it gives across processes)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while text not in server.output():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{text!r} not logged: {server.output()[-2000:]}")
        await asyncio.sleep(0.02)


async def test_second_signal_cuts_the_grace_short(redis_proc, server_processes):
    """An open stream holds a 60 s drain; a second SIGTERM ends it at once, and the stream is
    cut with UNAVAILABLE (what a grace period running out does too)."""
    server = await server_processes(redis_proc.url, SHUTDOWN_GRACE=60)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ServiceRegistryStub(channel)
        watch = stub.WatchAgents(pb.WatchRequest(namespace=NS, skip_snapshot=True))
        queue: asyncio.Queue = asyncio.Queue()

        async def requests():
            while (item := await queue.get()) is not None:
                yield item
        stream = stub.HeartbeatStream(requests())
        await stub.Register(pb.RegisterRequest(agent_type=pb.WORKER, namespace=NS,
                                               agent_id="a"))
        await queue.put(pb.HeartbeatRequest(agent_id=f"{NS}/a"))
        assert (await stream.read()).error_code == 0
        server.proc.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in watch:
                pass
        assert err.value.code() == UNAVAILABLE  # the drain has begun
        await wait_logged(server, "stopping gRPC")
        server.proc.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stream.read()
        assert err.value.code() == UNAVAILABLE
        assert await asyncio.to_thread(server.proc.wait, 20) == 0
        await queue.put(None)
