"""Which agents a command covers: the selector options, their parameter types, and paging
through ListAgents."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import click
from neural_hive_integration.clients import ServiceRegistryClient

from server.validation import DEFAULT_NAMESPACE

from . import output as out

LIST_PAGE_SIZE = 500
AGENT_TYPES = ["worker", "scout", "guard"]
STATUSES = ["healthy", "degraded", "unhealthy"]


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
