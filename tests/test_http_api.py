"""The JSON API on the HTTP port: every route calls the gRPC handler (same state, same
validation), errors map to grpc-gateway's HTTP statuses with a Status body naming the field,
and the open routes (/metrics, /healthz, /readyz). Real Redis and the embedded store."""
from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from prometheus_client import REGISTRY

from http_client import running_http

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT.value[0], grpc.StatusCode.NOT_FOUND.value[0]
WORKER = {"agent_type": "WORKER", "capabilities": ["python", "gpu"], "namespace": "default",
          "endpoint": "http://w1:8080", "metadata": {"zone": "eu-1"}}


@pytest.fixture(params=["redis", "embedded"])
async def http(request):
    marker = request.node.get_closest_marker("settings")
    async with running_http(request.param, **(marker.kwargs if marker else {})) as h:
        yield h


async def register(http, agent_id: str, **fields) -> dict:
    status, body = await http.call("POST", "/v1/agents", dict(WORKER, agent_id=agent_id,
                                                              **fields))
    assert status == 200, body
    return body


async def test_register_get_list_heartbeat_deregister(http):
    body = await register(http, "w1")
    assert body["agent_id"] == "default/w1"
    assert sorted(body["agent"]["capabilities"]) == ["gpu", "python"]
    assert body["heartbeat_timeout_ms"] == "60000"  # proto3 JSON: int64 as a string
    # the gRPC port sees what HTTP registered: one store, one handler
    grpc_view = (await http.registry.stub.GetAgent(pb.GetAgentRequest(agent_id="default/w1")))
    assert grpc_view.agent.endpoint == "http://w1:8080"

    # the id's slash in the path as is, or percent-encoded
    for path in ("/v1/agents/default/w1/heartbeat", "/v1/agents/default%2Fw1/heartbeat"):
        status, hb = await http.call("POST", path, {"telemetry": {"success_rate": 0.7,
                                                                  "avg_duration_ms": 12.5}})
        assert (status, hb["agent_id"], hb["status"]) == (200, "default/w1", "DEGRADED")
    status, got = await http.call("GET", "/v1/agents/default/w1")
    assert status == 200
    assert got["agent"]["telemetry"]["avg_duration_ms"] == 12.5
    assert got["agent"]["metadata"] == {"zone": "eu-1"}

    await register(http, "s1", agent_type="SCOUT", capabilities=["python"])
    status, listed = await http.call("GET", "/v1/agents", namespace="default",
                                     agent_type="SCOUT")
    assert [a["agent_id"] for a in listed["agents"]] == ["default/s1"]
    status, page = await http.call("GET", "/v1/agents", page_size="1")
    assert len(page["agents"]) == 1 and page["next_page_token"]
    status, rest = await http.call("GET", "/v1/agents", page_size="1",
                                   page_token=page["next_page_token"])
    assert {a["agent_id"] for a in page["agents"] + rest["agents"]} == {"default/w1",
                                                                        "default/s1"}
    status, filtered = await http.call("GET", "/v1/agents", **{"filters[status]": "DEGRADED"})
    assert [a["agent_id"] for a in filtered["agents"]] == ["default/w1"]

    status, gone = await http.call("DELETE", "/v1/agents/default/w1")
    assert (status, gone) == (200, {"removed": True})
    status, again = await http.call("DELETE", "/v1/agents/default/w1")
    assert (status, again) == (200, {"removed": False})
    status, missing = await http.call("GET", "/v1/agents/default/w1")
    assert status == 404 and missing["code"] == NOT_FOUND
    assert "agent_id" in missing["message"] and missing["details"] == []


async def test_discover_and_stats(http):
    await register(http, "w1")
    await register(http, "w2", capabilities=["python"])
    await register(http, "g1", namespace="ops", agent_type="GUARD", capabilities=["gpu"])
    status, found = await http.call("POST", "/v1/discover", {"capabilities": ["python", "gpu"]})
    assert status == 200 and [a["agent_id"] for a in found["agents"]] == ["default/w1"]
    status, found = await http.call("POST", "/v1/discover", {"capabilities": ["gpu"],
                                                             "namespace": "ops"})
    assert [a["agent_id"] for a in found["agents"]] == ["ops/g1"]
    status, stats = await http.call("GET", "/v1/stats")
    by_ns = {s["namespace"]: s for s in stats["namespaces"]}
    assert by_ns["default"]["agents"] == "2" and by_ns["ops"]["by_type"]["GUARD"] == "1"
    status, one = await http.call("GET", "/v1/stats", namespace="ops")
    assert [s["namespace"] for s in one["namespaces"]] == ["ops"]


async def test_notify_then_heartbeat_delivers_it_and_evict_removes(http):
    await register(http, "w1")
    status, sent = await http.call("POST", "/v1/notify", {"agent_id": "default/w1",
                                                          "kind": "drain", "payload": "{}"})
    assert status == 200 and sent["notification_id"]
    status, hb = await http.call("POST", "/v1/agents/default/w1/heartbeat", {})
    assert [(n["notification_id"], n["kind"]) for n in hb["notifications"]] == [
        (sent["notification_id"], "drain")]
    status, evicted = await http.call("POST", "/v1/evict", {"agent_ids": ["default/w1",
                                                                          "default/nope"],
                                                            "reason": "bad host"})
    assert (status, evicted) == (200, {"evicted_ids": ["default/w1"]})
    status, _ = await http.call("GET", "/v1/agents/default/w1")
    assert status == 404


async def test_heartbeat_batch_and_stream_report_failures_per_item(http):
    await register(http, "w1")
    status, batch = await http.call("POST", "/v1/heartbeats:batch", {"heartbeats": [
        {"agent_id": "default/w1"}, {"agent_id": "default/nope"}, {"agent_id": "bad id"}]})
    assert status == 200
    assert [r["error_code"] for r in batch["results"]] == [0, NOT_FOUND, INVALID]
    lines = b'{"agent_id":"default/w1"}\n{"agent_id":"default/nope"}\n{"agent_id":"default/w1"}\n'
    status, text = await http.call("POST", "/v1/heartbeats:stream", raw=lines)
    results = [json.loads(line)["result"] for line in text.splitlines()]
    assert status == 200 and [r["error_code"] for r in results] == [0, NOT_FOUND, 0]
    status, text = await http.call("POST", "/v1/heartbeats:stream",
                                   raw=b'{"agent_id":"default/w1"}\n{"nope":1}\n')
    first, last = (json.loads(line) for line in text.splitlines())
    assert first["result"]["error_code"] == 0
    assert last["error"]["code"] == INVALID and "nope" in last["error"]["message"]
    # a line longer than the reader buffers: refused, the body is not read into memory
    long_line = b'{"agent_id":"default/w1","ack_notification_ids":["' + b"x" * 5_000_000
    status, text = await http.call("POST", "/v1/heartbeats:stream", raw=long_line + b'"]}\n')
    assert json.loads(text)["error"]["code"] == INVALID
    assert "too long" in json.loads(text)["error"]["message"].lower()


BAD_REQUESTS = [
    # (method, path, body or raw bytes, query, HTTP status, text the message must contain)
    ("POST", "/v1/agents", b'{"agent_type": "WORKER",', {}, 400, "not valid JSON"),
    ("POST", "/v1/agents", b'["WORKER"]', {}, 400, "JSON object"),
    ("POST", "/v1/agents", b'\xff\xfe', {}, 400, "body"),
    ("POST", "/v1/agents", {"agent_type": "WORKER", "colour": "red"}, {}, 400, "colour"),
    ("POST", "/v1/agents", {"agent_type": "ROBOT"}, {}, 400, "agent_type"),
    ("POST", "/v1/agents", {"agent_type": "WORKER", "capabilities": "python"}, {}, 400,
     "capabilities"),
    ("POST", "/v1/agents", {"capabilities": ["python"]}, {}, 400, "agent_type"),
    ("POST", "/v1/agents", {"agent_type": "WORKER", "endpoint": "x" * 5000}, {}, 400,
     "endpoint"),
    ("POST", "/v1/agents/default/w1/heartbeat", {"agent_id": "default/other"}, {}, 400,
     "differs"),
    ("POST", "/v1/agents/default/w1/heartbeat", {"telemetry": {"success_rate": 7}}, {}, 400,
     "success_rate"),
    ("POST", "/v1/agents/default/nobody/heartbeat", {}, {}, 404, "not registered"),
    ("GET", "/v1/agents/not a valid id!", None, {}, 400, "agent_id"),
    ("GET", "/v1/agents", None, {"page_size": "100000"}, 400, "page_size"),
    ("GET", "/v1/agents", None, {"page_size": "many"}, 400, "page_size"),
    ("GET", "/v1/agents", None, {"colour": "red"}, 400, "colour"),
    ("GET", "/v1/agents", None, {"page_token": "garbage"}, 400, "page_token"),
    ("GET", "/v1/agents/default/w1", None, {"agent_id": "x"}, 400, "agent_id"),
    ("GET", "/v1/watch", None, {"skip_snapshot": "maybe"}, 400, "skip_snapshot"),
    ("GET", "/v1/watch", None, {"namespace": "Bad Namespace"}, 400, "namespace"),
    ("POST", "/v1/discover", {"max_results": 5000}, {}, 400, "max_results"),
    ("POST", "/v1/notify", {"agent_id": "default/w1"}, {}, 400, "kind"),
    ("POST", "/v1/evict", {}, {}, 400, "agent_ids"),
    ("POST", "/v1/nothing-here", {}, {}, 404, "Not Found"),
    ("PUT", "/v1/stats", {}, {}, 405, "Method Not Allowed"),
]


@pytest.mark.parametrize("method,path,body,query,expected,text", BAD_REQUESTS,
                         ids=[f"{m} {p} {t}" for m, p, _, _, _, t in BAD_REQUESTS])
async def test_bad_requests_get_a_precise_status_and_change_nothing(http, method, path, body,
                                                                    query, expected, text):
    await register(http, "w1")
    status, before = await http.call("GET", "/v1/agents/default/w1")
    raw = body if isinstance(body, bytes) else None
    status, error = await http.call(method, path, None if raw else body, raw=raw, **query)
    assert status == expected, error
    assert set(error) == {"code", "message", "details"}
    assert text in error["message"]
    assert error["code"] in (INVALID, NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED.value[0])
    status, after = await http.call("GET", "/v1/agents/default/w1")
    assert after == before
    status, stats = await http.call("GET", "/v1/stats")
    assert sum(int(s["agents"]) for s in stats["namespaces"]) == 1


async def test_a_body_over_the_limit_is_413_not_500(http):
    status, error = await http.call("POST", "/v1/agents", raw=b'{"x":"' + b"a" * 3_000_000
                                    + b'"}')
    assert status == 413 and error["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


def heartbeats(outcome: str) -> float:
    return REGISTRY.get_sample_value("service_registry_heartbeat_total",
                                     {"outcome": outcome}) or 0.0


async def test_open_routes_metrics_health_and_the_same_counters(http):
    await register(http, "w1")
    ok, missing = heartbeats("ok"), heartbeats("not_found")
    await http.call("POST", "/v1/agents/default/w1/heartbeat", {})
    await http.call("POST", "/v1/agents/default/gone/heartbeat", {})
    assert (heartbeats("ok") - ok, heartbeats("not_found") - missing) == (1, 1)
    status, text = await http.call("GET", "/metrics")
    assert status == 200 and 'service_registry_heartbeat_total{outcome="ok"}' in text
    assert "# TYPE service_registry_latency_seconds histogram" in text
    assert await http.call("GET", "/healthz") == (200, {"status": "SERVING"})
    assert await http.call("GET", "/readyz") == (200, {"status": "SERVING"})


async def wait_for(predicate, timeout: float = 15.0):
    async def poll():
        while not await predicate():
            await asyncio.sleep(0.1)
    await asyncio.wait_for(poll(), timeout)


async def test_readyz_follows_redis_and_healthz_does_not():
    async with running_http("redis") as http:
        proc = http.registry.redis_proc
        proc.stop()
        await wait_for(lambda: _status_is(http, "/readyz", 503))
        assert (await http.call("GET", "/healthz"))[0] == 200
        status, error = await http.call("GET", "/v1/agents/default/w1")
        assert status == 503 and error["code"] == grpc.StatusCode.UNAVAILABLE.value[0]
        proc.start()
        await wait_for(lambda: _status_is(http, "/readyz", 200))


async def _status_is(http, path: str, expected: int) -> bool:
    return (await http.call("GET", path))[0] == expected


async def test_http_port_zero_serves_no_http(registry):
    assert registry.server.http_port == 0  # METRICS_PORT=0 turns the HTTP port off
