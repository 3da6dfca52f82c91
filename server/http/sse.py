"""A WatchAgents stream as server-sent events: one event a WatchEvent, `id:` its revision (so
EventSource's Last-Event-ID resumes it like since_revision), and a final `event: status` when
the stream ends with a status (compaction, slow consumer, shutdown)."""
from __future__ import annotations

import asyncio
import contextlib
import json

from aiohttp import web

from . import codec
from .context import Aborted
from .status import HTTP_STATUS, error_body, error_response

# Refusals and bad requests fail at once (before any Redis read); compaction takes one read.
# Within this wait the failure is an HTTP status; after it, an `event: status`.
FIRST_EVENT_WAIT = 0.5
RETRY_MS = 1000  # EventSource's reconnection delay


def event(message) -> bytes:
    lines = [f"id: {message.revision}"] if message.revision else []
    lines.append(f"data: {codec.dumps(message)}")
    return ("\n".join(lines) + "\n\n").encode()


def status_event(exc: Aborted) -> bytes:
    body = dict(error_body(exc.code, exc.message), http_status=HTTP_STATUS.get(exc.code, 500))
    return f"event: status\ndata: {json.dumps(body)}\n\n".encode()


async def serve(request: web.Request, events) -> web.StreamResponse:
    async with contextlib.aclosing(events):
        first = asyncio.ensure_future(anext(events, None))
        try:
            await asyncio.wait({first}, timeout=FIRST_EVENT_WAIT)
            if first.done() and isinstance(first.exception(), Aborted):
                exc = first.exception()
                return error_response(exc.code, exc.message)
            response = web.StreamResponse(headers={
                "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no"})  # proxies must not buffer the stream
            await response.prepare(request)
            await response.write(f"retry: {RETRY_MS}\n\n".encode())
            try:
                item = await first
                while item is not None:
                    await response.write(event(item))
                    item = await anext(events, None)
            except Aborted as exc:
                await response.write(status_event(exc))
        finally:
            if not first.done():
                first.cancel()
                with contextlib.suppress(BaseException):
                    await first
    await response.write_eof()
    return response
