"""Starting `service-registry serve`: a taken port, a foreign address or a bad pair of settings
ends the start with one line naming the setting (exit code 2); ports are shared only on purpose;
`serve --workers N` supervises N processes on one port."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from contextlib import contextmanager

import pytest
from click.testing import CliRunner
from neural_hive_integration.clients import AgentInfo, ServiceRegistryClient

from cli.main import cli
from conftest import ROOT, free_port
from server import config

START_TIMEOUT = 30
SERVING = r"serving gRPC on \S+ \(heartbeat"   # a server's last line at start


def serve(*args: str, **env) -> subprocess.CompletedProcess:
    """`service-registry serve` to its end (a server that starts would hit the timeout)."""
    environ = {**os.environ, "REDIS_URL": "", "SERVICE_REGISTRY_HOST": "127.0.0.1",
               "SERVICE_REGISTRY_PORT": str(free_port()), "METRICS_PORT": "0",
               **{k: str(v) for k, v in env.items()}}
    return subprocess.run([sys.executable, "-m", "cli.main", "serve", *args], env=environ,
                          cwd=ROOT, capture_output=True, text=True, timeout=START_TIMEOUT)


def assert_refused_in_one_line(done: subprocess.CompletedProcess, *fragments: str) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@contextmanager
def listening(port: int = 0):
    """Another process's listener, as a plain socket: the port is taken."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield sock.getsockname()[1]


# -- a port that is taken -------------------------------------------------------------------------

async def test_a_second_server_refuses_the_port_the_first_serves_on(server_processes):
    first = await server_processes("")  # embedded: a second server would be a fleet of its own
    async with ServiceRegistryClient("127.0.0.1", first.port) as client:
        await client.register_agent(AgentInfo(agent_id="a1", agent_type="worker"))
        done = await asyncio.to_thread(serve, SERVICE_REGISTRY_PORT=first.port)
        assert_refused_in_one_line(done, f"SERVICE_REGISTRY_PORT {first.port} is in use")
        for _ in range(10):  # one store answers every new connection
            async with ServiceRegistryClient("127.0.0.1", first.port) as fresh:
                assert (await fresh.get_stats()).namespaces[0].agents == 1


def test_a_port_another_program_holds_is_refused():
    with listening() as port:
        done = serve(SERVICE_REGISTRY_PORT=port)
    assert_refused_in_one_line(done, f"SERVICE_REGISTRY_PORT {port} is in use")


def test_a_taken_metrics_port_is_one_line_not_a_traceback():
    with listening() as port:
        done = serve(METRICS_PORT=port)
    assert assert_refused_in_one_line(done) == f"error: METRICS_PORT {port} is in use"


async def test_sharing_a_port_on_purpose_needs_share_port(redis_proc, server_processes):
    first = await server_processes(redis_proc.url, SHARE_PORT="true")
    second = await server_processes(redis_proc.url, port=first.port, SHARE_PORT="true")
    assert first.proc.poll() is None and second.proc.poll() is None
    done = await asyncio.to_thread(serve, REDIS_URL=redis_proc.url,
                                   SERVICE_REGISTRY_PORT=first.port)  # without SHARE_PORT
    assert_refused_in_one_line(done, "SERVICE_REGISTRY_PORT")


def test_sharing_a_port_is_refused_with_the_embedded_store():
    with pytest.raises(config.ConfigError, match="SHARE_PORT.*needs REDIS_URL"):
        config.load(environ={"SHARE_PORT": "true"})


# -- an address that is not this machine's --------------------------------------------------------

@pytest.mark.parametrize("host, says", [("nosuch.invalid", "does not resolve"),
                                        ("192.0.2.1", "is not an address of this machine")])
def test_a_host_that_is_not_this_machine_is_one_line_naming_the_variable(host, says):
    assert_refused_in_one_line(serve("--host", host), f"SERVICE_REGISTRY_HOST {host!r} {says}")


# -- settings that disagree -----------------------------------------------------------------------

@pytest.mark.parametrize("environ, named, not_named", [
    ({"UNHEALTHY_BELOW": "0.95"}, "UNHEALTHY_BELOW", "DEGRADED_BELOW /"),
    ({"DEGRADED_BELOW": "0.3"}, "DEGRADED_BELOW /", "UNHEALTHY_BELOW /"),
])
def test_the_setting_the_user_changed_is_the_one_named(environ, named, not_named):
    with pytest.raises(config.ConfigError) as caught:
        config.load(environ=environ)
    message = str(caught.value)
    assert message.startswith(named) and not_named not in message, message


def test_serve_help_says_what_each_option_is_its_variable_and_default():
    result = CliRunner().invoke(cli, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    defaults = config.Settings()
    for name, var in config.ENVIRONMENT.items():
        flag = "--" + name.replace("_", "-")
        described = re.search(rf"{flag} [A-Z]+ (.+?) \[env {var}; default: ([^\]]+)\]", text)
        assert described, f"{flag} has no description, variable or default:\n{result.output}"
        meaning, default = described.groups()
        assert len(meaning) > 8, flag
        value = getattr(defaults, name)
        if value != "":
            assert default in (str(value), str(value).lower(), f"{value:g}"
                               if isinstance(value, float) else ""), (flag, default)


# -- serve --workers N ----------------------------------------------------------------------------

async def read_until(stream, pattern: str, seen: list[str], timeout: float = START_TIMEOUT):
    """The first match of `pattern` in the next lines of the supervisor's log."""
    regex = re.compile(pattern)
    while True:
        line = await asyncio.wait_for(stream.readline(), timeout)
        assert line, f"log ended before {pattern!r}:\n" + "".join(seen)
        seen.append(line.decode())
        if match := regex.search(seen[-1]):
            return match


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def free_ports_in_a_row(count: int) -> int:
    """The first of `count` consecutive ports that are free now."""
    for _ in range(100):
        first = free_port()
        try:
            for offset in range(1, count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", first + offset))
        except OSError:
            continue
        return first
    raise AssertionError(f"no {count} consecutive free ports")


async def test_workers_share_the_port_restart_when_killed_and_drain_on_sigterm(redis_proc):
    port, metrics = free_port(), free_ports_in_a_row(2)  # worker k serves METRICS_PORT + k
    env = {**os.environ, "REDIS_URL": redis_proc.url, "SERVICE_REGISTRY_HOST": "127.0.0.1",
           "SERVICE_REGISTRY_PORT": str(port), "METRICS_PORT": str(metrics),
           "SHUTDOWN_GRACE": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "serve", "--workers", "2", cwd=ROOT, env=env,
        stderr=asyncio.subprocess.PIPE)
    seen: list[str] = []
    try:
        pids = {}
        for _ in range(2):
            match = await read_until(proc.stderr, r"worker (\d): pid (\d+) started", seen)
            pids[int(match[1])] = int(match[2])
        for _ in range(2):  # each worker's own line, once its metrics port is up too
            await read_until(proc.stderr, SERVING, seen)
        async with ServiceRegistryClient("127.0.0.1", port) as client:
            await client.register_agent(AgentInfo(agent_id="w1", agent_type="worker"))
        for index in (0, 1):  # each worker's own metrics port
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics + index}/metrics",
                                        timeout=5) as reply:
                assert b"service_registry_latency_seconds" in reply.read()

        os.kill(pids[0], signal.SIGKILL)
        await read_until(proc.stderr, rf"worker 0: pid {pids[0]} exited", seen)
        match = await read_until(proc.stderr, r"worker 0: pid (\d+) started", seen)
        restarted = int(match[1])
        assert restarted != pids[0]
        await read_until(proc.stderr, SERVING, seen)
        async with ServiceRegistryClient("127.0.0.1", port) as client:  # the one Redis
            assert await client.get_agent("default/w1") is not None

        proc.send_signal(signal.SIGTERM)
        rest = (await asyncio.wait_for(proc.stderr.read(), START_TIMEOUT)).decode()
        assert await asyncio.wait_for(proc.wait(), START_TIMEOUT) == 0, rest
        assert len(re.findall(r" INFO stopped$", rest, re.M)) == 2, rest  # each drained
        assert not alive(restarted) and not alive(pids[1])
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_workers_need_redis():
    assert_refused_in_one_line(serve("--workers", "2"), "--workers needs REDIS_URL")
