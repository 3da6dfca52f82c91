"""The HTTP port (METRICS_PORT): one aiohttp application in the server's event loop.

Open to anyone who reaches the port: /metrics (Prometheus), /healthz, /readyz, the dashboard's
files, /v1/openapi.json and the registry's own A2A card /.well-known/agent-card.json (none
holds registry data). Everything else under /v1/ needs the
same bearer tokens and scopes as gRPC."""
from __future__ import annotations

import json
import logging
import ssl
from pathlib import Path

import grpc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from . import openapi
from ..card_documents import registry_card
from ..errors import RpcError, status_of
from .api import Api
from .context import request_token
from .status import GRPC_CODE, JSON, error_response

log = logging.getLogger("service_registry")
STATIC = Path(__file__).resolve().parent / "static"


def ssl_context(tls) -> ssl.SSLContext | None:
    """The gRPC port's certificate (and client CA: mutual TLS) for HTTPS."""
    if tls is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    if tls.client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=tls.client_ca)
    return context


@web.middleware
async def json_errors(request: web.Request, handler):
    """aiohttp's own errors (unknown path, wrong method, body too large) as JSON Status
    bodies under /v1/, like the API's."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or not request.path.startswith("/v1/"):
            raise
        code = GRPC_CODE.get(exc.status, grpc.StatusCode.UNKNOWN)
        response = error_response(code, f"{request.method} {request.path}: {exc.reason}",
                                  http_status=exc.status)
        if exc.status == 405:
            response.headers["Allow"] = exc.headers.get("Allow", "")
        return response


class HttpApp:
    """`ready()` says whether the store answers (the health probe's view)."""

    def __init__(self, settings, service, gate, tls, ready):
        self.settings = settings
        self.tls = tls
        self.ready = ready
        self.api = Api(service, gate, settings)
        self._openapi = json.dumps(openapi.document())
        self._ssl: ssl.SSLContext | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    def application(self) -> web.Application:
        app = web.Application(middlewares=[json_errors])
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/v1/openapi.json", self.openapi)
        app.router.add_get("/.well-known/agent-card.json", self.own_card)
        self.api.add_routes(app)
        app.router.add_get("/", self.index)
        app.router.add_get("/dashboard/session", self.session)
        app.router.add_static("/static/", STATIC, append_version=True)
        return app

    async def start(self) -> int:
        """Binds METRICS_PORT (0: no HTTP port); returns the bound port."""
        if not self.settings.metrics_port:
            return 0
        self._ssl = ssl_context(self.tls)
        # access_log off: a watch URL may carry ?access_token=
        self._runner = web.AppRunner(self.application(), access_log=None,
                                     handler_cancellation=True,
                                     shutdown_timeout=self.settings.shutdown_grace)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.metrics_port,
                           ssl_context=self._ssl, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the bound port
        log.info("serving HTTP%s on %s:%d (/metrics, /healthz, /readyz, /v1/, dashboard /)",
                 "S" if self._ssl else "", self.settings.host, self.port)
        return self.port

    def reload(self) -> None:
        """SIGHUP: new handshakes use the certificate files as they are now."""
        if self._ssl is not None:
            try:
                self._ssl.load_cert_chain(self.tls.cert, self.tls.key)
                if self.tls.client_ca:
                    self._ssl.load_verify_locations(cafile=self.tls.client_ca)
            except (ssl.SSLError, OSError) as exc:
                log.error("http: certificates NOT reloaded, keeping the current ones: %s", exc)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- open routes --------------------------------------------------------------------------
    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "SERVING"})

    async def readyz(self, request: web.Request) -> web.Response:
        ready = self.ready()
        return web.json_response({"status": "SERVING" if ready else "NOT_SERVING"},
                                 status=200 if ready else 503)

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(text=self._openapi, content_type=JSON)

    async def own_card(self, request: web.Request) -> web.Response:
        """The registry's own A2A Agent Card, its interface the URL it was reached at."""
        return web.Response(text=registry_card(f"{request.scheme}://{request.host}"),
                            content_type=JSON)

    async def session(self, request: web.Request) -> web.Response:
        """Who the dashboard's token is, so the page offers only what it may do (the server
        checks every call anyway)."""
        auth = self.api.gate.auth
        if not auth.enabled:
            return web.json_response({"auth": False, "name": "", "scope": "operator",
                                      "namespace": "*"})
        try:
            token = auth.identify((("authorization", f"Bearer {request_token(request, False)}"),),
                                  f"http:{request.remote or ''}")
        except RpcError as exc:
            return error_response(*status_of(exc))
        return web.json_response({"auth": True, "name": token.name, "scope": token.role.value,
                                  "namespace": token.namespace})

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers={
            "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
            # nothing from elsewhere, and no framing (the page can evict agents)
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                       "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"})
