"""`notify`: queue a notification for an agent."""
from __future__ import annotations

import json

import click
import grpc
from neural_hive_integration.clients import RegistryError

from server.validation import MAX_NOTIFY_KIND_LEN

from . import output as out
from .completion import complete_agent_id
from .connection import handle_errors, run
from .exitcodes import EXIT_NOT_FOUND, EXIT_OK, Failure
from .output import output_option
from .selection import qualify

class JsonText(click.ParamType):
    name = "JSON"

    def convert(self, value, param, ctx):
        try:
            json.loads(value)
        except ValueError as exc:
            self.fail(f"not valid JSON: {exc}", param, ctx)
        return value


@click.command()
@click.argument("agent_id", metavar="ID", shell_complete=complete_agent_id)
@click.option("-k", "--kind", required=True,
              help=f"What the message is about (at most {MAX_NOTIFY_KIND_LEN} characters)")
@click.option("-p", "--payload", type=JsonText(), default="{}", show_default=True,
              help="A JSON document, checked before sending")
@click.option("-n", "--namespace", default=None, help="Namespace of a bare ID [default: default]")
@output_option(["table", "json"])
@click.pass_obj
@handle_errors()
def notify(connection, agent_id, kind, payload, namespace, output):
    """Queue a notification for an agent; it gets it with its next heartbeat.

    Prints the notification id. Watchers of the namespace see a NOTIFICATION event.

    \b
    Example:
      service-registry notify default/worker-1 --kind drain --payload '{"deadline_s": 30}'
    """
    agent_id = qualify(agent_id, namespace)

    async def work(client):
        try:
            nid = await client.notify_agent(agent_id, kind, payload)
        except RegistryError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                raise Failure(EXIT_NOT_FOUND, f"error: agent {agent_id} not found "
                                              "(not registered, expired or evicted)") from None
            raise
        if output in out.DOCUMENTS:
            out.print_document({"notification_id": nid, "agent_id": agent_id}, output)
        elif out.is_terminal():
            click.echo(f"Queued notification {nid} ({kind}) for {agent_id}.")
        else:
            click.echo(nid)
        return EXIT_OK

    return run(connection, work)
