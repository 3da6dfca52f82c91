"""deploy/cluster/docker-compose.yml (a 3-shard Redis Cluster and two registry replicas),
checked without a Docker engine: its structure here, and `docker compose config` where the
compose plugin is installed (see tests/test_compose.py)."""
from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from conftest import ROOT
from server import config
from test_compose import compose_plugin, host_ports

COMPOSE = ROOT / "deploy" / "cluster" / "docker-compose.yml"
NODES = [f"redis-{i}" for i in range(1, 7)]
REPLICAS = ("registry-1", "registry-2")


def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_six_cluster_nodes_each_with_its_own_volume_and_fixed_address():
    s = services()
    volumes, addresses = set(), set()
    for name in NODES:
        node = s[name]
        command = node["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert command[command.index("--cluster-announce-hostname") + 1] == name
        volume = node["volumes"][0].split(":")
        assert volume[1] == "/data" and "/data/nodes.conf" in command
        volumes.add(volume[0])
        addresses.add(node["networks"]["redis"]["ipv4_address"])
        assert "ping" in node["healthcheck"]["test"]
    assert len(volumes) == len(addresses) == 6


def test_the_init_job_joins_every_node_into_three_shards_with_a_replica_each():
    s = services()
    init = s["cluster-init"]
    command = init["command"][0]
    created = set(re.findall(r"(\d+\.\d+\.\d+\.\d+):6379", command))
    assert created == {s[n]["networks"]["redis"]["ipv4_address"] for n in NODES}
    assert "--cluster-replicas 1" in command and "--cluster-yes" in command
    assert "cluster_state:ok" in command  # a second `up` does not create it again
    assert all(init["depends_on"][n]["condition"] == "service_healthy" for n in NODES)


def test_both_registry_replicas_point_redis_url_at_the_cluster():
    s = services()
    published = []
    for name in REPLICAS:
        replica = s[name]
        settings = config.load(environ={k: str(v) for k, v in replica["environment"].items()})
        target = settings.redis_target
        assert target.kind == "cluster"
        assert {host for host, _ in target.nodes} <= set(NODES)
        assert replica["depends_on"]["cluster-init"]["condition"] == \
            "service_completed_successfully"
        assert float(replica["stop_grace_period"].rstrip("s")) > settings.shutdown_grace
        published += list(host_ports(replica).values())
    assert len(published) == len(set(published))


@pytest.mark.skipif(not compose_plugin(), reason="docker compose plugin not installed")
def test_docker_compose_accepts_the_file():
    done = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
