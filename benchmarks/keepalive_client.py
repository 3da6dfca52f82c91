"""The client side of the `keepalive` scenario (benchmarks/keepalive.py), run in a load-generator
process: keeps the given agents alive with ServiceRegistryClient.keep_alive(), then meters one
window itself: heartbeats the server accepted, this process's CPU, the server processes' CPU
(psutil, same machine) and Redis's (INFO cpu), so every figure covers the same seconds.
"""
from __future__ import annotations

import asyncio
import time

from . import env


def run_job(job: dict) -> dict:
    """Entry point in a load-generator process."""
    try:
        import uvloop
        return uvloop.run(_keep_alive(job))
    except ImportError:
        return asyncio.run(_keep_alive(job))


async def _redis_cpu(url: str) -> float | None:
    if not url:
        return None
    import redis.asyncio as aioredis
    r = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        info = await r.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    except Exception:  # noqa: BLE001 - best effort, as the suite's own meter
        return None
    finally:
        await r.aclose()


async def _keep_alive(job: dict) -> dict:
    from neural_hive_integration.clients import HealthStatus, ServiceRegistryClient

    host, port = job["address"].rsplit(":", 1)
    client = ServiceRegistryClient(host, int(port), keepalive_transport=job["transport"])
    telemetry = HealthStatus(metrics=job["telemetry"])
    t_start = time.monotonic()
    handles = [client.keep_alive(aid, telemetry=telemetry, interval=job["interval"])
               for aid in job["agent_ids"]]
    for ka in handles:
        await ka
    started_in = time.monotonic() - t_start
    await asyncio.sleep(job["warmup"])
    meter = env.CpuMeter(job["server_pids"])
    redis0 = await _redis_cpu(job["redis_url"])
    beats0 = sum(ka.beats for ka in handles)
    failures0 = sum(ka.reregistrations for ka in handles)
    cpu0, t0 = time.process_time(), time.monotonic()
    await asyncio.sleep(job["duration"])
    cpu1, t1 = time.process_time(), time.monotonic()
    beats1 = sum(ka.beats for ka in handles)
    server, machine = meter.stop()
    redis1 = await _redis_cpu(job["redis_url"])
    seconds = t1 - t0
    errors = sum(ka.reregistrations for ka in handles) - failures0 + \
        sum(1 for ka in handles if ka.done)
    first_error = next((repr(ka.last_error) for ka in handles if ka.last_error), "")
    await client.close()
    return {"ops": beats1 - beats0, "seconds": seconds, "cpu_seconds": cpu1 - cpu0,
            "server": server if job["server_pids"] else None, "machine": machine,
            "redis": (redis1 - redis0) / seconds if redis0 is not None and redis1 is not None
            else None, "errors": errors, "first_error": first_error,
            "started_in": started_in}
