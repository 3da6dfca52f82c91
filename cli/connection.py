"""The global connection and TLS options, and running a command: one event loop, one client,
every failure turned into one stderr line and an exit code."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
from dataclasses import dataclass

import click
import grpc
from neural_hive_integration.clients import RegistryError, ServiceRegistryClient

from server.config import Settings

from .exitcodes import (EXIT_ERROR, EXIT_INTERRUPTED, EXIT_NOT_FOUND, EXIT_OK, EXIT_UNAVAILABLE,
                        EXIT_USAGE, Failure, one_line)

DEFAULT_PORT = Settings.port
DEFAULT_TIMEOUT = 5.0
# Unary calls that find the server unreachable are retried this often (~0.1 s, 0.2 s, 0.4 s
# apart), so an unreachable server ends the command with exit code 3 in about a second.
CONNECT_RETRIES = 3
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


# -- connection ---------------------------------------------------------------------------------

def parse_addr(text: str) -> tuple[str, int]:
    """"host:port", "host", "[v6]:port" or a bare IPv6 address -> (host for gRPC, port)."""
    text = text.strip()
    if text.startswith("["):
        inner, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise Failure(EXIT_USAGE, f"error: --addr: {text!r} is not host:port")
        host, port = f"[{inner}]", rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif text.count(":") > 1:
        host, port = f"[{text}]", ""
    else:
        host, port = text, ""
    if not host or host == "[]":
        raise Failure(EXIT_USAGE, f"error: --addr: {text!r} has no host")
    try:
        number = int(port) if port else DEFAULT_PORT
    except ValueError:
        number = 0
    if not 0 < number < 65536:
        raise Failure(EXIT_USAGE, f"error: --addr: {port!r} is not a TCP port (1..65535)")
    return host, number


@dataclass
class Connection:
    """The group's global options; `client()` opens the gRPC client they describe."""
    addr: str | None = None
    token: str | None = None
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    def target(self) -> tuple[str, int]:
        if self.addr:
            return parse_addr(self.addr)
        host = os.environ.get("SERVICE_REGISTRY_HOST", "").strip()
        if host in _WILDCARD_HOSTS:  # the server's "listen everywhere" address
            host = "localhost"
        port = os.environ.get("SERVICE_REGISTRY_PORT", "").strip()
        return parse_addr(f"{host}:{port}" if port else host)

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls or self.tls_ca or self.tls_cert)

    @property
    def address(self) -> str:
        host, port = self.target()
        return f"{host}:{port}"

    def _pem(self, path: str | None, option: str) -> bytes | None:
        if not path:
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise Failure(EXIT_USAGE, f"error: {option}: cannot read {path}: "
                                      f"{exc.strerror or exc}") from None

    def client(self) -> ServiceRegistryClient:
        host, port = self.target()
        if bool(self.tls_cert) != bool(self.tls_key):
            raise Failure(EXIT_USAGE, "error: --tls-cert and --tls-key must be given together")
        roots = self._pem(self.tls_ca, "--tls-ca")
        chain = self._pem(self.tls_cert, "--tls-cert")
        key = self._pem(self.tls_key, "--tls-key")
        return ServiceRegistryClient(
            host, port, token=self.token or "", tls=self.uses_tls,
            root_certificates=roots, certificate_chain=chain, private_key=key,
            timeout=self.timeout, retries=CONNECT_RETRIES, backoff=0.1, max_backoff=2.0)


_OPTIONS = [  # (flags, settings) of the global options
    (("--addr",), dict(metavar="HOST:PORT", help="Server address [default: "
                       "$SERVICE_REGISTRY_HOST:$SERVICE_REGISTRY_PORT, else localhost:50051]")),
    (("--token",), dict(envvar="SERVICE_REGISTRY_TOKEN", metavar="TOKEN",
                        help="Bearer token [env SERVICE_REGISTRY_TOKEN]")),
    (("--tls",), dict(is_flag=True, envvar="SERVICE_REGISTRY_TLS", default=False,
                      help="Use TLS with the system's CA certificates [env SERVICE_REGISTRY_TLS]")),
    (("--tls-ca",), dict(envvar="SERVICE_REGISTRY_TLS_CA", metavar="PEM",
                         help="CA certificate(s) to verify the server; implies TLS "
                              "[env SERVICE_REGISTRY_TLS_CA]")),
    (("--tls-cert",), dict(envvar="SERVICE_REGISTRY_TLS_CERT", metavar="PEM",
                           help="Client certificate for mutual TLS "
                                "[env SERVICE_REGISTRY_TLS_CERT]")),
    (("--tls-key",), dict(envvar="SERVICE_REGISTRY_TLS_KEY", metavar="PEM",
                          help="Client private key for mutual TLS [env SERVICE_REGISTRY_TLS_KEY]")),
    (("--timeout",), dict(type=click.FloatRange(min=0.1), default=DEFAULT_TIMEOUT,
                          show_default=True, metavar="SECONDS",
                          help="Deadline of each call to the server")),
]


def connection_options(fn):
    """The global options of `service-registry` (used by the operator commands)."""
    for flags, settings in reversed(_OPTIONS):
        fn = click.option(*flags, **settings)(fn)
    return fn


def _given_after_the_command(ctx, param, value) -> None:
    if value is not None and value is not False:
        setattr(ctx.find_object(Connection), param.name, value)


def accept_after_the_command(command: click.Command) -> None:
    """Lets the global options also follow a command (`agents list --addr host:port`, as
    kubectl's and cobra's persistent flags do): hidden copies that set the same Connection,
    and win over the ones given before the command or by the environment."""
    for flags, settings in _OPTIONS:
        kept = {k: v for k, v in settings.items() if k in ("is_flag", "type", "metavar")}
        command.params.append(click.Option(
            flags, **kept, default=None, hidden=True, expose_value=False,
            callback=_given_after_the_command))
    for sub in getattr(command, "commands", {}).values():
        accept_after_the_command(sub)


# -- running a command: one event loop, one client, errors as exit codes -------------------------

def describe(exc: RegistryError, connection: Connection) -> tuple[int, str]:
    code, details = exc.code, one_line(exc.details)
    where = _safe_address(connection)
    if code == grpc.StatusCode.NOT_FOUND:
        return EXIT_NOT_FOUND, f"error: not found: {details}"
    if code == grpc.StatusCode.UNAVAILABLE:
        hint = "is the server running?"
        if not connection.uses_tls and "socket closed" in details.lower():
            hint = "is the server running? does it use TLS (--tls-ca)?"
        return EXIT_UNAVAILABLE, f"error: registry at {where} is unavailable: {details} ({hint})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return EXIT_UNAVAILABLE, (f"error: registry at {where} did not answer within "
                                  f"{connection.timeout:g}s (DEADLINE_EXCEEDED)")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return EXIT_USAGE, f"error: invalid argument: {details}"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return EXIT_ERROR, (f"error: {_prefixed('not authenticated', details)} (pass --token "
                            "or set SERVICE_REGISTRY_TOKEN)")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return EXIT_ERROR, f"error: {_prefixed('permission denied', details)}"
    if code == grpc.StatusCode.OUT_OF_RANGE:
        return EXIT_ERROR, f"error: {details}"
    return EXIT_ERROR, f"error: {code.name}: {details}"


def _prefixed(prefix: str, details: str) -> str:
    return details if details.lower().startswith(prefix) else f"{prefix}: {details}"


def _safe_address(connection: Connection) -> str:
    try:
        return connection.address
    except Failure:
        return str(connection.addr)


def _quiet_stdout() -> None:
    """After a broken pipe (`... | head`): stop Python from complaining when it flushes."""
    with contextlib.suppress(Exception):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def handle_errors(interrupt_code: int = EXIT_INTERRUPTED):
    """Turns every failure of the wrapped command into one stderr line and an exit code."""
    def wrap(fn):
        @functools.wraps(fn)
        def command(*args, **kwargs):
            ctx = click.get_current_context()
            connection = ctx.find_object(Connection) or Connection()
            try:
                code = fn(*args, **kwargs)
            except (click.exceptions.Exit, click.ClickException, click.Abort):
                raise
            except Failure as exc:
                click.echo(exc.message, err=True)
                code = exc.code
            except RegistryError as exc:
                code, message = describe(exc, connection)
                click.echo(message, err=True)
            except BrokenPipeError:
                _quiet_stdout()
                code = EXIT_OK
            except KeyboardInterrupt:
                if interrupt_code:
                    click.echo("interrupted", err=True)
                code = interrupt_code
            except Exception as exc:  # noqa: BLE001 - never a traceback
                click.echo(f"error: unexpected {type(exc).__name__}: {one_line(exc)}", err=True)
                code = EXIT_ERROR
            ctx.exit(code or EXIT_OK)
        return command
    return wrap


def run(connection: Connection, work):
    """Runs `await work(client)` in a new event loop; returns its result."""
    async def main():
        client = connection.client()
        try:
            return await work(client)
        finally:
            await client.close()
    return asyncio.run(main())
