"""Cross-cutting work for every ServiceRegistry call, done once here: calls in flight (for a
drain), outcome and latency metrics, failures mapped to a status (errors.py)."""
from __future__ import annotations

import asyncio
import functools
import time

import grpc

from . import metrics
from .errors import RpcError, outcome_of, status_of


class InFlight:
    """Calls inside a ServiceRegistry handler right now, so a drain knows when they are done."""

    def __init__(self) -> None:
        self.count = 0
        self._idle: asyncio.Event | None = None

    def enter(self) -> None:
        self.count += 1

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0 and self._idle is not None:
            self._idle.set()

    async def idle(self) -> None:
        if self.count:
            self._idle = asyncio.Event()
            await self._idle.wait()


IN_FLIGHT = InFlight()


async def _abort(servicer, operation: str, start: float, exc: Exception, context) -> None:
    """Ends a failed call with its status, counted; a Redis outage also tells the servicer
    (`on_unavailable`: health NOT_SERVING until a probe finds Redis again)."""
    code, message = status_of(exc)
    metrics.observe(operation, outcome_of(code), time.perf_counter() - start)
    if code == grpc.StatusCode.UNAVAILABLE and not isinstance(exc, RpcError):
        servicer.on_unavailable()
    await context.abort(code, message)


class _Tracked:
    """One call, in flight from entry to exit: counted ok, or ended with its status."""
    __slots__ = ("servicer", "operation", "context", "start")

    def __init__(self, servicer, operation: str, context):
        self.servicer, self.operation, self.context = servicer, operation, context

    async def __aenter__(self) -> None:
        self.start = time.perf_counter()
        IN_FLIGHT.enter()

    async def __aexit__(self, kind, exc, traceback) -> bool:
        try:
            if exc is None:
                metrics.observe(self.operation, "ok", time.perf_counter() - self.start)
            elif isinstance(exc, Exception) and not isinstance(exc, grpc.aio.AbortError):
                await _abort(self.servicer, self.operation, self.start, exc, self.context)
        finally:
            IN_FLIGHT.leave()
        return False


def unary(operation: str):
    """Wraps a unary handler: status mapping, metrics and latency under `operation`."""
    def wrap(handler):
        @functools.wraps(handler)
        async def call(self, request, context):
            async with _Tracked(self, operation, context):
                return await handler(self, request, context)
        return call
    return wrap


def streaming(operation: str):
    """Wraps a server-streaming handler (an async generator) the same way."""
    def wrap(handler):
        @functools.wraps(handler)
        async def call(self, request, context):
            async with _Tracked(self, operation, context):
                async for item in handler(self, request, context):
                    yield item
        return call
    return wrap


def item_failed(operation: str, exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status of one failed item of a call (a heartbeat in a batch or stream), counted."""
    code, message = status_of(exc)
    metrics.observe(operation, outcome_of(code), 0.0)
    return code, message


def item_ok(operation: str, seconds: float) -> None:
    """One item of a call that succeeded, with its own latency."""
    metrics.observe(operation, "ok", seconds)


def items_ok(operation: str, count: int) -> None:
    """Items of a call that succeeded, counted; the latency is the call's."""
    counter = metrics.ATTEMPTS.get(operation)
    if counter is not None:
        counter.labels("ok").inc(count)
