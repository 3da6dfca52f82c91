"""Output for the operator commands: aligned tables on a terminal, tab-separated text in a pipe,
JSON for scripts. Everything streams: rows are written as they arrive, never collected first.

Conventions (README, "Operator CLI"):
- stdout carries the result of a command; prompts, previews, summaries and errors go to stderr.
- In a pipe, table output has no header and no padding: one line per row, cells separated by a
  tab, tabs and newlines inside a cell replaced by spaces, empty cells written as "-".
  `--headers` keeps the header line in a pipe, `--no-headers` drops it on a terminal.
- `-o yaml` is the `-o json` document in YAML (a stream of documents where json is JSON Lines).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from datetime import datetime, timezone

import click

EMPTY = "-"
DOCUMENTS = ("json", "yaml")     # formats that print whole records as documents
_HEADERS = "service_registry.headers"  # context key: --headers / --no-headers (None: automatic)


def is_terminal(stream=None) -> bool:
    """True when `stream` (default: stdout) is an interactive terminal."""
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def now_ms() -> int:
    return int(time.time() * 1000)


def cell(value) -> str:
    if value is None:
        return EMPTY
    text = str(value)
    if not text:
        return EMPTY
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


class Table:
    """A table written row by row.

    On a terminal the first `buffer_rows` rows are held back to size the columns, then written
    with the header; later rows reuse (and widen) those widths. Elsewhere each row is written at
    once as tab-separated cells, without a header.
    """

    def __init__(self, headers, *, stream=None, terminal: bool | None = None,
                 buffer_rows: int = 200, min_widths=None):
        self.stream = sys.stdout if stream is None else stream
        self.terminal = is_terminal(self.stream) if terminal is None else terminal
        self.headers = list(headers)
        chosen = _headers_option() if self.stream is sys.stdout else None
        self.show_header = self.terminal if chosen is None else chosen
        self.buffer_rows = max(1, buffer_rows)
        self.min_widths = list(min_widths or [0] * len(self.headers))
        self.pending: list[list[str]] = []
        self.widths: list[int] | None = None
        self.count = 0

    def add(self, cells) -> None:
        cells = [cell(c) for c in cells]
        if not self.terminal:
            if self.show_header and not self.count:
                self._write("\t".join(self.headers))
            self.count += 1
            self._write("\t".join(cells))
            return
        self.count += 1
        if self.widths is None:
            self.pending.append(cells)
            if len(self.pending) >= self.buffer_rows:
                self._flush_pending()
        else:
            self._write_aligned(cells)

    def close(self) -> None:
        if self.terminal and self.widths is None and self.pending:
            self._flush_pending()

    def _flush_pending(self) -> None:
        rows = [self.headers, *self.pending]
        self.widths = [max([self.min_widths[i], *(len(r[i]) for r in rows)])
                       for i in range(len(self.headers))]
        if not self.show_header:
            rows = rows[1:]
        for row in rows:
            self._write_aligned(row)
        self.pending = []

    def _write_aligned(self, cells) -> None:
        parts = []
        last = len(cells) - 1
        for i, text in enumerate(cells):
            if i == last:
                parts.append(text)
            else:
                self.widths[i] = max(self.widths[i], len(text))
                parts.append(text.ljust(self.widths[i]))
        self._write("   ".join(parts).rstrip())

    def _write(self, line: str) -> None:
        click.echo(line, file=self.stream)


class JsonArray:
    """One JSON array written element by element (a single document, streamed)."""

    def __init__(self, stream=None):
        self.stream = sys.stdout if stream is None else stream
        self.count = 0

    def add(self, item) -> None:
        text = json.dumps(item, indent=2, ensure_ascii=False)
        text = "\n".join("  " + line for line in text.splitlines())
        click.echo(("[\n" if self.count == 0 else ",\n") + text, nl=False, file=self.stream)
        self.count += 1

    def close(self) -> None:
        click.echo("[]" if self.count == 0 else "\n]", file=self.stream)


class YamlList:
    """One YAML sequence written element by element (JsonArray's twin)."""

    def __init__(self, stream=None):
        self.stream = sys.stdout if stream is None else stream
        self.count = 0

    def add(self, item) -> None:
        click.echo(yaml_text([item]), nl=False, file=self.stream)
        self.count += 1

    def close(self) -> None:
        if self.count == 0:
            click.echo("[]", file=self.stream)


def yaml_text(document) -> str:
    import yaml  # only for -o yaml: the other commands start without it

    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, default_flow_style=False)


def print_document(document, fmt: str = "json", stream=None) -> None:
    """One whole document in `fmt` (json or yaml)."""
    text = (yaml_text(document).rstrip("\n") if fmt == "yaml"
            else json.dumps(document, indent=2, ensure_ascii=False))
    click.echo(text, file=sys.stdout if stream is None else stream)


def print_event(document, fmt: str) -> None:
    """One of a stream of documents: a JSON line, or a YAML document after `---`."""
    if fmt == "yaml":
        click.echo("---\n" + yaml_text(document), nl=False)
    else:
        click.echo(json.dumps(document, ensure_ascii=False))


def note(message: str) -> None:
    """A message for the human (stderr), never part of the result."""
    click.echo(message, err=True)


# -- values -------------------------------------------------------------------------------------

def age(ms: int, now: int | None = None) -> str:
    """How long ago `ms` (unix ms) was, compactly: 4s, 3m12s, 47m, 5h3m, 12h, 3d."""
    if not ms:
        return EMPTY
    seconds = max(0, ((now_ms() if now is None else now) - ms) // 1000)
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s"
    if minutes < 60:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 10:
        return f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


def ago(ms: int, now: int | None = None) -> str:
    text = age(ms, now)
    return text if text == EMPTY else f"{text} ago"


def iso(ms: int) -> str:
    """UTC ISO-8601 with milliseconds, e.g. 2026-05-09T07:35:25.123Z."""
    if not ms:
        return EMPTY
    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def clock(ms: int) -> str:
    """Local wall-clock time of day with milliseconds (terminal output)."""
    if not ms:
        return EMPTY
    return datetime.fromtimestamp(ms / 1000).strftime("%H:%M:%S.") + f"{ms % 1000:03d}"


def number(value: float) -> str:
    return f"{value:.4g}"


# -- agents -------------------------------------------------------------------------------------

AGENT_HEADERS = ["ID", "TYPE", "STATUS", "CAPABILITIES", "ENDPOINT", "LAST HEARTBEAT"]
WIDE_HEADERS = AGENT_HEADERS + ["CLUSTER", "VERSION", "SUCCESS", "AVG MS", "EXECUTIONS", "FAILED",
                                "METADATA"]


def agent_headers(wide: bool) -> list[str]:
    return WIDE_HEADERS if wide else AGENT_HEADERS


def agent_row(agent, wide: bool = False, now: int | None = None) -> list[str]:
    row = [agent.agent_id, agent.agent_type, agent.status, ",".join(agent.capabilities),
           agent.endpoint, ago(agent.last_heartbeat_unix_ms, now)]
    if wide:
        t = agent.telemetry
        row += [agent.cluster, agent.version, number(t.get("success_rate", 0.0)),
                number(t.get("avg_duration_ms", 0.0)), int(t.get("total_executions", 0)),
                int(t.get("failed_executions", 0)),
                ",".join(f"{k}={v}" for k, v in sorted(agent.metadata.items()))]
    return row


def agent_dict(agent) -> dict:
    """The whole record, as `-o json` prints it."""
    return dataclasses.asdict(agent)


def agent_fields(agent, terminal: bool, now: int | None = None) -> list[tuple[str, str]]:
    """(field, value) pairs of the whole record, for `agents get`."""
    now = now_ms() if now is None else now

    def when(ms: int) -> str:
        if not terminal or not ms:
            return iso(ms)
        delta = age(ms, now) if ms <= now else age(now, ms)
        return f"{iso(ms)} ({delta} ago)" if ms <= now else f"{iso(ms)} (in {delta})"

    pairs = [("agent_id", agent.agent_id), ("namespace", agent.namespace),
             ("agent_type", agent.agent_type), ("status", agent.status),
             ("capabilities", ",".join(agent.capabilities)), ("endpoint", agent.endpoint),
             ("cluster", agent.cluster), ("version", agent.version),
             ("registered_at", when(agent.registered_at_unix_ms)),
             ("last_heartbeat", when(agent.last_heartbeat_unix_ms)),
             ("expires_at", when(agent.expires_at_unix_ms))]
    for key in ("success_rate", "avg_duration_ms", "total_executions", "failed_executions"):
        value = agent.telemetry.get(key, 0)
        pairs.append((f"telemetry.{key}", number(value) if isinstance(value, float) else value))
    pairs += [(f"metadata.{k}", v) for k, v in sorted(agent.metadata.items())]
    return pairs


def print_fields(pairs, terminal: bool) -> None:
    if terminal:
        width = max(len(k) for k, _ in pairs) + 1
        for key, value in pairs:
            click.echo(f"{(key + ':').ljust(width)}  {cell(value)}")
    else:
        for key, value in pairs:
            click.echo(f"{key}\t{cell(value)}")


# -- writers --------------------------------------------------------------------------------------

def _headers_option() -> bool | None:
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(_HEADERS) if ctx is not None else None


def _remember_headers(ctx, param, value) -> None:
    if value is not None:
        ctx.meta[_HEADERS] = value


def output_option(choices, default="table", json_lines: bool = False):
    """-o/--output (yaml wherever json is), and --headers/--no-headers for tables."""
    if "json" in choices:
        choices = [*choices, "yaml"]
    help_text = {
        "table": "table: aligned on a terminal, tab-separated without header in a pipe",
        "wide": "wide: table plus cluster, version, telemetry and metadata",
        "json": "json: one JSON object per line" if json_lines else "json: one JSON document",
        "yaml": "yaml: one YAML document per event" if json_lines else "yaml: the same in YAML",
    }
    described = "; ".join(help_text[c] for c in choices if c in help_text)
    output = click.option("-o", "--output", type=click.Choice(choices), default=default,
                          show_default=True, help=f"Output format ({described})")
    headers = click.option("--headers/--no-headers", default=None, expose_value=False,
                           callback=_remember_headers,
                           help="Print the table's header line, also in a pipe / never "
                                "[default: on a terminal only]")
    return lambda fn: output(headers(fn))


class AgentWriter:
    """Agents in the chosen output format (table, wide, json or yaml), streamed."""

    def __init__(self, fmt: str, stream=None, now: int | None = None):
        self.fmt = fmt
        self.now = now
        if fmt in DOCUMENTS:
            self.sink = JsonArray(stream) if fmt == "json" else YamlList(stream)
        else:
            self.sink = Table(agent_headers(fmt == "wide"), stream=stream)

    @property
    def count(self) -> int:
        return self.sink.count

    @property
    def terminal(self) -> bool:
        return isinstance(self.sink, Table) and self.sink.terminal

    def add(self, agent) -> None:
        if self.fmt in DOCUMENTS:
            self.sink.add(agent_dict(agent))
        else:
            self.sink.add(agent_row(agent, self.fmt == "wide", self.now))

    def close(self) -> None:
        self.sink.close()

    def abandon(self) -> None:
        """After an error: show the rows held back, but leave a JSON document unfinished."""
        if isinstance(self.sink, Table):
            self.sink.close()
