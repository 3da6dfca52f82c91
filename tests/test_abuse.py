"""Extreme but well-formed requests: refused with INVALID_ARGUMENT naming the field, never
INTERNAL or UNKNOWN, and nothing written (issue 11, defects 3, 4, 6 and 8)."""
from __future__ import annotations

import base64
import json

import grpc
import pytest
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

from server import keys
from server.keys import EVENT_FIELDS as EF
from server.validation import AgentRef, Beat
from test_auth import bearer, secured, tokens_file  # noqa: F401 - fixtures
from test_registry import expect_status, log_events, register_request

INVALID = grpc.StatusCode.INVALID_ARGUMENT
TOO_BIG = "18446744073709551616"  # 2**64: Redis refuses it in a stream id


async def register_with_notification(registry, name="a1"):
    await registry.stub.Register(register_request(agent_id=name))
    await registry.stub.NotifyAgent(pb.NotifyRequest(agent_id=f"default/{name}", kind="k"))
    return f"default/{name}"


@pytest.mark.parametrize("ack", [f"1-{TOO_BIG}", f"{TOO_BIG}-0", "1--3", "1-\u00b2", "-1-1"])
async def test_a_heartbeat_with_an_out_of_range_ack_id_is_refused_and_changes_nothing(
        registry, ack):
    agent_id = await register_with_notification(registry)
    before = await log_events(registry)
    await expect_status(registry.stub.Heartbeat(pb.HeartbeatRequest(
        agent_id=agent_id, status=pb.UNHEALTHY, ack_notification_ids=[ack])),
        INVALID, "ack_notification_ids")
    agent = (await registry.stub.GetAgent(pb.GetAgentRequest(agent_id=agent_id))).agent
    assert agent.status == pb.HEALTHY
    assert await log_events(registry) == before


async def test_batch_heartbeats_with_bad_ack_ids_fail_alone(registry):
    agent_id = await register_with_notification(registry)
    reply = await registry.stub.HeartbeatBatch(pb.HeartbeatBatchRequest(heartbeats=[
        pb.HeartbeatRequest(agent_id=agent_id, ack_notification_ids=[f"1-{TOO_BIG}"]),
        pb.HeartbeatRequest(agent_id=agent_id)]))
    assert [r.error_code for r in reply.results] == [INVALID.value[0], 0]
    assert "ack_notification_ids" in reply.results[0].error_message


async def test_heartbeat_script_validates_ack_ids_before_its_first_write(registry):
    """Even a caller that skips the server's checks cannot leave a half-applied heartbeat."""
    agent_id = await register_with_notification(registry)
    k, name = keys.namespace("default"), agent_id.split("/")[1]
    record = await registry.redis.hgetall(k.agent(name))
    before = await log_events(registry)
    with pytest.raises(Exception) as err:
        # the gateway passes the ids on as they are: only validation.py checks them
        await registry.server.registry.heartbeat(
            Beat(AgentRef("default", name), pb.UNHEALTHY, None, (f"1-{TOO_BIG}",)), owner="")
    assert str(err.value).startswith("INVALID_ARGUMENT ack_notification_ids")
    assert await registry.redis.hgetall(k.agent(name)) == record
    assert await log_events(registry) == before


@pytest.mark.parametrize("revision", [f"0-{TOO_BIG}", TOO_BIG, "1--3", "1-\u00b2", "\u0665-1"])
async def test_watch_from_a_revision_redis_would_refuse_is_invalid_argument(registry, revision):
    call = registry.stub.WatchAgents(pb.WatchRequest(since_revision=revision))
    await expect_status(call.read(), INVALID, "since_revision")


def forged(agent_type, after="") -> str:
    raw = json.dumps([agent_type, after]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("token", [forged(True), forged(1.0), forged(1, "x" * 300),
                                   forged(1, "bad name"), forged(1) + "==", "W10"])
async def test_forged_page_tokens_are_refused(registry, token):
    for name in ("a1", "a2", "a3"):
        await registry.stub.Register(register_request(agent_id=name))
    await expect_status(registry.stub.ListAgents(pb.ListAgentsRequest(page_token=token)),
                        INVALID, "page_token")


async def test_page_tokens_from_replies_still_page_through_everything(registry):
    for i in range(5):
        await registry.stub.Register(register_request(agent_id=f"a{i}"))
    seen, token = [], ""
    while True:
        reply = await registry.stub.ListAgents(pb.ListAgentsRequest(page_size=2,
                                                                    page_token=token))
        seen += [a.agent_id for a in reply.agents]
        token = reply.next_page_token
        if not token:
            break
    assert seen == [f"default/a{i}" for i in range(5)]


async def test_an_operator_may_re_register_another_tokens_agent(secured):
    """The README: operators may act on any agent; Register agrees with Heartbeat and
    Deregister. The agent keeps its owner, so its own token can still heartbeat it."""
    reply = await secured.stub.Register(pb.RegisterRequest(
        agent_type=pb.WORKER, namespace="alpha", agent_id="a1", capabilities=["python"],
        version="2"), metadata=bearer("ops"))
    assert reply.agent.version == "2"
    await secured.stub.Heartbeat(pb.HeartbeatRequest(agent_id="alpha/a1"),
                                 metadata=bearer("agent-a"))
    await expect_status(secured.stub.Heartbeat(pb.HeartbeatRequest(agent_id="alpha/a1"),
                                               metadata=bearer("agent-a2")),
                        grpc.StatusCode.PERMISSION_DENIED)
    entries = await secured.raw.xrange(keys.namespace("alpha").log)
    assert int(entries[-1][1][EF["type"].encode()]) == pb.UPDATED


async def test_an_operator_re_registering_the_same_agent_changes_nothing(secured):
    await secured.stub.Register(pb.RegisterRequest(
        agent_type=pb.WORKER, namespace="alpha", agent_id="a1", capabilities=["python"]),
        metadata=bearer("ops"))
    entries = await secured.raw.xrange(keys.namespace("alpha").log)
    assert [int(f[EF["type"].encode()]) for _, f in entries] == [pb.REGISTERED]


BIG = 2**63 - 1
ABUSE = {
    "Register": [register_request(agent_id="x" * 129), register_request(metadata={"k": "\0"}),
                 register_request(agent_type=99), register_request(status=-1),
                 register_request(capabilities=["a,b"]), register_request(namespace="A")],
    "Heartbeat": [pb.HeartbeatRequest(agent_id="default/a1", telemetry=pb.AgentTelemetry(
                      success_rate=1.0, avg_duration_ms=1e308, total_executions=BIG,
                      failed_executions=BIG)),
                  pb.HeartbeatRequest(agent_id="default/a1", telemetry=pb.AgentTelemetry(
                      success_rate=float("nan"))),
                  pb.HeartbeatRequest(agent_id="default/a1", status=99),
                  pb.HeartbeatRequest(agent_id="default/a1", ack_notification_ids=["0-0"])],
    "DiscoverAgents": [pb.DiscoverRequest(capabilities=["python"], filters={f: v})
                       for f in ("min_success_rate", "max_avg_duration_ms", "version")
                       for v in ("1e309", "nan", "-inf", "\0", "9" * 400)]
                      + [pb.DiscoverRequest(max_results=-1),
                         pb.DiscoverRequest(max_results=2**31 - 1)],
    "ListAgents": [pb.ListAgentsRequest(page_size=-5), pb.ListAgentsRequest(agent_type=-1),
                   pb.ListAgentsRequest(page_token="\u00e9\u00e9")],
    "NotifyAgent": [pb.NotifyRequest(agent_id="default/a1", kind="k" * 65),
                    pb.NotifyRequest(agent_id="default/a1", kind="k", payload="\0" * 10)],
    "EvictAgents": [pb.EvictRequest(agent_ids=["default/a1"], reason="\0" * 300)],
    "GetStats": [pb.StatsRequest(namespace="-x")],
    "GetAgent": [pb.GetAgentRequest(agent_id="default/")],
}


async def test_no_extreme_input_of_any_rpc_answers_internal_or_unknown(registry):
    await registry.stub.Register(register_request(agent_id="a1"))
    for method, requests in ABUSE.items():
        for request in requests:
            try:
                await getattr(registry.stub, method)(request)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), \
                    (method, request, exc.details())
