"""Every Redis key and agent-hash field name, in one place.

All keys of a namespace share the hash tag ``{<namespace>}`` so each script touches one slot and
runs unchanged on Redis Cluster. A writing script is given its keys in KEYS, in the order of
SCRIPT_NAMESPACE_KEYS and SCRIPT_AGENT_KEYS; it builds from the namespace prefix only the keys
it alone can name (capability and type zsets of a stored record, agents found in an index). The
script loader injects the suffixes and positions below into every script (see ``lua_header``):
the layout is spelled only here.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

ROOT = "sr"
# Keys outside every namespace's hash tag: on Redis Cluster each lives in a slot of its own, so
# no namespace script touches them; the server writes them next to the script calls.
NAMESPACES = f"{ROOT}:namespaces"  # set: namespaces holding agents (Discover/Stats across all)
EPOCH = f"{ROOT}:epoch"            # random id written once; gone or changed = the store was reset
DUE = f"{ROOT}:due"                # zset: namespace -> earliest lease deadline (ms), a lower bound

# Suffixes after the namespace prefix.
AGENT = "a:"        # hash: the agent record
LEASE = "l:"        # string with a TTL: its expiry is the fast trigger for reaping
INBOX = "i:"        # stream: undelivered notifications for one agent
CAPABILITY = "c:"   # zset: agents with a capability, scored by health (best first)
TYPE = "t:"         # zset: agents of a type, score 0, ordered by name (stable paging)
HEALTH = "h"        # zset: every agent of the namespace, scored by health
DEADLINES = "d"     # zset: agent name -> lease deadline (ms); the sweeper's work list
COUNTS = "n"        # hash: agents per type and per status, for stats
LOG = "log"         # stream: the change log; its ids are revisions
ACTIVE = "ok"       # string: when the registry last worked here (ms): heartbeat, register, sweep
GAP = "g"           # hash s, e: the last registry outage (ms); deadlines inside it are moved once

# Fields of the COUNTS hash: agents per type and per status, e.g. "t:1", "s:3".
TYPE_COUNT = "t:"
STATUS_COUNT = "s:"
# Notification fields in an agent's INBOX stream.
INBOX_FIELDS = {"kind": "k", "payload": "p"}

# Agent hash fields (short: the hash stays in Redis's compact listpack encoding).
FIELDS = {
    "agent_type": "t",
    "status": "s",
    "capabilities": "c",
    "endpoint": "e",
    "cluster": "cl",
    "version": "v",
    "success_rate": "sr",
    "avg_duration_ms": "ad",
    "total_executions": "te",
    "failed_executions": "fe",
    "registered_at": "rg",
    "last_heartbeat": "hb",
    "deadline": "dl",
    "owner": "ow",
    "agent_card": "ac",   # A2A Agent Card JSON; only in REGISTERED/UPDATED change-log entries
    "moved": "mv",  # set once the deadline was moved forward for a registry outage
}
# Register passes the card among the metadata pairs under this key, which no metadata key can be.
AGENT_CARD_ARG = "@card"
METADATA_PREFIX = "m:"

# Change-log entry fields. Upper case, so they never collide with the agent record's fields,
# which follow them in the same entry (flat: streams store repeated field names compactly).
EVENT_FIELDS = {
    "type": "E",          # pb.EventType number
    "agent": "A",         # agent name
    "reason": "WHY",      # eviction reason
    "was": "WAS",         # previous status (STATUS_CHANGED)
    "old": "OLD",         # previous record as JSON (UPDATED)
    "notification": "N",  # notification id (NOTIFICATION)
    "kind": "K",
    "payload": "P",
}


# What a writing script declares in KEYS, in this order: the namespace's keys, then (for a
# script about one agent) that agent's. The loader injects the positions (NK, AK) into the Lua.
SCRIPT_NAMESPACE_KEYS = ("log", "deadlines", "health", "counts", "active", "gap")
SCRIPT_AGENT_KEYS = ("agent", "lease", "inbox")


# Suffix of each namespace-wide key, by the name NamespaceKeys gives it.
NAMESPACE_SUFFIXES = {"log": LOG, "deadlines": DEADLINES, "health": HEALTH, "counts": COUNTS,
                      "active": ACTIVE, "gap": GAP}


@dataclass(frozen=True)
class NamespaceKeys:
    """One namespace's keys, built once (namespace() caches them): the hot paths read fields."""
    namespace: str
    prefix: str
    log: str
    deadlines: str
    health: str
    counts: str
    active: str
    gap: str
    script_keys: tuple[str, ...]   # KEYS[1..6] of a writing script (SCRIPT_NAMESPACE_KEYS)

    def agent_script_keys(self, name: str) -> list[str]:
        """KEYS of a script about agent `name`: the namespace's, then the agent's."""
        return [*self.script_keys, self.agent(name), self.lease(name), self.inbox(name)]

    def agent(self, name: str) -> str:
        return self.prefix + AGENT + name

    def lease(self, name: str) -> str:
        return self.prefix + LEASE + name

    def inbox(self, name: str) -> str:
        return self.prefix + INBOX + name

    def capability(self, cap: str) -> str:
        return self.prefix + CAPABILITY + cap

    def agent_type(self, agent_type: int) -> str:
        return self.prefix + TYPE + str(agent_type)


@lru_cache(maxsize=4096)
def namespace(ns: str) -> NamespaceKeys:
    prefix = f"{ROOT}:{{{ns}}}:"
    named = {name: prefix + suffix for name, suffix in NAMESPACE_SUFFIXES.items()}
    return NamespaceKeys(ns, prefix, **named,
                         script_keys=tuple(named[name] for name in SCRIPT_NAMESPACE_KEYS))


def type_count(agent_type: int) -> str:
    return TYPE_COUNT + str(agent_type)


def status_count(status: int) -> str:
    return STATUS_COUNT + str(status)


def _split(key: str) -> tuple[str, str] | None:
    """(namespace, suffix) of a per-namespace key "sr:{ns}:suffix", else None."""
    head = f"{ROOT}:{{"
    if not key.startswith(head):
        return None
    ns, sep, rest = key[len(head):].partition("}:")
    return (ns, rest) if sep else None


def parse_lease_key(key: str) -> tuple[str, str] | None:
    """(namespace, name) of a lease key named in a keyspace notification, else None."""
    parts = _split(key)
    if not parts or not parts[1].startswith(LEASE):
        return None
    return parts[0], parts[1][len(LEASE):]


def parse_namespace_key(key: str) -> str | None:
    """The namespace of a per-namespace key, else None."""
    parts = _split(key)
    return parts[0] if parts else None


def lua_header() -> str:
    """Lua constants mirroring this module, prepended to every script."""
    suffixes = dict(AGENT=AGENT, LEASE=LEASE, INBOX=INBOX, CAPABILITY=CAPABILITY, TYPE=TYPE,
                    HEALTH=HEALTH, DEADLINES=DEADLINES, COUNTS=COUNTS, LOG=LOG, ACTIVE=ACTIVE,
                    GAP=GAP,
                    METADATA=METADATA_PREFIX, TYPE_COUNT=TYPE_COUNT, STATUS_COUNT=STATUS_COUNT)
    k = ", ".join(f"{name}='{v}'" for name, v in suffixes.items())
    f = ", ".join(f"{name}='{v}'" for name, v in FIELDS.items())
    e = ", ".join(f"{name}='{v}'" for name, v in EVENT_FIELDS.items())
    i = ", ".join(f"{name}='{v}'" for name, v in INBOX_FIELDS.items())
    nk = ", ".join(f"{name}={i}" for i, name in enumerate(SCRIPT_NAMESPACE_KEYS, 1))
    ak = ", ".join(f"{name}={i}" for i, name in
                   enumerate(SCRIPT_AGENT_KEYS, len(SCRIPT_NAMESPACE_KEYS) + 1))
    return (f"local K = {{{k}}}\nlocal F = {{{f}}}\nlocal EF = {{{e}}}\nlocal IF = {{{i}}}\n"
            f"local NK = {{{nk}}}\nlocal AK = {{{ak}}}\n")
