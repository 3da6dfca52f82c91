"""The `failover` scenario (opt-in: `--scenarios failover`): a Sentinel set of its own (1
primary, replicas, 3 sentinels, down after 1 s), two registry processes on it, a steady load of
registers and heartbeats and a watcher; the primary is SIGKILLed. Measured: time from the kill
to the first successful Register and heartbeat, calls that failed meanwhile (by status),
acknowledged Registers missing afterwards, and what the watcher holds against a fresh List
(missed / invented agents after its resync). Run twice: MIN_REPLICA_ACKS=0 with one replica,
MIN_REPLICA_ACKS=1 with two (so that the promoted replica still has one to acknowledge)."""
from __future__ import annotations

import asyncio
import itertools
import os
import random
import time

import grpc
from neural_hive_integration.clients import ServiceRegistryClient
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc

from server.testing import SentinelSet

from . import env
from .stats import Result, percentiles

WORKERS = 8              # concurrent register+heartbeat loops
CHANNELS = 4             # gRPC connections (SO_REUSEPORT spreads them over the 2 processes)
PACE = 0.01              # seconds between a worker's calls: a steady load, not a storm
BEFORE_KILL = 3.0        # seconds of load before the kill
AFTER_RECOVERY = 3.0     # seconds of load after both kinds of write succeed again
RECOVERY_LIMIT = 60.0
SETTLE = 15.0            # the watcher's deadline to equal a fresh List
VARIANTS = ((0, 1), (1, 2))   # (MIN_REPLICA_ACKS, replicas)


class Load:
    def __init__(self, address: str, namespace: str):
        self.namespace = namespace
        self.channels = [grpc.aio.insecure_channel(address) for _ in range(CHANNELS)]
        self.acked: list[str] = []
        self.ok = 0
        self.latencies: dict[str, list[float]] = {"register": [], "heartbeat": []}
        self.failed: dict[str, int] = {}
        self.failed_after_kill = 0
        self.killed_at = 0.0
        self.first_register = self.first_heartbeat = None   # seconds after the kill
        self.recovered = asyncio.Event()
        self._ids = itertools.count()
        self._stop = False
        self._tasks = [asyncio.create_task(self._work(
            pb_grpc.ServiceRegistryStub(self.channels[i % CHANNELS]))) for i in range(WORKERS)]

    async def _call(self, call, request, kind: str) -> bool:
        start = time.monotonic()
        try:
            await call(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            self.failed[exc.code().name] = self.failed.get(exc.code().name, 0) + 1
            if self.killed_at:
                self.failed_after_kill += 1
            return False
        self.ok += 1
        self.latencies[kind].append((time.monotonic() - start) * 1000)
        if self.killed_at and start >= self.killed_at:   # sent after the kill
            since = time.monotonic() - self.killed_at
            if kind == "register" and self.first_register is None:
                self.first_register = since
            if kind == "heartbeat" and self.first_heartbeat is None:
                self.first_heartbeat = since
            if self.first_register is not None and self.first_heartbeat is not None:
                self.recovered.set()
        return True

    async def _work(self, stub) -> None:
        while not self._stop:
            agent_id = f"{self.namespace}/a{next(self._ids)}"
            if await self._call(stub.Register, pb.RegisterRequest(
                    agent_id=agent_id, namespace=self.namespace, agent_type=pb.WORKER,
                    capabilities=["python"]), "register"):
                self.acked.append(agent_id)
            if self.acked:
                await self._call(stub.Heartbeat, pb.HeartbeatRequest(
                    agent_id=random.choice(self.acked)), "heartbeat")
            await asyncio.sleep(PACE)

    async def stop(self) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)
        for channel in self.channels:
            await channel.close()


async def _run_once(bench, acks: int, replicas: int) -> Result:
    scenario = f"failover.acks{acks}"
    deployment = SentinelSet(replicas=replicas)
    group = None
    try:
        await asyncio.to_thread(deployment.start)
        group = await env.start_group("registry", 2, deployment.url,
                                      MIN_REPLICA_ACKS=acks)
        namespace = f"bench-failover{acks}-{bench.run_id}"   # on the set of its own
        client = ServiceRegistryClient("127.0.0.1", int(group.address.rsplit(":", 1)[1]),
                                       retries=20, backoff=0.1)
        view: set[str] = set()
        resyncs: list[str] = []
        deliveries = 0

        def resync(reason: str) -> None:
            resyncs.append(reason)
            view.clear()

        async def follow() -> None:
            nonlocal deliveries
            async for event in client.watch(namespace=namespace, on_resync=resync):
                deliveries += 1
                if event.type in (pb.DEREGISTERED, pb.EXPIRED, pb.EVICTED):
                    view.discard(event.agent.agent_id)
                elif event.agent.agent_id:
                    view.add(event.agent.agent_id)

        watcher = asyncio.create_task(follow())
        load0 = os.getloadavg()
        load = Load(group.address, namespace)
        await asyncio.sleep(BEFORE_KILL)          # steady load before the kill
        old = deployment.kill_primary()
        load.killed_at = time.monotonic()
        bench.log(f"  {scenario}: primary on port {old.port} killed (SIGKILL)")
        try:
            await asyncio.wait_for(load.recovered.wait(), RECOVERY_LIMIT)
        except asyncio.TimeoutError:
            pass
        promoted = await asyncio.to_thread(deployment.wait_promoted, old)
        await asyncio.sleep(AFTER_RECOVERY)       # steady load after the recovery
        await load.stop()
        truth = set()
        async for agent in client.iter_agents(namespace=namespace):
            truth.add(agent.agent_id)
        deadline = time.monotonic() + SETTLE
        while view != truth and time.monotonic() < deadline:   # no event says "caught up"
            await asyncio.sleep(0.05)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await client.close()
        missing = sorted(set(load.acked) - truth)
        extra = {
            "min_replica_acks": acks, "replicas": replicas,
            "kill_to_first_register_s": _round(load.first_register),
            "kill_to_first_heartbeat_s": _round(load.first_heartbeat),
            "failed_after_kill": load.failed_after_kill, "failed_by_status": load.failed,
            "acknowledged_registers": len(load.acked), "acknowledged_missing": len(missing),
            "watcher_resyncs": len(resyncs), "watcher_missed": len(truth - view),
            "watcher_invented": len(view - truth), "watcher_deliveries": deliveries,
            "register_latency_ms": percentiles(load.latencies["register"]),
            "heartbeat_latency_ms": percentiles(load.latencies["heartbeat"]),
            "promoted_port": promoted.port, "load_average_before": [round(x, 2) for x in load0],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        }
        result = Result(scenario=scenario, group="failover", unit="calls", ops=load.ok,
                        errors=sum(load.failed.values()),
                        seconds=time.monotonic() - load.killed_at + BEFORE_KILL,
                        latency_ms=percentiles(load.latencies["register"]
                                               + load.latencies["heartbeat"]),
                        driver=f"python x{WORKERS}",
                        extra=extra)
        result.notes.append(
            f"MIN_REPLICA_ACKS={acks}, {replicas} replica(s): first Register "
            f"{_fmt(load.first_register)} and first heartbeat {_fmt(load.first_heartbeat)} after "
            f"the kill; {load.failed_after_kill} calls failed meanwhile {load.failed}; "
            f"{len(missing)} of {len(load.acked)} acknowledged Registers missing; watcher: "
            f"{len(resyncs)} resync(s), {len(truth - view)} missed, {len(view - truth)} "
            f"invented vs a fresh List of {len(truth)}")
        bench.log(f"  {scenario}: {result.notes[-1]}")
        return result
    finally:
        if group is not None:
            group.stop()
        await asyncio.to_thread(deployment.cleanup)


def _round(value):
    return None if value is None else round(value, 3)


def _fmt(value) -> str:
    return "never" if value is None else f"{value:.2f} s"


async def failover(bench) -> None:
    for acks, replicas in VARIANTS:
        bench.add(await _run_once(bench, acks, replicas))
