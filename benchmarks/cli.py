"""The `service-registry bench` command (placeholder until the suite lands)."""
import click


@click.command()
@click.option("--quick/--full", default=True, help="quick run (under 2 minutes) or full run")
def bench(quick):
    """Run the benchmark suite."""
    raise click.ClickException("the benchmark suite is not built yet")
