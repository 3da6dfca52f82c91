"""Server CPU per batched heartbeat, in process: the servicer's HeartbeatBatch called directly
(no gRPC transport) by 4 concurrent callers with 500-beat batches for 2,000 agents, on a private
redis-server; prints the best of 5 rounds. Self-contained, so the same file runs in an older
checkout for a before/after pair:

    .venv/bin/python benchmarks/batch_cpu.py LABEL     # from the checkout's root
"""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, ".")

from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

from server.app import Server
from server.config import Settings

AGENTS, BATCH, CALLERS, CALLS, ROUNDS = 2000, 500, 4, 40, 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Context:
    """What the handlers read of a gRPC context with authentication off."""

    def invocation_metadata(self):
        return ()

    def peer(self):
        return "ipv4:127.0.0.1:1"


async def main(label: str) -> None:
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", tempfile.mkdtemp()],
                             stdout=subprocess.DEVNULL)
    try:
        settings = Settings(host="127.0.0.1", port=free_port(), metrics_port=0,
                            redis_url=f"redis://127.0.0.1:{port}/0", heartbeat_timeout=3600)
        server = Server(settings)
        for _ in range(100):  # redis-server takes a moment to listen
            if await server.store.ping():
                break
            await asyncio.sleep(0.05)
        await server.start()
        service = server.service
        ids = [(await service.Register(pb.RegisterRequest(
            agent_type=pb.WORKER, capabilities=["py"], namespace="bench-hb",
            agent_id=f"hb{i:05d}"), Context())).agent_id for i in range(AGENTS)]
        telemetry = pb.AgentTelemetry(success_rate=0.98, avg_duration_ms=20.0,
                                      total_executions=100, failed_executions=2)
        batches = [pb.HeartbeatBatchRequest(heartbeats=[
            pb.HeartbeatRequest(agent_id=a, telemetry=telemetry) for a in ids[j:j + BATCH]])
            for j in range(0, AGENTS, BATCH)]

        async def caller(calls: int) -> None:
            for k in range(calls):
                await service.HeartbeatBatch(batches[k % len(batches)], Context())

        await asyncio.gather(*(caller(10) for _ in range(CALLERS)))  # warm-up
        best = float("inf")
        for _ in range(ROUNDS):
            cpu = time.process_time()
            await asyncio.gather(*(caller(CALLS) for _ in range(CALLERS)))
            best = min(best, (time.process_time() - cpu) / (CALLERS * CALLS * BATCH) * 1e6)
        print(f"{label}: server CPU {best:.2f} us per batched heartbeat (best of {ROUNDS})")
        await server.stop(grace=0.1)
    finally:
        redis.kill()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "this checkout"))
