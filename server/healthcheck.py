"""Checks the server through the gRPC health service; exit 0 when SERVING, 1 otherwise.

    python -m server.healthcheck [--address HOST:PORT] [--service NAME] [--timeout SECONDS]

Made for container health checks (Docker HEALTHCHECK, Kubernetes exec probes), so it reads the
server's own environment: the address from SERVICE_REGISTRY_HOST / SERVICE_REGISTRY_PORT (a
wildcard host means loopback), and TLS when TLS_CERT is set. With TLS it trusts HEALTHCHECK_CA
(default: the server's TLS_CERT file, enough for a self-signed certificate or a file holding the
whole chain), checks the name HEALTHCHECK_SERVER_NAME (default: the first DNS name of TLS_CERT),
and with TLS_CLIENT_CA set presents HEALTHCHECK_CERT / HEALTHCHECK_KEY (default: TLS_CERT and
TLS_KEY, which then need the clientAuth usage). No token is needed: the health service is open.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # before grpc is imported: no core chatter

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from . import tls

WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "*": "127.0.0.1", "::": "[::1]",
             "[::]": "[::1]"}


def default_address(environ=os.environ) -> str:
    host = environ.get("SERVICE_REGISTRY_HOST", "localhost").strip()
    if host in WILDCARDS:
        host = WILDCARDS[host]
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{environ.get('SERVICE_REGISTRY_PORT', '') or 50051}"


def parse_args(argv, environ=os.environ) -> argparse.Namespace:
    env = environ.get
    parser = argparse.ArgumentParser(prog="python -m server.healthcheck",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--address", default=default_address(environ))
    parser.add_argument("--service", default="",
                        help='health service name ("" = the whole server, "liveness")')
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--tls", action=argparse.BooleanOptionalAction,
                        default=bool(env("TLS_CERT")), help="default: on when TLS_CERT is set")
    parser.add_argument("--ca", default=env("HEALTHCHECK_CA") or env("TLS_CERT", ""))
    parser.add_argument("--cert", default=env("HEALTHCHECK_CERT") or (
        env("TLS_CERT", "") if env("TLS_CLIENT_CA") else ""))
    parser.add_argument("--key", default=env("HEALTHCHECK_KEY") or (
        env("TLS_KEY", "") if env("TLS_CLIENT_CA") else ""))
    parser.add_argument("--server-name", default=env("HEALTHCHECK_SERVER_NAME") or (
        tls.first_dns_name(env("TLS_CERT")) if env("TLS_CERT") else ""),
        help="name to check the server certificate against")
    return parser.parse_args(argv)


def channel(args) -> grpc.Channel:
    if not args.tls:
        return grpc.insecure_channel(args.address)
    creds = tls.channel_credentials(args.ca, args.cert, args.key)
    options = ([("grpc.ssl_target_name_override", args.server_name)] if args.server_name
               else [])
    return grpc.secure_channel(args.address, creds, options=options)


def check(args) -> tuple[bool, str]:
    try:
        with channel(args) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    except grpc.RpcError as exc:
        return False, f"{exc.code().name}: {exc.details()}"
    except tls.TLSError as exc:
        return False, str(exc)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    ok, status = check(args)
    print(f"{args.address}{' ' + repr(args.service) if args.service else ''}: {status}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
