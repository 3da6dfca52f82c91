"""The operator CLI (`service-registry agents|watch|notify|stats`) against a live server on Redis.

Commands run through click's CliRunner in a worker thread (the CLI runs its own event loop while
the server keeps serving in the test's loop); `watch` also runs as a real child process where a
test has to react to its output while it is running.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from neural_hive_integration.clients import AgentInfo, RegistryError, ServiceRegistryClient
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

from cli import output as cli_output
from cli.main import cli
from server import keys
from test_tls import pki  # noqa: F401 - the certificate fixture

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30
AGE = re.compile(r"^\d+s ago$")
# Variables that would point the CLI somewhere else than the test's server.
CLEAN_ENV = {name: None for name in (
    "SERVICE_REGISTRY_HOST", "SERVICE_REGISTRY_PORT", "SERVICE_REGISTRY_TOKEN",
    "SERVICE_REGISTRY_TLS", "SERVICE_REGISTRY_TLS_CA", "SERVICE_REGISTRY_TLS_CERT",
    "SERVICE_REGISTRY_TLS_KEY")}


async def run_cli(address: str | None, *args: str, input: str | None = None, env=None):
    """`service-registry [--addr address] args...` in a worker thread; the click Result."""
    argv = (["--addr", address] if address else []) + list(args)
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, cli, argv, input=input,
                                   env={**CLEAN_ENV, **(env or {})}, catch_exceptions=False)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def rows(text: str) -> list[list[str]]:
    return [line.split("\t") for line in lines(text)]


def assert_one_error_line(result, *fragments: str) -> None:
    err = lines(result.stderr)
    assert len(err) == 1, result.stderr
    assert err[0].startswith("error: "), err
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in err[0], err[0]


async def register(registry, name: str, *, ns: str = "default", agent_type=pb.WORKER,
                   caps=("python",), status=pb.HEALTHY, endpoint: str = "",
                   metadata: dict | None = None) -> str:
    reply = await registry.stub.Register(pb.RegisterRequest(
        agent_id=name, namespace=ns, agent_type=agent_type, capabilities=list(caps),
        status=status, endpoint=endpoint or f"{name}:8000", metadata=metadata or {}))
    return reply.agent_id


async def exists(registry, agent_id: str) -> bool:
    try:
        await registry.stub.GetAgent(pb.GetAgentRequest(agent_id=agent_id))
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
        return False
    return True


async def revision(registry, ns: str = "default") -> str:
    last = await registry.redis.xrevrange(keys.namespace(ns).log, count=1)
    return last[0][0] if last else ""


async def fleet(registry) -> None:
    """a: healthy worker (eu), b: unhealthy scout with gpu (us), c: degraded guard,
    p: a worker in namespace prod."""
    await register(registry, "a", metadata={"region": "eu"})
    await register(registry, "b", agent_type=pb.SCOUT, caps=("python", "gpu"),
                   status=pb.UNHEALTHY, metadata={"region": "us"})
    await register(registry, "c", agent_type=pb.GUARD, caps=("rust",), status=pb.DEGRADED)
    await register(registry, "p", ns="prod")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- help -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [
    [], ["serve"], ["agents"], ["agents", "list"], ["agents", "get"], ["agents", "discover"],
    ["agents", "evict"], ["watch"], ["notify"], ["stats"], ["completion"]])
def test_every_command_help_shows_an_example(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    example = result.output.split("Example:", 1)
    assert len(example) == 2, result.output
    assert "service-registry " + " ".join(command) in example[1]


# -- agents list ----------------------------------------------------------------------------------

async def test_list_prints_one_tab_separated_row_per_agent_when_piped(redis_registry):
    await fleet(redis_registry)
    result = await run_cli(redis_registry.address, "agents", "list")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    got = {r[0]: r for r in rows(result.stdout)}
    assert set(got) == {"default/a", "default/b", "default/c"}  # namespace "default" only
    assert got["default/a"][:5] == ["default/a", "worker", "healthy", "python", "a:8000"]
    assert got["default/b"][:5] == ["default/b", "scout", "unhealthy", "gpu,python", "b:8000"]
    assert got["default/c"][:5] == ["default/c", "guard", "degraded", "rust", "c:8000"]
    assert all(len(r) == 6 and AGE.match(r[5]) for r in got.values())


@pytest.mark.parametrize("args, expected", [
    (["--status", "unhealthy"], {"default/b"}),
    (["--type", "guard"], {"default/c"}),
    (["--capability", "gpu"], {"default/b"}),
    (["--metadata", "region=eu"], {"default/a"}),
    (["--filter", "status=degraded"], {"default/c"}),
    (["-n", "prod"], {"prod/p"}),
    (["-A"], {"default/a", "default/b", "default/c", "prod/p"}),
    (["-A", "--type", "worker"], {"default/a", "prod/p"}),
])
async def test_list_filters(redis_registry, args, expected):
    await fleet(redis_registry)
    result = await run_cli(redis_registry.address, "agents", "list", *args)
    assert result.exit_code == 0, result.output
    assert {r[0] for r in rows(result.stdout)} == expected


async def test_list_on_a_terminal_is_an_aligned_table_with_header(redis_registry, monkeypatch):
    monkeypatch.setattr(cli_output, "is_terminal", lambda stream=None: True)
    await fleet(redis_registry)
    result = await run_cli(redis_registry.address, "agents", "list")
    assert result.exit_code == 0, result.output
    header, *body = lines(result.stdout)
    assert header.split() == ["ID", "TYPE", "STATUS", "CAPABILITIES", "ENDPOINT", "LAST",
                              "HEARTBEAT"]
    assert "\t" not in result.stdout
    starts = [header.index(h) for h in ("TYPE", "STATUS", "CAPABILITIES", "ENDPOINT", "LAST")]
    for line in body:
        for start in starts:  # every column starts where its header does
            assert line[start - 1] == " " and line[start] != " ", (line, start)
    assert len(body) == 3

    wide = await run_cli(redis_registry.address, "agents", "list", "-o", "wide")
    header, *body = lines(wide.stdout)
    assert "METADATA" in header and "SUCCESS" in header
    assert any(line.endswith("region=eu") for line in body)


async def test_list_on_a_terminal_says_when_nothing_matches(redis_registry, monkeypatch):
    monkeypatch.setattr(cli_output, "is_terminal", lambda stream=None: True)
    result = await run_cli(redis_registry.address, "agents", "list", "-n", "empty")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "No agents found in namespace empty" in result.stderr


async def test_list_json_is_one_document_with_whole_records(redis_registry):
    await fleet(redis_registry)
    result = await run_cli(redis_registry.address, "agents", "list", "-o", "json")
    assert result.exit_code == 0, result.output
    agents = {a["agent_id"]: a for a in json.loads(result.stdout)}
    assert set(agents) == {"default/a", "default/b", "default/c"}
    b = agents["default/b"]
    assert (b["agent_type"], b["status"], b["capabilities"], b["metadata"]) == \
        ("scout", "unhealthy", ["gpu", "python"], {"region": "us"})
    assert b["last_heartbeat_unix_ms"] > 0 and "success_rate" in b["telemetry"]

    empty = await run_cli(redis_registry.address, "agents", "list", "-n", "none", "-o", "json")
    assert json.loads(empty.stdout) == []


async def test_list_pages_through_the_server(redis_registry, monkeypatch):
    for i in range(25):
        await register(redis_registry, f"w{i:02d}")
    pages = []
    original = ServiceRegistryClient.list_agents

    async def recording(self, *args, **kwargs):
        agents, token = await original(self, *args, **kwargs)
        pages.append(len(agents))
        return agents, token
    monkeypatch.setattr(ServiceRegistryClient, "list_agents", recording)

    result = await run_cli(redis_registry.address, "agents", "list", "--page-size", "10")
    assert result.exit_code == 0, result.output
    assert [r[0] for r in rows(result.stdout)] == [f"default/w{i:02d}" for i in range(25)]
    assert len(pages) >= 3 and max(pages) <= 10

    limited = await run_cli(redis_registry.address, "agents", "list", "--limit", "5")
    assert len(rows(limited.stdout)) == 5


async def test_list_keeps_printed_rows_when_the_server_fails_midway(redis_registry, monkeypatch):
    """Rows stream as pages arrive; a failure later ends the command with exit code 3."""
    for i in range(6):
        await register(redis_registry, f"w{i}")
    original = ServiceRegistryClient.list_agents
    calls = []

    async def failing_second_page(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise RegistryError(grpc.StatusCode.UNAVAILABLE, "redis is not reachable")
        return await original(self, *args, **kwargs)
    monkeypatch.setattr(ServiceRegistryClient, "list_agents", failing_second_page)

    result = await run_cli(redis_registry.address, "agents", "list", "--page-size", "3")
    assert result.exit_code == 3
    assert [r[0] for r in rows(result.stdout)] == ["default/w0", "default/w1", "default/w2"]
    assert_one_error_line(result, "unavailable", "redis is not reachable")


async def test_list_rejected_filter_is_a_usage_error(redis_registry):
    result = await run_cli(redis_registry.address, "agents", "list", "--filter", "min_speed=3")
    assert result.exit_code == 2
    assert_one_error_line(result, "min_speed")


# -- agents get -----------------------------------------------------------------------------------

async def test_get_shows_the_whole_record(redis_registry):
    await fleet(redis_registry)
    result = await run_cli(redis_registry.address, "agents", "get", "default/b")
    assert result.exit_code == 0, result.output
    record = dict(line.split("\t", 1) for line in lines(result.stdout))
    assert record["agent_id"] == "default/b"
    assert record["agent_type"] == "scout"
    assert record["status"] == "unhealthy"
    assert record["capabilities"] == "gpu,python"
    assert record["metadata.region"] == "us"
    assert {"registered_at", "last_heartbeat", "expires_at", "telemetry.success_rate"} <= \
        set(record)

    as_json = await run_cli(redis_registry.address, "agents", "get", "p", "-n", "prod",
                            "-o", "json")
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)["agent_id"] == "prod/p"


async def test_get_unknown_agent_exits_1(redis_registry):
    result = await run_cli(redis_registry.address, "agents", "get", "ghost")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert_one_error_line(result, "default/ghost", "not found")


# -- agents discover ------------------------------------------------------------------------------

async def test_discover_returns_what_DiscoverAgents_returns_in_the_same_order(redis_registry):
    # Names in the reverse order of health, so the order cannot come from sorting by name.
    for name, rate in (("a", 0.91), ("b", 0.95), ("c", 0.99), ("d", 1.0)):
        await register(redis_registry, name, caps=("python", "terraform"))
        await redis_registry.stub.Heartbeat(pb.HeartbeatRequest(
            agent_id=f"default/{name}", status=pb.HEALTHY, telemetry=pb.AgentTelemetry(
                success_rate=rate, avg_duration_ms=10, total_executions=100,
                failed_executions=round(100 * (1 - rate)))))
    await register(redis_registry, "e", caps=("python",))            # lacks terraform
    await register(redis_registry, "f", caps=("python", "terraform"), status=pb.UNHEALTHY)

    result = await run_cli(redis_registry.address, "agents", "discover", "--capability",
                           "python", "--capability", "terraform", "--filter", "status=healthy",
                           "--max-results", "3")
    assert result.exit_code == 0, result.output
    expected = await redis_registry.client.discover_agents(
        ["python", "terraform"], {"status": "healthy"}, max_results=3)
    assert [r[0] for r in rows(result.stdout)] == [a.agent_id for a in expected] == \
        ["default/d", "default/c", "default/b"]

    as_json = await run_cli(redis_registry.address, "agents", "discover", "-c", "python",
                            "-o", "json")
    assert {a["agent_id"] for a in json.loads(as_json.stdout)} == \
        {f"default/{n}" for n in "abcdef"}


# -- agents evict ---------------------------------------------------------------------------------

async def test_evict_ids_removes_them_and_reports_unknown_ones(redis_registry):
    await fleet(redis_registry)
    result = await run_cli(redis_registry.address, "agents", "evict", "a", "default/b", "ghost",
                           "--reason", "maintenance")
    assert result.exit_code == 1  # ghost was not registered
    assert lines(result.stdout) == ["evicted default/a", "evicted default/b"]
    assert_one_error_line(result, "default/ghost", "not found")
    assert not await exists(redis_registry, "default/a")
    assert not await exists(redis_registry, "default/b")
    assert await exists(redis_registry, "default/c")

    again = await run_cli(redis_registry.address, "agents", "evict", "c", "-o", "json")
    assert again.exit_code == 0
    doc = json.loads(again.stdout)
    assert doc["evicted"] == ["default/c"] and doc["not_found"] == []
    assert doc["reason"].startswith("evicted by ")


async def test_bulk_evict_declined_changes_nothing(redis_registry):
    await fleet(redis_registry)
    before = await revision(redis_registry)
    result = await run_cli(redis_registry.address, "agents", "evict", "--status", "unhealthy",
                           input="n\n")
    assert result.exit_code == 4
    assert result.stdout == ""
    assert "default/b" in result.stderr and "default/a" not in result.stderr  # the preview
    assert "Evict 1 agent from namespace default" in result.stderr
    assert "aborted: nothing was evicted" in result.stderr
    assert await exists(redis_registry, "default/b")
    assert await revision(redis_registry) == before


async def test_bulk_evict_question_shows_a_bounded_preview(redis_registry):
    for i in range(25):
        await register(redis_registry, f"w{i:02d}", status=pb.UNHEALTHY)
    result = await run_cli(redis_registry.address, "agents", "evict", "-s", "unhealthy",
                           input="n\n")
    assert result.exit_code == 4
    assert sum("default/w" in line for line in lines(result.stderr)) == 20
    assert "... and 5 more (see them all with --dry-run)" in result.stderr
    assert "Evict 25 agents" in result.stderr


async def test_bulk_evict_confirmed_evicts_the_selection_only(redis_registry):
    await fleet(redis_registry)
    await register(redis_registry, "b2", status=pb.UNHEALTHY)
    result = await run_cli(redis_registry.address, "agents", "evict", "--status", "unhealthy",
                           "--reason", "unhealthy for too long", input="y\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # a selection: one summary line, not a line per agent
    assert "Evict 2 agents" in result.stderr and "Evicted 2 agents" in result.stderr
    assert not await exists(redis_registry, "default/b")
    assert not await exists(redis_registry, "default/b2")
    for still in ("default/a", "default/c", "prod/p"):
        assert await exists(redis_registry, still)


async def test_bulk_evict_dry_run_only_shows(redis_registry):
    await fleet(redis_registry)
    before = await revision(redis_registry)
    result = await run_cli(redis_registry.address, "agents", "evict", "-A", "--type", "worker",
                           "--dry-run")
    assert result.exit_code == 0, result.output
    assert sorted(r[0] for r in rows(result.stdout)) == ["default/a", "prod/p"]
    assert "2 agents in all namespaces would be evicted; nothing was changed" in result.stderr
    assert await exists(redis_registry, "default/a") and await exists(redis_registry, "prod/p")
    assert await revision(redis_registry) == before
    assert await revision(redis_registry, "prod") != ""

    as_json = await run_cli(redis_registry.address, "agents", "evict", "-c", "gpu", "--dry-run",
                            "-o", "json")
    assert [a["agent_id"] for a in json.loads(as_json.stdout)] == ["default/b"]


async def test_bulk_evict_goes_in_bounded_batches(redis_registry, monkeypatch):
    for i in range(250):
        await register(redis_registry, f"w{i:03d}", status=pb.DEGRADED)
    await register(redis_registry, "keep")
    batches = []
    original = ServiceRegistryClient.evict_agents

    async def recording(self, agent_ids, reason=""):
        batches.append(len(agent_ids))
        return await original(self, agent_ids, reason)
    monkeypatch.setattr(ServiceRegistryClient, "evict_agents", recording)

    result = await run_cli(redis_registry.address, "agents", "evict", "--status", "degraded",
                           "--yes")
    assert result.exit_code == 0, result.output
    assert batches == [100, 100, 50]
    assert result.stdout == ""
    assert lines(result.stderr) == ["Evicted 250 agents from namespace default."]
    stats = await redis_registry.client.get_stats("default")
    assert stats.namespaces[0].agents == 1
    assert await exists(redis_registry, "default/keep")


async def test_evict_stale_for_selects_by_last_heartbeat(redis_registry):
    await fleet(redis_registry)
    # Age two agents' last heartbeat by ten minutes (instead of waiting for it).
    old = int(time.time() * 1000) - 600_000
    for name in ("a", "c"):
        await redis_registry.redis.hset(keys.namespace("default").agent(name),
                                        keys.FIELDS["last_heartbeat"], str(old))
    listed = await run_cli(redis_registry.address, "agents", "list", "--stale-for", "5m")
    assert sorted(r[0] for r in rows(listed.stdout)) == ["default/a", "default/c"]

    result = await run_cli(redis_registry.address, "agents", "evict", "--stale-for", "5m",
                           "--yes", "--reason", "no heartbeat")
    assert result.exit_code == 0, result.output
    assert "Evicted 2 agents" in result.stderr
    assert not await exists(redis_registry, "default/a")
    assert not await exists(redis_registry, "default/c")
    assert await exists(redis_registry, "default/b")


async def test_evicted_agents_are_EVICTED_watch_events_with_the_reason(redis_registry):
    await fleet(redis_registry)
    start = await revision(redis_registry)
    evicted = await run_cli(redis_registry.address, "agents", "evict", "b", "c",
                            "--reason", "bad node")
    assert evicted.exit_code == 0

    result = await run_cli(redis_registry.address, "watch", "--since", start,
                           "--max-events", "2")
    assert result.exit_code == 0, result.output
    events = rows(result.stdout)
    assert [(e[2], e[3], e[5]) for e in events] == [("EVICTED", "default/b", "bad node"),
                                                    ("EVICTED", "default/c", "bad node")]
    assert all(e[1] > start for e in events)

    as_json = await run_cli(redis_registry.address, "watch", "--since", start,
                            "--max-events", "2", "-o", "json")
    docs = [json.loads(line) for line in lines(as_json.stdout)]
    assert [(d["type"], d["agent"]["agent_id"], d["reason"]) for d in docs] == \
        [("EVICTED", "default/b", "bad node"), ("EVICTED", "default/c", "bad node")]


@pytest.mark.parametrize("args, message", [
    ([], "nothing selected"),
    (["a", "--status", "unhealthy"], "not both"),
    (["--stale-for", "soon"], "not a duration"),
    (["a", "--reason", "x" * 300], "256"),
])
async def test_evict_usage_errors_exit_2_and_evict_nothing(redis_registry, args, message):
    await fleet(redis_registry)
    result = await run_cli(redis_registry.address, "agents", "evict", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert await exists(redis_registry, "default/a")


# -- watch ----------------------------------------------------------------------------------------

async def start_watch(address: str, *args: str):
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "--addr", address, "watch", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k not in CLEAN_ENV})


async def next_row(proc) -> list[str]:
    line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
    assert line, (await proc.stderr.read()).decode()
    return line.decode().rstrip("\n").split("\t")


async def stop(proc) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
    return await asyncio.wait_for(proc.wait(), TIMEOUT)


async def test_watch_prints_snapshot_then_live_events(redis_registry):
    await fleet(redis_registry)
    proc = await start_watch(redis_registry.address)
    try:
        snapshot = [await next_row(proc) for _ in range(4)]
        assert sorted((r[2], r[3]) for r in snapshot[:3]) == [
            ("SNAPSHOT", "default/a"), ("SNAPSHOT", "default/b"), ("SNAPSHOT", "default/c")]
        assert snapshot[3][2] == "SNAPSHOT_END"

        await register(redis_registry, "new", agent_type=pb.SCOUT)
        assert (await next_row(proc))[2:5] == ["REGISTERED", "default/new", "healthy"]
        notified = await run_cli(redis_registry.address, "notify", "new", "--kind", "drain",
                                 "--payload", '{"in_s": 30}')
        row = await next_row(proc)
        assert row[2:4] == ["NOTIFICATION", "default/new"]
        assert "kind=drain" in row[5] and '{"in_s": 30}' in row[5]
        assert notified.stdout.strip() in row[5]  # the notification id
        await run_cli(redis_registry.address, "agents", "evict", "new", "--reason", "done")
        assert (await next_row(proc))[2:6] == ["EVICTED", "default/new", "healthy", "done"]
    finally:
        code = await stop(proc)
    stderr = (await proc.stderr.read()).decode()
    assert code == 0 and "Traceback" not in stderr


async def test_watch_selectors_pick_the_events(redis_registry):
    await fleet(redis_registry)
    start = await revision(redis_registry)
    await register(redis_registry, "sick", agent_type=pb.SCOUT, status=pb.UNHEALTHY)
    await register(redis_registry, "fine", agent_type=pb.SCOUT)
    await register(redis_registry, "gpu", caps=("gpu",), metadata={"region": "eu"})
    await run_cli(redis_registry.address, "agents", "evict", "sick", "fine", "gpu")

    async def watched(*args: str) -> list[tuple[str, str]]:
        result = await run_cli(redis_registry.address, "watch", "--since", start, *args)
        assert result.exit_code == 0, result.output
        return [(r[2], r[3]) for r in rows(result.stdout)]

    assert await watched("--status", "unhealthy", "--max-events", "2") == [
        ("REGISTERED", "default/sick"), ("EVICTED", "default/sick")]
    assert await watched("--capability", "gpu", "--max-events", "2") == [
        ("REGISTERED", "default/gpu"), ("EVICTED", "default/gpu")]
    assert await watched("--metadata", "region=eu", "--type", "worker", "--max-events", "2") == [
        ("REGISTERED", "default/gpu"), ("EVICTED", "default/gpu")]
    assert await watched("--agent", "fine", "--max-events", "2") == [
        ("REGISTERED", "default/fine"), ("EVICTED", "default/fine")]


async def test_watch_without_snapshot_prints_only_live_events(redis_registry):
    await fleet(redis_registry)
    proc = await start_watch(redis_registry.address, "--no-snapshot", "-o", "json")
    try:
        # No line tells when a watch without snapshot is live, so agents are registered until
        # the first event shows up (each registration is a new event); nothing is guessed.
        reader = asyncio.ensure_future(proc.stdout.readline())
        i = 0
        while not reader.done():
            await register(redis_registry, f"live{i}")
            i += 1
            await asyncio.wait([reader], timeout=0.2)
        event = json.loads(await reader)
        assert event["type"] == "REGISTERED"  # no SNAPSHOT of a, b, c first
        assert event["agent"]["agent_id"].startswith("default/live")
    finally:
        assert await stop(proc) == 0


async def test_watch_resumes_after_the_server_restarts(redis_proc, server_processes):
    server = await server_processes(redis_proc.url)
    client = ServiceRegistryClient("127.0.0.1", server.port)
    try:
        await client.register_agent(AgentInfo(agent_id="before", capabilities=["python"]))
        proc = await start_watch(server.address)
        try:
            assert (await next_row(proc))[2:4] == ["SNAPSHOT", "default/before"]
            assert (await next_row(proc))[2] == "SNAPSHOT_END"
            server.kill()
            await server.start()  # same port, same Redis
            await client.close()
            client = ServiceRegistryClient("127.0.0.1", server.port)
            await client.register_agent(AgentInfo(agent_id="after", capabilities=["python"]))
            row = await next_row(proc)
            assert row[2:4] == ["REGISTERED", "default/after"]
        finally:
            assert await stop(proc) == 0
    finally:
        await client.close()


async def test_watch_since_a_future_or_malformed_revision_fails_clearly(redis_registry):
    await fleet(redis_registry)
    result = await run_cli(redis_registry.address, "watch", "--since", "99999999999999-0")
    assert result.exit_code == 4
    assert_one_error_line(result, "99999999999999-0")
    bad = await run_cli(redis_registry.address, "watch", "--since", "yesterday")
    assert bad.exit_code == 2


# -- notify ---------------------------------------------------------------------------------------

async def test_notify_queues_a_message_the_agent_receives(redis_registry):
    await fleet(redis_registry)
    result = await run_cli(redis_registry.address, "notify", "default/a", "--kind", "drain",
                           "--payload", '{"deadline_s": 30}')
    assert result.exit_code == 0, result.output
    nid = result.stdout.strip()
    assert re.fullmatch(r"\d+-\d+", nid)
    beat = await redis_registry.stub.Heartbeat(pb.HeartbeatRequest(agent_id="default/a"))
    assert [(n.notification_id, n.kind, json.loads(n.payload)) for n in beat.notifications] == \
        [(nid, "drain", {"deadline_s": 30})]


async def test_notify_checks_the_payload_locally_and_unknown_agents(redis_registry):
    await fleet(redis_registry)
    bad = await run_cli(redis_registry.address, "notify", "a", "--kind", "drain",
                        "--payload", "{deadline: 30}")
    assert bad.exit_code == 2
    assert "not valid JSON" in bad.output
    beat = await redis_registry.stub.Heartbeat(pb.HeartbeatRequest(agent_id="default/a"))
    assert list(beat.notifications) == []  # nothing was sent

    missing = await run_cli(redis_registry.address, "notify", "ghost", "--kind", "drain")
    assert missing.exit_code == 1
    assert_one_error_line(missing, "default/ghost", "not found")


# -- stats ----------------------------------------------------------------------------------------

async def test_stats_counts_by_namespace_status_and_type_with_the_revision(redis_registry):
    await fleet(redis_registry)
    result = await run_cli(redis_registry.address, "stats")
    assert result.exit_code == 0, result.output
    table = {r[0]: r for r in rows(result.stdout)}
    # NAMESPACE AGENTS HEALTHY DEGRADED UNHEALTHY WORKER SCOUT GUARD REVISION
    assert table["default"] == ["default", "3", "1", "1", "1", "1", "1", "1",
                                await revision(redis_registry)]
    assert table["prod"] == ["prod", "1", "1", "0", "0", "1", "0", "0",
                             await revision(redis_registry, "prod")]

    as_json = await run_cli(redis_registry.address, "stats", "-n", "default", "-o", "json")
    doc = json.loads(as_json.stdout)
    assert doc["agents"] == 3
    assert doc["namespaces"][0]["by_status"] == {"healthy": 1, "degraded": 1, "unhealthy": 1}
    assert doc["namespaces"][0]["by_type"] == {"worker": 1, "scout": 1, "guard": 1}


async def test_address_comes_from_the_environment(redis_registry):
    await fleet(redis_registry)
    host, port = redis_registry.address.split(":")
    result = await run_cli(None, "stats", "-o", "json",
                           env={"SERVICE_REGISTRY_HOST": host, "SERVICE_REGISTRY_PORT": port})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["agents"] == 4


# -- failures -------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["agents", "list"], ["agents", "get", "a"], ["agents", "discover", "-c", "python"],
    ["agents", "evict", "a"], ["agents", "evict", "--status", "unhealthy", "--yes"],
    ["watch"], ["notify", "a", "--kind", "k"], ["stats"]])
async def test_unreachable_server_exits_3_within_seconds(args):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    result = await run_cli(address, *args)
    assert result.exit_code == 3, result.output
    assert time.monotonic() - started < 5
    assert result.stdout == ""
    assert_one_error_line(result, address, "unavailable")


@pytest.mark.parametrize("global_args, message", [
    (["--addr", "localhost:notaport"], "--addr"),
    (["--addr", "localhost:70000"], "--addr"),
    (["--tls-ca", "/nonexistent/ca.pem"], "--tls-ca"),
    (["--tls-cert", "/nonexistent/cert.pem"], "--tls-key"),
])
async def test_bad_connection_options_exit_2(global_args, message):
    result = await asyncio.to_thread(CliRunner().invoke, cli, [*global_args, "stats"],
                                     env=CLEAN_ENV)
    assert result.exit_code == 2, result.output
    assert_one_error_line(result, message)


def test_serve_is_still_there_with_its_flags():
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    for flag in ("--redis-url", "--port", "--heartbeat-timeout", "--tls-cert"):
        assert flag in result.output


async def test_tokens_from_the_flag_or_the_environment(redis_proc, tmp_path):
    from conftest import running_registry
    from test_auth import SECRETS, tokens_document

    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(tokens_document()))
    async with running_registry("redis", redis_proc, tokens_file=str(path)) as reg:
        refused = await run_cli(reg.address, "stats")
        assert refused.exit_code == 4
        assert_one_error_line(refused, "authenticat")
        assert SECRETS["ops"] not in refused.output

        ops = await run_cli(reg.address, "--token", SECRETS["ops"], "notify",
                            "alpha/ghost", "--kind", "k", "--payload", "{}")
        assert ops.exit_code == 1  # authenticated: the agent is simply not there
        reader = {"SERVICE_REGISTRY_TOKEN": SECRETS["reader-a"]}
        stats = await run_cli(reg.address, "stats", "-n", "alpha", env=reader)
        assert stats.exit_code == 0 and rows(stats.stdout)[0][0] == "alpha"
        denied = await run_cli(reg.address, "agents", "evict", "alpha/x", "--yes", env=reader)
        assert denied.exit_code == 4
        assert_one_error_line(denied, "permission")


async def test_cli_over_mutual_tls(redis_proc, pki):
    from conftest import running_registry

    ca, _ = pki
    server, operator_cert = ca.server(), ca.client("operator")
    async with running_registry("redis", redis_proc, tls_cert=str(server.cert),
                                tls_key=str(server.key), tls_client_ca=str(ca.path)) as reg:
        async with reg.new_client(root_certificates=ca.pem, private_key=operator_cert.key_pem,
                                  certificate_chain=operator_cert.pem) as client:
            await client.register_agent(AgentInfo(agent_id="secure-1", capabilities=["mtls"]))
        address = f"localhost:{reg.server.port}"
        listed = await run_cli(address, "--tls-ca", str(ca.path), "--tls-cert",
                               str(operator_cert.cert), "--tls-key", str(operator_cert.key),
                               "agents", "list")
        assert listed.exit_code == 0, listed.output
        assert [r[0] for r in rows(listed.stdout)] == ["default/secure-1"]
        # without a client certificate the handshake fails: the server is unreachable to it
        refused = await run_cli(address, "--tls-ca", str(ca.path), "agents", "list")
        assert refused.exit_code == 3
