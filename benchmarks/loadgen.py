"""Python load generators, run in worker processes (several, so the client side is not one
GIL-bound process): closed-loop unary calls, keep-alive heartbeat streams, heartbeat batches,
open-loop calls at a fixed rate, registrations and watchers.

Requests are serialized once up front and sent as bytes, replies are parsed only as far as
errors need, so each call costs the client as little as grpc.aio allows. Every job starts
measuring at the same wall-clock moment (`start_at + warmup`) in every process, and reports
its own CPU over the window. Jobs are plain dicts so they pickle to the workers.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import time
from array import array

import grpc

SERVICE = "/service_registry.ServiceRegistry/"
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1),  # one connection per channel
                   ("grpc.max_receive_message_length", 64 << 20)]

_counters = None  # shared progress counters: [slot] ops done, [slot + SLOTS] watchers ready
SLOTS = 64


def _init(counters) -> None:
    global _counters
    _counters = counters


def _bump(slot: int, n: int = 1) -> None:
    if _counters is not None:
        _counters[slot] += n


def run_job(job: dict) -> dict:
    """Entry point in a worker process."""
    try:
        import uvloop
        return uvloop.run(_JOBS[job["kind"]](job))
    except ImportError:
        return asyncio.run(_JOBS[job["kind"]](job))


class Pool:
    """Worker processes for the Python load generators, spawned once per run."""

    def __init__(self, processes: int):
        ctx = multiprocessing.get_context("spawn")
        self.processes = processes
        self.counters = ctx.Array("q", 2 * SLOTS, lock=False)
        self.executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=processes, mp_context=ctx, initializer=_init,
            initargs=(self.counters,))

    async def warm_up(self) -> None:
        """Starts every worker (imports take a second) before anything is timed."""
        await self.run([{"kind": "sleep", "seconds": 0.3, "slot": i}
                        for i in range(self.processes)])

    def reset_counters(self) -> None:
        for i in range(2 * SLOTS):
            self.counters[i] = 0

    def progress(self) -> int:
        return sum(self.counters[:SLOTS])

    def ready(self) -> int:
        return sum(self.counters[SLOTS:])

    async def run(self, jobs: list[dict]) -> list[dict]:
        self.reset_counters()
        futures = [asyncio.wrap_future(self.executor.submit(run_job, job)) for job in jobs]
        return await asyncio.gather(*futures)

    def submit(self, jobs: list[dict]) -> list[asyncio.Future]:
        self.reset_counters()
        return [asyncio.wrap_future(self.executor.submit(run_job, job)) for job in jobs]

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def _channels(job: dict) -> list[grpc.aio.Channel]:
    return [grpc.aio.insecure_channel(job["address"], options=CHANNEL_OPTIONS)
            for _ in range(max(1, job.get("channels", 1)))]


class Window:
    """The measured window [start_at + warmup, + duration), the process CPU over it, and the
    samples taken inside it."""

    def __init__(self, job: dict):
        self.begin = job["start_at"] + job.get("warmup", 0.0)
        self.end = self.begin + job["duration"]
        self.latencies = array("d")
        self.ops = 0
        self.errors = 0
        self.cpu0 = None
        self.cpu1 = None
        self.first_error = ""

    async def wait_start(self, job: dict) -> None:
        delay = job["start_at"] - time.time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def cpu_timer(self) -> None:
        delay = self.begin - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        self.cpu0 = time.process_time()
        delay = self.end - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        self.cpu1 = time.process_time()

    def record(self, started_wall: float, latency_s: float, ops: int, errors: int,
               slot: int) -> None:
        if self.begin <= started_wall < self.end:
            self.latencies.append(latency_s * 1000.0)
            self.ops += ops
            self.errors += errors
        _bump(slot, ops)

    def result(self, **extra) -> dict:
        cpu = (self.cpu1 - self.cpu0) if self.cpu0 is not None and self.cpu1 is not None else 0.0
        return {"ops": self.ops, "errors": self.errors, "seconds": self.end - self.begin,
                "latencies": self.latencies, "cpu_seconds": cpu,
                "first_error": self.first_error, **extra}


async def _job_sleep(job: dict) -> dict:
    await asyncio.sleep(job["seconds"])
    return {}


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return repr(exc)


async def _job_unary(job: dict) -> dict:
    """Closed loop: `concurrency` callers, each sends the next request when the last replied.
    `items` ops per call (1, or the batch size for HeartbeatBatch). For HeartbeatBatch the
    reply is parsed and failed items count as errors."""
    from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

    channels = _channels(job)
    methods = [ch.unary_unary(SERVICE + job["method"]) for ch in channels]
    requests = job["requests"]
    items = job.get("items", 1)
    check_batch = job["method"] == "HeartbeatBatch"
    window = Window(job)
    slot = job["slot"]
    timer = asyncio.ensure_future(window.cpu_timer())
    await window.wait_start(job)

    async def caller(i: int) -> None:
        call = methods[i % len(methods)]
        n = i
        while True:
            started = time.time()
            if started >= window.end:
                return
            t0 = time.perf_counter()
            errors = 0
            try:
                reply = await call(requests[n % len(requests)], timeout=30)
                if check_batch:
                    results = pb.HeartbeatBatchResponse.FromString(reply).results
                    errors = sum(1 for r in results if r.error_code)
                    if errors and not window.first_error:
                        window.first_error = next(r.error_message for r in results
                                                  if r.error_code)
            except Exception as exc:  # noqa: BLE001 - counted
                errors = items
                if not window.first_error:
                    window.first_error = _error_text(exc)
            window.record(started, time.perf_counter() - t0, items - errors, errors, slot)
            n += job.get("stride", 1)

    await asyncio.gather(*(caller(i) for i in range(job["concurrency"])))
    await timer
    for ch in channels:
        await ch.close()
    return window.result()


async def _job_rate(job: dict) -> dict:
    """Open loop: calls started at a fixed rate whatever the replies do; latency counts from
    the scheduled start, so a stall shows in the percentiles (no coordinated omission)."""
    channels = _channels(job)
    methods = [ch.unary_unary(SERVICE + job["method"]) for ch in channels]
    requests = job["requests"]
    window = Window(job)
    slot = job["slot"]
    timer = asyncio.ensure_future(window.cpu_timer())
    await window.wait_start(job)
    interval = 1.0 / job["rate"]
    loop = asyncio.get_running_loop()
    pending = set()

    async def one(n: int, scheduled_wall: float, scheduled_perf: float) -> None:
        errors = 0
        try:
            await methods[n % len(methods)](requests[n % len(requests)], timeout=30)
        except Exception as exc:  # noqa: BLE001
            errors = 1
            if not window.first_error:
                window.first_error = _error_text(exc)
        window.record(scheduled_wall, time.perf_counter() - scheduled_perf, 1 - errors, errors,
                      slot)

    start_wall, start_perf = time.time(), time.perf_counter()
    n = 0
    while True:
        scheduled_perf = start_perf + n * interval
        scheduled_wall = start_wall + n * interval
        if scheduled_wall >= window.end:
            break
        delay = scheduled_perf - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(one(n, scheduled_wall, scheduled_perf))
        pending.add(task)
        task.add_done_callback(pending.discard)
        n += 1
    if pending:
        await asyncio.wait(pending, timeout=30)
    await timer
    for ch in channels:
        await ch.close()
    return window.result()


async def _job_stream(job: dict) -> dict:
    """Keep-alive heartbeat streams: `concurrency` streams, each sends one heartbeat and waits
    for its reply before the next (as an agent does, only without the pause)."""
    from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

    channels = _channels(job)
    methods = [ch.stream_stream(SERVICE + "HeartbeatStream") for ch in channels]
    requests = job["requests"]
    window = Window(job)
    slot = job["slot"]
    timer = asyncio.ensure_future(window.cpu_timer())
    await window.wait_start(job)
    reopened = 0

    async def agent(i: int) -> None:
        nonlocal reopened
        request = requests[i % len(requests)]
        while time.time() < window.end:
            call = methods[i % len(methods)](timeout=job["duration"] + job.get("warmup", 0)
                                             + 60)
            try:
                while True:
                    started = time.time()
                    if started >= window.end:
                        break
                    t0 = time.perf_counter()
                    await call.write(request)
                    reply = await call.read()
                    if reply is grpc.aio.EOF:
                        raise RuntimeError("stream ended by the server")
                    failed = pb.HeartbeatResponse.FromString(reply).error_code != 0
                    if failed and not window.first_error:
                        window.first_error = pb.HeartbeatResponse.FromString(reply).error_message
                    window.record(started, time.perf_counter() - t0, 0 if failed else 1,
                                  1 if failed else 0, slot)
                await call.done_writing()
                while await call.read() is not grpc.aio.EOF:
                    pass
                return
            except Exception as exc:  # noqa: BLE001 - counted, the stream is opened again
                if time.time() < window.end and window.begin <= time.time():
                    window.errors += 1
                if not window.first_error:
                    window.first_error = _error_text(exc)
                reopened += 1
                call.cancel()
                await asyncio.sleep(0.05)

    await asyncio.gather(*(agent(i) for i in range(job["concurrency"])))
    await timer
    for ch in channels:
        await ch.close()
    return window.result(reopened=reopened)


async def _job_register_all(job: dict) -> dict:
    """Sends every request once (e.g. registrations of a fleet), `concurrency` at a time."""
    channels = _channels(job)
    methods = [ch.unary_unary(SERVICE + job["method"]) for ch in channels]
    requests = job["requests"]
    slot = job["slot"]
    latencies = array("d")
    errors = 0
    first_error = ""
    replies = []
    keep = job.get("keep_replies", False)
    queue = iter(range(len(requests)))
    cpu0, t_start = time.process_time(), time.perf_counter()

    async def caller(i: int) -> None:
        nonlocal errors, first_error
        call = methods[i % len(methods)]
        for n in queue:
            t0 = time.perf_counter()
            try:
                reply = await call(requests[n], timeout=30)
                if keep:
                    replies.append(reply)
            except Exception as exc:  # noqa: BLE001
                errors += 1
                first_error = first_error or _error_text(exc)
            latencies.append((time.perf_counter() - t0) * 1000.0)
            _bump(slot)

    await asyncio.gather(*(caller(i) for i in range(job["concurrency"])))
    seconds = time.perf_counter() - t_start
    for ch in channels:
        await ch.close()
    return {"ops": len(requests) - errors, "errors": errors, "seconds": seconds,
            "latencies": latencies, "cpu_seconds": time.process_time() - cpu0,
            "first_error": first_error, "replies": replies}


async def _job_watch(job: dict) -> dict:
    """`watchers` WatchAgents streams on one namespace. Each counts itself ready at
    SNAPSHOT_END, then takes REGISTERED events until it has `expect` of them (or `timeout`);
    the delay of each is now - metadata["t"], the writer's clock when it sent the write."""
    from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

    channels = [grpc.aio.insecure_channel(job["address"], options=CHANNEL_OPTIONS)
                for _ in range(max(1, job.get("channels", 1)))]
    stubs = [ch.unary_stream(SERVICE + "WatchAgents",
                             request_serializer=pb.WatchRequest.SerializeToString,
                             response_deserializer=pb.WatchEvent.FromString) for ch in channels]
    slot = job["slot"]
    expect = job["expect"]
    latencies = array("d")
    counts = []
    errors = []
    deadline = time.time() + job["timeout"]
    cpu0 = time.process_time()

    async def watcher(i: int) -> None:
        got = 0
        call = stubs[i % len(stubs)](pb.WatchRequest(namespace=job["namespace"]))
        try:
            async for event in call:
                if event.type == pb.SNAPSHOT_END:
                    _bump(slot + SLOTS)
                elif event.type == pb.REGISTERED and "t" in event.agent.metadata:
                    latencies.append((time.time() - float(event.agent.metadata["t"])) * 1000.0)
                    got += 1
                    _bump(slot)
                    if got >= expect:
                        break
        except Exception as exc:  # noqa: BLE001
            errors.append(_error_text(exc))
        finally:
            call.cancel()
            counts.append(got)

    tasks = [asyncio.ensure_future(watcher(i)) for i in range(job["watchers"])]
    await asyncio.wait(tasks, timeout=max(deadline - time.time(), 0.1))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close()
    return {"latencies": latencies, "counts": counts, "errors": errors,
            "cpu_seconds": time.process_time() - cpu0}


_JOBS = {"sleep": _job_sleep, "unary": _job_unary, "rate": _job_rate, "stream": _job_stream,
         "register_all": _job_register_all, "watch": _job_watch}
