"""BALANCED Discover (issue 14): does it spread load, does it follow telemetry, what does it
cost Redis. Calls come from this process (the replies are counted per agent)."""
from __future__ import annotations

import asyncio
import time
from collections import Counter

import grpc
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc

from .stats import Result, percentiles

AGENTS = 100
POOR = 10            # agents reporting half the success rate of the others
GOOD_RATE = 0.98
CALLS = {"full": 10_000, "quick": 4_000, "tiny": 200}
CONCURRENCY = 16
CAPABILITY = "balanced"


async def _register(stub, ns: str, prefix: str, rates: list[float]) -> list[str]:
    names = [f"{prefix}{i:03d}" for i in range(len(rates))]
    for name, rate in zip(names, rates):
        await stub.Register(pb.RegisterRequest(agent_type=pb.WORKER, capabilities=[CAPABILITY],
                                               namespace=ns, agent_id=name), timeout=30)
        # reported HEALTHY, so the success rate alone tells the agents apart
        await stub.Heartbeat(pb.HeartbeatRequest(
            agent_id=f"{ns}/{name}", status=pb.HEALTHY,
            telemetry=pb.AgentTelemetry(success_rate=rate, avg_duration_ms=20.0,
                                        total_executions=1000, failed_executions=0)),
            timeout=30)
    return names


async def _pick_counts(stub, ns: str, calls: int) -> tuple[Counter, list[float], float, int]:
    request = pb.DiscoverRequest(capabilities=[CAPABILITY], namespace=ns, max_results=1,
                                 selection=pb.BALANCED)
    counts, latencies, errors = Counter(), [], 0
    queue = iter(range(calls))

    async def caller():
        nonlocal errors
        for _ in queue:
            t0 = time.perf_counter()
            try:
                reply = await stub.DiscoverAgents(request, timeout=30)
                counts.update(a.agent_id.split("/")[1] for a in reply.agents)
            except grpc.aio.AioRpcError:
                errors += 1
            latencies.append((time.perf_counter() - t0) * 1000.0)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    return counts, latencies, time.perf_counter() - t0, errors


def _result(scenario: str, counts, latencies, seconds, errors) -> Result:
    return Result(scenario, "discover", "calls", ops=len(latencies) - errors, seconds=seconds,
                  errors=errors, latency_ms=percentiles(latencies),
                  driver=f"python, this process x{CONCURRENCY} callers")


async def balanced(bench) -> None:
    from .scenarios import discover_queries, discover_redis_time, fleet, fleet_label

    p = bench.profile
    calls = CALLS.get(p.name, CALLS["quick"])
    fair = calls / AGENTS

    # 1. equally healthy agents: how much more than its fair share does the busiest get?
    ns = bench.namespace("balanced-equal")
    names = await _register(bench.stub, ns, "e", [GOOD_RATE] * AGENTS)
    counts, lat, seconds, errors = await _pick_counts(bench.stub, ns, calls)
    result = _result("discover.balanced.equal", counts, lat, seconds, errors)
    busiest = max(counts.values()) if counts else 0
    result.extra.update(agents=AGENTS, calls=calls, picked_agents=len(counts),
                        busiest_over_fair=round(busiest / fair, 3),
                        idlest_over_fair=round(min(counts.get(n, 0) for n in names) / fair, 3))
    bench.add(result)

    # 2. ten agents at half the success rate: their share against the proportional one
    # (a server without the warm-up, as the agents were registered a moment ago)
    if bench.local:
        group = await bench.extra_server(BALANCE_WARMUP="0")
        channel = grpc.aio.insecure_channel(group.address)
        stub = pb_grpc.ServiceRegistryStub(channel)
        try:
            ns = bench.namespace("balanced-poor")
            rates = [GOOD_RATE] * (AGENTS - POOR) + [GOOD_RATE / 2] * POOR
            names = await _register(stub, ns, "w", rates)
            counts, lat, seconds, errors = await _pick_counts(stub, ns, calls)
        finally:
            await channel.close()
        result = _result("discover.balanced.half_success", counts, lat, seconds, errors)
        poor = sum(counts[n] for n in names[AGENTS - POOR:]) / max(sum(counts.values()), 1)
        expected = POOR * 0.5 / (AGENTS - POOR + POOR * 0.5)
        result.extra.update(agents=AGENTS, poor_agents=POOR, calls=calls,
                            poor_share=round(poor, 4), proportional_share=round(expected, 4),
                            poor_over_proportional=round(poor / expected, 3))
        bench.add(result)

    # 3. Redis time per balanced Discover on the largest fleet
    if bench.redis is not None:
        size = max(p.fleets)
        ns = await fleet(bench, size)
        for qname in ("1cap", "2caps"):
            request = discover_queries(ns)[qname]
            request.max_results = 1
            request.selection = pb.BALANCED
            probe = await discover_redis_time(bench, request)
            result = Result(f"discover.balanced.{fleet_label(size)}.{qname}.redis", "discover",
                            "calls", ops=p.redis_probe_calls, seconds=0.0,
                            driver="sequential calls, SLOWLOG")
            result.extra.update(fleet=size, max_results=1, **probe)
            bench.add(result)


def targets(by_name: dict, add) -> None:
    """Issue 14's three balanced-Discover targets."""
    def judged(r, met):  # fewer calls than the 10,000 say little
        return met if r.extra["calls"] >= CALLS["full"] else None

    equal = by_name.get("discover.balanced.equal")
    if equal:
        x = equal.extra["busiest_over_fair"]
        add("BALANCED max_results=1, 100 equal agents: busiest / fair share", "<= 1.5x",
            f"{x:.2f}x", judged(equal, x <= 1.5), f"{equal.extra['calls']:,} calls, "
            f"{equal.extra['picked_agents']} agents picked")
    poor = by_name.get("discover.balanced.half_success")
    if poor:
        x = poor.extra["poor_over_proportional"]
        add("BALANCED: 10 agents at half the success rate, share / proportional", "0.8-1.2x",
            f"{x:.2f}x", judged(poor, 0.8 <= x <= 1.2), f"share {poor.extra['poor_share']:.3f} vs "
            f"{poor.extra['proportional_share']:.3f}")
    probes = [r for name, r in by_name.items() if name.startswith("discover.balanced.")
              and name.endswith(".redis") and r.extra.get("redis_us_per_call")]
    if probes:
        worst = max(probes, key=lambda r: r.extra["redis_us_per_call"])
        us, fleet = worst.extra["redis_us_per_call"], worst.extra["fleet"]
        add("BALANCED Discover at 100k agents: Redis time", "< 500 us", f"{us:,.0f} us",
            us < 500 if fleet >= 100_000 else None, f"{worst.scenario}" +
            ("" if fleet >= 100_000 else " (100k agents runs in --full)"))
