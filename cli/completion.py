"""`completion bash|zsh|fish`: the shell's completion script, and agent IDs completed from the
server (ListAgents of the namespace being typed, with the global options already given)."""
from __future__ import annotations

import click

from server.validation import DEFAULT_NAMESPACE

from .connection import Connection, run

PROG = "service-registry"
COMPLETE_VAR = "_SERVICE_REGISTRY_COMPLETE"   # click's name for it: _<PROG>_COMPLETE
COMPLETION_TIMEOUT = 1.0                      # a shell waits for the answer
MAX_COMPLETIONS = 200
_CONNECTION = ("addr", "token", "tls", "tls_ca", "tls_cert", "tls_key")


def complete_agent_id(ctx: click.Context, param, incomplete: str) -> list[str]:
    """"ns/na" -> the IDs in ns starting so; "na" -> names in -n's namespace (or default)."""
    given = ctx.find_root().params
    connection = Connection(**{k: given.get(k) for k in _CONNECTION if given.get(k)},
                            timeout=COMPLETION_TIMEOUT)
    if "/" in incomplete:
        namespace, _, prefix = incomplete.partition("/")
    else:
        namespace, prefix = ctx.params.get("namespace") or DEFAULT_NAMESPACE, incomplete

    async def names(client) -> list[str]:
        found = []
        async for agent in client.iter_agents(namespace=namespace, page_size=1000):
            name = agent.agent_id.partition("/")[2]
            if name.startswith(prefix):
                found.append(agent.agent_id if "/" in incomplete else name)
                if len(found) >= MAX_COMPLETIONS:
                    break
        return found

    try:
        return run(connection, names)
    except Exception:  # noqa: BLE001 - no server, no token: no suggestions, never an error
        return []


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell):
    """Print the completion script for bash, zsh or fish.

    Completes commands and options, and agent IDs from the server (with the --addr and
    --token given on the line, or their variables).

    \b
    Example:
      source <(service-registry completion bash)          # in ~/.bashrc
      service-registry completion zsh > "${fpath[1]}/_service-registry"
      service-registry completion fish > ~/.config/fish/completions/service-registry.fish
    """
    from click.shell_completion import get_completion_class

    root = click.get_current_context().find_root().command
    script = get_completion_class(shell)(root, {}, PROG, COMPLETE_VAR).source()
    click.echo(script)
