"""Input validation: every check raises InvalidArgument naming the offending field.

Limits are documented in the README ("Limits"); change them here only.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass

from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

from . import keys

DEFAULT_NAMESPACE = "default"
MAX_CAPABILITIES = 32
MAX_CAPABILITY_LEN = 64
MAX_METADATA_KEYS = 32
MAX_METADATA_KEY_LEN = 64
MAX_METADATA_BYTES = 4096          # all keys and values together
MAX_TEXT_LEN = 256                 # endpoint
MAX_SHORT_LEN = 64                 # cluster, version
MAX_AGENT_NAME_LEN = 128
DEFAULT_MAX_RESULTS = 10
MAX_MAX_RESULTS = 1000
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_FILTERS = 16
MAX_NOTIFY_KIND_LEN = 64
MAX_NOTIFY_PAYLOAD_BYTES = 8192
MAX_ACKS = 256
MAX_BATCH = 1000
MAX_EVICT_IDS = 1000
MAX_REASON_LEN = 256              # an eviction reason

_NAMESPACE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
_CAPABILITY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+#-]*$")
_METADATA_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
_STREAM_ID_RE = re.compile(r"^([0-9]{1,20})(?:-([0-9]{1,20}))?$")  # ASCII digits only
MAX_STREAM_ID_PART = 2**64 - 1   # Redis refuses larger stream id parts

AGENT_TYPES = {v: k for k, v in pb.AgentType.items() if v}        # 1 -> "WORKER"
STATUSES = {v: k for k, v in pb.AgentStatus.items() if v}         # 1 -> "HEALTHY"
_TYPE_BY_NAME = {name.lower(): v for v, name in AGENT_TYPES.items()}
_STATUS_BY_NAME = {name.lower(): v for v, name in STATUSES.items()}

# Filter keys naming a record field (exact match); anything else is a metadata key.
_EXACT_FILTERS = {"cluster": "cluster", "version": "version", "endpoint": "endpoint"}
TELEMETRY_METRICS = ("success_rate", "avg_duration_ms", "total_executions", "failed_executions")


class InvalidArgument(ValueError):
    """A request field is malformed; the message starts with the field's name."""


@dataclass(frozen=True)
class AgentRef:
    namespace: str
    name: str

    @property
    def agent_id(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class AgentSpec:
    """A validated Register request: what register.lua stores."""
    agent_type: int
    status: int
    capabilities: list[str]
    endpoint: str
    cluster: str
    version: str
    metadata: dict[str, str]
    card_json: str  # "" = no Agent Card


@dataclass(slots=True)  # not frozen: built per heartbeat, a frozen __init__ costs more
class Beat:
    """A validated heartbeat: telemetry None when the request has none."""
    ref: AgentRef
    status: int
    telemetry: tuple[str, str, str, str] | None
    acks: tuple[str, ...]


@dataclass(frozen=True)
class Filters:
    """Filters translated to agent-hash fields, as the Lua `matches` function takes them."""
    namespace: str | None
    clauses: tuple[tuple[str, str, str], ...]

    def as_json(self) -> str:
        return json.dumps(self.clauses)


def namespace(value: str, field: str = "namespace") -> str:
    if not value:
        return DEFAULT_NAMESPACE
    if not _NAMESPACE_RE.match(value):
        raise InvalidArgument(
            f"{field}: {value[:80]!r} is not a namespace (lowercase letters, digits, '.', '_', "
            "'-'; at most 63 characters)")
    return value


def agent_name(value: str, field: str = "agent_id") -> str:
    if len(value) > MAX_AGENT_NAME_LEN or not _NAME_RE.match(value):
        raise InvalidArgument(
            f"{field}: {value[:80]!r} is not a valid agent name (letters, digits, '.', '_', ':', "
            f"'-'; at most {MAX_AGENT_NAME_LEN} characters)")
    return value


def agent_ref(agent_id: str, default_namespace: str = "", field: str = "agent_id") -> AgentRef:
    """Parses "namespace/name", or a bare "name" in `default_namespace` (or "default"). A given
    `default_namespace` must match the id's own."""
    if not agent_id:
        raise InvalidArgument(f"{field} is required")
    ns, slash, name = agent_id.rpartition("/")
    if not slash:
        return AgentRef(namespace(default_namespace), agent_name(name, field))
    ns = namespace(ns, field)
    if default_namespace and ns != default_namespace:
        raise InvalidArgument(f"{field}: namespace {ns!r} differs from namespace "
                              f"{default_namespace!r} of the request")
    return AgentRef(ns, agent_name(name, field))


def agent_type(value: int, field: str = "agent_type", required: bool = True) -> int:
    if value == 0 and not required:
        return 0
    if value not in AGENT_TYPES:
        if value == 0:
            raise InvalidArgument(f"{field} is required (WORKER, SCOUT or GUARD)")
        raise InvalidArgument(f"{field}: unknown agent type {value}")
    return value


def status(value: int, field: str = "status") -> int:
    if value != 0 and value not in STATUSES:
        raise InvalidArgument(f"{field}: unknown status {value}")
    return value


def _text(value: str, field: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidArgument(f"{field}: longer than {limit} characters")
    if "\x00" in value:
        raise InvalidArgument(f"{field}: contains a NUL character")
    return value


def capabilities(values, field: str = "capabilities") -> list[str]:
    if len(values) > MAX_CAPABILITIES:
        raise InvalidArgument(f"{field}: {len(values)} given, at most {MAX_CAPABILITIES}")
    for cap in values:
        if len(cap) > MAX_CAPABILITY_LEN or not _CAPABILITY_RE.match(cap):
            raise InvalidArgument(
                f"{field}: {cap[:80]!r} is not a valid capability (letters, digits and "
                f"'._:/+#-', at most {MAX_CAPABILITY_LEN} characters)")
    return sorted(set(values))


def metadata(values, field: str = "metadata") -> dict[str, str]:
    if len(values) > MAX_METADATA_KEYS:
        raise InvalidArgument(f"{field}: {len(values)} keys given, at most {MAX_METADATA_KEYS}")
    total = 0
    for k, v in values.items():
        if len(k) > MAX_METADATA_KEY_LEN or not _METADATA_KEY_RE.match(k):
            raise InvalidArgument(f"{field}: key {k[:80]!r} is not valid (letters, digits and "
                                  f"'._/-', at most {MAX_METADATA_KEY_LEN} characters)")
        _text(v, f"{field}[{k!r}]", MAX_METADATA_BYTES)
        total += len(k.encode()) + len(v.encode())
    if total > MAX_METADATA_BYTES:
        raise InvalidArgument(f"{field}: {total} bytes in all, at most {MAX_METADATA_BYTES}")
    return dict(values)


def endpoint(value: str) -> str:
    return _text(value, "endpoint", MAX_TEXT_LEN)


def short_text(value: str, field: str) -> str:
    return _text(value, field, MAX_SHORT_LEN)


def telemetry(t, field: str = "telemetry") -> tuple[str, str, str, str]:
    """The four telemetry values as strings for Lua, after range checks."""
    if not (0.0 <= t.success_rate <= 1.0):
        raise InvalidArgument(f"{field}.success_rate: {t.success_rate} is not within 0..1")
    if not math.isfinite(t.avg_duration_ms) or t.avg_duration_ms < 0:
        raise InvalidArgument(f"{field}.avg_duration_ms: {t.avg_duration_ms} is not a duration")
    if t.total_executions < 0:
        raise InvalidArgument(f"{field}.total_executions: must not be negative")
    if t.failed_executions < 0 or t.failed_executions > max(t.total_executions, 0):
        raise InvalidArgument(f"{field}.failed_executions: must be within 0..total_executions")
    return (repr(t.success_rate), repr(t.avg_duration_ms), str(t.total_executions),
            str(t.failed_executions))


def selection(value: int, field: str = "selection") -> int:
    """The Discover selection mode; UNSPECIFIED is RANKED."""
    if value not in pb.SelectionMode.values():
        raise InvalidArgument(f"{field}: unknown selection mode {value}")
    return value or pb.RANKED


def stream_id(value: str, field: str, seq_required: bool = True) -> str:
    """A Redis stream id "<ms>-<seq>" (the seq may be left out where `seq_required` is False),
    each part a 64-bit unsigned integer, as Redis would accept it; returned in full form."""
    m = _STREAM_ID_RE.match(value)
    ok = m is not None and (m.group(2) is not None or not seq_required)
    if ok:
        ms, seq = int(m.group(1)), int(m.group(2) or 0)
        if ms <= MAX_STREAM_ID_PART and seq <= MAX_STREAM_ID_PART:
            return f"{ms}-{seq}"
    raise InvalidArgument(f"{field}: {value[:40]!r} is not a valid id (<ms>-<seq>, each a "
                          "64-bit unsigned integer)")


def bounded_count(value: int, field: str, default: int, maximum: int) -> int:
    if value == 0:
        return default
    if value < 0 or value > maximum:
        raise InvalidArgument(f"{field}: {value} is not within 1..{maximum}")
    return value


def _number(value: str, field: str) -> str:
    try:
        number = float(value)
    except ValueError:
        raise InvalidArgument(f"{field}: {value[:80]!r} is not a number") from None
    if not math.isfinite(number):
        raise InvalidArgument(f"{field}: {value[:80]!r} is not a finite number")
    return repr(number)


def filters(values, field: str = "filters") -> Filters:
    """Translates Discover/List/Watch filters (README "Discover filters") to hash-field clauses."""
    if len(values) > MAX_FILTERS:
        raise InvalidArgument(f"{field}: {len(values)} given, at most {MAX_FILTERS}")
    F = keys.FIELDS
    ns = None
    clauses = []
    for key, value in sorted(values.items()):
        where = f"{field}[{key!r}]"
        if key == "namespace":
            ns = namespace(value, where)
        elif key == "status":
            code = _STATUS_BY_NAME.get(value.lower())
            if code is None:
                raise InvalidArgument(f"{where}: {value[:40]!r} is not one of healthy, degraded, "
                                      "unhealthy")
            clauses.append((F["status"], "eq", str(code)))
        elif key in ("agent_type", "type"):
            code = _TYPE_BY_NAME.get(value.lower())
            if code is None:
                raise InvalidArgument(f"{where}: {value[:40]!r} is not one of worker, scout, guard")
            clauses.append((F["agent_type"], "eq", str(code)))
        elif key in _EXACT_FILTERS:
            clauses.append((F[_EXACT_FILTERS[key]], "eq", _text(value, where, MAX_TEXT_LEN)))
        elif key.startswith(("min_", "max_")):
            metric = key[4:]
            if metric not in TELEMETRY_METRICS:
                raise InvalidArgument(f"{where}: unknown metric {metric!r} (one of "
                                      f"{', '.join(TELEMETRY_METRICS)})")
            clauses.append((F[metric], "ge" if key[:3] == "min" else "le", _number(value, where)))
        else:
            meta_key = key[len("metadata."):] if key.startswith("metadata.") else key
            if not _METADATA_KEY_RE.match(meta_key) or len(meta_key) > MAX_METADATA_KEY_LEN:
                raise InvalidArgument(f"{where}: not a filter name or metadata key")
            clauses.append((keys.METADATA_PREFIX + meta_key, "eq",
                            _text(value, where, MAX_TEXT_LEN)))
    return Filters(ns, tuple(clauses))


def agent_spec(request, card) -> AgentSpec:
    """A Register request with its parsed Agent Card (or None): with a card, agent_type
    defaults to WORKER and the card fills in endpoint, version and more capabilities."""
    kind = agent_type(request.agent_type or (pb.WORKER if card else 0))
    initial = status(request.status) or pb.HEALTHY
    caps = capabilities(request.capabilities)
    meta = metadata(request.metadata)
    where = endpoint(request.endpoint or (card.endpoint if card else ""))
    cluster = short_text(request.cluster, "cluster")
    version = short_text(request.version or (card.version if card else ""), "version")
    if card:
        caps = sorted(set(caps) | set(card.capabilities))
    return AgentSpec(kind, initial, caps, where, cluster, version, meta,
                     card.json if card else "")


def heartbeat(request) -> Beat:
    ref = agent_ref(request.agent_id)
    beat_status = status(request.status)
    measured = telemetry(request.telemetry) if request.HasField("telemetry") else None
    if len(request.ack_notification_ids) > MAX_ACKS:
        raise InvalidArgument(f"ack_notification_ids: at most {MAX_ACKS}")
    for nid in request.ack_notification_ids:
        stream_id(nid, "ack_notification_ids")
    return Beat(ref, beat_status, measured, tuple(request.ack_notification_ids))


def batch_size(beats) -> None:
    if len(beats) > MAX_BATCH:
        raise InvalidArgument(f"heartbeats: {len(beats)} given, at most {MAX_BATCH}")


def eviction(request) -> tuple[list[AgentRef], str]:
    """The agents an EvictAgents request names, and its reason."""
    if not request.agent_ids:
        raise InvalidArgument("agent_ids: at least one is required")
    if len(request.agent_ids) > MAX_EVICT_IDS:
        raise InvalidArgument(f"agent_ids: at most {MAX_EVICT_IDS} per call")
    if len(request.reason) > MAX_REASON_LEN:
        raise InvalidArgument(f"reason: longer than {MAX_REASON_LEN} characters")
    refs = [agent_ref(a, field=f"agent_ids[{i}]") for i, a in enumerate(request.agent_ids)]
    return refs, request.reason


def notification(request) -> tuple[str, str]:
    """The kind and payload of a NotifyAgent request."""
    if not request.kind or len(request.kind) > MAX_NOTIFY_KIND_LEN:
        raise InvalidArgument(f"kind: required, at most {MAX_NOTIFY_KIND_LEN} characters")
    size = len(request.payload.encode())
    if size > MAX_NOTIFY_PAYLOAD_BYTES:
        raise InvalidArgument(f"payload: {size} bytes, at most {MAX_NOTIFY_PAYLOAD_BYTES}")
    return request.kind, request.payload


def encode_page_token(agent_type: int, after: str) -> str:
    raw = json.dumps([agent_type, after], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def page_token(token: str, types: list[int]) -> tuple[int, str]:
    """The (agent type, last name) a ListAgents page token holds; only a token this server
    could have written: an int type (not True, not 1.0: both equal 1 in Python) among `types`,
    a valid agent name or "", in the canonical encoding."""
    if not token:
        return types[0], ""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        agent_type, after = json.loads(raw)
        if (type(agent_type) is int and agent_type in types and isinstance(after, str)
                and (after == "" or agent_name(after, "page_token"))
                and encode_page_token(agent_type, after) == token):
            return agent_type, after
    except (ValueError, TypeError, binascii.Error):
        pass
    raise InvalidArgument("page_token: not a token from a previous ListAgents reply with the "
                          "same agent_type")
