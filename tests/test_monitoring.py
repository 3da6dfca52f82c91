"""The Grafana dashboard and the Prometheus alert rules under deploy/ name only metrics the
server exports, and are valid PromQL (`promtool check rules`, when promtool is installed);
`promtool check metrics` finds nothing in /metrics but the one name kept for compatibility."""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess

import pytest
import yaml
from neural_hive_integration.clients import AgentInfo, HealthStatus
from prometheus_client import REGISTRY, generate_latest

import server.app
from conftest import ROOT, running_registry
from server import metrics

DASHBOARD = ROOT / "deploy" / "grafana" / "service-registry.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed "
                                    "(apt-get install prometheus; .ci/run does)")
SERIES_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def exported() -> set[str]:
    """Every series name server/metrics.py exports."""
    names = set()
    for value in vars(metrics).values():
        if hasattr(value, "_name") and hasattr(value, "_type"):
            names.add(value._name)
            names.update(value._name + s for s in SERIES_SUFFIXES)
    return names


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p["targets"]]


def alert_exprs() -> dict[str, str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {r["alert"]: r["expr"] for g in groups for r in g["rules"]}


def named_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\bservice_registry_[a-z_]+", expr))


def test_the_dashboard_shows_what_operators_ask_for_with_exported_metrics():
    exprs = dashboard_exprs()
    used = set().union(*map(named_metrics, exprs))
    assert used <= exported(), used - exported()
    for needed in ("service_registry_agents_total", "service_registry_heartbeat_total",
                   "service_registry_discover_total", "service_registry_latency_seconds_bucket",
                   "service_registry_expired_total", "service_registry_watchers",
                   "service_registry_auth_failures_total", "service_registry_agents_by_status",
                   "service_registry_discover_empty_total"):
        assert needed in used, needed
    quantiles = {m for e in exprs for m in re.findall(r"histogram_quantile\(([\d.]+)", e)}
    assert quantiles == {"0.5", "0.95", "0.99"}


def test_the_alerts_cover_the_three_failures_with_exported_metrics():
    alerts = alert_exprs()
    assert {"ServiceRegistryNoHealthyAgentFound", "ServiceRegistryNoHealthyAgents",
            "ServiceRegistryExpiryStorm", "ServiceRegistryRedisUnavailable"} <= set(alerts)
    for name, expr in alerts.items():
        assert named_metrics(expr) <= exported(), name
    assert "service_registry_store_up" in alerts["ServiceRegistryRedisUnavailable"]


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True,
                          timeout=60)


@needs_promtool
def test_promtool_accepts_the_alert_rules():
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path):
    # promtool checks PromQL in rule files: each query becomes a recording rule
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, expr in enumerate(dashboard_exprs())]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
async def test_promtool_flags_only_the_gauge_named_total(registry):
    # every metric with a sample, as on a busy server (the agents gauge is set by a 5 s loop)
    await registry.client.register_agent(AgentInfo(agent_id="m1"))
    await registry.client.update_health("default/m1", HealthStatus(metrics={"success_rate": 1}))
    await registry.client.discover_agents(["python"])
    metrics.AGENTS.labels("default").set(1)
    metrics.EXPIRED.labels("sweeper").inc(0)
    metrics.AUTH_FAILURES.labels("missing_token").inc(0)
    exposition = generate_latest(REGISTRY).decode()  # what /metrics serves
    for name in ("service_registry_agents_total", "service_registry_latency_seconds_bucket",
                 "service_registry_expired_total", "service_registry_auth_failures_total"):
        assert name in exposition
    done = promtool("check", "metrics", stdin=exposition)
    findings = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert findings == ['service_registry_agents_total non-counter metrics should not have '
                        '"_total" suffix'], findings


async def until(predicate, timeout: float = 10.0):
    """Waits for a metric the server updates on its own schedule (probe, gauge loop)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "the metric never got there"
        await asyncio.sleep(0.05)


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("kind", ["redis", "embedded"])
async def test_agents_by_status_and_discover_finding_nobody_are_counted(kind, redis_factory,
                                                                        monkeypatch):
    monkeypatch.setattr(server.app, "GAUGE_INTERVAL", 0.05)
    async with running_registry(kind, redis_factory() if kind == "redis" else None) as registry:
        client = registry.client
        ns = f"mon-{kind}"
        for name in ("ok", "sick"):
            await client.register_agent(AgentInfo(agent_id=f"{ns}/{name}", agent_type="worker",
                                                  capabilities=["py"]))
        await client.update_health(f"{ns}/sick", HealthStatus(status="unhealthy"))
        await until(lambda: sample("service_registry_agents_by_status", namespace=ns,
                                   status="UNHEALTHY") == 1)
        assert sample("service_registry_agents_by_status", namespace=ns, status="HEALTHY") == 1

        empty = "service_registry_discover_empty_total"
        before = sample(empty, namespace=ns)
        assert await client.discover_agents(capabilities=["py"], filters={"namespace": ns})
        assert sample(empty, namespace=ns) == before
        assert not await client.discover_agents(capabilities=["rust"],
                                                filters={"namespace": ns})
        assert sample(empty, namespace=ns) == before + 1


async def test_store_up_follows_redis(redis_registry):
    await until(lambda: sample("service_registry_store_up") == 1)
    redis_registry.redis_proc.stop()
    await until(lambda: sample("service_registry_store_up") == 0)
