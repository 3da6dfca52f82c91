"""The HTTP port with tokens and TLS: the same bearer tokens and scopes as gRPC (401 without a
valid token, 403 outside its scope or namespace, nothing changed), open routes for probes and
Prometheus, ?access_token= only for the watch, HTTPS with the gRPC port's certificate."""
from __future__ import annotations

import ssl

import aiohttp
import pytest

from conftest import FREE_PORT, RedisProcess, running_registry
from http_client import Http, running_secured_http
from test_auth import SECRETS
from test_tls import CA, Issued

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


async def https_ok(port: int, ca_pem: bytes) -> bool:
    """True when GET /healthz over a fresh connection trusting `ca_pem` succeeds."""
    trusting = ssl.create_default_context(cadata=ca_pem.decode())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting)) as session:
        try:
            async with session.get(f"https://localhost:{port}/healthz") as response:
                return response.status == 200
        except aiohttp.ClientConnectorCertificateError:
            return False


async def test_https_with_the_grpc_certificate_rotated_on_reload(tmp_path):
    ca, rogue = CA(tmp_path, "trusted"), CA(tmp_path, "rogue")
    live = Issued(tmp_path / "live.pem", tmp_path / "live.key")
    ca.server(into=live)
    proc = RedisProcess()
    proc.start()
    try:
        async with running_registry("redis", proc, tls_cert=str(live.cert),
                                    tls_key=str(live.key), metrics_port=FREE_PORT) as reg:
            port = reg.server.http_port
            assert await https_ok(port, ca.pem)
            async with aiohttp.ClientSession() as session:
                with pytest.raises(aiohttp.ClientError):  # plaintext is not served
                    await Http(reg, session).call("GET", "/healthz")
            rogue.server(into=live)  # SIGHUP: the new certificate, from another CA
            reg.server.reload()
            assert await https_ok(port, rogue.pem)
            assert not await https_ok(port, ca.pem)
            live.key.write_text("not a key")  # a broken file is not taken
            reg.server.reload()
            assert await https_ok(port, rogue.pem)
    finally:
        proc.cleanup()


async def test_a_draining_server_refuses_api_calls_with_503(secured):
    """What Server.stop sets first (before gRPC and then the HTTP port stop)."""
    secured.registry.server.gate.draining = True
    status, error = await secured.call("GET", "/v1/stats", token=SECRETS["ops"])
    assert status == 503 and error["code"] == 14 and "shutting down" in error["message"]
    assert (await secured.call("GET", "/healthz"))[0] == 200
