"""Namespace spray (issue 11): one agent registered and deregistered in each of N namespaces,
then the idle cost: server CPU and Redis commands/s while nothing happens, and the latency of
a Discover without a namespace (it looks across every namespace). Idle cost must be bounded by
the work that exists, not by every namespace ever used.

    .venv/bin/python -m benchmarks.namespace_spray [--namespaces 1000] [--idle 10]

Starts its own redis-server and one `service-registry serve` process (default settings, so the
sweeper runs every SWEEP_INTERVAL = 0.25 s) and prints one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import grpc
import psutil
import redis.asyncio as aioredis
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc

from .env import RedisServer, start_group

DISCOVER_CALLS = 50


async def spray(stub, namespaces: int) -> None:
    async def one(i: int) -> None:
        ns = f"spray-{i:05d}"
        reply = await stub.Register(pb.RegisterRequest(agent_type=pb.WORKER, namespace=ns,
                                                       agent_id="a", capabilities=["py"]))
        await stub.Deregister(pb.DeregisterRequest(agent_id=reply.agent_id))
    for start in range(0, namespaces, 50):
        await asyncio.gather(*(one(i) for i in range(start, min(start + 50, namespaces))))


async def idle_cost(redis, pid: int, seconds: float) -> dict:
    proc = psutil.Process(pid)
    before_cmds = (await redis.info("stats"))["total_commands_processed"]
    before_cpu = sum(proc.cpu_times()[:2])
    t0 = time.monotonic()
    await asyncio.sleep(seconds)  # the measurement window: nothing happens in it
    took = time.monotonic() - t0
    cmds = (await redis.info("stats"))["total_commands_processed"] - before_cmds - 2
    cpu = sum(proc.cpu_times()[:2]) - before_cpu
    return {"redis_commands_per_s": round(cmds / took, 1),
            "server_cpu_percent": round(100 * cpu / took, 1)}


async def discover_ms(stub) -> dict:
    times = []
    for _ in range(DISCOVER_CALLS):
        t0 = time.perf_counter()
        await stub.DiscoverAgents(pb.DiscoverRequest(capabilities=["py"]))
        times.append((time.perf_counter() - t0) * 1000)
    return {"discover_all_namespaces_p50_ms": round(statistics.median(times), 2),
            "discover_all_namespaces_max_ms": round(max(times), 2)}


async def run(namespaces: int, idle: float) -> dict:
    redis_server = RedisServer()
    redis_server.start()
    group = await start_group("registry", 1, redis_server.url, HEARTBEAT_TIMEOUT="60")
    redis = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        async with grpc.aio.insecure_channel(group.address) as channel:
            stub = pb_grpc.ServiceRegistryStub(channel)
            await stub.Register(pb.RegisterRequest(agent_type=pb.WORKER, namespace="live",
                                                   agent_id="a", capabilities=["py"]))
            await asyncio.sleep(1.0)  # settle after start
            result = {"namespaces": namespaces, "before": {
                **await idle_cost(redis, group.pids[0], idle), **await discover_ms(stub)}}
            await spray(stub, namespaces)
            await asyncio.sleep(1.0)
            result["after_spray"] = {**await idle_cost(redis, group.pids[0], idle),
                                     **await discover_ms(stub)}
            result["load_average"] = [round(x, 2) for x in psutil.getloadavg()]
            return result
    finally:
        await redis.aclose()
        group.stop()
        redis_server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespaces", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of each idle window")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.namespaces, args.idle)), indent=2))


if __name__ == "__main__":
    main()
