"""BALANCED Discover: a weighted random pick among a window of matching agents.

The window comes from discover.lua walking the driver zset from a random origin (wrap-around,
so every agent is in as many windows as any other). The driver is in health order, so one
contiguous window holds agents of similar weight: a window of poor agents would hand each of
them more than its share. The window is therefore drawn from RUNS segments spread evenly over
the order, a few matches from the start of each (10 agents at half the success rate of 90
others: 1.19x their proportional share with one run of 16, 1.06x with four; see
benchmarks/RESULTS.md). Weights come from the telemetry the agents
report; agents without telemetry and agents still warming up get the window's average weight,
as gRPC weighted round robin (gRFC A58) does with its blackout period. The pick is a weighted
sample without replacement (Efraimidis-Spirakis), which also breaks ties randomly.
"""
from __future__ import annotations

import random

from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

# Matches fetched per result wanted, and at least this many: room for the randomness to act.
WINDOW_PER_RESULT = 2
MIN_WINDOW = 12
# A new agent's telemetry describes too few calls to judge it: average weight meanwhile.
DEFAULT_WARMUP_MS = 30_000  # the BALANCE_WARMUP setting
# Status multipliers: unhealthy agents stay pickable (they may be all there is), but rarely.
STATUS_FACTOR = {pb.HEALTHY: 1.0, pb.DEGRADED: 0.5, pb.UNHEALTHY: 0.05}
MIN_WEIGHT = 1e-3  # a success rate of 0 still leaves the agent a last-resort chance


RUNS = 4  # segments of the health order a window is drawn from


def window(wanted: int) -> int:
    return max(wanted * WINDOW_PER_RESULT, MIN_WINDOW)


def _measured(agent: pb.AgentInfo, now_ms: int, warmup_ms: int) -> bool:
    return (agent.telemetry.total_executions > 0
            and now_ms - agent.registered_at_unix_ms >= warmup_ms)


def weights(agents: list[pb.AgentInfo], now_ms: int,
            warmup_ms: int = DEFAULT_WARMUP_MS) -> list[float]:
    """Success rate, times the ratio of the window's mean duration to the agent's (+1 ms so a
    0 ms report is no infinite weight), times the status factor. Unmeasured agents: the mean
    weight of the measured ones (1.0 when none is), times their status factor."""
    measured = [a for a in agents if _measured(a, now_ms, warmup_ms)]
    mean_ms = (sum(a.telemetry.avg_duration_ms for a in measured) / len(measured)
               if measured else 0.0)
    raw = {id(a): a.telemetry.success_rate * (mean_ms + 1.0) / (a.telemetry.avg_duration_ms + 1.0)
           for a in measured}
    average = sum(raw.values()) / len(raw) if raw else 1.0
    return [max(raw.get(id(a), average) * STATUS_FACTOR.get(a.status, 0.05), MIN_WEIGHT)
            for a in agents]


def pick(agents: list[pb.AgentInfo], wanted: int, now_ms: int,
         warmup_ms: int = DEFAULT_WARMUP_MS,
         rng: random.Random | None = None) -> list[pb.AgentInfo]:
    """`wanted` agents drawn without replacement with probability proportional to weight, in
    draw order: key u^(1/w) per agent, the largest keys win."""
    rng = rng or random
    keyed = [(rng.random() ** (1.0 / w), i)
             for i, w in enumerate(weights(agents, now_ms, warmup_ms))]
    keyed.sort(reverse=True)
    return [agents[i] for _, i in keyed[:wanted]]
