"""Honest script contracts: every key a script touches is declared in its KEYS, or is one the
script can only derive (capability and type zsets named in a record; agents it finds in an
index), and every key it declares is used. Checked by running the scripts, instrumented, under
a scenario that takes each path (new, resent and changed registers, heartbeats, notifications,
reaping inside each script, the sweeper, removals down to the last agent)."""
from __future__ import annotations

import asyncio
import collections
import time

import grpc
import pytest
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

from conftest import running_registry
from server import keys, scripts
from test_registry import register_request

# Wraps redis.call for the script (a local `redis` shadows the global one): each key of each
# command is pushed, with the script's name, onto a list the test reads back. Keys are the first
# argument of every command the scripts use, all arguments of DEL, none of TIME.
TRACE = "__trace"
SHIM = """
local __redis, __name = redis, '%s'
for i = 1, #KEYS do __redis.call('RPUSH', '__trace', __name .. '|declared|' .. KEYS[i]) end
local redis = setmetatable({}, {__index = __redis})
redis.call = function(cmd, ...)
  local args, up = {...}, string.upper(cmd)
  local touched = up == 'DEL' and args or (up ~= 'TIME' and {args[1]} or {})
  for _, key in ipairs(touched) do
    __redis.call('RPUSH', '__trace', __name .. '|touched|' .. key)
  end
  return __redis.call(cmd, ...)
end
"""
NS, SOLO = "contract", "contract-solo"
K = keys.namespace(NS)
SOURCE = scripts.source


def instrumented(name: str) -> str:
    text = SOURCE(name)
    prelude = scripts.prelude()
    return prelude + SHIM % name + text[len(prelude):]


def namespace_suffix(key: str) -> str | None:
    """"d" of "sr:{ns}:d", None for a key outside every namespace."""
    if keys.parse_namespace_key(key) is None:
        return None
    return key.split("}:", 1)[1]


def derived(script: str, key: str) -> bool:
    """Keys a script may touch without declaring them."""
    suffix = namespace_suffix(key)
    if suffix is None:
        return False
    if suffix.startswith((keys.CAPABILITY, keys.TYPE)):
        return True  # named in a stored record
    finds_agents = script in ("reap", "discover", "list")  # names read from an index
    return finds_agents and suffix.startswith((keys.AGENT, keys.LEASE, keys.INBOX))


def role(key: str) -> str:
    """What a key is (log, deadlines, an agent hash, ...), without the agent it belongs to."""
    suffix = namespace_suffix(key) or key
    for per_agent in (keys.AGENT, keys.LEASE, keys.INBOX, keys.CAPABILITY, keys.TYPE):
        if suffix.startswith(per_agent):
            return per_agent
    return suffix


async def wait_expired(stub, agent_id: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # a lease runs out: there is no event before it does
        try:
            await stub.GetAgent(pb.GetAgentRequest(agent_id=agent_id))
        except grpc.aio.AioRpcError:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{agent_id} never expired")


async def scenario(reg) -> None:
    stub = reg.stub
    reg_ = lambda name, **kw: stub.Register(register_request(  # noqa: E731
        agent_id=name, namespace=NS, capabilities=["py", "tf"], **kw))
    ids = {n: (await reg_(n)).agent_id for n in ("a", "b", "e1", "e2", "e3", "e4", "e5")}
    solo = (await stub.Register(register_request(agent_id="s", namespace=SOLO))).agent_id
    await reg_("a")                                            # resent: unchanged
    await reg_("a", metadata={"zone": "eu"})                   # changed: UPDATED
    note = await stub.NotifyAgent(pb.NotifyRequest(agent_id=ids["b"], kind="k", payload="p"))
    await stub.Heartbeat(pb.HeartbeatRequest(
        agent_id=ids["b"], telemetry=pb.AgentTelemetry(success_rate=0.2, total_executions=5),
        ack_notification_ids=[note.notification_id]))
    await stub.DiscoverAgents(pb.DiscoverRequest(namespace=NS, capabilities=["py", "tf"],
                                           filters={"zone": "eu"}))
    await stub.DiscoverAgents(pb.DiscoverRequest(namespace=NS))
    await stub.ListAgents(pb.ListAgentsRequest(namespace=NS, capability="py",
                                               filters={"zone": "eu"}))
    await stub.GetAgent(pb.GetAgentRequest(agent_id=ids["a"]))
    await stub.GetStats(pb.StatsRequest(namespace=NS))
    # a, b stay alive (heartbeats); e1..e5 lapse and are reaped by five different paths
    for agent_id in (*(ids[f"e{i}"] for i in range(1, 6)), solo):
        await wait_expired(stub, agent_id)
    for name in ("a", "b"):
        await reg_(name)
    for call in (stub.Heartbeat(pb.HeartbeatRequest(agent_id=ids["e1"])),
                 stub.NotifyAgent(pb.NotifyRequest(agent_id=ids["e2"], kind="k")),
                 stub.NotifyAgent(pb.NotifyRequest(agent_id=solo, kind="k"))):  # the last
        with pytest.raises(grpc.aio.AioRpcError):
            await call
    await reg_("e3")                                           # an expired one of that name
    await reg.server.registry.reap(NS, "e4", 10)               # as an `expired` event does
    await reg.server.reaper.sweep()                            # e5, found in the schedule
    await stub.EvictAgents(pb.EvictRequest(agent_ids=[ids["e3"]], reason="test"))
    await stub.Deregister(pb.DeregisterRequest(agent_id=ids["b"]))
    await stub.Deregister(pb.DeregisterRequest(agent_id=ids["a"]))  # the last one


async def test_every_script_declares_what_it_touches_and_uses_what_it_declares(monkeypatch):
    monkeypatch.setattr(scripts, "source", instrumented)
    async with running_registry("embedded", heartbeat_timeout=0.5, sweep_interval=10) as reg:
        await scenario(reg)
        trace = await reg.redis.lrange(TRACE, 0, -1)
    declared, touched = collections.defaultdict(set), collections.defaultdict(set)
    for line in trace:
        script, what, key = line.split("|", 2)
        (declared if what == "declared" else touched)[script].add(key)
    writing = ("register", "heartbeat", "deregister", "notify", "reap")
    assert set(writing) | {"discover", "list", "get", "stats"} <= set(touched)
    for script in touched:
        undeclared = {k for k in touched[script] - declared[script] if not derived(script, k)}
        assert not undeclared, f"{script}.lua touches undeclared keys {sorted(undeclared)}"
        # used: each kind of key it declares (the inbox, say) is touched by some call
        unused = {role(k) for k in declared[script]} - {role(k) for k in touched[script]}
        assert not unused, f"{script}.lua declares keys it never uses: {sorted(unused)}"
    for script in writing:  # the namespace's keys, in keys.SCRIPT_NAMESPACE_KEYS order
        assert set(K.script_keys) <= declared[script], script
