"""Serves the route table: builds the request message, calls the same RegistryService handler
the gRPC port calls (validation, auth and metrics included) and writes its reply."""
from __future__ import annotations

import contextlib
import json

import grpc
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from ..errors import RpcError, status_of
from ..validation import InvalidArgument
from . import codec, sse
from .context import Aborted, HttpContext, request_token
from .routes import CARD, NDJSON, ROUTES, SSE, Route
from .status import JSON, error_body, error_response

NDJSON_TYPE = "application/x-ndjson"


class Api:
    """`gate` is the gRPC port's Gate: while it drains, calls get UNAVAILABLE; with auth on,
    a call without a valid token gets UNAUTHENTICATED before its request is read."""

    def __init__(self, service, gate, settings):
        self.service = service
        self.gate = gate
        self.settings = settings

    def add_routes(self, app: web.Application) -> None:
        serve = {SSE: self._sse, NDJSON: self._ndjson, CARD: self._card}
        for route in ROUTES:
            handler = serve.get(route.kind, self._unary)
            app.router.add_route(route.method, route.aiohttp_path,
                                 _bind(handler, route), name=route.operation_id)

    def _context(self, request: web.Request, route: Route) -> HttpContext:
        if self.gate.draining:
            raise RpcError(grpc.StatusCode.UNAVAILABLE, "server is shutting down; retry "
                           "(another instance will answer)")
        context = HttpContext(request, request_token(request, route.query_token))
        if self.gate.auth.enabled:
            self.gate.auth.identify(context.invocation_metadata(), context.peer())
        return context

    async def _message(self, request: web.Request, route: Route):
        if route.body:
            message = codec.from_body(route, await request.read())
        else:
            message = codec.from_query(route, request.query,
                                       skip=("access_token",) if route.query_token else ())
        return codec.with_path(route, message, request.match_info)

    async def _reply(self, route: Route, request: web.Request):
        """The handler's reply message, or the error response that ends the call."""
        try:
            context = self._context(request, route)
            message = await self._message(request, route)
            return await getattr(self.service, route.rpc)(message, context)
        except Aborted as exc:
            return error_response(exc.code, exc.message)
        except (RpcError, InvalidArgument) as exc:
            return error_response(*status_of(exc))

    async def _unary(self, route: Route, request: web.Request) -> web.StreamResponse:
        reply = await self._reply(route, request)
        if isinstance(reply, web.StreamResponse):
            return reply
        return web.Response(text=codec.dumps(reply), content_type=JSON)

    async def _card(self, route: Route, request: web.Request) -> web.StreamResponse:
        """GetAgent (its validation and READ scope), answered with the agent's card."""
        reply = await self._reply(route, request)
        if isinstance(reply, web.StreamResponse):
            return reply
        if not reply.agent.agent_card:
            return error_response(grpc.StatusCode.NOT_FOUND,
                                  f"agent_id: {reply.agent.agent_id} registered no agent card")
        return web.Response(text=reply.agent.agent_card, content_type=JSON)

    async def _ndjson(self, route: Route, request: web.Request) -> web.StreamResponse:
        """HeartbeatStream: a body of HeartbeatRequest lines, a reply of {"result": ...} lines
        in the same order ({"error": ...} ends it), as grpc-gateway streams."""
        try:
            context = self._context(request, route)
        except RpcError as exc:
            return error_response(*status_of(exc))
        response = web.StreamResponse(headers={"Content-Type": NDJSON_TYPE})
        await response.prepare(request)

        async def requests():
            try:
                async for line in request.content:
                    if line.strip():
                        yield codec.from_body(route, line)
            except BadHttpMessage:  # a line longer than the reader buffers
                raise InvalidArgument("body: a line is too long (one HeartbeatRequest per "
                                      "line)") from None

        replies = getattr(self.service, route.rpc)(requests(), context)
        async with contextlib.aclosing(replies):
            try:
                async for reply in replies:
                    await response.write(
                        f'{{"result":{codec.dumps(reply)}}}\n'.encode())
            except Aborted as exc:
                body = json.dumps({"error": error_body(exc.code, exc.message)})
                await response.write(f"{body}\n".encode())
        await response.write_eof()
        return response

    async def _sse(self, route: Route, request: web.Request) -> web.StreamResponse:
        try:
            context = self._context(request, route)
            message = await self._message(request, route)
            last_event_id = request.headers.get("Last-Event-ID", "").strip()
            if last_event_id:  # the browser resumes where it left off
                message.since_revision = last_event_id
        except (RpcError, InvalidArgument) as exc:
            return error_response(*status_of(exc))
        return await sse.serve(request, getattr(self.service, route.rpc)(message, context))


def _bind(handler, route: Route):
    async def serve(request: web.Request) -> web.StreamResponse:
        return await handler(route, request)
    return serve
