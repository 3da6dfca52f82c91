"""The benchmark run: profiles, the deployment under test, measurement windows, and the order
of scenarios. `service-registry bench` (benchmarks/cli.py) is the entry point."""
from __future__ import annotations

import asyncio
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import click
import grpc
import redis.asyncio as aioredis
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc

from server.config import Settings
from server.store import Store
from server.testing import RedisServer

from . import env, h2load, loadgen
from .stats import Result

OUT_DIR = Path(__file__).resolve().parent / "out"


@dataclass(frozen=True)
class Profile:
    name: str
    duration: float              # measured seconds of each throughput scenario
    warmup: float                # seconds before measuring
    register_agents: int         # register storm size
    hb_agents: int               # agents the heartbeat scenarios keep alive
    batch_size: int              # heartbeats per HeartbeatBatch call
    stream_messages: int         # heartbeats per stream (h2load posts them in one body)
    stream_agents: int           # concurrent keep-alive streams per loadgen process (Python)
    fleets: tuple                # Discover fleet sizes
    discover_duration: float
    redis_probe_calls: int       # sequential Discover calls whose Redis time SLOWLOG records
    mixed_duration: float
    mixed_discover_rate: float   # Discover calls/s of the mixed scenario
    watchers: int
    watch_events: int
    watch_rate: float            # writes/s while watchers listen
    expiry_agents: int
    expiry_timeout: float        # heartbeat timeout of the expiry scenario's server (seconds)
    expiry_dead: int             # expiry.among_live: agents that stop heartbeating ...
    expiry_live: int             # ... among this many with long leases
    memory_agents: int
    redis_bench_requests: int    # redis-benchmark -n for the -P 16 run
    h2_clients: int = 16         # h2load connections (several: SO_REUSEPORT spreads
    h2_streams: int = 4          #   connections, not calls); concurrent streams on each
    concurrency: int = 32        # Python closed-loop callers per loadgen process
    batch_callers: int = 4       # concurrent HeartbeatBatch calls per loadgen process
    channels: int = 4            # gRPC connections per loadgen process


PROFILES = {
    "quick": Profile("quick", duration=3.0, warmup=1.0, register_agents=2000, hb_agents=1000,
                     batch_size=500, stream_messages=200, stream_agents=64, fleets=(1000, 10000),
                     discover_duration=1.0, redis_probe_calls=40, mixed_duration=4.0,
                     mixed_discover_rate=100.0, watchers=1000, watch_events=15, watch_rate=10.0,
                     expiry_agents=1000, expiry_timeout=2.0, expiry_dead=100,
                     expiry_live=20000, memory_agents=5000,
                     redis_bench_requests=100_000),
    "full": Profile("full", duration=10.0, warmup=2.0, register_agents=20000, hb_agents=2000,
                    batch_size=500, stream_messages=200, stream_agents=64,
                    fleets=(1000, 10000, 100000), discover_duration=5.0, redis_probe_calls=300,
                    mixed_duration=10.0, mixed_discover_rate=100.0, watchers=1000,
                    watch_events=100, watch_rate=10.0, expiry_agents=10000, expiry_timeout=3.0,
                    expiry_dead=100, expiry_live=100000, memory_agents=20000,
                    redis_bench_requests=500_000),
    # For the smoke test: every scenario runs, nothing is measured seriously.
    "tiny": Profile("tiny", duration=0.4, warmup=0.1, register_agents=40, hb_agents=20,
                    batch_size=10, stream_messages=5, stream_agents=2, fleets=(200,),
                    discover_duration=0.3, redis_probe_calls=5, mixed_duration=0.4,
                    mixed_discover_rate=20.0, watchers=4, watch_events=3, watch_rate=20.0,
                    expiry_agents=20, expiry_timeout=0.5, expiry_dead=5,
                    expiry_live=50, memory_agents=100,
                    redis_bench_requests=2000, h2_clients=1, h2_streams=2, concurrency=2,
                    batch_callers=1, channels=1),
}

SCENARIOS = ("ceilings", "register", "heartbeat", "keepalive", "memory", "discover", "balanced",
             "mixed", "watch", "expiry", "http", "cluster")
# Run only when named (`--scenarios failover`): it starts a Sentinel set of its own and kills
# its primary (benchmarks/failover.py).
OPT_IN = ("failover",)


@dataclass
class Options:
    profile: Profile
    addr: str = ""                 # remote registry; empty: start one
    redis_url: str = ""            # Redis of the remote deployment (Redis-side measurements)
    echo_addr: str = ""            # remote echo server; empty: start one here
    server_procs: int = 2
    loadgen_procs: int = 2
    use_h2load: bool = True
    install_tools: bool = True
    scenarios: tuple = SCENARIOS
    out_dir: Path | None = None
    chart: bool = True
    command: str = ""


class Bench:
    """Everything a scenario needs: the addresses, Redis, the load generator pool, and
    `window()` to run a measured piece of work with a progress bar and CPU meters."""

    def __init__(self, options: Options):
        self.options = options
        self.profile = options.profile
        self.results: list[Result] = []
        self.notes: list[str] = []
        self.redis_server: RedisServer | None = None
        self.servers: env.ServerGroup | None = None
        self.echo: env.ServerGroup | None = None
        self.extra_groups: list[env.ServerGroup] = []
        self.redis: aioredis.Redis | None = None
        self.redis_store: Store | None = None
        self.redis_url = options.redis_url
        self.redis_node_url = options.redis_url   # redis:// of the node redis-benchmark drives
        self.addr = options.addr
        self.echo_addr = options.echo_addr
        self.pool: loadgen.Pool | None = None
        self.channel: grpc.aio.Channel | None = None
        self.stub: pb_grpc.ServiceRegistryStub | None = None
        self.h2load = False
        self.run_id = datetime.datetime.now().strftime("%H%M%S")
        self.namespaces: list[str] = []   # created on a remote deployment: cleaned up at the end

    @property
    def local(self) -> bool:
        return self.servers is not None

    def log(self, message: str) -> None:
        click.echo(message, err=True)

    def namespace(self, purpose: str) -> str:
        ns = f"bench-{purpose}-{self.run_id}"
        self.namespaces.append(ns)
        return ns

    # -- set up and tear down ---------------------------------------------------------------
    async def start(self) -> None:
        o = self.options
        if o.use_h2load:
            self.h2load = h2load.available() or (o.install_tools and h2load.install(self.log))
            if not self.h2load and not o.install_tools:
                self.log("h2load not found (apt-get install nghttp2-client): using Python "
                         "load generators for unary calls")
        if not self.addr:
            if not self.redis_url:
                self.redis_server = RedisServer()
                self.redis_server.start()
                self.redis_url = self.redis_server.url
                self.log(f"redis-server {self.redis_url} (private, discarded at the end)")
            self.servers = await env.start_group("registry", o.server_procs, self.redis_url)
            self.addr = self.servers.address
            self.log(f"registry: {o.server_procs} `service-registry serve` process(es) on "
                     f"{self.addr}")
        if self.redis_url and Settings(redis_url=self.redis_url).redis_target.kind == "cluster":
            self.log("Redis Cluster: the Redis-side measurements (memory, Redis time per "
                     "Discover, redis-benchmark) need a one-node --redis-url; skipped")
        elif self.redis_url:
            # the server's own client for any other REDIS_URL form (a Sentinel URL: the primary)
            self.redis_store = Store(Settings(redis_url=self.redis_url))
            self.redis = self.redis_store.client(60)
            await self.redis.ping()
            self.redis_node_url = await self.redis_store.node_url()
        if not self.echo_addr and "ceilings" in o.scenarios:
            self.echo = await env.start_group("echo", o.server_procs)
            self.echo_addr = self.echo.address
            self.log(f"echo server (gRPC ceiling): {o.server_procs} process(es) on "
                     f"{self.echo_addr}")
        self.channel = grpc.aio.insecure_channel(self.addr, options=loadgen.CHANNEL_OPTIONS)
        self.stub = pb_grpc.ServiceRegistryStub(self.channel)
        self.pool = loadgen.Pool(o.loadgen_procs)
        await self.pool.warm_up()

    async def stop(self) -> None:
        if self.channel is not None and not self.local:
            await self._cleanup_remote()
        if self.channel is not None:
            await self.channel.close()
        if self.pool is not None:
            self.pool.close()
        for group in (self.servers, self.echo, *self.extra_groups):
            if group is not None:
                group.stop()
        if self.redis is not None:
            await self.redis.aclose()
        if self.redis_store is not None:
            await self.redis_store.close()
        if self.redis_server is not None:
            self.redis_server.cleanup()

    async def _cleanup_remote(self) -> None:
        """Evicts the agents this run registered on a remote deployment."""
        for ns in self.namespaces:
            try:
                token = ""
                while True:
                    page = await self.stub.ListAgents(pb.ListAgentsRequest(
                        namespace=ns, page_size=1000, page_token=token), timeout=30)
                    ids = [a.agent_id for a in page.agents]
                    if ids:
                        await self.stub.EvictAgents(pb.EvictRequest(
                            agent_ids=ids, reason="benchmark cleanup"), timeout=30)
                    token = page.next_page_token
                    if not token:
                        break
            except grpc.aio.AioRpcError as exc:
                self.log(f"cleanup of namespace {ns} failed: {exc.details()}")

    async def extra_server(self, **env_vars) -> env.ServerGroup:
        """One more local registry process (its own port, same Redis), e.g. with a short
        heartbeat timeout."""
        group = await env.start_group("registry", 1, self.redis_url, **env_vars)
        self.extra_groups.append(group)
        return group

    # -- measuring --------------------------------------------------------------------------
    async def window(self, label: str, seconds: float, work, *, warmup: float = 0.0,
                     server_pids=None, count_total: int | None = None):
        """Awaits `work` while a progress bar runs for `seconds` (or up to `count_total` ops
        from the loadgen counters); meters the CPU of `server_pids` (default: the registry
        processes), of Redis and of the machine from `warmup` on. Returns (value, cpu)."""
        pids = self.servers.pids if server_pids is None and self.servers else (server_pids or [])
        cpu = {}

        async def meter():
            await asyncio.sleep(warmup)
            meter = env.CpuMeter(pids)
            redis0 = await self.redis_cpu()
            t0 = time.monotonic()
            try:
                await asyncio.Event().wait()
            finally:
                procs, machine = meter.stop()
                redis1 = await self.redis_cpu() if redis0 is not None else None
                dt = max(time.monotonic() - t0, 1e-6)
                cpu.update(server=procs if pids else None, machine=machine,
                           redis=(redis1 - redis0) / dt if redis1 is not None else None)

        meter_task = asyncio.ensure_future(meter())
        task = asyncio.ensure_future(work)
        ticks = 200
        total = warmup + seconds
        start = time.monotonic()
        with click.progressbar(length=ticks, label=f"  {label:<34}", file=sys.stderr,
                               width=24, show_eta=False, show_percent=False,
                               item_show_func=lambda _: self._progress_text()) as bar:
            done_ticks = 0
            while not task.done():
                await asyncio.wait([task], timeout=0.2)
                if count_total:
                    frac = min(self.pool.progress() / max(count_total, 1), 1.0)
                else:
                    frac = min((time.monotonic() - start) / max(total, 1e-6), 1.0)
                step = int(frac * ticks) - done_ticks
                if step > 0:
                    bar.update(step, None)
                    done_ticks += step
            bar.update(ticks - done_ticks, None)
        if not meter_task.done():
            meter_task.cancel()
        await asyncio.gather(meter_task, return_exceptions=True)
        return task.result(), cpu

    def _progress_text(self) -> str:
        n = self.pool.progress() if self.pool else 0
        return f"{n:,} ops" if n else ""

    async def redis_cpu(self) -> float | None:
        if self.redis is None:
            return None
        try:
            info = await self.redis.info("cpu")
            return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        except Exception:  # noqa: BLE001 - CPU is best effort (managed Redis may refuse INFO)
            return None

    async def server_counts(self, counter: str) -> dict[str, float] | None:
        """Sum over the local registry processes of a Prometheus counter by outcome, e.g.
        service_registry_heartbeat_total; None for a remote deployment."""
        if not self.servers or not self.servers.metrics_ports:
            return None
        loop = asyncio.get_running_loop()

        def fetch(port: int) -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read().decode()

        totals: dict[str, float] = {}
        for port in self.servers.metrics_ports:
            try:
                text = await loop.run_in_executor(None, fetch, port)
            except OSError:
                return None
            for line in text.splitlines():
                if line.startswith(counter + "{"):
                    labels, _, value = line.rpartition(" ")
                    outcome = labels.split('outcome="', 1)[1].split('"', 1)[0]
                    totals[outcome] = totals.get(outcome, 0.0) + float(value)
        return totals

    def add(self, result: Result) -> Result:
        self.results.append(result)
        return result

    def loadgen_jobs(self, kind: str, per_process: dict, **common) -> list[dict]:
        start_at = time.time() + 0.5
        return [{"kind": kind, "slot": i, "address": self.addr, "start_at": start_at,
                 "warmup": self.profile.warmup, "duration": self.profile.duration,
                 "channels": self.profile.channels, "concurrency": self.profile.concurrency,
                 **common, **per_process} for i in range(self.options.loadgen_procs)]


def machine_info(bench: Bench) -> dict:
    def version(cmd) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return ""

    import google.protobuf
    import psutil
    import redis as redis_py
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import uvloop
        uvloop_version = uvloop.__version__
    except ImportError:
        uvloop_version = ""
    try:
        import hiredis
        hiredis_version = hiredis.__version__
    except ImportError:
        hiredis_version = ""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "os": platform.platform(),
        "cpu": cpu_model,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "redis_py": redis_py.__version__,
        "hiredis": hiredis_version,
        "uvloop": uvloop_version,
        "redis_server": version(["redis-server", "--version"]) if shutil.which("redis-server")
        else "",
        "h2load": version(["h2load", "--version"]) if bench.h2load else "not used",
        "profile": asdict(bench.profile),
        "server_processes": bench.options.server_procs if bench.local else "remote",
        "loadgen_processes": bench.options.loadgen_procs,
        "registry": bench.addr + (" (started by the suite)" if bench.local else " (remote)"),
        "command": bench.options.command,
    }


async def run(options: Options) -> dict:
    """Runs the suite; returns the report document (also written as JSON and PNG)."""
    from . import failover, report, scenarios

    out_dir = options.out_dir or OUT_DIR / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(options)
    started = time.monotonic()
    try:
        await bench.start()
        meta = machine_info(bench)
        bench.log(f"profile {options.profile.name}: scenarios {', '.join(options.scenarios)}; "
                  f"load average {meta['load_average_at_start']}")
        for name in SCENARIOS + OPT_IN:
            if name in options.scenarios:
                bench.log(f"[{name}]")
                await getattr(failover if name in OPT_IN else scenarios, name)(bench)
    finally:
        await bench.stop()
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    meta["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    doc = report.build(meta, bench)
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(doc, indent=2, default=_json_default))
    doc["json_path"] = str(json_path)
    if options.chart:
        doc["chart_path"] = str(report.chart(doc, out_dir / "results.png"))
    return doc


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def with_overrides(profile: Profile, **overrides) -> Profile:
    return replace(profile, **{k: v for k, v in overrides.items() if v is not None})
