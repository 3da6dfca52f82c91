"""Maps failures to gRPC status codes and records every call's outcome and latency."""
from __future__ import annotations

import asyncio
import functools
import logging
import time

import grpc
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, TimeoutError as RedisTimeoutError, BusyLoadingError

from . import metrics
from .validation import InvalidArgument

log = logging.getLogger("service_registry")

# Scripts signal failures with an error reply whose first word names the status.
_SCRIPT_STATUS = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
}
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, OSError)


class RpcError(Exception):
    """Raised by handlers for a definite status; message goes to the client as is."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


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


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, RpcError):
        return exc.code, str(exc)
    if isinstance(exc, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, ResponseError):
        word, _, rest = str(exc).partition(" ")
        code = _SCRIPT_STATUS.get(word)
        if code is not None:
            return code, rest
        if str(exc).startswith(("BUSY", "LOADING", "MASTERDOWN", "READONLY")):
            return grpc.StatusCode.UNAVAILABLE, f"redis is not available: {exc}"
    if isinstance(exc, REDIS_DOWN):
        return grpc.StatusCode.UNAVAILABLE, f"redis is not reachable: {exc}"
    log.exception("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error"


def outcome_of(code: grpc.StatusCode) -> str:
    return "ok" if code == grpc.StatusCode.OK else code.name.lower()


def unary(operation: str, on_unavailable=None):
    """Wraps a unary handler: status mapping, metrics and latency under `operation`."""
    def wrap(handler):
        @functools.wraps(handler)
        async def call(self, request, context):
            start = time.perf_counter()
            IN_FLIGHT.enter()
            try:
                reply = await handler(self, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status
                code, message = status_of(exc)
                metrics.observe(operation, outcome_of(code), time.perf_counter() - start)
                if code == grpc.StatusCode.UNAVAILABLE and on_unavailable:
                    on_unavailable(self)
                await context.abort(code, message)
            finally:
                IN_FLIGHT.leave()
            metrics.observe(operation, "ok", time.perf_counter() - start)
            return reply
        return call
    return wrap


def streaming(operation: str):
    """Wraps a server-streaming handler (an async generator) the same way."""
    def wrap(handler):
        @functools.wraps(handler)
        async def call(self, request, context):
            start = time.perf_counter()
            IN_FLIGHT.enter()
            try:
                async for item in handler(self, request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001
                code, message = status_of(exc)
                metrics.observe(operation, outcome_of(code), time.perf_counter() - start)
                await context.abort(code, message)
            finally:
                IN_FLIGHT.leave()
            metrics.observe(operation, "ok", time.perf_counter() - start)
        return call
    return wrap
