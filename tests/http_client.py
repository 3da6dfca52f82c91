"""A registry with its HTTP port bound, and an aiohttp client for it (tests/test_http*.py)."""
from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager

import aiohttp
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

from conftest import FREE_PORT, RedisProcess, running_registry
from test_auth import bearer, tokens_document


class Http:
    def __init__(self, registry, session: aiohttp.ClientSession, scheme: str = "http"):
        self.registry = registry
        self.session = session
        self.base = f"{scheme}://127.0.0.1:{registry.server.http_port}"

    async def call(self, method: str, path: str, body=None, token: str = "", raw=None,
                   headers=None, **params):
        """(HTTP status, decoded JSON body or text)."""
        headers = dict(headers or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        async with self.session.request(method, self.base + path, data=data, headers=headers,
                                        params=params or None) as response:
            text = await response.text()
            if response.content_type == "application/json":
                return response.status, json.loads(text)
            return response.status, text

    def events(self, path: str = "/v1/watch", headers=None, **params) -> "EventStream":
        return EventStream(self, path, headers or {}, params)


class EventStream:
    """Reads a text/event-stream response event by event."""

    def __init__(self, http: Http, path: str, headers: dict, params: dict):
        self.http, self.path, self.headers, self.params = http, path, headers, params
        self.response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> "EventStream":
        self.response = await self.http.session.get(self.http.base + self.path,
                                                    headers=self.headers, params=self.params)
        return self

    async def __aexit__(self, *exc) -> None:
        self.response.close()

    async def next(self, timeout: float = 10.0) -> dict:
        """{"id": ..., "event": ..., "data": decoded JSON}; {} at the end of the stream."""
        fields: dict = {}
        while True:
            line = await asyncio.wait_for(self.response.content.readline(), timeout)
            if not line:
                return {}
            line = line.decode().rstrip("\n")
            if not line:
                if "data" in fields:
                    return fields
                fields = {}
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            fields[key] = json.loads(value) if key == "data" else value

    async def take(self, count: int, skip=("PROGRESS",)) -> list[dict]:
        got = []
        while len(got) < count:
            item = await self.next()
            if not item:
                break
            if item.get("data", {}).get("type") not in skip:
                got.append(item)
        return got


@asynccontextmanager
async def running_http(kind: str, **overrides):
    proc = RedisProcess() if kind == "redis" else None
    if proc:
        proc.start()
    try:
        async with running_registry(kind, proc, metrics_port=FREE_PORT, **overrides) as reg:
            async with aiohttp.ClientSession() as session:
                yield Http(reg, session)
    finally:
        if proc:
            proc.cleanup()


@asynccontextmanager
async def running_secured_http(directory):
    """On Redis with test_auth's tokens (written into `directory`); alpha/a1 registered by
    the agent-a token."""
    tokens = directory / "tokens.json"
    tokens.write_text(json.dumps(tokens_document()))
    async with running_http("redis", tokens_file=str(tokens)) as http:
        await http.registry.stub.Register(pb.RegisterRequest(
            agent_type=pb.WORKER, namespace="alpha", agent_id="a1"), metadata=bearer("agent-a"))
        yield http
