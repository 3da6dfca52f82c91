"""Scenario `keepalive`: one client process keeps 1,000 agents alive with
ServiceRegistryClient.keep_alive() at a short interval, once per transport (HeartbeatBatch per
tick, the default, and one HeartbeatStream). Heartbeats/s, server CPU and client CPU per
heartbeat, as ratios to the unary heartbeat and to the Redis ceiling of the same run.

The client runs in a load-generator process (keepalive_client.py) and meters its own window.
Targets (issue 12): server CPU per kept-alive heartbeat at most 1/3 of a unary
heartbeat's; kept-alive heartbeats/s at least 0.6x redis-benchmark -P 16 on heartbeat.lua.
"""
from __future__ import annotations

import asyncio

from . import keepalive_client
from .scenarios import (HB_COUNTER, TELEMETRY, _fill, drive_unary, hb_agents, hb_request,
                        register_agents)
from .stats import Result

AGENTS = 1000
INTERVAL = 0.001       # shorter than a call: the client beats as fast as the server answers
TRANSPORTS = ("batch", "stream")
CPU_GOAL = 1 / 3       # server CPU per kept-alive heartbeat / per unary heartbeat, at most
RATE_GOAL = 0.6        # kept-alive heartbeats/s / the Redis ceiling, at least


async def keepalive(bench) -> None:
    p = bench.profile
    n = AGENTS if p.name != "tiny" else p.hb_agents
    ns = bench.namespace("keepalive")
    agent_ids = await register_agents(bench, ns, [f"ka{i:05d}" for i in range(n)])
    unary = _unary_reference(bench) or await _measure_unary(bench)
    ceiling = next((r for r in bench.results if r.scenario == "ceiling.redis.P16"
                    and not r.skipped and r.ops), None)
    for transport in TRANSPORTS:
        job = {"address": bench.addr, "agent_ids": agent_ids, "interval": INTERVAL,
               "telemetry": {"success_rate": TELEMETRY.success_rate,
                             "avg_duration_ms": TELEMETRY.avg_duration_ms,
                             "total_executions": TELEMETRY.total_executions,
                             "failed_executions": TELEMETRY.failed_executions},
               "transport": transport, "warmup": p.warmup, "duration": p.duration,
               "server_pids": bench.servers.pids if bench.servers else [],
               "redis_url": bench.redis_node_url}
        work = asyncio.wrap_future(bench.pool.executor.submit(keepalive_client.run_job, job))
        raw, _ = await bench.window(f"keepalive.{transport}", p.warmup + p.duration + 2, work,
                                    server_pids=[])
        result = Result(f"keepalive.{transport}", "heartbeat", "heartbeats", ops=raw["ops"],
                        errors=raw["errors"], seconds=raw["seconds"],
                        driver=f"1 client process, keep_alive x{n} agents, interval "
                               f"{INTERVAL}s, {transport} transport")
        _fill(result, {"server": raw["server"], "machine": raw["machine"],
                       "redis": raw["redis"]}, raw["cpu_seconds"] / max(raw["seconds"], 1e-6))
        result.extra.update(agents=n, interval_s=INTERVAL, transport=transport,
                            startup_s=round(raw["started_in"], 2))
        if result.ops:
            result.extra["client_cpu_us_per_op"] = round(
                raw["cpu_seconds"] * 1e6 / result.ops, 1)
        if raw["first_error"]:
            result.notes.append(f"first error: {raw['first_error']}")
        _judge(result, unary, ceiling)
        bench.add(result)


def _server_us(r: Result | None) -> float | None:
    if r is None or not r.server_cpu or not r.throughput:
        return None
    return r.server_cpu * 1e6 / r.throughput


def _judge(result: Result, unary: Result | None, ceiling: Result | None) -> None:
    """The issue-12 targets, as notes and extra figures of the result."""
    ours, theirs = _server_us(result), _server_us(unary)
    if ours is not None and theirs:
        ratio = ours / theirs
        result.extra["server_cpu_vs_unary"] = round(ratio, 3)
        result.notes.append(
            f"target (issue 12) server CPU per heartbeat <= {CPU_GOAL:.2f}x unary: "
            f"{ratio:.3f}x ({ours:,.0f} vs {theirs:,.0f} us) "
            f"{'MET' if ratio <= CPU_GOAL else 'MISSED'}")
    else:
        result.notes.append("target (issue 12) server CPU vs unary: n/a (needs local server "
                            "processes)")
    if ceiling is not None and result.throughput:
        ratio = result.throughput / ceiling.throughput
        result.notes.append(
            f"target (issue 12) heartbeats/s >= {RATE_GOAL}x Redis ceiling: {ratio:.3f}x "
            f"({result.throughput:,.0f} vs {ceiling.throughput:,.0f}/s) "
            f"{'MET' if ratio >= RATE_GOAL else 'MISSED'}")
    else:
        result.notes.append("target (issue 12) vs Redis ceiling: n/a (run with --scenarios "
                            "ceilings,...,keepalive)")


def _unary_reference(bench) -> Result | None:
    return next((r for r in bench.results if r.scenario == "heartbeat.unary"
                 and not r.skipped and r.ops), None)


async def _measure_unary(bench) -> Result:
    """heartbeat.unary as the heartbeat scenario measures it, when that scenario did not run."""
    messages = [hb_request(a).SerializeToString() for a in await hb_agents(bench)]
    result = await drive_unary(bench, "heartbeat.unary", "heartbeat", "heartbeats", bench.addr,
                               "Heartbeat", messages, counter=HB_COUNTER)
    bench.add(result)
    return result

