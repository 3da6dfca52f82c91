"""Draining under calls that keep arriving (issue 11, defect 7): callers that send new calls
all through the drain (not only until their first refusal) get OK or UNAVAILABLE, never
CANCELLED, and the process exits within SHUTDOWN_GRACE + 1 s."""
from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import grpc
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc

GRACE = 1.0
CALLERS = 24
ROUNDS = 3


async def call_until_exit(address: str, proc, codes: Counter) -> None:
    """New Heartbeat calls back to back, each on a fresh channel now and then (new clients
    keep coming), until the process has exited."""
    request = pb.HeartbeatRequest(agent_id="drain/a")
    while True:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.ServiceRegistryStub(channel)
            for _ in range(20):
                exited = proc.poll() is not None
                try:
                    await stub.Heartbeat(request, timeout=5)
                    codes[grpc.StatusCode.OK] += 1
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code()] += 1
                if exited:
                    return


async def test_calls_arriving_through_the_drain_get_unavailable_never_cancelled(
        redis_proc, server_processes):
    codes: Counter = Counter()
    for _ in range(ROUNDS):  # the race is narrow: several drains
        server = await server_processes(redis_proc.url, SHUTDOWN_GRACE=GRACE)
        async with grpc.aio.insecure_channel(server.address) as channel:
            await pb_grpc.ServiceRegistryStub(channel).Register(pb.RegisterRequest(
                agent_type=pb.WORKER, namespace="drain", agent_id="a"))
        callers = [asyncio.create_task(call_until_exit(server.address, server.proc, codes))
                   for _ in range(CALLERS)]
        while codes[grpc.StatusCode.OK] < CALLERS * 5:
            await asyncio.sleep(0.01)  # load is flowing (a count to reach, no event to await)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(server.proc.wait, 30)
        took = time.monotonic() - started
        await asyncio.wait_for(asyncio.gather(*callers), 30)
        assert code == 0, server.output()[-2000:]
        assert took <= GRACE + 1.0, (took, server.output()[-2000:])
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
