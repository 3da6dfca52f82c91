"""docker-compose.yml, checked without a Docker engine: its structure here, and `docker compose
config` where the compose plugin is installed (it is not on the machine this was written on)."""
from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT
from server import config

COMPOSE = ROOT / "docker-compose.yml"
REPLICAS = ("registry-1", "registry-2")


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # resolves the x-registry anchor as compose does


def host_ports(service: dict) -> dict[int, int]:
    """container port -> host port"""
    pairs = [p.rsplit(":", 2)[-2:] for p in service.get("ports", [])]
    return {int(container): int(host) for host, container in pairs}


def compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True,
                          timeout=30).returncode == 0


def test_the_services_are_redis_two_replicas_prometheus_and_grafana():
    services = compose()["services"]
    assert set(services) == {"redis", *REPLICAS, "prometheus", "grafana"}
    for name in REPLICAS:
        replica = services[name]
        assert replica["build"] == "." and replica["image"] == "service-registry:latest"
        assert replica["environment"]["REDIS_URL"] == "redis://redis:6379/0"  # one Redis
        assert replica["depends_on"]["redis"]["condition"] == "service_healthy"
        config.load(environ={k: str(v) for k, v in replica["environment"].items()})
        grace = float(replica["environment"].get("SHUTDOWN_GRACE", config.Settings.shutdown_grace))
        assert float(replica["stop_grace_period"].rstrip("s")) > grace  # the drain fits
        defaults = config.Settings()
        assert set(host_ports(replica)) == {defaults.port, defaults.metrics_port}
    published = [host for name in services for host in host_ports(services[name]).values()]
    assert len(published) == len(set(published)), "two services publish the same host port"


def test_redis_persists_on_a_volume_and_reports_healthy():
    redis = compose()["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    volume = redis["volumes"][0].split(":")
    assert volume[1] == "/data" and volume[0] in compose()["volumes"]
    assert "redis-cli" in redis["healthcheck"]["test"] and "ping" in redis["healthcheck"]["test"]


def test_prometheus_scrapes_both_replicas_with_the_alert_rules():
    services = compose()["services"]
    mounts = {m.split(":")[1]: ROOT / m.split(":")[0] for m in services["prometheus"]["volumes"]
              if m.startswith("./")}
    for path in mounts.values():
        assert path.is_file(), path
    scrape = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    assert "/etc/prometheus/alerts.yml" in scrape["rule_files"]
    (job,) = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    metrics_port = config.Settings().metrics_port
    assert sorted(job["static_configs"][0]["targets"]) == [f"{r}:{metrics_port}" for r in REPLICAS]


def test_grafana_gets_the_dashboard_and_the_prometheus_data_source():
    grafana = compose()["services"]["grafana"]
    for mount in grafana["volumes"]:
        assert (ROOT / mount.split(":")[0]).exists(), mount
    sources = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml")
                             .read_text())["datasources"]
    assert sources[0]["url"] == "http://prometheus:9090"


def test_the_readme_says_compose_was_not_run_here():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Try it with real Redis: docker compose"):]
    assert "docker compose up --build" in section and "Not run here" in section


@pytest.mark.skipif(not compose_plugin(), reason="no `docker compose` plugin on this machine")
def test_docker_compose_config_accepts_the_file():
    done = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
