"""Before anything starts: can the server listen where its settings say?

gRPC only says "Failed to bind" (and, by default, silently shares a port another process holds:
SO_REUSEPORT), and the metrics server's OSError surfaces after gRPC has started. So each address
is tried here first with a plain socket, and a taken port or a foreign address ends the start
with one line naming the setting to change.
"""
from __future__ import annotations

import errno
import socket

from .config import Settings


class StartupError(Exception):
    """The server cannot start; `serve` prints `error: <message>` and exits 2."""


def check(settings: Settings) -> None:
    grpc_addresses = resolve(settings.host, settings.port)
    if settings.port:
        probe(grpc_addresses, settings, "SERVICE_REGISTRY_PORT", settings.port,
              shared=settings.share_port)
    if settings.metrics_port:
        probe(resolve(settings.host, settings.metrics_port), settings, "METRICS_PORT",
              settings.metrics_port)


def resolve(host: str, port: int) -> list[tuple[int, tuple]]:
    """(family, socket address) of every address `host` stands for."""
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise StartupError(f"SERVICE_REGISTRY_HOST {host!r} does not resolve ({reason}); "
                           "give an address of this machine (or 0.0.0.0)") from None
    return list(dict.fromkeys((family, address) for family, _, _, _, address in infos))


def probe(addresses, settings: Settings, variable: str, port: int, shared: bool = False) -> None:
    """Binds each address the way the server will; raises StartupError naming `variable`."""
    failures = []
    for family, address in addresses:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # as gRPC does: a port left in TIME_WAIT by a previous run is free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if shared:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                failures.append(exc.errno)
    if errno.EADDRINUSE in failures:
        hint = ""
        if variable == "SERVICE_REGISTRY_PORT":
            hint = (" (is another server running? several processes on one port: "
                    "`serve --workers N` with REDIS_URL)")
        raise StartupError(f"{variable} {port} is in use{hint}")
    if errno.EACCES in failures:
        raise StartupError(f"{variable} {port}: permission denied (ports below 1024 need "
                           "privileges)")
    if failures and len(failures) == len(addresses):
        raise StartupError(f"SERVICE_REGISTRY_HOST {settings.host!r} is not an address of this "
                           "machine; give one of its addresses (or 0.0.0.0)")
