"""`service-registry`: run the server and operate the fleet.

Exit codes: cli/exitcodes.py. One module per command group (serve, agents, watch, notify,
stats, completion); `bench` (the benchmark suite) is imported only when it is run.
"""
from __future__ import annotations

import os

# gRPC reads this once, when it is first imported: its own log lines would break JSON logs.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import importlib
import logging

import click

from .agents import agents
from .completion import PROG, completion
from .connection import Connection, accept_after_the_command, connection_options
from .notify import notify
from .serve import serve
from .stats import stats
from .watch import watch


class Commands(click.Group):
    """A group whose `bench` command (the benchmark suite) is imported only when it is run."""

    LAZY = {"bench": ("benchmarks.cli", "bench", "Run the benchmark suite: throughput and "
                                                 "latency as ratios to measured ceilings.")}

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx, name):
        if name in self.LAZY and name not in self.commands:
            module, attr, _ = self.LAZY[name]
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        """Like click's, without importing a lazy command to show its one-line help."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = [(n, self.LAZY[n][2] if n in self.LAZY and n not in self.commands
                 else self.commands[n].get_short_help_str(limit)) for n in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="service-registry", prog_name=PROG)
@connection_options
@click.pass_context
def cli(ctx, **connection):
    """Service Registry: agent registration, discovery and watching on Redis.

    `serve` runs the server; the other commands operate a running server over gRPC
    (global options before or after the command: --addr, --token, --tls-*, --timeout).
    Exit codes: 0 success, 1 not found, 2 usage, 3 server unavailable, 4 other errors.

    \b
    Example:
      service-registry serve --redis-url redis://localhost:6379
      service-registry --addr localhost:50051 agents list
    """
    ctx.obj = Connection(**connection)


cli.add_command(serve)
cli.add_command(completion)
for _command in (agents, watch, notify, stats):
    accept_after_the_command(_command)
    cli.add_command(_command)


def main():
    # The client library's warnings (a watch listing again) are said by the commands in
    # their own words; `serve` sets up the server's logging itself.
    logging.getLogger("neural_hive_integration").addHandler(logging.NullHandler())
    cli()


if __name__ == "__main__":
    main()
