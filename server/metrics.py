"""Prometheus metrics (names from the service contract README), served at /metrics (server/http)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

AGENTS = Gauge("service_registry_agents_total", "Registered agents", ["namespace"])
REGISTER = Counter("service_registry_register_total", "Registration attempts", ["outcome"])
HEARTBEAT = Counter("service_registry_heartbeat_total", "Heartbeat attempts", ["outcome"])
DISCOVER = Counter("service_registry_discover_total", "Discovery requests", ["outcome"])
LATENCY = Histogram("service_registry_latency_seconds", "Operation latency",
                    ["operation", "outcome"],
                    buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
AUTH_FAILURES = Counter("service_registry_auth_failures_total",
                        "Calls refused by authentication or authorization", ["reason"])
AGENTS_BY_STATUS = Gauge("service_registry_agents_by_status",
                         "Registered agents per namespace and status", ["namespace", "status"])
DISCOVER_EMPTY = Counter("service_registry_discover_empty_total",
                         "Discover calls that found no agent with the capabilities and filters "
                         "asked for", ["namespace"])
STORE_UP = Gauge("service_registry_store_up",
                 "1 while this process reaches its store (Redis), probed every second, else 0")
WATCHERS = Gauge("service_registry_watchers", "Open WatchAgents streams on this process")
EXPIRED = Counter("service_registry_expired_total", "Agents reaped after their lease ran out",
                  ["trigger"])
OUTAGES = Counter("service_registry_outages_total",
                  "Registry outages detected in a namespace (no registry process worked there "
                  "for longer than the heartbeat timeout)", ["namespace"])
OUTAGE_MOVED = Counter("service_registry_outage_deadlines_moved_total",
                       "Lease deadlines moved forward once, instead of expiring, because they "
                       "fell inside a registry outage", ["namespace"])
STORE_RESETS = Counter("service_registry_store_resets_total",
                       "Times this process found the store reset (its data gone)")

# Operations whose attempts the contract README counts in a metric of their own.
ATTEMPTS = {"register": REGISTER, "heartbeat": HEARTBEAT, "discover": DISCOVER}


def observe(operation: str, outcome: str, seconds: float) -> None:
    LATENCY.labels(operation, outcome).observe(seconds)
    counter = ATTEMPTS.get(operation)
    if counter is not None:
        counter.labels(outcome).inc()

