"""The `service-registry bench` command (`make bench` = --quick, `make bench-full` = --full)."""
from __future__ import annotations

import asyncio
import shlex
import sys
from pathlib import Path

import click


@click.command()
@click.option("--quick/--full", default=True,
              help="quick run (under 2 minutes) or full run (~10 minutes, the one RESULTS.md "
                   "keeps)")
@click.option("--addr", default="", metavar="HOST:PORT",
              help="benchmark a running deployment instead of starting one")
@click.option("--redis-url", default="", metavar="URL",
              help="its Redis (any REDIS_URL form: redis://, redis+sentinel://...), for the "
                   "Redis-side measurements (memory, Redis time per Discover, redis-benchmark "
                   "on the primary); without --addr: use this Redis instead of a private "
                   "redis-server")
@click.option("--echo-addr", default="", metavar="HOST:PORT",
              help="a running echo server (python -m benchmarks.echo) to use as the gRPC "
                   "ceiling; default: start one here")
@click.option("--server-procs", default=2, show_default=True, type=click.IntRange(1, 16),
              help="`service-registry serve` processes on one port (SO_REUSEPORT); the echo "
                   "server runs as many")
@click.option("--loadgen-procs", default=2, show_default=True, type=click.IntRange(1, 32),
              help="load generator processes")
@click.option("--scenarios", default="", metavar="LIST",
              help="comma-separated subset of: ceilings, register, heartbeat, keepalive, "
                   "memory, discover, balanced, mixed, watch, expiry, http, cluster; and, only "
                   "when named, failover (a Sentinel set of its own whose primary it kills)")
@click.option("--duration", type=float, default=None,
              help="measured seconds of each throughput scenario (overrides the profile)")
@click.option("--h2load/--no-h2load", "use_h2load", default=True,
              help="drive unary calls and streams with h2load when available")
@click.option("--install-tools/--no-install-tools", default=True,
              help="apt-get install nghttp2-client (h2load) when missing and running as root")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="directory for results.json and results.png "
                                 "(default benchmarks/out/<timestamp>)")
@click.option("--no-chart", is_flag=True, help="skip the PNG chart")
@click.option("--tiny", is_flag=True, hidden=True, help="every scenario, tiny (smoke test)")
def bench(quick, addr, redis_url, echo_addr, server_procs, loadgen_procs, scenarios, duration,
          use_h2load, install_tools, out_dir, no_chart, tiny):
    """Run the benchmark suite: throughput, p50/p95/p99/p99.9 latency and errors per
    scenario, as ratios to the Redis and gRPC ceilings measured in the same run.

    \b
    Examples:
      service-registry bench                      # quick, starts Redis and the server
      service-registry bench --full               # the run benchmarks/RESULTS.md keeps
      service-registry bench --addr host:50051 --redis-url redis://host:6379/0
    """
    from . import suite

    name = "tiny" if tiny else ("quick" if quick else "full")
    profile = suite.with_overrides(suite.PROFILES[name], duration=duration)
    chosen = tuple(s.strip() for s in scenarios.split(",") if s.strip()) or suite.SCENARIOS
    unknown = [s for s in chosen if s not in suite.SCENARIOS + suite.OPT_IN]
    if unknown:
        raise click.BadParameter(f"unknown scenario(s) {', '.join(unknown)}; choose from "
                                 f"{', '.join(suite.SCENARIOS + suite.OPT_IN)}",
                                 param_hint="--scenarios")
    options = suite.Options(
        profile=profile, addr=addr, redis_url=redis_url, echo_addr=echo_addr,
        server_procs=server_procs, loadgen_procs=loadgen_procs, use_h2load=use_h2load,
        install_tools=install_tools, scenarios=chosen, out_dir=out_dir, chart=not no_chart,
        command=" ".join(shlex.quote(a) for a in ["service-registry", *sys.argv[1:]]))
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        doc = runner(suite.run(options))
    except KeyboardInterrupt:
        raise click.Abort() from None
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("")
    click.echo(f"JSON:  {doc['json_path']}")
    if doc.get("chart_path"):
        click.echo(f"chart: {doc['chart_path']}")
