"""`watch`: agent events live, resumed after a disconnect."""
from __future__ import annotations

import asyncio
import contextlib
import re

import click
from neural_hive_integration.clients import AgentInfo, WatchCompacted
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

from server.validation import DEFAULT_NAMESPACE

from . import output as out
from .completion import complete_agent_id
from .connection import handle_errors, run
from .exitcodes import EXIT_ERROR, EXIT_OK, Failure, one_line
from .output import output_option
from .selection import Selection, qualify, selector_options

EVENT_NAMES = {v: k for k, v in pb.EventType.items()}
WATCH_HEADERS = ["TIME", "REVISION", "EVENT", "AGENT", "STATUS", "DETAIL"]
WATCH_MIN_WIDTHS = [12, 15, 14, 24, 9, 0]
_REVISION_RE = re.compile(r"^\d+(-\d+)?$")


def event_time_ms(event) -> int:
    if event.revision:
        return int(event.revision.partition("-")[0])
    return 0


def event_dict(event) -> dict:
    agent = AgentInfo.from_proto(event.agent) if event.HasField("agent") else None
    notification = None
    if event.HasField("notification"):
        n = event.notification
        notification = {"notification_id": n.notification_id, "agent_id": n.agent_id,
                        "kind": n.kind, "payload": n.payload,
                        "created_at_unix_ms": n.created_at_unix_ms}
    return {"type": EVENT_NAMES.get(event.type, str(event.type)), "revision": event.revision,
            "agent": out.agent_dict(agent) if agent else None,
            "reason": event.reason, "notification": notification}


def event_row(event, terminal: bool) -> list[str]:
    kind = EVENT_NAMES.get(event.type, str(event.type))
    ms = event_time_ms(event)
    when = out.clock(ms) if terminal else out.iso(ms)
    agent_id = event.agent.agent_id if event.HasField("agent") else ""
    status = ""
    if event.HasField("agent") and event.agent.status:
        status = pb.AgentStatus.Name(event.agent.status).lower()
    detail = event.reason
    if event.HasField("notification"):
        n = event.notification
        agent_id = agent_id or n.agent_id
        detail = f"kind={n.kind} id={n.notification_id} payload={n.payload}"
    elif event.type == pb.SNAPSHOT_END:
        detail = "live events follow"
    return [when, event.revision, kind, agent_id, status, detail]


def relist_note(namespace: str, details: str) -> str:
    return (f"watch: namespace {namespace}: {one_line(details)}; listed the agents again "
            "(SNAPSHOT lines follow) and continuing")


async def follow(client, namespace: str, selection: Selection, target: str, since: str,
                 snapshot: bool):
    """The namespace's events, forever. When the stream can no longer resume (the store was
    reset, e.g. an embedded store's server restarted, or the log was compacted past the last
    revision seen), the client lists again by itself (a fresh snapshot); this says so in one
    line. A --since the log no longer covers, before any event, is the user's error
    (WatchCompacted)."""
    events = client.watch(namespace, capability=selection.capability,
                          agent_type=selection.agent_type, filters=selection.filters,
                          since_revision=since, snapshot=snapshot, agent_id=target,
                          on_resync=lambda reason: out.note(relist_note(namespace, reason)))
    async with contextlib.aclosing(events):
        async for event in events:
            yield event


async def merged(streams):
    """Events of several async iterators as they come; the first error ends them all."""
    queue: asyncio.Queue = asyncio.Queue(maxsize=1000)
    done = object()

    async def pump(stream):
        try:
            async for event in stream:
                await queue.put(event)
        except Exception as exc:  # noqa: BLE001 - raised again by the reader
            await queue.put(exc)
        else:
            await queue.put(done)

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if isinstance(item, Exception):
                raise item
            if item is done:
                running -= 1
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@click.command()
@selector_options(stale=False, all_namespaces=False)
@click.option("-A", "--all-namespaces", is_flag=True,
              help="Every namespace the token may read (those that exist when it starts)")
@click.option("--agent", "agent_id", default=None, metavar="ID", shell_complete=complete_agent_id,
              help="Watch one agent (and its notifications)")
@click.option("--since", "since", default=None, metavar="REVISION",
              help="Resume after this revision (no snapshot)")
@click.option("--no-snapshot", is_flag=True, help="Only live events, no snapshot first")
@click.option("--max-events", type=click.IntRange(min=1), default=None,
              help="Exit after printing this many events")
@output_option(["table", "json"], json_lines=True)
@click.pass_obj
@handle_errors(interrupt_code=EXIT_OK)
def watch(connection, all_namespaces, agent_id, since, no_snapshot, max_events, output,
          **selectors):
    """Print agent events live, until interrupted (Ctrl-C).

    Without --since it starts with a SNAPSHOT of the matching agents and a SNAPSHOT_END
    line whose revision marks the start of live events. After a disconnect it resumes from
    the last revision it printed, so no event is lost or printed twice. When it cannot
    resume (the store was reset: an embedded store's server restarted), it says so on
    stderr and lists the agents again (a new snapshot), then continues. Columns: TIME,
    REVISION, EVENT, AGENT, STATUS, DETAIL (eviction reason or notification). With -o json
    it prints one JSON object per line.

    \b
    Example:
      service-registry watch
      service-registry watch -A --status unhealthy
      service-registry watch -n prod --status unhealthy --no-snapshot
      service-registry watch --since 1767225600000-0 -o json
    """
    if since is not None and not _REVISION_RE.match(since.strip()):
        raise click.BadParameter(f"{since!r} is not a revision (e.g. 1767225600000-0)",
                                 param_hint="--since")
    if all_namespaces and (selectors.get("namespace") or agent_id or since):
        raise click.UsageError("-A watches every namespace: not with --namespace, --agent or "
                               "--since (a revision belongs to one namespace)")
    selection = Selection.from_options(**selectors)
    namespace = selection.namespace or DEFAULT_NAMESPACE
    target = qualify(agent_id, namespace) if agent_id else ""

    async def work(client):
        # One unary call first: an unreachable server or a bad namespace fails fast here,
        # while a disconnect later is resumed by the client.
        stats = await client.get_stats("" if all_namespaces else namespace)
        namespaces = ([ns.namespace for ns in stats.namespaces] if all_namespaces
                      else [namespace])
        if not namespaces:
            out.note("No namespaces yet (or none this token may read): nothing to watch.")
            return EXIT_OK
        terminal = out.is_terminal()
        table = None
        if output not in out.DOCUMENTS:
            table = out.Table(WATCH_HEADERS, buffer_rows=1, min_widths=WATCH_MIN_WIDTHS)
        printed = 0
        streams = [follow(client, ns, selection, target, (since or "").strip(),
                          not no_snapshot) for ns in sorted(namespaces)]
        events = streams[0] if len(streams) == 1 else merged(streams)
        async with contextlib.aclosing(events):
            async for event in events:
                if event.type == pb.PROGRESS:
                    continue
                if table is None:
                    out.print_event(event_dict(event), output)
                else:
                    table.add(event_row(event, terminal))
                printed += 1
                if max_events and printed >= max_events:
                    break
        return EXIT_OK

    try:
        return run(connection, work)
    except WatchCompacted as exc:
        raise Failure(EXIT_ERROR, f"error: {one_line(exc.details)} (list the agents again, then "
                                  "watch without --since)") from None
