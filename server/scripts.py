"""Loads the Lua scripts in ../lua as redis-py Script objects (EVALSHA, reloaded on NOSCRIPT).

A line `--@include name.lua` is replaced by lua/includes/name.lua, and every script starts with
the key layout from keys.py, so shared code and key names exist once. Only the storage gateway
(registry_store.py) calls them.
"""
from __future__ import annotations

import re
from pathlib import Path

from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from redis.commands.core import AsyncScript

from . import keys

LUA_DIR = Path(__file__).resolve().parent.parent / "lua"
_INCLUDE = re.compile(r"^--@include (\S+)$", re.M)
NAMES = ("register", "heartbeat", "deregister", "reap", "get", "discover", "list", "notify",
         "stats", "due")


def lua_enums() -> str:
    """The proto's event type (EV) and status (ST) numbers as Lua tables."""
    def table(enum) -> str:
        return ", ".join(f"{name}={number}" for name, number in enum.items() if number)
    return (f"local EV = {{{table(pb.EventType)}}}\n"
            f"local ST = {{{table(pb.AgentStatus)}}}\n")


def source(name: str) -> str:
    text = (LUA_DIR / f"{name}.lua").read_text()
    text = _INCLUDE.sub(lambda m: (LUA_DIR / "includes" / m.group(1)).read_text(), text)
    return prelude() + text


def prelude() -> str:
    """What every script starts with: key layout, field names and enum numbers."""
    return keys.lua_header() + lua_enums()


class Scripts:
    """One attribute per script in lua/, e.g. ``scripts.heartbeat(keys=..., args=...)``."""

    def __init__(self, redis) -> None:
        def load(name: str) -> AsyncScript:
            return redis.register_script(source(name))

        self.register = load("register")
        self.heartbeat = load("heartbeat")
        self.deregister = load("deregister")
        self.reap = load("reap")
        self.get = load("get")
        self.discover = load("discover")
        self.list = load("list")
        self.notify = load("notify")
        self.stats = load("stats")
        self.due = load("due")
