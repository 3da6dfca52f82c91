"""`stats`: agents by namespace, status and type."""
from __future__ import annotations

import click

from . import output as out
from .connection import handle_errors, run
from .exitcodes import EXIT_OK
from .output import note, output_option
from .selection import AGENT_TYPES, STATUSES

STATS_HEADERS = ["NAMESPACE", "AGENTS", "HEALTHY", "DEGRADED", "UNHEALTHY", "WORKER", "SCOUT",
                 "GUARD", "REVISION"]


def stats_dict(ns) -> dict:
    return {"namespace": ns.namespace, "agents": ns.agents,
            "by_type": {t: ns.by_type.get(t.upper(), 0) for t in AGENT_TYPES},
            "by_status": {s: ns.by_status.get(s.upper(), 0) for s in STATUSES},
            "revision": ns.revision}


@click.command()
@click.option("-n", "--namespace", default="", help="Only this namespace [default: all]")
@output_option(["table", "json"])
@click.pass_obj
@handle_errors()
def stats(connection, namespace, output):
    """Agents by namespace, status and type, and each namespace's current revision.

    The revision is where a `watch --since` of that namespace would start.

    \b
    Example:
      service-registry stats
      service-registry stats -n prod -o json
    """
    async def work(client):
        reply = await client.get_stats(namespace)
        rows = [stats_dict(ns) for ns in sorted(reply.namespaces, key=lambda n: n.namespace)]
        if output in out.DOCUMENTS:
            out.print_document({"namespaces": rows, "agents": sum(r["agents"] for r in rows)},
                               output)
            return EXIT_OK
        table = out.Table(STATS_HEADERS)
        for r in rows:
            table.add([r["namespace"], r["agents"], *r["by_status"].values(),
                       *r["by_type"].values(), r["revision"]])
        if table.terminal and len(rows) > 1:
            table.add(["TOTAL", sum(r["agents"] for r in rows),
                       *(sum(r["by_status"][s] for r in rows) for s in STATUSES),
                       *(sum(r["by_type"][t] for r in rows) for t in AGENT_TYPES), ""])
        table.close()
        if not rows and table.terminal:
            note("No namespaces yet: no agent has registered.")
        return EXIT_OK

    return run(connection, work)
