"""The contract README's integration-test convention: tests marked `integration` run against
the server at SERVICE_REGISTRY_HOST/SERVICE_REGISTRY_PORT when both are set, instead of one the
fixtures start.

    SERVICE_REGISTRY_HOST=localhost SERVICE_REGISTRY_PORT=50051 pytest -m integration

Such tests use only the gRPC API (no Redis, no server object) and their own namespaces.
"""
from __future__ import annotations

import os

import grpc
import pytest
from neural_hive_integration.clients import ServiceRegistryClient
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc


def external_address() -> tuple[str, int] | None:
    host = os.environ.get("SERVICE_REGISTRY_HOST")
    port = os.environ.get("SERVICE_REGISTRY_PORT")
    return (host, int(port)) if host and port else None


class ExternalRegistry:
    """What the `registry` fixture yields for an integration test on an external server."""
    kind = "external"
    embedded = False
    redis = None
    server = None

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.address = f"{host}:{port}"
        self.channel = grpc.aio.insecure_channel(self.address)
        self.stub = pb_grpc.ServiceRegistryStub(self.channel)
        self.client = self.new_client(retries=2, backoff=0.05)

    def new_client(self, **kwargs) -> ServiceRegistryClient:
        return ServiceRegistryClient(self.host, self.port, **kwargs)

    async def close(self) -> None:
        await self.client.close()
        await self.channel.close()


def external_registry(request) -> ExternalRegistry | None:
    """An ExternalRegistry for an `integration` test when the variables are set (the test runs
    once: its embedded-store variant is skipped), else None."""
    address = external_address()
    if address is None or request.node.get_closest_marker("integration") is None:
        return None
    if getattr(request, "param", None) == "embedded":
        pytest.skip("integration run: once, against the external server")
    return ExternalRegistry(*address)
