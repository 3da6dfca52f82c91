"""The HTTP port with tokens and TLS: the same bearer tokens and scopes as gRPC (401 without a
valid token, 403 outside its scope or namespace, nothing changed), open routes for probes and
Prometheus, ?access_token= only for the watch, HTTPS with the gRPC port's certificate."""
from __future__ import annotations

import ssl

import aiohttp
import pytest

from conftest import RedisProcess, free_port, running_registry
from http_client import Http, running_secured_http
from test_auth import SECRETS
from test_tls import CA

ROUTES_AND_BODIES = [
    ("POST", "/v1/agents", {"agent_type": "WORKER", "namespace": "alpha", "agent_id": "x"}),
    ("GET", "/v1/agents?namespace=alpha", None),
    ("GET", "/v1/agents/alpha/a1", None),
    ("DELETE", "/v1/agents/alpha/a1", None),
    ("POST", "/v1/agents/alpha/a1/heartbeat", {}),
    ("POST", "/v1/heartbeats:batch", {"heartbeats": [{"agent_id": "alpha/a1"}]}),
    ("POST", "/v1/heartbeats:stream", {"agent_id": "alpha/a1"}),
    ("POST", "/v1/discover", {"namespace": "alpha"}),
    ("POST", "/v1/notify", {"agent_id": "alpha/a1", "kind": "k"}),
    ("POST", "/v1/evict", {"agent_ids": ["alpha/a1"]}),
    ("GET", "/v1/stats?namespace=alpha", None),
    ("GET", "/v1/watch?namespace=alpha", None),
]


@pytest.fixture
async def secured(tmp_path):
    async with running_secured_http(tmp_path) as http:
        yield http


async def state(http) -> dict:
    status, got = await http.call("GET", "/v1/agents/alpha/a1", token=SECRETS["ops"])
    return got


@pytest.mark.parametrize("token", ["", "not-a-token", f"Basic {SECRETS['ops']}"])
@pytest.mark.parametrize("method,path,body", ROUTES_AND_BODIES,
                         ids=[f"{m} {p}" for m, p, _ in ROUTES_AND_BODIES])
async def test_every_route_without_a_valid_token_is_401_and_changes_nothing(
        secured, method, path, body, token):
    before = await state(secured)
    headers = {"Authorization": token} if token.startswith("Basic") else {}
    status, error = await secured.call(method, path, body, token="" if headers else token,
                                       headers=headers)
    assert status == 401, error
    assert error["code"] == 16 and "token" in error["message"]
    assert await state(secured) == before


async def test_401_asks_for_a_bearer_token(secured):
    async with secured.session.get(secured.base + "/v1/stats") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


WRITES = [r for r in ROUTES_AND_BODIES if r[1].startswith(("/v1/agents/alpha/a1/heartbeat",
                                                            "/v1/notify", "/v1/evict"))
          or r[0] in ("POST", "DELETE") and r[1] in ("/v1/agents", "/v1/agents/alpha/a1")]


@pytest.mark.parametrize("method,path,body", WRITES, ids=[f"{m} {p}" for m, p, _ in WRITES])
async def test_a_reader_token_may_not_write(secured, method, path, body):
    before = await state(secured)
    status, error = await secured.call(method, path, body, token=SECRETS["reader-all"])
    assert status == 403 and error["code"] == 7 and "permission denied" in error["message"]
    assert await state(secured) == before


async def test_scopes_and_namespaces_as_over_grpc(secured):
    call, s = secured.call, SECRETS
    assert (await call("GET", "/v1/agents/alpha/a1", token=s["reader-a"]))[0] == 200
    assert (await call("GET", "/v1/agents/alpha/a1", token=s["agent-b"]))[0] == 403
    # an agent token may not heartbeat another token's agent, even in its namespace
    assert (await call("POST", "/v1/agents/alpha/a1/heartbeat", {}, token=s["agent-a2"]))[0] \
        == 403
    assert (await call("POST", "/v1/agents/alpha/a1/heartbeat", {}, token=s["agent-a"]))[0] \
        == 200
    assert (await call("POST", "/v1/notify", {"agent_id": "alpha/a1", "kind": "k"},
                       token=s["agent-a"]))[0] == 403
    status, evicted = await call("POST", "/v1/evict", {"agent_ids": ["alpha/a1"],
                                                       "reason": "x"}, token=s["ops"])
    assert (status, evicted) == (200, {"evicted_ids": ["alpha/a1"]})


async def test_probes_metrics_openapi_and_dashboard_files_need_no_token(secured):
    for path in ("/metrics", "/healthz", "/readyz", "/v1/openapi.json", "/"):
        status, _ = await secured.call("GET", path)
        assert status == 200, path


async def test_access_token_query_parameter_only_for_the_watch(secured):
    token = SECRETS["reader-a"]
    async with secured.events(namespace="alpha", access_token=token) as stream:
        assert stream.response.status == 200
        assert (await stream.take(2))[-1]["data"]["type"] == "SNAPSHOT_END"
    status, _ = await secured.call("GET", "/v1/stats", namespace="alpha", access_token=token)
    assert status == 401  # elsewhere a token in a URL would end up in logs: not taken
    status, error = await secured.call("GET", "/v1/watch", namespace="beta", access_token=token)
    assert status == 403


async def test_https_with_the_grpc_certificate(tmp_path):
    ca = CA(tmp_path, "trusted")
    server = ca.server()
    proc = RedisProcess()
    proc.start()
    try:
        async with running_registry("redis", proc, tls_cert=str(server.cert),
                                    tls_key=str(server.key), metrics_port=free_port()) as reg:
            trusting = ssl.create_default_context(cadata=ca.pem.decode())
            async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=trusting)) as session:
                http = Http(reg, session, scheme="https")
                http.base = http.base.replace("127.0.0.1", "localhost")
                assert (await http.call("GET", "/v1/stats"))[0] == 200
                assert (await http.call("GET", "/metrics"))[0] == 200
            async with aiohttp.ClientSession() as session:
                with pytest.raises(aiohttp.ClientError):  # plaintext is not served
                    await Http(reg, session).call("GET", "/healthz")
    finally:
        proc.cleanup()
