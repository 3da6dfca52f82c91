"""The gRPC ceiling: a trivial grpc.aio server with the registry's heartbeat methods.

Each method does the least a server can: Heartbeat answers at once, HeartbeatStream answers
every message, HeartbeatBatch answers every item; no Redis. It runs with the registry's own
server options and event loop (uvloop), so `registry calls/s / echo calls/s` is the share of
gRPC's capacity the registry keeps. Run as `python -m benchmarks.echo --port N` (several
processes may share the port: SO_REUSEPORT).
"""
from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc


class EchoService(pb_grpc.ServiceRegistryServicer):
    async def Heartbeat(self, request, context):
        return pb.HeartbeatResponse(agent_id=request.agent_id, status=pb.HEALTHY)

    async def HeartbeatStream(self, request_iterator, context):
        async for request in request_iterator:
            yield pb.HeartbeatResponse(agent_id=request.agent_id, status=pb.HEALTHY)

    async def HeartbeatBatch(self, request, context):
        return pb.HeartbeatBatchResponse(results=[
            pb.HeartbeatResponse(agent_id=hb.agent_id, status=pb.HEALTHY)
            for hb in request.heartbeats])


def server_options() -> list[tuple[str, object]]:
    """The registry's own grpc.aio server options (read from server/app.py's Server)."""
    import ast
    import inspect

    from server import app
    source = inspect.getsource(app.Server.__init__)
    for node in ast.walk(ast.parse(source.strip() if source.startswith(" ") else source)):
        if isinstance(node, ast.keyword) and node.arg == "options":
            try:
                return [tuple(item) for item in ast.literal_eval(node.value)]
            except ValueError:
                break
    return [("grpc.so_reuseport", 1)]


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server(options=server_options())
    pb_grpc.add_ServiceRegistryServicer_to_server(EchoService(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise SystemExit(f"echo: cannot listen on {host}:{port}")
    await server.start()
    print(f"echo serving on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.run(serve(args.host, args.port))
    except ImportError:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
