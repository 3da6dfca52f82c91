"""The context a RegistryService handler gets when it is called over HTTP: it carries the
bearer token (Auth.check reads it through invocation_metadata) and turns the handler's abort
into an exception the HTTP layer maps to a status."""
from __future__ import annotations

import grpc
from aiohttp import web


class Aborted(Exception):
    """A handler ended the call with a status (errors.py calls context.abort)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class HttpContext:
    def __init__(self, request: web.Request, token: str):
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        peer = request.remote or ""
        self._peer = f"http:{peer}" if peer else ""

    def invocation_metadata(self):
        return self._metadata

    def peer(self) -> str:
        return self._peer

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Aborted(code, details)


def request_token(request: web.Request, query_allowed: bool) -> str:
    """The bearer token of `Authorization: Bearer ...`, else (where a browser's EventSource
    cannot set headers) the `access_token` query parameter."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if query_allowed:
        return request.query.get("access_token", "")
    return ""
