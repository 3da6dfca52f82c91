"""What users of kubectl, etcdctl and consul expect of the operator CLI: global options anywhere,
-o yaml, header control, --version, shell completion, watch -A, a bulk eviction that reports
progress instead of a line per agent, and a watch that survives a reset store."""
from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner
from neural_hive_integration.clients import AgentInfo, ServiceRegistryClient
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

from cli import output as cli_output
from cli.main import cli
from test_cli import (CLEAN_ENV, ROOT, assert_one_error_line, fleet, lines, next_row, register,
                      rows, run_cli, start_watch, stop)

README = (ROOT / "README.md").read_text()


# -- global options after the command -------------------------------------------------------------

async def test_global_options_are_accepted_after_the_command(redis_registry):
    await fleet(redis_registry)
    after = await run_cli(None, "agents", "list", "--addr", redis_registry.address)
    assert after.exit_code == 0, after.output
    assert [r[0] for r in rows(after.stdout)] == ["default/a", "default/b", "default/c"]
    between = await run_cli(None, "agents", "--addr", redis_registry.address, "get", "a")
    assert between.exit_code == 0, between.output
    # after the command wins over before it (the nearer one, as with cobra's flags)
    stats = await run_cli("127.0.0.1:1", "stats", "--addr", redis_registry.address, "-o", "json")
    assert json.loads(stats.stdout)["agents"] == 4


async def test_a_global_option_after_the_command_is_checked_the_same(redis_registry):
    result = await run_cli(None, "stats", "--addr", "host:notaport")
    assert result.exit_code == 2
    assert_one_error_line(result, "--addr")


# -- output ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["agents", "list", "-A"], ["agents", "get", "default/b"],
                                     ["stats"], ["agents", "discover", "-c", "python"]])
async def test_yaml_is_the_json_document_in_yaml(redis_registry, command):
    await fleet(redis_registry)
    as_json = await run_cli(redis_registry.address, *command, "-o", "json")
    as_yaml = await run_cli(redis_registry.address, *command, "-o", "yaml")
    assert as_yaml.exit_code == 0, as_yaml.output
    assert yaml.safe_load(as_yaml.stdout) == json.loads(as_json.stdout)


async def test_watch_yaml_is_one_document_per_event(redis_registry):
    await fleet(redis_registry)
    result = await run_cli(redis_registry.address, "watch", "-o", "yaml", "--max-events", "4")
    assert result.exit_code == 0, result.output
    events = list(yaml.safe_load_all(result.stdout))
    assert [e["type"] for e in events] == ["SNAPSHOT"] * 3 + ["SNAPSHOT_END"]


async def test_headers_in_a_pipe_and_no_headers_on_a_terminal(redis_registry, monkeypatch):
    await fleet(redis_registry)
    piped = await run_cli(redis_registry.address, "agents", "list", "--headers")
    assert rows(piped.stdout)[0] == cli_output.AGENT_HEADERS
    assert [r[0] for r in rows(piped.stdout)[1:]] == ["default/a", "default/b", "default/c"]
    monkeypatch.setattr(cli_output, "is_terminal", lambda stream=None: True)
    bare = await run_cli(redis_registry.address, "agents", "list", "--no-headers")
    assert [line.split()[0] for line in lines(bare.stdout)] == ["default/a", "default/b",
                                                                "default/c"]
    stats = await run_cli(redis_registry.address, "stats", "--no-headers")
    assert not any(line.startswith("NAMESPACE") for line in lines(stats.stdout))


def test_readme_names_the_list_columns_as_the_screen_does():
    listed = next(line for line in README.splitlines() if line.startswith("`agents list` columns"))
    named = listed.split("`")[3]
    assert [c.strip() for c in named.split(",")] == cli_output.AGENT_HEADERS


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("service-registry, version ")


def test_the_cli_does_not_import_the_benchmark_suite_until_bench_runs():
    probe = ("import sys, cli.main; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'benchmarks'))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr
    listed = CliRunner().invoke(cli, ["--help"])
    assert "bench" in listed.output
    bench = CliRunner().invoke(cli, ["bench", "--help"])
    assert bench.exit_code == 0 and "--full" in bench.output


# -- completion -----------------------------------------------------------------------------------

@pytest.mark.parametrize("shell, marker", [("bash", "complete -o"), ("zsh", "compdef"),
                                           ("fish", "complete --no-files")])
def test_completion_prints_the_shell_script(shell, marker):
    result = CliRunner().invoke(cli, ["completion", shell])
    assert result.exit_code == 0, result.output
    assert "_SERVICE_REGISTRY_COMPLETE" in result.output and marker in result.output


async def complete(*words: str) -> list[str]:
    """What bash completion offers after `service-registry words...` (the last one incomplete)."""
    env = {**CLEAN_ENV, "_SERVICE_REGISTRY_COMPLETE": "bash_complete",
           "COMP_WORDS": " ".join(["service-registry", *words]), "COMP_CWORD": str(len(words))}
    result = await asyncio.to_thread(CliRunner().invoke, cli, [], env=env,
                                     prog_name="service-registry")
    return [line.split(",", 1)[1] for line in lines(result.output)]


async def test_agent_ids_complete_from_the_server(redis_registry):
    await fleet(redis_registry)
    await register(redis_registry, "apple")
    addr = redis_registry.address
    assert sorted(await complete("--addr", addr, "agents", "get", "a")) == ["a", "apple"]
    assert await complete("--addr", addr, "agents", "get", "prod/") == ["prod/p"]
    assert await complete("--addr", addr, "notify", "-n", "prod", "") == ["p"]
    assert await complete("--addr", addr, "watch", "--agent", "default/ap") == ["default/apple"]
    assert "list" in await complete("--addr", addr, "agents", "l")
    # no server there: no suggestions, and no error either
    assert await complete("--addr", "127.0.0.1:1", "agents", "get", "a") == []


# -- watch -A -------------------------------------------------------------------------------------

async def test_watch_all_namespaces_the_token_may_read(redis_proc, tmp_path):
    from conftest import running_registry
    from test_auth import SECRETS, tokens_document

    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(tokens_document()))
    async with running_registry("redis", redis_proc, tokens_file=str(path)) as reg:
        async with reg.new_client(token=SECRETS["ops"]) as ops:
            for agent_id in ("alpha/a1", "beta/b1"):
                ns, _, name = agent_id.partition("/")
                await ops.register_agent(AgentInfo(agent_id=name, namespace=ns))
        everything = await run_cli(reg.address, "--token", SECRETS["ops"], "watch", "-A",
                                   "-o", "json", "--max-events", "4")
        assert everything.exit_code == 0, everything.output
        events = [json.loads(line) for line in lines(everything.stdout)]
        assert sorted(e["agent"]["agent_id"] for e in events if e["type"] == "SNAPSHOT") == [
            "alpha/a1", "beta/b1"]
        assert sum(e["type"] == "SNAPSHOT_END" for e in events) == 2

        reader = await run_cli(reg.address, "--token", SECRETS["reader-a"], "watch", "-A",
                               "-o", "json", "--max-events", "2")
        assert reader.exit_code == 0, reader.output
        events = [json.loads(line) for line in lines(reader.stdout)]
        assert [e["type"] for e in events] == ["SNAPSHOT", "SNAPSHOT_END"]
        assert events[0]["agent"]["agent_id"] == "alpha/a1"


async def test_watch_all_namespaces_refuses_a_namespace_or_revision(redis_registry):
    result = await run_cli(redis_registry.address, "watch", "-A", "-n", "prod")
    assert result.exit_code == 2 and "-A" in result.output


# -- a watch across a reset store -----------------------------------------------------------------

async def test_watch_lists_again_when_the_embedded_store_was_reset(server_processes):
    server = await server_processes("")  # the embedded store: a restart empties it
    async with ServiceRegistryClient("127.0.0.1", server.port) as client:
        await client.register_agent(AgentInfo(agent_id="before"))
    proc = await start_watch(server.address)
    try:
        assert (await next_row(proc))[2:4] == ["SNAPSHOT", "default/before"]
        assert (await next_row(proc))[2] == "SNAPSHOT_END"
        async with ServiceRegistryClient("127.0.0.1", server.port) as client:
            await client.register_agent(AgentInfo(agent_id="seen"))
        assert (await next_row(proc))[2:4] == ["REGISTERED", "default/seen"]
        server.kill()
        await server.start()  # same port, a new (empty) store
        # the watch resumes, finds the log reset, says so and lists again: nothing there now
        assert (await next_row(proc))[2] == "SNAPSHOT_END"
        async with ServiceRegistryClient("127.0.0.1", server.port) as client:
            await client.register_agent(AgentInfo(agent_id="after"))
        assert (await next_row(proc))[2:4] == ["REGISTERED", "default/after"]
    finally:
        assert await stop(proc) == 0
    notes = lines((await proc.stderr.read()).decode())
    assert len(notes) == 1 and "store was reset" in notes[0] and "listed the agents again" \
        in notes[0], notes


# -- bulk eviction --------------------------------------------------------------------------------

def run_on_a_terminal(argv: list[str], env: dict) -> tuple[int, str, str]:
    """The CLI with stderr on a pseudo-terminal (where a progress bar is drawn), stdout piped."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=terminal)
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        drawn += chunk
    os.close(controller)
    stdout = proc.stdout.read().decode()
    return proc.wait(timeout=60), stdout, drawn.decode(errors="replace")


async def test_bulk_evict_shows_progress_on_a_terminal_and_one_line_in_a_pipe(redis_registry):
    for i in range(300):
        await register(redis_registry, f"w{i:03d}", status=pb.DEGRADED)
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    argv = ["--addr", redis_registry.address, "agents", "evict", "-s", "degraded", "--yes",
            "--batch-size", "50"]
    code, stdout, drawn = await asyncio.to_thread(run_on_a_terminal, argv, env)
    assert code == 0, drawn
    assert stdout == ""
    assert "Evicting" in drawn and "300/300" in drawn and "(300 evicted)" in drawn
    assert "Evicted 300 agents from namespace default." in drawn

    for i in range(120):
        await register(redis_registry, f"v{i:03d}", status=pb.DEGRADED)
    piped = await run_cli(redis_registry.address, *argv[2:])
    assert piped.exit_code == 0, piped.output
    assert piped.stdout == ""
    assert lines(piped.stderr) == ["Evicted 120 agents from namespace default."]

