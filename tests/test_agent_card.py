"""A2A Agent Cards at Register: validation, derived capabilities, storage, GetAgent/Discover,
the change log, and the documents for the HTTP port; on real Redis and the embedded store."""
from __future__ import annotations

import copy
import json

import grpc
import pytest
from neural_hive_integration.clients import AgentInfo
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

from server import agent_card, card_documents, keys
from server.keys import EVENT_FIELDS as EF, FIELDS as F

CARD = {
    "name": "Translator",
    "description": "Translates text between languages",
    "version": "2.1.0",
    "supportedInterfaces": [
        {"url": "https://translator.example.com/a2a", "protocolBinding": "JSONRPC",
         "protocolVersion": "1.0"},
        {"url": "grpc://translator.example.com:50051", "protocolBinding": "GRPC"},
    ],
    "provider": {"organization": "Example Corp", "url": "https://example.com"},
    "capabilities": {"streaming": True, "pushNotifications": False},
    "securitySchemes": {"bearer": {"httpAuthSecuritySchemes": {"scheme": "Bearer"}}},
    "defaultInputModes": ["text/plain"],
    "defaultOutputModes": ["text/plain", "application/json"],
    "skills": [
        {"id": "translate", "name": "Translate", "description": "Any language pair",
         "tags": ["german", "machine translation"], "examples": ["Translate 'hello' to German"]},
        {"id": "detect-language", "name": "Detect", "description": "Which language is this",
         "tags": ["german", "langid"], "examples": []},
    ],
}


def card_text(card=None, **changes) -> str:
    card = copy.deepcopy(card or CARD)
    card.update(changes)
    return json.dumps(card)


async def expect_invalid(call, path: str):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert info.value.details().startswith(path + ":") or path + ":" in info.value.details(), \
        info.value.details()


async def test_card_alone_registers_an_agent_found_by_skill_and_tag(registry):
    reply = await registry.stub.Register(pb.RegisterRequest(agent_id="tr", agent_card=card_text()))
    agent = reply.agent
    assert agent.agent_type == pb.WORKER
    assert agent.endpoint == "https://translator.example.com/a2a"
    assert agent.version == "2.1.0"
    assert sorted(agent.capabilities) == ["skill:detect-language", "skill:translate",
                                          "tag:german", "tag:langid", "tag:machine-translation"]
    got = await registry.stub.GetAgent(pb.GetAgentRequest(agent_id="default/tr"))
    assert json.loads(got.agent.agent_card) == CARD
    await registry.stub.Register(pb.RegisterRequest(agent_type=pb.WORKER, agent_id="plain",
                                                    capabilities=["tag:german"]))
    for caps in (["skill:translate"], ["tag:german", "skill:translate"],
                 ["tag:machine-translation"]):
        found = await registry.stub.DiscoverAgents(pb.DiscoverRequest(capabilities=caps))
        assert [a.agent_id for a in found.agents] == ["default/tr"]
        assert json.loads(found.agents[0].agent_card) == CARD
    both = await registry.stub.DiscoverAgents(pb.DiscoverRequest(capabilities=["tag:german"]))
    assert sorted(a.agent_id for a in both.agents) == ["default/plain", "default/tr"]


async def test_card_beside_the_seed_fields(registry):
    reply = await registry.stub.Register(pb.RegisterRequest(
        agent_id="tr", agent_type=pb.SCOUT, capabilities=["python"], endpoint="10.0.0.1:80",
        version="9", agent_card=card_text()))
    agent = reply.agent
    assert (agent.agent_type, agent.endpoint, agent.version) == (pb.SCOUT, "10.0.0.1:80", "9")
    assert "python" in agent.capabilities and "skill:translate" in agent.capabilities


@pytest.mark.parametrize("text, path", [
    ("{not json", "agent_card"),
    ("[1, 2]", "agent_card"),
    (card_text(name=7), "agent_card.name"),
    (card_text(version=""), "agent_card.version"),
    (card_text(supportedInterfaces=[]), "agent_card.supportedInterfaces"),
    (card_text(supportedInterfaces=[{"protocolBinding": "GRPC"}]),
     "agent_card.supportedInterfaces[0].url"),
    (card_text(capabilities={"streaming": "yes"}), "agent_card.capabilities.streaming"),
    (card_text(defaultInputModes="text/plain"), "agent_card.defaultInputModes"),
    (card_text(provider={"organization": "x"}), "agent_card.provider.url"),
    (card_text(securitySchemes={"k": "v"}), "agent_card.securitySchemes.k"),
    (card_text(skills=CARD["skills"] + [{"id": "s3", "name": "n", "description": "d",
                                         "tags": [3]}]), "agent_card.skills[2].tags[0]"),
    (card_text(skills=[{"id": "a,b", "name": "n", "description": "d", "tags": []}]),
     "agent_card.skills[0].id"),
    (card_text(skills=[{"id": "x", "name": "n", "description": "d"}]),
     "agent_card.skills[0].tags"),
    (card_text(skills=[{"id": f"s{i}", "name": "n", "description": "d", "tags": []}
                       for i in range(agent_card.MAX_SKILLS + 1)]), "agent_card.skills"),
    (card_text(description="x" * (agent_card.MAX_CARD_BYTES + 1)), "agent_card"),
])
async def test_bad_cards_are_refused_naming_the_field_and_nothing_is_written(registry, text,
                                                                             path):
    await expect_invalid(registry.stub.Register(pb.RegisterRequest(agent_id="bad",
                                                                   agent_card=text)), path)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await registry.stub.GetAgent(pb.GetAgentRequest(agent_id="default/bad"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert await registry.redis.xlen(keys.namespace("default").log) == 0


async def test_a_bad_card_leaves_the_registered_agent_unchanged(registry):
    await registry.stub.Register(pb.RegisterRequest(agent_id="tr", agent_card=card_text()))
    await expect_invalid(registry.stub.Register(pb.RegisterRequest(
        agent_id="tr", agent_card=card_text(skills=[{"id": 1}]))), "agent_card.skills[0].id")
    got = await registry.stub.GetAgent(pb.GetAgentRequest(agent_id="default/tr"))
    assert json.loads(got.agent.agent_card) == CARD


async def test_too_many_derived_capabilities_are_refused(registry):
    skills = [{"id": f"s{i}", "name": "n", "description": "d",
               "tags": [f"t{i}-{j}" for j in range(3)]} for i in range(20)]
    await expect_invalid(registry.stub.Register(pb.RegisterRequest(
        agent_id="many", agent_card=card_text(skills=skills))), "agent_card.skills")


async def test_the_card_is_in_registered_and_updated_events_only(registry):
    ns = keys.namespace("default")
    await registry.stub.Register(pb.RegisterRequest(agent_id="tr", agent_card=card_text()))
    changed = card_text(version="2.2.0")
    await registry.stub.Register(pb.RegisterRequest(agent_id="tr", agent_card=changed))
    await registry.stub.Heartbeat(pb.HeartbeatRequest(agent_id="default/tr",
                                                      status=pb.DEGRADED))
    await registry.stub.Deregister(pb.DeregisterRequest(agent_id="default/tr"))
    entries = [fields for _, fields in await registry.redis.xrange(ns.log)]
    types = [int(f[EF["type"]]) for f in entries]
    assert types == [pb.REGISTERED, pb.UPDATED, pb.STATUS_CHANGED, pb.DEREGISTERED]
    registered, updated, status, gone = entries
    assert json.loads(registered[F["agent_card"]]) == CARD
    assert json.loads(updated[F["agent_card"]])["version"] == "2.2.0"
    assert F["agent_card"] not in dict(zip(*[iter(json.loads(updated[EF["old"]]))] * 2))
    assert F["agent_card"] not in status and F["agent_card"] not in gone


async def test_watchers_receive_the_card_in_the_snapshot_and_on_registered(registry):
    await registry.stub.Register(pb.RegisterRequest(agent_id="first", agent_card=card_text()))
    events = registry.stub.WatchAgents(pb.WatchRequest(capability="skill:translate"))
    snapshot = await events.read()
    assert snapshot.type == pb.SNAPSHOT and json.loads(snapshot.agent.agent_card) == CARD
    assert (await events.read()).type == pb.SNAPSHOT_END
    await registry.stub.Register(pb.RegisterRequest(agent_id="tr", agent_card=card_text()))
    event = await events.read()
    assert event.type == pb.REGISTERED and json.loads(event.agent.agent_card) == CARD
    events.cancel()


async def test_client_registers_and_reads_the_card(registry):
    agent = AgentInfo(agent_type="", capabilities=[], agent_card=card_text())
    agent_id = await registry.client.register_agent(agent)
    got = await registry.client.get_agent(agent_id)
    assert json.loads(got.agent_card) == CARD and "skill:translate" in got.capabilities


async def test_the_registry_card_passes_its_own_validation():
    own = card_documents.registry_card("https://registry.example.com/")
    parsed = agent_card.parse(own, [])
    assert parsed.endpoint == "https://registry.example.com"
    assert "skill:discover-agents" in parsed.capabilities
