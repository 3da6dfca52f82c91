"""The contract README's convention: `SERVICE_REGISTRY_HOST=... SERVICE_REGISTRY_PORT=... pytest -m
integration` runs the integration tests against that server instead of the fixtures' own."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT
from server import keys


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
    # the tests' namespaces were written on that server's Redis (their change logs remain after
    # their agents left and the namespaces were forgotten)
    redis = redis_proc.client()
    logs = [key async for key in redis.scan_iter(match=keys.namespace("ka-*").log)]
    await redis.aclose()
    assert len(logs) == 3, logs
