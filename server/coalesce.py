"""Coalesces concurrent calls of one Lua script into pipelined writes (the heartbeat path).

On Redis Cluster, one pipeline per primary: redis-py 8.1 refuses EVALSHA in a ClusterPipeline
(redis-py#2914), and a pipelined write can only go to one node anyway.
"""
from __future__ import annotations

import asyncio

from redis.exceptions import AskError, ClusterDownError, ClusterError, NoScriptError
from redis.exceptions import ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError, TryAgainError

from .redis_cluster import torn_down


# Most parts of a heartbeat call repeat across calls (the script's sha, the namespace's keys,
# the settings): their RESP encoding is kept, halving the packing cost (see RESULTS.md).
_ENCODED: dict[str, bytes] = {}
_ENCODED_MAX = 8192


def _bulk(part) -> bytes:
    if isinstance(part, str):
        encoded = _ENCODED.get(part)
        if encoded is None:
            data = part.encode()
            encoded = b"$%d\r\n%s\r\n" % (len(data), data)
            if len(_ENCODED) < _ENCODED_MAX:
                _ENCODED[part] = encoded
        return encoded
    data = str(part).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def pack_command(parts) -> bytes:
    """One command in RESP, as redis-py would encode it (str as UTF-8, numbers via str())."""
    return b"*%d\r\n" % len(parts) + b"".join([_bulk(part) for part in parts])


async def send_pipelined(connection, commands: list[bytes]) -> list:
    """Packed commands written at once on `connection`, then their replies read in order; an
    error reply is that command's exception in the list. A connection left with unread replies
    (it failed midway) is dropped, never reused."""
    try:
        await connection.send_packed_command(b"".join(commands))
        replies = []
        for _ in commands:
            try:
                replies.append(await connection.read_response())
            except ResponseError as exc:  # this call's error reply; the rest follow
                replies.append(exc)
        return replies
    except BaseException:
        await connection.disconnect(nowait=True)
        raise


class HeartbeatPipeline:
    """Coalesces concurrent heartbeat.lua calls: every call made during one turn of the event
    loop goes to Redis in one pipelined write on one connection, and the replies come back in
    one read. An unpipelined redis-py call costs ~135 us of server CPU, one here ~12 us (see
    benchmarks/RESULTS.md). Heartbeats are idempotent, so a batch is resent once after a lost
    connection, and once after NOSCRIPT (Redis restarted or SCRIPT FLUSH) with the script
    loaded again. Each call's future gets its reply, or the exception for that call."""

    MAX_BATCH = 256       # commands per pipelined write
    MAX_IN_FLIGHT = 4     # pipelines waiting for Redis at once; later calls queue up meanwhile
    RESEND = True         # a batch whose connection broke is resent once on a new one

    def __init__(self, redis, script):
        self.redis = redis
        self.script = script
        self.queue: list[tuple[bytes, asyncio.Future, tuple, tuple]] = []
        self.in_flight = 0
        self.scheduled = False
        self.tasks: set[asyncio.Task] = set()

    def call(self, keys, args) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.queue.append((pack_command(("EVALSHA", self.script.sha, len(keys), *keys, *args)),
                           future, keys, args))
        if not self.scheduled and self.in_flight < self.MAX_IN_FLIGHT:
            self.scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self.scheduled = False
        while self.queue and self.in_flight < self.MAX_IN_FLIGHT:
            batch = self.queue[:self.MAX_BATCH]
            del self.queue[:self.MAX_BATCH]
            self.in_flight += 1
            task = asyncio.ensure_future(self._run(batch))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _run(self, batch) -> None:
        try:
            replies = await self._execute([entry[0] for entry in batch])
        except BaseException as exc:  # noqa: BLE001 - every caller gets the failure
            replies = [exc] * len(batch)
        finally:
            self.in_flight -= 1
            if self.queue and not self.scheduled:
                self.scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
        await self._settle(batch, replies)

    async def _settle(self, batch, replies) -> None:
        for (_, future, _, _), reply in zip(batch, replies):
            if future.done():  # the caller went away
                continue
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _connection(self):
        return await self.redis.connection_pool.get_connection()

    async def _release(self, connection) -> None:
        await self.redis.connection_pool.release(connection)

    async def _execute(self, commands: list[bytes], attempt: int = 0) -> list:
        try:
            replies = await self._send(commands)
        except RedisConnectionError:
            if attempt or not self.RESEND:
                raise
            return await self._execute(commands, attempt + 1)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing and attempt < 2:
            await self.redis.script_load(self.script.script)
            again = await self._execute([commands[i] for i in missing], 2)
            for i, reply in zip(missing, again):
                replies[i] = reply
        return replies

    async def _send(self, commands: list[bytes]) -> list:
        connection = await self._connection()
        try:
            return await send_pipelined(connection, commands)
        finally:
            await self._release(connection)


# Replies that another node, or the same after a topology refresh, would answer: the call is
# sent again alone through the cluster client, which follows MOVED/ASK and refreshes the slots.
_RESEND_ALONE = (AskError, TryAgainError, ClusterDownError, RedisConnectionError,
                 RedisTimeoutError)


class NodePipeline(HeartbeatPipeline):
    """The heartbeat pipeline of one Redis Cluster node, on connections of redis-py's own
    per-node pool (ClusterNode), so redis-py's limits and reconnects apply to them."""

    RESEND = False  # a broken connection: each call goes alone through the cluster client
    MIGRATING_PATIENCE = 5.0  # seconds a call keeps being retried while its slot migrates

    def __init__(self, cluster, script, node):
        super().__init__(cluster, script)
        self.node = node

    async def _connection(self):
        return self.node.acquire_connection()

    async def _release(self, connection) -> None:
        self.node.release(connection)

    async def _settle(self, batch, replies) -> None:
        """MOVED/ASK (a slot moved: resharding, failover), TRYAGAIN, CLUSTERDOWN or a lost
        node: those calls again, each alone through the cluster client; heartbeats are
        idempotent, so one that did run is harmless to repeat."""
        again = [i for i, reply in enumerate(replies)
                 if isinstance(reply, _RESEND_ALONE) or torn_down(reply)]
        if again:
            replies = list(replies)
            resent = await asyncio.gather(*(self._alone(batch[i][2], batch[i][3])
                                            for i in again), return_exceptions=True)
            for i, reply in zip(again, resent):
                replies[i] = reply
        await super()._settle(batch, replies)


    async def _alone(self, keys, args):
        """Through the cluster client; while the slot migrates (TRYAGAIN: some of the call's
        keys moved already, or do not exist, e.g. an empty inbox) again, for a while: redis-py
        gives up after ~0.4 s, a resharding's MIGRATING phase can last longer."""
        deadline = asyncio.get_running_loop().time() + self.MIGRATING_PATIENCE
        delay = 0.02
        while True:
            try:
                return await self.script(keys=keys, args=args)
            except (TryAgainError, ClusterError) as exc:
                if isinstance(exc, ClusterDownError) or \
                        asyncio.get_running_loop().time() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)


class ClusterHeartbeatPipeline:
    """Redis Cluster: a NodePipeline per primary; each call joins the pipeline of the node
    that owns its slot (all keys of a namespace share one, keys.py), as redis-py's slot cache
    says. A stale cache costs one redirected call, after which the cache is right."""

    def __init__(self, cluster, script):
        self.cluster = cluster
        self.script = script
        self.nodes: dict[str, NodePipeline] = {}

    def call(self, keys, args) -> asyncio.Future:
        try:
            node = self.cluster.get_node_from_key(keys[0])
        except Exception:  # noqa: BLE001 - slot not covered now: the cluster client decides
            node = None
        if node is None:
            return asyncio.ensure_future(self.script(keys=keys, args=args))
        lane = self.nodes.get(node.name)
        if lane is None or lane.node is not node:  # new, or re-created by a topology refresh
            lane = self.nodes[node.name] = NodePipeline(self.cluster, self.script, node)
        return lane.call(keys, args)
