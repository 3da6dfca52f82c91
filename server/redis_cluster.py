"""Redis Cluster (REDIS_URL=redis+cluster://seed1:port,seed2:port): the clients and start checks.

redis-py's asyncio RedisCluster routes every command by its first key's slot and follows MOVED
and ASK. It has no blocking pool: past `max_connections` per node it raises
MaxConnectionsError. So commands go through a semaphore (a call waits for a turn, as with the
one-node BlockingConnectionPool) and the per-node limit is set above everything a process can
hold on one node:

    COMMANDS_IN_FLIGHT + PIPELINES_IN_FLIGHT + HeartbeatPipeline.MAX_IN_FLIGHT   (command client)
    one connection per watched hash slot on the node                          (reader client)
    one pub/sub connection per primary                                        (expiry events)

Blocking log readers (watch.py) share a second client whose socket timeout exceeds their
XREAD BLOCK; each holds one connection while it blocks.
"""
from __future__ import annotations

import asyncio
import inspect
import logging

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from .binding import StartupError
from .redis_target import RedisTarget
from .scripts import NAMES, source

log = logging.getLogger("service_registry")

COMMANDS_IN_FLIGHT = 64     # commands waiting for a reply at once, over all nodes
PIPELINES_IN_FLIGHT = 16    # cluster pipelines (keys of several slots) at once
MAX_CONNECTIONS = 128       # per node, command client: above 64 + 16 + 4 heartbeat pipelines
READER_MAX_CONNECTIONS = 4096  # per node, reader client: one per watched slot there
READER_TIMEOUT = 10.0      # reader client's socket timeout: above watch.BLOCK_MS
RETRIES = 3                 # attempts after a failure, each after a topology refresh
CONNECT_TIMEOUT = 2.0
SINGLE_CHECK_TIMEOUT = 2.0  # REDIS_URL=redis://: how long start asks whether it is a cluster node
_ACCEPTED = frozenset(inspect.signature(RedisCluster.__init__).parameters) - {"self"}


def torn_down(exc: BaseException) -> bool:
    """redis-py 8.1 sometimes disconnects a connection while a command is using it (a node
    failed and the topology is refreshed): the command then fails with AttributeError (its
    writer is None) or RuntimeError (uvloop: the transport is closed), not ConnectionError."""
    text = str(exc)
    return (isinstance(exc, AttributeError) and "'NoneType' object has no attribute" in text) \
        or (isinstance(exc, RuntimeError) and ("handler is closed" in text
                                               or "Transport closed" in text))


class SturdyRedisCluster(RedisCluster):
    """RedisCluster where a command whose connection was torn down under it is sent once more,
    then fails as the ConnectionError it is (UNAVAILABLE; every script is safe to resend)."""

    async def execute_command(self, *args, **kwargs):
        try:
            return await super().execute_command(*args, **kwargs)
        except (AttributeError, RuntimeError) as exc:
            if not torn_down(exc):
                raise
        try:
            return await super().execute_command(*args, **kwargs)
        except (AttributeError, RuntimeError) as exc:
            if not torn_down(exc):
                raise
            raise RedisConnectionError(f"connection closed under the command ({exc})") from exc


class BoundedRedisCluster(SturdyRedisCluster):
    """RedisCluster whose commands and pipelines wait for a turn instead of opening
    connections without bound (and failing with MaxConnectionsError)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.commands_in_flight = asyncio.Semaphore(COMMANDS_IN_FLIGHT)
        self.pipelines_in_flight = asyncio.Semaphore(PIPELINES_IN_FLIGHT)

    async def execute_command(self, *args, **kwargs):
        async with self.commands_in_flight:
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction=None, shard_hint=None) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return BoundedPipeline(self, transaction)


class BoundedPipeline(ClusterPipeline):
    """Waits for a turn (its own semaphore: a pipeline resends redirected commands with
    execute_command); a connection torn down under it fails it as a ConnectionError. (The
    server's cluster pipelines, Store's namespace set and schedule, and counts, are safe to
    resend, but the commands are gone once executed: the caller retries.)"""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True):
        async with self.cluster_client.pipelines_in_flight:
            try:
                return await super().execute(raise_on_error, allow_redirections)
            except (AttributeError, RuntimeError) as exc:
                if not torn_down(exc):
                    raise
                raise RedisConnectionError(f"connection closed under the pipeline ({exc})") \
                    from exc


def _options(target: RedisTarget) -> dict:
    """REDIS_URL's query options as RedisCluster arguments; one it lacks stops the start."""
    options = dict(target.options)
    unknown = sorted(set(options) - _ACCEPTED)
    if unknown:
        raise StartupError(f"REDIS_URL: option {unknown[0]!r} is not supported with "
                           "redis+cluster:// (redis-py's RedisCluster has no such argument)")
    if target.tls:
        options["ssl"] = True
    return options


def _client(cls, target: RedisTarget, socket_timeout: float | None, max_connections: int,
            min_socket_timeout: float = 0.0):
    kwargs = {"socket_timeout": socket_timeout, "socket_connect_timeout": CONNECT_TIMEOUT,
              "health_check_interval": 30, **_options(target)}
    if min_socket_timeout and (kwargs["socket_timeout"] or 0) < min_socket_timeout:
        kwargs["socket_timeout"] = min_socket_timeout
    # reinitialize_steps=0: a MOVED patches the slot cache only. redis-py's default (a full
    # refresh every 5th MOVED) closes every connection of the client, under the feet of the
    # commands using them concurrently (they fail with AttributeError: the writer is gone).
    return cls(startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
               decode_responses=True, max_connections=max_connections, reinitialize_steps=0,
               retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), RETRIES), **kwargs)


def command_client(target: RedisTarget, socket_timeout: float | None) -> BoundedRedisCluster:
    return _client(BoundedRedisCluster, target, socket_timeout, MAX_CONNECTIONS)


def reader_client(target: RedisTarget) -> RedisCluster:
    """For XREAD BLOCK readers: a socket timeout above their block time (watch.BLOCK_MS)."""
    return _client(SturdyRedisCluster, target, READER_TIMEOUT, READER_MAX_CONNECTIONS,
                   min_socket_timeout=READER_TIMEOUT)


def node_client(node, target: RedisTarget, socket_timeout: float | None):
    """A plain client of one cluster node (pub/sub on each primary: events are node-local)."""
    return aioredis.Redis(host=node.host, port=int(node.port), decode_responses=True,
                          socket_timeout=socket_timeout, socket_connect_timeout=CONNECT_TIMEOUT,
                          **_options(target))


async def connect(target: RedisTarget, client: RedisCluster, readers: RedisCluster) -> None:
    """Learns the topology before serving and loads every script on every primary; a seed
    list that cannot be used stops the start with one line naming REDIS_URL."""
    seeds = ",".join(f"{h}:{p}" for h, p in target.nodes)
    try:
        await _initialize(client, readers)
    except RedisClusterException as exc:
        text = str(exc)
        if "not enabled" in text:
            raise StartupError(f"REDIS_URL: {seeds} is not a Redis Cluster (cluster mode is "
                               "disabled there); for a single Redis use redis://host:port")
        raise StartupError(f"REDIS_URL: no seed node of the Redis Cluster answers ({seeds}): "
                           f"{_cause(exc)}") from None
    except (RedisError, OSError) as exc:
        raise StartupError(f"REDIS_URL: the Redis Cluster at {seeds} cannot be used: "
                           f"{_cause(exc)}") from None
    primaries = client.get_primaries()
    log.info("redis cluster: %d primaries (%s)", len(primaries),
             ", ".join(sorted(n.name for n in primaries)))


async def _initialize(client: RedisCluster, readers: RedisCluster) -> None:
    try:
        await client.initialize()
        await readers.initialize()
        for name in NAMES:  # SCRIPT LOAD goes to every primary
            await client.script_load(source(name))
    except BaseException:
        await asyncio.gather(client.aclose(), readers.aclose(), return_exceptions=True)
        raise


def _cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return " ".join(str(exc).split()) or type(exc).__name__


async def refuse_cluster_node(target: RedisTarget, client) -> None:
    """REDIS_URL=redis://... naming a Redis Cluster node: refused at start (it would answer
    MOVED for the namespaces other shards hold). Not reachable now: the outage path."""
    try:
        info = await asyncio.wait_for(client.info("cluster"), SINGLE_CHECK_TIMEOUT)
    except Exception:  # noqa: BLE001 - unreachable, or no INFO (managed Redis): not ours to judge
        return
    if str(info.get("cluster_enabled", 0)) == "1":
        raise StartupError(f"REDIS_URL: {target.describe().removeprefix('redis at ')} is a "
                           "Redis Cluster node; use redis+cluster://host:port[,host:port...]")
