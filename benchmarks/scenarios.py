"""The scenarios. Each is `async def name(bench)` and adds Results to the bench.

Drivers, shared by the registry and the echo server so both are driven the same way:
- unary calls: h2load (one request body on every call) or the Python closed loop;
- keep-alive streams: h2load posting `stream_messages` heartbeats in each stream's body (the
  server answers each), and a Python ping-pong client (one heartbeat in flight per stream) for
  per-heartbeat latency;
- batches: the Python closed loop with pre-serialized HeartbeatBatch requests.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import random
import shutil
import subprocess
import time

import grpc
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc

from server import keys as server_keys
from server import scripts as server_scripts

from . import env, h2load
from .stats import Result, merge, percentiles, skipped

CAPS = [f"cap-{i:02d}" for i in range(20)]          # 3 of 20 per agent (memory figures use it)
ZONES = ["eu", "us", "ap", "sa"]
TELEMETRY = pb.AgentTelemetry(success_rate=0.99, avg_duration_ms=12.5, total_executions=100,
                              failed_executions=1)
HB_COUNTER = "service_registry_heartbeat_total"
REGISTER_TIMEOUT_MS = 3_600_000                     # what the suite's servers run with
LOG_MAX_EVENTS = 100_000                             # the server default


def hb_request(agent_id: str) -> pb.HeartbeatRequest:
    return pb.HeartbeatRequest(agent_id=agent_id, telemetry=TELEMETRY)


def agent_fields(i: int, rng: random.Random) -> dict:
    """Three capabilities of 20 and small metadata (every value well under 64 bytes)."""
    return {"agent_type": rng.choice((pb.WORKER, pb.SCOUT, pb.GUARD)),
            "capabilities": sorted(rng.sample(CAPS, 3)),
            "metadata": {"zone": ZONES[i % len(ZONES)], "tier": ("gold", "silver", "bronze")[i % 3],
                         "rack": f"r{i % 50:02d}"},
            "endpoint": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:8080",
            "cluster": "c1", "version": "1.4.2"}


def register_request(ns: str, name: str, i: int, rng: random.Random,
                     **metadata) -> pb.RegisterRequest:
    f = agent_fields(i, rng)
    f["metadata"].update(metadata)
    return pb.RegisterRequest(namespace=ns, agent_id=f"{ns}/{name}" if name else "", **f)


# -- drivers ------------------------------------------------------------------------------------
def _merge_python(results: list[dict]) -> dict:
    return {"ops": sum(r.get("ops", 0) for r in results),
            "errors": sum(r.get("errors", 0) for r in results),
            "seconds": max((r.get("seconds", 0.0) for r in results), default=0.0),
            "latencies": merge(r.get("latencies", ()) for r in results),
            "cpu_seconds": sum(r.get("cpu_seconds", 0.0) for r in results),
            "first_error": next((r["first_error"] for r in results if r.get("first_error")), "")}


async def _python_run(bench, label: str, jobs: list[dict], *, server_pids=None,
                      count_total=None) -> tuple[dict, dict]:
    seconds = jobs[0].get("duration", 0.0) if not count_total else 0.0
    # Jobs start measuring 0.5 s after they are built (loadgen_jobs) plus their warm-up.
    raw, cpu = await bench.window(label, seconds + 0.5, bench.pool.run(jobs),
                                  warmup=jobs[0].get("warmup", 0.0) + 0.5,
                                  server_pids=server_pids, count_total=count_total)
    merged = _merge_python(raw)
    merged["raw"] = raw
    return merged, cpu


def _fill(result: Result, cpu: dict, loadgen_cpu: float | None) -> Result:
    result.server_cpu = _round(cpu.get("server"))
    result.redis_cpu = _round(cpu.get("redis"))
    result.machine_busy = _round(cpu.get("machine"))
    result.loadgen_cpu = _round(loadgen_cpu)
    return result


def _round(x):
    return round(x, 3) if isinstance(x, float) else x


async def _counter_delta(bench, counter: str | None, before: dict | None) -> tuple[int, int]:
    """(ok, failed) counted by the local servers since `before`; (-1, -1) when unknown."""
    if counter is None or before is None:
        return -1, -1
    after = await bench.server_counts(counter)
    if after is None:
        return -1, -1
    ok = after.get("ok", 0) - before.get("ok", 0)
    failed = sum(v - before.get(k, 0) for k, v in after.items() if k != "ok")
    return int(ok), int(failed)


async def drive_unary(bench, scenario: str, group: str, unit: str, address: str, method: str,
                      messages: list[bytes], *, counter: str | None = None, server_pids=None,
                      duration: float | None = None, items: int = 1,
                      force_python: bool = False, concurrency: int | None = None) -> Result:
    """Closed-loop unary calls: h2load when available (first message as the body), else the
    Python load generator rotating over `messages`."""
    p = bench.profile
    duration = duration if duration is not None else p.duration
    before = await bench.server_counts(counter) if counter else None
    if bench.h2load and not force_python:
        body = h2load.grpc_frame(messages[0])
        run = functools.partial(h2load.run_measured, address, method, body,
                                clients=p.h2_clients, streams=p.h2_streams, duration=duration,
                                warmup=p.warmup)
        loop = asyncio.get_running_loop()
        res, cpu = await bench.window(scenario, duration, loop.run_in_executor(None, run),
                                      warmup=p.warmup, server_pids=server_pids)
        ok, failed = await _counter_delta(bench, counter, before)
        result = Result(scenario, group, unit, ops=res.requests * items, seconds=res.seconds,
                        latency_ms=percentiles(res.latencies_ms),
                        driver=f"h2load -c {p.h2_clients} -m {p.h2_streams}")
        result.errors = res.failed + (failed if failed >= 0 else 0)
        if failed < 0 and counter:
            result.errors = None if not res.failed else res.failed
            result.notes.append("h2load cannot see grpc-status and the servers' metrics are not "
                                "reachable: gRPC errors unverified")
        return _fill(result, cpu, res.cpu_seconds / max(duration + p.warmup, 1e-6))
    per = max(1, len(messages) // bench.options.loadgen_procs)
    jobs = bench.loadgen_jobs("unary", {}, method=method, items=items, duration=duration,
                              concurrency=concurrency or p.concurrency)
    for i, job in enumerate(jobs):
        job["address"] = address
        job["requests"] = messages[i * per:(i + 1) * per] or messages
    merged, cpu = await _python_run(bench, scenario, jobs, server_pids=server_pids)
    result = Result(scenario, group, unit, ops=merged["ops"], errors=merged["errors"],
                    seconds=merged["seconds"], latency_ms=percentiles(merged["latencies"]),
                    driver=f"python x{len(jobs)} procs x{jobs[0]['concurrency']} callers")
    if merged["first_error"]:
        result.notes.append(f"first error: {merged['first_error']}")
    return _fill(result, cpu, merged["cpu_seconds"] / max(merged["seconds"], 1e-6))


async def drive_stream_bulk(bench, scenario: str, address: str, message: bytes, *,
                            counter: str | None = None, server_pids=None) -> Result:
    """HeartbeatStream throughput: h2load opens streams that each carry `stream_messages`
    heartbeats (as an agent's keep-alive stream does over its life) and counts streams."""
    p = bench.profile
    k = p.stream_messages
    body = h2load.grpc_frame(message) * k
    before = await bench.server_counts(counter) if counter else None
    run = functools.partial(h2load.run_measured, address, "HeartbeatStream", body,
                            clients=p.h2_clients, streams=p.h2_streams, duration=p.duration,
                            warmup=p.warmup)
    res, cpu = await bench.window(scenario, p.duration,
                                  asyncio.get_running_loop().run_in_executor(None, run),
                                  warmup=p.warmup, server_pids=server_pids)
    ok, failed = await _counter_delta(bench, counter, before)
    result = Result(scenario, "heartbeat", "heartbeats", ops=res.requests * k,
                    seconds=res.seconds,
                    driver=f"h2load -c {p.h2_clients} -m {p.h2_streams}, {k} heartbeats/stream")
    result.errors = res.failed * k + (failed if failed >= 0 else 0)
    stream_ms = percentiles(res.latencies_ms)
    result.extra["stream_ms"] = stream_ms
    result.extra["heartbeats_per_stream"] = k
    if stream_ms:
        result.notes.append(f"latency is per stream of {k} heartbeats (p50 "
                            f"{stream_ms['p50']:.1f} ms): see the ping-pong row for one "
                            "heartbeat's")
    if failed < 0 and counter:
        result.errors = None if not res.failed else res.failed * k
        result.notes.append("gRPC errors unverified (servers' metrics not reachable)")
    return _fill(result, cpu, res.cpu_seconds / max(p.duration + p.warmup, 1e-6))


async def drive_stream_pingpong(bench, scenario: str, address: str, messages: list[bytes], *,
                                server_pids=None) -> Result:
    """Keep-alive streams, one heartbeat in flight each: per-heartbeat latency."""
    p = bench.profile
    jobs = bench.loadgen_jobs("stream", {}, concurrency=p.stream_agents)
    per = max(1, len(messages) // len(jobs))
    for i, job in enumerate(jobs):
        job["address"] = address
        job["requests"] = messages[i * per:(i + 1) * per] or messages
    merged, cpu = await _python_run(bench, scenario, jobs, server_pids=server_pids)
    result = Result(scenario, "heartbeat", "heartbeats", ops=merged["ops"],
                    errors=merged["errors"], seconds=merged["seconds"],
                    latency_ms=percentiles(merged["latencies"]),
                    driver=f"python x{len(jobs)} procs x{p.stream_agents} streams, ping-pong")
    if merged["first_error"]:
        result.notes.append(f"first error: {merged['first_error']}")
    return _fill(result, cpu, merged["cpu_seconds"] / max(merged["seconds"], 1e-6))


# -- agents ---------------------------------------------------------------------------------------
async def register_agents(bench, ns: str, names: list[str], *, address: str | None = None,
                          metadata=None) -> list[str]:
    """Registers agents through the registry (the Python pool, every process a share)."""
    rng = random.Random(ns)
    msgs = [register_request(ns, name, i, rng, **(metadata or {})).SerializeToString()
            for i, name in enumerate(names)]
    n = bench.options.loadgen_procs
    jobs = [{"kind": "register_all", "slot": i, "address": address or bench.addr,
             "method": "Register", "requests": msgs[i::n], "concurrency": 16,
             "channels": bench.profile.channels} for i in range(n)]
    merged, _ = await _python_run(bench, f"register {len(names):,} agents", jobs,
                                  count_total=len(names))
    if merged["errors"]:
        raise RuntimeError(f"registering agents in {ns}: {merged['errors']} failed "
                           f"({merged['first_error']})")
    return [f"{ns}/{name}" for name in names]


async def populate(bench, ns: str, count: int) -> float:
    """A fleet of `count` agents in `ns`: register.lua pipelined straight into Redis when the
    suite has Redis (the same script the server runs, ~10x faster than gRPC), else through the
    registry. Returns seconds taken."""
    t0 = time.monotonic()
    names = [f"f{i:07d}" for i in range(count)]
    if bench.redis is None:
        await register_agents(bench, ns, names)
        return time.monotonic() - t0
    scripts = server_scripts.Scripts(bench.redis)
    k = server_keys.namespace(ns)
    rng = random.Random(ns)
    await bench.redis.sadd(server_keys.NAMESPACES, ns)
    await bench.redis.zadd(server_keys.DUE, {ns: 0}, nx=True)  # the sweeper's schedule
    chunk = 2000
    label = f"  load {count:,} agents into {ns}"
    bench.log(label)
    for start in range(0, count, chunk):
        async with bench.redis.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + chunk, count)):
                f = agent_fields(i, rng)
                name = names[i]
                args = [k.prefix, name, REGISTER_TIMEOUT_MS, LOG_MAX_EVENTS, f["agent_type"],
                        pb.HEALTHY, ",".join(f["capabilities"]), f["endpoint"], f["cluster"],
                        f["version"], "", 0]
                for key, value in f["metadata"].items():
                    args += (key, value)
                await scripts.register(keys=k.agent_script_keys(name), args=args, client=pipe)
            await pipe.execute()
    return time.monotonic() - t0


async def hb_agents(bench) -> list[str]:
    if getattr(bench, "heartbeat_agents", None) is None:
        ns = bench.namespace("hb")
        names = [f"hb{i:05d}" for i in range(bench.profile.hb_agents)]
        bench.heartbeat_agents = await register_agents(bench, ns, names)
    return bench.heartbeat_agents


def batches(agent_ids: list[str], size: int) -> list[bytes]:
    out = []
    for start in range(0, len(agent_ids), size):
        chunk = agent_ids[start:start + size]
        if len(chunk) < size:
            chunk = (chunk + agent_ids)[:size]
        out.append(pb.HeartbeatBatchRequest(
            heartbeats=[hb_request(a) for a in chunk]).SerializeToString())
    return out


def script_sha(name: str) -> str:
    return hashlib.sha1(server_scripts.source(name).encode()).hexdigest()


# -- ceilings -------------------------------------------------------------------------------------
async def ceilings(bench) -> None:
    """The Redis limit (redis-benchmark on heartbeat.lua) and the gRPC limit (the echo server
    driven like the registry), measured in this run."""
    p = bench.profile
    if bench.redis is None:
        bench.add(skipped("ceiling.redis.P16", "ceiling", "no Redis access (--redis-url)"))
    elif not shutil.which("redis-benchmark"):
        bench.add(skipped("ceiling.redis.P16", "ceiling",
                          "redis-benchmark not installed (apt-get install redis-tools)"))
    else:
        ns = bench.namespace("ceiling")
        await populate(bench, ns, 1)
        k = server_keys.namespace(ns)
        name = "f0000000"
        sha = await bench.redis.script_load(server_scripts.source("heartbeat"))
        t = TELEMETRY
        script_keys = k.agent_script_keys(name)
        command = ["EVALSHA", sha, str(len(script_keys)), *script_keys, k.prefix, name,
                   str(REGISTER_TIMEOUT_MS), str(LOG_MAX_EVENTS), "0", "1",
                   repr(t.success_rate), repr(t.avg_duration_ms), str(t.total_executions),
                   str(t.failed_executions), "0.5", "0.9", "", "16",
                   str(REGISTER_TIMEOUT_MS)]  # outage protection on, as the server runs it
        for pipeline, n in ((16, p.redis_bench_requests),
                            (1, max(p.redis_bench_requests // 4, 1000))):
            bench.add(await _redis_benchmark(bench, f"ceiling.redis.P{pipeline}", pipeline, n,
                                             command))
    if not bench.echo_addr:
        bench.add(skipped("ceiling.grpc_echo.unary", "ceiling", "no echo server"))
        return
    echo_pids = bench.echo.pids if bench.echo else []
    message = hb_request("bench-echo/agent").SerializeToString()
    bench.add(await drive_unary(bench, "ceiling.grpc_echo.unary", "ceiling", "calls",
                                bench.echo_addr, "Heartbeat", [message], server_pids=echo_pids))
    if bench.h2load:
        bench.add(await drive_stream_bulk(bench, "ceiling.grpc_echo.stream", bench.echo_addr,
                                          message, server_pids=echo_pids))
    bench.add(await drive_stream_pingpong(bench, "ceiling.grpc_echo.stream.pingpong",
                                          bench.echo_addr, [message], server_pids=echo_pids))
    ids = [f"bench-echo/a{i}" for i in range(p.batch_size * 2)]
    bench.add(await drive_unary(bench, "ceiling.grpc_echo.batch", "ceiling", "heartbeats",
                                bench.echo_addr, "HeartbeatBatch", batches(ids, p.batch_size),
                                server_pids=echo_pids, items=p.batch_size, force_python=True,
                                concurrency=p.batch_callers))
    for r in bench.results:
        if r.scenario.startswith("ceiling.grpc_echo"):
            r.group = "ceiling"


async def _redis_benchmark(bench, scenario: str, pipeline: int, requests: int,
                           command: list[str]) -> Result:
    host, port, password, tls = env.redis_address(bench.redis_node_url)
    if tls:
        return skipped(scenario, "ceiling", "redis-benchmark over TLS is not set up")
    clients = 50
    cmd = ["redis-benchmark", "-h", host, "-p", str(port), "-c", str(clients), "-n", str(requests),
           "-P", str(pipeline), "--csv"]
    if password:
        cmd += ["-a", password]
    cmd += command

    def go():
        import resource
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        elapsed = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return out, elapsed, cpu

    expected = requests / (40000 if pipeline > 1 else 25000)
    (out, elapsed, cpu_s), cpu = await bench.window(
        scenario, expected, asyncio.get_running_loop().run_in_executor(None, go),
        server_pids=[])
    rows = [line for line in out.stdout.splitlines() if line.startswith('"EVALSHA')]
    if not rows:
        return skipped(scenario, "ceiling", f"redis-benchmark failed: {out.stderr[-300:]}")
    fields = [f.strip('"') for f in rows[-1].split('","')]
    rps = float(fields[1])
    result = Result(scenario, "ceiling", "heartbeats", ops=requests, errors=0,
                    seconds=requests / rps if rps else elapsed,
                    latency_ms={"p50": float(fields[4]), "p95": float(fields[5]),
                                "p99": float(fields[6]), "max": float(fields[7]),
                                "mean": float(fields[2])},
                    driver=f"redis-benchmark -c {clients} -P {pipeline} EVALSHA heartbeat.lua")
    errors = await bench.redis.info("errorstats")
    if any(k.startswith("errorstat_NOT_FOUND") for k in errors):
        result.notes.append("some heartbeat.lua calls answered NOT_FOUND (see INFO errorstats)")
    return _fill(result, cpu, cpu_s / max(elapsed, 1e-6))


# -- register storm -------------------------------------------------------------------------------
async def register(bench) -> None:
    p = bench.profile
    ns = bench.namespace("register")
    n = p.register_agents
    rng = random.Random(1)
    before = await bench.server_counts("service_registry_register_total")
    if bench.h2load:
        # No agent_id: the server names each new agent, so every call registers one more.
        body = h2load.grpc_frame(register_request(ns, "", 0, rng).SerializeToString())
        run = functools.partial(h2load.run_measured, bench.addr, "Register", body,
                                clients=p.h2_clients, streams=p.h2_streams, count=n)
        res, cpu = await bench.window("register.storm", n / 2500,
                                      asyncio.get_running_loop().run_in_executor(None, run))
        ok, failed = await _counter_delta(bench, "service_registry_register_total", before)
        result = Result("register.storm", "register", "agents", ops=res.requests,
                        seconds=res.seconds, latency_ms=percentiles(res.latencies_ms),
                        driver=f"h2load -c {p.h2_clients} -m {p.h2_streams} -n {n}")
        result.errors = res.failed + max(failed, 0)
        loadgen_cpu = res.cpu_seconds / max(res.seconds, 1e-6)
    else:
        names = [f"r{i:07d}" for i in range(n)]
        msgs = [register_request(ns, name, i, rng).SerializeToString()
                for i, name in enumerate(names)]
        k = bench.options.loadgen_procs
        jobs = [{"kind": "register_all", "slot": i, "address": bench.addr, "method": "Register",
                 "requests": msgs[i::k], "concurrency": p.concurrency, "channels": p.channels}
                for i in range(k)]
        merged, cpu = await _python_run(bench, "register.storm", jobs, count_total=n)
        result = Result("register.storm", "register", "agents", ops=merged["ops"],
                        errors=merged["errors"], seconds=merged["seconds"],
                        latency_ms=percentiles(merged["latencies"]),
                        driver=f"python x{k} procs x{p.concurrency} callers")
        loadgen_cpu = merged["cpu_seconds"] / max(merged["seconds"], 1e-6)
    stats = await bench.stub.GetStats(pb.StatsRequest(namespace=ns), timeout=30)
    registered = stats.namespaces[0].agents if stats.namespaces else 0
    result.extra["agents_in_namespace"] = registered
    if bench.h2load:
        # Every successful call added one agent: GetStats tells the failures, local or remote.
        result.errors = max(result.errors or 0, result.ops - registered)
    elif registered != result.ops:
        result.notes.append(f"GetStats counts {registered} agents for {result.ops} calls")
    bench.add(_fill(result, cpu, loadgen_cpu))


# -- heartbeats -----------------------------------------------------------------------------------
async def heartbeat(bench) -> None:
    p = bench.profile
    agents = await hb_agents(bench)
    messages = [hb_request(a).SerializeToString() for a in agents]
    bench.add(await drive_unary(bench, "heartbeat.unary", "heartbeat", "heartbeats", bench.addr,
                                "Heartbeat", messages, counter=HB_COUNTER))
    if bench.h2load:
        bench.add(await drive_stream_bulk(bench, "heartbeat.stream", bench.addr, messages[0],
                                          counter=HB_COUNTER))
    bench.add(await drive_stream_pingpong(bench, "heartbeat.stream.pingpong", bench.addr,
                                          messages))
    result = await drive_unary(bench, "heartbeat.batch", "heartbeat", "heartbeats", bench.addr,
                               "HeartbeatBatch", batches(agents, p.batch_size),
                               items=p.batch_size, force_python=True,
                               concurrency=p.batch_callers)
    result.extra["batch_size"] = p.batch_size
    bench.add(result)


# -- memory ---------------------------------------------------------------------------------------
async def memory(bench) -> None:
    """Redis memory per agent: INFO used_memory before and after N agents with 3 capabilities
    and small metadata, in a fresh namespace (its change log included)."""
    if bench.redis is None:
        bench.add(skipped("memory.per_agent", "memory", "no Redis access (--redis-url)"))
        return
    n = bench.profile.memory_agents
    ns = bench.namespace("memory")
    r = bench.redis
    before = int((await r.info("memory"))["used_memory"])
    seconds = await populate(bench, ns, n)
    after = int((await r.info("memory"))["used_memory"])
    k = server_keys.namespace(ns)
    name = "f0000001"
    parts = {}
    for label, key in (("agent_hash", k.agent(name)), ("lease_key", k.lease(name))):
        parts[label] = await r.memory_usage(key, samples=0) or 0
    zsets = [k.health, k.deadlines, *[k.capability(c) for c in CAPS],
             *[k.agent_type(t) for t in (1, 2, 3)]]
    index_bytes = 0
    for key in zsets:
        index_bytes += await r.memory_usage(key, samples=0) or 0
    parts["indexes"] = round(index_bytes / n, 1)
    parts["change_log"] = round((await r.memory_usage(k.log, samples=0) or 0) / n, 1)
    encoding = await r.object("encoding", k.agent(name))
    per_agent = (after - before) / n
    result = Result("memory.per_agent", "memory", "agents", ops=n, seconds=seconds, errors=0,
                    driver="register.lua pipelined into Redis")
    result.extra.update(bytes_per_agent=round(per_agent, 1), used_memory_before=before,
                        used_memory_after=after, breakdown_bytes_per_agent=parts,
                        agent_hash_encoding=encoding)
    bench.add(result)


# -- discover -------------------------------------------------------------------------------------
def discover_queries(ns: str) -> dict[str, pb.DiscoverRequest]:
    c = CAPS
    return {
        "1cap": pb.DiscoverRequest(capabilities=[c[0]], max_results=10, namespace=ns),
        "2caps": pb.DiscoverRequest(capabilities=[c[0], c[1]], max_results=10, namespace=ns),
        "3caps": pb.DiscoverRequest(capabilities=[c[0], c[1], c[2]], max_results=10,
                                    namespace=ns),
        "2caps+zone": pb.DiscoverRequest(capabilities=[c[0], c[1]], filters={"zone": "eu"},
                                         max_results=10, namespace=ns),
    }


def fleet_label(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


async def fleet(bench, size: int) -> str:
    fleets = bench.__dict__.setdefault("fleets", {})
    if size not in fleets:
        ns = bench.namespace(f"fleet{fleet_label(size)}")
        await populate(bench, ns, size)
        fleets[size] = ns
    return fleets[size]


async def discover(bench) -> None:
    p = bench.profile
    for size in p.fleets:
        ns = await fleet(bench, size)
        label = fleet_label(size)
        for qname, request in discover_queries(ns).items():
            result = await drive_unary(bench, f"discover.{label}.{qname}", "discover", "calls",
                                       bench.addr, "DiscoverAgents",
                                       [request.SerializeToString()],
                                       counter="service_registry_discover_total",
                                       duration=p.discover_duration)
            reply = await bench.stub.DiscoverAgents(request, timeout=30)
            result.extra["results_per_call"] = len(reply.agents)
            result.extra["fleet"] = size
            if bench.redis is not None:
                result.extra.update(await discover_redis_time(bench, request))
                if qname == "2caps":
                    result.extra.update(await sinter_time(bench, ns, list(request.capabilities)))
            bench.add(result)


async def _slowlog(bench, work, match) -> list[int]:
    """Runs `work` with SLOWLOG recording every command, returns the durations (us) of the
    entries `match` accepts. The previous SLOWLOG settings are restored."""
    r = bench.redis
    old = await r.config_get("slowlog-*")
    try:
        await r.config_set("slowlog-max-len", 200000)
        await r.config_set("slowlog-log-slower-than", 0)
        await r.slowlog_reset()
        await work()
        await r.config_set("slowlog-log-slower-than", old.get("slowlog-log-slower-than", 10000))
        entries = await r.slowlog_get(200000)
    finally:
        for key, value in old.items():
            await r.config_set(key, value)
        await r.slowlog_reset()
    return [int(e["duration"]) for e in entries if match(_command_text(e["command"]))]


def _command_text(command) -> str:
    if isinstance(command, bytes):
        return command.decode(errors="replace")
    if isinstance(command, (list, tuple)):
        return " ".join(c.decode(errors="replace") if isinstance(c, bytes) else str(c)
                        for c in command)
    return str(command)


async def discover_redis_time(bench, request: pb.DiscoverRequest) -> dict:
    """Redis time per Discover call: sequential calls, every discover.lua run in SLOWLOG."""
    calls = bench.profile.redis_probe_calls
    prefix = f"evalsha {script_sha('discover')}"
    chunk = 10  # every command a script runs is logged too: keep under slowlog-max-len
    durations = []
    for start in range(0, calls, chunk):
        async def work(n=min(chunk, calls - start)):
            for _ in range(n):
                await bench.stub.DiscoverAgents(request, timeout=30)

        durations += await _slowlog(bench, work, lambda c: c.lower().startswith(prefix))
    if not durations:
        return {"redis_us_per_call": None}
    return {"redis_us_per_call": round(sum(durations) / calls, 1),
            "scripts_per_call": round(len(durations) / calls, 2),
            "redis_us_per_script_p50": percentiles(durations)["p50"],
            "redis_us_per_script_max": max(durations)}


async def sinter_time(bench, ns: str, caps: list[str]) -> dict:
    """The plain design the issue compares with: capability SETs and SINTER, on the same
    fleet (sets built from the capability zsets, deleted afterwards)."""
    r = bench.redis
    k = server_keys.namespace(ns)
    set_keys = []
    for cap in caps:
        key = f"bench:sinter:{{{ns}}}:{cap}"
        set_keys.append(key)
        members = await r.zrange(k.capability(cap), 0, -1)
        for start in range(0, len(members), 10000):
            await r.sadd(key, *members[start:start + 10000])
    size = await r.scard(set_keys[0])
    runs = 20
    out = {}

    async def work():
        for _ in range(runs):
            out["n"] = len(await r.sinter(set_keys))

    try:
        durations = await _slowlog(bench, work, lambda c: c.upper().startswith("SINTER "))
    finally:
        await r.unlink(*set_keys)
    return {"sinter_us_per_call": round(sum(durations) / max(len(durations), 1), 1),
            "sinter_set_size": size, "sinter_result_size": out.get("n", 0)}


# -- mixed ----------------------------------------------------------------------------------------
async def _discover_at_rate(bench, request: bytes, rate: float, seconds: float) -> dict:
    """Open-loop Discover calls from this process (cheap at ~100/s)."""
    call = bench.channel.unary_unary("/service_registry.ServiceRegistry/DiscoverAgents")
    latencies, errors, tasks = [], 0, set()
    start = time.perf_counter()

    async def one(scheduled: float):
        nonlocal errors
        try:
            await call(request, timeout=30)
        except grpc.aio.AioRpcError:
            errors += 1
        latencies.append((time.perf_counter() - scheduled) * 1000.0)

    n = 0
    while True:
        scheduled = start + n / rate
        if scheduled - start >= seconds:
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    return {"calls": n, "errors": errors, "latency_ms": percentiles(latencies),
            "rate": n / seconds}


async def _heartbeats_at_rate(bench, scenario: str, rate: float, seconds: float, messages,
                              discover: tuple | None) -> Result:
    p = bench.profile
    before = await bench.server_counts(HB_COUNTER)
    loop = asyncio.get_running_loop()
    if bench.h2load:
        run = functools.partial(h2load.run_measured, bench.addr, "Heartbeat",
                                h2load.grpc_frame(messages[0]), clients=p.h2_clients,
                                streams=p.h2_streams, duration=seconds, warmup=p.warmup,
                                rps=rate / p.h2_clients)
        work = loop.run_in_executor(None, run)
        driver = f"h2load -c {p.h2_clients} --rps {rate / p.h2_clients:.0f} per connection"
    else:
        jobs = bench.loadgen_jobs("rate", {}, method="Heartbeat", duration=seconds,
                                  rate=rate / bench.options.loadgen_procs)
        per = max(1, len(messages) // len(jobs))
        for i, job in enumerate(jobs):
            job["requests"] = messages[i * per:(i + 1) * per] or messages
        work = bench.pool.run(jobs)
        driver = f"python open loop x{len(jobs)} procs"

    async def both():
        side = None
        if discover is not None:
            await asyncio.sleep(p.warmup)
            side = asyncio.ensure_future(_discover_at_rate(bench, discover[0], discover[1],
                                                           seconds))
        main = await work
        return main, (await side if side is not None else None)

    (res, side), cpu = await bench.window(scenario, seconds, both(), warmup=p.warmup)
    ok, failed = await _counter_delta(bench, HB_COUNTER, before)
    if bench.h2load:
        result = Result(scenario, "mixed", "heartbeats", ops=res.requests, seconds=res.seconds,
                        latency_ms=percentiles(res.latencies_ms), driver=driver,
                        errors=res.failed + max(failed, 0))
        if failed < 0:
            result.errors = res.failed or None
            result.notes.append("gRPC errors unverified (servers' metrics not reachable)")
        loadgen_cpu = res.cpu_seconds / (seconds + p.warmup)
    else:
        merged = _merge_python(res)
        result = Result(scenario, "mixed", "heartbeats", ops=merged["ops"],
                        errors=merged["errors"], seconds=merged["seconds"],
                        latency_ms=percentiles(merged["latencies"]), driver=driver)
        loadgen_cpu = merged["cpu_seconds"] / max(merged["seconds"], 1e-6)
    result.extra["target_rate"] = round(rate, 1)
    if side is not None:
        result.extra["discover"] = side
    return _fill(result, cpu, loadgen_cpu)


async def mixed(bench) -> None:
    """Heartbeat latency at a fixed rate (half the measured unary capacity), alone and with
    a steady Discover load (largest fleet, 2 capabilities + a filter)."""
    p = bench.profile
    agents = await hb_agents(bench)
    messages = [hb_request(a).SerializeToString() for a in agents]
    unary = next((r for r in bench.results if r.scenario == "heartbeat.unary"), None)
    rate = max(50.0, round(unary.throughput * 0.5, -1)) if unary and unary.ops else 1000.0
    size = max(p.fleets)
    ns = await fleet(bench, size)
    request = discover_queries(ns)["2caps+zone"].SerializeToString()
    alone = await _heartbeats_at_rate(bench, "mixed.heartbeat.alone", rate, p.mixed_duration,
                                      messages, None)
    bench.add(alone)
    loaded = await _heartbeats_at_rate(
        bench, "mixed.heartbeat.with_discover", rate, p.mixed_duration, messages,
        (request, p.mixed_discover_rate))
    loaded.extra["discover_fleet"] = size
    if alone.latency_ms.get("p99") and loaded.latency_ms.get("p99"):
        loaded.extra["p99_ratio"] = round(loaded.latency_ms["p99"] / alone.latency_ms["p99"], 3)
    bench.add(loaded)


# -- watch fan-out --------------------------------------------------------------------------------
async def watch(bench) -> None:
    """`watchers` WatchAgents streams on ONE server process; writes at `watch_rate`/s; the
    delay of every delivery from the write (the writer's clock, same machine)."""
    p = bench.profile
    ns = bench.namespace("watch")
    if bench.local:
        group = await bench.extra_server()
        address, pids = group.address, group.pids
        where = "1 server process (started for this scenario)"
    else:
        address, pids = bench.addr, []
        where = "the remote deployment"
    n = bench.options.loadgen_procs
    per = [p.watchers // n + (1 if i < p.watchers % n else 0) for i in range(n)]
    write_seconds = p.watch_events / p.watch_rate
    timeout = 60 + write_seconds + 30
    jobs = [{"kind": "watch", "slot": i, "address": address, "namespace": ns,
             "watchers": per[i], "expect": p.watch_events, "timeout": timeout,
             "channels": max(1, min(8, per[i] // 100))} for i in range(n)]
    futures = bench.pool.submit(jobs)
    deadline = time.monotonic() + 60
    while bench.pool.ready() < p.watchers and time.monotonic() < deadline:
        if any(f.done() for f in futures):
            break
        await asyncio.sleep(0.1)
    ready = bench.pool.ready()
    rng = random.Random(7)

    async def write_all():
        written = 0
        start = time.perf_counter()
        for i in range(p.watch_events):
            delay = start + i / p.watch_rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            request = register_request(ns, f"w{i:05d}", i, rng, t=repr(time.time()))
            await bench.stub.Register(request, timeout=30)
            written += 1
        return written, await asyncio.gather(*futures)

    (written, raw), cpu = await bench.window("watch.fanout", write_seconds + 1, write_all(),
                                             server_pids=pids)
    counts = [c for r in raw for c in r["counts"]]
    latencies = merge(r["latencies"] for r in raw)
    delivered = sum(counts)
    expected = p.watchers * written
    result = Result("watch.fanout", "watch", "deliveries", ops=delivered,
                    errors=expected - delivered, seconds=write_seconds,
                    latency_ms=percentiles(latencies),
                    driver=f"python x{n} procs, {p.watchers} watchers on {where}")
    result.extra.update(watchers=p.watchers, watchers_ready=ready, writes=written,
                        write_rate=p.watch_rate, expected_deliveries=expected,
                        watchers_complete=sum(1 for c in counts if c >= written))
    errors = [e for r in raw for e in r["errors"]]
    if errors:
        result.notes.append(f"{len(errors)} watch streams failed, first: {errors[0]}")
    if ready < p.watchers:
        result.notes.append(f"only {ready} of {p.watchers} watchers were ready before writing")
    bench.add(_fill(result, cpu, sum(r["cpu_seconds"] for r in raw) / max(write_seconds, 1e-6)))


# -- expiry storm ---------------------------------------------------------------------------------
async def expiry(bench) -> None:
    """The expiry storm (many agents stop at once), then a few dead agents among a large live
    fleet (where Redis's own expiry of lease keys is slowest and the sweeper matters)."""
    p = bench.profile
    await _expire(bench, "expiry.storm", bench.namespace("expiry"), p.expiry_agents, live=0)
    await _expire(bench, "expiry.among_live", bench.namespace("expiry-live"), p.expiry_dead,
                  live=p.expiry_live)


async def _expire(bench, scenario: str, ns: str, n: int, live: int) -> None:
    """`n` agents stop heartbeating at once (among `live` agents with long leases in the same
    namespace): delay from each deadline to its EXPIRED event at a watcher (Redis's clock for
    the deadline, ours for the arrival: same machine)."""
    p = bench.profile
    if bench.local:
        group = await bench.extra_server(HEARTBEAT_TIMEOUT=p.expiry_timeout)
        address, pids = group.address, group.pids
    else:
        address, pids = bench.addr, []
    channel = grpc.aio.insecure_channel(address)
    stub = pb_grpc.ServiceRegistryStub(channel)
    probe = await stub.Register(register_request(ns, "probe", 0, random.Random(0)), timeout=30)
    timeout_s = probe.heartbeat_timeout_ms / 1000.0
    limit = 15 if p.name != "full" else 300
    if timeout_s > limit:
        await channel.close()
        bench.add(skipped(scenario, "expiry", f"the deployment's heartbeat timeout is "
                          f"{timeout_s:.0f}s (over {limit}s for this profile)"))
        return
    delays, arrivals, deadlines = [], [], []
    ready = asyncio.Event()

    resumed = []

    async def watcher():
        revision = ""
        while True:  # a watcher cut off (e.g. it fell behind its buffer) resumes
            call = stub.WatchAgents(pb.WatchRequest(namespace=ns, since_revision=revision))
            try:
                async for event in call:
                    if event.revision and event.type not in (pb.SNAPSHOT, pb.SNAPSHOT_END):
                        revision = event.revision
                    if event.type == pb.SNAPSHOT_END:
                        revision = event.revision
                        ready.set()
                    elif event.type == pb.EXPIRED and event.agent.agent_id != f"{ns}/probe":
                        now_ms = time.time() * 1000.0
                        delays.append(now_ms - event.agent.expires_at_unix_ms)
                        arrivals.append(now_ms)
                        deadlines.append(event.agent.expires_at_unix_ms)
                        if len(delays) >= n:
                            call.cancel()
                            return
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                      grpc.StatusCode.UNAVAILABLE) or not revision:
                    raise
                resumed.append(exc.code().name)

    populated = 0.0
    if live and bench.redis is not None:  # long leases (REGISTER_TIMEOUT_MS), same namespace
        populated = await populate(bench, ns, live)
    elif live:
        live = 0  # a deployment without --redis-url: no fast way to load the live fleet
    watch_task = asyncio.ensure_future(watcher())
    await asyncio.wait_for(ready.wait(), 30)
    names = [f"x{i:06d}" for i in range(n)]
    t0 = time.monotonic()
    await register_agents(bench, ns, names, address=address)
    registered_in = time.monotonic() - t0

    async def wait_all():
        try:
            await asyncio.wait_for(asyncio.shield(watch_task), timeout_s + registered_in + 30)
        except asyncio.TimeoutError:
            watch_task.cancel()

    _, cpu = await bench.window(scenario, timeout_s + registered_in + 1, wait_all(),
                                server_pids=pids)
    await channel.close()
    # Throughput: expiries over the time from the first deadline to the last EXPIRED event.
    spread = (max(arrivals) - min(deadlines)) / 1000.0 if delays else 0.0
    among = f" among {live:,} live" if live else ""
    result = Result(scenario, "expiry", "expiries", ops=len(delays),
                    errors=n - len(delays), seconds=max(spread, 1e-3),
                    latency_ms=percentiles(delays),
                    driver=f"{n} agents{among} registered in {registered_in:.2f}s, 1 watcher")
    result.extra.update(agents=n, live_agents=live, heartbeat_timeout_s=timeout_s,
                        registration_seconds=round(registered_in, 3),
                        live_load_seconds=round(populated, 3))
    result.notes.append("latency = EXPIRED event arrival - the agent's deadline")
    if resumed:
        result.notes.append(f"the watcher resumed {len(resumed)} time(s) ({resumed[0]})")
    bench.add(_fill(result, cpu, None))


from .httpapi import http  # noqa: E402,F401 - the HTTP port's scenarios (issue 13)
from .balanced import balanced  # noqa: E402,F401 - the issue-14 scenarios, by name
from .keepalive import keepalive  # noqa: E402,F401 - its own module (issue 12)


# -- Redis Cluster --------------------------------------------------------------------------------
async def cluster(bench) -> None:
    """Registers and heartbeats on 1 vs 3 primaries (benchmarks/cluster.py)."""
    from . import cluster as cluster_scenario
    await cluster_scenario.run(bench)
