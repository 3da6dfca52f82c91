"""Every script on a 3-primary Redis Cluster: one hash tag per namespace keeps each script's
keys in one slot, and namespaces spread over the shards."""
from __future__ import annotations

import shutil
import subprocess

import pytest
from redis.asyncio.cluster import RedisCluster

from conftest import RedisProcess, free_port
from server import keys
from server.scripts import Scripts


@pytest.fixture
def cluster():
    # the bus port defaults to port + 10000, past 65535 for a high free port: choose it too
    nodes = [RedisProcess("--cluster-enabled", "yes", "--cluster-node-timeout", "5000",
                          "--cluster-config-file", "nodes.conf",
                          "--cluster-port", str(free_port())) for _ in range(3)]
    try:
        for node in nodes:
            node.start()
        subprocess.run([shutil.which("redis-cli") or "redis-cli", "--cluster", "create",
                        *[f"127.0.0.1:{n.port}" for n in nodes], "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=30)
        yield nodes
    finally:
        for node in nodes:
            node.cleanup()


async def test_every_script_runs_on_redis_cluster(cluster):
    r = RedisCluster(host="127.0.0.1", port=cluster[0].port, decode_responses=True)
    await r.initialize()
    scripts = Scripts(r)
    slots = set()
    try:
        for ns in ("alpha", "beta", "gamma", "delta"):
            k = keys.namespace(ns)
            slots.add(r.keyslot(k.log))
            reply = await scripts.register(
                keys=k.agent_script_keys("w1"),
                args=[k.prefix, "w1", 60000, 1000, 1, 1, "py,tf", "e:1", "", "", "", 0, "zone",
                      "eu"])
            assert reply[0] == "registered"
            beat = await scripts.heartbeat(
                keys=k.agent_script_keys("w1"),
                args=[k.prefix, "w1", 60000, 1000, 3, 0, 0, 0, 0, 0, 0.5, 0.9, "", 16, 60000])
            assert beat[0] == 3
            found = await scripts.discover(keys=[k.capability("py"), k.capability("tf")],
                                           args=[k.prefix, 10, 0, 200, 0, "[]"])
            assert found[3] == "w1"
            listed = await scripts.list(keys=[k.agent_type(1)],
                                        args=[k.prefix, "", 10, "[]"])
            assert listed[2] == "w1"
            with_cap = await scripts.list(keys=[k.agent_type(1), k.capability("tf")],
                                          args=[k.prefix, "", 10, "[]"])
            assert with_cap[2] == "w1"
            assert await scripts.get(keys=[k.agent("w1")])
            assert await scripts.notify(keys=k.agent_script_keys("w1"),
                                        args=[k.prefix, "w1", 1000, "kind", "payload", 10])
            assert (await scripts.stats(keys=[k.counts, k.health, k.log]))[0] == 1
            assert (await scripts.reap(keys=k.script_keys,
                                       args=[k.prefix, 1000, 100, "", 60000]))[0] == 0
            assert await scripts.deregister(keys=k.agent_script_keys("w1"),
                                            args=[k.prefix, "w1", 1000, "evicted", "x",
                                                  ""]) == 2  # the last
        nodes_used = {r.get_node_from_key(keys.namespace(ns).log).port
                      for ns in ("alpha", "beta", "gamma", "delta")}
        assert len(slots) == 4 and len(nodes_used) >= 2
    finally:
        await r.aclose()
