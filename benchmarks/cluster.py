"""Scenario `cluster`: registers and heartbeats against Redis Clusters of 1 and 3 primaries,
with namespaces spread over the primaries (a namespace lives on the shard of its slot). Reports
throughput and, per primary, its Redis CPU per heartbeat and its share of the load.

On a 2-core machine the throughput will not triple with 3 primaries (server processes, load
generators and 3 redis-servers share the cores): what scales is visible in each primary's share
of the Redis CPU (about a third each) while the CPU per heartbeat stays what one Redis spends.
With `--redis-url redis+cluster://...` (no --addr) the scenario measures that cluster only.
"""
from __future__ import annotations

import asyncio
import random
import urllib.request

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from server import keys
from server.redis_target import parse
from server.testing import RedisCluster

from . import env
from .scenarios import _fill, _python_run, batches, register_request
from .stats import Result, percentiles

NAMESPACES_PER_PRIMARY = 4
HB_COUNTER = "service_registry_heartbeat_total"
REGISTER_COUNTER = "service_registry_register_total"


async def run(bench) -> None:
    given = bench.options.redis_url if not bench.options.addr else ""
    if given.startswith(("redis+cluster://", "rediss+cluster://")):
        await _measure(bench, given, "given")
        return
    for primaries in (1, 3):
        nodes = RedisCluster(primaries=primaries, replicas=0)
        try:
            await asyncio.to_thread(nodes.start)
            await _measure(bench, nodes.url, f"{primaries}p")
        finally:
            nodes.cleanup()


def _spread(cluster: AsyncRedisCluster, per_primary: int, prefix: str) -> list[str]:
    by_node: dict[str, list[str]] = {n.name: [] for n in cluster.get_primaries()}
    i = 0
    while any(len(v) < per_primary for v in by_node.values()):
        ns = f"{prefix}{i}"
        i += 1
        node = cluster.get_node_from_key(keys.namespace(ns).log).name
        if len(by_node[node]) < per_primary:
            by_node[node].append(ns)
    return [ns for group in by_node.values() for ns in group]


async def _primary_cpu(clients: dict) -> dict[str, float]:
    out = {}
    for name, client in clients.items():
        info = await client.info("cpu")
        out[name] = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return out


def _counter(ports, counter: str) -> float:
    total = 0.0
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith(counter + "{") and 'outcome="ok"' in line:
                    total += float(line.rpartition(" ")[2])
    return total


async def _measure(bench, url: str, label: str) -> None:
    p = bench.profile
    target = parse(url)
    cluster = AsyncRedisCluster(host=target.nodes[0][0], port=target.nodes[0][1],
                                decode_responses=True, **target.options)
    await cluster.initialize()
    primaries = sorted(cluster.get_primaries(), key=lambda n: n.name)
    clients = {n.name: aioredis.Redis(host=n.host, port=int(n.port), decode_responses=True,
                                      **target.options) for n in primaries}
    group = await env.start_group("registry", bench.options.server_procs, url)
    try:
        spaces = _spread(cluster, NAMESPACES_PER_PRIMARY, bench.namespace(f"cl{label}") + "-")
        bench.log(f"  {len(primaries)} primaries, namespaces {', '.join(spaces)}")
        per_ns = max(1, p.register_agents // len(spaces))
        rng = random.Random(label)
        names = [(ns, f"c{i:06d}") for i in range(per_ns) for ns in spaces]
        msgs = [register_request(ns, name, i, rng).SerializeToString()
                for i, (ns, name) in enumerate(names)]
        k = bench.options.loadgen_procs
        jobs = [{"kind": "register_all", "slot": i, "address": group.address,
                 "method": "Register", "requests": msgs[i::k], "concurrency": p.concurrency,
                 "channels": p.channels} for i in range(k)]
        result = await _window(bench, f"cluster.{label}.register", "agents", jobs, group,
                               clients, REGISTER_COUNTER, count_total=len(msgs))
        agents = [f"{ns}/{name}" for ns, name in names]
        hb = batches(agents[:p.hb_agents * len(primaries)] or agents, p.batch_size)
        jobs = bench.loadgen_jobs("unary", {}, method="HeartbeatBatch", items=p.batch_size,
                                  concurrency=p.batch_callers)
        per = max(1, len(hb) // len(jobs))
        for i, job in enumerate(jobs):
            job["address"] = group.address
            job["requests"] = hb[i * per:(i + 1) * per] or hb
        result = await _window(bench, f"cluster.{label}.heartbeat.batch", "heartbeats", jobs,
                               group, clients, HB_COUNTER, items=p.batch_size)
        result.extra["batch_size"] = p.batch_size
    finally:
        group.stop()
        for client in clients.values():
            await client.aclose()
        await cluster.aclose()


async def _window(bench, scenario: str, unit: str, jobs, group, clients, counter: str,
                  count_total=None, items: int = 1) -> Result:
    loop = asyncio.get_running_loop()
    ok0 = await loop.run_in_executor(None, _counter, group.metrics_ports, counter)
    cpu0 = await _primary_cpu(clients)
    merged, cpu = await _python_run(bench, scenario, jobs, server_pids=group.pids,
                                    count_total=count_total)
    cpu1 = await _primary_cpu(clients)
    ok1 = await loop.run_in_executor(None, _counter, group.metrics_ports, counter)
    done = max(ok1 - ok0, 1.0)   # over the same span as the CPU figures (warm-up included)
    used = {name: cpu1[name] - cpu0[name] for name in clients}
    total = sum(used.values()) or 1e-9
    result = Result(scenario, "cluster", unit, ops=merged["ops"], errors=merged["errors"],
                    seconds=merged["seconds"], latency_ms=percentiles(merged["latencies"]),
                    driver=f"python x{len(jobs)} procs")
    result.extra["primaries"] = {
        name: {"redis_cpu_us_per_op": round(used[name] / done * 1e6, 2),
               "share": round(used[name] / total, 3)} for name in sorted(used)}
    result.extra["redis_cpu_us_per_op_all_primaries"] = round(total / done * 1e6, 2)
    if merged["first_error"]:
        result.notes.append(f"first error: {merged['first_error']}")
    cpu = dict(cpu, redis=None)
    bench.add(_fill(result, cpu, merged["cpu_seconds"] / max(merged["seconds"], 1e-6)))
    shares = ", ".join(f"{v['share']:.0%}" for v in result.extra["primaries"].values())
    bench.log(f"    {result.throughput:,.0f} {unit}/s; Redis CPU "
              f"{result.extra['redis_cpu_us_per_op_all_primaries']} us per op; shares {shares}")
    return result
