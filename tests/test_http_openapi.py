"""GET /v1/openapi.json: generated from the route table and the proto descriptors, accepted by
openapi-spec-validator, and describing the JSON the routes really send."""
from __future__ import annotations

import pytest
from openapi_spec_validator import validate

from http_client import running_http
from server.http.openapi import document
from server.http.routes import ROUTES


@pytest.fixture
async def http():
    async with running_http("embedded") as h:
        yield h


async def test_the_served_document_validates_and_covers_every_route(http):
    status, spec = await http.call("GET", "/v1/openapi.json")
    assert status == 200
    validate(spec)
    served = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    assert served == {(r.method, r.path) for r in ROUTES}
    assert {r.operation_id for r in ROUTES} == {op["operationId"] for ops in spec["paths"].values()
                                       for op in ops.values()}


def test_every_rpc_of_the_service_has_a_route():
    from server.http.routes import SERVICE
    assert {m.name for m in SERVICE.methods} == {r.rpc for r in ROUTES}


def test_schemas_use_proto_field_names_and_the_proto3_json_types():
    schemas = document()["components"]["schemas"]
    info = schemas["AgentInfo"]["properties"]
    assert info["last_heartbeat_unix_ms"] == {"type": "string", "format": "int64"}
    assert info["capabilities"] == {"type": "array", "items": {"type": "string"}}
    assert info["metadata"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert info["agent_type"] == {"$ref": "#/components/schemas/AgentType"}
    assert schemas["AgentType"]["enum"] == ["AGENT_TYPE_UNSPECIFIED", "WORKER", "SCOUT", "GUARD"]


def conforms(value, schema: dict, schemas: dict, where: str = "$") -> None:
    """Every field of a real reply is declared, with the declared JSON type."""
    if "$ref" in schema:
        schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
    kind = schema.get("type")
    python = {"string": str, "boolean": bool, "array": list, "object": dict,
              "integer": int, "number": (int, float)}[kind]
    assert isinstance(value, python), f"{where}: {value!r} is not {kind}"
    if "enum" in schema:
        assert value in schema["enum"], where
    if kind == "array":
        for i, item in enumerate(value):
            conforms(item, schema["items"], schemas, f"{where}[{i}]")
    if kind == "object" and "properties" in schema:
        for key, item in value.items():
            assert key in schema["properties"], f"{where}.{key} is not in the schema"
            conforms(item, schema["properties"][key], schemas, f"{where}.{key}")
    elif kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            conforms(item, schema["additionalProperties"], schemas, f"{where}.{key}")


async def test_real_replies_match_their_schemas(http):
    spec = (await http.call("GET", "/v1/openapi.json"))[1]
    schemas = spec["components"]["schemas"]

    def reply_schema(path: str, method: str) -> dict:
        return spec["paths"][path][method]["responses"]["200"]["content"][
            "application/json"]["schema"]

    status, reg = await http.call("POST", "/v1/agents", {
        "agent_type": "GUARD", "capabilities": ["x"], "metadata": {"a": "b"}})
    conforms(reg, reply_schema("/v1/agents", "post"), schemas)
    status, stats = await http.call("GET", "/v1/stats")
    conforms(stats, reply_schema("/v1/stats", "get"), schemas)
    status, error = await http.call("GET", "/v1/agents/default/none")
    conforms(error, reply_schema("/v1/agents/{agent_id}", "get") and
             spec["paths"]["/v1/agents/{agent_id}"]["get"]["responses"]["404"]["content"][
                 "application/json"]["schema"], schemas)
