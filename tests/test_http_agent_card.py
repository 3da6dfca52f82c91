"""A2A Agent Cards over the HTTP port: an agent's card at /v1/agents/{id}/agent-card.json
(GetAgent's validation and READ scope) and the registry's own at /.well-known/agent-card.json;
on real Redis and the embedded store."""
from __future__ import annotations

import json

import pytest
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

from http_client import running_http, running_secured_http
from server import agent_card
from test_agent_card import CARD, card_text
from test_auth import SECRETS


@pytest.fixture(params=["redis", "embedded"])
async def http(request):
    async with running_http(request.param) as h:
        yield h


async def test_an_agents_card_is_served_as_registered(http):
    status, reply = await http.call("POST", "/v1/agents",
                                    {"agent_id": "tr", "agent_card": card_text()})
    assert status == 200, reply
    status, card = await http.call("GET", "/v1/agents/default/tr/agent-card.json")
    assert status == 200 and card == CARD
    # the slash of the id may also be percent-encoded, and GetAgent still answers beside it
    status, card = await http.call("GET", "/v1/agents/default%2Ftr/agent-card.json")
    assert status == 200 and card == CARD
    status, got = await http.call("GET", "/v1/agents/default/tr")
    assert status == 200 and json.loads(got["agent"]["agent_card"]) == CARD


async def test_no_card_unknown_agent_and_bad_id_are_404_and_400(http):
    await http.registry.stub.Register(pb.RegisterRequest(agent_type=pb.WORKER, agent_id="plain"))
    status, error = await http.call("GET", "/v1/agents/default/plain/agent-card.json")
    assert status == 404 and "no agent card" in error["message"]
    status, error = await http.call("GET", "/v1/agents/default/nobody/agent-card.json")
    assert status == 404 and "agent_id" in error["message"]
    status, error = await http.call("GET", "/v1/agents/a/b/c/agent-card.json")
    assert status == 400 and "agent_id" in error["message"]


async def test_the_registrys_own_card_names_the_url_it_was_reached_at(http):
    status, card = await http.call("GET", "/.well-known/agent-card.json")
    assert status == 200
    parsed = agent_card.parse(json.dumps(card), [])  # it passes the registry's own validation
    assert parsed.endpoint == http.base
    assert "skill:discover-agents" in parsed.capabilities


async def test_a_card_needs_a_token_that_reads_its_namespace(tmp_path):
    async with running_secured_http(tmp_path) as http:
        await http.registry.stub.Register(
            pb.RegisterRequest(namespace="alpha", agent_id="a1", agent_card=card_text()),
            metadata=(("authorization", f"Bearer {SECRETS['agent-a']}"),))
        path = "/v1/agents/alpha/a1/agent-card.json"
        assert (await http.call("GET", path))[0] == 401
        assert (await http.call("GET", path, token=SECRETS["agent-b"]))[0] == 403
        status, card = await http.call("GET", path, token=SECRETS["reader-a"])
        assert status == 200 and card == CARD
        assert (await http.call("GET", "/.well-known/agent-card.json"))[0] == 200
