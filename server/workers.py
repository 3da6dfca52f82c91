"""`serve --workers N`: N server processes on one gRPC port, to use more than one core.

The processes share the port on purpose (SHARE_PORT, SO_REUSEPORT: the kernel spreads new
connections over them) and one Redis (each embedded store would be a registry of its own, so
REDIS_URL is required). Worker k serves metrics on METRICS_PORT + k. A worker that dies is
started again; SIGTERM or SIGINT is passed on to every worker once, and each drains as a single
server does (SHUTDOWN_GRACE).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import replace

from . import binding
from .config import ENVIRONMENT, Settings

log = logging.getLogger("service_registry")

RESTART_DELAY = 0.5        # first pause before starting a dead worker again; doubles ...
MAX_RESTART_DELAY = 30.0   # ... up to this while it keeps dying
STABLE_AFTER = 10.0        # a worker that ran this long starts the doubling afresh
EXIT_STARTUP = 2           # a worker's own start-up refusal (bad setting): the same for all


def metrics_port(settings: Settings, index: int) -> int:
    return settings.metrics_port + index if settings.metrics_port else 0


def worker_environment(settings: Settings, index: int) -> dict[str, str]:
    """The worker's settings, all passed as variables (flags were already applied)."""
    env = dict(os.environ)
    for name, var in ENVIRONMENT.items():
        value = getattr(settings, name)
        env[var] = str(value).lower() if isinstance(value, bool) else str(value)
    env["SHARE_PORT"] = "true"
    env["METRICS_PORT"] = str(metrics_port(settings, index))
    return env


def check(settings: Settings, count: int) -> None:
    if settings.embedded:
        raise binding.StartupError("--workers needs REDIS_URL: every worker must use the same "
                                   "store, and the embedded store lives in one process")
    for index in range(count):  # the port must be free of other servers, not of our workers
        binding.check(replace(settings, port=settings.port if index == 0 else 0,
                              metrics_port=metrics_port(settings, index), share_port=False))


async def supervise(settings: Settings, count: int) -> int:
    """Runs `count` workers until SIGTERM/SIGINT; returns the exit code."""
    check(settings, count)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    workers: dict[int, asyncio.subprocess.Process] = {}
    result = 0

    def terminate_all() -> None:
        for proc in workers.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)

    def stop(sig: signal.Signals) -> None:
        if not stopping.is_set():
            log.info("%s: stopping %d worker(s) (grace %ss)", sig.name, len(workers),
                     settings.shutdown_grace)
            stopping.set()
        else:  # passed on: a worker's second signal cancels its in-flight calls
            log.warning("%s again: workers cancel in-flight calls now", sig.name)
            terminate_all()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)

    async def keep(index: int) -> None:
        nonlocal result
        delay = RESTART_DELAY
        while not stopping.is_set():
            # a session of its own: a Ctrl-C in the terminal reaches the supervisor only,
            # which passes on one SIGTERM (a second signal would cut the drain short)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cli.main", "serve",
                env=worker_environment(settings, index), start_new_session=True)
            workers[index] = proc
            if stopping.is_set():  # the signal came while it was being started
                proc.send_signal(signal.SIGTERM)
            started = loop.time()
            log.info("worker %d: pid %d started (metrics port %d)", index, proc.pid,
                     metrics_port(settings, index))
            code = await proc.wait()
            if stopping.is_set():
                log.info("worker %d: pid %d stopped (exit code %d)", index, proc.pid, code)
                return
            if code == EXIT_STARTUP:
                log.error("worker %d: pid %d refused to start; stopping", index, proc.pid)
                result = EXIT_STARTUP
                stopping.set()
                return
            if loop.time() - started > STABLE_AFTER:
                delay = RESTART_DELAY
            log.warning("worker %d: pid %d exited (exit code %d); starting it again in %.1fs",
                        index, proc.pid, code, delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            delay = min(delay * 2, MAX_RESTART_DELAY)

    tasks = [asyncio.create_task(keep(index), name=f"worker-{index}") for index in range(count)]
    log.info("serving gRPC on %s:%d with %d workers", settings.host, settings.port, count)
    await stopping.wait()
    terminate_all()
    await asyncio.gather(*tasks)
    log.info("all workers stopped")
    return result
