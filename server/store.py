"""The Redis connection: a real server (REDIS_URL) or the embedded in-process store.

The embedded store is fakeredis with lupa running the very same Lua scripts; it keeps nothing
when the process ends and never emits keyspace notifications (the sweeper covers expiry).
A Sentinel deployment's clients follow the primary (sentinel_client below).
"""
from __future__ import annotations

import logging
import secrets
import time
from urllib.parse import quote

import redis.asyncio as aioredis
from redis.asyncio.connection import (BlockingConnectionPool, Connection, SSLConnection,
                                      UnixDomainSocketConnection, parse_url)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError

from . import keys, metrics, redis_cluster
from .binding import StartupError
from .config import Settings
from .errors import REDIS_DOWN
from .redis_target import RedisTarget, TargetError

log = logging.getLogger("service_registry")

COMMAND_TIMEOUT = 5.0
CONNECT_TIMEOUT = 2.0
SENTINEL_TIMEOUT = 2.0    # one question to one sentinel (which node is the primary)
# Redis runs one command at a time: more connections add no throughput. Calls beyond this wait
# for a free connection instead of failing with "Too many connections".
MAX_CONNECTIONS = 64
NAMESPACE_CACHE_SECONDS = 2.0
SCAN_COUNT = 1000


class Store:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.embedded = settings.embedded
        if self.embedded:
            import fakeredis
            self._fake_server = fakeredis.FakeServer()
        # REDIS_URL parsed once (config.validate checked it); None for the embedded store
        self.target: RedisTarget | None = None if self.embedded else settings.redis_target
        kind = self.target.kind if self.target else "embedded"
        self.sentinel: Sentinel | None = None
        if kind == "sentinel":
            self.sentinel = sentinel_manager(self.target)  # once (redis-py#3433)
        self.cluster = kind == "cluster"
        self.redis = self.client(COMMAND_TIMEOUT)
        # Redis Cluster: one client shared by every blocking log reader (redis_cluster.py)
        self._readers = redis_cluster.reader_client(self.target) if self.cluster else None
        self._node = None                   # (host, port) the last new connection reached
        self._primary = None                # the node _check_failover last saw
        self._failover_listeners: list = []
        self._namespaces: set[str] = set()
        self._namespaces_read_at = 0.0
        self.epoch: str | None = None       # the store's epoch when this process last looked
        self._reset_listeners: list = []
        self._unscheduled: dict[str, int] = {}   # see agent_created

    def client(self, socket_timeout: float | None, on_connect=None):
        """A new client (its own pool); blocking readers pass a timeout above their block time.
        `on_connect(connection)` runs after each (re)connection of one of its connections, to
        the node it reached (watch.py checks what that node's logs hold); the store notes that
        node too (_check_failover)."""
        if self.embedded:
            import fakeredis
            return fakeredis.aioredis.FakeRedis(server=self._fake_server, decode_responses=True)
        target = self.target
        if target.kind == "cluster":   # redis_cluster.py (its own bounded clients)
            return redis_cluster.command_client(target, socket_timeout)
        # Few, fast retries: a caller should get UNAVAILABLE quickly when Redis is down.
        options = dict(decode_responses=True, socket_timeout=socket_timeout,
                       socket_connect_timeout=CONNECT_TIMEOUT, health_check_interval=30,
                       max_connections=MAX_CONNECTIONS, timeout=COMMAND_TIMEOUT,
                       retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2))
        options["redis_connect_func"] = _then(self._reached, on_connect,
                                              primary_only=target.kind == "sentinel")
        if target.kind == "sentinel":
            return sentinel_client(self.sentinel, target, **options)
        url_options = parse_url(self.settings.redis_url)   # as from_url: the URL's own win
        url_options["connection_class"] = _demotion_aware(
            url_options.get("connection_class", Connection))
        return aioredis.Redis.from_pool(BlockingConnectionPool(**{**options, **url_options}))

    async def node_url(self) -> str:
        """A redis:// URL of the node this store writes to (Sentinel: the primary now), for
        tools that talk to one node (redis-benchmark in the benchmark suite)."""
        if self.sentinel is None:
            return self.settings.redis_url
        target = self.target
        host, port = await self.sentinel.discover_master(target.primary_name)
        user, password = target.options.get("username") or "", target.options.get("password")
        auth = f"{quote(user)}:{quote(password)}@" if password else ""
        return f"{'rediss' if target.tls else 'redis'}://{auth}{host}:{port}/{target.db}"

    def _reached(self, connection) -> None:
        """Every new connection of every client of this store: where it went (Sentinel: the
        primary at that moment; a reader reconnecting after a failover reaches the new one)."""
        self._node = (getattr(connection, "host", None), getattr(connection, "port", None))

    def on_failover(self, listener) -> None:
        """`await listener()` runs when check_reset finds that the primary has moved."""
        self._failover_listeners.append(listener)

    async def _check_failover(self) -> None:
        """Sentinel: the primary moved (a failover). Keys written outside the scripts (the
        namespace set, the sweeper's schedule) may have missed the replica: rebuilt from what
        the new primary holds; listeners redo their per-node set-up (keyspace events)."""
        primary = self._node
        if self.sentinel is None or primary is None:
            return
        was, self._primary = self._primary, primary
        if was is None or was == primary:
            return
        log.warning("redis primary moved from %s:%s to %s:%s (a failover); rebuilding the "
                    "namespace set and the sweeper's schedule from the new primary", *was,
                    *primary)
        await self.rebuild_namespaces()
        for listener in self._failover_listeners:
            await listener()

    async def connect(self) -> None:
        """Before serving; a deployment REDIS_URL names that cannot be used at all stops the
        start (StartupError, one line naming REDIS_URL). Redis Cluster: the clients learn the
        topology (redis-py#3935: races on a client used before) and the scripts are loaded on
        every primary; an unreachable seed list or a standalone node is refused. Sentinel: no
        sentinel answers, or none monitors the primary's name (a known primary that is down
        is a failover under way: the server starts NOT_SERVING and follows it once promoted).
        One node: a Redis Cluster node behind a redis:// URL is refused (it would answer MOVED
        for most namespaces); an unreachable one is an outage the health probe reports."""
        if self.cluster:
            await redis_cluster.connect(self.target, self.redis, self._readers)
        elif self.sentinel is not None:
            try:
                await check_sentinels(self.sentinel, self.target)
            except TargetError as exc:
                raise StartupError(f"REDIS_URL: {exc}") from None
        elif self.target is not None:
            await redis_cluster.refuse_cluster_node(self.target, self.redis)

    def reader_client(self, socket_timeout: float, on_connect=None):
        """A client for a blocking reader (socket timeout above its block time, `on_connect`
        as in client()); give it back with release_reader. On Redis Cluster all readers share
        one (and a reader learns of a failover from the errors its reads get)."""
        if self._readers is not None:
            return self._readers
        return self.client(socket_timeout, on_connect=on_connect)

    async def release_reader(self, client) -> None:
        if client is not self._readers:
            await client.aclose()

    def slot_of(self, key: str) -> int | None:
        """Redis Cluster: the key's hash slot (a multi-key command needs one); else None."""
        return self.redis.keyslot(key) if self.cluster else None

    def describe(self) -> str:
        if self.embedded:
            return "embedded, not persisted (in-process fakeredis; set REDIS_URL for real Redis)"
        return self.target.describe()

    async def ping(self) -> bool:
        try:
            if self.cluster:  # every primary (each holds a share of the namespaces)
                return bool(await self.redis.ping(target_nodes=self.redis.PRIMARIES))
            return bool(await self.redis.ping())
        except Exception as exc:  # noqa: BLE001 - any failure means "not serving"
            log.debug("redis ping failed: %r", exc)
            return False

    async def enable_expiry_events(self, node=None) -> bool:
        """Turns on `expired` keyspace events (Ex), keeping flags set by others, on `node` (a
        client of one Redis Cluster primary) or the one Redis. False when the server refuses
        CONFIG (managed Redis): the sweeper alone then handles expiry."""
        if self.embedded:
            return False
        redis = node or self.redis
        try:
            current = (await redis.config_get("notify-keyspace-events")).get(
                "notify-keyspace-events", "")
            have = set(current)
            if "E" not in have or not have & {"x", "A"}:
                await redis.config_set("notify-keyspace-events",
                                       "".join(sorted(have | {"E", "x"})))
            return True
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot enable keyspace expiry events (%s); expiry relies on the sweeper",
                        exc)
            return False

    # -- keys outside the namespaces' hash tags (keys.py): written next to the scripts --------
    async def agent_created(self, namespace: str, deadline_ms: int) -> None:
        """After a Register created a namespace's first agent, or its soonest lease (with a
        shorter timeout than other processes use), after the script (so that
        forget_if_empty, racing with it, cannot drop a namespace that has an agent): the
        namespace is in the set and the sweeper's schedule. One round trip. A namespace with
        agents is always in both (forget_if_empty re-adds one it finds non-empty), so later
        agents need nothing here. What Redis did not take (it went down just after the script;
        on Redis Cluster, the shard of these keys is failing over) waits in this process for
        the sweeper to write, see schedule_missed."""
        try:
            await self._add_namespace(namespace, deadline_ms)
        except REDIS_DOWN as exc:
            # The agent is registered (its script ran). Answering UNAVAILABLE would not help: a
            # resent Register finds its agent and no longer asks for this; the sweeper retries.
            was = self._unscheduled.get(namespace, deadline_ms)
            self._unscheduled[namespace] = min(was, deadline_ms)
            log.warning("namespace %s: not yet in the namespace set and sweeper schedule (%s); "
                        "retried by the sweeper", namespace, exc)
        self._namespaces.add(namespace)

    async def _add_namespace(self, namespace: str, deadline_ms: int) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(keys.NAMESPACES, namespace)
            pipe.zadd(keys.DUE, {namespace: deadline_ms}, lt=True)
            await pipe.execute()

    async def schedule_missed(self) -> None:
        """What agent_created could not write (Redis went down, or that shard failed over)."""
        for namespace, deadline_ms in tuple(self._unscheduled.items()):
            await self._add_namespace(namespace, deadline_ms)
            del self._unscheduled[namespace]

    async def schedule(self, namespace: str, at_ms: int) -> None:
        await self.redis.zadd(keys.DUE, {namespace: at_ms})

    async def forget_if_empty(self, namespace: str) -> bool:
        """Drops a namespace without agents from the set and the schedule, so idle cost does
        not grow with every namespace ever used. Removes first, then looks: a Register that
        created an agent meanwhile adds it back itself, or is seen here."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.srem(keys.NAMESPACES, namespace)
            pipe.zrem(keys.DUE, namespace)
            await pipe.execute()
        first = await self.redis.zrange(keys.namespace(namespace).deadlines, 0, 0,
                                        withscores=True)
        if first:
            await self.agent_created(namespace, int(first[0][1]))
            return False
        self._namespaces.discard(namespace)
        return True

    async def seed_schedule(self) -> None:
        """Puts every known namespace on the sweeper's schedule, due now, unless it is there:
        for stores written before the schedule existed, and after a reset."""
        members = await self.redis.smembers(keys.NAMESPACES)
        if members:
            await self.redis.zadd(keys.DUE, {ns: 0 for ns in members}, nx=True)

    async def namespaces(self) -> list[str]:
        """The namespaces that hold agents (cached briefly)."""
        now = time.monotonic()
        if now - self._namespaces_read_at > NAMESPACE_CACHE_SECONDS:
            self._namespaces = set(await self.redis.smembers(keys.NAMESPACES))
            self._namespaces_read_at = now
        return sorted(self._namespaces)

    # -- store resets -------------------------------------------------------------------------
    def on_reset(self, listener) -> None:
        """`listener()` runs when check_reset finds that the store lost its data."""
        self._reset_listeners.append(listener)

    async def check_reset(self) -> bool:
        """True when the store was reset (Redis restarted without its data, or flushed) since
        this process last looked: the epoch key, written once, is gone or was written anew.
        Then the namespace set and the sweeper's schedule are rebuilt from what Redis holds and
        the listeners (open watches) are told. Also notices a failover (_check_failover)."""
        await self._check_failover()
        value = await self.redis.get(keys.EPOCH)
        if value is None:
            await self.redis.set(keys.EPOCH, secrets.token_hex(8), nx=True)
            value = await self.redis.get(keys.EPOCH)
        was, self.epoch = self.epoch, value
        if was is None or was == value:
            return False
        metrics.STORE_RESETS.inc()
        log.warning("the store was reset (its data is gone: Redis restarted without persistence "
                    "or was flushed); rebuilding the namespace set, open watches must re-list")
        await self.rebuild_namespaces()
        for listener in self._reset_listeners:
            listener()
        return True

    async def rebuild_namespaces(self) -> None:
        """The namespace set from the deadline zsets Redis holds (one per namespace with agents),
        and every namespace on the sweeper's schedule: at a process's start (a store written by
        a version that kept the set per process may lack some) and after a reset. One SCAN,
        SCAN_COUNT keys a call; on Redis Cluster redis-py's scan_iter walks every primary."""
        pattern = keys.namespace("*").deadlines
        found = set()
        async for key in self.redis.scan_iter(match=pattern, count=SCAN_COUNT):
            ns = keys.parse_namespace_key(key)
            if ns:
                found.add(ns)
        if found:
            await self.redis.sadd(keys.NAMESPACES, *found)
        self._namespaces = set(await self.redis.smembers(keys.NAMESPACES))
        self._namespaces_read_at = time.monotonic()
        await self.seed_schedule()

    async def close(self) -> None:
        await self.redis.aclose()
        if self.sentinel is not None:
            await self.sentinel.aclose()
        if self._readers is not None:
            await self._readers.aclose()


def _then(*hooks, primary_only: bool = False):
    """redis-py's connect hook replaces its own handshake: do that first, then each hook.
    `primary_only` (Sentinel): a node that is not a primary is refused (ConnectionError; redis-py
    asks the sentinels again). During a failover a sentinel that has not heard of the switch yet
    still names the old primary, which may already be a replica: a connection made there would
    read stale data, and a subscription there would hear no `expired` event ever."""
    async def connect(connection) -> None:
        await connection.on_connect()
        if primary_only:
            await connection.send_command("ROLE")
            role = await connection.read_response()
            if str(role[0]) != "master":
                await connection.disconnect()
                raise RedisConnectionError(
                    f"{connection.host}:{connection.port} is a {role[0]}, not the primary (a "
                    "failover under way)")
        for hook in hooks:
            if hook is not None:
                hook(connection)
    return connect


class _DemotionAware:
    """A single-node connection that drops itself when the node answers READONLY (a failover
    made it a replica) and raises ConnectionError: redis-py's retry connects again (a DNS name
    that follows the primary then reaches the new one) and the caller gets UNAVAILABLE at
    worst. redis-py's Sentinel connections do the same."""

    async def read_response(self, *args, **kwargs):
        try:
            return await super().read_response(*args, **kwargs)
        except ReadOnlyError as exc:
            await self.disconnect()
            raise RedisConnectionError(f"the node is a read-only replica now ({exc})") from None


class _DemotionAwareConnection(_DemotionAware, Connection):
    pass


class _DemotionAwareSSLConnection(_DemotionAware, SSLConnection):
    pass


class _DemotionAwareUnixConnection(_DemotionAware, UnixDomainSocketConnection):
    pass


def _demotion_aware(base: type) -> type:
    if issubclass(base, UnixDomainSocketConnection):
        return _DemotionAwareUnixConnection
    if issubclass(base, SSLConnection):
        return _DemotionAwareSSLConnection
    return _DemotionAwareConnection


# -- Sentinel ---------------------------------------------------------------------------------

class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool (connections find the primary through the sentinels, and drop
    themselves on READONLY) with the blocking pool's bound: past `max_connections`, a call
    waits up to `timeout` for a free connection instead of failing."""


def sentinel_manager(target: RedisTarget) -> Sentinel:
    """The Sentinel object (one per process): asks the sentinels of `target` for the primary.
    Data-node options (password, ssl_*) come from REDIS_URL; the sentinels get the same TLS
    options and their own password when `sentinel_password` is given."""
    tls = {k: v for k, v in target.options.items() if k.startswith("ssl")}
    sentinel_kwargs = dict(socket_timeout=SENTINEL_TIMEOUT, socket_connect_timeout=CONNECT_TIMEOUT,
                           retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1), **tls)
    if target.tls:
        sentinel_kwargs["ssl"] = True
    for option, value in target.sentinel_options.items():
        sentinel_kwargs[option.removeprefix("sentinel_")] = value
    return Sentinel(list(target.nodes), sentinel_kwargs=sentinel_kwargs)


def sentinel_client(sentinel: Sentinel, target: RedisTarget, **options) -> aioredis.Redis:
    """A client of the current primary: each new connection asks the sentinels where it is, so
    after a failover reconnections reach the promoted replica (the server follows it without a
    restart). Each call makes one pool: the server makes one for its calls and one per
    blocking reader."""
    return sentinel.master_for(target.primary_name, connection_pool_class=BlockingSentinelPool,
                               **{**options, **target.options,   # as from_url: the URL's win
                                  "db": target.db, "ssl": target.tls})


async def check_sentinels(sentinel: Sentinel, target: RedisTarget) -> None:
    """TargetError when no sentinel answers, or none of those answering monitors the name."""
    answers, errors = [], []
    for client in sentinel.sentinels:
        at = client.connection_pool.connection_kwargs
        try:
            answers.append(await client.sentinel_masters())
        except (RedisError, OSError) as exc:
            why = " ".join(str(exc).split()) or type(exc).__name__   # one line
            errors.append(f"{at['host']}:{at['port']} {why}")
    where = ",".join(f"{h}:{p}" for h, p in target.nodes)
    if not answers:
        raise TargetError(f"no sentinel answers at {where} ({'; '.join(errors)})")
    if not any(target.primary_name in masters for masters in answers):
        known = sorted({name for masters in answers for name in masters})
        raise TargetError(f"the sentinels at {where} monitor no primary named "
                          f"{target.primary_name!r} (they monitor: "
                          f"{', '.join(map(repr, known)) or 'nothing'})")
