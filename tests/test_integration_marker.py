"""The seed's convention: `SERVICE_REGISTRY_HOST=... SERVICE_REGISTRY_PORT=... pytest -m
integration` runs the integration tests against that server instead of the fixtures' own."""
from __future__ import annotations

import os
import subprocess
import sys

import grpc
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc

from conftest import ROOT


async def test_integration_tests_run_against_the_given_server(redis_proc, server_processes):
    server = await server_processes(redis_proc.url)
    host, port = server.address.split(":")
    env = {**os.environ, "SERVICE_REGISTRY_HOST": host, "SERVICE_REGISTRY_PORT": port}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "integration",
         "tests/test_keepalive.py", "-k", "async_iterator or context_manager or registered_before"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    # each test ran once (its embedded-store twin skipped), and only integration tests ran
    assert "3 passed, 3 skipped" in proc.stdout, proc.stdout[-2000:]
    async with grpc.aio.insecure_channel(server.address) as channel:
        stats = await pb_grpc.ServiceRegistryStub(channel).GetStats(pb.StatsRequest())
    used = [ns.namespace for ns in stats.namespaces if ns.namespace.startswith("ka-")]
    assert len(used) == 3, used  # the tests' namespaces are on that server


def test_without_the_variables_the_fixtures_start_their_own(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("SERVICE_REGISTRY_HOST", "SERVICE_REGISTRY_PORT")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "integration",
         "tests/test_keepalive.py", "-k", "context_manager"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "2 passed" in proc.stdout  # real Redis and the embedded store
