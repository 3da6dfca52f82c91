"""The Redis connection: a real server (REDIS_URL) or the embedded in-process store.

The embedded store is fakeredis with lupa running the very same Lua scripts; it keeps nothing
when the process ends and never emits keyspace notifications (the sweeper covers expiry).
"""
from __future__ import annotations

import logging
import time

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from . import keys
from .config import Settings
from .scripts import Scripts

log = logging.getLogger("service_registry")

COMMAND_TIMEOUT = 5.0
# Redis runs one command at a time: more connections add no throughput. Calls beyond this wait
# for a free connection instead of failing with "Too many connections".
MAX_CONNECTIONS = 64
NAMESPACE_CACHE_SECONDS = 2.0


class Store:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.embedded = settings.embedded
        if self.embedded:
            import fakeredis
            self._fake_server = fakeredis.FakeServer()
        self.redis = self.client(COMMAND_TIMEOUT)
        self.scripts = Scripts(self.redis)
        self._namespaces: set[str] = set()
        self._namespaces_read_at = 0.0

    def client(self, socket_timeout: float):
        """A new client; blocking readers pass a timeout above their block time."""
        if self.embedded:
            import fakeredis
            return fakeredis.aioredis.FakeRedis(server=self._fake_server, decode_responses=True)
        # Few, fast retries: a caller should get UNAVAILABLE quickly when Redis is down.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.settings.redis_url, decode_responses=True, socket_timeout=socket_timeout,
            socket_connect_timeout=2.0, health_check_interval=30,
            max_connections=MAX_CONNECTIONS, timeout=COMMAND_TIMEOUT,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2))
        return aioredis.Redis.from_pool(pool)

    def describe(self) -> str:
        if self.embedded:
            return "embedded, not persisted (in-process fakeredis; set REDIS_URL for real Redis)"
        return f"redis at {_redact(self.settings.redis_url)}"

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except Exception:  # noqa: BLE001 - any failure means "not serving"
            return False

    async def enable_expiry_events(self) -> bool:
        """Turns on `expired` keyspace events (Ex), keeping flags set by others. False when the
        server refuses CONFIG (managed Redis): the sweeper alone then handles expiry."""
        if self.embedded:
            return False
        try:
            current = (await self.redis.config_get("notify-keyspace-events")).get(
                "notify-keyspace-events", "")
            have = set(current)
            if "E" not in have or not have & {"x", "A"}:
                await self.redis.config_set("notify-keyspace-events",
                                            "".join(sorted(have | {"E", "x"})))
            return True
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot enable keyspace expiry events (%s); expiry relies on the sweeper",
                        exc)
            return False

    async def remember_namespace(self, namespace: str) -> None:
        if namespace not in self._namespaces:
            await self.redis.sadd(keys.NAMESPACES, namespace)
            self._namespaces.add(namespace)

    async def namespaces(self) -> list[str]:
        """Every namespace any server process has registered agents in (cached briefly)."""
        now = time.monotonic()
        if now - self._namespaces_read_at > NAMESPACE_CACHE_SECONDS:
            self._namespaces |= set(await self.redis.smembers(keys.NAMESPACES))
            self._namespaces_read_at = now
        return sorted(self._namespaces)

    async def close(self) -> None:
        await self.redis.aclose()


def _redact(url: str) -> str:
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, _ = head.partition("://")
    return f"{scheme}://***@{tail}"
