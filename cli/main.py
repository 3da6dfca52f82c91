"""`service-registry`: run the server and operate the fleet.

Exit codes: 0 success, 1 not found, 2 usage, 3 server unavailable, 4 other errors.
"""
from __future__ import annotations

import os

# gRPC reads this once, when it is first imported: its own log lines would break JSON logs.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import asyncio  # noqa: E402
import sys  # noqa: E402

import click  # noqa: E402

from server import config  # noqa: E402

from . import operator  # noqa: E402

EXIT_NOT_FOUND, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_ERROR = 1, 2, 3, 4


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@operator.connection_options
@click.pass_context
def cli(ctx, **connection):
    """Service Registry: agent registration, discovery and watching on Redis.

    `serve` runs the server; the other commands operate a running server over gRPC
    (global options before the command: --addr, --token, --tls-*, --timeout).
    Exit codes: 0 success, 1 not found, 2 usage, 3 server unavailable, 4 other errors.

    \b
    Example:
      service-registry serve --redis-url redis://localhost:6379
      service-registry --addr localhost:50051 agents list
    """
    ctx.obj = operator.Connection(**connection)


def _serve_options(fn):
    """One flag per setting in server/config.py; environment variables give the defaults."""
    for name, var in reversed(list(config.ENVIRONMENT.items())):
        flag = "--" + name.replace("_", "-")
        fn = click.option(flag, name, default=None, help=f"[env {var}]")(fn)
    return fn


@cli.command()
@_serve_options
def serve(**flags):
    """Run the gRPC server (embedded store unless REDIS_URL / --redis-url is set).

    \b
    Example:
      REDIS_URL=redis://localhost:6379 HEARTBEAT_TIMEOUT=30 service-registry serve --port 50051
    """
    from server import app, logs

    try:
        settings = config.load(flags)
    except config.ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    logs.setup(settings.log_format, settings.log_level)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(app.run(settings))
    except KeyboardInterrupt:
        pass


def _register_subcommands() -> None:
    from benchmarks.cli import bench
    cli.add_command(bench)
    for command in operator.COMMANDS:
        cli.add_command(command)


_register_subcommands()


def main():
    cli()


if __name__ == "__main__":
    main()
