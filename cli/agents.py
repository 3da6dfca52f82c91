"""`agents list|get|discover|evict`."""
from __future__ import annotations

import contextlib
import getpass
import sys

import click
from neural_hive_integration.clients import RegistryError

from server.validation import MAX_EVICT_IDS, MAX_MAX_RESULTS, MAX_PAGE_SIZE, MAX_REASON_LEN

from . import output as out
from .completion import complete_agent_id
from .connection import handle_errors, run
from .exitcodes import EXIT_ERROR, EXIT_NOT_FOUND, EXIT_OK, Failure
from .output import AgentWriter, note, output_option
from .selection import (LIST_PAGE_SIZE, KeyValue, Selection, build_filters, qualify,
                        selector_options)

EVICT_BATCH = 100
PREVIEW_ROWS = 20               # agents shown before the bulk-eviction question


@click.group()
def agents():
    """Inspect, discover and evict agents.

    \b
    Example:
      service-registry agents list --status unhealthy
      service-registry agents get default/worker-1
      service-registry agents evict --stale-for 5m --dry-run
    """


@agents.command("list")
@selector_options()
@output_option(["table", "wide", "json"])
@click.option("--limit", type=click.IntRange(min=0), default=0,
              help="Stop after this many agents (0: all)")
@click.option("--page-size", type=click.IntRange(1, MAX_PAGE_SIZE), default=LIST_PAGE_SIZE,
              show_default=True, help="Agents the server examines per ListAgents call")
@click.pass_obj
@handle_errors()
def list_agents(connection, output, limit, page_size, **selectors):
    """List agents, page by page, as they arrive.

    Columns: ID, TYPE, STATUS, CAPABILITIES, ENDPOINT, LAST HEARTBEAT (age). In a pipe the
    same columns are tab-separated, without header.

    \b
    Example:
      service-registry agents list
      service-registry agents list -n prod --status unhealthy --capability gpu
      service-registry agents list --metadata region=eu --stale-for 2m -o wide
      service-registry agents list -A -o json | jq '.[].agent_id'
    """
    selection = Selection.from_options(**selectors)

    async def work(client):
        writer = AgentWriter(output, now=out.now_ms())
        try:
            async for agent in selection.agents(client, page_size):
                writer.add(agent)
                if limit and writer.count >= limit:
                    break
        except BaseException:
            writer.abandon()
            raise
        writer.close()
        if writer.count == 0 and output not in out.DOCUMENTS and out.is_terminal():
            note(f"No agents found in {selection.scope}.")
        return EXIT_OK

    return run(connection, work)


@agents.command("get")
@click.argument("agent_id", metavar="ID", shell_complete=complete_agent_id)
@click.option("-n", "--namespace", default=None, help="Namespace of a bare ID [default: default]")
@output_option(["table", "json"])
@click.pass_obj
@handle_errors()
def get_agent(connection, agent_id, namespace, output):
    """Show the whole record of one agent (ID is "namespace/name" or a name).

    \b
    Example:
      service-registry agents get default/worker-1
      service-registry agents get worker-1 -n prod -o json
    """
    agent_id = qualify(agent_id, namespace)

    async def work(client):
        agent = await client.get_agent(agent_id)
        if agent is None:
            raise Failure(EXIT_NOT_FOUND, f"error: agent {agent_id} not found "
                                          "(not registered, expired or evicted)")
        if output in out.DOCUMENTS:
            out.print_document(out.agent_dict(agent), output)
        else:
            terminal = out.is_terminal()
            out.print_fields(
                out.agent_fields(agent, terminal), terminal)
        return EXIT_OK

    return run(connection, work)


@agents.command("discover")
@click.option("-c", "--capability", "capabilities", multiple=True, metavar="CAPABILITY",
              help="Required capability (repeatable: agents must have all)")
@click.option("-f", "--filter", "filters", type=KeyValue(), multiple=True,
              help="Filter, e.g. status=healthy, cluster=eu1, min_success_rate=0.9, or a "
                   "metadata key (repeatable)")
@click.option("-n", "--namespace", default="", help="Namespace [default: every namespace]")
@click.option("--max-results", type=click.IntRange(1, MAX_MAX_RESULTS), default=10,
              show_default=True)
@output_option(["table", "wide", "json"])
@click.pass_obj
@handle_errors()
def discover(connection, capabilities, filters, namespace, max_results, output):
    """Show what DiscoverAgents returns to an agent, in the same order (healthiest first).

    \b
    Example:
      service-registry agents discover --capability python --capability terraform \\
          --filter status=healthy --max-results 5
    """
    wanted = build_filters(filters=filters)

    async def work(client):
        found = await client.discover_agents(capabilities, wanted, max_results=max_results,
                                             namespace=namespace)
        writer = AgentWriter(output, now=out.now_ms())
        for agent in found:
            writer.add(agent)
        writer.close()
        if not found and output not in out.DOCUMENTS and out.is_terminal():
            note("No agents match.")
        return EXIT_OK

    return run(connection, work)


def default_reason() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        user = "an operator"
    return f"evicted by {user} with service-registry CLI"


@agents.command("evict")
@click.argument("agent_ids", nargs=-1, metavar="[ID]...", shell_complete=complete_agent_id)
@selector_options(namespace_help="Namespace of bare IDs, or the namespace to select from "
                                 "[default: default]")
@click.option("-r", "--reason", default=None,
              help="Recorded with each EVICTED event [default: \"evicted by <user> with "
                   "service-registry CLI\"]")
@click.option("--dry-run", is_flag=True, help="Only show what would be evicted")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation")
@click.option("--batch-size", type=click.IntRange(1, MAX_EVICT_IDS), default=EVICT_BATCH,
              show_default=True, help="Agents per EvictAgents call")
@output_option(["table", "wide", "json"])
@click.pass_obj
@handle_errors()
def evict(connection, agent_ids, reason, dry_run, yes, batch_size, output, **selectors):
    """Remove agents now, recorded as EVICTED events with a reason.

    Give agent IDs, or select agents like `agents list` does (--status, --type,
    --capability, --metadata, --filter, --stale-for, --namespace, -A). A selection is
    listed first and needs confirmation (or --yes); --dry-run only lists it. Agents are
    evicted in batches of --batch-size per call.

    Given IDs: prints "evicted <ID>" for each agent removed; exits 1 when one was not
    registered (the others are still evicted). A selection: a progress bar with the
    running count on a terminal, then one summary line (stderr); -o json lists the IDs.
    Declining the confirmation exits 4.

    \b
    Example:
      service-registry agents evict default/worker-7 --reason "stuck on job 42"
      service-registry agents evict --status unhealthy --dry-run
      service-registry agents evict -n prod --stale-for 5m --reason "no heartbeat" --yes
    """
    reason = default_reason() if reason is None else reason
    if len(reason) > MAX_REASON_LEN:
        raise click.BadParameter(f"longer than {MAX_REASON_LEN} characters",
                                 param_hint="--reason")
    selection = Selection.from_options(**selectors)
    if agent_ids:
        if selection.all_namespaces or selection.agent_type or selection.capability \
                or selection.filters or selection.stale_for:
            raise click.UsageError("give agent IDs or selectors (--status, --type, ...), "
                                   "not both")
        ids = list(dict.fromkeys(qualify(a, selection.namespace) for a in agent_ids))
        return run(connection, lambda client: _evict_ids(client, ids, reason, dry_run,
                                                         batch_size, output))
    if not selection.selects_something:
        raise click.UsageError("nothing selected: give agent IDs, or select agents with "
                               "--status, --type, --capability, --metadata, --filter, "
                               "--stale-for, --namespace or --all-namespaces")
    return run(connection, lambda client: _evict_selection(
        client, selection, reason, dry_run, yes, batch_size, output))


async def _evict_ids(client, ids, reason, dry_run, batch_size, fmt) -> int:
    if dry_run:
        writer = AgentWriter(fmt, now=out.now_ms())
        missing = []
        for agent_id in ids:
            agent = await client.get_agent(agent_id)
            if agent is None:
                missing.append(agent_id)
            else:
                writer.add(agent)
        writer.close()
        for agent_id in missing:
            note(f"error: agent {agent_id} not found")
        note(f"{writer.count} agent{_s(writer.count)} would be evicted; nothing was changed "
             "(dry run).")
        return EXIT_NOT_FOUND if missing else EXIT_OK
    evicted = await _evict_in_batches(client, ids, reason, batch_size, fmt)
    done = set(evicted)
    missing = [a for a in ids if a not in done]
    if fmt in out.DOCUMENTS:
        out.print_document({"reason": reason, "evicted": evicted, "not_found": missing}, fmt)
    for agent_id in missing:
        note(f"error: agent {agent_id} not found (not registered, expired or already evicted)")
    return EXIT_NOT_FOUND if missing else EXIT_OK


async def _evict_selection(client, selection, reason, dry_run, yes, batch_size, fmt) -> int:
    now = out.now_ms()
    ids: list[str] = []
    if dry_run:
        writer = AgentWriter(fmt, now=now)
        try:
            async for agent in selection.agents(client, now=now):
                ids.append(agent.agent_id)
                writer.add(agent)
        except BaseException:
            writer.abandon()
            raise
        writer.close()
        note(f"{len(ids)} agent{_s(len(ids))} in {selection.scope} would be evicted; nothing "
             "was changed (dry run).")
        return EXIT_OK
    preview = None
    if not yes:
        preview = AgentWriter("wide" if fmt == "wide" else "table", stream=sys.stderr, now=now)
    async for agent in selection.agents(client, now=now):
        ids.append(agent.agent_id)
        if preview is not None and len(ids) <= PREVIEW_ROWS:
            preview.add(agent)
    if not ids:
        if fmt in out.DOCUMENTS:
            out.print_document({"reason": reason, "evicted": [], "not_found": []}, fmt)
        note(f"No agents in {selection.scope} match; nothing was evicted.")
        return EXIT_OK
    if preview is not None:
        preview.close()
        if len(ids) > PREVIEW_ROWS:
            note(f"... and {len(ids) - PREVIEW_ROWS} more (see them all with --dry-run)")
        try:
            confirmed = click.confirm(
                f"Evict {len(ids)} agent{_s(len(ids))} from {selection.scope} "
                f"(reason: {reason!r})?", default=False, err=True)
        except click.Abort:  # end of input: no answer
            confirmed = False
            click.echo("", err=True)
        else:
            if not out.is_terminal(sys.stdin):  # the answer was not echoed
                click.echo("", err=True)
        if not confirmed:
            raise Failure(EXIT_ERROR, "aborted: nothing was evicted")
    evicted = await _evict_in_batches(client, ids, reason, batch_size, fmt, bulk=True)
    gone = len(ids) - len(evicted)
    if fmt in out.DOCUMENTS:
        done = set(evicted)
        out.print_document({"reason": reason, "evicted": evicted,
                            "not_found": [a for a in ids if a not in done]}, fmt)
    note(f"Evicted {len(evicted)} agent{_s(len(evicted))} from {selection.scope}"
         + (f"; {gone} {'was' if gone == 1 else 'were'} already gone" if gone else "") + ".")
    return EXIT_OK


async def _evict_in_batches(client, ids, reason, batch_size, fmt, bulk=False) -> list[str]:
    """EvictAgents over `ids`, `batch_size` at a time. Given IDs are printed as `evicted <ID>`
    (text output); a bulk selection shows a progress bar with the running count on a terminal
    (stderr) and nothing per agent: its caller prints one summary line."""
    evicted: list[str] = []
    bar = None
    if bulk and out.is_terminal(sys.stderr):
        bar = click.progressbar(length=len(ids), label="Evicting", file=sys.stderr,
                                show_pos=True, show_eta=len(ids) > 10 * batch_size)
    with bar if bar is not None else contextlib.nullcontext():
        try:
            for start in range(0, len(ids), batch_size):
                batch = ids[start:start + batch_size]
                for agent_id in await client.evict_agents(batch, reason):
                    evicted.append(agent_id)
                    if not bulk and fmt not in out.DOCUMENTS:
                        click.echo(f"evicted {agent_id}")
                if bar is not None:
                    bar.label = f"Evicting ({len(evicted)} evicted)"
                    bar.update(len(batch))
        except RegistryError as exc:
            if evicted:  # said in the error line: the eviction stopped part way
                exc.details = (f"{exc.details} ({len(evicted)} of {len(ids)} agents were "
                               "evicted before the error)")
            raise
    return evicted


def _s(n: int) -> str:
    return "" if n == 1 else "s"
