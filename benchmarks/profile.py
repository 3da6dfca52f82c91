"""Where a registry process spends its time under load: py-spy samples one `service-registry
serve` process while h2load drives one method, then prints the split between the event-loop
thread and gRPC's poller thread and the heaviest Python functions (inclusive).

    .venv/bin/pip install py-spy
    python -m benchmarks.profile --method Heartbeat --seconds 8
    python -m benchmarks.profile --method HeartbeatStream --stream-messages 200

Native code (gRPC core, uvloop, protobuf) shows as time in `Runner.run` / `Thread.run`
themselves, since py-spy samples Python frames (--native is slow enough to distort).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc

from server.testing import RedisServer

from . import env, h2load
from .scenarios import TELEMETRY


def summarize(raw_path: str, top: int = 25) -> str:
    threads = collections.Counter()
    inclusive = collections.Counter()
    own = collections.Counter()
    total = 0
    with open(raw_path) as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            if not n.isdigit():
                continue
            count = int(n)
            total += count
            frames = stack.split(";")
            thread = "grpc poller thread" if any("Thread.run" in fr for fr in frames) \
                else "event loop thread"
            threads[thread] += count
            own[frames[-1].split(" (")[0]] += count
            for name in {fr.split(" (")[0] for fr in frames}:
                inclusive[name] += count
    lines = [f"samples: {total} (100% = one busy thread for the whole recording)"]
    lines += [f"  {name}: {100 * n / total:.1f}%" for name, n in threads.most_common()]
    lines.append("self time (Runner.run / Thread.run = native code: gRPC core, uvloop, upb):")
    lines += [f"  {100 * n / total:5.1f}% {name}" for name, n in own.most_common(8)]
    lines.append("inclusive, Python functions:")
    skip = {"<module>", "run", "Runner.run", "Thread.run", "Thread._bootstrap",
            "Thread._bootstrap_inner", "main", "serve", "Command.main", "Command.invoke",
            "Command.__call__", "Context.invoke", "Group.invoke"}
    shown = [(name, n) for name, n in inclusive.most_common() if name not in skip][:top]
    lines += [f"  {100 * n / total:5.1f}% {name}" for name, n in shown]
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="Heartbeat",
                        choices=("Heartbeat", "HeartbeatStream", "HeartbeatBatch"))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--stream-messages", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not shutil.which(spy) or not h2load.available():
        raise SystemExit("needs py-spy (pip install py-spy) and h2load (nghttp2-client)")
    redis = RedisServer()
    redis.start()
    group = None
    try:
        group = await env.start_group("registry", 1, redis.url)
        async with grpc.aio.insecure_channel(group.address) as channel:
            stub = pb_grpc.ServiceRegistryStub(channel)
            ids = [(await stub.Register(pb.RegisterRequest(agent_type=pb.WORKER,
                                                           namespace="profile"))).agent_id
                   for _ in range(max(1, args.batch_size))]
        hb = pb.HeartbeatRequest(agent_id=ids[0], telemetry=TELEMETRY)
        if args.method == "Heartbeat":
            body = h2load.grpc_frame(hb.SerializeToString())
        elif args.method == "HeartbeatStream":
            body = h2load.grpc_frame(hb.SerializeToString()) * args.stream_messages
        else:
            body = h2load.grpc_frame(pb.HeartbeatBatchRequest(heartbeats=[
                pb.HeartbeatRequest(agent_id=a, telemetry=TELEMETRY) for a in ids
            ]).SerializeToString())
        out = tempfile.NamedTemporaryFile(prefix="sr-pyspy-", suffix=".txt", delete=False).name
        load = subprocess.Popen(
            ["h2load", "-c", "16", "-m", "4", "-D", str(int(args.seconds + 3)),
             "-H", "content-type: application/grpc", "-H", "te: trailers",
             "-d", _write(body), f"http://{group.address}{h2load.SERVICE}{args.method}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        await asyncio.sleep(1.5)
        subprocess.run([spy, "record", "-p", str(group.pids[0]), "-d", str(int(args.seconds)),
                        "-r", str(args.rate), "-f", "raw", "-o", out, "--nonblocking"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        text = load.communicate()[0]
        rate = [line for line in text.splitlines() if "req/s," in line]
        print(f"{args.method}, 1 server process, h2load -c 16 -m 4: "
              f"{rate[0].strip() if rate else text[-300:]}")
        print(summarize(out))
        print(f"raw stacks: {out} (flamegraph.pl or speedscope can draw them)")
    finally:
        if group is not None:
            group.stop()
        redis.cleanup()


def _write(data: bytes) -> str:
    path = tempfile.NamedTemporaryFile(prefix="sr-h2body-", suffix=".bin", delete=False).name
    with open(path, "wb") as f:
        f.write(data)
    return path


if __name__ == "__main__":
    try:
        import uvloop
        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
