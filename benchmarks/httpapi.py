"""The HTTP port's scenarios (issue 13), on one registry process started for them:

- http.heartbeat / http.discover beside grpc.heartbeat / grpc.discover: the JSON routes and
  their gRPC twins driven the same way (a Python closed loop in this process, the same
  concurrency), so `vs_grpc_twin` compares the two front ends, not two load generators;
- http.sse.fanout: writes at `watch_rate`/s reaching SSE_WATCHERS /v1/watch streams, with the
  delay of every delivery from the write (the writer's clock, same machine);
- http.idle.heartbeat.{with,without}_http: gRPC heartbeat latency of a process with its HTTP
  app loaded and idle and of one without (METRICS_PORT=0), in alternating rounds, so
  `p99_vs_without_http` near 1 (within the rounds' spread) says the app costs nothing idle.
"""
from __future__ import annotations

import asyncio
import json
import random
import time

import aiohttp
import grpc
from google.protobuf import json_format
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc

from .scenarios import TELEMETRY, _fill, discover_queries, fleet, register_request
from .stats import Result, percentiles

SSE_WATCHERS = 200
ROUNDS = 2          # alternating rounds of the with/without-HTTP comparison
AGENTS = 200        # agents the heartbeat loops cycle through


async def closed_loop(call, concurrency: int, warmup: float, duration: float):
    """`concurrency` callers calling `call(i)` back to back; (ops, errors, latencies in ms)
    of the calls that started after `warmup`."""
    begin = time.perf_counter()
    measure_from, end = begin + warmup, begin + warmup + duration
    latencies: list[float] = []
    errors = 0

    async def caller(slot: int) -> None:
        nonlocal errors
        i = slot
        while (start := time.perf_counter()) < end:
            try:
                await call(i)
            except Exception:  # noqa: BLE001 - counted
                errors += start >= measure_from
            else:
                if start >= measure_from:
                    latencies.append((time.perf_counter() - start) * 1000)
            i += concurrency

    await asyncio.gather(*(caller(s) for s in range(concurrency)))
    return len(latencies), errors, latencies


def as_json(message) -> bytes:
    return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True)
                      ).encode()


async def _measure(bench, scenario: str, group, call, unit: str, driver: str) -> Result:
    p = bench.profile
    (ops, errors, latencies), cpu = await bench.window(
        scenario, p.duration, closed_loop(call, p.concurrency, p.warmup, p.duration),
        warmup=p.warmup, server_pids=group.pids)
    result = Result(scenario, "http", unit, ops=ops, errors=errors, seconds=p.duration,
                    latency_ms=percentiles(latencies),
                    driver=f"{driver}, python closed loop x{p.concurrency} in the bench "
                           "process, 1 server process")
    return _fill(result, cpu, None)


def _twin(http: Result, grpc_result: Result) -> None:
    if grpc_result.throughput:
        http.ratios["vs_grpc_twin"] = round(http.throughput / grpc_result.throughput, 3)
    p99, twin_p99 = http.latency_ms.get("p99"), grpc_result.latency_ms.get("p99")
    if p99 and twin_p99:
        http.ratios["p99_vs_grpc_twin"] = round(p99 / twin_p99, 3)


async def http(bench) -> None:
    if not bench.local:
        bench.log("http: skipped on a remote deployment (needs a server process of its own)")
        return
    group = await bench.extra_server()
    base = f"http://127.0.0.1:{group.metrics_ports[0]}"
    ns = bench.namespace("http")
    async with grpc.aio.insecure_channel(group.address) as channel, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        stub = pb_grpc.ServiceRegistryStub(channel)
        agents = await _register(stub, ns, AGENTS)
        await _heartbeat_twins(bench, group, stub, session, base, agents)
        await _discover_twins(bench, group, stub, session, base)
        await _sse_fanout(bench, group, stub, session, base)
    await _idle_http_cost(bench, group, agents)


async def _register(stub, ns: str, count: int) -> list[str]:
    rng = random.Random(13)
    replies = await asyncio.gather(*(stub.Register(register_request(ns, f"h{i:04d}", i, rng),
                                                   timeout=30) for i in range(count)))
    return [r.agent_id for r in replies]


async def _post(session, url: str, body: bytes) -> None:
    async with session.post(url, data=body) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")


async def _heartbeat_twins(bench, group, stub, session, base, agents) -> None:
    grpc_requests = [pb.HeartbeatRequest(agent_id=a, telemetry=TELEMETRY) for a in agents]
    http_bodies = [(f"{base}/v1/agents/{a}/heartbeat",
                    as_json(pb.HeartbeatRequest(telemetry=TELEMETRY))) for a in agents]
    twin = bench.add(await _measure(
        bench, "grpc.heartbeat", group,
        lambda i: stub.Heartbeat(grpc_requests[i % len(agents)], timeout=10),
        "heartbeats", "grpc.aio"))
    result = await _measure(
        bench, "http.heartbeat", group,
        lambda i: _post(session, *http_bodies[i % len(agents)]), "heartbeats", "aiohttp")
    _twin(result, twin)
    bench.add(result)


async def _discover_twins(bench, group, stub, session, base) -> None:
    size = bench.profile.fleets[0]
    request = discover_queries(await fleet(bench, size))["2caps"]
    body = as_json(request)
    twin = await _measure(bench, "grpc.discover", group,
                          lambda i: stub.DiscoverAgents(request, timeout=10), "calls",
                          "grpc.aio")
    twin.extra["fleet"] = size
    bench.add(twin)
    result = await _measure(bench, "http.discover", group,
                            lambda i: _post(session, f"{base}/v1/discover", body), "calls",
                            "aiohttp")
    result.extra["fleet"] = size
    _twin(result, twin)
    bench.add(result)


async def _sse_fanout(bench, group, stub, session, base) -> None:
    p = bench.profile
    watchers = min(SSE_WATCHERS, max(p.watchers, 4))
    ns = bench.namespace("sse")
    url = f"{base}/v1/watch?namespace={ns}&skip_snapshot=true"
    delays: list[float] = []
    counts = [0] * watchers
    opened = 0
    all_open = asyncio.Event()

    async def watcher(slot: int) -> None:
        nonlocal opened
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as response:
            opened += 1
            if opened == watchers:
                all_open.set()
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                event = json.loads(line[6:])
                if event.get("type") == "REGISTERED":
                    sent = float(event["agent"]["metadata"]["t"])
                    delays.append((time.time() - sent) * 1000)
                    counts[slot] += 1
                    if counts[slot] >= p.watch_events:
                        return

    tasks = [asyncio.ensure_future(watcher(i)) for i in range(watchers)]
    await asyncio.wait_for(all_open.wait(), 60)
    rng = random.Random(7)
    write_seconds = p.watch_events / p.watch_rate

    async def write_all() -> int:
        start = time.perf_counter()
        for i in range(p.watch_events):
            delay = start + i / p.watch_rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await stub.Register(register_request(ns, f"s{i:05d}", i, rng, t=repr(time.time())),
                                timeout=30)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        return p.watch_events

    written, cpu = await bench.window("http.sse.fanout", write_seconds + 1, write_all(),
                                      server_pids=group.pids)
    expected = watchers * written
    result = Result("http.sse.fanout", "http", "deliveries", ops=sum(counts),
                    errors=expected - sum(counts), seconds=write_seconds,
                    latency_ms=percentiles(delays),
                    driver=f"aiohttp, {watchers} SSE streams in the bench process, "
                           "1 server process")
    result.extra.update(watchers=watchers, writes=written, write_rate=p.watch_rate,
                        expected_deliveries=expected,
                        watchers_complete=sum(1 for c in counts if c >= written))
    bench.add(_fill(result, cpu, None))


async def _idle_http_cost(bench, with_http, agents) -> None:
    """The same gRPC heartbeat loop against a process with its (idle) HTTP app and one
    without, alternating, ROUNDS times each."""
    without_http = await bench.extra_server(METRICS_PORT="0")
    requests = [pb.HeartbeatRequest(agent_id=a, telemetry=TELEMETRY) for a in agents]
    rounds: dict[str, list[Result]] = {"with_http": [], "without_http": []}
    for n in range(ROUNDS):
        for label, group in (("without_http", without_http), ("with_http", with_http)):
            async with grpc.aio.insecure_channel(group.address) as channel:
                stub = pb_grpc.ServiceRegistryStub(channel)
                rounds[label].append(await _measure(
                    bench, f"http.idle.heartbeat.{label}", group,
                    lambda i, stub=stub: stub.Heartbeat(requests[i % len(requests)],
                                                        timeout=10),
                    "heartbeats", f"grpc.aio round {n + 1}/{ROUNDS}"))
    p99 = {label: [r.latency_ms.get("p99", 0.0) for r in results]
           for label, results in rounds.items()}
    best = {label: min(results, key=lambda r: r.latency_ms.get("p99", float("inf")))
            for label, results in rounds.items()}
    for label, result in best.items():
        result.extra["p99_by_round_ms"] = p99[label]
        bench.add(result)
    with_best, without_best = min(p99["with_http"]), min(p99["without_http"])
    if with_best and without_best:
        best["with_http"].ratios["p99_vs_without_http"] = round(with_best / without_best, 3)
        best["with_http"].extra["without_http_round_spread"] = round(
            max(p99["without_http"]) / without_best, 3)
