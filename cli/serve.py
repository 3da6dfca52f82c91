"""`serve`: run the server, or `--workers N` supervised server processes on one port."""
from __future__ import annotations

import asyncio
import sys
from dataclasses import fields

import click

from server import config

from .exitcodes import EXIT_USAGE

_METAVARS = {int: "INTEGER", float: "NUMBER", bool: "BOOLEAN", str: "TEXT"}
_PATH_SETTINGS = {"tls_cert", "tls_key", "tls_client_ca", "tokens_file"}


def _default_text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return "unset" if value == "" else str(value)


def serve_options(fn):
    """One flag per setting in server/config.py, with its meaning, variable and default (the
    variable gives the value when the flag is absent)."""
    defaults = {f.name: f.default for f in fields(config.Settings)}
    for name, var in reversed(list(config.ENVIRONMENT.items())):
        flag = "--" + name.replace("_", "-")
        metavar = "PATH" if name in _PATH_SETTINGS else _METAVARS[type(defaults[name])]
        text = (f"{config.HELP.get(name, '')}  [env {var}; default: "
                f"{_default_text(defaults[name])}]")
        fn = click.option(flag, name, default=None, metavar=metavar, help=text)(fn)
    return fn


@click.command()
@serve_options
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Server processes on the one gRPC port, supervised (restarted when they "
                   "die; SIGTERM drains them all); more than 1 needs REDIS_URL; worker k serves "
                   "metrics on METRICS_PORT + k")
def serve(workers, **flags):
    """Run the gRPC server (embedded store unless REDIS_URL / --redis-url is set).

    Every option is also an environment variable (shown with each); a flag wins.
    A setting that is out of range, a port in use or an address that is not this
    machine's stops the start with one line naming the setting (exit code 2).

    \b
    Example:
      REDIS_URL=redis://localhost:6379 HEARTBEAT_TIMEOUT=30 service-registry serve --port 50051
      service-registry serve --redis-url redis://localhost:6379 --workers 2
    """
    from server import app, binding, logs, workers as supervisor

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
        if workers > 1:
            sys.exit(runner(supervisor.supervise(settings, workers)))
        runner(app.run(settings))
    except binding.StartupError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        pass
