"""The client package is typed (py.typed ships in it): the contract README's canonical snippet and a
keep-alive program pass `mypy --strict` against the package as pip installs it."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT

pytest.importorskip("mypy")

# The service contract README (shared/seed/service-registry-README.md) lies beside the
# repository (CI lays a copy there too).
SEED_CANDIDATES = [p / "shared" / "seed" / "service-registry-README.md"
                   for p in (ROOT.parent, ROOT.parent.parent)]

KEEPALIVE_PROGRAM = '''
import asyncio

from neural_hive_integration.clients import (AgentInfo, AgentLost, HealthStatus, KeepAlive,
                                             ServiceRegistryClient)
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb


def telemetry() -> HealthStatus:
    return HealthStatus(metrics={"success_rate": 0.99, "total_executions": 10})


async def on_lost(lost: AgentLost) -> None:
    print(lost.cause, lost.reason)


async def run() -> None:
    async with ServiceRegistryClient("localhost", 50051) as client:
        agent = AgentInfo(agent_type="worker", capabilities=["python"])
        ka: KeepAlive
        async with client.keep_alive(agent, telemetry=telemetry, on_lost=on_lost) as ka:
            n: pb.Notification
            async for n in ka.notifications():
                print(n.kind, n.payload, ka.beats, ka.expires_at_unix_ms)
        other = await client.keep_alive("default/worker-2", interval=5.0, deregister=True)
        result = await client.update_health(other.agent_id, telemetry())
        print(result.status, len(result.notifications))
        await other.stop()


asyncio.run(run())
'''


def canonical_snippet() -> str:
    """The contract README's "Option 1: Canonical Client" snippet."""
    for path in SEED_CANDIDATES:
        if path.is_file():
            section = path.read_text().split("### Option 1", 1)[1]
            return re.search(r"```python\n(.*?)```", section, re.S).group(1)
    pytest.skip("the contract README (shared/seed/service-registry-README.md) is not beside the "
                "repository")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The client package as `pip install ./client` lays it out (not the editable install)."""
    target = tmp_path_factory.mktemp("site")
    # the venv's own setuptools when it has one (offline, faster); else pip fetches it
    isolation = [] if importlib.util.find_spec("setuptools") is None \
        else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *isolation,
                    "--target", str(target), str(ROOT / "client")],
                   check=True, capture_output=True, timeout=300)
    return target


def mypy_strict(source: str, site: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    program = tmp_path / "program.py"
    program.write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
         str(program)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})


def test_package_ships_py_typed(installed):
    assert (installed / "neural_hive_integration" / "py.typed").is_file()
    assert (installed / "neural_hive_integration" / "proto_stubs" /
            "service_registry_pb2.pyi").is_file()


def test_seed_canonical_snippet_passes_mypy_strict(installed, tmp_path):
    # The snippet awaits at top level (as in a notebook): it becomes the body of a coroutine.
    body = textwrap.indent(canonical_snippet(), "    ")
    source = ("from datetime import datetime\n\n\nasync def main() -> None:\n" + body)
    proc = mypy_strict(source, installed, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_keep_alive_program_passes_mypy_strict(installed, tmp_path):
    proc = mypy_strict(KEEPALIVE_PROGRAM, installed, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
