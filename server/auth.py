"""Bearer-token authorization (scopes per namespace). Off unless TOKENS_FILE is set."""
from __future__ import annotations

import enum


class Scope(enum.Enum):
    READ = "read"          # get, list, discover, watch, stats
    AGENT = "agent"        # register, heartbeat, deregister (own agents) and read
    OPERATOR = "operator"  # everything, including evict and notify


class Auth:
    """check() returns the caller's owner id to bind agents to ("" when auth is off)."""

    enabled = False

    def check(self, context, scope: Scope, namespace: str) -> str:
        return ""
