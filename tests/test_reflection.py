"""gRPC server reflection (what `grpcurl list` and `describe` use), on by default, off with
GRPC_REFLECTION=false. grpcurl is not installed here: the tests use grpcio-reflection's client,
which speaks the same reflection service."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import \
    ProtoReflectionDescriptorDatabase


def describe(address: str) -> tuple[list[str], list[str]]:
    """(services listed, methods of service_registry.ServiceRegistry), like grpcurl list and
    grpcurl describe. A blocking client: run in a thread, the server shares the test's loop."""
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = list(database.get_services())
        service = DescriptorPool(database).FindServiceByName("service_registry.ServiceRegistry")
        return services, [m.name for m in service.methods]


async def test_reflection_lists_and_describes_the_services(registry):
    services, methods = await asyncio.to_thread(describe, registry.address)
    assert {"service_registry.ServiceRegistry", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= set(services)
    assert {"Register", "Heartbeat", "WatchAgents", "HeartbeatStream"} <= set(methods)


@pytest.mark.settings(grpc_reflection=False)
async def test_reflection_can_be_turned_off(registry):
    with pytest.raises(grpc.RpcError) as info:
        await asyncio.to_thread(describe, registry.address)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_setting_reads_its_environment_variable():
    from server.config import load
    assert load(environ={}).grpc_reflection is True
    assert load(environ={"GRPC_REFLECTION": "off"}).grpc_reflection is False
