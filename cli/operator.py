"""Operator commands: `agents list|get|discover|evict`, `watch`, `notify` and `stats`.

They talk to a running server over gRPC through the asyncio client, so every rule of the server
(validation, limits, authentication) applies to them. Exit codes: 0 success, 1 not found,
2 usage (also when the server rejects an argument), 3 server unavailable (cannot connect,
UNAVAILABLE, DEADLINE_EXCEEDED), 4 other errors (including a declined confirmation).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import getpass
import json
import os
import re
import sys
from dataclasses import dataclass, field

import click
import grpc
from neural_hive_integration.clients import (AgentInfo, RegistryError, ServiceRegistryClient,
                                             WatchCompacted)
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

from . import output as out
from .output import note

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_ERROR = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130

DEFAULT_PORT = 50051
DEFAULT_NAMESPACE = "default"
DEFAULT_TIMEOUT = 5.0
# Unary calls that find the server unreachable are retried this often (~0.1 s, 0.2 s, 0.4 s
# apart), so an unreachable server ends the command with exit code 3 in about a second.
CONNECT_RETRIES = 3
LIST_PAGE_SIZE = 500
EVICT_BATCH = 100
MAX_EVICT_BATCH = 1000          # the server's limit per EvictAgents call
MAX_REASON_LEN = 256            # the server's limit for an eviction reason
PREVIEW_ROWS = 20               # agents shown before the bulk-eviction question

AGENT_TYPES = ["worker", "scout", "guard"]
STATUSES = ["healthy", "degraded", "unhealthy"]
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


class Failure(Exception):
    """Ends a command with one line on stderr and exit code `code`."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def one_line(text: str) -> str:
    return " ".join(str(text).split())


# -- connection ---------------------------------------------------------------------------------

def parse_addr(text: str) -> tuple[str, int]:
    """"host:port", "host", "[v6]:port" or a bare IPv6 address -> (host for gRPC, port)."""
    text = text.strip()
    if text.startswith("["):
        inner, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise Failure(EXIT_USAGE, f"error: --addr: {text!r} is not host:port")
        host, port = f"[{inner}]", rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif text.count(":") > 1:
        host, port = f"[{text}]", ""
    else:
        host, port = text, ""
    if not host or host == "[]":
        raise Failure(EXIT_USAGE, f"error: --addr: {text!r} has no host")
    try:
        number = int(port) if port else DEFAULT_PORT
    except ValueError:
        number = 0
    if not 0 < number < 65536:
        raise Failure(EXIT_USAGE, f"error: --addr: {port!r} is not a TCP port (1..65535)")
    return host, number


@dataclass
class Connection:
    """The group's global options; `client()` opens the gRPC client they describe."""
    addr: str | None = None
    token: str | None = None
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    def target(self) -> tuple[str, int]:
        if self.addr:
            return parse_addr(self.addr)
        host = os.environ.get("SERVICE_REGISTRY_HOST", "").strip()
        if host in _WILDCARD_HOSTS:  # the server's "listen everywhere" address
            host = "localhost"
        port = os.environ.get("SERVICE_REGISTRY_PORT", "").strip()
        return parse_addr(f"{host}:{port}" if port else host)

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls or self.tls_ca or self.tls_cert)

    @property
    def address(self) -> str:
        host, port = self.target()
        return f"{host}:{port}"

    def _pem(self, path: str | None, option: str) -> bytes | None:
        if not path:
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise Failure(EXIT_USAGE, f"error: {option}: cannot read {path}: "
                                      f"{exc.strerror or exc}") from None

    def client(self) -> ServiceRegistryClient:
        host, port = self.target()
        if bool(self.tls_cert) != bool(self.tls_key):
            raise Failure(EXIT_USAGE, "error: --tls-cert and --tls-key must be given together")
        roots = self._pem(self.tls_ca, "--tls-ca")
        chain = self._pem(self.tls_cert, "--tls-cert")
        key = self._pem(self.tls_key, "--tls-key")
        return ServiceRegistryClient(
            host, port, token=self.token or "", tls=self.uses_tls,
            root_certificates=roots, certificate_chain=chain, private_key=key,
            timeout=self.timeout, retries=CONNECT_RETRIES, backoff=0.1, max_backoff=2.0)


def connection_options(fn):
    """The global options of `service-registry` (used by the operator commands)."""
    options = [
        click.option("--addr", metavar="HOST:PORT", default=None,
                     help="Server address [default: $SERVICE_REGISTRY_HOST:"
                          "$SERVICE_REGISTRY_PORT, else localhost:50051]"),
        click.option("--token", envvar="SERVICE_REGISTRY_TOKEN", default=None, metavar="TOKEN",
                     help="Bearer token [env SERVICE_REGISTRY_TOKEN]"),
        click.option("--tls", is_flag=True, envvar="SERVICE_REGISTRY_TLS", default=False,
                     help="Use TLS with the system's CA certificates [env SERVICE_REGISTRY_TLS]"),
        click.option("--tls-ca", envvar="SERVICE_REGISTRY_TLS_CA", default=None, metavar="PEM",
                     help="CA certificate(s) to verify the server; implies TLS "
                          "[env SERVICE_REGISTRY_TLS_CA]"),
        click.option("--tls-cert", envvar="SERVICE_REGISTRY_TLS_CERT", default=None,
                     metavar="PEM", help="Client certificate for mutual TLS "
                                         "[env SERVICE_REGISTRY_TLS_CERT]"),
        click.option("--tls-key", envvar="SERVICE_REGISTRY_TLS_KEY", default=None, metavar="PEM",
                     help="Client private key for mutual TLS [env SERVICE_REGISTRY_TLS_KEY]"),
        click.option("--timeout", type=click.FloatRange(min=0.1), default=DEFAULT_TIMEOUT,
                     show_default=True, metavar="SECONDS",
                     help="Deadline of each call to the server"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


# -- running a command: one event loop, one client, errors as exit codes -------------------------

def describe(exc: RegistryError, connection: Connection) -> tuple[int, str]:
    code, details = exc.code, one_line(exc.details)
    where = _safe_address(connection)
    if code == grpc.StatusCode.NOT_FOUND:
        return EXIT_NOT_FOUND, f"error: not found: {details}"
    if code == grpc.StatusCode.UNAVAILABLE:
        hint = "is the server running?"
        if not connection.uses_tls and "socket closed" in details.lower():
            hint = "is the server running? does it use TLS (--tls-ca)?"
        return EXIT_UNAVAILABLE, f"error: registry at {where} is unavailable: {details} ({hint})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return EXIT_UNAVAILABLE, (f"error: registry at {where} did not answer within "
                                  f"{connection.timeout:g}s (DEADLINE_EXCEEDED)")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return EXIT_USAGE, f"error: invalid argument: {details}"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return EXIT_ERROR, (f"error: {_prefixed('not authenticated', details)} (pass --token "
                            "or set SERVICE_REGISTRY_TOKEN)")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return EXIT_ERROR, f"error: {_prefixed('permission denied', details)}"
    if code == grpc.StatusCode.OUT_OF_RANGE:
        return EXIT_ERROR, f"error: {details}"
    return EXIT_ERROR, f"error: {code.name}: {details}"


def _prefixed(prefix: str, details: str) -> str:
    return details if details.lower().startswith(prefix) else f"{prefix}: {details}"


def _safe_address(connection: Connection) -> str:
    try:
        return connection.address
    except Failure:
        return str(connection.addr)


def _quiet_stdout() -> None:
    """After a broken pipe (`... | head`): stop Python from complaining when it flushes."""
    with contextlib.suppress(Exception):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def handle_errors(interrupt_code: int = EXIT_INTERRUPTED):
    """Turns every failure of the wrapped command into one stderr line and an exit code."""
    def wrap(fn):
        @functools.wraps(fn)
        def command(*args, **kwargs):
            ctx = click.get_current_context()
            connection = ctx.find_object(Connection) or Connection()
            try:
                code = fn(*args, **kwargs)
            except (click.exceptions.Exit, click.ClickException, click.Abort):
                raise
            except Failure as exc:
                click.echo(exc.message, err=True)
                code = exc.code
            except RegistryError as exc:
                code, message = describe(exc, connection)
                click.echo(message, err=True)
            except BrokenPipeError:
                _quiet_stdout()
                code = EXIT_OK
            except KeyboardInterrupt:
                if interrupt_code:
                    click.echo("interrupted", err=True)
                code = interrupt_code
            except Exception as exc:  # noqa: BLE001 - never a traceback
                click.echo(f"error: unexpected {type(exc).__name__}: {one_line(exc)}", err=True)
                code = EXIT_ERROR
            ctx.exit(code or EXIT_OK)
        return command
    return wrap


def run(connection: Connection, work):
    """Runs `await work(client)` in a new event loop; returns its result."""
    async def main():
        client = connection.client()
        try:
            return await work(client)
        finally:
            await client.close()
    return asyncio.run(main())


# -- parameters ---------------------------------------------------------------------------------

class KeyValue(click.ParamType):
    name = "KEY=VALUE"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        key, eq, val = str(value).partition("=")
        if not eq or not key.strip():
            self.fail(f"{value!r} is not KEY=VALUE", param, ctx)
        return key.strip(), val


_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str) -> float:
    """Seconds in "90", "30s", "5m", "1h30m", "2d", "500ms"; ValueError otherwise."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    elif text and re.fullmatch(f"(?:{_DURATION_PART.pattern})+", text):
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
    else:
        raise ValueError(text)
    if seconds <= 0:
        raise ValueError(text)
    return seconds


class Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a duration (e.g. 90s, 5m, 1h30m, 2d)", param, ctx)


def build_filters(status=None, metadata=(), filters=()) -> dict[str, str]:
    """Server-side filters from --status, --metadata K=V and --filter K=V (see validation.py)."""
    result: dict[str, str] = {}

    def put(key: str, value: str, option: str) -> None:
        if key in result and result[key] != value:
            raise click.BadParameter(f"{key} is given twice with different values",
                                     param_hint=option)
        result[key] = value

    if status:
        put("status", status, "--status")
    for key, value in metadata:
        put(key if key.startswith("metadata.") else f"metadata.{key}", value, "--metadata")
    for key, value in filters:
        put(key, value, "--filter")
    return result


def qualify(agent_id: str, namespace: str | None) -> str:
    """"name" -> "namespace/name" (the server's default namespace when none is given)."""
    agent_id = agent_id.strip()
    if "/" in agent_id or not agent_id:
        return agent_id
    return f"{namespace or DEFAULT_NAMESPACE}/{agent_id}"


def output_option(choices, default="table", json_lines: bool = False):
    help_text = {
        "table": "table: aligned on a terminal, tab-separated without header in a pipe",
        "wide": "wide: table plus cluster, version, telemetry and metadata",
        "json": "json: one JSON object per line" if json_lines else "json: one JSON document",
    }
    described = "; ".join(help_text[c] for c in choices if c in help_text)
    return click.option("-o", "--output", type=click.Choice(choices), default=default,
                        show_default=True, help=f"Output format ({described})")


@dataclass
class Selection:
    """Which agents a list, eviction or watch covers."""
    namespace: str | None = None
    all_namespaces: bool = False
    agent_type: str = ""
    capability: str = ""
    filters: dict[str, str] = field(default_factory=dict)
    stale_for: float | None = None

    @classmethod
    def from_options(cls, namespace=None, all_namespaces=False, agent_type=None, status=None,
                     capability=None, metadata=(), filters=(), stale_for=None) -> "Selection":
        if all_namespaces and namespace:
            raise click.BadParameter("give either --namespace or --all-namespaces",
                                     param_hint="--all-namespaces")
        return cls(namespace=namespace, all_namespaces=all_namespaces,
                   agent_type=agent_type or "", capability=capability or "",
                   filters=build_filters(status, metadata, filters), stale_for=stale_for)

    @property
    def selects_something(self) -> bool:
        return bool(self.namespace or self.all_namespaces or self.agent_type or self.capability
                    or self.filters or self.stale_for)

    @property
    def scope(self) -> str:
        return ("all namespaces" if self.all_namespaces
                else f"namespace {self.namespace or DEFAULT_NAMESPACE}")

    async def namespaces(self, client: ServiceRegistryClient) -> list[str]:
        if not self.all_namespaces:
            return [self.namespace or DEFAULT_NAMESPACE]
        stats = await client.get_stats()
        return sorted(ns.namespace for ns in stats.namespaces)

    async def agents(self, client: ServiceRegistryClient, page_size: int = LIST_PAGE_SIZE,
                     now: int | None = None):
        """Matching agents, page by page through ListAgents (never all at once)."""
        cutoff = None
        if self.stale_for:
            cutoff = (out.now_ms() if now is None else now) - int(self.stale_for * 1000)
        for ns in await self.namespaces(client):
            async for agent in client.iter_agents(
                    agent_type=self.agent_type, namespace=ns, filters=self.filters,
                    capability=self.capability, page_size=page_size):
                if cutoff is not None:
                    seen = agent.last_heartbeat_unix_ms or agent.registered_at_unix_ms
                    if seen > cutoff:
                        continue
                yield agent


def selector_options(stale: bool = True, all_namespaces: bool = True, namespace_help=None):
    def decorate(fn):
        options = [
            click.option("-n", "--namespace", default=None, metavar="NAMESPACE",
                         help=namespace_help or "Namespace [default: default]"),
        ]
        if all_namespaces:
            options.append(click.option("-A", "--all-namespaces", is_flag=True,
                                        help="Every namespace the server knows"))
        options += [
            click.option("-t", "--type", "agent_type", type=click.Choice(AGENT_TYPES),
                         help="Only agents of this type"),
            click.option("-s", "--status", type=click.Choice(STATUSES),
                         help="Only agents with this status"),
            click.option("-c", "--capability", metavar="CAPABILITY",
                         help="Only agents with this capability"),
            click.option("-m", "--metadata", type=KeyValue(), multiple=True,
                         help="Only agents with this metadata value (repeatable)"),
            click.option("-f", "--filter", "filters", type=KeyValue(), multiple=True,
                         help="Any server filter, e.g. cluster=eu1, version=2.0, "
                              "min_success_rate=0.9, max_avg_duration_ms=50 (repeatable)"),
        ]
        if stale:
            options.append(click.option(
                "--stale-for", type=Duration(), default=None,
                help="Only agents whose last heartbeat is older than this (e.g. 90s, 5m)"))
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorate


class AgentWriter:
    """Agents in the chosen output format (table, wide or json), streamed."""

    def __init__(self, fmt: str, stream=None, now: int | None = None):
        self.fmt = fmt
        self.now = now
        if fmt == "json":
            self.sink = out.JsonArray(stream)
        else:
            self.sink = out.Table(out.agent_headers(fmt == "wide"), stream=stream)

    @property
    def count(self) -> int:
        return self.sink.count

    @property
    def terminal(self) -> bool:
        return isinstance(self.sink, out.Table) and self.sink.terminal

    def add(self, agent: AgentInfo) -> None:
        if self.fmt == "json":
            self.sink.add(out.agent_dict(agent))
        else:
            self.sink.add(out.agent_row(agent, self.fmt == "wide", self.now))

    def close(self) -> None:
        self.sink.close()

    def abandon(self) -> None:
        """After an error: show the rows held back, but leave a JSON document unfinished."""
        if isinstance(self.sink, out.Table):
            self.sink.close()


# -- agents -------------------------------------------------------------------------------------

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
@click.option("--page-size", type=click.IntRange(1, 1000), default=LIST_PAGE_SIZE,
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
        if writer.count == 0 and output != "json" and out.is_terminal():
            note(f"No agents found in {selection.scope}.")
        return EXIT_OK

    return run(connection, work)


@agents.command("get")
@click.argument("agent_id", metavar="ID")
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
        if output == "json":
            out.print_json(out.agent_dict(agent))
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
@click.option("--max-results", type=click.IntRange(1, 1000), default=10, show_default=True)
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
        if not found and output != "json" and out.is_terminal():
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
@click.argument("agent_ids", nargs=-1, metavar="[ID]...")
@selector_options(namespace_help="Namespace of bare IDs, or the namespace to select from "
                                 "[default: default]")
@click.option("-r", "--reason", default=None,
              help="Recorded with each EVICTED event [default: \"evicted by <user> with "
                   "service-registry CLI\"]")
@click.option("--dry-run", is_flag=True, help="Only show what would be evicted")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation")
@click.option("--batch-size", type=click.IntRange(1, MAX_EVICT_BATCH), default=EVICT_BATCH,
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

    Prints "evicted <ID>" for each agent removed. Exits 1 when a given ID was not
    registered (the others are still evicted). Declining the confirmation exits 4.

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
    if fmt == "json":
        out.print_json({"reason": reason, "evicted": evicted, "not_found": missing})
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
        if fmt == "json":
            out.print_json({"reason": reason, "evicted": [], "not_found": []})
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
    evicted = await _evict_in_batches(client, ids, reason, batch_size, fmt)
    gone = len(ids) - len(evicted)
    if fmt == "json":
        done = set(evicted)
        out.print_json({"reason": reason, "evicted": evicted,
                           "not_found": [a for a in ids if a not in done]})
    note(f"Evicted {len(evicted)} agent{_s(len(evicted))} from {selection.scope}"
         + (f"; {gone} {'was' if gone == 1 else 'were'} already gone" if gone else "") + ".")
    return EXIT_OK


async def _evict_in_batches(client, ids, reason, batch_size, fmt) -> list[str]:
    """EvictAgents over `ids`, `batch_size` at a time; prints each evicted id (text output)."""
    evicted: list[str] = []
    try:
        for start in range(0, len(ids), batch_size):
            for agent_id in await client.evict_agents(ids[start:start + batch_size], reason):
                evicted.append(agent_id)
                if fmt != "json":
                    click.echo(f"evicted {agent_id}")
    except RegistryError as exc:
        if evicted:  # said in the error line: the eviction stopped part way
            exc.details = (f"{exc.details} ({len(evicted)} of {len(ids)} agents were evicted "
                           "before the error)")
        raise
    return evicted


def _s(n: int) -> str:
    return "" if n == 1 else "s"


# -- watch --------------------------------------------------------------------------------------

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


@click.command()
@selector_options(stale=False, all_namespaces=False)
@click.option("--agent", "agent_id", default=None, metavar="ID",
              help="Watch one agent (and its notifications)")
@click.option("--since", "since", default=None, metavar="REVISION",
              help="Resume after this revision (no snapshot)")
@click.option("--no-snapshot", is_flag=True, help="Only live events, no snapshot first")
@click.option("--max-events", type=click.IntRange(min=1), default=None,
              help="Exit after printing this many events")
@output_option(["table", "json"], json_lines=True)
@click.pass_obj
@handle_errors(interrupt_code=EXIT_OK)
def watch(connection, agent_id, since, no_snapshot, max_events, output, **selectors):
    """Print agent events live, until interrupted (Ctrl-C).

    Without --since it starts with a SNAPSHOT of the matching agents and a SNAPSHOT_END
    line whose revision marks the start of live events. After a disconnect it resumes from
    the last revision it printed, so no event is lost or printed twice. Columns: TIME,
    REVISION, EVENT, AGENT, STATUS, DETAIL (eviction reason or notification). With -o json
    it prints one JSON object per line.

    \b
    Example:
      service-registry watch
      service-registry watch -n prod --status unhealthy --no-snapshot
      service-registry watch --since 1767225600000-0 -o json
    """
    if since is not None and not _REVISION_RE.match(since.strip()):
        raise click.BadParameter(f"{since!r} is not a revision (e.g. 1767225600000-0)",
                                 param_hint="--since")
    selection = Selection.from_options(**selectors)
    namespace = selection.namespace or DEFAULT_NAMESPACE
    target = qualify(agent_id, namespace) if agent_id else ""

    async def work(client):
        # One unary call first: an unreachable server or a bad namespace fails fast here,
        # while a disconnect later is resumed by the client.
        await client.get_stats(namespace)
        terminal = out.is_terminal()
        table = None
        if output != "json":
            table = out.Table(WATCH_HEADERS, buffer_rows=1,
                                              min_widths=WATCH_MIN_WIDTHS)
        printed = 0
        events = client.watch(namespace, capability=selection.capability,
                              agent_type=selection.agent_type, filters=selection.filters,
                              since_revision=(since or "").strip(), snapshot=not no_snapshot,
                              agent_id=target)
        async with contextlib.aclosing(events):
            async for event in events:
                if event.type == pb.PROGRESS:
                    continue
                if table is None:
                    click.echo(json.dumps(event_dict(event), ensure_ascii=False))
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


# -- notify -------------------------------------------------------------------------------------

class JsonText(click.ParamType):
    name = "JSON"

    def convert(self, value, param, ctx):
        try:
            json.loads(value)
        except ValueError as exc:
            self.fail(f"not valid JSON: {exc}", param, ctx)
        return value


@click.command()
@click.argument("agent_id", metavar="ID")
@click.option("-k", "--kind", required=True, help="What the message is about (at most 64 chars)")
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
        if output == "json":
            out.print_json({"notification_id": nid, "agent_id": agent_id})
        elif out.is_terminal():
            click.echo(f"Queued notification {nid} ({kind}) for {agent_id}.")
        else:
            click.echo(nid)
        return EXIT_OK

    return run(connection, work)


# -- stats --------------------------------------------------------------------------------------

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
        if output == "json":
            out.print_json({"namespaces": rows,
                                            "agents": sum(r["agents"] for r in rows)})
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


COMMANDS = [agents, watch, notify, stats]
