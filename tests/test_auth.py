"""Bearer tokens: every RPC refused with the right status (and nothing changed) without a token,
with a wrong one, with one of another namespace, with a reader token attempting a write, and
with an agent token acting on another token's agent; SIGHUP reload; the hashing command."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from neural_hive_integration.clients import AgentInfo, HealthStatus
from neural_hive_integration.clients.service_registry_client import RegistryError
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc
from prometheus_client import REGISTRY

from conftest import ROOT, running_registry

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
STATUS_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}

# name -> (scope, namespace)
TOKENS = {
    "agent-a": ("agent", "alpha"),
    "agent-a2": ("agent", "alpha"),
    "agent-b": ("agent", "beta"),
    "reader-a": ("reader", "alpha"),
    "reader-all": ("reader", "*"),
    "ops": ("operator", "*"),
}
SECRETS = {name: f"{name}.{secrets.token_urlsafe(24)}" for name in TOKENS}
A1 = "alpha/a1"   # registered with agent-a
B1 = "beta/b1"    # registered with agent-b


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tokens_document(names=TOKENS, secrets_=None) -> dict:
    secrets_ = secrets_ or SECRETS
    return {"tokens": [{"name": n, "scope": TOKENS[n][0], "namespace": TOKENS[n][1],
                        "sha256": sha256(secrets_[n])} for n in names]}


def bearer(name_or_token: str):
    token = SECRETS.get(name_or_token, name_or_token)
    return (("authorization", f"Bearer {token}"),)


def failures(reason: str) -> float:
    return REGISTRY.get_sample_value("service_registry_auth_failures_total",
                                     {"reason": reason}) or 0.0


@pytest.fixture
def tokens_file(tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(tokens_document()))
    return path


@pytest.fixture
async def secured(redis_proc, tokens_file):
    """A registry with auth on, alpha/a1 registered by agent-a and beta/b1 by agent-b."""
    async with running_registry("redis", redis_proc, tokens_file=str(tokens_file)) as reg:
        for agent_id, token in ((A1, "agent-a"), (B1, "agent-b")):
            ns, name = agent_id.split("/")
            await reg.stub.Register(pb.RegisterRequest(
                agent_type=pb.WORKER, namespace=ns, agent_id=name, capabilities=["python"]),
                metadata=bearer(token))
        raw = aioredis.Redis.from_url(redis_proc.url)
        reg.raw = raw
        try:
            yield reg
        finally:
            await raw.aclose()


async def store_state(raw) -> dict:
    """Every key with its serialized value: what any write would change."""
    return {key: await raw.dump(key) for key in sorted(await raw.keys("*"))}


# -- one call per RPC; each returns the status the caller observes ----------------------------
async def _status(awaitable):
    try:
        await awaitable
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return OK


async def _item_status(awaitable, results=lambda reply: reply.results):
    """Batch and stream report a per-heartbeat failure inside an OK call."""
    try:
        reply = await awaitable
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    codes = {STATUS_BY_VALUE[r.error_code] for r in results(reply)}
    assert len(codes) == 1
    return codes.pop()


async def _collect(call):
    return [reply async for reply in call]


async def _first_event(call):
    try:
        return await call.read()
    finally:
        call.cancel()


def rpc_cases(stub):
    hb = pb.HeartbeatRequest(agent_id=A1, status=pb.DEGRADED)
    return {
        "Register": lambda md: _status(stub.Register(pb.RegisterRequest(
            agent_type=pb.SCOUT, namespace="alpha", agent_id="new1", capabilities=["go"]),
            metadata=md)),
        "Register(existing id)": lambda md: _status(stub.Register(pb.RegisterRequest(
            agent_type=pb.GUARD, namespace="alpha", agent_id="a1", capabilities=["rust"]),
            metadata=md)),
        "Heartbeat": lambda md: _status(stub.Heartbeat(hb, metadata=md)),
        "HeartbeatBatch": lambda md: _item_status(stub.HeartbeatBatch(
            pb.HeartbeatBatchRequest(heartbeats=[hb]), metadata=md)),
        "HeartbeatStream": lambda md: _item_status(
            _collect(stub.HeartbeatStream(iter([hb]), metadata=md)), lambda replies: replies),
        "Deregister": lambda md: _status(stub.Deregister(pb.DeregisterRequest(agent_id=A1),
                                                         metadata=md)),
        "EvictAgents": lambda md: _status(stub.EvictAgents(
            pb.EvictRequest(agent_ids=[A1], reason="test"), metadata=md)),
        "NotifyAgent": lambda md: _status(stub.NotifyAgent(
            pb.NotifyRequest(agent_id=A1, kind="drain", payload="{}"), metadata=md)),
        "GetAgent": lambda md: _status(stub.GetAgent(pb.GetAgentRequest(agent_id=A1),
                                                     metadata=md)),
        "DiscoverAgents": lambda md: _status(stub.DiscoverAgents(
            pb.DiscoverRequest(capabilities=["python"], namespace="alpha"), metadata=md)),
        "ListAgents": lambda md: _status(stub.ListAgents(
            pb.ListAgentsRequest(namespace="alpha"), metadata=md)),
        "GetStats": lambda md: _status(stub.GetStats(pb.StatsRequest(namespace="alpha"),
                                                     metadata=md)),
        "WatchAgents": lambda md: _status(_first_event(stub.WatchAgents(
            pb.WatchRequest(namespace="alpha"), metadata=md))),
    }


ALL = list(rpc_cases(None))
READS = ["GetAgent", "DiscoverAgents", "ListAgents", "GetStats", "WatchAgents"]
AGENT_WRITES = ["Register", "Register(existing id)", "Heartbeat", "HeartbeatBatch",
                "HeartbeatStream", "Deregister"]
OPERATOR_ONLY = ["EvictAgents", "NotifyAgent"]


async def assert_refused(reg, metadata, expected: dict[str, grpc.StatusCode]) -> None:
    """Runs each case; every one must get its expected status and leave the store unchanged."""
    cases = rpc_cases(reg.stub)
    before = await store_state(reg.raw)
    wrong = {}
    for name, want in expected.items():
        got = await cases[name](metadata)
        after = await store_state(reg.raw)
        if got != want or after != before:
            wrong[name] = (got.name, "store changed" if after != before else "store unchanged")
            before = after
    assert not wrong, f"expected {({k: v.name for k, v in expected.items()})}, got {wrong}"


async def test_every_rpc_without_token_is_unauthenticated(secured):
    before = failures("missing_token")
    await assert_refused(secured, None, {name: UNAUTHENTICATED for name in ALL})
    assert failures("missing_token") - before == len(ALL)


@pytest.mark.parametrize("metadata", [
    bearer("not-a-token"),
    bearer(SECRETS["ops"][:-1]),                          # almost an operator token
    bearer(sha256(SECRETS["ops"])),                       # the stored hash is not the token
    (("authorization", f"Basic {SECRETS['ops']}"),),      # not a bearer token
    (("authorization", "Bearer "),),
], ids=["unknown", "truncated", "hash-as-token", "basic-scheme", "empty"])
async def test_every_rpc_with_a_bad_token_is_unauthenticated(secured, metadata):
    await assert_refused(secured, metadata, {name: UNAUTHENTICATED for name in ALL})


async def test_unauthenticated_message_reveals_nothing(secured):
    replies = []
    for metadata in (None, bearer("guess"), bearer(SECRETS["ops"] + "x")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await secured.stub.GetAgent(pb.GetAgentRequest(agent_id=A1), metadata=metadata)
        replies.append(err.value.details())
        for name, token in SECRETS.items():
            assert name not in err.value.details() and token not in err.value.details()
    assert replies[1] == replies[2]  # a near miss looks exactly like a wild guess


async def test_token_is_checked_before_the_request_is(secured):
    """An unauthenticated caller learns nothing from validation errors."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await secured.stub.Heartbeat(pb.HeartbeatRequest(agent_id="NOT/a valid id!"))
    assert err.value.code() == UNAUTHENTICATED


async def test_every_rpc_with_a_token_of_another_namespace_is_denied(secured):
    before = failures("namespace")
    await assert_refused(secured, bearer("agent-b"), {name: DENIED for name in ALL
                                                      if name not in OPERATOR_ONLY})
    assert failures("namespace") - before == len(ALL) - len(OPERATOR_ONLY)
    # Evict and notify are outside an agent token's scope whatever the namespace.
    await assert_refused(secured, bearer("agent-b"), {name: DENIED for name in OPERATOR_ONLY})


async def test_a_reader_token_may_read_but_not_write(secured):
    before = failures("scope")
    await assert_refused(secured, bearer("reader-a"),
                         {**{name: DENIED for name in AGENT_WRITES + OPERATOR_ONLY},
                          **{name: OK for name in READS}})
    assert failures("scope") - before == len(AGENT_WRITES + OPERATOR_ONLY)


async def test_a_reader_of_one_namespace_cannot_read_another(secured):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await secured.stub.GetAgent(pb.GetAgentRequest(agent_id=B1), metadata=bearer("reader-a"))
    assert err.value.code() == DENIED
    reply = await secured.stub.GetAgent(pb.GetAgentRequest(agent_id=B1),
                                        metadata=bearer("reader-all"))
    assert reply.agent.agent_id == B1


async def test_an_agent_token_cannot_touch_another_tokens_agent(secured):
    """agent-a2 shares agent-a's namespace but did not register alpha/a1."""
    await assert_refused(secured, bearer("agent-a2"),
                         {**{name: DENIED for name in AGENT_WRITES if name != "Register"},
                          **{name: DENIED for name in OPERATOR_ONLY},
                          **{name: OK for name in READS}})


async def test_the_owning_agent_token_may_do_its_own_work(secured):
    cases = rpc_cases(secured.stub)
    md = bearer("agent-a")
    for name in READS + AGENT_WRITES:
        assert await cases[name](md) == OK, name
    for name in OPERATOR_ONLY:
        assert await cases[name](md) == DENIED, name
    # Its new agent is bound to it too: agent-a2 cannot deregister it.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await secured.stub.Deregister(pb.DeregisterRequest(agent_id="alpha/new1"),
                                      metadata=bearer("agent-a2"))
    assert err.value.code() == DENIED


async def test_an_operator_may_act_on_any_agent(secured):
    stub, md = secured.stub, bearer("ops")
    await stub.NotifyAgent(pb.NotifyRequest(agent_id=A1, kind="drain"), metadata=md)
    reply = await stub.Heartbeat(pb.HeartbeatRequest(agent_id=A1), metadata=md)
    assert len(reply.notifications) == 1
    assert (await stub.EvictAgents(pb.EvictRequest(agent_ids=[B1]), metadata=md)).evicted_ids \
        == [B1]
    assert (await stub.Deregister(pb.DeregisterRequest(agent_id=A1), metadata=md)).removed
    stats = await stub.GetStats(pb.StatsRequest(), metadata=md)
    assert sum(ns.agents for ns in stats.namespaces) == 0


def test_readable_namespaces_for_calls_over_every_namespace(tokens_file):
    """For Discover/GetStats without a namespace: the namespaces a token may read."""
    from server.auth import Auth
    from server.errors import RpcError

    class Context:
        def __init__(self, token):
            self.metadata = bearer(token) if token else ()

        def invocation_metadata(self):
            return self.metadata

        def peer(self):
            return "ipv4:127.0.0.1:1"

    namespaces = ["alpha", "beta", "gamma"]
    auth = Auth(str(tokens_file))
    assert auth.readable(Context("reader-a"), namespaces) == ["alpha"]
    assert auth.readable(Context("agent-b"), namespaces) == ["beta"]
    assert auth.readable(Context("reader-all"), namespaces) == namespaces
    with pytest.raises(RpcError) as err:
        auth.readable(Context(None), namespaces)
    assert err.value.code == UNAUTHENTICATED
    assert Auth().readable(Context(None), namespaces) == namespaces  # auth off


async def test_client_library_with_a_token(secured):
    async with secured.new_client(token=SECRETS["agent-a"]) as client:
        agent_id = await client.register_agent(AgentInfo(agent_type="worker", namespace="alpha",
                                                         capabilities=["python"]))
        result = await client.update_health(agent_id, HealthStatus(status="healthy"))
        assert result.status == "healthy"
        assert {a.agent_id for a in await client.discover_agents(["python"],
                                                                 namespace="alpha")} \
            == {A1, agent_id}
        with pytest.raises(RegistryError) as err:
            await client.evict_agents([A1])
        assert err.value.code == DENIED
    async with secured.new_client(token="wrong", retries=0) as client:
        with pytest.raises(RegistryError) as err:
            await client.get_agent(A1)
        assert err.value.code == UNAUTHENTICATED


async def test_health_service_needs_no_token(secured):
    reply = await health_pb2_grpc.HealthStub(secured.channel).Check(
        health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_auth_off_is_logged_loudly(redis_proc, caplog):
    caplog.set_level("INFO", logger="service_registry")
    async with running_registry("redis", redis_proc) as reg:
        await reg.stub.Register(pb.RegisterRequest(agent_type=pb.WORKER, namespace="alpha"))
    assert any(r.levelname == "WARNING" and "AUTHENTICATION IS OFF" in r.getMessage()
               for r in caplog.records)


async def test_empty_tokens_file_refuses_everything(redis_proc, tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text('{"tokens": []}')
    async with running_registry("redis", redis_proc, tokens_file=str(path)) as reg:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await reg.stub.Register(pb.RegisterRequest(agent_type=pb.WORKER))
        assert err.value.code() == UNAUTHENTICATED


# -- the tokens file and its commands ---------------------------------------------------------
def run_auth_command(*args, stdin: str = ""):
    return subprocess.run([sys.executable, "-m", "server.auth", *args], input=stdin,
                          capture_output=True, text=True, cwd=ROOT, timeout=30)


def test_hash_command_prints_the_sha256_of_stdin():
    for stdin in ("s3cret-token", "s3cret-token\n"):
        done = run_auth_command("hash", stdin=stdin)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == sha256("s3cret-token")
    assert run_auth_command("hash", stdin="").returncode != 0


def test_new_command_makes_a_working_entry(tmp_path):
    done = run_auth_command("new", "fleet-7", "agent", "alpha")
    assert done.returncode == 0, done.stderr
    entry = json.loads(done.stdout)
    token = done.stderr.rsplit(":", 1)[1].strip()
    assert entry == {"name": "fleet-7", "scope": "agent", "namespace": "alpha",
                     "sha256": sha256(token)}
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [entry]}))
    assert run_auth_command("check", str(path)).returncode == 0
    assert run_auth_command("new", "x", "agent", "*").returncode == 2


async def test_add_rotate_remove_commands_with_a_running_server(redis_proc, tmp_path, capsys):
    """The operator's workflow: add a token, give it out, rotate it, remove it; each change
    takes effect on reload (SIGHUP calls Server.reload)."""
    from server.auth import _main as auth_command
    path = str(tmp_path / "tokens.json")

    def command(*argv) -> str:
        assert auth_command(list(argv)) == 0, capsys.readouterr().err
        return capsys.readouterr().out.strip()

    token = command("add", path, "fleet", "agent", "alpha")
    command("add", path, "viewer", "reader", "*")
    assert token not in (tmp_path / "tokens.json").read_text()  # only its hash is stored
    async with running_registry("redis", redis_proc, tokens_file=path) as reg:
        async def heartbeat(secret: str):
            return await _status(reg.stub.Heartbeat(pb.HeartbeatRequest(agent_id="alpha/x"),
                                                    metadata=bearer(secret)))
        await reg.stub.Register(pb.RegisterRequest(agent_type=pb.WORKER, namespace="alpha",
                                                   agent_id="x"), metadata=bearer(token))
        assert await heartbeat(token) == OK
        rotated = command("rotate", path, "fleet")
        assert await heartbeat(token) == OK  # nothing changes before the reload
        reg.server.reload()
        assert await heartbeat(token) == UNAUTHENTICATED
        assert await heartbeat(rotated) == OK  # same name: still the agent's owner
        command("remove", path, "fleet")
        reg.server.reload()
        assert await heartbeat(rotated) == UNAUTHENTICATED
    assert auth_command(["add", path, "viewer", "reader", "*"]) == 1  # names are unique
    assert auth_command(["rotate", path, "nobody"]) == 1


@pytest.mark.parametrize("document, complaint", [
    ('{"tokens": [{"name": "a", "scope": "agent", "namespace": "alpha", "token": "plain"}]}',
     "never the token"),
    ('{"tokens": [{"name": "a", "scope": "agent", "namespace": "*", "sha256": "%s"}]}'
     % ("0" * 64), "one namespace"),
    ('{"tokens": [{"name": "a", "scope": "admin", "namespace": "*", "sha256": "%s"}]}'
     % ("0" * 64), "scope"),
    ('{"tokens": [{"name": "a", "scope": "reader", "namespace": "*", "sha256": "abc"}]}',
     "64 hex"),
    ('{"tokens": [{"name": "a", "scope": "reader", "namespace": "*", "sha256": "%s"},'
     ' {"name": "a", "scope": "reader", "namespace": "*", "sha256": "%s"}]}'
     % ("0" * 64, "1" * 64), "twice"),
    ("tokens: []", "JSON"),
], ids=["plaintext", "agent-star", "bad-scope", "bad-hash", "duplicate-name", "not-json"])
def test_server_refuses_to_start_with_a_bad_tokens_file(tmp_path, document, complaint):
    path = tmp_path / "tokens.json"
    path.write_text(document)
    env = {**os.environ, "TOKENS_FILE": str(path), "SERVICE_REGISTRY_HOST": "127.0.0.1",
           "SERVICE_REGISTRY_PORT": "1", "METRICS_PORT": "0", "REDIS_URL": ""}
    done = subprocess.run([sys.executable, "-m", "cli.main", "serve"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert complaint in done.stderr and str(path) in done.stderr
    assert "plain" not in done.stderr.replace("plaintext", "")


# -- SIGHUP reload, and what the logs say -----------------------------------------------------
async def wait_for(predicate, what: str, timeout: float = 15.0):
    """Polls a condition in another process (its log or its answers) until it holds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_sighup_reloads_the_tokens_file(redis_proc, server_processes, tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(tokens_document(["agent-a", "ops"])))
    server = await server_processes(redis_proc.url, TOKENS_FILE=path, LOG_FORMAT="json")
    rotated = dict(SECRETS, **{"agent-a": "rotated-" + secrets.token_urlsafe(16)})
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ServiceRegistryStub(channel)
        request = pb.RegisterRequest(agent_type=pb.WORKER, namespace="alpha", agent_id="a1")
        await stub.Register(request, metadata=bearer("agent-a"))

        async def status_with(metadata):
            return await _status(stub.Heartbeat(pb.HeartbeatRequest(agent_id=A1),
                                                metadata=metadata))

        # Rotate agent-a's secret (same name) and add a reader.
        path.write_text(json.dumps(tokens_document(["agent-a", "ops", "reader-a"], rotated)))
        server.proc.send_signal(signal.SIGHUP)
        new_md = (("authorization", f"Bearer {rotated['agent-a']}"),)
        await wait_for(lambda: _is(status_with(new_md), OK), "the rotated token to work")
        assert await status_with(bearer("agent-a")) == UNAUTHENTICATED  # old secret is gone
        # Bound to the token's name: the rotated token still owns alpha/a1.
        assert await _status(stub.Deregister(pb.DeregisterRequest(agent_id=A1),
                                             metadata=new_md)) == OK
        assert await _status(stub.GetStats(pb.StatsRequest(namespace="alpha"),
                                           metadata=bearer("reader-a"))) == OK

        # A broken file is refused on reload: the tokens in force stay.
        path.write_text('{"tokens": [')
        server.proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: _logged(server, "NOT reloaded"), "the reload error")
        assert await _status(stub.GetStats(pb.StatsRequest(namespace="alpha"),
                                           metadata=bearer("reader-a"))) == OK

        # Refused calls in the log: the token name at most, never a token.
        await _status(stub.Heartbeat(pb.HeartbeatRequest(agent_id=A1),
                                     metadata=bearer(SECRETS["agent-b"])))
        await _status(stub.EvictAgents(pb.EvictRequest(agent_ids=[A1]),
                                       metadata=bearer("reader-a")))
    assert server.terminate() == 0
    output = server.output()
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert any("refused" in line["message"] for line in lines)
    assert any("reloaded" in line["message"] for line in lines)
    for token in list(SECRETS.values()) + list(rotated.values()):
        assert token not in output


async def _is(awaitable, expected) -> bool:
    return await awaitable == expected


async def _logged(server, text: str) -> bool:
    return text in server.output()


async def test_calls_over_every_namespace_see_only_the_tokens_namespaces(secured):
    """The contract README's Discover (no namespace), a token bound to alpha, beta exists."""
    stub = secured.stub
    found = await stub.DiscoverAgents(pb.DiscoverRequest(capabilities=["python"]),
                                      metadata=bearer("agent-a"))
    assert [a.agent_id for a in found.agents] == [A1]
    stats = await stub.GetStats(pb.StatsRequest(), metadata=bearer("reader-a"))
    assert [ns.namespace for ns in stats.namespaces] == ["alpha"]
    everything = await stub.DiscoverAgents(pb.DiscoverRequest(capabilities=["python"]),
                                           metadata=bearer("ops"))
    assert sorted(a.agent_id for a in everything.agents) == [A1, B1]
