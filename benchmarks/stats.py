"""Results of one scenario: throughput, latency percentiles, errors, CPU, ratios to ceilings."""
from __future__ import annotations

import math
from array import array
from dataclasses import asdict, dataclass, field

PERCENTILES = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0), ("p99.9", 99.9))


def percentiles(samples_ms) -> dict[str, float]:
    """Nearest-rank percentiles, mean and max of latencies in milliseconds ({} when empty)."""
    data = sorted(samples_ms)
    n = len(data)
    if not n:
        return {}
    out = {}
    for name, p in PERCENTILES:
        rank = max(1, math.ceil(p / 100.0 * n))
        out[name] = round(data[rank - 1], 4)
    out["mean"] = round(sum(data) / n, 4)
    out["max"] = round(data[-1], 4)
    out["samples"] = n
    return out


def merge(arrays) -> array:
    merged = array("d")
    for a in arrays:
        merged.extend(a)
    return merged


@dataclass
class Result:
    scenario: str                 # e.g. "heartbeat.unary"
    # ceiling, register, heartbeat, discover, mixed, watch, expiry, memory
    group: str
    unit: str  # what `ops` counts: calls, heartbeats, deliveries, expiries, agents
    ops: int = 0                  # completed operations in the measured window
    errors: int | None = 0        # None: the driver cannot tell (see notes)
    seconds: float = 0.0          # measured window
    latency_ms: dict = field(default_factory=dict)
    driver: str = ""              # h2load, python xN, redis-benchmark, ...
    loadgen_cpu: float | None = None   # cores used by the load generator in the window
    server_cpu: float | None = None    # cores used by the registry (or echo) server processes
    redis_cpu: float | None = None     # cores used by redis-server (INFO cpu)
    machine_busy: float | None = None  # cores busy on this machine in the window (everyone)
    extra: dict = field(default_factory=dict)
    ratios: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    skipped: str = ""             # why the scenario did not run

    @property
    def throughput(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        doc = asdict(self)
        doc["throughput_per_s"] = round(self.throughput, 2)
        return doc


def skipped(scenario: str, group: str, why: str) -> Result:
    return Result(scenario=scenario, group=group, unit="", skipped=why)
