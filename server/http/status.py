"""gRPC status -> HTTP status and the JSON error body, as grpc-gateway maps them."""
from __future__ import annotations

import json

import grpc
from aiohttp import web

HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
# HTTP errors raised by aiohttp itself (unknown path, wrong method, body too large) -> gRPC code
GRPC_CODE = {404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED,
             413: grpc.StatusCode.RESOURCE_EXHAUSTED}
JSON = "application/json"


def error_body(code: grpc.StatusCode, message: str) -> dict:
    return {"code": code.value[0], "message": message, "details": []}


def error_response(code: grpc.StatusCode, message: str, http_status: int | None = None
                   ) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="service-registry"'} \
        if code == grpc.StatusCode.UNAUTHENTICATED else None
    return web.Response(status=http_status or HTTP_STATUS.get(code, 500),
                        text=json.dumps(error_body(code, message)), content_type=JSON,
                        headers=headers)
